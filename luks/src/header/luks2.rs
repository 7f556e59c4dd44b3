//! The LUKS2 binary headers: two copies (primary at 0, secondary at `hdr_size`), each a
//! 4096-byte binary header followed by the JSON area and covered by a checksum. The valid copy
//! with the highest `seqid` wins, as in cryptsetup.

use std::io::{Read, Seek};

use super::luks2_json::{self, Metadata};
use super::{c_string, corrupt, read_exact_at, read_material, Header, HeaderError, LuksVersion};
use super::{LUKS2_SECONDARY_MAGIC, LUKS_MAGIC};
use crate::hash::{HashAlg, MAX_DIGEST_LEN};

/// Size of the binary part of a LUKS2 header.
pub(crate) const LUKS2_BINARY_LEN: usize = 4096;
/// The header sizes (binary + JSON) LUKS2 allows; secondary headers are looked for here.
pub(crate) const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
const CSUM_OFFSET: usize = 448;
const CSUM_LEN: usize = 64;

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// One checksum-verified header copy.
struct Copy {
    seqid: u64,
    hdr_size: u64,
    uuid: String,
    json: String,
}

fn checksum(alg: HashAlg, bin: &[u8], json_area: &[u8]) -> ([u8; MAX_DIGEST_LEN], usize) {
    let mut zeroed = [0u8; LUKS2_BINARY_LEN];
    zeroed.copy_from_slice(bin);
    zeroed[CSUM_OFFSET..CSUM_OFFSET + CSUM_LEN].fill(0);
    let mut out = [0u8; MAX_DIGEST_LEN];
    let n = alg.hash_into(&[&zeroed, json_area], &mut out);
    (out, n)
}

/// Reads the copy at `offset`. `Ok(None)` when there is no magic there at all.
fn read_copy<R: Read + Seek>(
    dev: &mut R,
    dev_size: u64,
    offset: u64,
) -> Result<Option<Copy>, HeaderError> {
    if offset.saturating_add(LUKS2_BINARY_LEN as u64) > dev_size {
        return Ok(None);
    }
    let mut bin = [0u8; LUKS2_BINARY_LEN];
    read_exact_at(dev, dev_size, offset, &mut bin)?;
    let magic = if offset == 0 {
        LUKS_MAGIC
    } else {
        LUKS2_SECONDARY_MAGIC
    };
    if bin[..6] != magic {
        return Ok(None);
    }
    let version = u16::from_be_bytes([bin[6], bin[7]]);
    if version != 2 {
        return Err(HeaderError::UnsupportedVersion { version });
    }
    let hdr_size = be64(&bin, 8);
    if !HDR_SIZES.contains(&hdr_size) {
        return Err(corrupt(format!(
            "LUKS2 header size {hdr_size} is not allowed"
        )));
    }
    if be64(&bin, 256) != offset {
        return Err(corrupt(format!(
            "LUKS2 header at {offset} records a different offset"
        )));
    }
    let alg_name = c_string(&bin[72..104], "checksum algorithm")?;
    let alg = HashAlg::from_name(&alg_name).map_err(HeaderError::Hash)?;
    // hdr_size is at most 4 MiB (checked above).
    let json_len =
        usize::try_from(hdr_size).map_err(|_| corrupt("header size"))? - LUKS2_BINARY_LEN;
    let mut area = vec![0u8; json_len];
    read_exact_at(dev, dev_size, offset + LUKS2_BINARY_LEN as u64, &mut area)?;
    let (sum, n) = checksum(alg, &bin, &area);
    if sum[..n] != bin[CSUM_OFFSET..CSUM_OFFSET + n] {
        return Err(corrupt(format!(
            "LUKS2 header checksum mismatch at offset {offset}"
        )));
    }
    let end = area
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupt("LUKS2 JSON area is not NUL-terminated"))?;
    area.truncate(end);
    let json = String::from_utf8(area).map_err(|_| corrupt("LUKS2 JSON is not UTF-8"))?;
    Ok(Some(Copy {
        seqid: be64(&bin, 16),
        hdr_size,
        uuid: c_string(&bin[168..208], "UUID")?,
        json,
    }))
}

/// Reads both copies, validates them, and builds the header from the newest valid one.
pub(super) fn read<R: Read + Seek>(dev: &mut R, dev_size: u64) -> Result<Header, HeaderError> {
    let mut first_err = None;
    let mut valid: Vec<(Copy, Metadata)> = Vec::new();
    let mut consider = |r: Result<Option<Copy>, HeaderError>, valid: &mut Vec<_>| match r {
        Ok(Some(c)) => match luks2_json::parse(&c.json, c.hdr_size, dev_size) {
            Ok(m) => {
                valid.push((c, m));
                true
            }
            Err(e) => {
                first_err.get_or_insert(e);
                false
            }
        },
        Ok(None) => false,
        Err(e) => {
            first_err.get_or_insert(e);
            false
        }
    };
    let primary = read_copy(dev, dev_size, 0);
    let primary_size = primary
        .as_ref()
        .ok()
        .and_then(|c| c.as_ref())
        .map(|c| c.hdr_size);
    consider(primary, &mut valid);
    match primary_size {
        Some(size) => {
            consider(read_copy(dev, dev_size, size), &mut valid);
        }
        None => {
            // The primary is unreadable: look for a secondary at every allowed offset.
            for off in HDR_SIZES {
                if consider(read_copy(dev, dev_size, off), &mut valid) {
                    break;
                }
            }
        }
    }
    // On equal seqid the primary (pushed first) wins.
    let mut best: Option<(Copy, Metadata)> = None;
    for v in valid {
        if best.as_ref().is_none_or(|b| v.0.seqid > b.0.seqid) {
            best = Some(v);
        }
    }
    let (copy, meta) = match best {
        Some(b) => b,
        None => return Err(first_err.unwrap_or(HeaderError::NotLuks)),
    };
    let mut keyslots = Vec::with_capacity(meta.keyslots.len());
    for (mut k, area_offset) in meta.keyslots {
        k.material = read_material(dev, dev_size, area_offset, k.key_len, k.stripes)?;
        keyslots.push(k);
    }
    Ok(Header {
        version: LuksVersion::Luks2,
        uuid: copy.uuid,
        keyslots,
        digests: meta.digests,
        payload_digest: meta.payload_digest,
        payload: meta.payload,
    })
}

/// Writes both binary headers and JSON areas for `json` (the JSON text without NUL).
/// Returns `2 * hdr_size` bytes: primary then secondary.
pub(crate) fn write_luks2_headers(
    json: &str,
    hdr_size: u64,
    seqid: u64,
    uuid: &str,
    label: &str,
) -> Option<Vec<u8>> {
    let size = usize::try_from(hdr_size).ok()?;
    let json_len = size.checked_sub(LUKS2_BINARY_LEN)?;
    if json.len() >= json_len || uuid.len() >= 40 || label.len() >= 48 {
        return None;
    }
    let mut out = vec![0u8; 2 * size];
    for (i, copy) in out.chunks_exact_mut(size).enumerate() {
        let offset = if i == 0 { 0 } else { hdr_size };
        let (bin, area) = copy.split_at_mut(LUKS2_BINARY_LEN);
        bin[..6].copy_from_slice(if i == 0 {
            &LUKS_MAGIC
        } else {
            &LUKS2_SECONDARY_MAGIC
        });
        bin[6..8].copy_from_slice(&2u16.to_be_bytes());
        bin[8..16].copy_from_slice(&hdr_size.to_be_bytes());
        bin[16..24].copy_from_slice(&seqid.to_be_bytes());
        bin[24..24 + label.len()].copy_from_slice(label.as_bytes());
        bin[72..78].copy_from_slice(b"sha256");
        getrandom::getrandom(&mut bin[104..168]).ok()?;
        bin[168..168 + uuid.len()].copy_from_slice(uuid.as_bytes());
        bin[256..264].copy_from_slice(&offset.to_be_bytes());
        area[..json.len()].copy_from_slice(json.as_bytes());
        let (sum, n) = checksum(HashAlg::Sha256, bin, area);
        bin[CSUM_OFFSET..CSUM_OFFSET + n].copy_from_slice(&sum[..n]);
    }
    Some(out)
}
