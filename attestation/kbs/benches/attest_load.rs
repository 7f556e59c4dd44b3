//! Loopback load test of complete attestation flows against the real `krun-kbs` binary, with
//! the project's PSP model as the platform:
//!
//! - `sev-es`: `/auth` with the model's SEV certificate chain, the model's SEV-ES launch under
//!   the broker's owner session, `/attest` with its LAUNCH_MEASURE, `/key`, then the model
//!   unwraps the LAUNCH_SECRET packet (MAC checked) and the passphrase must be the registered
//!   one;
//! - `snp`: the reference protocol (RSA-2048 key made by the client each flow) with a report
//!   of a model SNP guest;
//! - `rcar`: Trustee's protocol (EC P-256 key) with the same guest.
//!
//! For each kind and number of clients it prints flows/s, p50/p99 latency, the broker's CPU
//! time per flow (utime+stime from /proc/PID/stat) and its RSS before and after. Every request
//! opens a new connection, as libkrun's client does.
//!
//! `--reference-kbs PATH` names a virtee/reference-kbs binary the user built from its public
//! source outside this checkout; the same SEV-ES flows then run against it in the same run,
//! alternating with krun-kbs, and the ratio is printed. `--soak N` runs N more SEV-ES flows
//! and prints krun-kbs's RSS before and after.
//!
//! The SNP reference-protocol clients spend most of a flow making their RSA-2048 key, so those
//! points run `--snp-flows` flows (default 64) instead of `--flows`.
//!
//! `--stores sqlite,postgres,replicas` runs the flows instead against one broker on SQLite,
//! one on PostgreSQL and two replicas sharing a PostgreSQL database (each request of a flow
//! to the next replica in turn, so every session moves between them), the PostgreSQL server
//! started for the run (Debian's `postgresql`), and prints flows/s and p99 for each and the
//! two-replica / one-replica ratio.
//!
//! `cargo bench -p krun-kbs --bench attest_load -- [--clients 1,8,32,64] [--flows N]
//!  [--snp-flows N] [--kinds sev-es,snp,rcar] [--rounds R] [--soak N] [--session-ttl S]
//!  [--reference-kbs PATH] [--stores sqlite,postgres,replicas]`

// Harness code: a failed setup step should abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Figures for printing: counts far below 2^52, percentile indexes clamped.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use krun_attestation::client::sev::SevAttestation;
use krun_attestation::client::snp::{self, SnpRequest};
use krun_attestation::reference::{SevBuild, SevCertChain, SevMeasurement, SevVersion};
use krun_attestation::{secret_table, ClientConfig, KbsProtocol};
use krun_psp_model::{ModelIdentity, OwnerSession, SevGuest, SevMode, SnpGuest, SnpLaunchFinish};
use support::*;

/// Default session lifetime: long enough for 64 reference-protocol clients to make their
/// RSA keys at once on a small machine.
const SESSION_TTL_SECS: u64 = 60;
/// SEV-ES policy bits of buildah's registrations.
const SEV_ES_POLICY: u32 = 63;
const SEV_PASSPHRASE: &[u8] = b"sev-es load passphrase";
const SNP_PASSPHRASE: &[u8] = b"snp load passphrase";
const SEV_DATA: [u8; 8192] = [0x42; 8192];
const SEV_VMSA: [u8; 4096] = [0x17; 4096];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    SevEs,
    Snp,
    Rcar,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SevEs => "sev-es",
            Kind::Snp => "snp (reference)",
            Kind::Rcar => "rcar",
        }
    }
}

/// What the clients need: the model's identity, its SEV chain and an SNP guest.
struct Platform {
    identity: Arc<ModelIdentity>,
    chain: SevCertChain,
    build: SevBuild,
    snp_guest: SnpGuest,
}

impl Platform {
    fn new() -> Self {
        let identity = Arc::new(ModelIdentity::generate().unwrap());
        let chain = SevCertChain::from_bytes(identity.sev_chain_bytes()).unwrap();
        let b = identity.sev_version().build();
        let build = SevBuild {
            version: SevVersion {
                major: b.version.major,
                minor: b.version.minor,
            },
            build: b.build,
        };
        let mut snp_guest =
            SnpGuest::launch_start(identity.clone(), LIBKRUN_POLICY, [0; 16]).unwrap();
        snp_guest.update_normal(0x10_0000, &[0xa5; 4096]).unwrap();
        snp_guest
            .launch_finish(SnpLaunchFinish {
                id_block: None,
                author_key_en: false,
                host_data: [0; 32],
            })
            .unwrap();
        Platform {
            identity,
            chain,
            build,
            snp_guest,
        }
    }

    fn sev_digest() -> [u8; 32] {
        openssl::sha::sha256(&[SEV_DATA.as_slice(), &SEV_VMSA].concat())
    }

    /// One complete SEV-ES flow; the passphrase must come back.
    fn sev_es_flow(&self, cfg: &ClientConfig) -> Result<(), String> {
        let session = SevAttestation::auth(cfg, "sev-load", self.build, self.chain.clone(), None)
            .map_err(|e| e.to_string())?;
        let owner = OwnerSession {
            godh_cert: &session.start.cert,
            session: &session.start.session.to_bytes(),
        };
        let mut guest = SevGuest::launch_start(
            &self.identity,
            SevMode::SevEs,
            session.start.policy.to_u32(),
            Some(owner),
        )
        .map_err(|e| e.to_string())?;
        guest.launch_update_data(&SEV_DATA).unwrap();
        guest.launch_update_vmsa(&SEV_VMSA).unwrap();
        let m = guest.launch_measure().unwrap();
        session
            .attest(&SevMeasurement::from_bytes(&m.to_bytes()).unwrap())
            .map_err(|e| e.to_string())?;
        let packet = session.key().map_err(|e| e.to_string())?;
        let plain = guest
            .launch_secret(
                &packet.header_bytes(),
                packet.ciphertext.len(),
                &packet.ciphertext,
            )
            .map_err(|e| format!("launch secret: {e}"))?;
        match secret_table::passphrase(&plain) {
            Ok(p) if p.as_slice() == SEV_PASSPHRASE => Ok(()),
            _ => Err("wrong passphrase".into()),
        }
    }

    /// One complete SNP flow with `protocol`.
    fn snp_flow(&self, cfg: &ClientConfig, protocol: KbsProtocol) -> Result<(), String> {
        let req = SnpRequest {
            workload_id: "snp-load",
            protocol,
            generation: "milan",
            resource_path: None,
            host_json: None,
        };
        let mut report =
            |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
                Ok(self.snp_guest.report(&rd, 0)?.to_vec())
            };
        match snp::attest(cfg, &req, &mut report) {
            Ok(s) if s.as_slice() == SNP_PASSPHRASE => Ok(()),
            Ok(_) => Err("wrong passphrase".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn flow(&self, kind: Kind, cfg: &ClientConfig) -> Result<(), String> {
        match kind {
            Kind::SevEs => self.sev_es_flow(cfg),
            Kind::Snp => self.snp_flow(cfg, KbsProtocol::Reference),
            Kind::Rcar => self.snp_flow(cfg, KbsProtocol::Rcar),
        }
    }
}

/// A broker under test: its URL and process(es).
trait Target: Sync {
    fn name(&self) -> &'static str;
    fn url(&self) -> &str;
    fn pid(&self) -> u32;
    /// Every process serving it (CPU and RSS are summed over them).
    fn pids(&self) -> Vec<u32> {
        vec![self.pid()]
    }
    /// Sessions still open (krun-kbs only).
    fn sessions_left(&self) -> usize {
        0
    }
    fn client(&self) -> ClientConfig {
        let mut cfg = ClientConfig::tcp(self.url(), Duration::from_secs(60), None).unwrap();
        cfg.retries = 0;
        cfg
    }
}

impl Target for Kbs {
    fn name(&self) -> &'static str {
        "krun-kbs"
    }
    fn url(&self) -> &str {
        &self.url
    }
    fn pid(&self) -> u32 {
        Kbs::pid(self)
    }
}

/// Two replicas on one database behind a round-robin "balancer": each connection goes to
/// the next replica, so consecutive requests of a flow reach different replicas.
struct Replicas {
    brokers: [Kbs; 2],
    next: Arc<AtomicUsize>,
}

impl Target for Replicas {
    fn name(&self) -> &'static str {
        "2 replicas"
    }
    fn url(&self) -> &str {
        &self.brokers[0].url
    }
    fn pid(&self) -> u32 {
        self.brokers[0].pid()
    }
    fn pids(&self) -> Vec<u32> {
        self.brokers.iter().map(Kbs::pid).collect()
    }
    fn sessions_left(&self) -> usize {
        // One database: either replica sees every session.
        self.brokers[0].sessions()
    }
    fn client(&self) -> ClientConfig {
        let addrs = [self.brokers[0].addr.clone(), self.brokers[1].addr.clone()];
        let next = self.next.clone();
        let connector = move || -> std::io::Result<Box<dyn krun_attestation::transport::Stream>> {
            let addr = &addrs[next.fetch_add(1, Ordering::Relaxed) % 2];
            let s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            Ok(Box::new(s))
        };
        client_with(self.url(), connector)
    }
}

/// A broker on one store, with its label.
struct Labelled {
    label: &'static str,
    kbs: Kbs,
}

impl Target for Labelled {
    fn name(&self) -> &'static str {
        self.label
    }
    fn url(&self) -> &str {
        &self.kbs.url
    }
    fn pid(&self) -> u32 {
        self.kbs.pid()
    }
    fn sessions_left(&self) -> usize {
        self.kbs.sessions()
    }
}

/// A virtee/reference-kbs binary run on a free loopback port with a fresh SQLite database in
/// a temporary directory (it creates its tables at start).
struct ReferenceKbs {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl ReferenceKbs {
    fn start(bin: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let db = dir.path().join("db.sqlite");
        std::fs::create_dir_all(dir.path().join("db/diesel")).unwrap();
        let child = Command::new(bin)
            .current_dir(dir.path())
            .env("ROCKET_ADDRESS", "127.0.0.1")
            .env("ROCKET_PORT", port.to_string())
            .env("ROCKET_LOG_LEVEL", "off")
            .env(
                "ROCKET_DATABASES",
                format!("{{diesel={{url=\"{}\"}}}}", db.display()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run reference-kbs {bin}: {e}"));
        let addr = format!("127.0.0.1:{port}");
        let mut r = ReferenceKbs {
            child,
            url: format!("http://{addr}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("reference-kbs exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "reference-kbs did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        r.register();
        r
    }

    /// buildah's registration body, the way reference-kbs takes it.
    fn register(&mut self) {
        let digest = hex::encode(Platform::sev_digest());
        let body = buildah_body(
            "sev-load",
            &digest,
            std::str::from_utf8(SEV_PASSPHRASE).unwrap(),
            SEV_ES_POLICY,
        );
        let addr = self.url.trim_start_matches("http://").to_string();
        let mut s = TcpStream::connect(&addr).unwrap();
        let req = krun_attestation::http::HttpRequest {
            method: "POST",
            host: &addr,
            path: "/kbs/v0/register_workload",
            headers: &[("Content-Type", "application/json")],
            body: Some(body.as_bytes()),
        };
        let r = krun_attestation::http::exchange(&mut s, &req, 1 << 20).unwrap();
        assert_eq!(r.status, 200, "reference-kbs registration: {}", r.message());
    }
}

impl Drop for ReferenceKbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target for ReferenceKbs {
    fn name(&self) -> &'static str {
        "reference-kbs"
    }
    fn url(&self) -> &str {
        &self.url
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Clock ticks per second of /proc/PID/stat times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Resident set of `pid` in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

struct Figures {
    flows: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_ms_per_flow: f64,
    rss_before_kb: u64,
    rss_after_kb: u64,
    errors: usize,
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return f64::NAN;
    }
    let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
    lat[i].as_secs_f64() * 1000.0
}

/// `flows` complete flows of `kind` by `clients` concurrent clients.
fn run(target: &dyn Target, p: &Platform, kind: Kind, clients: usize, flows: usize) -> Figures {
    let pids = target.pids();
    let rss = || pids.iter().map(|&p| rss_kb(p)).sum::<u64>();
    let cpu = || pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let rss_before_kb = rss();
    let cpu_before = cpu();
    let per_client = flows.div_ceil(clients).max(1);
    let start = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let cfg = target.client();
                scope.spawn(move || {
                    let mut lat = Vec::with_capacity(per_client);
                    let mut errors = 0;
                    for _ in 0..per_client {
                        let t = Instant::now();
                        match p.flow(kind, &cfg) {
                            Ok(()) => lat.push(t.elapsed()),
                            Err(e) => {
                                if errors == 0 {
                                    eprintln!(
                                        "{} {}: flow failed: {e}",
                                        target.name(),
                                        kind.name()
                                    );
                                }
                                errors += 1;
                            }
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_ticks_used = cpu() - cpu_before;
    let mut latencies: Vec<Duration> = results.iter().flat_map(|(l, _)| l.clone()).collect();
    let errors = results.iter().map(|(_, e)| e).sum();
    latencies.sort();
    let done = latencies.len();
    Figures {
        flows: done,
        per_second: done as f64 / elapsed,
        p50_ms: pct(&latencies, 0.50),
        p99_ms: pct(&latencies, 0.99),
        cpu_ms_per_flow: cpu_ticks_used as f64 * 1000.0 / clock_ticks() / done.max(1) as f64,
        rss_before_kb,
        rss_after_kb: rss(),
        errors,
    }
}

fn print(target: &str, kind: Kind, clients: usize, f: &Figures) {
    println!(
        "{target:<13} {:<15} {clients:>3} clients: {:>5} flows {:>7.1} flows/s  p50 {:>7.1} ms  \
         p99 {:>7.1} ms  CPU {:>5.2} ms/flow  RSS {:.1} -> {:.1} MB  errors {}",
        kind.name(),
        f.flows,
        f.per_second,
        f.p50_ms,
        f.p99_ms,
        f.cpu_ms_per_flow,
        f.rss_before_kb as f64 / 1024.0,
        f.rss_after_kb as f64 / 1024.0,
        f.errors,
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `--stores`: the same flows against each store; flows/s and p99 per store and the
/// two-replica / one-PostgreSQL-broker ratio. The exit code: 1 on errors or leaked sessions.
#[allow(clippy::too_many_arguments)]
fn compare_stores(
    stores: &[&str],
    start: &dyn Fn(Option<String>) -> Kbs,
    platform: &Platform,
    kinds: &[Kind],
    levels: &[usize],
    flows: usize,
    snp_flows: usize,
    ttl: u64,
) -> i32 {
    let pg = stores
        .iter()
        .any(|s| *s != "sqlite")
        .then(support::pg_server::Postgres::start);
    let mut targets: Vec<Box<dyn Target>> = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let db = |pg: &Option<support::pg_server::Postgres>| {
            pg.as_ref().map(|pg| pg.create_database(&format!("kbs{i}")))
        };
        match *store {
            "sqlite" => targets.push(Box::new(Labelled {
                label: "sqlite",
                kbs: start(None),
            })),
            "postgres" => targets.push(Box::new(Labelled {
                label: "postgres",
                kbs: start(db(&pg)),
            })),
            "replicas" => {
                let url = db(&pg);
                let a = start(url.clone());
                let b = start(url);
                targets.push(Box::new(Replicas {
                    brokers: [a, b],
                    next: Arc::new(AtomicUsize::new(0)),
                }));
            }
            other => panic!("unknown store {other} (sqlite, postgres, replicas)"),
        }
    }
    let mut errors = 0;
    for &kind in kinds {
        for &clients in levels {
            let n = if kind == Kind::Snp { snp_flows } else { flows };
            let mut rates = Vec::new();
            for t in &targets {
                let f = run(t.as_ref(), platform, kind, clients, n);
                print(t.name(), kind, clients, &f);
                errors += f.errors;
                rates.push((t.name(), f.per_second));
            }
            let rate = |name: &str| rates.iter().find(|(n, _)| *n == name).map(|(_, r)| *r);
            if let (Some(one), Some(two)) = (rate("postgres"), rate("2 replicas")) {
                println!(
                    "ratio         {:<15} {clients:>3} clients: 2 replicas {two:.1} / 1 postgres \
                     broker {one:.1} flows/s = {:.2}x",
                    kind.name(),
                    two / one
                );
            }
        }
    }
    // Reference-protocol sessions end at /key; RCAR ones when they expire.
    if kinds.contains(&Kind::Rcar) {
        std::thread::sleep(Duration::from_secs(ttl * 3 / 2 + 2));
    }
    let left: usize = targets.iter().map(|t| t.sessions_left()).sum();
    println!("sessions left: {left}");
    drop(targets);
    if errors > 0 || left > 0 {
        eprintln!("load test had errors or leaked sessions");
        return 1;
    }
    0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let levels: Vec<usize> = arg(&args, "--clients")
        .unwrap_or_else(|| "1,8,32,64".into())
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let flows: usize = arg(&args, "--flows").map_or(256, |v| v.parse().unwrap());
    let snp_flows: usize = arg(&args, "--snp-flows").map_or(64, |v| v.parse().unwrap());
    let ttl: u64 = arg(&args, "--session-ttl").map_or(SESSION_TTL_SECS, |v| v.parse().unwrap());
    let rounds: usize = arg(&args, "--rounds").map_or(1, |v| v.parse().unwrap());
    let soak: usize = arg(&args, "--soak").map_or(0, |v| v.parse().unwrap());
    let kinds: Vec<Kind> = arg(&args, "--kinds")
        .unwrap_or_else(|| "sev-es,snp,rcar".into())
        .split(',')
        .map(|k| match k.trim() {
            "sev-es" => Kind::SevEs,
            "snp" => Kind::Snp,
            "rcar" => Kind::Rcar,
            other => panic!("unknown kind {other} (sev-es, snp, rcar)"),
        })
        .collect();
    let reference_bin = arg(&args, "--reference-kbs");

    let platform = Platform::new();
    let dir = tempfile::tempdir().unwrap();
    let vcek = format!(
        "{}.pem",
        hex::encode(platform.identity.snp_platform().chip_id)
    );
    std::fs::write(dir.path().join(vcek), platform.identity.vcek_pem().unwrap()).unwrap();
    let root = [
        platform.identity.snp_ark_pem().unwrap(),
        platform.identity.snp_ask_pem().unwrap(),
    ]
    .concat();
    let start = |db: Option<String>| {
        let kbs = Kbs::start(KbsOptions {
            admin_token: true,
            trust_root_pem: Some(root.clone()),
            vcek_dir: Some(dir.path().to_path_buf()),
            sev_ark: Some(platform.chain.ca.ark.clone()),
            session_ttl: Some(ttl),
            db,
            ..Default::default()
        });
        kbs.register(
            "sev-load",
            &hex::encode(Platform::sev_digest()),
            std::str::from_utf8(SEV_PASSPHRASE).unwrap(),
            SEV_ES_POLICY,
        );
        kbs.register(
            "snp-load",
            &hex::encode(platform.snp_guest.launch_digest()),
            std::str::from_utf8(SNP_PASSPHRASE).unwrap(),
            15,
        );
        kbs
    };
    if let Some(stores) = arg(&args, "--stores") {
        let stores: Vec<&str> = stores.split(',').map(str::trim).collect();
        println!(
            "stores: {}; brokers, database and clients on one machine ({} cores)",
            stores.join(", "),
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
        );
        let code = compare_stores(
            &stores, &start, &platform, &kinds, &levels, flows, snp_flows, ttl,
        );
        std::process::exit(code);
    }
    let kbs = start(None);
    let reference = reference_bin.as_deref().map(ReferenceKbs::start);
    println!(
        "machine: {} cores, {}; {flows} flows per point, {rounds} round(s), broker and clients \
         on one machine, a new connection per request; SNP reference points: {snp_flows} flows",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
            .unwrap_or_default(),
    );
    if reference.is_none() {
        println!(
            "reference-kbs: not given (--reference-kbs PATH runs the SEV-ES flows against it \
             too and prints the ratio)"
        );
    }

    let mut errors = 0;
    for &kind in &kinds {
        for &clients in &levels {
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            let n = if kind == Kind::Snp { snp_flows } else { flows };
            for _ in 0..rounds {
                let f = run(&kbs, &platform, kind, clients, n);
                print("krun-kbs", kind, clients, &f);
                errors += f.errors;
                ours.push(f.per_second);
                if let (Some(r), Kind::SevEs) = (&reference, kind) {
                    let f = run(r, &platform, kind, clients, n);
                    print("reference-kbs", kind, clients, &f);
                    theirs.push(f.per_second);
                }
            }
            if !theirs.is_empty() {
                let (a, b) = (median(ours), median(theirs));
                println!(
                    "ratio         {:<15} {clients:>3} clients: krun-kbs {a:.1} / reference-kbs \
                     {b:.1} flows/s = {:.2}x (medians of {rounds})",
                    kind.name(),
                    a / b
                );
            }
        }
    }
    if soak > 0 {
        // In quarters, so a steady growth shows apart from the first allocations.
        let first = rss_kb(kbs.pid());
        for _ in 0..4 {
            let f = run(&kbs, &platform, Kind::SevEs, 8, soak.div_ceil(4));
            print("krun-kbs soak", Kind::SevEs, 8, &f);
            errors += f.errors;
        }
        let last = rss_kb(kbs.pid());
        println!(
            "krun-kbs soak: RSS {:.1} -> {:.1} MB over {soak} SEV-ES flows ({:+.3} kB per flow)",
            first as f64 / 1024.0,
            last as f64 / 1024.0,
            (last as f64 - first as f64) / soak as f64
        );
    }
    // Reference-protocol sessions end at /key; RCAR ones when they expire (collected every
    // TTL/2).
    if kinds.contains(&Kind::Rcar) {
        std::thread::sleep(Duration::from_secs(ttl * 3 / 2 + 2));
    }
    let left = kbs.sessions();
    println!("krun-kbs sessions left: {left}");
    drop(kbs);
    if errors > 0 || left > 0 {
        eprintln!("load test had errors or leaked sessions");
        std::process::exit(1);
    }
}
