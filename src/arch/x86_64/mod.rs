//! x86_64 guest layout and boot: memory map, zero page, MP table, CPUID, MSRs, boot registers.

pub mod boot_params;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
