//! Trustee's RCAR protocol (KBS protocol version 0.4.0): wire types from kbs-types 0.18, the
//! SNP evidence shape, and JWE decryption of resources.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use kbs_types::{
    Attestation, Challenge, CompositeEvidence, ErrorInformation, InitData, ProtectedHeader,
    Request, Response, RuntimeData, Tee, TeePubKey,
};

use crate::keys::{TeeKey, ALG_ECDH_ES_A256KW, ALG_RSA_OAEP_256};

/// The only protocol version Trustee accepts.
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// `detail` of the 401 an RCAR broker sends for any other version.
pub const VERSION_MISMATCH: &str = "KBS Client Protocol Version Mismatch";
/// Prefix of `ErrorInformation.type`.
pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";
/// JWE payload encryption.
pub const ENC_A256GCM: &str = "A256GCM";

/// Errors from decoding an RCAR resource.
#[derive(Debug, thiserror::Error)]
pub enum RcarError {
    #[error("JWE is not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("JWE field is not base64url")]
    Base64(#[source] base64::DecodeError),
    #[error("JWE uses an unsupported algorithm")]
    Algorithm,
    #[error("JWE ephemeral key is invalid")]
    EphemeralKey,
    #[error("JWE content key cannot be unwrapped")]
    KeyUnwrap,
    #[error("JWE payload fails authentication")]
    Payload,
    #[error("the TEE key cannot open this JWE")]
    Key(#[source] crate::keys::KeysError),
}

/// Key of `extra-params` carrying the launch's measured host.json (standard base64; an
/// extension Trustee ignores): see [`crate::reference::SnpRequest::host_json`].
pub const HOST_JSON_PARAM: &str = "krun-host-json";

/// The `/auth` request an RCAR client sends (SHA-384 is the SNP default), with the launch's
/// measured host.json when given.
pub fn auth_request(tee: Tee, host_json: Option<&[u8]>) -> Request {
    let mut extra = serde_json::json!({"supported-hash-algorithms": ["sha384"]});
    if let (Some(json), Some(map)) = (host_json, extra.as_object_mut()) {
        map.insert(
            HOST_JSON_PARAM.into(),
            crate::reference::encode_host_json(json).into(),
        );
    }
    Request {
        version: PROTOCOL_VERSION.to_string(),
        tee,
        extra_params: extra,
    }
}

/// `tee-evidence.primary_evidence` for SNP, as guest-components' SNP attester sends it.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SnpEvidence {
    pub attestation_report: sev::firmware::guest::AttestationReport,
    pub cert_chain: Option<Vec<sev::firmware::host::CertTableEntry>>,
}

/// `/attest` answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AttestationToken {
    pub token: String,
}

/// A flattened JWE as received, keeping the `protected` text for the AAD.
#[derive(Deserialize)]
struct RawJwe {
    protected: String,
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct Epk {
    crv: String,
    x: String,
    y: String,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    enc: String,
    epk: Option<Epk>,
}

fn b64(s: &str) -> Result<Vec<u8>, RcarError> {
    URL_SAFE_NO_PAD.decode(s).map_err(RcarError::Base64)
}

/// JWA Concat KDF (RFC 7518 §4.6.2) for ECDH-ES+A256KW with empty apu/apv: one SHA-256 round.
pub fn concat_kdf_a256kw(z: &[u8]) -> Zeroizing<[u8; 32]> {
    const _: () = assert!(ALG_ECDH_ES_A256KW.len() == 14);
    let alg = ALG_ECDH_ES_A256KW.as_bytes();
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    // u32 BE length prefix of the 14-byte algorithm name.
    h.update(14u32.to_be_bytes());
    h.update(alg);
    h.update(0u32.to_be_bytes());
    h.update(0u32.to_be_bytes());
    h.update(256u32.to_be_bytes());
    Zeroizing::new(h.finalize().into())
}

/// Decrypts a resource answer with the session's TEE key.
pub fn decrypt_jwe(body: &[u8], key: &TeeKey) -> Result<Zeroizing<Vec<u8>>, RcarError> {
    let jwe: RawJwe = serde_json::from_slice(body).map_err(RcarError::Json)?;
    let header: Header = serde_json::from_slice(&b64(&jwe.protected)?).map_err(RcarError::Json)?;
    if header.enc != ENC_A256GCM {
        return Err(RcarError::Algorithm);
    }
    let wrapped = b64(&jwe.encrypted_key)?;
    let cek: Zeroizing<Vec<u8>> = match (header.alg.as_str(), key) {
        (ALG_ECDH_ES_A256KW, TeeKey::Ec(secret)) => {
            let epk = header.epk.ok_or(RcarError::EphemeralKey)?;
            if epk.crv != "P-256" {
                return Err(RcarError::Algorithm);
            }
            let (x, y) = (b64(&epk.x)?, b64(&epk.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err(RcarError::EphemeralKey);
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            let public = p256::PublicKey::from_sec1_bytes(point.as_bytes())
                .map_err(|_| RcarError::EphemeralKey)?;
            let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine());
            let kek = concat_kdf_a256kw(shared.raw_secret_bytes());
            let kek = aes_kw::KekAes256::from(*kek);
            let mut cek = Zeroizing::new(vec![0u8; 32]);
            if wrapped.len() != 40 {
                return Err(RcarError::KeyUnwrap);
            }
            kek.unwrap(&wrapped, &mut cek)
                .map_err(|_| RcarError::KeyUnwrap)?;
            cek
        }
        (ALG_RSA_OAEP_256, TeeKey::Rsa(_)) => {
            key.decrypt_oaep256(&wrapped).map_err(RcarError::Key)?
        }
        _ => return Err(RcarError::Algorithm),
    };
    if cek.len() != 32 {
        return Err(RcarError::KeyUnwrap);
    }
    let iv = b64(&jwe.iv)?;
    if iv.len() != 12 {
        return Err(RcarError::Payload);
    }
    let mut ct = b64(&jwe.ciphertext)?;
    ct.extend_from_slice(&b64(&jwe.tag)?);
    let cipher = Aes256Gcm::new_from_slice(&cek).map_err(|_| RcarError::KeyUnwrap)?;
    cipher
        .decrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: &ct,
                aad: jwe.protected.as_bytes(),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| RcarError::Payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::OsRng;
    use rand_core::RngCore;

    /// Independent sender side for the test: builds a JWE the way Trustee's `jwe` module does.
    fn seal_ec(recipient: &p256::PublicKey, plaintext: &[u8]) -> String {
        let eph = p256::SecretKey::random(&mut OsRng);
        let z = p256::ecdh::diffie_hellman(eph.to_nonzero_scalar(), recipient.as_affine());
        let kek = aes_kw::KekAes256::from(*concat_kdf_a256kw(z.raw_secret_bytes()));
        let mut cek = [0u8; 32];
        OsRng.fill_bytes(&mut cek);
        let mut wrapped = [0u8; 40];
        kek.wrap(&cek, &mut wrapped).unwrap();
        let point = p256::EncodedPoint::from(eph.public_key());
        let header = ProtectedHeader {
            alg: ALG_ECDH_ES_A256KW.into(),
            enc: ENC_A256GCM.into(),
            other_fields: serde_json::json!({"epk": {
                "crv": "P-256", "kty": "EC",
                "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
            }})
            .as_object()
            .unwrap()
            .clone(),
        };
        let aad = header.generate_aad().unwrap();
        let iv = [5u8; 12];
        let sealed = Aes256Gcm::new_from_slice(&cek)
            .unwrap()
            .encrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap();
        let (ct, tag) = sealed.split_at(sealed.len() - 16);
        let resp = Response {
            protected: header,
            encrypted_key: wrapped.to_vec(),
            aad: None,
            iv: iv.to_vec(),
            ciphertext: ct.to_vec(),
            tag: tag.to_vec(),
        };
        serde_json::to_string(&resp).unwrap()
    }

    #[test]
    fn ec_jwe_from_kbs_types_response_decrypts() {
        let key = TeeKey::generate_ec();
        let TeeKey::Ec(secret) = &key else {
            unreachable!()
        };
        let body = seal_ec(&secret.public_key(), b"luks passphrase");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v.get("aad").is_none(), "Trustee omits aad");
        assert_eq!(
            decrypt_jwe(body.as_bytes(), &key).unwrap().as_slice(),
            b"luks passphrase"
        );

        // A tampered tag or a foreign key fails.
        let mut tampered = v.clone();
        tampered["tag"] = serde_json::json!(URL_SAFE_NO_PAD.encode([0u8; 16]));
        let err = decrypt_jwe(tampered.to_string().as_bytes(), &key).unwrap_err();
        assert!(matches!(err, RcarError::Payload));
        let other = TeeKey::generate_ec();
        assert!(decrypt_jwe(body.as_bytes(), &other).is_err());
        assert!(matches!(decrypt_jwe(b"{}", &key), Err(RcarError::Json(_))));
    }

    #[test]
    fn auth_request_has_trustee_shape() {
        let text = serde_json::to_string(&auth_request(Tee::Snp, None)).unwrap();
        assert_eq!(
            text,
            r#"{"version":"0.4.0","tee":"snp","extra-params":{"supported-hash-algorithms":["sha384"]}}"#
        );
        let challenge: Challenge =
            serde_json::from_str(r#"{"nonce":"b64nonce","extra-params":""}"#).unwrap();
        assert_eq!(challenge.nonce, "b64nonce");
        let err: ErrorInformation = serde_json::from_str(
            r#"{"type":"https://github.com/confidential-containers/kbs/errors/ProtocolVersion","detail":"KBS Client Protocol Version Mismatch"}"#,
        )
        .unwrap();
        assert_eq!(err.detail, VERSION_MISMATCH);
    }

    #[test]
    fn attestation_body_has_trustee_shape_both_ways() {
        let text = r#"{"init-data":null,"runtime-data":{"nonce":"N","tee-pubkey":{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"xx","y":"yy"}},"tee-evidence":{"primary_evidence":{"k":1},"additional_evidence":""}}"#;
        let att: Attestation = serde_json::from_str(text).unwrap();
        assert_eq!(att.runtime_data.nonce, "N");
        assert!(matches!(att.runtime_data.tee_pubkey, TeePubKey::EC { .. }));
        assert_eq!(serde_json::to_string(&att).unwrap(), text);
    }
}
