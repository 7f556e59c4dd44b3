//! Issue 18, the hostile-guest test: a freestanding guest "kernel" (`tests/host/hostile/`,
//! built here with gcc) attacks every virtio-mmio device, the register windows, the I/O
//! ports and unmapped MMIO of the library's VMM (Rust API, no TEE) inside the nested-KVM test
//! host (with a virtio-net device whose peer is a socket pair), then exits with a disk write
//! in flight; a second, short boot of the same guest built with `HOSTILE_ABRUPT` only
//! submits the write and triple-faults without reporting a status. One test-host run. The VMM must survive every attack
//! and keep each device usable after a reset, stream a 320 MiB console flood without
//! buffering it, stay within a memory bound, end within a time bound, and leave the disk
//! image byte-identical outside the in-flight request. `docs/hostile-guest.md` lists the
//! attacks. Ignored by a plain `cargo test`; `ci/testhost-tests.sh` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use krun_testhost::{after, marker_values, TestHost};

/// Must match `tests/host/hostile/hostile.c`.
const DISK_SECTORS: usize = 8192;
const INFLIGHT_SECTOR: u64 = 2048;
const INFLIGHT_BYTES: u64 = 4096;
const CONSOLE_FLOOD_BYTES: u64 = 5 * 16 * (2 << 20);
const RAM_MIB: u64 = 256;
const NET_FLOOD_BYTES: u64 = 1000 * 60_000;
/// Peak RSS allowed for the VMM process. Guest RAM is resident only where the guest touched
/// it (a few MiB: the floods send untouched, zero pages); 21 to 28 MiB were measured. An
/// unbounded host-side queue of the 160 MiB console flood shows up above this.
const MAX_HWM_KIB: u64 = 96 << 10;

fn hostile_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hostile")
}

/// Builds the hostile guest ELF `name` into `dir`, with `defines` (`-D...`).
fn build_guest(dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    let src = hostile_dir();
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(defines)
        .args([
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-fno-pic",
            "-mno-red-zone",
            "-mgeneral-regs-only",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-O2",
            "-Wall",
            "-Werror",
            "-Wl,--build-id=none",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg("-T")
        .arg(src.join("hostile.ld"))
        .arg(src.join("hostile.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("gcc (the hostile guest is built from C at test time)");
    assert!(status.success(), "building the hostile guest failed");
    out
}

/// A raw disk whose sector n is filled with the byte n % 256, sector 0 starting with the
/// marker the guest checks after every attack.
fn disk_image() -> Vec<u8> {
    let mut d = vec![0u8; DISK_SECTORS * 512];
    for (n, sector) in d.chunks_mut(512).enumerate() {
        sector.fill(u8::try_from(n % 256).unwrap());
    }
    let magic = b"HOSTILE-DISK-SECTOR-0";
    d[..magic.len()].copy_from_slice(magic);
    d
}

#[test]
#[ignore = "needs a KVM that boots guests: runs in the test host"]
fn hostile_guest_does_not_break_the_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let elf = build_guest(dir.path(), "hostile.elf", &[]);
    let abrupt = build_guest(dir.path(), "abrupt.elf", &["-DHOSTILE_ABRUPT"]);
    let disk = dir.path().join("root.img");
    fs::write(&disk, disk_image()).unwrap();
    let empty = dir.path().join("empty-initrd");
    fs::write(&empty, b"").unwrap();

    // The VMM's stderr (debug log with the guest's serial lines) goes to a file; only the
    // guest's progress lines and the VMM's errors come back over the test host's console.
    let script = format!(
        r#"
cp /hostile/root.img /tmp/root.img; cp /hostile/root.img /tmp/root.orig
mkfifo /tmp/console
wc -c < /tmp/console > /tmp/console.bytes & wc=$!
/bin/krun-vmm-boot --kernel /hostile/hostile.elf --initrd /hostile/empty --root /tmp/root.img \
  --ram-mib {RAM_MIB} --net-sink --seccomp --debug </dev/null >/tmp/console 2>/tmp/vmm.log & vmm=$!
start=$(date +%s); hwm=0; hung=0
while kill -0 $vmm 2>/dev/null; do
  h=$(awk '/^VmHWM/ {{print $2}}' /proc/$vmm/status 2>/dev/null)
  [ -n "$h" ] && hwm=$h
  if [ $(( $(date +%s) - start )) -gt 600 ]; then hung=1; kill -9 $vmm; fi
  sleep 0.2
done
wait $vmm; status=$?
wait $wc
echo "VMM_WALL_S=$(( $(date +%s) - start ))"
grep -a 'guest serial: HOSTILE: ' /tmp/vmm.log | sed 's/.*guest serial: //'
grep -a ' ERROR \|krun-vmm-boot:' /tmp/vmm.log | grep -av 'virtio_queue::queue' | tail -20
echo "VMM_LOG_LINES=$(wc -l < /tmp/vmm.log)"
echo "SECCOMP_ON=$(grep -ac 'seccomp filters on' /tmp/vmm.log)"
echo "SECCOMP_DENIED=$(grep -ac 'denied system call' /tmp/vmm.log)"
echo "VMM_HWM_KIB=$hwm"
echo "VMM_HUNG=$hung"
echo "CONSOLE_BYTES=$(cat /tmp/console.bytes)"
echo "DISK_SIZE=$(stat -c %s /tmp/root.img)"
cmp -l /tmp/root.img /tmp/root.orig | awk 'NR == 1 {{ f = $1 }} {{ l = $1 }} END {{ print "DIFF=" NR " " f " " l }}'
echo "VMM_STATUS=$status"
# The abrupt variant: a write in flight and a triple fault, no status reported.
cp /hostile/root.img /tmp/abrupt.img
/bin/krun-vmm-boot --kernel /hostile/abrupt.elf --initrd /hostile/empty --root /tmp/abrupt.img \
  --ram-mib {RAM_MIB} --net-sink --seccomp </dev/null >/dev/null 2>/tmp/abrupt.log & vmm=$!
start=$(date +%s); hung=0
while kill -0 $vmm 2>/dev/null; do
  if [ $(( $(date +%s) - start )) -gt 120 ]; then hung=1; kill -9 $vmm; fi
  sleep 0.2
done
wait $vmm; status=$?
echo "ABRUPT_HUNG=$hung"
sed 's/^/ABRUPT_LOG: /' /tmp/abrupt.log | tail -5
echo "ABRUPT_DISK_SIZE=$(stat -c %s /tmp/abrupt.img)"
cmp -l /tmp/abrupt.img /tmp/root.orig | awk 'NR == 1 {{ f = $1 }} {{ l = $1 }} END {{ print "ABRUPT_DIFF=" NR " " f " " l }}'
echo "ABRUPT_STATUS=$status"
"#
    );
    let outcome = TestHost::new()
        .file(&elf, "/hostile/hostile.elf")
        .file(&abrupt, "/hostile/abrupt.elf")
        .file(&empty, "/hostile/empty")
        .file(&disk, "/hostile/root.img")
        .file(env!("CARGO_BIN_EXE_krun-vmm-boot"), "/bin/krun-vmm-boot")
        .mem_mib(2048)
        .timeout(Duration::from_secs(900))
        .run(&["sh", "-c", &script])
        .unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");
    for l in out.lines().filter(|l| {
        [
            "VMM_",
            "CONSOLE_BYTES=",
            "DISK_SIZE=",
            "DIFF=",
            "HOSTILE: DONE",
            "krun-vmm-boot:",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        eprintln!("hostile: {}", l.trim_end());
    }
    eprintln!("hostile: test host wall time {:?}", outcome.wall_time);
    let one = |key: &str| -> String {
        marker_values(out, key)
            .first()
            .unwrap_or_else(|| panic!("no {key}; {ctx}"))
            .trim()
            .to_owned()
    };
    // Never hangs, never dies from a signal, and the guest got to its clean end with no
    // device left broken.
    assert_eq!(one("VMM_HUNG="), "0", "{ctx}");
    assert_eq!(one("VMM_STATUS="), "0", "{ctx}");
    assert!(out.contains("HOSTILE: START"), "{ctx}");
    assert_eq!(one("HOSTILE: DONE failures="), "0", "{ctx}");
    assert!(!out.contains("HOSTILE: FAIL"), "{ctx}");
    assert!(
        out.contains("HOSTILE: in-flight write and abrupt exit"),
        "{ctx}"
    );
    for attack in [
        "ATTACK blk loop-2",
        "ATTACK blk indirect-nested-self",
        "ATTACK blk avail-idx-far-ahead",
        "ATTACK blk write-beyond-end",
        "ATTACK console flood",
        "ATTACK vsock unknown-port-flood-20000",
        "ATTACK vsock credit-request-flood-20000",
        "ATTACK vsock 300-connections",
        "ATTACK net frame-over-limit",
        "ATTACK net flood",
        "ATTACK net window",
        "ATTACK ports-and-holes",
    ] {
        assert!(out.contains(attack), "{attack} did not run; {ctx}");
    }
    // The console flood went through, streamed.
    let console: u64 = one("CONSOLE_BYTES=").parse().unwrap();
    assert!(
        console >= CONSOLE_FLOOD_BYTES,
        "console {console} bytes; {ctx}"
    );
    // So did the network flood, to the peer.
    let net: u64 = after(out, "krun-vmm-boot: net peer read ")
        .first()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no net peer count; {ctx}"));
    assert!(net >= NET_FLOOD_BYTES, "net peer read {net} bytes; {ctx}");
    // The VMM ran under its seccomp filters, as in a confidential launch, and no attack
    // drove a thread outside its allow-list.
    assert_eq!(one("SECCOMP_ON="), "1", "{ctx}");
    assert_eq!(one("SECCOMP_DENIED="), "0", "{ctx}");
    let hwm: u64 = one("VMM_HWM_KIB=").parse().unwrap();
    assert!(
        hwm > 0 && hwm <= MAX_HWM_KIB,
        "VMM peak RSS {hwm} KiB (bound {MAX_HWM_KIB}); {ctx}"
    );
    // The disk: same size, and identical outside the in-flight request (cmp -l offsets are
    // 1-based).
    assert_eq!(
        one("DISK_SIZE=").parse::<usize>().unwrap(),
        DISK_SECTORS * 512,
        "{ctx}"
    );
    assert_only_inflight_changed(&one("DIFF="), &ctx);

    // The abrupt variant: the VMM stops the VM with a clear error (krun-vmm-boot's status
    // 125), in bounded time, and the disk is intact outside the request in flight.
    assert_eq!(one("ABRUPT_HUNG="), "0", "{ctx}");
    assert_eq!(one("ABRUPT_STATUS="), "125", "{ctx}");
    assert!(
        out.contains("ABRUPT_LOG: krun-vmm-boot: guest stopped without reporting an exit status"),
        "{ctx}"
    );
    assert_eq!(
        one("ABRUPT_DISK_SIZE=").parse::<usize>().unwrap(),
        DISK_SECTORS * 512,
        "{ctx}"
    );
    assert_only_inflight_changed(&one("ABRUPT_DIFF="), &ctx);
}

/// `diff` is `N FIRST LAST` from `cmp -l` (1-based byte offsets): nothing changed, or only
/// bytes of the in-flight write.
fn assert_only_inflight_changed(diff: &str, ctx: &str) {
    let fields: Vec<&str> = diff.split_whitespace().collect();
    let changed: u64 = fields[0].parse().unwrap();
    if changed > 0 {
        let first: u64 = fields[1].parse().unwrap();
        let last: u64 = fields[2].parse().unwrap();
        let lo = INFLIGHT_SECTOR * 512 + 1;
        let hi = INFLIGHT_SECTOR * 512 + INFLIGHT_BYTES;
        assert!(
            first >= lo && last <= hi,
            "disk changed outside the in-flight request: bytes {first}..={last}; {ctx}"
        );
    }
}
