//! Shared helpers for the oracle tests: cryptsetup and the Python AES oracle.
//!
//! Missing tools make the tests fail with install instructions; they never skip.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const INSTALL: &str = "install the test oracles: `apt-get install -y cryptsetup-bin` and \
     `apt-get install -y python3-venv && luks/tests/oracle/setup-venv.sh` (a venv with \
     pyca/cryptography in /opt/krun-luks-venv, found automatically; or set KRUN_LUKS_PYTHON)";

pub fn cryptsetup(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new("cryptsetup")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run cryptsetup ({e}): {INSTALL}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

pub fn cryptsetup_ok(args: &[&str], stdin: &[u8]) -> String {
    let out = cryptsetup(args, stdin);
    assert!(
        out.status.success(),
        "cryptsetup {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A sparse file of `mib` MiB.
pub fn blank_image(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mib << 20).unwrap();
    p
}

/// `cryptsetup luksFormat` on a file with `extra` options and the passphrase from stdin.
pub fn luks_format(path: &Path, pass: &[u8], extra: &[&str]) {
    let p = path.to_str().unwrap();
    let mut args = vec!["luksFormat", "--batch-mode", "--key-file", "-"];
    args.extend_from_slice(extra);
    args.push(p);
    cryptsetup_ok(&args, pass);
}

/// The volume key as cryptsetup reports it (`luksDump --dump-volume-key`).
pub fn dump_key(path: &Path, pass: &[u8]) -> Vec<u8> {
    let out = cryptsetup_ok(
        &[
            "luksDump",
            "--dump-volume-key",
            "--batch-mode",
            "--key-file",
            "-",
            path.to_str().unwrap(),
        ],
        pass,
    );
    let start = out.find("MK dump:").expect("no MK dump in luksDump output");
    let mut hex = String::new();
    for line in out[start + "MK dump:".len()..].lines() {
        let t = line.trim();
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_hexdigit() || c == ' ') {
            break;
        }
        hex.extend(t.chars().filter(|c| !c.is_whitespace()));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Does cryptsetup accept `pass` for the image (`open --test-passphrase`)?
pub fn passphrase_accepted(path: &Path, pass: &[u8]) -> bool {
    cryptsetup(
        &[
            "open",
            "--test-passphrase",
            "--key-file",
            "-",
            path.to_str().unwrap(),
        ],
        pass,
    )
    .status
    .success()
}

/// `$KRUN_LUKS_PYTHON`, else the venv `tests/oracle/setup-venv.sh` makes by default, else
/// `python3`.
fn python() -> String {
    if let Ok(p) = std::env::var("KRUN_LUKS_PYTHON") {
        return p;
    }
    let venv = "/opt/krun-luks-venv/bin/python";
    if Path::new(venv).exists() {
        return venv.into();
    }
    "python3".into()
}

/// Runs the independent sector cipher (`tests/oracle/sector_crypt.py`).
pub fn py_sector_crypt(
    op: &str,
    mode: &str,
    key: &[u8],
    sector_size: u32,
    iv_first: u64,
    iv_step: u64,
    data: &[u8],
) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/sector_crypt.py");
    let keyhex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new(python())
        .arg(script)
        .args([
            op,
            mode,
            &keyhex,
            &sector_size.to_string(),
            &iv_first.to_string(),
            &iv_step.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python ({e}): {INSTALL}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "python oracle failed: {}\n{INSTALL}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Deterministic test data.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}
