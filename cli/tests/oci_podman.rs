//! `krun-sev mkcw --oci-archive` / `--oci` images loaded by Debian's podman (ci/packages.txt)
//! into a private vfs store: podman names the image by its tag, its config has the
//! entrypoint buildah mkcw's images have, and its root file system is buildah's layout with
//! buildah's modes and mkcw's own disk.img and krun-sev.json. Only load, inspect and image
//! mount: no container runs.
//!
//! `cfg(krun_podman)` (build.rs): podman on PATH, or `make test` (`KRUN_TEST_REQUIRE_ORACLES=1`),
//! where a missing podman fails this test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const TAG: &str = "localhost/krun-sev-oci-test:v1";

/// podman with every piece of state under `store`, so the machine's images are untouched.
struct Podman {
    store: PathBuf,
}

impl Podman {
    fn new(store: PathBuf) -> Self {
        for d in ["root", "run", "tmp"] {
            fs::create_dir_all(store.join(d)).unwrap();
        }
        // Not the machine's storage.conf: this store only (the flags below say the same).
        let conf = format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
            store.join("run").display(),
            store.join("root").display()
        );
        fs::write(store.join("storage.conf"), conf).unwrap();
        // podman load stages an archive's blobs in image_copy_tmp_dir (default /var/tmp).
        let conf = format!(
            "[engine]\nimage_copy_tmp_dir = \"{}\"\n",
            store.join("tmp").display()
        );
        fs::write(store.join("containers.conf"), conf).unwrap();
        Self { store }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("podman")
            .arg("--root")
            .arg(self.store.join("root"))
            .arg("--runroot")
            .arg(self.store.join("run"))
            .arg("--tmpdir")
            .arg(self.store.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
            ])
            .args(args)
            .env("CONTAINERS_STORAGE_CONF", self.store.join("storage.conf"))
            .env("CONTAINERS_CONF", self.store.join("containers.conf"))
            .env("TMPDIR", self.store.join("tmp"))
            // podman names an image loaded from a layout directory after the path it was
            // given: relative paths below the test's directory.
            .current_dir(self.store.parent().unwrap())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run podman ({e}): install Debian's podman (ci/packages.txt)")
            });
        assert!(
            out.status.success(),
            "podman {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn inspect(&self, name: &str) -> Value {
        let out = self.run(&["image", "inspect", name]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0].clone()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn mkcw(dir: &Path) {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/hello"), b"hello\n").unwrap();
    fs::write(dir.join("pass"), b"oci-test-passphrase").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_krun-sev"))
        .current_dir(dir)
        .args([
            "mkcw",
            "rootfs",
            "out",
            "--tee",
            "snp",
            "--passphrase-file",
            "pass",
            "--pbkdf2-iterations",
            "1000",
            "--cmd",
            "/bin/hello",
            "--workload-id",
            "oci-test",
            "--oci-archive",
            "image.tar",
            "--oci",
            "layout",
            "--tag",
            TAG,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkcw: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode()
}

#[test]
#[cfg_attr(
    not(krun_podman),
    ignore = "needs podman (Debian package podman): make test runs it"
)]
fn podman_loads_the_oci_archive_with_buildahs_layout() {
    let dir = tempfile::tempdir().unwrap();
    mkcw(dir.path());
    let podman = Podman::new(dir.path().join("podman"));

    let loaded = podman.run(&["load", "-i", "image.tar"]);
    assert!(
        stdout(&loaded).contains(&format!("Loaded image: {TAG}")),
        "{}",
        stdout(&loaded)
    );
    let image = podman.inspect(TAG);
    assert_eq!(
        image["Config"]["Entrypoint"],
        serde_json::json!(["/entrypoint"])
    );
    assert!(image["Config"]["Cmd"].is_null(), "{}", image["Config"]);
    assert_eq!(image["Architecture"], "amd64");
    assert_eq!(image["Os"], "linux");
    assert_eq!(image["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    assert!(image["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == TAG));

    // The root file system podman unpacked from the layer.
    let mount = stdout(&podman.run(&["image", "mount", TAG]));
    let root = Path::new(mount.trim());
    let mut names: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["disk.img", "entrypoint", "krun-sev.json", "tmp"]);
    let expect = [
        ("", 0o040_555),
        ("disk.img", 0o100_600),
        ("krun-sev.json", 0o100_600),
        ("entrypoint", 0o100_755),
        ("tmp", 0o041_777),
    ];
    for (name, want) in expect {
        let path = root.join(name);
        assert_eq!(mode(&path), want, "mode of /{name}: {:o}", mode(&path));
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "owner of /{name}");
    }
    assert!(fs::read_dir(root.join("tmp")).unwrap().next().is_none());
    assert!(
        fs::read(root.join("disk.img")).unwrap()
            == fs::read(dir.path().join("out/disk.img")).unwrap(),
        "/disk.img differs from mkcw's out/disk.img"
    );
    let config = fs::read(root.join("krun-sev.json")).unwrap();
    assert_eq!(
        config,
        fs::read(dir.path().join("out/krun-sev.json")).unwrap()
    );
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["workload_id"], "oci-test");
    // The entrypoint, run as a program (not a container): the notice, status 1.
    let ran = Command::new(root.join("entrypoint")).output().unwrap();
    assert_eq!(ran.status.code(), Some(1));
    let notice = String::from_utf8(ran.stderr).unwrap();
    assert!(notice.contains("podman run --runtime krun"), "{notice:?}");
    podman.run(&["image", "unmount", TAG]);

    // The --oci layout directory from the same run is the same image (same config digest,
    // so the same image ID).
    let from_dir = podman.run(&["load", "-i", "layout"]);
    let name = stdout(&from_dir)
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: ").map(str::to_owned))
        .unwrap_or_else(|| panic!("{}", stdout(&from_dir)));
    assert_eq!(podman.inspect(&name)["Id"], image["Id"]);
    podman.run(&["rmi", "--all"]);
}
