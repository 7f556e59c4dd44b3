//! The "KRUN" footer at the end of a confidential-workload disk image.
//!
//! Layout (buildah mkcw, oci2cw): `… | padding | JSON (L bytes) | "KRUN" | L as u64 LE`, the
//! 12-byte trailer being the last bytes of the file. buildah pads the file to a multiple of
//! 4096 bytes, oci2cw to 512; readers only look at the end, so both work.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::tee_config::{TeeConfig, TeeConfigError};

/// The footer magic.
pub const FOOTER_MAGIC: &[u8; 4] = b"KRUN";
/// Length of magic plus the length field.
pub const FOOTER_TRAILER_LEN: u64 = 12;
/// Longest footer JSON accepted (buildah's `maxWorkloadConfigSize`).
pub const MAX_FOOTER_JSON_LEN: u64 = 1024 * 1024;

/// Errors while reading a footer.
#[derive(Debug, thiserror::Error)]
pub enum FooterError {
    /// The image could not be read.
    #[error("cannot read the disk image")]
    Read(#[source] std::io::Error),
    /// The length field is larger than the cap or than the file.
    #[error("KRUN footer length {0} is larger than 1 MiB or than the image")]
    BadLength(u64),
    /// The JSON before the trailer is not a valid TEE config.
    #[error("KRUN footer holds an invalid TEE config")]
    Config(#[source] TeeConfigError),
}

/// Reads the TEE config from the footer of `image`, or `None` if the image has no footer.
pub fn read_footer(image: &Path) -> Result<Option<TeeConfig>, FooterError> {
    let mut file = File::open(image).map_err(FooterError::Read)?;
    let size = file.metadata().map_err(FooterError::Read)?.len();
    if size < FOOTER_TRAILER_LEN {
        return Ok(None);
    }
    let mut trailer = [0u8; 12];
    file.seek(SeekFrom::Start(size - FOOTER_TRAILER_LEN))
        .and_then(|_| file.read_exact(&mut trailer))
        .map_err(FooterError::Read)?;
    let (magic, len) = trailer.split_at(4);
    if magic != FOOTER_MAGIC {
        return Ok(None);
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(len);
    let len = u64::from_le_bytes(len_bytes);
    if len == 0 || len > MAX_FOOTER_JSON_LEN || len > size - FOOTER_TRAILER_LEN {
        return Err(FooterError::BadLength(len));
    }
    let mut json = vec![0u8; usize::try_from(len).map_err(|_| FooterError::BadLength(len))?];
    file.seek(SeekFrom::Start(size - FOOTER_TRAILER_LEN - len))
        .and_then(|_| file.read_exact(&mut json))
        .map_err(FooterError::Read)?;
    TeeConfig::from_json(&json)
        .map(Some)
        .map_err(FooterError::Config)
}

/// The bytes to append to an image of `image_len` bytes so that it ends with a footer
/// holding `json` and its total size is a multiple of `align` (512 or 4096).
pub fn footer_bytes(json: &[u8], image_len: u64, align: u64) -> Vec<u8> {
    let json_len = json.len() as u64;
    let unpadded = image_len + json_len + FOOTER_TRAILER_LEN;
    let padding = (align - unpadded % align) % align;
    let mut out = vec![0u8; usize::try_from(padding).unwrap_or(0)];
    out.extend_from_slice(json);
    out.extend_from_slice(FOOTER_MAGIC);
    out.extend_from_slice(&json_len.to_le_bytes());
    out
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
    fn buildah_trailer_bytes() {
        // ecosystem.md §1.3: a 131-byte JSON ends the file with 4b52554e 8300000000000000.
        let json = vec![b'x'; 131];
        let bytes = footer_bytes(&json, 8192, 4096);
        assert_eq!(
            &bytes[bytes.len() - 12..],
            &[0x4b, 0x52, 0x55, 0x4e, 0x83, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!((8192 + bytes.len()) % 4096, 0);
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
        assert!(matches!(read_footer(&path), Err(FooterError::BadLength(_))));
        std::fs::remove_file(path).unwrap();

        let mut image = vec![0u8; 10];
        image.extend_from_slice(b"KRUN");
        image.extend_from_slice(&50u64.to_le_bytes());
        let path = temp_image("past-start", &image);
        assert!(matches!(
            read_footer(&path),
            Err(FooterError::BadLength(50))
        ));
        std::fs::remove_file(path).unwrap();

        let mut image = vec![0u8; 100];
        image.extend(footer_bytes(b"{\"tee\":\"snp\"}", 100, 512));
        let path = temp_image("badjson", &image);
        assert!(matches!(read_footer(&path), Err(FooterError::Config(_))));
        std::fs::remove_file(path).unwrap();
    }
}
