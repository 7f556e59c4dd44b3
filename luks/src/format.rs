//! Formatting new LUKS1/LUKS2 volumes and encrypting a plaintext image into the payload
//! (for `krun-sev mkcw`). Output is accepted by cryptsetup; LUKS1 can use buildah/luksy's
//! layout (payload at 4040 sectors) or cryptsetup's (payload aligned to 1 MiB).

use std::io::{Read, Write};

use base64::Engine as _;
use serde_json::json;
use zeroize::Zeroizing;

use crate::af::{self, AfError};
use crate::cipher::{CipherError, CipherMode, CipherSpec, SectorCipher};
use crate::hash::{HashAlg, HashError};
use crate::header::{write_luks2_headers, Luks1Fields, Luks1Slot, LUKS1_STRIPES};
use crate::kdf::{Kdf, KdfError, KdfLimits};
use crate::key::MasterKey;
use crate::payload::{Payload, PayloadError};

/// Errors from formatting and encrypting.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The options are inconsistent.
    #[error("invalid format options: {reason}")]
    Options {
        /// What is wrong.
        reason: String,
    },
    /// The random generator failed.
    #[error("random number generator failed")]
    Random(#[source] getrandom::Error),
    /// Key derivation failed.
    #[error("key derivation failed")]
    Kdf(#[source] KdfError),
    /// Digest computation failed.
    #[error("master key digest failed")]
    Digest(#[source] HashError),
    /// Anti-forensic split failed.
    #[error("anti-forensic split failed")]
    Af(#[source] AfError),
    /// Keyslot encryption failed.
    #[error("keyslot encryption failed")]
    Cipher(#[source] CipherError),
    /// Payload encryption failed.
    #[error("payload encryption failed")]
    Payload(#[source] PayloadError),
    /// Reading the plaintext image failed.
    #[error("cannot read the plaintext image")]
    Read(#[source] std::io::Error),
    /// Writing the output failed.
    #[error("cannot write the encrypted image")]
    Write(#[source] std::io::Error),
}

fn invalid(reason: impl Into<String>) -> FormatError {
    FormatError::Options {
        reason: reason.into(),
    }
}

/// Where a LUKS1 payload starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Luks1Layout {
    /// Right after the last keyslot area (buildah/luksy: 4040 sectors for a 64-byte key).
    Luksy,
    /// Aligned up to 1 MiB (cryptsetup: 4096 sectors for a 64-byte key).
    Cryptsetup,
}

/// LUKS1 format options. `Default` is what buildah mkcw writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Luks1Options {
    /// Payload cipher (aes-xts-plain64 with a 64-byte key by default).
    pub cipher: CipherSpec,
    /// Hash for PBKDF2, the AF splitter and the master-key digest.
    pub hash: HashAlg,
    /// PBKDF2 iterations of keyslot 0 (luksy benchmarks about 1 s; tests use small values).
    pub keyslot_iterations: u32,
    /// PBKDF2 iterations of the master-key digest (luksy: 4000).
    pub mk_digest_iterations: u32,
    /// Payload placement.
    pub layout: Luks1Layout,
}

impl Default for Luks1Options {
    fn default() -> Self {
        Self {
            cipher: CipherSpec::XTS_512,
            hash: HashAlg::Sha256,
            keyslot_iterations: 1_000_000,
            mk_digest_iterations: 4000,
            layout: Luks1Layout::Luksy,
        }
    }
}

/// LUKS2 format options. `Default` follows cryptsetup's layout (16 KiB metadata copies,
/// data at 16 MiB) with a PBKDF2 keyslot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks2Options {
    /// Payload and keyslot cipher.
    pub cipher: CipherSpec,
    /// Payload sector size: 512, 1024, 2048 or 4096.
    pub sector_size: u32,
    /// Keyslot KDF (PBKDF2 or Argon2).
    pub kdf: Kdf,
    /// Hash of the volume key digest.
    pub digest_hash: HashAlg,
    /// PBKDF2 iterations of the digest (cryptsetup's minimum is 1000).
    pub digest_iterations: u32,
    /// Hash of the AF splitter.
    pub af_hash: HashAlg,
    /// Header label (at most 47 bytes).
    pub label: String,
    /// Size of one header copy (binary + JSON): 16 KiB .. 4 MiB, a power of two.
    pub metadata_size: u64,
    /// Byte offset of the payload.
    pub data_offset: u64,
}

impl Default for Luks2Options {
    fn default() -> Self {
        Self {
            cipher: CipherSpec::XTS_512,
            sector_size: 512,
            kdf: Kdf::Pbkdf2 {
                hash: HashAlg::Sha256,
                iterations: 1_000_000,
            },
            digest_hash: HashAlg::Sha256,
            digest_iterations: 1000,
            af_hash: HashAlg::Sha256,
            label: String::new(),
            metadata_size: 0x4000,
            data_offset: 16 << 20,
        }
    }
}

/// A freshly formatted volume: the bytes before the payload, its key, and the payload layout.
#[derive(Debug)]
pub struct NewVolume {
    /// Everything from byte 0 to the payload offset (headers and keyslot areas).
    pub header: Vec<u8>,
    /// The volume key (zeroized on drop).
    pub key: MasterKey,
    /// Payload layout; `payload.offset == header.len()`.
    pub payload: Payload,
    /// The UUID written into the header.
    pub uuid: String,
}

fn random(buf: &mut [u8]) -> Result<(), FormatError> {
    getrandom::getrandom(buf).map_err(FormatError::Random)
}

fn random_uuid() -> Result<String, FormatError> {
    let mut b = [0u8; 16];
    random(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// A limit that admits whatever the caller chose to write.
const NO_LIMITS: KdfLimits = KdfLimits {
    max_pbkdf2_iterations: u32::MAX,
    max_argon2_memory_kib: u32::MAX,
    max_argon2_work_kib: u64::MAX,
};

/// Splits `key`, encrypts the stripes under a key derived from `passphrase`, and returns the
/// area bytes (a whole number of 512-byte sectors).
fn keyslot_material(
    key: &MasterKey,
    passphrase: &[u8],
    kdf: &Kdf,
    salt: &[u8],
    area_cipher: CipherSpec,
    af_hash: HashAlg,
    stripes: u32,
) -> Result<Vec<u8>, FormatError> {
    let mut area_key = Zeroizing::new(vec![0u8; area_cipher.key_len()]);
    kdf.derive(passphrase, salt, &mut area_key, &NO_LIMITS)
        .map_err(FormatError::Kdf)?;
    let split = af::split(key.as_bytes(), stripes, af_hash).map_err(FormatError::Af)?;
    let mut material = vec![0u8; split.len().div_ceil(512) * 512];
    material[..split.len()].copy_from_slice(&split);
    let cipher = SectorCipher::new(area_cipher, &area_key).map_err(FormatError::Cipher)?;
    for (i, sector) in material.chunks_mut(512).enumerate() {
        let iv = u64::try_from(i).map_err(|_| invalid("keyslot too large"))?;
        cipher
            .encrypt_sector(iv, sector)
            .map_err(FormatError::Cipher)?;
    }
    Ok(material)
}

/// Formats a LUKS1 volume with `passphrase` in keyslot 0 and a fresh random volume key.
pub fn format_luks1(passphrase: &[u8], opts: &Luks1Options) -> Result<NewVolume, FormatError> {
    if opts.keyslot_iterations == 0 || opts.mk_digest_iterations == 0 {
        return Err(invalid("iteration counts must be positive"));
    }
    let key_len = opts.cipher.key_len();
    let key = MasterKey::random(key_len).map_err(FormatError::Random)?;
    let mut mk_salt = [0u8; 32];
    random(&mut mk_salt)?;
    let mut mk_digest = [0u8; 20];
    opts.hash
        .pbkdf2(
            key.as_bytes(),
            &mk_salt,
            opts.mk_digest_iterations,
            &mut mk_digest,
        )
        .map_err(FormatError::Digest)?;

    // Keyslot areas are 4 KiB aligned, starting after the first 4 KiB (cryptsetup and luksy).
    let area_sectors = u32::try_from((key_len * LUKS1_STRIPES as usize).div_ceil(512))
        .map_err(|_| invalid("key too large"))?;
    let stride = area_sectors.div_ceil(8) * 8;
    let slots_end = 8 + 8 * stride;
    let payload_offset = match opts.layout {
        Luks1Layout::Luksy => slots_end,
        Luks1Layout::Cryptsetup => slots_end.div_ceil(2048) * 2048,
    };
    let mut slots = [Luks1Slot {
        active: false,
        iterations: 0,
        salt: [0; 32],
        material_offset: 0,
        stripes: LUKS1_STRIPES,
    }; 8];
    for (i, s) in (0u32..).zip(slots.iter_mut()) {
        s.material_offset = 8 + i * stride;
    }
    slots[0].active = true;
    slots[0].iterations = opts.keyslot_iterations;
    random(&mut slots[0].salt)?;
    let kdf = Kdf::Pbkdf2 {
        hash: opts.hash,
        iterations: opts.keyslot_iterations,
    };
    let material = keyslot_material(
        &key,
        passphrase,
        &kdf,
        &slots[0].salt,
        opts.cipher,
        opts.hash,
        LUKS1_STRIPES,
    )?;
    let uuid = random_uuid()?;
    let fields = Luks1Fields {
        cipher: opts.cipher,
        hash: opts.hash,
        payload_offset,
        mk_digest,
        mk_salt,
        mk_iterations: opts.mk_digest_iterations,
        uuid: uuid.clone(),
        slots,
    };
    let offset = u64::from(payload_offset) * 512;
    let mut header = vec![0u8; usize::try_from(offset).map_err(|_| invalid("offset"))?];
    let h = fields.to_bytes();
    header[..h.len()].copy_from_slice(&h);
    let m0 = usize::try_from(slots[0].material_offset).map_err(|_| invalid("offset"))? * 512;
    header[m0..m0 + material.len()].copy_from_slice(&material);
    Ok(NewVolume {
        header,
        key,
        payload: Payload {
            cipher: opts.cipher,
            offset,
            size: None,
            sector_size: 512,
            iv_tweak: 0,
        },
        uuid,
    })
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Formats a LUKS2 volume with `passphrase` in keyslot 0 and a fresh random volume key.
pub fn format_luks2(passphrase: &[u8], opts: &Luks2Options) -> Result<NewVolume, FormatError> {
    let hdr = opts.metadata_size;
    if !crate::header::HDR_SIZES.contains(&hdr) {
        return Err(invalid(format!("metadata size {hdr} is not allowed")));
    }
    if !matches!(opts.sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(invalid("sector size must be 512, 1024, 2048 or 4096"));
    }
    if opts.digest_iterations == 0 || opts.label.len() >= 48 {
        return Err(invalid(
            "digest iterations must be positive, label under 48 bytes",
        ));
    }
    if opts.data_offset % 4096 != 0 {
        return Err(invalid("data offset must be a multiple of 4096"));
    }
    opts.kdf.check(&NO_LIMITS).map_err(FormatError::Kdf)?;
    let key_len = opts.cipher.key_len();
    let key = MasterKey::random(key_len).map_err(FormatError::Random)?;

    let area_offset = 2 * hdr;
    let af_len = key_len * LUKS1_STRIPES as usize;
    let area_size = u64::try_from(af_len.div_ceil(4096) * 4096).map_err(|_| invalid("area"))?;
    let keyslots_size = opts
        .data_offset
        .checked_sub(area_offset)
        .filter(|&s| s >= area_size && s <= 128 << 20)
        .ok_or_else(|| invalid("data offset leaves no room for the keyslot area"))?;

    let mut kdf_salt = [0u8; 32];
    random(&mut kdf_salt)?;
    let material = keyslot_material(
        &key,
        passphrase,
        &opts.kdf,
        &kdf_salt,
        opts.cipher,
        opts.af_hash,
        LUKS1_STRIPES,
    )?;
    let mut digest_salt = [0u8; 32];
    random(&mut digest_salt)?;
    let mut digest = vec![0u8; opts.digest_hash.digest_len()];
    opts.digest_hash
        .pbkdf2(
            key.as_bytes(),
            &digest_salt,
            opts.digest_iterations,
            &mut digest,
        )
        .map_err(FormatError::Digest)?;

    let kdf_json = match opts.kdf {
        Kdf::Pbkdf2 { hash, iterations } => json!({
            "type": "pbkdf2", "hash": hash.name(), "iterations": iterations, "salt": b64(&kdf_salt),
        }),
        Kdf::Argon2 {
            time,
            memory_kib,
            parallel,
            ..
        } => json!({
            "type": opts.kdf.name(), "time": time, "memory": memory_kib, "cpus": parallel,
            "salt": b64(&kdf_salt),
        }),
    };
    let enc = opts.cipher.dm_name();
    let meta = json!({
        "keyslots": { "0": {
            "type": "luks2",
            "key_size": key_len,
            "af": { "type": "luks1", "stripes": LUKS1_STRIPES, "hash": opts.af_hash.name() },
            "area": {
                "type": "raw",
                "offset": area_offset.to_string(),
                "size": area_size.to_string(),
                "encryption": enc,
                "key_size": key_len,
            },
            "kdf": kdf_json,
        }},
        "tokens": {},
        "segments": { "0": {
            "type": "crypt",
            "offset": opts.data_offset.to_string(),
            "size": "dynamic",
            "iv_tweak": "0",
            "encryption": enc,
            "sector_size": opts.sector_size,
        }},
        "digests": { "0": {
            "type": "pbkdf2",
            "keyslots": ["0"],
            "segments": ["0"],
            "hash": opts.digest_hash.name(),
            "iterations": opts.digest_iterations,
            "salt": b64(&digest_salt),
            "digest": b64(&digest),
        }},
        "config": {
            "json_size": (hdr - 4096).to_string(),
            "keyslots_size": keyslots_size.to_string(),
        },
    });
    let uuid = random_uuid()?;
    let headers = write_luks2_headers(&meta.to_string(), hdr, 1, &uuid, &opts.label)
        .ok_or_else(|| invalid("metadata does not fit the header"))?;
    let mut header = vec![0u8; usize::try_from(opts.data_offset).map_err(|_| invalid("offset"))?];
    header[..headers.len()].copy_from_slice(&headers);
    let a = usize::try_from(area_offset).map_err(|_| invalid("offset"))?;
    header[a..a + material.len()].copy_from_slice(&material);
    Ok(NewVolume {
        header,
        key,
        payload: Payload {
            cipher: opts.cipher,
            offset: opts.data_offset,
            size: None,
            sector_size: opts.sector_size,
            iv_tweak: 0,
        },
        uuid,
    })
}

/// PBKDF2 iterations that take about `target` on this machine (as luksy and cryptsetup
/// benchmark), at least 1000 (cryptsetup's minimum).
pub fn benchmark_pbkdf2(hash: HashAlg, key_len: usize, target: std::time::Duration) -> u32 {
    const PROBE: u32 = 20_000;
    let mut out = Zeroizing::new(vec![0u8; key_len.max(1)]);
    let start = std::time::Instant::now();
    // The probe runs with a fixed, non-secret input; a zero count is impossible here.
    let _ = hash.pbkdf2(b"benchmark", &[0u8; 32], PROBE, &mut out);
    let spent = start.elapsed().as_secs_f64().max(1e-6);
    let n = f64::from(PROBE) * target.as_secs_f64() / spent;
    if n >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        // In range: checked just above, and the cast rounds toward zero.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = n as u32;
        n.max(1000)
    }
}

/// Plaintext processed per step; bounds memory use of [`write_encrypted`].
pub const CHUNK: usize = 1 << 20;

/// Writes `vol.header` and then `plain`, encrypted, to `out`, in [`CHUNK`]-sized steps. A
/// final partial sector is zero-padded. `progress` gets the plaintext bytes consumed so far
/// after each step. Returns the payload length written (a multiple of the sector size).
pub fn write_encrypted<R: Read, W: Write>(
    vol: &NewVolume,
    mut plain: R,
    mut out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, FormatError> {
    let cipher = vol.payload.cipher(&vol.key).map_err(FormatError::Payload)?;
    let ss = usize::try_from(vol.payload.sector_size).map_err(|_| invalid("sector size"))?;
    out.write_all(&vol.header).map_err(FormatError::Write)?;
    let mut buf = Zeroizing::new(vec![0u8; CHUNK]);
    let mut done: u64 = 0;
    let mut sector: u64 = 0;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            match plain.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FormatError::Read(e)),
            }
        }
        if filled == 0 {
            break;
        }
        let padded = filled.div_ceil(ss) * ss;
        buf[filled..padded].fill(0);
        cipher
            .encrypt(sector, &mut buf[..padded])
            .map_err(FormatError::Payload)?;
        out.write_all(&buf[..padded]).map_err(FormatError::Write)?;
        sector += u64::try_from(padded / ss).map_err(|_| invalid("size"))?;
        done += u64::try_from(filled).map_err(|_| invalid("size"))?;
        progress(done);
        if filled < CHUNK {
            break;
        }
    }
    out.flush().map_err(FormatError::Write)?;
    Ok(sector * u64::from(vol.payload.sector_size))
}

impl CipherSpec {
    /// aes-xts-plain64 with a 512-bit key (AES-256-XTS), the LUKS default.
    pub const XTS_512: CipherSpec = CipherSpec::const_new(CipherMode::XtsPlain64, 64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_scales_with_target_and_has_a_floor() {
        let tiny = benchmark_pbkdf2(HashAlg::Sha256, 64, std::time::Duration::from_nanos(1));
        assert_eq!(tiny, 1000);
        let big = benchmark_pbkdf2(HashAlg::Sha1, 64, std::time::Duration::from_secs(5));
        assert!(big > 1000, "{big}");
    }

    #[test]
    fn luks1_layout_offsets_follow_the_key_size() {
        let opts = |cipher, layout| Luks1Options {
            cipher,
            layout,
            keyslot_iterations: 1000,
            mk_digest_iterations: 1000,
            ..Luks1Options::default()
        };
        let x256 = CipherSpec::new(CipherMode::XtsPlain64, 32).unwrap();
        for (c, l, sectors) in [
            (CipherSpec::XTS_512, Luks1Layout::Luksy, 4040),
            (CipherSpec::XTS_512, Luks1Layout::Cryptsetup, 4096),
            (x256, Luks1Layout::Luksy, 2056),
            (x256, Luks1Layout::Cryptsetup, 4096),
        ] {
            let v = format_luks1(b"p", &opts(c, l)).unwrap();
            assert_eq!(v.payload.offset, sectors * 512);
            assert_eq!(v.header.len() as u64, v.payload.offset);
            assert_eq!(v.uuid.len(), 36);
        }
    }
}
