//! Issue 6 in a real guest: confidential launches with the PSP model (KRUN_SEV_BACKEND=model)
//! through the C API boot the bundle kernel via the reset-vector firmware and reach the init,
//! which reads the measured /krun/host.json; the launch logs the measurement `krun-sev
//! measure` computes for the same inputs. Ignored by a plain `cargo test`;
//! `ci/testhost-tests.sh` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::process::Command;
use std::time::Duration;

use krun_sev::launch::{expected_measurement, expected_measurement_dump, MeasureRequest};
use krun_sev::resources::TeeConfig;
use krun_sev::tee::TeeMode;
use krun_testhost::{busybox_rootfs, krun_kbs_bin, krun_sev_bin, test_bundle, TestHost};

/// `krun-sev measure --tee-config` of the image in `image_dir`, computed on this machine.
fn build_machine_digest(bundle: &std::path::Path, image_dir: &std::path::Path) -> String {
    let config = TeeConfig::parse(&fs::read(image_dir.join("krun-sev.json")).unwrap()).unwrap();
    expected_measurement(
        &MeasureRequest::from_tee_config(&config, bundle.to_path_buf(), false).unwrap(),
    )
    .unwrap()
    .digest_hex()
}

/// The measured updates of a dump (memory updates and VMSAs; the CPUID page's contents,
/// which depend on the host's KVM and are not measured, left out), as the test host's
/// `grep -e '"cmd":"update_' -e '"cmd":"snp_update"' | grep -v '"page_type":"cpuid"' |
/// sha256sum` prints them.
fn measured_updates_sha256(dump_json_lines: &str) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for line in dump_json_lines.lines().filter(|l| {
        (l.contains(r#""cmd":"update_"#) || l.contains(r#""cmd":"snp_update""#))
            && !l.contains(r#""page_type":"cpuid""#)
    }) {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest the independent oracle (`tests/oracle/measure_oracle.py`) computes from the
/// launch updates of `krun-sev measure --tee-config` (the library's dump) for the image in
/// `image_dir`, checked against the bundle files and sev-snp-measure's VMSAs; with the
/// measured updates' SHA-256 ([`measured_updates_sha256`]).
fn oracle_digest(
    bundle: &std::path::Path,
    image_dir: &std::path::Path,
    workload: &str,
) -> (String, String) {
    let config = TeeConfig::parse(&fs::read(image_dir.join("krun-sev.json")).unwrap()).unwrap();
    let req = MeasureRequest::from_tee_config(&config, bundle.to_path_buf(), false).unwrap();
    let (m, dump) = expected_measurement_dump(&req).unwrap();
    let path = image_dir.join("updates.jsonl");
    dump.write(&path).unwrap();
    let python = std::env::var("KRUN_SEV_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .expect("KRUN_SEV_PYTHON (the oracles' venv; make test sets it)");
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../oracle/measure_oracle.py"
        ))
        .arg("--dump")
        .arg(&path)
        .arg("--bundle")
        .arg(bundle)
        .args(["--tee", req.mode.host_json_name(), "--vcpus"])
        .arg(req.vcpus.to_string())
        .arg("--ram-mib")
        .arg(req.ram_mib.to_string())
        // mkcw writes no tee_data.gen: the default model, QEMU's EPYC-Milan.
        .args(["--vcpu-type", "EPYC-Milan", "--workload-id", workload])
        .args(["--expect-digest", &m.digest_hex()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the oracle disagrees with krun-sev measure: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = answer["digest"].as_str().unwrap().to_owned();
    (digest, measured_updates_sha256(&dump.to_json_lines()))
}

/// What follows `key` on each output line containing it (log lines carry a prefix, so
/// [`krun_testhost::marker_values`] does not fit them).
fn marker<'a>(output: &'a str, key: &str) -> Vec<&'a str> {
    output
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once(key).map(|(_, v)| v))
        .collect()
}

#[test]
#[ignore = "boots the test host"]
fn model_launches_reach_the_init() {
    let (bundle, _) = test_bundle();
    let dir = tempfile::tempdir().unwrap();
    // The model identity is made here: RSA-4096 key generation under TCG would take minutes.
    let psp = dir.path().join("psp");
    krun_psp_model::ModelIdentity::generate()
        .unwrap()
        .save(&psp)
        .unwrap();
    // An empty ext4 disk: the init reaches the key-source step and stops there (no LUKS
    // image, no broker), reporting the launch-failure status 125 through the exit port.
    let disk = dir.path().join("disk.img");
    fs::File::create(&disk).unwrap().set_len(16 << 20).unwrap();
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&disk)
        .status()
        .unwrap()
        .success());
    let cfg = |tee: &str| {
        let p = dir.path().join(format!("{tee}.json"));
        fs::write(
            &p,
            format!(r#"{{"workload_id":"w","cpus":2,"ram_mib":512,"tee":"{tee}","tee_data":"","attestation_url":""}}"#),
        )
        .unwrap();
        p
    };
    let script = r#"
export KRUN_SEV_BACKEND=model KRUN_SEV_BUNDLE_DIR=/bundle KRUN_SEV_PSP_MODEL_DIR=/psp
for t in sev-es snp; do
  /bin/krun-capi-run /disks/disk.img /cfg/$t.json 3 </dev/null; echo "STATUS_$t=$?"
done
KRUN_SEV_BACKEND= /bin/krun-capi-run /disks/disk.img /cfg/snp.json 3 </dev/null; echo "STATUS_HW=$?"
"#;
    let outcome = TestHost::new()
        .file(&bundle, "/bundle")
        .file(env!("CARGO_BIN_EXE_krun-capi-run"), "/bin/krun-capi-run")
        .file(&psp, "/psp")
        .file(&disk, "/disks/disk.img")
        .file(cfg("sev-es"), "/cfg/sev-es.json")
        .file(cfg("snp"), "/cfg/snp.json")
        .mem_mib(2048)
        .timeout(Duration::from_secs(400))
        .run(&["sh", "-c", script])
        .unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");
    assert!(
        out.contains("guest memory is NOT encrypted") || out.contains("NOT encrypted"),
        "{ctx}"
    );
    // The init ran and read the measured host.json.
    assert_eq!(
        marker(out, "launch: tee ")
            .iter()
            .map(|s| s.trim())
            .collect::<Vec<_>>(),
        ["SevEs, no key broker", "Snp, no key broker"],
        "{ctx}"
    );
    assert_eq!(marker(out, "STATUS_sev-es="), ["125"], "{ctx}");
    assert_eq!(marker(out, "STATUS_snp="), ["125"], "{ctx}");
    // The hardware backend refuses clearly instead of falling back.
    assert!(out.contains("SEV hardware backend unavailable"), "{ctx}");
    assert_eq!(marker(out, "STATUS_HW="), ["125"], "{ctx}");
    // The launches inside the test host (a QEMU "EPYC", family 0x17) measured what `krun-sev
    // measure` computes here on the build machine for the same TEE configs: the digest
    // depends on neither machine.
    for (tee, mode) in [("sev-es", TeeMode::SevEs), ("snp", TeeMode::Snp)] {
        let logged = marker(
            out,
            &format!("launch measurement ({tee}, 2 vCPUs, vcpu_sig "),
        );
        let (sig, digest) = logged
            .first()
            .and_then(|l| l.split_once("): "))
            .unwrap_or_else(|| panic!("no {tee} measurement logged; {ctx}"));
        assert_eq!(sig, "0xa00f11", "Milan's signature; {ctx}");
        let config = TeeConfig::parse(&fs::read(cfg(tee)).unwrap()).unwrap();
        let expected = expected_measurement(
            &MeasureRequest::from_tee_config(&config, bundle.clone(), false).unwrap(),
        )
        .unwrap();
        assert_eq!(expected.mode, mode);
        assert_eq!(logged.len(), 1, "{ctx}");
        assert_eq!(digest.trim(), expected.digest_hex(), "{tee}; {ctx}");
    }
}

#[test]
#[ignore = "boots the test host"]
fn sev_es_launch_gets_the_disk_key_from_the_broker() {
    let (bundle, _) = test_bundle();
    let dir = tempfile::tempdir().unwrap();
    let psp = dir.path().join("psp");
    let id = krun_psp_model::ModelIdentity::generate().unwrap();
    id.save(&psp).unwrap();
    let trust = dir.path().join("trust");
    krun_sev::tee::model::write_trust_roots(&id, &trust).unwrap();

    // A mkcw image (LUKS1, cheap PBKDF2 for TCG) whose workload prints a marker.
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs, &["sh", "echo", "nproc"]).unwrap();
    let image = dir.path().join("image");
    let out = image.clone();
    let cli = krun_sev_bin().unwrap();
    let status = Command::new(&cli)
        .args([
            "mkcw",
            // buildah's spelling ("sev" launches as SEV-ES); the init's footer parser does
            // not know "sev-es" yet (reported to its owner).
            "--tee",
            "sev",
            "--cpus",
            "2",
            "--ram-mib",
            "512",
            "--attestation-url",
            "http://127.0.0.1:8123",
            "--workload-id",
            "tee-e2e",
            "--passphrase",
            "broker-held passphrase",
            "--pbkdf2-iterations",
            "1000",
            "--env",
            "PATH=/bin",
            "--cmd",
            "/bin/sh",
            "--cmd",
            "-c",
            "--cmd",
            "echo SEV_ES_WORKLOAD_RAN CPUS=$(nproc); exit 7",
        ])
        .arg(&rootfs)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());

    let script = r#"
export KRUN_SEV_BACKEND=model KRUN_SEV_BUNDLE_DIR=/bundle KRUN_SEV_PSP_MODEL_DIR=/psp
M=$(/bin/krun-sev measure --tee-config /w/krun-sev.json)
echo "MEASURED=$M"
echo "broker-held passphrase" > /tmp/pp
/bin/krun-kbs --db /tmp/kbs.db workload add --id tee-e2e --tee sev --measurement "$M" --passphrase-file /tmp/pp
/bin/krun-kbs --listen 127.0.0.1:8123 --db /tmp/kbs.db --sev-trust-root /ark.cert > /tmp/kbs.log 2>&1 &
for i in $(seq 50); do grep -q listening /tmp/kbs.log && break; sleep 0.2; done
/bin/krun-sev run --disk /w/disk.img --tee-config /w/krun-sev.json --log-level 3 </dev/null
echo "STATUS=$?"
cat /tmp/kbs.log
"#;
    let outcome = TestHost::new()
        .file(&bundle, "/bundle")
        .file(&cli, "/bin/krun-sev")
        .file(krun_kbs_bin().unwrap(), "/bin/krun-kbs")
        .file(&psp, "/psp")
        .file(trust.join("ark.cert"), "/ark.cert")
        .file(out.join("disk.img"), "/w/disk.img")
        .file(out.join("krun-sev.json"), "/w/krun-sev.json")
        .mem_mib(2048)
        .timeout(Duration::from_secs(400))
        .run(&["sh", "-c", script])
        .unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");
    let measured = marker(out, "MEASURED=");
    assert_eq!(measured.len(), 1, "{ctx}");
    // Inside the test host and here on the build machine: one digest.
    assert_eq!(
        measured[0].trim(),
        build_machine_digest(&bundle, &image),
        "{ctx}"
    );
    assert!(out.contains("LAUNCH_SECRET"), "{ctx}");
    assert!(out.contains("SEV_ES_WORKLOAD_RAN CPUS=2"), "{ctx}");
    assert_eq!(marker(out, "STATUS="), ["7"], "{ctx}");
}

#[test]
#[ignore = "boots the test host"]
fn snp_launch_attests_from_the_guest_through_the_model() {
    let (bundle, _) = test_bundle();
    let dir = tempfile::tempdir().unwrap();
    let psp = dir.path().join("psp");
    let id = krun_psp_model::ModelIdentity::generate().unwrap();
    id.save(&psp).unwrap();
    let trust = dir.path().join("trust");
    krun_sev::tee::model::write_trust_roots(&id, &trust).unwrap();

    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs, &["sh", "echo", "nproc"]).unwrap();
    let image = dir.path().join("image");
    let out = image.clone();
    let cli = krun_sev_bin().unwrap();
    let status = Command::new(&cli)
        .args([
            "mkcw",
            "--tee",
            "snp",
            "--cpus",
            "2",
            "--ram-mib",
            "512",
            "--attestation-url",
            "http://127.0.0.1:8123",
            "--workload-id",
            "snp-e2e",
            "--passphrase",
            "snp broker passphrase",
            "--pbkdf2-iterations",
            "1000",
            "--env",
            "PATH=/bin",
            "--cmd",
            "/bin/sh",
            "--cmd",
            "-c",
            "--cmd",
            "echo SNP_WORKLOAD_RAN CPUS=$(nproc); exit 9",
        ])
        .arg(&rootfs)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    // The broker is given the digest the independent oracle computed here: the guest's own
    // report (model-signed, from inside the guest) must carry it, or no key is released.
    let (oracle, updates_sha) = oracle_digest(&bundle, &image, "snp-e2e");
    fs::write(out.join("oracle-digest"), &oracle).unwrap();

    let script = r#"
export KRUN_SEV_BACKEND=model KRUN_SEV_BUNDLE_DIR=/bundle KRUN_SEV_PSP_MODEL_DIR=/psp
M=$(/bin/krun-sev measure --tee-config /w/krun-sev.json)
echo "MEASURED=$M"
echo "snp broker passphrase" > /tmp/pp
/bin/krun-kbs --db /tmp/kbs.db workload add --id snp-e2e --tee snp --measurement "$(cat /w/oracle-digest)" --passphrase-file /tmp/pp
/bin/krun-kbs --listen 127.0.0.1:8123 --db /tmp/kbs.db --trust-root /roots.pem --vcek-dir /vcek > /tmp/kbs.log 2>&1 &
for i in $(seq 50); do grep -q listening /tmp/kbs.log && break; sleep 0.2; done
KRUN_SEV_DUMP_UPDATES=/tmp/updates.jsonl /bin/krun-sev run --disk /w/disk.img --tee-config /w/krun-sev.json --log-level 3 </dev/null
echo "STATUS=$?"
echo "UPDATES_SHA256=$(grep -e '"cmd":"update_' -e '"cmd":"snp_update"' /tmp/updates.jsonl | grep -v '"page_type":"cpuid"' | sha256sum | cut -d' ' -f1)"
cat /tmp/kbs.log
"#;
    let outcome = TestHost::new()
        .file(&bundle, "/bundle")
        .file(&cli, "/bin/krun-sev")
        .file(krun_kbs_bin().unwrap(), "/bin/krun-kbs")
        .file(&psp, "/psp")
        .file(trust.join("roots.pem"), "/roots.pem")
        .file(trust.join("vcek"), "/vcek")
        .file(out.join("disk.img"), "/w/disk.img")
        .file(out.join("krun-sev.json"), "/w/krun-sev.json")
        .file(out.join("oracle-digest"), "/w/oracle-digest")
        .mem_mib(2048)
        .timeout(Duration::from_secs(400))
        .run(&["sh", "-c", script])
        .unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");
    let measured = marker(out, "MEASURED=");
    assert_eq!(measured.len(), 1, "{ctx}");
    assert_eq!(
        measured[0].trim(),
        build_machine_digest(&bundle, &image),
        "{ctx}"
    );
    assert_eq!(
        measured[0].trim(),
        oracle,
        "measure in the test host vs the oracle; {ctx}"
    );
    // The launch (real nested KVM, the guest ran) issued exactly the measured updates the
    // oracle checked.
    assert_eq!(
        marker(out, "UPDATES_SHA256="),
        [updates_sha.as_str()],
        "{ctx}"
    );
    let logged = marker(out, "launch measurement (snp, 2 vCPUs, vcpu_sig ");
    assert!(
        logged
            .first()
            .is_some_and(|l| l.ends_with(measured[0].trim())),
        "{ctx}"
    );
    assert!(out.contains("SNP_WORKLOAD_RAN CPUS=2"), "{ctx}");
    assert_eq!(marker(out, "STATUS="), ["9"], "{ctx}");
}
