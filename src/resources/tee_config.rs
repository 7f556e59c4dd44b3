//! The TEE config file (`krun-sev.json`, also stored in the disk image's "KRUN" footer).
//!
//! Format (libkrun-sev and buildah mkcw):
//! `{"workload_id":"…","cpus":2,"ram_mib":512,"tee":"snp","tee_data":"{\"gen\":\"milan\"}",
//! "attestation_url":"http://…"}`. `tee_data` is a string holding a JSON object (an object is
//! accepted too). Unknown keys are ignored so files written by newer tools still load.
//!
//! `tee` selects the launch type:
//! - `"sev"`: what libkrun-sev and buildah write for SEV. The launch uses SEV-ES unless the
//!   key broker's policy for the workload leaves out the ENCRYPTED_STATE bit, in which case it
//!   is plain SEV (libkrun-sev behaviour). Without a broker it is SEV-ES, which is what
//!   buildah's `--type sev` measures.
//! - `"sev-es"`: always SEV-ES; a broker policy without ENCRYPTED_STATE is an error.
//! - `"sev-no-es"` (or buildah's `"sev_no_es"`): always plain SEV.
//! - `"snp"`: SEV-SNP.
//!
//! For `"snp"`, `tee_data` may also carry the SNP launch parameters (`policy`, `host_data`,
//! `id_block`, `id_auth`, `author_key_enabled`; `crate::tee::snp_params`). They are checked
//! here so that a bad value fails at load; other TEE types ignore them.
//!
//! The optional `kbs_protocol` key picks the key-broker protocol: `"reference"` (default,
//! reference-kbs as used by buildah images) or `"rcar"` (Trustee).

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

use super::{MAX_RAM_MIB, MAX_VCPUS};
use crate::tee::snp_params::{SnpLaunchParams, SnpParamsError};

/// Largest TEE config accepted (the same cap buildah's footer reader uses).
pub const MAX_TEE_CONFIG_LEN: u64 = 1024 * 1024;

/// Errors while loading a TEE config.
#[derive(Debug, thiserror::Error)]
pub enum TeeConfigError {
    /// The file could not be opened or read.
    #[error("cannot read TEE config file")]
    Read(#[source] std::io::Error),
    /// The file is larger than [`MAX_TEE_CONFIG_LEN`].
    #[error("TEE config is larger than {MAX_TEE_CONFIG_LEN} bytes")]
    TooLarge,
    /// Not JSON, or not a JSON object.
    #[error("TEE config is not a JSON object")]
    NotJson(#[source] serde_json::Error),
    /// A required key is absent.
    #[error("TEE config field `{0}` is missing")]
    Missing(&'static str),
    /// A key has a value of the wrong type or out of range.
    #[error("TEE config field `{field}` {reason}")]
    Invalid {
        /// The key.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
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
            _ => libc::EINVAL,
        }
    }
}

/// Which AMD launch the config asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeeKind {
    /// `"sev"`: SEV-ES unless the broker's policy leaves out ENCRYPTED_STATE.
    Sev,
    /// `"sev-es"`: always SEV-ES.
    SevEs,
    /// `"sev-no-es"`: always plain SEV.
    SevNoEs,
    /// `"snp"`: SEV-SNP.
    Snp,
}

impl TeeKind {
    fn parse(s: &str) -> Option<TeeKind> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "sev" => Some(TeeKind::Sev),
            "sev-es" => Some(TeeKind::SevEs),
            "sev-no-es" => Some(TeeKind::SevNoEs),
            "snp" | "sev-snp" => Some(TeeKind::Snp),
            _ => None,
        }
    }

    /// The canonical spelling used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            TeeKind::Sev => "sev",
            TeeKind::SevEs => "sev-es",
            TeeKind::SevNoEs => "sev-no-es",
            TeeKind::Snp => "snp",
        }
    }
}

/// Key-broker protocol spoken with `attestation_url`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KbsProtocol {
    /// virtee/reference-kbs (kbs-types 0.2 wire format), what buildah images use.
    #[default]
    Reference,
    /// Trustee's RCAR protocol, version 0.4.0.
    Rcar,
}

/// A validated TEE config.
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
        let value: Value = serde_json::from_slice(bytes).map_err(TeeConfigError::NotJson)?;
        let Value::Object(obj) = value else {
            return Err(TeeConfigError::NotJson(serde::de::Error::custom(
                "the top level is not an object",
            )));
        };

        let workload_id = string_field(&obj, "workload_id")?.to_owned();
        let cpus = int_field(&obj, "cpus", 1, u64::from(MAX_VCPUS))?;
        let ram_mib = int_field(&obj, "ram_mib", 1, u64::from(MAX_RAM_MIB))?;
        let tee_str = string_field(&obj, "tee")?;
        let tee = TeeKind::parse(tee_str).ok_or_else(|| TeeConfigError::Invalid {
            field: "tee",
            reason: format!(
                "is {tee_str:?}; expected \"sev\", \"sev-es\", \"sev-no-es\" or \"snp\""
            ),
        })?;
        let tee_data = tee_data_field(&obj)?;
        if tee == TeeKind::Snp {
            SnpLaunchParams::from_tee_data(&tee_data).map_err(TeeConfigError::SnpParams)?;
        }
        let attestation_url = match obj.get("attestation_url") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("attestation_url", "is not a string")),
        };
        validate_url(&attestation_url)?;
        if !attestation_url.is_empty() && workload_id.is_empty() {
            return Err(invalid(
                "workload_id",
                "is empty, but attestation_url needs it to find the workload",
            ));
        }
        let kbs_protocol = match obj.get("kbs_protocol") {
            None | Some(Value::Null) => KbsProtocol::default(),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "reference" | "reference-kbs" | "" => KbsProtocol::Reference,
                "rcar" | "trustee" => KbsProtocol::Rcar,
                _ => {
                    return Err(invalid(
                        "kbs_protocol",
                        &format!("is {s:?}; expected \"reference\" or \"rcar\""),
                    ))
                }
            },
            Some(_) => return Err(invalid("kbs_protocol", "is not a string")),
        };

        Ok(TeeConfig {
            workload_id,
            cpus: u8::try_from(cpus).map_err(|_| invalid("cpus", "is out of range"))?,
            ram_mib: u32::try_from(ram_mib).map_err(|_| invalid("ram_mib", "is out of range"))?,
            tee,
            tee_data,
            attestation_url,
            kbs_protocol,
        })
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
        let mut obj = Map::new();
        obj.insert("tee".into(), Value::from(self.tee.as_str()));
        let tee_data = if self.tee_data.is_empty() {
            String::new()
        } else {
            Value::Object(self.tee_data.clone()).to_string()
        };
        obj.insert("tee_data".into(), Value::from(tee_data));
        obj.insert("workload_id".into(), Value::from(self.workload_id.clone()));
        obj.insert("cpus".into(), Value::from(self.cpus));
        obj.insert("ram_mib".into(), Value::from(self.ram_mib));
        obj.insert(
            "attestation_url".into(),
            Value::from(self.attestation_url.clone()),
        );
        if self.kbs_protocol == KbsProtocol::Rcar {
            obj.insert("kbs_protocol".into(), Value::from("rcar"));
        }
        Value::Object(obj).to_string()
    }
}

fn invalid(field: &'static str, reason: &str) -> TeeConfigError {
    TeeConfigError::Invalid {
        field,
        reason: reason.to_owned(),
    }
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, TeeConfigError> {
    match obj.get(field) {
        None => Err(TeeConfigError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(field, "is not a string")),
    }
}

fn int_field(
    obj: &Map<String, Value>,
    field: &'static str,
    min: u64,
    max: u64,
) -> Result<u64, TeeConfigError> {
    let value = obj.get(field).ok_or(TeeConfigError::Missing(field))?;
    value
        .as_u64()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| {
            invalid(
                field,
                &format!("is {value}; expected an integer in {min}..={max}"),
            )
        })
}

fn tee_data_field(obj: &Map<String, Value>) -> Result<Map<String, Value>, TeeConfigError> {
    let data = match obj.get("tee_data") {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(Map::new()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(invalid("tee_data", "does not hold a JSON object")),
            Err(e) => return Err(invalid("tee_data", &format!("is not valid JSON ({e})"))),
        },
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid("tee_data", "is not a string holding a JSON object")),
    };
    if let Some(gen) = data.get("gen") {
        let ok = gen.as_str().is_some_and(|g| {
            ["milan", "genoa", "turin"].contains(&g.to_ascii_lowercase().as_str())
        });
        if !ok {
            return Err(invalid(
                "tee_data",
                &format!("has gen {gen}; expected \"milan\", \"genoa\" or \"turin\""),
            ));
        }
    }
    for key in ["vendor_chain", "attestation_server_pubkey"] {
        if data.get(key).is_some_and(|v| !v.is_string()) {
            return Err(invalid("tee_data", &format!("has a non-string {key}")));
        }
    }
    Ok(data)
}

fn validate_url(url: &str) -> Result<(), TeeConfigError> {
    if url.is_empty() {
        return Ok(());
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| invalid("attestation_url", "must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) || authority.contains('@') {
        return Err(invalid("attestation_url", "has no valid host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILDAH_SNP: &str = r#"{"tee":"snp","tee_data":"{\"gen\":\"milan\"}","workload_id":"3d4c2f9a","cpus":2,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}"#;

    #[test]
    fn parses_buildah_snp_config() {
        let c = TeeConfig::from_json(BUILDAH_SNP.as_bytes()).unwrap();
        assert_eq!(c.tee, TeeKind::Snp);
        assert_eq!(c.cpus, 2);
        assert_eq!(c.ram_mib, 512);
        assert_eq!(c.workload_id, "3d4c2f9a");
        assert_eq!(c.attestation_url, "http://127.0.0.1:8000");
        assert_eq!(c.tee_data.get("gen").and_then(Value::as_str), Some("milan"));
        assert_eq!(c.kbs_protocol, KbsProtocol::Reference);
    }

    #[test]
    fn round_trips_through_to_json() {
        let c = TeeConfig::from_json(BUILDAH_SNP.as_bytes()).unwrap();
        assert_eq!(TeeConfig::from_json(c.to_json().as_bytes()).unwrap(), c);
    }

    #[test]
    fn tee_spellings() {
        for (s, kind) in [
            ("sev", TeeKind::Sev),
            ("SEV", TeeKind::Sev),
            ("sev-es", TeeKind::SevEs),
            ("sev_es", TeeKind::SevEs),
            ("sev_no_es", TeeKind::SevNoEs),
            ("sev-no-es", TeeKind::SevNoEs),
            ("snp", TeeKind::Snp),
        ] {
            let json = format!(
                r#"{{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"{s}","tee_data":"","attestation_url":""}}"#
            );
            assert_eq!(
                TeeConfig::from_json(json.as_bytes()).unwrap().tee,
                kind,
                "{s}"
            );
        }
    }

    #[test]
    fn accepts_unknown_keys_and_object_tee_data() {
        let c = TeeConfig::from_json(
            br#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"sev","tee_data":{"vendor_chain":"/sev.chain"},"attestation_url":"","future_key":[1,2],"kbs_protocol":"rcar"}"#,
        )
        .unwrap();
        assert_eq!(
            c.tee_data.get("vendor_chain").and_then(Value::as_str),
            Some("/sev.chain")
        );
        assert_eq!(c.vendor_chain(), Some(Path::new("/sev.chain")));
        assert_eq!(c.kbs_protocol, KbsProtocol::Rcar);
        let empty = TeeConfig::from_json(
            br#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"sev","tee_data":"{\"vendor_chain\":\"\"}","attestation_url":""}"#,
        )
        .unwrap();
        assert_eq!(empty.vendor_chain(), None);
    }

    fn field_of(json: &str) -> String {
        match TeeConfig::from_json(json.as_bytes()) {
            Err(TeeConfigError::Missing(f)) => format!("missing {f}"),
            Err(TeeConfigError::Invalid { field, .. }) => format!("invalid {field}"),
            Err(TeeConfigError::NotJson(_)) => "not json".into(),
            Err(TeeConfigError::SnpParams(e)) => format!("snp {}", e.key()),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let base = r##""workload_id":"w","tee_data":"","attestation_url":"""##;
        let cases = [
            (format!(r#"{{{base},"ram_mib":64,"tee":"snp"}}"#), "missing cpus"),
            (format!(r#"{{{base},"cpus":1,"tee":"snp"}}"#), "missing ram_mib"),
            (format!(r#"{{{base},"cpus":1,"ram_mib":64}}"#), "missing tee"),
            (format!(r#"{{{base},"cpus":0,"ram_mib":64,"tee":"snp"}}"#), "invalid cpus"),
            (format!(r#"{{{base},"cpus":256,"ram_mib":64,"tee":"snp"}}"#), "invalid cpus"),
            (format!(r#"{{{base},"cpus":"2","ram_mib":64,"tee":"snp"}}"#), "invalid cpus"),
            (format!(r#"{{{base},"cpus":1.5,"ram_mib":64,"tee":"snp"}}"#), "invalid cpus"),
            (format!(r#"{{{base},"cpus":1,"ram_mib":0,"tee":"snp"}}"#), "invalid ram_mib"),
            (format!(r#"{{{base},"cpus":1,"ram_mib":-5,"tee":"snp"}}"#), "invalid ram_mib"),
            (format!(r#"{{{base},"cpus":1,"ram_mib":64,"tee":"tdx"}}"#), "invalid tee"),
            (format!(r#"{{{base},"cpus":1,"ram_mib":64,"tee":7}}"#), "invalid tee"),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"{bad","attestation_url":""}"#.into(),
                "invalid tee_data",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"[1]","attestation_url":""}"#.into(),
                "invalid tee_data",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"{\"gen\":\"naples\"}","attestation_url":""}"#.into(),
                "invalid tee_data",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"","attestation_url":"ftp://x"}"#.into(),
                "invalid attestation_url",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"","attestation_url":"http://"}"#.into(),
                "invalid attestation_url",
            ),
            (
                r#"{"workload_id":"","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"","attestation_url":"http://kbs:8000"}"#.into(),
                "invalid workload_id",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","kbs_protocol":"grpc"}"#.into(),
                "invalid kbs_protocol",
            ),
            (r#"{"cpus":1,"ram_mib":64,"tee":"snp"}"#.into(), "missing workload_id"),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"{\"gen\":\"milan\",\"policy\":\"0x10000\"}"}"#.into(),
                "snp policy",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":{"host_data":"00"}}"#.into(),
                "snp host_data",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":{"id_auth":"AAAA"}}"#.into(),
                "snp id_auth",
            ),
            ("[]".into(), "not json"),
            ("{".into(), "not json"),
        ];
        for (json, want) in cases {
            assert_eq!(field_of(&json), want, "{json}");
        }
    }

    #[test]
    fn snp_parameters_are_checked_only_for_snp() {
        let with = |tee: &str| {
            format!(
                r#"{{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"{tee}","tee_data":"{{\"policy\":\"0x1\",\"gen\":\"milan\"}}"}}"#
            )
        };
        assert!(TeeConfig::from_json(with("sev").as_bytes()).is_ok());
        let err = TeeConfig::from_json(with("snp").as_bytes()).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("tee_data key `policy`"), "{chain}");

        let c = TeeConfig::from_json(
            br#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"{\"policy\":\"0x70000\"}"}"#,
        )
        .unwrap();
        assert_eq!(c.snp_launch_params().unwrap().policy(), 0x70000);
        let buildah = TeeConfig::from_json(BUILDAH_SNP.as_bytes()).unwrap();
        assert_eq!(buildah.snp_launch_params().unwrap().policy(), 0x30000);
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
