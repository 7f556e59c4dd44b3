//! The SEV launch-secret payload, built by `krun-kbs` and read by the guest init: an
//! OVMF/efi_secret GUID table, or the reference-kbs form (the passphrase zero-padded to 512
//! bytes). The guest accepts both. Format of the table (research/psp-model.md §6):
//!
//! ```text
//! 0   16  header GUID 1e74f542-71dd-4d66-963e-ef4287ff173b
//! 16   4  u32 LE length of the table (20 + all entries, without trailing padding)
//! 20  ..  entries: GUID (16) ‖ u32 LE length (16 + 4 + data) ‖ data
//! ```
//!
//! GUIDs are in EFI byte order (first three fields little-endian). The disk passphrase entry
//! is [`LUKS_KEY_GUID`], `736869e5-84f0-4973-92ec-06879ce3da0b`, the GUID grub and the
//! confidential-containers tooling use for "the LUKS key". Its data is the passphrase; trailing
//! NUL bytes are stripped, as sevctl-style tables terminate it with one. Entries whose GUID is
//! all zeros (efi_secret's "wiped") are skipped. Without the header GUID the payload is the
//! reference-kbs form: the passphrase is the bytes before the first NUL; an all-zero slot means
//! nothing was injected.

use zeroize::Zeroizing;

/// Secret table header GUID 1e74f542-71dd-4d66-963e-ef4287ff173b in EFI byte order.
pub const TABLE_GUID: [u8; 16] = [
    0x42, 0xf5, 0x74, 0x1e, 0xdd, 0x71, 0x66, 0x4d, 0x96, 0x3e, 0xef, 0x42, 0x87, 0xff, 0x17, 0x3b,
];
/// Entry GUID 736869e5-84f0-4973-92ec-06879ce3da0b ("LUKS key") in EFI byte order.
pub const LUKS_KEY_GUID: [u8; 16] = [
    0xe5, 0x69, 0x68, 0x73, 0xf0, 0x84, 0x73, 0x49, 0x92, 0xec, 0x06, 0x87, 0x9c, 0xe3, 0xda, 0x0b,
];
/// reference-kbs pads the passphrase to this many bytes.
pub const REFERENCE_PADDED_LEN: usize = 512;
/// Largest payload the broker produces (it must fit the one-page launch-secret slot).
pub const MAX_PAYLOAD: usize = 4096;
/// GUID plus length: the table header and every entry header.
const HEADER_LEN: usize = 20;
const NULL_GUID: [u8; 16] = [0; 16];

/// Errors from building or reading a secret payload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretTableError {
    #[error("secret is too large for the launch-secret page")]
    TooLarge,
    #[error("no launch secret was injected")]
    NotPopulated,
    #[error("secret table is corrupted")]
    Corrupted,
    #[error("secret table has no LUKS key entry")]
    NoLuksKey,
    #[error("the disk passphrase in the launch secret is empty")]
    Empty,
}

/// One table entry: its GUID and data (without GUID and length).
#[derive(Debug, PartialEq, Eq)]
pub struct SecretEntry<'a> {
    pub guid: [u8; 16],
    pub data: &'a [u8],
}

/// Builds a table with one LUKS-key entry holding `passphrase ‖ NUL`, padded to a multiple of
/// 16 bytes as sevctl does (LAUNCH_SECRET lengths are multiples of 16).
pub fn build(passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretTableError> {
    let entry_len = HEADER_LEN + passphrase.len() + 1;
    let table_len = HEADER_LEN + entry_len;
    let padded = table_len + (16 - table_len % 16);
    if padded > MAX_PAYLOAD {
        return Err(SecretTableError::TooLarge);
    }
    let entry_len32 = u32::try_from(entry_len).map_err(|_| SecretTableError::TooLarge)?;
    let table_len32 = u32::try_from(table_len).map_err(|_| SecretTableError::TooLarge)?;
    let mut out = Zeroizing::new(Vec::with_capacity(padded));
    out.extend_from_slice(&TABLE_GUID);
    out.extend_from_slice(&table_len32.to_le_bytes());
    out.extend_from_slice(&LUKS_KEY_GUID);
    out.extend_from_slice(&entry_len32.to_le_bytes());
    out.extend_from_slice(passphrase);
    out.resize(padded, 0);
    Ok(out)
}

fn read_u32(b: &[u8], off: usize) -> Result<usize, SecretTableError> {
    let s = off
        .checked_add(4)
        .and_then(|end| b.get(off..end))
        .ok_or(SecretTableError::Corrupted)?;
    usize::try_from(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .map_err(|_| SecretTableError::Corrupted)
}

/// The entries of the table at the start of `area`, with efi_secret's checks: every length
/// stays inside the table and the table inside `area`. Entries with the null GUID are skipped.
pub fn entries(area: &[u8]) -> Result<Vec<SecretEntry<'_>>, SecretTableError> {
    if !area.starts_with(&TABLE_GUID) {
        return Err(SecretTableError::NotPopulated);
    }
    let total = read_u32(area, 16)?;
    if total < HEADER_LEN || total > area.len() {
        return Err(SecretTableError::Corrupted);
    }
    let mut found = Vec::new();
    let mut off = HEADER_LEN;
    while off < total {
        let header_end = off
            .checked_add(HEADER_LEN)
            .filter(|&end| end <= total)
            .ok_or(SecretTableError::Corrupted)?;
        let len = read_u32(area, off + 16)?;
        let end = off.checked_add(len).ok_or(SecretTableError::Corrupted)?;
        if len < HEADER_LEN || end > total {
            return Err(SecretTableError::Corrupted);
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&area[off..off + 16]);
        if guid != NULL_GUID {
            found.push(SecretEntry {
                guid,
                data: &area[header_end..end],
            });
        }
        off = end;
    }
    Ok(found)
}

/// Extracts the LUKS passphrase from a decrypted launch secret: the LUKS-key entry of a secret
/// table (trailing NULs removed), or, without the table GUID, the bytes before the first NUL.
pub fn passphrase(payload: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretTableError> {
    if !payload.starts_with(&TABLE_GUID) {
        let end = payload
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(payload.len());
        if end == 0 {
            return Err(SecretTableError::NotPopulated);
        }
        return Ok(Zeroizing::new(payload[..end].to_vec()));
    }
    let table = entries(payload)?;
    let entry = table
        .iter()
        .find(|e| e.guid == LUKS_KEY_GUID)
        .ok_or(SecretTableError::NoLuksKey)?;
    let trimmed = entry
        .data
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1);
    if trimmed == 0 {
        return Err(SecretTableError::Empty);
    }
    Ok(Zeroizing::new(entry.data[..trimmed].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sevctl-built example from psp-model.md §6.2: one entry "luks-passphrase\0",
    /// 64 bytes in all.
    fn documented_example() -> Vec<u8> {
        hex::decode(concat!(
            "42f5741edd71664d963eef4287ff173b",
            "38000000",
            "e5696873f084734992ec06879ce3da0b",
            "24000000",
            "6c756b732d70617373706872617365",
            "00",
            "0000000000000000"
        ))
        .unwrap()
    }

    fn entry(guid: [u8; 16], data: &[u8]) -> Vec<u8> {
        let mut e = guid.to_vec();
        e.extend_from_slice(&(20 + u32::try_from(data.len()).unwrap()).to_le_bytes());
        e.extend_from_slice(data);
        e
    }

    fn table(entries: &[Vec<u8>], area: usize) -> Vec<u8> {
        let body: Vec<u8> = entries.concat();
        let mut t = TABLE_GUID.to_vec();
        t.extend_from_slice(&(20 + u32::try_from(body.len()).unwrap()).to_le_bytes());
        t.extend_from_slice(&body);
        t.resize(area, 0);
        t
    }

    const OTHER_GUID: [u8; 16] = [1, 0, 0, 0, 2, 0, 3, 0, 4, 4, 4, 4, 4, 4, 4, 4];

    #[test]
    fn table_matches_psp_model_worked_example() {
        let t = build(b"luks-passphrase").unwrap();
        assert_eq!(t.as_slice(), documented_example().as_slice());
        assert_eq!(passphrase(&t).unwrap().as_slice(), b"luks-passphrase");
        // In a page-sized slot, as the guest sees it.
        let mut slot = documented_example();
        slot.resize(4096, 0);
        assert_eq!(passphrase(&slot).unwrap().as_slice(), b"luks-passphrase");
    }

    #[test]
    fn other_and_null_entries_are_skipped() {
        let area = table(
            &[
                entry(OTHER_GUID, b"x"),
                entry(NULL_GUID, b"wiped"),
                entry(LUKS_KEY_GUID, b"pw"),
            ],
            4096,
        );
        let found = entries(&area).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[0],
            SecretEntry {
                guid: OTHER_GUID,
                data: b"x"
            }
        );
        assert_eq!(passphrase(&area).unwrap().as_slice(), b"pw");
    }

    #[test]
    fn reference_padded_form_is_accepted() {
        let mut p = b"hunter2".to_vec();
        p.resize(REFERENCE_PADDED_LEN, 0);
        assert_eq!(passphrase(&p).unwrap().as_slice(), b"hunter2");
        assert_eq!(passphrase(&[0u8; 16]), Err(SecretTableError::NotPopulated));
        assert_eq!(passphrase(&[]), Err(SecretTableError::NotPopulated));
        assert_eq!(entries(&[0u8; 4096]), Err(SecretTableError::NotPopulated));
    }

    #[test]
    fn corrupted_tables_are_refused() {
        let mut t = build(b"x").unwrap().to_vec();
        t[16] = 0xff; // total length beyond the buffer
        assert_eq!(passphrase(&t), Err(SecretTableError::Corrupted));
        let mut t = build(b"x").unwrap().to_vec();
        t[36] = 3; // entry shorter than its header
        assert_eq!(passphrase(&t), Err(SecretTableError::Corrupted));
        let mut t = documented_example();
        t[36] = 0x30; // entry past the table length
        assert_eq!(passphrase(&t), Err(SecretTableError::Corrupted));
        let mut t = documented_example();
        t[16] = 30; // table ends inside the entry header
        assert_eq!(passphrase(&t), Err(SecretTableError::Corrupted));
        assert_eq!(
            passphrase(&TABLE_GUID),
            Err(SecretTableError::Corrupted),
            "header without a length"
        );
        let mut t = build(b"x").unwrap().to_vec();
        t[20] ^= 1; // other GUID
        assert_eq!(passphrase(&t), Err(SecretTableError::NoLuksKey));
        let empty = table(&[entry(LUKS_KEY_GUID, b"\0\0")], 4096);
        assert_eq!(passphrase(&empty), Err(SecretTableError::Empty));
        assert_eq!(build(&[1u8; MAX_PAYLOAD]), Err(SecretTableError::TooLarge));
    }

    #[test]
    fn mutated_tables_never_panic_and_stay_in_bounds() {
        // Deterministic xorshift mutations of valid tables: every outcome is Ok or an error,
        // and every entry returned lies inside the area.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let base = table(
            &[entry(OTHER_GUID, b"abc"), entry(LUKS_KEY_GUID, b"pw\0")],
            128,
        );
        for _ in 0..20_000 {
            let mut area = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = usize::try_from(next() % 64).unwrap();
                area[at] = u8::try_from(next() & 0xff).unwrap();
            }
            area.truncate(usize::try_from(next() % 129).unwrap());
            if let Ok(found) = entries(&area) {
                for e in found {
                    let start = e.data.as_ptr() as usize - area.as_ptr() as usize;
                    assert!(start + e.data.len() <= area.len());
                }
            }
            let _ = passphrase(&area);
        }
    }
}
