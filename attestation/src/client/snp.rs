//! SNP attestation from inside the guest: a fresh TEE key, a report bound to the broker's
//! nonce and that key, and the workload's secret decrypted with it.

use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use zeroize::Zeroizing;

use super::{expect_ok, ClientConfig, ClientError, KbsProtocol, Step};
use crate::keys::{rcar_report_data, reference_report_data, TeeKey};
use crate::{rcar, reference};

/// What the guest asks for.
#[derive(Debug, Clone)]
pub struct SnpRequest<'a> {
    pub workload_id: &'a str,
    pub protocol: KbsProtocol,
    /// Reference protocol: the `gen` hint (`tee_data.gen`, "milan" from buildah).
    pub generation: &'a str,
    /// RCAR: resource path of the secret; default `default/key/<workload_id>`.
    pub resource_path: Option<&'a str>,
    /// The launch's measured host.json, sent so a broker holding the bundle can accept a
    /// workload registered with its unbound digest.
    pub host_json: Option<&'a [u8]>,
}

/// Certificates from an extended report (VCEK, ASK), sent with the evidence so the broker
/// needs no local VCEK.
pub type CertTable = [sev::firmware::host::CertTableEntry];

/// The caller's report source: REPORT_DATA in, raw 1184-byte report out (from
/// /dev/sev-guest at VMPL 0, or the PSP model's report service).
pub type ReportFn<'f> =
    dyn FnMut([u8; 64]) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> + 'f;

/// Runs the whole flow and returns the secret (the LUKS passphrase). With the reference
/// protocol, an RCAR broker's version-mismatch answer to `/auth` switches to RCAR.
pub fn attest(
    cfg: &ClientConfig,
    req: &SnpRequest<'_>,
    get_report: &mut ReportFn<'_>,
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    attest_with_certs(cfg, req, &[], get_report)
}

/// [`attest`] sending `certs` (from an extended report) with the evidence.
pub fn attest_with_certs(
    cfg: &ClientConfig,
    req: &SnpRequest<'_>,
    certs: &CertTable,
    get_report: &mut ReportFn<'_>,
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    match req.protocol {
        KbsProtocol::Rcar => attest_rcar(cfg, req, certs, get_report),
        KbsProtocol::Reference => match attest_reference(cfg, req, certs, get_report) {
            Err(ClientError::Status {
                step: Step::Auth,
                status: 401,
                message,
            }) if message.contains(rcar::VERSION_MISMATCH) => {
                log::info!("key broker speaks RCAR, switching protocol");
                attest_rcar(cfg, req, certs, get_report)
            }
            other => other,
        },
    }
}

fn report(get_report: &mut ReportFn<'_>, data: [u8; 64]) -> Result<Vec<u8>, ClientError> {
    let raw = get_report(data).map_err(ClientError::Report)?;
    if raw.len() != 0x4a0 {
        return Err(ClientError::Report("report is not 1184 bytes".into()));
    }
    Ok(raw)
}

fn json<T: serde::Serialize>(step: Step, v: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(v).map_err(|e| ClientError::answer(step, e))
}

/// The reference-kbs flow: RSA-2048 key, SHA-512 binding, PKCS#1 v1.5 key release.
pub fn attest_reference(
    cfg: &ClientConfig,
    req: &SnpRequest<'_>,
    certs: &CertTable,
    get_report: &mut ReportFn<'_>,
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let extra = serde_json::to_string(&reference::SnpRequest {
        workload_id: req.workload_id.into(),
        host_json: req.host_json.map(reference::encode_host_json),
    })
    .map_err(|e| ClientError::answer(Step::Auth, e))?;
    let auth = reference::Request {
        version: reference::PROTOCOL_VERSION.into(),
        tee: reference::Tee::Snp,
        extra_params: extra,
    };
    let (cookie, challenge): (String, reference::Challenge) =
        cfg.auth(&auth, reference::SESSION_COOKIE)?;

    let key = TeeKey::generate_rsa().map_err(|source| ClientError::Key {
        step: Step::Attest,
        source,
    })?;
    let pubkey = key.reference_pubkey().map_err(|source| ClientError::Key {
        step: Step::Attest,
        source,
    })?;
    let raw = report(get_report, reference_report_data(&challenge.nonce, &pubkey))?;
    let evidence = reference::SnpAttestation {
        gen: req.generation.to_string(),
        report: hex::encode(raw),
        cert_chain: serde_json::to_string(certs)
            .map_err(|e| ClientError::answer(Step::Attest, e))?,
    };
    let att = reference::Attestation {
        tee_pubkey: pubkey,
        tee_evidence: serde_json::to_string(&evidence)
            .map_err(|e| ClientError::answer(Step::Attest, e))?,
    };
    let cookie_pair = Some((reference::SESSION_COOKIE, cookie.as_str()));
    let resp = cfg.send(
        Step::Attest,
        "POST",
        "attest",
        cookie_pair,
        Some(&json(Step::Attest, &att)?),
    )?;
    expect_ok(Step::Attest, resp)?;

    let path = format!("key/{}", req.workload_id);
    let resp = expect_ok(
        Step::Key,
        cfg.send(Step::Key, "GET", &path, cookie_pair, None)?,
    )?;
    let hex_text: Zeroizing<String> = Zeroizing::new(
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::answer(Step::Key, e))?,
    );
    let ct = hex::decode(hex_text.trim()).map_err(|e| ClientError::answer(Step::Key, e))?;
    key.decrypt_pkcs1(&ct)
        .map_err(|e| ClientError::Decrypt(Box::new(e)))
}

/// The RCAR flow: EC P-256 key, JCS + SHA-384 binding, JWE resource.
pub fn attest_rcar(
    cfg: &ClientConfig,
    req: &SnpRequest<'_>,
    certs: &CertTable,
    get_report: &mut ReportFn<'_>,
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let auth = rcar::auth_request(rcar::Tee::Snp, req.host_json);
    let (cookie, challenge): (String, rcar::Challenge) = cfg.auth(&auth, rcar::SESSION_COOKIE)?;

    let key = TeeKey::generate_ec();
    let pubkey = key.rcar_pubkey();
    let data =
        rcar_report_data(&challenge.nonce, &pubkey, "").map_err(|source| ClientError::Key {
            step: Step::Attest,
            source,
        })?;
    let raw = report(get_report, data)?;
    let parsed =
        AttestationReport::from_bytes(&raw).map_err(|e| ClientError::Report(Box::new(e)))?;
    let cert_chain = (!certs.is_empty()).then(|| certs.to_vec());
    let evidence = rcar::SnpEvidence {
        attestation_report: parsed,
        cert_chain,
    };
    let att = rcar::Attestation {
        init_data: None,
        runtime_data: rcar::RuntimeData {
            nonce: challenge.nonce,
            tee_pubkey: pubkey,
        },
        tee_evidence: rcar::CompositeEvidence {
            primary_evidence: serde_json::to_value(&evidence)
                .map_err(|e| ClientError::answer(Step::Attest, e))?,
            additional_evidence: String::new(),
        },
    };
    let cookie_pair = Some((rcar::SESSION_COOKIE, cookie.as_str()));
    let resp = cfg.send(
        Step::Attest,
        "POST",
        "attest",
        cookie_pair,
        Some(&json(Step::Attest, &att)?),
    )?;
    expect_ok(Step::Attest, resp)?;

    let default_path = format!("default/key/{}", req.workload_id);
    let path = format!("resource/{}", req.resource_path.unwrap_or(&default_path));
    let resp = expect_ok(
        Step::Key,
        cfg.send(Step::Key, "GET", &path, cookie_pair, None)?,
    )?;
    rcar::decrypt_jwe(&resp.body, &key).map_err(|e| ClientError::Decrypt(Box::new(e)))
}
