//! Issue 5 acceptance through a real guest: LUKS-encrypted root disks laid out like
//! `buildah mkcw` (LUKS1 with luksy's 4040-sector payload offset, LUKS2 with Argon2id and
//! 4096-byte sectors, KRUN footer) boot under the library's VMM inside the nested-KVM test
//! host with a development passphrase. The same test-host run checks that a wrong
//! passphrase fails cleanly without writing the disk, and that `cryptsetup open` (the
//! independent oracle) and the init's own dm-crypt mapping both decrypt to the plaintext the
//! test encrypted. Ignored by a plain `cargo test`; `ci/testhost-tests.sh` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use krun_luks::format::{format_luks1, format_luks2, write_encrypted, Luks1Options, Luks2Options};
use krun_luks::{Argon2Variant, HashAlg, Kdf};
use krun_testhost::{busybox_rootfs, ext4_image, marker_values, test_bundle, TestHost};
use sha2::{Digest, Sha256};

const PASSPHRASE: &str = "correct horse battery staple";
/// Size of the plain ext4 image inside each LUKS container.
const PLAIN_SIZE: u64 = 24 << 20;
/// luksy's LUKS1 payload offset for a 64-byte key, in 512-byte sectors.
const LUKSY_PAYLOAD_SECTORS: u64 = 4040;

const APPLETS: &[&str] = &["sh", "echo", "pwd", "seq", "dd", "sha256sum", "cut"];
const MIB: u64 = 1 << 20;

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A plain ext4 image holding a static busybox and `config` as `/.krun_config.json`.
fn plain_root(dir: &Path, name: &str, config: &serde_json::Value) -> Vec<u8> {
    let root = dir.join(format!("{name}-root"));
    busybox_rootfs(&root, APPLETS).unwrap();
    fs::create_dir_all(root.join("srv/work")).unwrap();
    fs::write(root.join(".krun_config.json"), config.to_string()).unwrap();
    let plain = dir.join(format!("{name}-plain.img"));
    ext4_image(&root, &plain, PLAIN_SIZE).unwrap();
    fs::read(&plain).unwrap()
}

/// The footer `buildah mkcw` appends: zero padding so that the image ends on a 4096-byte
/// boundary, the TEE config JSON, `KRUN`, the JSON length as u64 LE.
fn footer(written: u64, json: &[u8]) -> Vec<u8> {
    let used = written + json.len() as u64 + 12;
    let pad = (4096 - used % 4096) % 4096;
    let mut out = vec![0u8; usize::try_from(pad).unwrap()];
    out.extend_from_slice(json);
    out.extend_from_slice(b"KRUN");
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out
}

/// A LUKS image: header, `plain` encrypted, footer. Returns its path and the payload offset.
fn luks_image(
    dir: &Path,
    name: &str,
    vol: &krun_luks::format::NewVolume,
    plain: &[u8],
) -> (PathBuf, u64) {
    let tee_config = serde_json::json!({
        "workload_id": name, "cpus": 1, "ram_mib": 256, "tee": "snp",
        "tee_data": "{\"gen\":\"milan\"}", "attestation_url": "http://127.0.0.1:8000",
    })
    .to_string();
    let path = dir.join(format!("{name}.img"));
    let mut out = fs::File::create(&path).unwrap();
    let payload = write_encrypted(vol, plain, &mut out, &mut |_| {}).unwrap();
    let written = vol.header.len() as u64 + payload;
    out.write_all(&footer(written, tee_config.as_bytes()))
        .unwrap();
    drop(out);
    let len = fs::metadata(&path).unwrap().len();
    assert_eq!(
        len % 4096,
        0,
        "{name}: the footer ends on a 4096-byte boundary"
    );
    (path, vol.payload.offset)
}

fn host_json(passphrase: &str) -> String {
    serde_json::json!({"format": 1, "tee": "none", "dev_passphrase": passphrase, "port_map": []})
        .to_string()
}

#[test]
#[ignore = "boots the test host"]
fn luks_root_disks_boot_under_the_vmm() {
    let (bundle, _) = test_bundle();
    let dir = tempfile::tempdir().unwrap();

    // LUKS1 as luksy writes it: payload right after the keyslots, OCI image config nested
    // under "config" with every field the init must apply.
    let luks1_config = serde_json::json!({
        "created": "2026-11-27T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c",
                "echo \"ARGV=$0|$1|$2\"; echo \"ENV_GREETING=$GREETING\"; \
                 echo \"ENV_PATH=$PATH\"; echo \"CWD=$(pwd)\"; exit 7",
                "entry0"],
            "Cmd": ["first arg", "second"],
            "Env": ["PATH=/bin", "GREETING=hello from luks1"],
            "WorkingDir": "/srv/work",
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let luks1_plain = plain_root(dir.path(), "luks1", &luks1_config);
    let luks1_vol = format_luks1(
        PASSPHRASE.as_bytes(),
        &Luks1Options {
            keyslot_iterations: 1000,
            ..Luks1Options::default()
        },
    )
    .unwrap();
    let (luks1, luks1_offset) = luks_image(dir.path(), "luks1", &luks1_vol, &luks1_plain);
    assert_eq!(luks1_offset, LUKSY_PAYLOAD_SECTORS * 512);

    // LUKS2 with Argon2id (small costs) and 4096-byte sectors.
    let luks2_config = serde_json::json!({
        "config": {"Cmd": ["/bin/sh", "-c", "echo LUKS2_RAN; exit 0"], "Env": ["PATH=/bin"]}
    });
    let luks2_plain = plain_root(dir.path(), "luks2", &luks2_config);
    let luks2_vol = format_luks2(
        PASSPHRASE.as_bytes(),
        &Luks2Options {
            sector_size: 4096,
            kdf: Kdf::Argon2 {
                variant: Argon2Variant::Argon2id,
                time: 1,
                memory_kib: 8192,
                parallel: 1,
            },
            digest_hash: HashAlg::Sha256,
            ..Luks2Options::default()
        },
    )
    .unwrap();
    let (luks2, luks2_offset) = luks_image(dir.path(), "luks2", &luks2_vol, &luks2_plain);

    // A LUKS1 disk whose workload prints what the init's mapping (/dev/dm-0) decrypts, per
    // MiB; booted read-only, so the mounted file system cannot change the plaintext on disk.
    // O_DIRECT reads bypass the page cache, where a mounted ext4 keeps its own in-memory
    // copy of the superblock that differs from the disk.
    let readback_config = serde_json::json!({
        "config": {
            "Cmd": ["/bin/sh", "-c",
                format!("for i in $(seq 0 {}); do echo \"GUEST_DM_MIB_$i=$(dd if=/dev/dm-0 iflag=direct bs=1M skip=$i count=1 2>/dev/null | sha256sum | cut -d' ' -f1)\"; done", PLAIN_SIZE / MIB - 1)],
            "Env": ["PATH=/bin"],
        }
    });
    let readback_plain = plain_root(dir.path(), "readback", &readback_config);
    let (readback, _) = luks_image(dir.path(), "readback", &luks1_vol, &readback_plain);

    // Plaintext for the images cryptsetup itself formats inside the test host.
    let cs_config = serde_json::json!({
        "config": {"Cmd": ["/bin/sh", "-c", "echo CS_RAN; exit 3"], "Env": ["PATH=/bin"]}
    });
    plain_root(dir.path(), "cs", &cs_config);
    let cs_plain = dir.path().join("cs-plain.img");

    // Debian's cryptsetup-bin; a dynamic binary, TestHost::file brings its libraries.
    let cryptsetup = Path::new("/usr/sbin/cryptsetup");
    assert!(
        cryptsetup.exists(),
        "{} is missing: apt-get install cryptsetup-bin",
        cryptsetup.display()
    );
    let good = dir.path().join("good.json");
    fs::write(&good, host_json(PASSPHRASE)).unwrap();
    let bad = dir.path().join("bad.json");
    fs::write(&bad, host_json("not the passphrase")).unwrap();

    let script = format!(
        r#"
boot() {{ /bin/krun-vmm-boot --kernel /bundle/bzImage --initrd /bundle/initrd.cpio.zst "$@" </dev/null; }}
sha() {{ sha256sum "$1" | cut -d' ' -f1; }}
# The independent oracle: cryptsetup maps the images read-only; compare with the plaintext.
for v in luks1 luks2; do
  printf %s '{PASSPHRASE}' | cryptsetup open --readonly --disable-locks --key-file=- /disks/$v.img cs-$v
  echo "CRYPTSETUP_OPEN_$v=$?"
  echo "CRYPTSETUP_SHA_$v=$(head -c {PLAIN_SIZE} /dev/mapper/cs-$v | sha256sum | cut -d' ' -f1)"
  cryptsetup close cs-$v
done
echo "SHA_BEFORE_BAD=$(sha /disks/luks1.img)"
boot --root /disks/luks1.img --host-json /cfg/bad.json; echo "STATUS_BAD=$?"
echo "SHA_AFTER_BAD=$(sha /disks/luks1.img)"
head -c {luks1_offset} /disks/luks1.img > /tmp/h1; echo "HEADER1_BEFORE=$(sha /tmp/h1)"
tail -c 4096 /disks/luks1.img > /tmp/f1; echo "FOOTER1_BEFORE=$(sha /tmp/f1)"
rm -f /tmp/h1 /tmp/f1
boot --root /disks/luks1.img --host-json /cfg/good.json; echo "STATUS_LUKS1=$?"
head -c {luks1_offset} /disks/luks1.img > /tmp/h1; echo "HEADER1_AFTER=$(sha /tmp/h1)"
tail -c 4096 /disks/luks1.img > /tmp/f1; echo "FOOTER1_AFTER=$(sha /tmp/f1)"
rm -f /tmp/h1 /tmp/f1
head -c {luks2_offset} /disks/luks2.img > /tmp/h2; echo "HEADER2_BEFORE=$(sha /tmp/h2)"; rm -f /tmp/h2
boot --root /disks/luks2.img --host-json /cfg/good.json; echo "STATUS_LUKS2=$?"
head -c {luks2_offset} /disks/luks2.img > /tmp/h2; echo "HEADER2_AFTER=$(sha /tmp/h2)"; rm -f /tmp/h2
echo "SHA_BEFORE_RO=$(sha /disks/readback.img)"
boot --root /disks/readback.img --root-ro --host-json /cfg/good.json; echo "STATUS_RO=$?"
echo "SHA_AFTER_RO=$(sha /disks/readback.img)"
# Images cryptsetup formats (LUKS1 sha512 at its own 4096-sector offset; LUKS2 Argon2id with
# 4096-byte sectors), filled through its mapping, then booted by our init.
cs_make() {{
  name=$1; shift
  dd if=/dev/zero of=/tmp/$name.img bs=1M count=41 2>/dev/null
  printf %s '{PASSPHRASE}' | cryptsetup luksFormat -q --disable-locks --key-file=- "$@" /tmp/$name.img
  printf %s '{PASSPHRASE}' | cryptsetup open --disable-locks --key-file=- /tmp/$name.img $name
  dd if=/disks/cs-plain.img of=/dev/mapper/$name bs=1M conv=fsync 2>/dev/null
  cryptsetup close $name
  echo "CS_MADE_$name=$?"
}}
cs_make csluks1 --type luks1 --hash sha512 --pbkdf-force-iterations 1000
cs_make csluks2 --type luks2 --pbkdf argon2id --pbkdf-memory 8192 --pbkdf-parallel 1 \
  --pbkdf-force-iterations 4 --sector-size 4096
boot --root /tmp/csluks1.img --host-json /cfg/good.json; echo "STATUS_CSLUKS1=$?"
boot --root /tmp/csluks2.img --host-json /cfg/good.json; echo "STATUS_CSLUKS2=$?"
"#
    );
    let outcome = TestHost::new()
        .file(&bundle, "/bundle")
        .file(env!("CARGO_BIN_EXE_krun-vmm-boot"), "/bin/krun-vmm-boot")
        .file(cryptsetup, "/bin/cryptsetup")
        .file(&luks1, "/disks/luks1.img")
        .file(&luks2, "/disks/luks2.img")
        .file(&readback, "/disks/readback.img")
        .file(&cs_plain, "/disks/cs-plain.img")
        .file(&good, "/cfg/good.json")
        .file(&bad, "/cfg/bad.json")
        .mem_mib(2048)
        .timeout(Duration::from_secs(300))
        .run(&["sh", "-c", &script])
        .unwrap();
    let out = &outcome.output;
    let ctx = format!("output:\n{out}");

    // cryptsetup decrypts both images to exactly the plaintext the test encrypted.
    assert_eq!(marker_values(out, "CRYPTSETUP_OPEN_luks1="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "CRYPTSETUP_OPEN_luks2="), ["0"], "{ctx}");
    assert_eq!(
        marker_values(out, "CRYPTSETUP_SHA_luks1="),
        [sha256_hex(&luks1_plain).as_str()],
        "{ctx}"
    );
    assert_eq!(
        marker_values(out, "CRYPTSETUP_SHA_luks2="),
        [sha256_hex(&luks2_plain).as_str()],
        "{ctx}"
    );

    // Wrong passphrase: a clear unlock error, status 125 (the workload never ran), the disk
    // untouched.
    assert!(
        out.contains("krun-init: unlocking the LUKS root disk failed")
            && out.contains("no keyslot matches the passphrase"),
        "{ctx}"
    );
    assert_eq!(marker_values(out, "STATUS_BAD="), ["125"], "{ctx}");
    let before = marker_values(out, "SHA_BEFORE_BAD=");
    assert_eq!(before.len(), 1, "{ctx}");
    assert_eq!(marker_values(out, "SHA_AFTER_BAD="), before, "{ctx}");

    // LUKS1 with a footer: Entrypoint ++ Cmd, Env and WorkingDir applied; status 7 back.
    assert_eq!(
        marker_values(out, "ARGV="),
        ["entry0|first arg|second"],
        "{ctx}"
    );
    assert_eq!(
        marker_values(out, "ENV_GREETING="),
        ["hello from luks1"],
        "{ctx}"
    );
    assert_eq!(marker_values(out, "ENV_PATH="), ["/bin"], "{ctx}");
    assert_eq!(marker_values(out, "CWD="), ["/srv/work"], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_LUKS1="), ["7"], "{ctx}");
    // Only the two images cryptsetup made lack the footer.
    assert_eq!(
        out.matches("the root disk has no KRUN footer").count(),
        2,
        "{ctx}"
    );
    // The workload wrote the file system, but the LUKS header and the footer are untouched.
    let header1 = marker_values(out, "HEADER1_BEFORE=");
    assert_eq!(header1.len(), 1, "{ctx}");
    assert_eq!(marker_values(out, "HEADER1_AFTER="), header1, "{ctx}");
    let footer1 = marker_values(out, "FOOTER1_BEFORE=");
    assert_eq!(footer1.len(), 1, "{ctx}");
    assert_eq!(marker_values(out, "FOOTER1_AFTER="), footer1, "{ctx}");

    // LUKS2 (Argon2id, 4096-byte sectors) boots too.
    assert!(out.contains("LUKS2_RAN"), "{ctx}");
    assert_eq!(marker_values(out, "STATUS_LUKS2="), ["0"], "{ctx}");
    let header2 = marker_values(out, "HEADER2_BEFORE=");
    assert_eq!(header2.len(), 1, "{ctx}");
    assert_eq!(marker_values(out, "HEADER2_AFTER="), header2, "{ctx}");

    // The init's own mapping decrypts to the same plaintext cryptsetup does, and a read-only
    // root disk is not written at all.
    let differing: Vec<usize> = readback_plain
        .chunks(1 << 20)
        .enumerate()
        .filter(|(i, chunk)| {
            marker_values(out, &format!("GUEST_DM_MIB_{i}=")) != [sha256_hex(chunk).as_str()]
        })
        .map(|(i, _)| i)
        .collect();
    assert!(
        differing.is_empty(),
        "MiB {differing:?} of the init's mapping differ; {ctx}"
    );
    assert_eq!(marker_values(out, "STATUS_RO="), ["0"], "{ctx}");
    let ro = marker_values(out, "SHA_BEFORE_RO=");
    assert_eq!(ro.len(), 1, "{ctx}");
    assert_eq!(marker_values(out, "SHA_AFTER_RO="), ro, "{ctx}");

    // Images cryptsetup formatted and encrypted boot too.
    assert_eq!(marker_values(out, "CS_MADE_csluks1="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "CS_MADE_csluks2="), ["0"], "{ctx}");
    assert_eq!(marker_values(out, "CS_RAN").len(), 2, "{ctx}");
    assert_eq!(marker_values(out, "STATUS_CSLUKS1="), ["3"], "{ctx}");
    assert_eq!(marker_values(out, "STATUS_CSLUKS2="), ["3"], "{ctx}");
}
