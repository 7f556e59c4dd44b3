//! Attestation sessions, kept in the store so that any replica sharing the database can serve
//! any step: created by `/auth`, attested once by `/attest`, consumed by the key or resource
//! release, expired after a time-to-live and garbage-collected. Every transition is one
//! conditional statement, so concurrent requests on several replicas cannot both attest a
//! session or both take its key.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::db::{first, Conn, DbError, Store, Value};
use crate::refusal::Refusal;
use crate::verify_sev::{SevOwner, SevProof};

/// Which protocol a session speaks (fixed at `/auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Reference,
    Rcar,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Reference => "reference",
            Protocol::Rcar => "rcar",
        }
    }
}

/// The key the guest will receive its secret under.
#[derive(Debug)]
pub enum RecipientKey {
    /// Reference protocol: RSA PKCS#1 v1.5.
    RsaPkcs1(openssl::rsa::Rsa<openssl::pkey::Public>),
    /// RCAR: RSA-OAEP-256 key wrap.
    RsaOaep256(openssl::rsa::Rsa<openssl::pkey::Public>),
    /// RCAR: ECDH-ES+A256KW on P-256.
    EcP256(openssl::ec::EcKey<openssl::pkey::Public>),
}

/// A [`RecipientKey`] as stored: its kind and public key (DER SubjectPublicKeyInfo, base64).
#[derive(Serialize, Deserialize)]
enum StoredKey {
    RsaPkcs1(String),
    RsaOaep256(String),
    EcP256(String),
}

impl Serialize for RecipientKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let der = |r: Result<Vec<u8>, openssl::error::ErrorStack>| {
            r.map(|d| STANDARD.encode(d))
                .map_err(|_| S::Error::custom("cannot encode the recipient key"))
        };
        match self {
            RecipientKey::RsaPkcs1(k) => StoredKey::RsaPkcs1(der(k.public_key_to_der())?),
            RecipientKey::RsaOaep256(k) => StoredKey::RsaOaep256(der(k.public_key_to_der())?),
            RecipientKey::EcP256(k) => StoredKey::EcP256(der(k.public_key_to_der())?),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for RecipientKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let bytes = |b64: &str| {
            STANDARD
                .decode(b64)
                .map_err(|_| D::Error::custom("stored recipient key is not base64"))
        };
        let bad = |_| D::Error::custom("stored recipient key is invalid");
        Ok(match StoredKey::deserialize(d)? {
            StoredKey::RsaPkcs1(k) => RecipientKey::RsaPkcs1(
                openssl::rsa::Rsa::public_key_from_der(&bytes(&k)?).map_err(bad)?,
            ),
            StoredKey::RsaOaep256(k) => RecipientKey::RsaOaep256(
                openssl::rsa::Rsa::public_key_from_der(&bytes(&k)?).map_err(bad)?,
            ),
            StoredKey::EcP256(k) => RecipientKey::EcP256(
                openssl::ec::EcKey::public_key_from_der(&bytes(&k)?).map_err(bad)?,
            ),
        })
    }
}

/// Optional bytes as base64 in the stored session (host.json can be kilobytes).
mod opt_b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Where a session is in its life: everything a later step needs, stored with the session.
#[derive(Serialize, Deserialize)]
pub enum Stage {
    /// SEV: the owner session waiting for the launch measurement.
    SevPending {
        owner: SevOwner,
        workload_id: String,
        /// The launch's host.json, if sent (src/unbound.rs).
        #[serde(with = "opt_b64")]
        host_json: Option<Vec<u8>>,
    },
    /// SNP reference protocol: the workload the guest claimed at `/auth`.
    SnpPending {
        workload_id: String,
        /// The launch's host.json, if sent (src/unbound.rs).
        #[serde(with = "opt_b64")]
        host_json: Option<Vec<u8>>,
    },
    /// RCAR: the workload is found from the measurement (or from the binding in the
    /// launch's host.json, if sent: src/unbound.rs).
    RcarPending {
        #[serde(with = "opt_b64")]
        host_json: Option<Vec<u8>>,
    },
    /// SEV attested: the owner session and the proof that rebuilds its verified state.
    SevAttested {
        owner: SevOwner,
        proof: SevProof,
        workload_id: String,
    },
    /// SNP attested (either protocol): the workloads whose measurement matched.
    SnpAttested {
        key: RecipientKey,
        workloads: Vec<String>,
    },
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Owner sessions hold transport keys: print the state name only.
        f.write_str(match self {
            Stage::SevPending { .. } => "SevPending",
            Stage::SnpPending { .. } => "SnpPending",
            Stage::RcarPending { .. } => "RcarPending",
            Stage::SevAttested { .. } => "SevAttested",
            Stage::SnpAttested { .. } => "SnpAttested",
        })
    }
}

impl Stage {
    /// The stored form. SEV stages hold the owner session's transport keys (TEK/TIK):
    /// `Store::seal_session` seals the bytes when the broker has a secrets key.
    fn encode(&self) -> Result<Zeroizing<Vec<u8>>, Refusal> {
        serde_json::to_vec(self)
            .map(Zeroizing::new)
            .map_err(|_| Refusal::internal("cannot store the session"))
    }

    fn decode(bytes: &[u8]) -> Result<Self, Refusal> {
        serde_json::from_slice(bytes).map_err(|_| Refusal::internal("stored session is invalid"))
    }
}

/// A session claimed for its one attestation attempt.
#[derive(Debug)]
pub struct Pending {
    pub nonce: String,
    pub stage: Stage,
}

/// Why a session ended before it expired; a later request with its id is told so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its key was requested (reference protocol: released at most once).
    KeyRequested,
    /// Its one attestation attempt failed.
    AttestationFailed,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::KeyRequested => "key_requested",
            Ended::AttestationFailed => "attestation_failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "key_requested" => Ended::KeyRequested,
            _ => Ended::AttestationFailed,
        }
    }

    fn refusal(self) -> Refusal {
        match self {
            Ended::KeyRequested => Refusal::unauthorized(
                "AlreadyReleased",
                "this session's key was already requested; a session releases its key at most once",
            ),
            Ended::AttestationFailed => {
                Refusal::unauthorized("SessionEnded", "session ended after a failed attestation")
            }
        }
    }
}

/// Session states (the `state` column): `pending` until `/attest` claims the session,
/// `attesting` while its one attempt runs, `attested` after. An ended session has `ended`
/// set and its stage wiped.
const PENDING: &str = "pending";
const ATTESTING: &str = "attesting";
const ATTESTED: &str = "attested";

/// The session table in the store.
pub struct Sessions {
    store: Arc<Store>,
    ttl: Duration,
    max: usize,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("ttl", &self.ttl)
            .field("max", &self.max)
            .finish()
    }
}

/// 128 random bits as 32 lowercase hex digits (the reference-kbs session id shape).
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A short, non-reversible tag of a session id for logs: the id is a bearer credential (the
/// RCAR token is the session id), so logs never carry it.
pub fn log_tag(id: &str) -> String {
    hex::encode(&openssl::sha::sha256(id.as_bytes())[..6])
}

/// Wall-clock milliseconds: replicas compare expiries written by each other, so their
/// clocks must agree (NTP) to well under a session's lifetime.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn unknown() -> Refusal {
    Refusal::unauthorized("InvalidSession", "unknown session")
}

/// Why session `id` could not be used by `protocol`: ended, expired, of another protocol,
/// or (`state_refusal`) in the wrong state.
fn refusal_for(
    c: &mut dyn Conn,
    id: &str,
    protocol: Protocol,
    state_refusal: fn(&str) -> Refusal,
) -> Result<Refusal, DbError> {
    let rows = c.query(
        "SELECT protocol, expires_ms, state, ended FROM sessions WHERE id = $1",
        &[Value::text(id)],
    )?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(unknown());
    };
    let [proto, expires, state, ended] = <[Value; 4]>::try_from(row)
        .map_err(|_| DbError::Shape("session row has the wrong columns".into()))?;
    let expired = expires.into_int()? <= now_ms();
    Ok(match (ended.into_opt_text()?, expired) {
        (Some(why), false) => Ended::parse(&why).refusal(),
        (Some(_), true) => unknown(),
        (None, true) => Refusal::unauthorized("ExpiredSession", "session expired"),
        (None, false) if proto.into_text()? != protocol.as_str() => {
            Refusal::unauthorized("InvalidSession", "session of another protocol")
        }
        (None, false) => state_refusal(&state.into_text()?),
    })
}

fn nonce_used(_: &str) -> Refusal {
    Refusal::unauthorized("NonceUsed", "session already attested or failed")
}

fn not_attested(_: &str) -> Refusal {
    Refusal::unauthorized("NotAttested", "session is not attested")
}

impl Sessions {
    pub fn new(store: Arc<Store>, ttl: Duration, max: usize) -> Self {
        Sessions { store, ttl, max }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Adds a session; refuses when the table is full of open sessions.
    pub fn insert(
        &self,
        protocol: Protocol,
        nonce: String,
        stage: &Stage,
    ) -> Result<String, Refusal> {
        let blob = stage.encode()?;
        let id = random_id();
        let now = now_ms();
        let max = i64::try_from(self.max).unwrap_or(i64::MAX);
        let inserted = self.store.tx(|c| {
            let open = |c: &mut dyn Conn| {
                first(c.query("SELECT count(*) FROM sessions WHERE ended IS NULL", &[])?)?
                    .into_int()
            };
            if open(c)? >= max {
                c.execute(
                    "DELETE FROM sessions WHERE expires_ms <= $1",
                    &[Value::Int(now)],
                )?;
                if open(c)? >= max {
                    return Ok(false);
                }
            }
            c.execute(
                "INSERT INTO sessions (id, protocol, nonce, expires_ms, state, stage)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    Value::text(&id),
                    Value::text(protocol.as_str()),
                    Value::Text(nonce),
                    Value::Int(now.saturating_add(self.ttl_ms())),
                    Value::text(PENDING),
                    Value::Blob(self.store.seal_session(&id, &blob)?),
                ],
            )?;
            Ok(true)
        })?;
        if !inserted {
            return Err(Refusal::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "TooManySessions",
                "too many open sessions",
            ));
        }
        Ok(id)
    }

    /// Claims the one attestation attempt of a live, pending session of `protocol`: of
    /// concurrent callers (on any replica) exactly one gets it.
    pub fn begin_attest(&self, id: &str, protocol: Protocol) -> Result<Pending, Refusal> {
        let claimed = self.store.tx(|c| {
            let rows = c.query(
                "UPDATE sessions SET state = $3
                 WHERE id = $1 AND protocol = $2 AND state = $4 AND ended IS NULL
                     AND expires_ms > $5
                 RETURNING nonce, stage",
                &[
                    Value::text(id),
                    Value::text(protocol.as_str()),
                    Value::text(ATTESTING),
                    Value::text(PENDING),
                    Value::Int(now_ms()),
                ],
            )?;
            match rows.into_iter().next() {
                Some(row) => Ok(Ok(row)),
                None => refusal_for(c, id, protocol, nonce_used).map(Err),
            }
        })??;
        let [nonce, stage] = <[Value; 2]>::try_from(claimed)
            .map_err(|_| Refusal::internal("stored session is invalid"))?;
        let stage = self.store.open_session(id, &stage.into_blob()?)?;
        Ok(Pending {
            nonce: nonce.into_text()?,
            stage: Stage::decode(&stage)?,
        })
    }

    /// Records the outcome of a claimed attestation attempt.
    pub fn attested(&self, id: &str, protocol: Protocol, stage: &Stage) -> Result<(), Refusal> {
        let blob = self.store.seal_session(id, &stage.encode()?)?;
        self.store.tx(|c| {
            let n = c.execute(
                "UPDATE sessions SET state = $2, stage = $3
                     WHERE id = $1 AND state = $4 AND ended IS NULL",
                &[
                    Value::text(id),
                    Value::text(ATTESTED),
                    Value::Blob(blob),
                    Value::text(ATTESTING),
                ],
            )?;
            if n == 1 {
                Ok(Ok(()))
            } else {
                // Its key was requested meanwhile, or it expired and was collected.
                refusal_for(c, id, protocol, nonce_used).map(Err)
            }
        })?
    }

    /// Ends a session early (its one attestation failed) and wipes its stored state.
    pub fn end(&self, id: &str, why: Ended) {
        let ended = self.store.tx(|c| {
            c.execute(
                "UPDATE sessions SET ended = $2, stage = $3 WHERE id = $1 AND ended IS NULL",
                &[Value::text(id), Value::text(why.as_str()), Value::blob(&[])],
            )
        });
        if let Err(e) = ended {
            tracing::error!(error = %crate::error_chain(&e), "cannot end a session");
        }
    }

    /// Ends a live session of `protocol` because its key is requested, in one conditional
    /// update: of concurrent callers on any replica exactly one gets its stage; the others
    /// (and any later caller) are refused with `AlreadyReleased`. The stage is `None` when
    /// the session was not attested (it is ended all the same).
    pub fn take(&self, id: &str, protocol: Protocol) -> Result<Option<Stage>, Refusal> {
        let taken = self.store.tx(|c| {
            let rows = c.query(
                "UPDATE sessions SET ended = $3
                 WHERE id = $1 AND protocol = $2 AND ended IS NULL AND expires_ms > $4
                 RETURNING state, stage",
                &[
                    Value::text(id),
                    Value::text(protocol.as_str()),
                    Value::text(Ended::KeyRequested.as_str()),
                    Value::Int(now_ms()),
                ],
            )?;
            let Some(row) = rows.into_iter().next() else {
                return refusal_for(c, id, protocol, not_attested).map(Err);
            };
            c.execute(
                "UPDATE sessions SET stage = $2 WHERE id = $1",
                &[Value::text(id), Value::blob(&[])],
            )?;
            Ok(Ok(row))
        })??;
        let [state, stage] = <[Value; 2]>::try_from(taken)
            .map_err(|_| Refusal::internal("stored session is invalid"))?;
        if state.into_text()? != ATTESTED {
            return Ok(None);
        }
        let stage = self.store.open_session(id, &stage.into_blob()?)?;
        Stage::decode(&stage).map(Some)
    }

    /// The stage of a live, attested session of `protocol`.
    pub fn attested_stage(&self, id: &str, protocol: Protocol) -> Result<Stage, Refusal> {
        let row = self.store.read(|c| {
            let rows = c.query(
                "SELECT stage FROM sessions
                 WHERE id = $1 AND protocol = $2 AND state = $3 AND ended IS NULL
                     AND expires_ms > $4",
                &[
                    Value::text(id),
                    Value::text(protocol.as_str()),
                    Value::text(ATTESTED),
                    Value::Int(now_ms()),
                ],
            )?;
            match rows.into_iter().next() {
                Some(row) => Ok(Ok(row)),
                None => refusal_for(c, id, protocol, not_attested).map(Err),
            }
        })??;
        let stage = first(vec![row])?.into_blob()?;
        Stage::decode(&self.store.open_session(id, &stage)?)
    }

    /// Records that `resource` is released in session `id`; false when it already was (by
    /// this or another replica).
    pub fn release(&self, id: &str, resource: &str) -> Result<bool, Refusal> {
        let n = self.store.tx(|c| {
            c.execute(
                "INSERT INTO session_releases (session_id, resource) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
                &[Value::text(id), Value::text(resource)],
            )
        })?;
        Ok(n == 1)
    }

    /// Deletes expired sessions (ended or not); returns how many.
    pub fn collect_garbage(&self) -> Result<u64, DbError> {
        self.store.tx(|c| {
            c.execute(
                "DELETE FROM sessions WHERE expires_ms <= $1",
                &[Value::Int(now_ms())],
            )
        })
    }

    /// Sessions not ended (open, attested, or expired and not yet collected).
    pub fn open_count(&self) -> Result<usize, DbError> {
        let n = self.store.read(|c| {
            first(c.query("SELECT count(*) FROM sessions WHERE ended IS NULL", &[])?)?.into_int()
        })?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(ttl: Duration, max: usize) -> (tempfile::TempDir, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("kbs.db")).unwrap());
        (dir, Sessions::new(store, ttl, max))
    }

    fn rcar() -> Stage {
        Stage::RcarPending { host_json: None }
    }

    #[test]
    fn sessions_expire_and_are_collected() {
        let (_dir, s) = sessions(Duration::from_millis(50), 2);
        let a = s.insert(Protocol::Rcar, "n".into(), &rcar()).unwrap();
        assert_eq!(a.len(), 32);
        let wrong = s.begin_attest(&a, Protocol::Reference).err().unwrap();
        assert_eq!(wrong.kind, "InvalidSession");
        let _b = s.insert(Protocol::Rcar, "n".into(), &rcar()).unwrap();
        let full = s.insert(Protocol::Rcar, "n".into(), &rcar()).err().unwrap();
        assert_eq!(full.status, 503);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            s.begin_attest(&a, Protocol::Rcar).err().unwrap().kind,
            "ExpiredSession"
        );
        assert_eq!(s.collect_garbage().unwrap(), 2);
        assert_eq!(s.open_count().unwrap(), 0);
        // Room again once the expired ones are gone.
        assert!(s.insert(Protocol::Rcar, "n".into(), &rcar()).is_ok());
        assert_eq!(
            s.begin_attest("nope", Protocol::Rcar).err().unwrap().kind,
            "InvalidSession"
        );
    }

    #[test]
    fn one_attestation_attempt_then_the_stage_is_kept() {
        let (_dir, s) = sessions(Duration::from_secs(60), 4);
        let host_json = Some(b"{\"a\":1}".to_vec());
        let a = s
            .insert(
                Protocol::Rcar,
                "nonce".into(),
                &Stage::RcarPending { host_json },
            )
            .unwrap();
        let p = s.begin_attest(&a, Protocol::Rcar).unwrap();
        assert_eq!(p.nonce, "nonce");
        assert!(
            matches!(p.stage, Stage::RcarPending { host_json: Some(ref j) } if j == b"{\"a\":1}")
        );
        assert_eq!(
            s.begin_attest(&a, Protocol::Rcar).err().unwrap().kind,
            "NonceUsed"
        );
        assert_eq!(
            s.attested_stage(&a, Protocol::Rcar).err().unwrap().kind,
            "NotAttested"
        );
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let public =
            openssl::rsa::Rsa::public_key_from_der(&rsa.public_key_to_der().unwrap()).unwrap();
        let stage = Stage::SnpAttested {
            key: RecipientKey::RsaOaep256(public),
            workloads: vec!["w".into()],
        };
        s.attested(&a, Protocol::Rcar, &stage).unwrap();
        match s.attested_stage(&a, Protocol::Rcar).unwrap() {
            Stage::SnpAttested {
                key: RecipientKey::RsaOaep256(k),
                workloads,
            } => {
                assert_eq!(workloads, vec!["w"]);
                assert_eq!(k.n(), rsa.n());
            }
            other => panic!("{other:?}"),
        }
        assert!(s.release(&a, "default/key/w").unwrap());
        assert!(!s.release(&a, "default/key/w").unwrap());
        assert!(s.release(&a, "default/other/w").unwrap());
    }

    #[test]
    fn a_session_is_taken_once_and_later_requests_say_why() {
        let (_dir, s) = sessions(Duration::from_secs(60), 4);
        let a = s
            .insert(
                Protocol::Reference,
                "n".into(),
                &Stage::SnpPending {
                    workload_id: "w".into(),
                    host_json: None,
                },
            )
            .unwrap();
        assert_eq!(
            s.take(&a, Protocol::Rcar).err().unwrap().kind,
            "InvalidSession"
        );
        let barrier = std::sync::Barrier::new(16);
        let results: Vec<Result<bool, Refusal>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        s.take(&a, Protocol::Reference).map(|st| st.is_some())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        // Not attested: taken (and ended) without a stage.
        assert!(results.iter().any(|r| matches!(r, Ok(false))));
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(r.kind, "AlreadyReleased");
        }
        assert_eq!(
            s.begin_attest(&a, Protocol::Reference).err().unwrap().kind,
            "AlreadyReleased"
        );
        assert_eq!(s.open_count().unwrap(), 0);
        let b = s.insert(Protocol::Rcar, "n".into(), &rcar()).unwrap();
        s.end(&b, Ended::AttestationFailed);
        assert_eq!(
            s.begin_attest(&b, Protocol::Rcar).err().unwrap().kind,
            "SessionEnded"
        );
    }

    #[test]
    fn log_tags_are_short_and_do_not_contain_the_id() {
        let id = random_id();
        let tag = log_tag(&id);
        assert_eq!(tag.len(), 12);
        assert!(!id.contains(&tag));
        assert_eq!(tag, log_tag(&id));
    }
}
