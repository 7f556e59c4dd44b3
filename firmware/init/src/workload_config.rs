//! `/.krun_config.json` inside the encrypted disk: what the image says to run.
//!
//! Accepted shapes, tried in this order:
//! 1. an OCI runtime spec (crun/podman `config.json`): `process.args`, `process.env`,
//!    `process.cwd`, `process.user` (`uid`, `gid`, `additionalGids`), `process.rlimits`,
//!    top-level `hostname`;
//! 2. image-config fields (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`, `Hostname`) in
//!    the first of these objects that has any of them: the top level; `config` (the OCI image
//!    config `buildah mkcw` writes, or a Docker image JSON); `Config` (podman image inspect),
//!    or `Config` as a string holding the image config (buildah inspect); `OCIv1.config`;
//!    `Docker.config` (buildah inspect). Docker's `container_config` (the build container's
//!    config) is never used.
//!
//! A podman/docker `inspect` array is read through its first element. All fields are
//! optional here; [`crate::exec_plan`] decides what is missing.

use serde::Deserialize;
use serde_json::Value;

use crate::rlimits::{resource_from_name, Rlimit, RlimitError};

/// Where the file is after the switch to the new root.
pub const WORKLOAD_CONFIG_PATH: &str = "/.krun_config.json";
/// Larger configs are refused.
pub const MAX_WORKLOAD_CONFIG_SIZE: u64 = 4 << 20;

/// Errors from reading the workload config.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadConfigError {
    /// The file cannot be read.
    #[error("cannot read /.krun_config.json")]
    Read(#[source] std::io::Error),
    /// The file is above 4 MiB.
    #[error("/.krun_config.json is larger than 4 MiB")]
    TooLarge,
    /// Not JSON.
    #[error("/.krun_config.json is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// A field has the wrong type.
    #[error("/.krun_config.json field {field} has the wrong type")]
    Field {
        /// The field's name.
        field: &'static str,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// An env entry is not `KEY=VALUE`.
    #[error("/.krun_config.json has an env entry without '='")]
    Env,
    /// A rlimit is invalid.
    #[error("/.krun_config.json has an invalid rlimit")]
    Rlimit(#[source] RlimitError),
}

/// The user the image asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSpec {
    /// Image-config `User`: `name`, `uid`, `name:group`, `uid:gid`.
    Text(String),
    /// Runtime-spec `process.user`.
    Ids {
        /// User ID.
        uid: u32,
        /// Group ID.
        gid: u32,
        /// Supplementary groups.
        additional_gids: Vec<u32>,
    },
}

/// What the image says to run (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// Runtime-spec `process.args` (the full argv).
    pub args: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// User.
    pub user: Option<UserSpec>,
    /// Resource limits (runtime spec only).
    pub rlimits: Vec<Rlimit>,
    /// Hostname.
    pub hostname: Option<String>,
}

const IMAGE_KEYS: [&str; 6] = ["Entrypoint", "Cmd", "Env", "WorkingDir", "User", "Hostname"];

fn field<T: for<'de> Deserialize<'de>>(
    obj: &Value,
    key: &'static str,
) -> Result<Option<T>, WorkloadConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(|source| WorkloadConfigError::Field { field: key, source }),
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

#[derive(Deserialize)]
struct SpecUser {
    uid: u32,
    gid: u32,
    #[serde(default, rename = "additionalGids")]
    additional_gids: Option<Vec<u32>>,
}

#[derive(Deserialize)]
struct SpecRlimit {
    #[serde(rename = "type")]
    kind: String,
    soft: u64,
    hard: u64,
}

impl WorkloadConfig {
    /// Parses the JSON text.
    pub fn parse(json: &[u8]) -> Result<Self, WorkloadConfigError> {
        let root: Value = serde_json::from_slice(json).map_err(WorkloadConfigError::Json)?;
        Self::from_value(&root)
    }

    /// Reads `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, WorkloadConfigError> {
        let meta = std::fs::metadata(path).map_err(WorkloadConfigError::Read)?;
        if meta.len() > MAX_WORKLOAD_CONFIG_SIZE {
            return Err(WorkloadConfigError::TooLarge);
        }
        Self::parse(&std::fs::read(path).map_err(WorkloadConfigError::Read)?)
    }

    fn from_value(root: &Value) -> Result<Self, WorkloadConfigError> {
        let root = match root {
            Value::Array(items) => items.first().unwrap_or(&Value::Null),
            v => v,
        };
        let cfg = match root.get("process") {
            Some(process) if process.is_object() => Self::from_runtime_spec(root, process)?,
            _ => match image_config_object(root) {
                Some(obj) => Self::from_image_config(&obj)?,
                None => WorkloadConfig::default(),
            },
        };
        if cfg
            .env
            .iter()
            .any(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(WorkloadConfigError::Env);
        }
        Ok(cfg)
    }

    fn from_runtime_spec(root: &Value, process: &Value) -> Result<Self, WorkloadConfigError> {
        let user = field::<SpecUser>(process, "user")?.map(|u| UserSpec::Ids {
            uid: u.uid,
            gid: u.gid,
            additional_gids: u.additional_gids.unwrap_or_default(),
        });
        let rlimits = field::<Vec<SpecRlimit>>(process, "rlimits")?
            .unwrap_or_default()
            .iter()
            .map(|r| Rlimit::new(resource_from_name(&r.kind)?, r.soft, r.hard))
            .collect::<Result<Vec<_>, _>>()
            .map_err(WorkloadConfigError::Rlimit)?;
        Ok(WorkloadConfig {
            args: field(process, "args")?,
            env: field(process, "env")?.unwrap_or_default(),
            workdir: non_empty(field(process, "cwd")?),
            user,
            rlimits,
            hostname: non_empty(field(root, "hostname")?),
            ..WorkloadConfig::default()
        })
    }

    fn from_image_config(obj: &Value) -> Result<Self, WorkloadConfigError> {
        Ok(WorkloadConfig {
            entrypoint: field(obj, "Entrypoint")?,
            cmd: field(obj, "Cmd")?,
            env: field(obj, "Env")?.unwrap_or_default(),
            workdir: non_empty(field(obj, "WorkingDir")?),
            user: non_empty(field(obj, "User")?).map(UserSpec::Text),
            hostname: non_empty(field(obj, "Hostname")?),
            ..WorkloadConfig::default()
        })
    }
}

fn has_image_keys(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| IMAGE_KEYS.iter().any(|k| o.contains_key(*k)))
}

/// The first object holding image-config fields, in the documented order.
fn image_config_object(root: &Value) -> Option<Value> {
    if has_image_keys(root) {
        return Some(root.clone());
    }
    let config = root.get("config").filter(|c| has_image_keys(c));
    if let Some(c) = config {
        return Some(c.clone());
    }
    match root.get("Config") {
        Some(c) if has_image_keys(c) => return Some(c.clone()),
        Some(Value::String(text)) if !text.is_empty() => {
            if let Ok(inner) = serde_json::from_str::<Value>(text) {
                if let Some(c) = inner.get("config").filter(|c| has_image_keys(c)) {
                    return Some(c.clone());
                }
            }
        }
        _ => {}
    }
    for outer in ["OCIv1", "Docker"] {
        if let Some(c) = root
            .get(outer)
            .and_then(|o| o.get("config"))
            .filter(|c| has_image_keys(c))
        {
            return Some(c.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILDAH_IMAGE: &str = include_str!("../testdata/buildah-inspect-image.json");
    const BUILDAH_CONTAINER: &str = include_str!("../testdata/buildah-inspect-container.json");
    const OCI_IMAGE_CONFIG: &str = include_str!("../testdata/oci-image-config.json");
    const CRUN_SPEC: &str = include_str!("../testdata/crun-spec.json");

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn assert_buildah_values(cfg: &WorkloadConfig) {
        assert_eq!(
            cfg.entrypoint,
            Some(strings(&["/usr/bin/server", "--listen"]))
        );
        assert_eq!(cfg.cmd, Some(strings(&["8080", "--verbose"])));
        assert_eq!(
            cfg.env,
            strings(&["APP_MODE=prod", "PATH=/usr/local/bin:/usr/bin:/bin"])
        );
        assert_eq!(cfg.workdir.as_deref(), Some("/srv/app"));
        assert_eq!(cfg.user, Some(UserSpec::Text("app:app".into())));
        assert_eq!(cfg.args, None);
    }

    #[test]
    fn oci_image_config_as_mkcw_writes_it() {
        assert_buildah_values(&WorkloadConfig::parse(OCI_IMAGE_CONFIG.as_bytes()).unwrap());
    }

    #[test]
    fn buildah_inspect_image_and_container() {
        assert_buildah_values(&WorkloadConfig::parse(BUILDAH_IMAGE.as_bytes()).unwrap());
        assert_buildah_values(&WorkloadConfig::parse(BUILDAH_CONTAINER.as_bytes()).unwrap());
    }

    #[test]
    fn buildah_inspect_nestings_each_suffice() {
        let full: Value = serde_json::from_str(BUILDAH_IMAGE).unwrap();
        // Only OCIv1.config.
        let mut v = full.clone();
        v["Config"] = Value::String(String::new());
        v.as_object_mut().unwrap().remove("Docker");
        assert_buildah_values(&WorkloadConfig::from_value(&v).unwrap());
        // Only Docker.config; its container_config is a decoy that must not be used.
        let mut v = full.clone();
        v["Config"] = Value::String(String::new());
        v.as_object_mut().unwrap().remove("OCIv1");
        v["Docker"]["container_config"]["Cmd"] = serde_json::json!(["/bin/sh", "-c", "#(nop) CMD"]);
        assert_buildah_values(&WorkloadConfig::from_value(&v).unwrap());
        // Only the Config string.
        let mut v = full;
        v.as_object_mut().unwrap().remove("OCIv1");
        v.as_object_mut().unwrap().remove("Docker");
        assert_buildah_values(&WorkloadConfig::from_value(&v).unwrap());
    }

    #[test]
    fn crun_runtime_spec() {
        let cfg = WorkloadConfig::parse(CRUN_SPEC.as_bytes()).unwrap();
        assert_eq!(cfg.args, Some(strings(&["sh"])));
        assert_eq!(
            cfg.env,
            strings(&[
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ])
        );
        assert_eq!(cfg.workdir.as_deref(), Some("/"));
        assert_eq!(
            cfg.user,
            Some(UserSpec::Ids {
                uid: 0,
                gid: 0,
                additional_gids: vec![]
            })
        );
        assert_eq!(
            cfg.rlimits,
            vec![Rlimit::new(libc::RLIMIT_NOFILE, 1024, 1024).unwrap()]
        );
        assert_eq!(cfg.hostname.as_deref(), Some("crun"));
    }

    #[test]
    fn podman_shaped_runtime_spec() {
        // crun's spec with what podman adds: additionalGids, umask, several rlimits.
        let mut v: Value = serde_json::from_str(CRUN_SPEC).unwrap();
        v["process"]["args"] = serde_json::json!(["/usr/bin/server", "--port", "80"]);
        v["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000, "umask": 18, "additionalGids": [10, 1000]});
        v["process"]["rlimits"] = serde_json::json!([
            {"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576},
            {"type": "RLIMIT_NPROC", "hard": 4194304, "soft": 4194304}
        ]);
        v["process"]["cwd"] = serde_json::json!("/srv");
        let cfg = WorkloadConfig::from_value(&v).unwrap();
        assert_eq!(
            cfg.args,
            Some(strings(&["/usr/bin/server", "--port", "80"]))
        );
        assert_eq!(
            cfg.user,
            Some(UserSpec::Ids {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![10, 1000]
            })
        );
        assert_eq!(cfg.rlimits.len(), 2);
        assert_eq!(cfg.rlimits[1].resource, libc::RLIMIT_NPROC);
        assert_eq!(cfg.workdir.as_deref(), Some("/srv"));
        v["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]);
        assert!(matches!(
            WorkloadConfig::from_value(&v),
            Err(WorkloadConfigError::Rlimit(_))
        ));
    }

    #[test]
    fn podman_image_inspect_array() {
        let json = r#"[{"Id":"25d8f694","Digest":"sha256:a017","RepoTags":["localhost/testimg:latest"],
            "Config":{"User":"1000:1000","Env":["A=1"],"Entrypoint":null,"Cmd":["/bin/app"],
            "WorkingDir":"","Labels":null},"Architecture":"amd64","Os":"linux"}]"#;
        let cfg = WorkloadConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(cfg.entrypoint, None);
        assert_eq!(cfg.cmd, Some(strings(&["/bin/app"])));
        assert_eq!(cfg.workdir, None);
        assert_eq!(cfg.user, Some(UserSpec::Text("1000:1000".into())));
    }

    #[test]
    fn top_level_fields_and_docker_image_json() {
        let top =
            r#"{"Entrypoint":["/e"],"Cmd":["c"],"Env":["X=y"],"WorkingDir":"/w","Hostname":"h"}"#;
        let cfg = WorkloadConfig::parse(top.as_bytes()).unwrap();
        assert_eq!(
            (cfg.entrypoint.unwrap(), cfg.hostname.unwrap()),
            (strings(&["/e"]), "h".to_string())
        );
        let docker = r##"{"container_config":{"Cmd":["/bin/sh","-c","#(nop) build"]},
            "config":{"Hostname":"","Cmd":["/run"],"Env":null,"Entrypoint":null}}"##;
        let cfg = WorkloadConfig::parse(docker.as_bytes()).unwrap();
        assert_eq!(cfg.cmd, Some(strings(&["/run"])));
        assert_eq!(cfg.hostname, None);
        assert!(cfg.env.is_empty());
    }

    #[test]
    fn nothing_recognisable_is_an_empty_config() {
        assert_eq!(
            WorkloadConfig::parse(br#"{"foo":1}"#).unwrap(),
            WorkloadConfig::default()
        );
        assert_eq!(
            WorkloadConfig::parse(b"[]").unwrap(),
            WorkloadConfig::default()
        );
    }

    #[test]
    fn wrong_types_and_bad_env_are_errors() {
        assert!(matches!(
            WorkloadConfig::parse(br#"{"config":{"Cmd":"not-a-list"}}"#),
            Err(WorkloadConfigError::Field { field: "Cmd", .. })
        ));
        assert!(matches!(
            WorkloadConfig::parse(br#"{"config":{"Env":["NOEQ"]}}"#),
            Err(WorkloadConfigError::Env)
        ));
        assert!(matches!(
            WorkloadConfig::parse(b"{"),
            Err(WorkloadConfigError::Json(_))
        ));
    }
}
