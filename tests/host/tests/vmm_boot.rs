//! Issue 4 acceptance through a real guest: the library's VMM (Rust API, no TEE) boots the
//! bundle inside the nested-KVM test host. One test-host run groups several guest boots.
//! Ignored by a plain `cargo test`; `ci/testhost-tests.sh` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use krun_testhost::{busybox_rootfs, ext4_image, marker_values, test_bundle, TestHost};

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "nproc", "grep", "sync", "kill", "nc", "dd", "touch", "sleep", "head",
    "read", "true", "mount",
];

/// A raw ext4 root disk holding a static busybox and a `.krun_config.json` running `script`.
fn root_disk(dir: &Path, name: &str, script: &str) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    busybox_rootfs(&root, APPLETS).unwrap();
    fs::write(
        root.join("bin/pong"),
        "#!/bin/sh\necho PONG\nread line\necho \"GOT=$line\"\n",
    )
    .unwrap();
    fs::set_permissions(root.join("bin/pong"), fs::Permissions::from_mode(0o755)).unwrap();
    let config = serde_json::json!({
        "config": {"Cmd": ["/bin/sh", "-c", script], "Env": ["PATH=/bin"], "WorkingDir": "/"}
    });
    fs::write(root.join(".krun_config.json"), config.to_string()).unwrap();
    let disk = dir.join(format!("{name}.img"));
    ext4_image(&root, &disk, 32 << 20).unwrap();
    disk
}

#[test]
#[ignore = "boots the test host"]
fn workloads_run_under_the_vmm() {
    let (bundle, _) = test_bundle();
    let dir = tempfile::tempdir().unwrap();
    let main = root_disk(
        dir.path(),
        "main",
        "echo GUEST_HELLO; echo CPUS=$(nproc); grep MemTotal /proc/meminfo; \
         read line; echo STDIN=$line; \
         echo data-disk-write | dd of=/dev/vdb bs=512 conv=sync 2>/dev/null; sync; exit 42",
    );
    let zero = root_disk(dir.path(), "zero", "echo ZERO_RAN; exit 0");
    let signal = root_disk(
        dir.path(),
        "signal",
        "echo SIGNAL_RAN; kill -TERM $$; sleep 10",
    );
    let readonly = root_disk(
        dir.path(),
        "ro",
        "if touch /written 2>/dev/null; then echo ROOT=rw; else echo ROOT=ro; fi; exit 0",
    );
    let portmap = root_disk(dir.path(), "port", "nc -l -p 8080 -e /bin/pong; exit 0");
    let data = dir.path().join("data.img");
    fs::write(&data, vec![0u8; 1 << 20]).unwrap();

    let script = r#"
boot() { /bin/krun-vmm-boot --kernel /bundle/bzImage --initrd /bundle/initrd.cpio.zst "$@"; }
echo piped-input | boot --root /disks/main.img --data /disks/data.img --vcpus 2 --ram-mib 256 --stats
echo "STATUS_MAIN=$?"
echo "DATA=$(head -c 15 /disks/data.img)"
boot --root /disks/zero.img </dev/null; echo "STATUS_ZERO=$?"
boot --root /disks/signal.img </dev/null; echo "STATUS_SIGNAL=$?"
boot --root /disks/ro.img --root-ro </dev/null; echo "STATUS_RO=$?"
boot --root /disks/port.img --port 18080:8080 </dev/null & vmm=$!
out=
for i in $(seq 150); do
  out=$(echo ping | nc 127.0.0.1 18080 2>/dev/null | tr '\n' ' ')
  case "$out" in *PONG*) break;; esac
  sleep 0.2
done
wait $vmm; echo "STATUS_PORT=$?"
# After the VM's console output has ended, so the marker starts its own line.
echo "PORTMAP=$out"
"#;
    let outcome = TestHost::new()
        .file(&bundle, "/bundle")
        .file(env!("CARGO_BIN_EXE_krun-vmm-boot"), "/bin/krun-vmm-boot")
        .file(&main, "/disks/main.img")
        .file(&zero, "/disks/zero.img")
        .file(&signal, "/disks/signal.img")
        .file(&readonly, "/disks/ro.img")
        .file(&portmap, "/disks/port.img")
        .file(&data, "/disks/data.img")
        .mem_mib(2048)
        .timeout(Duration::from_secs(300))
        .run(&["sh", "-c", script])
        .unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");
    assert!(out.contains("GUEST_HELLO"), "{ctx}");
    assert_eq!(marker_values(out, "CPUS="), ["2"], "{ctx}");
    let mem_kib: u64 = marker_values(out, "MemTotal:")
        .first()
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal; {ctx}"));
    assert!(
        (200 * 1024..=256 * 1024).contains(&mem_kib),
        "MemTotal {mem_kib} kB for 256 MiB; {ctx}"
    );
    assert_eq!(marker_values(out, "STDIN="), ["piped-input"], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_MAIN="), ["42"], "{ctx}");
    assert_eq!(marker_values(out, "DATA="), ["data-disk-write"], "{ctx}");
    assert!(out.contains("ZERO_RAN"), "{ctx}");
    assert_eq!(marker_values(out, "STATUS_ZERO="), ["0"], "{ctx}");
    assert!(out.contains("SIGNAL_RAN"), "{ctx}");
    assert_eq!(marker_values(out, "STATUS_SIGNAL="), ["143"], "{ctx}");
    assert_eq!(marker_values(out, "ROOT="), ["ro"], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_RO="), ["0"], "{ctx}");
    let port = marker_values(out, "PORTMAP=");
    assert!(
        port.first()
            .is_some_and(|p| p.contains("PONG") && p.contains("GOT=ping")),
        "{ctx}"
    );
    assert_eq!(marker_values(out, "STATUS_PORT="), ["0"], "{ctx}");
}
