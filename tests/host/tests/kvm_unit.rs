//! The unit tests that need a KVM which boots guests, run where there is one: inside the
//! nested-KVM test host, in one boot.
//!
//! A plain `cargo test` lists them as ignored ("needs a KVM that boots guests: runs in the
//! test host"). This test builds their binaries (`cargo test --no-run
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

/// The test binaries holding KVM tests: (package, cargo target selection, name in the host).
const BINARIES: &[(&str, &str, &str)] = &[
    ("krun-sev", "--lib", "krun-sev-lib"),
    ("krun-resetvec", "--test=kvm_boot", "krun-resetvec-kvm_boot"),
];

/// Builds one test binary and returns its path.
fn build_test_binary(package: &str, target: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "--no-run",
            "--message-format=json",
            "-p",
            package,
            target,
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        // With the oracles required, the only ignored tests of these binaries are the KVM
        // ones (without, the oracle tests are ignored too and would run here, without Python).
        .env("KRUN_TEST_REQUIRE_ORACLES", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo test --no-run -p {package} {target} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let executables: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .collect();
    assert_eq!(
        executables.len(),
        1,
        "expected one test binary for -p {package} {target}: {executables:?}"
    );
    executables.into_iter().next().unwrap()
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
    for (package, target, name) in BINARIES {
        let binary = build_test_binary(package, target);
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
