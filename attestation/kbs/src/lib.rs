//! krun-kbs
