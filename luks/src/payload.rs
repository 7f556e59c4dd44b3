//! The encrypted data area: sector IVs, bulk encryption, and the dm-crypt table values.

use zeroize::Zeroizing;

use crate::cipher::{CipherError, CipherSpec, SectorCipher};
use crate::key::MasterKey;

/// dm-crypt counts IVs and offsets in 512-byte sectors.
pub const DM_SECTOR: u64 = 512;

/// Errors from payload crypto and dm-crypt parameter building.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The cipher could not be keyed.
    #[error("cannot key the payload cipher")]
    Cipher(#[source] CipherError),
    /// Data was not a whole number of sectors.
    #[error("data length {len} is not a multiple of the {sector_size}-byte sector size")]
    Unaligned {
        /// Length given.
        len: usize,
        /// Sector size.
        sector_size: u32,
    },
    /// The device is smaller than the payload needs.
    #[error("device of {device_size} bytes ends before the encrypted payload")]
    DeviceTooSmall {
        /// Device size in bytes.
        device_size: u64,
    },
    /// Sector arithmetic overflowed.
    #[error("sector number overflows")]
    Overflow,
}

/// Where and how the payload is encrypted, from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Cipher and key size.
    pub cipher: CipherSpec,
    /// Byte offset of the first payload sector on the device.
    pub offset: u64,
    /// Payload length in bytes, or `None` for "to the end of the device".
    pub size: Option<u64>,
    /// Encryption sector size: 512, 1024, 2048 or 4096.
    pub sector_size: u32,
    /// IV of the first payload sector, in 512-byte units (LUKS2 `iv_tweak`; 0 for LUKS1).
    pub iv_tweak: u64,
}

/// The values for one dm-crypt target line:
/// `<start> <length> crypt <cipher> <key> <iv_offset> <device> <offset> [<#opt> <opt>...]`.
#[derive(PartialEq, Eq)]
pub struct DmCryptTarget {
    /// Cipher specification (`aes-xts-plain64`).
    pub cipher: &'static str,
    key_hex: Zeroizing<String>,
    /// IV offset in 512-byte sectors.
    pub iv_offset: u64,
    /// Data offset on the backing device, in 512-byte sectors.
    pub offset_sectors: u64,
    /// Target length in 512-byte sectors (a multiple of `sector_size / 512`).
    pub length_sectors: u64,
    /// Encryption sector size in bytes.
    pub sector_size: u32,
}

impl std::fmt::Debug for DmCryptTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmCryptTarget")
            .field("cipher", &self.cipher)
            .field("key_hex", &"[redacted]")
            .field("iv_offset", &self.iv_offset)
            .field("offset_sectors", &self.offset_sectors)
            .field("length_sectors", &self.length_sectors)
            .field("sector_size", &self.sector_size)
            .finish()
    }
}

impl DmCryptTarget {
    /// The key in lowercase hex. Zeroize every copy made from it.
    pub fn key_hex(&self) -> &str {
        &self.key_hex
    }

    /// Optional target arguments: `["sector_size:4096"]` for non-512 sectors, else empty.
    pub fn optional_params(&self) -> Vec<String> {
        if self.sector_size == 512 {
            Vec::new()
        } else {
            vec![format!("sector_size:{}", self.sector_size)]
        }
    }

    /// The target parameter string for `DM_TABLE_LOAD` (everything after `crypt`), with
    /// `device` as the backing device (a path or `major:minor`). Contains the key.
    pub fn table_params(&self, device: &str) -> Zeroizing<String> {
        use std::fmt::Write as _;
        let opts = self.optional_params();
        // Reserve everything up front: a reallocation would leave a copy of the key behind.
        let cap = self.cipher.len() + self.key_hex.len() + device.len() + 64 + opts.join(" ").len();
        let mut s = Zeroizing::new(String::with_capacity(cap));
        let _ = write!(
            s,
            "{} {} {} {} {}",
            self.cipher,
            self.key_hex.as_str(),
            self.iv_offset,
            device,
            self.offset_sectors
        );
        if !opts.is_empty() {
            let _ = write!(s, " {} {}", opts.len(), opts.join(" "));
        }
        s
    }
}

impl Payload {
    /// 512-byte units per encryption sector.
    fn iv_step(&self) -> u64 {
        u64::from(self.sector_size) / DM_SECTOR
    }

    /// The dm-crypt IV for payload sector `index` (counted in `sector_size` units from the
    /// payload start). cryptsetup does not set `iv_large_sectors` for LUKS2, so dm-crypt
    /// counts the IV in 512-byte units even for 4096-byte sectors.
    pub fn iv_for_sector(&self, index: u64) -> Option<u64> {
        index
            .checked_mul(self.iv_step())?
            .checked_add(self.iv_tweak)
    }

    /// Keys a cipher for bulk payload work.
    pub fn cipher(&self, key: &MasterKey) -> Result<PayloadCipher, PayloadError> {
        Ok(PayloadCipher {
            cipher: SectorCipher::new(self.cipher, key.as_bytes()).map_err(PayloadError::Cipher)?,
            payload: *self,
        })
    }

    /// The dm-crypt target for a backing device of `device_size` bytes.
    pub fn dm_crypt_target(
        &self,
        key: &MasterKey,
        device_size: u64,
    ) -> Result<DmCryptTarget, PayloadError> {
        if key.len() != self.cipher.key_len() {
            return Err(PayloadError::Cipher(CipherError::KeySize {
                cipher: self.cipher.dm_name(),
                bytes: key.len(),
            }));
        }
        let too_small = PayloadError::DeviceTooSmall { device_size };
        let avail = device_size.checked_sub(self.offset).ok_or(too_small)?;
        let bytes = match self.size {
            Some(s) if s > avail => {
                return Err(PayloadError::DeviceTooSmall { device_size });
            }
            Some(s) => s,
            None => avail,
        };
        let ss = u64::from(self.sector_size);
        let bytes = bytes - bytes % ss;
        if bytes == 0 {
            return Err(PayloadError::DeviceTooSmall { device_size });
        }
        Ok(DmCryptTarget {
            cipher: self.cipher.dm_name(),
            key_hex: key.to_hex(),
            iv_offset: self.iv_tweak,
            offset_sectors: self.offset / DM_SECTOR,
            length_sectors: bytes / DM_SECTOR,
            sector_size: self.sector_size,
        })
    }
}

/// A keyed payload cipher.
#[derive(Debug)]
pub struct PayloadCipher {
    cipher: SectorCipher,
    payload: Payload,
}

impl PayloadCipher {
    fn run(
        &self,
        first_sector: u64,
        data: &mut [u8],
        f: impl Fn(&SectorCipher, u64, &mut [u8]) -> Result<(), CipherError>,
    ) -> Result<(), PayloadError> {
        let ss = self.payload.sector_size;
        let ss_len = usize::try_from(ss).map_err(|_| PayloadError::Overflow)?;
        if data.len() % ss_len != 0 {
            return Err(PayloadError::Unaligned {
                len: data.len(),
                sector_size: ss,
            });
        }
        for (i, sector) in data.chunks_exact_mut(ss_len).enumerate() {
            let idx = u64::try_from(i)
                .ok()
                .and_then(|i| first_sector.checked_add(i))
                .ok_or(PayloadError::Overflow)?;
            let iv = self
                .payload
                .iv_for_sector(idx)
                .ok_or(PayloadError::Overflow)?;
            f(&self.cipher, iv, sector).map_err(PayloadError::Cipher)?;
        }
        Ok(())
    }

    /// Encrypts whole sectors in place; `first_sector` is the payload-relative index of
    /// `data[0]` in `sector_size` units.
    pub fn encrypt(&self, first_sector: u64, data: &mut [u8]) -> Result<(), PayloadError> {
        self.run(first_sector, data, SectorCipher::encrypt_sector)
    }

    /// Decrypts whole sectors in place (see [`PayloadCipher::encrypt`]).
    pub fn decrypt(&self, first_sector: u64, data: &mut [u8]) -> Result<(), PayloadError> {
        self.run(first_sector, data, SectorCipher::decrypt_sector)
    }

    /// The payload description this cipher was keyed for.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::CipherMode;

    fn payload(sector_size: u32, iv_tweak: u64) -> Payload {
        Payload {
            cipher: CipherSpec::new(CipherMode::XtsPlain64, 64).unwrap(),
            offset: 16 << 20,
            size: None,
            sector_size,
            iv_tweak,
        }
    }

    #[test]
    fn iv_counts_512_byte_units_for_large_sectors() {
        assert_eq!(payload(512, 0).iv_for_sector(3), Some(3));
        assert_eq!(payload(4096, 0).iv_for_sector(3), Some(24));
        assert_eq!(payload(4096, 5).iv_for_sector(1), Some(13));
        assert_eq!(payload(4096, 0).iv_for_sector(u64::MAX), None);
    }

    #[test]
    fn sectors_of_a_chunk_equal_sectors_done_one_by_one() {
        let p = payload(4096, 0);
        let key = MasterKey::from_bytes(&[3u8; 64]);
        let c = p.cipher(&key).unwrap();
        let mut all = vec![0x11u8; 3 * 4096];
        c.encrypt(7, &mut all).unwrap();
        let mut one = vec![0x11u8; 4096];
        c.encrypt(9, &mut one).unwrap();
        assert_eq!(&all[2 * 4096..], &one[..]);
        assert!(c.encrypt(0, &mut [0u8; 512]).is_err());
        c.decrypt(7, &mut all).unwrap();
        assert!(all.iter().all(|&b| b == 0x11));
    }

    #[test]
    fn dm_target_values_and_table_string() {
        let key = MasterKey::from_bytes(&[0xa5; 64]);
        let p = payload(4096, 0);
        let t = p
            .dm_crypt_target(&key, (16 << 20) + 3 * 4096 + 100)
            .unwrap();
        assert_eq!(t.offset_sectors, 32768);
        assert_eq!(t.length_sectors, 24);
        let s = t.table_params("/dev/vda");
        assert_eq!(
            s.as_str(),
            format!(
                "aes-xts-plain64 {} 0 /dev/vda 32768 1 sector_size:4096",
                "a5".repeat(64)
            )
        );
        assert!(!format!("{t:?}").contains("a5a5"));
        assert!(p.dm_crypt_target(&key, 1 << 20).is_err());
        assert!(p
            .dm_crypt_target(&MasterKey::from_bytes(&[0; 32]), 32 << 20)
            .is_err());
        let luks1 = Payload {
            sector_size: 512,
            offset: 4040 * 512,
            ..p
        };
        let t = luks1.dm_crypt_target(&key, 4040 * 512 + 10 * 512).unwrap();
        assert_eq!((t.offset_sectors, t.length_sectors), (4040, 10));
        assert!(t.optional_params().is_empty());
    }
}
