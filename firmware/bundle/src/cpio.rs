//! A deterministic writer for the "newc" cpio format, the format the kernel unpacks as
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Output depends only on the entries: they are written sorted by path (so every directory
//! precedes its contents), with mtime 0, uid/gid 0, inode numbers assigned in that order and
//! no trailing block padding. Device nodes are plain header entries, so building an archive
//! needs no privileges.

use std::collections::BTreeMap;
use std::ops::Range;

/// newc header magic (no checksum variant).
const MAGIC: &[u8; 6] = b"070701";
/// Magic plus 13 fields of 8 hex digits.
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
/// Longest path the kernel accepts for an initramfs entry (PATH_MAX).
const MAX_PATH_LEN: usize = 4095;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;
const PERMISSION_BITS: u32 = 0o7777;

/// Errors from building a cpio archive.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    #[error("cpio entry path {path:?} is not a plain relative path")]
    InvalidPath { path: String },
    #[error("cpio entry {path:?} is added twice")]
    Duplicate { path: String },
    #[error("parent of cpio entry {path:?} is not a directory")]
    ParentNotDirectory { path: String },
    #[error("permission bits {mode:#o} of cpio entry {path:?} exceed 0o7777")]
    InvalidMode { path: String, mode: u32 },
    #[error("cpio entry {path:?} is larger than the format's 4 GiB limit")]
    TooLarge { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Directory,
    File(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    permissions: u32,
    kind: Kind,
}

/// An in-memory newc archive under construction.
#[derive(Debug, Default, Clone)]
pub struct CpioArchive {
    entries: BTreeMap<String, Entry>,
}

/// Where each regular file's data ended up in the written archive.
pub type FileLayout = BTreeMap<String, Range<usize>>;

impl CpioArchive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory. Missing parent directories are added with mode 0755.
    pub fn add_dir(&mut self, path: &str, permissions: u32) -> Result<(), CpioError> {
        self.add(path, permissions, Kind::Directory)
    }

    /// Adds a regular file.
    pub fn add_file(
        &mut self,
        path: &str,
        permissions: u32,
        data: Vec<u8>,
    ) -> Result<(), CpioError> {
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge {
                path: path.to_owned(),
            });
        }
        self.add(path, permissions, Kind::File(data))
    }

    /// Adds a character device node.
    pub fn add_char_device(
        &mut self,
        path: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.add(path, permissions, Kind::CharDevice { major, minor })
    }

    /// Adds a symbolic link pointing at `target` (stored verbatim).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        if target.is_empty() || target.contains('\0') || target.len() > MAX_PATH_LEN {
            return Err(CpioError::InvalidPath {
                path: target.to_owned(),
            });
        }
        self.add(path, 0o777, Kind::Symlink(target.to_owned()))
    }

    fn add(&mut self, path: &str, permissions: u32, kind: Kind) -> Result<(), CpioError> {
        let path = normalize(path)?;
        if permissions & !PERMISSION_BITS != 0 {
            return Err(CpioError::InvalidMode {
                path,
                mode: permissions,
            });
        }
        if self.entries.contains_key(&path) {
            return Err(CpioError::Duplicate { path });
        }
        let mut parents = Vec::new();
        let mut rest = path.as_str();
        while let Some((parent, _)) = rest.rsplit_once('/') {
            match self.entries.get(parent) {
                Some(Entry {
                    kind: Kind::Directory,
                    ..
                }) => break,
                Some(_) => return Err(CpioError::ParentNotDirectory { path }),
                None => parents.push(parent.to_owned()),
            }
            rest = parent;
        }
        for parent in parents {
            self.entries.insert(
                parent,
                Entry {
                    permissions: 0o755,
                    kind: Kind::Directory,
                },
            );
        }
        self.entries.insert(path, Entry { permissions, kind });
        Ok(())
    }

    /// Writes the archive, including the trailer.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with_layout().0
    }

    /// Writes the archive and reports the byte range of every regular file's data, for
    /// callers that must find (or align) a file's contents inside the archive.
    pub fn to_bytes_with_layout(&self) -> (Vec<u8>, FileLayout) {
        let mut out = Vec::new();
        let mut layout = FileLayout::new();
        for (index, (path, entry)) in self.entries.iter().enumerate() {
            // Inode 0 is left for the trailer; the kernel only uses inode numbers to find hard
            // links (nlink >= 2 on regular files), which this writer never emits.
            let ino = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let (type_bits, nlink, rdev, data): (u32, u32, (u32, u32), &[u8]) = match &entry.kind {
                Kind::Directory => (S_IFDIR, 2, (0, 0), &[]),
                Kind::File(data) => (S_IFREG, 1, (0, 0), data),
                Kind::CharDevice { major, minor } => (S_IFCHR, 1, (*major, *minor), &[]),
                Kind::Symlink(target) => (S_IFLNK, 1, (0, 0), target.as_bytes()),
            };
            let header = Header {
                ino,
                mode: type_bits | entry.permissions,
                nlink,
                rdev,
            };
            let range = write_entry(&mut out, &header, path, data);
            if matches!(entry.kind, Kind::File(_)) {
                layout.insert(path.clone(), range);
            }
        }
        write_entry(
            &mut out,
            &Header {
                ino: 0,
                mode: 0,
                nlink: 1,
                rdev: (0, 0),
            },
            TRAILER,
            &[],
        );
        (out, layout)
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
}

/// Appends one header, name and data; returns the data's byte range.
fn write_entry(out: &mut Vec<u8>, header: &Header, name: &str, data: &[u8]) -> Range<usize> {
    // Lengths were bounded when the entry was added (paths <= PATH_MAX, data < 4 GiB).
    let name_size = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
    let file_size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let fields = [
        header.ino,
        header.mode,
        0, // uid
        0, // gid
        header.nlink,
        0, // mtime
        file_size,
        0, // devmajor
        0, // devminor
        header.rdev.0,
        header.rdev.1,
        name_size,
        0, // check
    ];
    out.reserve(HEADER_LEN + name.len() + data.len() + 8);
    out.extend_from_slice(MAGIC);
    for field in fields {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    let start = out.len();
    out.extend_from_slice(data);
    let end = out.len();
    pad4(out);
    start..end
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// Strips leading slashes and rejects anything but plain `a/b/c` paths.
fn normalize(path: &str) -> Result<String, CpioError> {
    let trimmed = path.trim_start_matches('/');
    let valid = !trimmed.is_empty()
        && trimmed.len() <= MAX_PATH_LEN
        && trimmed != TRAILER
        && !trimmed.contains('\0')
        && trimmed
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if valid {
        Ok(trimmed.to_owned())
    } else {
        Err(CpioError::InvalidPath {
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    fn sample() -> CpioArchive {
        let mut archive = CpioArchive::new();
        archive
            .add_file("/init", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .unwrap();
        archive.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        archive.add_dir("tmp", 0o1777).unwrap();
        archive.add_file("etc/a/b", 0o644, vec![7; 5]).unwrap();
        archive.add_symlink("bin", "usr/bin").unwrap();
        archive
    }

    /// Runs GNU cpio (an independent reader) on the archive.
    fn gnu_cpio(args: &[&str], archive: &[u8], dir: &std::path::Path) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("GNU cpio is installed (apt-get install cpio)");
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "cpio failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    #[test]
    fn gnu_cpio_lists_entries_sorted_with_owner_mode_and_device() {
        let dir = tempfile::tempdir().unwrap();
        let listing = gnu_cpio(
            &["-t", "-v", "--quiet", "--numeric-uid-gid"],
            &sample().to_bytes(),
            dir.path(),
        );
        let lines: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let names: Vec<&str> = lines.iter().map(|l| l[l.len() - 1]).collect();
        // The symlink line ends in "bin -> usr/bin".
        assert_eq!(
            names,
            [
                "usr/bin",
                "dev",
                "dev/console",
                "etc",
                "etc/a",
                "etc/a/b",
                "init",
                "tmp"
            ]
        );
        assert_eq!(lines[0][0], "lrwxrwxrwx");
        assert_eq!(lines[1][0], "drwxr-xr-x");
        assert_eq!(&lines[2][..6], ["crw-------", "1", "0", "0", "5,", "1"]);
        assert_eq!(lines[6][0], "-rwxr-xr-x");
        assert_eq!(lines[7][0], "drwxrwxrwt");
        for line in &lines {
            assert_eq!((line[2], line[3]), ("0", "0"), "owner of {line:?}");
        }
        // mtime 0 shows as the epoch.
        assert!(listing.contains("1970"), "{listing}");
    }

    #[test]
    fn gnu_cpio_extracts_identical_contents() {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = CpioArchive::new();
        archive
            .add_file("init", 0o755, b"#!/bin/sh\n".to_vec())
            .unwrap();
        let odd: Vec<u8> = (0..=250u8).collect();
        archive
            .add_file("d/odd-length", 0o600, odd.clone())
            .unwrap();
        archive.add_file("d/empty", 0o644, Vec::new()).unwrap();
        gnu_cpio(
            &["-i", "-d", "--quiet", "--no-absolute-filenames"],
            &archive.to_bytes(),
            dir.path(),
        );
        assert_eq!(
            std::fs::read(dir.path().join("init")).unwrap(),
            b"#!/bin/sh\n"
        );
        assert_eq!(std::fs::read(dir.path().join("d/odd-length")).unwrap(), odd);
        assert_eq!(std::fs::read(dir.path().join("d/empty")).unwrap(), b"");
    }

    #[test]
    fn header_fields_are_the_newc_layout() {
        let mut archive = CpioArchive::new();
        archive.add_file("ab", 0o644, b"xyz".to_vec()).unwrap();
        let bytes = archive.to_bytes();
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        let fields = [
            "00000001", "000081A4", "00000000", "00000000", "00000001", "00000000", "00000003",
            "00000000", "00000000", "00000000", "00000000", "00000003", "00000000",
        ];
        assert_eq!(header, format!("070701{}", fields.concat()));
        // Name "ab\0" ends at 113, padded to 116; data "xyz" padded to 120.
        assert_eq!(&bytes[110..116], b"ab\0\0\0\0");
        assert_eq!(&bytes[116..120], b"xyz\0");
        assert!(bytes[120..].starts_with(b"070701"));
        assert!(bytes.ends_with(b"TRAILER!!!\0\0\0\0"));
    }

    #[test]
    fn layout_points_at_each_file_data() {
        let archive = sample();
        let (bytes, layout) = archive.to_bytes_with_layout();
        assert_eq!(layout.len(), 2);
        assert_eq!(&bytes[layout["init"].clone()], b"#!/bin/sh\necho hi\n");
        assert_eq!(&bytes[layout["etc/a/b"].clone()], &[7; 5]);
        assert!(layout.values().all(|r| r.start % 4 == 0));
    }

    #[test]
    fn output_is_independent_of_insertion_order() {
        let mut reversed = CpioArchive::new();
        reversed.add_symlink("bin", "usr/bin").unwrap();
        reversed.add_file("etc/a/b", 0o644, vec![7; 5]).unwrap();
        reversed.add_dir("tmp", 0o1777).unwrap();
        reversed
            .add_char_device("dev/console", 0o600, 5, 1)
            .unwrap();
        reversed
            .add_file("init", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .unwrap();
        assert_eq!(reversed.to_bytes(), sample().to_bytes());
    }

    #[test]
    fn rejects_bad_paths_duplicates_and_modes() {
        let mut archive = CpioArchive::new();
        for bad in ["", "/", "a//b", "a/../b", "./a", "a/.", "x\0y", TRAILER] {
            assert_eq!(
                archive.add_dir(bad, 0o755),
                Err(CpioError::InvalidPath {
                    path: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
        archive.add_file("f", 0o644, Vec::new()).unwrap();
        assert!(matches!(
            archive.add_dir("/f", 0o755),
            Err(CpioError::Duplicate { .. })
        ));
        assert!(matches!(
            archive.add_file("f/g", 0o644, Vec::new()),
            Err(CpioError::ParentNotDirectory { .. })
        ));
        assert!(matches!(
            archive.add_dir("d", 0o10000),
            Err(CpioError::InvalidMode { .. })
        ));
    }
}
