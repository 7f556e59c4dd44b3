//! The SEV/SEV-ES launch secret: an OVMF/efi_secret GUID table in `/krun/secret`.
//!
//! The VMM reserves a page-sized, page-aligned file-data slot in the launch segment; the key
//! broker's secret is injected there with LAUNCH_SECRET (research/psp-model.md §6). Format:
//!
//! ```text
//! 0   16  header GUID 1e74f542-71dd-4d66-963e-ef4287ff173b
//! 16   4  u32 LE length of the table (20 + all entries, without trailing padding)
//! 20  ..  entries: GUID (16) ‖ u32 LE length (16 + 4 + data) ‖ data
//! ```
//!
//! GUIDs are in EFI byte order (first three fields little-endian). The disk passphrase entry
//! is [`DISK_PASSPHRASE_GUID`], `736869e5-84f0-4973-92ec-06879ce3da0b`, the GUID grub and the
//! confidential-containers tooling use for "the LUKS key"; brokers that build the table for
//! this project must use it. Its data is the passphrase; trailing NUL bytes are stripped, as
//! sevctl-style tables terminate it with one.
//!
//! The reference-kbs form is accepted as well: without the header GUID, the slot holds the
//! passphrase itself, zero-padded (to 512 bytes), and the passphrase is the bytes before the
//! first NUL. An all-zero slot means nothing was injected.

use std::io::{self, Read, Write};
use std::path::Path;

use zeroize::Zeroizing;

/// Where the launch segment places the slot.
pub const SECRET_PATH: &str = "/krun/secret";

/// A GUID in EFI (mixed-endian) byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// From the textual fields `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }
}

/// The table header GUID.
pub const TABLE_GUID: Guid = Guid::from_fields(
    0x1e74f542,
    0x71dd,
    0x4d66,
    [0x96, 0x3e, 0xef, 0x42, 0x87, 0xff, 0x17, 0x3b],
);
/// The disk passphrase entry.
pub const DISK_PASSPHRASE_GUID: Guid = Guid::from_fields(
    0x736869e5,
    0x84f0,
    0x4973,
    [0x92, 0xec, 0x06, 0x87, 0x9c, 0xe3, 0xda, 0x0b],
);
const NULL_GUID: Guid = Guid([0; 16]);
const HEADER_LEN: usize = 20;

/// Errors from reading the secret table.
#[derive(Debug, thiserror::Error)]
pub enum SecretTableError {
    /// The slot file cannot be read.
    #[error("cannot read the launch secret")]
    Read(#[source] io::Error),
    /// The slot cannot be wiped or removed.
    #[error("cannot wipe the launch secret")]
    Wipe(#[source] io::Error),
    /// The header GUID is absent: nothing was injected.
    #[error("no launch secret was injected (the secret table header is missing)")]
    NotPopulated,
    /// Lengths in the table are inconsistent.
    #[error("the launch secret table is corrupted")]
    Corrupted,
    /// The table has no passphrase entry.
    #[error("the launch secret has no disk passphrase entry")]
    NoPassphrase,
    /// The passphrase entry is empty.
    #[error("the disk passphrase in the launch secret is empty")]
    EmptyPassphrase,
}

/// One entry's GUID and data.
#[derive(Debug, PartialEq, Eq)]
pub struct SecretEntry<'a> {
    /// The entry's GUID.
    pub guid: Guid,
    /// Its data (without GUID and length).
    pub data: &'a [u8],
}

/// Parses the table at the start of `area`, with efi_secret's checks.
pub fn parse(area: &[u8]) -> Result<Vec<SecretEntry<'_>>, SecretTableError> {
    if area.len() < HEADER_LEN || area[..16] != TABLE_GUID.0 {
        return Err(SecretTableError::NotPopulated);
    }
    let total =
        usize::try_from(read_u32(&area[16..20])).map_err(|_| SecretTableError::Corrupted)?;
    if total < HEADER_LEN || total > area.len() {
        return Err(SecretTableError::Corrupted);
    }
    let mut entries = Vec::new();
    let mut pos = HEADER_LEN;
    while pos < total {
        let header_end = pos
            .checked_add(HEADER_LEN)
            .ok_or(SecretTableError::Corrupted)?;
        if header_end > total {
            return Err(SecretTableError::Corrupted);
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&area[pos..pos + 16]);
        let len = usize::try_from(read_u32(&area[pos + 16..header_end]))
            .map_err(|_| SecretTableError::Corrupted)?;
        let end = pos.checked_add(len).ok_or(SecretTableError::Corrupted)?;
        if len < HEADER_LEN || end > total {
            return Err(SecretTableError::Corrupted);
        }
        if Guid(guid) != NULL_GUID {
            entries.push(SecretEntry {
                guid: Guid(guid),
                data: &area[header_end..end],
            });
        }
        pos = end;
    }
    Ok(entries)
}

/// The disk passphrase from a table (trailing NULs stripped) or from the reference-kbs form.
pub fn passphrase_from_table(area: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretTableError> {
    if area.len() < 16 || area[..16] != TABLE_GUID.0 {
        let len = area.iter().position(|&b| b == 0).unwrap_or(area.len());
        if len == 0 {
            return Err(SecretTableError::NotPopulated);
        }
        return Ok(Zeroizing::new(area[..len].to_vec()));
    }
    let entries = parse(area)?;
    let entry = entries
        .iter()
        .find(|e| e.guid == DISK_PASSPHRASE_GUID)
        .ok_or(SecretTableError::NoPassphrase)?;
    let len = entry
        .data
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1);
    if len == 0 {
        return Err(SecretTableError::EmptyPassphrase);
    }
    Ok(Zeroizing::new(entry.data[..len].to_vec()))
}

/// Reads the slot, overwrites it with zeros, unlinks it, then extracts the passphrase.
/// The slot is wiped even when the table is unusable.
pub fn take_passphrase(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretTableError> {
    let mut area = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut area))
        .map_err(SecretTableError::Read)?;
    wipe(path, area.len()).map_err(SecretTableError::Wipe)?;
    passphrase_from_table(&area)
}

fn wipe(path: &Path, len: usize) -> io::Result<()> {
    // Overwrite in place (no truncate): on the initramfs this rewrites the very page cache
    // pages that held the secret.
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(&vec![0u8; len])?;
    file.sync_all()?;
    drop(file);
    std::fs::remove_file(path)
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The sevctl-built example from research/psp-model.md §6.2 (64 bytes with padding).
    fn documented_example() -> Vec<u8> {
        hex(
            "42f5741edd71664d963eef4287ff173b 38000000 e5696873f084734992ec06879ce3da0b \
             24000000 6c756b732d70617373706872617365 00 0000000000000000",
        )
    }

    fn entry(guid: Guid, data: &[u8]) -> Vec<u8> {
        let mut e = guid.0.to_vec();
        e.extend_from_slice(&(20 + u32::try_from(data.len()).unwrap()).to_le_bytes());
        e.extend_from_slice(data);
        e
    }

    fn table(entries: &[Vec<u8>], area: usize) -> Vec<u8> {
        let body: Vec<u8> = entries.concat();
        let mut t = TABLE_GUID.0.to_vec();
        t.extend_from_slice(&(20 + u32::try_from(body.len()).unwrap()).to_le_bytes());
        t.extend_from_slice(&body);
        t.resize(area, 0);
        t
    }

    #[test]
    fn guid_bytes_are_efi_order() {
        assert_eq!(
            TABLE_GUID.0.to_vec(),
            hex("42f5741edd71664d963eef4287ff173b")
        );
        assert_eq!(
            DISK_PASSPHRASE_GUID.0.to_vec(),
            hex("e5696873f084734992ec06879ce3da0b")
        );
    }

    #[test]
    fn documented_example_yields_the_passphrase() {
        let area = documented_example();
        assert_eq!(area.len(), 64);
        assert_eq!(
            passphrase_from_table(&area).unwrap().as_slice(),
            b"luks-passphrase"
        );
    }

    #[test]
    fn other_and_null_entries_are_skipped() {
        let other = Guid::from_fields(1, 2, 3, [4; 8]);
        let area = table(
            &[
                entry(other, b"x"),
                entry(NULL_GUID, b"wiped"),
                entry(DISK_PASSPHRASE_GUID, b"pw"),
            ],
            4096,
        );
        let entries = parse(&area).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0],
            SecretEntry {
                guid: other,
                data: b"x"
            }
        );
        assert_eq!(passphrase_from_table(&area).unwrap().as_slice(), b"pw");
    }

    #[test]
    fn bad_tables_are_rejected() {
        assert!(matches!(
            parse(&[0u8; 4096]),
            Err(SecretTableError::NotPopulated)
        ));
        let mut long = documented_example();
        long[16] = 0xff; // table longer than the area
        assert!(matches!(parse(&long), Err(SecretTableError::Corrupted)));
        let mut short_entry = documented_example();
        short_entry[36] = 19; // entry shorter than its own header
        assert!(matches!(
            parse(&short_entry),
            Err(SecretTableError::Corrupted)
        ));
        let mut overrun = documented_example();
        overrun[36] = 0x30; // entry past the table length
        assert!(matches!(parse(&overrun), Err(SecretTableError::Corrupted)));
        let none = table(&[entry(Guid::from_fields(1, 2, 3, [4; 8]), b"x")], 4096);
        assert!(matches!(
            passphrase_from_table(&none),
            Err(SecretTableError::NoPassphrase)
        ));
        let empty = table(&[entry(DISK_PASSPHRASE_GUID, b"\0\0")], 4096);
        assert!(matches!(
            passphrase_from_table(&empty),
            Err(SecretTableError::EmptyPassphrase)
        ));
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
            &[
                entry(Guid::from_fields(1, 2, 3, [4; 8]), b"abc"),
                entry(DISK_PASSPHRASE_GUID, b"pw\0"),
            ],
            128,
        );
        for _ in 0..20_000 {
            let mut area = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = usize::try_from(next() % 64).unwrap();
                area[at] = u8::try_from(next() & 0xff).unwrap();
            }
            area.truncate(usize::try_from(next() % 129).unwrap());
            if let Ok(entries) = parse(&area) {
                for e in entries {
                    let start = e.data.as_ptr() as usize - area.as_ptr() as usize;
                    assert!(start + e.data.len() <= area.len());
                }
            }
            let _ = passphrase_from_table(&area);
        }
    }

    #[test]
    fn reference_kbs_padded_form_is_accepted() {
        let mut area = b"0123abcd".to_vec();
        area.resize(512, 0);
        assert_eq!(
            passphrase_from_table(&area).unwrap().as_slice(),
            b"0123abcd"
        );
        assert!(matches!(
            passphrase_from_table(&[0u8; 512]),
            Err(SecretTableError::NotPopulated)
        ));
    }

    #[test]
    fn take_wipes_and_unlinks_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let mut area = documented_example();
        area.resize(4096, 0);
        std::fs::write(&path, &area).unwrap();
        // Keep a second link to observe the slot's bytes after the unlink.
        let witness = dir.path().join("witness");
        std::fs::hard_link(&path, &witness).unwrap();
        assert_eq!(
            take_passphrase(&path).unwrap().as_slice(),
            b"luks-passphrase"
        );
        assert!(!path.exists());
        let after = std::fs::read(&witness).unwrap();
        assert_eq!(after, vec![0u8; 4096]);
    }

    #[test]
    fn unusable_slot_is_still_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let mut corrupted = documented_example();
        corrupted[36] = 0x30;
        std::fs::write(&path, &corrupted).unwrap();
        assert!(matches!(
            take_passphrase(&path),
            Err(SecretTableError::Corrupted)
        ));
        assert!(!path.exists());
    }
}
