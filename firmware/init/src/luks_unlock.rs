//! [`DiskUnlocker`] backed by the `krun-luks` crate (LUKS1 and LUKS2, pure Rust).

use std::fs::File;
use std::path::Path;

use krun_luks::{Header, KdfLimits};
use zeroize::Zeroizing;

use crate::unlock::{CryptTarget, DiskUnlocker, UnlockError};

/// Errors from the krun-luks adapter, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum LuksUnlockError {
    /// The device cannot be opened.
    #[error("cannot open the root disk")]
    Open(#[source] std::io::Error),
    /// The LUKS header is missing, corrupt or unsupported.
    #[error("the root disk has no usable LUKS header")]
    Header(#[source] krun_luks::HeaderError),
    /// No keyslot opened.
    #[error("cannot open a LUKS keyslot")]
    Unlock(#[source] krun_luks::UnlockError),
    /// The device size cannot be read.
    #[error("cannot determine the size of the root disk")]
    Size(#[source] std::io::Error),
}

/// Whether `device` starts with the LUKS magic (`LUKS\xba\xbe`, both versions).
pub fn has_luks_magic(device: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 6];
    match File::open(device)?.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"LUKS\xba\xbe"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens LUKS1/LUKS2 headers read-only with the krun-luks crate.
#[derive(Debug, Clone, Default)]
pub struct LuksUnlocker {
    /// Cost limits for the keyslot KDFs; see [`kdf_limits_for_memory`].
    pub limits: KdfLimits,
}

impl LuksUnlocker {
    /// An unlocker whose Argon2 memory ceiling fits the guest's available memory.
    pub fn for_this_guest() -> Self {
        let available = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| mem_available_kib(&m));
        LuksUnlocker {
            limits: kdf_limits_for_memory(available),
        }
    }
}

/// `MemAvailable` from /proc/meminfo, in KiB.
fn mem_available_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The default limits, with Argon2 memory capped at 3/4 of what the guest has free: an
/// Argon2 keyslot that needs more would only get the init killed by the OOM killer.
pub fn kdf_limits_for_memory(available_kib: Option<u64>) -> KdfLimits {
    let mut limits = KdfLimits::default();
    if let Some(kib) = available_kib {
        let cap = u32::try_from(kib / 4 * 3).unwrap_or(u32::MAX);
        limits.max_argon2_memory_kib = limits.max_argon2_memory_kib.min(cap);
    }
    limits
}

impl DiskUnlocker for LuksUnlocker {
    fn unlock(&self, device: &Path, passphrase: &[u8]) -> Result<CryptTarget, UnlockError> {
        // Opened read-only: unlocking never writes the disk.
        let mut dev = File::open(device).map_err(LuksUnlockError::Open)?;
        let header = Header::read(&mut dev).map_err(LuksUnlockError::Header)?;
        let key = header
            .unlock_with_limits(passphrase, &self.limits)
            .map_err(LuksUnlockError::Unlock)?;
        let size = crate::footer::device_size(&dev).map_err(LuksUnlockError::Size)?;
        let t = header
            .dm_crypt_target(&key, size)
            .map_err(LuksUnlockError::Unlock)?;
        Ok(CryptTarget {
            cipher: t.cipher.to_string(),
            key: Zeroizing::new(key.as_bytes().to_vec()),
            iv_offset: t.iv_offset,
            offset_sectors: t.offset_sectors,
            length_sectors: t.length_sectors,
            sector_size: t.sector_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use krun_luks::format::{format_luks1, Luks1Options};
    use std::io::Write;

    /// A buildah-like image: LUKS1 header (payload at 4040 sectors), 64 KiB payload, footer.
    fn image(pass: &[u8]) -> (tempfile::NamedTempFile, krun_luks::MasterKey) {
        let opts = Luks1Options {
            keyslot_iterations: 1000,
            mk_digest_iterations: 1000,
            ..Luks1Options::default()
        };
        let vol = format_luks1(pass, &opts).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vol.header).unwrap();
        f.write_all(&vec![0u8; 64 * 1024]).unwrap();
        let key = krun_luks::MasterKey::from_bytes(vol.key.as_bytes());
        (f, key)
    }

    #[test]
    fn luks_magic_detection() {
        let (img, _) = image(b"p");
        assert!(has_luks_magic(img.path()).unwrap());
        let mut plain = tempfile::NamedTempFile::new().unwrap();
        plain.write_all(&[0u8; 4096]).unwrap();
        assert!(!has_luks_magic(plain.path()).unwrap());
        let short = tempfile::NamedTempFile::new().unwrap();
        assert!(!has_luks_magic(short.path()).unwrap());
        assert!(has_luks_magic(Path::new("/nonexistent/disk")).is_err());
    }

    #[test]
    fn unlocks_to_the_volume_key_and_table() {
        let (img, key) = image(b"correct horse");
        let t = LuksUnlocker::default()
            .unlock(img.path(), b"correct horse")
            .unwrap();
        assert_eq!(t.key.as_slice(), key.as_bytes());
        assert_eq!(t.cipher, "aes-xts-plain64");
        assert_eq!(t.offset_sectors, 4040);
        assert_eq!(t.length_sectors, 64 * 1024 / 512);
        assert_eq!(t.sector_size, 512);
        // Our dm table string equals the one krun-luks documents for DM_TABLE_LOAD.
        let header = Header::read(&mut File::open(img.path()).unwrap()).unwrap();
        let size = std::fs::metadata(img.path()).unwrap().len();
        let theirs = header
            .dm_crypt_target(&key, size)
            .unwrap()
            .table_params("/dev/vda");
        let ours = crate::dm::crypt_params(&t, Path::new("/dev/vda")).unwrap();
        assert_eq!(ours.as_str(), theirs.as_str());
    }

    #[test]
    fn wrong_passphrase_and_non_luks_fail_without_writing() {
        let (img, _) = image(b"right");
        let before = std::fs::read(img.path()).unwrap();
        let err = LuksUnlocker::default()
            .unlock(img.path(), b"wrong")
            .unwrap_err();
        let err = err.downcast_ref::<LuksUnlockError>().unwrap();
        assert!(matches!(err, LuksUnlockError::Unlock(_)));
        let cause = std::error::Error::source(err).unwrap().to_string();
        assert!(cause.contains("passphrase"), "{cause}");
        assert_eq!(std::fs::read(img.path()).unwrap(), before);
        let mut plain = tempfile::NamedTempFile::new().unwrap();
        plain.write_all(&[0u8; 1 << 20]).unwrap();
        let err = LuksUnlocker::default()
            .unlock(plain.path(), b"x")
            .unwrap_err();
        assert!(matches!(
            err.downcast_ref::<LuksUnlockError>(),
            Some(LuksUnlockError::Header(_))
        ));
        let err = LuksUnlocker::default()
            .unlock(Path::new("/nonexistent/vda"), b"x")
            .unwrap_err();
        assert!(matches!(
            err.downcast_ref::<LuksUnlockError>(),
            Some(LuksUnlockError::Open(_))
        ));
    }

    #[test]
    fn argon2_memory_follows_the_guest() {
        let meminfo = "MemTotal:        1000000 kB\nMemFree:          500000 kB\nMemAvailable:     400000 kB\n";
        assert_eq!(mem_available_kib(meminfo), Some(400_000));
        assert_eq!(
            kdf_limits_for_memory(Some(400_000)).max_argon2_memory_kib,
            300_000
        );
        assert_eq!(kdf_limits_for_memory(None), KdfLimits::default());
        let huge = kdf_limits_for_memory(Some(u64::MAX));
        assert_eq!(
            huge.max_argon2_memory_kib,
            KdfLimits::default().max_argon2_memory_kib
        );
    }
}
