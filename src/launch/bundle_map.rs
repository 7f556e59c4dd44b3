//! The guest bundle mapped into memory when the library is loaded.
//!
//! crun dlopens the library on the host, but crun 1.6–1.20 call `krun_create_ctx` (and every
//! crun calls `krun_start_enter`) after `pivot_root` into the container, where the install
//! directory is gone. Mapping the files at load time costs a few system calls and no reads
//! (pages are read, and the SHA-256 checked against the manifest, only when a launch copies
//! them), and a mapping survives `pivot_root` and crun closing descriptors. A file truncated
//! on disk after it was mapped would fault when the launch reads it: do not rewrite an
//! installed bundle while containers start (`make install` writes new files and renames).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use krun_bundle::{BundleError, BundleFiles};

/// The files a bundle may have, mapped when present.
const FILES: [&str; 4] = [
    krun_bundle::MANIFEST_FILE,
    krun_bundle::KERNEL_FILE,
    krun_bundle::INITRD_FILE,
    krun_bundle::FIRMWARE_FILE,
];
/// Larger files are not mapped (the manifest check refuses them anyway).
const MAX_MAP: u64 = 1 << 30;

/// A read-only private mapping of a whole file.
#[derive(Debug)]
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and private; nothing writes through it, so shared
// references from several threads only read.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn of(path: &Path) -> io::Result<Mapping> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len > MAX_MAP {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too large to map",
            ));
        }
        let len = usize::try_from(len).map_err(io::Error::other)?;
        if len == 0 {
            return Ok(Mapping {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                len: 0,
            });
        }
        // SAFETY: a new private read-only mapping of `len` bytes of an open file; the
        // kernel picks the address. The descriptor may be closed afterwards.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes until drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping made in `of`, which nothing uses any more.
            unsafe { libc::munmap(self.ptr.cast_mut().cast(), self.len) };
        }
    }
}

/// The bundle files of one directory, mapped.
#[derive(Debug)]
pub struct MappedBundle {
    dir: PathBuf,
    files: Vec<(&'static str, Mapping)>,
}

impl MappedBundle {
    /// Maps the bundle files present in `dir`; missing ones are reported when read.
    pub fn map(dir: &Path) -> MappedBundle {
        let files = FILES
            .into_iter()
            .filter_map(|name| Mapping::of(&dir.join(name)).ok().map(|m| (name, m)))
            .collect();
        MappedBundle {
            dir: dir.to_path_buf(),
            files,
        }
    }

    /// Whether the manifest was there to map.
    pub fn has_manifest(&self) -> bool {
        self.files
            .iter()
            .any(|(n, _)| *n == krun_bundle::MANIFEST_FILE)
    }
}

impl BundleFiles for MappedBundle {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, BundleError> {
        let Some((_, m)) = self.files.iter().find(|(n, _)| *n == name) else {
            return Err(BundleError::Read {
                path: self.dir.join(name),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "not present when the library was loaded or the context created",
                ),
            });
        };
        let bytes = m.bytes();
        let take =
            usize::try_from(limit.saturating_add(1)).map_or(bytes.len(), |l| l.min(bytes.len()));
        Ok(bytes[..take].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use krun_bundle::Bundle;

    #[test]
    fn a_mapped_bundle_verifies_without_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b");
        krun_bundle::write_bundle(
            &bundle,
            &krun_bundle::BundleContents {
                kernel: b"\x7fELF kernel bytes",
                kernel_version: "6.12-test",
                nr_cpus: 8,
                initrd: b"",
                firmware: None,
            },
        )
        .unwrap();
        let mapped = MappedBundle::map(&bundle);
        assert!(mapped.has_manifest());
        std::fs::remove_dir_all(&bundle).unwrap();
        let loaded = Bundle::load_from(&mapped).unwrap();
        assert_eq!(loaded.kernel, b"\x7fELF kernel bytes");
        assert!(loaded.initrd.is_empty());
        // Loading twice works: the mapping stays.
        assert!(Bundle::load_from(&mapped).is_ok());
    }

    #[test]
    fn a_file_changed_before_the_launch_fails_the_manifest_check() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b");
        krun_bundle::write_bundle(
            &bundle,
            &krun_bundle::BundleContents {
                kernel: b"kernel",
                kernel_version: "6.12-test",
                nr_cpus: 8,
                initrd: b"initrd",
                firmware: None,
            },
        )
        .unwrap();
        // Replaced with different bytes of the same size before mapping.
        std::fs::write(bundle.join("bzImage"), b"KERNEL").unwrap();
        let mapped = MappedBundle::map(&bundle);
        assert!(matches!(
            Bundle::load_from(&mapped),
            Err(BundleError::DigestMismatch { .. })
        ));
        let missing = MappedBundle::map(&dir.path().join("nothing"));
        assert!(!missing.has_manifest());
        let err = Bundle::load_from(&missing).unwrap_err().to_string();
        assert!(err.contains("manifest.json"), "{err}");
    }
}
