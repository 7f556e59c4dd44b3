//! Launches of workloads registered with an *unbound* digest (docs/measurement.md, "Unbound
//! digests").
//!
//! `buildah mkcw` registers what `krunfw_measurement` prints: the digest of the launch with
//! its binding (workload id, broker URL, protocol, TLS pin) left out, because that tool only
//! sees vCPUs and RAM. A real launch is always bound, so its digest differs. The broker,
//! holding the same guest bundle, closes the gap with the launch's measured host.json (sent
//! with `/auth`): it recomputes the digest of that host.json and requires the evidence to
//! carry exactly it (so the host.json is the launch's own), checks that the binding in it
//! names this workload and this broker, and that the same launch without its binding has
//! the registered digest. An unbound digest is never matched directly: a launch that
//! really is unbound would take the key without being bound to anyone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use krun_bundle::Bundle;
use krun_footer::{Binding, KbsProtocol};
use krun_psp_model::ModelIdentity;
use krun_sev::launch::{host_json, measurement_of_host_json};
use krun_sev::tee::TeeMode;

use crate::db::{TeeKind, Workload};
use crate::refusal::Refusal;

/// Largest host.json accepted (the init refuses larger files too).
pub const MAX_HOST_JSON: usize = 64 * 1024;

/// Most (bundle, host.json) digest pairs remembered.
const CACHE_ENTRIES: usize = 256;

/// How the launch reached the broker: its binding must name the same protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The guest, with the reference protocol (SNP).
    Reference,
    /// The guest, with RCAR (SNP).
    Rcar,
    /// The host's VMM before the guest runs (SEV/SEV-ES; the binding's protocol is the
    /// guest's business and is not checked).
    SevHost,
}

/// The digests of one launch for one bundle.
#[derive(Debug, Clone)]
struct Pair {
    bound: Vec<u8>,
    unbound: Vec<u8>,
}

/// Recomputes launch digests from host.json for unbound registrations.
pub struct UnboundVerifier {
    bundles: Vec<Bundle>,
    public_urls: Vec<String>,
    own_pin: Option<[u8; 32]>,
    identity: Arc<ModelIdentity>,
    cache: Mutex<HashMap<(usize, [u8; 32]), Pair>>,
}

impl std::fmt::Debug for UnboundVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnboundVerifier")
            .field("bundles", &self.bundles.len())
            .field("public_urls", &self.public_urls)
            .field("own_pin", &self.own_pin.map(hex::encode))
            .finish_non_exhaustive()
    }
}

/// Errors setting the verifier up.
#[derive(Debug, thiserror::Error)]
pub enum UnboundSetupError {
    #[error("--bundle needs at least one --public-url (the URL launches name this broker by)")]
    NoPublicUrl,
    #[error("--public-url {0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("cannot make the measurement model's identity")]
    Identity(#[source] krun_psp_model::IdentityError),
}

/// The URL as launches compare it: no trailing slash, scheme and host lowercase.
pub fn normalize_url(url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" || rest.is_empty() {
        return None;
    }
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    Some(format!("{scheme}://{}{path}", host.to_ascii_lowercase()))
}

impl UnboundVerifier {
    /// A verifier over `bundles`, for launches bound to one of `public_urls` and, when this
    /// broker serves TLS, pinned to nothing or to `own_pin` (SHA-256 of its certificate's
    /// SubjectPublicKeyInfo).
    pub fn new(
        bundles: Vec<Bundle>,
        public_urls: &[String],
        own_pin: Option<[u8; 32]>,
    ) -> Result<Self, UnboundSetupError> {
        let identity = ModelIdentity::generate().map_err(UnboundSetupError::Identity)?;
        Self::with_identity(bundles, public_urls, own_pin, Arc::new(identity))
    }

    /// [`UnboundVerifier::new`] with a given model identity (no digest depends on it).
    pub fn with_identity(
        bundles: Vec<Bundle>,
        public_urls: &[String],
        own_pin: Option<[u8; 32]>,
        identity: Arc<ModelIdentity>,
    ) -> Result<Self, UnboundSetupError> {
        if public_urls.is_empty() {
            return Err(UnboundSetupError::NoPublicUrl);
        }
        let public_urls = public_urls
            .iter()
            .map(|u| normalize_url(u).ok_or_else(|| UnboundSetupError::BadUrl(u.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UnboundVerifier {
            bundles,
            public_urls,
            own_pin,
            identity,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The launch digests a launch of `w` (registered unbound) described by `host_json` may
    /// report: the bound digest for each bundle whose unbound digest of the same launch is
    /// registered. Refuses when the binding does not name `w` and this broker.
    pub fn allowed_digests(
        &self,
        w: &Workload,
        channel: Channel,
        host_json: &[u8],
    ) -> Result<Vec<Vec<u8>>, Refusal> {
        let launch = host_json::describe(host_json).map_err(|e| {
            Refusal::bad_request("InvalidRequest", format!("host.json cannot be read: {e}"))
        })?;
        let tee_ok = match w.tee {
            TeeKind::Snp => launch.mode == TeeMode::Snp,
            TeeKind::Sev => matches!(launch.mode, TeeMode::Sev | TeeMode::SevEs),
        };
        if !tee_ok {
            return Err(Refusal::unauthorized(
                "UnknownWorkload",
                "host.json is for another TEE than the workload",
            ));
        }
        let binding = launch.binding.ok_or_else(|| {
            Refusal::unauthorized(
                "Binding",
                "the launch is not bound to a workload and broker",
            )
        })?;
        self.check_binding(w, channel, &binding)?;
        let unbound_json = host_json::unbound(host_json).map_err(|e| {
            Refusal::bad_request("InvalidRequest", format!("host.json cannot be read: {e}"))
        })?;
        let mut allowed = Vec::new();
        for index in 0..self.bundles.len() {
            let pair = self.pair(index, host_json, &unbound_json)?;
            if w.measurements.contains(&hex::encode(&pair.unbound)) {
                allowed.push(pair.bound);
            }
        }
        if allowed.is_empty() {
            return Err(Refusal::unauthorized(
                "SnpMeasurement",
                "launch measurement is not allowed: the launch without its binding has no registered digest",
            ));
        }
        Ok(allowed)
    }

    /// The workload the binding in `host_json` names, if it reads (RCAR, whose `/auth`
    /// names no workload).
    pub fn bound_workload(host_json: &[u8]) -> Option<String> {
        host_json::describe(host_json)
            .ok()?
            .binding
            .map(|b| b.workload_id)
    }

    fn check_binding(
        &self,
        w: &Workload,
        channel: Channel,
        binding: &Binding,
    ) -> Result<(), Refusal> {
        let refuse = |why: &'static str| Err(Refusal::unauthorized("Binding", why));
        if binding.workload_id != w.id {
            return refuse("the launch is bound to another workload");
        }
        let url_ok =
            normalize_url(&binding.attestation_url).is_some_and(|u| self.public_urls.contains(&u));
        if !url_ok {
            return refuse("the launch is bound to another broker URL");
        }
        let protocol_ok = match channel {
            Channel::Reference => binding.kbs_protocol == KbsProtocol::Reference,
            Channel::Rcar => binding.kbs_protocol == KbsProtocol::Rcar,
            Channel::SevHost => true,
        };
        if !protocol_ok {
            return refuse("the launch is bound to another broker protocol");
        }
        match (binding.broker_pin, self.own_pin) {
            (None, _) => Ok(()),
            (Some(pin), Some(own)) if openssl::memcmp::eq(&pin, &own) => Ok(()),
            (Some(_), _) => refuse("the launch pins another broker's TLS key"),
        }
    }

    fn pair(&self, index: usize, host_json: &[u8], unbound_json: &[u8]) -> Result<Pair, Refusal> {
        let key = (index, openssl::sha::sha256(host_json));
        if let Some(p) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(p);
        }
        let bundle = &self.bundles[index];
        let measure = |json: &[u8]| {
            measurement_of_host_json(&self.identity, bundle, json)
                .map(|m| m.digest)
                .map_err(|e| {
                    Refusal::bad_request(
                        "InvalidRequest",
                        format!("cannot compute the launch digest of host.json: {e}"),
                    )
                })
        };
        let pair = Pair {
            bound: measure(host_json)?,
            unbound: measure(unbound_json)?,
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, pair.clone());
        }
        Ok(pair)
    }
}

/// Decodes a `host_json` request field (standard base64), refusing oversized ones.
pub fn decode_host_json(b64: &str) -> Result<Vec<u8>, Refusal> {
    use base64::Engine;
    if b64.len() > MAX_HOST_JSON.div_ceil(3) * 4 {
        return Err(Refusal::bad_request(
            "InvalidRequest",
            "host.json is too large",
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| Refusal::bad_request("InvalidRequest", "host_json is not base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_compare_without_trailing_slash_and_case_of_scheme_and_host() {
        assert_eq!(
            normalize_url("HTTP://Broker.Example:8000/").as_deref(),
            Some("http://broker.example:8000")
        );
        assert_eq!(
            normalize_url("https://b.example/kbs/").as_deref(),
            Some("https://b.example/kbs")
        );
        assert_eq!(normalize_url("ftp://x"), None);
        assert_eq!(normalize_url("http://"), None);
        assert_eq!(normalize_url("broker:8000"), None);
    }

    #[test]
    fn oversized_or_invalid_host_json_is_refused() {
        assert!(decode_host_json("e30=").is_ok());
        assert!(decode_host_json("not base64!").is_err());
        assert!(decode_host_json(&"A".repeat(MAX_HOST_JSON * 2)).is_err());
    }
}
