//! The "KRUN" footer at the end of a confidential-workload disk image and the TEE config JSON
//! it carries ([`TeeConfig`], also buildah's `/krun-sev.json`), shared by the guest init (reads
//! the footer from `/dev/vda`), the library (`krun_set_tee_config_file`, the image file) and
//! `krun-sev mkcw` (writes both).
//!
//! Layout (buildah `mkcw`, oci2cw; research/ecosystem.md §1.3):
//!
//! ```text
//! … | zero padding | TEE-config JSON (L bytes) | "KRUN" | L as u64 little-endian | EOF
//! ```
//!
//! buildah pads the file to a multiple of 4096 bytes, oci2cw to 512; the 12-byte trailer is
//! always the very end, so the reader never needs the alignment. The footer is outside the
//! encrypted payload and therefore host-controlled: the reader bounds sizes and
//! [`TeeConfig::parse`] validates every key.

mod binding;
mod tee_config;

use std::io;
use std::os::unix::fs::FileExt;

pub use binding::{parse_pin, Binding, BindingError, PIN_LEN};
pub use tee_config::{
    KbsProtocol, TeeConfig, TeeConfigError, TeeKind, MAX_CPUS, MAX_RAM_MIB, SNP_GENERATIONS,
};

/// The four bytes before the length field.
pub const MAGIC: [u8; 4] = *b"KRUN";
/// Magic plus the u64 length.
pub const TRAILER_LEN: u64 = 12;
/// Longest JSON accepted: buildah's reader refuses larger ones (`maxWorkloadConfigSize`).
pub const MAX_JSON_LEN: u64 = 1 << 20;

/// Errors from reading a footer.
#[derive(Debug, thiserror::Error)]
pub enum FooterError {
    /// The image or device could not be read.
    #[error("cannot read the KRUN footer")]
    Read(#[source] io::Error),
    /// The length field is zero.
    #[error("the KRUN footer's config is empty")]
    Empty,
    /// The length field is above [`MAX_JSON_LEN`].
    #[error("the KRUN footer's config length exceeds 1 MiB")]
    TooLarge,
    /// The length field points before the start of the image.
    #[error("the KRUN footer's config length exceeds the image size")]
    Truncated,
}

/// Where the JSON lies in an image of `size` bytes whose last 12 bytes are `trailer`:
/// `(offset, length)`, or `None` when the magic is absent.
pub fn json_location(trailer: &[u8; 12], size: u64) -> Result<Option<(u64, u64)>, FooterError> {
    let (magic, len_bytes) = trailer.split_at(4);
    if magic != MAGIC || size < TRAILER_LEN {
        return Ok(None);
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(len_bytes);
    let len = u64::from_le_bytes(len);
    if len == 0 {
        return Err(FooterError::Empty);
    }
    if len > MAX_JSON_LEN {
        return Err(FooterError::TooLarge);
    }
    let start = (size - TRAILER_LEN)
        .checked_sub(len)
        .ok_or(FooterError::Truncated)?;
    Ok(Some((start, len)))
}

/// The JSON bytes of the footer of `image` (`size` bytes: a file's length or a block
/// device's `BLKGETSIZE64`), or `None` when the image has no footer.
pub fn read_json(image: &impl FileExt, size: u64) -> Result<Option<Vec<u8>>, FooterError> {
    if size < TRAILER_LEN {
        return Ok(None);
    }
    let mut trailer = [0u8; 12];
    image
        .read_exact_at(&mut trailer, size - TRAILER_LEN)
        .map_err(FooterError::Read)?;
    let Some((start, len)) = json_location(&trailer, size)? else {
        return Ok(None);
    };
    // len <= MAX_JSON_LEN (1 MiB), so it fits in usize.
    let mut json = vec![0u8; usize::try_from(len).map_err(|_| FooterError::TooLarge)?];
    image
        .read_exact_at(&mut json, start)
        .map_err(FooterError::Read)?;
    Ok(Some(json))
}

/// The bytes to append to an image of `image_len` bytes so that it ends with a footer holding
/// `json` and its total size is a multiple of `align` (buildah: 4096, oci2cw: 512; 0 or 1:
/// no padding).
pub fn footer_bytes(json: &[u8], image_len: u64, align: u64) -> Vec<u8> {
    let align = align.max(1);
    // A usize always fits in a u64 on the 64-bit targets this project builds for.
    let json_len = u64::try_from(json.len()).unwrap_or(u64::MAX);
    // In u128 the sum cannot overflow.
    let unpadded = u128::from(image_len) + u128::from(json_len) + u128::from(TRAILER_LEN);
    let align = u128::from(align);
    let padding = (align - unpadded % align) % align;
    let mut out = vec![0u8; usize::try_from(padding).unwrap_or(0)];
    out.extend_from_slice(json);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&json_len.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;

    use super::*;

    const JSON: &[u8] = br#"{"tee":"snp","tee_data":"{\"gen\":\"milan\"}","workload_id":"w","cpus":2,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}"#;

    fn file(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn read(bytes: &[u8]) -> Result<Option<Vec<u8>>, FooterError> {
        read_json(&file(bytes), bytes.len() as u64)
    }

    /// A footer built by hand the way buildah's `archive.go` does, independent of
    /// [`footer_bytes`].
    fn buildah_image(payload_len: usize, json: &[u8], align: usize) -> Vec<u8> {
        let mut bytes = vec![0xa5u8; payload_len];
        let used = payload_len + json.len() + 12;
        bytes.resize(payload_len + (align - used % align) % align, 0);
        bytes.extend_from_slice(json);
        bytes.extend_from_slice(b"KRUN");
        bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
        bytes
    }

    #[test]
    fn trailer_bytes_match_the_documented_example() {
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
    fn writer_equals_the_buildah_layout() {
        for (payload, align) in [(10_000, 4096), (10_000, 512), (8192 - 12, 4096), (0, 512)] {
            let mut ours = vec![0xa5u8; payload];
            ours.extend(footer_bytes(JSON, payload as u64, align as u64));
            assert_eq!(
                ours,
                buildah_image(payload, JSON, align),
                "{payload} {align}"
            );
            assert_eq!(ours.len() % align, 0);
        }
        // No alignment asked for: no padding.
        assert_eq!(footer_bytes(b"{}", 7, 0).len(), 2 + 12);
        assert_eq!(footer_bytes(b"{}", 7, 1).len(), 2 + 12);
    }

    #[test]
    fn reads_buildah_and_oci2cw_alignments() {
        for align in [512, 4096] {
            let image = buildah_image(3 * 4096 + 17, JSON, align);
            assert_eq!(read(&image).unwrap().unwrap(), JSON);
        }
    }

    #[test]
    fn missing_magic_is_not_an_error() {
        assert!(read(&[0u8; 8192]).unwrap().is_none());
        assert!(read(b"").unwrap().is_none());
        assert!(read(b"KRUN").unwrap().is_none());
        assert!(read(b"xKRUN\x01\0\0\0\0\0\0").unwrap().is_none());
    }

    #[test]
    fn bad_lengths_are_rejected() {
        let with_len = |prefix: &[u8], len: u64| {
            let mut b = prefix.to_vec();
            b.extend_from_slice(b"KRUN");
            b.extend_from_slice(&len.to_le_bytes());
            b
        };
        assert!(matches!(
            read(&with_len(&[0; 100], MAX_JSON_LEN + 1)),
            Err(FooterError::TooLarge)
        ));
        assert!(matches!(
            read(&with_len(&[0; 100], u64::MAX)),
            Err(FooterError::TooLarge)
        ));
        assert!(matches!(
            read(&with_len(b"{}", 3)),
            Err(FooterError::Truncated)
        ));
        assert!(matches!(read(&with_len(b"{}", 0)), Err(FooterError::Empty)));
        // The JSON may start at offset 0.
        assert_eq!(read(&with_len(b"{}", 2)).unwrap().unwrap(), b"{}");
    }

    #[test]
    fn a_size_larger_than_the_file_is_a_read_error() {
        let image = buildah_image(0, JSON, 512);
        let f = file(&image);
        assert!(matches!(
            read_json(&f, image.len() as u64 + 512),
            Err(FooterError::Read(_))
        ));
    }
}
