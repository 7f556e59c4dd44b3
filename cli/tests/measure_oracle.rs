//! `krun-sev measure` against an independent oracle (`tests/oracle/measure_oracle.py`,
//! sev-snp-measure): for SEV, SEV-ES and SNP the oracle recomputes the digest from the dumped
//! launch updates (`--dump-updates`), rebuilds the kernel, initrd and VMSAs from the bundle
//! files and sev-snp-measure, and must agree with the digest `measure` prints; a dump with one
//! byte changed or two regions swapped must make it fail.
//!
//! Needs the oracles' Python (`KRUN_SEV_PYTHON`, build.rs `cfg(krun_oracles)`); the
//! real-bundle test also needs the guest bundle and runs in `ci/testhost-tests.sh` after the
//! bundle is built.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;

const ORACLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/oracle/measure_oracle.py"
);
const WORKLOAD: &str = "oracle-workload";

/// The launches checked: (TEE config `tee`, oracle `--tee`).
const TEES: &[(&str, &str)] = &[("sev-no-es", "sev"), ("sev", "sev-es"), ("snp", "snp")];

fn python() -> String {
    std::env::var("KRUN_SEV_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| panic!("KRUN_SEV_PYTHON is not set (make test-deps makes the venv)"))
}

/// A bzImage (boot protocol 2.15 header, 3 setup sectors) whose protected-mode part is 5000
/// bytes, so the oracle's own header parsing and page padding are exercised.
fn tiny_bzimage() -> Vec<u8> {
    let setup_sects = 3u8;
    let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x201] = 0x6a; // the header ends at 0x26c
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x211] = 0x81; // LOADED_HIGH | CAN_USE_HEAP
    f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    f[0x234] = 1; // relocatable_kernel
    f[0x236..0x238].copy_from_slice(&3u16.to_le_bytes()); // XLF_KERNEL_64 | above 4G
    f[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
    f[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes()); // init_size
    f.extend((0..5000u32).map(|i| (i % 251).to_le_bytes()[0]));
    f
}

fn fake_bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    let initrd: Vec<u8> = [0x1f, 0x8b, 8, 0]
        .into_iter()
        .chain((0..12_345u32).map(|i| (i * 7).to_le_bytes()[0]))
        .collect();
    krun_bundle::write_bundle(
        &bundle,
        &krun_bundle::BundleContents {
            kernel: &tiny_bzimage(),
            kernel_version: "6.12-oracle-test",
            nr_cpus: 8,
            initrd: &initrd,
            firmware: None,
        },
    )
    .unwrap();
    bundle
}

/// `krun-sev measure --tee-config` with `--dump-updates`: the digest it prints and the dump.
fn measure(dir: &Path, bundle: &Path, tee: &str) -> (String, PathBuf) {
    let cfg = dir.join(format!("{tee}.json"));
    std::fs::write(
        &cfg,
        format!(
            r#"{{"workload_id":"{WORKLOAD}","cpus":2,"ram_mib":512,"tee":"{tee}","tee_data":"","attestation_url":"http://127.0.0.1:8000"}}"#
        ),
    )
    .unwrap();
    let dump = dir.join(format!("{tee}.updates.jsonl"));
    let out = Command::new(env!("CARGO_BIN_EXE_krun-sev"))
        .args(["measure", "--tee-config"])
        .arg(&cfg)
        .arg("--bundle")
        .arg(bundle)
        .arg("--dump-updates")
        .arg(&dump)
        .env(
            "KRUN_SEV_PSP_MODEL_DIR",
            support::psp_model_dir().join("psp"),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "krun-sev measure failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        dump,
    )
}

fn oracle(dump: &Path, bundle: &Path, tee: &str, expect: Option<&str>) -> Output {
    let mut cmd = Command::new(python());
    cmd.arg(ORACLE)
        .arg("--dump")
        .arg(dump)
        .arg("--bundle")
        .arg(bundle)
        .args(["--tee", tee, "--vcpus", "2", "--ram-mib", "512"])
        // tee_data names no generation: the default vCPU model, EPYC-Milan.
        .args(["--vcpu-type", "EPYC-Milan", "--workload-id", WORKLOAD]);
    if let Some(d) = expect {
        cmd.args(["--expect-digest", d]);
    }
    cmd.output().unwrap()
}

fn answer(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "oracle output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The oracle agrees with `measure` and checked every rebuilt region.
fn agrees(bundle: &Path, dir: &Path, conf_tee: &str, tee: &str) -> (String, PathBuf) {
    let (digest, dump) = measure(dir, bundle, conf_tee);
    let out = oracle(&dump, bundle, tee, Some(&digest));
    let a = answer(&out);
    assert!(
        out.status.success(),
        "{tee}: oracle disagrees: {a}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a["digest"], digest.as_str(), "{tee}");
    let mut want = vec![
        "digest",
        "order",
        "kernel",
        "initrd",
        "cmdline",
        "boot_params",
        "mptable",
    ];
    if tee != "sev" {
        want.push("vmsas");
    }
    assert_eq!(a["checked"], serde_json::json!(want), "{tee}");
    (digest, dump)
}

/// The dump's lines, and rewriting them.
fn lines(dump: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dump)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_lines(path: &Path, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// Flips one byte of the data of the first command at `gpa`.
fn flip_byte(lines: &mut [serde_json::Value], gpa: u64, at: usize) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let l = lines.iter_mut().find(|l| l["gpa"] == gpa).unwrap();
    let mut data = b64.decode(l["data"].as_str().unwrap()).unwrap();
    data[at] ^= 0x01;
    l["data"] = b64.encode(&data).into();
}

/// The oracle fails on `lines` (with and without the expected digest) and says `why`.
fn refuses(
    dir: &Path,
    bundle: &Path,
    tee: &str,
    digest: &str,
    lines: &[serde_json::Value],
    why: &str,
) {
    let path = dir.join("tampered.jsonl");
    write_lines(&path, lines);
    for expect in [None, Some(digest)] {
        let out = oracle(&path, bundle, tee, expect);
        assert!(
            !out.status.success(),
            "{tee}: oracle accepted a tampered dump ({why})"
        );
        let error = answer(&out)["error"].as_str().unwrap().to_owned();
        assert!(error.contains(why), "{tee}: {error:?} does not say {why:?}");
    }
}

#[test]
#[cfg_attr(
    not(krun_oracles),
    ignore = "needs the Python oracles (KRUN_SEV_PYTHON): make test runs it"
)]
fn measure_agrees_with_the_independent_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fake_bundle(dir.path());
    for (conf_tee, tee) in TEES {
        let (digest, dump) = agrees(&bundle, dir.path(), conf_tee, tee);
        let original = lines(&dump);

        // One byte of the kernel region: the oracle's own rebuild from the bzImage catches it.
        let mut l = original.clone();
        flip_byte(&mut l, 0x100_0000, 4999);
        refuses(
            dir.path(),
            &bundle,
            tee,
            &digest,
            &l,
            "kernel region differs",
        );
        // The kernel's setup header in boot_params (kernel_alignment), and the firmware's
        // kernel entry: the oracle rebuilds both from the bzImage.
        let mut l = original.clone();
        flip_byte(&mut l, 0x7000, 0x231);
        refuses(
            dir.path(),
            &bundle,
            tee,
            &digest,
            &l,
            "setup header differs",
        );
        let mut l = original.clone();
        flip_byte(&mut l, 0xFFFF_E000, 0x1020);
        refuses(dir.path(), &bundle, tee, &digest, &l, "kernel entry");
        // One byte of the initrd region's bundle initrd.
        let mut l = original.clone();
        flip_byte(&mut l, 0x400_0000, 100);
        refuses(dir.path(), &bundle, tee, &digest, &l, "bundle initrd");

        // One byte of the firmware region, which the oracle does not rebuild: only the
        // digest shows it.
        let mut l = original.clone();
        flip_byte(&mut l, 0xFFFF_E000, 0x10);
        let path = dir.path().join("firmware.jsonl");
        write_lines(&path, &l);
        let out = oracle(&path, &bundle, tee, Some(&digest));
        assert!(!out.status.success(), "{tee}: firmware byte not noticed");
        assert!(answer(&out)["error"]
            .as_str()
            .unwrap()
            .contains("!= expected"));

        // Two regions swapped: boot_params and the command line.
        let mut l = original.clone();
        let i = l.iter().position(|x| x["gpa"] == 0x7000).unwrap();
        let j = l.iter().position(|x| x["gpa"] == 0x20000).unwrap();
        l.swap(i, j);
        refuses(dir.path(), &bundle, tee, &digest, &l, "documented order");

        if *tee != "sev" {
            // The two VMSAs swapped (vCPU 0 is the BSP, vCPU 1 an AP).
            let mut l = original.clone();
            let v: Vec<usize> = (0..l.len())
                .filter(|&k| l[k]["cmd"] == "update_vmsa")
                .collect();
            assert_eq!(v.len(), 2, "{tee}");
            let first = l[v[0]]["data"].clone();
            l[v[0]]["data"] = l[v[1]]["data"].clone();
            l[v[1]]["data"] = first;
            refuses(dir.path(), &bundle, tee, &digest, &l, "VMSA of vCPU 0");
        }
    }
}

/// The same against the real guest bundle (`build/bundle` or `KRUN_SEV_BUNDLE_DIR`), built
/// by `ci/testhost-tests.sh` before it runs this test.
#[test]
#[ignore = "needs the guest bundle: ci/testhost-tests.sh runs it"]
fn measure_agrees_with_the_oracle_on_the_real_bundle() {
    let bundle = std::env::var_os("KRUN_SEV_BUNDLE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/bundle"));
    krun_bundle::Bundle::load(&bundle).unwrap_or_else(|e| {
        panic!(
            "no valid guest bundle in {} ({e}): firmware/build-bundle.sh",
            bundle.display()
        )
    });
    let dir = tempfile::tempdir().unwrap();
    for (conf_tee, tee) in TEES {
        let (digest, _) = agrees(&bundle, dir.path(), conf_tee, tee);
        eprintln!(
            "[measure-oracle] real bundle, {tee}: oracle and krun-sev measure agree on {digest}"
        );
    }
}
