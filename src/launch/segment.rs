//! The launch segment: an uncompressed newc cpio archive the VMM appends to the bundle
//! initrd in guest memory (docs/interfaces.md, "Launch segment"). The kernel unpacks it after
//! the bundle's archive, so its files appear in the initramfs next to `/init`.
//!
//! SEV and SEV-ES launches add `/krun/secret`: one zero-filled page whose file data starts on
//! a page boundary of the segment (and so of guest memory, because the segment itself starts
//! on a page boundary after the bundle initrd). LAUNCH_SECRET writes the secret table there.
//! A padding file `/krun/.pad` moves the slot onto the boundary.

use krun_bundle::cpio::{CpioArchive, CpioError};

/// Where the init reads the host configuration.
pub const HOST_CONFIG_PATH: &str = "krun/host.json";
/// The SEV/SEV-ES secret slot.
pub const SECRET_PATH: &str = "krun/secret";
const PAD_PATH: &str = "krun/.pad";
/// Size of the secret slot.
pub const SECRET_LEN: usize = 4096;
const PAGE: usize = 4096;

/// Errors building the segment.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The archive writer refused an entry.
    #[error("cannot build the launch segment archive")]
    Cpio(#[source] CpioError),
    /// The slot did not land on a page boundary (a writer change broke the padding rule).
    #[error("secret slot is not page aligned in the launch segment")]
    Alignment,
}

/// A built segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The archive bytes.
    pub bytes: Vec<u8>,
    /// Offset of the secret slot's data inside `bytes` (page aligned), if any.
    pub secret_offset: Option<usize>,
}

/// Builds a segment holding `host_json` as `/krun/host.json` (mode 0400).
pub fn build(host_json: &[u8]) -> Result<Vec<u8>, CpioError> {
    let mut archive = CpioArchive::new();
    archive.add_dir("krun", 0o700)?;
    archive.add_file(HOST_CONFIG_PATH, 0o400, host_json.to_vec())?;
    Ok(archive.to_bytes())
}

fn archive(host_json: &[u8], pad: usize) -> Result<CpioArchive, CpioError> {
    let mut a = CpioArchive::new();
    a.add_dir("krun", 0o700)?;
    a.add_file(PAD_PATH, 0o400, vec![0; pad])?;
    a.add_file(HOST_CONFIG_PATH, 0o400, host_json.to_vec())?;
    a.add_file(SECRET_PATH, 0o400, vec![0; SECRET_LEN])?;
    Ok(a)
}

/// [`build`], plus the page-aligned secret slot when `secret_slot` is set.
pub fn build_with_secret(host_json: &[u8], secret_slot: bool) -> Result<Segment, SegmentError> {
    if !secret_slot {
        return Ok(Segment {
            bytes: build(host_json).map_err(SegmentError::Cpio)?,
            secret_offset: None,
        });
    }
    let (_, layout) = archive(host_json, 0)
        .map_err(SegmentError::Cpio)?
        .to_bytes_with_layout();
    let first = layout
        .get(SECRET_PATH)
        .ok_or(SegmentError::Alignment)?
        .start;
    // newc data starts on 4-byte boundaries, so the distance is a multiple of 4 and padding
    // data of that length shifts everything after it by exactly that much.
    let pad = (PAGE - first % PAGE) % PAGE;
    let (bytes, layout) = archive(host_json, pad)
        .map_err(SegmentError::Cpio)?
        .to_bytes_with_layout();
    let range = layout.get(SECRET_PATH).ok_or(SegmentError::Alignment)?;
    if range.start % PAGE != 0 || range.len() != SECRET_LEN {
        return Err(SegmentError::Alignment);
    }
    Ok(Segment {
        bytes,
        secret_offset: Some(range.start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_is_a_newc_archive_with_host_json() {
        let seg = build(br#"{"format":1}"#).unwrap();
        assert!(seg.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&seg);
        assert!(text.contains("krun/host.json"));
        assert!(text.contains(r#"{"format":1}"#));
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn secret_slot_is_page_aligned_for_any_host_json() {
        for n in 0..64 {
            let json = format!(r#"{{"format":1,"env":["{}"]}}"#, "x".repeat(n * 37));
            let seg = build_with_secret(json.as_bytes(), true).unwrap();
            let off = seg.secret_offset.unwrap();
            assert_eq!(off % PAGE, 0);
            assert!(seg.bytes[off..off + SECRET_LEN].iter().all(|b| *b == 0));
            // The file header right before the data names the slot.
            let header = String::from_utf8_lossy(&seg.bytes[off.saturating_sub(128)..off]);
            assert!(header.contains(SECRET_PATH));
            assert!(String::from_utf8_lossy(&seg.bytes).contains(&json));
        }
        let snp = build_with_secret(b"{}", false).unwrap();
        assert_eq!(snp.secret_offset, None);
        assert!(!String::from_utf8_lossy(&snp.bytes).contains(SECRET_PATH));
    }
}
