//! Shared by the cli integration tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// One PSP model identity (in `psp/` below the returned directory) for every run in a test
/// binary: generating one takes seconds, and without one each `krun-sev` invocation
/// generates a throwaway identity. No digest depends on it.
pub fn psp_model_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        krun_psp_model::ModelIdentity::generate()
            .unwrap()
            .save(&dir.path().join("psp"))
            .unwrap();
        dir
    })
    .path()
}

/// A minimal valid guest bundle (`krun_bundle::write_minimal_bundle`).
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn fake_bundle(dir: &Path) -> PathBuf {
    krun_bundle::write_minimal_bundle(dir).unwrap()
}

/// The workspace's `krun-kbs` binary, built first if missing.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn krun_kbs_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("krun-kbs");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "krun-kbs", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p krun-kbs failed");
    }
    bin
}

/// Starts the broker `cmd` describes (listening on port 0) and returns it with the URL it
/// announces on its first stdout line.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn spawn_kbs(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("krun-kbs listening on ")
        .unwrap_or_else(|| panic!("unexpected broker output {line:?}"))
        .to_owned();
    (child, url)
}
