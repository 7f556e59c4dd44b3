//! The model's platform identity: its keys, its certificate chains and its version numbers.
//!
//! Everything is generated here; nothing is shared with AMD's roots, so evidence from the
//! model verifies only against a chain exported from the same identity. Like AMD, the SEV
//! ARK/ASK and the SNP ARK/ASK are the same two RSA-4096 key pairs. The CA private keys are
//! dropped after generation: a saved identity holds only the keys the firmware itself uses
//! (PDH, PEK, VCEK).

mod sev_chain;
mod snp_chain;
mod store;

use std::path::Path;

use openssl::ec::EcKey;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::X509;
use serde::{Deserialize, Serialize};
use sev::certs::sev::sev::Certificate as SevCert;
use sev::firmware::host::{Build, Version};

use crate::crypto::{self, CryptoError};

pub use sev_chain::SEV_CERT_LEN;

/// Errors creating, loading or saving a model identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// OpenSSL reported a failure.
    #[error("OpenSSL operation failed")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    /// A low-level cryptographic helper failed.
    #[error("cryptographic operation failed")]
    Crypto(#[from] CryptoError),
    /// Encoding or decoding a certificate with the `sev` crate failed.
    #[error("SEV certificate encoding failed")]
    Encoding(#[from] std::io::Error),
    /// Generation produced something unusable.
    #[error("identity generation failed: {reason}")]
    Generate { reason: &'static str },
    /// The stored SEV chain is malformed or does not verify.
    #[error("SEV certificate chain is invalid")]
    BadSevChain(#[source] std::io::Error),
    /// The stored SNP chain is malformed or does not verify.
    #[error("SNP certificate chain is invalid")]
    BadSnpChain(#[source] std::io::Error),
    /// A stored file is inconsistent or out of range.
    #[error("identity is invalid: {reason}")]
    Invalid { reason: &'static str },
    /// Reading or writing an identity file failed.
    #[error("cannot access identity file {}", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `identity.json` is malformed.
    #[error("identity.json is malformed")]
    Json(#[from] serde_json::Error),
    /// Saving would overwrite an existing identity.
    #[error("an identity already exists in {}", path.display())]
    AlreadyExists { path: std::path::PathBuf },
}

/// The legacy SEV platform version the model reports (PLATFORM_STATUS); it enters every
/// LAUNCH_MEASURE, so the guest owner must use the same values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SevPlatformVersion {
    pub api_major: u8,
    pub api_minor: u8,
    pub build: u8,
}

impl Default for SevPlatformVersion {
    fn default() -> Self {
        // A Milan-era SEV firmware.
        SevPlatformVersion {
            api_major: 1,
            api_minor: 55,
            build: 21,
        }
    }
}

impl SevPlatformVersion {
    /// The same version as the `sev` crate's `Build` (what `Session::verify` takes).
    pub fn build(&self) -> Build {
        Build {
            version: Version {
                major: self.api_major,
                minor: self.api_minor,
            },
            build: self.build,
        }
    }
}

/// An SNP TCB version in the Milan/Genoa layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcbVersion {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl TcbVersion {
    /// The 8-byte TCB_VERSION: `[BOOT_LOADER, TEE, 0, 0, 0, 0, SNP, MICROCODE]`.
    pub fn to_bytes(self) -> [u8; 8] {
        [
            self.bootloader,
            self.tee,
            0,
            0,
            0,
            0,
            self.snp,
            self.microcode,
        ]
    }
}

/// SNP firmware version (report CURRENT/COMMITTED fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpFirmwareVersion {
    pub major: u8,
    pub minor: u8,
    pub build: u8,
}

/// The SNP side of the platform: which CPU the model claims to be and its TCB.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpPlatform {
    /// CPUID family (extended + base); only 0x19 (Milan, Genoa) is modelled.
    pub family: u8,
    /// CPUID model (extended + base).
    pub model: u8,
    pub stepping: u8,
    /// The 64-byte CHIP_ID, also in the VCEK's hwID extension.
    #[serde(with = "hex64")]
    pub chip_id: [u8; 64],
    /// Current = committed = reported = launch TCB.
    pub tcb: TcbVersion,
    pub firmware: SnpFirmwareVersion,
}

impl SnpPlatform {
    /// A Milan B0 with a fresh random CHIP_ID.
    pub fn generate_milan() -> Result<Self, IdentityError> {
        let mut chip_id = [0u8; 64];
        openssl::rand::rand_bytes(&mut chip_id)?;
        Ok(SnpPlatform {
            family: 0x19,
            model: 0x01,
            stepping: 0x01,
            chip_id,
            // The TCB of a real Milan report (research/psp-model.md §5).
            tcb: TcbVersion {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 0x73,
            },
            firmware: SnpFirmwareVersion {
                major: 1,
                minor: 52,
                build: 4,
            },
        })
    }

    /// AMD's product name for the VCEK productName extension.
    pub fn product_name(&self) -> &'static str {
        if self.model <= 0x0F {
            "Milan-B0"
        } else {
            "Genoa-B1"
        }
    }

    /// CPUID Fn0000_0001 EAX (the secrets page FMS field).
    pub fn fms(&self) -> u32 {
        let base_family = u32::from(self.family.min(0xF));
        let ext_family = u32::from(self.family.saturating_sub(0xF));
        let model = u32::from(self.model);
        (ext_family << 20)
            | ((model >> 4) << 16)
            | (base_family << 8)
            | ((model & 0xF) << 4)
            | u32::from(self.stepping & 0xF)
    }

    fn validate(&self) -> Result<(), IdentityError> {
        // The sev crate identifies version 3 reports by family/model; only Milan and Genoa
        // share the TCB layout the model writes.
        let known = self.family == 0x19
            && (self.model <= 0x0F
                || (0x10..=0x1F).contains(&self.model)
                || (0xA0..=0xAF).contains(&self.model));
        if !known {
            return Err(IdentityError::Invalid {
                reason: "SNP platform must be a Milan or Genoa part",
            });
        }
        if self.chip_id.iter().all(|&b| b == 0) {
            return Err(IdentityError::Invalid {
                reason: "SNP CHIP_ID must not be zero",
            });
        }
        Ok(())
    }
}

mod hex64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 64];
        hex::decode_to_slice(text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// The model AMD-SP: its versions, certificate chains and firmware keys.
pub struct ModelIdentity {
    sev_version: SevPlatformVersion,
    snp: SnpPlatform,
    /// PDH‖PEK‖OCA‖CEK‖ASK‖ARK, verified.
    sev_chain: Vec<u8>,
    pdh_key: EcKey<Private>,
    pek_key: EcKey<Private>,
    snp_ark: X509,
    snp_ask: X509,
    vcek: X509,
    vcek_key: EcKey<Private>,
}

impl std::fmt::Debug for ModelIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelIdentity")
            .field("sev_version", &self.sev_version)
            .field("snp", &self.snp)
            .finish_non_exhaustive()
    }
}

impl ModelIdentity {
    /// Generates a fresh identity: a Milan-like platform with default versions.
    pub fn generate() -> Result<Self, IdentityError> {
        Self::generate_with(
            SevPlatformVersion::default(),
            SnpPlatform::generate_milan()?,
        )
    }

    /// Generates a fresh identity with the given platform description.
    pub fn generate_with(
        sev_version: SevPlatformVersion,
        snp: SnpPlatform,
    ) -> Result<Self, IdentityError> {
        snp.validate()?;
        let ark = PKey::from_rsa(Rsa::generate(4096)?)?;
        let ask = PKey::from_rsa(Rsa::generate(4096)?)?;
        let sev = sev_chain::generate(&ark, &ask)?;
        let (snp_ark, snp_ask) = snp_chain::ca_certificates(&ark, &ask)?;
        let group = crypto::p384()?;
        let vcek_key = EcKey::generate(&group)?;
        let vcek = snp_chain::vcek_certificate(&vcek_key, &ask, &snp_ask, &snp)?;
        Self::assemble(
            sev_version,
            snp,
            sev_chain::encode_chain(&sev.chain)?,
            sev.pdh,
            sev.pek,
            [snp_ark, snp_ask, vcek],
            vcek_key,
        )
    }

    /// Checks that the parts belong together and builds the identity.
    fn assemble(
        sev_version: SevPlatformVersion,
        snp: SnpPlatform,
        sev_chain: Vec<u8>,
        pdh_key: EcKey<Private>,
        pek_key: EcKey<Private>,
        [snp_ark, snp_ask, vcek]: [X509; 3],
        vcek_key: EcKey<Private>,
    ) -> Result<Self, IdentityError> {
        snp.validate()?;
        let chain = sev_chain::decode_chain(&sev_chain)?;
        check_sev_key(
            &chain.sev.pdh,
            &pdh_key,
            "PDH key does not match the PDH certificate",
        )?;
        check_sev_key(
            &chain.sev.pek,
            &pek_key,
            "PEK key does not match the PEK certificate",
        )?;
        let snp_chain = snp_chain_of(&snp_ark, &snp_ask, &vcek);
        sev::certs::snp::Verifiable::verify(&snp_chain).map_err(IdentityError::BadSnpChain)?;
        let vcek_public = vcek.public_key()?;
        let vcek_private = PKey::from_ec_key(vcek_key.clone())?;
        if !vcek_private.public_eq(&vcek_public) {
            return Err(IdentityError::Invalid {
                reason: "VCEK key does not match the VCEK certificate",
            });
        }
        Ok(ModelIdentity {
            sev_version,
            snp,
            sev_chain,
            pdh_key,
            pek_key,
            snp_ark,
            snp_ask,
            vcek,
            vcek_key,
        })
    }

    /// Loads an identity saved with [`ModelIdentity::save`], checking every part.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        store::load(dir)
    }

    /// Saves the identity into `dir` (created if missing); refuses to overwrite one.
    /// Private keys are written with mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        store::save(self, dir)
    }

    /// The SEV platform version (API major/minor, build) used in LAUNCH_MEASURE.
    pub fn sev_version(&self) -> SevPlatformVersion {
        self.sev_version
    }

    /// The SNP platform description (CPU, CHIP_ID, TCB, firmware version).
    pub fn snp_platform(&self) -> &SnpPlatform {
        &self.snp
    }

    /// The SEV chain encoded as PDH‖PEK‖OCA‖CEK‖ASK‖ARK (what the guest owner verifies).
    pub fn sev_chain_bytes(&self) -> &[u8] {
        &self.sev_chain
    }

    /// The SEV chain as the `sev` crate's type (PDH_CERT_EXPORT plus the CA chain).
    pub fn sev_chain(&self) -> Result<sev::certs::sev::Chain, IdentityError> {
        sev_chain::decode_chain(&self.sev_chain)
    }

    /// The PDH certificate (0x824 bytes).
    pub fn pdh_cert_bytes(&self) -> &[u8] {
        &self.sev_chain[..SEV_CERT_LEN]
    }

    /// The SNP chain (ARK, ASK, VCEK) as the `sev` crate's type.
    pub fn snp_chain(&self) -> sev::certs::snp::Chain {
        snp_chain_of(&self.snp_ark, &self.snp_ask, &self.vcek)
    }

    /// PEM of the SNP ARK.
    pub fn snp_ark_pem(&self) -> Result<Vec<u8>, IdentityError> {
        Ok(self.snp_ark.to_pem()?)
    }

    /// PEM of the SNP ASK.
    pub fn snp_ask_pem(&self) -> Result<Vec<u8>, IdentityError> {
        Ok(self.snp_ask.to_pem()?)
    }

    /// PEM of the VCEK.
    pub fn vcek_pem(&self) -> Result<Vec<u8>, IdentityError> {
        Ok(self.vcek.to_pem()?)
    }

    pub(crate) fn pdh_key(&self) -> &EcKey<Private> {
        &self.pdh_key
    }

    pub(crate) fn pek_key(&self) -> &EcKey<Private> {
        &self.pek_key
    }

    pub(crate) fn vcek_key(&self) -> &EcKey<Private> {
        &self.vcek_key
    }
}

/// The P-384 public key of an ECC SEV certificate, read from its little-endian fields.
pub(crate) fn sev_cert_public_key(
    cert: &[u8],
) -> Result<EcKey<openssl::pkey::Public>, CryptoError> {
    if cert.len() != SEV_CERT_LEN
        || u32::from_le_bytes([cert[0x10], cert[0x11], cert[0x12], cert[0x13]]) != 2
    {
        return Err(CryptoError::InvalidPoint);
    }
    crypto::p384_public_from_le(&cert[0x14..0x5C], &cert[0x5C..0xA4])
}

/// The `sev` crate chain (its tuple conversions take ASK before ARK; spell the fields out).
fn snp_chain_of(ark: &X509, ask: &X509, vcek: &X509) -> sev::certs::snp::Chain {
    sev::certs::snp::Chain {
        ca: sev::certs::snp::ca::Chain {
            ark: ark.clone().into(),
            ask: ask.clone().into(),
        },
        vek: vcek.clone().into(),
    }
}

fn check_sev_key(
    cert: &SevCert,
    key: &EcKey<Private>,
    what: &'static str,
) -> Result<(), IdentityError> {
    let bytes = sev_chain::cert_bytes(cert)?;
    let public = sev_cert_public_key(&bytes)?;
    let public = PKey::from_ec_key(public)?;
    if !PKey::from_ec_key(key.clone())?.public_eq(&public) {
        return Err(IdentityError::Invalid { reason: what });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::OnceLock;

    use sev::certs::snp::Verifiable as _;

    use super::*;

    pub(crate) fn cert_bytes(cert: &SevCert) -> Vec<u8> {
        sev_chain::cert_bytes(cert).unwrap()
    }

    /// One identity per test process: RSA-4096 generation is the slow part.
    pub(crate) fn shared() -> &'static ModelIdentity {
        static ID: OnceLock<ModelIdentity> = OnceLock::new();
        ID.get_or_init(|| ModelIdentity::generate().unwrap())
    }

    #[test]
    fn sev_chain_verifies_with_sev_crate() {
        let id = shared();
        let chain = id.sev_chain().unwrap();
        let pdh = sev::certs::sev::Verifiable::verify(&chain).unwrap();
        assert_eq!(sev_chain::cert_bytes(pdh).unwrap(), id.pdh_cert_bytes());
        // With AMD's CA certificates in place of the model's, the chain does not verify.
        use sev::parser::Decoder as _;
        for (ark, ask) in [
            (
                sev::certs::sev::builtin::milan::ARK,
                sev::certs::sev::builtin::milan::ASK,
            ),
            (
                sev::certs::sev::builtin::genoa::ARK,
                sev::certs::sev::builtin::genoa::ASK,
            ),
        ] {
            let mut amd = id.sev_chain().unwrap();
            amd.ca.ark = sev::certs::sev::ca::Certificate::decode(&mut &ark[..], ()).unwrap();
            amd.ca.ask = sev::certs::sev::ca::Certificate::decode(&mut &ask[..], ()).unwrap();
            assert!(sev::certs::sev::Verifiable::verify(&amd).is_err());
        }
    }

    #[test]
    fn snp_chain_verifies_and_is_not_amds() {
        let id = shared();
        let chain = sev::certs::snp::Chain::from_pem(
            &id.snp_ark_pem().unwrap(),
            &id.snp_ask_pem().unwrap(),
            &id.vcek_pem().unwrap(),
        )
        .unwrap();
        (&chain).verify().unwrap();
        for (ark, ask) in [
            (
                sev::certs::snp::builtin::milan::ark().unwrap(),
                sev::certs::snp::builtin::milan::ask().unwrap(),
            ),
            (
                sev::certs::snp::builtin::genoa::ark().unwrap(),
                sev::certs::snp::builtin::genoa::ask().unwrap(),
            ),
        ] {
            let amd = sev::certs::snp::Chain {
                ca: sev::certs::snp::ca::Chain { ark, ask },
                vek: chain.vek.clone(),
            };
            assert!((&amd).verify().is_err());
        }
    }

    #[test]
    fn vcek_carries_tcb_and_chip_id_extensions() {
        let id = shared();
        let der = id.vcek.to_der().unwrap();
        let chip = id.snp.chip_id;
        // hwID: OCTET STRING of the 64-byte CHIP_ID inside the extension value.
        let mut needle = vec![0x04, 0x40];
        needle.extend_from_slice(&chip);
        assert!(der.windows(needle.len()).any(|w| w == needle.as_slice()));
        let text = String::from_utf8_lossy(&id.vcek.to_text().unwrap()).to_string();
        assert!(text.contains("1.3.6.1.4.1.3704.1.3.8"), "{text}");
    }

    #[test]
    fn milan_fms_matches_cpuid_encoding() {
        let p = shared().snp_platform();
        assert_eq!(p.fms(), 0x00A0_0F11);
    }

    #[test]
    fn platform_validation_rejects_unknown_parts() {
        let mut p = SnpPlatform::generate_milan().unwrap();
        p.family = 0x17;
        assert!(p.validate().is_err());
        let mut p = SnpPlatform::generate_milan().unwrap();
        p.chip_id = [0; 64];
        assert!(p.validate().is_err());
    }

    #[test]
    fn sev_cert_public_key_rejects_malformed_certs() {
        let id = shared();
        let mut pdh = id.pdh_cert_bytes().to_vec();
        assert!(sev_cert_public_key(&pdh).is_ok());
        assert!(sev_cert_public_key(&pdh[..100]).is_err());
        pdh[0x10] = 1; // P-256 is not what the model speaks
        assert!(sev_cert_public_key(&pdh).is_err());
    }
}
