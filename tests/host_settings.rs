//! The host decides the settings when the library is loaded (`krun_sev::settings`): the
//! environment of the process at start and the host configuration file. crun then replaces
//! the environment with the container's `process.env` and `pivot_root`s into the container
//! before `krun_start_enter`; neither may change what the library uses.
//!
//! The settings are captured before `main` (the library's `.init_array` constructor, linked
//! into this test as into every program using the crate), so this test runs itself again as
//! a child process with the host's environment set, and the child plays crun: it changes the
//! environment, removes the bundle directory and the configuration file, then checks what
//! the library uses. No test harness (`harness = false` in Cargo.toml): the child must be
//! the only code running in its process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use krun_sev::capi::{
    krun_create_ctx, krun_free_ctx, krun_set_root_disk, krun_set_tee_config_file, krun_start_enter,
};
use krun_sev::launch::guest::{bundle_dir, load_bundle};
use krun_sev::settings::{self, BackendChoice, Source};

const ROLE: &str = "KRUN_SEV_TEST_HOST_SETTINGS_CHILD";
const KERNEL: &[u8] = b"\x7fELF not really a kernel, the manifest only checks size and hash";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("env") => child_env(),
        Ok("file") => child_file(),
        _ => parent(),
    }
}

fn write_bundle(dir: &Path) {
    krun_bundle::write_bundle(
        dir,
        &krun_bundle::BundleContents {
            kernel: KERNEL,
            kernel_version: "6.12-test",
            nr_cpus: 8,
            initrd: b"initrd bytes",
            firmware: None,
        },
    )
    .unwrap();
}

/// Runs this test again as the child `role`; returns its stderr after checking that it
/// reached its end ("CHILD OK") and exited with `code`.
fn run_child(role: &str, envs: &[(&str, &Path)], code: i32) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for var in [
        settings::CONFIG_ENV,
        settings::BUNDLE_DIR_ENV,
        settings::BACKEND_ENV,
        settings::MODEL_DIR_ENV,
        settings::LOG_ENV,
        settings::DUMP_ENV,
        settings::SECCOMP_ENV,
    ] {
        cmd.env_remove(var);
    }
    cmd.env(ROLE, role);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.code() == Some(code) && stdout.contains("CHILD OK"),
        "child {role} failed ({}, want {code}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("child {role}: ok");
    stderr
}

fn parent() {
    let work = tempfile::tempdir().unwrap();
    // 1: the bundle directory from the environment at load.
    let bundle = work.path().join("bundle");
    write_bundle(&bundle);
    let disk = work.path().join("disk.img");
    std::fs::write(&disk, [0u8; 4096]).unwrap();
    let no_config = work.path().join("no.conf");
    std::fs::write(&no_config, "").unwrap();
    // The launch uses the host's backend (hardware), not the container's: on this machine
    // without SEV it fails on the hardware prerequisites, and the process exits with the
    // launch-failure status 125 after one line saying why.
    let stderr = run_child(
        "env",
        &[
            (settings::BUNDLE_DIR_ENV, bundle.as_path()),
            (settings::CONFIG_ENV, no_config.as_path()),
            ("KRUN_SEV_TEST_DISK", disk.as_path()),
        ],
        125,
    );
    let reason: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("krun_start_enter:"))
        .collect();
    assert_eq!(reason.len(), 1, "{stderr}");
    assert!(
        reason[0].starts_with("[libkrun-sev ERROR krun_sev::capi] krun_start_enter: cannot start the microVM: confidential launch setup failed: SEV hardware backend unavailable"),
        "{stderr}"
    );
    assert!(!stderr.contains("NOT encrypted"), "{stderr}");
    // 2: everything from the host configuration file.
    let bundle2 = work.path().join("bundle2");
    write_bundle(&bundle2);
    let conf = work.path().join("krun-sev.conf");
    std::fs::write(
        &conf,
        format!(
            "# host settings\nbundle_dir = {}\nbackend = hardware\nmodel_dir = /host/psp\nlog_level = warn\n",
            bundle2.display()
        ),
    )
    .unwrap();
    run_child("file", &[(settings::CONFIG_ENV, conf.as_path())], 0);
    // The line ci/test-summary.sh counts, as the libtest harness prints it.
    println!("test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

/// What crun does between `dlopen` and the launch: the container's environment.
fn become_container() {
    // The child runs no other thread that reads the environment.
    std::env::set_var(settings::BUNDLE_DIR_ENV, "/container/bundle");
    std::env::set_var(settings::BACKEND_ENV, "model");
    std::env::set_var(settings::MODEL_DIR_ENV, "/container/psp");
    std::env::set_var(settings::CONFIG_ENV, "/container/krun-sev.conf");
    std::env::set_var(settings::LOG_ENV, "trace");
    // The image author cannot turn the VMM's seccomp filters off.
    std::env::set_var(settings::SECCOMP_ENV, "off");
}

fn child_env() {
    let bundle = PathBuf::from(std::env::var_os(settings::BUNDLE_DIR_ENV).unwrap());
    let disk = std::env::var("KRUN_SEV_TEST_DISK").unwrap();
    become_container();
    // What pivot_root does to the host's directories, as the launch sees them.
    std::fs::remove_dir_all(&bundle).unwrap();

    let host = settings::host();
    assert_eq!(host.bundle_dir.value, bundle);
    assert_eq!(host.bundle_dir.source, Source::Environment);
    assert_eq!(host.backend.value, BackendChoice::Hardware);
    assert_eq!(host.backend.source, Source::Default);
    assert_eq!(host.log_filter, None);
    assert!(host.seccomp.value);
    assert_eq!(host.seccomp.source, Source::Default);
    assert_eq!(bundle_dir(), bundle);

    let ctx = krun_create_ctx();
    assert!(ctx >= 0);
    let ctx = u32::try_from(ctx).unwrap();
    // The bundle mapped when the library was loaded survives losing the directory.
    let loaded = load_bundle().expect("the bundle mapped at load");
    assert_eq!(loaded.kernel, KERNEL);
    assert_eq!(loaded.initrd, b"initrd bytes");
    assert_eq!(load_bundle().unwrap().kernel, KERNEL);

    assert!(
        !Path::new("/dev/sev").exists(),
        "test assumes a host without SEV"
    );
    let cfg = std::ffi::CString::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tee-configs/snp.json")
            .to_str()
            .unwrap(),
    )
    .unwrap();
    let disk = std::ffi::CString::new(disk).unwrap();
    // SAFETY: valid NUL-terminated strings that outlive the calls.
    unsafe {
        assert_eq!(krun_set_root_disk(ctx, disk.as_ptr()), 0);
        assert_eq!(krun_set_tee_config_file(ctx, cfg.as_ptr()), 0);
    }
    println!("CHILD OK");
    // Ends the process (the parent checks the status and the reason).
    let r = krun_start_enter(ctx);
    println!("krun_start_enter returned {r}");
    let _ = krun_free_ctx(ctx);
}

fn child_file() {
    let conf = PathBuf::from(std::env::var_os(settings::CONFIG_ENV).unwrap());
    become_container();
    std::fs::remove_file(&conf).unwrap();

    let host = settings::host();
    assert_eq!(host.problems, Vec::<String>::new());
    assert_eq!(host.config_file, conf);
    assert_eq!(host.bundle_dir.source, Source::ConfigFile);
    assert!(host.bundle_dir.value.ends_with("bundle2"));
    assert_eq!(host.backend.value, BackendChoice::Hardware);
    assert_eq!(host.backend.source, Source::ConfigFile);
    assert_eq!(host.model_dir.value, PathBuf::from("/host/psp"));
    assert_eq!(
        krun_sev::tee::model::identity_dir(),
        PathBuf::from("/host/psp")
    );
    let log = host.log_filter.as_ref().unwrap();
    assert_eq!(
        (log.value.as_str(), log.source),
        ("warn", Source::ConfigFile)
    );
    assert_eq!(
        krun_sev::tee::Backend::configured().unwrap(),
        krun_sev::tee::Backend::Hardware
    );
    let loaded = load_bundle().expect("the bundle named by the configuration file");
    assert_eq!(loaded.kernel, KERNEL);
    println!("CHILD OK");
}
