//! Fills guest memory with everything the guest boots from: kernel, command line, initrd plus
//! launch segment, zero page, MP table and either the VMM's 64-bit boot structures or the
//! patched reset-vector firmware.
//!
//! One function for both the VMM and the measurement calculator (`crate::tee::measure`): a
//! confidential launch measures exactly the bytes this writes, so `krun-sev measure` gets the
//! same digest by running it over scratch memory.

use krun_resetvec::{FirmwareParams, SnpPages};
use vm_memory::{Bytes, GuestAddress};

use crate::arch::boot_params::{self, BootParamsInput};
use crate::arch::layout::{CMDLINE_KERNEL_LIMIT, CMDLINE_START, ZERO_PAGE_START};
use crate::arch::{mptable, regs};
use crate::vmm::memory::{self, GuestMemory, LoadedKernel, MemoryError};

/// Errors while filling guest memory.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// Kernel, initrd or a write failed.
    #[error("cannot load the guest image")]
    Memory(#[source] MemoryError),
    /// The command line is too long or lacks its NUL.
    #[error("kernel command line is too long or not NUL-terminated")]
    Cmdline,
    /// A boot structure could not be written.
    #[error("cannot write boot structures")]
    Boot(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The reset-vector firmware rejected its parameters.
    #[error("cannot patch the reset-vector firmware")]
    Firmware(#[source] krun_resetvec::ParamsError),
}

/// Where the reset-vector firmware's page tables go and, under SNP, its special pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareLayout {
    /// Page-table region base (page aligned).
    pub pt_base: u64,
    /// Page-table region size.
    pub pt_size: u64,
    /// SNP secrets and CPUID pages (reserved in e820).
    pub snp: Option<SnpPages>,
}

/// What to load.
#[derive(Debug)]
pub struct GuestImage<'a> {
    /// RAM size in bytes.
    pub ram_bytes: u64,
    /// vCPU count (MP table).
    pub vcpus: u8,
    /// The kernel: a bzImage (64-bit boot protocol) or an ELF vmlinux.
    pub kernel: &'a [u8],
    /// Bundle initrd.
    pub initrd: Vec<u8>,
    /// The launch segment, appended on the next page boundary.
    pub initrd_append: &'a [u8],
    /// The full command line, NUL-terminated.
    pub cmdline: &'a [u8],
    /// `Some` boots through the reset-vector firmware.
    pub firmware: Option<FirmwareLayout>,
}

/// Where things landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedGuest {
    /// Kernel entry and end.
    pub kernel: LoadedKernel,
    /// Initrd `(address, size)` including the launch segment.
    pub initrd: Option<(u64, u64)>,
    /// Command-line length including the NUL.
    pub cmdline_len: u64,
    /// The firmware layout, when booting through it.
    pub firmware: Option<FirmwareLayout>,
}

/// Writes `image` into `mem`. With a firmware layout, `mem` must map
/// [`krun_resetvec::IMAGE_GPA`] (see [`memory::create_guest_memory_with`]).
pub fn load_guest(mem: &GuestMemory, image: GuestImage<'_>) -> Result<LoadedGuest, LoaderError> {
    if image.cmdline.len() > CMDLINE_KERNEL_LIMIT || image.cmdline.last() != Some(&0) {
        return Err(LoaderError::Cmdline);
    }
    let kernel = memory::load_kernel_bytes(mem, image.kernel).map_err(LoaderError::Memory)?;
    mem.write_slice(image.cmdline, GuestAddress(CMDLINE_START))
        .map_err(|e| LoaderError::Memory(MemoryError::Write(e)))?;
    let initrd = memory::load_initrd_bytes(mem, image.initrd, image.initrd_append)
        .map_err(LoaderError::Memory)?;
    let reserved = image
        .firmware
        .and_then(|f| f.snp)
        .map(|p| (p.secrets.min(p.cpuid), 2 * crate::arch::layout::PAGE_SIZE));
    boot_params::write(
        mem,
        &BootParamsInput {
            setup_header: memory::BzImage::parse(image.kernel)
                .ok()
                .map(|bz| bz.setup_header),
            ram_bytes: image.ram_bytes,
            cmdline_len: image.cmdline.len(),
            initrd,
            reserved,
        },
    )
    .map_err(|e| LoaderError::Boot(Box::new(e)))?;
    mptable::write(mem, image.vcpus).map_err(|e| LoaderError::Boot(Box::new(e)))?;
    match image.firmware {
        None => regs::write_boot_structures(mem).map_err(|e| LoaderError::Boot(Box::new(e)))?,
        Some(f) => {
            let fw = krun_resetvec::patched(&FirmwareParams {
                kernel_entry: kernel.entry,
                boot_params: ZERO_PAGE_START,
                pt_base: f.pt_base,
                pt_size: f.pt_size,
                snp: f.snp,
            })
            .map_err(LoaderError::Firmware)?;
            mem.write_slice(&fw, GuestAddress(krun_resetvec::IMAGE_GPA))
                .map_err(|e| LoaderError::Memory(MemoryError::Write(e)))?;
        }
    }
    Ok(LoadedGuest {
        kernel,
        initrd,
        cmdline_len: image.cmdline.len() as u64,
        firmware: image.firmware,
    })
}
