//! The reset-vector firmware and the contract the VMM follows to load it.
//!
//! The firmware (`resetvec.asm`, built to `resetvec.bin`) is mapped so that it ends at 4 GiB.
//! It takes the boot processor from the reset vector to the kernel's 64-bit entry, detects
//! SEV, SEV-ES and SEV-SNP at run time, validates guest RAM for SNP, publishes the CC blob,
//! and runs SEV-ES application processors into the kernel's trampoline. The VMM passes its
//! parameters by patching the parameter block ([`params`]) before the image is measured.
//! `README.md` next to this crate is the full contract.

pub mod layout;
pub mod params;

pub use layout::{FatalError, AP_ENTRY_IP, BSP_ENTRY_IP, FATAL_PORT, IMAGE_GPA, IMAGE_SIZE};
pub use params::{patch, patched, FirmwareParams, ParamsError, SnpPages};

/// The firmware image as built from `resetvec.asm` by `build.sh`.
pub static IMAGE: &[u8; IMAGE_SIZE] = include_bytes!("../resetvec.bin");
