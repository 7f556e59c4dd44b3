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
    /// limits (the passphrase may belong to it). Other keyslot failures are reported the same
    /// way through their own variants.
    #[error("no keyslot matches the passphrase; keyslot {id} was not tried")]
    KeyslotNotTried {
        /// The first keyslot that was skipped.
        id: u32,
        /// Why.
        #[source]
        source: KdfError,
    },
    /// The master-key digest could not be computed.
    #[error("cannot compute the volume key digest")]
    Digest(#[source] KdfError),
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
        // A keyslot that cannot be tried (cost above the limits, out of memory) must not hide
        // a later keyslot that opens; its error is reported only if none does.
        let mut failed = None;
        for slot in &self.keyslots {
            let res = match slot.kdf.check(limits) {
                Err(source) => Err(UnlockError::KeyslotNotTried {
                    id: slot.id,
                    source,
                }),
                Ok(()) => self.try_keyslot(slot, passphrase, limits),
            };
            match res {
                Ok(Some(k)) => return Ok(k),
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        Err(failed.unwrap_or(UnlockError::WrongPassphrase))
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
        digest_matches(d, key.as_bytes(), limits).map_err(UnlockError::Digest)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{format_luks1, Luks1Options};
    use crate::hash::HashAlg;
    use crate::kdf::Kdf;

    fn header() -> Header {
        let opts = Luks1Options {
            keyslot_iterations: 1000,
            mk_digest_iterations: 1000,
            ..Luks1Options::default()
        };
        let mut img = format_luks1(b"pw", &opts).unwrap().header;
        img.resize(img.len() + 4096, 0);
        Header::read(&mut std::io::Cursor::new(img)).unwrap()
    }

    #[test]
    fn an_untriable_keyslot_does_not_hide_a_later_one() {
        let mut h = header();
        let mut costly = h.keyslots[0].clone();
        costly.id = 1;
        costly.kdf = Kdf::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations: u32::MAX,
        };
        h.keyslots.insert(0, costly);
        let k = h.unlock(b"pw").unwrap();
        assert!(h.verify_key(&k, &KdfLimits::default()).unwrap());
        assert!(!h
            .verify_key(&MasterKey::from_bytes(&[0; 64]), &KdfLimits::default())
            .unwrap());
        // With the wrong passphrase the skipped keyslot is what gets reported.
        let e = h.unlock(b"bad").unwrap_err();
        assert!(
            matches!(e, UnlockError::KeyslotNotTried { id: 1, .. }),
            "{e}"
        );
        assert!(matches!(
            h.unlock_keyslot(7, b"pw", &KdfLimits::default()),
            Err(UnlockError::NoSuchKeyslot { id: 7 })
        ));
    }

    #[test]
    fn tampered_material_or_digest_gives_wrong_passphrase_not_a_key() {
        let mut h = header();
        h.keyslots[0].material[1000] ^= 1;
        assert!(matches!(h.unlock(b"pw"), Err(UnlockError::WrongPassphrase)));
        let mut h = header();
        h.digests[0].value[0] ^= 1;
        assert!(matches!(h.unlock(b"pw"), Err(UnlockError::WrongPassphrase)));
        let mut h = header();
        h.keyslots.clear();
        assert!(matches!(h.unlock(b"pw"), Err(UnlockError::NoKeyslot)));
    }
}
