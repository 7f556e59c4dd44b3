//! The LUKS1/LUKS2 header parser (`krun_luks::Header::read`): the guest init reads the header
//! of the root disk before it has a key, and the host writes every byte of that disk.
//!
//! The input is a device of up to 4 MiB holding a LUKS1 header (cipher, hash, payload offset,
//! eight keyslots with states, iterations, material offsets and stripe counts), or two LUKS2
//! header copies (header size, seqid, checksum algorithm, a checksum the target computes or
//! leaves wrong, and a JSON area that is raw text or assembled from config, keyslots, digests
//! and segments with near-valid and hostile values), or raw bytes; then byte pokes anywhere
//! (which break checksums), and optionally a passphrase to unlock with small KDF limits.
//!
//! Checked beyond "no panic": every read the parser makes lies inside the device; an accepted
//! header has a supported sector size, a data segment that is sector-aligned, non-empty, after
//! the header and inside the device; a LUKS2 header has an active keyslot; its keyslots' material (the last reads, one per active
//! keyslot) lies after the header, before the data segment and without overlap; the keyslot
//! ids are distinct; reading again gives the same header; unlocking with a guessed passphrase
//! fails.

use std::io::{Cursor, Read, Seek, SeekFrom};

use arbitrary::Arbitrary;
use krun_luks::{Header, KdfLimits, LuksVersion};
use serde_json::{json, Map, Value};
use sha2::Digest;

const MAX_DEV: u64 = 4 << 20;
const HDR_SIZES: [u64; 3] = [0x4000, 0x8000, 0x10000];

/// A byte count or offset as LUKS2 writes it (a decimal string), or a hostile value.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Num {
    Pages(u8),
    Sectors(u16),
    Any(u64),
    /// A JSON number instead of a string.
    NotString(u32),
}

fn num(n: Num) -> Value {
    match n {
        Num::Pages(p) => Value::from((u64::from(p) * 4096).to_string()),
        Num::Sectors(s) => Value::from((u64::from(s) * 512).to_string()),
        Num::Any(v) => Value::from(v.to_string()),
        Num::NotString(v) => Value::from(v),
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Hash {
    Sha1,
    Sha256,
    Sha512,
    Ripemd160,
}

fn hash(h: Hash) -> &'static str {
    match h {
        Hash::Sha1 => "sha1",
        Hash::Sha256 => "sha256",
        Hash::Sha512 => "sha512",
        Hash::Ripemd160 => "ripemd160",
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Cipher {
    Xts,
    CbcEssiv,
    Ecb,
    Twofish,
}

fn cipher(c: Cipher) -> (&'static str, &'static str) {
    match c {
        Cipher::Xts => ("aes", "xts-plain64"),
        Cipher::CbcEssiv => ("aes", "cbc-essiv:sha256"),
        Cipher::Ecb => ("aes", "ecb"),
        Cipher::Twofish => ("twofish", "xts-plain64"),
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum KeyLen {
    K32,
    K64,
    K16,
    Any(u8),
}

fn key_len(k: KeyLen) -> u32 {
    match k {
        KeyLen::K32 => 32,
        KeyLen::K64 => 64,
        KeyLen::K16 => 16,
        KeyLen::Any(v) => u32::from(v),
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Stripes {
    Standard,
    Any(u32),
}

fn stripes(s: Stripes) -> u32 {
    match s {
        Stripes::Standard => 4000,
        Stripes::Any(v) => v,
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SlotState {
    Active,
    Disabled,
    Any(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Luks1Slot {
    pub state: SlotState,
    pub iterations: u16,
    pub salt: u8,
    /// Material offset: the slot's place in cryptsetup's layout, or any sector.
    pub offset: Option<u32>,
    pub stripes: Stripes,
}

#[derive(Arbitrary, Debug)]
pub struct Luks1 {
    pub cipher: Cipher,
    pub key_len: KeyLen,
    pub hash: Hash,
    /// Payload offset in sectors: after cryptsetup's keyslot layout, or any.
    pub payload: Option<u32>,
    pub mk_iterations: u16,
    pub uuid: String,
    pub slots: Vec<Luks1Slot>,
}

#[derive(Arbitrary, Debug)]
pub enum Kdf {
    Pbkdf2 {
        hash: Hash,
        iterations: u32,
    },
    Argon2 {
        id: bool,
        time: u32,
        memory: u32,
        cpus: u32,
    },
    Other(String),
}

#[derive(Arbitrary, Debug)]
pub struct Keyslot {
    pub id: u8,
    pub luks2_type: bool,
    pub key_len: KeyLen,
    pub priority: Option<u8>,
    pub kdf: Kdf,
    pub salt: Vec<u8>,
    pub stripes: Stripes,
    pub af_hash: Hash,
    pub area_offset: Num,
    pub area_size: Num,
    pub area_cipher: Cipher,
    pub area_key_len: KeyLen,
}

#[derive(Arbitrary, Debug)]
pub struct DigestEntry {
    pub id: u8,
    pub keyslots: Vec<u8>,
    pub segments: Vec<u8>,
    pub pbkdf2: bool,
    pub hash: Hash,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub digest: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
pub struct Segment {
    pub id: u8,
    pub crypt: bool,
    pub offset: Num,
    /// `None`: "dynamic".
    pub size: Option<Num>,
    pub iv_tweak: u64,
    pub cipher: Cipher,
    pub sector_size: u16,
    pub integrity: bool,
}

#[derive(Arbitrary, Debug)]
pub struct Luks2Json {
    /// The header size's JSON area (right) or any value.
    pub json_size: Option<Num>,
    pub keyslots_size: Num,
    pub keyslots: Vec<Keyslot>,
    pub digests: Vec<DigestEntry>,
    pub segments: Vec<Segment>,
    pub tokens: bool,
    pub mandatory: Option<String>,
}

/// A valid cryptsetup-like JSON (one data segment after one or two keyslot areas) with at
/// most one field set to another value: deep enough that the fuzzer reaches accepted headers.
#[derive(Arbitrary, Debug)]
pub struct Template {
    pub key_len: KeyLen,
    pub stripes: Stripes,
    pub sector_4k: bool,
    /// Data segment size in 4 KiB pages; `None`: "dynamic".
    pub size: Option<u8>,
    pub priority: Option<u8>,
    pub iterations: u16,
    pub second_slot: bool,
    /// (which field, its new value).
    pub tweak: Option<(u8, Num)>,
}

const TWEAKABLE: [&str; 10] = [
    "/keyslots/0/area/offset",
    "/keyslots/0/area/size",
    "/segments/0/offset",
    "/segments/0/size",
    "/config/keyslots_size",
    "/keyslots/0/key_size",
    "/keyslots/0/af/stripes",
    "/segments/0/sector_size",
    "/keyslots/1/area/offset",
    "/segments/0/iv_tweak",
];

#[derive(Arbitrary, Debug)]
pub enum JsonArea {
    Raw(String),
    Assembled(Luks2Json),
    Template(Template),
}

/// The template's JSON and the device size its data segment needs.
fn template(t: &Template, hdr_size: u64) -> (String, u64) {
    let key = u64::from(key_len(t.key_len));
    let area = (key * u64::from(stripes(t.stripes))).div_ceil(4096) * 4096;
    let slots = if t.second_slot { 2 } else { 1 };
    let keyslots_size = (slots * area).max(4096);
    let seg_offset = 2 * hdr_size + keyslots_size;
    let seg_size = t.size.map(|p| u64::from(p.max(1)) * 4096);
    let slot = |i: u64| {
        json!({
            "type": "luks2",
            "key_size": key,
            "af": {"type": "luks1", "stripes": stripes(t.stripes), "hash": "sha256"},
            "area": {
                "type": "raw",
                "offset": (2 * hdr_size + i * area).to_string(),
                "size": area.to_string(),
                "encryption": "aes-xts-plain64",
                "key_size": 64,
            },
            "kdf": {"type": "pbkdf2", "hash": "sha256", "iterations": u32::from(t.iterations.max(1)),
                    "salt": b64(&[7; 32])},
        })
    };
    let mut keyslots = Map::new();
    keyslots.insert("0".into(), slot(0));
    if t.second_slot {
        keyslots.insert("1".into(), slot(1));
    }
    if let Some(p) = t.priority {
        keyslots["0"]["priority"] = Value::from(p % 4);
    }
    let mut root = json!({
        "keyslots": keyslots,
        "tokens": {},
        "segments": {"0": {
            "type": "crypt",
            "offset": seg_offset.to_string(),
            "size": seg_size.map_or("dynamic".to_string(), |z| z.to_string()),
            "iv_tweak": "0",
            "encryption": "aes-xts-plain64",
            "sector_size": if t.sector_4k { 4096 } else { 512 },
        }},
        "digests": {"0": {
            "type": "pbkdf2",
            "keyslots": if t.second_slot { json!(["0", "1"]) } else { json!(["0"]) },
            "segments": ["0"],
            "hash": "sha256",
            "iterations": 1000,
            "salt": b64(&[9; 32]),
            "digest": b64(&[3; 32]),
        }},
        "config": {"json_size": (hdr_size - 4096).to_string(), "keyslots_size": keyslots_size.to_string()},
    });
    if let Some((which, v)) = t.tweak {
        if let Some(field) = root.pointer_mut(TWEAKABLE[usize::from(which) % TWEAKABLE.len()]) {
            *field = num(v);
        }
    }
    (root.to_string(), seg_offset + seg_size.unwrap_or(4096))
}

#[derive(Arbitrary, Debug)]
pub enum Secondary {
    /// The same copy at `hdr_size` with the secondary magic.
    Same,
    /// A copy with another seqid and JSON.
    Other {
        seqid: u64,
        json: JsonArea,
    },
    None,
}

#[derive(Arbitrary, Debug)]
pub struct Luks2 {
    pub hdr_size: u8,
    pub seqid: u64,
    pub csum_alg: Hash,
    pub checksum_right: bool,
    pub primary: bool,
    pub uuid: String,
    pub json: JsonArea,
    pub secondary: Secondary,
}

// Built once per input: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Arbitrary, Debug)]
pub enum Layout {
    Luks1(Luks1),
    Luks2(Luks2),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub layout: Layout,
    /// Device size in 4 KiB pages (at least what the headers need).
    pub dev_pages: u16,
    pub pokes: Vec<(u32, u8)>,
    pub passphrase: Option<Vec<u8>>,
}

fn put(dev: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = dev.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

fn put_str(dev: &mut [u8], at: usize, len: usize, s: &str) {
    let n = s.len().min(len - 1);
    put(dev, at, &s.as_bytes()[..n]);
}

fn luks1(l: &Luks1, dev: &mut Vec<u8>) {
    let (name, mode) = cipher(l.cipher);
    let key = key_len(l.key_len);
    // cryptsetup: slots start at 8 sectors (4 KiB), each area rounded up to 4 KiB.
    let area = (u64::from(key) * 4000).div_ceil(4096) * 8;
    let slot_offset = |i: u64| 8 + i * area;
    let payload = l
        .payload
        .map_or(slot_offset(8), u64::from)
        .min(u64::from(u32::MAX));
    let need = (payload * 512).min(MAX_DEV);
    if (dev.len() as u64) < need {
        dev.resize(usize::try_from(need).unwrap_or(0), 0);
    }
    if dev.len() < 592 {
        dev.resize(592, 0);
    }
    put(dev, 0, b"LUKS\xba\xbe\x00\x01");
    put_str(dev, 8, 32, name);
    put_str(dev, 40, 32, mode);
    put_str(dev, 72, 32, hash(l.hash));
    put(
        dev,
        104,
        &u32::try_from(payload).unwrap_or(u32::MAX).to_be_bytes(),
    );
    put(dev, 108, &key.to_be_bytes());
    put(dev, 112, &[0x5a; 20]);
    put(dev, 132, &[0xa5; 32]);
    put(dev, 164, &u32::from(l.mk_iterations).to_be_bytes());
    put_str(dev, 168, 40, &l.uuid);
    for i in 0..8 {
        let o = 208 + i * 48;
        let s = l.slots.get(i).copied().unwrap_or(Luks1Slot {
            state: SlotState::Disabled,
            iterations: 0,
            salt: 0,
            offset: None,
            stripes: Stripes::Standard,
        });
        let state = match s.state {
            SlotState::Active => 0x00ac_71f3,
            SlotState::Disabled => 0x0000_dead,
            SlotState::Any(v) => v,
        };
        put(dev, o, &state.to_be_bytes());
        put(dev, o + 4, &u32::from(s.iterations).to_be_bytes());
        put(dev, o + 8, &[s.salt; 32]);
        let off = s
            .offset
            .unwrap_or(u32::try_from(slot_offset(i as u64)).unwrap_or(u32::MAX));
        put(dev, o + 40, &off.to_be_bytes());
        put(dev, o + 44, &stripes(s.stripes).to_be_bytes());
    }
}

fn ids(v: &[u8]) -> Value {
    Value::from(
        v.iter()
            .take(4)
            .map(|i| (i % 10).to_string())
            .collect::<Vec<_>>(),
    )
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The JSON text and the device size it needs.
fn luks2_json(j: &JsonArea, hdr_size: u64) -> (String, u64) {
    let j = match j {
        JsonArea::Raw(s) => return (s.clone(), 0),
        JsonArea::Template(t) => return template(t, hdr_size),
        JsonArea::Assembled(j) => j,
    };
    let mut keyslots = Map::new();
    for k in j.keyslots.iter().take(4) {
        let kdf = match &k.kdf {
            Kdf::Pbkdf2 {
                hash: h,
                iterations,
            } => {
                json!({"type": "pbkdf2", "hash": hash(*h), "iterations": iterations, "salt": b64(&k.salt)})
            }
            Kdf::Argon2 {
                id,
                time,
                memory,
                cpus,
            } => json!({
                "type": if *id { "argon2id" } else { "argon2i" },
                "time": time, "memory": memory, "cpus": cpus, "salt": b64(&k.salt),
            }),
            Kdf::Other(s) => json!({"type": s, "salt": b64(&k.salt)}),
        };
        let (name, mode) = cipher(k.area_cipher);
        let mut v = json!({
            "type": if k.luks2_type { "luks2" } else { "reencrypt" },
            "key_size": key_len(k.key_len),
            "kdf": kdf,
            "af": {"type": "luks1", "stripes": stripes(k.stripes), "hash": hash(k.af_hash)},
            "area": {
                "type": "raw",
                "offset": num(k.area_offset),
                "size": num(k.area_size),
                "encryption": format!("{name}-{mode}"),
                "key_size": key_len(k.area_key_len),
            },
        });
        if let Some(p) = k.priority {
            v["priority"] = Value::from(p % 4);
        }
        keyslots.insert((k.id % 10).to_string(), v);
    }
    let mut digests = Map::new();
    for d in j.digests.iter().take(3) {
        digests.insert(
            (d.id % 10).to_string(),
            json!({
                "type": if d.pbkdf2 { "pbkdf2" } else { "argon2i" },
                "keyslots": ids(&d.keyslots),
                "segments": ids(&d.segments),
                "hash": hash(d.hash),
                "iterations": d.iterations,
                "salt": b64(&d.salt),
                "digest": b64(&d.digest),
            }),
        );
    }
    let mut segments = Map::new();
    for s in j.segments.iter().take(2) {
        let (name, mode) = cipher(s.cipher);
        let mut v = json!({
            "type": if s.crypt { "crypt" } else { "linear" },
            "offset": num(s.offset),
            "size": s.size.map_or(Value::from("dynamic"), num),
            "iv_tweak": s.iv_tweak.to_string(),
            "encryption": format!("{name}-{mode}"),
            "sector_size": s.sector_size,
        });
        if s.integrity {
            v["integrity"] = json!({"type": "hmac(sha256)"});
        }
        segments.insert((s.id % 10).to_string(), v);
    }
    let mut config = json!({
        "json_size": j.json_size.map_or(Value::from((hdr_size - 4096).to_string()), num),
        "keyslots_size": num(j.keyslots_size),
    });
    if let Some(m) = &j.mandatory {
        config["requirements"] = json!({ "mandatory": [m] });
    }
    let mut root = json!({
        "keyslots": keyslots,
        "digests": digests,
        "segments": segments,
        "config": config,
    });
    if j.tokens {
        root["tokens"] = json!({});
    }
    (root.to_string(), 0)
}

/// One header copy at `offset`: binary header, JSON area, checksum.
#[allow(clippy::too_many_arguments)]
fn luks2_copy(
    dev: &mut [u8],
    offset: u64,
    hdr_size: u64,
    seqid: u64,
    l: &Luks2,
    json: &str,
    magic: &[u8; 6],
) {
    let (Ok(off), Ok(size)) = (usize::try_from(offset), usize::try_from(hdr_size)) else {
        return;
    };
    let Some(copy) = dev.get_mut(off..off + size) else {
        return;
    };
    copy.fill(0);
    copy[..6].copy_from_slice(magic);
    copy[6..8].copy_from_slice(&2u16.to_be_bytes());
    copy[8..16].copy_from_slice(&hdr_size.to_be_bytes());
    copy[16..24].copy_from_slice(&seqid.to_be_bytes());
    put_str(copy, 72, 32, hash(l.csum_alg));
    put_str(copy, 168, 40, &l.uuid);
    copy[256..264].copy_from_slice(&offset.to_be_bytes());
    let n = json.len().min(size - 4096);
    copy[4096..4096 + n].copy_from_slice(&json.as_bytes()[..n]);
    if l.checksum_right {
        let sum: Vec<u8> = match l.csum_alg {
            Hash::Sha1 => sha1::Sha1::digest(&*copy).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(&*copy).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(&*copy).to_vec(),
            Hash::Ripemd160 => Vec::new(),
        };
        copy[448..448 + sum.len()].copy_from_slice(&sum);
    }
}

fn luks2(l: &Luks2, dev: &mut Vec<u8>) {
    let hdr_size = HDR_SIZES[usize::from(l.hdr_size) % HDR_SIZES.len()];
    let (json, data_end) = luks2_json(&l.json, hdr_size);
    let need = usize::try_from((2 * hdr_size).max(data_end).min(MAX_DEV)).unwrap_or(0);
    if dev.len() < need {
        dev.resize(need, 0);
    }
    if l.primary {
        luks2_copy(dev, 0, hdr_size, l.seqid, l, &json, b"LUKS\xba\xbe");
    }
    match &l.secondary {
        Secondary::Same => luks2_copy(dev, hdr_size, hdr_size, l.seqid, l, &json, b"SKUL\xba\xbe"),
        Secondary::Other { seqid, json } => {
            let (other, _) = luks2_json(json, hdr_size);
            luks2_copy(dev, hdr_size, hdr_size, *seqid, l, &other, b"SKUL\xba\xbe");
        }
        Secondary::None => {}
    }
}

/// The device, recording every read as (offset, length).
struct Dev {
    data: Cursor<Vec<u8>>,
    reads: Vec<(u64, usize)>,
}

impl Read for Dev {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.data.position();
        let n = self.data.read(buf)?;
        if n > 0 {
            self.reads.push((at, n));
        }
        Ok(n)
    }
}

impl Seek for Dev {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.data.seek(pos)
    }
}

/// The device the input describes.
pub fn device(input: &Input) -> Vec<u8> {
    let mut bytes = vec![0u8; usize::from(input.dev_pages % 1025) * 4096];
    match &input.layout {
        Layout::Luks1(l) => luks1(l, &mut bytes),
        Layout::Luks2(l) => luks2(l, &mut bytes),
        Layout::Raw(r) => {
            if bytes.len() < r.len() {
                bytes.resize(r.len(), 0);
            }
            bytes[..r.len()].copy_from_slice(r);
        }
    }
    bytes.truncate(usize::try_from(MAX_DEV).unwrap_or(0));
    for &(at, b) in input.pokes.iter().take(8) {
        if !bytes.is_empty() {
            let i = usize::try_from(at).unwrap_or(0) % bytes.len();
            bytes[i] = b;
        }
    }
    bytes
}

pub fn run(input: &Input) {
    let bytes = device(input);
    let dev_size = bytes.len() as u64;
    let mut dev = Dev {
        data: Cursor::new(bytes),
        reads: Vec::new(),
    };
    let result = Header::read(&mut dev);
    for &(at, n) in &dev.reads {
        assert!(at + n as u64 <= dev_size, "read past the device");
    }
    let Ok(h) = result else {
        return;
    };
    let p = h.payload();
    let ss = u64::from(p.sector_size);
    assert!(matches!(p.sector_size, 512 | 1024 | 2048 | 4096), "{p:?}");
    assert_eq!(p.offset % ss, 0, "{p:?}");
    if let Some(size) = p.size {
        assert!(size > 0 && size % ss == 0, "{p:?}");
    }
    let end = p.offset.checked_add(p.size.unwrap_or(0)).expect("overflow");
    assert!(
        end <= dev_size,
        "data segment {p:?} past the device ({dev_size})"
    );
    let header_end = match h.version() {
        LuksVersion::Luks1 => 592,
        LuksVersion::Luks2 => 2 * HDR_SIZES[0],
    };
    assert!(
        p.offset >= header_end,
        "data segment {p:?} inside the header"
    );
    assert!((1..=64).contains(&p.cipher.key_len()));

    let ids = h.keyslot_ids();
    // LUKS1 allows a header with every keyslot disabled; LUKS2's parser wants one that can
    // open the data segment.
    assert!(
        h.version() == LuksVersion::Luks1 || !ids.is_empty(),
        "a LUKS2 header without an active keyslot"
    );
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "duplicate keyslot ids {ids:?}");
    if h.version() == LuksVersion::Luks1 {
        assert!(ids.iter().all(|&i| i < 8));
    }

    // The material reads are the last ones, one per active keyslot.
    assert!(dev.reads.len() >= ids.len());
    let mut areas: Vec<(u64, u64)> = dev.reads[dev.reads.len() - ids.len()..]
        .iter()
        .map(|&(at, n)| (at, at + n as u64))
        .collect();
    areas.sort_unstable();
    for &(start, stop) in &areas {
        assert!(
            start >= header_end && stop <= p.offset,
            "keyslot material {start}..{stop} outside {header_end}..{} ({:?})",
            p.offset,
            h.version()
        );
    }
    for w in areas.windows(2) {
        assert!(w[0].1 <= w[1].0, "keyslot areas overlap: {areas:?}");
    }

    // Parsing is a function of the bytes.
    let again = Header::read(&mut dev.data).expect("second read");
    assert_eq!(again, h);

    if let Some(pass) = &input.passphrase {
        let limits = KdfLimits {
            max_pbkdf2_iterations: 64,
            max_argon2_memory_kib: 64,
            max_argon2_work_kib: 128,
        };
        assert!(
            h.unlock_with_limits(pass, &limits).is_err(),
            "a guessed passphrase unlocked a hostile header"
        );
    }
}
