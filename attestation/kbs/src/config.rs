//! Broker settings (from the command line).

use std::time::Duration;

use zeroize::Zeroizing;

use crate::db::{MinTcb, SevFirmware, SnpRequirements};

/// Default session lifetime (Trustee's default too).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(300);
/// Default request body limit (reference-kbs's JSON limit).
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;
/// Default cap on open sessions.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Default cap on connections served at once; further clients wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default number of request handlers running at once on the blocking pool: twice the
/// CPUs (at least 4). Handlers are CPU-bound (signatures, key agreement) with short waits on
/// SQLite and session locks; more threads than this only add memory and switching.
pub fn default_blocking_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, std::num::NonZero::get)
        .saturating_mul(2)
        .clamp(4, 64)
}

/// How the broker behaves.
#[derive(Clone)]
pub struct BrokerConfig {
    /// Bearer token for the admin API and authenticated registration.
    pub admin_token: Option<Zeroizing<String>>,
    /// Accept `register_workload` without a token (buildah's unauthenticated flow).
    pub insecure_registration: bool,
    pub session_ttl: Duration,
    pub max_sessions: usize,
    pub body_limit: usize,
    /// SNP requirements given to workloads registered through `register_workload`.
    pub default_snp: SnpRequirements,
    /// Minimum SNP TCB for workloads without one of their own (`--min-tcb`).
    pub min_tcb: MinTcb,
    /// Minimum SEV firmware for workloads without one of their own (`--min-sev-fw`).
    pub min_sev_fw: SevFirmware,
    /// Request handlers running at once on the blocking pool (`--blocking-threads`); further
    /// requests wait their turn without holding a thread.
    pub blocking_threads: usize,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("insecure_registration", &self.insecure_registration)
            .field("session_ttl", &self.session_ttl)
            .field("max_sessions", &self.max_sessions)
            .field("body_limit", &self.body_limit)
            .field("default_snp", &self.default_snp)
            .field("min_tcb", &self.min_tcb)
            .field("min_sev_fw", &self.min_sev_fw)
            .field("blocking_threads", &self.blocking_threads)
            .finish()
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            admin_token: None,
            insecure_registration: false,
            session_ttl: DEFAULT_SESSION_TTL,
            max_sessions: DEFAULT_MAX_SESSIONS,
            body_limit: DEFAULT_BODY_LIMIT,
            default_snp: SnpRequirements::default(),
            min_tcb: MinTcb::default(),
            min_sev_fw: SevFirmware::default(),
            blocking_threads: default_blocking_threads(),
        }
    }
}
