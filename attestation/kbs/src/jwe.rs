//! Sealing secrets to the guest's TEE key: RCAR JWE (ECDH-ES+A256KW or RSA-OAEP-256, with
//! A256GCM) and the reference protocol's RSA PKCS#1 v1.5 hex string. OpenSSL here, RustCrypto
//! in the client, so each side checks the other.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::bn::{BigNum, BigNumContext};
use openssl::derive::Deriver;
use openssl::ec::{EcGroup, EcKey};
use openssl::encrypt::Encrypter;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::symm::{encrypt_aead, Cipher};
use rand::RngCore;
use zeroize::Zeroizing;

use krun_attestation::keys::{ALG_ECDH_ES_A256KW, ALG_RSA_OAEP_256};
use krun_attestation::rcar::{
    concat_kdf_a256kw, ProtectedHeader, Response, TeePubKey, ENC_A256GCM,
};

use crate::refusal::Refusal;
use crate::sessions::RecipientKey;

fn b64(s: &str) -> Result<Vec<u8>, Refusal> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| Refusal::bad_request("InvalidTeePubKey", "TEE key is not base64url"))
}

/// Parses an RCAR `tee-pubkey`.
pub fn rcar_recipient(key: &TeePubKey) -> Result<RecipientKey, Refusal> {
    let bad = |d: &str| Refusal::bad_request("InvalidTeePubKey", d.to_string());
    match key {
        TeePubKey::EC { crv, alg, x, y } => {
            if crv != "P-256" || alg != ALG_ECDH_ES_A256KW {
                return Err(bad("unsupported EC key"));
            }
            let (x, y) = (b64(x)?, b64(y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err(bad("EC coordinates must be 32 bytes"));
            }
            let group =
                EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(|_| bad("P-256"))?;
            let (x, y) = (
                BigNum::from_slice(&x).map_err(|_| bad("x"))?,
                BigNum::from_slice(&y).map_err(|_| bad("y"))?,
            );
            let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y)
                .and_then(|k| k.check_key().map(|_| k))
                .map_err(|_| bad("EC point is not on P-256"))?;
            Ok(RecipientKey::EcP256(key))
        }
        TeePubKey::RSA { alg, k_mod, k_exp } => {
            if alg != ALG_RSA_OAEP_256 {
                return Err(bad("unsupported RSA algorithm"));
            }
            Ok(RecipientKey::RsaOaep256(rsa_key(
                &b64(k_mod)?,
                &b64(k_exp)?,
            )?))
        }
        TeePubKey::AKP { .. } => Err(bad("AKP keys are not supported")),
    }
}

fn rsa_key(n: &[u8], e: &[u8]) -> Result<Rsa<Public>, Refusal> {
    let bad = || Refusal::bad_request("InvalidTeePubKey", "invalid RSA key");
    let key = Rsa::from_public_components(
        BigNum::from_slice(n).map_err(|_| bad())?,
        BigNum::from_slice(e).map_err(|_| bad())?,
    )
    .map_err(|_| bad())?;
    if !(2048..=8192).contains(&key.n().num_bits()) {
        return Err(Refusal::bad_request(
            "InvalidTeePubKey",
            "RSA key must be 2048 to 8192 bits",
        ));
    }
    Ok(key)
}

/// Parses a reference-protocol `tee-pubkey` (standard base64 with padding).
pub fn reference_recipient(k_mod: &str, k_exp: &str) -> Result<RecipientKey, Refusal> {
    use base64::engine::general_purpose::STANDARD;
    let dec = |s: &str| {
        STANDARD
            .decode(s)
            .map_err(|_| Refusal::bad_request("InvalidTeePubKey", "TEE key is not base64"))
    };
    Ok(RecipientKey::RsaPkcs1(rsa_key(&dec(k_mod)?, &dec(k_exp)?)?))
}

fn internal(_: openssl::error::ErrorStack) -> Refusal {
    Refusal::internal("cannot seal the secret")
}

/// Reference protocol: RSA PKCS#1 v1.5 ciphertext, lowercase hex, as a JSON string.
pub fn seal_pkcs1_hex(key: &Rsa<Public>, secret: &[u8]) -> Result<String, Refusal> {
    let mut out = vec![0u8; usize::try_from(key.size()).map_err(|_| Refusal::internal("key"))?];
    let n = key
        .public_encrypt(secret, &mut out, Padding::PKCS1)
        .map_err(|_| Refusal::bad_request("SecretTooLarge", "secret does not fit the TEE key"))?;
    out.truncate(n);
    Ok(hex::encode(out))
}

/// RCAR: a flattened JWE of `secret` for `key`.
pub fn seal_jwe(key: &RecipientKey, secret: &[u8]) -> Result<Response, Refusal> {
    let mut cek = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(cek.as_mut());
    let (protected, encrypted_key) = match key {
        RecipientKey::EcP256(peer) => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(internal)?;
            let eph = EcKey::generate(&group).map_err(internal)?;
            let eph = PKey::from_ec_key(eph).map_err(internal)?;
            let peer = PKey::from_ec_key(peer.clone()).map_err(internal)?;
            let mut d = Deriver::new(&eph).map_err(internal)?;
            d.set_peer(&peer).map_err(internal)?;
            let z = Zeroizing::new(d.derive_to_vec().map_err(internal)?);
            let kek = concat_kdf_a256kw(&z);
            let kek = openssl::aes::AesKey::new_encrypt(kek.as_ref())
                .map_err(|_| Refusal::internal("cannot seal the secret"))?;
            let mut wrapped = vec![0u8; 40];
            openssl::aes::wrap_key(&kek, None, &mut wrapped, cek.as_ref())
                .map_err(|_| Refusal::internal("cannot seal the secret"))?;
            let ec = eph.ec_key().map_err(internal)?;
            let mut ctx = BigNumContext::new().map_err(internal)?;
            let (mut x, mut y) = (
                BigNum::new().map_err(internal)?,
                BigNum::new().map_err(internal)?,
            );
            ec.public_key()
                .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
                .map_err(internal)?;
            let coord = |b: &BigNum| -> Result<String, Refusal> {
                Ok(URL_SAFE_NO_PAD.encode(b.to_vec_padded(32).map_err(internal)?))
            };
            let mut other = serde_json::Map::new();
            other.insert(
                "epk".into(),
                serde_json::json!({"crv": "P-256", "kty": "EC", "x": coord(&x)?, "y": coord(&y)?}),
            );
            let header = ProtectedHeader {
                alg: ALG_ECDH_ES_A256KW.into(),
                enc: ENC_A256GCM.into(),
                other_fields: other,
            };
            (header, wrapped)
        }
        RecipientKey::RsaOaep256(rsa) => {
            let pkey = PKey::from_rsa(rsa.clone()).map_err(internal)?;
            let mut e = Encrypter::new(&pkey).map_err(internal)?;
            e.set_rsa_padding(Padding::PKCS1_OAEP).map_err(internal)?;
            e.set_rsa_oaep_md(MessageDigest::sha256())
                .map_err(internal)?;
            e.set_rsa_mgf1_md(MessageDigest::sha256())
                .map_err(internal)?;
            let mut out = vec![0u8; e.encrypt_len(cek.as_ref()).map_err(internal)?];
            let n = e.encrypt(cek.as_ref(), &mut out).map_err(internal)?;
            out.truncate(n);
            let header = ProtectedHeader {
                alg: ALG_RSA_OAEP_256.into(),
                enc: ENC_A256GCM.into(),
                other_fields: serde_json::Map::new(),
            };
            (header, out)
        }
        RecipientKey::RsaPkcs1(_) => {
            return Err(Refusal::internal("reference key used for a JWE"));
        }
    };
    let aad = protected
        .generate_aad()
        .map_err(|_| Refusal::internal("cannot seal the secret"))?;
    let mut iv = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut iv);
    let mut tag = [0u8; 16];
    let ciphertext = encrypt_aead(
        Cipher::aes_256_gcm(),
        cek.as_ref(),
        Some(&iv),
        &aad,
        secret,
        &mut tag,
    )
    .map_err(internal)?;
    Ok(Response {
        protected,
        encrypted_key,
        aad: None,
        iv: iv.to_vec(),
        ciphertext,
        tag: tag.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use krun_attestation::keys::TeeKey;
    use krun_attestation::rcar::decrypt_jwe;

    #[test]
    fn ec_and_rsa_jwe_open_with_the_rustcrypto_client() {
        for key in [TeeKey::generate_ec(), TeeKey::generate_rsa().unwrap()] {
            let recipient = rcar_recipient(&key.rcar_pubkey()).unwrap();
            let jwe = seal_jwe(&recipient, b"the passphrase").unwrap();
            let body = serde_json::to_vec(&jwe).unwrap();
            assert_eq!(
                decrypt_jwe(&body, &key).unwrap().as_slice(),
                b"the passphrase"
            );
        }
    }

    #[test]
    fn pkcs1_hex_opens_with_the_client_key() {
        let key = TeeKey::generate_rsa().unwrap();
        let pk = key.reference_pubkey().unwrap();
        let RecipientKey::RsaPkcs1(rsa) = reference_recipient(&pk.k_mod, &pk.k_exp).unwrap() else {
            panic!()
        };
        let hex_ct = seal_pkcs1_hex(&rsa, b"pw").unwrap();
        let pt = key.decrypt_pkcs1(&hex::decode(hex_ct).unwrap()).unwrap();
        assert_eq!(pt.as_slice(), b"pw");
    }

    #[test]
    fn bad_keys_are_refused() {
        let bad = TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: "AAAA".into(),
            y: "AAAA".into(),
        };
        assert!(rcar_recipient(&bad).is_err());
        let off_curve = TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: URL_SAFE_NO_PAD.encode([1u8; 32]),
            y: URL_SAFE_NO_PAD.encode([2u8; 32]),
        };
        assert!(rcar_recipient(&off_curve).is_err());
        assert!(reference_recipient("AQAB", "AQAB").is_err(), "tiny modulus");
    }
}
