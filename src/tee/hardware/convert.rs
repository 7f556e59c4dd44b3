//! Private/shared conversions an SNP guest asks for at run time: `KVM_HC_MAP_GPA_RANGE`
//! hypercalls and `KVM_EXIT_MEMORY_FAULT` exits. Every guest-given address and length is
//! checked against the registered guest RAM before KVM sees it (the guest may be hostile).

use std::sync::Arc;

use kvm_ioctls::VmFd;

use super::uapi;
use super::HardwareError;
use crate::tee::TeeError;

const PAGE: u64 = 4096;

/// Guest RAM ranges `(gpa, len)` registered with KVM, sorted, page aligned, disjoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestRanges(Vec<(u64, u64)>);

impl GuestRanges {
    /// Adds a registered region.
    pub fn add(&mut self, gpa: u64, len: u64) -> Result<(), TeeError> {
        let end = gpa.checked_add(len).ok_or(TeeError::Layout)?;
        if len == 0 || gpa % PAGE != 0 || len % PAGE != 0 {
            return Err(TeeError::Layout);
        }
        if self.0.iter().any(|&(s, l)| gpa < s + l && s < end) {
            return Err(TeeError::Layout);
        }
        self.0.push((gpa, len));
        self.0.sort_unstable();
        Ok(())
    }

    /// Whether `[gpa, gpa + len)` is non-empty, page aligned and inside one region.
    pub fn check(&self, gpa: u64, len: u64) -> Result<(), HardwareError> {
        let end = gpa
            .checked_add(len)
            .ok_or(HardwareError::GuestRange { gpa, len })?;
        if len == 0 || gpa % PAGE != 0 || len % PAGE != 0 {
            return Err(HardwareError::GuestRange { gpa, len });
        }
        if self.0.iter().any(|&(s, l)| gpa >= s && end <= s + l) {
            Ok(())
        } else {
            Err(HardwareError::GuestRange { gpa, len })
        }
    }
}

/// A conversion the guest asked for, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    /// Start (page aligned).
    pub gpa: u64,
    /// Length (whole pages).
    pub len: u64,
    /// Make private (encrypted) or shared.
    pub private: bool,
}

/// Validates `KVM_HC_MAP_GPA_RANGE(gpa, npages, attrs)`.
pub fn parse_map_gpa_range(
    ranges: &GuestRanges,
    args: [u64; 6],
) -> Result<Conversion, HardwareError> {
    let (gpa, npages, attrs) = (args[0], args[1], args[2]);
    if attrs & !uapi::MAP_GPA_RANGE_VALID != 0 {
        return Err(HardwareError::GuestAttributes { bits: attrs });
    }
    let len = npages
        .checked_mul(PAGE)
        .ok_or(HardwareError::GuestRange { gpa, len: u64::MAX })?;
    ranges.check(gpa, len)?;
    Ok(Conversion {
        gpa,
        len,
        private: attrs & uapi::MAP_GPA_RANGE_ENCRYPTED != 0,
    })
}

/// Validates a `KVM_EXIT_MEMORY_FAULT`: the access wants `[gpa, gpa + size)` private when
/// `flags` has `KVM_MEMORY_EXIT_FLAG_PRIVATE`, shared otherwise.
pub fn parse_memory_fault(
    ranges: &GuestRanges,
    flags: u64,
    gpa: u64,
    size: u64,
) -> Result<Conversion, HardwareError> {
    if flags & !uapi::MEMORY_EXIT_FLAG_PRIVATE != 0 {
        return Err(HardwareError::GuestAttributes { bits: flags });
    }
    ranges.check(gpa, size)?;
    Ok(Conversion {
        gpa,
        len: size,
        private: flags & uapi::MEMORY_EXIT_FLAG_PRIVATE != 0,
    })
}

/// Applies guest conversions to a VM (shared by all vCPU threads).
pub trait MemoryConverter: Send + Sync + std::fmt::Debug {
    /// Handles `KVM_HC_MAP_GPA_RANGE`; returns the hypercall's return value (0 or
    /// `-EINVAL`/`-EFAULT` as the guest reads it).
    fn map_gpa_range(&self, args: [u64; 6]) -> u64;
    /// Handles `KVM_EXIT_MEMORY_FAULT`; false when the vCPU cannot continue.
    fn memory_fault(&self, flags: u64, gpa: u64, size: u64) -> bool;
}

/// [`MemoryConverter`] issuing `KVM_SET_MEMORY_ATTRIBUTES` on a VM fd.
#[derive(Debug)]
pub struct AttributeConverter {
    vm: Arc<VmFd>,
    ranges: GuestRanges,
}

impl AttributeConverter {
    /// Converts within `ranges` of `vm`.
    pub fn new(vm: Arc<VmFd>, ranges: GuestRanges) -> Self {
        AttributeConverter { vm, ranges }
    }

    fn apply(&self, c: Conversion) -> Result<(), HardwareError> {
        let attr = uapi::kvm_memory_attributes {
            address: c.gpa,
            size: c.len,
            attributes: if c.private {
                uapi::MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            },
            flags: 0,
        };
        self.vm
            .set_memory_attributes(attr)
            .map_err(HardwareError::Attributes)
    }
}

/// `-errno` as the 64-bit register value a guest reads.
fn neg_errno(errno: i32) -> u64 {
    (-i64::from(errno)) as u64
}

impl MemoryConverter for AttributeConverter {
    fn map_gpa_range(&self, args: [u64; 6]) -> u64 {
        match parse_map_gpa_range(&self.ranges, args).and_then(|c| self.apply(c)) {
            Ok(()) => 0,
            Err(e) => {
                log::warn!("guest KVM_HC_MAP_GPA_RANGE refused: {e}");
                neg_errno(match e {
                    HardwareError::Attributes(k) => k.errno(),
                    _ => libc::EINVAL,
                })
            }
        }
    }

    fn memory_fault(&self, flags: u64, gpa: u64, size: u64) -> bool {
        match parse_memory_fault(&self.ranges, flags, gpa, size).and_then(|c| self.apply(c)) {
            Ok(()) => true,
            Err(e) => {
                log::error!("guest memory fault at {gpa:#x} (+{size:#x}) cannot be resolved: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> GuestRanges {
        let mut r = GuestRanges::default();
        r.add(0, 0xc000_0000).unwrap();
        r.add(0xffff_e000, 0x2000).unwrap();
        r.add(0x1_0000_0000, 0x4000_0000).unwrap();
        r
    }

    #[test]
    fn ranges_reject_overlap_and_misalignment() {
        let mut r = ranges();
        assert!(r.add(0x1000, 0x1000).is_err(), "overlap");
        assert!(r.add(0xd000_0800, 0x1000).is_err(), "unaligned");
        assert!(r.add(0xd000_0000, 0).is_err(), "empty");
        assert!(r.add(u64::MAX - 0xfff, 0x2000).is_err(), "wraps");
    }

    #[test]
    fn map_gpa_range_is_validated() {
        let r = ranges();
        let ok = parse_map_gpa_range(&r, [0x10_0000, 4, uapi::MAP_GPA_RANGE_ENCRYPTED, 0, 0, 0])
            .unwrap();
        assert_eq!(
            ok,
            Conversion {
                gpa: 0x10_0000,
                len: 0x4000,
                private: true
            }
        );
        let shared = parse_map_gpa_range(&r, [0x1_0000_0000, 512, 1, 0, 0, 0]).unwrap();
        assert!(!shared.private, "2M hint, decrypted");
        // Hostile inputs.
        for args in [
            [0x10_0800, 1, 0, 0, 0, 0],            // unaligned
            [0x10_0000, 0, 0, 0, 0, 0],            // empty
            [0xbfff_f000, 2, 0, 0, 0, 0],          // runs into the MMIO gap
            [0xd000_0000, 1, 0, 0, 0, 0],          // MMIO, not RAM
            [0xffff_f000, 2, 0, 0, 0, 0],          // crosses firmware into high RAM
            [0x10_0000, u64::MAX / 2, 0, 0, 0, 0], // length overflows
            [!0xfff, 16, 0, 0, 0, 0],              // end overflows
            [0x10_0000, 1, 1 << 5, 0, 0, 0],       // unknown attribute bit
        ] {
            assert!(parse_map_gpa_range(&r, args).is_err(), "{args:x?}");
        }
    }

    #[test]
    fn memory_faults_are_validated() {
        let r = ranges();
        let c = parse_memory_fault(&r, uapi::MEMORY_EXIT_FLAG_PRIVATE, 0x2000, 0x1000).unwrap();
        assert!(c.private);
        assert!(!parse_memory_fault(&r, 0, 0x2000, 0x1000).unwrap().private);
        assert!(parse_memory_fault(&r, 1, 0x2000, 0x1000).is_err());
        assert!(parse_memory_fault(&r, 0, 0xc000_0000, 0x1000).is_err());
        assert!(parse_memory_fault(&r, 0, 0x2000, 0).is_err());
    }

    /// Through a real VM fd: hostile requests are answered without reaching KVM, valid ones
    /// reach `KVM_SET_MEMORY_ATTRIBUTES` (which a VM without private memory refuses, and the
    /// guest gets KVM's errno, not success).
    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn converter_answers_the_guest() {
        crate::vmm::test_utils::require_kvm();
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        let c = AttributeConverter::new(vm, ranges());
        let einval = neg_errno(libc::EINVAL);
        assert_eq!(c.map_gpa_range([0xd000_0000, 1, 0, 0, 0, 0]), einval);
        assert_eq!(c.map_gpa_range([0x1000, 1, 1 << 9, 0, 0, 0]), einval);
        assert!(!c.memory_fault(0, 0xd000_0000, 0x1000));
        let r = c.map_gpa_range([0x1000, 1, uapi::MAP_GPA_RANGE_ENCRYPTED, 0, 0, 0]);
        assert_ne!(r, 0, "a default VM has no private memory");
        assert!((r as i64) < 0);
    }

    #[test]
    fn errno_is_negative_for_the_guest() {
        assert_eq!(neg_errno(libc::EINVAL) as i64, -22);
    }
}
