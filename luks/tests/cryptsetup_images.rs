//! Images made by cryptsetup unlock to the key cryptsetup reports; payload sectors decrypt
//! like an independent AES implementation (pyca/cryptography) does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use common::*;
use krun_luks::{Header, HeaderError, KdfLimits, LuksVersion, UnlockError};

const PASS: &[u8] = b"correct horse battery staple";

fn read_header(path: &Path) -> Header {
    Header::read(&mut File::open(path).unwrap()).unwrap()
}

/// Formats with cryptsetup, then checks our unlock against cryptsetup's volume key.
fn check(
    name: &str,
    extra: &[&str],
    version: LuksVersion,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = blank_image(dir.path(), name, 20);
    luks_format(&img, PASS, extra);
    let h = read_header(&img);
    assert_eq!(h.version(), version, "{name}");
    let key = h.unlock(PASS).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    assert_eq!(
        key.as_bytes(),
        dump_key(&img, PASS),
        "{name}: key differs from cryptsetup's"
    );
    assert!(
        matches!(h.unlock(b"wrong"), Err(UnlockError::WrongPassphrase)),
        "{name}"
    );
    assert!(!h.keyslot_ids().is_empty());
    (dir, img)
}

const LUKS1_PBKDF: &[&str] = &["--type", "luks1", "--pbkdf-force-iterations", "1000"];

#[test]
fn luks1_each_hash_and_cipher() {
    for (hash, cipher, bits) in [
        ("sha1", "aes-xts-plain64", "512"),
        ("sha256", "aes-xts-plain64", "512"),
        ("sha512", "aes-xts-plain64", "256"),
        ("sha256", "aes-cbc-essiv:sha256", "256"),
        ("sha1", "aes-cbc-essiv:sha256", "128"),
    ] {
        let mut args = LUKS1_PBKDF.to_vec();
        args.extend(["--hash", hash, "--cipher", cipher, "--key-size", bits]);
        let (_d, img) = check(&format!("l1-{hash}-{bits}.img"), &args, LuksVersion::Luks1);
        let h = read_header(&img);
        assert_eq!(h.payload().cipher.dm_name(), cipher);
        assert_eq!(
            h.payload().cipher.key_len() * 8,
            bits.parse::<usize>().unwrap()
        );
        // Keyslots at 8 + i * stride (4 KiB aligned), data aligned up to 1 MiB.
        let stride = (h.payload().cipher.key_len() as u64 * 4000)
            .div_ceil(512)
            .div_ceil(8)
            * 8;
        let expect = (8 + 8 * stride).div_ceil(2048) * 2048 * 512;
        assert_eq!(h.payload().offset, expect, "{hash} {cipher} {bits}");
        assert_eq!(h.payload().sector_size, 512);
    }
}

#[test]
fn luks1_with_luksy_payload_offset_4040() {
    let mut args = LUKS1_PBKDF.to_vec();
    args.extend(["--hash", "sha256", "--key-size", "512", "--offset", "4040"]);
    let (_d, img) = check("l1-4040.img", &args, LuksVersion::Luks1);
    let h = read_header(&img);
    assert_eq!(h.payload().offset, 4040 * 512);
    let key = h.unlock(PASS).unwrap();
    let t = h.dm_crypt_target(&key, 20 << 20).unwrap();
    assert_eq!((t.offset_sectors, t.iv_offset), (4040, 0));
    assert_eq!(t.length_sectors, (20 << 11) - 4040);
    assert_eq!(t.cipher, "aes-xts-plain64");
}

#[test]
fn luks2_pbkdf2_each_hash() {
    for hash in ["sha1", "sha256", "sha512"] {
        check(
            &format!("l2-pbkdf2-{hash}.img"),
            &[
                "--type",
                "luks2",
                "--pbkdf",
                "pbkdf2",
                "--hash",
                hash,
                "--pbkdf-force-iterations",
                "1000",
                "--sector-size",
                "512",
            ],
            LuksVersion::Luks2,
        );
    }
}

#[test]
fn luks2_argon2_variants_sector_sizes_and_ciphers() {
    for (kdf, cipher, bits, ss) in [
        ("argon2id", "aes-xts-plain64", "512", "4096"),
        ("argon2i", "aes-xts-plain64", "256", "512"),
        ("argon2id", "aes-cbc-essiv:sha256", "256", "4096"),
    ] {
        let (_d, img) = check(
            &format!("l2-{kdf}-{ss}.img"),
            &[
                "--type",
                "luks2",
                "--pbkdf",
                kdf,
                "--pbkdf-force-iterations",
                "4",
                "--pbkdf-memory",
                "64",
                "--pbkdf-parallel",
                "2",
                "--cipher",
                cipher,
                "--key-size",
                bits,
                "--sector-size",
                ss,
            ],
            LuksVersion::Luks2,
        );
        let h = read_header(&img);
        assert_eq!(h.payload().sector_size.to_string(), ss);
        assert_eq!(h.payload().offset, 16 << 20);
        let key = h.unlock(PASS).unwrap();
        let t = h.dm_crypt_target(&key, 20 << 20).unwrap();
        let want = if ss == "4096" {
            " 1 sector_size:4096"
        } else {
            ""
        };
        assert!(t
            .table_params("/dev/vda")
            .ends_with(&format!("/dev/vda 32768{want}")));
        // A tight memory limit refuses the keyslot without running argon2.
        let tight = KdfLimits {
            max_argon2_memory_kib: 32,
            ..KdfLimits::default()
        };
        assert!(matches!(
            h.unlock_with_limits(PASS, &tight),
            Err(UnlockError::KeyslotNotTried { id: 0, .. })
        ));
    }
}

#[test]
fn every_active_keyslot_is_tried_and_killed_slots_are_not() {
    for ty in ["luks1", "luks2"] {
        let dir = tempfile::tempdir().unwrap();
        let img = blank_image(dir.path(), "multi.img", 20);
        luks_format(
            &img,
            PASS,
            &[
                "--type",
                ty,
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
            ],
        );
        let p = img.to_str().unwrap();
        let keyfile = dir.path().join("old");
        std::fs::write(&keyfile, PASS).unwrap();
        cryptsetup_ok(
            &[
                "luksAddKey",
                "--batch-mode",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-slot",
                "5",
                "--key-file",
                keyfile.to_str().unwrap(),
                p,
                "-",
            ],
            b"second passphrase",
        );
        let h = read_header(&img);
        assert_eq!(h.keyslot_ids(), vec![0, 5], "{ty}");
        let k1 = h.unlock(PASS).unwrap();
        let k2 = h.unlock(b"second passphrase").unwrap();
        assert_eq!(k1.as_bytes(), k2.as_bytes());
        assert_eq!(
            h.unlock_keyslot(5, b"second passphrase", &KdfLimits::default())
                .unwrap()
                .as_bytes(),
            k1.as_bytes()
        );
        assert!(matches!(
            h.unlock_keyslot(0, b"second passphrase", &KdfLimits::default()),
            Err(UnlockError::WrongPassphrase)
        ));
        cryptsetup_ok(&["luksKillSlot", "--batch-mode", p, "0"], b"");
        let h = read_header(&img);
        assert_eq!(h.keyslot_ids(), vec![5], "{ty}");
        assert!(matches!(h.unlock(PASS), Err(UnlockError::WrongPassphrase)));
        assert_eq!(
            h.unlock(b"second passphrase").unwrap().as_bytes(),
            k1.as_bytes()
        );
    }
}

/// Writes sectors encrypted by the Python oracle into a cryptsetup image's payload and
/// decrypts them with our payload cipher, at a non-zero sector index.
#[test]
fn payload_sectors_match_independent_aes() {
    for (ty, cipher, ss) in [
        ("luks1", "aes-xts-plain64", 512u32),
        ("luks1", "aes-cbc-essiv:sha256", 512),
        ("luks2", "aes-xts-plain64", 4096),
        ("luks2", "aes-cbc-essiv:sha256", 4096),
        ("luks2", "aes-xts-plain64", 512),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let img = blank_image(dir.path(), "p.img", 20);
        let ss_s = ss.to_string();
        let mut args = vec![
            "--type",
            ty,
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--cipher",
            cipher,
        ];
        if ty == "luks2" {
            args.extend(["--sector-size", ss_s.as_str()]);
        }
        luks_format(&img, PASS, &args);
        let h = read_header(&img);
        let key = h.unlock(PASS).unwrap();
        let first: u64 = 37;
        let plain = pattern(3 * ss as usize, ss + 7);
        let mode = cipher.strip_prefix("aes-").unwrap();
        let step = u64::from(ss / 512);
        // dm-crypt IV of payload sector n is n * (sector_size / 512) (no iv_large_sectors).
        let ct = py_sector_crypt(
            "encrypt",
            mode,
            &dump_key(&img, PASS),
            ss,
            first * step,
            step,
            &plain,
        );
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(h.payload().offset + first * u64::from(ss)))
            .unwrap();
        f.write_all(&ct).unwrap();
        drop(f);
        let mut buf = vec![0u8; ct.len()];
        let mut f = File::open(&img).unwrap();
        f.seek(SeekFrom::Start(h.payload().offset + first * u64::from(ss)))
            .unwrap();
        f.read_exact(&mut buf).unwrap();
        h.payload()
            .cipher(&key)
            .unwrap()
            .decrypt(first, &mut buf)
            .unwrap();
        assert_eq!(buf, plain, "{ty} {cipher} {ss}");
    }
}

fn luks2_image(dir: &Path, name: &str) -> std::path::PathBuf {
    let img = blank_image(dir, name, 20);
    luks_format(
        &img,
        PASS,
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    img
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn luks2_damaged_primary_falls_back_to_secondary() {
    let dir = tempfile::tempdir().unwrap();
    let img = luks2_image(dir.path(), "a.img");
    let key = dump_key(&img, PASS);
    // Break the primary's JSON (checksum mismatch), then its magic.
    patch(&img, 4096 + 10, b"XXXX");
    assert_eq!(read_header(&img).unlock(PASS).unwrap().as_bytes(), key);
    patch(&img, 0, b"\0\0\0\0\0\0");
    assert_eq!(read_header(&img).unlock(PASS).unwrap().as_bytes(), key);
    // Both copies broken: a clear error, no panic.
    patch(&img, 16384 + 4096 + 10, b"XXXX");
    let e = Header::read(&mut File::open(&img).unwrap()).unwrap_err();
    assert!(matches!(e, HeaderError::Corrupt { .. }), "{e}");
}

#[test]
fn luks2_newest_copy_wins_by_seqid() {
    let dir = tempfile::tempdir().unwrap();
    let old = luks2_image(dir.path(), "old.img");
    let new = dir.path().join("new.img");
    std::fs::copy(&old, &new).unwrap();
    let keyfile = dir.path().join("k");
    std::fs::write(&keyfile, PASS).unwrap();
    cryptsetup_ok(
        &[
            "luksAddKey",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            keyfile.to_str().unwrap(),
            new.to_str().unwrap(),
            "-",
        ],
        b"added later",
    );
    let read = |p: &Path, off: u64| {
        let mut b = vec![0u8; 16384];
        let mut f = File::open(p).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        f.read_exact(&mut b).unwrap();
        b
    };
    // Old primary + new secondary, and new primary + old secondary: the new one is used.
    for (primary, secondary) in [(&old, &new), (&new, &old)] {
        let mixed = dir.path().join("mixed.img");
        std::fs::copy(&new, &mixed).unwrap();
        patch(&mixed, 0, &read(primary, 0));
        patch(&mixed, 16384, &read(secondary, 16384));
        let h = read_header(&mixed);
        assert_eq!(h.keyslot_ids().len(), 2);
        assert!(h.unlock(b"added later").is_ok());
    }
}

#[test]
fn hostile_luks2_kdf_cost_is_refused_not_run() {
    // Rewrite a cryptsetup header's keyslot to ask for 4 TiB of argon2 memory, with a valid
    // checksum, using our own LUKS2 writer path via the JSON text.
    let dir = tempfile::tempdir().unwrap();
    let img = blank_image(dir.path(), "h.img", 20);
    luks_format(
        &img,
        PASS,
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-memory",
            "64",
        ],
    );
    let mut raw = std::fs::read(&img).unwrap();
    let json_end = 4096 + raw[4096..16384].iter().position(|&b| b == 0).unwrap();
    let json = String::from_utf8(raw[4096..json_end].to_vec()).unwrap();
    let hostile = json.replace("\"memory\":64", "\"memory\":4294967295");
    assert_ne!(hostile, json, "memory field not found in {json}");
    for copy in [0usize, 16384] {
        let area = &mut raw[copy + 4096..copy + 16384];
        area.fill(0);
        area[..hostile.len()].copy_from_slice(hostile.as_bytes());
        raw[copy + 448..copy + 512].fill(0);
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(&raw[copy..copy + 16384]);
        let sum = h.finalize();
        raw[copy + 448..copy + 480].copy_from_slice(&sum);
    }
    let h = Header::read(&mut std::io::Cursor::new(raw)).unwrap();
    let e = h.unlock(PASS).unwrap_err();
    assert!(matches!(e, UnlockError::KeyslotNotTried { .. }), "{e}");
}
