//! TLS to a broker whose key is pinned by the launch (`krun_footer::Binding::broker_pin`):
//! the session is accepted only when the end-entity certificate's SubjectPublicKeyInfo has
//! the pinned SHA-256, and the handshake signature proves the peer holds that key. Names,
//! dates and issuers are not consulted: the pin, which is measured, says more than any
//! public CA can.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Length of a pin (SHA-256).
pub const PIN_LEN: usize = 32;

/// A client configuration that trusts exactly the key whose SPKI hashes to `pin`.
pub fn client_config(pin: [u8; PIN_LEN]) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedKey {
        pin,
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedKey {
    pin: [u8; PIN_LEN],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let spki = subject_public_key_info(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        let digest: [u8; PIN_LEN] = Sha256::digest(spki).into();
        // Public values (the pin is in the measured launch), so a plain comparison leaks
        // nothing secret.
        if digest == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            log::warn!("the broker's TLS key is not the pinned one");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The DER SubjectPublicKeyInfo (tag and length included) of an X.509 certificate:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }`.
pub fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0;
    let (tag, cert_body, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = tlv(cert_body)?;
    if tag != SEQUENCE {
        return None;
    }
    // Skip the optional version, then serial, signature, issuer, validity, subject.
    let (tag, _, rest) = tlv(tbs)?;
    if tag == VERSION {
        tbs = rest;
    }
    for _ in 0..5 {
        tbs = tlv(tbs)?.2;
    }
    let (tag, _, rest) = tlv(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    Some(&tbs[..tbs.len() - rest.len()])
}

/// One DER element at the start of `bytes`: (tag, contents, the bytes after it). Only
/// single-byte tags and definite lengths (as DER requires) are accepted.
fn tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::{X509Builder, X509NameBuilder};

    /// A self-signed certificate made by OpenSSL, its key, and the SPKI DER OpenSSL itself
    /// encodes (the independent answer for [`subject_public_key_info`]).
    fn cert(nid: Option<Nid>) -> (Vec<u8>, PKey<Private>, Vec<u8>) {
        let key = match nid {
            Some(n) => {
                PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(n).unwrap()).unwrap())
                    .unwrap()
            }
            None => PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap(),
        };
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "broker.test").unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let der = b.build().to_der().unwrap();
        let spki = key.public_key_to_der().unwrap();
        (der, key, spki)
    }

    #[test]
    fn spki_matches_openssl() {
        for nid in [Some(Nid::X9_62_PRIME256V1), Some(Nid::SECP384R1), None] {
            let (der, _, spki) = cert(nid);
            assert_eq!(subject_public_key_info(&der), Some(spki.as_slice()));
        }
    }

    #[test]
    fn malformed_certificates_give_none() {
        let (der, _, _) = cert(Some(Nid::X9_62_PRIME256V1));
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            // Cut inside the TBS: no panic, and never a wrong SPKI.
            let r = subject_public_key_info(&der[..cut]);
            assert!(r.is_none(), "cut {cut}");
        }
        assert!(subject_public_key_info(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(subject_public_key_info(&[0x1f, 0x00]).is_none());
    }

    /// One TLS handshake plus a line each way between a rustls server with `cert`/`key` and
    /// a client pinned to `pin`.
    fn handshake(der: &[u8], key: &PKey<Private>, pin: [u8; PIN_LEN]) -> Result<String, String> {
        let server_cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(der.to_vec())],
            rustls::pki_types::PrivateKeyDer::try_from(key.private_key_to_pkcs8().unwrap())
                .unwrap(),
        )
        .unwrap();
        let (c, s) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let conn = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, s);
            let mut buf = [0u8; 5];
            if tls.read_exact(&mut buf).is_ok() {
                let _ = tls.write_all(b"pong!");
                let _ = tls.flush();
            }
        });
        let client_cfg = client_config(pin).unwrap();
        let name = ServerName::try_from("anything.example").unwrap();
        let conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, c);
        let result = (|| {
            tls.write_all(b"ping!").map_err(|e| e.to_string())?;
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        })();
        drop(tls);
        server.join().unwrap();
        result
    }

    #[test]
    fn only_the_pinned_key_is_accepted() {
        let (der, key, spki) = cert(Some(Nid::X9_62_PRIME256V1));
        let pin: [u8; PIN_LEN] = Sha256::digest(&spki).into();
        assert_eq!(handshake(&der, &key, pin).unwrap(), "pong!");
        let mut wrong = pin;
        wrong[0] ^= 1;
        let err = handshake(&der, &key, wrong).unwrap_err();
        assert!(err.contains("certificate"), "{err}");
        // Another key with the same name is refused as well.
        let (other_der, other_key, _) = cert(Some(Nid::X9_62_PRIME256V1));
        assert!(handshake(&other_der, &other_key, pin).is_err());
    }
}
