//! The guest initrd: the static init as `/init` plus the directories it needs, as a newc
//! cpio compressed with deterministic gzip settings.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

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

/// Builds `initrd.cpio.gz` for the given static init binary.
pub fn build_initrd(init: &[u8]) -> Result<Vec<u8>, InitrdError> {
    let archive = initrd_archive(init).map_err(InitrdError::Archive)?;
    gzip(&archive.to_bytes()).map_err(InitrdError::Compress)
}

/// Gzip with no file name, mtime 0 and a fixed level, so equal input gives equal output
/// (the encoder comes from the version pinned in Cargo.lock).
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder: GzEncoder<Vec<u8>> = GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), Compression::best());
    encoder.write_all(data)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::Command;

    use super::*;

    #[test]
    fn gzip_header_has_no_name_and_zero_mtime_and_round_trips_with_gzip_tool() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let compressed = gzip(&data).unwrap();
        assert_eq!(&compressed[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(compressed[3], 0, "no FNAME/FEXTRA/FCOMMENT flags");
        assert_eq!(&compressed[4..8], &[0, 0, 0, 0], "mtime");
        assert_eq!(compressed, gzip(&data).unwrap());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        std::fs::write(&path, &compressed).unwrap();
        let out = Command::new("gzip").arg("-dc").arg(&path).output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn initrd_holds_init_console_and_directories() {
        let init = b"\x7fELF fake init".to_vec();
        let initrd = build_initrd(&init).unwrap();
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(&initrd[..])
            .read_to_end(&mut cpio)
            .unwrap();
        assert_eq!(cpio, initrd_archive(&init).unwrap().to_bytes());

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("initrd.cpio.gz"), &initrd).unwrap();
        let listing = Command::new("sh")
            .arg("-c")
            .arg("gzip -dc initrd.cpio.gz | cpio -t -v --quiet --numeric-uid-gid")
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
