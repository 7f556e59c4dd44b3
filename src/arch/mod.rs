//! Architecture support. Only x86_64 is built; this is the one place that picks the arch.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("krun-sev supports x86_64 hosts only");
