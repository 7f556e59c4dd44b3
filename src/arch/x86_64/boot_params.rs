//! The Linux zero page (`struct boot_params`, Documentation/arch/x86/boot.rst) and e820 map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ram_regions, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, RSDP_START, ZERO_PAGE_START,
};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// `loadflags` bit: the kernel is loaded high (protected-mode code at 1 MiB or above).
const LOADED_HIGH: u8 = 0x01;

/// Errors while building the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// The e820 map has more entries than the zero page holds.
    #[error("e820 map does not fit the zero page")]
    E820TooLarge,
    /// An address or size does not fit its 32-bit zero-page field.
    #[error("boot parameter does not fit its 32-bit field")]
    FieldTooSmall,
    /// The kernel's setup header does not fit the zero page.
    #[error("the kernel's setup header does not fit the zero page")]
    SetupHeader,
    /// Writing the zero page to guest memory failed.
    #[error("cannot write the zero page to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// What the zero page describes.
#[derive(Debug, Clone, Copy)]
pub struct BootParamsInput<'a> {
    /// A bzImage's setup header (from its offset 0x1f1), copied into the zero page first as
    /// the boot protocol asks; the fields below then override the loader's part of it.
    pub setup_header: Option<&'a [u8]>,
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Length of the command line including its NUL.
    pub cmdline_len: usize,
    /// Initrd placement `(address, size)`, if any.
    pub initrd: Option<(u64, u64)>,
    /// A range `(address, size)` inside `[0, EBDA)` to mark reserved instead of RAM: the SNP
    /// secrets and CPUID pages, which the kernel keeps using (`krun_resetvec` README).
    pub reserved: Option<(u64, u64)>,
}

/// [`e820_map`] with `reserved` cut out of the first RAM entry and described as reserved.
pub fn e820_map_with(ram_bytes: u64, reserved: Option<(u64, u64)>) -> Vec<(u64, u64, u32)> {
    let mut map = e820_map(ram_bytes);
    let Some((start, size)) = reserved else {
        return map;
    };
    let end = start.saturating_add(size);
    if size == 0 || end > EBDA_START {
        return map;
    }
    let mut low = Vec::new();
    if start > 0 {
        low.push((0, start, E820_RAM));
    }
    low.push((start, size, E820_RESERVED));
    if end < EBDA_START {
        low.push((end, EBDA_START - end, E820_RAM));
    }
    map.splice(0..1, low);
    map
}

/// e820 map for `ram_bytes` of RAM: `[0, EBDA)` and high memory up to the MMIO gap, then RAM
/// above 4 GiB. The range between the EBDA and 1 MiB stays out of the map.
pub fn e820_map(ram_bytes: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM)];
    for (start, size) in ram_regions(ram_bytes) {
        let end = start + size;
        if start == 0 {
            if end > HIMEM_START {
                map.push((HIMEM_START, end - HIMEM_START, E820_RAM));
            }
        } else {
            debug_assert_eq!(start, MMIO_GAP_END);
            map.push((start, size, E820_RAM));
        }
    }
    map
}

/// Offset of the setup header in the zero page.
const SETUP_HEADER_OFFSET: usize = 0x1f1;

/// Builds the zero page.
pub fn build(input: &BootParamsInput<'_>) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(header) = input.setup_header {
        let bytes = params.as_mut_slice();
        let end = SETUP_HEADER_OFFSET
            .checked_add(header.len())
            .filter(|end| *end <= std::mem::offset_of!(boot_params, e820_table))
            .ok_or(BootParamsError::SetupHeader)?;
        bytes[SETUP_HEADER_OFFSET..end].copy_from_slice(header);
    } else {
        // No header to copy (an ELF vmlinux): the fields a bzImage would carry.
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        params.hdr.cmdline_size =
            u32::try_from(input.cmdline_len).map_err(|_| BootParamsError::FieldTooSmall)?;
    }
    params.acpi_rsdp_addr = RSDP_START;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr =
        u32::try_from(CMDLINE_START).map_err(|_| BootParamsError::FieldTooSmall)?;
    if let Some((addr, size)) = input.initrd {
        params.hdr.ramdisk_image =
            u32::try_from(addr).map_err(|_| BootParamsError::FieldTooSmall)?;
        params.hdr.ramdisk_size =
            u32::try_from(size).map_err(|_| BootParamsError::FieldTooSmall)?;
    }
    let map = e820_map_with(input.ram_bytes, input.reserved);
    if map.len() > params.e820_table.len() {
        return Err(BootParamsError::E820TooLarge);
    }
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = u8::try_from(map.len()).map_err(|_| BootParamsError::E820TooLarge)?;
    Ok(params)
}

/// An ACPI 1.0 RSDP (ACPI 6.5 §5.2.5.3): signature, checksum, OEM id, revision 0 and RSDT
/// address 0, i.e. no ACPI tables. The guest boots with `acpi=off`; the RSDP exists so that
/// `boot_params.acpi_rsdp_addr` is set and names a real one. Without it the bzImage's
/// decompressor (`get_rsdp_addr`) scans the EBDA and [0xE0000, 0x100000) for an RSDP, and
/// under SNP that range is not validated when it runs (the kernel validates it later in
/// `probe_roms`), so the read would stop the guest with a #VC.
pub fn rsdp() -> [u8; 20] {
    let mut r = [0u8; 20];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(b"KRUNSV");
    let sum = r.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    r[8] = 0u8.wrapping_sub(sum);
    r
}

/// Builds the zero page and writes it at [`ZERO_PAGE_START`], and the RSDP it names at
/// [`RSDP_START`].
pub fn write(mem: &GuestMemoryMmap, input: &BootParamsInput<'_>) -> Result<(), BootParamsError> {
    let params = build(input)?;
    mem.write_slice(&rsdp(), GuestAddress(RSDP_START))
        .map_err(BootParamsError::Write)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootParamsError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::MMIO_GAP_START;
    use vm_memory::Address;

    #[test]
    fn e820_reserves_snp_pages() {
        let map = e820_map_with(256 << 20, Some((0x5000, 0x2000)));
        assert_eq!(
            &map[..3],
            &[
                (0, 0x5000, E820_RAM),
                (0x5000, 0x2000, E820_RESERVED),
                (0x7000, EBDA_START - 0x7000, E820_RAM)
            ]
        );
        assert_eq!(map[3], e820_map(256 << 20)[1]);
        // A range past the EBDA is ignored rather than producing overlapping entries.
        assert_eq!(
            e820_map_with(256 << 20, Some((0x9f000, 0x2000))),
            e820_map(256 << 20)
        );
    }

    #[test]
    fn setup_header_is_copied_then_the_loader_fields_override_it() {
        let mut header = vec![0u8; 0x26c - SETUP_HEADER_OFFSET];
        let at = |off: usize| off - SETUP_HEADER_OFFSET;
        header[at(0x1f1)] = 27; // setup_sects
        header[at(0x210)] = 0x20; // type_of_loader: overridden
        header[at(0x211)] = 0x80; // loadflags CAN_USE_HEAP: kept, LOADED_HIGH added
        header[at(0x230)..at(0x234)].copy_from_slice(&0x20_0000u32.to_le_bytes());
        header[at(0x260)..at(0x264)].copy_from_slice(&0x1a2_b000u32.to_le_bytes());
        header[at(0x238)..at(0x23c)].copy_from_slice(&0x7ffu32.to_le_bytes());
        let params = build(&BootParamsInput {
            setup_header: Some(&header),
            ram_bytes: 512 << 20,
            cmdline_len: 5,
            initrd: Some((0x400_0000, 0x1000)),
            reserved: None,
        })
        .unwrap();
        let bytes = params.as_slice();
        assert_eq!(bytes[0x1f1], 27);
        assert_eq!(bytes[0x210], 0xff);
        assert_eq!(bytes[0x211], 0x81);
        assert_eq!(&bytes[0x230..0x234], &0x20_0000u32.to_le_bytes());
        assert_eq!(&bytes[0x260..0x264], &0x1a2_b000u32.to_le_bytes());
        assert_eq!(&bytes[0x202..0x206], b"HdrS");
        assert_eq!(&bytes[0x218..0x21c], &0x400_0000u32.to_le_bytes());
        assert_eq!(&bytes[0x228..0x22c], &0x20000u32.to_le_bytes());
        // cmdline_size is the kernel's limit, which the loader reads and keeps.
        assert_eq!(&bytes[0x238..0x23c], &0x7ffu32.to_le_bytes());
        // sentinel (0x1ef) stays zero: the kernel would otherwise wipe the header's fields.
        assert_eq!(bytes[0x1ef], 0);
        let too_long = vec![0u8; 0x300];
        assert!(matches!(
            build(&BootParamsInput {
                setup_header: Some(&too_long),
                ram_bytes: 512 << 20,
                cmdline_len: 5,
                initrd: None,
                reserved: None,
            }),
            Err(BootParamsError::SetupHeader)
        ));
    }

    #[test]
    fn e820_small_and_large() {
        assert_eq!(
            e820_map(256 << 20),
            vec![
                (0, EBDA_START, E820_RAM),
                (HIMEM_START, (256 << 20) - HIMEM_START, E820_RAM)
            ]
        );
        let big = 5u64 << 30;
        assert_eq!(
            e820_map(big),
            vec![
                (0, EBDA_START, E820_RAM),
                (HIMEM_START, MMIO_GAP_START - HIMEM_START, E820_RAM),
                (1 << 32, big - MMIO_GAP_START, E820_RAM)
            ]
        );
    }

    #[test]
    fn zero_page_fields_at_their_abi_offsets() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xa0000)]).unwrap();
        let input = BootParamsInput {
            setup_header: None,
            ram_bytes: 512 << 20,
            cmdline_len: 17,
            initrd: Some((0x400_0000, 0x1234)),
            reserved: None,
        };
        write(&mem, &input).unwrap();
        let zp = ZERO_PAGE_START;
        let rd32 = |off: u64| mem.read_obj::<u32>(GuestAddress(zp + off)).unwrap();
        let rd16 = |off: u64| mem.read_obj::<u16>(GuestAddress(zp + off)).unwrap();
        let rd8 = |off: u64| mem.read_obj::<u8>(GuestAddress(zp + off)).unwrap();
        // Offsets from Documentation/arch/x86/zero-page.rst and boot.rst.
        assert_eq!(rd16(0x1fe), 0xaa55);
        assert_eq!(rd32(0x202), 0x5372_6448);
        assert_eq!(rd8(0x210), 0xff);
        assert_eq!(rd8(0x211) & 1, 1);
        assert_eq!(rd32(0x218), 0x400_0000);
        assert_eq!(rd32(0x21c), 0x1234);
        assert_eq!(rd32(0x228), 0x20000);
        assert_eq!(rd32(0x238), 17);
        assert_eq!(rd8(0x1e8), 2);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(zp + 0x70)).unwrap(),
            RSDP_START
        );
        let mut rsdp_bytes = [0u8; 20];
        mem.read_slice(&mut rsdp_bytes, GuestAddress(RSDP_START))
            .unwrap();
        assert_eq!(&rsdp_bytes[..8], b"RSD PTR ");
        assert_eq!(rsdp_bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(rsdp_bytes[15], 0, "revision 0 (ACPI 1.0)");
        assert_eq!(&rsdp_bytes[16..20], &[0; 4], "no RSDT");
        let e0 = GuestAddress(zp + 0x2d0);
        assert_eq!(mem.read_obj::<u64>(e0).unwrap(), 0);
        assert_eq!(
            mem.read_obj::<u64>(e0.unchecked_add(8)).unwrap(),
            EBDA_START
        );
        assert_eq!(mem.read_obj::<u32>(e0.unchecked_add(16)).unwrap(), E820_RAM);
        let e1 = e0.unchecked_add(20);
        assert_eq!(mem.read_obj::<u64>(e1).unwrap(), HIMEM_START);
    }
}
