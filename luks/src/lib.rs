//! LUKS1/LUKS2 in pure Rust (issue 5).
