//! The "KRUN" footer at the end of a confidential-workload disk image: the byte layout is
//! `krun-footer`'s (shared with the guest init and `krun-sev mkcw`); this module turns its JSON
//! into the library's [`TeeConfig`].

use std::fs::File;
use std::path::Path;

pub use krun_footer::footer_bytes;

use super::tee_config::{self, TeeConfig, TeeConfigError};

/// The footer magic.
pub const FOOTER_MAGIC: &[u8; 4] = &krun_footer::MAGIC;
/// Length of magic plus the length field.
pub const FOOTER_TRAILER_LEN: u64 = krun_footer::TRAILER_LEN;
/// Longest footer JSON accepted (buildah's `maxWorkloadConfigSize`).
pub const MAX_FOOTER_JSON_LEN: u64 = krun_footer::MAX_JSON_LEN;

/// Errors while reading a footer.
#[derive(Debug, thiserror::Error)]
pub enum FooterError {
    /// The image could not be opened.
    #[error("cannot open the disk image")]
    Open(#[source] std::io::Error),
    /// The footer could not be read or its length is invalid.
    #[error("cannot read the disk image's KRUN footer")]
    Footer(#[source] krun_footer::FooterError),
    /// The JSON before the trailer is not a valid TEE config.
    #[error("KRUN footer holds an invalid TEE config")]
    Config(#[source] TeeConfigError),
}

/// Reads the TEE config from the footer of `image`, or `None` if the image has no footer.
pub fn read_footer(image: &Path) -> Result<Option<TeeConfig>, FooterError> {
    let file = File::open(image).map_err(FooterError::Open)?;
    let size = file.metadata().map_err(FooterError::Open)?.len();
    let Some(json) = krun_footer::read_json(&file, size).map_err(FooterError::Footer)? else {
        return Ok(None);
    };
    tee_config::load_json(&json)
        .map(Some)
        .map_err(FooterError::Config)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::resources::TeeKind;

    const JSON: &str = r#"{"tee":"snp","tee_data":"{\"gen\":\"milan\"}","workload_id":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","cpus":2,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}"#;

    fn temp_image(name: &str, body: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("krun-footer-{}-{name}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(body).unwrap();
        path
    }

    #[test]
    fn reads_4096_and_512_aligned_footers() {
        for align in [512u64, 4096] {
            let mut image = vec![0xaau8; 10_000];
            image.extend(footer_bytes(JSON.as_bytes(), 10_000, align));
            assert_eq!(image.len() as u64 % align, 0);
            let path = temp_image(&format!("a{align}"), &image);
            let cfg = read_footer(&path).unwrap().unwrap();
            assert_eq!(cfg.tee, TeeKind::Snp);
            assert_eq!(cfg.cpus, 2);
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn no_footer_is_none() {
        let path = temp_image("none", &[0u8; 4096]);
        assert!(read_footer(&path).unwrap().is_none());
        std::fs::remove_file(path).unwrap();
        let path = temp_image("tiny", b"KRUN");
        assert!(read_footer(&path).unwrap().is_none());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn rejects_bad_lengths_and_json() {
        let mut image = vec![0u8; 100];
        image.extend_from_slice(b"KRUN");
        image.extend_from_slice(&(MAX_FOOTER_JSON_LEN + 1).to_le_bytes());
        let path = temp_image("huge", &image);
        assert!(matches!(
            read_footer(&path),
            Err(FooterError::Footer(krun_footer::FooterError::TooLarge))
        ));
        std::fs::remove_file(path).unwrap();

        let mut image = vec![0u8; 10];
        image.extend_from_slice(b"KRUN");
        image.extend_from_slice(&50u64.to_le_bytes());
        let path = temp_image("past-start", &image);
        assert!(matches!(
            read_footer(&path),
            Err(FooterError::Footer(krun_footer::FooterError::Truncated))
        ));
        std::fs::remove_file(path).unwrap();

        let mut image = vec![0u8; 100];
        image.extend(footer_bytes(b"{\"tee\":\"snp\"}", 100, 512));
        let path = temp_image("badjson", &image);
        assert!(matches!(read_footer(&path), Err(FooterError::Config(_))));
        std::fs::remove_file(path).unwrap();
    }
}
