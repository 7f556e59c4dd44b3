//! `/krun/host.json`: the host-side configuration in the launch segment.
//!
//! The VMM writes this file into the second, uncompressed cpio segment it appends to the
//! initrd (docs/interfaces.md "Launch segment"). In a confidential launch that segment lies in
//! the measured initrd region, so every field below is covered by the launch measurement: a
//! host that changes any of them changes the measurement, and the key broker (SNP) or the
//! secret injection (SEV/SEV-ES) refuses the disk key. This is why the init honours the
//! host's exec/env/workdir in confidential mode at all (ARCHITECTURE.md §3.6): they reach the
//! guest only through measured memory. Nothing else the host controls (kernel command line
//! variables, the init's inherited environment) is passed to the workload.
//!
//! Schema (format 1; every field is optional, unknown fields are ignored):
//!
//! ```json
//! {
//!   "format": 1,
//!   "tee": "none",                  // "none" | "sev" | "sev-es" | "snp"; default "none"
//!   "binding": {                    // the workload and key broker this launch is for
//!     "workload_id": "…",           // (krun_footer::Binding); the init asks only this
//!     "attestation_url": "…",       // broker for only this workload's key, and refuses a
//!     "kbs_protocol": "reference",  // footer that names another
//!     "broker_pin": "<64 hex>"      // optional: SHA-256 of the broker's TLS public key
//!   },
//!   "exec_path": "/usr/bin/app",    // krun_set_exec: replaces the image's Entrypoint+Cmd
//!   "args": ["--flag", "x"],        // arguments after argv[0]; needs exec_path
//!   "env": ["KEY=VALUE"],           // krun_set_env / krun_set_exec envp: applied after
//!                                   // the image's env, same-named variables are replaced
//!   "workdir": "/srv",              // krun_set_workdir: replaces the image's WorkingDir
//!   "rlimits": ["RLIMIT_NOFILE=1024:4096", "7=1024:4096"],
//!                                   // krun_set_rlimits strings "RESOURCE=SOFT:HARD";
//!                                   // RESOURCE is a number or a name, a value may be
//!                                   // "unlimited"; they override the image's rlimits
//!   "hostname": "vm",               // the guest's hostname
//!   "port_map": null,               // null or absent: expose every TCP port the workload
//!                                   // listens on (LISTEN/UNLISTEN on vsock port 1027);
//!                                   // a list: only these guest ports are reachable
//!   "dev_passphrase": "secret"      // development only: the LUKS passphrase in clear;
//!                                   // refused unless tee is "none"
//! }
//! ```
//!
//! `port_map` entries are `{"host_port": 8080, "guest_port": 80}`; the init uses the guest
//! side only (the VMM owns the host side). An empty list means no port is reachable.

use std::io::{self, Read};
use std::path::Path;

use krun_footer::{Binding, BindingError};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::rlimits::{Rlimit, RlimitError};

/// Where the VMM puts the file.
pub const HOST_CONFIG_PATH: &str = "/krun/host.json";
/// Larger files are refused; the real one is a few hundred bytes.
const MAX_HOST_CONFIG_SIZE: u64 = 1 << 20;

/// Errors from reading `/krun/host.json`.
#[derive(Debug, thiserror::Error)]
pub enum HostConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read the host configuration")]
    Read(#[source] io::Error),
    /// The file is larger than 1 MiB.
    #[error("the host configuration is larger than 1 MiB")]
    TooLarge,
    /// The JSON does not match the schema.
    #[error("the host configuration is not valid JSON for its schema")]
    Parse(#[source] serde_json::Error),
    /// A format version this init does not know.
    #[error("unsupported host configuration format")]
    UnsupportedFormat,
    /// `args` was given without `exec_path`.
    #[error("host configuration has args but no exec_path")]
    ArgsWithoutExecPath,
    /// A rlimit string is malformed.
    #[error("invalid rlimit in the host configuration")]
    Rlimit(#[source] RlimitError),
    /// An env entry has no `=`.
    #[error("host env entries must have the form KEY=VALUE")]
    Env,
    /// `binding` is malformed.
    #[error("invalid launch binding in the host configuration")]
    Binding(#[source] BindingError),
    /// A development passphrase in a confidential launch.
    #[error("a development passphrase is refused in a confidential launch")]
    DevPassphraseInConfidentialMode,
}

/// The kind of launch the VMM performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeeKind {
    /// No memory encryption.
    #[default]
    None,
    /// SEV: the disk secret arrives in the launch secret table.
    Sev,
    /// SEV-ES: as SEV.
    SevEs,
    /// SEV-SNP: the guest attests from inside.
    Snp,
}

impl TeeKind {
    /// Whether host-visible secrets must be refused.
    pub fn is_confidential(self) -> bool {
        self != TeeKind::None
    }
}

/// One forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PortMapping {
    /// The port on the host (the VMM's side).
    pub host_port: u16,
    /// The TCP port inside the guest the host may connect to.
    pub guest_port: u16,
}

/// Which guest ports the host may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMapMode {
    /// Every port the workload listens on, announced on vsock port 1027.
    AllListening,
    /// Only these guest ports.
    Only(Vec<u16>),
}

#[derive(Deserialize)]
struct RawHostConfig {
    format: Option<u32>,
    #[serde(default)]
    tee: TeeKind,
    binding: Option<serde_json::Value>,
    exec_path: Option<String>,
    args: Option<Vec<String>>,
    env: Option<Vec<String>>,
    workdir: Option<String>,
    #[serde(default)]
    rlimits: Vec<String>,
    hostname: Option<String>,
    port_map: Option<Vec<PortMapping>>,
    dev_passphrase: Option<Zeroizing<String>>,
}

/// The validated host configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// The kind of launch.
    pub tee: TeeKind,
    /// The workload and broker the launch is bound to (measured).
    pub binding: Option<Binding>,
    /// Program and its arguments from `krun_set_exec`, replacing the image's.
    pub exec: Option<(String, Vec<String>)>,
    /// Extra environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory override.
    pub workdir: Option<String>,
    /// Resource limits, applied over the image's.
    pub rlimits: Vec<Rlimit>,
    /// Hostname override.
    pub hostname: Option<String>,
    /// Which guest ports are reachable from the host.
    pub port_map: PortMapMode,
    /// Development-only passphrase (tee "none" only).
    pub dev_passphrase: Option<Zeroizing<String>>,
    /// The file's bytes as measured, sent to the broker so one holding the bundle can
    /// recompute the launch digest (docs/measurement.md, "Unbound digests"). Empty for
    /// the defaults. Holds no secret in a confidential launch (dev_passphrase is refused).
    pub text: Vec<u8>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            tee: TeeKind::None,
            binding: None,
            exec: None,
            env: Vec::new(),
            workdir: None,
            rlimits: Vec::new(),
            hostname: None,
            port_map: PortMapMode::AllListening,
            dev_passphrase: None,
            text: Vec::new(),
        }
    }
}

impl HostConfig {
    /// Parses and validates the JSON text.
    pub fn parse(json: &[u8]) -> Result<Self, HostConfigError> {
        let raw: RawHostConfig = serde_json::from_slice(json).map_err(HostConfigError::Parse)?;
        if raw.format.is_some_and(|f| f != 1) {
            return Err(HostConfigError::UnsupportedFormat);
        }
        if raw.dev_passphrase.is_some() && raw.tee.is_confidential() {
            return Err(HostConfigError::DevPassphraseInConfidentialMode);
        }
        let exec = match (raw.exec_path, raw.args) {
            (Some(path), args) => Some((path, args.unwrap_or_default())),
            (None, Some(_)) => return Err(HostConfigError::ArgsWithoutExecPath),
            (None, None) => None,
        };
        let env = raw.env.unwrap_or_default();
        if env.iter().any(|e| !e.contains('=') || e.starts_with('=')) {
            return Err(HostConfigError::Env);
        }
        let rlimits = raw
            .rlimits
            .iter()
            .map(|s| Rlimit::parse_krun(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(HostConfigError::Rlimit)?;
        let port_map = match raw.port_map {
            None => PortMapMode::AllListening,
            Some(list) => PortMapMode::Only(list.iter().map(|m| m.guest_port).collect()),
        };
        let binding = raw
            .binding
            .as_ref()
            .map(Binding::from_value)
            .transpose()
            .map_err(HostConfigError::Binding)?;
        Ok(HostConfig {
            tee: raw.tee,
            binding,
            exec,
            env,
            workdir: raw.workdir,
            rlimits,
            hostname: raw.hostname,
            port_map,
            // Kept only where it holds no secret.
            text: if raw.dev_passphrase.is_none() {
                json.to_vec()
            } else {
                Vec::new()
            },
            dev_passphrase: raw.dev_passphrase,
        })
    }

    /// Reads `path`; a missing file gives the defaults (a plain, non-confidential launch).
    pub fn load(path: &Path) -> Result<Self, HostConfigError> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HostConfig::default()),
            Err(e) => return Err(HostConfigError::Read(e)),
        };
        let mut text = Zeroizing::new(Vec::new());
        file.take(MAX_HOST_CONFIG_SIZE + 1)
            .read_to_end(&mut text)
            .map_err(HostConfigError::Read)?;
        if text.len() as u64 > MAX_HOST_CONFIG_SIZE {
            return Err(HostConfigError::TooLarge);
        }
        Self::parse(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_document_parses() {
        let cfg = HostConfig::parse(
            br#"{"format":1,"tee":"sev-es","binding":{"workload_id":"w",
                "attestation_url":"http://kbs:8000","kbs_protocol":"reference"},"exec_path":"/bin/app",
                "args":["-v"],"env":["A=1","B=x=y"],"workdir":"/srv",
                "rlimits":["RLIMIT_NOFILE=1024:4096","6=10:unlimited"],"hostname":"vm",
                "port_map":[{"host_port":8080,"guest_port":80}],"future_field":{}}"#,
        )
        .unwrap();
        assert_eq!(cfg.tee, TeeKind::SevEs);
        let b = cfg.binding.as_ref().unwrap();
        assert_eq!(b.workload_id, "w");
        assert_eq!(b.attestation_url, "http://kbs:8000");
        assert!(matches!(
            HostConfig::parse(br#"{"tee":"snp","binding":{"workload_id":"w"}}"#),
            Err(HostConfigError::Binding(_))
        ));
        assert_eq!(
            cfg.exec,
            Some(("/bin/app".to_string(), vec!["-v".to_string()]))
        );
        assert_eq!(cfg.env, vec!["A=1", "B=x=y"]);
        assert_eq!(cfg.workdir.as_deref(), Some("/srv"));
        assert_eq!(cfg.rlimits.len(), 2);
        assert_eq!(cfg.rlimits[0].resource, libc::RLIMIT_NOFILE);
        assert_eq!(cfg.rlimits[1].hard, libc::RLIM_INFINITY);
        assert_eq!(cfg.hostname.as_deref(), Some("vm"));
        assert_eq!(cfg.port_map, PortMapMode::Only(vec![80]));
    }

    #[test]
    fn empty_document_is_a_plain_launch_exposing_all_ports() {
        let cfg = HostConfig::parse(b"{}").unwrap();
        assert_eq!(
            cfg,
            HostConfig {
                text: b"{}".to_vec(),
                ..HostConfig::default()
            }
        );
        let null_map = HostConfig::parse(br#"{"port_map":null}"#).unwrap();
        assert_eq!(null_map.port_map, PortMapMode::AllListening);
        let empty_map = HostConfig::parse(br#"{"port_map":[]}"#).unwrap();
        assert_eq!(empty_map.port_map, PortMapMode::Only(vec![]));
    }

    #[test]
    fn dev_passphrase_only_without_tee() {
        let cfg = HostConfig::parse(br#"{"tee":"none","dev_passphrase":"pw"}"#).unwrap();
        assert_eq!(
            cfg.dev_passphrase.as_deref().map(String::as_str),
            Some("pw")
        );
        // The text goes to a broker: never the one holding a passphrase.
        assert!(cfg.text.is_empty());
        for tee in ["sev", "sev-es", "snp"] {
            let json = format!(r#"{{"tee":"{tee}","dev_passphrase":"pw"}}"#);
            assert!(matches!(
                HostConfig::parse(json.as_bytes()),
                Err(HostConfigError::DevPassphraseInConfidentialMode)
            ));
        }
    }

    #[test]
    fn invalid_documents_are_rejected() {
        for (json, what) in [
            (&br#"{"tee":"tdx"}"#[..], "unknown tee"),
            (br#"{"format":2}"#, "format"),
            (br#"{"args":["x"]}"#, "args without exec_path"),
            (br#"{"env":["NOEQUALS"]}"#, "env without ="),
            (br#"{"rlimits":["NOFILE"]}"#, "rlimit without values"),
            (
                br#"{"port_map":[{"host_port":70000,"guest_port":1}]}"#,
                "port out of range",
            ),
            (b"not json", "syntax"),
        ] {
            assert!(HostConfig::parse(json).is_err(), "{what} accepted");
        }
    }

    #[test]
    fn missing_file_gives_defaults_and_large_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = HostConfig::load(&dir.path().join("host.json")).unwrap();
        assert_eq!(missing, HostConfig::default());
        let big = dir.path().join("big.json");
        std::fs::write(
            &big,
            vec![b' '; usize::try_from(MAX_HOST_CONFIG_SIZE + 1).unwrap()],
        )
        .unwrap();
        assert!(matches!(
            HostConfig::load(&big),
            Err(HostConfigError::TooLarge)
        ));
        let ok = dir.path().join("ok.json");
        std::fs::write(&ok, br#"{"tee":"snp"}"#).unwrap();
        assert_eq!(HostConfig::load(&ok).unwrap().tee, TeeKind::Snp);
    }
}
