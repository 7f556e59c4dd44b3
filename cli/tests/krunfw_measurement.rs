//! `krunfw_measurement` called and read the way `buildah mkcw` 1.39 does
//! (`internal/mkcw/attest.go`): `-c CPUS -m MIB LIB`, then the first stdout line starting
//! with `SNP:`, `SEV-ES:` or `SEV:`, trimmed. Its digests must be `krun-sev measure`'s for the
//! same unbound launch, from the bundle directory and from the bundle as a library.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn krunfw_measurement(args: &[&str], bundle: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_krunfw_measurement"))
        .args(args)
        .arg(bundle)
        .output()
        .unwrap()
}

/// buildah's reading of the tool's output.
fn buildah_digest(stdout: &str, prefix: &str) -> Option<String> {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| l[prefix.len()..].trim().to_owned())
}

fn measure(bundle: &Path, tee: &str, cpus: &str, mib: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_krun-sev"))
        .args([
            "measure",
            "--tee",
            tee,
            "--cpus",
            cpus,
            "--ram-mib",
            mib,
            "--bundle",
        ])
        .arg(bundle)
        .env(
            "KRUN_SEV_PSP_MODEL_DIR",
            support::psp_model_dir().join("psp"),
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `libkrunfw-sev.so.4` of `bundle`, built as `make krunfw` builds it.
fn firmware_library(dir: &Path, bundle: &Path) -> PathBuf {
    let lib = dir.join("libkrunfw-sev.so.4");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/krunfw/krunfw.c");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-fPIC", "-shared", "-Wall", "-Werror"])
        .arg(format!("-Wa,-I,{}", bundle.display()))
        .args(["-Wl,-soname,libkrunfw-sev.so.4", "-o"])
        .arg(&lib)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success());
    lib
}

#[test]
fn buildah_reads_the_measure_digests_from_the_directory_and_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = support::fake_bundle(dir.path());
    let lib = firmware_library(dir.path(), &bundle);
    for (cpus, mib) in [("2", "512"), ("1", "2048")] {
        let expected = [
            ("SNP:", measure(&bundle, "snp", cpus, mib)),
            ("SEV-ES:", measure(&bundle, "sev-es", cpus, mib)),
            ("SEV:", measure(&bundle, "sev", cpus, mib)),
        ];
        for source in [&bundle, &lib] {
            let out = krunfw_measurement(&["-c", cpus, "-m", mib], source);
            assert!(out.status.success(), "{out:?}");
            let stdout = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                stdout.lines().next(),
                Some(format!("Measurements for {cpus} vCPU(s) and {mib} MB of RAM").as_str())
            );
            for (prefix, digest) in &expected {
                assert_eq!(
                    buildah_digest(&stdout, prefix).as_ref(),
                    Some(digest),
                    "{prefix} from {}",
                    source.display()
                );
            }
        }
    }
}

#[test]
fn anything_but_a_bundle_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = support::fake_bundle(dir.path());
    // A library without the bundle's entry points (any system library).
    let other = Command::new("cc")
        .args(["-shared", "-fPIC", "-x", "c", "-", "-o"])
        .arg(dir.path().join("libother.so"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"int krunfw_get_version(void){return 4;}\n")?;
            c.wait()
        })
        .unwrap();
    assert!(other.success());
    let cases = [
        (
            dir.path().join("libother.so"),
            "not libkrun-sev's guest bundle library",
        ),
        (
            dir.path().join("missing.so"),
            "no such bundle directory or library",
        ),
        (dir.path().to_path_buf(), "cannot read bundle file"),
    ];
    for (path, reason) in cases {
        let out = krunfw_measurement(&["-c", "2", "-m", "512"], &path);
        assert!(!out.status.success(), "{}", path.display());
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{}: {err}", path.display());
    }
    // A bundle file changed after the manifest was written is refused, not measured.
    std::fs::write(bundle.join("initrd.cpio.zst"), [0x1f, 0x8b, 8, 0, 9]).unwrap();
    let out = krunfw_measurement(&["-c", "2", "-m", "512"], &bundle);
    assert!(!out.status.success());
    let usage = krunfw_measurement(&["-c", "2"], &bundle);
    assert_eq!(usage.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage: krunfw_measurement"));
}
