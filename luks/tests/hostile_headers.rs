//! Random and mutated headers never panic, never allocate or loop beyond the limits, and
//! give either a valid header or an error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::io::Cursor;
use std::sync::OnceLock;

use krun_luks::format::{format_luks1, format_luks2, Luks1Options, Luks2Options};
use krun_luks::{Argon2Variant, Header, Kdf, KdfLimits};
use proptest::prelude::*;
use sha2::Digest as _;

const LIMITS: KdfLimits = KdfLimits {
    max_pbkdf2_iterations: 5000,
    max_argon2_memory_kib: 256,
    max_argon2_work_kib: 2048,
};

fn luks1_image() -> &'static [u8] {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let opts = Luks1Options {
            keyslot_iterations: 1000,
            mk_digest_iterations: 1000,
            ..Luks1Options::default()
        };
        let mut v = format_luks1(b"pw", &opts).unwrap().header;
        v.resize(v.len() + 4096, 0);
        v
    })
}

fn luks2_image() -> &'static [u8] {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let opts = Luks2Options {
            kdf: Kdf::Argon2 {
                variant: Argon2Variant::Argon2id,
                time: 1,
                memory_kib: 16,
                parallel: 1,
            },
            digest_iterations: 1000,
            data_offset: 72 * 4096,
            ..Luks2Options::default()
        };
        let mut v = format_luks2(b"pw", &opts).unwrap().header;
        v.resize(v.len() + 8192, 0);
        v
    })
}

/// Reads, and if that succeeds, unlocks and builds a dm table: none of it may panic.
fn exercise(img: Vec<u8>) {
    let len = img.len() as u64;
    if let Ok(h) = Header::read(&mut Cursor::new(img)) {
        if let Ok(k) = h.unlock_with_limits(b"pw", &LIMITS) {
            let _ = h.dm_crypt_target(&k, len);
            let _ = h.payload().cipher(&k);
        }
        let _ = h.unlock_with_limits(b"other", &LIMITS);
    }
}

/// Replaces both LUKS2 JSON areas with `json` and fixes the checksums, so the JSON
/// validation (not the checksum) is what gets exercised.
fn with_json(json: &[u8]) -> Vec<u8> {
    let mut img = luks2_image().to_vec();
    for copy in [0usize, 16384] {
        let area = &mut img[copy + 4096..copy + 16384];
        area.fill(0);
        let n = json.len().min(area.len() - 1);
        area[..n].copy_from_slice(&json[..n]);
        img[copy + 448..copy + 512].fill(0);
        let sum = sha2::Sha256::digest(&img[copy..copy + 16384]);
        img[copy + 448..copy + 480].copy_from_slice(&sum);
    }
    img
}

fn luks2_json() -> String {
    let img = luks2_image();
    let end = 4096 + img[4096..16384].iter().position(|&b| b == 0).unwrap();
    String::from_utf8(img[4096..end].to_vec()).unwrap()
}

#[test]
fn pristine_images_unlock_with_the_test_limits() {
    for img in [luks1_image(), luks2_image()] {
        let h = Header::read(&mut Cursor::new(img.to_vec())).unwrap();
        h.unlock_with_limits(b"pw", &LIMITS).unwrap();
    }
    // with_json on the unchanged JSON must give an equivalent, valid header.
    let h = Header::read(&mut Cursor::new(with_json(luks2_json().as_bytes()))).unwrap();
    h.unlock_with_limits(b"pw", &LIMITS).unwrap();
}

#[test]
fn hostile_numbers_in_luks2_json_are_errors() {
    let json = luks2_json();
    for (from, to) in [
        ("\"sector_size\":512", "\"sector_size\":3"),
        ("\"stripes\":4000", "\"stripes\":4000000000"),
        ("\"key_size\":64", "\"key_size\":100000"),
        ("\"offset\":\"32768\"", "\"offset\":\"0\""),
        (
            "\"offset\":\"294912\"",
            "\"offset\":\"18446744073709551615\"",
        ),
        ("\"offset\":\"294912\"", "\"offset\":\"4096\""),
        ("\"json_size\":\"12288\"", "\"json_size\":\"999\""),
        ("\"memory\":16", "\"memory\":1"),
        ("\"type\":\"argon2id\"", "\"type\":\"scrypt\""),
        (
            "\"encryption\":\"aes-xts-plain64\"",
            "\"encryption\":\"twofish-xts-plain64\"",
        ),
        ("\"hash\":\"sha256\"", "\"hash\":\"md5\""),
    ] {
        assert!(json.contains(from), "{from} not in {json}");
        let bad = json.replacen(from, to, 1);
        let e = Header::read(&mut Cursor::new(with_json(bad.as_bytes())));
        assert!(e.is_err(), "{to} was accepted");
    }
    let e = Header::read(&mut Cursor::new(with_json(
        json.replacen(
            "\"config\":{",
            "\"config\":{\"requirements\":{\"mandatory\":[\"online-reencrypt-v2\"]},",
            1,
        )
        .as_bytes(),
    )))
    .unwrap_err();
    assert!(e.to_string().contains("online-reencrypt-v2"), "{e}");
    // Costs above the limits are refused at unlock, not parse time.
    let slow = json.replacen("\"time\":1", "\"time\":4000000", 1);
    let h = Header::read(&mut Cursor::new(with_json(slow.as_bytes()))).unwrap();
    assert!(h.unlock_with_limits(b"pw", &LIMITS).is_err());
}

#[test]
fn luks1_hostile_fields_are_errors() {
    let base = luks1_image();
    let set = |off: usize, v: u32| {
        let mut i = base.to_vec();
        i[off..off + 4].copy_from_slice(&v.to_be_bytes());
        Header::read(&mut Cursor::new(i))
    };
    assert!(
        set(104, u32::MAX).is_err(),
        "payload offset past the device"
    );
    assert!(set(104, 100).is_err(), "payload overlaps keyslots");
    assert!(set(108, 48).is_err(), "key size");
    assert!(set(208, 0x1234).is_err(), "keyslot state");
    assert!(set(208 + 40, 0).is_err(), "keyslot over the header");
    assert!(set(208 + 48 + 40, 8).is_err(), "keyslots overlap");
    assert!(set(208 + 44, 4001).is_err(), "stripes");
    assert!(set(164, 0).is_err(), "digest iterations");
    // A huge iteration count is refused by the limits, not run.
    let h = set(208 + 4, u32::MAX).unwrap();
    assert!(h.unlock_with_limits(b"pw", &LIMITS).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn mutated_luks1_never_panics(edits in prop::collection::vec((0usize..1024, any::<u8>()), 1..8)) {
        let mut img = luks1_image().to_vec();
        for (at, v) in edits {
            img[at] = v;
        }
        exercise(img);
    }

    #[test]
    fn mutated_luks2_binary_never_panics(edits in prop::collection::vec((0usize..(2 * 16384 + 512), any::<u8>()), 1..8)) {
        let mut img = luks2_image().to_vec();
        for (at, v) in edits {
            img[at] = v;
        }
        exercise(img);
    }

    #[test]
    fn mutated_luks2_json_never_panics(edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(b"0123456789\"{}[],:-ax ".to_vec())), 1..6)) {
        let mut json = luks2_json().into_bytes();
        for (at, v) in edits {
            let i = at.index(json.len());
            json[i] = v;
        }
        exercise(with_json(&json));
    }

    #[test]
    fn random_bytes_after_magic_never_panic(version in 0u16..4, body in prop::collection::vec(any::<u8>(), 0..70000)) {
        let mut img = b"LUKS\xba\xbe".to_vec();
        img.extend_from_slice(&version.to_be_bytes());
        img.extend_from_slice(&body);
        exercise(img);
    }
}

#[test]
fn hash_names_in_luks1_header_are_checked() {
    let mut img = luks1_image().to_vec();
    img[72..104].fill(0);
    img[72..78].copy_from_slice(b"sha999");
    let e = Header::read(&mut Cursor::new(img)).unwrap_err();
    assert!(
        format!("{e}: {:?}", std::error::Error::source(&e)).contains("sha999"),
        "{e}"
    );
}
