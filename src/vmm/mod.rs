//! The virtual machine monitor: guest memory, KVM state, vCPU threads, device wiring.
//!
//! Entry point: [`Vmm::run`] with a [`VmConfig`]. Map of the VMM side:
//!
//! | where | what |
//! |---|---|
//! | `crate::arch::x86_64::layout` | the guest physical memory map (fixed addresses) |
//! | `crate::arch::x86_64::{boot_params, mptable, regs, cpuid, msr}` | zero page and e820, MP table, 64-bit boot registers and page tables, per-vCPU CPUID, boot MSRs |
//! | `memory` | guest RAM, kernel (bzImage or ELF `vmlinux`) and initrd (+ launch segment) loading |
//! | `loader` | everything written before boot, shared with the measurement calculator |
//! | `vstate::{vm, vcpu, exit}` | KVM VM (irqchip, PIT, memory slots), vCPU threads and exit handling, run end |
//! | `bus`, `device_manager` | MMIO dispatch; virtio-mmio slots, IRQs and `virtio_mmio.device=` entries |
//! | `seccomp` | per-thread seccomp allow-lists, the SIGSYS handler, dropped privileges (docs/hardening.md) |
//! | `builder` | `Vmm::run`: assembles everything and returns the guest's exit status |
//! | `crate::devices` | serial log sink, virtio transport, blk, console, vsock |

pub mod builder;
pub mod bus;
pub mod config;
pub mod device_manager;
pub mod loader;
pub mod memory;
pub mod seccomp;
pub mod vstate;

#[cfg(test)]
pub(crate) mod test_utils;

pub use builder::{ExitStatus, RunStats, Vmm, VmmError};
pub use config::{
    ConsoleConfig, DiskConfig, PortMap, PortMapping, TeeBoot, TeeHookError, TeeLaunch, VmConfig,
};
