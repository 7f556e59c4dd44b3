//! Loopback load test: N concurrent clients run full SNP attestations against the real
//! `krun-kbs` binary and the run prints attestations per second, latency percentiles, the
//! scaling ratio against one client from the same run, errors, and sessions left open.
//!
//! `cargo bench -p krun-kbs --bench attest_load -- [--clients N] [--per-client M]
//!  [--protocol rcar|reference]`

// Harness code: a failed setup step should abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use krun_attestation::client::snp::{self, SnpRequest};
use krun_attestation::KbsProtocol;
use support::*;

const MEASUREMENT: [u8; 48] = [0x5a; 48];
/// Long enough for a reference-protocol client to make its RSA key under load.
const SESSION_TTL_SECS: u64 = 10;

struct Run {
    per_second: f64,
    latencies: Vec<Duration>,
    errors: usize,
}

fn run(
    kbs: &Kbs,
    ev: &Arc<SnpEvidence>,
    clients: usize,
    per_client: usize,
    protocol: KbsProtocol,
) -> Run {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let cfg = kbs.client();
            let ev = ev.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_client);
                let mut errors = 0;
                for _ in 0..per_client {
                    let mut report = |rd: [u8; 64]| -> Result<
                        Vec<u8>,
                        Box<dyn std::error::Error + Send + Sync>,
                    > {
                        Ok(ev.report(rd, MEASUREMENT, LIBKRUN_POLICY))
                    };
                    let req = SnpRequest {
                        workload_id: "load",
                        protocol,
                        generation: "milan",
                        resource_path: None,
                        host_json: None,
                    };
                    let t = Instant::now();
                    match snp::attest(&cfg, &req, &mut report) {
                        Ok(s) if s.as_slice() == b"load passphrase" => lat.push(t.elapsed()),
                        Ok(_) => errors += 1,
                        Err(e) => {
                            eprintln!("attestation failed: {e}");
                            errors += 1;
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    Run {
        per_second: latencies.len() as f64 / elapsed,
        latencies,
        errors,
    }
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return f64::NAN;
    }
    // Nearest-rank percentile: the index is within 1..=len by the clamp.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
    lat[i].as_secs_f64() * 1000.0
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = arg(&args, "--clients").map_or(8, |v| v.parse().unwrap());
    let per_client: usize = arg(&args, "--per-client").map_or(25, |v| v.parse().unwrap());
    let protocols = match arg(&args, "--protocol").as_deref() {
        Some("reference") => vec![KbsProtocol::Reference],
        Some("rcar") => vec![KbsProtocol::Rcar],
        _ => vec![KbsProtocol::Rcar, KbsProtocol::Reference],
    };
    let ev = Arc::new(SnpEvidence::new());
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        session_ttl: Some(SESSION_TTL_SECS),
        ..Default::default()
    }));
    kbs.register("load", &hex::encode(MEASUREMENT), "load passphrase", 15);

    let mut failed = false;
    for protocol in protocols {
        let single = run(&kbs, &ev, 1, per_client.min(10), protocol);
        let full = run(&kbs, &ev, clients, per_client, protocol);
        // Attested RCAR sessions stay until they expire: wait for the collector (it runs
        // every TTL/2).
        std::thread::sleep(Duration::from_secs(SESSION_TTL_SECS * 3 / 2 + 2));
        let left = kbs.sessions();
        println!(
            "{protocol:?}: {clients} clients x {per_client}: {:.1} attestations/s \
             (1 client: {:.1}/s, ratio {:.2}), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, \
             errors {}, sessions left {left}",
            full.per_second,
            single.per_second,
            full.per_second / single.per_second,
            pct(&full.latencies, 0.50),
            pct(&full.latencies, 0.99),
            pct(&full.latencies, 1.0),
            full.errors + single.errors,
        );
        failed |= full.errors + single.errors > 0 || left > 0;
    }
    drop(kbs);
    if failed {
        eprintln!("load test had errors or leaked sessions");
        std::process::exit(1);
    }
}
