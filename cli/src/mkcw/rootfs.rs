//! The root file system given to mkcw: a directory is used in place; a tar archive is
//! unpacked into the work directory first (with `tar`, keeping numeric owners).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors while staging the root file system.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The path does not exist or cannot be read.
    #[error("cannot read {0}")]
    Read(String, #[source] std::io::Error),
    /// `tar` failed.
    #[error("tar could not unpack {path}: {output}")]
    Tar {
        /// The archive.
        path: String,
        /// What tar printed.
        output: String,
    },
}

/// Returns the directory holding the root file system.
pub fn stage(rootfs: &Path, work: &Path) -> Result<PathBuf, RootfsError> {
    let shown = rootfs.display().to_string();
    let meta = std::fs::metadata(rootfs).map_err(|e| RootfsError::Read(shown.clone(), e))?;
    if meta.is_dir() {
        return Ok(rootfs.to_path_buf());
    }
    let dest = work.join("rootfs");
    std::fs::create_dir_all(&dest).map_err(|e| RootfsError::Read(dest.display().to_string(), e))?;
    let out = Command::new("tar")
        .arg("-xf")
        .arg(rootfs)
        .arg("-C")
        .arg(&dest)
        .args([
            "--numeric-owner",
            "--no-same-permissions",
            "--delay-directory-restore",
        ])
        .output()
        .map_err(|e| RootfsError::Read(shown.clone(), e))?;
    if !out.status.success() {
        return Err(RootfsError::Tar {
            path: shown,
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(dest)
}
