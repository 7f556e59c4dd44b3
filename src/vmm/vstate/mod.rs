//! KVM state: the VM file descriptor, vCPUs and their run loop, and how a run ends.

pub mod exit;
pub mod vcpu;
pub mod vm;
