//! The model's legacy SEV certificate chain: ARK → ASK → CEK, OCA → PEK ← CEK, PEK → PDH.
//!
//! ARK and ASK use AMD's own RSA certificate format (the `sev` crate can parse but not create
//! it); CEK, OCA, PEK and PDH are ordinary SEV v1 certificates made with the `sev` crate.
//! Layouts: `research/sev-crate.md` §4.1.

use openssl::ec::EcKey;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rand::rand_bytes;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer};
use sev::certs::sev::sev::{Certificate as SevCert, Chain as SevPlatformChain, Usage as SevUsage};
use sev::certs::sev::{ca, Chain, Signer as _, Verifiable};
use sev::parser::{Decoder, Encoder};

use super::IdentityError;

/// Bytes of one SEV v1 certificate.
pub const SEV_CERT_LEN: usize = 0x824;
/// End of the signed body of a SEV v1 certificate.
const SEV_CERT_BODY_END: usize = 0x414;
/// Usage code of AMD's ARK and ASK certificates.
const USAGE_ARK: u32 = 0x0000;
const USAGE_ASK: u32 = 0x0013;
/// Signature algorithm code for RSA-PSS with SHA-384.
const ALGO_RSA_SHA384: u32 = 0x101;
/// Bytes of one RSA-4096 integer field.
const RSA4096_LEN: usize = 512;

/// What generating the SEV chain yields: the chain and the private keys the model keeps.
pub struct SevChainKeys {
    pub chain: Chain,
    pub pdh: EcKey<Private>,
    pub pek: EcKey<Private>,
}

/// RSA-PSS (salt length = digest length) SHA-384 signature, big-endian, as AMD signs.
fn rsa_pss_sha384(key: &PKey<Private>, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let mut signer = Signer::new(MessageDigest::sha384(), key)?;
    signer.set_rsa_padding(Padding::PKCS1_PSS)?;
    signer.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
    signer.update(message)?;
    Ok(signer.sign_to_vec()?)
}

/// Writes a big-endian integer little-endian into a zero-filled field.
fn put_le(field: &mut [u8], be: &[u8]) -> Result<(), IdentityError> {
    if be.len() > field.len() {
        return Err(IdentityError::Generate {
            reason: "integer does not fit its field",
        });
    }
    for (dst, src) in field.iter_mut().zip(be.iter().rev()) {
        *dst = *src;
    }
    Ok(())
}

/// Builds an AMD-format RSA-4096 CA certificate (ARK or ASK) for `subject`, signed by `signer`.
fn ca_certificate(
    kid: [u8; 16],
    sid: [u8; 16],
    usage: u32,
    subject: &PKey<Private>,
    signer: &PKey<Private>,
) -> Result<ca::Certificate, IdentityError> {
    let rsa = subject.rsa()?;
    let mut bytes = Vec::with_capacity(0x40 + 3 * RSA4096_LEN);
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&kid);
    bytes.extend_from_slice(&sid);
    bytes.extend_from_slice(&usage.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 16]);
    bytes.extend_from_slice(&4096u32.to_le_bytes());
    bytes.extend_from_slice(&4096u32.to_le_bytes());
    let mut field = [0u8; RSA4096_LEN];
    put_le(&mut field, &rsa.e().to_vec())?;
    bytes.extend_from_slice(&field);
    field = [0u8; RSA4096_LEN];
    put_le(&mut field, &rsa.n().to_vec())?;
    bytes.extend_from_slice(&field);
    let sig = rsa_pss_sha384(signer, &bytes)?;
    field = [0u8; RSA4096_LEN];
    put_le(&mut field, &sig)?;
    bytes.extend_from_slice(&field);
    Ok(ca::Certificate::decode(&mut &bytes[..], ())?)
}

fn encode_sev_cert(cert: &SevCert) -> Result<Vec<u8>, IdentityError> {
    let mut out = Vec::with_capacity(SEV_CERT_LEN);
    cert.encode(&mut out, ())?;
    Ok(out)
}

/// Puts the ASK's RSA signature into the CEK's first signature slot.
fn sign_cek_with_ask(cek: &SevCert, ask: &PKey<Private>) -> Result<SevCert, IdentityError> {
    let mut bytes = encode_sev_cert(cek)?;
    let sig = rsa_pss_sha384(ask, &bytes[..SEV_CERT_BODY_END])?;
    bytes[0x414..0x418].copy_from_slice(&USAGE_ASK.to_le_bytes());
    bytes[0x418..0x41C].copy_from_slice(&ALGO_RSA_SHA384.to_le_bytes());
    put_le(&mut bytes[0x41C..0x41C + RSA4096_LEN], &sig)?;
    Ok(SevCert::decode(&mut &bytes[..], ())?)
}

/// The OpenSSL key behind a `sev` crate private key.
fn ec_private(
    key: &sev::certs::sev::PrivateKey<SevUsage>,
) -> Result<EcKey<Private>, IdentityError> {
    let mut der = zeroize::Zeroizing::new(Vec::new());
    key.encode(&mut *der, ())?;
    Ok(PKey::private_key_from_der(&der)?.ec_key()?)
}

/// Generates the whole SEV chain under the given ARK and ASK keys (RSA-4096).
pub fn generate(ark: &PKey<Private>, ask: &PKey<Private>) -> Result<SevChainKeys, IdentityError> {
    let mut ark_kid = [0u8; 16];
    let mut ask_kid = [0u8; 16];
    rand_bytes(&mut ark_kid)?;
    rand_bytes(&mut ask_kid)?;
    let ark_cert = ca_certificate(ark_kid, ark_kid, USAGE_ARK, ark, ark)?;
    let ask_cert = ca_certificate(ask_kid, ark_kid, USAGE_ASK, ask, ark)?;

    let (cek, cek_prv) = SevCert::generate(SevUsage::CEK)?;
    let cek = sign_cek_with_ask(&cek, ask)?;
    let (mut oca, oca_prv) = SevCert::generate(SevUsage::OCA)?;
    oca_prv.sign(&mut oca)?;
    let (mut pek, pek_prv) = SevCert::generate(SevUsage::PEK)?;
    oca_prv.sign(&mut pek)?;
    cek_prv.sign(&mut pek)?;
    let (mut pdh, pdh_prv) = SevCert::generate(SevUsage::PDH)?;
    pek_prv.sign(&mut pdh)?;

    let chain = Chain {
        ca: ca::Chain {
            ask: ask_cert,
            ark: ark_cert,
        },
        sev: SevPlatformChain { pdh, pek, oca, cek },
    };
    (&chain).verify().map_err(|_| IdentityError::Generate {
        reason: "generated SEV chain does not verify",
    })?;
    Ok(SevChainKeys {
        chain,
        pdh: ec_private(&pdh_prv)?,
        pek: ec_private(&pek_prv)?,
    })
}

/// Encodes a chain as PDH‖PEK‖OCA‖CEK‖ASK‖ARK (the `sev` crate's `Chain` encoding).
pub fn encode_chain(chain: &Chain) -> Result<Vec<u8>, IdentityError> {
    let mut out = Vec::new();
    chain.encode(&mut out, ())?;
    Ok(out)
}

/// Decodes and verifies an encoded chain, rejecting trailing bytes.
pub fn decode_chain(bytes: &[u8]) -> Result<Chain, IdentityError> {
    let mut reader = bytes;
    let chain = Chain::decode(&mut reader, ()).map_err(IdentityError::BadSevChain)?;
    if !reader.is_empty() {
        return Err(IdentityError::Invalid {
            reason: "SEV chain file has trailing bytes",
        });
    }
    (&chain).verify().map_err(IdentityError::BadSevChain)?;
    Ok(chain)
}

/// The encoded bytes of one SEV v1 certificate.
pub fn cert_bytes(cert: &SevCert) -> Result<Vec<u8>, IdentityError> {
    encode_sev_cert(cert)
}
