//! The unit tests that need a KVM which boots guests, run where there is one: inside the
//! nested-KVM test host, in one boot.
//!
//! A plain `cargo test` lists them as ignored ("needs a KVM that boots guests: runs in the
//! test host"). This test builds their binaries (`cargo test --workspace --no-run
//! --message-format=json`), copies them (debug info stripped) with their shared libraries and
//! a PSP model identity into the test host, and runs each with `--ignored` and
//! `KRUN_TEST_REQUIRE_KVM=1`: every ignored test of those binaries must run there and pass.
//! Their results are echoed as `[kvm-unit] test NAME ... ok` lines (the `make test` summary
//! counts them). Ignored by a plain `cargo test`; `ci/testhost-tests.sh` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use krun_testhost::{marker_values, TestHost};

/// The test binaries holding KVM tests: (package, test target name, name in the host). The
/// target name of a library's unit tests is the crate name (`krun_sev`).
const BINARIES: &[(&str, &str, &str)] = &[
    ("krun-sev", "krun_sev", "krun-sev-lib"),
    ("krun-resetvec", "kvm_boot", "krun-resetvec-kvm_boot"),
];

/// The package name in a cargo package ID (`path+file:///dir#name@1.0.0`, or
/// `path+file:///dir/name#1.0.0` when the directory has the package's name).
fn package_name(id: &str) -> &str {
    let (path, fragment) = id.rsplit_once('#').unwrap_or((id, ""));
    match fragment.split_once('@') {
        Some((name, _)) => name,
        None => path.rsplit('/').next().unwrap_or(path),
    }
}

/// Variables cargo sets for a running test, left out of the cargo this test runs: build
/// scripts (ring's) name some in rerun-if-env-changed, and cargo compares them with its own
/// environment, so they would make that cargo run those build scripts again and rebuild what
/// depends on them, and the next plain cargo undo it.
const CARGO_TEST_VARS: &[&str] = &["OUT_DIR", "CARGO_TARGET_TMPDIR", "CARGO_PRIMARY_PACKAGE"];
/// The prefixes of the others (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...).
const CARGO_TEST_VAR_PREFIXES: &[&str] = &[
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "CARGO_CRATE_",
    "CARGO_BIN_",
];

/// Builds the workspace's test binaries and returns the paths of [`BINARIES`], in order.
/// One `cargo test --workspace --no-run`, like `make test`'s unit tests before it (same
/// features, same environment), so there it builds nothing again; with `-p PACKAGE` the
/// features differ and the two binaries would be compiled once more.
fn build_test_binaries() -> Vec<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut cargo = Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if CARGO_TEST_VARS.contains(&key.as_ref())
            || CARGO_TEST_VAR_PREFIXES.iter().any(|p| key.starts_with(p))
        {
            cargo.env_remove(key.as_ref());
        }
    }
    let out = cargo
        .args(["test", "--workspace", "--no-run", "--message-format=json"])
        .arg("--manifest-path")
        .arg(&manifest)
        // With the oracles required, the only ignored tests of these binaries are the KVM
        // ones (without, the oracle tests are ignored too and would run here, without Python).
        .env("KRUN_TEST_REQUIRE_ORACLES", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo test --workspace --no-run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let artifacts: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .collect();
    BINARIES
        .iter()
        .map(|(package, target, _)| {
            let found: Vec<PathBuf> = artifacts
                .iter()
                .filter(|m| {
                    m["package_id"].as_str().map(package_name) == Some(*package)
                        && m["target"]["name"] == *target
                })
                .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
                .collect();
            assert_eq!(
                found.len(),
                1,
                "expected one test binary {target} of {package}: {found:?}"
            );
            found.into_iter().next().unwrap()
        })
        .collect()
}

/// The ignored tests `binary` lists (what must run in the test host).
fn ignored_tests(binary: &Path) -> Vec<String> {
    let out = Command::new(binary)
        .args(["--list", "--ignored", "--format=terse"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{} --list failed", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect()
}

/// A copy of `binary` without debug info (a third of the size: less initramfs to unpack
/// under TCG); the original where objcopy is missing.
fn stripped(binary: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(binary)
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        out
    } else {
        binary.to_path_buf()
    }
}

#[test]
#[ignore = "boots the test host"]
fn kvm_unit_tests_pass_in_the_test_host() {
    let dir = tempfile::tempdir().unwrap();
    // The launch-sequence test drives the PSP model: its identity is made here (RSA key
    // generation under TCG would take minutes).
    let psp = dir.path().join("psp");
    krun_psp_model::ModelIdentity::generate()
        .unwrap()
        .save(&psp)
        .unwrap();
    let mut host = TestHost::new()
        .file(&psp, "/psp")
        .mem_mib(2048)
        .timeout(Duration::from_secs(600));
    let mut expected = Vec::new();
    for ((_, _, name), binary) in BINARIES.iter().zip(build_test_binaries()) {
        let tests = ignored_tests(&binary);
        assert!(
            !tests.is_empty(),
            "{} has no ignored (KVM) tests",
            binary.display()
        );
        expected.extend(tests);
        host = host.file(
            stripped(&binary, dir.path(), name),
            &format!("/kvm-tests/{name}"),
        );
    }
    let script = r#"
export KRUN_TEST_REQUIRE_KVM=1 KRUN_SEV_PSP_MODEL_DIR=/psp RUST_BACKTRACE=1
cd /tmp
for t in /kvm-tests/*; do
  "$t" --ignored --test-threads=1 2>&1 | sed 's/^/[kvm-unit] /'
  echo "KVM_UNIT_DONE=${t##*/}"
done
"#;
    let outcome = host.run(&["sh", "-c", script]).unwrap();
    let out = &outcome.output;
    eprintln!("{out}");
    let ctx = format!("output:\n{out}");
    assert_eq!(
        marker_values(out, "KVM_UNIT_DONE=").len(),
        BINARIES.len(),
        "{ctx}"
    );
    let passed: Vec<&str> = marker_values(out, "[kvm-unit] test ")
        .into_iter()
        .filter_map(|l| l.strip_suffix(" ... ok"))
        .collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|t| !passed.contains(&t.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "KVM tests that did not pass in the test host: {missing:?}; {ctx}"
    );
    assert_eq!(
        passed.len(),
        expected.len(),
        "tests passed in the test host that were not expected; {ctx}"
    );
    for result in marker_values(out, "[kvm-unit] test result: ") {
        assert!(result.starts_with("ok."), "{result}; {ctx}");
    }
    eprintln!(
        "[kvm-unit] {} KVM unit tests passed in one test-host boot ({:.1} s wall)",
        passed.len(),
        outcome.wall_time.as_secs_f64()
    );
}

#[test]
fn package_names_from_cargo_package_ids() {
    assert_eq!(
        package_name("path+file:///work/main#krun-sev@1.0.0"),
        "krun-sev"
    );
    assert_eq!(
        package_name("path+file:///r/firmware/resetvec#krun-resetvec@1.0.0"),
        "krun-resetvec"
    );
    assert_eq!(package_name("path+file:///r/krun-sev#1.0.0"), "krun-sev");
}
