//! Boot-time model-specific registers for each vCPU.

use kvm_bindings::{kvm_msr_entry, Msrs};

/// Errors while building the MSR list.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// The MSR list does not fit a KVM buffer.
    #[error("cannot build the MSR buffer")]
    Buffer(#[source] vmm_sys_util::fam::Error),
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// `IA32_MISC_ENABLE.FAST_STRING`.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled (bit 11), default memory type write-back (6). Linux under SEV needs MTRRs
/// enabled to map RAM write-back.
pub const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// The MSRs every vCPU starts with.
pub fn boot_msr_entries() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED),
    ]
}

/// [`boot_msr_entries`] as a KVM buffer.
pub fn boot_msrs() -> Result<Msrs, MsrError> {
    let entries: Vec<kvm_msr_entry> = boot_msr_entries()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries).map_err(MsrError::Buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtrr_write_back_enabled() {
        let msrs = boot_msrs().unwrap();
        let mtrr = msrs
            .as_slice()
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(mtrr.data, 0x806);
        assert_eq!(msrs.as_slice().len(), boot_msr_entries().len());
    }
}
