//! libkrun-sev: run one process inside an AMD SEV, SEV-ES or SEV-SNP microVM.
//!
//! The C API (`capi`) only parses and validates; it hands a plain Rust configuration
//! (`resources::VmResources`) to the VMM.

pub mod arch;
pub mod capi;
pub mod devices;
pub mod launch;
pub mod resources;
pub mod tee;
pub mod vmm;
