//! The firmware's cryptographic primitives, with its exact byte conventions.
//!
//! The PSP stores big integers little-endian in fixed 72-byte fields, uses an SP 800-108 KDF
//! whose counter and length are little-endian, and AES-128-CTR with a 128-bit big-endian
//! counter (`research/psp-model.md` §1.2, §7).

use openssl::bn::{BigNum, BigNumContext, BigNumRef};
use openssl::derive::Deriver;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private, Public};
use openssl::sign::Signer;
use openssl::symm::{Cipher, Crypter, Mode};
use zeroize::Zeroizing;

/// Size of one little-endian ECC coordinate or signature component field.
pub const ECC_FIELD_LEN: usize = 72;
/// Significant bytes of a P-384 coordinate or signature component.
pub const P384_LEN: usize = 48;

/// Errors of the cryptographic primitives.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// OpenSSL reported a failure.
    #[error("OpenSSL operation failed")]
    OpenSsl(#[source] openssl::error::ErrorStack),
    /// A point is not on P-384 or a coordinate is too large.
    #[error("invalid P-384 public key")]
    InvalidPoint,
    /// A signature component does not fit its field.
    #[error("invalid ECDSA signature encoding")]
    InvalidSignature,
}

impl From<openssl::error::ErrorStack> for CryptoError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        CryptoError::OpenSsl(e)
    }
}

/// HMAC-SHA256 of the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 32], CryptoError> {
    let pkey = PKey::hmac(key)?;
    let mut signer = Signer::new(MessageDigest::sha256(), &pkey)?;
    for part in parts {
        signer.update(part)?;
    }
    let mut out = [0u8; 32];
    signer.sign(&mut out)?;
    Ok(out)
}

/// NIST SP 800-108 counter-mode KDF with HMAC-SHA256 as the firmware uses it: the counter and
/// the output length in bits are little-endian u32, the label is followed by one zero byte.
pub fn kdf(key: &[u8], label: &str, context: &[u8]) -> Result<Zeroizing<[u8; 16]>, CryptoError> {
    // Only 128-bit outputs are needed: one HMAC block, counter 1, L = 128.
    let block = Zeroizing::new(hmac_sha256(
        key,
        &[
            &1u32.to_le_bytes(),
            label.as_bytes(),
            &[0u8],
            context,
            &128u32.to_le_bytes(),
        ],
    )?);
    let mut out = Zeroizing::new([0u8; 16]);
    out.copy_from_slice(&block[..16]);
    Ok(out)
}

/// AES-128-CTR with the whole 16-byte IV as a big-endian counter (OpenSSL `aes-128-ctr`).
pub fn aes128_ctr(
    key: &[u8; 16],
    iv: &[u8; 16],
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let cipher = Cipher::aes_128_ctr();
    let mut crypter = Crypter::new(cipher, Mode::Decrypt, key, Some(iv))?;
    let mut out = Zeroizing::new(vec![0u8; data.len() + cipher.block_size()]);
    let mut n = crypter.update(data, &mut out)?;
    n += crypter.finalize(&mut out[n..])?;
    out.truncate(n);
    Ok(out)
}

/// Constant-time equality of two MACs.
pub fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// SHA-384 of `data`.
pub fn sha384(data: &[u8]) -> [u8; 48] {
    openssl::sha::sha384(data)
}

/// The P-384 group.
pub fn p384() -> Result<EcGroup, CryptoError> {
    Ok(EcGroup::from_curve_name(Nid::SECP384R1)?)
}

/// Writes `n` as a little-endian integer zero-extended to a 72-byte field.
pub fn bn_to_le_field(n: &BigNumRef) -> Result<[u8; ECC_FIELD_LEN], CryptoError> {
    let le = n.to_vec().into_iter().rev().collect::<Vec<u8>>();
    if le.len() > P384_LEN {
        return Err(CryptoError::InvalidSignature);
    }
    let mut out = [0u8; ECC_FIELD_LEN];
    out[..le.len()].copy_from_slice(&le);
    Ok(out)
}

/// Reads a little-endian 72-byte field; bytes past the first 48 must be zero.
pub fn le_field_to_bn(field: &[u8]) -> Result<BigNum, CryptoError> {
    if field.len() != ECC_FIELD_LEN || field[P384_LEN..].iter().any(|&b| b != 0) {
        return Err(CryptoError::InvalidPoint);
    }
    let be: Vec<u8> = field[..P384_LEN].iter().rev().copied().collect();
    Ok(BigNum::from_slice(&be)?)
}

/// Builds a P-384 public key from little-endian 72-byte coordinates, checking the point is
/// on the curve.
pub fn p384_public_from_le(qx: &[u8], qy: &[u8]) -> Result<EcKey<Public>, CryptoError> {
    let group = p384()?;
    let x = le_field_to_bn(qx)?;
    let y = le_field_to_bn(qy)?;
    let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y)
        .map_err(|_| CryptoError::InvalidPoint)?;
    key.check_key().map_err(|_| CryptoError::InvalidPoint)?;
    Ok(key)
}

/// The little-endian 72-byte coordinates of a P-384 public point.
pub fn p384_point_to_le(
    point: &openssl::ec::EcPointRef,
) -> Result<([u8; ECC_FIELD_LEN], [u8; ECC_FIELD_LEN]), CryptoError> {
    let group = p384()?;
    let mut ctx = BigNumContext::new()?;
    let mut x = BigNum::new()?;
    let mut y = BigNum::new()?;
    point.affine_coordinates(&group, &mut x, &mut y, &mut ctx)?;
    Ok((bn_to_le_field(&x)?, bn_to_le_field(&y)?))
}

/// ECDH on P-384: the 48-byte big-endian x coordinate of `priv · peer`, unhashed.
pub fn ecdh_p384(
    private: &EcKey<Private>,
    peer: &EcKey<Public>,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let private = PKey::from_ec_key(private.clone())?;
    let peer = PKey::from_ec_key(peer.clone())?;
    let mut deriver = Deriver::new(&private)?;
    deriver.set_peer(&peer)?;
    let z = Zeroizing::new(deriver.derive_to_vec()?);
    if z.len() != P384_LEN {
        return Err(CryptoError::InvalidPoint);
    }
    Ok(z)
}

/// ECDSA P-384 over `digest`, as the firmware stores it: r and s little-endian in 72-byte
/// fields.
pub fn ecdsa_sign_le(
    key: &EcKey<Private>,
    digest: &[u8],
) -> Result<([u8; ECC_FIELD_LEN], [u8; ECC_FIELD_LEN]), CryptoError> {
    let sig = EcdsaSig::sign(digest, key)?;
    Ok((bn_to_le_field(sig.r())?, bn_to_le_field(sig.s())?))
}

/// Verifies a firmware-format (little-endian r, s) ECDSA signature over `digest`.
pub fn ecdsa_verify_le(
    key: &EcKey<Public>,
    digest: &[u8],
    r: &[u8],
    s: &[u8],
) -> Result<bool, CryptoError> {
    let r = le_field_to_bn(r).map_err(|_| CryptoError::InvalidSignature)?;
    let s = le_field_to_bn(s).map_err(|_| CryptoError::InvalidSignature)?;
    let sig = EcdsaSig::from_private_components(r, s)?;
    Ok(sig.verify(digest, key).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers from the sev crate's own unit tests (research/psp-model.md §1.3).
    #[test]
    fn kdf_matches_sev_crate_known_answer() {
        let out = kdf(&[0u8; 16], "sev-master-secret", &[0u8; 16]).unwrap();
        assert_eq!(hex::encode(*out), "ab4d269fcc62bedb4511d56c386ce706");
    }

    #[test]
    fn session_wrap_matches_sev_crate_known_answer() {
        let master = kdf(&[0u8; 16], "sev-master-secret", &[0u8; 16]).unwrap();
        let kek = kdf(&*master, "sev-kek", &[]).unwrap();
        let kik = kdf(&*master, "sev-kik", &[]).unwrap();
        let wrap = aes128_ctr(&kek, &[0u8; 16], &[0u8; 32]).unwrap();
        assert_eq!(
            hex::encode(&*wrap),
            "2137bc7f9bb8bd7c3e55a576a15d3454b3856b8ba27afadf46dcfee9f02c02c4"
        );
        assert_eq!(
            hex::encode(hmac_sha256(&*kik, &[&wrap]).unwrap()),
            "3176c0752738bd9d5e86689534020f528c088f16238826b000b327dee6aeed7d"
        );
        assert_eq!(
            hex::encode(hmac_sha256(&[0u8; 16], &[&[0u8; 4]]).unwrap()),
            "aa7855e13839dd767cd5da7c1ff5036540c9264b7a803029315e55375287b4af"
        );
    }

    #[test]
    fn ctr_counter_carries_across_all_128_bits() {
        // An IV of all 0xff must wrap to zero in the next block (a 32/64-bit counter would not).
        let key = [7u8; 16];
        let iv = [0xffu8; 16];
        let two = aes128_ctr(&key, &iv, &[0u8; 32]).unwrap();
        let second = aes128_ctr(&key, &[0u8; 16], &[0u8; 16]).unwrap();
        assert_eq!(&two[16..], &second[..]);
    }

    #[test]
    fn le_fields_round_trip_and_reject_garbage() {
        let group = p384().unwrap();
        let key = EcKey::generate(&group).unwrap();
        let (x, y) = p384_point_to_le(key.public_key()).unwrap();
        let back = p384_public_from_le(&x, &y).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        assert!(back
            .public_key()
            .eq(&group, key.public_key(), &mut ctx)
            .unwrap());
        let mut bad = y;
        bad[0] ^= 1;
        assert!(p384_public_from_le(&x, &bad).is_err());
        let mut high = x;
        high[60] = 1;
        assert!(p384_public_from_le(&high, &y).is_err());
        assert!(p384_public_from_le(&x[..10], &y).is_err());
    }

    #[test]
    fn ecdsa_le_round_trip() {
        let key = EcKey::generate(&p384().unwrap()).unwrap();
        let digest = sha384(b"report");
        let (r, s) = ecdsa_sign_le(&key, &digest).unwrap();
        let public = EcKey::from_public_key(&p384().unwrap(), key.public_key()).unwrap();
        assert!(ecdsa_verify_le(&public, &digest, &r, &s).unwrap());
        assert!(!ecdsa_verify_le(&public, &sha384(b"other"), &r, &s).unwrap());
    }
}
