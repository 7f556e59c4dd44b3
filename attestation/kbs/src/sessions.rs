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
    },
    /// SNP reference protocol: the workload the guest claimed at `/auth`.
    SnpPending { workload_id: String },
    /// RCAR: the workload is found from the measurement.
    RcarPending,
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
            Stage::RcarPending => "RcarPending",
            Stage::SevAttested { .. } => "SevAttested",
            Stage::SnpAttested { .. } => "SnpAttested",
            Stage::Failed => "Failed",
        })
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("protocol", &self.protocol)
            .field("stage", &self.stage)
            .finish()
    }
}

/// A locked handle on one session.
pub type SessionRef = Arc<Mutex<Session>>;

/// The session table.
pub struct Sessions {
    map: Mutex<HashMap<String, SessionRef>>,
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

impl Sessions {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Adds a session; refuses when the table is full of live sessions.
    pub fn insert(
        &self,
        protocol: Protocol,
        nonce: String,
        stage: Stage,
    ) -> Result<String, Refusal> {
        let mut map = self
            .map
            .lock()
            .map_err(|_| Refusal::internal("session table poisoned"))?;
        if map.len() >= self.max {
            let now = Instant::now();
            map.retain(|_, s| s.lock().map(|s| s.expires > now).unwrap_or(false));
            if map.len() >= self.max {
                return Err(Refusal::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "TooManySessions",
                    "too many open sessions",
                ));
            }
        }
        let id = random_id();
        let session = Session {
            id: id.clone(),
            protocol,
            nonce,
            expires: Instant::now() + self.ttl,
            stage,
            released: HashSet::new(),
        };
        map.insert(id.clone(), Arc::new(Mutex::new(session)));
        Ok(id)
    }

    /// Finds a live session of `protocol`. Expired sessions are dropped on sight.
    pub fn get(&self, id: &str, protocol: Protocol) -> Result<SessionRef, Refusal> {
        let mut map = self
            .map
            .lock()
            .map_err(|_| Refusal::internal("session table poisoned"))?;
        let Some(s) = map.get(id).cloned() else {
            return Err(Refusal::unauthorized("InvalidSession", "unknown session"));
        };
        let (expired, proto) = {
            let g = s
                .lock()
                .map_err(|_| Refusal::internal("session poisoned"))?;
            (g.expires <= Instant::now(), g.protocol)
        };
        if expired {
            map.remove(id);
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

    /// Ends a session (after its secret is released).
    pub fn remove(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }

    /// Drops expired sessions; returns how many are left.
    pub fn collect_garbage(&self) -> usize {
        let now = Instant::now();
        match self.map.lock() {
            Ok(mut map) => {
                map.retain(|_, s| s.lock().map(|s| s.expires > now).unwrap_or(false));
                map.len()
            }
            Err(_) => 0,
        }
    }

    /// Number of sessions in the table (live or not yet collected).
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
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
            .insert(Protocol::Rcar, "n".into(), Stage::RcarPending)
            .unwrap();
        assert_eq!(a.len(), 32);
        assert!(s.get(&a, Protocol::Rcar).is_ok());
        let wrong = s.get(&a, Protocol::Reference).err().unwrap();
        assert_eq!(wrong.kind, "InvalidSession");
        let _b = s
            .insert(Protocol::Rcar, "n".into(), Stage::RcarPending)
            .unwrap();
        let full = s
            .insert(Protocol::Rcar, "n".into(), Stage::RcarPending)
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
            .insert(Protocol::Rcar, "n".into(), Stage::RcarPending)
            .is_ok());
        assert_eq!(
            s.get("nope", Protocol::Rcar).err().unwrap().kind,
            "InvalidSession"
        );
    }
}
