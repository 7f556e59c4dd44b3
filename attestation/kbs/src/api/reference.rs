//! The reference-kbs protocol: SNP with RSA PKCS#1 key release, SEV/SEV-ES pre-attestation.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::CertTableEntry;
use sev::parser::ByteParser;

use krun_attestation::keys::reference_report_data;
use krun_attestation::reference::{
    Attestation, Challenge, Request, SevChallenge, SevMeasurement, SevRequest, SnpAttestation,
    SnpRequest, Tee, SESSION_COOKIE,
};
use krun_attestation::secret_table;

use super::{
    allowed_digests, blocking, cookie, json_response, parse_json, parse_json_str, set_cookie,
    Broker, IdPath,
};
use crate::db::{TeeKind, Workload, KEY_SECRET};
use crate::refusal::Refusal;
use crate::sessions::{log_tag, random_id, Pending, Protocol, RecipientKey, Stage};
use crate::unbound::{decode_host_json, Channel};
use crate::verify_sev::{self, SevOwner};
use crate::verify_snp::check_requirements;

fn workload_of(b: &Broker, id: &str, tee: TeeKind) -> Result<Workload, Refusal> {
    match b.store.workload(id)? {
        Some(w) if w.tee == tee => Ok(w),
        Some(_) => Err(Refusal::unauthorized(
            "UnknownWorkload",
            "workload is for another TEE",
        )),
        None => Err(Refusal::unauthorized(
            "UnknownWorkload",
            "workload is not registered",
        )),
    }
}

pub(super) fn auth(b: &Broker, body: &[u8]) -> Result<Response, Refusal> {
    let req: Request = parse_json(body, "auth request")?;
    let nonce = random_id();
    let (stage, extra_params, workload) = match req.tee {
        Tee::Snp => {
            let snp: SnpRequest = parse_json_str(&req.extra_params, "SNP extra-params")?;
            workload_of(b, &snp.workload_id, TeeKind::Snp)?;
            (
                Stage::SnpPending {
                    workload_id: snp.workload_id.clone(),
                    host_json: snp.host_json.as_deref().map(decode_host_json).transpose()?,
                },
                String::new(),
                snp.workload_id,
            )
        }
        Tee::Sev => {
            let sev: SevRequest = parse_json_str(&req.extra_params, "SEV extra-params")?;
            let w = workload_of(b, &sev.workload_id, TeeKind::Sev)?;
            let build = verify_sev::build_of(&sev.build);
            verify_sev::check_firmware(&build, w.sev.min_fw.unwrap_or(b.config.min_sev_fw))?;
            let (session, start) = verify_sev::start(&sev.chain, w.sev_policy, &b.sev)?;
            let owner = SevOwner::new(&session, w.sev_policy, &build)?;
            drop(session);
            let challenge = SevChallenge {
                id: nonce.clone(),
                start,
            };
            let text = serde_json::to_string(&challenge)
                .map_err(|_| Refusal::internal("cannot encode the challenge"))?;
            let stage = Stage::SevPending {
                owner,
                workload_id: sev.workload_id.clone(),
                host_json: sev.host_json.as_deref().map(decode_host_json).transpose()?,
            };
            (stage, text, sev.workload_id)
        }
        _ => return Err(Refusal::bad_request("UnsupportedTee", "unsupported TEE")),
    };
    let id = b
        .sessions
        .insert(Protocol::Reference, nonce.clone(), &stage)?;
    tracing::info!(protocol = "reference", session = %log_tag(&id), workload = %workload, "session opened");
    let mut resp = json_response(&Challenge {
        nonce,
        extra_params,
    })?;
    set_cookie(&mut resp, SESSION_COOKIE, &id, b.sessions.ttl())?;
    Ok(resp)
}

/// The session's one attestation attempt (claimed by the caller): the attested stage.
pub(super) fn attest(
    b: &Broker,
    id: &str,
    pending: Pending,
    att: &Attestation,
) -> Result<(Response, Stage), Refusal> {
    let attested = match pending.stage {
        Stage::SnpPending {
            workload_id,
            host_json,
        } => attest_snp(b, &pending.nonce, &workload_id, host_json.as_deref(), att)?,
        Stage::SevPending {
            owner,
            workload_id,
            host_json,
        } => {
            let m: SevMeasurement = parse_json_str(&att.tee_evidence, "SEV evidence")?;
            let w = workload_of(b, &workload_id, TeeKind::Sev)?;
            let digests = allowed_digests(b, &w, Channel::SevHost, host_json.as_deref())?;
            let proof = owner.attest(&m, &digests)?;
            Stage::SevAttested {
                owner,
                proof,
                workload_id,
            }
        }
        _ => {
            return Err(Refusal::unauthorized(
                "NonceUsed",
                "session already attested or failed",
            ))
        }
    };
    tracing::info!(protocol = "reference", session = %log_tag(id), "attested");
    Ok((StatusCode::OK.into_response(), attested))
}

fn attest_snp(
    b: &Broker,
    nonce: &str,
    workload_id: &str,
    host_json: Option<&[u8]>,
    att: &Attestation,
) -> Result<Stage, Refusal> {
    let ev: SnpAttestation = parse_json_str(&att.tee_evidence, "SNP evidence")?;
    let raw = hex::decode(ev.report.trim())
        .map_err(|_| Refusal::bad_request("InvalidRequest", "report is not hex"))?;
    let report = AttestationReport::from_bytes(&raw)
        .map_err(|_| Refusal::bad_request("InvalidRequest", "report cannot be parsed"))?;
    // "[]" from the libkrun client; a certificate table when the guest has one.
    let certs: Vec<CertTableEntry> = serde_json::from_str(&ev.cert_chain).unwrap_or_default();
    let recipient = crate::jwe::reference_recipient(&att.tee_pubkey.k_mod, &att.tee_pubkey.k_exp)?;
    let expected = reference_report_data(nonce, &att.tee_pubkey);
    b.snp.verify_report(&report, &certs, &expected)?;
    let w = workload_of(b, workload_id, TeeKind::Snp)?;
    let allowed = allowed_digests(b, &w, Channel::Reference, host_json)?;
    if !allowed
        .iter()
        .any(|d| d.as_slice() == report.measurement.as_slice())
    {
        return Err(Refusal::unauthorized(
            "SnpMeasurement",
            "launch measurement is not allowed",
        ));
    }
    check_requirements(&report, &w.snp, b.config.min_tcb)?;
    Ok(Stage::SnpAttested {
        key: recipient,
        workloads: vec![workload_id.to_string()],
    })
}

pub(super) async fn key(
    State(b): State<Arc<Broker>>,
    axum::extract::Path(id): IdPath,
    headers: HeaderMap,
) -> Response {
    blocking("key", b, move |b| key_inner(b, &id, &headers)).await
}

fn key_inner(b: &Broker, wanted: &str, headers: &HeaderMap) -> Result<Response, Refusal> {
    let sid = cookie(headers, SESSION_COOKIE)
        .ok_or_else(|| Refusal::unauthorized("MissingCookie", "no session cookie"))?;
    // The key is released at most once: the session is ended here by one conditional
    // update in the store (concurrent requests with the same cookie, on any replica, get
    // `AlreadyReleased`), and its stored state is wiped in the same transaction.
    let stage = b
        .sessions
        .take(&sid, Protocol::Reference)?
        .ok_or_else(|| Refusal::unauthorized("NotAttested", "session is not attested"))?;
    let attested_for = match &stage {
        Stage::SnpAttested { workloads, .. } => workloads.first().map(String::as_str),
        Stage::SevAttested { workload_id, .. } => Some(workload_id.as_str()),
        _ => {
            return Err(Refusal::unauthorized(
                "NotAttested",
                "session is not attested",
            ))
        }
    };
    if attested_for != Some(wanted) {
        return Err(Refusal::forbidden(
            "WrongWorkload",
            "session attested another workload",
        ));
    }
    let secret = b
        .store
        .secret(wanted, KEY_SECRET)?
        .ok_or_else(|| Refusal::not_found("NoSecret", "workload has no key"))?;
    let resp = match &stage {
        Stage::SnpAttested {
            key: RecipientKey::RsaPkcs1(rsa),
            ..
        } => json_response(&crate::jwe::seal_pkcs1_hex(rsa, &secret)?)?,
        Stage::SevAttested { owner, proof, .. } => {
            let table = secret_table::build(&secret)
                .map_err(|_| Refusal::internal("secret does not fit the launch secret"))?;
            json_response(&owner.package(proof, &table)?)?
        }
        _ => return Err(Refusal::internal("session key does not match the protocol")),
    };
    tracing::info!(protocol = "reference", session = %log_tag(&sid), workload = %wanted, "key released");
    b.metrics.released("reference");
    Ok(resp)
}
