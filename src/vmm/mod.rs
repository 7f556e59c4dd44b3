//! The virtual machine monitor: guest memory, KVM state, vCPU threads, device wiring.

pub mod bus;
pub mod config;
pub mod memory;
pub mod vstate;

#[cfg(test)]
pub(crate) mod test_utils;

pub use config::VmConfig;
