//! The TEE config JSON: `/krun-sev.json` in a confidential-workload image and, byte for byte,
//! the content of the disk's "KRUN" footer. This is the one parser of that format; the library
//! (`krun_set_tee_config_file`, `krun-sev mkcw`) and the guest init both use it.
//!
//! ```json
//! {"tee":"snp","tee_data":"{\"gen\":\"milan\"}","workload_id":"…","cpus":2,"ram_mib":512,
//!  "attestation_url":"http://127.0.0.1:8000"}
//! ```
//!
//! The six keys above are required, as in libkrun-sev's own parser and in every file buildah
//! mkcw writes; `kbs_protocol` is optional (ours) and unknown keys are ignored. `tee_data` is
//! a string holding a JSON object (buildah) or the object itself; `""` means an empty object.
//!
//! The file is host-controlled: in the guest, nothing secret depends on it (it only names the
//! broker and the workload), but every value is bounded before anyone uses it.

use serde_json::{Map, Value};

/// Most vCPUs a config may ask for: the guest kernel's `CONFIG_NR_CPUS` (`firmware/kernel`).
pub const MAX_CPUS: u8 = 32;
/// Most RAM a config may ask for, in MiB (1 TiB).
pub const MAX_RAM_MIB: u32 = 1024 * 1024;
/// SNP processor generations `tee_data.gen` may name.
pub const SNP_GENERATIONS: [&str; 3] = ["milan", "genoa", "turin"];

/// Errors in a TEE config; each names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TeeConfigError {
    /// Not JSON.
    #[error("TEE config is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// Valid JSON, but not an object.
    #[error("TEE config is not a JSON object")]
    NotObject,
    /// A required key is absent.
    #[error("TEE config field `{0}` is missing")]
    Missing(&'static str),
    /// A key has a value of the wrong type, or out of range.
    #[error("TEE config field `{field}` {reason}")]
    Invalid {
        /// The key.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl TeeConfigError {
    /// The key at fault, if the error is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            TeeConfigError::Missing(f) | TeeConfigError::Invalid { field: f, .. } => Some(f),
            TeeConfigError::NotJson(_) | TeeConfigError::NotObject => None,
        }
    }
}

/// Which AMD launch the config asks for. `sev` and `sev-es` both launch as SEV-ES (buildah's
/// `--type sev` measures SEV-ES); only `sev-no-es` launches plain SEV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeeKind {
    /// `"sev"`: what buildah writes for SEV; launched as SEV-ES.
    Sev,
    /// `"sev-es"` (also `"sev_es"`): SEV-ES.
    SevEs,
    /// `"sev-no-es"` (also buildah's `"sev_no_es"`): plain SEV.
    SevNoEs,
    /// `"snp"` (also `"sev-snp"`): SEV-SNP.
    Snp,
}

impl TeeKind {
    /// The kind for an exact spelling; spellings are case-sensitive, as buildah and
    /// libkrun-sev write them.
    pub fn parse(s: &str) -> Option<TeeKind> {
        match s {
            "sev" => Some(TeeKind::Sev),
            "sev-es" | "sev_es" => Some(TeeKind::SevEs),
            "sev-no-es" | "sev_no_es" => Some(TeeKind::SevNoEs),
            "snp" | "sev-snp" => Some(TeeKind::Snp),
            _ => None,
        }
    }

    /// The canonical spelling written to config files.
    pub fn as_str(self) -> &'static str {
        match self {
            TeeKind::Sev => "sev",
            TeeKind::SevEs => "sev-es",
            TeeKind::SevNoEs => "sev-no-es",
            TeeKind::Snp => "snp",
        }
    }

    /// SEV or SEV-ES (pre-attestation by the VMM, secret injected with LAUNCH_SECRET).
    pub fn is_sev_family(self) -> bool {
        self != TeeKind::Snp
    }
}

/// Key-broker protocol spoken with `attestation_url` (`kbs_protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KbsProtocol {
    /// `"reference"`: virtee/reference-kbs (kbs-types 0.2 wire format), what buildah images
    /// use; the default when the key is absent or `null`.
    #[default]
    Reference,
    /// `"rcar"`: Trustee's RCAR protocol, version 0.4.0.
    Rcar,
}

impl KbsProtocol {
    /// The spelling written to config files.
    pub fn as_str(self) -> &'static str {
        match self {
            KbsProtocol::Reference => "reference",
            KbsProtocol::Rcar => "rcar",
        }
    }
}

/// A validated TEE config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeeConfig {
    /// The ID the workload is registered under at the key broker; non-empty when
    /// `attestation_url` is set.
    pub workload_id: String,
    /// vCPUs, 1..=[`MAX_CPUS`]; the measurement depends on it.
    pub cpus: u8,
    /// RAM in MiB, 1..=[`MAX_RAM_MIB`]; the measurement depends on it.
    pub ram_mib: u32,
    /// Launch type.
    pub tee: TeeKind,
    /// The `tee_data` object (empty when `tee_data` is `""`). `gen`, `vendor_chain` and
    /// `attestation_server_pubkey` are checked to be strings (`gen` one of
    /// [`SNP_GENERATIONS`]); other keys are left to their users.
    pub tee_data: Map<String, Value>,
    /// Key broker base URL (`http://` or `https://`); empty means no attestation.
    pub attestation_url: String,
    /// Key broker protocol.
    pub kbs_protocol: KbsProtocol,
}

impl TeeConfig {
    /// Parses and validates a TEE config.
    pub fn parse(bytes: &[u8]) -> Result<TeeConfig, TeeConfigError> {
        let value: Value = serde_json::from_slice(bytes).map_err(TeeConfigError::NotJson)?;
        let Value::Object(obj) = value else {
            return Err(TeeConfigError::NotObject);
        };

        let workload_id = string_field(&obj, "workload_id")?.to_owned();
        let cpus = int_field(&obj, "cpus", u64::from(MAX_CPUS))?;
        let ram_mib = int_field(&obj, "ram_mib", u64::from(MAX_RAM_MIB))?;
        let tee_str = string_field(&obj, "tee")?;
        let tee = TeeKind::parse(tee_str).ok_or_else(|| {
            invalid(
                "tee",
                format!("is {tee_str:?}; expected \"sev\", \"sev-es\", \"sev-no-es\" or \"snp\""),
            )
        })?;
        let tee_data = tee_data_field(&obj)?;
        let attestation_url = string_field(&obj, "attestation_url")?.to_owned();
        validate_url(&attestation_url)?;
        if !attestation_url.is_empty() && workload_id.is_empty() {
            return Err(invalid(
                "workload_id",
                "is empty, but attestation_url needs it to find the workload".into(),
            ));
        }
        let kbs_protocol = match obj.get("kbs_protocol") {
            None | Some(Value::Null) => KbsProtocol::default(),
            Some(Value::String(s)) if s == "reference" => KbsProtocol::Reference,
            Some(Value::String(s)) if s == "rcar" => KbsProtocol::Rcar,
            Some(v) => {
                return Err(invalid(
                    "kbs_protocol",
                    format!("is {v}; expected \"reference\" or \"rcar\""),
                ))
            }
        };

        let cfg = TeeConfig {
            workload_id,
            cpus: u8::try_from(cpus).map_err(|_| invalid("cpus", "is out of range".into()))?,
            ram_mib: u32::try_from(ram_mib)
                .map_err(|_| invalid("ram_mib", "is out of range".into()))?,
            tee,
            tee_data,
            attestation_url,
            kbs_protocol,
        };
        cfg.broker_pin()?;
        Ok(cfg)
    }

    /// Serializes the config with buildah's key order (`tee`, `tee_data` as a string,
    /// `workload_id`, `cpus`, `ram_mib`, `attestation_url`), adding `kbs_protocol` only when it
    /// is not the default, so reference configs keep buildah's shape.
    pub fn to_json(&self) -> String {
        let tee_data = if self.tee_data.is_empty() {
            String::new()
        } else {
            Value::Object(self.tee_data.clone()).to_string()
        };
        let mut out = format!(
            "{{\"tee\":{},\"tee_data\":{},\"workload_id\":{},\"cpus\":{},\"ram_mib\":{},\"attestation_url\":{}",
            Value::from(self.tee.as_str()),
            Value::from(tee_data),
            Value::from(self.workload_id.as_str()),
            self.cpus,
            self.ram_mib,
            Value::from(self.attestation_url.as_str()),
        );
        if self.kbs_protocol != KbsProtocol::default() {
            out.push_str(",\"kbs_protocol\":");
            out.push_str(&Value::from(self.kbs_protocol.as_str()).to_string());
        }
        out.push('}');
        out
    }

    /// `tee_data.vendor_chain`: the file holding the platform's full SEV certificate chain
    /// (`sevctl export --full`); `None` when absent or empty (`krun-sev mkcw` writes `""`).
    pub fn vendor_chain(&self) -> Option<&str> {
        self.tee_data
            .get("vendor_chain")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `tee_data.attestation_server_pubkey` as a broker pin (`crate::binding`): `None` when
    /// absent or empty (buildah writes `""`); otherwise 64 hex digits (optionally prefixed
    /// `sha256:`) of the SHA-256 of the broker's TLS SubjectPublicKeyInfo, which needs an
    /// `https://` attestation_url.
    pub fn broker_pin(&self) -> Result<Option<[u8; crate::binding::PIN_LEN]>, TeeConfigError> {
        let Some(text) = self
            .tee_data
            .get("attestation_server_pubkey")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            return Ok(None);
        };
        let pin = crate::binding::parse_pin(text).ok_or_else(|| {
            invalid(
                "tee_data",
                "has an attestation_server_pubkey that is not the SHA-256 of the broker's public key (64 hex digits, optionally prefixed sha256:)".into(),
            )
        })?;
        if !self.attestation_url.starts_with("https://") {
            return Err(invalid(
                "attestation_url",
                "must be https:// when tee_data pins the broker's key (attestation_server_pubkey)"
                    .into(),
            ));
        }
        Ok(Some(pin))
    }

    /// `tee_data.gen`, the AMD EPYC generation (one of [`SNP_GENERATIONS`]) if set: the vCPU
    /// model the launch presents to the guest (docs/measurement.md) and, for SNP, the
    /// generation hint sent to the broker.
    pub fn generation(&self) -> Option<&str> {
        self.tee_data.get("gen").and_then(Value::as_str)
    }
}

fn invalid(field: &'static str, reason: String) -> TeeConfigError {
    TeeConfigError::Invalid { field, reason }
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, TeeConfigError> {
    match obj.get(field) {
        None => Err(TeeConfigError::Missing(field)),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(invalid(field, format!("is {v}; expected a string"))),
    }
}

fn int_field(
    obj: &Map<String, Value>,
    field: &'static str,
    max: u64,
) -> Result<u64, TeeConfigError> {
    let value = obj.get(field).ok_or(TeeConfigError::Missing(field))?;
    value
        .as_u64()
        .filter(|v| (1..=max).contains(v))
        .ok_or_else(|| {
            invalid(
                field,
                format!("is {value}; expected an integer in 1..={max}"),
            )
        })
}

fn tee_data_field(obj: &Map<String, Value>) -> Result<Map<String, Value>, TeeConfigError> {
    let data = match obj.get("tee_data") {
        None => return Err(TeeConfigError::Missing("tee_data")),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(Map::new()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(invalid("tee_data", "does not hold a JSON object".into())),
            Err(e) => return Err(invalid("tee_data", format!("is not valid JSON ({e})"))),
        },
        Some(Value::Object(m)) => m.clone(),
        Some(v) => {
            return Err(invalid(
                "tee_data",
                format!("is {v}; expected a string holding a JSON object"),
            ))
        }
    };
    if let Some(gen) = data.get("gen") {
        if !gen.as_str().is_some_and(|g| SNP_GENERATIONS.contains(&g)) {
            return Err(invalid(
                "tee_data",
                format!("has gen {gen}; expected \"milan\", \"genoa\" or \"turin\""),
            ));
        }
    }
    for key in ["vendor_chain", "attestation_server_pubkey"] {
        if data.get(key).is_some_and(|v| !v.is_string()) {
            return Err(invalid("tee_data", format!("has a non-string {key}")));
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
        .ok_or_else(|| {
            invalid(
                "attestation_url",
                "must start with http:// or https://".into(),
            )
        })?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) || authority.contains('@') {
        return Err(invalid("attestation_url", "has no valid host".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte for byte what buildah mkcw writes for `--type snp` (Go field order).
    const BUILDAH_SNP: &str = r#"{"tee":"snp","tee_data":"{\"gen\":\"milan\"}","workload_id":"3d4c2f9a","cpus":2,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}"#;
    /// buildah `--type sev` with a `sevctl export`ed chain, and without one.
    const BUILDAH_SEV: &str = r#"{"tee":"sev","tee_data":"{\"vendor_chain\":\"/sev.chain\",\"attestation_server_pubkey\":\"\"}","workload_id":"1c9ee1a7b9a8d4bc4f6c5d5d2b4e1f2a3b4c5d6e7f8091a2b3c4d5e6f7081920","cpus":2,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}"#;
    const BUILDAH_SEV_NO_CHAIN: &str = r#"{"tee":"sev","tee_data":"{\"vendor_chain\":\"\",\"attestation_server_pubkey\":\"\"}","workload_id":"w","cpus":2,"ram_mib":512,"attestation_url":""}"#;

    fn with(tee: &str) -> String {
        format!(
            r#"{{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"{tee}","tee_data":"","attestation_url":""}}"#
        )
    }

    #[test]
    fn parses_buildah_configs() {
        let c = TeeConfig::parse(BUILDAH_SNP.as_bytes()).unwrap();
        assert_eq!(c.tee, TeeKind::Snp);
        assert_eq!((c.cpus, c.ram_mib), (2, 512));
        assert_eq!(c.workload_id, "3d4c2f9a");
        assert_eq!(c.attestation_url, "http://127.0.0.1:8000");
        assert_eq!(c.generation(), Some("milan"));
        assert_eq!(c.kbs_protocol, KbsProtocol::Reference);

        let c = TeeConfig::parse(BUILDAH_SEV.as_bytes()).unwrap();
        assert_eq!(c.tee, TeeKind::Sev);
        assert_eq!(
            c.tee_data.get("vendor_chain").and_then(Value::as_str),
            Some("/sev.chain")
        );
        assert_eq!(c.generation(), None);
        let c = TeeConfig::parse(BUILDAH_SEV_NO_CHAIN.as_bytes()).unwrap();
        assert!(c.attestation_url.is_empty());
    }

    #[test]
    fn to_json_writes_buildahs_bytes() {
        // One key in tee_data, so its order cannot differ.
        let c = TeeConfig::parse(BUILDAH_SNP.as_bytes()).unwrap();
        assert_eq!(c.to_json(), BUILDAH_SNP);
        for json in [BUILDAH_SEV, BUILDAH_SEV_NO_CHAIN] {
            let c = TeeConfig::parse(json.as_bytes()).unwrap();
            assert_eq!(TeeConfig::parse(c.to_json().as_bytes()).unwrap(), c);
        }
    }

    #[test]
    fn round_trips_every_kind_and_protocol() {
        for tee in [TeeKind::Sev, TeeKind::SevEs, TeeKind::SevNoEs, TeeKind::Snp] {
            for kbs_protocol in [KbsProtocol::Reference, KbsProtocol::Rcar] {
                let mut tee_data = Map::new();
                tee_data.insert("gen".into(), Value::from("genoa"));
                let c = TeeConfig {
                    workload_id: "wl".into(),
                    cpus: MAX_CPUS,
                    ram_mib: MAX_RAM_MIB,
                    tee,
                    tee_data,
                    attestation_url: "https://kbs.example/path".into(),
                    kbs_protocol,
                };
                assert_eq!(TeeConfig::parse(c.to_json().as_bytes()).unwrap(), c);
            }
        }
    }

    #[test]
    fn tee_spellings() {
        for (s, kind) in [
            ("sev", TeeKind::Sev),
            ("sev-es", TeeKind::SevEs),
            ("sev_es", TeeKind::SevEs),
            ("sev-no-es", TeeKind::SevNoEs),
            ("sev_no_es", TeeKind::SevNoEs),
            ("snp", TeeKind::Snp),
            ("sev-snp", TeeKind::Snp),
        ] {
            assert_eq!(
                TeeConfig::parse(with(s).as_bytes()).unwrap().tee,
                kind,
                "{s}"
            );
        }
        for s in ["SEV", "Snp", "tdx", "sev_snp", "", "sev es"] {
            let err = TeeConfig::parse(with(s).as_bytes()).unwrap_err();
            assert_eq!(err.field(), Some("tee"), "{s}");
        }
        assert!(!TeeKind::Snp.is_sev_family());
        assert!(TeeKind::SevNoEs.is_sev_family());
    }

    #[test]
    fn accepts_unknown_keys_object_tee_data_and_null_protocol() {
        let c = TeeConfig::parse(
            br#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"sev","tee_data":{"vendor_chain":"/sev.chain"},"attestation_url":"","future_key":[1,2],"kbs_protocol":"rcar"}"#,
        )
        .unwrap();
        assert_eq!(
            c.tee_data.get("vendor_chain").and_then(Value::as_str),
            Some("/sev.chain")
        );
        assert_eq!(c.kbs_protocol, KbsProtocol::Rcar);
        let c = TeeConfig::parse(
            with("snp")
                .replace('}', r#","kbs_protocol":null}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(c.kbs_protocol, KbsProtocol::Reference);
        assert!(c.tee_data.is_empty());
    }

    fn error_of(json: &str) -> String {
        match TeeConfig::parse(json.as_bytes()) {
            Err(TeeConfigError::Missing(f)) => format!("missing {f}"),
            Err(TeeConfigError::Invalid { field, .. }) => format!("invalid {field}"),
            Err(TeeConfigError::NotJson(_)) => "not json".into(),
            Err(TeeConfigError::NotObject) => "not object".into(),
            Ok(_) => "ok".into(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cfg = |rest: &str| {
            format!(r#"{{"workload_id":"w","tee_data":"","attestation_url":"",{rest}}}"#)
        };
        let snp = |tee_data: &str, url: &str| {
            format!(
                r#"{{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":{tee_data},"attestation_url":"{url}"}}"#
            )
        };
        let cases = [
            (cfg(r#""ram_mib":64,"tee":"snp""#), "missing cpus"),
            (cfg(r#""cpus":1,"tee":"snp""#), "missing ram_mib"),
            (cfg(r#""cpus":1,"ram_mib":64"#), "missing tee"),
            (cfg(r#""cpus":0,"ram_mib":64,"tee":"snp""#), "invalid cpus"),
            (cfg(r#""cpus":33,"ram_mib":64,"tee":"snp""#), "invalid cpus"),
            (cfg(r#""cpus":256,"ram_mib":64,"tee":"snp""#), "invalid cpus"),
            (cfg(r#""cpus":"2","ram_mib":64,"tee":"snp""#), "invalid cpus"),
            (cfg(r#""cpus":1.5,"ram_mib":64,"tee":"snp""#), "invalid cpus"),
            (cfg(r#""cpus":1,"ram_mib":0,"tee":"snp""#), "invalid ram_mib"),
            (cfg(r#""cpus":1,"ram_mib":-5,"tee":"snp""#), "invalid ram_mib"),
            (
                cfg(r#""cpus":1,"ram_mib":1048577,"tee":"snp""#),
                "invalid ram_mib",
            ),
            (cfg(r#""cpus":1,"ram_mib":64,"tee":"tdx""#), "invalid tee"),
            (cfg(r#""cpus":1,"ram_mib":64,"tee":7"#), "invalid tee"),
            (
                r#"{"cpus":1,"ram_mib":64,"tee":"snp","tee_data":"","attestation_url":""}"#.into(),
                "missing workload_id",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","attestation_url":""}"#
                    .into(),
                "missing tee_data",
            ),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":""}"#.into(),
                "missing attestation_url",
            ),
            (snp("null", ""), "invalid tee_data"),
            (snp(r#""{bad""#, ""), "invalid tee_data"),
            (snp(r#""[1]""#, ""), "invalid tee_data"),
            (snp("[1]", ""), "invalid tee_data"),
            (snp(r#""{\"gen\":\"naples\"}""#, ""), "invalid tee_data"),
            (snp(r#""{\"gen\":\"Milan\"}""#, ""), "invalid tee_data"),
            (snp(r#"{"gen":7}"#, ""), "invalid tee_data"),
            (snp(r#"{"vendor_chain":1}"#, ""), "invalid tee_data"),
            (snp(r#"{"attestation_server_pubkey":[]}"#, ""), "invalid tee_data"),
            (snp(r#""""#, "ftp://x"), "invalid attestation_url"),
            (snp(r#""""#, "http://"), "invalid attestation_url"),
            (snp(r#""""#, "http://u@host"), "invalid attestation_url"),
            (
                r#"{"workload_id":"w","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"","attestation_url":null}"#.into(),
                "invalid attestation_url",
            ),
            (
                r#"{"workload_id":"","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"","attestation_url":"http://kbs:8000"}"#.into(),
                "invalid workload_id",
            ),
            (
                with("snp").replace('}', r#","kbs_protocol":"grpc"}"#),
                "invalid kbs_protocol",
            ),
            (
                with("snp").replace('}', r#","kbs_protocol":"RCAR"}"#),
                "invalid kbs_protocol",
            ),
            (
                with("snp").replace('}', r#","kbs_protocol":""}"#),
                "invalid kbs_protocol",
            ),
            (
                with("snp").replace('}', r#","kbs_protocol":1}"#),
                "invalid kbs_protocol",
            ),
            ("[]".into(), "not object"),
            ("\"snp\"".into(), "not object"),
            ("{".into(), "not json"),
            (with("snp"), "ok"),
            (
                r#"{"workload_id":"","cpus":1,"ram_mib":64,"tee":"snp","tee_data":"","attestation_url":""}"#.into(),
                "ok",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(error_of(&json), want, "{json}");
        }
    }

    #[test]
    fn error_messages_name_the_key() {
        let err = TeeConfig::parse(with("tdx").as_bytes()).unwrap_err();
        assert!(
            err.to_string().starts_with("TEE config field `tee`"),
            "{err}"
        );
        assert!(err.to_string().contains("\"tdx\""), "{err}");
    }
}
