//! `/krun/host.json` for a confidential launch (schema: docs/interfaces.md, reference
//! `firmware/init/src/host_config.rs`). The file sits in the measured launch segment, so
//! every key written here is covered by the launch measurement: keys the caller did not set
//! are left out, which keeps the default measurement (`krun-sev measure`) reproducible.

use serde_json::{json, Map, Value};

use crate::resources::{PortMap, VmResources};
use crate::tee::TeeMode;

/// The JSON text for `mode`. `psp_model` tells the init to ask vsock port 1026 for SNP
/// reports.
pub fn build(resources: &VmResources, mode: TeeMode, psp_model: bool) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("format".into(), json!(1));
    m.insert("tee".into(), json!(mode.host_json_name()));
    m.insert("psp_model".into(), json!(psp_model));
    if let Some(exec) = &resources.exec {
        m.insert("exec_path".into(), json!(exec.path));
        m.insert("args".into(), json!(exec.args));
    }
    if let Some(env) = &resources.env {
        m.insert("env".into(), json!(env));
    }
    if let Some(workdir) = &resources.workdir {
        m.insert("workdir".into(), json!(workdir));
    }
    if !resources.rlimits.is_empty() {
        let list: Vec<String> = resources
            .rlimits
            .iter()
            .map(|r| format!("RLIMIT_{}={}:{}", r.resource_name(), r.cur, r.max))
            .collect();
        m.insert("rlimits".into(), json!(list));
    }
    if let PortMap::Explicit(list) = &resources.port_map {
        let list: Vec<Value> = list
            .iter()
            .map(|p| json!({"host_port": p.host, "guest_port": p.guest}))
            .collect();
        m.insert("port_map".into(), Value::Array(list));
    }
    // serde_json's Map is ordered by key, so equal settings give equal bytes.
    Value::Object(m).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ExecConfig;

    #[test]
    fn defaults_are_minimal_and_stable() {
        let r = VmResources::default();
        let bytes = build(&r, TeeMode::Snp, true);
        assert_eq!(bytes, build(&r, TeeMode::Snp, true));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v, json!({"format": 1, "psp_model": true, "tee": "snp"}));
    }

    #[test]
    fn caller_settings_are_included() {
        let r = VmResources {
            exec: Some(ExecConfig {
                path: "/bin/sh".into(),
                args: vec!["-c".into(), "true".into()],
            }),
            env: Some(vec!["A=B".into()]),
            workdir: Some("/w".into()),
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&build(&r, TeeMode::SevEs, false)).unwrap();
        assert_eq!(v["exec_path"], "/bin/sh");
        assert_eq!(v["args"], json!(["-c", "true"]));
        assert_eq!(v["env"], json!(["A=B"]));
        assert_eq!(v["workdir"], "/w");
        assert_eq!(v["tee"], "sev-es");
        assert!(v.get("port_map").is_none());
    }
}
