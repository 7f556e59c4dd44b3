//! Several `krun-kbs` replicas sharing one real PostgreSQL database (started by the test
//! with Debian's `postgresql` binaries): any replica serves any step of a session, a replica
//! can die between steps, expiry and single-use key release hold across replicas, and
//! workloads, secrets and sessions outlive a restart of every replica.

// Helpers outside #[test] fns unwrap too: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use krun_attestation::client::sev::SevAttestation;
use krun_attestation::client::snp::{self, SnpRequest};
use krun_attestation::keys::{reference_report_data, TeeKey};
use krun_attestation::{reference, secret_table, ClientConfig, KbsProtocol};
use support::pg_server::Postgres;
use support::*;

const M1: [u8; 48] = [0x11; 48];
const SEV_DATA: &[u8] = b"qboot, kernel, initrd, boot_params and VMSAs";

/// Two brokers on one database, trusting `ev`'s platform and `sev`'s ARK, with `w1` (SNP)
/// and `sev-w1` registered through the first.
fn replicas(pg: &Postgres, ev: &SnpEvidence, sev: &SevPlatform, opts: KbsOptions) -> (Kbs, Kbs) {
    let url = pg.create_database("kbs");
    let opts = ev.trusted_by(KbsOptions {
        admin_token: true,
        sev_ark: Some(sev.fake.ark().to_vec()),
        db: Some(url),
        ..opts
    });
    let a = Kbs::start(opts.clone());
    let b = Kbs::start(opts);
    a.register("w1", &hex::encode(M1), "passphrase-one", 15);
    let sev_digest = hex::encode(openssl::sha::sha256(SEV_DATA));
    a.register("sev-w1", &sev_digest, "sev passphrase", 63);
    (a, b)
}

/// A client whose first connection (`/auth`) goes to `first` and every later one to `rest`:
/// a load balancer that moves the session to another replica after its first step.
fn split_client(url: &str, first: &Kbs, rest: &Kbs) -> (ClientConfig, Arc<AtomicUsize>) {
    let (a, b) = (first.addr.clone(), rest.addr.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let connector = move || -> std::io::Result<Box<dyn krun_attestation::transport::Stream>> {
        let addr = if c.fetch_add(1, Ordering::SeqCst) == 0 {
            &a
        } else {
            &b
        };
        let s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Box::new(s))
    };
    (client_with(url, connector), calls)
}

fn snp_flow(cfg: &ClientConfig, ev: &SnpEvidence, protocol: KbsProtocol) -> Vec<u8> {
    let mut report = |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ev.report(rd, M1, LIBKRUN_POLICY))
    };
    let request = SnpRequest {
        workload_id: "w1",
        protocol,
        generation: "milan",
        resource_path: None,
        host_json: None,
    };
    snp::attest(cfg, &request, &mut report).unwrap().to_vec()
}

fn sev_flow(cfg: &ClientConfig, platform: &SevPlatform) -> Vec<u8> {
    let session = SevAttestation::auth(
        cfg,
        "sev-w1",
        platform.fake.build,
        platform.fake.chain.clone(),
        None,
    )
    .unwrap();
    let mut guest = platform.fake.launch_start(&session.start).unwrap();
    guest.update(SEV_DATA);
    session.attest(&guest.measure().unwrap()).unwrap();
    let packet = session.key().unwrap();
    let plaintext = guest.launch_secret(&packet).unwrap();
    secret_table::passphrase(&plaintext).unwrap().to_vec()
}

/// A reference-protocol SNP session opened by hand: its cookie and nonce.
fn ref_auth(kbs: &Kbs) -> (String, String) {
    let extra = serde_json::json!({"workload_id": "w1"}).to_string();
    let body = serde_json::json!({"version": "0.0.0", "tee": "snp", "extra-params": extra});
    let r = kbs.post_json("/kbs/v0/auth", None, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.message());
    let ch: reference::Challenge = serde_json::from_slice(&r.body).unwrap();
    let cookie = format!("session_id={}", r.cookie("session_id").unwrap());
    (cookie, ch.nonce)
}

fn ref_evidence(ev: &SnpEvidence, key: &TeeKey, nonce: &str) -> Vec<u8> {
    let pk = key.reference_pubkey().unwrap();
    let report = ev.report(reference_report_data(nonce, &pk), M1, LIBKRUN_POLICY);
    let evidence = reference::SnpAttestation {
        gen: "milan".into(),
        report: hex::encode(report),
        cert_chain: serde_json::to_string(&ev.cert_table()).unwrap(),
    };
    let att = reference::Attestation {
        tee_pubkey: pk,
        tee_evidence: serde_json::to_string(&evidence).unwrap(),
    };
    serde_json::to_vec(&att).unwrap()
}

/// An RCAR session opened on `auth_on` and attested on `attest_on`: its key and cookie.
fn rcar_session(auth_on: &Kbs, attest_on: &Kbs, ev: &SnpEvidence) -> (TeeKey, String) {
    let key = TeeKey::generate_ec();
    let r = auth_on.post_json(
        "/kbs/v0/auth",
        None,
        br#"{"version":"0.4.0","tee":"snp","extra-params":{}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.message());
    let cookie = format!("kbs-session-id={}", r.cookie("kbs-session-id").unwrap());
    let ch: krun_attestation::rcar::Challenge = serde_json::from_slice(&r.body).unwrap();
    let attest_body = rcar_attest_body(ev, &key, &ch.nonce, M1);
    let r = attest_on.post_json("/kbs/v0/attest", Some(&cookie), attest_body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.message());
    (key, cookie)
}

#[test]
fn reference_sev_and_rcar_flows_move_between_replicas() {
    let pg = Postgres::start();
    let (ev, sev) = (SnpEvidence::new(), SevPlatform::new());
    let (a, b) = replicas(&pg, &ev, &sev, KbsOptions::default());
    for protocol in [KbsProtocol::Reference, KbsProtocol::Rcar] {
        let (cfg, calls) = split_client(&a.url, &a, &b);
        assert_eq!(
            snp_flow(&cfg, &ev, protocol),
            b"passphrase-one",
            "{protocol:?}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "{protocol:?}: auth on A, 2 on B"
        );
    }
    // SEV: the owner session (transport keys, build, policy) is continued by the other
    // replica, which packages the secret.
    let (cfg, calls) = split_client(&b.url, &b, &a);
    assert_eq!(sev_flow(&cfg, &sev), b"sev passphrase");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Reference sessions end with their key; the attested RCAR session stays, seen by both.
    assert_eq!(a.sessions(), 1);
    assert_eq!(b.sessions(), 1);
}

#[test]
fn a_replica_killed_between_steps_does_not_end_the_session() {
    let pg = Postgres::start();
    let (ev, sev) = (SnpEvidence::new(), SevPlatform::new());
    let (mut a, b) = replicas(&pg, &ev, &sev, KbsOptions::default());
    let (cookie, nonce) = ref_auth(&a);
    let key = TeeKey::generate_rsa().unwrap();
    let body = ref_evidence(&ev, &key, &nonce);
    a.kill();
    let r = b.post_json("/kbs/v0/attest", Some(&cookie), &body);
    assert_eq!(r.status, 200, "{}", r.message());
    let r = b.get("/kbs/v0/key/w1", Some(&cookie));
    assert_eq!(r.status, 200, "{}", r.message());
    assert_eq!(open_reference_key(&key, &r.body), b"passphrase-one");

    // RCAR: /auth and /attest on A, A killed, the resource from B.
    a.start_again();
    let (key, cookie) = rcar_session(&a, &a, &ev);
    a.kill();
    let r = b.get("/kbs/v0/resource/default/key/w1", Some(&cookie));
    assert_eq!(r.status, 200, "{}", r.message());
    let secret = krun_attestation::rcar::decrypt_jwe(&r.body, &key).unwrap();
    assert_eq!(secret.as_slice(), b"passphrase-one");
    let again = b.get("/kbs/v0/resource/default/key/w1", Some(&cookie));
    assert_eq!(again.status, 403, "{}", again.message());
    assert!(
        again.message().contains("already released"),
        "{}",
        again.message()
    );
}

#[test]
fn a_session_expires_on_every_replica() {
    let pg = Postgres::start();
    let (ev, sev) = (SnpEvidence::new(), SevPlatform::new());
    let opts = KbsOptions {
        session_ttl: Some(2),
        ..Default::default()
    };
    let (a, b) = replicas(&pg, &ev, &sev, opts);
    let key = TeeKey::generate_rsa().unwrap();
    let (cookie, nonce) = ref_auth(&a);
    assert_eq!(b.sessions(), 1, "B sees the session A opened");
    let body = ref_evidence(&ev, &key, &nonce);
    std::thread::sleep(Duration::from_millis(2300));
    let r = b.post_json("/kbs/v0/attest", Some(&cookie), &body);
    assert_eq!(r.status, 401);
    assert!(
        r.message().contains("expired") || r.message().contains("unknown"),
        "{}",
        r.message()
    );
    // Attested on A in time, the key asked of B too late.
    let (cookie, nonce) = ref_auth(&a);
    let body = ref_evidence(&ev, &key, &nonce);
    let r = a.post_json("/kbs/v0/attest", Some(&cookie), &body);
    assert_eq!(r.status, 200, "{}", r.message());
    std::thread::sleep(Duration::from_millis(2300));
    let r = b.get("/kbs/v0/key/w1", Some(&cookie));
    assert_eq!(r.status, 401, "{}", r.message());
    // Collected from the database by the replicas' collectors.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(a.sessions(), 0);
    let left = pg.query("kbs", "SELECT count(*) FROM sessions");
    assert_eq!(left[0].get::<_, i64>(0), 0, "expired rows deleted");
}

#[test]
fn concurrent_key_requests_on_two_replicas_release_one_key() {
    let pg = Postgres::start();
    let (ev, sev) = (SnpEvidence::new(), SevPlatform::new());
    let (a, b) = replicas(&pg, &ev, &sev, KbsOptions::default());
    for round in 0..3 {
        let (cookie, nonce) = ref_auth(&a);
        let key = TeeKey::generate_rsa().unwrap();
        let r = b.post_json(
            "/kbs/v0/attest",
            Some(&cookie),
            &ref_evidence(&ev, &key, &nonce),
        );
        assert_eq!(r.status, 200, "{}", r.message());
        let answers = concurrent_key_requests(&[&a, &b], "w1", &cookie, 32);
        assert_eq!(
            the_one_released_key(&answers, &key, round),
            b"passphrase-one"
        );
    }
    assert_eq!(a.sessions(), 0);
    assert_eq!(b.sessions(), 0);
}

#[test]
fn restarting_every_replica_keeps_workloads_secrets_and_sessions() {
    let pg = Postgres::start();
    let (ev, sev) = (SnpEvidence::new(), SevPlatform::new());
    let (mut a, mut b) = replicas(&pg, &ev, &sev, KbsOptions::default());
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = a.request(
        "PUT",
        "/kbs/v0/admin/workloads/w1/secrets/default/cert/w1",
        &[("Authorization", &auth)],
        Some(b"a certificate"),
    );
    assert_eq!(r.status, 200, "{}", r.message());
    // A session attested before the restart, used after it.
    let (key, cookie) = rcar_session(&a, &b, &ev);
    a.kill();
    b.kill();
    a.start_again();
    b.start_again();
    let r = b.get("/kbs/v0/resource/default/cert/w1", Some(&cookie));
    assert_eq!(r.status, 200, "{}", r.message());
    let secret = krun_attestation::rcar::decrypt_jwe(&r.body, &key).unwrap();
    assert_eq!(secret.as_slice(), b"a certificate");
    let (cfg, _) = split_client(&a.url, &a, &b);
    assert_eq!(
        snp_flow(&cfg, &ev, KbsProtocol::Reference),
        b"passphrase-one"
    );
    let (cfg, _) = split_client(&b.url, &b, &a);
    assert_eq!(sev_flow(&cfg, &sev), b"sev passphrase");
    // The admin CLI reads the same database.
    let out = a.cli(&["workload", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[test]
fn replicas_starting_together_migrate_the_schema_once() {
    let pg = Postgres::start();
    let ev = SnpEvidence::new();
    let url = pg.create_database("kbs");
    let opts = ev.trusted_by(KbsOptions {
        admin_token: true,
        db: Some(url),
        ..Default::default()
    });
    let brokers: Vec<Kbs> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| Kbs::start(opts.clone())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    brokers[0].register("w1", &hex::encode(M1), "passphrase-one", 15);
    let (cfg, _) = split_client(&brokers[1].url, &brokers[1], &brokers[2]);
    assert_eq!(snp_flow(&cfg, &ev, KbsProtocol::Rcar), b"passphrase-one");
    let versions = pg.query("kbs", "SELECT version FROM schema_version");
    assert_eq!(versions.len(), 1, "one version row");
    assert_eq!(versions[0].get::<_, i64>(0), 3);
}

/// Runs `krun-kbs` to serve with `args` expecting it to refuse to start; its stderr.
fn refused_start(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krun-kbs"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the broker started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn secrets_and_sessions_are_sealed_in_the_database() {
    let pg = Postgres::start();
    let (ev, sev) = (SnpEvidence::new(), SevPlatform::new());
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("secrets.key");
    std::fs::write(&key_file, format!("{}\n", hex::encode([0x42u8; 32]))).unwrap();
    let key_arg = key_file.display().to_string();
    let opts = KbsOptions {
        extra_args: vec!["--secrets-key-file".into(), key_arg.clone()],
        ..Default::default()
    };
    let (a, b) = replicas(&pg, &ev, &sev, opts);
    let (cfg, _) = split_client(&a.url, &a, &b);
    assert_eq!(sev_flow(&cfg, &sev), b"sev passphrase");
    let (_, _cookie) = rcar_session(&a, &b, &ev);
    let secrets = pg.query("kbs", "SELECT data FROM secrets");
    assert_eq!(secrets.len(), 2);
    for row in &secrets {
        let data: Vec<u8> = row.get(0);
        assert!(data.starts_with(b"\0kbsgcm1"), "sealed");
        for plain in [&b"passphrase-one"[..], b"sev passphrase"] {
            assert!(!data.windows(plain.len()).any(|w| w == plain));
        }
    }
    let sessions = pg.query("kbs", "SELECT stage FROM sessions WHERE ended IS NULL");
    assert_eq!(sessions.len(), 1, "the attested RCAR session");
    let stage: Vec<u8> = sessions[0].get(0);
    assert!(stage.starts_with(b"\0kbsgcm1"), "session state sealed");
    assert!(!stage.windows(7).any(|w| w == b"EcP256\""));

    // A replica with another key, or none, refuses to start and says why.
    let url = pg.url("kbs");
    let wrong = keys.path().join("wrong.key");
    std::fs::write(&wrong, [7u8; 32]).unwrap();
    let err = refused_start(&[
        "--db",
        &url,
        "--secrets-key-file",
        &wrong.display().to_string(),
    ]);
    assert!(err.contains("sealed under key id"), "{err}");
    let err = refused_start(&["--db", &url]);
    assert!(err.contains("no --secrets-key-file"), "{err}");

    // Rotation to a new key; the replicas restarted with it serve as before.
    drop((a, b));
    let new = keys.path().join("new.key");
    std::fs::write(&new, [9u8; 32]).unwrap();
    let new_arg = new.display().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krun-kbs"))
        .args(["--db", &url, "rotate-secrets", "--old-key-file", &key_arg])
        .args(["--new-key-file", &new_arg])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = refused_start(&["--db", &url, "--secrets-key-file", &key_arg]);
    assert!(err.contains("sealed under key id"), "{err}");
    let rotated = ev.trusted_by(KbsOptions {
        admin_token: true,
        db: Some(url),
        extra_args: vec!["--secrets-key-file".into(), new_arg],
        ..Default::default()
    });
    let (a, b) = (Kbs::start(rotated.clone()), Kbs::start(rotated));
    let (cfg, _) = split_client(&a.url, &a, &b);
    assert_eq!(
        snp_flow(&cfg, &ev, KbsProtocol::Reference),
        b"passphrase-one"
    );
}

#[test]
fn a_broker_without_a_secrets_key_warns_once_that_secrets_are_in_plaintext() {
    let kbs = Kbs::start(KbsOptions {
        capture_log: true,
        ..Default::default()
    });
    let log = kbs.log();
    assert_eq!(log.matches("stored in plaintext").count(), 1, "{log}");
}

#[test]
fn health_follows_the_database_and_metrics_count_what_each_replica_did() {
    let pg = Postgres::start();
    let (ev, sev) = (SnpEvidence::new(), SevPlatform::new());
    let opts = KbsOptions {
        extra_args: vec!["--db-timeout-ms".into(), "1000".into()],
        ..Default::default()
    };
    let (a, b) = replicas(&pg, &ev, &sev, opts);
    for kbs in [&a, &b] {
        let r = kbs.get("/healthz", None);
        assert_eq!(r.status, 200, "{}", r.message());
    }
    for protocol in [KbsProtocol::Reference, KbsProtocol::Rcar] {
        let (cfg, _) = split_client(&a.url, &a, &b);
        assert_eq!(snp_flow(&cfg, &ev, protocol), b"passphrase-one");
    }
    assert_eq!(b.get("/kbs/v0/key/w1", None).status, 401);
    let metrics = |kbs: &Kbs| {
        let r = kbs.get("/metrics", None);
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    };
    let (ma, mb) = (metrics(&a), metrics(&b));
    let has = |text: &str, line: &str| text.lines().any(|l| l == line);
    for line in [
        "krun_kbs_attestations_total{protocol=\"reference\",tee=\"snp\"} 1",
        "krun_kbs_attestations_total{protocol=\"rcar\",tee=\"snp\"} 1",
        "krun_kbs_key_releases_total{protocol=\"reference\"} 1",
        "krun_kbs_key_releases_total{protocol=\"rcar\"} 1",
        "krun_kbs_refusals_total{reason=\"MissingCookie\"} 1",
        "krun_kbs_request_duration_seconds_count{endpoint=\"attest\"} 2",
    ] {
        assert!(has(&mb, line), "B: {line} missing from\n{mb}");
    }
    assert!(
        has(
            &ma,
            "krun_kbs_attestations_total{protocol=\"rcar\",tee=\"snp\"} 0"
        ),
        "{ma}"
    );
    assert!(
        has(
            &ma,
            "krun_kbs_request_duration_seconds_count{endpoint=\"auth\"} 2"
        ),
        "{ma}"
    );
    assert!(
        !ma.contains("passphrase") && !mb.contains("session_id"),
        "no secrets or sessions in metrics"
    );
    // The database gone: unhealthy, until it is back.
    drop(pg);
    let r = a.get("/healthz", None);
    assert_eq!(r.status, 503, "{}", r.message());
}

#[test]
fn debug_logs_of_a_postgres_broker_carry_no_session_ids_or_secrets() {
    let pg = Postgres::start();
    let ev = SnpEvidence::new();
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        db: Some(pg.create_database("kbs")),
        capture_log: true,
        ..Default::default()
    }));
    kbs.register("w1", &hex::encode(M1), "passphrase-one", 15);
    let (cookie, nonce) = ref_auth(&kbs);
    let key = TeeKey::generate_rsa().unwrap();
    let r = kbs.post_json(
        "/kbs/v0/attest",
        Some(&cookie),
        &ref_evidence(&ev, &key, &nonce),
    );
    assert_eq!(r.status, 200, "{}", r.message());
    let r = kbs.get("/kbs/v0/key/w1", Some(&cookie));
    assert_eq!(r.status, 200, "{}", r.message());
    let log = kbs.log();
    // Run with RUST_LOG=debug: before the cap, tokio-postgres logged every parameter here.
    assert!(log.contains("key released"), "the broker logged:\n{log}");
    let id = cookie.trim_start_matches("session_id=");
    let as_bytes = format!("{:?}", b"passphrase-one".as_slice());
    for secret in [id, "passphrase-one", &as_bytes, &nonce] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}
