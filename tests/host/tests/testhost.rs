//! Acceptance tests of issue 3, run inside the nested-KVM test host.
//!
//! Each boots QEMU (3-15 s wall), so they are ignored by a plain `cargo test`; CI runs them
//! through `ci/testhost-tests.sh`, which first builds the bundle, then runs
//! `cargo test -p krun-testhost --test testhost -- --ignored --test-threads=1 --nocapture`.

use std::time::Duration;

use krun_testhost::{test_bundle, TestHost, TestHostError};

#[test]
#[ignore = "boots the test host"]
fn command_output_and_exit_status_come_back() {
    let outcome = TestHost::new()
        .file("/etc/hostname", "/data/hostname")
        .timeout(Duration::from_secs(60))
        .run(&["sh", "-c", "echo out; echo err >&2; test -c /dev/kvm && echo kvm-present; cat /data/hostname >/dev/null && echo file-present; exit 7"])
        .unwrap();
    assert_eq!(outcome.status, 7, "console:\n{}", outcome.console);
    let lines: Vec<&str> = outcome.output.lines().collect();
    assert_eq!(
        lines,
        ["out", "err", "kvm-present", "file-present"],
        "console:\n{}",
        outcome.console
    );
}

#[test]
#[ignore = "boots the test host"]
fn nested_kvm_runs_guest_code_with_expected_exits() {
    let outcome = TestHost::new()
        .file(env!("CARGO_BIN_EXE_kvm-smoke"), "/usr/local/bin/kvm-smoke")
        .timeout(Duration::from_secs(60))
        .run(&["kvm-smoke"])
        .unwrap();
    assert_eq!(outcome.status, 0, "console:\n{}", outcome.console);
    assert!(
        outcome.output.contains("KVM_SMOKE_OK"),
        "output:\n{}",
        outcome.output
    );
}

#[test]
#[ignore = "boots the test host"]
fn bundle_kernel_and_initrd_boot_under_qemu_microvm() {
    let (dir, bundle) = test_bundle();
    assert!(bundle.manifest.nr_cpus >= 32);
    let qemu = "/usr/bin/qemu-system-x86_64";
    let outcome = TestHost::new()
        .file(&dir, "/bundle")
        .file(qemu, qemu)
        .file("/usr/share/qemu/qboot.rom", "/usr/share/qemu/qboot.rom")
        .file("/usr/share/qemu/pvh.bin", "/usr/share/qemu/pvh.bin")
        .timeout(Duration::from_secs(120))
        .run(&[
            qemu,
            "-M",
            "microvm,acpi=off",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-smp",
            "2",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
            "/bundle/bzImage",
            "-initrd",
            "/bundle/initrd.cpio.zst",
            "-append",
            "console=ttyS0 reboot=t panic=-1",
        ])
        .unwrap();
    assert!(
        outcome.output.contains("KRUN_INIT_STARTED"),
        "the guest init's marker is missing; output:\n{}",
        outcome.output
    );
    assert!(
        outcome.output.contains("smp: Brought up 1 node, 2 CPUs"),
        "output:\n{}",
        outcome.output
    );
    assert!(outcome
        .output
        .contains(&format!("Linux version {}", bundle.manifest.kernel_version)));
    assert_eq!(
        outcome.status, 0,
        "inner QEMU failed; output:\n{}",
        outcome.output
    );
}

#[test]
#[ignore = "boots the test host"]
fn hung_command_is_killed_and_reported_with_last_console_lines() {
    let err = TestHost::new()
        .timeout(Duration::from_secs(15))
        .run(&["sh", "-c", "echo before-the-hang; sleep 1000"])
        .unwrap_err();
    match err {
        TestHostError::Timeout { last_lines, .. } => {
            assert!(last_lines.contains("before-the-hang"), "{last_lines}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}
