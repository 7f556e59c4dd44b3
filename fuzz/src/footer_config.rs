//! The "KRUN" footer of a confidential-workload disk and the TEE config JSON it carries
//! (`krun-footer`): the guest init reads both from `/dev/vda`, outside the encrypted payload,
//! so in a confidential launch the host writes every byte of them.
//!
//! The input is an image (leading bytes, a JSON text that is either raw bytes or a config
//! assembled from near-valid and hostile values, a trailer that is correct, lies about the
//! length, or is raw) and a size that may exceed the file. The target runs `read_json` over
//! the image, `TeeConfig::parse` on what it returns and on the JSON directly, and
//! `Binding::from_value` on the JSON as a value.
//!
//! Checked beyond "no panic": the footer's JSON is the bytes the trailer points at, never more
//! than `MAX_JSON_LEN`, and exactly the JSON that was written when the trailer is correct; an
//! accepted config has its values in range, re-serialises (`to_json`) to a config that parses
//! back equal, and survives being written as a footer (`footer_bytes`) and read back; its
//! binding round-trips through `to_value`/`from_value`.

use std::os::unix::fs::FileExt;

use arbitrary::Arbitrary;
use krun_footer::{
    footer_bytes, json_location, read_json, Binding, TeeConfig, MAGIC, MAX_CPUS, MAX_JSON_LEN,
    MAX_RAM_MIB, TRAILER_LEN,
};
use serde_json::{Map, Value};

/// A JSON value for a config key: valid-looking ones, wrong types, and anything.
#[derive(Arbitrary, Debug)]
pub enum Field {
    Absent,
    Null,
    Str(String),
    /// One of the spellings the parser knows for this key.
    Known(u8),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Array(Vec<u8>),
    /// A JSON text (a nested object for `tee_data`, or garbage).
    Json(String),
}

/// A config assembled key by key.
#[derive(Arbitrary, Debug)]
pub struct Config {
    pub tee: Field,
    pub tee_data: TeeData,
    pub workload_id: Field,
    pub cpus: Field,
    pub ram_mib: Field,
    pub attestation_url: Field,
    pub kbs_protocol: Field,
    /// Unknown keys (ignored by the parser).
    pub extra: Vec<(String, Field)>,
}

/// `tee_data`: as a string holding JSON (buildah), as the object itself, or a hostile value.
#[derive(Arbitrary, Debug)]
pub struct TeeData {
    pub as_string: bool,
    pub gen: Field,
    pub vendor_chain: Field,
    pub pubkey: Field,
    pub raw: Option<Field>,
}

// Built once per input: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Arbitrary, Debug)]
pub enum Json {
    Raw(Vec<u8>),
    Config(Config),
}

#[derive(Arbitrary, Debug)]
pub enum Trailer {
    /// "KRUN" and the JSON's length.
    Correct,
    /// "KRUN" and another length.
    Length(u64),
    /// Any 12 bytes.
    Raw([u8; 12]),
    /// No trailer at all.
    None,
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    /// Leading bytes (zero padding or payload), up to 4 KiB.
    pub prefix_len: u16,
    pub prefix_byte: u8,
    pub json: Json,
    pub trailer: Trailer,
    /// Bytes the reported size exceeds the file by (a lying `BLKGETSIZE64`).
    pub size_excess: u8,
    /// Alignment for the re-written footer (buildah 4096, oci2cw 512, or any).
    pub align: u16,
}

/// An in-memory disk.
struct Image(Vec<u8>);

impl FileExt for Image {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let Ok(off) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(rest) = self.0.get(off..) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> std::io::Result<usize> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }
}

const TEE_SPELLINGS: [&str; 8] = [
    "sev",
    "sev-es",
    "sev_es",
    "sev-no-es",
    "sev_no_es",
    "snp",
    "sev-snp",
    "tdx",
];
const URLS: [&str; 8] = [
    "",
    "http://127.0.0.1:8000",
    "https://kbs.example:8443",
    "https://kbs.example:8443/prefix",
    "http://[::1]:80",
    "ftp://kbs",
    "http://",
    "https://kbs.example:99999",
];
const PROTOCOLS: [&str; 3] = ["reference", "rcar", "Rcar"];
const PINS: [&str; 4] = [
    "",
    "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "FFEEDDCCBBAA99887766554433221100ffeeddccbbaa99887766554433221100",
    "sha256:xyz",
];
const GENS: [&str; 4] = ["milan", "genoa", "turin", "naples"];

fn value(f: &Field, known: &[&str]) -> Option<Value> {
    Some(match f {
        Field::Absent => return None,
        Field::Null => Value::Null,
        Field::Str(s) => Value::from(s.as_str()),
        Field::Known(i) => Value::from(known.get(usize::from(*i) % known.len().max(1)).copied()?),
        Field::Int(i) => Value::from(*i),
        Field::Uint(u) => Value::from(*u),
        Field::Float(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        Field::Bool(b) => Value::Bool(*b),
        Field::Array(a) => Value::from(a.clone()),
        Field::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::from(s.as_str())),
    })
}

/// Small integers are what a valid config holds; map `Known` to them for cpus and ram_mib.
fn number(f: &Field) -> Option<Value> {
    match f {
        Field::Known(i) => Some(Value::from(u64::from(*i) * 16)),
        other => value(other, &[]),
    }
}

fn config_json(c: &Config) -> Vec<u8> {
    let mut obj = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            obj.insert(k.to_owned(), v);
        }
    };
    put("tee", value(&c.tee, &TEE_SPELLINGS));
    put("workload_id", value(&c.workload_id, &["w", ""]));
    put("cpus", number(&c.cpus));
    put("ram_mib", number(&c.ram_mib));
    put("attestation_url", value(&c.attestation_url, &URLS));
    put("kbs_protocol", value(&c.kbs_protocol, &PROTOCOLS));
    let d = &c.tee_data;
    let tee_data = match &d.raw {
        Some(raw) => value(raw, &["", " ", "{}", "[]", "{bad"]),
        None => {
            let mut m = Map::new();
            for (k, f, known) in [
                ("gen", &d.gen, &GENS[..]),
                ("vendor_chain", &d.vendor_chain, &["", "/chain.bin"][..]),
                ("attestation_server_pubkey", &d.pubkey, &PINS[..]),
            ] {
                if let Some(v) = value(f, known) {
                    m.insert(k.to_owned(), v);
                }
            }
            let v = Value::Object(m);
            Some(if d.as_string {
                Value::from(v.to_string())
            } else {
                v
            })
        }
    };
    put("tee_data", tee_data);
    for (k, f) in c.extra.iter().take(4) {
        put(k, value(f, &[]));
    }
    Value::Object(obj).to_string().into_bytes()
}

fn check_config(cfg: &TeeConfig) {
    assert!((1..=MAX_CPUS).contains(&cfg.cpus), "cpus {}", cfg.cpus);
    assert!(
        (1..=MAX_RAM_MIB).contains(&cfg.ram_mib),
        "ram_mib {}",
        cfg.ram_mib
    );
    let url = &cfg.attestation_url;
    assert!(
        url.is_empty() || url.starts_with("http://") || url.starts_with("https://"),
        "accepted URL {url:?}"
    );
    assert!(url.is_empty() || !cfg.workload_id.is_empty());
    if let Some(gen) = cfg.tee_data.get("gen") {
        assert!(gen.as_str().is_some_and(|g| GENS[..3].contains(&g)));
    }
    let pin = cfg.broker_pin().expect("an accepted config's pin is valid");
    assert!(pin.is_none() || url.starts_with("https://"));

    // Re-serialised, the config parses back equal.
    let text = cfg.to_json();
    let again = TeeConfig::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("to_json output {text} does not parse: {e}"));
    assert_eq!(&again, cfg, "to_json round trip");

    // Its binding round-trips through host.json's form.
    let binding = Binding::from_tee_config(cfg).expect("binding of an accepted config");
    assert_eq!(binding.is_some(), !url.is_empty());
    if let Some(b) = binding {
        assert_eq!(b.broker_pin, pin);
        let back = Binding::from_value(&b.to_value()).expect("binding reads back");
        assert_eq!(back, b);
    }
}

fn parse_and_check(json: &[u8]) {
    if let Ok(cfg) = TeeConfig::parse(json) {
        check_config(&cfg);
    }
    // The binding reader (host.json) on the same bytes: whatever it accepts round-trips.
    if let Ok(v) = serde_json::from_slice::<Value>(json) {
        if let Ok(b) = Binding::from_value(&v) {
            assert!(!b.workload_id.is_empty() && !b.attestation_url.is_empty());
            assert_eq!(Binding::from_value(&b.to_value()).ok().as_ref(), Some(&b));
        }
    }
}

pub fn run(input: &Input) {
    let json = match &input.json {
        Json::Raw(b) => b.clone(),
        Json::Config(c) => config_json(c),
    };
    let prefix_len = usize::from(input.prefix_len % 4097);
    let mut image = vec![input.prefix_byte; prefix_len];
    image.extend_from_slice(&json);
    let json_len = json.len() as u64;
    match &input.trailer {
        Trailer::Correct => {
            image.extend_from_slice(&MAGIC);
            image.extend_from_slice(&json_len.to_le_bytes());
        }
        Trailer::Length(l) => {
            image.extend_from_slice(&MAGIC);
            image.extend_from_slice(&l.to_le_bytes());
        }
        Trailer::Raw(b) => image.extend_from_slice(b),
        Trailer::None => {}
    }
    let file_len = image.len() as u64;
    let size = file_len + u64::from(input.size_excess % 4);
    let image = Image(image);

    let result = read_json(&image, size);
    if size == file_len && size >= TRAILER_LEN {
        let mut trailer = [0u8; 12];
        trailer.copy_from_slice(&image.0[image.0.len() - 12..]);
        // What read_json returns is exactly where json_location points.
        match (&result, json_location(&trailer, size)) {
            (Ok(Some(j)), Ok(Some((start, len)))) => {
                assert!(len <= MAX_JSON_LEN && len > 0);
                assert_eq!(start + len + TRAILER_LEN, size);
                let start = usize::try_from(start).unwrap_or(usize::MAX);
                assert_eq!(j.as_slice(), &image.0[start..start + j.len()]);
                assert_eq!(j.len() as u64, len);
            }
            (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
            (r, l) => panic!("read_json {r:?} disagrees with json_location {l:?}"),
        }
    }
    if size == file_len
        && matches!(input.trailer, Trailer::Correct)
        && (1..=MAX_JSON_LEN).contains(&json_len)
    {
        let got = result.as_ref().expect("a correct footer reads");
        assert_eq!(got.as_deref(), Some(json.as_slice()));
    }
    if let Ok(Some(j)) = &result {
        parse_and_check(j);
    }
    parse_and_check(&json);

    // An accepted config written as a footer after the prefix reads back as the same config.
    if let Ok(cfg) = TeeConfig::parse(&json) {
        let text = cfg.to_json();
        let mut disk = image.0[..prefix_len].to_vec();
        disk.extend(footer_bytes(
            text.as_bytes(),
            prefix_len as u64,
            u64::from(input.align),
        ));
        if input.align > 1 {
            assert_eq!(disk.len() % usize::from(input.align), 0);
        }
        let len = disk.len() as u64;
        let back = read_json(&Image(disk), len)
            .expect("a written footer reads")
            .expect("a written footer is found");
        assert_eq!(back, text.as_bytes());
        assert_eq!(TeeConfig::parse(&back).ok().as_ref(), Some(&cfg));
    }
}
