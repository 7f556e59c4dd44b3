//! Trustee's RCAR protocol (0.4.0) for SNP: the workload is the one whose allowed measurement
//! the report carries; resources come back as JWE.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;

use krun_attestation::keys::rcar_report_data;
use krun_attestation::rcar::{
    Attestation, AttestationToken, Challenge, Request, SnpEvidence, Tee, HOST_JSON_PARAM,
    PROTOCOL_VERSION, SESSION_COOKIE, VERSION_MISMATCH,
};

use super::{
    allowed_digests, bearer, blocking, cookie, json_response, parse_json, set_cookie, Broker,
};
use crate::db::{MeasurementKind, TeeKind, KEY_SECRET};
use crate::refusal::Refusal;
use crate::sessions::{log_tag, Pending, Protocol, Stage};
use crate::unbound::{decode_host_json, Channel, UnboundVerifier};
use crate::verify_snp::check_requirements;

pub(super) fn auth(b: &Broker, body: &[u8]) -> Result<Response, Refusal> {
    let req: Request = parse_json(body, "auth request")?;
    if req.version != PROTOCOL_VERSION {
        return Err(Refusal::unauthorized("ProtocolVersion", VERSION_MISMATCH));
    }
    if req.tee != Tee::Snp {
        return Err(Refusal::bad_request(
            "UnsupportedTee",
            "only SNP is supported with RCAR",
        ));
    }
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let nonce = STANDARD.encode(raw);
    let host_json = req
        .extra_params
        .get(HOST_JSON_PARAM)
        .and_then(serde_json::Value::as_str)
        .map(decode_host_json)
        .transpose()?;
    let id = b.sessions.insert(
        Protocol::Rcar,
        nonce.clone(),
        &Stage::RcarPending { host_json },
    )?;
    tracing::info!(protocol = "rcar", session = %log_tag(&id), "session opened");
    let challenge = Challenge {
        nonce,
        extra_params: serde_json::Value::String(String::new()),
    };
    let mut resp = json_response(&challenge)?;
    set_cookie(&mut resp, SESSION_COOKIE, &id, b.sessions.ttl())?;
    Ok(resp)
}

/// An RCAR attestation request and its SNP evidence.
pub(super) struct Evidence {
    att: Attestation,
    snp: SnpEvidence,
}

pub(super) fn parse_attestation(body: &[u8]) -> Result<Evidence, Refusal> {
    let att: Attestation = parse_json(body, "attestation")?;
    let snp: SnpEvidence = serde_json::from_value(att.tee_evidence.primary_evidence.clone())
        .map_err(|e| {
            Refusal::bad_request("InvalidRequest", format!("malformed SNP evidence: {e}"))
        })?;
    Ok(Evidence { att, snp })
}

/// The session's one attestation attempt (claimed by the caller): the token and the
/// attested stage.
pub(super) fn attest(
    b: &Broker,
    id: &str,
    pending: Pending,
    evidence: &Evidence,
) -> Result<(Response, Stage), Refusal> {
    let Evidence { att, snp: evidence } = evidence;
    let Stage::RcarPending { host_json } = pending.stage else {
        return Err(Refusal::unauthorized(
            "NonceUsed",
            "session already attested or failed",
        ));
    };
    let nonce = pending.nonce;
    // Length first: memcmp::eq requires equal lengths.
    if att.runtime_data.nonce.len() != nonce.len()
        || !openssl::memcmp::eq(att.runtime_data.nonce.as_bytes(), nonce.as_bytes())
    {
        return Err(Refusal::unauthorized(
            "NonceMismatch",
            "nonce is not this session's",
        ));
    }
    if att.init_data.is_some() {
        return Err(Refusal::bad_request(
            "InitData",
            "init-data is not supported",
        ));
    }
    let key = crate::jwe::rcar_recipient(&att.runtime_data.tee_pubkey)?;
    let expected = rcar_report_data(
        &att.runtime_data.nonce,
        &att.runtime_data.tee_pubkey,
        &att.tee_evidence.additional_evidence,
    )
    .map_err(|_| Refusal::bad_request("InvalidRequest", "runtime data cannot be canonicalised"))?;
    let report = &evidence.attestation_report;
    let certs = evidence.cert_chain.as_deref().unwrap_or_default();
    b.snp.verify_report(report, certs, &expected)?;
    let mut candidates = b
        .store
        .workloads_with_measurement(TeeKind::Snp, &report.measurement)?;
    let mut last_refusal = None;
    // A workload registered unbound is found from the binding in the launch's host.json;
    // its recomputed digest must be the one the report carries.
    if let Some(json) = &host_json {
        match unbound_candidate(b, json, &report.measurement) {
            Ok(Some(id)) if !candidates.contains(&id) => candidates.push(id),
            Ok(_) => {}
            Err(r) => last_refusal = Some(r),
        }
    }
    if candidates.is_empty() {
        return Err(last_refusal.unwrap_or_else(|| {
            Refusal::unauthorized("SnpMeasurement", "launch measurement is not allowed")
        }));
    }
    let mut workloads = Vec::new();
    for id in candidates {
        let Some(w) = b.store.workload(&id)? else {
            continue;
        };
        match check_requirements(report, &w.snp, b.config.min_tcb) {
            Ok(()) => workloads.push(id),
            Err(r) => last_refusal = Some(r),
        }
    }
    if workloads.is_empty() {
        return Err(last_refusal.unwrap_or_else(|| {
            Refusal::unauthorized("SnpPolicy", "no workload accepts the report")
        }));
    }
    tracing::info!(protocol = "rcar", session = %log_tag(id), workloads = ?workloads, "attested");
    // The token is the session id: the cookie and `Authorization: Bearer` are equivalent.
    let response = json_response(&AttestationToken {
        token: id.to_string(),
    })?;
    Ok((response, Stage::SnpAttested { key, workloads }))
}

/// The unbound-registered SNP workload the binding in `host_json` names, when the launch
/// digest recomputed from it is `measurement`.
fn unbound_candidate(
    b: &Broker,
    host_json: &[u8],
    measurement: &[u8],
) -> Result<Option<String>, Refusal> {
    let Some(id) = UnboundVerifier::bound_workload(host_json) else {
        return Ok(None);
    };
    let Some(w) = b.store.workload(&id)? else {
        return Ok(None);
    };
    if w.tee != TeeKind::Snp || w.measurement_kind != MeasurementKind::Unbound {
        return Ok(None);
    }
    let allowed = allowed_digests(b, &w, Channel::Rcar, Some(host_json))?;
    if allowed.iter().any(|d| d.as_slice() == measurement) {
        Ok(Some(id))
    } else {
        Err(Refusal::unauthorized(
            "SnpMeasurement",
            "launch measurement is not the one of the host.json sent",
        ))
    }
}

pub(super) async fn resource(
    State(b): State<Arc<Broker>>,
    Path((repo, kind, tag)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("{repo}/{kind}/{tag}");
    blocking("resource", b, move |b| resource_inner(b, &path, &headers)).await
}

fn resource_inner(b: &Broker, path: &str, headers: &HeaderMap) -> Result<Response, Refusal> {
    let sid = cookie(headers, SESSION_COOKIE)
        .or_else(|| bearer(headers).map(|t| t.to_string()))
        .ok_or_else(|| Refusal::unauthorized("MissingCookie", "no session cookie or token"))?;
    let stage = b.sessions.attested_stage(&sid, Protocol::Rcar)?;
    let Stage::SnpAttested { workloads, key } = &stage else {
        return Err(Refusal::unauthorized(
            "NotAttested",
            "session is not attested",
        ));
    };
    let mut found = None;
    for w in workloads {
        let name = if path == format!("default/key/{w}") {
            KEY_SECRET
        } else {
            path
        };
        if let Some(secret) = b.store.secret(w, name)? {
            found = Some((w.clone(), secret));
            break;
        }
    }
    let Some((workload, secret)) = found else {
        return Err(Refusal::forbidden(
            "NotAllowed",
            "resource is not available to this session",
        ));
    };
    // Each resource at most once per session, whichever replica is asked.
    if !b.sessions.release(&sid, path)? {
        return Err(Refusal::forbidden(
            "AlreadyReleased",
            "resource was already released",
        ));
    }
    let jwe = crate::jwe::seal_jwe(key, &secret)?;
    tracing::info!(protocol = "rcar", session = %log_tag(&sid), workload = %workload, resource = %path, "resource released");
    b.metrics.released("rcar");
    json_response(&jwe)
}
