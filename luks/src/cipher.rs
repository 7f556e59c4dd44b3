//! Sector encryption as dm-crypt does it: aes-xts-plain64 and aes-cbc-essiv:sha256.
//!
//! The IV value passed in is what dm-crypt computes for the sector (see [`crate::payload`]):
//! plain64 puts it little-endian into the first 8 bytes of the tweak; ESSIV encrypts that
//! block with AES-256 keyed by SHA-256 of the data key.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256, Block};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Errors from cipher selection and sector processing.
#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    /// The header names a cipher or mode this crate does not implement.
    #[error("unsupported cipher {name:?}")]
    Unsupported {
        /// The cipher as named in the header (`name-mode`).
        name: String,
    },
    /// The key size does not fit the cipher.
    #[error("key size {bytes} bytes is not valid for {cipher}")]
    KeySize {
        /// The dm-crypt cipher name.
        cipher: &'static str,
        /// The key size in bytes.
        bytes: usize,
    },
    /// A buffer was empty or not a multiple of the AES block size.
    #[error("sector buffer length is not a non-zero multiple of 16 bytes")]
    Length,
}

/// A block cipher mode with its IV generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherMode {
    /// AES in XTS mode, 64-bit little-endian sector number as tweak.
    XtsPlain64,
    /// AES in CBC mode with ESSIV (IV = AES-256_{SHA-256(key)}(sector number)).
    CbcEssivSha256,
}

/// A cipher with its key size, as stored in a LUKS header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSpec {
    mode: CipherMode,
    key_len: usize,
}

impl CipherSpec {
    pub(crate) const fn const_new(mode: CipherMode, key_len: usize) -> Self {
        Self { mode, key_len }
    }

    /// Checks that `key_len` fits `mode`: 32 or 64 bytes for XTS (AES-128/256), 16/24/32 for CBC.
    pub fn new(mode: CipherMode, key_len: usize) -> Result<Self, CipherError> {
        let ok = match mode {
            CipherMode::XtsPlain64 => matches!(key_len, 32 | 64),
            CipherMode::CbcEssivSha256 => matches!(key_len, 16 | 24 | 32),
        };
        let spec = Self { mode, key_len };
        if ok {
            Ok(spec)
        } else {
            Err(CipherError::KeySize {
                cipher: spec.dm_name(),
                bytes: key_len,
            })
        }
    }

    /// From LUKS1 `cipher_name` and `cipher_mode` (for example `aes` and `xts-plain64`).
    pub fn from_luks1(name: &str, mode: &str, key_len: usize) -> Result<Self, CipherError> {
        Self::from_dm_name(&format!("{name}-{mode}"), key_len)
    }

    /// From a dm-crypt style name as LUKS2 stores it (for example `aes-xts-plain64`).
    pub fn from_dm_name(spec: &str, key_len: usize) -> Result<Self, CipherError> {
        let mode = match spec {
            "aes-xts-plain64" => CipherMode::XtsPlain64,
            "aes-cbc-essiv:sha256" => CipherMode::CbcEssivSha256,
            _ => {
                return Err(CipherError::Unsupported {
                    name: spec.to_owned(),
                })
            }
        };
        Self::new(mode, key_len)
    }

    /// The mode.
    pub fn mode(&self) -> CipherMode {
        self.mode
    }

    /// Key length in bytes.
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// The dm-crypt cipher specification (`aes-xts-plain64`, `aes-cbc-essiv:sha256`).
    pub fn dm_name(&self) -> &'static str {
        match self.mode {
            CipherMode::XtsPlain64 => "aes-xts-plain64",
            CipherMode::CbcEssivSha256 => "aes-cbc-essiv:sha256",
        }
    }

    /// The LUKS1 `cipher_name` and `cipher_mode` fields.
    pub fn luks1_names(&self) -> (&'static str, &'static str) {
        match self.mode {
            CipherMode::XtsPlain64 => ("aes", "xts-plain64"),
            CipherMode::CbcEssivSha256 => ("aes", "cbc-essiv:sha256"),
        }
    }
}

enum Aes {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl Aes {
    fn new(key: &[u8]) -> Option<Self> {
        Some(match key.len() {
            16 => Self::A128(Aes128::new_from_slice(key).ok()?),
            24 => Self::A192(Aes192::new_from_slice(key).ok()?),
            32 => Self::A256(Aes256::new_from_slice(key).ok()?),
            _ => return None,
        })
    }

    fn encrypt_blocks(&self, b: &mut [Block]) {
        match self {
            Self::A128(c) => c.encrypt_blocks(b),
            Self::A192(c) => c.encrypt_blocks(b),
            Self::A256(c) => c.encrypt_blocks(b),
        }
    }

    fn decrypt_blocks(&self, b: &mut [Block]) {
        match self {
            Self::A128(c) => c.decrypt_blocks(b),
            Self::A192(c) => c.decrypt_blocks(b),
            Self::A256(c) => c.decrypt_blocks(b),
        }
    }
}

enum Kind {
    Xts { data: Aes, tweak: Aes },
    CbcEssiv { data: Aes, essiv: Aes256 },
}

/// A keyed sector cipher. The AES key schedules are zeroized on drop.
pub struct SectorCipher {
    kind: Kind,
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SectorCipher { .. }")
    }
}

/// Blocks processed per batch (one 512-byte sector); lets AES-NI pipeline.
const BATCH: usize = 32;

fn load(c: &[u8]) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(c);
    u128::from_le_bytes(a)
}

impl SectorCipher {
    /// Keys the cipher. `key.len()` must equal `spec.key_len()`.
    pub fn new(spec: CipherSpec, key: &[u8]) -> Result<Self, CipherError> {
        let bad = || CipherError::KeySize {
            cipher: spec.dm_name(),
            bytes: key.len(),
        };
        if key.len() != spec.key_len {
            return Err(bad());
        }
        let kind = match spec.mode {
            CipherMode::XtsPlain64 => {
                let (k1, k2) = key.split_at(key.len() / 2);
                Kind::Xts {
                    data: Aes::new(k1).ok_or_else(bad)?,
                    tweak: Aes::new(k2).ok_or_else(bad)?,
                }
            }
            CipherMode::CbcEssivSha256 => {
                let mut salt = Zeroizing::new([0u8; 32]);
                Sha256::new().chain_update(key).finalize_into(
                    aes::cipher::generic_array::GenericArray::from_mut_slice(&mut salt[..]),
                );
                Kind::CbcEssiv {
                    data: Aes::new(key).ok_or_else(bad)?,
                    essiv: Aes256::new_from_slice(&salt[..]).map_err(|_| bad())?,
                }
            }
        };
        Ok(Self { kind })
    }

    /// Encrypts one sector in place with IV value `iv`.
    pub fn encrypt_sector(&self, iv: u64, buf: &mut [u8]) -> Result<(), CipherError> {
        check_len(buf)?;
        match &self.kind {
            Kind::Xts { data, tweak } => xts(data, tweak, iv, buf, true),
            Kind::CbcEssiv { data, essiv } => cbc_encrypt(data, essiv, iv, buf),
        }
        Ok(())
    }

    /// Decrypts one sector in place with IV value `iv`.
    pub fn decrypt_sector(&self, iv: u64, buf: &mut [u8]) -> Result<(), CipherError> {
        check_len(buf)?;
        match &self.kind {
            Kind::Xts { data, tweak } => xts(data, tweak, iv, buf, false),
            Kind::CbcEssiv { data, essiv } => cbc_decrypt(data, essiv, iv, buf),
        }
        Ok(())
    }
}

fn check_len(buf: &[u8]) -> Result<(), CipherError> {
    if buf.is_empty() || buf.len() % 16 != 0 {
        return Err(CipherError::Length);
    }
    Ok(())
}

fn iv_block(iv: u64) -> Block {
    let mut b = Block::default();
    b[..8].copy_from_slice(&iv.to_le_bytes());
    b
}

/// Multiplies an XTS tweak by the primitive element (x) of GF(2^128), IEEE 1619 §5.2.
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

fn xts(data: &Aes, tweak: &Aes, iv: u64, buf: &mut [u8], encrypt: bool) {
    let mut t = iv_block(iv);
    tweak.encrypt_blocks(std::slice::from_mut(&mut t));
    let mut tw = load(&t);
    let mut blocks = [Block::default(); BATCH];
    let mut tweaks = [0u128; BATCH];
    for chunk in buf.chunks_mut(BATCH * 16) {
        let n = chunk.len() / 16;
        for ((b, c), tws) in blocks
            .iter_mut()
            .zip(chunk.chunks_exact(16))
            .zip(&mut tweaks)
        {
            *tws = tw;
            b.copy_from_slice(&(load(c) ^ tw).to_le_bytes());
            tw = mul_alpha(tw);
        }
        if encrypt {
            data.encrypt_blocks(&mut blocks[..n]);
        } else {
            data.decrypt_blocks(&mut blocks[..n]);
        }
        for ((b, c), tws) in blocks.iter().zip(chunk.chunks_exact_mut(16)).zip(&tweaks) {
            c.copy_from_slice(&(load(b) ^ tws).to_le_bytes());
        }
    }
    for b in &mut blocks {
        b.as_mut_slice().zeroize();
    }
    tweaks.zeroize();
    tw.zeroize();
}

fn essiv_iv(essiv: &Aes256, iv: u64) -> u128 {
    let mut b = iv_block(iv);
    essiv.encrypt_block(&mut b);
    load(&b)
}

fn cbc_encrypt(data: &Aes, essiv: &Aes256, iv: u64, buf: &mut [u8]) {
    let mut prev = essiv_iv(essiv, iv);
    let mut b = Block::default();
    for c in buf.chunks_exact_mut(16) {
        b.copy_from_slice(&(load(c) ^ prev).to_le_bytes());
        data.encrypt_blocks(std::slice::from_mut(&mut b));
        c.copy_from_slice(&b);
        prev = load(&b);
    }
    b.as_mut_slice().zeroize();
}

fn cbc_decrypt(data: &Aes, essiv: &Aes256, iv: u64, buf: &mut [u8]) {
    let mut prev = essiv_iv(essiv, iv);
    let mut blocks = [Block::default(); BATCH];
    for chunk in buf.chunks_mut(BATCH * 16) {
        let n = chunk.len() / 16;
        for (b, c) in blocks.iter_mut().zip(chunk.chunks_exact(16)) {
            b.copy_from_slice(c);
        }
        data.decrypt_blocks(&mut blocks[..n]);
        for (b, c) in blocks.iter().zip(chunk.chunks_exact_mut(16)) {
            let ct = load(c);
            c.copy_from_slice(&(load(b) ^ prev).to_le_bytes());
            prev = ct;
        }
    }
    for b in &mut blocks {
        b.as_mut_slice().zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn ieee1619_vector_1_all_zero() {
        let c = SectorCipher::new(
            CipherSpec::new(CipherMode::XtsPlain64, 32).unwrap(),
            &[0; 32],
        )
        .unwrap();
        let mut buf = [0u8; 32];
        c.encrypt_sector(0, &mut buf).unwrap();
        assert_eq!(
            buf.to_vec(),
            unhex("917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e")
        );
        c.decrypt_sector(0, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 32]);
    }

    #[test]
    fn ieee1619_vector_2() {
        let key = [[0x11u8; 16], [0x22u8; 16]].concat();
        let c =
            SectorCipher::new(CipherSpec::new(CipherMode::XtsPlain64, 32).unwrap(), &key).unwrap();
        let mut buf = [0x44u8; 32];
        c.encrypt_sector(0x3333333333, &mut buf).unwrap();
        assert_eq!(
            buf.to_vec(),
            unhex("c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0")
        );
    }

    #[test]
    fn round_trip_every_mode_and_key_size_over_multi_batch_buffers() {
        for (mode, len) in [
            (CipherMode::XtsPlain64, 32),
            (CipherMode::XtsPlain64, 64),
            (CipherMode::CbcEssivSha256, 16),
            (CipherMode::CbcEssivSha256, 24),
            (CipherMode::CbcEssivSha256, 32),
        ] {
            let key: Vec<u8> = (0u8..).take(len).map(|i| i ^ 0x5a).collect();
            let c = SectorCipher::new(CipherSpec::new(mode, len).unwrap(), &key).unwrap();
            let plain: Vec<u8> = (0..4096u32)
                .map(|i| (i * 7 % 251).to_le_bytes()[0])
                .collect();
            let mut buf = plain.clone();
            c.encrypt_sector(9, &mut buf).unwrap();
            assert_ne!(buf, plain);
            let mut other = plain.clone();
            c.encrypt_sector(10, &mut other).unwrap();
            assert_ne!(buf, other, "IV must change the ciphertext");
            c.decrypt_sector(9, &mut buf).unwrap();
            assert_eq!(buf, plain);
        }
    }

    #[test]
    fn bad_names_sizes_and_lengths_are_errors() {
        let e = CipherSpec::from_luks1("serpent", "xts-plain64", 64).unwrap_err();
        assert!(e.to_string().contains("serpent-xts-plain64"), "{e}");
        assert!(CipherSpec::from_dm_name("aes-xts-plain64", 48).is_err());
        assert!(CipherSpec::from_dm_name("aes-cbc-essiv:sha256", 64).is_err());
        let spec = CipherSpec::from_luks1("aes", "cbc-essiv:sha256", 32).unwrap();
        assert_eq!(spec.dm_name(), "aes-cbc-essiv:sha256");
        assert!(SectorCipher::new(spec, &[0; 16]).is_err());
        let c = SectorCipher::new(spec, &[0; 32]).unwrap();
        assert!(c.encrypt_sector(0, &mut [0u8; 15]).is_err());
        assert!(c.decrypt_sector(0, &mut []).is_err());
    }
}
