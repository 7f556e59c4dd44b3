//! The SEV/SEV-ES launch secret in `/krun/secret`: take it out of the initramfs.
//!
//! The VMM reserves a page-sized, page-aligned file-data slot in the launch segment; the key
//! broker's secret is injected there with LAUNCH_SECRET (research/psp-model.md §6). The
//! payload (an OVMF/efi_secret GUID table, or reference-kbs's zero-padded passphrase) is parsed
//! by `krun_attestation::secret_table`, the same code `krun-kbs` builds it with; this module
//! reads the slot, wipes it and unlinks it.

use std::io::{self, Read, Write};
use std::path::Path;

use krun_attestation::secret_table;
use zeroize::Zeroizing;

/// Where the launch segment places the slot.
pub const SECRET_PATH: &str = "/krun/secret";

/// Errors from reading the secret table.
#[derive(Debug, thiserror::Error)]
pub enum SecretTableError {
    /// The slot file cannot be read.
    #[error("cannot read the launch secret")]
    Read(#[source] io::Error),
    /// The slot cannot be wiped or removed.
    #[error("cannot wipe the launch secret")]
    Wipe(#[source] io::Error),
    /// The payload holds no usable passphrase.
    #[error("cannot take the disk passphrase from the launch secret")]
    Table(#[source] secret_table::SecretTableError),
}

/// Reads the slot, overwrites it with zeros, unlinks it, then extracts the passphrase.
/// The slot is wiped even when the table is unusable.
pub fn take_passphrase(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretTableError> {
    let mut area = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut area))
        .map_err(SecretTableError::Read)?;
    wipe(path, area.len()).map_err(SecretTableError::Wipe)?;
    secret_table::passphrase(&area).map_err(SecretTableError::Table)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The sevctl-built example from research/psp-model.md §6.2 (64 bytes with padding),
    /// written out by hand rather than with the parser's own builder.
    fn documented_example() -> Vec<u8> {
        let hex = "42f5741edd71664d963eef4287ff173b 38000000 e5696873f084734992ec06879ce3da0b \
                   24000000 6c756b732d70617373706872617365 00 0000000000000000";
        let s: String = hex.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
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
            Err(SecretTableError::Table(
                secret_table::SecretTableError::Corrupted
            ))
        ));
        assert!(!path.exists());
    }

    #[test]
    fn reference_kbs_slot_and_empty_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let mut area = b"0123abcd".to_vec();
        area.resize(4096, 0);
        std::fs::write(&path, &area).unwrap();
        assert_eq!(take_passphrase(&path).unwrap().as_slice(), b"0123abcd");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        assert!(matches!(
            take_passphrase(&path),
            Err(SecretTableError::Table(
                secret_table::SecretTableError::NotPopulated
            ))
        ));
        assert!(!path.exists());
        assert!(matches!(
            take_passphrase(&path),
            Err(SecretTableError::Read(_))
        ));
    }
}
