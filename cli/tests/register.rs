//! `krun-sev mkcw --register` against a real `krun-kbs` process: the broker stores the
//! workload with the measurement `krun-sev measure` prints for the same inputs; a wrong admin
//! token and an unreachable broker are clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const TOKEN: &str = "cli-test-admin-token";

/// The `krun-kbs` binary of this workspace, built on demand.
/// A running broker with an admin token; killed on drop.
struct Kbs {
    child: Child,
    url: String,
    db: PathBuf,
    token_file: PathBuf,
}

impl Kbs {
    fn start(dir: &Path) -> Kbs {
        let token_file = dir.join("token");
        fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let db = dir.join("kbs.db");
        let (child, url) = support::spawn_kbs(
            Command::new(support::krun_kbs_bin())
                .args(["--listen", "127.0.0.1:0", "--db"])
                .arg(&db)
                .arg("--admin-token-file")
                .arg(&token_file)
                .env("RUST_LOG", "warn"),
        );
        Kbs {
            child,
            url,
            db,
            token_file,
        }
    }

    /// `krun-kbs workload list` as JSON.
    fn workloads(&self) -> serde_json::Value {
        let out = Command::new(support::krun_kbs_bin())
            .arg("--db")
            .arg(&self.db)
            .args(["workload", "list"])
            .output()
            .unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Kbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/hello"), b"hello\n").unwrap();
    root
}

fn krun_sev(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_krun-sev"))
        .args(args)
        .env("KRUN_SEV_BACKEND", "model")
        .env(
            "KRUN_SEV_PSP_MODEL_DIR",
            support::psp_model_dir().join("psp"),
        )
        .output()
        .unwrap()
}

#[allow(clippy::too_many_arguments)]
fn mkcw(dir: &Path, kbs_url: &str, token_file: &Path, tee: &str, id: &str, out: &str) -> Output {
    mkcw_with(
        dir,
        kbs_url,
        token_file,
        tee,
        id,
        out,
        Some("registered passphrase"),
    )
}

/// `mkcw --register`; without `pass`, mkcw generates the passphrase.
fn mkcw_with(
    dir: &Path,
    kbs_url: &str,
    token_file: &Path,
    tee: &str,
    id: &str,
    out: &str,
    pass: Option<&str>,
) -> Output {
    let bundle = dir.join("bundle");
    let out_dir = dir.join(out);
    let rootfs = dir.join("rootfs");
    let mut args = vec![
        "mkcw",
        "--tee",
        tee,
        "--cpus",
        "2",
        "--ram-mib",
        "512",
        "--attestation-url",
        "http://127.0.0.1:1",
        "--kbs-url",
        kbs_url,
        "--admin-token-file",
        token_file.to_str().unwrap(),
        "--register",
        "--bundle",
        bundle.to_str().unwrap(),
        "--workload-id",
        id,
        "--pbkdf2-iterations",
        "1000",
        "--cmd",
        "/bin/hello",
        rootfs.to_str().unwrap(),
        out_dir.to_str().unwrap(),
    ];
    if let Some(p) = pass {
        args.extend(["--passphrase", p]);
    }
    krun_sev(&args)
}

/// `krun-sev measure` with `args` and the fake bundle.
fn measure(dir: &Path, args: &[&str]) -> String {
    let bundle = dir.join("bundle");
    let mut all = vec!["measure", "--bundle", bundle.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = krun_sev(&all);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn mkcw_registers_with_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    support::fake_bundle(d);
    rootfs(d);
    let kbs = Kbs::start(d);

    for (tee, id, mode, policy) in [
        ("sev-es", "w-es", "sev-es", 63),
        ("sev-no-es", "w-sev", "sev", 59),
        ("snp", "w-snp", "snp", 0),
    ] {
        let out = mkcw(d, &kbs.url, &kbs.token_file, tee, id, id);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{tee}: {stderr}");
        assert!(
            stderr.contains(&format!("bound to workload {id} at http://127.0.0.1:1")),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("registered workload {id}")),
            "{stderr}"
        );
        // Never logged.
        assert!(!stderr.contains("registered passphrase"), "{stderr}");
        assert!(
            stderr.contains("warning: registering over plain http")
                && stderr.contains("the admin token and the disk passphrase travel in clear"),
            "{stderr}"
        );
        assert!(d.join(id).join("disk.img").exists());
        let config = d.join(id).join("krun-sev.json");
        let expected = measure(d, &["--tee-config", config.to_str().unwrap()]);
        assert!(stderr.contains(&expected), "{stderr}");
        // The registered digest is bound to the workload and broker: the same TEE, vCPUs
        // and RAM without them measure differently.
        let unbound = measure(d, &["--tee", mode, "--cpus", "2", "--ram-mib", "512"]);
        assert_ne!(unbound, expected, "{tee}");
        let list = kbs.workloads();
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == id)
            .unwrap_or_else(|| panic!("{id} not registered: {list}"));
        let measurements = entry["measurements"].to_string();
        assert!(measurements.contains(&expected), "{entry}");
        assert_eq!(entry["secrets"], serde_json::json!(["key"]), "{entry}");
        if policy != 0 {
            assert_eq!(entry["sev_policy"], policy, "{entry}");
        }
    }

    // A generated passphrase goes to the broker only: no passphrase file next to the image.
    let out = mkcw_with(d, &kbs.url, &kbs.token_file, "snp", "w-gen", "gen", None);
    assert!(out.status.success(), "{out:?}");
    assert!(d.join("gen/disk.img").exists());
    assert!(!d.join("gen/passphrase").exists());
    let list = kbs.workloads();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == "w-gen" && w["secrets"] == serde_json::json!(["key"])),
        "{list}"
    );
}

#[test]
fn refused_and_unreachable_registrations_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    support::fake_bundle(d);
    rootfs(d);
    let kbs = Kbs::start(d);
    let wrong = d.join("wrong-token");
    fs::write(&wrong, "not-the-admin-token\n").unwrap();
    let out = mkcw(d, &kbs.url, &wrong, "snp", "w-bad", "bad");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("the key broker refused the registration: HTTP 401"),
        "{stderr}"
    );
    assert!(stderr.contains("admin token"), "{stderr}");
    assert!(!stderr.contains("registered passphrase"), "{stderr}");
    // Refused before encryption: no disk image.
    assert!(!d.join("bad/disk.img").exists());
    assert_eq!(kbs.workloads(), serde_json::json!([]));

    drop(kbs);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = mkcw(
        d,
        &format!("http://127.0.0.1:{port}"),
        &wrong,
        "snp",
        "w-gone",
        "gone",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the key broker at http://127.0.0.1:"),
        "{stderr}"
    );
}

#[test]
fn model_trust_roots_configure_krun_kbs() {
    let dir = tempfile::tempdir().unwrap();
    let trust = dir.path().join("trust");
    let out = krun_sev(&["model-trust", trust.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let id = krun_psp_model::ModelIdentity::load(&support::psp_model_dir().join("psp")).unwrap();
    assert_eq!(
        fs::read(trust.join("roots.pem")).unwrap(),
        [id.snp_ark_pem().unwrap(), id.snp_ask_pem().unwrap()].concat()
    );
    let vceks: Vec<_> = fs::read_dir(trust.join("vcek")).unwrap().collect();
    assert_eq!(vceks.len(), 1);
    // The SEV chain as `sevctl export --full` writes it (the sevctl stand-in's output).
    assert_eq!(
        fs::read(trust.join("sev.chain")).unwrap(),
        id.sev_chain_bytes()
    );
    // The broker accepts all three as trust configuration.
    let mut child = Command::new(support::krun_kbs_bin())
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("kbs.db"))
        .arg("--sev-trust-root")
        .arg(trust.join("ark.cert"))
        .arg("--trust-root")
        .arg(trust.join("roots.pem"))
        .arg("--vcek-dir")
        .arg(trust.join("vcek"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("krun-kbs listening on "), "{line:?}");
}
