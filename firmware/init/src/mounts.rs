//! File systems: the early mounts in the initramfs, the root disk, the switch to it, and the
//! mounts a container expects.

use std::io;
use std::path::PathBuf;

use crate::sys;

/// Errors from mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    /// Creating a mount point failed.
    #[error("cannot create mount point {path}")]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// The reason.
        #[source]
        source: io::Error,
    },
    /// A mount failed.
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        /// File system type.
        fstype: String,
        /// Mount point.
        target: PathBuf,
        /// The kernel's reason.
        #[source]
        source: io::Error,
    },
    /// A step of the switch to the new root failed.
    #[error("cannot switch to the new root ({step})")]
    SwitchRoot {
        /// The call that failed.
        step: &'static str,
        /// The kernel's reason.
        #[source]
        source: io::Error,
    },
}

/// One mount to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Source (device or a name for pseudo file systems).
    pub source: &'static str,
    /// Mount point.
    pub target: PathBuf,
    /// File system type.
    pub fstype: &'static str,
    /// MS_* flags.
    pub flags: libc::c_ulong,
    /// File system options.
    pub data: Option<&'static str>,
}

impl MountSpec {
    fn new(
        source: &'static str,
        target: &str,
        fstype: &'static str,
        flags: libc::c_ulong,
        data: Option<&'static str>,
    ) -> Self {
        MountSpec {
            source,
            target: PathBuf::from(target),
            fstype,
            flags,
            data,
        }
    }

    /// Creates the mount point and mounts; "already mounted" (EBUSY) counts as success.
    pub fn mount(&self) -> Result<(), MountsError> {
        std::fs::create_dir_all(&self.target).map_err(|source| MountsError::MountPoint {
            path: self.target.clone(),
            source,
        })?;
        match sys::mount(
            self.source,
            &self.target,
            Some(self.fstype),
            self.flags,
            self.data,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            r => r.map_err(|source| MountsError::Mount {
                fstype: self.fstype.to_string(),
                target: self.target.clone(),
                source,
            }),
        }
    }
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// What the init itself needs before it can read the disk and the launch segment.
pub fn early_mounts() -> Vec<MountSpec> {
    vec![
        MountSpec::new(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=0755"),
        ),
        MountSpec::new("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
        MountSpec::new("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
    ]
}

/// Mounts every spec in order, stopping at the first failure.
pub fn mount_all(specs: &[MountSpec]) -> Result<(), MountsError> {
    specs.iter().try_for_each(MountSpec::mount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn early_mounts_cover_dev_proc_sys() {
        let targets: Vec<_> = early_mounts().into_iter().map(|m| m.target).collect();
        assert_eq!(
            targets,
            [Path::new("/dev"), Path::new("/proc"), Path::new("/sys")]
        );
    }

    #[test]
    fn mount_failure_names_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("m");
        // An unknown file system type fails for root (ENODEV) and non-root (EPERM) alike.
        let spec = MountSpec {
            source: "none",
            target: target.clone(),
            fstype: "krun-no-such-fs",
            flags: 0,
            data: None,
        };
        let err = spec.mount().unwrap_err();
        assert!(target.is_dir());
        assert!(err.to_string().contains("krun-no-such-fs"), "{err}");
    }
}
