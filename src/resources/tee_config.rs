//! The TEE config file (`krun-sev.json`, also stored in the disk image's "KRUN" footer).
//!
//! The format, its parser and its per-field checks are `krun-footer`'s
//! ([`krun_footer::TeeConfig`]), shared with the guest init and `krun-sev mkcw`:
//! `{"workload_id":"…","cpus":2,"ram_mib":512,"tee":"snp","tee_data":"{\"gen\":\"milan\"}",
//! "attestation_url":"http://…"}`, all six keys required, optional `kbs_protocol`
//! (`"reference"`, the default, or `"rcar"`), unknown keys ignored.
//!
//! `tee` selects the launch type (`crate::tee::TeeMode::from_kind`):
//! - `"sev"`: what libkrun-sev and buildah write for SEV; always launched as SEV-ES, which is
//!   what buildah's `--type sev` measures. The key broker's policy for the workload does not
//!   change the launch type.
//! - `"sev-es"` (or `"sev_es"`): SEV-ES, the same launch as `"sev"`.
//! - `"sev-no-es"` (or buildah's `"sev_no_es"`): plain SEV.
//! - `"snp"` (or `"sev-snp"`): SEV-SNP.
//!
//! On top of the format, this module adds what only the host checks: for `"snp"`, `tee_data`
//! may carry the SNP launch parameters (`policy`, `host_data`, `id_block`, `id_auth`,
//! `author_key_enabled`; `crate::tee::snp_params`), validated here so that a bad value fails
//! at load; other TEE types ignore them.

use std::io::Read;
use std::path::Path;

pub use krun_footer::{KbsProtocol, TeeConfig, TeeKind};

use crate::tee::snp_params::{SnpLaunchParams, SnpParamsError};

/// Largest TEE config accepted (the same cap as the footer's and buildah's footer reader).
pub const MAX_TEE_CONFIG_LEN: u64 = krun_footer::MAX_JSON_LEN;

/// Errors while loading a TEE config.
#[derive(Debug, thiserror::Error)]
pub enum TeeConfigError {
    /// The file could not be opened or read.
    #[error("cannot read TEE config file")]
    Read(#[source] std::io::Error),
    /// The file is larger than [`MAX_TEE_CONFIG_LEN`].
    #[error("TEE config is larger than {MAX_TEE_CONFIG_LEN} bytes")]
    TooLarge,
    /// The JSON is not a valid TEE config; the message names the key (it is the format's own
    /// error, which already says "TEE config").
    #[error(transparent)]
    Format(krun_footer::TeeConfigError),
    /// `tee` is `"snp"` and a launch parameter in `tee_data` is invalid.
    #[error("TEE config has an invalid SNP launch parameter")]
    SnpParams(#[source] SnpParamsError),
}

impl TeeConfigError {
    /// The errno the C API returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            TeeConfigError::Read(e) => e.raw_os_error().unwrap_or(libc::EIO),
            TeeConfigError::TooLarge => libc::EFBIG,
            TeeConfigError::Format(_) | TeeConfigError::SnpParams(_) => libc::EINVAL,
        }
    }
}

/// Reads a TEE config file and checks it like [`load_json`].
pub fn load_file(path: &Path) -> Result<TeeConfig, TeeConfigError> {
    let file = std::fs::File::open(path).map_err(TeeConfigError::Read)?;
    let mut bytes = Vec::new();
    file.take(MAX_TEE_CONFIG_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(TeeConfigError::Read)?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > MAX_TEE_CONFIG_LEN) {
        return Err(TeeConfigError::TooLarge);
    }
    load_json(&bytes)
}

/// Parses a TEE config (the format's checks) and adds the host-only one: an `"snp"`
/// config's launch parameters.
pub fn load_json(bytes: &[u8]) -> Result<TeeConfig, TeeConfigError> {
    let config = TeeConfig::parse(bytes).map_err(TeeConfigError::Format)?;
    if config.tee == TeeKind::Snp {
        SnpLaunchParams::from_tee_data(&config.tee_data).map_err(TeeConfigError::SnpParams)?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What buildah mkcw writes for `--type snp`.
    const BUILDAH_SNP: &str = r#"{"tee":"snp","tee_data":"{\"gen\":\"milan\"}","workload_id":"3d4c2f9a","cpus":2,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}"#;
    /// What buildah mkcw writes for `--type sev` after `sevctl export`.
    const BUILDAH_SEV: &str = r#"{"tee":"sev","tee_data":"{\"vendor_chain\":\"/sev.chain\",\"attestation_server_pubkey\":\"\"}","workload_id":"1c9ee1a7b9a8d4bc4f6c5d5d2b4e1f2a3b4c5d6e7f8091a2b3c4d5e6f7081920","cpus":2,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}"#;

    #[test]
    fn parses_buildah_configs() {
        let c = load_json(BUILDAH_SNP.as_bytes()).unwrap();
        assert_eq!(c.tee, TeeKind::Snp);
        assert_eq!(c.cpus, 2);
        assert_eq!(c.ram_mib, 512);
        assert_eq!(c.workload_id, "3d4c2f9a");
        assert_eq!(c.attestation_url, "http://127.0.0.1:8000");
        assert_eq!(c.tee_data.get("gen").and_then(Value::as_str), Some("milan"));
        assert_eq!(c.kbs_protocol, KbsProtocol::Reference);
        let c = load_json(BUILDAH_SEV.as_bytes()).unwrap();
        assert_eq!(c.tee, TeeKind::Sev);
        assert_eq!(
            c.tee_data.get("vendor_chain").and_then(Value::as_str),
            Some("/sev.chain")
        );
        assert_eq!(c.vendor_chain(), Some("/sev.chain"));
        let empty = load_json(
            br#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"sev","tee_data":"{\"vendor_chain\":\"\"}","attestation_url":""}"#,
        )
        .unwrap();
        assert_eq!(empty.vendor_chain(), None);
    }

    #[test]
    fn round_trips_through_to_json() {
        for json in [BUILDAH_SNP, BUILDAH_SEV] {
            let c = load_json(json.as_bytes()).unwrap();
            assert_eq!(load_json(c.to_json().as_bytes()).unwrap(), c);
        }
        let c = load_json(BUILDAH_SNP.as_bytes()).unwrap();
        assert_eq!(c.to_json(), BUILDAH_SNP);
    }

    #[test]
    fn format_errors_name_the_field() {
        for (json, field) in [
            (
                r#"{"cpus":1,"ram_mib":64,"tee":"snp","tee_data":"","attestation_url":""}"#,
                "workload_id",
            ),
            (
                r#"{"workload_id":"w","cpus":0,"ram_mib":64,"tee":"snp","tee_data":"","attestation_url":""}"#,
                "cpus",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"SNP","tee_data":"","attestation_url":""}"#,
                "tee",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"{\"gen\":\"naples\"}","attestation_url":""}"#,
                "tee_data",
            ),
        ] {
            let err = load_json(json.as_bytes()).unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL);
            match &err {
                TeeConfigError::Format(e) => assert_eq!(e.field(), Some(field), "{json}"),
                other => panic!("{json}: {other:?}"),
            }
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("TEE config field `{field}`")),
                "{msg}"
            );
        }
        assert!(matches!(
            load_json(b"[]"),
            Err(TeeConfigError::Format(
                krun_footer::TeeConfigError::NotObject
            ))
        ));
    }

    #[test]
    fn snp_parameters_are_checked_at_load() {
        let with = |tee: &str, tee_data: &str| {
            format!(
                r#"{{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"{tee}","tee_data":{tee_data},"attestation_url":""}}"#
            )
        };
        for (tee_data, key) in [
            (r#""{\"gen\":\"milan\",\"policy\":\"0x10000\"}""#, "policy"),
            (r#"{"host_data":"00"}"#, "host_data"),
            (r#"{"id_auth":"AAAA"}"#, "id_auth"),
        ] {
            let err = load_json(with("snp", tee_data).as_bytes()).unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL);
            match &err {
                TeeConfigError::SnpParams(e) => assert_eq!(e.key(), key),
                other => panic!("{tee_data}: {other:?}"),
            }
            let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(chain.contains(&format!("tee_data key `{key}`")), "{chain}");
            // Other TEE types ignore the SNP keys.
            for tee in ["sev", "sev-es", "sev-no-es"] {
                assert!(load_json(with(tee, tee_data).as_bytes()).is_ok());
            }
        }

        let c = load_json(with("snp", r#""{\"policy\":\"0x70000\"}""#).as_bytes()).unwrap();
        assert_eq!(
            SnpLaunchParams::from_tee_data(&c.tee_data)
                .unwrap()
                .policy(),
            0x70000
        );
        let buildah = load_json(BUILDAH_SNP.as_bytes()).unwrap();
        assert_eq!(
            SnpLaunchParams::from_tee_data(&buildah.tee_data)
                .unwrap()
                .policy(),
            0x30000
        );
    }

    #[test]
    fn from_file_errors() {
        let dir = std::env::temp_dir().join(format!("krun-tee-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = load_file(&dir.join("missing.json")).unwrap_err();
        assert_eq!(missing.errno(), libc::ENOENT);
        let big = dir.join("big.json");
        std::fs::write(&big, vec![b' '; 1024 * 1024 + 1]).unwrap();
        assert_eq!(load_file(&big).unwrap_err().errno(), libc::EFBIG);
        let ok = dir.join("ok.json");
        std::fs::write(&ok, BUILDAH_SNP).unwrap();
        assert_eq!(load_file(&ok).unwrap().cpus, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
