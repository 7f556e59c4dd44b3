//! `/krun/host.json` for a confidential launch (schema: docs/interfaces.md, reference
//! `firmware/init/src/host_config.rs`). The file sits in the measured launch segment, so
//! every key written here is covered by the launch measurement: keys the caller did not set
//! are left out, which keeps the default measurement (`krun-sev measure`) reproducible.

use krun_footer::Binding;
use serde_json::{json, Map, Value};

use crate::resources::{PortMap, VmResources};
use crate::tee::TeeMode;

/// The JSON text for `mode`. `binding` (the workload and the broker the TEE config names)
/// is what makes two workloads' launches, or one workload's launches against two brokers,
/// measure differently; the init trusts only this copy of it. Nothing here depends on the
/// backend or the machine, so `krun-sev measure` computes the same bytes anywhere.
pub fn build(resources: &VmResources, mode: TeeMode, binding: Option<&Binding>) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("format".into(), json!(1));
    m.insert("tee".into(), json!(mode.host_json_name()));
    if let Some(b) = binding {
        m.insert("binding".into(), b.to_value());
    }
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
        let bytes = build(&r, TeeMode::Snp, None);
        assert_eq!(bytes, build(&r, TeeMode::Snp, None));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v, json!({"format": 1, "tee": "snp"}));
    }

    #[test]
    fn binding_is_written_and_changes_the_bytes() {
        let r = VmResources::default();
        let x = Binding {
            workload_id: "x".into(),
            attestation_url: "http://kbs:8000".into(),
            kbs_protocol: krun_footer::KbsProtocol::Reference,
            broker_pin: None,
        };
        let y = Binding {
            workload_id: "y".into(),
            ..x.clone()
        };
        let other_broker = Binding {
            attestation_url: "http://other:8000".into(),
            ..x.clone()
        };
        let bx = build(&r, TeeMode::Snp, Some(&x));
        let v: Value = serde_json::from_slice(&bx).unwrap();
        assert_eq!(Binding::from_value(&v["binding"]).unwrap(), x);
        assert_ne!(bx, build(&r, TeeMode::Snp, Some(&y)));
        assert_ne!(bx, build(&r, TeeMode::Snp, Some(&other_broker)));
        assert_ne!(bx, build(&r, TeeMode::Snp, None));
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
        let v: Value = serde_json::from_slice(&build(&r, TeeMode::SevEs, None)).unwrap();
        assert_eq!(v["exec_path"], "/bin/sh");
        assert_eq!(v["args"], json!(["-c", "true"]));
        assert_eq!(v["env"], json!(["A=B"]));
        assert_eq!(v["workdir"], "/w");
        assert_eq!(v["tee"], "sev-es");
        assert!(v.get("port_map").is_none());
    }
}
