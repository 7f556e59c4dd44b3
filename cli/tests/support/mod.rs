//! Shared by the cli integration tests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One PSP model identity (in `psp/` below the returned directory) for every run in a test
/// binary: generating one takes seconds, and without one each `krun-sev` invocation
/// generates a throwaway identity. No digest depends on it.
pub fn psp_model_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        krun_psp_model::ModelIdentity::generate()
            .unwrap()
            .save(&dir.path().join("psp"))
            .unwrap();
        dir
    })
    .path()
}

/// A minimal valid guest bundle: a one-segment ELF kernel at 16 MiB and a token initrd.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn fake_bundle(dir: &Path) -> PathBuf {
    let paddr: u64 = 0x100_0000;
    let code = [0xf4u8; 300];
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&paddr.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&7u32.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&(0xffff_ffff_8000_0000u64 + paddr).to_le_bytes());
    elf.extend_from_slice(&paddr.to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64 + 0x3000).to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.resize(0x1000, 0);
    elf.extend_from_slice(&code);
    let bundle = dir.join("bundle");
    krun_bundle::write_bundle(
        &bundle,
        &krun_bundle::BundleContents {
            kernel: &elf,
            kernel_version: "6.12-test",
            nr_cpus: 8,
            initrd: &[0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7],
            firmware: None,
        },
    )
    .unwrap();
    bundle
}
