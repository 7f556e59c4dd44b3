//! The guest's ephemeral TEE key pair, its wire forms and the report-data binding of each
//! protocol.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, Pkcs1v15Encrypt, RsaPrivateKey};
use sha2::{Digest, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

use crate::{rcar, reference};

/// RCAR `alg` for an EC P-256 key.
pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
/// RCAR `alg` for an RSA key.
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";

/// Errors from key generation, binding and unwrapping.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot generate the RSA key")]
    RsaGenerate(#[source] rsa::Error),
    #[error("cannot decrypt the wrapped secret with the TEE key")]
    Decrypt,
    #[error("cannot canonicalise the runtime data")]
    Canonical(#[source] serde_json::Error),
    #[error("the key does not match the protocol")]
    WrongKeyKind,
}

/// The ephemeral key pair the guest generates for one attestation.
pub enum TeeKey {
    /// RSA-2048, e = 65537 (reference protocol; RCAR with RSA-OAEP-256).
    Rsa(Box<RsaPrivateKey>),
    /// EC P-256 (RCAR default, ECDH-ES+A256KW).
    Ec(p256::SecretKey),
}

impl std::fmt::Debug for TeeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private key material.
        match self {
            TeeKey::Rsa(_) => f.write_str("TeeKey::Rsa(..)"),
            TeeKey::Ec(_) => f.write_str("TeeKey::Ec(..)"),
        }
    }
}

impl TeeKey {
    /// A fresh RSA-2048 key.
    pub fn generate_rsa() -> Result<Self, KeysError> {
        let key = RsaPrivateKey::new(&mut OsRng, 2048).map_err(KeysError::RsaGenerate)?;
        Ok(TeeKey::Rsa(Box::new(key)))
    }

    /// A fresh EC P-256 key.
    pub fn generate_ec() -> Self {
        TeeKey::Ec(p256::SecretKey::random(&mut OsRng))
    }

    /// The reference-protocol public key: standard base64 with padding of the big-endian
    /// modulus and exponent, as the libkrun C client (OpenSSL BIO base64) produced.
    pub fn reference_pubkey(&self) -> Result<reference::TeePubKey, KeysError> {
        let TeeKey::Rsa(key) = self else {
            return Err(KeysError::WrongKeyKind);
        };
        Ok(reference::TeePubKey {
            alg: "RSA".to_string(),
            k_mod: STANDARD.encode(key.n().to_bytes_be()),
            k_exp: STANDARD.encode(key.e().to_bytes_be()),
        })
    }

    /// The RCAR JWK-style public key.
    pub fn rcar_pubkey(&self) -> rcar::TeePubKey {
        match self {
            TeeKey::Rsa(key) => rcar::TeePubKey::RSA {
                alg: ALG_RSA_OAEP_256.to_string(),
                k_mod: URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
                k_exp: URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
            },
            TeeKey::Ec(key) => {
                let point = p256::EncodedPoint::from(key.public_key());
                let x = point
                    .x()
                    .map(|x| URL_SAFE_NO_PAD.encode(x))
                    .unwrap_or_default();
                let y = point
                    .y()
                    .map(|y| URL_SAFE_NO_PAD.encode(y))
                    .unwrap_or_default();
                rcar::TeePubKey::EC {
                    crv: "P-256".to_string(),
                    alg: ALG_ECDH_ES_A256KW.to_string(),
                    x,
                    y,
                }
            }
        }
    }

    /// Decrypts the reference `/key` answer: RSA PKCS#1 v1.5 ciphertext.
    pub fn decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeysError> {
        let TeeKey::Rsa(key) = self else {
            return Err(KeysError::WrongKeyKind);
        };
        key.decrypt(Pkcs1v15Encrypt, ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| KeysError::Decrypt)
    }

    /// Unwraps a JWE content key with RSA-OAEP-256.
    pub(crate) fn decrypt_oaep256(
        &self,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeysError> {
        let TeeKey::Rsa(key) = self else {
            return Err(KeysError::WrongKeyKind);
        };
        key.decrypt(Oaep::new::<Sha256>(), ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| KeysError::Decrypt)
    }
}

/// Reference-protocol binding: `SHA-512(nonce ‖ k-mod ‖ k-exp)` over the ASCII strings.
pub fn reference_report_data(nonce: &str, key: &reference::TeePubKey) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(nonce.as_bytes());
    h.update(key.k_mod.as_bytes());
    h.update(key.k_exp.as_bytes());
    h.finalize().into()
}

/// RCAR binding for SNP: SHA-384 of the JCS-canonical
/// `{"additional-evidence":…,"nonce":…,"tee-pubkey":…}`, zero-padded to 64 bytes.
pub fn rcar_report_data(
    nonce: &str,
    key: &rcar::TeePubKey,
    additional_evidence: &str,
) -> Result<[u8; 64], KeysError> {
    let value = serde_json::json!({
        "tee-pubkey": key,
        "nonce": nonce,
        "additional-evidence": additional_evidence,
    });
    let canonical = serde_json_canonicalizer::to_vec(&value).map_err(KeysError::Canonical)?;
    let mut out = [0u8; 64];
    out[..48].copy_from_slice(&Sha384::digest(&canonical));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::RsaPublicKey;

    #[test]
    fn reference_pubkey_is_padded_standard_base64_of_big_endian_values() {
        let key = TeeKey::generate_rsa().unwrap();
        let pk = key.reference_pubkey().unwrap();
        assert_eq!(pk.k_exp, "AQAB");
        assert_eq!(
            pk.k_mod.len(),
            344,
            "2048-bit modulus is 256 bytes = 344 base64 chars"
        );
        assert!(pk.k_mod.ends_with('='));
        let n = STANDARD.decode(&pk.k_mod).unwrap();
        let TeeKey::Rsa(private) = &key else {
            unreachable!()
        };
        assert_eq!(n, private.n().to_bytes_be());
        // PKCS#1 v1.5 round trip through an independently built public key.
        let public = RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(&n),
            rsa::BigUint::from_bytes_be(&STANDARD.decode(&pk.k_exp).unwrap()),
        )
        .unwrap();
        let ct = public
            .encrypt(&mut OsRng, Pkcs1v15Encrypt, b"passphrase")
            .unwrap();
        assert_eq!(key.decrypt_pkcs1(&ct).unwrap().as_slice(), b"passphrase");
        // Deterministic failures: 0 decrypts to 0, which has no PKCS#1 v1.5 padding (a
        // ciphertext with its first byte dropped is the same integer when that byte is 0, so
        // truncation fails only 255 times in 256), and one byte more than the modulus.
        assert!(key.decrypt_pkcs1(&vec![0u8; ct.len()]).is_err());
        assert!(key.decrypt_pkcs1(&[ct.as_slice(), &[1]].concat()).is_err());
    }

    #[test]
    fn reference_binding_is_sha512_of_concatenation() {
        let pk = reference::TeePubKey {
            alg: "RSA".into(),
            k_mod: "bW9k".into(),
            k_exp: "AQAB".into(),
        };
        let expect: [u8; 64] = Sha512::digest(b"nonce1bW9kAQAB").into();
        assert_eq!(reference_report_data("nonce1", &pk), expect);
    }

    #[test]
    fn rcar_binding_uses_sorted_keys_and_sha384() {
        let key = rcar::TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: "xx".into(),
            y: "yy".into(),
        };
        // Canonical text written by hand: keys sorted, no whitespace.
        let canonical = r#"{"additional-evidence":"","nonce":"N","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}"#;
        let rd = rcar_report_data("N", &key, "").unwrap();
        assert_eq!(&rd[..48], Sha384::digest(canonical.as_bytes()).as_slice());
        assert_eq!(rd[48..], [0u8; 16]);
    }

    #[test]
    fn ec_pubkey_has_32_byte_coordinates() {
        let key = TeeKey::generate_ec();
        let rcar::TeePubKey::EC { x, y, crv, .. } = key.rcar_pubkey() else {
            panic!()
        };
        assert_eq!(crv, "P-256");
        assert_eq!(URL_SAFE_NO_PAD.decode(x).unwrap().len(), 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(y).unwrap().len(), 32);
        assert!(matches!(
            key.reference_pubkey(),
            Err(KeysError::WrongKeyKind)
        ));
    }
}
