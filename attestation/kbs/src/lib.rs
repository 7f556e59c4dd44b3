//! krun-kbs: a reference key broker for libkrun-sev. It speaks the reference-kbs protocol
//! (SEV/SEV-ES pre-attestation and SNP) and Trustee's RCAR protocol (SNP), keeps workloads,
//! secrets and attestation sessions in SQLite or PostgreSQL (replicas share one database),
//! and releases a workload's secret only to a session that attested that workload, once.

pub mod api;
pub mod config;
pub mod db;
pub mod jwe;
pub mod metrics;
pub mod refusal;
pub mod seal;
pub mod serve;
pub mod sessions;
pub mod testkit;
pub mod unbound;
pub mod verified;
pub mod verify_sev;
pub mod verify_snp;

/// Renders an error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
