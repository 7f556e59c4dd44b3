//! The image's `/entrypoint`: a tiny static x86_64 Linux ELF, assembled here as bytes (no
//! compiler or assembler at run time), that writes [`NOTICE`] to standard error and exits 1.
//! Like buildah mkcw's entrypoint it only runs when someone starts the image with a runtime
//! that is not krun; krun boots the encrypted disk instead.

/// What the entrypoint prints.
pub const NOTICE: &str = "This image is a confidential workload for krun (libkrun-sev): \
its root file system is the encrypted /disk.img. Run it with `podman run --runtime krun`.\n";

/// Status the entrypoint exits with.
pub const EXIT_STATUS: u8 = 1;

/// Where the single PT_LOAD segment (the whole file) is mapped.
pub const LOAD_ADDR: u64 = 0x40_0000;
const EHDR_SIZE: u16 = 64;
const PHDR_SIZE: u16 = 56;
/// Start of the code: right after the ELF header and the one program header.
const CODE_OFFSET: u64 = EHDR_SIZE as u64 + PHDR_SIZE as u64;

/// x86_64 code: `write(2, notice, len); exit(1)`, followed by the notice.
fn code() -> Vec<u8> {
    let len = u32::try_from(NOTICE.len()).unwrap_or(u32::MAX);
    let mut c = Vec::new();
    c.extend_from_slice(&[0xb8, 1, 0, 0, 0]); // mov eax, 1 (write)
    c.extend_from_slice(&[0xbf, 2, 0, 0, 0]); // mov edi, 2 (stderr)
                                              // lea rsi, [rip + rel]: the notice starts after the rest of the code (19 bytes).
    let lea_end = c.len() + 7;
    c.extend_from_slice(&[0x48, 0x8d, 0x35, 0, 0, 0, 0]);
    c.push(0xba); // mov edx, len
    c.extend_from_slice(&len.to_le_bytes());
    c.extend_from_slice(&[0x0f, 0x05]); // syscall
    c.extend_from_slice(&[0xb8, 60, 0, 0, 0]); // mov eax, 60 (exit)
    c.extend_from_slice(&[0xbf, EXIT_STATUS, 0, 0, 0]); // mov edi, status
    c.extend_from_slice(&[0x0f, 0x05]); // syscall
    let rel = u32::try_from(c.len() - lea_end).unwrap_or(0);
    c[lea_end - 4..lea_end].copy_from_slice(&rel.to_le_bytes());
    c.extend_from_slice(NOTICE.as_bytes());
    c
}

/// The ELF file.
pub fn elf() -> Vec<u8> {
    let code = code();
    let file_size = CODE_OFFSET + code.len() as u64;
    let mut f = Vec::with_capacity(usize::try_from(file_size).unwrap_or(0));
    // e_ident: ELF, 64-bit, little-endian, version 1, System V ABI.
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // e_machine: EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&(LOAD_ADDR + CODE_OFFSET).to_le_bytes()); // e_entry
    f.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&PHDR_SIZE.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                              // The program header: PT_LOAD of the whole file, read + execute.
    f.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R | X
    f.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    f.extend_from_slice(&file_size.to_le_bytes()); // p_filesz
    f.extend_from_slice(&file_size.to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.extend_from_slice(&code);
    f
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn the_elf_header_is_a_static_x86_64_executable() {
        let f = elf();
        assert_eq!(&f[..7], &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
        assert_eq!(u16_at(&f, 16), 2, "ET_EXEC");
        assert_eq!(u16_at(&f, 18), 62, "EM_X86_64");
        assert_eq!(u32_at(&f, 20), 1);
        let entry = u64_at(&f, 24);
        let phoff = usize::try_from(u64_at(&f, 32)).unwrap();
        assert_eq!(u16_at(&f, 52), 64);
        assert_eq!(u16_at(&f, 54), 56);
        let phnum = u16_at(&f, 56);
        assert_eq!(phnum, 1);
        let mut loads = 0;
        for i in 0..usize::from(phnum) {
            let ph = &f[phoff + i * 56..phoff + (i + 1) * 56];
            let p_type = u32_at(ph, 0);
            // No PT_INTERP (3) or PT_DYNAMIC (2): static.
            assert!(p_type != 2 && p_type != 3);
            if p_type == 1 {
                loads += 1;
                let (offset, vaddr, filesz, memsz) = (
                    u64_at(ph, 8),
                    u64_at(ph, 16),
                    u64_at(ph, 32),
                    u64_at(ph, 40),
                );
                assert_eq!(offset, 0);
                assert_eq!(filesz, f.len() as u64);
                assert!(memsz >= filesz);
                assert_eq!(u32_at(ph, 4) & 1, 1, "executable");
                assert!(
                    entry >= vaddr + CODE_OFFSET && entry < vaddr + filesz,
                    "entry {entry:#x} outside the PT_LOAD"
                );
            }
        }
        assert_eq!(loads, 1);
        // The notice is in the file, after the code.
        let notice = NOTICE.as_bytes();
        assert_eq!(&f[f.len() - notice.len()..], notice);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn running_the_entrypoint_prints_the_notice_and_exits_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entrypoint");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&elf()).unwrap();
        file.set_permissions(std::fs::Permissions::from_mode(0o755))
            .unwrap();
        drop(file);
        // Another test thread forking while the file was open for writing makes exec fail
        // with ETXTBSY for a moment: retry.
        let mut tries = 0;
        let out = loop {
            match std::process::Command::new(&path).output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        };
        assert_eq!(out.status.code(), Some(i32::from(EXIT_STATUS)));
        assert_eq!(String::from_utf8(out.stderr).unwrap(), NOTICE);
        assert!(out.stdout.is_empty());
        assert!(NOTICE.contains("podman run --runtime krun"));
    }
}
