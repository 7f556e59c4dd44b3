//! The SNP CPUID page (SEV-SNP firmware ABI, "CPUID Reporting"; Linux `struct
//! snp_cpuid_table`): a count, then up to 64 entries of `{eax_in, ecx_in, xcr0_in, xss_in,
//! eax, ebx, ecx, edx, reserved}`. Built from what this VMM gives vCPU 0 (KVM's supported
//! CPUID, normalized by `arch::cpuid`), restricted to the standard and extended leaf ranges
//! the guest kernel consults.

use kvm_bindings::{kvm_cpuid_entry2, KVM_MAX_CPUID_ENTRIES};

use super::TeeError;

/// Size of the page.
pub const PAGE_LEN: usize = 4096;
/// Most entries the table holds.
pub const MAX_ENTRIES: usize = 64;
const HEADER_LEN: usize = 16;
const ENTRY_LEN: usize = 48;
const _: () = assert!(HEADER_LEN + MAX_ENTRIES * ENTRY_LEN <= PAGE_LEN);

/// Leaf 0x8000001F used when KVM reports none (model mode on a host without SEV): SEV,
/// SEV-ES and SNP supported, C-bit 51, physical address reduction 1 (an EPYC Milan's values).
/// The firmware needs EBX[5:0] to find the C-bit under SNP.
const SYNTHETIC_8000001F: (u32, u32, u32, u32) = (0x1b, 51 | (1 << 6), 0, 0);

fn wanted(function: u32) -> bool {
    function <= 0x1f || (0x8000_0000..=0x8000_0021).contains(&function)
}

/// Builds the page from vCPU entries.
pub fn build(entries: &[kvm_cpuid_entry2]) -> Result<Box<[u8; PAGE_LEN]>, TeeError> {
    let mut rows: Vec<(u32, u32, u32, u32, u32, u32)> = entries
        .iter()
        .filter(|e| wanted(e.function))
        // Linux reads a leaf missing from the page as all zeros, so all-zero leaves (KVM
        // lists every leaf up to the maximum) need no entry.
        .filter(|e| (e.eax, e.ebx, e.ecx, e.edx) != (0, 0, 0, 0))
        .map(|e| (e.function, e.index, e.eax, e.ebx, e.ecx, e.edx))
        .collect();
    if !rows.iter().any(|r| r.0 == 0x8000_001f) {
        let (a, b, c, d) = SYNTHETIC_8000001F;
        rows.push((0x8000_001f, 0, a, b, c, d));
    }
    rows.sort_by_key(|r| (r.0, r.1));
    rows.dedup_by_key(|r| (r.0, r.1));
    if rows.len() > MAX_ENTRIES {
        return Err(TeeError::CpuidTooLarge);
    }
    let mut page = Box::new([0u8; PAGE_LEN]);
    let count = u32::try_from(rows.len()).map_err(|_| TeeError::CpuidTooLarge)?;
    page[0..4].copy_from_slice(&count.to_le_bytes());
    for (i, (function, index, eax, ebx, ecx, edx)) in rows.into_iter().enumerate() {
        let at = HEADER_LEN + i * ENTRY_LEN;
        // Leaf 0xD sizes depend on XCR0; the values describe the reset XCR0 (x87 only).
        let xcr0_in: u64 = if function == 0xd && index <= 1 { 1 } else { 0 };
        let fields: [&[u8]; 8] = [
            &function.to_le_bytes(),
            &index.to_le_bytes(),
            &xcr0_in.to_le_bytes(),
            &0u64.to_le_bytes(),
            &eax.to_le_bytes(),
            &ebx.to_le_bytes(),
            &ecx.to_le_bytes(),
            &edx.to_le_bytes(),
        ];
        let mut pos = at;
        for f in fields {
            page[pos..pos + f.len()].copy_from_slice(f);
            pos += f.len();
        }
    }
    Ok(page)
}

/// The page for vCPU 0 of a `vcpus`-vCPU guest on this host's KVM, presenting `vcpu_sig`
/// as leaf 1 EAX like the vCPUs do. The AMD-SP does not hash a CPUID page into the launch
/// digest (its PAGE_INFO carries no contents digest), so the page depends on the host only
/// where the firmware checks it against the real CPU.
pub fn from_kvm(vcpus: u8, vcpu_sig: u32) -> Result<Box<[u8; PAGE_LEN]>, TeeError> {
    let kvm = kvm_ioctls::Kvm::new().map_err(TeeError::Cpuid)?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(TeeError::Cpuid)?;
    let mut vcpu0 =
        crate::arch::cpuid::for_vcpu(&supported, 0, vcpus).map_err(|_| TeeError::CpuidTooLarge)?;
    crate::arch::cpuid::present_signature(&mut vcpu0, vcpu_sig);
    build(vcpu0.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(function: u32, index: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ..Default::default()
        }
    }

    #[test]
    fn entries_sorted_filtered_and_cbit_present() {
        let page = build(&[
            e(0x8000_0001, 0, 7),
            e(0, 0, 0x10),
            e(0x4000_0000, 0, 1),
            e(0xd, 0, 2),
        ])
        .unwrap();
        assert_eq!(u32::from_le_bytes(page[0..4].try_into().unwrap()), 4);
        let func = |i: usize| {
            let at = HEADER_LEN + i * ENTRY_LEN;
            u32::from_le_bytes(page[at..at + 4].try_into().unwrap())
        };
        assert_eq!(
            [func(0), func(1), func(2), func(3)],
            [0, 0xd, 0x8000_0001, 0x8000_001f]
        );
        // xcr0_in of leaf 0xD subleaf 0
        let at = HEADER_LEN + ENTRY_LEN + 8;
        assert_eq!(u64::from_le_bytes(page[at..at + 8].try_into().unwrap()), 1);
        // EBX of the synthetic 0x8000001F: C-bit 51.
        let at = HEADER_LEN + 3 * ENTRY_LEN + 28;
        assert_eq!(page[at] & 0x3f, 51);
    }

    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn this_hosts_kvm_fits() {
        crate::vmm::test_utils::require_kvm();
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let s = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        assert!(!s.as_slice().is_empty());
        let page = from_kvm(2, 0x00a0_0f11).unwrap();
        let count = u32::from_le_bytes(page[0..4].try_into().unwrap());
        assert!(count > 10 && count <= 64, "{count}");
    }

    #[test]
    fn too_many_entries_is_an_error() {
        let many: Vec<_> = (0..70).map(|i| e(0x4, i, 1)).collect();
        assert!(matches!(build(&many), Err(TeeError::CpuidTooLarge)));
    }
}
