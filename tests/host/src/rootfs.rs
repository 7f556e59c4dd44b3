//! What the guest-boot tests put on their disks: a root file system holding a static busybox
//! (the one `prepare.sh` caches) with applet symlinks, and a plain ext4 image of a tree; plus
//! the workspace binaries (`krun-sev`, `krun-kbs`) the tests copy into the test host.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{assets_dir, TestHostError};

/// The mount points a container image has (a read-only root cannot get them created).
const MOUNT_POINTS: &[&str] = &["bin", "proc", "sys", "dev", "tmp", "run"];

/// Errors while making a root file system or disk image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot find the test host assets")]
    Assets(#[source] Box<TestHostError>),
    #[error("cannot write {0}")]
    Write(String, #[source] std::io::Error),
    #[error("mkfs.ext4 failed for {0}")]
    Mkfs(String),
    #[error("{path} is missing: build it with cargo build -p {package}")]
    MissingBinary { path: String, package: String },
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |e| RootfsError::Write(path.display().to_string(), e)
}

/// Makes `root` a minimal root file system: the usual mount points, `/bin/busybox` and a
/// symlink to it for each applet.
pub fn busybox_rootfs(root: &Path, applets: &[&str]) -> Result<(), RootfsError> {
    for d in MOUNT_POINTS {
        let dir = root.join(d);
        std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
    }
    let busybox = assets_dir()
        .map_err(|e| RootfsError::Assets(Box::new(e)))?
        .join("busybox");
    let target = root.join("bin/busybox");
    std::fs::copy(&busybox, &target).map_err(write_err(&target))?;
    for applet in applets {
        let link = root.join("bin").join(applet);
        std::os::unix::fs::symlink("busybox", &link).map_err(write_err(&link))?;
    }
    Ok(())
}

/// Makes `image` (`size` bytes) an ext4 file system with 4096-byte blocks holding the tree
/// under `root` (`mkfs.ext4 -d`: no root and no loop device needed).
pub fn ext4_image(root: &Path, image: &Path, size: u64) -> Result<(), RootfsError> {
    let file = std::fs::File::create(image).map_err(write_err(image))?;
    file.set_len(size).map_err(write_err(image))?;
    drop(file);
    // 4096-byte blocks as mkcw makes them: a 4096-byte-sector LUKS payload cannot hold the
    // 1 KiB blocks mkfs.ext4 picks for small images.
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(root)
        .arg(image)
        .status()
        .map_err(write_err(image))?;
    if !status.success() {
        return Err(RootfsError::Mkfs(image.display().to_string()));
    }
    Ok(())
}

/// A binary of this workspace built next to the running test (`target/<profile>/<name>`),
/// e.g. `krun-sev` (package krun-sev-cli) or `krun-kbs` (package krun-kbs).
pub fn workspace_bin(name: &str, package: &str) -> Result<PathBuf, RootfsError> {
    let exe = std::env::current_exe().map_err(write_err(Path::new(name)))?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .unwrap_or_else(|| PathBuf::from(name));
    if !bin.exists() {
        return Err(RootfsError::MissingBinary {
            path: bin.display().to_string(),
            package: package.to_owned(),
        });
    }
    Ok(bin)
}

/// `workspace_bin("krun-sev", "krun-sev-cli")`.
pub fn krun_sev_bin() -> Result<PathBuf, RootfsError> {
    workspace_bin("krun-sev", "krun-sev-cli")
}

/// `workspace_bin("krun-kbs", "krun-kbs")`.
pub fn krun_kbs_bin() -> Result<PathBuf, RootfsError> {
    workspace_bin("krun-kbs", "krun-kbs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_workspace_binary_names_its_package() {
        let err = workspace_bin("no-such-binary", "no-such-package").unwrap_err();
        assert!(
            err.to_string().contains("cargo build -p no-such-package"),
            "{err}"
        );
    }
}
