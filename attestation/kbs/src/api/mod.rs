//! HTTP routes under `/kbs/v0`: the two attestation protocols, buildah registration and the
//! admin API. Handlers return `Result<Response, Refusal>`; refusals are logged in one place.

mod admin;
pub use admin::{decode_measurements, Stats, WorkloadInfo, WorkloadSpec, DEFAULT_SEV_POLICY};
mod rcar;
mod reference;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::config::BrokerConfig;
use crate::db::{MeasurementKind, Store, Workload};
use crate::metrics::Metrics;
use crate::refusal::Refusal;
use crate::sessions::{Ended, Protocol, Sessions, Stage};
use crate::unbound::{Channel, UnboundVerifier};
use crate::verify_sev::SevTrust;
use crate::verify_snp::SnpVerifier;

/// Everything a request handler needs.
pub struct Broker {
    pub config: BrokerConfig,
    pub store: Arc<Store>,
    pub sessions: Sessions,
    pub snp: SnpVerifier,
    pub sev: SevTrust,
    /// Checks launches of workloads registered with unbound digests (`--bundle`).
    pub unbound: Option<UnboundVerifier>,
    /// Counters for `GET /metrics`.
    pub metrics: Metrics,
    /// Slots on the blocking pool (`config.blocking_threads`).
    pool: Arc<Semaphore>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.config)
            .field("unbound", &self.unbound)
            .finish()
    }
}

impl Broker {
    pub fn new(config: BrokerConfig, store: Store, snp: SnpVerifier, sev: SevTrust) -> Self {
        let store = Arc::new(store);
        let sessions = Sessions::new(store.clone(), config.session_ttl, config.max_sessions);
        let pool = Arc::new(Semaphore::new(config.blocking_threads.max(1)));
        Broker {
            metrics: Metrics::default(),
            pool,
            config,
            store,
            sessions,
            snp,
            sev,
            unbound: None,
        }
    }

    /// The broker, also accepting launches of workloads registered with unbound digests.
    pub fn with_unbound(mut self, verifier: UnboundVerifier) -> Self {
        self.unbound = Some(verifier);
        self
    }
}

type AppState = State<Arc<Broker>>;

/// The broker's routes.
pub fn router(broker: Arc<Broker>) -> Router {
    let limit = broker.config.body_limit;
    Router::new()
        .route("/kbs/v0/", get(index))
        .route("/kbs/v0/auth", post(auth))
        .route("/kbs/v0/attest", post(attest))
        .route("/kbs/v0/key/{id}", get(reference::key))
        .route("/kbs/v0/resource/{repo}/{kind}/{tag}", get(rcar::resource))
        .route("/kbs/v0/register_workload", post(admin::register_workload))
        .route(
            "/kbs/v0/admin/workloads",
            get(admin::list).post(admin::put_workload),
        )
        .route(
            "/kbs/v0/admin/workloads/{id}",
            axum::routing::delete(admin::remove_workload),
        )
        .route("/kbs/v0/admin/stats", get(admin::stats))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/kbs/v0/admin/workloads/{id}/secrets/{*name}",
            put(admin::put_secret).delete(admin::remove_secret),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(broker)
}

/// Logs a refusal with the endpoint and turns the result into a response.
fn finish(endpoint: &'static str, r: Result<Response, Refusal>) -> Response {
    match r {
        Ok(resp) => resp,
        Err(refusal) => {
            tracing::warn!(
                endpoint,
                status = refusal.status.as_u16(),
                kind = refusal.kind,
                detail = %refusal.detail,
                "refused"
            );
            refusal.into_response()
        }
    }
}

/// Runs a handler's work on the runtime's blocking pool and logs a refusal. Everything
/// behind a handler is blocking: SQLite calls, RSA/EC and certificate-chain verification,
/// SNP report and SEV measurement checks, key wrapping, and waits on session locks; on the
/// async worker threads one slow call would stall every connection. At most
/// `config.blocking_threads` handlers run at once: the others wait here, as tasks, so a burst
/// of clients neither starts a thread each nor grows the broker's memory.
pub(crate) async fn blocking(
    endpoint: &'static str,
    b: Arc<Broker>,
    work: impl FnOnce(&Broker) -> Result<Response, Refusal> + Send + 'static,
) -> Response {
    let started = std::time::Instant::now();
    let broker = b.clone();
    let Ok(slot) = b.pool.clone().acquire_owned().await else {
        return finish(endpoint, Err(Refusal::internal("request handler failed")));
    };
    let result = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        work(&b)
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!(endpoint, error = %e, "request handler failed");
        Err(Refusal::internal("request handler failed"))
    });
    if let Err(refusal) = &result {
        broker.metrics.refused(refusal.kind);
    }
    broker.metrics.observe(endpoint, started.elapsed());
    finish(endpoint, result)
}

/// `GET /healthz`: 200 when the store answers a trivial query, 503 otherwise. Not queued
/// behind attestation work: a load balancer's probe must not time out under load.
async fn healthz(State(b): AppState) -> Response {
    let store = b.store.clone();
    match tokio::task::spawn_blocking(move || store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::error_chain(&e), "health check: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "health check failed\n").into_response(),
    }
}

/// `GET /metrics`: the counters in Prometheus text format.
async fn metrics(State(b): AppState) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        b.metrics.render(),
    )
        .into_response()
}

async fn index() -> Response {
    finish(
        "index",
        Err(Refusal::unauthorized("Unauthorized", "nothing here")),
    )
}

async fn not_found() -> Response {
    finish(
        "unknown",
        Err(Refusal::not_found("NotFound", "no such endpoint")),
    )
}

pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal::bad_request("InvalidRequest", format!("malformed {what}: {e}")))
}

/// Like [`parse_json`] but without the parser's message, which can quote the input: for
/// bodies that carry secrets (registration, admin).
pub(crate) fn parse_json_quiet<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|_| Refusal::bad_request("InvalidRequest", format!("malformed {what}")))
}

pub(crate) fn parse_json_str<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, Refusal> {
    parse_json(text.as_bytes(), what)
}

/// Value of cookie `name` from the request.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<Zeroizing<String>> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .map(|t| Zeroizing::new(t.trim().to_string()))
}

pub(crate) fn set_cookie(
    resp: &mut Response,
    name: &str,
    id: &str,
    ttl: std::time::Duration,
) -> Result<(), Refusal> {
    let value = format!("{name}={id}; Path=/; HttpOnly; Max-Age={}", ttl.as_secs());
    let value =
        HeaderValue::from_str(&value).map_err(|_| Refusal::internal("cannot set the cookie"))?;
    resp.headers_mut().append(header::SET_COOKIE, value);
    Ok(())
}

pub(crate) fn json_response<T: serde::Serialize>(value: &T) -> Result<Response, Refusal> {
    let body = serde_json::to_vec(value).map_err(|_| Refusal::internal("cannot encode"))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

async fn auth(State(b): AppState, body: Bytes) -> Response {
    blocking("auth", b, move |b| auth_inner(b, &body)).await
}

/// Reference requests carry `extra-params` as a string; anything else is RCAR, whose version
/// is checked strictly.
fn auth_inner(b: &Broker, body: &[u8]) -> Result<Response, Refusal> {
    let probe: AuthProbe = parse_json(body, "auth request")?;
    if probe.extra_params.is_some_and(|t| t.0) {
        reference::auth(b, body)
    } else {
        rcar::auth(b, body)
    }
}

/// The one thing `/auth` dispatches on, read without building the body's value tree (a
/// SEV request's `extra-params` is tens of kilobytes of certificate chain, parsed once
/// more by the protocol's own handler).
#[derive(serde::Deserialize)]
struct AuthProbe {
    #[serde(rename = "extra-params")]
    extra_params: Option<IsString>,
}

/// Whether a JSON value is a string; any other value is skipped.
struct IsString(bool);

impl<'de> serde::Deserialize<'de> for IsString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IsString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, _: &str) -> Result<IsString, E> {
                Ok(IsString(true))
            }
            fn visit_bool<E>(self, _: bool) -> Result<IsString, E> {
                Ok(IsString(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<IsString, E> {
                Ok(IsString(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<IsString, E> {
                Ok(IsString(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<IsString, E> {
                Ok(IsString(false))
            }
            fn visit_unit<E>(self) -> Result<IsString, E> {
                Ok(IsString(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<IsString, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IsString(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<IsString, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IsString(false))
            }
        }
        d.deserialize_any(V)
    }
}

async fn attest(State(b): AppState, headers: HeaderMap, body: Bytes) -> Response {
    blocking("attest", b, move |b| attest_inner(b, &headers, &body)).await
}

fn attest_inner(b: &Broker, headers: &HeaderMap, body: &[u8]) -> Result<Response, Refusal> {
    let (id, protocol) = if let Some(id) = cookie(headers, krun_attestation::rcar::SESSION_COOKIE) {
        (id, Protocol::Rcar)
    } else if let Some(id) = cookie(headers, krun_attestation::reference::SESSION_COOKIE) {
        (id, Protocol::Reference)
    } else {
        return Err(Refusal::unauthorized("MissingCookie", "no session cookie"));
    };
    // The body is parsed before the session's one attempt is claimed: a malformed request
    // does not use it up.
    let result = match protocol {
        Protocol::Rcar => {
            let evidence = rcar::parse_attestation(body)?;
            let pending = b.sessions.begin_attest(&id, protocol)?;
            rcar::attest(b, &id, pending, &evidence)
        }
        Protocol::Reference => {
            let evidence = parse_json(body, "attestation")?;
            let pending = b.sessions.begin_attest(&id, protocol)?;
            reference::attest(b, &id, pending, &evidence)
        }
    };
    match result {
        Ok((response, attested)) => {
            b.sessions.attested(&id, protocol, &attested)?;
            let tee = match attested {
                Stage::SevAttested { .. } => "sev",
                _ => "snp",
            };
            let protocol = match protocol {
                Protocol::Reference => "reference",
                Protocol::Rcar => "rcar",
            };
            b.metrics.attested(protocol, tee);
            Ok(response)
        }
        Err(refusal) => {
            // A session whose one attestation attempt failed is of no further use.
            b.sessions.end(&id, Ended::AttestationFailed);
            Err(refusal)
        }
    }
}

/// The launch digests `w` accepts: its registered ones when they are bound; for unbound
/// ones, the digests recomputed from the launch's host.json (src/unbound.rs).
pub(crate) fn allowed_digests(
    b: &Broker,
    w: &Workload,
    channel: Channel,
    host_json: Option<&[u8]>,
) -> Result<Vec<Vec<u8>>, Refusal> {
    match w.measurement_kind {
        MeasurementKind::Bound => w
            .measurements
            .iter()
            .map(|m| hex::decode(m).map_err(|_| Refusal::internal("stored measurement is not hex")))
            .collect(),
        MeasurementKind::Unbound => {
            let verifier = b.unbound.as_ref().ok_or_else(|| {
                Refusal::unauthorized(
                    "UnboundDigest",
                    "workload is registered with an unbound digest and this broker has no --bundle to check it",
                )
            })?;
            let host_json = host_json.ok_or_else(|| {
                Refusal::unauthorized(
                    "UnboundDigest",
                    "workload is registered with an unbound digest and the launch sent no host.json",
                )
            })?;
            verifier.allowed_digests(w, channel, host_json)
        }
    }
}

/// Path parameters that name a workload.
pub(crate) type IdPath = Path<String>;

#[cfg(test)]
mod tests {
    use super::*;

    fn is_reference(body: &str) -> bool {
        let probe: AuthProbe = parse_json(body.as_bytes(), "auth request").unwrap();
        probe.extra_params.is_some_and(|t| t.0)
    }

    #[test]
    fn auth_dispatch_is_on_a_string_extra_params_only() {
        assert!(is_reference(
            r#"{"version":"0.0.0","tee":"snp","extra-params":"{\"a\":[1,2]}"}"#
        ));
        assert!(is_reference(r#"{"extra-params":""}"#));
        for rcar in [
            r#"{"version":"0.4.0","tee":"snp","extra-params":{}}"#,
            r#"{"extra-params":{"nested":[{"extra-params":"x"}]}}"#,
            r#"{"extra-params":[1,"x"]}"#,
            r#"{"extra-params":null}"#,
            r#"{"extra-params":7}"#,
            r#"{"extra-params":true}"#,
            r#"{"tee":"snp"}"#,
        ] {
            assert!(!is_reference(rcar), "{rcar}");
        }
        // Not an object: not the reference protocol (the RCAR parser refuses it).
        assert!(!is_reference("[1]"));
        let err: Result<AuthProbe, _> = parse_json(br#"{"extra-params":"x""#, "auth request");
        assert_eq!(err.err().unwrap().kind, "InvalidRequest");
    }
}
