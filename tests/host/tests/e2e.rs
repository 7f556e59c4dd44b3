//! Issue 8 acceptance: the whole confidential-workload flow inside the nested-KVM test host
//! with the PSP model. `krun-sev mkcw --register` builds images and registers them with a
//! `krun-kbs` running in the test host; `krun-sev run` (and a C program calling the API in
//! crun's order) runs them; the broker releases the disk key only for the registered
//! measurement. Real crun (1.8.1 and 1.21, built by `ci/build-crun.sh`) runs a buildah-layout
//! container; networking through passt (issue 15). Five test-host boots, each running
//! several launches. Ignored by a plain `cargo test`; `ci/testhost-tests.sh` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use krun_luks::format::{format_luks1, write_encrypted, Luks1Options};
use krun_testhost::{
    after, busybox_rootfs, ext4_image, krun_kbs_bin, krun_sev_bin, launch_measurements,
    marker_values, test_bundle, TestHost,
};

const APPLETS: &[&str] = &["sh", "echo", "nproc", "cat", "pwd"];
/// The admin token the broker in the test host is started with.
const ADMIN_TOKEN: &str = "e2e-admin-token";
/// luksy's LUKS1 payload offset for a 64-byte key, in 512-byte sectors.
const LUKSY_PAYLOAD_SECTORS: u64 = 4040;
/// Each boot runs about five launches and five image builds under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1500);

/// What both boots share: the model identity, the broker's trust in it, the rootfs, tools.
struct Setup {
    dir: tempfile::TempDir,
    bundle: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let (bundle, _) = test_bundle();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The model identity is made here: RSA-4096 key generation under TCG takes minutes.
        let id = krun_psp_model::ModelIdentity::generate().unwrap();
        id.save(&d.join("psp")).unwrap();
        // The broker trusts the model's chains only when told (ARCHITECTURE.md §5).
        let trust = d.join("trust");
        krun_sev::tee::model::write_trust_roots(&id, &trust).unwrap();
        fs::write(trust.join("token"), format!("{ADMIN_TOKEN}\n")).unwrap();
        // The workload root file system, as a tar mkcw unpacks inside the test host.
        let rootfs = d.join("rootfs");
        busybox_rootfs(&rootfs, APPLETS).unwrap();
        let tar = Command::new("tar")
            .arg("-cf")
            .arg(d.join("rootfs.tar"))
            .arg("-C")
            .arg(&rootfs)
            .arg(".")
            .status()
            .unwrap();
        assert!(tar.success());
        Setup { dir, bundle }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A test host with the bundle, the tools, the identity and the trust files.
    fn host(&self) -> TestHost {
        let mkfs = Path::new("/usr/sbin/mkfs.ext4");
        let debugfs = Path::new("/usr/sbin/debugfs");
        assert!(
            mkfs.exists() && debugfs.exists(),
            "mkcw needs mkfs.ext4 and debugfs: apt-get install e2fsprogs"
        );
        TestHost::new()
            .file(&self.bundle, "/bundle")
            .file(krun_sev_bin().unwrap(), "/bin/krun-sev")
            .file(krun_kbs_bin().unwrap(), "/bin/krun-kbs")
            .file(mkfs, "/usr/sbin/mkfs.ext4")
            .file(debugfs, "/usr/sbin/debugfs")
            .file(self.path("psp"), "/psp")
            .file(self.path("trust"), "/trust")
            .file(self.path("rootfs.tar"), "/rootfs.tar")
            .mem_mib(2048)
            .timeout(BOOT_TIMEOUT)
    }
}

/// Shell functions every boot's script starts with.
const PRELUDE: &str = r#"
export PATH=/usr/sbin:$PATH KRUN_SEV_BACKEND=model KRUN_SEV_BUNDLE_DIR=/bundle KRUN_SEV_PSP_MODEL_DIR=/psp
sha() { sha256sum "$1" | cut -d' ' -f1; }
mkdir -p /tmp/rootfs /tmp/tiny && tar -xf /rootfs.tar -C /tmp/rootfs && echo tiny > /tmp/tiny/file
start_kbs() {
  /bin/krun-kbs --listen 127.0.0.1:8123 --db /tmp/kbs.db --admin-token-file /trust/token \
    --sev-trust-root /trust/ark.cert --trust-root /trust/roots.pem --vcek-dir /trust/vcek \
    > /tmp/kbs.log 2>&1 &
  for i in $(seq 100); do grep -q listening /tmp/kbs.log && break; sleep 0.2; done
}
# mk TEE WORKLOAD_ID OUT_DIR PASSPHRASE SCRIPT: mkcw --register (CPUS and ROOT override).
mk() {
  krun-sev mkcw --tee "$1" --cpus "${CPUS:-2}" --ram-mib 512 --kbs-protocol "${PROTO:-reference}" \
    --attestation-url "${KBS_URL:-http://127.0.0.1:8123}" --register --admin-token-file /trust/token \
    --workload-id "$2" --passphrase "$4" --pbkdf2-iterations 1000 --env PATH=/bin \
    --cmd /bin/sh --cmd -c --cmd "$5" "${ROOT:-/tmp/rootfs}" "$3"
  echo "MKCW_$2=$?"
}
run() { krun-sev run --log-level 3 "$@" </dev/null; }
"#;

/// Boot 1: SEV, SEV-ES and SNP images built and registered by mkcw run and report their
/// exit status; then the SEV-ES image tampered with after registration does not run.
#[test]
#[ignore = "boots the test host"]
fn mkcw_register_run_for_every_tee_and_tampering() {
    let s = Setup::new();
    // An image with the same passphrase as the SEV-ES one but another command: its LUKS
    // header is swapped into the registered image.
    let other = s.path("other");
    let out = Command::new(krun_sev_bin().unwrap())
        .args([
            "mkcw",
            "--tee",
            "sev-es",
            "--passphrase",
            "pass-es",
            "--pbkdf2-iterations",
            "1000",
            "--cmd",
            "/bin/sh",
            "--cmd",
            "-c",
            "--cmd",
            "echo TAMPERED_RAN; exit 0",
        ])
        .arg(s.path("rootfs"))
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let header =
        krun_luks::Header::read(&mut fs::File::open(other.join("disk.img")).unwrap()).unwrap();
    let payload_sectors = header.payload().offset / 512;
    assert_eq!(payload_sectors, LUKSY_PAYLOAD_SECTORS);

    let script = format!(
        r#"{PRELUDE}
start_kbs
mk sev-no-es e2e-sev /tmp/sev pass-sev 'echo E2E_RAN_sev CPUS=$(nproc); exit 11'
mk sev-es e2e-es /tmp/es pass-es 'echo E2E_RAN_es CPUS=$(nproc); exit 12'
mk snp e2e-snp /tmp/snp pass-snp 'echo E2E_RAN_snp CPUS=$(nproc); exit 13'
for t in sev es snp; do
  echo "CONFIG_$t=$(cat /tmp/$t/krun-sev.json)"
  echo "SHA_BEFORE_$t=$(sha /tmp/$t/disk.img)"
  run /tmp/$t; echo "STATUS_$t=$?"
done
# Tampering after registration. The registered image with another image's LUKS header
# (same passphrase, other master key):
cp /tmp/es/disk.img /tmp/hdr.img
dd if=/other/disk.img of=/tmp/hdr.img bs=512 count={payload_sectors} conv=notrunc 2>/dev/null
run --disk /tmp/hdr.img --tee-config /tmp/es/krun-sev.json; echo "STATUS_HDR=$?"
# The registered image with the ciphertext sector of the ext4 superblock changed:
cp /tmp/es/disk.img /tmp/flip.img
dd if=/dev/urandom of=/tmp/flip.img bs=512 seek=$(({payload_sectors} + 2)) count=1 conv=notrunc 2>/dev/null
run --disk /tmp/flip.img --tee-config /tmp/es/krun-sev.json; echo "STATUS_FLIP=$?"
cat /tmp/kbs.log
"#
    );
    let outcome = s
        .host()
        .file(&other, "/other")
        .run(&["sh", "-c", &script])
        .unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");

    for (t, id, mode, status) in [
        ("sev", "e2e-sev", "sev", "11"),
        ("es", "e2e-es", "sev-es", "12"),
        ("snp", "e2e-snp", "snp", "13"),
    ] {
        assert_eq!(marker_values(out, &format!("MKCW_{id}=")), ["0"], "{ctx}");
        // mkcw registered the measurement the launch then had, for the right launch type.
        let registered = registered_measurement(out, mode);
        assert_eq!(registered.len(), 1, "{mode}: {ctx}");
        let launched = launch_measurements(out, mode);
        assert!(
            !launched.is_empty() && launched.iter().all(|m| *m == registered[0]),
            "{mode}: registered {registered:?}, launched {launched:?}; {ctx}"
        );
        // One digest everywhere: `krun-sev measure --tee-config` on this (build) machine
        // gives what the test host registered and launched.
        let config = marker_values(out, &format!("CONFIG_{t}="));
        assert_eq!(config.len(), 1, "{ctx}");
        let config = krun_sev::resources::TeeConfig::parse(config[0].as_bytes()).unwrap();
        let here = krun_sev::launch::expected_measurement(
            &krun_sev::launch::MeasureRequest::from_tee_config(&config, s.bundle.clone(), false)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(here.digest_hex(), registered[0], "{mode}: {ctx}");
        assert_eq!(
            marker_values(out, &format!("E2E_RAN_{t} ")),
            ["CPUS=2"],
            "{t}: {ctx}"
        );
        assert_eq!(
            marker_values(out, &format!("STATUS_{t}=")),
            [status],
            "{ctx}"
        );
    }
    assert!(out.contains("LAUNCH_SECRET"), "{ctx}");
    // Plain SEV, SEV-ES, and SEV-ES twice more for the tampered disks; SNP once.
    assert_eq!(launch_measurements(out, "sev").len(), 1, "{ctx}");
    assert_eq!(launch_measurements(out, "sev-es").len(), 3, "{ctx}");

    // Neither tampered disk runs anything: the key is released (the launch is the
    // registered one), the foreign header opens with the passphrase but yields another
    // master key, so the file system does not mount; the changed ciphertext garbles the
    // superblock. AES-XTS has no integrity: changed ciphertext in unused blocks would go
    // unnoticed, but it cannot be turned into chosen plaintext without the key.
    assert!(!out.contains("TAMPERED_RAN"), "{ctx}");
    assert_eq!(marker_values(out, "E2E_RAN_es ").len(), 1, "{ctx}");
    assert_eq!(marker_values(out, "STATUS_HDR="), ["125"], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_FLIP="), ["125"], "{ctx}");
    assert_eq!(
        out.matches("krun-init: mounting the root file system failed")
            .count(),
        2,
        "{ctx}"
    );
    assert_eq!(out.matches("key released").count(), 5, "{ctx}");
    // Every launch ran under the VMM's seccomp filters (docs/hardening.md), and none of its
    // threads made a call outside its allow-list.
    assert_eq!(out.matches("seccomp filters on").count(), 5, "{ctx}");
    assert!(!out.contains("denied system call"), "{ctx}");
}

/// Boot 2: a buildah-layout image (registered offline) runs through `krun-sev run` and a C
/// program calling the API in crun's order; a wrong measurement registered releases no key;
/// a wrong passphrase registered fails the unlock; neither writes the disk.
#[test]
#[ignore = "boots the test host"]
fn buildah_image_crun_order_and_broker_refusals() {
    let s = Setup::new();
    let buildah = s.path("buildah");
    let plain = buildah_image(&s, &buildah);
    let crun = crun_order_program(&s);

    let script = format!(
        r#"{PRELUDE}
# The buildah image, registered offline before the broker starts.
M=$(krun-sev measure --tee-config /buildah/krun-sev.json)
printf %s buildah-pass > /tmp/bpp
krun-kbs --db /tmp/kbs.db workload add --id e2e-buildah --tee sev --measurement "$M" --passphrase-file /tmp/bpp
echo "ADD_BUILDAH=$?"
start_kbs
run /buildah; echo "STATUS_D=$?"
/bin/crun-order /buildah/disk.img /buildah/krun-sev.json </dev/null; echo "STATUS_E=$?"
# Wrong measurement registered (a decoy registration for 1 vCPU under the same ID): SEV-ES
# fails host-side attestation, SNP fails the guest's attestation.
mk sev-es e2e-x /tmp/x pass-x 'echo X_RAN; exit 0'
mk snp e2e-y /tmp/y pass-y 'echo Y_RAN; exit 0'
CPUS=1 ROOT=/tmp/tiny mk sev-es e2e-x /tmp/decoy1 pass-x 'true'
CPUS=1 ROOT=/tmp/tiny mk snp e2e-y /tmp/decoy2 pass-y 'true'
echo "SHA_BEFORE_X=$(sha /tmp/x/disk.img)"
echo "SHA_BEFORE_Y=$(sha /tmp/y/disk.img)"
run /tmp/x 2>/tmp/wm_es.err; echo "STATUS_WM_ES=$?"
echo "WM_ES_REASON_LINES=$(grep -c 'krun_start_enter: cannot start the microVM' /tmp/wm_es.err)"
cat /tmp/wm_es.err
run /tmp/y; echo "STATUS_WM_SNP=$?"
echo "SHA_AFTER_WM_X=$(sha /tmp/x/disk.img)"
echo "SHA_AFTER_WM_Y=$(sha /tmp/y/disk.img)"
# Wrong passphrase registered (right measurement):
ROOT=/tmp/tiny mk sev-es e2e-x /tmp/decoy3 not-pass-x 'true'
run /tmp/x; echo "STATUS_WP=$?"
echo "SHA_AFTER_WP_X=$(sha /tmp/x/disk.img)"
cat /tmp/kbs.log
"#
    );
    let outcome = s
        .host()
        .file(&buildah, "/buildah")
        .file(&crun, "/bin/crun-order")
        .run(&["sh", "-c", &script])
        .unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");
    drop(plain);

    // (d) and (e): the buildah-layout image runs, twice, with the config nested under
    // "config" applied (Entrypoint ++ Cmd, Env, WorkingDir).
    assert_eq!(marker_values(out, "ADD_BUILDAH="), ["0"], "{ctx}");
    assert_eq!(
        marker_values(out, "BUILDAH_RAN "),
        ["ARG=from-cmd GREETING=oci-env CWD=/srv CPUS=2"; 2],
        "{ctx}"
    );
    assert_eq!(marker_values(out, "STATUS_D="), ["21"], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_E="), ["21"], "{ctx}");
    // The C program made crun's calls in crun's order.
    assert_eq!(
        marker_values(out, "CRUN_ORDER="),
        ["krun_create_ctx krun_set_log_level krun_set_root_disk krun_set_tee_config_file krun_set_vm_config krun_start_enter"],
        "{ctx}"
    );

    // The image, the wrong-measurement decoy and (for e2e-x) the wrong-passphrase decoy.
    assert_eq!(marker_values(out, "MKCW_e2e-x="), ["0"; 3], "{ctx}");
    assert_eq!(marker_values(out, "MKCW_e2e-y="), ["0"; 2], "{ctx}");
    // (b) wrong measurement: no key, a clear error, the workload never ran, disk unchanged.
    // SEV-ES: the host-side attestation is refused and the VM never starts.
    assert!(!out.contains("X_RAN") && !out.contains("Y_RAN"), "{ctx}");
    // The launch-failure status, with exactly one line on stderr saying why.
    assert_eq!(marker_values(out, "STATUS_WM_ES="), ["125"], "{ctx}");
    assert_eq!(marker_values(out, "WM_ES_REASON_LINES="), ["1"], "{ctx}");
    assert!(
        out.contains("SEV attestation with the key broker failed: attest: key broker answered HTTP 401: launch measurement is not an allowed one"),
        "{ctx}"
    );
    // SNP: the guest's attestation is refused; the init stops with the launch-failure
    // status, 125, like the host side.
    assert!(
        out.contains("krun-init: obtaining the disk key failed: attestation with the key broker failed: attest: key broker answered HTTP 401"),
        "{ctx}"
    );
    assert_eq!(marker_values(out, "STATUS_WM_SNP="), ["125"], "{ctx}");
    // The broker released the key exactly three times: the buildah image twice and the
    // wrong-passphrase run once.
    assert_eq!(out.matches("key released").count(), 3, "{ctx}");
    let x = marker_values(out, "SHA_BEFORE_X=");
    assert_eq!(x.len(), 1, "{ctx}");
    assert_eq!(marker_values(out, "SHA_AFTER_WM_X="), x, "{ctx}");
    let y = marker_values(out, "SHA_BEFORE_Y=");
    assert_eq!(y.len(), 1, "{ctx}");
    assert_eq!(marker_values(out, "SHA_AFTER_WM_Y="), y, "{ctx}");
    // (c) wrong passphrase: the key is released but the unlock fails clearly; disk unchanged.
    assert!(
        out.contains("unlocking the LUKS root disk failed")
            && out.contains("no keyslot matches the passphrase"),
        "{ctx}"
    );
    assert_eq!(marker_values(out, "STATUS_WP="), ["125"], "{ctx}");
    assert_eq!(marker_values(out, "SHA_AFTER_WP_X="), x, "{ctx}");
}

/// Boot 3 (issue 12): a disk key goes only to a launch made for its workload and its broker.
/// Co-tenant: workload Y, with the same bundle, vCPUs and RAM as X, runs a root program that
/// tries every path to attestation evidence after the init has Y's key; all are closed, and
/// X's key is released only to X's own launch. Host broker swap: the host runs its own broker
/// and its own image under X's workload id; the guest runs the host's command, with no path
/// to any evidence, and its digest (bound to the host's broker) is not X's; X's genuine disk
/// with a host config naming the host's broker is refused by the init before any attestation.
/// The reference and RCAR protocols still release X's key to X's genuine launch.
#[test]
#[ignore = "boots the test host"]
fn binding_co_tenant_and_host_broker_swap() {
    let s = Setup::new();
    let probe = attest_probe_program(&s);
    let script = format!(
        r#"{PRELUDE}
start_kbs
cp -a /tmp/rootfs /tmp/proberoot && cp /bin/attest-probe /tmp/proberoot/bin/attest-probe
mk snp bind-x /tmp/x pass-x 'echo BIND_X_RAN; exit 0'
PROTO=rcar mk snp bind-r /tmp/r pass-r 'echo BIND_R_RAN; exit 0'
ROOT=/tmp/proberoot mk snp bind-y /tmp/y pass-y '/bin/attest-probe; echo "PROBE_STATUS_Y=$?"; exit 0'
run /tmp/x; echo "STATUS_X=$?"
run /tmp/r; echo "STATUS_R=$?"
run /tmp/y; echo "STATUS_Y=$?"
# The host's own broker B and its own image, registered there under X's workload id.
/bin/krun-kbs --listen 127.0.0.1:8124 --db /tmp/kbs-b.db --admin-token-file /trust/token   --trust-root /trust/roots.pem --vcek-dir /trust/vcek > /tmp/kbs-b.log 2>&1 &
for i in $(seq 100); do grep -q listening /tmp/kbs-b.log && break; sleep 0.2; done
KBS_URL=http://127.0.0.1:8124 ROOT=/tmp/proberoot mk snp bind-x /tmp/h host-pass   'echo HOST_COMMAND_RAN; /bin/attest-probe; echo "PROBE_STATUS_H=$?"; exit 0'
run /tmp/h; echo "STATUS_H=$?"
# X's genuine disk, with a host config that names broker B.
sed 's/8123/8124/' /tmp/x/krun-sev.json > /tmp/x-b.json
run --disk /tmp/x/disk.img --tee-config /tmp/x-b.json; echo "STATUS_XB=$?"
echo "DIGEST_X=$(krun-sev measure --tee-config /tmp/x/krun-sev.json)"
echo "DIGEST_Y=$(krun-sev measure --tee-config /tmp/y/krun-sev.json)"
echo "DIGEST_H=$(krun-sev measure --tee-config /tmp/h/krun-sev.json)"
echo "== broker A"; cat /tmp/kbs.log
echo "== broker B"; cat /tmp/kbs-b.log
"#
    );
    let outcome = s
        .host()
        .file(&probe, "/bin/attest-probe")
        .run(&["sh", "-c", &script])
        .unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");
    let (broker_a, broker_b) = out
        .split_once("== broker A")
        .and_then(|(_, rest)| rest.split_once("== broker B"))
        .unwrap_or_else(|| panic!("no broker logs; {ctx}"));
    let released = |log: &str, id: &str| {
        log.lines()
            .filter(|l| l.contains("released") && l.contains(&format!("workload={id}")))
            .count()
    };

    // X's genuine launches, reference and RCAR, get their keys and run.
    assert_eq!(marker_values(out, "BIND_X_RAN"), [""], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_X="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "BIND_R_RAN"), [""], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_R="), ["0"], "{ctx}");
    assert_eq!(released(broker_a, "bind-r"), 1, "{ctx}");

    // Co-tenant Y: the same bundle, vCPUs and RAM, yet another digest; every path to
    // evidence is closed for its root workload.
    let digest = |k: &str| marker_values(out, k).first().map(|d| d.trim().to_owned());
    assert!(digest("DIGEST_X=").is_some_and(|d| d.len() == 96), "{ctx}");
    assert_ne!(digest("DIGEST_X="), digest("DIGEST_Y="), "{ctx}");
    for path in [
        "dev-sev-guest",
        "mknod",
        "mount-devtmpfs",
        "mount-configfs",
        "tsm-report",
        "vsock-1025-proxy",
        "vsock-1026-reports",
        "cap-sys-admin",
        "cap-mknod",
    ] {
        let seen = marker_values(out, &format!("PROBE {path}="));
        assert_eq!(seen.len(), 2, "{path} probed in Y and H; {ctx}");
        assert!(
            seen.iter().all(|v| v.starts_with("refused")),
            "{path}: {seen:?}; {ctx}"
        );
    }
    assert_eq!(marker_values(out, "PROBE_STATUS_Y="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_Y="), ["0"], "{ctx}");
    assert!(
        out.contains("attestation finished; proxy (1025) and report service (1026) closed"),
        "{ctx}"
    );

    // Host broker swap: the host's command runs (the host's broker gave the host's key for
    // the host's image), but the launch's digest is bound to broker B, not X's, and the
    // command has no path to evidence or to broker A.
    assert_eq!(marker_values(out, "HOST_COMMAND_RAN"), [""], "{ctx}");
    assert_eq!(marker_values(out, "PROBE_STATUS_H="), ["0"], "{ctx}");
    assert_ne!(digest("DIGEST_X="), digest("DIGEST_H="), "{ctx}");
    assert_eq!(released(broker_b, "bind-x"), 1, "{ctx}");
    // X's disk with a config naming broker B: the init refuses before attesting anywhere.
    assert!(
        out.contains("the root disk footer names workload \"bind-x\" at http://127.0.0.1:8123, but this launch was measured for workload \"bind-x\" at http://127.0.0.1:8124"),
        "{ctx}"
    );
    assert_eq!(marker_values(out, "STATUS_XB="), ["125"], "{ctx}");
    assert_eq!(
        marker_values(out, "BIND_X_RAN"),
        [""],
        "X ran once only; {ctx}"
    );

    // X's key left broker A exactly once: to X's genuine launch.
    assert_eq!(released(broker_a, "bind-x"), 1, "{ctx}");
    assert_eq!(released(broker_a, "bind-y"), 1, "{ctx}");
}

/// The workload of [`network_through_passt_outbound_and_inbound`], `/net.sh CASE` in its
/// root: prints what the init configured, fetches a page from the test host's server through
/// passt, then serves one HTTP request on port 8081 and exits.
const NET_WORKLOAD: &str = r#"#!/bin/sh
c=$1
echo "NET_RESOLV_$c=$(grep '^nameserver' /etc/resolv.conf | tr '\n' ' ')"
echo "NET_ROUTE_$c=$(ip route | grep '^default')"
# The servers read the whole request before answering: closing a socket with unread data
# resets the connection, which can lose the answer.
DRAIN='while read h; do [ -z "$(echo "$h" | tr -d "\r")" ] && break; done'
# nc, not wget: the static busybox's wget looks up the "http" service through NSS, which
# crashes where glibc's NSS modules are present (the test host).
# The shell's "Terminated" notice (if timeout has to stop nc) stays off the marker line.
# The request's stdin stays open 5 s: on its end nc half-closes (shutdown SHUT_WR), and
# after a guest's half-close Debian 12's passt does not pass the server's FIN on (the guest
# socket stays in FIN_WAIT2 with the whole answer read, so nc waited out its timeout; with
# stdin open, as HTTP clients keep it, the FIN arrives at once).
t0=$(date +%s)
echo "NET_FETCH_$c=$( { { printf 'GET /from-guest-%s HTTP/1.0\r\n\r\n' "$c"; sleep 5; } | timeout 120 nc 192.0.2.1 8080 | tail -n 1; } 2>/dev/null)"
echo "FETCH_SECONDS_$c=$(( $(date +%s) - t0 ))"
printf '%s\n' '#!/bin/sh' 'read request' "$DRAIN" "printf 'HTTP/1.0 200 OK\r\n\r\n'" \
  'peer=$(netstat -tn | grep ":8081 " | grep ESTABLISHED | tr -s " " | cut -d" " -f5 | sed "s/:[0-9]*\$//; s/^::ffff://" | head -n 1)' \
  'echo "GUEST_SERVED $request PEER $peer" | tr -d "\r"' > /tmp/serve
chmod +x /tmp/serve
echo "NET_LISTENING_$c"
timeout 300 nc -l -p 8081 -e /tmp/serve
echo "NET_SERVED_$c=$?"
"#;

/// Boot 5 (issue 15): a confidential SNP workload (PSP model) with a network through Debian
/// 12's passt, copied into the test host, whose dummy0 interface (192.0.2.10/24, default
/// route via 192.0.2.1, nameserver 192.0.2.53) is the host network passt copies. Three
/// times: (i) crun 1.22+'s way, a socketpair with `passt --fd` and `krun_add_net_unixstream`
/// with the fd and `NET_FLAG_DHCP_CLIENT` (tests/c/net_passt.c, in crun's call order); (ii)
/// `krun-sev run`, which makes no network call, so the library starts passt itself; (iii) a
/// C caller with no network call and an explicit port map (`krun_set_port_map`
/// "18082:8081"), so the library starts passt and hands it the map's forward; that launch is
/// measured with its port map, so the workload is registered with `krun-sev measure --port`'s
/// digest. Each time the init configures eth0 by DHCP, the workload fetches a page from a
/// server the test runs on the test host outside the VM (passt maps the gateway address to
/// the host's loopback) and the server logs the request; then the test host reaches the
/// workload's server: in (i) and (iii) through passt's port forwarding (host ports 18081 and
/// 18082, which only passt binds), in (ii) through the NULL port map, which stays on the
/// vsock forwarder (host port 8081).
#[test]
#[ignore = "boots the test host"]
fn network_through_passt_outbound_and_inbound() {
    let s = Setup::new();
    let passt = Path::new("/usr/bin/passt");
    assert!(
        passt.exists(),
        "the network test needs passt: apt-get install passt"
    );
    let program = c_program(&s, "net_passt.c", "net-passt");
    let root = s.path("netroot");
    busybox_rootfs(
        &root,
        &[
            "sh", "echo", "cat", "grep", "tr", "cut", "ip", "tail", "head", "sed", "chmod",
            "printf", "netstat", "timeout", "nc", "date",
        ],
    )
    .unwrap();
    fs::write(root.join("net.sh"), NET_WORKLOAD).unwrap();
    let tar = Command::new("tar")
        .arg("-cf")
        .arg(s.path("netroot.tar"))
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());

    let script = format!(
        r#"{PRELUDE}
# The host network passt copies: dummy0 with an address, the default route, a nameserver.
ip addr add 192.0.2.10/24 dev dummy0 && ip link set dummy0 up && ip route add default via 192.0.2.1
echo "HOST_NET=$?"
echo nameserver 192.0.2.53 > /etc/resolv.conf
# passt started as root changes to the user nobody, which it looks up.
echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >> /etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' > /etc/group
# passt's sandbox pivots its root, which the initramfs root cannot be, and makes a user
# namespace, which a chroot cannot: the launches run in a mount namespace whose root is a
# recursive bind mount of the initramfs moved onto / (switch_root's way; same files,
# devices, network).
mkdir -p /host
# The server outside the VM: logs each request line, answers with a page.
printf '%s\n' '#!/bin/sh' 'read line' 'echo "$line" | tr -d "\r" >> /tmp/requests' \
  'while read h; do [ -z "$(echo "$h" | tr -d "\r")" ] && break; done' \
  "printf 'HTTP/1.0 200 OK\r\n\r\nHOST_PAGE_7431\n'" > /tmp/serve-host
chmod +x /tmp/serve-host
nc -ll -p 8080 -e /tmp/serve-host &
mkdir -p /tmp/netroot && tar -xf /netroot.tar -C /tmp/netroot
start_kbs
ROOT=/tmp/netroot mk snp net-explicit /tmp/ne pass-ne '/bin/sh /net.sh explicit'
ROOT=/tmp/netroot mk snp net-default /tmp/nd pass-nd '/bin/sh /net.sh default'
# A C caller's explicit port map is measured: the workload is registered with the digest
# `krun-sev measure --port` computes for it (mkcw's would be for crun's launch, without one).
krun-sev mkcw --tee snp --cpus 2 --ram-mib 512 --kbs-protocol reference \
  --attestation-url http://127.0.0.1:8123 --workload-id net-ports --passphrase pass-np \
  --pbkdf2-iterations 1000 --env PATH=/bin --cmd /bin/sh --cmd -c --cmd '/bin/sh /net.sh ports' \
  /tmp/netroot /tmp/np
echo "MKCW_net-ports=$?"
digest=$(krun-sev measure --tee-config /tmp/np/krun-sev.json --port 18082:8081)
printf pass-np > /tmp/pp-np
/bin/krun-kbs --db /tmp/kbs.db workload add --id net-ports --tee snp --measurement "$digest" \
  --passphrase-file /tmp/pp-np
echo "REGISTERED_net-ports=$?"
cat > /tmp/cases.sh <<'CASES'
# case_run CASE HOST_PORT COMMAND...: runs COMMAND in the background, waits for the workload
# to listen, fetches from it through HOST_PORT, then waits for COMMAND.
case_run() {{
  c=$1; port=$2; shift 2
  t0=$(date +%s)
  "$@" </dev/null >/tmp/out-$c 2>&1 &
  pid=$!
  for i in $(seq 900); do
    grep -q "NET_LISTENING_$c" /tmp/out-$c && break
    kill -0 $pid 2>/dev/null || break
    sleep 1
  done
  echo "TIME_${{c}}_LISTENING_S=$(( $(date +%s) - t0 ))"
  body=
  for i in $(seq 60); do
    body=$(printf 'GET /from-host-%s HTTP/1.0\r\n\r\n' "$c" | timeout 60 nc 127.0.0.1 $port | tail -n 1)
    [ -n "$body" ] && break
    sleep 2
  done
  echo "INBOUND_$c=$(echo $body | tr '\n' ' ')"
  echo "TIME_${{c}}_INBOUND_S=$(( $(date +%s) - t0 ))"
  wait $pid
  echo "STATUS_$c=$?"
  echo "TIME_${{c}}_EXIT_S=$(( $(date +%s) - t0 ))"
  sed "s/^/OUT_$c: /" /tmp/out-$c
}}
case_run explicit 18081 /bin/net-passt /tmp/ne/disk.img /tmp/ne/krun-sev.json fd 18081:8081
case_run default 8081 krun-sev run --log-level 3 /tmp/nd
case_run ports 18082 /bin/net-passt /tmp/np/disk.img /tmp/np/krun-sev.json default 18082:8081
CASES
unshare -m sh -c 'mount -o rbind / /host && cd /host && mount -o move . / && exec chroot . sh /tmp/cases.sh'
echo "HOST_CHROOT=$?"
sed "s/^/HOST_SERVER_SAW: /" /tmp/requests
sleep 2
echo "PASST_LEFT=$(pidof passt)"
cat /tmp/kbs.log
"#
    );
    let outcome = s
        .host()
        .file(passt, "/usr/bin/passt")
        .file(&program, "/bin/net-passt")
        .file(s.path("netroot.tar"), "/netroot.tar")
        .run(&["sh", "-c", &script])
        .unwrap();
    let out = &outcome.output;
    // Where the boot's time goes (printed on success too: this is the longest test-host test).
    for line in out
        .lines()
        .filter(|l| l.contains("TIME_") || l.contains("FETCH_SECONDS_"))
    {
        eprintln!("network: {line}");
    }
    let ctx = format!("output:\n{out}");

    assert_eq!(marker_values(out, "HOST_NET="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "HOST_CHROOT="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "MKCW_net-explicit="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "MKCW_net-default="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "MKCW_net-ports="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "REGISTERED_net-ports="), ["0"], "{ctx}");
    assert_eq!(
        marker_values(out, "OUT_explicit: NET_CALL="),
        ["0"],
        "{ctx}"
    );
    for c in ["explicit", "default", "ports"] {
        let o = |k: &str| marker_values(out, &format!("OUT_{c}: {k}"));
        // The init configured eth0 with passt's copy of the host network.
        let configured = after(out, &format!("OUT_{c}: krun-init: network: "));
        assert_eq!(configured.len(), 1, "{c}: {ctx}");
        assert!(
            configured[0].starts_with("eth0 192.0.2.10/24 via 192.0.2.1 "),
            "{c}: {configured:?}; {ctx}"
        );
        let route = o("NET_ROUTE_");
        assert!(
            route.len() == 1
                && route[0].starts_with(&format!("{c}=default via 192.0.2.1 dev eth0")),
            "{c}: {route:?}; {ctx}"
        );
        let resolv = o("NET_RESOLV_");
        assert!(
            resolv.len() == 1 && resolv[0].trim_end() == format!("{c}=nameserver 192.0.2.53"),
            "{c}: {resolv:?}; {ctx}"
        );
        // Outbound: the page from the server outside the VM, which saw the request.
        assert_eq!(o("NET_FETCH_"), [format!("{c}=HOST_PAGE_7431")], "{ctx}");
        // The server's close reached the guest: nc ended with it, not at its 120-s timeout.
        let fetch_s: Vec<u64> = o("FETCH_SECONDS_")
            .iter()
            .filter_map(|v| v.strip_prefix(&format!("{c}="))?.parse().ok())
            .collect();
        assert!(
            fetch_s.len() == 1 && fetch_s[0] < 60,
            "{c}: fetch took {fetch_s:?} s; {ctx}"
        );
        let saw = marker_values(out, "HOST_SERVER_SAW: ");
        assert!(
            saw.iter()
                .any(|l| l.starts_with(&format!("GET /from-guest-{c} HTTP/1."))),
            "{c}: {saw:?}; {ctx}"
        );
        // Inbound: the workload's server answered the test host through passt.
        let inbound = marker_values(out, &format!("INBOUND_{c}="));
        assert_eq!(inbound.len(), 1, "{ctx}");
        assert!(
            inbound[0].starts_with(&format!("GUEST_SERVED GET /from-host-{c} HTTP/1.")),
            "{c}: {inbound:?}; {ctx}"
        );
        // The explicit case's host port 18081 is bound only by passt (`-t 18081:8081`); the
        // NULL port map of the default case stays on the vsock forwarder (host port 8081).
        assert_eq!(o("NET_SERVED_"), [format!("{c}=0")], "{ctx}");
        assert_eq!(marker_values(out, &format!("STATUS_{c}=")), ["0"], "{ctx}");
    }
    // All asked DHCP (the library's own passt always does).
    for c in ["explicit", "default", "ports"] {
        let line = after(out, &format!("OUT_{c}: krun-init: network: "));
        assert!(line[0].ends_with("(DHCP)"), "{c}: {line:?}; {ctx}");
    }
    // The library started passt for the default and ports cases, with the port map's
    // forward in the second.
    assert_eq!(out.matches("network: started ").count(), 2, "{ctx}");
    assert_eq!(
        out.matches("TCP ports forwarded by passt: 18082:8081")
            .count(),
        1,
        "{ctx}"
    );
    // No passt outlives its VM.
    assert_eq!(marker_values(out, "PASST_LEFT="), [""], "{ctx}");
    assert_eq!(out.matches("key released").count(), 3, "{ctx}");
    // The virtio-net and vsock workers ran under their seccomp allow-lists.
    assert!(
        out.contains("OUT_default: [libkrun-sev INFO krun_sev::vmm::seccomp] seccomp filters on"),
        "{ctx}"
    );
    assert!(!out.contains("denied system call"), "{ctx}");
}

/// crun versions run by [`real_crun_runs_the_confidential_container`]: Debian 12's source
/// package (every call after `pivot_root`, `krun_create_ctx` included) and the upstream
/// release Debian 13 ships (`krun_create_ctx` on the host when the handler loads).
const CRUN_VERSIONS: &[&str] = &["1.8.1", "1.21"];

/// Boot 4 (issues 13 and 22): real crun, built `--with-libkrun` by `ci/build-crun.sh`
/// (cached), runs a confidential container whose rootfs is the `buildah mkcw` layout
/// (`/entrypoint`, `/krun-sev.json`, `/disk.img` from `krun-sev mkcw --register`) with the
/// library at `/usr/lib/libkrun-sev.so.1` and the guest bundle only at the library's built-in
/// default directory. For each crun, a workload that exits 0 and one that exits 3: the
/// workload's output is on crun's stdout and crun's exit status is the workload's.
#[test]
#[ignore = "boots the test host"]
fn real_crun_runs_the_confidential_container() {
    let s = Setup::new();
    let default_dir = krun_sev::launch::guest::DEFAULT_BUNDLE_DIR;
    let library = built_library();
    // The test and the cdylib are built by the same cargo invocation, so the library's
    // default bundle directory is this one; checked, since crun has no other way to find it.
    let lib_bytes = fs::read(&library).unwrap();
    assert!(
        lib_bytes
            .windows(default_dir.len())
            .any(|w| w == default_dir.as_bytes()),
        "{} does not contain its default bundle directory {default_dir}",
        library.display()
    );
    drop(lib_bytes);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // crun selects its krun handler when run as `krun` (`podman run --runtime krun`).
    let mut host = s.host().file(&library, "/usr/lib/libkrun-sev.so.1");
    for v in CRUN_VERSIONS {
        let out = Command::new(repo.join("ci/build-crun.sh"))
            .arg(v)
            .output()
            .unwrap();
        assert!(out.status.success(), "ci/build-crun.sh {v}: {out:?}");
        let crun = String::from_utf8(out.stdout).unwrap();
        host = host.file(crun.trim(), &format!("/opt/crun-{v}/krun"));
    }
    // The OCI runtime config, runtime-spec 1.0.2 (crun 1.8.1 refuses 1.2.0). No network
    // namespace: the guest reaches the broker on the test host's 127.0.0.1. The host decides
    // the settings: the library takes them from crun's environment when crun loads it, so
    // the container's process.env (which crun puts in place before the handler runs) names a
    // backend, bundle and model identity that would fail the launch, and must change nothing.
    // The PSP model's identity stays on the host (read at load).
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    ];
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/entrypoint"],
            "env": ["PATH=/usr/bin:/bin", "KRUN_SEV_BACKEND=hardware",
                    "KRUN_SEV_BUNDLE_DIR=/nonexistent", "KRUN_SEV_PSP_MODEL_DIR=/nonexistent",
                    "KRUN_SEV_CONFIG=/nonexistent.conf"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "crun-sev",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
        },
    });
    fs::write(s.path("config.json"), config.to_string()).unwrap();
    // crun before 1.15 refuses runtime-spec 1.1 and later.
    let mut config12 = config.clone();
    config12["ociVersion"] = "1.2.0".into();
    fs::write(s.path("config12.json"), config12.to_string()).unwrap();

    let versions = CRUN_VERSIONS.join(" ");
    let script = format!(
        r#"{PRELUDE}
# The bundle only where the library looks by default; mkcw measures it there too.
mkdir -p "$(dirname {default_dir})" && mv /bundle {default_dir}
export KRUN_SEV_BUNDLE_DIR={default_dir}
mkdir -p /run /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
start_kbs
mk snp crun-ok /tmp/ok pass-ok 'echo CRUN_WORKLOAD_OK; exit 0'
mk snp crun-three /tmp/three pass-three 'echo CRUN_WORKLOAD_THREE; echo CRUN_STDERR_THREE >&2; exit 3'
for img in ok three; do
  mkdir -p /oci-$img/rootfs
  cp /config.json /oci-$img/config.json
  mv /tmp/$img/disk.img /tmp/$img/krun-sev.json /oci-$img/rootfs/
  printf '#!/bin/sh\necho "This image is designed to be run as a confidential workload."\n' > /oci-$img/rootfs/entrypoint
  chmod 0755 /oci-$img/rootfs/entrypoint
done
mkdir -p /oci-12/rootfs && cp /config12.json /oci-12/config.json && cp /oci-ok/rootfs/krun-sev.json /oci-12/rootfs/
/opt/crun-1.8.1/krun --cgroup-manager=cgroupfs run --no-pivot --bundle /oci-12 c-12 </dev/null >/dev/null 2>/tmp/err
echo "STATUS_SPEC12=$?"
sed "s/^/STDERR_SPEC12: /" /tmp/err
# crun's own environment has KRUN_SEV_BACKEND=model and KRUN_SEV_PSP_MODEL_DIR (PRELUDE), not
# KRUN_SEV_BUNDLE_DIR: the library reads them when crun loads it, on the host.
for v in {versions}; do
  /opt/crun-$v/krun --version | sed "s/^/VERSION_$v: /"
  for img in ok three; do
    (unset KRUN_SEV_BUNDLE_DIR; /opt/crun-$v/krun --cgroup-manager=cgroupfs run --no-pivot --bundle /oci-$img c-$img \
      </dev/null >/tmp/out 2>/tmp/err)
    echo "STATUS_${{v}}_$img=$?"
    sed "s/^/STDOUT_${{v}}_$img: /" /tmp/out
    sed "s/^/STDERR_${{v}}_$img: /" /tmp/err
    /opt/crun-$v/krun delete -f c-$img 2>/dev/null
  done
done
# podman (Debian 12's 4.3) with crun 1.21 as its krun runtime, as `podman run --runtime
# krun` runs it: the image comes from `krun-sev mkcw --oci-archive`, and the settings only
# from the host's /etc/krun-sev.conf (an empty environment, nothing per container).
krun-sev mkcw --tee snp --cpus 2 --ram-mib 512 --attestation-url http://127.0.0.1:8123 \
  --register --admin-token-file /trust/token --workload-id podman-wl --passphrase pass-podman \
  --pbkdf2-iterations 1000 --env PATH=/bin --cmd /bin/sh --cmd -c \
  --cmd 'echo PODMAN_WORKLOAD_OUT; echo PODMAN_WORKLOAD_ERR >&2; exit 4' \
  --oci-archive /tmp/podman-wl.tar --tag localhost/podman-wl:1 /tmp/rootfs /tmp/podman-wl
echo "MKCW_podman-wl=$?"
mkdir -p /etc/containers /var/tmp /var/lib/pm /run/pm
printf '{{"default":[{{"type":"insecureAcceptAnything"}}]}}\n' > /etc/containers/policy.json
# The test host's root is the initramfs, where pivot_root cannot work (crun --no-pivot above).
printf '[engine]\nno_pivot_root = true\n' > /etc/containers/containers.conf
printf 'backend = model\nmodel_dir = /psp\n' > /etc/krun-sev.conf
pm() {{
  env -i PATH=/usr/sbin:/usr/bin:/bin podman --root /var/lib/pm --runroot /run/pm \
    --storage-driver vfs --cgroup-manager cgroupfs --events-backend file \
    --runtime /opt/crun-1.21/krun "$@"
}}
pm load -i /tmp/podman-wl.tar 2>&1 | sed "s/^/PODMAN_LOAD: /"
pm run --rm --network host --pull never localhost/podman-wl:1 </dev/null >/tmp/out 2>/tmp/err
echo "STATUS_PODMAN=$?"
sed "s/^/STDOUT_PODMAN: /" /tmp/out
sed "s/^/STDERR_PODMAN: /" /tmp/err
rm /etc/krun-sev.conf
# The broker now holds another measurement for crun-three (1 vCPU): the 2-vCPU launch of
# the same image is refused.
CPUS=1 mk snp crun-three /tmp/three-1cpu pass-three 'exit 0'
(unset KRUN_SEV_BUNDLE_DIR; /opt/crun-1.21/krun --cgroup-manager=cgroupfs run --no-pivot --bundle /oci-three c-refused \
  </dev/null >/tmp/out 2>/tmp/err)
echo "STATUS_REFUSED=$?"
sed "s/^/STDOUT_REFUSED: /" /tmp/out
sed "s/^/STDERR_REFUSED: /" /tmp/err
cat /tmp/kbs.log
"#
    );
    let outcome = host
        .file(s.path("config.json"), "/config.json")
        .file(s.path("config12.json"), "/config12.json")
        .file("/usr/bin/podman", "/usr/bin/podman")
        .file("/usr/bin/conmon", "/usr/bin/conmon")
        .run(&["sh", "-c", &script])
        .unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");

    assert_eq!(marker_values(out, "MKCW_crun-ok="), ["0"], "{ctx}");
    for v in CRUN_VERSIONS {
        let version = marker_values(out, &format!("VERSION_{v}: "));
        assert!(
            version.contains(&format!("crun version {v}").as_str())
                && version.iter().any(|l| l.contains("+LIBKRUN")),
            "{v}: {version:?}; {ctx}"
        );
        for (img, line, status) in [
            ("ok", "CRUN_WORKLOAD_OK", "0"),
            ("three", "CRUN_WORKLOAD_THREE", "3"),
        ] {
            assert_eq!(
                marker_values(out, &format!("STATUS_{v}_{img}=")),
                [status],
                "crun {v}, workload {img}; {ctx}"
            );
            // stdout carries the workload's stdout and nothing else (no init marker or
            // diagnostics, no stderr).
            assert_eq!(
                marker_values(out, &format!("STDOUT_{v}_{img}: ")),
                [line],
                "crun {v}: {line} alone on crun's stdout; {ctx}"
            );
            let stderr = marker_values(out, &format!("STDERR_{v}_{img}: "));
            assert!(!stderr.contains(&line), "{ctx}");
            // crun asks for errors only: no init progress lines.
            assert!(
                !stderr
                    .iter()
                    .any(|l| l.contains("krun-init:") || l.contains("KRUN_INIT_STARTED")),
                "crun {v}, workload {img}: {stderr:?}; {ctx}"
            );
        }
        assert!(
            marker_values(out, &format!("STDERR_{v}_three: ")).contains(&"CRUN_STDERR_THREE"),
            "crun {v}: the workload's stderr is not on crun's stderr; {ctx}"
        );
    }
    // podman: the workload's stdout alone on podman's stdout, its stderr on podman's stderr,
    // its status podman's, its key released once.
    assert_eq!(marker_values(out, "MKCW_podman-wl="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_PODMAN="), ["4"], "{ctx}");
    assert_eq!(
        marker_values(out, "STDOUT_PODMAN: "),
        ["PODMAN_WORKLOAD_OUT"],
        "{ctx}"
    );
    let stderr = marker_values(out, "STDERR_PODMAN: ");
    assert!(stderr.contains(&"PODMAN_WORKLOAD_ERR"), "{ctx}");
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("krun-init:") || l.contains("KRUN_INIT_STARTED")),
        "{stderr:?}; {ctx}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("key released") && l.contains("workload=podman-wl"))
            .count(),
        1,
        "{ctx}"
    );
    // A broker refusal: the launch-failure status, nothing on stdout, one line saying why
    // (besides the PSP model's banner, shown at every model launch).
    assert_eq!(marker_values(out, "MKCW_crun-three="), ["0", "0"], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_REFUSED="), ["125"], "{ctx}");
    assert!(marker_values(out, "STDOUT_REFUSED: ").is_empty(), "{ctx}");
    let reasons: Vec<&str> = marker_values(out, "STDERR_REFUSED: ")
        .into_iter()
        .filter(|l| !is_model_banner(l))
        .collect();
    assert!(
        reasons.len() == 1
            && reasons[0].contains("key broker answered HTTP 401")
            && reasons[0].contains("launch measurement is not allowed"),
        "{reasons:?}; {ctx}"
    );
    let spec12 = marker_values(out, "STATUS_SPEC12=");
    assert!(spec12.len() == 1 && spec12[0] != "0", "{ctx}");
    assert!(
        marker_values(out, "STDERR_SPEC12: ")
            .iter()
            .any(|l| l.contains("unknown version specified")),
        "{ctx}"
    );
    // One key per launch: each workload ran under both crun versions, and once under podman.
    assert_eq!(
        out.matches("key released").count(),
        2 * CRUN_VERSIONS.len() + 1,
        "{ctx}"
    );
    // crun's container process ran the VMM under its seccomp filters (on by default) without
    // a denied call.
    assert!(!out.contains("denied system call"), "{ctx}");
}

/// The PSP model's warning lines (`krun_sev::tee::model::warn_unencrypted`).
fn is_model_banner(line: &str) -> bool {
    line.contains("*****") || line.contains("backend model:") || line.contains("NOT encrypted")
}

/// Compiles tests/c/attest_probe.c statically (it runs in the busybox guest root).
fn attest_probe_program(s: &Setup) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let program = s.path("attest-probe");
    let out = Command::new("cc")
        .args(["-static", "-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&program)
        .arg(repo.join("tests/c/attest_probe.c"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    program
}

/// The hex digests `mkcw` printed for `mode` (`mkcw: launch measurement (MODE, ...): HEX`).
fn registered_measurement<'a>(out: &'a str, mode: &str) -> Vec<&'a str> {
    after(out, &format!("mkcw: launch measurement ({mode}, "))
        .into_iter()
        .filter_map(|l| l.rsplit_once("): ").map(|(_, m)| m.trim()))
        .collect()
}

/// Writes `dir/disk.img` and `dir/krun-sev.json` the way `buildah mkcw` lays them out
/// (independently of mkcw): LUKS1 with luksy's 4040-sector payload offset, an ext4 file
/// system whose `/.krun_config.json` is a full OCI image config with the process settings
/// under "config", zero padding so that the footer (TEE config JSON, "KRUN", u64 LE length)
/// ends on a 4096-byte boundary. Returns the plaintext file system image.
fn buildah_image(s: &Setup, dir: &Path) -> Vec<u8> {
    fs::create_dir_all(dir).unwrap();
    let root = s.path("buildah-root");
    busybox_rootfs(&root, APPLETS).unwrap();
    fs::create_dir_all(root.join("srv")).unwrap();
    let image_config = serde_json::json!({
        "created": "2026-11-27T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c",
                "echo \"BUILDAH_RAN ARG=$0 GREETING=$GREETING CWD=$(pwd) CPUS=$(nproc)\"; exit 21"],
            "Cmd": ["from-cmd"],
            "Env": ["PATH=/bin", "GREETING=oci-env"],
            "WorkingDir": "/srv",
        },
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [{"created_by": "buildah mkcw"}],
    });
    fs::write(root.join(".krun_config.json"), image_config.to_string()).unwrap();
    let plain_path = s.path("buildah-plain.img");
    ext4_image(&root, &plain_path, 24 << 20).unwrap();
    let plain = fs::read(&plain_path).unwrap();

    let vol = format_luks1(
        b"buildah-pass",
        &Luks1Options {
            keyslot_iterations: 1000,
            ..Luks1Options::default()
        },
    )
    .unwrap();
    assert_eq!(vol.payload.offset, LUKSY_PAYLOAD_SECTORS * 512);
    // buildah's SEV config: "sev" with the legacy tee_data keys.
    let tee_config = serde_json::json!({
        "workload_id": "e2e-buildah", "cpus": 2, "ram_mib": 512, "tee": "sev",
        "tee_data": "{\"vendor_chain\":\"\",\"attestation_server_pubkey\":\"\"}",
        "attestation_url": "http://127.0.0.1:8123",
    })
    .to_string();
    let disk = dir.join("disk.img");
    let mut out = fs::File::create(&disk).unwrap();
    let payload = write_encrypted(&vol, plain.as_slice(), &mut out, &mut |_| {}).unwrap();
    let written = vol.header.len() as u64 + payload;
    let json = tee_config.as_bytes();
    let used = written + json.len() as u64 + 12;
    let pad = (4096 - used % 4096) % 4096;
    out.write_all(&vec![0u8; usize::try_from(pad).unwrap()])
        .unwrap();
    out.write_all(json).unwrap();
    out.write_all(b"KRUN").unwrap();
    out.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    drop(out);
    assert_eq!(fs::metadata(&disk).unwrap().len() % 4096, 0);
    fs::write(dir.join("krun-sev.json"), &tee_config).unwrap();
    plain
}

/// The library's cdylib of this profile (target/<profile>/libkrun_sev.so; `cargo build -p
/// krun-sev`).
fn built_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let built = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("libkrun_sev.so");
    assert!(
        built.exists(),
        "{} missing: run cargo build -p krun-sev",
        built.display()
    );
    built
}

/// Compiles tests/c/crun_order.c against include/libkrun.h and the built library
/// (under its SONAME).
fn crun_order_program(s: &Setup) -> PathBuf {
    c_program(s, "crun_order.c", "crun-order")
}

/// Compiles tests/c/SOURCE into NAME against include/libkrun.h and the built library
/// (under its SONAME).
fn c_program(s: &Setup, source: &str, name: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = built_library();
    let lib = s.path("lib");
    fs::create_dir_all(&lib).unwrap();
    fs::copy(&built, lib.join("libkrun-sev.so.1")).unwrap();
    let program = s.path(name);
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&program)
        .arg(repo.join("tests/c").join(source))
        .arg("-I")
        .arg(repo.join("include"))
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-l:libkrun-sev.so.1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    program
}
