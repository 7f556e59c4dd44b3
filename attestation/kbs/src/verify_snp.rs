//! SEV-SNP evidence verification: ARK → ASK → VCEK chain to a trusted root, report signature,
//! report-data binding, and the workload's policy requirements.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::x509::X509;
use sev::certs::snp::Verifiable;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, CertType};

use crate::db::{MinTcb, SnpRequirements};
use crate::refusal::Refusal;
use crate::verified::{self, VerifiedCache};

/// Errors loading trust configuration.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the trust root file")]
    Read(#[source] std::io::Error),
    #[error("trust root file holds no PEM certificate")]
    Pem(#[source] openssl::error::ErrorStack),
    #[error("trust root file has no self-signed ARK")]
    NoArk,
    #[error("ASK in the trust root file is not signed by its ARK")]
    AskNotSigned,
    #[error("built-in AMD certificate cannot be loaded")]
    Builtin(#[source] openssl::error::ErrorStack),
}

/// A trusted ARK, with its ASK when known.
#[derive(Debug, Clone)]
pub struct TrustRoot {
    pub name: String,
    pub ark: X509,
    pub ask: Option<X509>,
}

fn signed_by(cert: &X509, signer: &X509) -> bool {
    signer
        .public_key()
        .and_then(|k| cert.verify(&k))
        .unwrap_or(false)
}

impl TrustRoot {
    /// Loads a PEM file holding an ARK (self-signed) and optionally its ASK, in any order.
    pub fn from_pem_file(path: &Path) -> Result<Self, TrustError> {
        let pem = std::fs::read(path).map_err(TrustError::Read)?;
        Self::from_pem(&path.display().to_string(), &pem)
    }

    pub fn from_pem(name: &str, pem: &[u8]) -> Result<Self, TrustError> {
        let certs = X509::stack_from_pem(pem).map_err(TrustError::Pem)?;
        let (arks, rest): (Vec<X509>, Vec<X509>) = certs.into_iter().partition(|c| signed_by(c, c));
        let ark = arks.into_iter().next().ok_or(TrustError::NoArk)?;
        let ask = rest.into_iter().next();
        if let Some(ask) = &ask {
            if !signed_by(ask, &ark) {
                return Err(TrustError::AskNotSigned);
            }
        }
        Ok(TrustRoot {
            name: name.to_string(),
            ark,
            ask,
        })
    }

    /// AMD's Milan, Genoa and Turin roots from the sev crate.
    pub fn builtin() -> Result<Vec<Self>, TrustError> {
        use sev::certs::snp::builtin::{genoa, milan, turin};
        let pairs: [(&str, &[u8], &[u8]); 3] = [
            ("amd-milan", milan::ARK, milan::ASK),
            ("amd-genoa", genoa::ARK, genoa::ASK),
            ("amd-turin", turin::ARK, turin::ASK),
        ];
        pairs
            .iter()
            .map(|(name, ark, ask)| {
                Ok(TrustRoot {
                    name: (*name).to_string(),
                    ark: X509::from_pem(ark).map_err(TrustError::Builtin)?,
                    ask: Some(X509::from_pem(ask).map_err(TrustError::Builtin)?),
                })
            })
            .collect()
    }
}

/// Verifies SNP reports against configured roots and a local VCEK directory. Certificate
/// signatures that verified (ARK → ASK, ASK → VCEK) are remembered by the exact bytes of both
/// certificates and the roots in effect; the report's own signature is checked every time.
#[derive(Debug, Clone)]
pub struct SnpVerifier {
    roots: Vec<TrustRoot>,
    vcek_dir: Option<PathBuf>,
    /// SHA-256 over the roots' certificates: part of every cache key.
    fingerprint: verified::Key,
    edges: Arc<VerifiedCache<()>>,
}

fn cert_from_bytes(data: &[u8]) -> Option<X509> {
    X509::from_der(data).or_else(|_| X509::from_pem(data)).ok()
}

fn refuse(kind: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal::unauthorized(kind, detail)
}

impl SnpVerifier {
    pub fn new(roots: Vec<TrustRoot>, vcek_dir: Option<PathBuf>) -> Self {
        let ders: Vec<Vec<u8>> = roots
            .iter()
            .flat_map(|r| std::iter::once(&r.ark).chain(r.ask.as_ref()))
            .map(|c| c.to_der().unwrap_or_default())
            .collect();
        let parts: Vec<&[u8]> = ders.iter().map(Vec::as_slice).collect();
        SnpVerifier {
            fingerprint: verified::key(&parts),
            roots,
            vcek_dir,
            edges: Arc::default(),
        }
    }

    /// These roots, remembering verified signatures in `other`'s cache (whose keys name the
    /// roots they were verified under).
    pub fn sharing_cache(mut self, other: &SnpVerifier) -> Self {
        self.edges = other.edges.clone();
        self
    }

    /// Number of verified certificate signatures remembered.
    pub fn remembered(&self) -> usize {
        self.edges.len()
    }

    /// [`signed_by`], remembered when it holds.
    fn signed_by_cached(&self, cert: &X509, signer: &X509) -> bool {
        let (Ok(c), Ok(s)) = (cert.to_der(), signer.to_der()) else {
            return false;
        };
        let key = verified::key(&[&self.fingerprint, &s, &c]);
        if self.edges.get(&key).is_some() {
            return true;
        }
        let ok = signed_by(cert, signer);
        if ok {
            self.edges.insert(key, ());
        }
        ok
    }

    /// VCEK files named by chip id: `<hex of 64-byte CHIP_ID>.{der,pem,crt}`, or for Turin
    /// parts (only 8 id bytes) `<hex of the first 8 bytes>.*`.
    fn vceks_from_dir(&self, chip_id: &[u8; 64]) -> Vec<X509> {
        let Some(dir) = &self.vcek_dir else {
            return Vec::new();
        };
        let mut names = vec![hex::encode(chip_id)];
        if chip_id[8..].iter().all(|&b| b == 0) {
            names.push(hex::encode(&chip_id[..8]));
        }
        let mut out = Vec::new();
        for name in names {
            for ext in ["der", "pem", "crt"] {
                let path = dir.join(format!("{name}.{ext}"));
                if let Ok(bytes) = std::fs::read(&path) {
                    if let Some(c) = cert_from_bytes(&bytes) {
                        out.push(c);
                    }
                }
            }
        }
        out
    }

    /// Checks everything that does not depend on the workload: signer, chain, signature,
    /// binding. Returns the parsed report.
    pub fn verify_report(
        &self,
        report: &AttestationReport,
        evidence_certs: &[CertTableEntry],
        expected_report_data: &[u8; 64],
    ) -> Result<(), Refusal> {
        if report.sig_algo != 1 {
            return Err(refuse(
                "SnpSignature",
                "report signature algorithm is not ECDSA P-384",
            ));
        }
        if report.key_info.signing_key() != 0 {
            return Err(refuse("SnpSignature", "report is not signed by a VCEK"));
        }
        if !openssl::memcmp::eq(&report.report_data, expected_report_data) {
            return Err(refuse(
                "SnpBinding",
                "report data does not bind the nonce and TEE key",
            ));
        }
        let of_type = |t: CertType| {
            evidence_certs
                .iter()
                .filter(move |e| e.cert_type == t)
                .filter_map(|e| cert_from_bytes(&e.data))
        };
        let mut vceks: Vec<X509> = of_type(CertType::VCEK).collect();
        vceks.extend(self.vceks_from_dir(&report.chip_id));
        if vceks.is_empty() {
            return Err(refuse("SnpCertChain", "no VCEK for this chip"));
        }
        let evidence_asks: Vec<X509> = of_type(CertType::ASK).collect();
        let mut chained = false;
        for root in &self.roots {
            let asks = root.ask.iter().chain(evidence_asks.iter());
            for ask in asks.filter(|ask| self.signed_by_cached(ask, &root.ark)) {
                for vcek in vceks.iter().filter(|v| self.signed_by_cached(v, ask)) {
                    chained = true;
                    let cert = sev::certs::snp::Certificate::from(vcek.clone());
                    if (&cert, report).verify().is_ok() {
                        return Ok(());
                    }
                }
            }
        }
        if chained {
            Err(refuse("SnpSignature", "report signature does not verify"))
        } else {
            Err(refuse(
                "SnpCertChain",
                "VCEK does not chain to a trusted root",
            ))
        }
    }
}

/// Checks a report against one workload's requirements; `default_min_tcb` (the broker's
/// `--min-tcb`) applies when the workload has no minimum TCB of its own.
pub fn check_requirements(
    report: &AttestationReport,
    req: &SnpRequirements,
    default_min_tcb: MinTcb,
) -> Result<(), Refusal> {
    if report.version < req.min_report_version {
        return Err(refuse(
            "SnpPolicy",
            format!("report version {} is too old", report.version),
        ));
    }
    if report.policy.debug_allowed() && !req.allow_debug {
        return Err(refuse("SnpPolicy", "guest policy allows debugging"));
    }
    if report.policy.migrate_ma_allowed() && !req.allow_migration_agent {
        return Err(refuse("SnpPolicy", "guest policy allows a migration agent"));
    }
    if report.policy.smt_allowed() && req.forbid_smt {
        return Err(refuse(
            "SnpPolicy",
            "guest policy allows SMT, which this workload forbids",
        ));
    }
    if report.vmpl > req.max_vmpl {
        return Err(refuse(
            "SnpPolicy",
            format!("report is from VMPL {}", report.vmpl),
        ));
    }
    if let Some(want) = &req.host_data {
        if !openssl::memcmp::eq(&report.host_data, &want.0) {
            return Err(refuse(
                "SnpHostData",
                "report HOST_DATA does not match the registration",
            ));
        }
    }
    // Each component on its own: a TCB is only as new as its oldest part. 0:0:0:0 accepts
    // every reported TCB.
    let tcb = &report.reported_tcb;
    let min = req.min_tcb.unwrap_or(default_min_tcb);
    if tcb.bootloader < min.bootloader
        || tcb.tee < min.tee
        || tcb.snp < min.snp
        || tcb.microcode < min.microcode
    {
        let reported = MinTcb {
            bootloader: tcb.bootloader,
            tee: tcb.tee,
            snp: tcb.snp,
            microcode: tcb.microcode,
        };
        return Err(refuse(
            "SnpTcb",
            format!(
                "reported TCB {reported} (bootloader:tee:snp:microcode) is below the minimum {min}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::snp::FakeSnp;

    #[test]
    fn builtin_roots_load_and_are_self_signed() {
        let roots = TrustRoot::builtin().unwrap();
        assert_eq!(roots.len(), 3);
        for r in &roots {
            assert!(signed_by(&r.ark, &r.ark), "{}", r.name);
            assert!(signed_by(r.ask.as_ref().unwrap(), &r.ark), "{}", r.name);
        }
    }

    #[test]
    fn fake_chain_verifies_only_when_its_root_is_trusted() {
        let fake = FakeSnp::new().unwrap();
        let rd = [7u8; 64];
        let report = fake.report(rd, [1; 48], 0x30000).unwrap();
        let certs = fake.cert_table();
        let trusted = SnpVerifier::new(vec![fake.trust_root()], None);
        trusted.verify_report(&report, &certs, &rd).unwrap();
        // AMD roots only: refused.
        let amd = SnpVerifier::new(TrustRoot::builtin().unwrap(), None);
        assert_eq!(
            amd.verify_report(&report, &certs, &rd).unwrap_err().kind,
            "SnpCertChain"
        );
        // Wrong binding.
        assert_eq!(
            trusted
                .verify_report(&report, &certs, &[8; 64])
                .unwrap_err()
                .kind,
            "SnpBinding"
        );
        // Tampered report (measurement changed after signing).
        let mut bad = report;
        bad.measurement[0] ^= 1;
        assert_eq!(
            trusted.verify_report(&bad, &certs, &rd).unwrap_err().kind,
            "SnpSignature"
        );
        // No VCEK anywhere.
        assert_eq!(
            trusted.verify_report(&report, &[], &rd).unwrap_err().kind,
            "SnpCertChain"
        );
    }

    #[test]
    fn remembered_signatures_serve_only_the_same_certificates_under_the_same_roots() {
        let fake = FakeSnp::new().unwrap();
        let other = FakeSnp::new().unwrap();
        let rd = [7u8; 64];
        let report = fake.report(rd, [1; 48], 0x30000).unwrap();
        let certs = fake.cert_table();
        let trusted = SnpVerifier::new(vec![fake.trust_root()], None);
        trusted.verify_report(&report, &certs, &rd).unwrap();
        // ARK -> ASK and ASK -> VCEK.
        assert_eq!(trusted.remembered(), 2);
        trusted.verify_report(&report, &certs, &rd).unwrap();
        assert_eq!(
            trusted.remembered(),
            2,
            "second report served from the cache"
        );
        // The report's own signature is still checked with everything remembered.
        let mut bad = report;
        bad.measurement[0] ^= 1;
        assert_eq!(
            trusted.verify_report(&bad, &certs, &rd).unwrap_err().kind,
            "SnpSignature"
        );
        // Same cache, the root removed: refused.
        let amd = SnpVerifier::new(TrustRoot::builtin().unwrap(), None).sharing_cache(&trusted);
        assert_eq!(
            amd.verify_report(&report, &certs, &rd).unwrap_err().kind,
            "SnpCertChain"
        );
        // Same cache, the roots extended: the remembered results are not used, the chain is
        // verified again under the new set (and holds).
        let both = SnpVerifier::new(vec![fake.trust_root(), other.trust_root()], None)
            .sharing_cache(&trusted);
        let before = trusted.remembered();
        both.verify_report(&report, &certs, &rd).unwrap();
        assert_eq!(trusted.remembered(), before + 2);
        // A changed chain: another platform's VCEK in place of this one's.
        let swapped: Vec<CertTableEntry> = certs
            .iter()
            .map(|e| {
                if e.cert_type == CertType::VCEK {
                    CertTableEntry::new(CertType::VCEK, other.vcek_der())
                } else {
                    e.clone()
                }
            })
            .collect();
        assert_eq!(
            trusted
                .verify_report(&report, &swapped, &rd)
                .unwrap_err()
                .kind,
            "SnpCertChain"
        );
        // A VCEK with one byte of its signature changed.
        let tampered: Vec<CertTableEntry> = certs
            .iter()
            .map(|e| {
                let mut data = e.data.clone();
                if e.cert_type == CertType::VCEK {
                    let n = data.len();
                    data[n - 8] ^= 1;
                }
                CertTableEntry::new(e.cert_type.clone(), data)
            })
            .collect();
        assert_eq!(
            trusted
                .verify_report(&report, &tampered, &rd)
                .unwrap_err()
                .kind,
            "SnpCertChain"
        );
    }

    #[test]
    fn vcek_is_found_in_directory_by_chip_id() {
        let fake = FakeSnp::new().unwrap();
        let rd = [1u8; 64];
        let report = fake.report(rd, [1; 48], 0x30000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path()
                .join(format!("{}.der", hex::encode(report.chip_id))),
            fake.vcek_der(),
        )
        .unwrap();
        let v = SnpVerifier::new(vec![fake.trust_root()], Some(dir.path().to_path_buf()));
        v.verify_report(&report, &[], &rd).unwrap();
    }

    #[test]
    fn requirements_refuse_debug_migration_vmpl_tcb_and_old_versions() {
        let fake = FakeSnp::new().unwrap();
        let ok = fake.report([0; 64], [1; 48], 0x30000).unwrap();
        let req = SnpRequirements::default();
        check_requirements(&ok, &req, MinTcb::default()).unwrap();
        let debug = fake.report([0; 64], [1; 48], 0x30000 | 1 << 19).unwrap();
        assert!(check_requirements(&debug, &req, MinTcb::default()).is_err());
        let allow = SnpRequirements {
            allow_debug: true,
            ..req
        };
        check_requirements(&debug, &allow, MinTcb::default()).unwrap();
        let ma = fake.report([0; 64], [1; 48], 0x30000 | 1 << 18).unwrap();
        assert!(check_requirements(&ma, &req, MinTcb::default()).is_err());
        // SMT (bit 16) is allowed unless the workload forbids it.
        let no_smt = SnpRequirements {
            forbid_smt: true,
            ..req
        };
        let err = check_requirements(&ok, &no_smt, MinTcb::default()).unwrap_err();
        assert!(err.detail.contains("allows SMT"), "{}", err.detail);
        let smt_off = fake.report([0; 64], [1; 48], 0x20000).unwrap();
        check_requirements(&smt_off, &no_smt, MinTcb::default()).unwrap();
        let mut vmpl = ok;
        vmpl.vmpl = 1;
        assert!(check_requirements(&vmpl, &req, MinTcb::default()).is_err());
        let snp99 = MinTcb {
            snp: 99,
            ..Default::default()
        };
        let high = SnpRequirements {
            min_tcb: Some(snp99),
            ..req
        };
        let err = check_requirements(&ok, &high, MinTcb::default()).unwrap_err();
        assert_eq!(err.kind, "SnpTcb");
        assert!(
            err.detail.contains("below the minimum 0:0:99:0"),
            "{}",
            err.detail
        );
        // The broker's default applies to a workload without a minimum of its own, and an
        // explicit 0:0:0:0 of the workload's replaces it (no minimum).
        assert_eq!(
            check_requirements(&ok, &req, snp99).unwrap_err().kind,
            "SnpTcb"
        );
        let none = SnpRequirements {
            min_tcb: Some(MinTcb::default()),
            ..req
        };
        check_requirements(&ok, &none, snp99).unwrap();
        let v5 = SnpRequirements {
            min_report_version: 5,
            ..req
        };
        assert!(check_requirements(&ok, &v5, MinTcb::default()).is_err());
        let bound = SnpRequirements {
            host_data: Some(crate::db::HostData([0x5a; 32])),
            ..req
        };
        assert_eq!(
            check_requirements(&ok, &bound, MinTcb::default())
                .unwrap_err()
                .kind,
            "SnpHostData"
        );
        let mut carries = ok;
        carries.host_data = [0x5a; 32];
        check_requirements(&carries, &bound, MinTcb::default()).unwrap();
        check_requirements(&carries, &req, MinTcb::default()).unwrap();
    }
}
