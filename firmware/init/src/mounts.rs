//! File systems: the early mounts in the initramfs, the root disk, the switch to it, and the
//! mounts a container expects.

use std::io;
use std::path::{Path, PathBuf};

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
    /// A failure is logged and the boot goes on (a workload may live without it).
    pub optional: bool,
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
            optional: false,
        }
    }

    fn optional(mut self) -> Self {
        self.optional = true;
        self
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

/// Mounts every spec in order, stopping at the first failure of a required one.
pub fn mount_all(specs: &[MountSpec]) -> Result<(), MountsError> {
    for spec in specs {
        match spec.mount() {
            Err(err) if spec.optional => {
                crate::log!(
                    "skipping {}: {}",
                    spec.target.display(),
                    crate::console::error_chain(&err)
                );
            }
            r => r?,
        }
    }
    Ok(())
}

/// The mounts a container expects inside `root` (the new `/`): `/proc`, `/sys`, `/dev`,
/// `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/tmp` as tmpfs when the image has none, and
/// cgroup2. Only the first three are required.
pub fn container_mounts(root: &Path) -> Vec<MountSpec> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let mut specs = vec![
        MountSpec::new("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
        MountSpec::new("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
        MountSpec::new(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID,
            Some("mode=0755"),
        ),
        MountSpec::new(
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )
        .optional(),
        MountSpec::new(
            "shm",
            "/dev/shm",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        )
        .optional(),
        MountSpec::new("mqueue", "/dev/mqueue", "mqueue", NOSUID_NODEV_NOEXEC, None).optional(),
    ];
    if !at("/tmp").exists() {
        specs.push(MountSpec::new(
            "tmpfs",
            "/tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        ));
    }
    specs.push(
        MountSpec::new(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            NOSUID_NODEV_NOEXEC,
            None,
        )
        .optional(),
    );
    for spec in &mut specs {
        spec.target = at(spec.target.to_str().unwrap_or("/"));
    }
    specs
}

/// The symlinks programs expect in `/dev` that devtmpfs does not create.
pub fn dev_symlinks(root: &Path) -> io::Result<()> {
    for (link, to) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
        ("dev/ptmx", "pts/ptmx"),
    ] {
        let link = root.join(link);
        if link.symlink_metadata().is_ok() && !link.ends_with("ptmx") {
            continue;
        }
        // devtmpfs has a ptmx device node; the devpts instance's own ptmx is the one to use.
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(to, &link)?;
    }
    Ok(())
}

/// Mounts the decrypted root file system read-write at `target`.
pub fn mount_root(device: &Path, target: &Path) -> Result<(), MountsError> {
    std::fs::create_dir_all(target).map_err(|source| MountsError::MountPoint {
        path: target.to_path_buf(),
        source,
    })?;
    let source = device.to_str().ok_or_else(|| MountsError::Mount {
        fstype: "ext4".into(),
        target: target.to_path_buf(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let mount = |flags| sys::mount(source, target, Some("ext4"), flags, None);
    // A disk the host attached read-only refuses a read-write mount; the workload then
    // gets a read-only root rather than no root.
    let result = match mount(0) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EROFS | libc::EACCES)) => {
            crate::log!("the root disk is read-only; mounting it read-only");
            mount(libc::MS_RDONLY)
        }
        other => other,
    };
    result.map_err(|source| MountsError::Mount {
        fstype: "ext4".into(),
        target: target.to_path_buf(),
        source,
    })
}

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Makes `new_root` the root: frees the initramfs, moves the mount onto `/`, chroots.
pub fn switch_root(new_root: &Path) -> Result<(), MountsError> {
    let step = |step: &'static str| move |source| MountsError::SwitchRoot { step, source };
    // The early mounts are not needed in the new root; container_mounts makes fresh ones.
    for m in ["/proc", "/sys", "/dev"] {
        let _ = sys::umount(Path::new(m), libc::MNT_DETACH);
    }
    if is_ram_filesystem(Path::new("/")).map_err(step("statfs /"))? {
        let root_dev = std::fs::symlink_metadata("/").map_err(step("stat /"))?;
        remove_tree_on_device(
            Path::new("/"),
            std::os::unix::fs::MetadataExt::dev(&root_dev),
            new_root,
        );
    }
    std::env::set_current_dir(new_root).map_err(step("chdir"))?;
    sys::mount(".", Path::new("/"), None, libc::MS_MOVE, None).map_err(step("MS_MOVE"))?;
    let dot = sys::c_string(b".").map_err(step("chroot"))?;
    // SAFETY: `dot` is a NUL-terminated string alive for the call.
    sys::check(unsafe { libc::chroot(dot.as_ptr()) }).map_err(step("chroot"))?;
    std::env::set_current_dir("/").map_err(step("chdir /"))?;
    Ok(())
}

fn is_ram_filesystem(path: &Path) -> io::Result<bool> {
    let c = sys::c_path(path)?;
    // SAFETY: statfs is plain data; an all-zero value is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a valid out-pointer, both alive for the call.
    sys::check(unsafe { libc::statfs(c.as_ptr(), &mut st) })?;
    let kind = st.f_type;
    Ok(kind == RAMFS_MAGIC || kind == TMPFS_MAGIC)
}

/// Deletes everything under `dir` that lives on file system `dev`, except `keep`, without
/// following symlinks or crossing into other mounts (what switch_root(8) does to free the
/// initramfs memory). Failures are ignored: this only frees memory.
fn remove_tree_on_device(dir: &Path, dev: u64, keep: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep {
            continue;
        }
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree_on_device(&path, dev, keep);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_mounts_cover_dev_proc_sys() {
        let targets: Vec<_> = early_mounts().into_iter().map(|m| m.target).collect();
        assert_eq!(
            targets,
            [Path::new("/dev"), Path::new("/proc"), Path::new("/sys")]
        );
    }

    #[test]
    fn container_mounts_add_tmp_only_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        let targets = |root: &Path| -> Vec<String> {
            container_mounts(root)
                .iter()
                .map(|m| {
                    m.target
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        assert_eq!(
            targets(dir.path()),
            [
                "proc",
                "sys",
                "dev",
                "dev/pts",
                "dev/shm",
                "dev/mqueue",
                "tmp",
                "sys/fs/cgroup"
            ]
        );
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        assert_eq!(
            targets(dir.path()),
            [
                "proc",
                "sys",
                "dev",
                "dev/pts",
                "dev/shm",
                "dev/mqueue",
                "sys/fs/cgroup"
            ]
        );
        let fstypes: Vec<_> = container_mounts(dir.path())
            .iter()
            .map(|m| m.fstype)
            .collect();
        assert_eq!(
            fstypes,
            ["proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "mqueue", "cgroup2"]
        );
        let optional: Vec<_> = container_mounts(dir.path())
            .iter()
            .map(|m| m.optional)
            .collect();
        assert_eq!(optional, [false, false, false, true, true, true, true]);
    }

    #[test]
    fn dev_symlinks_point_into_proc() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/ptmx"), b"").unwrap();
        dev_symlinks(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_link(dir.path().join("dev/fd")).unwrap(),
            Path::new("/proc/self/fd")
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("dev/stderr")).unwrap(),
            Path::new("/proc/self/fd/2")
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("dev/ptmx")).unwrap(),
            Path::new("pts/ptmx")
        );
        dev_symlinks(dir.path()).unwrap();
    }

    #[test]
    fn tree_removal_keeps_the_new_root_and_other_devices() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"x").unwrap();
        std::fs::write(root.join("init"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        std::fs::create_dir_all(root.join("newroot/keep")).unwrap();
        let dev = std::fs::metadata(root).unwrap().dev();
        remove_tree_on_device(root, dev, &root.join("newroot"));
        let left: Vec<_> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["newroot"]);
        assert!(root.join("newroot/keep").is_dir());
        assert!(
            Path::new("/etc").is_dir(),
            "symlink target must not be followed"
        );
        // A different device number stands for another mount: nothing is removed.
        std::fs::write(root.join("other"), b"x").unwrap();
        remove_tree_on_device(root, dev.wrapping_add(1), Path::new("/nonexistent"));
        assert!(root.join("other").exists());
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
            optional: false,
        };
        let err = spec.mount().unwrap_err();
        assert!(target.is_dir());
        assert!(err.to_string().contains("krun-no-such-fs"), "{err}");
        assert!(mount_all(std::slice::from_ref(&spec)).is_err());
        // The same failure on an optional mount is only logged.
        let optional = MountSpec {
            optional: true,
            ..spec
        };
        mount_all(&[optional]).unwrap();
    }
}
