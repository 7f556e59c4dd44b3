//! Software model of the AMD Secure Processor launch commands (issue 6).
