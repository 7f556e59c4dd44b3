//! `krun-sev mkcw` end to end on the host: the image it writes is accepted by cryptsetup,
//! carries the footer, and decrypts to an ext4 file system holding the workload config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use krun_luks::Header;
use krun_sev::resources::{read_footer, TeeKind};

fn krun_sev(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_krun-sev"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `krun-sev` with `input` on its standard input.
fn krun_sev_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_krun-sev"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mkcw-test-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/hello"), b"hello world\n").unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hostname"), b"cw\n").unwrap();
    root
}

fn cryptsetup_accepts(disk: &Path, pass: &str) {
    let dump = Command::new("cryptsetup")
        .arg("luksDump")
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut child = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file", "-"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pass.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "cryptsetup refused the passphrase"
    );
}

/// Decrypts the payload with the LUKS crate and reads a file out of the ext4 image.
fn read_from_image(disk: &Path, pass: &str, file: &str, work: &Path) -> Vec<u8> {
    let mut f = fs::File::open(disk).unwrap();
    let header = Header::read(&mut f).unwrap();
    let key = header.unlock(pass.as_bytes()).unwrap();
    let payload = *header.payload();
    let cipher = payload.cipher(&key).unwrap();
    let offset = payload.offset;
    let size = f.metadata().unwrap().len();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut data = vec![0u8; usize::try_from(size - offset).unwrap()];
    f.read_exact(&mut data).unwrap();
    let sector = usize::try_from(payload.sector_size).unwrap();
    let whole = data.len() / sector * sector;
    cipher.decrypt(0, &mut data[..whole]).unwrap();
    let plain = work.join("decrypted.img");
    fs::write(&plain, &data[..whole]).unwrap();
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(&plain)
        .output()
        .unwrap();
    out.stdout
}

#[test]
fn luks1_image_like_buildah() {
    let dir = workdir("luks1");
    let root = rootfs(&dir);
    let out = dir.join("out");
    let o = krun_sev(&[
        "mkcw",
        root.to_str().unwrap(),
        out.to_str().unwrap(),
        "--tee",
        "snp",
        "--cpus",
        "2",
        "--ram-mib",
        "256",
        "--passphrase",
        "s3cret pass",
        "--workload-id",
        "wl-1",
        "--attestation-url",
        "http://127.0.0.1:8000",
        "--pbkdf2-iterations",
        "1000",
        "--entrypoint",
        "/bin/sh",
        "--entrypoint",
        "-c",
        "--cmd",
        "cat /bin/hello",
        "--env",
        "GREETING=hi",
        "--workdir",
        "/etc",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let disk = out.join("disk.img");
    let size = fs::metadata(&disk).unwrap().len();
    assert_eq!(size % 4096, 0, "image size {size} is not 4096-aligned");

    let footer = read_footer(&disk).unwrap().expect("footer");
    let file_cfg = krun_sev::resources::tee_config::load_file(&out.join("krun-sev.json")).unwrap();
    assert_eq!(footer, file_cfg);
    assert_eq!(footer.tee, TeeKind::Snp);
    assert_eq!((footer.cpus, footer.ram_mib), (2, 256));
    assert_eq!(footer.workload_id, "wl-1");
    assert_eq!(footer.attestation_url, "http://127.0.0.1:8000");

    let header = Header::read(&mut fs::File::open(&disk).unwrap()).unwrap();
    assert_eq!(header.payload().offset, 4040 * 512, "luksy payload offset");
    cryptsetup_accepts(&disk, "s3cret pass");
    assert!(
        !out.join("passphrase").exists(),
        "a given passphrase is not written out"
    );
    // The passphrase on the command line works, with a warning that says what to use.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("warning: --passphrase puts the passphrase on the command line"),
        "{stderr}"
    );
    assert!(stderr.contains("--passphrase-file -"), "{stderr}");

    let cfg: serde_json::Value = serde_json::from_slice(&read_from_image(
        &disk,
        "s3cret pass",
        "/.krun_config.json",
        &dir,
    ))
    .unwrap();
    assert_eq!(
        cfg["config"]["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c"])
    );
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["cat /bin/hello"]));
    assert_eq!(cfg["config"]["Env"], serde_json::json!(["GREETING=hi"]));
    assert_eq!(cfg["config"]["WorkingDir"], serde_json::json!("/etc"));
    assert_eq!(
        read_from_image(&disk, "s3cret pass", "/bin/hello", &dir),
        b"hello world\n"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn luks2_from_tar_with_generated_passphrase() {
    let dir = workdir("luks2");
    let root = rootfs(&dir);
    let tar = dir.join("rootfs.tar");
    assert!(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let out = dir.join("out");
    let o = krun_sev(&[
        "mkcw",
        tar.to_str().unwrap(),
        out.to_str().unwrap(),
        "--tee",
        "sev",
        "--vendor-chain",
        "/sev.chain",
        "--attestation-url",
        "http://kbs.example:8000",
        "--luks",
        "luks2",
        "--pbkdf2-iterations",
        "1000",
        "--cmd",
        "/bin/hello",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pass_file = out.join("passphrase");
    let pass = fs::read_to_string(&pass_file).unwrap();
    assert_eq!(pass.len(), 64);
    assert_eq!(
        fs::metadata(&pass_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let disk = out.join("disk.img");
    cryptsetup_accepts(&disk, &pass);
    let footer = read_footer(&disk).unwrap().unwrap();
    assert_eq!(footer.tee, TeeKind::Sev);
    assert_eq!(footer.vendor_chain(), Some("/sev.chain"));
    assert_eq!(footer.workload_id.len(), 64);
    // Like buildah's: only the owner reads the image.
    assert_eq!(
        fs::metadata(&disk).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        read_from_image(&disk, &pass, "/etc/hostname", &dir),
        b"cw\n"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn passphrase_from_standard_input() {
    let dir = workdir("stdin");
    let root = rootfs(&dir);
    let out = dir.join("out");
    let (r, o) = (root.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "mkcw",
        r,
        o,
        "--tee",
        "snp",
        "--attestation-url",
        "http://127.0.0.1:8000",
        "--passphrase-file",
        "-",
        "--pbkdf2-iterations",
        "1000",
        "--cmd",
        "/bin/hello",
    ];
    let run = krun_sev_stdin(&args, b"piped s3cret\n");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(!stderr.contains("piped s3cret"), "{stderr}");
    cryptsetup_accepts(&out.join("disk.img"), "piped s3cret");
    assert!(!out.join("passphrase").exists());
    // Nothing on standard input is an error, not an empty passphrase.
    let empty = krun_sev_stdin(&args, b"\n");
    assert_eq!(empty.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&empty.stderr)
            .contains("the passphrase on standard input is empty"),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_bad_arguments() {
    let dir = workdir("bad");
    let root = rootfs(&dir);
    let out = dir.join("out");
    let (r, o) = (root.to_str().unwrap(), out.to_str().unwrap());
    // Neither a broker nor a passphrase: nobody could ever unlock the disk.
    let no_key = krun_sev(&["mkcw", r, o, "--tee", "snp", "--cmd", "/bin/hello"]);
    assert_eq!(no_key.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("--attestation-url"));
    // No command.
    let no_cmd = krun_sev(&["mkcw", r, o, "--tee", "snp", "--passphrase", "p"]);
    assert_eq!(no_cmd.status.code(), Some(125));
    // Out-of-range vCPUs are refused by the same validation the library applies.
    let cpus = krun_sev(&[
        "mkcw",
        r,
        o,
        "--tee",
        "snp",
        "--passphrase",
        "p",
        "--cmd",
        "/x",
        "--cpus",
        "64",
    ]);
    assert_eq!(cpus.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&cpus.stderr).contains("cpus"));
    // A missing root file system.
    let missing = krun_sev(&[
        "mkcw",
        "/nonexistent",
        o,
        "--tee",
        "snp",
        "--passphrase",
        "p",
        "--cmd",
        "/x",
    ]);
    assert_eq!(missing.status.code(), Some(125));
    // SNP reports carry their own chain: a SEV vendor chain makes no sense there.
    let chain = krun_sev(&[
        "mkcw",
        r,
        o,
        "--tee",
        "snp",
        "--passphrase",
        "p",
        "--cmd",
        "/x",
        "--vendor-chain",
        "/sev.chain",
    ]);
    assert_eq!(chain.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&chain.stderr).contains("--vendor-chain"));
    assert!(!out.join("disk.img").exists());
    fs::remove_dir_all(&dir).unwrap();
}
