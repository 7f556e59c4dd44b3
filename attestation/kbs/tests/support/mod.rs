//! Shared by the integration tests and the load test: runs the real `krun-kbs` binary on
//! 127.0.0.1 with a temporary database, and produces evidence. Evidence comes from
//! `krun_kbs::testkit` only through [`SnpEvidence`] and [`SevPlatform`], so the PSP model can
//! replace it here without touching the tests.

#![allow(dead_code)]
// Test harness code: a failed setup step should abort the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use krun_attestation::http::{exchange, HttpRequest, HttpResponse};
use krun_attestation::ClientConfig;
use krun_kbs::testkit;

pub mod pg_server;

pub const ADMIN_TOKEN: &str = "s3cret-admin-token";
/// SNP policy of libkrun guests: SMT allowed plus the must-be-one bit 17.
pub const LIBKRUN_POLICY: u64 = 0x30000;

/// A running broker.
pub struct Kbs {
    child: Option<Child>,
    /// `--db` as given.
    db_arg: String,
    /// The bundle given with `--bundle` ([`KbsOptions::unbound`]).
    pub bundle: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub addr: String,
    args: Vec<String>,
    umask: Option<u32>,
    env: Vec<(String, String)>,
    capture_log: bool,
}

/// Options for [`Kbs::start`].
#[derive(Default, Clone)]
pub struct KbsOptions {
    pub admin_token: bool,
    pub insecure_registration: bool,
    pub trust_root_pem: Option<Vec<u8>>,
    pub sev_ark: Option<Vec<u8>>,
    pub session_ttl: Option<u64>,
    pub body_limit: Option<usize>,
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub vcek_dir: Option<PathBuf>,
    pub max_sessions: Option<usize>,
    pub extra_args: Vec<String>,
    /// File-creation mask the broker runs under (default: the test's).
    pub umask: Option<u32>,
    /// Extra environment of the broker process.
    pub env: Vec<(String, String)>,
    /// Log at debug level into [`Kbs::log`] instead of warnings to the test's stderr.
    pub capture_log: bool,
    /// Check unbound registrations: `--bundle` with a minimal bundle (its path in
    /// [`Kbs::bundle`]) and `--public-url` [`PUBLIC_URL`].
    pub unbound: bool,
    /// `--db`: a `postgres://` URL; default a SQLite file in the broker's directory.
    pub db: Option<String>,
}

/// The URL launches name a broker started with [`KbsOptions::unbound`] by.
pub const PUBLIC_URL: &str = "http://kbs.test:8000";

impl Kbs {
    pub fn start(opts: KbsOptions) -> Kbs {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).display().to_string();
        let db = opts.db.clone().unwrap_or_else(|| p("kbs.db"));
        let mut args = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--db".into(),
            db.clone(),
        ];
        if opts.admin_token {
            std::fs::write(dir.path().join("token"), format!("{ADMIN_TOKEN}\n")).unwrap();
            args.extend(["--admin-token-file".into(), p("token")]);
        }
        if opts.insecure_registration {
            args.push("--insecure-registration".into());
        }
        if let Some(pem) = &opts.trust_root_pem {
            std::fs::write(dir.path().join("root.pem"), pem).unwrap();
            args.extend(["--trust-root".into(), p("root.pem")]);
        }
        if let Some(ark) = &opts.sev_ark {
            std::fs::write(dir.path().join("sev-ark.cert"), ark).unwrap();
            args.extend(["--sev-trust-root".into(), p("sev-ark.cert")]);
        }
        if let Some(ttl) = opts.session_ttl {
            args.extend(["--session-ttl".into(), ttl.to_string()]);
        }
        if let Some(limit) = opts.body_limit {
            args.extend(["--body-limit".into(), limit.to_string()]);
        }
        if let Some(max) = opts.max_sessions {
            args.extend(["--max-sessions".into(), max.to_string()]);
        }
        if let Some((cert, key)) = &opts.tls {
            std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
            std::fs::write(dir.path().join("tls.key"), key).unwrap();
            args.extend([
                "--tls-cert".into(),
                p("tls.crt"),
                "--tls-key".into(),
                p("tls.key"),
            ]);
        }
        if let Some(v) = &opts.vcek_dir {
            args.extend(["--vcek-dir".into(), v.display().to_string()]);
        }
        let bundle = opts.unbound.then(|| {
            let b = krun_bundle::write_minimal_bundle(dir.path()).unwrap();
            args.extend([
                "--bundle".into(),
                b.display().to_string(),
                "--public-url".into(),
                PUBLIC_URL.into(),
            ]);
            b
        });
        args.extend(opts.extra_args.iter().cloned());
        let mut kbs = Kbs {
            db_arg: db,
            child: None,
            bundle,
            dir,
            url: String::new(),
            addr: String::new(),
            args,
            umask: opts.umask,
            env: opts.env.clone(),
            capture_log: opts.capture_log,
        };
        kbs.spawn();
        kbs
    }

    fn spawn(&mut self) {
        let bin = env!("CARGO_BIN_EXE_krun-kbs");
        let mut cmd = match self.umask {
            Some(mask) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let (level, stderr) = if self.capture_log {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .unwrap();
            ("debug", Stdio::from(f))
        } else {
            ("warn", Stdio::inherit())
        };
        let mut child = cmd
            .args(&self.args)
            .env("RUST_LOG", level)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("krun-kbs listening on ")
            .unwrap()
            .to_string();
        self.addr = url.split("://").nth(1).unwrap().to_string();
        self.url = url;
        self.child = Some(child);
    }

    /// Stops the broker and starts it again on a new port with the same database.
    pub fn restart(&mut self) {
        self.stop();
        let port_arg = self.args.iter().position(|a| a == "--listen").unwrap() + 1;
        self.args[port_arg] = "127.0.0.1:0".into();
        self.spawn();
    }

    /// Kills the broker (SIGKILL: no clean shutdown).
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Starts a killed broker again on a new port with the same database.
    pub fn start_again(&mut self) {
        self.restart();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("kbs.log")
    }

    /// What the broker logged so far (with [`KbsOptions::capture_log`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The broker's process id (for /proc figures).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap()
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("kbs.db")
    }

    pub fn client(&self) -> ClientConfig {
        let mut cfg = ClientConfig::tcp(&self.url, Duration::from_secs(30), None).unwrap();
        cfg.retries = 1;
        cfg.retry_delay = Duration::from_millis(10);
        cfg
    }

    /// One raw HTTP request (plain TCP).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> HttpResponse {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let req = HttpRequest {
            method,
            host: &self.addr,
            path,
            headers,
            body,
        };
        exchange(&mut s, &req, 1 << 20).unwrap()
    }

    pub fn post_json(&self, path: &str, cookie: Option<&str>, body: &[u8]) -> HttpResponse {
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(c) = cookie {
            h.push(("Cookie", c));
        }
        self.request("POST", path, &h, Some(body))
    }

    pub fn get(&self, path: &str, cookie: Option<&str>) -> HttpResponse {
        let h: Vec<(&str, &str)> = cookie.map(|c| vec![("Cookie", c)]).unwrap_or_default();
        self.request("GET", path, &h, None)
    }

    /// `POST /kbs/v0/admin/workloads` with the admin token: adds or replaces the workload
    /// `spec` describes.
    pub fn admin_add_workload(&self, spec: &serde_json::Value) -> HttpResponse {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.request(
            "POST",
            "/kbs/v0/admin/workloads",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(spec.to_string().as_bytes()),
        )
    }

    /// `krun-sev mkcw --register`'s body (a bound digest), with the admin token.
    pub fn register(
        &self,
        workload_id: &str,
        measurement_hex: &str,
        passphrase: &str,
        policy_bits: u32,
    ) {
        let body = mkcw_body(workload_id, measurement_hex, passphrase, policy_bits);
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let r = self.request(
            "POST",
            "/kbs/v0/register_workload",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
            ],
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 200, "{}", r.message());
    }

    pub fn sessions(&self) -> usize {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let r = self.request(
            "GET",
            "/kbs/v0/admin/stats",
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(r.status, 200);
        let s: krun_kbs::api::Stats = serde_json::from_slice(&r.body).unwrap();
        s.sessions
    }

    /// Runs the admin CLI against this broker's database.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_krun-kbs"))
            .arg("--db")
            .arg(&self.db_arg)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Kbs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The body `buildah mkcw` posts, field order and tee_config string as Go writes them.
/// `krun-sev mkcw --register`'s body: buildah's, saying the digest is bound.
pub fn mkcw_body(workload_id: &str, measurement_hex: &str, passphrase: &str, bits: u32) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&buildah_body(
        workload_id,
        measurement_hex,
        passphrase,
        bits,
    ))
    .unwrap();
    v["measurement_kind"] = "bound".into();
    v.to_string()
}

pub fn buildah_body(
    workload_id: &str,
    measurement_hex: &str,
    passphrase: &str,
    bits: u32,
) -> String {
    let tee_config = format!(r#"{{"flags":{{"bits":{bits}}},"minfw":{{"major":0,"minor":0}}}}"#);
    serde_json::json!({
        "workload_id": workload_id,
        "launch_measurement": measurement_hex,
        "passphrase": passphrase,
        "tee_config": tee_config,
    })
    .to_string()
}

/// SNP evidence source (fake chain today, the PSP model later).
pub struct SnpEvidence {
    fake: testkit::snp::FakeSnp,
    vceks: tempfile::TempDir,
}

impl SnpEvidence {
    pub fn new() -> Self {
        let fake = testkit::snp::FakeSnp::new().unwrap();
        let vceks = tempfile::tempdir().unwrap();
        let name = format!("{}.der", hex::encode(fake.chip_id()));
        std::fs::write(vceks.path().join(name), fake.vcek_der()).unwrap();
        SnpEvidence { fake, vceks }
    }

    /// Broker options trusting this platform (root PEM and VCEK directory).
    pub fn trusted_by(&self, opts: KbsOptions) -> KbsOptions {
        KbsOptions {
            trust_root_pem: Some(self.trust_root_pem()),
            vcek_dir: Some(self.vceks.path().to_path_buf()),
            ..opts
        }
    }

    /// PEM to pass as `--trust-root`.
    pub fn trust_root_pem(&self) -> Vec<u8> {
        self.fake.trust_root_pem().unwrap()
    }

    pub fn chip_id(&self) -> [u8; 64] {
        self.fake.chip_id()
    }

    pub fn vcek_der(&self) -> Vec<u8> {
        self.fake.vcek_der()
    }

    /// The raw report of a guest launched with `measurement` and `policy`.
    pub fn report(&self, report_data: [u8; 64], measurement: [u8; 48], policy: u64) -> Vec<u8> {
        self.fake
            .report_bytes(report_data, measurement, policy)
            .unwrap()
    }

    pub fn cert_table(&self) -> Vec<sev::firmware::host::CertTableEntry> {
        self.fake.cert_table()
    }
}

/// Legacy SEV platform source (fake chain and PSP today, the PSP model later).
pub struct SevPlatform {
    pub fake: testkit::sev::FakeSevPlatform,
}

impl SevPlatform {
    pub fn new() -> Self {
        SevPlatform {
            fake: testkit::sev::FakeSevPlatform::new().unwrap(),
        }
    }
}

/// A client whose connections go through `f` (to inject canned answers).
pub fn client_with(
    url: &str,
    f: impl Fn() -> std::io::Result<Box<dyn krun_attestation::transport::Stream>>
        + Send
        + Sync
        + 'static,
) -> ClientConfig {
    let mut cfg = ClientConfig::new(url, Arc::new(f), None).unwrap();
    cfg.retries = 0;
    cfg
}

pub fn path_of(p: &Path) -> String {
    p.display().to_string()
}

/// `n` clients ask for workload `wid`'s key with `cookie` at the same moment, spread over
/// `brokers` in turn: each answer's status and body.
pub fn concurrent_key_requests(
    brokers: &[&Kbs],
    wid: &str,
    cookie: &str,
    n: usize,
) -> Vec<(u16, Vec<u8>)> {
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let addr = brokers[i % brokers.len()].addr.clone();
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let barrier = barrier.clone();
            let (path, cookie) = (format!("/kbs/v0/key/{wid}"), cookie.to_string());
            std::thread::spawn(move || {
                barrier.wait();
                let req = HttpRequest {
                    method: "GET",
                    host: &addr,
                    path: &path,
                    headers: &[("Cookie", &cookie)],
                    body: None,
                };
                let r = exchange(&mut s, &req, 1 << 20).unwrap();
                (r.status, r.body)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// The one key `answers` (from [`concurrent_key_requests`]) released, opened with `key`;
/// every other answer must be the refusal of a key already released.
pub fn the_one_released_key(
    answers: &[(u16, Vec<u8>)],
    key: &krun_attestation::keys::TeeKey,
    round: usize,
) -> Vec<u8> {
    let released: Vec<_> = answers.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(
        released.len(),
        1,
        "round {round}: {} keys released",
        released.len()
    );
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        let text = String::from_utf8_lossy(body);
        assert_eq!(*status, 401, "{text}");
        assert!(text.contains("AlreadyReleased"), "{text}");
    }
    open_reference_key(key, &released[0].1)
}

/// The reference protocol's `/key` answer (hex of the PKCS#1 ciphertext, as JSON) opened
/// with `key`.
pub fn open_reference_key(key: &krun_attestation::keys::TeeKey, body: &[u8]) -> Vec<u8> {
    let hex_ct: String = serde_json::from_slice(body).unwrap();
    key.decrypt_pkcs1(&hex::decode(hex_ct).unwrap())
        .unwrap()
        .to_vec()
}

/// RCAR's `/attest` body for `nonce`: a report of `ev`'s guest with measurement `m` whose
/// REPORT_DATA binds `key`, with its certificate table.
pub fn rcar_attest_body(
    ev: &SnpEvidence,
    key: &krun_attestation::keys::TeeKey,
    nonce: &str,
    m: [u8; 48],
) -> String {
    let pk = key.rcar_pubkey();
    let rd = krun_attestation::keys::rcar_report_data(nonce, &pk, "").unwrap();
    let report = sev::parser::ByteParser::from_bytes(&ev.report(rd, m, LIBKRUN_POLICY)).unwrap();
    let evidence = krun_attestation::rcar::SnpEvidence {
        attestation_report: report,
        cert_chain: Some(ev.cert_table()),
    };
    serde_json::json!({
        "init-data": null,
        "runtime-data": {"nonce": nonce, "tee-pubkey": pk},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    })
    .to_string()
}
