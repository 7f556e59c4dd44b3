//! The C API (issue 2).
