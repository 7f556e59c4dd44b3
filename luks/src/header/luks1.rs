//! The LUKS1 on-disk header (592 bytes, big-endian; LUKS1 On-Disk Format Specification 1.2.3).

use std::io::{Read, Seek};

use super::LUKS_MAGIC;
use super::{c_string, corrupt, read_material, Digest, Header, HeaderError, Keyslot, LuksVersion};
use crate::af;
use crate::cipher::CipherSpec;
use crate::hash::HashAlg;
use crate::kdf::Kdf;
use crate::payload::Payload;

/// Size of the LUKS1 header structure.
pub(crate) const LUKS1_HEADER_LEN: usize = 592;
/// cryptsetup refuses LUKS1 keyslots with any other stripe count.
pub(crate) const LUKS1_STRIPES: u32 = 4000;
const SLOT_ACTIVE: u32 = 0x00ac_71f3;
const SLOT_DISABLED: u32 = 0x0000_dead;
const SLOTS_OFFSET: usize = 208;
const SLOT_LEN: usize = 48;

/// One LUKS1 keyslot record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Luks1Slot {
    pub active: bool,
    pub iterations: u32,
    pub salt: [u8; 32],
    /// In 512-byte sectors.
    pub material_offset: u32,
    pub stripes: u32,
}

/// The LUKS1 header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Luks1Fields {
    pub cipher: CipherSpec,
    pub hash: HashAlg,
    /// In 512-byte sectors.
    pub payload_offset: u32,
    pub mk_digest: [u8; 20],
    pub mk_salt: [u8; 32],
    pub mk_iterations: u32,
    pub uuid: String,
    pub slots: [Luks1Slot; 8],
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn put_str(out: &mut [u8], s: &str) {
    let n = s.len().min(out.len().saturating_sub(1));
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
}

impl Luks1Fields {
    /// Serializes the 592-byte header.
    pub(crate) fn to_bytes(&self) -> [u8; LUKS1_HEADER_LEN] {
        let mut h = [0u8; LUKS1_HEADER_LEN];
        h[..6].copy_from_slice(&LUKS_MAGIC);
        h[6..8].copy_from_slice(&1u16.to_be_bytes());
        let (name, mode) = self.cipher.luks1_names();
        put_str(&mut h[8..40], name);
        put_str(&mut h[40..72], mode);
        put_str(&mut h[72..104], self.hash.name());
        h[104..108].copy_from_slice(&self.payload_offset.to_be_bytes());
        // Key sizes are at most 64 bytes (checked by CipherSpec).
        let key_bytes = u32::try_from(self.cipher.key_len()).unwrap_or(0);
        h[108..112].copy_from_slice(&key_bytes.to_be_bytes());
        h[112..132].copy_from_slice(&self.mk_digest);
        h[132..164].copy_from_slice(&self.mk_salt);
        h[164..168].copy_from_slice(&self.mk_iterations.to_be_bytes());
        put_str(&mut h[168..208], &self.uuid);
        for (i, s) in self.slots.iter().enumerate() {
            let o = SLOTS_OFFSET + i * SLOT_LEN;
            let state = if s.active { SLOT_ACTIVE } else { SLOT_DISABLED };
            h[o..o + 4].copy_from_slice(&state.to_be_bytes());
            h[o + 4..o + 8].copy_from_slice(&s.iterations.to_be_bytes());
            h[o + 8..o + 40].copy_from_slice(&s.salt);
            h[o + 40..o + 44].copy_from_slice(&s.material_offset.to_be_bytes());
            h[o + 44..o + 48].copy_from_slice(&s.stripes.to_be_bytes());
        }
        h
    }

    /// Parses and checks the header fields that do not depend on the device.
    pub(crate) fn parse(h: &[u8; LUKS1_HEADER_LEN]) -> Result<Self, HeaderError> {
        if h[..6] != LUKS_MAGIC || h[6..8] != [0, 1] {
            return Err(HeaderError::NotLuks);
        }
        let name = c_string(&h[8..40], "cipher name")?;
        let mode = c_string(&h[40..72], "cipher mode")?;
        let hash_name = c_string(&h[72..104], "hash spec")?;
        let key_bytes = usize::try_from(be32(h, 108)).map_err(|_| corrupt("key size"))?;
        let cipher =
            CipherSpec::from_luks1(&name, &mode, key_bytes).map_err(HeaderError::Cipher)?;
        let hash = HashAlg::from_name(&hash_name).map_err(HeaderError::Hash)?;
        let mk_iterations = be32(h, 164);
        if mk_iterations == 0 {
            return Err(corrupt("master key digest iteration count is zero"));
        }
        let mut mk_digest = [0u8; 20];
        mk_digest.copy_from_slice(&h[112..132]);
        let mut mk_salt = [0u8; 32];
        mk_salt.copy_from_slice(&h[132..164]);
        let uuid = c_string(&h[168..208], "UUID")?;
        let mut slots = [Luks1Slot {
            active: false,
            iterations: 0,
            salt: [0; 32],
            material_offset: 0,
            stripes: 0,
        }; 8];
        for (i, s) in slots.iter_mut().enumerate() {
            let o = SLOTS_OFFSET + i * SLOT_LEN;
            s.active = match be32(h, o) {
                SLOT_ACTIVE => true,
                SLOT_DISABLED => false,
                v => return Err(corrupt(format!("keyslot {i} has invalid state {v:#x}"))),
            };
            s.iterations = be32(h, o + 4);
            s.salt.copy_from_slice(&h[o + 8..o + 40]);
            s.material_offset = be32(h, o + 40);
            s.stripes = be32(h, o + 44);
            if s.active && s.iterations == 0 {
                return Err(corrupt(format!("keyslot {i} iteration count is zero")));
            }
        }
        Ok(Self {
            cipher,
            hash,
            payload_offset: be32(h, 104),
            mk_digest,
            mk_salt,
            mk_iterations,
            uuid,
            slots,
        })
    }

    /// Keyslot area length in 512-byte sectors.
    pub(crate) fn slot_sectors(&self, stripes: u32) -> Option<u64> {
        let bytes = af::split_len(self.cipher.key_len(), stripes)?;
        u64::try_from(bytes.div_ceil(512)).ok()
    }

    /// The checks cryptsetup's `LUKS_check_keyslots` makes, plus the device size.
    fn check_layout(&self, dev_size: u64) -> Result<(), HeaderError> {
        let payload = u64::from(self.payload_offset);
        if payload == 0 {
            return Err(HeaderError::Unsupported {
                feature: "LUKS1 detached header (payload offset 0)".into(),
            });
        }
        if payload * 512 > dev_size {
            return Err(corrupt(format!(
                "payload offset {payload} sectors is past the end of the device"
            )));
        }
        let mut areas = Vec::with_capacity(8);
        for (i, s) in self.slots.iter().enumerate() {
            if s.stripes != LUKS1_STRIPES {
                return Err(corrupt(format!(
                    "keyslot {i} has {} stripes, not 4000",
                    s.stripes
                )));
            }
            let start = u64::from(s.material_offset);
            if start * 512 < LUKS1_HEADER_LEN as u64 {
                return Err(corrupt(format!("keyslot {i} overlaps the header")));
            }
            let len = self
                .slot_sectors(s.stripes)
                .ok_or_else(|| corrupt("keyslot size overflows"))?;
            let end = start + len;
            if end > payload {
                return Err(corrupt(format!("keyslot {i} overlaps the payload")));
            }
            areas.push((start, end, i));
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
        Ok(())
    }
}

/// Parses, validates and loads a LUKS1 header.
pub(super) fn parse<R: Read + Seek>(
    dev: &mut R,
    dev_size: u64,
    h: &[u8; LUKS1_HEADER_LEN],
) -> Result<Header, HeaderError> {
    let f = Luks1Fields::parse(h)?;
    f.check_layout(dev_size)?;
    let digest = Digest {
        hash: f.hash,
        iterations: f.mk_iterations,
        salt: f.mk_salt.to_vec(),
        value: f.mk_digest.to_vec(),
    };
    let mut keyslots = Vec::new();
    for (i, s) in f.slots.iter().enumerate().filter(|(_, s)| s.active) {
        let key_len = f.cipher.key_len();
        keyslots.push(Keyslot {
            id: u32::try_from(i).unwrap_or(u32::MAX),
            priority: 1,
            kdf: Kdf::Pbkdf2 {
                hash: f.hash,
                iterations: s.iterations,
            },
            salt: s.salt.to_vec(),
            area_cipher: f.cipher,
            key_len,
            stripes: s.stripes,
            af_hash: f.hash,
            digest: 0,
            material: read_material(
                dev,
                dev_size,
                u64::from(s.material_offset) * 512,
                key_len,
                s.stripes,
            )?,
        });
    }
    Ok(Header {
        version: LuksVersion::Luks1,
        uuid: f.uuid,
        keyslots,
        digests: vec![digest],
        payload_digest: 0,
        payload: Payload {
            cipher: f.cipher,
            offset: u64::from(f.payload_offset) * 512,
            size: None,
            sector_size: 512,
            iv_tweak: 0,
        },
    })
}
