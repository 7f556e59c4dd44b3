//! Where the firmware lives, where it starts, and how it reports failure.

/// Size of the image: one page for the SEV-ES AP jump table and firmware stack, one page
/// for the parameter block, code and descriptor tables.
pub const IMAGE_SIZE: usize = 0x2000;

/// Guest-physical address of the image: it ends at 4 GiB.
pub const IMAGE_GPA: u64 = 0x1_0000_0000 - IMAGE_SIZE as u64;

/// Guest-physical address of the SEV-ES AP jump table (first page of the image). The
/// kernel writes its trampoline there as `u16 ip, u16 cs`.
pub const AP_JUMP_TABLE_GPA: u64 = IMAGE_GPA;

/// Guest-physical address of the parameter block (second page of the image).
pub const PARAM_BLOCK_GPA: u64 = IMAGE_GPA + 0x1000;

/// Offset of the parameter block in the image file.
pub const PARAM_BLOCK_OFFSET: usize = 0x1000;

/// Code-segment base and selector of every vCPU at reset (architectural values).
pub const RESET_CS_BASE: u64 = 0xFFFF_0000;
/// Code-segment selector at reset.
pub const RESET_CS_SELECTOR: u16 = 0xF000;

/// RIP of the boot processor (the architectural reset vector 0xFFFFFFF0).
pub const BSP_ENTRY_IP: u64 = 0xFFF0;

/// RIP of SEV-ES/SNP application processors in their measured VMSA (GPA 0xFFFFFFF8).
pub const AP_ENTRY_IP: u64 = 0xFFF8;

/// I/O port that receives one byte (the error code) when the firmware stops on an error in
/// a guest without SEV-ES. SEV-ES/SNP guests request termination through the GHCB MSR
/// protocol instead, with reason-code set [`GHCB_TERM_REASON_SET`].
pub const FATAL_PORT: u16 = 0xF5;

/// GHCB termination reason-code set used by the firmware.
pub const GHCB_TERM_REASON_SET: u8 = 0xA;

/// Why the firmware stopped (the byte written to [`FATAL_PORT`] or the GHCB termination
/// reason code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatalError {
    /// The parameter block is missing, unpatched or inconsistent.
    BadParameters,
    /// The page-table region cannot map all e820 RAM.
    PageTableRegionTooSmall,
    /// The C-bit position is missing or outside 32..=51.
    BadCbitPosition,
    /// PVALIDATE failed.
    PvalidateFailed,
    /// The hypervisor answered a GHCB MSR protocol request wrongly.
    GhcbProtocol,
    /// The hypervisor refused the AP jump table address.
    JumpTableRefused,
    /// SNP was detected but the CC blob (secrets/CPUID pages) in the parameter block is
    /// missing or malformed.
    BadSnpParameters,
    /// A #VC for something other than CPUID.
    UnexpectedVc,
    /// The e820 table in boot_params is malformed.
    BadE820,
    /// An unexpected CPU exception with this vector.
    Exception(u8),
    /// A code this version does not know.
    Unknown(u8),
}

impl FatalError {
    /// Decodes the byte the firmware reported.
    pub fn from_code(code: u8) -> Self {
        match code {
            0x01 => Self::BadParameters,
            0x02 => Self::PageTableRegionTooSmall,
            0x03 => Self::BadCbitPosition,
            0x04 => Self::PvalidateFailed,
            0x05 => Self::GhcbProtocol,
            0x06 => Self::JumpTableRefused,
            0x07 => Self::BadSnpParameters,
            0x08 => Self::UnexpectedVc,
            0x09 => Self::BadE820,
            0x80..=0x9F => Self::Exception(code & 0x1F),
            _ => Self::Unknown(code),
        }
    }

    /// Decodes a GHCB MSR termination request (`KVM_SYSTEM_EVENT_SEV_TERM` data), if it
    /// came from this firmware.
    pub fn from_ghcb_term(msr: u64) -> Option<Self> {
        let info = msr & 0xFFF;
        let set = (msr >> 12) & 0xF;
        let code = (msr >> 16) & 0xFF;
        if info != 0x100 || set != u64::from(GHCB_TERM_REASON_SET) {
            return None;
        }
        u8::try_from(code).ok().map(Self::from_code)
    }
}

/// Bytes of page-table region the firmware needs when the highest e820 RAM address (end,
/// exclusive) is `ram_end`: PML4, PDPT, the GHCB table and page, and one page directory per
/// GiB mapped (at least 4 GiB are always mapped).
pub fn page_table_region_size(ram_end: u64) -> u64 {
    let gib = ram_end.div_ceil(1 << 30).max(4);
    (4 + gib) * 0x1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ends_at_4gib() {
        assert_eq!(IMAGE_GPA + IMAGE_SIZE as u64, 1 << 32);
        assert_eq!(RESET_CS_BASE + BSP_ENTRY_IP, 0xFFFF_FFF0);
        assert_eq!(RESET_CS_BASE + AP_ENTRY_IP, 0xFFFF_FFF8);
    }

    #[test]
    fn fatal_codes_decode() {
        assert_eq!(
            FatalError::from_code(2),
            FatalError::PageTableRegionTooSmall
        );
        assert_eq!(FatalError::from_code(0x8D), FatalError::Exception(13));
        assert_eq!(FatalError::from_code(0x42), FatalError::Unknown(0x42));
        assert_eq!(
            FatalError::from_ghcb_term(0x100 | (0xA << 12) | (4 << 16)),
            Some(FatalError::PvalidateFailed)
        );
        // Linux's own reason-code set is not ours.
        assert_eq!(FatalError::from_ghcb_term(0x100 | (1 << 12)), None);
    }

    #[test]
    fn page_table_region_sizes() {
        assert_eq!(page_table_region_size(512 << 20), 8 * 0x1000);
        assert_eq!(page_table_region_size(4 << 30), 8 * 0x1000);
        assert_eq!(page_table_region_size((4 << 30) + 1), 9 * 0x1000);
        assert_eq!(page_table_region_size(64 << 30), 68 * 0x1000);
    }
}
