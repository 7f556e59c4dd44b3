//! The "KRUN" footer at the end of the raw root disk and the TEE config JSON it carries.
//!
//! The byte layout, its bounds checks and the TEE config parser are `krun-footer`'s (shared
//! with the library and `krun-sev mkcw`, so the guest accepts exactly the configs
//! `krun_set_tee_config_file` accepts); this module reads the footer from the block device.
//!
//! The footer is outside the encrypted payload, so the host can change it. Nothing secret
//! depends on it: it only tells the guest which broker to ask and for which workload, and the
//! broker releases the key only for evidence that matches that workload's registration. The
//! reader bounds sizes and validates every key of the JSON.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

pub use krun_footer::TeeConfig;

/// The device the footer is read from.
pub const ROOT_DISK: &str = "/dev/vda";
/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)` from linux/fs.h.
const BLKGETSIZE64: libc::c_ulong = (2 << 30) | (8 << 16) | (0x12 << 8) | 114;

/// Errors from reading the footer.
#[derive(Debug, thiserror::Error)]
pub enum FooterError {
    /// The device cannot be opened.
    #[error("cannot open the root disk")]
    Open(#[source] io::Error),
    /// Its size cannot be determined.
    #[error("cannot determine the size of the root disk")]
    Size(#[source] io::Error),
    /// Reading failed or the footer's length field is invalid.
    #[error("cannot read the root disk footer")]
    Footer(#[source] krun_footer::FooterError),
    /// The JSON is not a valid TEE config.
    #[error("the footer's TEE config is not valid")]
    Parse(#[source] krun_footer::TeeConfigError),
}

/// Reads and parses the footer of `path`; `Ok(None)` when there is no `KRUN` trailer.
pub fn read_tee_config(path: &Path) -> Result<Option<TeeConfig>, FooterError> {
    let file = File::open(path).map_err(FooterError::Open)?;
    match read_footer_json(&file)? {
        Some(json) => TeeConfig::parse(&json)
            .map(Some)
            .map_err(FooterError::Parse),
        None => Ok(None),
    }
}

/// The raw JSON bytes before the trailer, or `None` without the magic.
pub fn read_footer_json(file: &File) -> Result<Option<Vec<u8>>, FooterError> {
    let size = device_size(file).map_err(FooterError::Size)?;
    krun_footer::read_json(file, size).map_err(FooterError::Footer)
}

/// Size of a block device (`BLKGETSIZE64`) or of a regular file.
pub fn device_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for the call.
    crate::sys::check(unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) })?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use krun_footer::{KbsProtocol, TeeKind};

    use super::*;

    const SNP_JSON: &str = r#"{"tee":"snp","tee_data":"{\"gen\":\"milan\"}","workload_id":"1c9ee1a7b9a8d4bc4f6c5d5d2b4e1f2a3b4c5d6e7f8091a2b3c4d5e6f7081920","cpus":2,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}"#;

    /// An image as buildah (4096) or oci2cw (512) lays it out: payload, zero padding, JSON,
    /// magic, length.
    fn image(payload_len: usize, json: &[u8], align: usize) -> tempfile::NamedTempFile {
        let mut bytes = vec![0xa5u8; payload_len];
        bytes.extend(krun_footer::footer_bytes(
            json,
            payload_len as u64,
            align as u64,
        ));
        assert_eq!(bytes.len() % align, 0);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        f
    }

    #[test]
    fn blkgetsize64_matches_the_kernel_value() {
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
    }

    #[test]
    fn reads_buildah_and_oci2cw_alignments() {
        for align in [512, 4096] {
            let img = image(3 * 4096 + 17, SNP_JSON.as_bytes(), align);
            let cfg = read_tee_config(img.path()).unwrap().unwrap();
            assert_eq!(cfg.tee, TeeKind::Snp);
            assert_eq!(cfg.cpus, 2);
            assert_eq!(cfg.ram_mib, 512);
            assert_eq!(cfg.attestation_url, "http://127.0.0.1:8000");
            assert_eq!(cfg.kbs_protocol, KbsProtocol::Reference);
            assert_eq!(cfg.generation(), Some("milan"));
        }
    }

    #[test]
    fn every_tee_spelling_the_library_writes_is_understood() {
        for (tee, want) in [
            ("sev", TeeKind::Sev),
            ("sev-es", TeeKind::SevEs),
            ("sev_es", TeeKind::SevEs),
            ("sev-no-es", TeeKind::SevNoEs),
            ("sev_no_es", TeeKind::SevNoEs),
            ("snp", TeeKind::Snp),
            ("sev-snp", TeeKind::Snp),
        ] {
            let json = format!(
                r#"{{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"{tee}","tee_data":"","attestation_url":""}}"#
            );
            let img = image(4096, json.as_bytes(), 4096);
            assert_eq!(
                read_tee_config(img.path()).unwrap().unwrap().tee,
                want,
                "{tee}"
            );
        }
    }

    #[test]
    fn raw_json_is_returned_unchanged() {
        let json = vec![b' '; 131];
        let img = image(0, &json, 4096);
        assert_eq!(read_footer_json(img.as_file()).unwrap().unwrap(), json);
    }

    #[test]
    fn missing_magic_is_not_an_error() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0u8; 8192]).unwrap();
        assert_eq!(read_tee_config(f.path()).unwrap(), None);
        let tiny = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(read_tee_config(tiny.path()).unwrap(), None);
    }

    #[test]
    fn bad_lengths_are_rejected() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"{}KRUN").unwrap();
        f.write_all(&(krun_footer::MAX_JSON_LEN + 1).to_le_bytes())
            .unwrap();
        assert!(matches!(
            read_tee_config(f.path()),
            Err(FooterError::Footer(krun_footer::FooterError::TooLarge))
        ));
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"{}KRUN").unwrap();
        f.write_all(&100u64.to_le_bytes()).unwrap();
        assert!(matches!(
            read_tee_config(f.path()),
            Err(FooterError::Footer(krun_footer::FooterError::Truncated))
        ));
    }

    #[test]
    fn optional_and_unknown_keys() {
        let json = r#"{"tee":"sev","tee_data":"{\"vendor_chain\":\"/sev.chain\",\"attestation_server_pubkey\":\"\"}","workload_id":"w","cpus":1,"ram_mib":1024,"attestation_url":"","kbs_protocol":"rcar","extra":[1,2]}"#;
        let img = image(4096, json.as_bytes(), 512);
        let cfg = read_tee_config(img.path()).unwrap().unwrap();
        assert_eq!(cfg.tee, TeeKind::Sev);
        assert_eq!(cfg.kbs_protocol, KbsProtocol::Rcar);
        assert_eq!(cfg.tee_data["vendor_chain"], "/sev.chain");
    }

    #[test]
    fn invalid_configs_are_parse_errors_naming_the_key() {
        for (from, to, key) in [
            (r#""workload_id""#, r#""id""#, "workload_id"),
            (r#""tee":"snp""#, r#""tee":"tdx""#, "tee"),
            (r#"{\"gen\":\"milan\"}"#, "{not json", "tee_data"),
            (r#""cpus":2"#, r#""cpus":0"#, "cpus"),
            (r#""ram_mib":512"#, r#""ram_mib":"512""#, "ram_mib"),
            ("http://127.0.0.1:8000", "vsock://2:1025", "attestation_url"),
        ] {
            let json = SNP_JSON.replace(from, to);
            assert_ne!(json, SNP_JSON);
            let img = image(4096, json.as_bytes(), 4096);
            match read_tee_config(img.path()) {
                Err(FooterError::Parse(e)) => assert_eq!(e.field(), Some(key), "{json}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        let empty = SNP_JSON.replace(r#"{\"gen\":\"milan\"}"#, "");
        let img = image(4096, empty.as_bytes(), 4096);
        assert!(read_tee_config(img.path())
            .unwrap()
            .unwrap()
            .tee_data
            .is_empty());
    }
}
