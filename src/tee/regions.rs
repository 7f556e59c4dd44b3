//! The measured regions of a confidential launch, in the order the launch sequence issues
//! them (docs/measurement.md). A pure function of where the loader put things.

use krun_resetvec::SnpPages;

use super::{TeeError, TeeMode};
use crate::arch::layout::{
    CMDLINE_START, HIMEM_START, KERNEL_START, MPTABLE_START, PAGE_SIZE, SNP_CPUID_START,
    SNP_SECRETS_START, ZERO_PAGE_START,
};
use crate::vmm::loader::{FirmwareLayout, LoadedGuest};

/// How SNP_LAUNCH_UPDATE treats a region (SEV/SEV-ES measure every region's bytes with
/// LAUNCH_UPDATE_DATA, except `Zero`, `Secrets` and `Cpuid`, which are SNP-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// Contents measured.
    Normal,
    /// Validated as zero pages.
    Zero,
    /// The SNP secrets page.
    Secrets,
    /// The SNP CPUID page.
    Cpuid,
}

/// One measured range of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredRegion {
    /// Name used in logs and `krun-sev measure --json`.
    pub what: &'static str,
    /// Guest physical address (page aligned).
    pub gpa: u64,
    /// Length (whole pages).
    pub len: u64,
    /// Page type.
    pub kind: PageKind,
}

/// Firmware layout of a launch: the page-table region starts at 1 MiB, below the kernel;
/// SNP adds the secrets and CPUID pages at their fixed addresses.
pub fn firmware_layout(mode: TeeMode, ram_bytes: u64) -> FirmwareLayout {
    let ram_end = crate::arch::layout::ram_regions(ram_bytes)
        .iter()
        .map(|(s, l)| s + l)
        .max()
        .unwrap_or(0);
    FirmwareLayout {
        pt_base: HIMEM_START,
        pt_size: krun_resetvec::layout::page_table_region_size(ram_end),
        snp: match mode {
            TeeMode::Snp => Some(SnpPages {
                secrets: SNP_SECRETS_START,
                cpuid: SNP_CPUID_START,
            }),
            TeeMode::Sev | TeeMode::SevEs => None,
        },
    }
}

fn page_down(a: u64) -> u64 {
    a & !(PAGE_SIZE - 1)
}

fn page_up(a: u64) -> Option<u64> {
    a.checked_next_multiple_of(PAGE_SIZE)
}

fn span(
    what: &'static str,
    start: u64,
    end: u64,
    kind: PageKind,
) -> Result<MeasuredRegion, TeeError> {
    let gpa = page_down(start);
    let end = page_up(end).ok_or(TeeError::Layout)?;
    if end <= gpa {
        return Err(TeeError::Layout);
    }
    Ok(MeasuredRegion {
        what,
        gpa,
        len: end - gpa,
        kind,
    })
}

/// The regions, in launch order: firmware image, kernel, initrd with the launch segment,
/// zero page, command line, MP table; SNP then adds the page-table region (zero pages), the
/// secrets page and the CPUID page. VMSAs follow (not memory regions; see `measure`).
pub fn measured_regions(
    mode: TeeMode,
    loaded: &LoadedGuest,
) -> Result<Vec<MeasuredRegion>, TeeError> {
    let fw = loaded.firmware.ok_or(TeeError::Layout)?;
    if (mode == TeeMode::Snp) != fw.snp.is_some() {
        return Err(TeeError::Layout);
    }
    let image = krun_resetvec::IMAGE_GPA;
    let mut out = vec![span(
        "firmware",
        image,
        image + krun_resetvec::IMAGE_SIZE as u64,
        PageKind::Normal,
    )?];
    out.push(span(
        "kernel",
        KERNEL_START,
        loaded.kernel.end,
        PageKind::Normal,
    )?);
    if let Some((addr, size)) = loaded.initrd {
        let end = addr.checked_add(size).ok_or(TeeError::Layout)?;
        out.push(span("initrd", addr, end, PageKind::Normal)?);
    }
    out.push(span(
        "boot_params",
        ZERO_PAGE_START,
        ZERO_PAGE_START + 1,
        PageKind::Normal,
    )?);
    out.push(span(
        "cmdline",
        CMDLINE_START,
        CMDLINE_START + loaded.cmdline_len,
        PageKind::Normal,
    )?);
    out.push(span(
        "mptable",
        MPTABLE_START,
        MPTABLE_START + 1,
        PageKind::Normal,
    )?);
    if let Some(snp) = fw.snp {
        out.push(span(
            "page_tables",
            fw.pt_base,
            fw.pt_base + fw.pt_size,
            PageKind::Zero,
        )?);
        out.push(span(
            "secrets",
            snp.secrets,
            snp.secrets + 1,
            PageKind::Secrets,
        )?);
        out.push(span("cpuid", snp.cpuid, snp.cpuid + 1, PageKind::Cpuid)?);
    }
    for (i, a) in out.iter().enumerate() {
        for b in &out[i + 1..] {
            if a.gpa < b.gpa + b.len && b.gpa < a.gpa + a.len {
                return Err(TeeError::Layout);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::LoadedKernel;

    fn loaded(mode: TeeMode) -> LoadedGuest {
        LoadedGuest {
            kernel: LoadedKernel {
                entry: KERNEL_START,
                end: KERNEL_START + 0x1234,
            },
            initrd: Some((crate::arch::layout::INITRD_START, 0x3001)),
            cmdline_len: 100,
            firmware: Some(firmware_layout(mode, 512 << 20)),
        }
    }

    #[test]
    fn order_and_alignment() {
        let r = measured_regions(TeeMode::SevEs, &loaded(TeeMode::SevEs)).unwrap();
        let names: Vec<_> = r.iter().map(|r| r.what).collect();
        assert_eq!(
            names,
            [
                "firmware",
                "kernel",
                "initrd",
                "boot_params",
                "cmdline",
                "mptable"
            ]
        );
        for region in &r {
            assert_eq!(region.gpa % PAGE_SIZE, 0, "{}", region.what);
            assert_eq!(region.len % PAGE_SIZE, 0, "{}", region.what);
            assert_eq!(region.kind, PageKind::Normal);
        }
        assert_eq!((r[0].gpa, r[0].len), (0xffff_e000, 0x2000));
        assert_eq!(r[1].len, 0x2000);
        assert_eq!(r[2].len, 0x4000);
        assert_eq!((r[5].gpa, r[5].len), (0x9f000, 0x1000));
    }

    #[test]
    fn snp_adds_zero_secrets_and_cpuid_pages() {
        let r = measured_regions(TeeMode::Snp, &loaded(TeeMode::Snp)).unwrap();
        let tail: Vec<_> = r[6..].iter().map(|r| (r.what, r.gpa, r.kind)).collect();
        assert_eq!(
            tail,
            [
                ("page_tables", HIMEM_START, PageKind::Zero),
                ("secrets", SNP_SECRETS_START, PageKind::Secrets),
                ("cpuid", SNP_CPUID_START, PageKind::Cpuid)
            ]
        );
        // 512 MiB of RAM: PML4, PDPT, GHCB table and page, four page directories.
        assert_eq!(r[6].len, 8 * PAGE_SIZE);
    }

    #[test]
    fn mismatched_layout_is_refused() {
        assert!(measured_regions(TeeMode::Snp, &loaded(TeeMode::SevEs)).is_err());
        let mut plain = loaded(TeeMode::Sev);
        plain.firmware = None;
        assert!(measured_regions(TeeMode::Sev, &plain).is_err());
    }
}
