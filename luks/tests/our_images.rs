//! Images this crate formats and encrypts are accepted by cryptsetup (luksDump,
//! open --test-passphrase, the same volume key), and the payload decrypts with an independent
//! AES implementation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::fs::File;
use std::io::BufWriter;

use common::*;
use krun_luks::format::{
    format_luks1, format_luks2, write_encrypted, Luks1Layout, Luks1Options, Luks2Options, NewVolume,
};
use krun_luks::{Argon2Variant, CipherMode, CipherSpec, HashAlg, Header, Kdf, UnlockError};

const PASS: &[u8] = b"mkcw passphrase";

/// Writes `vol` plus an encrypted pattern, checks it with cryptsetup, our reader and the
/// Python oracle.
fn check(name: &str, vol: &NewVolume) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join(name);
    // Not a multiple of the sector size: the tail is zero-padded.
    let plain = pattern(3 * (1 << 20) + 4096 + 100, 42);
    let mut seen = Vec::new();
    let written = write_encrypted(
        vol,
        &plain[..],
        BufWriter::new(File::create(&img).unwrap()),
        &mut |n| seen.push(n),
    )
    .unwrap();
    let ss = u64::from(vol.payload.sector_size);
    assert_eq!(written, (plain.len() as u64).div_ceil(ss) * ss, "{name}");
    assert_eq!(seen.last().copied(), Some(plain.len() as u64));
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]) && seen.len() == 4,
        "{seen:?}"
    );
    let file_len = std::fs::metadata(&img).unwrap().len();
    assert_eq!(file_len, vol.payload.offset + written);

    let dump = cryptsetup_ok(&["luksDump", img.to_str().unwrap()], b"");
    assert!(dump.contains(&vol.uuid), "{name}: {dump}");
    assert!(
        passphrase_accepted(&img, PASS),
        "{name}: cryptsetup rejects our passphrase"
    );
    assert!(!passphrase_accepted(&img, b"not it"), "{name}");
    assert_eq!(
        dump_key(&img, PASS),
        vol.key.as_bytes(),
        "{name}: cryptsetup key differs"
    );

    let h = Header::read(&mut File::open(&img).unwrap()).unwrap();
    assert_eq!(h.unlock(PASS).unwrap().as_bytes(), vol.key.as_bytes());
    assert!(matches!(
        h.unlock(b"nope"),
        Err(UnlockError::WrongPassphrase)
    ));
    assert_eq!(h.payload(), &vol.payload);

    // Decrypt the whole payload with pyca/cryptography and the key cryptsetup reported.
    let raw = std::fs::read(&img).unwrap();
    let ct = &raw[vol.payload.offset as usize..];
    let mode = vol.payload.cipher.dm_name().strip_prefix("aes-").unwrap();
    let pt = py_sector_crypt(
        "decrypt",
        mode,
        &dump_key(&img, PASS),
        vol.payload.sector_size,
        0,
        ss / 512,
        ct,
    );
    assert_eq!(&pt[..plain.len()], &plain[..], "{name}: payload differs");
    assert!(pt[plain.len()..].iter().all(|&b| b == 0));
}

fn luks1(layout: Luks1Layout, cipher: CipherSpec, hash: HashAlg) -> NewVolume {
    format_luks1(
        PASS,
        &Luks1Options {
            cipher,
            hash,
            keyslot_iterations: 1000,
            mk_digest_iterations: 1000,
            layout,
        },
    )
    .unwrap()
}

#[test]
fn luks1_luksy_layout_like_buildah() {
    let vol = luks1(Luks1Layout::Luksy, CipherSpec::XTS_512, HashAlg::Sha256);
    assert_eq!(vol.payload.offset, 4040 * 512);
    assert_eq!(vol.header.len(), 4040 * 512);
    check("luksy.img", &vol);
}

#[test]
fn luks1_cryptsetup_layout_and_other_ciphers() {
    let vol = luks1(
        Luks1Layout::Cryptsetup,
        CipherSpec::XTS_512,
        HashAlg::Sha512,
    );
    assert_eq!(vol.payload.offset, 4096 * 512);
    check("cs.img", &vol);
    let cbc = CipherSpec::new(CipherMode::CbcEssivSha256, 32).unwrap();
    check("cbc.img", &luks1(Luks1Layout::Luksy, cbc, HashAlg::Sha1));
    let xts256 = CipherSpec::new(CipherMode::XtsPlain64, 32).unwrap();
    check(
        "x256.img",
        &luks1(Luks1Layout::Cryptsetup, xts256, HashAlg::Sha256),
    );
}

#[test]
fn luks2_pbkdf2_and_argon2id_sector_sizes() {
    let base = Luks2Options {
        kdf: Kdf::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations: 1000,
        },
        ..Luks2Options::default()
    };
    check("l2.img", &format_luks2(PASS, &base).unwrap());
    let argon = Luks2Options {
        kdf: Kdf::Argon2 {
            variant: Argon2Variant::Argon2id,
            time: 4,
            memory_kib: 64,
            parallel: 2,
        },
        sector_size: 4096,
        label: "krun".into(),
        ..base.clone()
    };
    check("l2-argon.img", &format_luks2(PASS, &argon).unwrap());
    let cbc = Luks2Options {
        cipher: CipherSpec::new(CipherMode::CbcEssivSha256, 32).unwrap(),
        kdf: Kdf::Pbkdf2 {
            hash: HashAlg::Sha512,
            iterations: 1000,
        },
        af_hash: HashAlg::Sha1,
        sector_size: 4096,
        ..base
    };
    check("l2-cbc.img", &format_luks2(PASS, &cbc).unwrap());
}

#[test]
fn empty_plaintext_gives_header_only_and_bad_options_are_refused() {
    let vol = luks1(Luks1Layout::Luksy, CipherSpec::XTS_512, HashAlg::Sha256);
    let mut out = Vec::new();
    let mut calls = 0;
    assert_eq!(
        write_encrypted(&vol, &[][..], &mut out, &mut |_| calls += 1).unwrap(),
        0
    );
    assert_eq!((out.len(), calls), (4040 * 512, 0));
    let bad = Luks2Options {
        sector_size: 100,
        ..Luks2Options::default()
    };
    assert!(format_luks2(PASS, &bad).is_err());
    let bad = Luks2Options {
        data_offset: 20000,
        ..Luks2Options::default()
    };
    assert!(format_luks2(PASS, &bad).is_err());
    let bad = Luks2Options {
        data_offset: 32768,
        ..Luks2Options::default()
    };
    assert!(
        format_luks2(PASS, &bad).is_err(),
        "no room for the keyslot area"
    );
}
