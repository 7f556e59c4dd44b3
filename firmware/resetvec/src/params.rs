//! The parameter block: what the VMM patches into the image before it is measured.
//!
//! Layout (little endian, offsets from the start of the block, which is at image offset
//! [`PARAM_BLOCK_OFFSET`], GPA [`PARAM_BLOCK_GPA`](crate::layout::PARAM_BLOCK_GPA)); it must match `resetvec.asm`:
//!
//! | off  | size | field | set by |
//! |------|------|-------|--------|
//! | 0x00 | 8  | magic `KRUNRVFW` | build |
//! | 0x08 | 4  | layout version (1) | build |
//! | 0x0C | 4  | block size (0x80) | build |
//! | 0x10 | 4  | image size (0x2000) | build |
//! | 0x14 | 2  | BSP IP (CS base 0xFFFF0000) | build |
//! | 0x16 | 2  | SEV-ES AP IP (CS base 0xFFFF0000) | build |
//! | 0x18 | 8  | AP jump table GPA | build |
//! | 0x20 | 8  | kernel 64-bit entry GPA | VMM |
//! | 0x28 | 8  | boot_params GPA | VMM |
//! | 0x30 | 8  | page-table region GPA | VMM |
//! | 0x38 | 8  | page-table region size | VMM |
//! | 0x40 | 40 | `struct cc_blob_sev_info` (magic, version 1 from the build; secrets and CPUID page GPA/length from the VMM) | both |
//! | 0x68 | 24 | reserved, zero | build |

use crate::layout::{
    page_table_region_size, AP_ENTRY_IP, AP_JUMP_TABLE_GPA, BSP_ENTRY_IP, IMAGE_GPA, IMAGE_SIZE,
    PARAM_BLOCK_OFFSET,
};

/// Magic at the start of the parameter block.
pub const MAGIC: [u8; 8] = *b"KRUNRVFW";
/// Layout version this crate writes.
pub const VERSION: u32 = 1;
/// Size of the parameter block.
pub const BLOCK_SIZE: usize = 0x80;

/// Field offsets inside the parameter block.
pub mod offset {
    /// Magic.
    pub const MAGIC: usize = 0x00;
    /// Layout version.
    pub const VERSION: usize = 0x08;
    /// Parameter block size.
    pub const BLOCK_SIZE: usize = 0x0C;
    /// Image size.
    pub const IMAGE_SIZE: usize = 0x10;
    /// BSP entry IP.
    pub const BSP_IP: usize = 0x14;
    /// AP entry IP.
    pub const AP_IP: usize = 0x16;
    /// AP jump table GPA.
    pub const JUMP_TABLE: usize = 0x18;
    /// Kernel 64-bit entry GPA.
    pub const KERNEL_ENTRY: usize = 0x20;
    /// boot_params GPA.
    pub const BOOT_PARAMS: usize = 0x28;
    /// Page-table region GPA.
    pub const PT_BASE: usize = 0x30;
    /// Page-table region size.
    pub const PT_SIZE: usize = 0x38;
    /// `struct cc_blob_sev_info`.
    pub const CC_BLOB: usize = 0x40;
    /// cc_blob_sev_info.magic.
    pub const CC_MAGIC: usize = CC_BLOB;
    /// cc_blob_sev_info.version.
    pub const CC_VERSION: usize = CC_BLOB + 0x04;
    /// cc_blob_sev_info.secrets_phys.
    pub const CC_SECRETS_PHYS: usize = CC_BLOB + 0x08;
    /// cc_blob_sev_info.secrets_len.
    pub const CC_SECRETS_LEN: usize = CC_BLOB + 0x10;
    /// cc_blob_sev_info.cpuid_phys.
    pub const CC_CPUID_PHYS: usize = CC_BLOB + 0x18;
    /// cc_blob_sev_info.cpuid_len.
    pub const CC_CPUID_LEN: usize = CC_BLOB + 0x20;
    /// End of `struct cc_blob_sev_info` (it is 40 bytes, packed).
    pub const CC_BLOB_END: usize = CC_BLOB + 40;
}

/// `CC_BLOB_SEV_HDR_MAGIC` (Linux `arch/x86/include/asm/sev.h`).
pub const CC_BLOB_MAGIC: u32 = 0x4544_4d41;
/// GPA of the CC blob the firmware hands to an SNP kernel in `boot_params.cc_blob_address`.
pub const CC_BLOB_GPA: u64 = crate::layout::PARAM_BLOCK_GPA + offset::CC_BLOB as u64;

const PAGE: u64 = 0x1000;
/// Smallest page-table region the firmware accepts (4 GiB mapped).
pub const MIN_PT_REGION: u64 = 8 * PAGE;

/// SNP secrets and CPUID pages, published to the kernel in the CC blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpPages {
    /// GPA of the secrets page (SNP_LAUNCH_UPDATE type SECRETS).
    pub secrets: u64,
    /// GPA of the CPUID page (SNP_LAUNCH_UPDATE type CPUID).
    pub cpuid: u64,
}

/// What the VMM tells the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareParams {
    /// GPA of the kernel's 64-bit entry (a bzImage's load address + 0x200, its decompressor's
    /// `startup_64`).
    pub kernel_entry: u64,
    /// GPA of `struct boot_params` (with the e820 table the firmware reads).
    pub boot_params: u64,
    /// GPA of the page-table region (page aligned, below the image).
    pub pt_base: u64,
    /// Size of the page-table region; at least [`page_table_region_size`] of the highest
    /// e820 RAM address.
    pub pt_size: u64,
    /// Secrets and CPUID pages. Set them for SNP launches, and also in the PSP-model run of
    /// an SNP launch, so that both measure the same bytes; the firmware uses them only when
    /// it finds SNP active.
    pub snp: Option<SnpPages>,
}

/// Why a parameter block could not be read or written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    /// The image does not have the size of this firmware.
    #[error("firmware image has the wrong size")]
    ImageSize,
    /// No parameter block magic at the expected offset.
    #[error("firmware image has no parameter block")]
    Magic,
    /// The parameter block has another layout version or size.
    #[error("firmware parameter block has an unsupported layout")]
    Layout,
    /// The kernel entry address is zero.
    #[error("kernel entry address is zero")]
    KernelEntry,
    /// boot_params is zero or not below the image with a whole page.
    #[error("boot_params address is outside low memory")]
    BootParams,
    /// The page-table region is not page aligned, too small or not below the image.
    #[error("page-table region is misplaced or too small")]
    PageTableRegion,
    /// The page-table region overlaps boot_params or an SNP page.
    #[error("page-table region overlaps another firmware input")]
    Overlap,
    /// An SNP page is zero, not page aligned, or not below the image.
    #[error("SNP secrets or CPUID page address is invalid")]
    SnpPage,
}

fn read_u32(block: &[u8], off: usize) -> Option<u32> {
    let bytes = block.get(off..off + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u16(block: &[u8], off: usize) -> Option<u16> {
    let bytes = block.get(off..off + 2)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u64(block: &[u8], off: usize) -> Option<u64> {
    let bytes = block.get(off..off + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn write(block: &mut [u8], off: usize, bytes: &[u8]) -> Result<(), ParamsError> {
    block
        .get_mut(off..off + bytes.len())
        .ok_or(ParamsError::Layout)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Returns the parameter block of `image` after checking that it is this layout.
fn block_of(image: &[u8]) -> Result<&[u8], ParamsError> {
    if image.len() != IMAGE_SIZE {
        return Err(ParamsError::ImageSize);
    }
    let block = image
        .get(PARAM_BLOCK_OFFSET..PARAM_BLOCK_OFFSET + BLOCK_SIZE)
        .ok_or(ParamsError::ImageSize)?;
    if block.get(offset::MAGIC..offset::MAGIC + 8) != Some(&MAGIC[..]) {
        return Err(ParamsError::Magic);
    }
    let layout_ok = read_u32(block, offset::VERSION) == Some(VERSION)
        && read_u32(block, offset::BLOCK_SIZE).map(|s| s as usize) == Some(BLOCK_SIZE)
        && read_u32(block, offset::IMAGE_SIZE).map(|s| s as usize) == Some(IMAGE_SIZE)
        && read_u16(block, offset::BSP_IP).map(u64::from) == Some(BSP_ENTRY_IP)
        && read_u16(block, offset::AP_IP).map(u64::from) == Some(AP_ENTRY_IP)
        && read_u64(block, offset::JUMP_TABLE) == Some(AP_JUMP_TABLE_GPA)
        && read_u32(block, offset::CC_MAGIC) == Some(CC_BLOB_MAGIC);
    if !layout_ok {
        return Err(ParamsError::Layout);
    }
    Ok(block)
}

fn ranges_overlap(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

impl FirmwareParams {
    /// Checks what the firmware checks, plus overlaps the firmware cannot see.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if self.kernel_entry == 0 {
            return Err(ParamsError::KernelEntry);
        }
        // The firmware reads e820 and writes cc_blob_address with paging set up for the
        // first 4 GiB; keep the whole page below the image.
        if self.boot_params == 0 || self.boot_params > IMAGE_GPA - PAGE {
            return Err(ParamsError::BootParams);
        }
        let pt_end = self.pt_base.checked_add(self.pt_size);
        if self.pt_base == 0
            || self.pt_base % PAGE != 0
            || self.pt_size % PAGE != 0
            || self.pt_size < MIN_PT_REGION
            || pt_end.is_none_or(|end| end > IMAGE_GPA)
        {
            return Err(ParamsError::PageTableRegion);
        }
        if ranges_overlap(self.pt_base, self.pt_size, self.boot_params, PAGE) {
            return Err(ParamsError::Overlap);
        }
        if let Some(snp) = self.snp {
            for page in [snp.secrets, snp.cpuid] {
                if page == 0 || page % PAGE != 0 || page > IMAGE_GPA - PAGE {
                    return Err(ParamsError::SnpPage);
                }
                if ranges_overlap(self.pt_base, self.pt_size, page, PAGE) {
                    return Err(ParamsError::Overlap);
                }
            }
            if snp.secrets == snp.cpuid {
                return Err(ParamsError::SnpPage);
            }
        }
        Ok(())
    }

    /// Page-table region size the firmware needs for RAM ending at `ram_end`.
    pub fn pt_size_for(ram_end: u64) -> u64 {
        page_table_region_size(ram_end)
    }
}

/// Writes `params` into the parameter block of `image` (a copy of [`crate::IMAGE`]). Call it
/// before the image is copied to guest memory and measured.
pub fn patch(image: &mut [u8], params: &FirmwareParams) -> Result<(), ParamsError> {
    block_of(image)?;
    params.validate()?;
    let block = image
        .get_mut(PARAM_BLOCK_OFFSET..PARAM_BLOCK_OFFSET + BLOCK_SIZE)
        .ok_or(ParamsError::ImageSize)?;
    write(
        block,
        offset::KERNEL_ENTRY,
        &params.kernel_entry.to_le_bytes(),
    )?;
    write(
        block,
        offset::BOOT_PARAMS,
        &params.boot_params.to_le_bytes(),
    )?;
    write(block, offset::PT_BASE, &params.pt_base.to_le_bytes())?;
    write(block, offset::PT_SIZE, &params.pt_size.to_le_bytes())?;
    let (secrets, cpuid, len) = match params.snp {
        Some(snp) => (snp.secrets, snp.cpuid, PAGE),
        None => (0, 0, 0),
    };
    write(block, offset::CC_SECRETS_PHYS, &secrets.to_le_bytes())?;
    write(
        block,
        offset::CC_SECRETS_LEN,
        &u32::try_from(len).unwrap_or(0).to_le_bytes(),
    )?;
    write(block, offset::CC_CPUID_PHYS, &cpuid.to_le_bytes())?;
    write(
        block,
        offset::CC_CPUID_LEN,
        &u32::try_from(len).unwrap_or(0).to_le_bytes(),
    )?;
    Ok(())
}

/// A copy of the built firmware with `params` patched in: the bytes to load at
/// [`IMAGE_GPA`] and to measure.
pub fn patched(params: &FirmwareParams) -> Result<Vec<u8>, ParamsError> {
    let mut image = crate::IMAGE.to_vec();
    patch(&mut image, params)?;
    Ok(image)
}

/// Reads back the parameters patched into `image`.
pub fn read(image: &[u8]) -> Result<FirmwareParams, ParamsError> {
    let block = block_of(image)?;
    let field = |off| read_u64(block, off).ok_or(ParamsError::Layout);
    let secrets = field(offset::CC_SECRETS_PHYS)?;
    let cpuid = field(offset::CC_CPUID_PHYS)?;
    let snp = (secrets != 0 || cpuid != 0).then_some(SnpPages { secrets, cpuid });
    Ok(FirmwareParams {
        kernel_entry: field(offset::KERNEL_ENTRY)?,
        boot_params: field(offset::BOOT_PARAMS)?,
        pt_base: field(offset::PT_BASE)?,
        pt_size: field(offset::PT_SIZE)?,
        snp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IMAGE;

    fn params() -> FirmwareParams {
        FirmwareParams {
            kernel_entry: 0x0100_0000,
            boot_params: 0x7000,
            pt_base: 0x10_000,
            pt_size: MIN_PT_REGION,
            snp: None,
        }
    }

    fn le64(image: &[u8], off: usize) -> u64 {
        let at = PARAM_BLOCK_OFFSET + off;
        u64::from_le_bytes(image[at..at + 8].try_into().unwrap())
    }

    fn le32(image: &[u8], off: usize) -> u32 {
        let at = PARAM_BLOCK_OFFSET + off;
        u32::from_le_bytes(image[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn built_image_has_the_documented_header() {
        let img = &IMAGE[..];
        assert_eq!(
            &img[PARAM_BLOCK_OFFSET..PARAM_BLOCK_OFFSET + 8],
            b"KRUNRVFW"
        );
        assert_eq!(le32(img, 0x08), 1);
        assert_eq!(le32(img, 0x0C), 0x80);
        assert_eq!(le32(img, 0x10), 0x2000);
        assert_eq!(le64(img, 0x18), 0xFFFF_E000);
        assert_eq!(le32(img, 0x40), 0x4544_4d41);
        assert_eq!(u16::from_le_bytes([img[0x1044], img[0x1045]]), 1);
        // The VMM fields and the reserved tail are zero as built.
        assert!(img[0x1020..0x1040].iter().all(|&b| b == 0));
        assert!(img[0x1048..0x1080].iter().all(|&b| b == 0));
        // Jump table page is zero: the kernel fills it in, APs read it.
        assert!(img[..0x1000].iter().all(|&b| b == 0));
        // Both entry points are near jumps (E9 rel16) at the documented IPs.
        assert_eq!(img[IMAGE_SIZE - 16], 0xE9);
        assert_eq!(img[IMAGE_SIZE - 8], 0xE9);
    }

    #[test]
    fn patch_writes_every_field_at_its_offset() {
        let mut img = IMAGE.to_vec();
        let p = FirmwareParams {
            snp: Some(SnpPages {
                secrets: 0x5000,
                cpuid: 0x6000,
            }),
            pt_size: 12 * PAGE,
            ..params()
        };
        patch(&mut img, &p).unwrap();
        assert_eq!(le64(&img, 0x20), 0x0100_0000);
        assert_eq!(le64(&img, 0x28), 0x7000);
        assert_eq!(le64(&img, 0x30), 0x10_000);
        assert_eq!(le64(&img, 0x38), 12 * PAGE);
        assert_eq!(le64(&img, 0x48), 0x5000);
        assert_eq!(le32(&img, 0x50), 0x1000);
        assert_eq!(le64(&img, 0x58), 0x6000);
        assert_eq!(le32(&img, 0x60), 0x1000);
        assert_eq!(read(&img).unwrap(), p);
        // Only the VMM fields changed.
        let changed: Vec<usize> = (0..IMAGE_SIZE).filter(|&i| img[i] != IMAGE[i]).collect();
        assert!(changed
            .iter()
            .all(|&i| (0x1020..0x1040).contains(&i) || (0x1048..0x1068).contains(&i)));
        assert_eq!(CC_BLOB_GPA, 0xFFFF_F040);
    }

    #[test]
    fn patch_without_snp_leaves_cc_blob_pages_zero() {
        let mut img = IMAGE.to_vec();
        patch(
            &mut img,
            &FirmwareParams {
                snp: Some(SnpPages {
                    secrets: 0x5000,
                    cpuid: 0x6000,
                }),
                ..params()
            },
        )
        .unwrap();
        patch(&mut img, &params()).unwrap();
        assert_eq!(le64(&img, 0x48), 0);
        assert_eq!(le32(&img, 0x50), 0);
        assert_eq!(read(&img).unwrap().snp, None);
    }

    #[test]
    fn rejects_images_that_are_not_this_firmware() {
        assert_eq!(
            patch(&mut IMAGE[..4096].to_vec(), &params()),
            Err(ParamsError::ImageSize)
        );
        let mut img = IMAGE.to_vec();
        img[PARAM_BLOCK_OFFSET] ^= 1;
        assert_eq!(patch(&mut img, &params()), Err(ParamsError::Magic));
        let mut img = IMAGE.to_vec();
        img[PARAM_BLOCK_OFFSET + offset::VERSION] = 2;
        assert_eq!(patch(&mut img, &params()), Err(ParamsError::Layout));
        let mut img = IMAGE.to_vec();
        img[PARAM_BLOCK_OFFSET + offset::CC_MAGIC] = 0;
        assert_eq!(read(&img), Err(ParamsError::Layout));
    }

    #[test]
    fn rejects_bad_values() {
        let mut img = IMAGE.to_vec();
        let cases = [
            (
                FirmwareParams {
                    kernel_entry: 0,
                    ..params()
                },
                ParamsError::KernelEntry,
            ),
            (
                FirmwareParams {
                    boot_params: 0,
                    ..params()
                },
                ParamsError::BootParams,
            ),
            (
                FirmwareParams {
                    boot_params: IMAGE_GPA,
                    ..params()
                },
                ParamsError::BootParams,
            ),
            (
                FirmwareParams {
                    pt_base: 0x10_800,
                    ..params()
                },
                ParamsError::PageTableRegion,
            ),
            (
                FirmwareParams {
                    pt_base: 0,
                    ..params()
                },
                ParamsError::PageTableRegion,
            ),
            (
                FirmwareParams {
                    pt_size: 7 * PAGE,
                    ..params()
                },
                ParamsError::PageTableRegion,
            ),
            (
                FirmwareParams {
                    pt_size: MIN_PT_REGION + 1,
                    ..params()
                },
                ParamsError::PageTableRegion,
            ),
            (
                FirmwareParams {
                    pt_base: IMAGE_GPA - 4 * PAGE,
                    ..params()
                },
                ParamsError::PageTableRegion,
            ),
            (
                FirmwareParams {
                    pt_base: !0xFFF,
                    ..params()
                },
                ParamsError::PageTableRegion,
            ),
            (
                FirmwareParams {
                    boot_params: 0x12_000,
                    ..params()
                },
                ParamsError::Overlap,
            ),
            (
                FirmwareParams {
                    snp: Some(SnpPages {
                        secrets: 0,
                        cpuid: 0x6000,
                    }),
                    ..params()
                },
                ParamsError::SnpPage,
            ),
            (
                FirmwareParams {
                    snp: Some(SnpPages {
                        secrets: 0x5000,
                        cpuid: 0x6100,
                    }),
                    ..params()
                },
                ParamsError::SnpPage,
            ),
            (
                FirmwareParams {
                    snp: Some(SnpPages {
                        secrets: 0x5000,
                        cpuid: 0x5000,
                    }),
                    ..params()
                },
                ParamsError::SnpPage,
            ),
            (
                FirmwareParams {
                    snp: Some(SnpPages {
                        secrets: 0x5000,
                        cpuid: 1 << 32,
                    }),
                    ..params()
                },
                ParamsError::SnpPage,
            ),
            (
                FirmwareParams {
                    snp: Some(SnpPages {
                        secrets: 0x11_000,
                        cpuid: 0x6000,
                    }),
                    ..params()
                },
                ParamsError::Overlap,
            ),
        ];
        for (p, err) in cases {
            assert_eq!(patch(&mut img, &p), Err(err), "{p:?}");
        }
        // Nothing was written by the failed calls.
        assert_eq!(&img[..], &IMAGE[..]);
    }

    #[test]
    fn patched_copy_matches_in_place_patch() {
        let mut img = IMAGE.to_vec();
        patch(&mut img, &params()).unwrap();
        assert_eq!(patched(&params()).unwrap(), img);
        assert_eq!(
            patched(&FirmwareParams {
                kernel_entry: 0,
                ..params()
            }),
            Err(ParamsError::KernelEntry)
        );
    }

    #[test]
    fn region_size_for_large_ram() {
        assert_eq!(FirmwareParams::pt_size_for(6 << 30), 10 * PAGE);
    }
}
