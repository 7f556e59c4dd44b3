//! The boundary between the init and the LUKS implementation.
//!
//! A [`DiskUnlocker`] reads the LUKS header of the raw disk (never writing it), opens a
//! keyslot with the passphrase and returns what dm-crypt needs: the cipher specification, the
//! master key and where the payload lies. The implementation lives in the `krun-luks` crate;
//! [`crate::dm`] turns a [`CryptTarget`] into the device-mapper table.

use std::path::Path;

use zeroize::Zeroizing;

/// Error type returned by unlockers.
pub type UnlockError = Box<dyn std::error::Error + Send + Sync>;

/// Everything dm-crypt needs to map the payload, as the `crypt` target's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptTarget {
    /// Kernel cipher specification, e.g. `aes-xts-plain64` or `aes-cbc-essiv:sha256`.
    pub cipher: String,
    /// The volume (master) key; zeroized on drop.
    pub key: Zeroizing<Vec<u8>>,
    /// IV offset in 512-byte sectors (0 for LUKS).
    pub iv_offset: u64,
    /// Payload start on the device, in 512-byte sectors.
    pub offset_sectors: u64,
    /// Payload length in 512-byte sectors.
    pub length_sectors: u64,
    /// Encryption sector size: 512 or 4096.
    pub sector_size: u32,
}

/// A LUKS implementation.
pub trait DiskUnlocker {
    /// Opens `device` with `passphrase`; a wrong passphrase, a corrupt header or an
    /// unsupported cipher is an error. Must not write to the device.
    fn unlock(&self, device: &Path, passphrase: &[u8]) -> Result<CryptTarget, UnlockError>;
}
