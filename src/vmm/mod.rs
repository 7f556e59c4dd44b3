//! The virtual machine monitor: guest memory, KVM state, vCPU threads, device wiring.

pub mod builder;
pub mod bus;
pub mod config;
pub mod device_manager;
pub mod memory;
pub mod vstate;

#[cfg(test)]
pub(crate) mod test_utils;

pub use builder::{ExitStatus, RunStats, Vmm, VmmError};
pub use config::{ConsoleConfig, DiskConfig, PortMap, PortMapping, VmConfig};
