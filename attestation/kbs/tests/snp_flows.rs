//! SNP attestation against the real `krun-kbs` binary, both protocols, success and refusals.

// Helpers outside #[test] fns unwrap too: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use krun_attestation::client::snp::{self, SnpRequest};
use krun_attestation::keys::{reference_report_data, TeeKey};
use krun_attestation::reference;
use krun_attestation::{ClientError, KbsProtocol, Step};
use support::*;

const M1: [u8; 48] = [0x11; 48];
const M2: [u8; 48] = [0x22; 48];

fn request(wid: &str, protocol: KbsProtocol) -> SnpRequest<'_> {
    SnpRequest {
        workload_id: wid,
        protocol,
        generation: "milan",
        resource_path: None,
        host_json: None,
    }
}

fn run(
    kbs: &Kbs,
    ev: &SnpEvidence,
    wid: &str,
    protocol: KbsProtocol,
    measurement: [u8; 48],
    policy: u64,
) -> Result<Vec<u8>, ClientError> {
    let mut report = |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ev.report(rd, measurement, policy))
    };
    snp::attest(&kbs.client(), &request(wid, protocol), &mut report).map(|s| s.to_vec())
}

fn broker(ev: &SnpEvidence) -> Kbs {
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        ..Default::default()
    }));
    kbs.register("w1", &hex::encode(M1), "passphrase-one", 15);
    kbs.register("w2", &hex::encode(M2), "passphrase-two", 15);
    kbs
}

fn status(e: &ClientError) -> (Step, u16) {
    match e {
        ClientError::Status { step, status, .. } => (*step, *status),
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn reference_and_rcar_flows_release_the_passphrase_and_refuse_wrong_measurements() {
    let ev = SnpEvidence::new();
    let kbs = broker(&ev);
    for protocol in [KbsProtocol::Reference, KbsProtocol::Rcar] {
        let secret = run(&kbs, &ev, "w1", protocol, M1, LIBKRUN_POLICY).unwrap();
        assert_eq!(secret, b"passphrase-one", "{protocol:?}");
        let err = run(&kbs, &ev, "w1", protocol, [0x33; 48], LIBKRUN_POLICY).unwrap_err();
        assert_eq!(status(&err), (Step::Attest, 401), "{protocol:?}: {err}");
        // Debug-enabled guests are refused by default.
        let err = run(&kbs, &ev, "w1", protocol, M1, LIBKRUN_POLICY | 1 << 19).unwrap_err();
        assert_eq!(status(&err), (Step::Attest, 401), "{protocol:?}: {err}");
    }
    // Reference sessions end with the key, failed ones at once; the attested RCAR session
    // stays (it may fetch other resources) until it expires.
    assert_eq!(kbs.sessions(), 1);
}

#[test]
fn evidence_from_an_untrusted_platform_is_refused() {
    let ev = SnpEvidence::new();
    let other = SnpEvidence::new();
    let kbs = broker(&ev);
    for protocol in [KbsProtocol::Reference, KbsProtocol::Rcar] {
        let err = run(&kbs, &other, "w1", protocol, M1, LIBKRUN_POLICY).unwrap_err();
        assert_eq!(status(&err), (Step::Attest, 401), "{err}");
    }
}

/// The pieces of a manual reference-protocol exchange.
struct RefSession {
    cookie: String,
    nonce: String,
}

fn ref_auth(kbs: &Kbs, wid: &str) -> RefSession {
    let extra = serde_json::json!({"workload_id": wid}).to_string();
    let body = serde_json::json!({"version": "0.0.0", "tee": "snp", "extra-params": extra});
    let r = kbs.post_json("/kbs/v0/auth", None, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.message());
    let ch: reference::Challenge = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(ch.extra_params, "");
    RefSession {
        cookie: format!("session_id={}", r.cookie("session_id").unwrap()),
        nonce: ch.nonce,
    }
}

fn ref_evidence(ev: &SnpEvidence, key: &TeeKey, nonce: &str, m: [u8; 48]) -> Vec<u8> {
    let pk = key.reference_pubkey().unwrap();
    let report = ev.report(reference_report_data(nonce, &pk), m, LIBKRUN_POLICY);
    let cert_chain = serde_json::to_string(&ev.cert_table()).unwrap();
    // Uppercase hex, as the libkrun C client sends it.
    let evidence = reference::SnpAttestation {
        gen: "milan".into(),
        report: hex::encode_upper(report),
        cert_chain,
    };
    let att = reference::Attestation {
        tee_pubkey: pk,
        tee_evidence: serde_json::to_string(&evidence).unwrap(),
    };
    serde_json::to_vec(&att).unwrap()
}

#[test]
fn nonces_cookies_and_keys_are_bound_to_their_session() {
    let ev = SnpEvidence::new();
    let kbs = broker(&ev);
    let key = TeeKey::generate_rsa().unwrap();

    // Evidence bound to session A, sent with B's cookie: refused, and B cannot retry.
    let a = ref_auth(&kbs, "w1");
    let b = ref_auth(&kbs, "w1");
    let ev_a = ref_evidence(&ev, &key, &a.nonce, M1);
    let r = kbs.post_json("/kbs/v0/attest", Some(&b.cookie), &ev_a);
    assert_eq!(r.status, 401, "{}", r.message());
    let ev_b = ref_evidence(&ev, &key, &b.nonce, M1);
    let r = kbs.post_json("/kbs/v0/attest", Some(&b.cookie), &ev_b);
    assert_eq!(r.status, 401, "nonce of B was used by the failed attempt");
    assert_eq!(kbs.get("/kbs/v0/key/w1", Some(&b.cookie)).status, 401);

    // A attests with its own evidence; replaying it (same nonce) is refused.
    let r = kbs.post_json("/kbs/v0/attest", Some(&a.cookie), &ev_a);
    assert_eq!(r.status, 200, "{}", r.message());
    assert_eq!(
        kbs.post_json("/kbs/v0/attest", Some(&a.cookie), &ev_a)
            .status,
        401
    );
    // Replay into a fresh session C: the binding does not match C's nonce.
    let c = ref_auth(&kbs, "w1");
    assert_eq!(
        kbs.post_json("/kbs/v0/attest", Some(&c.cookie), &ev_a)
            .status,
        401
    );

    // A asks for another workload's key: refused, and its session is over.
    let r = kbs.get("/kbs/v0/key/w2", Some(&a.cookie));
    assert_eq!(r.status, 403, "{}", r.message());
    assert_eq!(kbs.get("/kbs/v0/key/w1", Some(&a.cookie)).status, 401);

    // D gets its own key exactly once.
    let d = ref_auth(&kbs, "w1");
    let ev_d = ref_evidence(&ev, &key, &d.nonce, M1);
    assert_eq!(
        kbs.post_json("/kbs/v0/attest", Some(&d.cookie), &ev_d)
            .status,
        200
    );
    let r = kbs.get("/kbs/v0/key/w1", Some(&d.cookie));
    assert_eq!(r.status, 200);
    assert_eq!(open_reference_key(&key, &r.body), b"passphrase-one");
    assert_eq!(kbs.get("/kbs/v0/key/w1", Some(&d.cookie)).status, 401);

    // Unknown and missing cookies.
    assert_eq!(
        kbs.get("/kbs/v0/key/w1", Some("session_id=0000")).status,
        401
    );
    assert_eq!(kbs.get("/kbs/v0/key/w1", None).status, 401);
    // An attested reference session's cookie is no RCAR session.
    let e = ref_auth(&kbs, "w1");
    let rcar_cookie = e.cookie.replace("session_id", "kbs-session-id");
    assert_eq!(
        kbs.get("/kbs/v0/resource/default/key/w1", Some(&rcar_cookie))
            .status,
        401
    );
}

#[test]
fn concurrent_key_requests_release_the_key_once() {
    let ev = SnpEvidence::new();
    let kbs = broker(&ev);
    let key = TeeKey::generate_rsa().unwrap();
    for round in 0..4 {
        let a = ref_auth(&kbs, "w1");
        let body = ref_evidence(&ev, &key, &a.nonce, M1);
        let r = kbs.post_json("/kbs/v0/attest", Some(&a.cookie), &body);
        assert_eq!(r.status, 200, "{}", r.message());
        let answers = concurrent_key_requests(&[&kbs], "w1", &a.cookie, 32);
        assert_eq!(
            the_one_released_key(&answers, &key, round),
            b"passphrase-one"
        );
    }
    assert_eq!(kbs.sessions(), 0);
}

#[test]
fn session_ids_and_secrets_stay_out_of_info_logs() {
    let ev = SnpEvidence::new();
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        capture_log: true,
        ..Default::default()
    }));
    kbs.register("w1", &hex::encode(M1), "passphrase-one", 15);
    let key = TeeKey::generate_rsa().unwrap();
    let a = ref_auth(&kbs, "w1");
    let body = ref_evidence(&ev, &key, &a.nonce, M1);
    assert_eq!(
        kbs.post_json("/kbs/v0/attest", Some(&a.cookie), &body)
            .status,
        200
    );
    assert_eq!(kbs.get("/kbs/v0/key/w1", Some(&a.cookie)).status, 200);
    // RCAR: the token is the session id.
    let token = rcar_attest(&kbs, &ev, "{}").token;
    assert_eq!(
        kbs.get(
            "/kbs/v0/resource/default/key/w1",
            Some(&format!("kbs-session-id={token}"))
        )
        .status,
        200
    );
    let log = kbs.log();
    let info: String = log
        .lines()
        .filter(|l| !l.contains("DEBUG") && !l.contains("TRACE"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(info.contains("key released"), "{log}");
    let sid = a.cookie.trim_start_matches("session_id=");
    for secret in [sid, token.as_str(), "passphrase-one", ADMIN_TOKEN] {
        assert!(!info.contains(secret), "{secret} in the log:\n{info}");
    }
}

/// An RCAR session attested for `w1` with the `/auth` extra-params `extra_params`.
struct RcarSession {
    /// The guest key the resources are encrypted to.
    key: TeeKey,
    /// `kbs-session-id=…`.
    cookie: String,
    /// The `/attest` body that succeeded.
    attest_body: String,
    /// The attestation token (also the session id).
    token: String,
}

fn rcar_attest(kbs: &Kbs, ev: &SnpEvidence, extra_params: &str) -> RcarSession {
    let key = TeeKey::generate_ec();
    let auth = format!(r#"{{"version":"0.4.0","tee":"snp","extra-params":{extra_params}}}"#);
    let r = kbs.post_json("/kbs/v0/auth", None, auth.as_bytes());
    assert_eq!(r.status, 200);
    let cookie = format!("kbs-session-id={}", r.cookie("kbs-session-id").unwrap());
    let ch: krun_attestation::rcar::Challenge = serde_json::from_slice(&r.body).unwrap();
    let attest_body = rcar_attest_body(ev, &key, &ch.nonce, M1);
    let r = kbs.post_json("/kbs/v0/attest", Some(&cookie), attest_body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.message());
    let token: krun_attestation::rcar::AttestationToken = serde_json::from_slice(&r.body).unwrap();
    RcarSession {
        key,
        cookie,
        attest_body,
        token: token.token,
    }
}

#[test]
fn rcar_resources_are_released_once_and_only_for_the_attested_workload() {
    let ev = SnpEvidence::new();
    let kbs = broker(&ev);
    let RcarSession {
        key,
        cookie,
        attest_body: body,
        token,
    } = rcar_attest(&kbs, &ev, r#"{"supported-hash-algorithms":["sha384"]}"#);
    assert_eq!(
        kbs.post_json("/kbs/v0/attest", Some(&cookie), body.as_bytes())
            .status,
        401
    );

    assert_eq!(
        kbs.get("/kbs/v0/resource/default/key/w2", Some(&cookie))
            .status,
        403
    );
    // Bearer token works like the cookie; the resource comes once.
    let auth = format!("Bearer {token}");
    let r = kbs.request(
        "GET",
        "/kbs/v0/resource/default/key/w1",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.message());
    let secret = krun_attestation::rcar::decrypt_jwe(&r.body, &key).unwrap();
    assert_eq!(secret.as_slice(), b"passphrase-one");
    assert_eq!(
        kbs.get("/kbs/v0/resource/default/key/w1", Some(&cookie))
            .status,
        403
    );

    // Another session's nonce (or a short one) in runtime-data is refused.
    let att: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first_nonce = att["runtime-data"]["nonce"].as_str().unwrap().to_owned();
    for nonce in [first_nonce.as_str(), "short"] {
        let r = kbs.post_json(
            "/kbs/v0/auth",
            None,
            br#"{"version":"0.4.0","tee":"snp","extra-params":{}}"#,
        );
        let other = format!("kbs-session-id={}", r.cookie("kbs-session-id").unwrap());
        let mut replay = att.clone();
        replay["runtime-data"]["nonce"] = serde_json::json!(nonce);
        let r = kbs.post_json(
            "/kbs/v0/attest",
            Some(&other),
            replay.to_string().as_bytes(),
        );
        assert_eq!(r.status, 401, "{}", r.message());
    }

    // A wrong protocol version gets Trustee's answer.
    let r = kbs.post_json(
        "/kbs/v0/auth",
        None,
        br#"{"version":"0.1.0","tee":"snp","extra-params":{}}"#,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.message(), krun_attestation::rcar::VERSION_MISMATCH);
}

#[test]
fn reference_client_switches_to_rcar_on_version_mismatch() {
    let ev = SnpEvidence::new();
    let kbs = broker(&ev);
    let addr = kbs.addr.clone();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    // The first connection meets an RCAR-only broker's refusal of version 0.0.0.
    let connector = move || -> std::io::Result<Box<dyn krun_attestation::transport::Stream>> {
        if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            let body = r#"{"type":"https://github.com/confidential-containers/kbs/errors/ProtocolVersion","detail":"KBS Client Protocol Version Mismatch"}"#;
            let resp = format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            return Ok(Box::new(Canned(std::io::Cursor::new(resp.into_bytes()))));
        }
        Ok(Box::new(std::net::TcpStream::connect(&addr)?))
    };
    let cfg = client_with(&kbs.url, connector);
    let mut report = |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ev.report(rd, M1, LIBKRUN_POLICY))
    };
    let secret = snp::attest(&cfg, &request("w1", KbsProtocol::Reference), &mut report).unwrap();
    assert_eq!(secret.as_slice(), b"passphrase-one");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "auth(ref) + auth, attest, resource"
    );
}

/// Canned answer; writes are discarded.
struct Canned(std::io::Cursor<Vec<u8>>);

impl std::io::Read for Canned {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for Canned {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn expired_sessions_are_refused_and_collected() {
    let ev = SnpEvidence::new();
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        session_ttl: Some(1),
        ..Default::default()
    }));
    kbs.register("w1", &hex::encode(M1), "passphrase-one", 15);
    let key = TeeKey::generate_rsa().unwrap();
    let a = ref_auth(&kbs, "w1");
    let body = ref_evidence(&ev, &key, &a.nonce, M1);
    assert_eq!(kbs.sessions(), 1);
    std::thread::sleep(Duration::from_millis(1600));
    let r = kbs.post_json("/kbs/v0/attest", Some(&a.cookie), &body);
    assert_eq!(r.status, 401);
    assert!(
        r.message().contains("expired") || r.message().contains("unknown"),
        "{}",
        r.message()
    );
    let _b = ref_auth(&kbs, "w1");
    std::thread::sleep(Duration::from_millis(1800));
    assert_eq!(
        kbs.sessions(),
        0,
        "garbage collector removed the expired session"
    );
}

#[test]
fn malformed_and_oversized_requests_are_refused() {
    let ev = SnpEvidence::new();
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        body_limit: Some(4096),
        ..Default::default()
    }));
    kbs.register("w1", &hex::encode(M1), "passphrase-one", 15);
    assert_eq!(
        kbs.post_json("/kbs/v0/auth", None, b"{not json").status,
        400
    );
    assert_eq!(
        kbs.post_json(
            "/kbs/v0/auth",
            None,
            br#"{"version":"0.0.0","tee":"snp","extra-params":"{bad"}"#
        )
        .status,
        400
    );
    let big = vec![b' '; 5000];
    assert_eq!(kbs.post_json("/kbs/v0/auth", None, &big).status, 413);
    let a = ref_auth(&kbs, "w1");
    assert_eq!(
        kbs.post_json("/kbs/v0/attest", Some(&a.cookie), b"[]")
            .status,
        400
    );
    // A malformed body does not use up the nonce; bad evidence inside a valid body does.
    let bad_report = serde_json::json!({"tee-pubkey": {"alg":"RSA","k-mod":"AQAB","k-exp":"AQAB"},
        "tee-evidence": r#"{"gen":"milan","report":"zz","cert_chain":"[]"}"#});
    assert_eq!(
        kbs.post_json(
            "/kbs/v0/attest",
            Some(&a.cookie),
            bad_report.to_string().as_bytes()
        )
        .status,
        400
    );
    assert_eq!(kbs.get("/kbs/v0/key/w1", Some(&a.cookie)).status, 401);
    assert_eq!(kbs.get("/kbs/v0/", None).status, 401);
    assert_eq!(kbs.get("/nope", None).status, 404);
}

#[test]
fn workloads_survive_a_restart() {
    let ev = SnpEvidence::new();
    let mut kbs = broker(&ev);
    kbs.restart();
    let secret = run(&kbs, &ev, "w2", KbsProtocol::Rcar, M2, LIBKRUN_POLICY).unwrap();
    assert_eq!(secret, b"passphrase-two");
    let out = kbs.cli(&["workload", "list"]);
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("passphrase"),
        "list shows no secrets"
    );
}

#[test]
fn minimum_tcb_from_the_command_line_applies_to_registered_workloads() {
    let ev = SnpEvidence::new();
    // The fake platform reports SNP SVN 8.
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        extra_args: vec!["--min-tcb".into(), "0:0:9:0".into()],
        ..Default::default()
    }));
    kbs.register("w1", &hex::encode(M1), "passphrase-one", 15);
    let err = run(&kbs, &ev, "w1", KbsProtocol::Rcar, M1, LIBKRUN_POLICY).unwrap_err();
    assert_eq!(status(&err), (Step::Attest, 401), "{err}");
    assert!(err.to_string().contains("TCB"), "{err}");
}

#[test]
fn the_server_minimum_tcb_applies_unless_a_workload_has_its_own() {
    let ev = SnpEvidence::new();
    // The fake platform reports 3:0:8:115.
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        extra_args: vec!["--min-tcb".into(), "0:0:9:0".into()],
        ..Default::default()
    }));
    let pass = kbs.dir.path().join("pass");
    std::fs::write(&pass, "passphrase-one").unwrap();
    let add = |id: &str, extra: &[&str]| {
        let mut args = vec![
            "workload",
            "add",
            "--id",
            id,
            "--tee",
            "snp",
            "--measurement",
        ];
        let m = hex::encode(M1);
        args.push(&m);
        let p = path_of(&pass);
        args.extend(["--passphrase-file", &p]);
        args.extend(extra);
        let out = kbs.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // No minimum of its own: the server's applies.
    add("default", &[]);
    let err = run(
        &kbs,
        &ev,
        "default",
        KbsProtocol::Reference,
        M1,
        LIBKRUN_POLICY,
    )
    .unwrap_err();
    assert_eq!(status(&err), (Step::Attest, 401), "{err}");
    assert!(
        err.to_string().contains(
            "reported TCB 3:0:8:115 (bootloader:tee:snp:microcode) is below the minimum 0:0:9:0"
        ),
        "{err}"
    );
    // Its own 0:0:0:0 replaces the server's: no minimum.
    add("any-tcb", &["--min-tcb", "0:0:0:0"]);
    let secret = run(
        &kbs,
        &ev,
        "any-tcb",
        KbsProtocol::Reference,
        M1,
        LIBKRUN_POLICY,
    )
    .unwrap();
    assert_eq!(secret, b"passphrase-one");
    // Its own higher minimum.
    add("strict", &["--min-tcb", "3:0:8:116"]);
    let err = run(
        &kbs,
        &ev,
        "strict",
        KbsProtocol::Reference,
        M1,
        LIBKRUN_POLICY,
    )
    .unwrap_err();
    assert!(err.to_string().contains("minimum 3:0:8:116"), "{err}");
    // The admin API's snp.min_tcb is the same setting.
    let spec = serde_json::json!({"id": "api", "tee": "snp", "measurements": [hex::encode(M2)],
        "passphrase": "passphrase-two",
        "snp": {"min_tcb": {"bootloader": 3, "snp": 8, "microcode": 115}}});
    let r = kbs.admin_add_workload(&spec);
    assert_eq!(r.status, 200, "{}", r.message());
    let secret = run(&kbs, &ev, "api", KbsProtocol::Rcar, M2, LIBKRUN_POLICY).unwrap();
    assert_eq!(secret, b"passphrase-two");
    // A malformed minimum is refused with the expected form.
    let out = kbs.cli(&[
        "workload",
        "add",
        "--id",
        "x",
        "--tee",
        "snp",
        "--measurement",
        &hex::encode(M1),
        "--min-tcb",
        "1:2:3",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bootloader:tee:snp:microcode"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn vcek_from_the_guest_certificate_table_needs_no_vcek_directory() {
    let ev = SnpEvidence::new();
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        trust_root_pem: Some(ev.trust_root_pem()),
        ..Default::default()
    });
    kbs.register("w1", &hex::encode(M1), "passphrase-one", 15);
    let certs = ev.cert_table();
    for protocol in [KbsProtocol::Reference, KbsProtocol::Rcar] {
        let mut report =
            |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
                Ok(ev.report(rd, M1, LIBKRUN_POLICY))
            };
        let req = request("w1", protocol);
        let secret = snp::attest_with_certs(&kbs.client(), &req, &certs, &mut report).unwrap();
        assert_eq!(secret.as_slice(), b"passphrase-one", "{protocol:?}");
        let err = snp::attest(&kbs.client(), &request("w1", protocol), &mut report).unwrap_err();
        assert_eq!(status(&err), (Step::Attest, 401), "no VCEK anywhere: {err}");
    }
}
