//! SNP ATTESTATION_REPORT: the 0x4A0-byte report, signed by the model VCEK exactly as AMD
//! signs it (ECDSA P-384 over SHA-384 of bytes [0, 0x2A0), r and s little-endian in 72-byte
//! fields). Layout: `research/psp-model.md` §5.
//!
//! Reserved bytes stay zero: the `sev` crate re-encodes a parsed report before checking its
//! signature, so any non-zero reserved byte would break verification.

use crate::crypto::{self, CryptoError};
use crate::identity::ModelIdentity;
use crate::snp_launch::{SnpGuest, SnpGuestState, PLATFORM_INFO};

/// Bytes of an attestation report.
pub const REPORT_LEN: usize = 0x4A0;
/// Bytes of REPORT_DATA.
pub const REPORT_DATA_LEN: usize = 64;
/// Bytes of a report request on the model's report service: REPORT_DATA ‖ u32 LE VMPL.
pub const REPORT_REQUEST_LEN: usize = REPORT_DATA_LEN + 4;

/// Report format version the model produces.
const REPORT_VERSION: u32 = 3;
/// SIGNATURE_ALGO: ECDSA P-384 with SHA-384.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// End of the signed part of the report.
const SIGNED_LEN: usize = 0x2A0;
/// Highest VMPL.
const MAX_VMPL: u32 = 3;

/// Firmware status codes of MSG_REPORT_RSP.
pub const STATUS_SUCCESS: u32 = 0;
pub const STATUS_INVALID_PARAMS: u32 = 0x16;

/// Errors requesting a report.
#[derive(Debug, thiserror::Error)]
pub enum SnpReportError {
    /// Reports exist only after SNP_LAUNCH_FINISH.
    #[error("guest is not running")]
    NotRunning,
    /// The requested VMPL is above 3.
    #[error("invalid VMPL")]
    InvalidVmpl,
    /// A report request has the wrong length.
    #[error("invalid report request length")]
    InvalidRequest,
    /// Signing failed.
    #[error("report signing failed")]
    Crypto(#[from] CryptoError),
}

impl SnpReportError {
    /// The MSG_REPORT_RSP status for this error.
    pub fn status(&self) -> u32 {
        match self {
            SnpReportError::InvalidVmpl | SnpReportError::InvalidRequest => STATUS_INVALID_PARAMS,
            // Not a guest error; the firmware has no better code.
            SnpReportError::NotRunning | SnpReportError::Crypto(_) => STATUS_INVALID_PARAMS,
        }
    }
}

fn put(report: &mut [u8], offset: usize, bytes: &[u8]) {
    report[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// Every field of an attestation report the model signs. [`SnpGuest::report`] fills it from
/// the launch; tests and `krun-sev broker-check` change single fields to make evidence a
/// broker must refuse (a debug policy, a VMPL above 0, an old report version, ...), signed
/// exactly like genuine reports by the identity's VCEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpReportFields {
    /// VERSION (the model emits 3).
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    /// CURRENT_TCB, REPORTED_TCB, COMMITTED_TCB and LAUNCH_TCB (all equal in the model).
    pub tcb: [u8; 8],
    pub platform_info: u64,
    pub key_info: u32,
    pub report_data: [u8; REPORT_DATA_LEN],
    /// MEASUREMENT (the launch digest).
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub report_id: [u8; 32],
    pub report_id_ma: [u8; 32],
    pub chip_id: [u8; 64],
}

impl SnpReportFields {
    /// The fields of a VMPL-0 report on `identity`'s platform for a guest launched with
    /// `measurement` and `policy`, without an ID block or migration agent.
    pub fn new(
        identity: &ModelIdentity,
        report_data: [u8; REPORT_DATA_LEN],
        measurement: [u8; 48],
        policy: u64,
    ) -> Self {
        let platform = identity.snp_platform();
        SnpReportFields {
            version: REPORT_VERSION,
            guest_svn: 0,
            policy,
            family_id: [0; 16],
            image_id: [0; 16],
            vmpl: 0,
            tcb: platform.tcb.to_bytes(),
            platform_info: PLATFORM_INFO,
            key_info: 0,
            report_data,
            measurement,
            host_data: [0; 32],
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            report_id: [0; 32],
            report_id_ma: [0xFF; 32], // no migration agent
            chip_id: platform.chip_id,
        }
    }
}

impl ModelIdentity {
    /// The report with `fields`, signed by this identity's VCEK (layout:
    /// `research/psp-model.md` §5). Nothing is checked: the caller chooses every field.
    pub fn sign_snp_report(
        &self,
        f: &SnpReportFields,
    ) -> Result<Box<[u8; REPORT_LEN]>, SnpReportError> {
        let platform = self.snp_platform();
        let fw = platform.firmware;
        let mut r = Box::new([0u8; REPORT_LEN]);
        put(&mut r[..], 0x000, &f.version.to_le_bytes());
        put(&mut r[..], 0x004, &f.guest_svn.to_le_bytes());
        put(&mut r[..], 0x008, &f.policy.to_le_bytes());
        put(&mut r[..], 0x010, &f.family_id);
        put(&mut r[..], 0x020, &f.image_id);
        put(&mut r[..], 0x030, &f.vmpl.to_le_bytes());
        put(&mut r[..], 0x034, &SIG_ALGO_ECDSA_P384_SHA384.to_le_bytes());
        put(&mut r[..], 0x038, &f.tcb); // CURRENT_TCB
        put(&mut r[..], 0x040, &f.platform_info.to_le_bytes());
        put(&mut r[..], 0x048, &f.key_info.to_le_bytes());
        put(&mut r[..], 0x050, &f.report_data);
        put(&mut r[..], 0x090, &f.measurement);
        put(&mut r[..], 0x0C0, &f.host_data);
        put(&mut r[..], 0x0E0, &f.id_key_digest);
        put(&mut r[..], 0x110, &f.author_key_digest);
        put(&mut r[..], 0x140, &f.report_id);
        put(&mut r[..], 0x160, &f.report_id_ma);
        put(&mut r[..], 0x180, &f.tcb); // REPORTED_TCB
        put(
            &mut r[..],
            0x188,
            &[platform.family, platform.model, platform.stepping],
        );
        put(&mut r[..], 0x1A0, &f.chip_id);
        put(&mut r[..], 0x1E0, &f.tcb); // COMMITTED_TCB
        put(&mut r[..], 0x1E8, &[fw.build, fw.minor, fw.major]); // CURRENT
        put(&mut r[..], 0x1EC, &[fw.build, fw.minor, fw.major]); // COMMITTED
        put(&mut r[..], 0x1F0, &f.tcb); // LAUNCH_TCB

        let digest = crypto::sha384(&r[..SIGNED_LEN]);
        let (sig_r, sig_s) = crypto::ecdsa_sign_le(self.vcek_key(), &digest)?;
        put(&mut r[..], 0x2A0, &sig_r);
        put(&mut r[..], 0x2E8, &sig_s);
        Ok(r)
    }
}

impl SnpGuest {
    /// MSG_REPORT_REQ: an attestation report for `report_data` at `vmpl`, signed by the
    /// model's VCEK.
    pub fn report(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
        vmpl: u32,
    ) -> Result<Box<[u8; REPORT_LEN]>, SnpReportError> {
        if self.state != SnpGuestState::Running {
            return Err(SnpReportError::NotRunning);
        }
        if vmpl > MAX_VMPL {
            return Err(SnpReportError::InvalidVmpl);
        }
        let mut f = SnpReportFields::new(&self.identity, *report_data, self.ld, self.policy);
        f.guest_svn = self.id.guest_svn;
        f.family_id = self.id.family_id;
        f.image_id = self.id.image_id;
        f.vmpl = vmpl;
        f.key_info = u32::from(self.id.author_key_en); // bit 0; signing key 0 = VCEK
        f.host_data = self.host_data;
        f.id_key_digest = self.id.id_key_digest;
        f.author_key_digest = self.id.author_key_digest;
        f.report_id = self.report_id;
        self.identity.sign_snp_report(&f)
    }

    /// Serves one request of the model's report service (vsock port 1026,
    /// `docs/interfaces.md`): request REPORT_DATA ‖ u32 LE VMPL, response u32 LE status ‖
    /// report (the report is all zero when status is not 0).
    pub fn report_service_response(&self, request: &[u8]) -> Vec<u8> {
        let result = if request.len() == REPORT_REQUEST_LEN {
            let mut data = [0u8; REPORT_DATA_LEN];
            data.copy_from_slice(&request[..REPORT_DATA_LEN]);
            let mut vmpl = [0u8; 4];
            vmpl.copy_from_slice(&request[REPORT_DATA_LEN..]);
            self.report(&data, u32::from_le_bytes(vmpl))
        } else {
            Err(SnpReportError::InvalidRequest)
        };
        let mut out = Vec::with_capacity(4 + REPORT_LEN);
        match result {
            Ok(report) => {
                out.extend_from_slice(&STATUS_SUCCESS.to_le_bytes());
                out.extend_from_slice(&report[..]);
            }
            Err(e) => {
                out.extend_from_slice(&e.status().to_le_bytes());
                out.resize(4 + REPORT_LEN, 0);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};
    use sev::firmware::guest::AttestationReport;
    use sev::parser::ByteParser;

    use super::*;
    use crate::snp_launch::tests::{arc_identity, guest, owner_id_block, POLICY};
    use crate::snp_launch::SnpLaunchFinish;

    fn running_guest() -> SnpGuest {
        let mut g = guest();
        g.update_normal(0x10_0000, &[0x5Au8; 2 * 4096]).unwrap();
        g.update_vmsa(&[0x11u8; 4096]).unwrap();
        g.launch_finish(SnpLaunchFinish {
            host_data: [0xC3; 32],
            ..Default::default()
        })
        .unwrap();
        g
    }

    fn model_chain() -> Chain {
        let id = arc_identity();
        Chain::from_pem(
            &id.snp_ark_pem().unwrap(),
            &id.snp_ask_pem().unwrap(),
            &id.vcek_pem().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn report_parses_and_verifies_with_sev_crate() {
        let g = running_guest();
        let data = [0x42u8; 64];
        let raw = g.report(&data, 0).unwrap();
        let report = AttestationReport::from_bytes(&raw[..]).unwrap();
        assert_eq!(report.version, 3);
        assert_eq!(report.report_data, data);
        assert_eq!(report.measurement, g.launch_digest());
        assert_eq!(report.host_data, [0xC3; 32]);
        assert_eq!(u64::from(report.policy), POLICY);
        assert_eq!(report.vmpl, 0);
        assert_eq!(report.sig_algo, 1);
        let platform = arc_identity().snp_platform().clone();
        assert_eq!(report.chip_id, platform.chip_id);
        assert_eq!(report.cpuid_fam_id, Some(0x19));
        assert_eq!(report.reported_tcb.snp, platform.tcb.snp);
        assert_eq!(report.reported_tcb.microcode, platform.tcb.microcode);
        assert_eq!(report.report_id_ma, [0xFF; 32]);
        assert!(report.plat_info.smt_enabled());
        // Re-encoding by the crate gives back exactly the model's bytes.
        assert_eq!(&report.to_bytes().unwrap()[..], &raw[..]);

        let chain = model_chain();
        (&chain, &report).verify().unwrap();
        let vcek = Certificate::from_pem(&arc_identity().vcek_pem().unwrap()).unwrap();
        (&vcek, &report).verify().unwrap();

        // A second report of the same guest carries the same REPORT_ID.
        let again = AttestationReport::from_bytes(&g.report(&[0; 64], 2).unwrap()[..]).unwrap();
        assert_eq!(again.report_id, report.report_id);
        assert_eq!(again.vmpl, 2);
        (&chain, &again).verify().unwrap();
    }

    #[test]
    fn tampered_reports_fail_verification() {
        let g = running_guest();
        let raw = g.report(&[1u8; 64], 0).unwrap();
        let chain = model_chain();
        for offset in [0x50, 0x90, 0xC0, 0x1A0, 0x2A0, 0x2E8] {
            let mut bad = raw.clone();
            bad[offset] ^= 1;
            if let Ok(report) = AttestationReport::from_bytes(&bad[..]) {
                assert!((&chain, &report).verify().is_err(), "offset {offset:#x}");
            }
        }
    }

    #[test]
    fn model_reports_fail_against_amd_roots() {
        let g = running_guest();
        let report = AttestationReport::from_bytes(&g.report(&[0u8; 64], 0).unwrap()[..]).unwrap();
        let vek = model_chain().vek;
        for (ark, ask) in [
            (
                builtin::milan::ark().unwrap(),
                builtin::milan::ask().unwrap(),
            ),
            (
                builtin::genoa::ark().unwrap(),
                builtin::genoa::ask().unwrap(),
            ),
        ] {
            let amd = Chain {
                ca: ca::Chain { ark, ask },
                vek: vek.clone(),
            };
            assert!((&amd, &report).verify().is_err());
        }
    }

    #[test]
    fn report_carries_id_block_fields() {
        let mut g = guest();
        g.update_normal(0, &[3u8; 4096]).unwrap();
        let (block, auth, id_digest, author_digest) = owner_id_block(g.launch_digest(), POLICY);
        g.launch_finish(SnpLaunchFinish {
            id_block: Some((&block, &auth)),
            author_key_en: true,
            host_data: [0; 32],
        })
        .unwrap();
        let report = AttestationReport::from_bytes(&g.report(&[0; 64], 0).unwrap()[..]).unwrap();
        assert_eq!(report.id_key_digest, id_digest);
        assert_eq!(report.author_key_digest, author_digest);
        assert_eq!(report.family_id, [0x11; 16]);
        assert_eq!(report.image_id, [0x22; 16]);
        assert_eq!(report.guest_svn, 7);
        assert!(report.key_info.author_key_en());
        (&model_chain(), &report).verify().unwrap();
    }

    #[test]
    fn report_requests_are_validated() {
        let launching = guest();
        assert!(matches!(
            launching.report(&[0; 64], 0),
            Err(SnpReportError::NotRunning)
        ));
        let g = running_guest();
        assert!(matches!(
            g.report(&[0; 64], 4),
            Err(SnpReportError::InvalidVmpl)
        ));

        let mut request = vec![7u8; REPORT_DATA_LEN];
        request.extend_from_slice(&1u32.to_le_bytes());
        let response = g.report_service_response(&request);
        assert_eq!(response.len(), 4 + REPORT_LEN);
        assert_eq!(&response[..4], &STATUS_SUCCESS.to_le_bytes());
        let report = AttestationReport::from_bytes(&response[4..]).unwrap();
        assert_eq!(report.report_data, [7u8; 64]);
        assert_eq!(report.vmpl, 1);

        for bad in [&request[..10], &[0u8; 100][..]] {
            let response = g.report_service_response(bad);
            assert_eq!(&response[..4], &STATUS_INVALID_PARAMS.to_le_bytes());
            assert!(response[4..].iter().all(|&b| b == 0));
        }
        request[64..].copy_from_slice(&9u32.to_le_bytes());
        let response = g.report_service_response(&request);
        assert_eq!(&response[..4], &STATUS_INVALID_PARAMS.to_le_bytes());
    }
}
