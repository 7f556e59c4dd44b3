//! Keyslot unlock: KDF, keyslot area decryption, AF merge, digest check.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::af::{self, AfError};
use crate::cipher::{CipherError, SectorCipher};
use crate::header::{Digest, Header, Keyslot};
use crate::kdf::{KdfError, KdfLimits};
use crate::key::MasterKey;
use crate::payload::PayloadError;

/// Errors from unlocking.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    /// Every keyslot was tried and none accepted the passphrase.
    #[error("no keyslot matches the passphrase")]
    WrongPassphrase,
    /// The header has no keyslot to try.
    #[error("the LUKS header has no active keyslot")]
    NoKeyslot,
    /// The requested keyslot does not exist or is not active.
    #[error("keyslot {id} is not active")]
    NoSuchKeyslot {
        /// The id asked for.
        id: u32,
    },
    /// No keyslot matched, and at least one could not be tried because its cost is above the
    /// limits (the passphrase may belong to it).
    #[error("no keyslot matches the passphrase; keyslot {id} was not tried")]
    KeyslotNotTried {
        /// The first keyslot that was skipped.
        id: u32,
        /// Why.
        #[source]
        source: KdfError,
    },
    /// Key derivation failed for a keyslot.
    #[error("key derivation failed for keyslot {id}")]
    Kdf {
        /// The keyslot.
        id: u32,
        /// Why.
        #[source]
        source: KdfError,
    },
    /// The keyslot area could not be decrypted.
    #[error("cannot decrypt keyslot {id}")]
    Cipher {
        /// The keyslot.
        id: u32,
        /// Why.
        #[source]
        source: CipherError,
    },
    /// The anti-forensic merge failed.
    #[error("cannot merge the key of keyslot {id}")]
    Af {
        /// The keyslot.
        id: u32,
        /// Why.
        #[source]
        source: AfError,
    },
    /// The key does not fit the payload cipher.
    #[error("volume key does not fit the payload cipher")]
    Payload(#[source] PayloadError),
}

fn digest_matches(d: &Digest, key: &[u8], limits: &KdfLimits) -> Result<bool, KdfError> {
    let kdf = crate::kdf::Kdf::Pbkdf2 {
        hash: d.hash,
        iterations: d.iterations,
    };
    let mut out = Zeroizing::new(vec![0u8; d.value.len()]);
    kdf.derive(key, &d.salt, &mut out, limits)?;
    Ok(bool::from(out.ct_eq(&d.value)))
}

impl Header {
    /// Tries every active keyslot (LUKS2: high priority first) with `passphrase` under the
    /// default [`KdfLimits`] and returns the verified volume key.
    pub fn unlock(&self, passphrase: &[u8]) -> Result<MasterKey, UnlockError> {
        self.unlock_with_limits(passphrase, &KdfLimits::default())
    }

    /// Like [`Header::unlock`] with explicit cost limits (for a guest with little memory).
    pub fn unlock_with_limits(
        &self,
        passphrase: &[u8],
        limits: &KdfLimits,
    ) -> Result<MasterKey, UnlockError> {
        if self.keyslots.is_empty() {
            return Err(UnlockError::NoKeyslot);
        }
        let mut skipped = None;
        for slot in &self.keyslots {
            if let Err(e) = slot.kdf.check(limits) {
                skipped.get_or_insert((slot.id, e));
                continue;
            }
            if let Some(k) = self.try_keyslot(slot, passphrase, limits)? {
                return Ok(k);
            }
        }
        match skipped {
            Some((id, source)) => Err(UnlockError::KeyslotNotTried { id, source }),
            None => Err(UnlockError::WrongPassphrase),
        }
    }

    /// Tries only keyslot `id`.
    pub fn unlock_keyslot(
        &self,
        id: u32,
        passphrase: &[u8],
        limits: &KdfLimits,
    ) -> Result<MasterKey, UnlockError> {
        let slot = self
            .keyslots
            .iter()
            .find(|k| k.id == id)
            .ok_or(UnlockError::NoSuchKeyslot { id })?;
        self.try_keyslot(slot, passphrase, limits)?
            .ok_or(UnlockError::WrongPassphrase)
    }

    /// Checks that `key` is this volume's key (for example a key kept from formatting).
    pub fn verify_key(&self, key: &MasterKey, limits: &KdfLimits) -> Result<bool, UnlockError> {
        let d = self
            .digests
            .get(self.payload_digest)
            .ok_or(UnlockError::NoKeyslot)?;
        if key.len() != self.payload.cipher.key_len() {
            return Ok(false);
        }
        digest_matches(d, key.as_bytes(), limits)
            .map_err(|source| UnlockError::Kdf { id: 0, source })
    }

    fn try_keyslot(
        &self,
        slot: &Keyslot,
        passphrase: &[u8],
        limits: &KdfLimits,
    ) -> Result<Option<MasterKey>, UnlockError> {
        let id = slot.id;
        let mut area_key = Zeroizing::new(vec![0u8; slot.area_cipher.key_len()]);
        slot.kdf
            .derive(passphrase, &slot.salt, &mut area_key, limits)
            .map_err(|source| UnlockError::Kdf { id, source })?;
        let cipher = SectorCipher::new(slot.area_cipher, &area_key)
            .map_err(|source| UnlockError::Cipher { id, source })?;
        let mut material = Zeroizing::new(slot.material.clone());
        // Keyslot areas always use 512-byte sectors, IVs counted from the area start.
        for (i, sector) in material.chunks_mut(512).enumerate() {
            let iv = u64::try_from(i).unwrap_or(u64::MAX);
            cipher
                .decrypt_sector(iv, sector)
                .map_err(|source| UnlockError::Cipher { id, source })?;
        }
        let key = af::merge(&material, slot.key_len, slot.stripes, slot.af_hash)
            .map_err(|source| UnlockError::Af { id, source })?;
        let d = self
            .digests
            .get(slot.digest)
            .ok_or(UnlockError::NoKeyslot)?;
        if digest_matches(d, &key, limits).map_err(|source| UnlockError::Kdf { id, source })? {
            Ok(Some(MasterKey::new(key)))
        } else {
            Ok(None)
        }
    }

    /// The dm-crypt target values for this volume on a device of `device_size` bytes.
    pub fn dm_crypt_target(
        &self,
        key: &MasterKey,
        device_size: u64,
    ) -> Result<crate::payload::DmCryptTarget, UnlockError> {
        self.payload
            .dm_crypt_target(key, device_size)
            .map_err(UnlockError::Payload)
    }
}
