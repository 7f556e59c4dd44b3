//! A fake SNP platform: a P-384 ARK → ASK → VCEK chain made here and attestation reports
//! signed by that VCEK (sev-crate.md §4.5). The PSP model crate is meant to replace it.

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::BasicConstraints;
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use rand::RngCore;
use sev::firmware::guest::{AttestationReport, GuestPolicy};
use sev::firmware::host::{CertTableEntry, CertType};
use sev::parser::ByteParser;

use super::TestkitError;
use crate::verify_snp::TrustRoot;

/// The fake platform's keys and certificates.
#[derive(Debug)]
pub struct FakeSnp {
    ark: X509,
    ask: X509,
    vcek: X509,
    vcek_key: PKey<Private>,
    chip_id: [u8; 64],
}

fn p384() -> Result<PKey<Private>, TestkitError> {
    let group = EcGroup::from_curve_name(Nid::SECP384R1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    serial: u32,
) -> Result<X509, TestkitError> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", cn)?;
    let name = name.build();
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let serial = BigNum::from_u32(serial)?.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_pubkey(key)?;
    let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(3650)?);
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    if issuer.is_none() || cn != "SEV-VCEK" {
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    }
    match issuer {
        Some((issuer, issuer_key)) => {
            b.set_issuer_name(issuer.subject_name())?;
            b.sign(issuer_key, MessageDigest::sha384())?;
        }
        None => {
            b.set_issuer_name(&name)?;
            b.sign(key, MessageDigest::sha384())?;
        }
    }
    Ok(b.build())
}

impl FakeSnp {
    /// A new platform with fresh keys and a random chip id.
    pub fn new() -> Result<Self, TestkitError> {
        let ark_key = p384()?;
        let ask_key = p384()?;
        let vcek_key = p384()?;
        let ark = cert("ARK-Fake", &ark_key, None, 1)?;
        let ask = cert("SEV-Fake", &ask_key, Some((&ark, &ark_key)), 2)?;
        let vcek = cert("SEV-VCEK", &vcek_key, Some((&ask, &ask_key)), 3)?;
        let mut chip_id = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut chip_id);
        Ok(FakeSnp {
            ark,
            ask,
            vcek,
            vcek_key,
            chip_id,
        })
    }

    /// The root to configure in a broker (ARK and ASK).
    pub fn trust_root(&self) -> TrustRoot {
        TrustRoot {
            name: "fake".into(),
            ark: self.ark.clone(),
            ask: Some(self.ask.clone()),
        }
    }

    /// ARK ‖ ASK as PEM, for `krun-kbs --trust-root`.
    pub fn trust_root_pem(&self) -> Result<Vec<u8>, TestkitError> {
        Ok([self.ark.to_pem()?, self.ask.to_pem()?].concat())
    }

    pub fn vcek_der(&self) -> Vec<u8> {
        self.vcek.to_der().unwrap_or_default()
    }

    pub fn chip_id(&self) -> [u8; 64] {
        self.chip_id
    }

    /// The extended-report certificate table (VCEK only).
    pub fn cert_table(&self) -> Vec<CertTableEntry> {
        vec![CertTableEntry {
            cert_type: CertType::VCEK,
            data: self.vcek_der(),
        }]
    }

    /// A signed version-3 (Milan) report.
    pub fn report(
        &self,
        report_data: [u8; 64],
        measurement: [u8; 48],
        policy: u64,
    ) -> Result<AttestationReport, TestkitError> {
        let mut r = AttestationReport {
            version: 3,
            cpuid_fam_id: Some(0x19),
            cpuid_mod_id: Some(0x01),
            cpuid_step: Some(1),
            policy: GuestPolicy(policy),
            sig_algo: 1,
            report_data,
            measurement,
            chip_id: self.chip_id,
            report_id_ma: [0xff; 32],
            ..Default::default()
        };
        r.reported_tcb.snp = 8;
        r.reported_tcb.microcode = 0x73;
        r.reported_tcb.bootloader = 3;
        r.current_tcb = r.reported_tcb;
        let bytes = r.to_bytes()?;
        let digest = openssl::sha::sha384(&bytes[..0x2a0]);
        let sig = EcdsaSig::sign(&digest, self.vcek_key.ec_key()?.as_ref())?;
        r.signature = sig.into();
        Ok(r)
    }

    /// The raw 1184-byte report, as /dev/sev-guest returns it.
    pub fn report_bytes(
        &self,
        report_data: [u8; 64],
        measurement: [u8; 48],
        policy: u64,
    ) -> Result<Vec<u8>, TestkitError> {
        Ok(self
            .report(report_data, measurement, policy)?
            .to_bytes()?
            .to_vec())
    }
}
