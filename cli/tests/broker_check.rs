//! `krun-sev broker-check` against the real `krun-kbs` configured with the PSP model's trust
//! roots (`krun-sev model-trust`) and a bundle for unbound registrations: with the admin
//! token and the bundle (broker-check registers the bound and unbound workloads itself) every
//! verdict is "ok" for SNP over both protocols and SEV-ES and plain SEV over the reference
//! protocol, and the command exits 0. Against the same broker with weakened registrations
//! (`--allow-debug`, SEV policies without NODBG or ES) it fails on exactly the case each
//! weakening opens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Output};

use sha2::Digest as _;

/// The launch digest the workload is registered with; the model signs reports carrying it.
const MEASUREMENT: [u8; 48] = [0x5c; 48];

/// The `krun-kbs` binary of this workspace, built on demand.
fn krun_sev(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_krun-sev"))
        .args(args)
        .env(
            "KRUN_SEV_PSP_MODEL_DIR",
            support::psp_model_dir().join("psp"),
        )
        .output()
        .unwrap()
}

/// A broker trusting the model, with workload `w` registered for [`MEASUREMENT`]
/// (`extra`: more `workload add` options); killed on drop.
struct Kbs {
    child: Child,
    url: String,
    /// A minimal guest bundle, for the binding cases.
    bundle: std::path::PathBuf,
    dir: tempfile::TempDir,
}

const ADMIN_TOKEN: &str = "broker-check admin token";
/// The URL launches name the broker by (its --public-url; broker-check's --public-url).
const PUBLIC_URL: &str = "http://kbs.invalid:8000";

impl Kbs {
    fn start(extra: &[&str]) -> Kbs {
        Kbs::start_with(extra, true)
    }

    /// [`Kbs::start`]; with `unbound` false the broker has no --bundle, so it cannot check
    /// (and refuses) unbound registrations.
    fn start_with(extra: &[&str], unbound: bool) -> Kbs {
        let dir = tempfile::tempdir().unwrap();
        let trust = dir.path().join("trust");
        let out = krun_sev(&["model-trust", trust.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        let db = dir.path().join("kbs.db");
        let measurement = hex::encode(MEASUREMENT);
        let mut args = vec!["--id", "w", "--tee", "snp", "--measurement", &measurement];
        args.extend(extra);
        workload_add(dir.path(), &args);
        let token = dir.path().join("admin-token");
        std::fs::write(&token, ADMIN_TOKEN).unwrap();
        // The broker checks launches of the bundle for workloads registered unbound, bound
        // to PUBLIC_URL.
        let bundle = support::fake_bundle(dir.path());
        let mut cmd = Command::new(support::krun_kbs_bin());
        if unbound {
            cmd.arg("--bundle")
                .arg(&bundle)
                .args(["--public-url", PUBLIC_URL]);
        }
        let (child, url) = support::spawn_kbs(
            cmd.args(["--listen", "127.0.0.1:0", "--db"])
                .arg(&db)
                .arg("--trust-root")
                .arg(trust.join("roots.pem"))
                .arg("--vcek-dir")
                .arg(trust.join("vcek"))
                .arg("--sev-trust-root")
                .arg(trust.join("ark.cert"))
                .arg("--admin-token-file")
                .arg(&token)
                .env(
                    "KRUN_SEV_PSP_MODEL_DIR",
                    support::psp_model_dir().join("psp"),
                )
                .env("RUST_LOG", "error"),
        );
        Kbs {
            child,
            url,
            bundle,
            dir,
        }
    }

    /// `krun-kbs workload add ARGS` while the broker runs.
    fn workload_add(&self, args: &[&str]) {
        workload_add(self.dir.path(), args);
    }

    /// `krun-sev broker-check --json --tee snp` for workload `w` (registered beforehand);
    /// the exit code and the cases.
    fn check(&self, protocol: &str) -> (Option<i32>, Vec<serde_json::Value>) {
        let measurement = hex::encode(MEASUREMENT);
        self.check_with(&[
            "--protocol",
            protocol,
            "--tee",
            "snp",
            "--workload-id",
            "w",
            "--measurement",
            &measurement,
        ])
    }

    /// `krun-sev broker-check --json` with `args` and the admin token: broker-check registers
    /// the workload itself.
    fn check_registering(&self, protocol: &str, tee: &str, id: &str) -> Vec<serde_json::Value> {
        let token = self.dir.path().join("admin-token");
        let bundle = &self.bundle;
        let mut args = vec![
            "--protocol",
            protocol,
            "--tee",
            tee,
            "--workload-id",
            id,
            "--admin-token-file",
            token.to_str().unwrap(),
            "--public-url",
            PUBLIC_URL,
        ];
        // The workload's digest is the launch of the bundle bound to it and this broker.
        args.extend(["--bundle", bundle.to_str().unwrap()]);
        let (code, cases) = self.check_with(&args);
        let not_ok: Vec<_> = cases.iter().filter(|c| c["verdict"] != "ok").collect();
        assert!(not_ok.is_empty(), "{protocol} {tee}: {not_ok:#?}");
        assert_eq!(code, Some(0), "{protocol} {tee}");
        cases
    }

    fn check_with(&self, args: &[&str]) -> (Option<i32>, Vec<serde_json::Value>) {
        let mut all = vec!["broker-check", "--broker", &self.url, "--json"];
        all.extend(args);
        let out = krun_sev(&all);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        (out.status.code(), v["cases"].as_array().unwrap().clone())
    }
}

/// `krun-kbs workload add ARGS` in the broker's database in `dir`, with a passphrase.
fn workload_add(dir: &std::path::Path, args: &[&str]) {
    let pass = dir.join("passphrase");
    std::fs::write(&pass, "broker-check passphrase").unwrap();
    let add = Command::new(support::krun_kbs_bin())
        .arg("--db")
        .arg(dir.join("kbs.db"))
        .args(["workload", "add"])
        .args(args)
        .arg("--passphrase-file")
        .arg(&pass)
        .output()
        .unwrap();
    assert!(add.status.success(), "{add:?}");
}

impl Drop for Kbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn verdicts(cases: &[serde_json::Value], verdict: &str) -> Vec<String> {
    cases
        .iter()
        .filter(|c| c["verdict"] == verdict)
        .map(|c| c["case"].as_str().unwrap().to_owned())
        .collect()
}

/// The binding cases (every TEE; need --bundle).
const BINDING: [&str; 3] = [
    "bound-other-workload",
    "bound-other-broker",
    "unbound-launch",
];
/// The cases against the unbound registration (every TEE; need --bundle and the token).
const UNBOUND: [&str; 6] = [
    "unbound-reg-genuine",
    "unbound-reg-unbound-launch",
    "unbound-reg-no-host-json",
    "unbound-reg-borrowed-host-json",
    "unbound-reg-other-workload",
    "unbound-reg-other-broker",
];
/// The body cases at the admin endpoints (need the token).
const ADMIN_BODIES: [&str; 4] = [
    "garbage-admin",
    "oversized-admin",
    "garbage-register",
    "oversized-register",
];

/// The cases skipped without --bundle and --admin-token-file, in table order.
fn need_registration(tee: &str) -> Vec<&'static str> {
    let mut v: Vec<&str> = match tee {
        "snp" => vec!["smt-forbidden", "tcb-below-minimum"],
        _ => vec!["build-below-minimum"],
    };
    v.extend(BINDING);
    v.extend(UNBOUND);
    if tee == "snp" {
        v.push("unbound-reg-other-protocol");
    }
    v.extend(ADMIN_BODIES);
    v
}

#[test]
fn krun_kbs_passes_every_case_with_both_protocols_and_every_tee() {
    let kbs = Kbs::start(&[]);
    for (protocol, tee) in [
        ("reference", "snp"),
        ("rcar", "snp"),
        ("reference", "sev-es"),
        ("reference", "sev"),
    ] {
        let cases = kbs.check_registering(protocol, tee, &format!("{tee}-{protocol}"));
        assert!(cases.len() >= 20, "{protocol} {tee}: {cases:?}");
        let genuine = &cases[0];
        assert_eq!(genuine["case"], "genuine");
        assert_eq!(genuine["observed"], "released");
        // Each refusal is an HTTP 4xx answer (or, for an oversized body, a closed
        // connection), and each case says why.
        for c in &cases[1..] {
            let observed = c["observed"].as_str().unwrap();
            if c["expected"] == "released" {
                // The baseline of the unbound registration.
                assert_eq!(c["case"], "unbound-reg-genuine");
                assert_eq!(observed, "released", "{protocol} {tee}: {c}");
                continue;
            }
            let name = c["case"].as_str().unwrap();
            let prevented =
                (name.ends_with("-policy") || name == "es-downgrade") && tee.starts_with("sev");
            assert!(
                observed.contains(": HTTP 4") || name.starts_with("oversized-") || prevented,
                "{protocol} {tee}: {c}"
            );
            assert!(!c["why"].as_str().unwrap().is_empty());
        }
        let names: Vec<&str> = cases.iter().map(|c| c["case"].as_str().unwrap()).collect();
        let expected: &[&str] = match tee {
            "snp" => &["debug-policy", "unknown-ark"],
            "sev-es" => &[
                "wrong-tik",
                "measure-other-policy-debug",
                "measure-other-policy-noks",
                "build-below-minimum",
                "es-downgrade",
            ],
            _ => &[
                "wrong-tik",
                "measure-other-policy-debug",
                "measure-other-policy-noks",
                "build-below-minimum",
            ],
        };
        for e in expected.iter().chain(&need_registration(tee)) {
            assert!(names.contains(e), "{protocol} {tee}: no {e} in {names:?}");
        }
        assert_eq!(
            names.contains(&"es-downgrade"),
            tee == "sev-es",
            "{protocol} {tee}: {names:?}"
        );
        if tee != "snp" {
            // The SEV binding cases are refused for the launch digest (bound registration).
            for name in [
                "bound-other-workload",
                "bound-other-broker",
                "unbound-launch",
            ] {
                let c = cases.iter().find(|c| c["case"] == name).unwrap();
                assert!(
                    c["observed"]
                        .as_str()
                        .unwrap()
                        .contains("launch measurement is not an allowed one"),
                    "{tee}: {c}"
                );
            }
        }
        // The unbound registration's refusals say why: krun-kbs's binding checks, or over
        // RCAR (whose /auth names no workload: the binding does), no bound registration has
        // the launch's digest.
        let rcar = protocol == "rcar";
        for (name, says) in [
            (
                "unbound-reg-unbound-launch",
                if rcar { "not allowed" } else { "not bound" },
            ),
            (
                "unbound-reg-no-host-json",
                if rcar {
                    "not allowed"
                } else {
                    "sent no host.json"
                },
            ),
            ("unbound-reg-other-broker", "broker"),
        ] {
            let c = cases.iter().find(|c| c["case"] == name).unwrap();
            assert!(
                c["observed"].as_str().unwrap().contains(says),
                "{protocol} {tee}: {c}"
            );
        }
        if tee == "snp" {
            // Refused for the reason the case targets.
            let smt = cases.iter().find(|c| c["case"] == "smt-forbidden").unwrap();
            assert_eq!(smt["verdict"], "ok", "{protocol}: {smt}");
            assert!(
                smt["observed"].as_str().unwrap().contains("allows SMT"),
                "{protocol}: {smt}"
            );
        }
    }

    // Without the admin token the workload must exist (`w`, registered by the CLI), and
    // the cases resting on a registered requirement are skipped, never counted ok.
    for protocol in ["reference", "rcar"] {
        let (code, cases) = kbs.check(protocol);
        assert_eq!(
            verdicts(&cases, "skipped"),
            need_registration("snp"),
            "{protocol}"
        );
        assert_eq!(
            verdicts(&cases, "WRONG"),
            Vec::<String>::new(),
            "{protocol}"
        );
        assert_eq!(code, Some(0), "{protocol}");
    }

    // RCAR has no SEV or SEV-ES evidence: a clear error, no table.
    for tee in ["sev-es", "sev"] {
        let out = krun_sev(&[
            "broker-check",
            "--broker",
            &kbs.url,
            "--protocol",
            "rcar",
            "--tee",
            tee,
            "--workload-id",
            "w",
        ]);
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("RCAR 0.4.0 carries no SEV"),
            "{out:?}"
        );
    }
}

#[test]
fn a_broker_that_accepts_a_debug_policy_fails_exactly_that_case() {
    let kbs = Kbs::start(&["--allow-debug"]);
    for protocol in ["reference", "rcar"] {
        let (code, cases) = kbs.check(protocol);
        assert_eq!(verdicts(&cases, "WRONG"), ["debug-policy"], "{protocol}");
        assert_eq!(verdicts(&cases, "skipped"), need_registration("snp"));
        assert_eq!(code, Some(1), "{protocol}");
    }

    // SEV-ES and plain SEV: the broker chooses the launch policy. Registered with NODBG
    // clear it hands out a debuggable one and releases the secret to that launch; for
    // SEV-ES registered without ES, it releases it to a plain SEV launch of the same bytes.
    // broker-check's own launch: one page of 0x42 and, for SEV-ES, one VMSA of 0x17.
    let digest = |es: bool| {
        let mut d = sha2::Sha256::new();
        d.update([0x42u8; 4096]);
        if es {
            d.update([0x17u8; 4096]);
        }
        hex::encode(d.finalize())
    };
    for (id, tee, add_tee, es, policy, wrong) in [
        ("s", "sev-es", "sev", true, "0x3e", "debug-policy"),
        ("s-noes", "sev-es", "sev", true, "0x3b", "es-downgrade"),
        ("p", "sev", "sev-no-es", false, "0x3a", "debug-policy"),
    ] {
        let digest = digest(es);
        kbs.workload_add(&[
            "--id",
            id,
            "--tee",
            add_tee,
            "--measurement",
            &digest,
            "--sev-policy",
            policy,
        ]);
        let (code, cases) =
            kbs.check_with(&["--protocol", "reference", "--tee", tee, "--workload-id", id]);
        assert_eq!(verdicts(&cases, "WRONG"), [wrong], "{id}: {cases:#?}");
        assert_eq!(verdicts(&cases, "skipped"), need_registration(tee), "{id}");
        assert_eq!(code, Some(1), "{id}");
        let c = cases.iter().find(|c| c["case"] == wrong).unwrap();
        assert_eq!(c["observed"], "released", "{id}: {c}");
    }
}

#[test]
fn a_broker_without_the_workload_fails_the_genuine_case() {
    let kbs = Kbs::start_with(&[], false);
    let out = krun_sev(&[
        "broker-check",
        "--broker",
        &kbs.url,
        "--protocol",
        "reference",
        "--workload-id",
        "not-registered",
        "--measurement",
        &hex::encode(MEASUREMENT),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    let genuine = table.lines().nth(1).unwrap();
    assert!(
        genuine.starts_with("genuine") && genuine.contains("WRONG"),
        "{table}"
    );

    // A broker without --bundle refuses the unbound registration broker-check makes: its
    // cases are skipped with the broker's answer, never counted ok, and nothing is WRONG.
    let token = kbs.dir.path().join("admin-token");
    let (code, cases) = kbs.check_with(&[
        "--protocol",
        "reference",
        "--tee",
        "sev-es",
        "--workload-id",
        "no-bundle",
        "--admin-token-file",
        token.to_str().unwrap(),
        "--bundle",
        kbs.bundle.to_str().unwrap(),
    ]);
    assert_eq!(verdicts(&cases, "skipped"), UNBOUND, "{cases:#?}");
    for c in cases.iter().filter(|c| c["verdict"] == "skipped") {
        assert!(
            c["observed"]
                .as_str()
                .unwrap()
                .contains("refused the unbound registration (register: HTTP 400"),
            "{c}"
        );
    }
    assert_eq!(verdicts(&cases, "WRONG"), Vec::<String>::new());
    assert_eq!(code, Some(0));
}
