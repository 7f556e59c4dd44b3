//! `/.krun_config.json`: the OCI image config the guest init reads, shaped like the one
//! buildah mkcw writes (`json.Marshal(v1.Image)`: the process settings sit under "config").

use serde_json::{json, Map, Value};

/// The workload's process settings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Env`, `NAME=VALUE`.
    pub env: Vec<String>,
    /// `config.WorkingDir`.
    pub workdir: Option<String>,
    /// `config.User`.
    pub user: Option<String>,
}

/// Errors in the process settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageConfigError {
    /// Neither an entrypoint nor a command.
    #[error("the workload needs --entrypoint or --cmd")]
    NoCommand,
    /// An environment entry without `NAME=`.
    #[error("environment entry {0:?} is not NAME=VALUE")]
    Env(String),
    /// A relative working directory.
    #[error("working directory {0:?} is not absolute")]
    Workdir(String),
}

impl ProcessConfig {
    /// Checks the settings and renders the OCI image config JSON.
    pub fn to_image_config(&self) -> Result<Vec<u8>, ImageConfigError> {
        if self.entrypoint.is_empty() && self.cmd.is_empty() {
            return Err(ImageConfigError::NoCommand);
        }
        if let Some(bad) = self
            .env
            .iter()
            .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
        {
            return Err(ImageConfigError::Env(bad.clone()));
        }
        if let Some(w) = self.workdir.as_ref().filter(|w| !w.starts_with('/')) {
            return Err(ImageConfigError::Workdir(w.clone()));
        }
        let mut config = Map::new();
        if let Some(user) = &self.user {
            config.insert("User".into(), Value::from(user.clone()));
        }
        if !self.env.is_empty() {
            config.insert("Env".into(), json!(self.env));
        }
        if !self.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            config.insert("Cmd".into(), json!(self.cmd));
        }
        if let Some(w) = &self.workdir {
            config.insert("WorkingDir".into(), Value::from(w.clone()));
        }
        let image = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        Ok(image.to_string().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_buildah_shape() {
        let p = ProcessConfig {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hi".into()],
            env: vec!["PATH=/bin".into()],
            workdir: Some("/srv".into()),
            user: None,
        };
        let v: Value = serde_json::from_slice(&p.to_image_config().unwrap()).unwrap();
        assert_eq!(v["config"]["Entrypoint"], json!(["/bin/sh", "-c"]));
        assert_eq!(v["config"]["Cmd"], json!(["echo hi"]));
        assert_eq!(v["config"]["Env"], json!(["PATH=/bin"]));
        assert_eq!(v["config"]["WorkingDir"], json!("/srv"));
        assert_eq!(v["os"], json!("linux"));
    }

    #[test]
    fn rejects_bad_settings() {
        assert_eq!(
            ProcessConfig::default().to_image_config(),
            Err(ImageConfigError::NoCommand)
        );
        let base = ProcessConfig {
            cmd: vec!["/x".into()],
            ..Default::default()
        };
        let bad_env = ProcessConfig {
            env: vec!["X".into()],
            ..base.clone()
        };
        assert_eq!(
            bad_env.to_image_config(),
            Err(ImageConfigError::Env("X".into()))
        );
        let bad_wd = ProcessConfig {
            workdir: Some("srv".into()),
            ..base
        };
        assert_eq!(
            bad_wd.to_image_config(),
            Err(ImageConfigError::Workdir("srv".into()))
        );
    }
}
