//! LUKS header reading and validation (LUKS1 and LUKS2) into one model.
//!
//! Everything in a header is untrusted: every offset and size is checked against the header
//! layout and the device size before anything is read or allocated, and keyslot material is
//! read once here so that [`Header::unlock`](crate::Header::unlock) does no I/O.

mod luks1;
mod luks2;
mod luks2_json;

use std::io::{Read, Seek, SeekFrom};

pub(crate) use luks1::{Luks1Fields, Luks1Slot, LUKS1_HEADER_LEN, LUKS1_STRIPES};
pub(crate) use luks2::{write_luks2_headers, HDR_SIZES, LUKS2_BINARY_LEN};

use crate::cipher::{CipherError, CipherSpec};
use crate::hash::{HashAlg, HashError};
use crate::kdf::Kdf;
use crate::payload::Payload;

/// The primary header magic of LUKS1 and LUKS2.
pub const LUKS_MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// The LUKS2 secondary header magic.
pub const LUKS2_SECONDARY_MAGIC: [u8; 6] = *b"SKUL\xba\xbe";
/// Largest anti-forensic material read per keyslot (64-byte key x 16384 stripes).
pub const MAX_AF_BYTES: usize = 1 << 20;

/// Errors from reading and validating a header.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The device could not be read.
    #[error("cannot read the LUKS device")]
    Io(#[source] std::io::Error),
    /// No LUKS magic at the start of the device (nor a LUKS2 secondary header).
    #[error("no LUKS header found")]
    NotLuks,
    /// The magic is there but the version is not 1 or 2.
    #[error("unsupported LUKS version {version}")]
    UnsupportedVersion {
        /// The version field.
        version: u16,
    },
    /// A field is out of range or inconsistent.
    #[error("corrupt LUKS header: {reason}")]
    Corrupt {
        /// What is wrong.
        reason: String,
    },
    /// The header uses a cipher this crate does not implement.
    #[error("LUKS header uses an unsupported cipher")]
    Cipher(#[source] CipherError),
    /// The header uses a hash this crate does not implement.
    #[error("LUKS header uses an unsupported hash")]
    Hash(#[source] HashError),
    /// The header uses a key derivation function this crate does not implement.
    #[error("unsupported key derivation function {name:?}")]
    UnsupportedKdf {
        /// The `kdf.type` value.
        name: String,
    },
    /// A LUKS2 feature this crate does not implement.
    #[error("unsupported LUKS2 feature: {feature}")]
    Unsupported {
        /// What it is.
        feature: String,
    },
}

pub(crate) fn corrupt(reason: impl Into<String>) -> HeaderError {
    HeaderError::Corrupt {
        reason: reason.into(),
    }
}

/// LUKS on-disk format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LuksVersion {
    /// LUKS1 (buildah/luksy, older cryptsetup).
    Luks1,
    /// LUKS2.
    Luks2,
}

/// A master-key digest: PBKDF2(hash, key, salt, iterations) must equal `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digest {
    pub hash: HashAlg,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub value: Vec<u8>,
}

/// One active keyslot, with its encrypted material already read.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Keyslot {
    pub id: u32,
    /// 0 = ignore, 1 = normal, 2 = high (LUKS2 `priority`; LUKS1 slots are 1).
    pub priority: u8,
    pub kdf: Kdf,
    pub salt: Vec<u8>,
    pub area_cipher: CipherSpec,
    pub key_len: usize,
    pub stripes: u32,
    pub af_hash: HashAlg,
    /// Index into `Header::digests`.
    pub digest: usize,
    pub material: Vec<u8>,
}

impl std::fmt::Debug for Keyslot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyslot")
            .field("id", &self.id)
            .field("priority", &self.priority)
            .field("kdf", &self.kdf)
            .field("area_cipher", &self.area_cipher)
            .field("key_len", &self.key_len)
            .field("stripes", &self.stripes)
            .field("af_hash", &self.af_hash)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// A validated LUKS1 or LUKS2 header with the material of its active keyslots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub(crate) version: LuksVersion,
    pub(crate) uuid: String,
    pub(crate) keyslots: Vec<Keyslot>,
    pub(crate) digests: Vec<Digest>,
    /// Index into `digests` of the digest that guards the data segment's key.
    pub(crate) payload_digest: usize,
    pub(crate) payload: Payload,
}

impl Header {
    /// Reads and validates the header at the start of `dev` (a device or image file), plus
    /// the material of every active keyslot. The device is only read, never written.
    pub fn read<R: Read + Seek>(dev: &mut R) -> Result<Self, HeaderError> {
        let dev_size = dev.seek(SeekFrom::End(0)).map_err(HeaderError::Io)?;
        let mut first = [0u8; LUKS1_HEADER_LEN];
        if dev_size >= first.len() as u64 {
            read_exact_at(dev, dev_size, 0, &mut first)?;
        }
        if first[..6] == LUKS_MAGIC {
            let version = u16::from_be_bytes([first[6], first[7]]);
            match version {
                1 => luks1::parse(dev, dev_size, &first),
                2 => luks2::read(dev, dev_size),
                _ => Err(HeaderError::UnsupportedVersion { version }),
            }
        } else {
            // A damaged LUKS2 primary header can be recovered from the secondary copy.
            luks2::read(dev, dev_size)
        }
    }

    /// LUKS1 or LUKS2.
    pub fn version(&self) -> LuksVersion {
        self.version
    }

    /// The UUID string from the header.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Where and how the data is encrypted.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Ids of the active keyslots, in the order unlock tries them.
    pub fn keyslot_ids(&self) -> Vec<u32> {
        self.keyslots.iter().map(|k| k.id).collect()
    }
}

/// Reads exactly `buf.len()` bytes at `offset`, refusing ranges past `dev_size`.
pub(crate) fn read_exact_at<R: Read + Seek>(
    dev: &mut R,
    dev_size: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), HeaderError> {
    let end = u64::try_from(buf.len())
        .ok()
        .and_then(|l| offset.checked_add(l))
        .ok_or_else(|| corrupt("read range overflows"))?;
    if end > dev_size {
        return Err(corrupt(format!(
            "area at byte {offset} ends past the end of the device ({dev_size} bytes)"
        )));
    }
    dev.seek(SeekFrom::Start(offset)).map_err(HeaderError::Io)?;
    dev.read_exact(buf).map_err(HeaderError::Io)
}

/// Reads the AF material of a keyslot: `key_len * stripes` bytes at `offset`.
pub(crate) fn read_material<R: Read + Seek>(
    dev: &mut R,
    dev_size: u64,
    offset: u64,
    key_len: usize,
    stripes: u32,
) -> Result<Vec<u8>, HeaderError> {
    let len = crate::af::split_len(key_len, stripes)
        .filter(|&l| l <= MAX_AF_BYTES)
        .ok_or_else(|| corrupt("keyslot key size x stripes is too large"))?;
    // Keyslot areas are encrypted in whole 512-byte sectors.
    let padded = len.div_ceil(512) * 512;
    let mut buf = vec![0u8; padded];
    read_exact_at(dev, dev_size, offset, &mut buf)?;
    Ok(buf)
}

/// Text of a NUL-padded fixed-size header field.
pub(crate) fn c_string(field: &[u8], what: &str) -> Result<String, HeaderError> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let s = std::str::from_utf8(&field[..end])
        .map_err(|_| corrupt(format!("{what} is not valid text")))?;
    if s.chars().any(|c| c.is_control()) {
        return Err(corrupt(format!("{what} contains control characters")));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn empty_short_and_foreign_devices_are_not_luks() {
        for data in [
            vec![],
            vec![0u8; 100],
            vec![0u8; 1 << 20],
            b"hello".repeat(1000),
        ] {
            assert!(matches!(
                Header::read(&mut Cursor::new(data)),
                Err(HeaderError::NotLuks)
            ));
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut d = vec![0u8; 8192];
        d[..6].copy_from_slice(&LUKS_MAGIC);
        d[7] = 3;
        let e = Header::read(&mut Cursor::new(d)).unwrap_err();
        assert!(
            matches!(e, HeaderError::UnsupportedVersion { version: 3 }),
            "{e}"
        );
    }

    #[test]
    fn c_string_rejects_control_characters_and_bad_utf8() {
        assert_eq!(c_string(b"aes\0\0", "x").unwrap(), "aes");
        assert_eq!(c_string(b"full", "x").unwrap(), "full");
        assert!(c_string(b"a\nb\0", "x").is_err());
        assert!(c_string(b"\xff\0", "x").is_err());
    }
}
