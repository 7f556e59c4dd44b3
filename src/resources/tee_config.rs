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

pub use krun_footer::{KbsProtocol, TeeKind};
use serde_json::{Map, Value};

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

/// A validated TEE config: [`krun_footer::TeeConfig`] whose SNP launch parameters have been
/// checked too. Same fields; `TryFrom` the format type (runs that check), `From` back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeeConfig {
    /// Workload identifier registered with the key broker.
    pub workload_id: String,
    /// vCPUs; overrides `krun_set_vm_config`.
    pub cpus: u8,
    /// RAM in MiB; overrides `krun_set_vm_config`.
    pub ram_mib: u32,
    /// Launch type.
    pub tee: TeeKind,
    /// The parsed `tee_data` object (empty when `tee_data` is `""`).
    pub tee_data: Map<String, Value>,
    /// Key broker base URL; empty means no attestation.
    pub attestation_url: String,
    /// Key broker protocol.
    pub kbs_protocol: KbsProtocol,
}

impl TeeConfig {
    /// Reads and validates a TEE config file.
    pub fn from_file(path: &Path) -> Result<TeeConfig, TeeConfigError> {
        let file = std::fs::File::open(path).map_err(TeeConfigError::Read)?;
        let mut bytes = Vec::new();
        file.take(MAX_TEE_CONFIG_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(TeeConfigError::Read)?;
        if u64::try_from(bytes.len()).map_or(true, |n| n > MAX_TEE_CONFIG_LEN) {
            return Err(TeeConfigError::TooLarge);
        }
        TeeConfig::from_json(&bytes)
    }

    /// Validates a TEE config given as JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<TeeConfig, TeeConfigError> {
        let format = krun_footer::TeeConfig::parse(bytes).map_err(TeeConfigError::Format)?;
        TeeConfig::try_from(format)
    }

    /// The SNP launch parameters of `tee_data` (defaults when it has none). Already checked
    /// at load for `"snp"` configs.
    pub fn snp_launch_params(&self) -> Result<SnpLaunchParams, SnpParamsError> {
        SnpLaunchParams::from_tee_data(&self.tee_data)
    }

    /// `tee_data.vendor_chain`: the file holding the platform's full SEV certificate chain
    /// (`sevctl export --full`); `None` when absent or empty (`krun-sev mkcw` writes `""`).
    pub fn vendor_chain(&self) -> Option<&Path> {
        self.tee_data
            .get("vendor_chain")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(Path::new)
    }

    /// Serializes the config in the libkrun-sev/buildah format (`tee_data` as a string).
    pub fn to_json(&self) -> String {
        krun_footer::TeeConfig::from(self.clone()).to_json()
    }
}

impl TryFrom<krun_footer::TeeConfig> for TeeConfig {
    type Error = TeeConfigError;

    /// Adds the host-only check: an `"snp"` config's launch parameters.
    fn try_from(c: krun_footer::TeeConfig) -> Result<TeeConfig, TeeConfigError> {
        if c.tee == TeeKind::Snp {
            SnpLaunchParams::from_tee_data(&c.tee_data).map_err(TeeConfigError::SnpParams)?;
        }
        Ok(TeeConfig {
            workload_id: c.workload_id,
            cpus: c.cpus,
            ram_mib: c.ram_mib,
            tee: c.tee,
            tee_data: c.tee_data,
            attestation_url: c.attestation_url,
            kbs_protocol: c.kbs_protocol,
        })
    }
}

impl From<TeeConfig> for krun_footer::TeeConfig {
    fn from(c: TeeConfig) -> krun_footer::TeeConfig {
        krun_footer::TeeConfig {
            workload_id: c.workload_id,
            cpus: c.cpus,
            ram_mib: c.ram_mib,
            tee: c.tee,
            tee_data: c.tee_data,
            attestation_url: c.attestation_url,
            kbs_protocol: c.kbs_protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What buildah mkcw writes for `--type snp`.
    const BUILDAH_SNP: &str = r#"{"tee":"snp","tee_data":"{\"gen\":\"milan\"}","workload_id":"3d4c2f9a","cpus":2,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}"#;
    /// What buildah mkcw writes for `--type sev` after `sevctl export`.
    const BUILDAH_SEV: &str = r#"{"tee":"sev","tee_data":"{\"vendor_chain\":\"/sev.chain\",\"attestation_server_pubkey\":\"\"}","workload_id":"1c9ee1a7b9a8d4bc4f6c5d5d2b4e1f2a3b4c5d6e7f8091a2b3c4d5e6f7081920","cpus":2,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}"#;

    #[test]
    fn parses_buildah_configs() {
        let c = TeeConfig::from_json(BUILDAH_SNP.as_bytes()).unwrap();
        assert_eq!(c.tee, TeeKind::Snp);
        assert_eq!(c.cpus, 2);
        assert_eq!(c.ram_mib, 512);
        assert_eq!(c.workload_id, "3d4c2f9a");
        assert_eq!(c.attestation_url, "http://127.0.0.1:8000");
        assert_eq!(c.tee_data.get("gen").and_then(Value::as_str), Some("milan"));
        assert_eq!(c.kbs_protocol, KbsProtocol::Reference);
        let c = TeeConfig::from_json(BUILDAH_SEV.as_bytes()).unwrap();
        assert_eq!(c.tee, TeeKind::Sev);
        assert_eq!(
            c.tee_data.get("vendor_chain").and_then(Value::as_str),
            Some("/sev.chain")
        );
        assert_eq!(c.vendor_chain(), Some(Path::new("/sev.chain")));
        let empty = TeeConfig::from_json(
            br#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"sev","tee_data":"{\"vendor_chain\":\"\"}","attestation_url":""}"#,
        )
        .unwrap();
        assert_eq!(empty.vendor_chain(), None);
    }

    #[test]
    fn round_trips_through_to_json() {
        for json in [BUILDAH_SNP, BUILDAH_SEV] {
            let c = TeeConfig::from_json(json.as_bytes()).unwrap();
            assert_eq!(TeeConfig::from_json(c.to_json().as_bytes()).unwrap(), c);
        }
        let c = TeeConfig::from_json(BUILDAH_SNP.as_bytes()).unwrap();
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
            let err = TeeConfig::from_json(json.as_bytes()).unwrap_err();
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
            TeeConfig::from_json(b"[]"),
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
            let err = TeeConfig::from_json(with("snp", tee_data).as_bytes()).unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL);
            match &err {
                TeeConfigError::SnpParams(e) => assert_eq!(e.key(), key),
                other => panic!("{tee_data}: {other:?}"),
            }
            let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(chain.contains(&format!("tee_data key `{key}`")), "{chain}");
            // Other TEE types ignore the SNP keys.
            for tee in ["sev", "sev-es", "sev-no-es"] {
                assert!(TeeConfig::from_json(with(tee, tee_data).as_bytes()).is_ok());
            }
        }

        let c =
            TeeConfig::from_json(with("snp", r#""{\"policy\":\"0x70000\"}""#).as_bytes()).unwrap();
        assert_eq!(c.snp_launch_params().unwrap().policy(), 0x70000);
        let buildah = TeeConfig::from_json(BUILDAH_SNP.as_bytes()).unwrap();
        assert_eq!(buildah.snp_launch_params().unwrap().policy(), 0x30000);
    }

    #[test]
    fn conversions_keep_every_field() {
        let c = TeeConfig::from_json(
            br#"{"workload_id":"w","cpus":3,"ram_mib":640,"tee":"sev-no-es","tee_data":{"vendor_chain":"/c"},"attestation_url":"https://k","kbs_protocol":"rcar"}"#,
        )
        .unwrap();
        let format = krun_footer::TeeConfig::from(c.clone());
        assert_eq!(format.tee, TeeKind::SevNoEs);
        assert_eq!(format.kbs_protocol, KbsProtocol::Rcar);
        assert_eq!(TeeConfig::try_from(format).unwrap(), c);
    }

    #[test]
    fn from_file_errors() {
        let dir = std::env::temp_dir().join(format!("krun-tee-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = TeeConfig::from_file(&dir.join("missing.json")).unwrap_err();
        assert_eq!(missing.errno(), libc::ENOENT);
        let big = dir.join("big.json");
        std::fs::write(&big, vec![b' '; 1024 * 1024 + 1]).unwrap();
        assert_eq!(TeeConfig::from_file(&big).unwrap_err().errno(), libc::EFBIG);
        let ok = dir.join("ok.json");
        std::fs::write(&ok, BUILDAH_SNP).unwrap();
        assert_eq!(TeeConfig::from_file(&ok).unwrap().cpus, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
