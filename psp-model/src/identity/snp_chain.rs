//! The model's SNP certificate chain: ARK (self-signed) → ASK → VCEK, as X.509.
//!
//! Shaped like AMD's KDS certificates: RSA-4096 ARK and ASK, a P-384 VCEK carrying AMD's
//! TCB and hardware-id extensions (OIDs under 1.3.6.1.4.1.3704.1) so that verifiers which
//! compare the report's REPORTED_TCB and CHIP_ID with the VCEK find them consistent.
//! Difference from AMD: certificate signatures are RSA PKCS#1 v1.5 with SHA-384 rather than
//! RSASSA-PSS, because the `openssl` crate cannot sign X.509 with PSS; the `sev` crate's chain
//! verification accepts any signature algorithm.

use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::EcKey;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectKeyIdentifier};
use openssl::x509::{X509Builder, X509Extension, X509Name, X509NameBuilder, X509NameRef, X509};

use super::{IdentityError, SnpPlatform};

/// Validity of the model certificates: 25 years, so a saved identity outlives its users.
const VALIDITY_DAYS: u32 = 25 * 365;
const ORGANIZATION: &str = "krun-sev PSP model (not AMD)";

fn name(common_name: &str) -> Result<X509Name, IdentityError> {
    let mut b = X509NameBuilder::new()?;
    b.append_entry_by_text("O", ORGANIZATION)?;
    b.append_entry_by_text("OU", "Engineering")?;
    b.append_entry_by_text("CN", common_name)?;
    Ok(b.build())
}

fn builder(
    subject: &X509NameRef,
    issuer: &X509NameRef,
    key: &PKey<impl openssl::pkey::HasPublic>,
) -> Result<X509Builder, IdentityError> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial: Asn1Integer = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(issuer)?;
    b.set_pubkey(key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(VALIDITY_DAYS)?)?;
    Ok(b)
}

fn ca_extensions(b: &mut X509Builder) -> Result<(), IdentityError> {
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    Ok(())
}

/// The self-signed ARK and the ASK it signs.
pub fn ca_certificates(
    ark: &PKey<Private>,
    ask: &PKey<Private>,
) -> Result<(X509, X509), IdentityError> {
    let ark_name = name("ARK-Milan-model")?;
    let mut b = builder(&ark_name, &ark_name, ark)?;
    ca_extensions(&mut b)?;
    b.sign(ark, MessageDigest::sha384())?;
    let ark_cert = b.build();

    let ask_name = name("SEV-Milan-model")?;
    let mut b = builder(&ask_name, &ark_name, ask)?;
    ca_extensions(&mut b)?;
    b.sign(ark, MessageDigest::sha384())?;
    Ok((ark_cert, b.build()))
}

/// DER of a small non-negative INTEGER.
fn der_u8_integer(v: u8) -> Vec<u8> {
    if v < 0x80 {
        vec![0x02, 0x01, v]
    } else {
        vec![0x02, 0x02, 0x00, v]
    }
}

/// DER TLV with a short or one-byte long length (contents are under 256 bytes here).
fn der_tlv(tag: u8, contents: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let len = u8::try_from(contents.len()).map_err(|_| IdentityError::Generate {
        reason: "DER value too long",
    })?;
    let mut out = vec![tag];
    if len >= 0x80 {
        out.push(0x81);
    }
    out.push(len);
    out.extend_from_slice(contents);
    Ok(out)
}

fn amd_extension(oid: &str, der: &[u8]) -> Result<X509Extension, IdentityError> {
    let oid = Asn1Object::from_str(oid)?;
    let value = Asn1OctetString::new_from_bytes(der)?;
    Ok(X509Extension::new_from_der(&oid, false, &value)?)
}

/// The VCEK certificate for `vcek`, signed by the ASK, with AMD's VCEK extensions.
pub fn vcek_certificate(
    vcek: &EcKey<Private>,
    ask: &PKey<Private>,
    ask_cert: &X509,
    platform: &SnpPlatform,
) -> Result<X509, IdentityError> {
    let key = PKey::from_ec_key(vcek.clone())?;
    let subject = name("SEV-VCEK-model")?;
    let mut b = builder(&subject, ask_cert.subject_name(), &key)?;
    let tcb = &platform.tcb;
    let base = "1.3.6.1.4.1.3704.1";
    b.append_extension(amd_extension(&format!("{base}.1"), &der_u8_integer(1))?)?;
    b.append_extension(amd_extension(
        &format!("{base}.2"),
        &der_tlv(0x16, platform.product_name().as_bytes())?,
    )?)?;
    let spl = [
        (1, tcb.bootloader),
        (2, tcb.tee),
        (3, tcb.snp),
        (4, 0),
        (5, 0),
        (6, 0),
        (7, 0),
        (8, tcb.microcode),
    ];
    for (index, value) in spl {
        b.append_extension(amd_extension(
            &format!("{base}.3.{index}"),
            &der_u8_integer(value),
        )?)?;
    }
    b.append_extension(amd_extension(
        &format!("{base}.4"),
        &der_tlv(0x04, &platform.chip_id)?,
    )?)?;
    b.sign(ask, MessageDigest::sha384())?;
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_helpers_encode_as_asn1_requires() {
        assert_eq!(der_u8_integer(8), [0x02, 0x01, 0x08]);
        assert_eq!(der_u8_integer(0xd3), [0x02, 0x02, 0x00, 0xd3]);
        let long = der_tlv(0x04, &[0u8; 64]).unwrap();
        assert_eq!(&long[..2], &[0x04, 0x40]);
        let longer = der_tlv(0x04, &[0u8; 200]).unwrap();
        assert_eq!(&longer[..3], &[0x04, 0x81, 200]);
        assert!(der_tlv(0x04, &[0u8; 300]).is_err());
    }
}
