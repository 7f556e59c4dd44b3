//! The guest initrd: the static init as `/init` plus the directories it needs, as a newc
//! cpio compressed with zstd (deterministic: fixed level, single thread, the libzstd that
//! Cargo.lock pins). Every initrd byte is measured at launch, so it is the smallest format
//! the guest kernel decompresses fast (`CONFIG_RD_ZSTD`).

use std::io::Write;

use crate::cpio::{CpioArchive, CpioError};

/// Errors from building the initrd.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("cannot lay out the initrd archive")]
    Archive(#[source] CpioError),
    #[error("cannot compress the initrd")]
    Compress(#[source] std::io::Error),
}

/// Directories the initrd carries, with their permissions. The kernel's built-in initramfs
/// already has /dev/console, but the archive carries its own so it does not depend on that.
const DIRECTORIES: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("mnt", 0o755),
];

/// Builds the uncompressed cpio holding `init` as `/init`.
pub fn initrd_archive(init: &[u8]) -> Result<CpioArchive, CpioError> {
    let mut archive = CpioArchive::new();
    for (dir, mode) in DIRECTORIES {
        archive.add_dir(dir, *mode)?;
    }
    // The console is character device 5:1.
    archive.add_char_device("dev/console", 0o600, 5, 1)?;
    archive.add_file("init", 0o755, init.to_vec())?;
    Ok(archive)
}

/// Builds `initrd.cpio.zst` for the given static init binary.
pub fn build_initrd(init: &[u8]) -> Result<Vec<u8>, InitrdError> {
    let archive = initrd_archive(init).map_err(InitrdError::Archive)?;
    zstd(&archive.to_bytes()).map_err(InitrdError::Compress)
}

/// zstd level of the initrd: level 22 (`--ultra`) gains 0.01 % on the init and needs more
/// encoder memory.
const ZSTD_LEVEL: i32 = 19;

/// One zstd frame with the content size and a checksum (the kernel's decompressor checks
/// it), compressed single-threaded at a fixed level, so equal input gives equal output.
pub fn zstd(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    encoder.include_contentsize(true)?;
    let size = u64::try_from(data.len()).map_err(std::io::Error::other)?;
    encoder.set_pledged_src_size(Some(size))?;
    encoder.write_all(data)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::Command;

    use super::*;

    #[test]
    fn zstd_is_deterministic_and_round_trips_with_the_zstd_tool() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let compressed = zstd(&data).unwrap();
        assert_eq!(
            &compressed[..4],
            &[0x28, 0xb5, 0x2f, 0xfd],
            "zstd frame magic"
        );
        // Frame header descriptor: checksum flag (bit 2) and a content size field.
        assert_eq!(compressed[4] & 0x04, 0x04, "checksum flag");
        assert_ne!(
            compressed[4] & 0xc0 | compressed[4] & 0x20,
            0,
            "content size"
        );
        assert_eq!(compressed, zstd(&data).unwrap());
        assert!(compressed.len() < data.len() / 10);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.zst");
        std::fs::write(&path, &compressed).unwrap();
        let out = Command::new("zstd").arg("-dc").arg(&path).output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn initrd_holds_init_console_and_directories() {
        let init = b"\x7fELF fake init".to_vec();
        let initrd = build_initrd(&init).unwrap();
        let mut cpio = Vec::new();
        zstd::stream::read::Decoder::new(&initrd[..])
            .unwrap()
            .read_to_end(&mut cpio)
            .unwrap();
        assert_eq!(cpio, initrd_archive(&init).unwrap().to_bytes());

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("initrd.cpio.zst"), &initrd).unwrap();
        let listing = Command::new("sh")
            .arg("-c")
            .arg("zstd -dc initrd.cpio.zst | cpio -t -v --quiet --numeric-uid-gid")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(listing.status.success());
        let listing = String::from_utf8(listing.stdout).unwrap();
        let entries: Vec<(&str, &str)> = listing
            .lines()
            .map(|l| {
                (
                    l.split_whitespace().next().unwrap(),
                    l.split_whitespace().last().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("drwxr-xr-x", "dev"),
                ("crw-------", "dev/console"),
                ("-rwxr-xr-x", "init"),
                ("drwxr-xr-x", "mnt"),
                ("dr-xr-xr-x", "proc"),
                ("drwxr-xr-x", "run"),
                ("dr-xr-xr-x", "sys"),
                ("drwxrwxrwt", "tmp"),
            ]
        );
    }
}
