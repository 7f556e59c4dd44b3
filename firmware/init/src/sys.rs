//! Thin, checked wrappers around the few libc calls the init makes in many places.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Turns a `-1` return into the thread's `errno`.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a C string; a path with an interior NUL is an `InvalidInput` error.
pub fn c_path(path: &Path) -> io::Result<CString> {
    c_string(path.as_os_str().as_bytes())
}

/// Bytes as a C string; interior NULs are an `InvalidInput` error.
pub fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interior NUL byte"))
}

/// `mount(2)`.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = c_string(source.as_bytes())?;
    let target = c_path(target)?;
    let fstype = fstype.map(|t| c_string(t.as_bytes())).transpose()?;
    let data = data.map(|d| c_string(d.as_bytes())).transpose()?;
    // SAFETY: every pointer is either null or a NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    check(ret).map(|_| ())
}

/// `umount2(2)`.
pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = c_path(target)?;
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(|_| ())
}

/// `BLKROGET` = `_IO(0x12, 94)` from linux/fs.h.
const BLKROGET: libc::c_ulong = (0x12 << 8) | 94;

/// Whether the host attached `path` read-only (`BLKROGET`); for a regular file, whether its
/// mode forbids writing. A dm-crypt mapping over a read-only disk must be read-only too: a
/// writable mapping lets ext4 try a read-write mount that ends in I/O errors instead of the
/// `EACCES` that makes [`crate::mounts::mount_root`] fall back to a read-only mount.
pub fn is_read_only(path: &Path) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileTypeExt;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.permissions().readonly());
    }
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET writes one int through the pointer, which is valid for the call.
    check(unsafe { libc::ioctl(file.as_raw_fd(), BLKROGET, &mut ro) })?;
    Ok(ro != 0)
}

/// `sync(2)`.
pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn blkroget_matches_linux_fs_h() {
        let out = crate::c_probe::run(
            &["sys/ioctl.h", "linux/fs.h"],
            r#"printf("blkroget=%lu\n", (unsigned long)BLKROGET);"#,
        );
        assert_eq!(
            crate::c_probe::values(&out),
            [("blkroget".to_string(), BLKROGET)]
        );
    }

    #[test]
    fn read_only_follows_the_file_mode() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(!is_read_only(f.path()).unwrap());
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(is_read_only(f.path()).unwrap());
        assert!(is_read_only(Path::new("/nonexistent/disk")).is_err());
    }
}
