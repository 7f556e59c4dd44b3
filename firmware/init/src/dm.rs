//! Device-mapper ioctls: create a `crypt` mapping for the unlocked root disk.
//!
//! Sequence (as `dmsetup create` does it): DM_DEV_CREATE (name) → DM_TABLE_LOAD (one `crypt`
//! target) → DM_DEV_SUSPEND without DM_SUSPEND_FLAG, which resumes the device and makes the
//! loaded table live. On failure after the create, the device is removed again. The table
//! load carries DM_SECURE_DATA_FLAG so the kernel wipes its copy of the key, and our buffer
//! is zeroized when dropped. Layouts follow linux/dm-ioctl.h (checked against the header by a
//! test that compiles it).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

use crate::unlock::CryptTarget;

/// The control device.
pub const CONTROL_PATH: &str = "/dev/mapper/control";
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_MAX_TYPE_NAME: usize = 16;
/// The interface version we speak: major must equal the kernel's, minor may be lower.
const DM_VERSION: [u32; 3] = [4, 0, 0];

const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_SECURE_DATA_FLAG: u32 = 1 << 15;

/// `struct dm_ioctl` (linux/dm-ioctl.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}
const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);
const DM_IOCTL_SIZE: usize = std::mem::size_of::<DmIoctl>();

/// `struct dm_target_spec` (linux/dm-ioctl.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; DM_MAX_TYPE_NAME],
}
const _: () = assert!(std::mem::size_of::<DmTargetSpec>() == 40);
const DM_TARGET_SPEC_SIZE: usize = std::mem::size_of::<DmTargetSpec>();

const fn dm_iowr(cmd: libc::c_ulong) -> libc::c_ulong {
    // _IOWR(DM_IOCTL = 0xfd, cmd, struct dm_ioctl)
    (3 << 30) | ((DM_IOCTL_SIZE as libc::c_ulong) << 16) | (0xfd << 8) | cmd
}
const DM_DEV_CREATE: libc::c_ulong = dm_iowr(3);
const DM_DEV_REMOVE: libc::c_ulong = dm_iowr(4);
const DM_DEV_SUSPEND: libc::c_ulong = dm_iowr(6);
const DM_TABLE_LOAD: libc::c_ulong = dm_iowr(9);

/// Errors from device-mapper.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    /// The mapping name does not fit or has a NUL.
    #[error("invalid device-mapper name")]
    Name,
    /// A table parameter is unusable.
    #[error("invalid crypt table parameters")]
    Table,
    /// /dev/mapper/control cannot be opened.
    #[error("cannot open /dev/mapper/control")]
    Control(#[source] io::Error),
    /// A DM ioctl failed.
    #[error("device-mapper {op} failed")]
    Ioctl {
        /// The command.
        op: &'static str,
        /// The kernel's reason.
        #[source]
        source: io::Error,
    },
    /// The device node cannot be created.
    #[error("cannot create the mapped device node")]
    Node(#[source] io::Error),
}

impl DmIoctl {
    fn new(name: &str, data_size: usize, flags: u32) -> Result<Self, DmError> {
        let mut header = DmIoctl {
            version: DM_VERSION,
            data_size: u32::try_from(data_size).map_err(|_| DmError::Table)?,
            data_start: 0,
            target_count: 0,
            open_count: 0,
            flags,
            event_nr: 0,
            padding: 0,
            dev: 0,
            name: [0; DM_NAME_LEN],
            uuid: [0; DM_UUID_LEN],
            data: [0; 7],
        };
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes.len() >= DM_NAME_LEN
            || bytes.contains(&0)
            || bytes.contains(&b'/')
        {
            return Err(DmError::Name);
        }
        header.name[..bytes.len()].copy_from_slice(bytes);
        Ok(header)
    }

    fn as_bytes(&self) -> &[u8] {
        // SAFETY: DmIoctl is repr(C) plain data with no padding (size asserted to equal the
        // sum of its fields), so all DM_IOCTL_SIZE bytes are initialized.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast(), DM_IOCTL_SIZE) }
    }
}

impl DmTargetSpec {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain data without padding (8+8+4+4+16 = 40 bytes, asserted).
        unsafe { std::slice::from_raw_parts((self as *const Self).cast(), DM_TARGET_SPEC_SIZE) }
    }
}

/// The `crypt` target's parameter string:
/// `<cipher> <key hex> <iv_offset> <device> <offset> [1 sector_size:<n>]`.
pub fn crypt_params(target: &CryptTarget, device: &Path) -> Result<Zeroizing<String>, DmError> {
    let device = device.to_str().ok_or(DmError::Table)?;
    let bad = |s: &str| s.is_empty() || s.bytes().any(|b| b.is_ascii_whitespace() || b == 0);
    if bad(&target.cipher) || bad(device) || target.key.is_empty() {
        return Err(DmError::Table);
    }
    if !matches!(target.sector_size, 512 | 4096) || target.length_sectors == 0 {
        return Err(DmError::Table);
    }
    let mut tail = format!(" {} {} {}", target.iv_offset, device, target.offset_sectors);
    if target.sector_size != 512 {
        tail.push_str(&format!(" 1 sector_size:{}", target.sector_size));
    }
    // Exact capacity: a reallocation would leave a copy of the key in freed memory.
    let len = target.cipher.len() + 1 + target.key.len() * 2 + tail.len();
    let mut params = Zeroizing::new(String::with_capacity(len));
    params.push_str(&target.cipher);
    params.push(' ');
    for b in target.key.iter() {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        params.push(char::from(HEX[usize::from(b >> 4)]));
        params.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    params.push_str(&tail);
    debug_assert_eq!(params.capacity(), len);
    Ok(params)
}

/// The DM_TABLE_LOAD buffer: header, one target spec, the NUL-terminated parameters padded
/// to 8 bytes.
fn table_load_buffer(
    name: &str,
    target: &CryptTarget,
    params: &str,
    read_only: bool,
) -> Result<Zeroizing<Vec<u8>>, DmError> {
    let params_len = (params.len() + 1).next_multiple_of(8);
    let total = DM_IOCTL_SIZE + DM_TARGET_SPEC_SIZE + params_len;
    let flags = DM_SECURE_DATA_FLAG | if read_only { DM_READONLY_FLAG } else { 0 };
    let mut header = DmIoctl::new(name, total, flags)?;
    header.data_start = u32::try_from(DM_IOCTL_SIZE).map_err(|_| DmError::Table)?;
    header.target_count = 1;
    let mut spec = DmTargetSpec {
        sector_start: 0,
        length: target.length_sectors,
        status: 0,
        next: u32::try_from(DM_TARGET_SPEC_SIZE + params_len).map_err(|_| DmError::Table)?,
        target_type: [0; DM_MAX_TYPE_NAME],
    };
    spec.target_type[..5].copy_from_slice(b"crypt");
    let mut buf = Zeroizing::new(Vec::with_capacity(total));
    buf.extend_from_slice(header.as_bytes());
    buf.extend_from_slice(spec.as_bytes());
    buf.extend_from_slice(params.as_bytes());
    buf.resize(total, 0);
    Ok(buf)
}

/// A live crypt mapping.
#[derive(Debug)]
pub struct MappedDevice {
    /// `/dev/mapper/<name>`, a block node we created.
    pub path: PathBuf,
    /// Its device number.
    pub dev: libc::dev_t,
}

/// Creates `/dev/mapper/<name>` over `device` with `target`; the key is wiped from our
/// buffers before this returns.
pub fn create_crypt(
    name: &str,
    device: &Path,
    target: &CryptTarget,
    read_only: bool,
) -> Result<MappedDevice, DmError> {
    let params = crypt_params(target, device)?;
    let load = table_load_buffer(name, target, &params, read_only)?;
    drop(params);
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL_PATH)
        .map_err(DmError::Control)?;

    let mut create = DmIoctl::new(name, DM_IOCTL_SIZE, 0)?;
    ioctl(
        &control,
        DM_DEV_CREATE,
        (&mut create as *mut DmIoctl).cast(),
        "DM_DEV_CREATE",
    )?;
    let dev = create.dev;
    let result = load_and_resume(&control, name, load);
    if let Err(err) = result {
        if let Ok(mut remove) = DmIoctl::new(name, DM_IOCTL_SIZE, 0) {
            let _ = ioctl(
                &control,
                DM_DEV_REMOVE,
                (&mut remove as *mut DmIoctl).cast(),
                "DM_DEV_REMOVE",
            );
        }
        return Err(err);
    }
    let path = Path::new("/dev/mapper").join(name);
    make_block_node(&path, dev).map_err(DmError::Node)?;
    Ok(MappedDevice { path, dev })
}

fn load_and_resume(
    control: &File,
    name: &str,
    mut load: Zeroizing<Vec<u8>>,
) -> Result<(), DmError> {
    let loaded = ioctl(control, DM_TABLE_LOAD, load.as_mut_ptr(), "DM_TABLE_LOAD");
    load.zeroize();
    loaded?;
    let mut resume = DmIoctl::new(name, DM_IOCTL_SIZE, 0)?;
    ioctl(
        control,
        DM_DEV_SUSPEND,
        (&mut resume as *mut DmIoctl).cast(),
        "DM_DEV_SUSPEND",
    )
}

fn ioctl(
    control: &File,
    req: libc::c_ulong,
    buf: *mut u8,
    op: &'static str,
) -> Result<(), DmError> {
    // SAFETY: every caller passes a buffer that starts with a dm_ioctl whose data_size is the
    // buffer's length; the kernel reads and writes at most data_size bytes.
    let ret = unsafe { libc::ioctl(control.as_raw_fd(), req, buf) };
    crate::sys::check(ret)
        .map(|_| ())
        .map_err(|source| DmError::Ioctl { op, source })
}

fn make_block_node(path: &Path, dev: libc::dev_t) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(path);
    let c = crate::sys::c_path(path)?;
    // SAFETY: `c` is a NUL-terminated path alive for the call.
    crate::sys::check(unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, dev) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::c_probe;

    fn target(sector_size: u32) -> CryptTarget {
        CryptTarget {
            cipher: "aes-xts-plain64".into(),
            key: Zeroizing::new((0u8..64).collect()),
            iv_offset: 0,
            offset_sectors: 4040,
            length_sectors: 20480,
            sector_size,
        }
    }

    #[test]
    fn layouts_and_ioctl_numbers_match_linux_dm_ioctl_h() {
        let out = c_probe::run(
            &["sys/ioctl.h", "linux/dm-ioctl.h"],
            r#"printf("ioctl=%zu\ndata_size=%zu\ndata_start=%zu\ntarget_count=%zu\nflags=%zu\ndev=%zu\nname=%zu\nuuid=%zu\ndata=%zu\nspec=%zu\nspec_length=%zu\nspec_next=%zu\nspec_type=%zu\ncreate=%lu\nremove=%lu\nsuspend=%lu\nload=%lu\nsecure=%u\nreadonly=%u\n",
                sizeof(struct dm_ioctl), offsetof(struct dm_ioctl, data_size),
                offsetof(struct dm_ioctl, data_start), offsetof(struct dm_ioctl, target_count),
                offsetof(struct dm_ioctl, flags), offsetof(struct dm_ioctl, dev),
                offsetof(struct dm_ioctl, name), offsetof(struct dm_ioctl, uuid),
                offsetof(struct dm_ioctl, data), sizeof(struct dm_target_spec),
                offsetof(struct dm_target_spec, length), offsetof(struct dm_target_spec, next),
                offsetof(struct dm_target_spec, target_type),
                (unsigned long)DM_DEV_CREATE, (unsigned long)DM_DEV_REMOVE,
                (unsigned long)DM_DEV_SUSPEND, (unsigned long)DM_TABLE_LOAD,
                (unsigned)DM_SECURE_DATA_FLAG, (unsigned)DM_READONLY_FLAG);"#,
        );
        use std::mem::offset_of;
        let ours: [(&str, u64); 19] = [
            ("ioctl", DM_IOCTL_SIZE as u64),
            ("data_size", offset_of!(DmIoctl, data_size) as u64),
            ("data_start", offset_of!(DmIoctl, data_start) as u64),
            ("target_count", offset_of!(DmIoctl, target_count) as u64),
            ("flags", offset_of!(DmIoctl, flags) as u64),
            ("dev", offset_of!(DmIoctl, dev) as u64),
            ("name", offset_of!(DmIoctl, name) as u64),
            ("uuid", offset_of!(DmIoctl, uuid) as u64),
            ("data", offset_of!(DmIoctl, data) as u64),
            ("spec", DM_TARGET_SPEC_SIZE as u64),
            ("spec_length", offset_of!(DmTargetSpec, length) as u64),
            ("spec_next", offset_of!(DmTargetSpec, next) as u64),
            ("spec_type", offset_of!(DmTargetSpec, target_type) as u64),
            ("create", DM_DEV_CREATE),
            ("remove", DM_DEV_REMOVE),
            ("suspend", DM_DEV_SUSPEND),
            ("load", DM_TABLE_LOAD),
            ("secure", u64::from(DM_SECURE_DATA_FLAG)),
            ("readonly", u64::from(DM_READONLY_FLAG)),
        ];
        let theirs = c_probe::values(&out);
        assert_eq!(theirs.len(), ours.len());
        for ((n, v), (cn, cv)) in ours.iter().zip(&theirs) {
            assert_eq!((*n, *v), (cn.as_str(), *cv));
        }
    }

    #[test]
    fn crypt_params_as_cryptsetup_writes_them() {
        let key_hex: String = (0u8..64).map(|b| format!("{b:02x}")).collect();
        let p = crypt_params(&target(512), Path::new("/dev/vda")).unwrap();
        assert_eq!(
            p.as_str(),
            format!("aes-xts-plain64 {key_hex} 0 /dev/vda 4040")
        );
        assert_eq!(
            p.len(),
            p.capacity(),
            "no spare capacity means no reallocation"
        );
        let p = crypt_params(&target(4096), Path::new("/dev/vda")).unwrap();
        assert_eq!(p.len(), p.capacity());
        assert!(
            p.ends_with(" 0 /dev/vda 4040 1 sector_size:4096"),
            "{}",
            p.as_str()
        );
    }

    #[test]
    fn bad_params_are_rejected() {
        let mut t = target(512);
        t.cipher = "aes xts".into();
        assert!(crypt_params(&t, Path::new("/dev/vda")).is_err());
        assert!(crypt_params(&target(1024), Path::new("/dev/vda")).is_err());
        assert!(crypt_params(&target(512), Path::new("/dev/v da")).is_err());
        let mut t = target(512);
        t.key = Zeroizing::new(Vec::new());
        assert!(crypt_params(&t, Path::new("/dev/vda")).is_err());
        assert!(DmIoctl::new(&"x".repeat(128), 312, 0).is_err());
        assert!(DmIoctl::new("a/b", 312, 0).is_err());
        assert!(DmIoctl::new("", 312, 0).is_err());
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn table_load_buffer_layout() {
        let t = target(512);
        let params = crypt_params(&t, Path::new("/dev/vda")).unwrap();
        let buf = table_load_buffer("krunroot", &t, &params, false).unwrap();
        let params_len = (params.len() + 1).next_multiple_of(8);
        assert_eq!(buf.len(), 312 + 40 + params_len);
        assert_eq!(buf.len() % 8, 0);
        assert_eq!(
            [u32_at(&buf, 0), u32_at(&buf, 4), u32_at(&buf, 8)],
            [4, 0, 0]
        );
        assert_eq!(u32_at(&buf, 12) as usize, buf.len()); // data_size
        assert_eq!(u32_at(&buf, 16), 312); // data_start
        assert_eq!(u32_at(&buf, 20), 1); // target_count
        assert_eq!(u32_at(&buf, 28), DM_SECURE_DATA_FLAG);
        assert_eq!(&buf[48..57], b"krunroot\0");
        assert_eq!(u64_at(&buf, 312), 0); // sector_start
        assert_eq!(u64_at(&buf, 320), 20480); // length
        assert_eq!(u32_at(&buf, 332) as usize, 40 + params_len); // next
        assert_eq!(&buf[336..342], b"crypt\0");
        assert_eq!(&buf[352..352 + params.len()], params.as_bytes());
        assert!(buf[352 + params.len()..].iter().all(|&b| b == 0));
        let ro = table_load_buffer("krunroot", &t, &params, true).unwrap();
        assert_eq!(u32_at(&ro, 28), DM_SECURE_DATA_FLAG | DM_READONLY_FLAG);
    }
}
