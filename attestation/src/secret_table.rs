//! The SEV launch-secret payload: an OVMF/efi_secret style table (`krun-kbs` writes it), or the
//! reference-kbs form (the passphrase zero-padded to 512 bytes). The guest accepts both.

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

/// Errors from building or reading a secret payload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretTableError {
    #[error("secret is too large for the launch-secret page")]
    TooLarge,
    #[error("secret table is corrupted")]
    Corrupted,
    #[error("secret table has no LUKS key entry")]
    NoLuksKey,
    #[error("secret payload is empty")]
    Empty,
}

/// Builds a table with one LUKS-key entry holding `passphrase ‖ NUL`, padded to a multiple of
/// 16 bytes as sevctl does (LAUNCH_SECRET lengths are multiples of 16).
pub fn build(passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretTableError> {
    let entry_len = 16 + 4 + passphrase.len() + 1;
    let table_len = 20 + entry_len;
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
    let s = b.get(off..off + 4).ok_or(SecretTableError::Corrupted)?;
    usize::try_from(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .map_err(|_| SecretTableError::Corrupted)
}

/// Extracts the LUKS passphrase from a decrypted launch secret: the LUKS-key entry of a secret
/// table (trailing NULs removed), or, without the table GUID, the bytes before the first NUL.
pub fn passphrase(payload: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretTableError> {
    if payload.starts_with(&TABLE_GUID) {
        let total = read_u32(payload, 16)?;
        if total < 20 || total > payload.len() {
            return Err(SecretTableError::Corrupted);
        }
        let mut off = 20;
        while off < total {
            let guid = payload
                .get(off..off + 16)
                .ok_or(SecretTableError::Corrupted)?;
            let len = read_u32(payload, off + 16)?;
            let end = off.checked_add(len).ok_or(SecretTableError::Corrupted)?;
            if len < 20 || end > total {
                return Err(SecretTableError::Corrupted);
            }
            if guid == LUKS_KEY_GUID {
                let data = &payload[off + 20..end];
                let trimmed = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                if trimmed == 0 {
                    return Err(SecretTableError::Empty);
                }
                return Ok(Zeroizing::new(data[..trimmed].to_vec()));
            }
            off = end;
        }
        return Err(SecretTableError::NoLuksKey);
    }
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    if end == 0 {
        return Err(SecretTableError::Empty);
    }
    Ok(Zeroizing::new(payload[..end].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_psp_model_worked_example() {
        // psp-model.md §6.2: one entry "luks-passphrase\0", 64 bytes in all.
        let t = build(b"luks-passphrase").unwrap();
        let expect = hex::decode(concat!(
            "42f5741edd71664d963eef4287ff173b",
            "38000000",
            "e5696873f084734992ec06879ce3da0b",
            "24000000",
            "6c756b732d70617373706872617365",
            "00",
            "0000000000000000"
        ))
        .unwrap();
        assert_eq!(t.as_slice(), expect.as_slice());
        assert_eq!(passphrase(&t).unwrap().as_slice(), b"luks-passphrase");
    }

    #[test]
    fn reference_padded_form_is_accepted() {
        let mut p = b"hunter2".to_vec();
        p.resize(REFERENCE_PADDED_LEN, 0);
        assert_eq!(passphrase(&p).unwrap().as_slice(), b"hunter2");
        assert_eq!(passphrase(&[0u8; 16]), Err(SecretTableError::Empty));
    }

    #[test]
    fn corrupted_tables_are_refused() {
        let mut t = build(b"x").unwrap().to_vec();
        t[16] = 0xff; // total length beyond the buffer
        assert_eq!(passphrase(&t), Err(SecretTableError::Corrupted));
        let mut t = build(b"x").unwrap().to_vec();
        t[36] = 3; // entry shorter than its header
        assert_eq!(passphrase(&t), Err(SecretTableError::Corrupted));
        let mut t = build(b"x").unwrap().to_vec();
        t[20] ^= 1; // other GUID
        assert_eq!(passphrase(&t), Err(SecretTableError::NoLuksKey));
        assert_eq!(build(&[1u8; MAX_PAYLOAD]), Err(SecretTableError::TooLarge));
    }
}
