//! Loading a bundle directory and checking it against its manifest, and writing one.
//!
//! The files are read into memory once and the checked bytes are the ones handed out, so a
//! file swapped after the check cannot reach the guest.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::manifest::{FileDigest, Manifest, ManifestError, MANIFEST_FORMAT};

/// Environment variable that overrides the bundle directory.
pub const BUNDLE_DIR_ENV: &str = "KRUN_SEV_BUNDLE_DIR";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const KERNEL_FILE: &str = "bzImage";
pub const INITRD_FILE: &str = "initrd.cpio.zst";
pub const FIRMWARE_FILE: &str = "firmware.bin";

/// Files a manifest may list. Anything else is rejected rather than ignored.
const KNOWN_FILES: &[&str] = &[KERNEL_FILE, INITRD_FILE, FIRMWARE_FILE];
const MAX_MANIFEST_SIZE: u64 = 64 * 1024;
const MAX_FILE_SIZE: u64 = 1024 * 1024 * 1024;

/// Errors from loading, checking or writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read bundle file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write bundle file {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bundle manifest {path} is invalid")]
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
    #[error("bundle file {path} is larger than allowed")]
    TooLarge { path: PathBuf },
    #[error("bundle manifest lists unknown file {name:?}")]
    UnknownFile { name: String },
    #[error("bundle manifest does not list required file {name}")]
    MissingFromManifest { name: &'static str },
    #[error("bundle file {path} has {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("bundle file {path} does not match the SHA-256 in the manifest")]
    DigestMismatch { path: PathBuf },
}

/// A bundle whose files matched their manifest when loaded.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub firmware: Option<Vec<u8>>,
}

/// The bundle directory to use: `$KRUN_SEV_BUNDLE_DIR` if set and non-empty, else `default`
/// (the install location, `$(PREFIX)/lib/krun-sev`).
pub fn bundle_dir(default: &Path) -> PathBuf {
    match std::env::var_os(BUNDLE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => default.to_path_buf(),
    }
}

/// Where a bundle's files come from: a directory read now ([`Bundle::load`]), or copies the
/// caller took earlier (the library maps the bundle when it is loaded, because crun may call
/// it after `pivot_root` into a container that cannot see the install directory).
pub trait BundleFiles {
    /// The directory the files belong to (for errors and for telling bundles apart).
    fn dir(&self) -> &Path;
    /// At most `limit + 1` bytes of file `name`: enough to tell that it is larger than
    /// `limit` without reading all of it.
    fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, BundleError>;
}

/// The files of a directory, read when asked for.
struct DirFiles<'a>(&'a Path);

impl BundleFiles for DirFiles<'_> {
    fn dir(&self) -> &Path {
        self.0
    }
    fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, BundleError> {
        read_limited(&self.0.join(name), limit)
    }
}

impl Bundle {
    /// Reads `dir/manifest.json` and every file it lists, checking size and SHA-256.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        Self::load_from(&DirFiles(dir))
    }

    /// [`Bundle::load`] over any [`BundleFiles`].
    pub fn load_from(files: &dyn BundleFiles) -> Result<Self, BundleError> {
        let dir = files.dir();
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = files.read(MANIFEST_FILE, MAX_MANIFEST_SIZE)?;
        if text.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(BundleError::TooLarge {
                path: manifest_path,
            });
        }
        let text = String::from_utf8(text).map_err(|e| BundleError::Read {
            path: manifest_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let manifest = Manifest::parse(&text).map_err(|source| BundleError::Manifest {
            path: manifest_path,
            source,
        })?;
        if let Some(name) = manifest
            .files
            .keys()
            .find(|n| !KNOWN_FILES.contains(&n.as_str()))
        {
            return Err(BundleError::UnknownFile { name: name.clone() });
        }
        let kernel = load_checked(files, &manifest, KERNEL_FILE)?
            .ok_or(BundleError::MissingFromManifest { name: KERNEL_FILE })?;
        let initrd = load_checked(files, &manifest, INITRD_FILE)?
            .ok_or(BundleError::MissingFromManifest { name: INITRD_FILE })?;
        let firmware = load_checked(files, &manifest, FIRMWARE_FILE)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            kernel,
            initrd,
            firmware,
        })
    }
}

/// Reads the named file if the manifest lists it, and checks it.
fn load_checked(
    files: &dyn BundleFiles,
    manifest: &Manifest,
    name: &str,
) -> Result<Option<Vec<u8>>, BundleError> {
    let Some(expected) = manifest.files.get(name) else {
        return Ok(None);
    };
    let path = files.dir().join(name);
    if expected.size > MAX_FILE_SIZE {
        return Err(BundleError::TooLarge { path });
    }
    let data = files.read(name, expected.size)?;
    let actual = FileDigest::of(&data);
    if actual.size != expected.size {
        return Err(BundleError::SizeMismatch {
            path,
            expected: expected.size,
            actual: actual.size,
        });
    }
    if !actual.sha256.eq_ignore_ascii_case(&expected.sha256) {
        return Err(BundleError::DigestMismatch { path });
    }
    Ok(Some(data))
}

/// Reads at most `limit + 1` bytes: enough to tell that a file is larger than `limit`
/// without reading all of it.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, BundleError> {
    let file = File::open(path).map_err(|source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut data = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|source| BundleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(data)
}

/// What goes into a new bundle.
#[derive(Debug)]
pub struct BundleContents<'a> {
    pub kernel: &'a [u8],
    pub kernel_version: &'a str,
    pub nr_cpus: u32,
    pub initrd: &'a [u8],
    pub firmware: Option<&'a [u8]>,
}

/// Writes the files and then the manifest into `dir` (created if missing). A manifest is
/// written last, so a bundle interrupted while being written does not verify.
pub fn write_bundle(dir: &Path, contents: &BundleContents<'_>) -> Result<Manifest, BundleError> {
    std::fs::create_dir_all(dir).map_err(|source| BundleError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let manifest_path = dir.join(MANIFEST_FILE);
    remove_if_present(&manifest_path)?;
    let mut files = vec![
        (KERNEL_FILE, contents.kernel),
        (INITRD_FILE, contents.initrd),
    ];
    match contents.firmware {
        Some(firmware) => files.push((FIRMWARE_FILE, firmware)),
        None => remove_if_present(&dir.join(FIRMWARE_FILE))?,
    }
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT,
        kernel_version: contents.kernel_version.to_owned(),
        nr_cpus: contents.nr_cpus,
        files: Default::default(),
    };
    for (name, data) in files {
        write_file(&dir.join(name), data)?;
        manifest.files.insert(name.to_owned(), FileDigest::of(data));
    }
    let json = manifest.to_json().map_err(|source| BundleError::Manifest {
        path: manifest_path.clone(),
        source,
    })?;
    write_file(&manifest_path, json.as_bytes())?;
    Ok(manifest)
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), BundleError> {
    std::fs::write(path, data).map_err(|source| BundleError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn remove_if_present(path: &Path) -> Result<(), BundleError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BundleError::Write {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents() -> BundleContents<'static> {
        BundleContents {
            kernel: b"kernel bytes",
            kernel_version: "6.12.117",
            nr_cpus: 32,
            initrd: b"initrd bytes",
            firmware: None,
        }
    }

    #[test]
    fn written_bundle_loads_with_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_bundle(dir.path(), &contents()).unwrap();
        let bundle = Bundle::load(dir.path()).unwrap();
        assert_eq!(bundle.manifest, written);
        assert_eq!(bundle.kernel, b"kernel bytes");
        assert_eq!(bundle.initrd, b"initrd bytes");
        assert_eq!(bundle.firmware, None);
        assert_eq!(bundle.manifest.files.len(), 2);
        assert_eq!(bundle.manifest.nr_cpus, 32);
    }

    #[test]
    fn firmware_is_listed_and_checked_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let with_fw = BundleContents {
            firmware: Some(b"fw"),
            ..contents()
        };
        write_bundle(dir.path(), &with_fw).unwrap();
        assert_eq!(
            Bundle::load(dir.path()).unwrap().firmware.as_deref(),
            Some(&b"fw"[..])
        );
        std::fs::write(dir.path().join(FIRMWARE_FILE), b"fW").unwrap();
        assert!(matches!(
            Bundle::load(dir.path()),
            Err(BundleError::DigestMismatch { .. })
        ));
        // Rewriting without firmware removes the stale file and its manifest entry.
        write_bundle(dir.path(), &contents()).unwrap();
        assert!(!dir.path().join(FIRMWARE_FILE).exists());
        assert!(Bundle::load(dir.path()).unwrap().firmware.is_none());
    }

    #[test]
    fn tampered_truncated_grown_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write_bundle(dir.path(), &contents()).unwrap();
        let kernel = dir.path().join(KERNEL_FILE);

        std::fs::write(&kernel, b"kernel bytez").unwrap();
        assert!(matches!(
            Bundle::load(dir.path()),
            Err(BundleError::DigestMismatch { .. })
        ));

        std::fs::write(&kernel, b"kernel").unwrap();
        let err = Bundle::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                BundleError::SizeMismatch {
                    expected: 12,
                    actual: 6,
                    ..
                }
            ),
            "{err:?}"
        );

        std::fs::write(&kernel, b"kernel bytes and more").unwrap();
        let err = Bundle::load(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                BundleError::SizeMismatch {
                    expected: 12,
                    actual: 13,
                    ..
                }
            ),
            "{err:?}"
        );

        std::fs::remove_file(&kernel).unwrap();
        assert!(matches!(
            Bundle::load(dir.path()),
            Err(BundleError::Read { .. })
        ));
    }

    #[test]
    fn manifest_problems_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Bundle::load(dir.path()),
            Err(BundleError::Read { .. })
        ));

        write_bundle(dir.path(), &contents()).unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let json = std::fs::read_to_string(&path).unwrap();

        std::fs::write(&path, json.replace("\"bzImage\"", "\"../etc/passwd\"")).unwrap();
        assert!(matches!(
            Bundle::load(dir.path()),
            Err(BundleError::UnknownFile { .. })
        ));

        let without_initrd = json.replace("\"initrd.cpio.zst\"", "\"firmware.bin\"");
        std::fs::write(&path, without_initrd).unwrap();
        std::fs::write(dir.path().join(FIRMWARE_FILE), b"initrd bytes").unwrap();
        assert!(matches!(
            Bundle::load(dir.path()),
            Err(BundleError::MissingFromManifest { name: INITRD_FILE })
        ));

        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            Bundle::load(dir.path()),
            Err(BundleError::Manifest { .. })
        ));

        std::fs::write(&path, vec![b' '; 70 * 1024]).unwrap();
        assert!(matches!(
            Bundle::load(dir.path()),
            Err(BundleError::TooLarge { .. })
        ));
    }

    #[test]
    fn environment_overrides_the_default_dir() {
        // Only this test touches the variable.
        std::env::remove_var(BUNDLE_DIR_ENV);
        assert_eq!(
            bundle_dir(Path::new("/usr/lib/krun-sev")),
            Path::new("/usr/lib/krun-sev")
        );
        std::env::set_var(BUNDLE_DIR_ENV, "/tmp/b");
        assert_eq!(
            bundle_dir(Path::new("/usr/lib/krun-sev")),
            Path::new("/tmp/b")
        );
        std::env::set_var(BUNDLE_DIR_ENV, "");
        assert_eq!(
            bundle_dir(Path::new("/usr/lib/krun-sev")),
            Path::new("/usr/lib/krun-sev")
        );
        std::env::remove_var(BUNDLE_DIR_ENV);
    }
}
