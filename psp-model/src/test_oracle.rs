//! Test-only bridge to the sev-snp-measure oracle (`oracles/snp_gctx.py`).
//!
//! The tests that use it are ignored unless `KRUN_SEV_PYTHON` is set or
//! `KRUN_TEST_REQUIRE_ORACLES=1` (`make test`, see build.rs); once they run, a missing or
//! broken oracle fails them. Setup: `python3 -m venv VENV && VENV/bin/pip install
//! sev-snp-measure`, then `export KRUN_SEV_PYTHON=VENV/bin/python`.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const SETUP: &str = "the SNP digest oracle needs sev-snp-measure: run \
     `python3 -m venv VENV && VENV/bin/pip install sev-snp-measure` and set \
     KRUN_SEV_PYTHON=VENV/bin/python (see psp-model/README.md)";

/// Runs the oracle script with one JSON request and returns its JSON answer.
pub fn gctx(request: &Value) -> Value {
    let python = std::env::var_os("KRUN_SEV_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| panic!("{SETUP}"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/oracles/snp_gctx.py");
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python:?} ({e}); {SETUP}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "oracle failed: {}; {SETUP}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
