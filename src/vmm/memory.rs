//! Guest RAM and what the VMM loads into it: the kernel (a compressed bzImage through the
//! 64-bit boot protocol, or an ELF vmlinux's `PT_LOAD` segments) and the initrd.

use std::path::Path;

use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::{ram_regions, HIMEM_START, INITRD_START, KERNEL_START, MMIO_GAP_START};

/// The guest memory type used everywhere in the VMM and the devices.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors while creating or filling guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// RAM size is too small for the fixed layout.
    #[error("guest RAM is too small for the memory map")]
    RamTooSmall,
    /// Mapping guest RAM failed.
    #[error("cannot map guest RAM")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// Opening the kernel failed.
    #[error("cannot open the kernel image")]
    OpenKernel(#[source] std::io::Error),
    /// The kernel is neither a bzImage nor a loadable ELF vmlinux.
    #[error("cannot load the kernel ELF")]
    LoadKernel(#[source] linux_loader::loader::Error),
    /// The kernel's segments leave the kernel window of the memory map.
    #[error("kernel segments fall outside the kernel window of the memory map")]
    KernelPlacement,
    /// A bzImage this loader cannot boot (the message says which header field).
    #[error("unsupported bzImage: {0}")]
    BzImage(&'static str),
    /// Reading the initrd failed.
    #[error("cannot read the initrd")]
    ReadInitrd(#[source] std::io::Error),
    /// The initrd does not fit guest RAM.
    #[error("initrd does not fit guest RAM")]
    InitrdTooLarge,
    /// Writing to guest memory failed.
    #[error("cannot write to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Smallest RAM the layout accepts: the kernel window plus room for an initrd and the kernel's
/// own allocations.
pub const MIN_RAM_BYTES: u64 = 128 << 20;

/// Maps `ram_bytes` of anonymous guest RAM split around the MMIO gap.
pub fn create_guest_memory(ram_bytes: u64) -> Result<GuestMemory, MemoryError> {
    create_guest_memory_with(ram_bytes, &[])
}

/// [`create_guest_memory`] plus `extra` regions `(start, size)` outside the e820 RAM, such as
/// the reset-vector firmware image of a confidential launch (mapped as RAM because the
/// firmware keeps its stack there; `krun_resetvec` README).
pub fn create_guest_memory_with(
    ram_bytes: u64,
    extra: &[(u64, u64)],
) -> Result<GuestMemory, MemoryError> {
    if ram_bytes < MIN_RAM_BYTES {
        return Err(MemoryError::RamTooSmall);
    }
    let mut regions = ram_regions(ram_bytes);
    regions.extend_from_slice(extra);
    // vm-memory wants the regions in address order; the firmware image sits between the low
    // RAM and RAM above 4 GiB.
    regions.sort_by_key(|(start, _)| *start);
    let ranges: Vec<(GuestAddress, usize)> = regions
        .into_iter()
        .map(|(start, size)| {
            usize::try_from(size)
                .map(|s| (GuestAddress(start), s))
                .map_err(|_| MemoryError::RamTooSmall)
        })
        .collect::<Result<_, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(MemoryError::Map)
}

/// Where the kernel landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// 64-bit entry point (ELF `e_entry`, or a bzImage's load address + 0x200).
    pub entry: u64,
    /// End of the bytes written: the highest ELF segment including its bss, or the end of a
    /// bzImage's protected-mode part (the decompressor's `init_size` beyond it is RAM the
    /// kernel writes before it reads).
    pub end: u64,
}

/// Loads the kernel file at `path` ([`load_kernel_bytes`]).
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, MemoryError> {
    let bytes = std::fs::read(path).map_err(MemoryError::OpenKernel)?;
    load_kernel_bytes(mem, &bytes)
}

/// Loads a kernel already read (and verified) by the caller: a bzImage ([`BzImage`]) when it
/// carries the `HdrS` setup header, otherwise an ELF vmlinux at its physical addresses, which
/// must lie in `[KERNEL_START, INITRD_START)`.
pub fn load_kernel_bytes(mem: &GuestMemory, kernel: &[u8]) -> Result<LoadedKernel, MemoryError> {
    if BzImage::is_bzimage(kernel) {
        let bz = BzImage::parse(kernel)?;
        mem.write_slice(bz.protected_mode, GuestAddress(KERNEL_START))
            .map_err(MemoryError::Write)?;
        return Ok(bz.loaded());
    }
    load_kernel_from(mem, &mut std::io::Cursor::new(kernel))
}

/// Offset of the setup header in a bzImage (and in `struct boot_params`).
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Offset of the 64-bit entry from the start of the protected-mode part (boot.rst).
pub const BZIMAGE_ENTRY_64: u64 = 0x200;
/// Oldest boot protocol with `xloadflags` (2.12).
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// `xloadflags`: the kernel has the legacy 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// `loadflags`: protected-mode code loaded at 1 MiB or above (a bzImage).
const LOADED_HIGH: u8 = 1;

/// A bzImage as the 64-bit boot protocol (Documentation/arch/x86/boot.rst) loads it: the
/// protected-mode part (the kernel's decompressor and its compressed payload) at
/// [`KERNEL_START`], entered at + 0x200 in long mode with RSI = `boot_params`. The
/// decompressor unpacks the kernel in place, inside `[KERNEL_START, KERNEL_START +
/// init_size)`, which must end below the initrd.
#[derive(Debug, Clone, Copy)]
pub struct BzImage<'a> {
    /// The setup header, to copy into `boot_params` at [`SETUP_HEADER_OFFSET`].
    pub setup_header: &'a [u8],
    /// What the loader writes at [`KERNEL_START`].
    pub protected_mode: &'a [u8],
    /// Memory the kernel needs from its load address while it decompresses itself.
    pub init_size: u64,
}

impl<'a> BzImage<'a> {
    /// Whether `image` carries a setup header (`HdrS` at 0x202).
    pub fn is_bzimage(image: &[u8]) -> bool {
        image.get(0x202..0x206) == Some(b"HdrS")
    }

    /// Checks the header fields this loader depends on and splits the image.
    pub fn parse(image: &'a [u8]) -> Result<Self, MemoryError> {
        let u8_at = |off: usize| {
            image
                .get(off)
                .copied()
                .ok_or(MemoryError::BzImage("truncated"))
        };
        let u16_at = |off: usize| -> Result<u16, MemoryError> {
            Ok(u16::from_le_bytes([u8_at(off)?, u8_at(off + 1)?]))
        };
        let u32_at = |off: usize| -> Result<u32, MemoryError> {
            Ok(u32::from(u16_at(off)?) | u32::from(u16_at(off + 2)?) << 16)
        };
        let u64_at = |off: usize| -> Result<u64, MemoryError> {
            Ok(u64::from(u32_at(off)?) | u64::from(u32_at(off + 4)?) << 32)
        };
        if !Self::is_bzimage(image) || u16_at(0x1fe)? != 0xaa55 {
            return Err(MemoryError::BzImage("no setup header"));
        }
        if u16_at(0x206)? < MIN_BOOT_PROTOCOL {
            return Err(MemoryError::BzImage("boot protocol older than 2.12"));
        }
        if u8_at(0x211)? & LOADED_HIGH == 0 {
            return Err(MemoryError::BzImage("not a bzImage (zImage loads low)"));
        }
        if u16_at(0x236)? & XLF_KERNEL_64 == 0 {
            return Err(MemoryError::BzImage("no 64-bit entry (xloadflags)"));
        }
        let alignment = u64::from(u32_at(0x230)?);
        let relocatable = u8_at(0x234)? != 0;
        let pref_address = u64_at(0x258)?;
        let init_size = u64::from(u32_at(0x260)?);
        // The launch measurement is computed in advance: the load address is fixed. The
        // kernel must either prefer it or be relocatable to it (then it decompresses at the
        // aligned load address, or at its pref_address if that is higher).
        let placeable = pref_address == KERNEL_START
            || (relocatable
                && pref_address < KERNEL_START
                && alignment.is_power_of_two()
                && KERNEL_START % alignment == 0);
        if !placeable {
            return Err(MemoryError::BzImage(
                "cannot run at the fixed kernel address (pref_address, relocatable_kernel, kernel_alignment)",
            ));
        }
        let setup_sects = match u8_at(SETUP_HEADER_OFFSET)? {
            0 => 4,
            n => usize::from(n),
        };
        let setup_end = 0x202 + usize::from(u8_at(0x201)?);
        let pm_start = (setup_sects + 1) * 512;
        if setup_end > pm_start || pm_start >= image.len() {
            return Err(MemoryError::BzImage("truncated"));
        }
        let protected_mode = &image[pm_start..];
        let pm_len =
            u64::try_from(protected_mode.len()).map_err(|_| MemoryError::KernelPlacement)?;
        if init_size < pm_len {
            return Err(MemoryError::BzImage("init_size smaller than the image"));
        }
        match KERNEL_START.checked_add(init_size) {
            Some(end) if end <= INITRD_START => {}
            _ => return Err(MemoryError::KernelPlacement),
        }
        Ok(BzImage {
            setup_header: &image[SETUP_HEADER_OFFSET..setup_end],
            protected_mode,
            init_size,
        })
    }

    /// Entry and end of the loaded bytes.
    pub fn loaded(&self) -> LoadedKernel {
        LoadedKernel {
            entry: KERNEL_START + BZIMAGE_ENTRY_64,
            // parse() checked protected_mode.len() <= init_size, a u32.
            end: KERNEL_START + u64::try_from(self.protected_mode.len()).unwrap_or(u64::MAX),
        }
    }
}

fn load_kernel_from<F: std::io::Read + std::io::Seek + vm_memory::ReadVolatile>(
    mem: &GuestMemory,
    elf: &mut F,
) -> Result<LoadedKernel, MemoryError> {
    let result = Elf::load(mem, None, elf, Some(GuestAddress(HIMEM_START)))
        .map_err(MemoryError::LoadKernel)?;
    let entry = result.kernel_load.0;
    if entry < KERNEL_START || result.kernel_end > INITRD_START || entry >= result.kernel_end {
        return Err(MemoryError::KernelPlacement);
    }
    Ok(LoadedKernel {
        entry,
        end: result.kernel_end,
    })
}

/// Offset, from [`INITRD_START`], at which the appended launch segment starts for a bundle
/// initrd of `initrd_len` bytes: the next page boundary. A file-data block at page offset
/// `k` inside the segment is at guest address `INITRD_START + launch_segment_offset(..) + k`.
pub fn launch_segment_offset(initrd_len: usize) -> usize {
    // 4096 fits every usize this crate builds for (64-bit only, see arch).
    const PAGE: usize = 4096;
    const _: () = assert!(PAGE as u64 == crate::arch::layout::PAGE_SIZE);
    initrd_len.next_multiple_of(PAGE)
}

/// Copies the initrd file followed by `append` to [`INITRD_START`]; returns `(address, size)`.
pub fn load_initrd(
    mem: &GuestMemory,
    path: Option<&Path>,
    append: &[u8],
) -> Result<Option<(u64, u64)>, MemoryError> {
    let image = match path {
        Some(p) => std::fs::read(p).map_err(MemoryError::ReadInitrd)?,
        None => Vec::new(),
    };
    load_initrd_bytes(mem, image, append)
}

/// [`load_initrd`] from bytes already read (and verified) by the caller.
pub fn load_initrd_bytes(
    mem: &GuestMemory,
    mut image: Vec<u8>,
    append: &[u8],
) -> Result<Option<(u64, u64)>, MemoryError> {
    if image.is_empty() && append.is_empty() {
        return Ok(None);
    }
    if !append.is_empty() {
        // The kernel skips zero bytes between concatenated archives; page alignment lets the
        // launch segment place its secret slot on a page boundary of guest memory.
        image.resize(launch_segment_offset(image.len()), 0);
        image.extend_from_slice(append);
    }
    let size = u64::try_from(image.len()).map_err(|_| MemoryError::InitrdTooLarge)?;
    let ram_low_end = mem_low_end(mem);
    match INITRD_START.checked_add(size) {
        Some(end) if end <= ram_low_end => {}
        _ => return Err(MemoryError::InitrdTooLarge),
    }
    mem.write_slice(&image, GuestAddress(INITRD_START))
        .map_err(MemoryError::Write)?;
    Ok(Some((INITRD_START, size)))
}

/// End of the RAM region that starts at 0 (the initrd must stay below the MMIO gap).
fn mem_low_end(mem: &GuestMemory) -> u64 {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter()
        .find(|r| r.start_addr().0 == 0)
        .map(|r| r.len())
        .unwrap_or(0)
        .min(MMIO_GAP_START)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a minimal ELF64 executable with one `PT_LOAD` segment holding `code` at
    /// physical address `paddr`, entry at `paddr`, and `bss` extra zero bytes.
    pub fn tiny_elf(code: &[u8], paddr: u64, bss: u64) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&paddr.to_le_bytes()); // e_entry
        f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
        f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
        f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
        f.extend_from_slice(&0u16.to_le_bytes());
        f.extend_from_slice(&0u16.to_le_bytes());
        assert_eq!(f.len(), 64);
        let off = 0x1000u64;
        f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f.extend_from_slice(&7u32.to_le_bytes()); // RWX
        f.extend_from_slice(&off.to_le_bytes());
        f.extend_from_slice(&(0xffff_ffff_8000_0000u64 + paddr).to_le_bytes());
        f.extend_from_slice(&paddr.to_le_bytes());
        f.extend_from_slice(&(code.len() as u64).to_le_bytes());
        f.extend_from_slice(&(code.len() as u64 + bss).to_le_bytes());
        f.extend_from_slice(&0x1000u64.to_le_bytes());
        f.resize(off as usize, 0);
        f.extend_from_slice(code);
        f
    }

    pub(crate) fn temp_file(bytes: &[u8]) -> tempfile_lite::TempPath {
        let p = tempfile_lite::TempPath::new();
        std::fs::File::create(&p.0)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        p
    }

    /// A self-deleting temporary path, without another dependency.
    pub(crate) mod tempfile_lite {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU64, Ordering};

        static N: AtomicU64 = AtomicU64::new(0);

        #[derive(Debug)]
        pub struct TempPath(pub PathBuf);
        impl TempPath {
            pub fn new() -> Self {
                let n = N.fetch_add(1, Ordering::Relaxed);
                let p =
                    std::env::temp_dir().join(format!("krun-vmm-test-{}-{n}", std::process::id()));
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    /// A bzImage header as boot.rst lays it out: `setup_sects` 512-byte setup sectors after the
    /// boot sector, then `payload` (the protected-mode part).
    pub fn tiny_bzimage(payload: &[u8], init_size: u32) -> Vec<u8> {
        let setup_sects = 3u8;
        let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        f[0x1f1] = setup_sects;
        f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        f[0x200] = 0xeb; // jump over the header
        f[0x201] = 0x6a; // header ends at 0x26c
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        f[0x211] = 0x01; // LOADED_HIGH
        f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        f[0x234] = 1; // relocatable
        f[0x236..0x238].copy_from_slice(&0x0003u16.to_le_bytes()); // XLF_KERNEL_64 | CAN_BE_LOADED_ABOVE_4G
        f[0x258..0x260].copy_from_slice(&KERNEL_START.to_le_bytes());
        f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn loads_bzimage_protected_mode_part_at_the_kernel_address() {
        let mem = create_guest_memory(MIN_RAM_BYTES).unwrap();
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let image = tiny_bzimage(&payload, 0x10_0000);
        let k = load_kernel_bytes(&mem, &image).unwrap();
        assert_eq!(k.entry, KERNEL_START + 0x200);
        assert_eq!(k.end, KERNEL_START + 5000);
        let mut got = vec![0u8; 5000];
        mem.read_slice(&mut got, GuestAddress(KERNEL_START))
            .unwrap();
        assert_eq!(got, payload);
        let bz = BzImage::parse(&image).unwrap();
        assert_eq!(bz.setup_header.len(), 0x26c - 0x1f1);
        assert_eq!(&bz.setup_header[0x202 - 0x1f1..0x206 - 0x1f1], b"HdrS");
        assert_eq!(bz.init_size, 0x10_0000);
        // The same bytes from a file.
        let file = temp_file(&image);
        assert_eq!(load_kernel(&mem, &file.0).unwrap(), k);
    }

    #[test]
    fn rejects_bzimages_it_cannot_boot() {
        let ok = tiny_bzimage(&[0x90; 64], 0x10_0000);
        let with = |off: usize, bytes: &[u8]| {
            let mut i = ok.clone();
            i[off..off + bytes.len()].copy_from_slice(bytes);
            i
        };
        let bz = |i: &[u8]| BzImage::parse(i).map(|_| ()).unwrap_err();
        assert!(
            matches!(bz(&with(0x206, &[0x0b, 0x02])), MemoryError::BzImage(m) if m.contains("2.12"))
        );
        assert!(matches!(bz(&with(0x211, &[0])), MemoryError::BzImage(m) if m.contains("zImage")));
        assert!(
            matches!(bz(&with(0x236, &[2, 0])), MemoryError::BzImage(m) if m.contains("64-bit"))
        );
        // Prefers another address and cannot move.
        let other = (KERNEL_START * 2).to_le_bytes();
        assert!(
            matches!(bz(&with(0x258, &other)), MemoryError::BzImage(m) if m.contains("pref_address"))
        );
        let low = 0x20_0000u64.to_le_bytes();
        let fixed_low = with(0x258, &low);
        assert!(BzImage::parse(&fixed_low).is_ok());
        let mut not_relocatable = fixed_low.clone();
        not_relocatable[0x234] = 0;
        assert!(matches!(bz(&not_relocatable), MemoryError::BzImage(_)));
        // Decompressing would run into the initrd.
        let huge = u32::try_from(INITRD_START - KERNEL_START + 0x1000).unwrap();
        assert!(matches!(
            bz(&with(0x260, &huge.to_le_bytes())),
            MemoryError::KernelPlacement
        ));
        assert!(
            matches!(bz(&with(0x260, &16u32.to_le_bytes())), MemoryError::BzImage(m) if m.contains("init_size"))
        );
        // Nothing after the setup sectors.
        assert!(matches!(bz(&ok[..2048]), MemoryError::BzImage(m) if m.contains("truncated")));
        assert!(matches!(bz(&with(0x1fe, &[0, 0])), MemoryError::BzImage(_)));
        // Without HdrS the loader takes it for an ELF and refuses it as one.
        let mem = create_guest_memory(MIN_RAM_BYTES).unwrap();
        assert!(matches!(
            load_kernel_bytes(&mem, &with(0x202, b"HdrX")),
            Err(MemoryError::LoadKernel(_))
        ));
    }

    #[test]
    fn extra_regions_between_low_and_high_ram() {
        let mem = create_guest_memory_with(5 << 30, &[(0xffff_e000, 0x2000)]).unwrap();
        use vm_memory::GuestMemoryBackend;
        assert_eq!(mem.num_regions(), 3);
        mem.write_obj(1u64, GuestAddress(0xffff_fff0)).unwrap();
        mem.write_obj(1u64, GuestAddress(1 << 32)).unwrap();
    }

    #[test]
    fn rejects_small_ram() {
        assert!(matches!(
            create_guest_memory(64 << 20),
            Err(MemoryError::RamTooSmall)
        ));
    }

    #[test]
    fn loads_elf_segments_at_physical_addresses() {
        let mem = create_guest_memory(MIN_RAM_BYTES).unwrap();
        let elf = temp_file(&tiny_elf(&[0xf4, 0x90, 0xcc], KERNEL_START, 0x5000));
        let k = load_kernel(&mem, &elf.0).unwrap();
        assert_eq!(k.entry, KERNEL_START);
        assert_eq!(k.end, KERNEL_START + 3 + 0x5000);
        let mut code = [0u8; 3];
        mem.read_slice(&mut code, GuestAddress(KERNEL_START))
            .unwrap();
        assert_eq!(code, [0xf4, 0x90, 0xcc]);
    }

    #[test]
    fn rejects_kernel_outside_window() {
        let mem = create_guest_memory(MIN_RAM_BYTES).unwrap();
        let low = temp_file(&tiny_elf(&[0xf4], 0x200000, 0));
        assert!(matches!(
            load_kernel(&mem, &low.0),
            Err(MemoryError::KernelPlacement)
        ));
        let huge_bss = temp_file(&tiny_elf(&[0xf4], KERNEL_START, INITRD_START));
        assert!(matches!(
            load_kernel(&mem, &huge_bss.0),
            Err(MemoryError::KernelPlacement)
        ));
        let not_elf = temp_file(b"MZ not an elf at all");
        assert!(matches!(
            load_kernel(&mem, &not_elf.0),
            Err(MemoryError::LoadKernel(_))
        ));
    }

    #[test]
    fn initrd_with_appended_segment() {
        let mem = create_guest_memory(MIN_RAM_BYTES).unwrap();
        let rd = temp_file(b"abcde");
        let (addr, size) = load_initrd(&mem, Some(&rd.0), b"XYZ").unwrap().unwrap();
        assert_eq!((addr, size), (INITRD_START, 4096 + 3));
        let mut got = vec![0u8; 4099];
        mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
        assert_eq!(&got[..5], b"abcde");
        assert!(got[5..4096].iter().all(|b| *b == 0));
        assert_eq!(&got[4096..], b"XYZ");
        assert_eq!(launch_segment_offset(0), 0);
        assert_eq!(launch_segment_offset(4097), 8192);
        assert_eq!(load_initrd(&mem, None, &[]).unwrap(), None);
        let big = vec![0u8; (MIN_RAM_BYTES - INITRD_START + 1) as usize];
        assert!(matches!(
            load_initrd(&mem, None, &big),
            Err(MemoryError::InitrdTooLarge)
        ));
    }
}
