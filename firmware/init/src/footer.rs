//! The "KRUN" footer at the end of the raw root disk and the TEE config JSON it carries.
//!
//! The byte layout and its bounds checks are `krun-footer`'s (shared with the library and
//! `krun-sev mkcw`); this module reads it from the block device and parses the JSON.
//!
//! The footer is outside the encrypted payload, so the host can change it. Nothing secret
//! depends on it: it only tells the guest which broker to ask and for which workload, and the
//! broker releases the key only for evidence that matches that workload's registration. The
//! reader therefore only bounds sizes and validates the JSON.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use serde::Deserialize;

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
    /// The JSON is not a TEE config.
    #[error("the footer's TEE config is not valid")]
    Parse(#[source] serde_json::Error),
    /// `tee_data` is not a JSON document.
    #[error("the footer's tee_data is not valid JSON")]
    TeeData(#[source] serde_json::Error),
}

/// The TEE kind named in the footer (kbs-types' lowercase names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FooterTee {
    /// SEV or SEV-ES (buildah canonicalises `sev_no_es` to `sev`; `krun-sev mkcw` and the
    /// library also write `sev-es` and `sev-no-es`).
    #[serde(
        alias = "sev-es",
        alias = "sev_es",
        alias = "sev-no-es",
        alias = "sev_no_es"
    )]
    Sev,
    /// SEV-SNP.
    #[serde(alias = "sev-snp")]
    Snp,
    /// A TEE this project does not launch (tdx, ...).
    #[serde(other)]
    Unsupported,
}

/// The workload/TEE config JSON (`/krun-sev.json` in the image, byte-identical here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TeeConfig {
    /// The ID the workload was registered under at the key broker.
    pub workload_id: String,
    /// vCPUs the measurement was computed for.
    pub cpus: u32,
    /// Guest RAM in MiB the measurement was computed for.
    pub ram_mib: u64,
    /// The TEE the image was made for.
    pub tee: FooterTee,
    /// A JSON document inside a string (`{"gen":"milan"}`, `{"vendor_chain":...}`).
    pub tee_data: String,
    /// The key broker's URL; may be empty.
    pub attestation_url: String,
    /// Which broker protocol to speak (absent in buildah's images).
    #[serde(default)]
    pub kbs_protocol: Option<String>,
}

impl TeeConfig {
    /// Parses the footer JSON; unknown keys are accepted.
    pub fn parse(json: &[u8]) -> Result<Self, FooterError> {
        serde_json::from_slice(json).map_err(FooterError::Parse)
    }

    /// `tee_data` decoded; an empty string is `null`.
    pub fn tee_data_json(&self) -> Result<serde_json::Value, FooterError> {
        if self.tee_data.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&self.tee_data).map_err(FooterError::TeeData)
    }
}

/// Reads and parses the footer of `path`; `Ok(None)` when there is no `KRUN` trailer.
pub fn read_tee_config(path: &Path) -> Result<Option<TeeConfig>, FooterError> {
    let file = File::open(path).map_err(FooterError::Open)?;
    match read_footer_json(&file)? {
        Some(json) => TeeConfig::parse(&json).map(Some),
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
    use super::*;
    use std::io::Write;

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
            assert_eq!(cfg.tee, FooterTee::Snp);
            assert_eq!(cfg.cpus, 2);
            assert_eq!(cfg.ram_mib, 512);
            assert_eq!(cfg.attestation_url, "http://127.0.0.1:8000");
            assert_eq!(cfg.kbs_protocol, None);
            assert_eq!(cfg.tee_data_json().unwrap()["gen"], "milan");
        }
    }

    #[test]
    fn every_tee_spelling_the_library_writes_is_understood() {
        for (tee, want) in [
            ("sev", FooterTee::Sev),
            ("sev-es", FooterTee::Sev),
            ("sev_es", FooterTee::Sev),
            ("sev-no-es", FooterTee::Sev),
            ("sev_no_es", FooterTee::Sev),
            ("snp", FooterTee::Snp),
            ("sev-snp", FooterTee::Snp),
            ("tdx", FooterTee::Unsupported),
        ] {
            let json = format!(
                r#"{{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"{tee}","tee_data":"","attestation_url":""}}"#
            );
            assert_eq!(
                TeeConfig::parse(json.as_bytes()).unwrap().tee,
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
        let cfg = TeeConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(cfg.tee, FooterTee::Sev);
        assert_eq!(cfg.kbs_protocol.as_deref(), Some("rcar"));
        assert_eq!(cfg.tee_data_json().unwrap()["vendor_chain"], "/sev.chain");
        let tdx = SNP_JSON.replace(r#""tee":"snp""#, r#""tee":"tdx""#);
        assert_eq!(
            TeeConfig::parse(tdx.as_bytes()).unwrap().tee,
            FooterTee::Unsupported
        );
    }

    #[test]
    fn missing_keys_and_bad_tee_data_are_errors() {
        let no_id = SNP_JSON.replace(r#""workload_id""#, r#""id""#);
        assert!(TeeConfig::parse(no_id.as_bytes()).is_err());
        let cfg = TeeConfig::parse(
            SNP_JSON
                .replace(r#"{\"gen\":\"milan\"}"#, "{not json")
                .as_bytes(),
        )
        .unwrap();
        assert!(cfg.tee_data_json().is_err());
        let empty = SNP_JSON.replace(r#"{\"gen\":\"milan\"}"#, "");
        assert_eq!(
            TeeConfig::parse(empty.as_bytes())
                .unwrap()
                .tee_data_json()
                .unwrap(),
            serde_json::Value::Null
        );
    }
}
