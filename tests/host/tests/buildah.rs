//! Issue 21 acceptance: images made by the real `buildah mkcw` (Debian 13's buildah 1.39, in
//! the chroot `ci/trixie-chroot.sh` makes) run in the test host, `--type snp` and `--type
//! sev` (SEV-ES), with buildah's own registration and no other.
//!
//! On the build machine, inside a throw-away overlay of the chroot that holds what `make
//! install PREFIX=/usr/local` puts there for buildah (`libkrunfw-sev.so.4` in
//! `/usr/local/lib`, `krunfw_measurement` in `/usr/local/bin`) and the sevctl stand-in
//! (`ci/sevctl-model` as `sevctl`, with the PSP model's chain): buildah commits a base image
//! holding one static program, runs `buildah mkcw --attestation-url` with no
//! `--firmware-library` (it finds the library and the tool itself), and registers the image
//! at a `krun-kbs --insecure-registration --bundle --public-url` on this machine. In one
//! test-host boot the broker serves the same database on the same port and URL; `krun-sev
//! run` (PSP model) runs both images, and a launch of the SEV image with another vCPU count
//! than registered gets no key. Launches without a broker there have the SEV, SEV-ES and SNP
//! digests the installed `krunfw_measurement -c 2 -m 512` printed in the chroot. Needs root (chroot, mounts), debootstrap on first use and
//! `make krunfw`; `ci/testhost-tests.sh` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use krun_sev::launch::{expected_measurement, MeasureRequest};
use krun_sev::resources::TeeConfig;
use krun_testhost::{
    krun_kbs_bin, krun_sev_bin, launch_measurements, marker_values, rootfs::workspace_bin,
    test_bundle, TestHost,
};

/// Two launches whose LUKS keyslots buildah calibrated to about 1 s on the build machine,
/// under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1500);

/// One image: buildah's `--type`, workload id, passphrase, the program's marker and status,
/// and the launch mode the digest is logged under.
struct Image {
    ty: &'static str,
    id: &'static str,
    passphrase: &'static str,
    marker: &'static str,
    status: &'static str,
    mode: &'static str,
}

const IMAGES: [Image; 2] = [
    Image {
        ty: "snp",
        id: "buildah-snp",
        passphrase: "buildah-pass-snp",
        marker: "BUILDAH_SNP_RAN",
        status: "23",
        mode: "snp",
    },
    Image {
        ty: "sev",
        id: "buildah-sev",
        passphrase: "buildah-pass-sev",
        marker: "BUILDAH_SEV_RAN",
        status: "24",
        mode: "sev-es",
    },
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd` and returns its stdout; panics with its output when it fails.
fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A krun-kbs process, killed on drop.
struct Broker(Child);

impl Broker {
    fn start(args: &[&std::ffi::OsStr]) -> Broker {
        let mut child = Command::new(krun_kbs_bin().unwrap())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("krun-kbs listening on "), "{line:?}");
        Broker(child)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `LABEL:` line's digest in `krunfw_measurement`'s output.
fn krunfw_line<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label}: line in {out:?}"))
}

#[test]
#[ignore = "needs a KVM that boots guests: runs in the test host"]
fn real_buildah_mkcw_images_registered_by_buildah_run() {
    assert!(
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n"),
        "the buildah chroot needs root (chroot and mounts)"
    );
    let repo = repo();
    let (bundle, _) = test_bundle();
    let krunfw = repo.join("build/libkrunfw-sev.so.4");
    assert!(
        krunfw.exists(),
        "{} missing: run make krunfw",
        krunfw.display()
    );
    let measurement_tool = workspace_bin("krunfw_measurement", "krun-sev-cli").unwrap();
    let chroot_script = repo.join("ci/trixie-chroot.sh");
    // Made on first use (debootstrap, a few minutes), then cached.
    let trixie = PathBuf::from(output(&mut Command::new(&chroot_script)).trim());
    let buildah_version = fs::read_to_string(trixie.join("buildah-version")).unwrap();
    assert!(
        buildah_version.starts_with("buildah version 1.39"),
        "{buildah_version}"
    );

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The model identity is made here: RSA-4096 key generation under TCG takes minutes.
    let id = krun_psp_model::ModelIdentity::generate().unwrap();
    id.save(&d.join("psp")).unwrap();
    let trust = d.join("trust");
    krun_sev::tee::model::write_trust_roots(&id, &trust).unwrap();

    // What the chroot gets on top of the cached root: the pieces `make install
    // PREFIX=/usr/local` installs for buildah, the sevctl stand-in and the workload program.
    let work = d.join("chroot");
    let upper = work.join("upper");
    for (from, to) in [
        (&krunfw, "usr/local/lib/libkrunfw-sev.so.4"),
        (&measurement_tool, "usr/local/bin/krunfw_measurement"),
        (&repo.join("ci/sevctl-model"), "usr/local/bin/sevctl"),
        (&trust.join("sev.chain"), "etc/krun-sev/sev.chain"),
    ] {
        let to = upper.join(to);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(from, &to).unwrap();
    }
    // buildah's store: vfs (no overlay mounts of its own inside the chroot).
    fs::create_dir_all(upper.join("etc/containers")).unwrap();
    fs::write(
        upper.join("etc/containers/storage.conf"),
        "[storage]\ndriver = \"vfs\"\nrunroot = \"/run/containers/storage\"\n\
         graphroot = \"/var/lib/containers/storage\"\n",
    )
    .unwrap();
    let program = upper.join("work/exit_marker");
    fs::create_dir_all(program.parent().unwrap()).unwrap();
    output(
        Command::new("cc")
            .args(["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&program)
            .arg(repo.join("tests/c/exit_marker.c")),
    );

    // The broker buildah registers at, on this machine.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let db_dir = d.join("kbs");
    fs::create_dir_all(&db_dir).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let broker = Broker::start(&[
        "--listen".as_ref(),
        listen.as_ref(),
        "--db".as_ref(),
        db_dir.join("kbs.db").as_os_str(),
        "--insecure-registration".as_ref(),
        "--bundle".as_ref(),
        bundle.as_os_str(),
        "--public-url".as_ref(),
        url.as_ref(),
    ]);

    let mut script = String::from(
        "set -eu\nexport BUILDAH_ISOLATION=chroot\n\
         krunfw_measurement -c 1 -m 512 /usr/local/lib/libkrunfw-sev.so.4 > /work/krunfw.txt\n\
         krunfw_measurement -c 2 -m 512 /usr/local/lib/libkrunfw-sev.so.4 > /work/krunfw-2.txt\n",
    );
    for i in &IMAGES {
        script.push_str(&format!(
            r#"c=$(buildah from scratch)
buildah copy "$c" /work/exit_marker /exit_marker
buildah config --entrypoint '["/exit_marker", "{marker}", "{status}"]' "$c"
buildah commit -q "$c" localhost/base-{ty}
buildah mkcw --type {ty} --attestation-url {url} --workload-id {id} --passphrase {pass} \
    --cpus 1 --memory 512 localhost/base-{ty} localhost/cw-{ty}
c=$(buildah from localhost/cw-{ty})
m=$(buildah mount "$c")
mkdir -p /work/out/{ty}
cp -a "$m"/. /work/out/{ty}/
buildah umount "$c"
echo "MKCW_{ty}=ok"
"#,
            marker = i.marker,
            status = i.status,
            ty = i.ty,
            id = i.id,
            pass = i.passphrase,
        ));
    }
    let built = Command::new(&chroot_script)
        .arg("run")
        .arg(&work)
        .args(["--", "/bin/sh", "-c", &script])
        .output()
        .unwrap();
    let built_out = format!(
        "{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(
        built.status.success(),
        "buildah in the chroot:\n{built_out}"
    );
    drop(broker);
    for i in &IMAGES {
        assert_eq!(
            marker_values(&built_out, &format!("MKCW_{}=", i.ty)),
            ["ok"],
            "{built_out}"
        );
    }

    // What buildah registered: krunfw_measurement's unbound digest for 1 vCPU and 512 MiB,
    // the same as the installed tool prints for the library and this tool for the bundle.
    let krunfw_out = fs::read_to_string(upper.join("work/krunfw.txt")).unwrap();
    let from_dir = output(
        Command::new(&measurement_tool)
            .args(["-c", "1", "-m", "512"])
            .arg(&bundle),
    );
    for label in ["SEV", "SEV-ES", "SNP"] {
        assert_eq!(
            krunfw_line(&krunfw_out, label),
            krunfw_line(&from_dir, label),
            "{label}: the library's digest differs from the bundle's"
        );
    }
    let listed = output(
        Command::new(krun_kbs_bin().unwrap())
            .arg("--db")
            .arg(db_dir.join("kbs.db"))
            .args(["workload", "list"]),
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let out_dir = upper.join("work/out");
    let mut host = TestHost::new()
        .file(&bundle, "/bundle")
        .file(krun_sev_bin().unwrap(), "/bin/krun-sev")
        .file(krun_kbs_bin().unwrap(), "/bin/krun-kbs")
        .file(d.join("psp"), "/psp")
        .file(&trust, "/trust")
        .file(&db_dir, "/kbs")
        .mem_mib(2048)
        .timeout(BOOT_TIMEOUT);
    let mut bound_digests = Vec::new();
    for i in &IMAGES {
        let image = out_dir.join(i.ty);
        // buildah's image root: its entrypoint, the disk and the TEE config.
        for f in ["entrypoint", "disk.img", "krun-sev.json"] {
            assert!(
                image.join(f).is_file(),
                "{f} missing in {}",
                image.display()
            );
        }
        let config = TeeConfig::parse(&fs::read(image.join("krun-sev.json")).unwrap()).unwrap();
        let registered = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == i.id)
            .unwrap_or_else(|| panic!("{} not registered: {listed}", i.id));
        assert_eq!(registered["measurement_kind"], "unbound", "{registered}");
        let label = if i.ty == "snp" { "SNP" } else { "SEV-ES" };
        assert_eq!(
            registered["measurements"],
            serde_json::json!([krunfw_line(&krunfw_out, label)]),
            "{}: buildah registered what krunfw_measurement printed",
            i.id
        );
        if i.ty == "sev" {
            // The sevctl stand-in's chain, shipped as /sev.chain.
            assert_eq!(
                fs::read(image.join("sev.chain")).unwrap(),
                id.sev_chain_bytes()
            );
        }
        // The digest the launch will have, computed here.
        let req = MeasureRequest::from_tee_config(&config, bundle.clone(), false).unwrap();
        bound_digests.push(expected_measurement(&req).unwrap().digest_hex());
        host = host.file(&image, &format!("/img/{}", i.ty));
    }

    let script = format!(
        r#"
export PATH=/usr/sbin:$PATH KRUN_SEV_BACKEND=model KRUN_SEV_BUNDLE_DIR=/bundle KRUN_SEV_PSP_MODEL_DIR=/psp
mkdir -p /tmp/kbs && cp /kbs/* /tmp/kbs/
krun-kbs --listen 127.0.0.1:{port} --db /tmp/kbs/kbs.db --bundle /bundle --public-url {url} \
  --sev-trust-root /trust/ark.cert --trust-root /trust/roots.pem --vcek-dir /trust/vcek \
  > /tmp/kbs.log 2>&1 &
for i in $(seq 300); do grep -q listening /tmp/kbs.log && break; sleep 0.2; done
grep -q listening /tmp/kbs.log && echo KBS_UP=yes
run() {{ krun-sev run --log-level 3 "$@" </dev/null; }}
run /img/snp; echo "STATUS_snp=$?"
run /img/sev; echo "STATUS_sev=$?"
# The SEV image with 2 vCPUs: not the launch buildah registered.
sed 's/"cpus": *1/"cpus":2/' /img/sev/krun-sev.json > /tmp/sev-2.json
grep -q '"cpus":2' /tmp/sev-2.json && echo TAMPERED_CONFIG=ok
run --disk /img/sev/disk.img --tee-config /tmp/sev-2.json; echo "STATUS_cpus2=$?"
# Launches without a broker (unbound), 2 vCPUs: what krunfw_measurement -c 2 -m 512 describes.
for t in sev_no_es sev-es snp; do
  printf '{{"tee":"%s","tee_data":"{{}}","cpus":2,"ram_mib":512,"workload_id":"","attestation_url":""}}' $t > /tmp/unbound-$t.json
  run --disk /img/snp/disk.img --tee-config /tmp/unbound-$t.json; echo "STATUS_UNBOUND_$t=$?"
done
cat /tmp/kbs.log
"#
    );
    let outcome = host.run(&["sh", "-c", &script]).unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");
    assert_eq!(marker_values(out, "KBS_UP="), ["yes"], "{ctx}");
    for (i, bound) in IMAGES.iter().zip(&bound_digests) {
        assert_eq!(
            marker_values(out, &format!("{} ", i.marker)),
            ["CPUS=1"],
            "{}: {ctx}",
            i.ty
        );
        assert_eq!(
            marker_values(out, &format!("STATUS_{}=", i.ty)),
            [i.status],
            "{ctx}"
        );
        // The launch had the digest `krun-sev measure` computes for the image here.
        assert!(
            launch_measurements(out, i.mode).contains(&bound.as_str()),
            "{}: {bound} not launched; {ctx}",
            i.ty
        );
        let released = out
            .lines()
            .filter(|l| l.contains("key released") && l.contains(&format!("workload={}", i.id)))
            .count();
        assert_eq!(released, 1, "{}: {ctx}", i.id);
    }
    // Another vCPU count: no registered digest, no key, the VM never starts.
    assert_eq!(marker_values(out, "TAMPERED_CONFIG="), ["ok"], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_cpus2="), ["125"], "{ctx}");
    assert!(out.contains("has no registered digest"), "{ctx}");
    assert_eq!(marker_values(out, "BUILDAH_SEV_RAN ").len(), 1, "{ctx}");
    assert_eq!(out.matches("key released").count(), 2, "{ctx}");
    // One digest on every machine: the installed krunfw_measurement's lines, printed on the
    // build machine for the library, are the digests the unbound launches in the test host
    // had, for SEV, SEV-ES and SNP.
    let krunfw_2 = fs::read_to_string(upper.join("work/krunfw-2.txt")).unwrap();
    assert!(
        krunfw_2.starts_with("Measurements for 2 vCPU(s) and 512 MB of RAM\n"),
        "{krunfw_2}"
    );
    for (label, mode, tee) in [
        ("SEV", "sev", "sev_no_es"),
        ("SEV-ES", "sev-es", "sev-es"),
        ("SNP", "snp", "snp"),
    ] {
        assert_eq!(
            marker_values(out, &format!("STATUS_UNBOUND_{tee}=")).len(),
            1,
            "{ctx}"
        );
        let want = krunfw_line(&krunfw_2, label);
        let launched: Vec<_> = launch_measurements(out, mode)
            .into_iter()
            .filter(|m| *m == want)
            .collect();
        assert_eq!(launched.len(), 1, "{label} {want} not launched; {ctx}");
    }
}
