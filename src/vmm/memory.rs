//! Guest RAM and what the VMM loads into it: the kernel's `PT_LOAD` segments and the initrd.

use std::fs::File;
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
    /// The kernel is not a loadable ELF vmlinux.
    #[error("cannot load the kernel ELF")]
    LoadKernel(#[source] linux_loader::loader::Error),
    /// The kernel's segments leave the kernel window of the memory map.
    #[error("kernel segments fall outside the kernel window of the memory map")]
    KernelPlacement,
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
    /// 64-bit entry point (ELF `e_entry`).
    pub entry: u64,
    /// End of the highest segment (including its bss).
    pub end: u64,
}

/// Loads an ELF vmlinux at its physical addresses, which must lie in
/// `[KERNEL_START, INITRD_START)`.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, MemoryError> {
    let mut file = File::open(path).map_err(MemoryError::OpenKernel)?;
    load_kernel_from(mem, &mut file)
}

/// [`load_kernel`] from bytes already read (and verified) by the caller.
pub fn load_kernel_bytes(mem: &GuestMemory, elf: &[u8]) -> Result<LoadedKernel, MemoryError> {
    load_kernel_from(mem, &mut std::io::Cursor::new(elf))
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
