//! SEV/SEV-ES pre-attestation against the real `krun-kbs` binary: the host client drives the
//! broker's owner session while a fake PSP plays LAUNCH_START/MEASURE/SECRET.

// Helpers outside #[test] fns unwrap too: a failed step should fail the test loudly.
#![allow(clippy::unwrap_used)]

mod support;

use krun_attestation::client::sev::SevAttestation;
use krun_attestation::{secret_table, ClientError, Step};
use support::*;

const LAUNCH_DATA: &[u8] = b"qboot, kernel, initrd, boot_params and VMSAs";

fn digest_hex(data: &[u8]) -> String {
    hex::encode(openssl::sha::sha256(data))
}

fn broker(platform: &SevPlatform) -> Kbs {
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        sev_ark: Some(platform.fake.ark().to_vec()),
        ..Default::default()
    });
    kbs.register("sev-w1", &digest_hex(LAUNCH_DATA), "sev passphrase", 63);
    kbs.register("sev-w2", &digest_hex(b"other"), "other passphrase", 63);
    kbs
}

/// The VMM's sequence with the fake PSP; returns the passphrase the guest would read.
fn launch(
    kbs: &Kbs,
    platform: &SevPlatform,
    wid: &str,
    data: &[u8],
) -> Result<Vec<u8>, ClientError> {
    let cfg = kbs.client();
    let session = SevAttestation::auth(
        &cfg,
        wid,
        platform.fake.build,
        platform.fake.chain.clone(),
        None,
    )?;
    assert_eq!(session.start.policy.to_u32(), 63, "the registered policy");
    let mut guest = platform.fake.launch_start(&session.start).unwrap();
    guest.update(data);
    let measurement = guest.measure().unwrap();
    session.attest(&measurement)?;
    let packet = session.key()?;
    let plaintext = guest.launch_secret(&packet).unwrap();
    Ok(secret_table::passphrase(&plaintext).unwrap().to_vec())
}

fn status(e: &ClientError) -> (Step, u16) {
    match e {
        ClientError::Status { step, status, .. } => (*step, *status),
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn sev_flow_releases_the_secret_only_for_the_right_measurement() {
    let platform = SevPlatform::new();
    let kbs = broker(&platform);
    assert_eq!(
        launch(&kbs, &platform, "sev-w1", LAUNCH_DATA).unwrap(),
        b"sev passphrase"
    );
    let err = launch(&kbs, &platform, "sev-w1", b"tampered initrd").unwrap_err();
    assert_eq!(status(&err), (Step::Attest, 401), "{err}");
    // Unregistered workload.
    let err = launch(&kbs, &platform, "nobody", LAUNCH_DATA).unwrap_err();
    assert_eq!(status(&err), (Step::Auth, 401), "{err}");
    assert_eq!(kbs.sessions(), 0, "finished and failed sessions are gone");
}

#[test]
fn sev_key_of_another_workload_and_replayed_measurement_are_refused() {
    let platform = SevPlatform::new();
    let kbs = broker(&platform);
    let cfg = kbs.client();
    let session = SevAttestation::auth(
        &cfg,
        "sev-w1",
        platform.fake.build,
        platform.fake.chain.clone(),
        None,
    )
    .unwrap();
    let mut guest = platform.fake.launch_start(&session.start).unwrap();
    guest.update(LAUNCH_DATA);
    let m = guest.measure().unwrap();
    session.attest(&m).unwrap();
    // Replaying the same measurement into the attested session is refused.
    let err = session.attest(&m).unwrap_err();
    assert_eq!(status(&err), (Step::Attest, 401));
    // A measurement from one session does not verify in another (different TIK).
    let other = SevAttestation::auth(
        &cfg,
        "sev-w1",
        platform.fake.build,
        platform.fake.chain.clone(),
        None,
    )
    .unwrap();
    assert_eq!(status(&other.attest(&m).unwrap_err()), (Step::Attest, 401));
    // Raw request for another workload's key with the attested session's cookie.
    let cookie = session_cookie(&kbs, &platform);
    let r = kbs.get("/kbs/v0/key/sev-w2", Some(&cookie));
    assert_eq!(r.status, 403, "{}", r.message());
    assert_eq!(
        kbs.get("/kbs/v0/key/sev-w1", Some(&cookie)).status,
        401,
        "session ended"
    );
}

/// Runs auth + attest by hand and returns the attested session's cookie header.
fn session_cookie(kbs: &Kbs, platform: &SevPlatform) -> String {
    let sev = krun_attestation::reference::SevRequest {
        build: platform.fake.build,
        chain: platform.fake.chain.clone(),
        workload_id: "sev-w1".into(),
        host_json: None,
    };
    let req = serde_json::json!({
        "version": "0.0.0", "tee": "sev", "extra-params": serde_json::to_string(&sev).unwrap()
    });
    let r = kbs.post_json("/kbs/v0/auth", None, req.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.message());
    let cookie = format!("session_id={}", r.cookie("session_id").unwrap());
    let ch: krun_attestation::reference::Challenge = serde_json::from_slice(&r.body).unwrap();
    let sev_ch: krun_attestation::reference::SevChallenge =
        serde_json::from_str(&ch.extra_params).unwrap();
    assert_eq!(sev_ch.id, ch.nonce);
    let mut guest = platform.fake.launch_start(&sev_ch.start).unwrap();
    guest.update(LAUNCH_DATA);
    let m = guest.measure().unwrap();
    // sev 1.x wire form of the evidence, as libkrun 1.x sent it.
    let att = serde_json::json!({
        "tee-pubkey": {"alg": "", "k-mod": "", "k-exp": ""},
        "tee-evidence": serde_json::to_string(&m).unwrap(),
    });
    let r = kbs.post_json("/kbs/v0/attest", Some(&cookie), att.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.message());
    cookie
}

#[test]
fn sev_chain_from_an_untrusted_ark_is_refused() {
    let platform = SevPlatform::new();
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        ..Default::default()
    });
    kbs.register("sev-w1", &digest_hex(LAUNCH_DATA), "sev passphrase", 63);
    let err = launch(&kbs, &platform, "sev-w1", LAUNCH_DATA).unwrap_err();
    assert_eq!(status(&err), (Step::Auth, 401), "{err}");
}

/// Registers `id` through the admin CLI with `extra` flags.
fn cli_add(kbs: &Kbs, id: &str, extra: &[&str]) {
    let pass = kbs.dir.path().join(format!("{id}.pass"));
    std::fs::write(&pass, format!("{id} passphrase")).unwrap();
    let digest = digest_hex(LAUNCH_DATA);
    let pass = path_of(&pass);
    let mut args = vec![
        "workload",
        "add",
        "--id",
        id,
        "--tee",
        "sev",
        "--measurement",
        &digest,
        "--passphrase-file",
        &pass,
    ];
    args.extend(extra);
    let out = kbs.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sev_firmware_minimum_from_the_server_or_the_workload() {
    // The fake platform runs firmware 1.55.21.
    let platform = SevPlatform::new();
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        sev_ark: Some(platform.fake.ark().to_vec()),
        extra_args: vec!["--min-sev-fw".into(), "1.55.22".into()],
        ..Default::default()
    });
    kbs.register("sev-w1", &digest_hex(LAUNCH_DATA), "sev passphrase", 63);
    let err = launch(&kbs, &platform, "sev-w1", LAUNCH_DATA).unwrap_err();
    assert_eq!(status(&err), (Step::Auth, 401), "{err}");
    assert!(
        err.to_string()
            .contains("SEV firmware 1.55.21 is below the minimum 1.55.22"),
        "{err}"
    );
    // A workload's own minimum replaces the server's.
    cli_add(&kbs, "own-min", &["--min-sev-fw", "1.55.21"]);
    assert_eq!(
        launch(&kbs, &platform, "own-min", LAUNCH_DATA).unwrap(),
        b"own-min passphrase"
    );
    cli_add(&kbs, "no-min", &["--min-sev-fw", "0.0.0"]);
    assert_eq!(
        launch(&kbs, &platform, "no-min", LAUNCH_DATA).unwrap(),
        b"no-min passphrase"
    );
    // The admin API's sev.min_fw.
    let spec = serde_json::json!({"id": "api", "tee": "sev",
        "measurements": [digest_hex(LAUNCH_DATA)], "passphrase": "api passphrase",
        "sev": {"min_fw": "1.56"}});
    let r = kbs.admin_add_workload(&spec);
    assert_eq!(r.status, 200, "{}", r.message());
    let err = launch(&kbs, &platform, "api", LAUNCH_DATA).unwrap_err();
    assert!(err.to_string().contains("minimum 1.56.0"), "{err}");

    // A host that overstates its firmware passes /auth, but the PSP's MAC covers the real
    // version: /attest refuses.
    let claimed = krun_attestation::reference::SevBuild {
        version: krun_attestation::reference::SevVersion {
            major: 1,
            minor: 56,
        },
        build: 0,
    };
    let session = SevAttestation::auth(
        &kbs.client(),
        "sev-w1",
        claimed,
        platform.fake.chain.clone(),
        None,
    )
    .unwrap();
    let mut guest = platform.fake.launch_start(&session.start).unwrap();
    guest.update(LAUNCH_DATA);
    let err = session.attest(&guest.measure().unwrap()).unwrap_err();
    assert_eq!(status(&err), (Step::Attest, 401), "{err}");
}

#[test]
fn legacy_generations_are_named_and_model_roots_still_work() {
    let platform = SevPlatform::new();
    // Allowing Naples and Rome keeps a configured root working.
    let kbs = Kbs::start(KbsOptions {
        admin_token: true,
        sev_ark: Some(platform.fake.ark().to_vec()),
        extra_args: vec!["--allow-sev-generation".into(), "naples,rome".into()],
        ..Default::default()
    });
    kbs.register("sev-w1", &digest_hex(LAUNCH_DATA), "sev passphrase", 63);
    assert_eq!(
        launch(&kbs, &platform, "sev-w1", LAUNCH_DATA).unwrap(),
        b"sev passphrase"
    );
    // Milan and later need no allowing; an unknown name is an error that says what is valid.
    for (arg, says) in [
        ("milan", "trusted by default"),
        ("bergamo", "naples or rome"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_krun-kbs"))
            .args(["--db", &path_of(&kbs.dir.path().join("x.db"))])
            .args(["--listen", "127.0.0.1:0", "--allow-sev-generation", arg])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn workload_add_tells_plain_sev_from_sev_es_by_the_policy() {
    let kbs = Kbs::start(KbsOptions::default());
    let digest = digest_hex(LAUNCH_DATA);
    let pass = kbs.dir.path().join("pp");
    std::fs::write(&pass, "pp").unwrap();
    let pass = path_of(&pass);
    let add = |id: &str, tee: &str, policy: Option<&str>| {
        let mut args = vec!["workload", "add", "--id", id, "--tee", tee];
        args.extend(["--measurement", &digest, "--passphrase-file", &pass]);
        if let Some(p) = policy {
            args.extend(["--sev-policy", p]);
        }
        kbs.cli(&args)
    };
    // Plain SEV gets buildah's policy without ES (0x3b, what mkcw registers for sev-no-es);
    // sev and sev-es keep SEV-ES's 0x3f.
    for (id, tee, policy) in [
        ("plain", "sev-no-es", 0x3b),
        ("plain2", "sev_no_es", 0x3b),
        ("es", "sev-es", 0x3f),
        ("buildah", "sev", 0x3f),
    ] {
        let out = add(id, tee, None);
        assert!(out.status.success(), "{tee}: {out:?}");
        let listed: serde_json::Value =
            serde_json::from_slice(&kbs.cli(&["workload", "list"]).stdout).unwrap();
        let w = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == id)
            .unwrap();
        assert_eq!(w["tee"], "sev", "{w}");
        assert_eq!(w["sev_policy"], policy, "{tee}: {w}");
    }
    // A policy that contradicts the launch type is refused with the reason; `sev` takes any.
    for (tee, policy, says) in [
        ("sev-no-es", "0x3f", "plain SEV"),
        ("sev-es", "0x3b", "ES bit"),
    ] {
        let out = add("bad", tee, Some(policy));
        assert!(!out.status.success(), "{tee} {policy}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
    assert!(add("any", "sev", Some("0x3b")).status.success());
    let out = add("bad", "sev-x", None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sev-no-es"));
}
