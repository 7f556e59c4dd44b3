//! Secrets at rest: workload secrets (passphrases, resources) and session state (SEV
//! transport keys, recipient keys) are stored sealed with AES-256-GCM under the operator's
//! key (`--secrets-key-file`). A sealed value is
//!
//! `MAGIC (8) || key id (8) || nonce (12) || ciphertext || tag (16)`
//!
//! with a random nonce per value and, as additional data, what the value is (workload and
//! secret name, or session id), so a sealed value copied to another row does not open. The
//! key id (the first 8 bytes of SHA-256 of the key) names the key a value needs:
//! `krun-kbs rotate-secrets` re-seals every value under a new key.

use std::path::Path;

use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use rand::RngCore;
use zeroize::Zeroizing;

/// Marks a sealed value; a NUL first so that no text passphrase looks sealed.
const MAGIC: &[u8; 8] = b"\0kbsgcm1";
const ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER: usize = MAGIC.len() + ID_LEN + NONCE_LEN;

/// Errors of sealing and opening.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the secrets key file {0}")]
    Read(String, #[source] std::io::Error),
    #[error("the secrets key file {0} must hold 32 bytes, raw or as 64 hex digits")]
    KeyLength(String),
    #[error("a stored secret is sealed under key id {found}, but this broker's secrets key is {have}: start it with the right --secrets-key-file (or rotate)")]
    WrongKey { found: String, have: String },
    #[error("a stored secret is sealed (key id {0}) and this broker has no --secrets-key-file")]
    NoKey(String),
    #[error("a stored sealed secret does not open: corrupted, or moved from another row")]
    Corrupt,
    #[error("encryption failed")]
    Crypto(#[source] openssl::error::ErrorStack),
}

/// The operator's AES-256 key.
pub struct SecretsKey {
    key: Zeroizing<[u8; 32]>,
    id: [u8; ID_LEN],
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("id", &self.id())
            .finish()
    }
}

impl SecretsKey {
    pub fn new(key: [u8; 32]) -> Self {
        let key = Zeroizing::new(key);
        let digest = openssl::sha::sha256(&*key);
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&digest[..ID_LEN]);
        SecretsKey { key, id }
    }

    /// Reads a key file: 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let shown = path.display().to_string();
        let raw =
            Zeroizing::new(std::fs::read(path).map_err(|e| SealError::Read(shown.clone(), e))?);
        let mut key = Zeroizing::new([0u8; 32]);
        if raw.len() == 32 {
            key.copy_from_slice(&raw);
        } else {
            let text =
                std::str::from_utf8(&raw).map_err(|_| SealError::KeyLength(shown.clone()))?;
            let bytes = Zeroizing::new(
                hex::decode(text.trim()).map_err(|_| SealError::KeyLength(shown.clone()))?,
            );
            if bytes.len() != 32 {
                return Err(SealError::KeyLength(shown));
            }
            key.copy_from_slice(&bytes);
        }
        Ok(Self::new(*key))
    }

    pub(crate) fn id_bytes(&self) -> [u8; ID_LEN] {
        self.id
    }

    /// The key id, in hex (logged at start, shown in errors).
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// Seals `plain`, bound to `context`.
    pub fn seal(&self, plain: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut tag = [0u8; TAG_LEN];
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &*self.key,
            Some(&nonce),
            context,
            plain,
            &mut tag,
        )
        .map_err(SealError::Crypto)?;
        let mut out = Vec::with_capacity(HEADER + ct.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a value [`SecretsKey::seal`] made with this key and `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let found = sealed_key_id(sealed).ok_or(SealError::Corrupt)?;
        if found != self.id {
            return Err(SealError::WrongKey {
                found: hex::encode(found),
                have: self.id(),
            });
        }
        if sealed.len() < HEADER + TAG_LEN {
            return Err(SealError::Corrupt);
        }
        let nonce = &sealed[MAGIC.len() + ID_LEN..HEADER];
        let (ct, tag) = sealed[HEADER..].split_at(sealed.len() - HEADER - TAG_LEN);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            &*self.key,
            Some(nonce),
            context,
            ct,
            tag,
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Corrupt)
    }
}

/// Whether `stored` is a sealed value.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(MAGIC)
}

/// The key id a sealed value needs; `None` for an unsealed value.
pub fn sealed_key_id(stored: &[u8]) -> Option<[u8; ID_LEN]> {
    if !is_sealed(stored) || stored.len() < MAGIC.len() + ID_LEN {
        return None;
    }
    stored[MAGIC.len()..MAGIC.len() + ID_LEN].try_into().ok()
}

/// Seals with `key` when there is one; stores as it is otherwise.
pub fn seal_with(
    key: Option<&SecretsKey>,
    plain: &[u8],
    context: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    match key {
        Some(k) => k.seal(plain, context).map(Zeroizing::new),
        None => Ok(Zeroizing::new(plain.to_vec())),
    }
}

/// Opens a stored value: sealed ones with `key`, unsealed ones (written before the broker
/// had a key, or by one without) as they are.
pub fn open_with(
    key: Option<&SecretsKey>,
    stored: &[u8],
    context: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if !is_sealed(stored) {
        return Ok(Zeroizing::new(stored.to_vec()));
    }
    match key {
        Some(k) => k.open(stored, context),
        None => Err(SealError::NoKey(
            sealed_key_id(stored).map(hex::encode).unwrap_or_default(),
        )),
    }
}

/// Additional data of a workload secret.
pub fn secret_context(workload: &str, name: &str) -> Vec<u8> {
    format!("secret\0{workload}\0{name}").into_bytes()
}

/// Additional data of a session's state.
pub fn session_context(id: &str) -> Vec<u8> {
    format!("session\0{id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let k = SecretsKey::new([7; 32]);
        let sealed = k.seal(b"passphrase", b"ctx").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(10).any(|w| w == b"passphrase"));
        assert_eq!(k.open(&sealed, b"ctx").unwrap().as_slice(), b"passphrase");
        assert!(matches!(k.open(&sealed, b"other"), Err(SealError::Corrupt)));
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(k.open(&bad, b"ctx"), Err(SealError::Corrupt)));
        let other = SecretsKey::new([8; 32]);
        let err = other.open(&sealed, b"ctx").unwrap_err();
        assert!(matches!(err, SealError::WrongKey { .. }));
        assert!(err.to_string().contains(&k.id()), "{err}");
        assert!(matches!(
            open_with(None, &sealed, b"ctx"),
            Err(SealError::NoKey(_))
        ));
        // Two seals of one value differ (random nonce).
        assert_ne!(sealed, k.seal(b"passphrase", b"ctx").unwrap());
        // Unsealed values pass through.
        assert_eq!(
            open_with(Some(&k), b"plain", b"ctx").unwrap().as_slice(),
            b"plain"
        );
    }

    #[test]
    fn key_files_are_raw_or_hex() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, [3u8; 32]).unwrap();
        let hexf = dir.path().join("hex");
        std::fs::write(&hexf, format!("{}\n", hex::encode([3u8; 32]))).unwrap();
        assert_eq!(
            SecretsKey::from_file(&raw).unwrap().id(),
            SecretsKey::from_file(&hexf).unwrap().id()
        );
        let short = dir.path().join("short");
        std::fs::write(&short, "abcd").unwrap();
        assert!(matches!(
            SecretsKey::from_file(&short),
            Err(SealError::KeyLength(_))
        ));
    }
}
