//! The launch segment: an uncompressed newc cpio archive the VMM appends to the bundle
//! initrd in guest memory (docs/interfaces.md, "Launch segment"). The kernel unpacks it after
//! the bundle's archive, so its files appear in the initramfs next to `/init`.

use krun_bundle::cpio::{CpioArchive, CpioError};

/// Where the init reads the host configuration.
pub const HOST_CONFIG_PATH: &str = "krun/host.json";

/// Builds a segment holding `host_json` as `/krun/host.json` (mode 0400).
pub fn build(host_json: &[u8]) -> Result<Vec<u8>, CpioError> {
    let mut archive = CpioArchive::new();
    archive.add_dir("krun", 0o700)?;
    archive.add_file(HOST_CONFIG_PATH, 0o400, host_json.to_vec())?;
    Ok(archive.to_bytes())
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
}
