//! In-memory attestation sessions: created by `/auth`, attested once by `/attest`, consumed by
//! the key or resource release, expired after a time-to-live and garbage-collected.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::refusal::Refusal;

/// Which protocol a session speaks (fixed at `/auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Reference,
    Rcar,
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

/// Where a session is in its life.
pub enum Stage {
    /// SEV: the owner session waiting for the launch measurement.
    SevPending {
        session: sev::session::Session<sev::session::Initialized>,
        build: sev::firmware::host::Build,
        workload_id: String,
        /// The launch's host.json, if sent (src/unbound.rs).
        host_json: Option<Vec<u8>>,
    },
    /// SNP reference protocol: the workload the guest claimed at `/auth`.
    SnpPending {
        workload_id: String,
        /// The launch's host.json, if sent (src/unbound.rs).
        host_json: Option<Vec<u8>>,
    },
    /// RCAR: the workload is found from the measurement (or from the binding in the
    /// launch's host.json, if sent: src/unbound.rs).
    RcarPending { host_json: Option<Vec<u8>> },
    /// SEV attested: the verified owner session packages the secret.
    SevAttested {
        session: sev::session::Session<sev::session::Verified>,
        workload_id: String,
    },
    /// SNP attested (either protocol): the workloads whose measurement matched.
    SnpAttested {
        key: RecipientKey,
        workloads: Vec<String>,
    },
    /// Attestation failed; the session can do nothing more.
    Failed,
}

/// One session.
pub struct Session {
    pub id: String,
    pub protocol: Protocol,
    pub nonce: String,
    pub expires: Instant,
    pub stage: Stage,
    /// Resources already released in this session (each at most once).
    pub released: HashSet<String>,
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
            Stage::Failed => "Failed",
        })
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &log_tag(&self.id))
            .field("protocol", &self.protocol)
            .field("stage", &self.stage)
            .finish()
    }
}

/// A locked handle on one session.
pub type SessionRef = Arc<Mutex<Session>>;

/// Why a session ended before it expired; a later request with its id is told so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its key was requested (reference protocol: released at most once).
    KeyRequested,
    /// Its one attestation attempt failed.
    AttestationFailed,
}

impl Ended {
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

/// Live sessions, and the ids of sessions that ended early (kept until they would have
/// expired, so late requests get a precise refusal).
#[derive(Default)]
struct Table {
    /// Protocol and expiry sit beside the session so lookups and collection never wait for
    /// a session that is busy verifying evidence.
    live: HashMap<String, (Protocol, Instant, SessionRef)>,
    ended: HashMap<String, (Instant, Ended)>,
}

impl Table {
    /// The refusal for an id that is not live.
    fn missing(&self, id: &str) -> Refusal {
        match self.ended.get(id) {
            Some((expires, why)) if *expires > Instant::now() => why.refusal(),
            _ => Refusal::unauthorized("InvalidSession", "unknown session"),
        }
    }

    fn collect(&mut self, now: Instant) {
        self.live.retain(|_, (_, expires, _)| *expires > now);
        self.ended.retain(|_, (expires, _)| *expires > now);
    }
}

/// The session table.
pub struct Sessions {
    table: Mutex<Table>,
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

impl Sessions {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Sessions {
            table: Mutex::new(Table::default()),
            ttl,
            max,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Table>, Refusal> {
        self.table
            .lock()
            .map_err(|_| Refusal::internal("session table poisoned"))
    }

    /// Adds a session; refuses when the table is full of live sessions.
    pub fn insert(
        &self,
        protocol: Protocol,
        nonce: String,
        stage: Stage,
    ) -> Result<String, Refusal> {
        let mut table = self.lock()?;
        if table.live.len() >= self.max {
            table.collect(Instant::now());
            if table.live.len() >= self.max {
                return Err(Refusal::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "TooManySessions",
                    "too many open sessions",
                ));
            }
        }
        let id = random_id();
        let expires = Instant::now() + self.ttl;
        let session = Session {
            id: id.clone(),
            protocol,
            nonce,
            expires,
            stage,
            released: HashSet::new(),
        };
        table.live.insert(
            id.clone(),
            (protocol, expires, Arc::new(Mutex::new(session))),
        );
        Ok(id)
    }

    /// Finds a live session of `protocol`. Expired sessions are dropped on sight.
    pub fn get(&self, id: &str, protocol: Protocol) -> Result<SessionRef, Refusal> {
        let mut table = self.lock()?;
        let Some((proto, expires, s)) = table.live.get(id).cloned() else {
            return Err(table.missing(id));
        };
        if expires <= Instant::now() {
            table.live.remove(id);
            return Err(Refusal::unauthorized("ExpiredSession", "session expired"));
        }
        if proto != protocol {
            return Err(Refusal::unauthorized(
                "InvalidSession",
                "session of another protocol",
            ));
        }
        Ok(s)
    }

    /// Takes a live session of `protocol` out of the table in one step under the table's
    /// lock: of concurrent callers with the same id exactly one gets it; the others (and
    /// any later caller) are refused with `AlreadyReleased`.
    pub fn take(&self, id: &str, protocol: Protocol) -> Result<SessionRef, Refusal> {
        let mut table = self.lock()?;
        let Some((proto, expires, _)) = table.live.get(id) else {
            return Err(table.missing(id));
        };
        if *expires <= Instant::now() {
            table.live.remove(id);
            return Err(Refusal::unauthorized("ExpiredSession", "session expired"));
        }
        if *proto != protocol {
            return Err(Refusal::unauthorized(
                "InvalidSession",
                "session of another protocol",
            ));
        }
        let expires = *expires;
        let taken = table.live.remove(id).map(|(_, _, s)| s);
        Self::remember(&mut table, id, expires, Ended::KeyRequested, self.max);
        taken.ok_or_else(|| Refusal::internal("session vanished"))
    }

    /// Ends a session early (its one attestation failed).
    pub fn end(&self, id: &str, why: Ended) {
        if let Ok(mut table) = self.table.lock() {
            if let Some((_, expires, _)) = table.live.remove(id) {
                Self::remember(&mut table, id, expires, why, self.max);
            }
        }
    }

    /// Records why `id` ended, within the same bound as live sessions (when full, the id
    /// is simply forgotten: later requests are still refused, as unknown).
    fn remember(table: &mut Table, id: &str, expires: Instant, why: Ended, max: usize) {
        if table.ended.len() >= max {
            let now = Instant::now();
            table.ended.retain(|_, (e, _)| *e > now);
        }
        if table.ended.len() < max {
            table.ended.insert(id.to_string(), (expires, why));
        }
    }

    /// Drops expired sessions; returns how many are left.
    pub fn collect_garbage(&self) -> usize {
        match self.table.lock() {
            Ok(mut table) => {
                table.collect(Instant::now());
                table.live.len()
            }
            Err(_) => 0,
        }
    }

    /// Number of sessions in the table (live or not yet collected).
    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.live.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_collected() {
        let s = Sessions::new(Duration::from_millis(50), 2);
        let a = s
            .insert(
                Protocol::Rcar,
                "n".into(),
                Stage::RcarPending { host_json: None },
            )
            .unwrap();
        assert_eq!(a.len(), 32);
        assert!(s.get(&a, Protocol::Rcar).is_ok());
        let wrong = s.get(&a, Protocol::Reference).err().unwrap();
        assert_eq!(wrong.kind, "InvalidSession");
        let _b = s
            .insert(
                Protocol::Rcar,
                "n".into(),
                Stage::RcarPending { host_json: None },
            )
            .unwrap();
        let full = s
            .insert(
                Protocol::Rcar,
                "n".into(),
                Stage::RcarPending { host_json: None },
            )
            .err()
            .unwrap();
        assert_eq!(full.status, 503);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            s.get(&a, Protocol::Rcar).err().unwrap().kind,
            "ExpiredSession"
        );
        assert_eq!(s.collect_garbage(), 0);
        // Room again once the expired ones are gone.
        assert!(s
            .insert(
                Protocol::Rcar,
                "n".into(),
                Stage::RcarPending { host_json: None }
            )
            .is_ok());
        assert_eq!(
            s.get("nope", Protocol::Rcar).err().unwrap().kind,
            "InvalidSession"
        );
    }

    #[test]
    fn a_session_is_taken_once_and_later_requests_say_why() {
        let s = Sessions::new(Duration::from_secs(60), 4);
        let a = s
            .insert(Protocol::Reference, "n".into(), Stage::Failed)
            .unwrap();
        assert_eq!(
            s.take(&a, Protocol::Rcar).err().unwrap().kind,
            "InvalidSession"
        );
        let barrier = std::sync::Barrier::new(16);
        let results: Vec<Result<(), Refusal>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        s.take(&a, Protocol::Reference).map(|_| ())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(r.kind, "AlreadyReleased");
        }
        assert_eq!(
            s.get(&a, Protocol::Reference).err().unwrap().kind,
            "AlreadyReleased"
        );
        assert!(s.is_empty());
        let b = s.insert(Protocol::Rcar, "n".into(), Stage::Failed).unwrap();
        s.end(&b, Ended::AttestationFailed);
        assert_eq!(
            s.get(&b, Protocol::Rcar).err().unwrap().kind,
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
