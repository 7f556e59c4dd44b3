//! Registration authentication, the admin API and CLI, and HTTPS.

// Helpers outside #[test] fns unwrap too: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used)]

mod support;

use krun_attestation::client::snp::{self, SnpRequest};
use krun_attestation::{ClientConfig, KbsProtocol};
use support::*;

const M: [u8; 48] = [0x44; 48];

fn register_status(kbs: &Kbs, auth: Option<&str>) -> u16 {
    let body = buildah_body("w", &hex::encode(M), "pw", 15);
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        h.push(("Authorization", a));
    }
    kbs.request(
        "POST",
        "/kbs/v0/register_workload",
        &h,
        Some(body.as_bytes()),
    )
    .status
}

#[test]
fn registration_needs_the_token_or_the_insecure_flag() {
    let closed = Kbs::start(KbsOptions::default());
    assert_eq!(register_status(&closed, None), 403, "disabled by default");
    assert_eq!(register_status(&closed, Some("Bearer anything")), 403);
    assert!(closed.cli(&["workload", "list"]).stdout.starts_with(b"[]"));

    let token = Kbs::start(KbsOptions {
        admin_token: true,
        unbound: true,
        ..Default::default()
    });
    assert_eq!(register_status(&token, None), 401);
    assert_eq!(
        register_status(&token, Some("Bearer wrong-token-of-same-len")),
        401
    );
    assert_eq!(
        register_status(&token, Some(&format!("Bearer {ADMIN_TOKEN}"))),
        200
    );

    let open = Kbs::start(KbsOptions {
        insecure_registration: true,
        unbound: true,
        ..Default::default()
    });
    assert_eq!(register_status(&open, None), 200);
    // buildah's digest leaves out the binding: stored as such.
    let listed = open.cli(&["workload", "list"]).stdout;
    let listed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    assert_eq!(listed[0]["measurement_kind"], "unbound", "{listed}");
    assert_eq!(listed[0]["measurements"][0], hex::encode(M), "{listed}");
    // Bad bodies: wrong measurement length, SEV policy that is not JSON.
    let bad = buildah_body("w", "abcd", "pw", 15);
    assert_eq!(
        open.post_json("/kbs/v0/register_workload", None, bad.as_bytes())
            .status,
        400
    );
    let sev_bad = serde_json::json!({"workload_id":"s","launch_measurement":hex::encode([1u8;32]),
        "passphrase":"p","tee_config":"nope"});
    assert_eq!(
        open.post_json(
            "/kbs/v0/register_workload",
            None,
            sev_bad.to_string().as_bytes()
        )
        .status,
        400
    );
    // sev 7's bare-number policy form is accepted.
    let sev_ok = serde_json::json!({"workload_id":"s","launch_measurement":hex::encode([1u8;32]),
        "passphrase":"p","tee_config":"{\"flags\":63,\"minfw\":{\"major\":0,\"minor\":0}}"});
    assert_eq!(
        open.post_json(
            "/kbs/v0/register_workload",
            None,
            sev_ok.to_string().as_bytes()
        )
        .status,
        200
    );
    // The admin API stays closed without a token.
    assert_eq!(open.get("/kbs/v0/admin/workloads", None).status, 403);
}

#[test]
fn unauthenticated_registration_cannot_replace_an_existing_workload() {
    let ev = SnpEvidence::new();
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        insecure_registration: true,
        unbound: true,
        ..Default::default()
    }));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let spec = serde_json::json!({"id": "x", "tee": "snp", "measurements": [hex::encode(M)],
        "passphrase": "admin passphrase",
        "snp": {"min_tcb": {"snp": 1}, "min_report_version": 2}});
    let r = kbs.request(
        "POST",
        "/kbs/v0/admin/workloads",
        &h,
        Some(spec.to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.message());
    let before = kbs.request("GET", "/kbs/v0/admin/workloads", &h, None).body;

    // Other measurement and passphrase, no token: refused with 409, nothing changes.
    let evil = [0x66u8; 48];
    let body = buildah_body("x", &hex::encode(evil), "attacker passphrase", 15);
    let r = kbs.post_json("/kbs/v0/register_workload", None, body.as_bytes());
    assert_eq!(r.status, 409, "{}", r.message());
    assert!(
        r.message().contains("already registered"),
        "{}",
        r.message()
    );
    assert!(r.message().contains("admin token"), "{}", r.message());
    // Identical contents are refused too (no oracle on the stored passphrase).
    let same = buildah_body("x", &hex::encode(M), "admin passphrase", 15);
    let r = kbs.post_json("/kbs/v0/register_workload", None, same.as_bytes());
    assert_eq!(r.status, 409, "{}", r.message());
    // A wrong token is refused as such, not treated as an unauthenticated caller.
    let r = kbs.request(
        "POST",
        "/kbs/v0/register_workload",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer not-the-token"),
        ],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 401, "{}", r.message());
    let after = kbs.request("GET", "/kbs/v0/admin/workloads", &h, None).body;
    assert_eq!(
        String::from_utf8_lossy(&before),
        String::from_utf8_lossy(&after)
    );

    // The key still goes to the registered measurement, and only there.
    let attest = |m: [u8; 48]| {
        let mut report =
            |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
                Ok(ev.report(rd, m, LIBKRUN_POLICY))
            };
        let req = SnpRequest {
            workload_id: "x",
            protocol: KbsProtocol::Reference,
            generation: "milan",
            resource_path: None,
            host_json: None,
        };
        snp::attest(&kbs.client(), &req, &mut report).map(|s| s.to_vec())
    };
    assert_eq!(attest(M).unwrap(), b"admin passphrase");
    assert!(attest(evil).is_err(), "the attacker's measurement");

    // New ids are still open to unauthenticated registration, once.
    let y = buildah_body("y", &hex::encode(evil), "first", 15);
    assert_eq!(
        kbs.post_json("/kbs/v0/register_workload", None, y.as_bytes())
            .status,
        200
    );
    let y2 = buildah_body("y", &hex::encode(M), "second", 15);
    assert_eq!(
        kbs.post_json("/kbs/v0/register_workload", None, y2.as_bytes())
            .status,
        409
    );
    // The admin replaces through the same endpoint.
    kbs.register("x", &hex::encode(evil), "replaced by the admin", 15);
    assert_eq!(attest(evil).unwrap(), b"replaced by the admin");
}

#[test]
fn an_unbound_digest_needs_a_broker_that_can_check_it() {
    // Without --bundle, buildah's registration (an unbound digest) is refused with the
    // reason, as long as the caller may register at all; the same digest said to be bound
    // is stored.
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        insecure_registration: true,
        ..Default::default()
    });
    let r = kbs.post_json(
        "/kbs/v0/register_workload",
        None,
        buildah_body("w", &hex::encode(M), "pw", 15).as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.message());
    assert!(r.message().contains("--bundle"), "{}", r.message());
    // The admin API's explicit "unbound" too (it was stored, and every launch then refused).
    let spec = serde_json::json!({"id": "w", "tee": "snp", "measurements": [hex::encode(M)],
        "measurement_kind": "unbound", "passphrase": "pw"});
    let r = kbs.admin_add_workload(&spec);
    assert_eq!(r.status, 400, "{}", r.message());
    assert!(r.message().contains("--bundle"), "{}", r.message());
    kbs.register("w", &hex::encode(M), "pw", 15);
    let listed: serde_json::Value =
        serde_json::from_slice(&kbs.cli(&["workload", "list"]).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["measurement_kind"], "bound", "{listed}");
    // --public-url alone is a usage error; --bundle without it too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krun-kbs"))
        .args(["--db", "/nonexistent/x.db", "--listen", "127.0.0.1:0"])
        .args(["--public-url", PUBLIC_URL])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--bundle"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krun-kbs"))
        .args(["--db", "/nonexistent/x.db", "--listen", "127.0.0.1:0"])
        .args(["--bundle", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--public-url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn database_files_are_owner_only_whatever_the_umask() {
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        umask: Some(0o000),
        ..Default::default()
    });
    for i in 0..3 {
        kbs.register(&format!("w{i}"), &hex::encode(M), "pw", 15);
    }
    // The broker holds its connection open, so the WAL and shared-memory files exist.
    let db = kbs.db();
    for suffix in ["", "-wal", "-shm"] {
        let f = std::path::PathBuf::from(format!("{}{suffix}", db.display()));
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }

    // The admin CLI creates a new database owner-only too, and tightens a wider one.
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("cli.db");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_krun-kbs"))
        .arg("--db")
        .arg(&fresh)
        .args([
            "workload",
            "add",
            "--id",
            "c",
            "--tee",
            "snp",
            "--measurement",
            &hex::encode(M),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&fresh), 0o600);
}

#[test]
fn admin_api_and_cli_manage_workloads_and_secrets() {
    let ev = SnpEvidence::new();
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        ..Default::default()
    }));
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let spec = serde_json::json!({"id": "api-w", "tee": "snp", "measurements": [hex::encode(M)],
        "passphrase": "api passphrase"});
    let r = kbs.request(
        "POST",
        "/kbs/v0/admin/workloads",
        &h,
        Some(spec.to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.message());
    let r = kbs.request(
        "PUT",
        "/kbs/v0/admin/workloads/api-w/secrets/repo/type/extra",
        &h,
        Some(b"extra"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        kbs.request(
            "PUT",
            "/kbs/v0/admin/workloads/nope/secrets/key",
            &h,
            Some(b"x")
        )
        .status,
        404
    );
    let list = kbs.request("GET", "/kbs/v0/admin/workloads", &h, None);
    let v: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(v[0]["id"], "api-w");
    assert_eq!(
        v[0]["secrets"],
        serde_json::json!(["key", "repo/type/extra"])
    );
    assert_eq!(kbs.get("/kbs/v0/admin/workloads", None).status, 401);

    // The CLI writes the same database (the broker sees it at once).
    let pass = kbs.dir.path().join("pass");
    std::fs::write(&pass, "cli passphrase\n").unwrap();
    let out = kbs.cli(&[
        "workload",
        "add",
        "--id",
        "cli-w",
        "--tee",
        "snp",
        "--measurement",
        &hex::encode([0x55u8; 48]),
        "--passphrase-file",
        &path_of(&pass),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut report = |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ev.report(rd, [0x55; 48], LIBKRUN_POLICY))
    };
    let req = SnpRequest {
        workload_id: "cli-w",
        protocol: KbsProtocol::Rcar,
        generation: "milan",
        resource_path: None,
        host_json: None,
    };
    assert_eq!(
        snp::attest(&kbs.client(), &req, &mut report)
            .unwrap()
            .as_slice(),
        b"cli passphrase"
    );

    // An extra RCAR resource by its path.
    let mut report = |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ev.report(rd, M, LIBKRUN_POLICY))
    };
    let req = SnpRequest {
        resource_path: Some("repo/type/extra"),
        workload_id: "api-w",
        ..req
    };
    assert_eq!(
        snp::attest(&kbs.client(), &req, &mut report)
            .unwrap()
            .as_slice(),
        b"extra"
    );

    assert_eq!(
        kbs.request("DELETE", "/kbs/v0/admin/workloads/api-w", &h, None)
            .status,
        200
    );
    assert_eq!(
        kbs.request("DELETE", "/kbs/v0/admin/workloads/api-w", &h, None)
            .status,
        404
    );
    assert!(kbs.cli(&["workload", "remove", "cli-w"]).status.success());
    assert!(!kbs.cli(&["workload", "remove", "cli-w"]).status.success());
    let req = SnpRequest {
        resource_path: None,
        workload_id: "cli-w",
        ..req
    };
    assert!(
        snp::attest(&kbs.client(), &req, &mut report).is_err(),
        "removed workload"
    );
}

/// A self-signed certificate for 127.0.0.1 made with OpenSSL.
fn self_signed() -> (Vec<u8>, Vec<u8>) {
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509Builder, X509NameBuilder};
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "krun-kbs test").unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (
        b.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

#[test]
fn https_broker_with_a_custom_ca() {
    let ev = SnpEvidence::new();
    let (cert, key) = self_signed();
    let kbs = Kbs::start(ev.trusted_by(KbsOptions {
        admin_token: true,
        tls: Some((cert.clone(), key)),
        ..Default::default()
    }));
    assert!(kbs.url.starts_with("https://127.0.0.1:"));
    // Registration over TLS through the client's stack is not needed: use the CLI.
    let out = kbs.cli(&[
        "workload",
        "add",
        "--id",
        "tls-w",
        "--tee",
        "snp",
        "--measurement",
        &hex::encode(M),
    ]);
    assert!(out.status.success());
    std::fs::write(kbs.dir.path().join("p"), "tls passphrase").unwrap();
    let out = kbs.cli(&[
        "secret",
        "set",
        "tls-w",
        "key",
        "--file",
        &path_of(&kbs.dir.path().join("p")),
    ]);
    assert!(out.status.success());

    let mut report = |rd: [u8; 64]| -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ev.report(rd, M, LIBKRUN_POLICY))
    };
    for protocol in [KbsProtocol::Reference, KbsProtocol::Rcar] {
        let cfg =
            ClientConfig::tcp(&kbs.url, std::time::Duration::from_secs(30), Some(&cert)).unwrap();
        let req = SnpRequest {
            workload_id: "tls-w",
            protocol,
            generation: "milan",
            resource_path: None,
            host_json: None,
        };
        assert_eq!(
            snp::attest(&cfg, &req, &mut report).unwrap().as_slice(),
            b"tls passphrase"
        );
    }
    // Without the CA the handshake fails and the error names the step.
    let mut cfg = ClientConfig::tcp(&kbs.url, std::time::Duration::from_secs(30), None).unwrap();
    cfg.retries = 0;
    let req = SnpRequest {
        workload_id: "tls-w",
        protocol: KbsProtocol::Rcar,
        generation: "milan",
        resource_path: None,
        host_json: None,
    };
    let err = snp::attest(&cfg, &req, &mut report).unwrap_err();
    assert!(err.to_string().starts_with("auth: "), "{err}");
}
