//! A minimal valid bundle, for tests of the tools that measure bundles (`krun-sev measure`,
//! `krunfw_measurement`, the broker's unbound-digest check) where the real kernel build is
//! not needed: a one-segment ELF kernel loaded at 16 MiB and a token initrd.

use std::path::{Path, PathBuf};

use crate::bundle::{write_bundle, BundleContents, BundleError};

/// Writes the minimal bundle into `dir/bundle` and returns that path.
pub fn write_minimal_bundle(dir: &Path) -> Result<PathBuf, BundleError> {
    const PADDR: u64 = 0x100_0000;
    let code = [0xf4u8; 300];
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&PADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&7u32.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&(0xffff_ffff_8000_0000u64 + PADDR).to_le_bytes());
    elf.extend_from_slice(&PADDR.to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64 + 0x3000).to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.resize(0x1000, 0);
    elf.extend_from_slice(&code);
    let bundle = dir.join("bundle");
    write_bundle(
        &bundle,
        &BundleContents {
            kernel: &elf,
            kernel_version: "6.12-test",
            nr_cpus: 8,
            initrd: &[0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7],
            firmware: None,
        },
    )?;
    Ok(bundle)
}
