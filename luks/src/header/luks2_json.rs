//! The LUKS2 JSON metadata: keyslots, segments, digests and config, with the cross-checks
//! cryptsetup's `LUKS2_hdr_validate` makes (areas inside the keyslots area, no overlaps,
//! data segment after the metadata and inside the device).

use base64::Engine as _;
use serde_json::{Map, Value};

use super::{corrupt, Digest, HeaderError, Keyslot, MAX_AF_BYTES};
use crate::cipher::CipherSpec;
use crate::hash::HashAlg;
use crate::kdf::{argon2_params_valid, Argon2Variant, Kdf};
use crate::payload::Payload;

/// cryptsetup's limits: 32 keyslots, 8 digests, 128 MiB keyslots area.
const MAX_KEYSLOTS: u32 = 32;
const MAX_DIGESTS: u32 = 8;
const MAX_KEYSLOTS_SIZE: u64 = 128 << 20;

/// What the JSON says, before keyslot material is read.
#[derive(Debug)]
pub(super) struct Metadata {
    /// Usable keyslots (bound to the data segment's digest) with their area offsets, in the
    /// order to try them.
    pub keyslots: Vec<(Keyslot, u64)>,
    pub digests: Vec<Digest>,
    pub payload_digest: usize,
    pub payload: Payload,
}

fn obj<'a>(v: &'a Value, key: &str, ctx: &str) -> Result<&'a Map<String, Value>, HeaderError> {
    v.get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| corrupt(format!("{ctx}: missing object {key:?}")))
}

fn string<'a>(v: &'a Value, key: &str, ctx: &str) -> Result<&'a str, HeaderError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt(format!("{ctx}: missing string {key:?}")))
}

/// LUKS2 stores 64-bit values as decimal strings.
fn u64_str(v: &Value, key: &str, ctx: &str) -> Result<u64, HeaderError> {
    let s = string(v, key, ctx)?;
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(corrupt(format!(
            "{ctx}: {key} {s:?} is not a decimal number"
        )));
    }
    s.parse()
        .map_err(|_| corrupt(format!("{ctx}: {key} {s:?} is out of range")))
}

fn u32_int(v: &Value, key: &str, ctx: &str) -> Result<u32, HeaderError> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| corrupt(format!("{ctx}: {key} is missing or out of range")))
}

fn b64(v: &Value, key: &str, ctx: &str, max: usize) -> Result<Vec<u8>, HeaderError> {
    let s = string(v, key, ctx)?;
    if s.len() > max.div_ceil(3) * 4 {
        return Err(corrupt(format!("{ctx}: {key} is too long")));
    }
    let d = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| corrupt(format!("{ctx}: {key} is not base64")))?;
    if d.is_empty() || d.len() > max {
        return Err(corrupt(format!("{ctx}: {key} has a bad length")));
    }
    Ok(d)
}

fn hash(v: &Value, key: &str, ctx: &str) -> Result<HashAlg, HeaderError> {
    HashAlg::from_name(string(v, key, ctx)?).map_err(HeaderError::Hash)
}

fn id(key: &str, max: u32, what: &str) -> Result<u32, HeaderError> {
    key.parse::<u32>()
        .ok()
        .filter(|&n| n < max && n.to_string() == key)
        .ok_or_else(|| corrupt(format!("{what} id {key:?} is invalid")))
}

fn ids(v: &Value, key: &str, ctx: &str) -> Result<Vec<String>, HeaderError> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| corrupt(format!("{ctx}: missing array {key:?}")))?
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_owned)
                .ok_or_else(|| corrupt(format!("{ctx}: {key} holds a non-string")))
        })
        .collect()
}

fn kdf(v: &Value, ctx: &str) -> Result<(Kdf, Vec<u8>), HeaderError> {
    let k = v
        .get("kdf")
        .ok_or_else(|| corrupt(format!("{ctx}: missing kdf")))?;
    let ty = string(k, "type", ctx)?;
    let kdf = match ty {
        "pbkdf2" => {
            let iterations = u32_int(k, "iterations", ctx)?;
            if iterations == 0 {
                return Err(corrupt(format!("{ctx}: zero PBKDF2 iterations")));
            }
            Kdf::Pbkdf2 {
                hash: hash(k, "hash", ctx)?,
                iterations,
            }
        }
        "argon2i" | "argon2id" => {
            let (time, memory_kib, parallel) = (
                u32_int(k, "time", ctx)?,
                u32_int(k, "memory", ctx)?,
                u32_int(k, "cpus", ctx)?,
            );
            if !argon2_params_valid(time, memory_kib, parallel) {
                return Err(corrupt(format!("{ctx}: invalid argon2 parameters")));
            }
            Kdf::Argon2 {
                variant: if ty == "argon2i" {
                    Argon2Variant::Argon2i
                } else {
                    Argon2Variant::Argon2id
                },
                time,
                memory_kib,
                parallel,
            }
        }
        other => {
            return Err(HeaderError::UnsupportedKdf {
                name: other.to_owned(),
            })
        }
    };
    Ok((kdf, b64(k, "salt", ctx, 256)?))
}

/// A keyslot before its digest is linked: (keyslot, area offset, area end).
fn keyslot(kid: u32, v: &Value) -> Result<(Keyslot, u64, u64), HeaderError> {
    let ctx = format!("keyslot {kid}");
    let ctx = ctx.as_str();
    let ty = string(v, "type", ctx)?;
    if ty != "luks2" {
        return Err(HeaderError::Unsupported {
            feature: format!("keyslot type {ty:?}"),
        });
    }
    let key_len = usize::try_from(u32_int(v, "key_size", ctx)?).map_err(|_| corrupt(ctx))?;
    if !(1..=64).contains(&key_len) {
        return Err(corrupt(format!("{ctx}: key_size {key_len} is invalid")));
    }
    let priority = match v.get("priority") {
        None => 1,
        Some(p) => p
            .as_u64()
            .filter(|&p| p <= 2)
            .and_then(|p| u8::try_from(p).ok())
            .ok_or_else(|| corrupt(format!("{ctx}: invalid priority")))?,
    };
    let (kdf, salt) = kdf(v, ctx)?;
    let af = v
        .get("af")
        .ok_or_else(|| corrupt(format!("{ctx}: missing af")))?;
    let af_type = string(af, "type", ctx)?;
    if af_type != "luks1" {
        return Err(HeaderError::Unsupported {
            feature: format!("anti-forensic type {af_type:?}"),
        });
    }
    let stripes = u32_int(af, "stripes", ctx)?;
    let af_hash = hash(af, "hash", ctx)?;
    let af_len = crate::af::split_len(key_len, stripes)
        .filter(|&l| stripes > 0 && l <= MAX_AF_BYTES)
        .ok_or_else(|| corrupt(format!("{ctx}: {stripes} stripes is invalid")))?;
    let area = v
        .get("area")
        .ok_or_else(|| corrupt(format!("{ctx}: missing area")))?;
    let area_type = string(area, "type", ctx)?;
    if area_type != "raw" {
        return Err(HeaderError::Unsupported {
            feature: format!("keyslot area type {area_type:?}"),
        });
    }
    let offset = u64_str(area, "offset", ctx)?;
    let size = u64_str(area, "size", ctx)?;
    let area_key_len =
        usize::try_from(u32_int(area, "key_size", ctx)?).map_err(|_| corrupt(ctx))?;
    let area_cipher = CipherSpec::from_dm_name(string(area, "encryption", ctx)?, area_key_len)
        .map_err(HeaderError::Cipher)?;
    let needed = u64::try_from(af_len.div_ceil(512) * 512).map_err(|_| corrupt(ctx))?;
    if offset % 512 != 0 || size < needed {
        return Err(corrupt(format!(
            "{ctx}: area offset {offset} or size {size} is invalid"
        )));
    }
    let end = offset
        .checked_add(size)
        .ok_or_else(|| corrupt(format!("{ctx}: area overflows")))?;
    Ok((
        Keyslot {
            id: kid,
            priority,
            kdf,
            salt,
            area_cipher,
            key_len,
            stripes,
            af_hash,
            digest: usize::MAX,
            material: Vec::new(),
        },
        offset,
        end,
    ))
}

fn payload(
    segments: &Map<String, Value>,
    meta_end: u64,
    dev_size: u64,
) -> Result<(String, Payload), HeaderError> {
    if segments.len() != 1 {
        return Err(HeaderError::Unsupported {
            feature: format!("{} data segments (reencryption?)", segments.len()),
        });
    }
    let Some((sid, s)) = segments.iter().next() else {
        return Err(corrupt("no data segment"));
    };
    id(sid, 32, "segment")?;
    let ctx = format!("segment {sid}");
    let ctx = ctx.as_str();
    let ty = string(s, "type", ctx)?;
    if ty != "crypt" {
        return Err(HeaderError::Unsupported {
            feature: format!("segment type {ty:?}"),
        });
    }
    if s.get("integrity").is_some() {
        return Err(HeaderError::Unsupported {
            feature: "dm-integrity segment".into(),
        });
    }
    let sector_size = u32_int(s, "sector_size", ctx)?;
    if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(corrupt(format!(
            "{ctx}: sector size {sector_size} is invalid"
        )));
    }
    let ss = u64::from(sector_size);
    let offset = u64_str(s, "offset", ctx)?;
    let iv_tweak = u64_str(s, "iv_tweak", ctx)?;
    let size = match string(s, "size", ctx)? {
        "dynamic" => None,
        _ => Some(u64_str(s, "size", ctx)?),
    };
    if offset % ss != 0 || size.is_some_and(|z| z % ss != 0 || z == 0) {
        return Err(corrupt(format!(
            "{ctx}: offset or size not aligned to the sector size"
        )));
    }
    if offset < meta_end {
        return Err(corrupt(format!(
            "{ctx}: data overlaps the metadata or keyslots area"
        )));
    }
    let end = offset
        .checked_add(size.unwrap_or(0))
        .ok_or_else(|| corrupt(format!("{ctx}: size overflows")))?;
    if end > dev_size {
        return Err(corrupt(format!(
            "{ctx}: data ends past the end of the device"
        )));
    }
    // The cipher key size is the volume key size, known once the digest links a keyslot;
    // 64 is a placeholder replaced in `parse`.
    let enc = string(s, "encryption", ctx)?.to_owned();
    Ok((
        enc,
        Payload {
            cipher: CipherSpec::from_dm_name("aes-xts-plain64", 64).map_err(HeaderError::Cipher)?,
            offset,
            size,
            sector_size,
            iv_tweak,
        },
    ))
}

/// Parses and validates the JSON of a header copy of `hdr_size` bytes on a device of
/// `dev_size` bytes.
pub(super) fn parse(json: &str, hdr_size: u64, dev_size: u64) -> Result<Metadata, HeaderError> {
    let root: Value =
        serde_json::from_str(json).map_err(|e| corrupt(format!("LUKS2 JSON: {e}")))?;
    let config = root
        .get("config")
        .ok_or_else(|| corrupt("LUKS2 JSON: missing config"))?;
    if u64_str(config, "json_size", "config")? != hdr_size - super::LUKS2_BINARY_LEN as u64 {
        return Err(corrupt("config: json_size does not match the header size"));
    }
    let keyslots_size = u64_str(config, "keyslots_size", "config")?;
    if keyslots_size % 4096 != 0 || keyslots_size > MAX_KEYSLOTS_SIZE {
        return Err(corrupt(format!(
            "config: keyslots_size {keyslots_size} is invalid"
        )));
    }
    if let Some(req) = config.get("requirements") {
        if let Some(m) = req.get("mandatory").and_then(Value::as_array) {
            if let Some(r) = m.first() {
                return Err(HeaderError::Unsupported {
                    feature: format!("mandatory requirement {r}"),
                });
            }
        }
    }
    let area_start = 2 * hdr_size;
    let meta_end = area_start + keyslots_size;
    obj(&root, "tokens", "LUKS2 JSON")?;

    let (seg_id, enc, mut payload) = {
        let segs = obj(&root, "segments", "LUKS2 JSON")?;
        let (enc, p) = payload(segs, meta_end, dev_size)?;
        let sid = segs.keys().next().cloned().unwrap_or_default();
        (sid, enc, p)
    };

    let mut digests = Vec::new();
    let mut digest_keyslots = Vec::new();
    let mut payload_digest = None;
    for (did, d) in obj(&root, "digests", "LUKS2 JSON")? {
        id(did, MAX_DIGESTS, "digest")?;
        let ctx = format!("digest {did}");
        let ctx = ctx.as_str();
        let ty = string(d, "type", ctx)?;
        if ty != "pbkdf2" {
            return Err(HeaderError::Unsupported {
                feature: format!("digest type {ty:?}"),
            });
        }
        let iterations = u32_int(d, "iterations", ctx)?;
        if iterations == 0 {
            return Err(corrupt(format!("{ctx}: zero iterations")));
        }
        let segs = ids(d, "segments", ctx)?;
        if segs.contains(&seg_id) {
            if payload_digest.is_some() {
                return Err(corrupt("segment is bound to two digests"));
            }
            payload_digest = Some(digests.len());
        }
        digest_keyslots.push(ids(d, "keyslots", ctx)?);
        digests.push(Digest {
            hash: hash(d, "hash", ctx)?,
            iterations,
            salt: b64(d, "salt", ctx, 256)?,
            value: b64(d, "digest", ctx, 64)?,
        });
    }
    let payload_digest = payload_digest.ok_or_else(|| corrupt("no digest for the data segment"))?;

    let mut keyslots = Vec::new();
    let mut areas = Vec::new();
    for (kid, v) in obj(&root, "keyslots", "LUKS2 JSON")? {
        let n = id(kid, MAX_KEYSLOTS, "keyslot")?;
        let (mut k, start, end) = keyslot(n, v)?;
        if start < area_start || end > meta_end {
            return Err(corrupt(format!(
                "keyslot {n}: area is outside the keyslots area"
            )));
        }
        areas.push((start, end, n));
        let bound: Vec<usize> = digest_keyslots
            .iter()
            .enumerate()
            .filter(|(_, ks)| ks.iter().any(|s| s == kid))
            .map(|(i, _)| i)
            .collect();
        match bound.as_slice() {
            // Unbound keyslots or keyslots for another digest cannot open this segment.
            [d] if *d == payload_digest => {
                k.digest = *d;
                keyslots.push((k, start));
            }
            [] | [_] => {}
            _ => return Err(corrupt(format!("keyslot {n} is bound to several digests"))),
        }
    }
    areas.sort_unstable();
    for w in areas.windows(2) {
        if w[0].1 > w[1].0 {
            return Err(corrupt(format!(
                "keyslots {} and {} overlap",
                w[0].2, w[1].2
            )));
        }
    }
    if meta_end > dev_size {
        return Err(corrupt("keyslots area ends past the end of the device"));
    }
    // High priority first, then normal; "ignore" (0) is never tried, as in cryptsetup.
    keyslots.retain(|(k, _)| k.priority > 0);
    keyslots.sort_by_key(|(k, _)| (std::cmp::Reverse(k.priority), k.id));
    let key_len = keyslots
        .first()
        .map(|(k, _)| k.key_len)
        .ok_or_else(|| corrupt("no active keyslot for the data segment"))?;
    if keyslots.iter().any(|(k, _)| k.key_len != key_len) {
        return Err(corrupt("keyslots for one segment disagree on the key size"));
    }
    payload.cipher = CipherSpec::from_dm_name(&enc, key_len).map_err(HeaderError::Cipher)?;
    Ok(Metadata {
        keyslots,
        digests,
        payload_digest,
        payload,
    })
}
