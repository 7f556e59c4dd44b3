//! Guest CPUID: KVM's supported set, normalised per vCPU for our topology (one socket,
//! `vcpus` cores, one thread per core, APIC ID = vCPU index).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Errors while building the guest CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The vCPU count is zero or above what the APIC ID fields hold.
    #[error("vCPU count is out of range")]
    VcpuCount,
    /// The filtered entries do not fit a KVM CPUID buffer.
    #[error("cannot build the CPUID buffer")]
    Buffer(#[source] vmm_sys_util::fam::Error),
}

/// Largest vCPU count the topology leaves encode (8-bit APIC IDs, xAPIC mode).
pub const MAX_VCPUS: u8 = 254;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_THERMAL: u32 = 0x6;
const LEAF_PMU: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR_BIT: u32 = 1 << 31;
const ECX_TSC_DEADLINE_BIT: u32 = 1 << 24;
const EDX_HTT_BIT: u32 = 1 << 28;
/// `CLFLUSH` line size in 8-byte units, reported in CPUID.1:EBX[15:8].
const CLFLUSH_LINE_SIZE: u32 = 8;
/// Thermal/power leaf bits the guest must not see (HWP and energy-perf bias control MSRs
/// KVM does not emulate).
const THERMAL_EAX_HWP_MASK: u32 = 0x0000_ff80;
const THERMAL_ECX_EPB_BIT: u32 = 1 << 3;

/// Number of bits of the APIC ID that select the core within the package.
fn core_bits(vcpus: u8) -> u32 {
    let n = u32::from(vcpus);
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts one entry for vCPU `cpu_index` out of `vcpus`.
fn normalize_entry(entry: &mut kvm_cpuid_entry2, cpu_index: u8, vcpus: u8) {
    let apic_id = u32::from(cpu_index);
    let count = u32::from(vcpus);
    match entry.function {
        LEAF_FEATURES => {
            // EBX: [31:24] initial APIC ID, [23:16] max logical processors, [15:8] CLFLUSH size.
            entry.ebx = (apic_id << 24) | (count << 16) | (CLFLUSH_LINE_SIZE << 8);
            entry.ecx |= ECX_HYPERVISOR_BIT;
            // The in-kernel LAPIC emulates the TSC deadline timer, whatever the host has.
            entry.ecx |= ECX_TSC_DEADLINE_BIT;
            if count > 1 {
                entry.edx |= EDX_HTT_BIT;
            } else {
                entry.edx &= !EDX_HTT_BIT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX[31:26]: cores per package - 1. EAX[25:14]: threads sharing this cache - 1;
            // levels 1-2 are per core, level 3 is shared by the whole package.
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            entry.eax &= 0x3fff;
            entry.eax |= ((count - 1) << 26) | (sharing << 14);
        }
        LEAF_THERMAL => {
            entry.eax &= !THERMAL_EAX_HWP_MASK;
            entry.ecx &= !THERMAL_ECX_EPB_BIT;
        }
        LEAF_PMU => {
            // No virtual PMU: a guest probing it would trap on MSRs we do not expose.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            entry.edx = apic_id;
            match entry.index {
                // SMT level: one thread per core.
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (1 << 8) | entry.index;
                }
                // Core level: all vCPUs in one package.
                1 => {
                    entry.eax = core_bits(vcpus);
                    entry.ebx = count;
                    entry.ecx = (2 << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        LEAF_AMD_ADDR_SIZES => {
            // ECX[15:12] APIC ID size, ECX[7:0] number of threads - 1.
            entry.ecx = (core_bits(vcpus) << 12) | (count - 1);
        }
        LEAF_AMD_EXT_APIC_ID => {
            entry.eax = apic_id;
            // EBX[15:8] threads per core - 1 (zero), EBX[7:0] core ID.
            entry.ebx = apic_id & 0xff;
            entry.ecx = 0; // one node
        }
        _ => {}
    }
}

/// The CPUID for vCPU `cpu_index` out of `vcpus`, from KVM's supported entries.
pub fn for_vcpu(supported: &CpuId, cpu_index: u8, vcpus: u8) -> Result<CpuId, CpuidError> {
    if vcpus == 0 || vcpus > MAX_VCPUS || cpu_index >= vcpus {
        return Err(CpuidError::VcpuCount);
    }
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    for entry in &mut entries {
        normalize_entry(entry, cpu_index, vcpus);
    }
    // Leaf 0xb must report its sub-leaves as index-significant.
    for entry in &mut entries {
        if entry.function == LEAF_EXT_TOPOLOGY || entry.function == LEAF_V2_EXT_TOPOLOGY {
            entry.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        }
    }
    CpuId::from_entries(&entries).map_err(CpuidError::Buffer)
}

/// Makes `cpuid` present `signature` as leaf 1 EAX (family, model, stepping), as a named
/// vCPU model does; other leaf 1 registers stay KVM's.
pub fn present_signature(cpuid: &mut CpuId, signature: u32) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == 1 && entry.index == 0 {
            entry.eax = signature;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn topology_for_four_vcpus() {
        let supported = CpuId::from_entries(&[
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xa, 0),
            entry(0x8000_0008, 0),
        ])
        .unwrap();
        let c = for_vcpu(&supported, 2, 4).unwrap();
        let leaf1 = find(&c, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 2);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR_BIT, 0);
        assert_ne!(leaf1.edx & EDX_HTT_BIT, 0);
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 2));
        let pmu = find(&c, 0xa, 0);
        assert_eq!((pmu.eax, pmu.ebx), (0, 0));
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, (2 << 12) | 3);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = entry(1, 0);
        e.edx = EDX_HTT_BIT;
        let c = for_vcpu(&CpuId::from_entries(&[e]).unwrap(), 0, 1).unwrap();
        assert_eq!(find(&c, 1, 0).edx & EDX_HTT_BIT, 0);
    }

    #[test]
    fn rejects_bad_counts() {
        let s = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        assert!(for_vcpu(&s, 0, 0).is_err());
        assert!(for_vcpu(&s, 3, 3).is_err());
        assert!(for_vcpu(&s, 0, 255).is_err());
    }

    #[test]
    fn core_bits_rounds_up() {
        assert_eq!(core_bits(1), 0);
        assert_eq!(core_bits(2), 1);
        assert_eq!(core_bits(3), 2);
        assert_eq!(core_bits(4), 2);
        assert_eq!(core_bits(5), 3);
    }
}
