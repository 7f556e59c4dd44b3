//! Registration (buildah-compatible) and the admin API, both behind the admin token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use krun_attestation::reference::{RegisterWorkload, SevPolicy};

use super::{bearer, blocking, json_response, parse_json_quiet, Broker};
use crate::db::{MeasurementKind, PutMode, SevRequirements, SnpRequirements, TeeKind, Workload};
use crate::refusal::Refusal;

/// Whether `given` is the admin token. Both are hashed with SHA-256 and the digests compared
/// in constant time (`CRYPTO_memcmp`), so the time taken says nothing about the token's
/// contents or length (a length check first would tell how long the token is).
fn tokens_match(expected: &str, given: &str) -> bool {
    let expected = Zeroizing::new(openssl::sha::sha256(expected.as_bytes()));
    let given = Zeroizing::new(openssl::sha::sha256(given.as_bytes()));
    openssl::memcmp::eq(expected.as_slice(), given.as_slice())
}

fn token_ok(b: &Broker, headers: &HeaderMap) -> bool {
    match (&b.config.admin_token, bearer(headers)) {
        (Some(expected), Some(given)) => tokens_match(expected, &given),
        _ => false,
    }
}

fn require_admin(b: &Broker, headers: &HeaderMap) -> Result<(), Refusal> {
    if b.config.admin_token.is_none() {
        return Err(Refusal::forbidden(
            "AdminDisabled",
            "no admin token is configured",
        ));
    }
    if !token_ok(b, headers) {
        return Err(Refusal::unauthorized(
            "AdminToken",
            "missing or wrong admin token",
        ));
    }
    Ok(())
}

/// Decodes measurements and checks they all have the digest length of `tee`.
pub fn decode_measurements(tee: TeeKind, hexes: &[String]) -> Result<Vec<Vec<u8>>, Refusal> {
    if hexes.is_empty() {
        return Err(Refusal::bad_request(
            "InvalidWorkload",
            "no launch measurement",
        ));
    }
    hexes
        .iter()
        .map(|h| {
            let d = hex::decode(h.trim())
                .map_err(|_| Refusal::bad_request("InvalidWorkload", "measurement is not hex"))?;
            if d.len() != tee.digest_len() {
                return Err(Refusal::bad_request(
                    "InvalidWorkload",
                    "measurement length does not match the TEE",
                ));
            }
            Ok(d)
        })
        .collect()
}

pub(super) async fn register_workload(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    blocking("register_workload", b, move |b| {
        register_inner(b, &headers, &body)
    })
    .await
}

/// Who is registering: the admin (may replace a workload) or, with
/// `--insecure-registration`, anyone (may only create new workload ids).
fn registrant(b: &Broker, headers: &HeaderMap) -> Result<PutMode, Refusal> {
    let given = headers.contains_key(axum::http::header::AUTHORIZATION);
    if given && b.config.admin_token.is_some() {
        // A wrong token is refused even when unauthenticated registration is open: the
        // caller meant to act as the admin and should learn that it does not.
        return if token_ok(b, headers) {
            Ok(PutMode::Replace)
        } else {
            Err(Refusal::unauthorized("AdminToken", "wrong admin token"))
        };
    }
    if b.config.insecure_registration {
        return Ok(PutMode::CreateOnly);
    }
    Err(if b.config.admin_token.is_some() {
        Refusal::unauthorized("AdminToken", "registration needs the admin token")
    } else {
        Refusal::forbidden("RegistrationDisabled", "registration is disabled")
    })
}

fn register_inner(b: &Broker, headers: &HeaderMap, body: &[u8]) -> Result<Response, Refusal> {
    let mode = registrant(b, headers)?;
    let reg: RegisterWorkload = parse_json_quiet(body, "registration")?;
    // buildah sends no TEE name: the digest length tells SEV (SHA-256) from SNP (SHA-384).
    let tee = match reg.launch_measurement.trim().len() {
        64 => TeeKind::Sev,
        96 => TeeKind::Snp,
        _ => {
            return Err(Refusal::bad_request(
                "InvalidWorkload",
                "measurement length is invalid",
            ))
        }
    };
    let digests = decode_measurements(tee, std::slice::from_ref(&reg.launch_measurement))?;
    let sev_policy = match serde_json::from_str::<SevPolicy>(&reg.tee_config) {
        Ok(p) => p.to_u32(),
        // The SNP value is cosmetic (reference-kbs ignores it).
        Err(_) if tee == TeeKind::Snp => 0,
        Err(_) => {
            return Err(Refusal::bad_request(
                "InvalidWorkload",
                "malformed tee_config",
            ))
        }
    };
    if reg.workload_id.is_empty() || reg.passphrase.is_empty() {
        return Err(Refusal::bad_request(
            "InvalidWorkload",
            "empty workload id or passphrase",
        ));
    }
    // buildah's digest comes from `krunfw_measurement`, which cannot know the binding:
    // absent means unbound. `krun-sev mkcw --register` says `bound`.
    let measurement_kind = reg.measurement_kind.unwrap_or(MeasurementKind::Unbound);
    if measurement_kind == MeasurementKind::Unbound && b.unbound.is_none() {
        return Err(unbound_uncheckable());
    }
    let w = Workload {
        id: reg.workload_id.clone(),
        tee,
        sev_policy,
        snp: b.config.default_snp,
        sev: SevRequirements::default(),
        measurements: vec![],
        measurement_kind,
    };
    // Unauthenticated callers never replace a workload, even with identical contents: a
    // 200 for "same as stored" would let anyone test guesses of a registered passphrase.
    if !b
        .store
        .register(&w, &digests, Some(reg.passphrase.as_bytes()), mode)?
    {
        return Err(Refusal::conflict(
            "WorkloadExists",
            format!(
                "workload {} is already registered; replacing it needs the admin token",
                w.id
            ),
        ));
    }
    let by = match mode {
        PutMode::Replace => "admin",
        PutMode::CreateOnly => "unauthenticated",
    };
    tracing::info!(workload = %w.id, tee = ?tee, by, kind = ?measurement_kind, "workload registered");
    Ok(StatusCode::OK.into_response())
}

/// The refusal of an unbound registration by a broker that cannot check such launches.
fn unbound_uncheckable() -> Refusal {
    Refusal::bad_request(
        "UnboundDigest",
        "this digest leaves out the launch's binding (buildah's krunfw_measurement); the broker can only check such launches when started with --bundle and --public-url",
    )
}

/// Admin `POST /kbs/v0/admin/workloads` body.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WorkloadSpec {
    pub id: String,
    pub tee: TeeKind,
    pub measurements: Vec<String>,
    /// SEV policy word (default: buildah's SEV-ES policy 0x3f).
    #[serde(default)]
    pub sev_policy: Option<u32>,
    /// SNP requirements (default: those of buildah registrations; `min_tcb` absent means
    /// the broker's `--min-tcb`).
    #[serde(default)]
    pub snp: Option<SnpRequirements>,
    /// SEV/SEV-ES requirements (`min_fw` absent means the broker's `--min-sev-fw`).
    #[serde(default)]
    pub sev: Option<SevRequirements>,
    /// The LUKS passphrase (`key` secret), if set now.
    #[serde(default)]
    pub passphrase: Option<String>,
    /// Whether `measurements` cover the launch's binding (default) or leave it out
    /// (`krunfw_measurement`'s digests; docs/measurement.md, "Unbound digests").
    #[serde(default)]
    pub measurement_kind: MeasurementKind,
}

/// SEV-ES with no debug, no key sharing, no send, domain-bound (buildah's default).
pub const DEFAULT_SEV_POLICY: u32 = 0x3f;

impl WorkloadSpec {
    pub fn apply(&self, b: &Broker) -> Result<(), Refusal> {
        if self.id.is_empty() {
            return Err(Refusal::bad_request("InvalidWorkload", "empty workload id"));
        }
        let digests = decode_measurements(self.tee, &self.measurements)?;
        if self.measurement_kind == MeasurementKind::Unbound && b.unbound.is_none() {
            return Err(unbound_uncheckable());
        }
        let w = Workload {
            id: self.id.clone(),
            tee: self.tee,
            sev_policy: self.sev_policy.unwrap_or(DEFAULT_SEV_POLICY),
            snp: self.snp.unwrap_or(b.config.default_snp),
            sev: self.sev.unwrap_or_default(),
            measurements: vec![],
            measurement_kind: self.measurement_kind,
        };
        let key = self.passphrase.as_deref().map(str::as_bytes);
        b.store.register(&w, &digests, key, PutMode::Replace)?;
        Ok(())
    }
}

/// Admin listing entry: the workload and the names of its secrets.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WorkloadInfo {
    #[serde(flatten)]
    pub workload: Workload,
    pub secrets: Vec<String>,
}

pub(super) async fn list(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    blocking("admin_list", b, move |b| list_inner(b, &headers)).await
}

fn list_inner(b: &Broker, headers: &HeaderMap) -> Result<Response, Refusal> {
    require_admin(b, headers)?;
    let mut out = Vec::new();
    for w in b.store.workloads()? {
        let secrets = b.store.secret_names(&w.id)?;
        out.push(WorkloadInfo {
            workload: w,
            secrets,
        });
    }
    json_response(&out)
}

pub(super) async fn put_workload(
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    blocking("admin_put_workload", b, move |b| {
        require_admin(b, &headers)?;
        let spec: WorkloadSpec = parse_json_quiet(&body, "workload")?;
        spec.apply(b)?;
        tracing::info!(workload = %spec.id, "workload stored by admin");
        Ok(StatusCode::OK.into_response())
    })
    .await
}

pub(super) async fn remove_workload(
    State(b): State<Arc<Broker>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    blocking("admin_remove_workload", b, move |b| {
        require_admin(b, &headers)?;
        if b.store.remove_workload(&id)? {
            tracing::info!(workload = %id, "workload removed");
            Ok(StatusCode::OK.into_response())
        } else {
            Err(Refusal::not_found(
                "NoWorkload",
                "workload is not registered",
            ))
        }
    })
    .await
}

pub(super) async fn put_secret(
    State(b): State<Arc<Broker>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    blocking("admin_put_secret", b, move |b| {
        require_admin(b, &headers)?;
        if b.store.put_secret(&id, &name, &body)? {
            tracing::info!(workload = %id, secret = %name, "secret stored");
            Ok(StatusCode::OK.into_response())
        } else {
            Err(Refusal::not_found(
                "NoWorkload",
                "workload is not registered",
            ))
        }
    })
    .await
}

pub(super) async fn remove_secret(
    State(b): State<Arc<Broker>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    blocking("admin_remove_secret", b, move |b| {
        require_admin(b, &headers)?;
        if b.store.remove_secret(&id, &name)? {
            Ok(StatusCode::OK.into_response())
        } else {
            Err(Refusal::not_found("NoSecret", "no such secret"))
        }
    })
    .await
}

/// Admin `GET /kbs/v0/admin/stats` answer.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Sessions in the table (open, attested, or expired and not yet collected).
    pub sessions: usize,
}

pub(super) async fn stats(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    // Sessions are counted in the store.
    blocking("admin_stats", b, move |b| {
        require_admin(b, &headers)?;
        json_response(&Stats {
            sessions: b.sessions.open_count()?,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_accepts_only_the_exact_token() {
        let t = "s3cret-admin-token";
        assert!(tokens_match(t, t));
        for other in [
            "",
            "s",
            "s3cret-admin-toke",
            "s3cret-admin-token ",
            "s3cret-admin-tokenX",
            "S3cret-admin-token",
            "x".repeat(4096).as_str(),
        ] {
            assert!(!tokens_match(t, other), "{other:?}");
        }
    }
}
