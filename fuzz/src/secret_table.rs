//! The SEV launch-secret payload (`krun_attestation::secret_table`): the guest init reads it
//! from the secret page after LAUNCH_SECRET. Its content comes from the broker, but the host
//! chooses what it injects (or that it injects nothing), so the guest parses it as hostile.
//!
//! The input is a payload that is raw bytes or a table assembled from entries whose GUIDs
//! (the LUKS key's, the null one, others), announced lengths (right, short, long, any) and the
//! table's total length (right, any) may lie, plus a passphrase for the builder.
//!
//! Checked beyond "no panic": `entries` returns only non-null entries whose data lies inside
//! the table, in order and without overlap, and the table inside the payload; `passphrase`
//! returns a non-empty passphrase that is the bytes before the first NUL of a payload without
//! the table GUID, or the LUKS-key entry's data without its trailing NULs; `build` then
//! `passphrase` gives back the passphrase (its trailing NULs removed) whenever it fits.

use arbitrary::Arbitrary;
use krun_attestation::secret_table::{
    build, entries, passphrase, SecretTableError, LUKS_KEY_GUID, MAX_PAYLOAD, TABLE_GUID,
};

#[derive(Arbitrary, Debug)]
pub enum Guid {
    LuksKey,
    Null,
    Table,
    Other([u8; 16]),
}

#[derive(Arbitrary, Debug)]
pub enum Len {
    /// 20 + data.
    Right,
    /// Off by a small amount either way.
    Delta(i8),
    Any(u32),
}

#[derive(Arbitrary, Debug)]
pub struct Entry {
    pub guid: Guid,
    pub len: Len,
    pub data: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
pub enum Payload {
    Raw(Vec<u8>),
    Table {
        entries: Vec<Entry>,
        total: Len,
        /// Bytes after the table (sevctl pads to 16).
        padding: u8,
        pad_byte: u8,
    },
}

#[derive(Arbitrary, Debug)]
pub struct Input {
    pub payload: Payload,
    pub passphrase: Vec<u8>,
}

fn len(l: &Len, right: usize) -> u32 {
    let right = u32::try_from(right).unwrap_or(u32::MAX);
    match l {
        Len::Right => right,
        Len::Delta(d) => right.wrapping_add_signed(i32::from(*d)),
        Len::Any(v) => *v,
    }
}

fn assemble(p: &Payload) -> Vec<u8> {
    match p {
        Payload::Raw(b) => b.clone(),
        Payload::Table {
            entries,
            total,
            padding,
            pad_byte,
        } => {
            let mut body = Vec::new();
            for e in entries.iter().take(16) {
                body.extend_from_slice(match &e.guid {
                    Guid::LuksKey => &LUKS_KEY_GUID,
                    Guid::Null => &[0; 16],
                    Guid::Table => &TABLE_GUID,
                    Guid::Other(g) => g,
                });
                body.extend_from_slice(&len(&e.len, 20 + e.data.len()).to_le_bytes());
                body.extend_from_slice(&e.data);
            }
            let mut out = TABLE_GUID.to_vec();
            out.extend_from_slice(&len(total, 20 + body.len()).to_le_bytes());
            out.extend_from_slice(&body);
            out.extend(std::iter::repeat_n(*pad_byte, usize::from(*padding)));
            out
        }
    }
}

/// The range of `inner` within `outer` (both from the same allocation).
fn range_in(outer: &[u8], inner: &[u8]) -> std::ops::Range<usize> {
    let start = (inner.as_ptr() as usize)
        .checked_sub(outer.as_ptr() as usize)
        .expect("entry data starts before the payload");
    let end = start + inner.len();
    assert!(end <= outer.len(), "entry data ends past the payload");
    start..end
}

pub fn run(input: &Input) {
    let payload = assemble(&input.payload);

    let parsed = entries(&payload);
    match &parsed {
        Ok(list) => {
            assert!(payload.starts_with(&TABLE_GUID));
            let total = u32::from_le_bytes([payload[16], payload[17], payload[18], payload[19]]);
            let total = usize::try_from(total).unwrap_or(usize::MAX);
            assert!((20..=payload.len()).contains(&total));
            let mut prev_end = 20;
            for e in list {
                assert_ne!(e.guid, [0; 16], "a null entry was returned");
                let r = range_in(&payload, e.data);
                // Each entry's data follows its own 20-byte header, after the previous entry.
                assert!(r.start >= prev_end + 20, "entries overlap");
                assert!(r.end <= total, "entry data ends past the table");
                assert_eq!(&payload[r.start - 20..r.start - 4], &e.guid);
                prev_end = r.end;
            }
        }
        Err(e) => {
            if !payload.starts_with(&TABLE_GUID) {
                assert_eq!(e, &SecretTableError::NotPopulated);
            }
        }
    }

    match passphrase(&payload) {
        Ok(p) => {
            assert!(!p.is_empty(), "an empty passphrase was accepted");
            if payload.starts_with(&TABLE_GUID) {
                let list = parsed.as_ref().expect("passphrase from an invalid table");
                let entry = list
                    .iter()
                    .find(|e| e.guid == LUKS_KEY_GUID)
                    .expect("passphrase without a LUKS-key entry");
                assert!(entry.data.starts_with(&p));
                assert!(entry.data[p.len()..].iter().all(|&b| b == 0));
                assert_ne!(p.last(), Some(&0));
            } else {
                assert!(payload.starts_with(&p));
                assert!(!p.contains(&0));
                assert!(payload.len() == p.len() || payload[p.len()] == 0);
            }
        }
        Err(e) => {
            if !payload.starts_with(&TABLE_GUID) {
                assert_eq!(e, SecretTableError::NotPopulated);
                assert!(payload.first().is_none_or(|&b| b == 0));
            }
        }
    }

    // The builder's table reads back to the passphrase.
    let pass = &input.passphrase;
    match build(pass) {
        Ok(table) => {
            assert!(table.len() <= MAX_PAYLOAD && table.len() % 16 == 0);
            let trimmed = pass.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            match passphrase(&table) {
                Ok(p) => assert_eq!(p.as_slice(), &pass[..trimmed]),
                Err(e) => {
                    assert_eq!(trimmed, 0, "built table unreadable: {e}");
                    assert_eq!(e, SecretTableError::Empty);
                }
            }
            let list = entries(&table).expect("built table parses");
            assert_eq!(list.len(), 1);
        }
        Err(e) => {
            assert_eq!(e, SecretTableError::TooLarge);
            assert!(pass.len() + 41 > MAX_PAYLOAD - 16);
        }
    }
}
