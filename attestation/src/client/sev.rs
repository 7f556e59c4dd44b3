//! Host-side SEV/SEV-ES pre-attestation (reference protocol). The VMM calls [`SevAttestation::auth`]
//! before LAUNCH_START, [`SevAttestation::attest`] with the LAUNCH_MEASURE result, and
//! [`SevAttestation::key`] for the LAUNCH_SECRET packet.

use super::{expect_ok, ClientConfig, ClientError, Step};
use crate::reference::{
    self, Attestation, Challenge, Request, SevBuild, SevCertChain, SevChallenge, SevMeasurement,
    SevRequest, SevSecret, SevStart, Tee, TeePubKey,
};

/// An open SEV attestation session.
#[derive(Debug)]
pub struct SevAttestation {
    cfg: ClientConfig,
    workload_id: String,
    cookie: String,
    /// LAUNCH_START parameters chosen by the broker: `start.policy.to_u32()`, the GODH
    /// certificate `start.cert` (0x824 bytes) and `start.session.to_bytes()` (128 bytes).
    pub start: SevStart,
}

impl SevAttestation {
    /// `/auth` with the platform's firmware build and certificate chain, and the launch's
    /// measured host.json when given (see [`reference::SnpRequest::host_json`]).
    pub fn auth(
        cfg: &ClientConfig,
        workload_id: &str,
        build: SevBuild,
        chain: SevCertChain,
        host_json: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        let step = Step::Auth;
        let sev = SevRequest {
            build,
            chain,
            workload_id: workload_id.to_string(),
            host_json: host_json.map(reference::encode_host_json),
        };
        let req = Request {
            version: reference::PROTOCOL_VERSION.into(),
            tee: Tee::Sev,
            extra_params: serde_json::to_string(&sev).map_err(|e| ClientError::answer(step, e))?,
        };
        let (cookie, challenge): (String, Challenge) = cfg.auth(&req, reference::SESSION_COOKIE)?;
        let sev: SevChallenge = serde_json::from_str(&challenge.extra_params)
            .map_err(|e| ClientError::answer(step, e))?;
        sev.start
            .validate()
            .map_err(|e| ClientError::answer(step, e))?;
        Ok(SevAttestation {
            cfg: cfg.clone(),
            workload_id: workload_id.to_string(),
            cookie,
            start: sev.start,
        })
    }

    /// `/attest` with the LAUNCH_MEASURE output.
    pub fn attest(&self, measurement: &SevMeasurement) -> Result<(), ClientError> {
        let step = Step::Attest;
        let att = Attestation {
            tee_pubkey: TeePubKey::default(),
            tee_evidence: serde_json::to_string(measurement)
                .map_err(|e| ClientError::answer(step, e))?,
        };
        let body = serde_json::to_vec(&att).map_err(|e| ClientError::answer(step, e))?;
        let cookie = Some((reference::SESSION_COOKIE, self.cookie.as_str()));
        expect_ok(
            step,
            self.cfg.send(step, "POST", "attest", cookie, Some(&body))?,
        )?;
        Ok(())
    }

    /// `/key/<workload_id>`: the LAUNCH_SECRET packet (header via `header_bytes()`).
    pub fn key(self) -> Result<SevSecret, ClientError> {
        let step = Step::Key;
        let cookie = Some((reference::SESSION_COOKIE, self.cookie.as_str()));
        let path = format!("key/{}", self.workload_id);
        let resp = expect_ok(step, self.cfg.send(step, "GET", &path, cookie, None)?)?;
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::answer(step, e))
    }
}
