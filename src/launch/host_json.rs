//! `/krun/host.json` for a confidential launch (schema: docs/interfaces.md, reference
//! `firmware/init/src/host_config.rs`). The file sits in the measured launch segment, so
//! every key written here is covered by the launch measurement: keys the caller did not set
//! are left out, which keeps the default measurement (`krun-sev measure`) reproducible.

use krun_footer::Binding;
use serde_json::{json, Map, Value};

use crate::resources::{PortMap, VmResources};
use crate::tee::vcpu_model::VcpuModel;
use crate::tee::TeeMode;

/// The launch parameters that reach the measurement outside host.json (vCPU count and VMSAs,
/// RAM size, vCPU model, device list on the command line). host.json repeats them, so the
/// file alone, with the bundle, determines the digest: a broker given the measured host.json
/// can recompute the launch digest and read the binding from it (docs/measurement.md,
/// "Unbound digests").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    /// vCPUs.
    pub vcpus: u8,
    /// RAM in MiB.
    pub ram_mib: u32,
    /// The vCPU model the guest sees.
    pub vcpu_model: VcpuModel,
    /// Whether a data disk is attached.
    pub data_disk: bool,
}

/// A host.json that cannot describe a launch.
#[derive(Debug, thiserror::Error)]
pub enum HostJsonError {
    /// Not a JSON object.
    #[error("host.json is not a JSON object")]
    NotObject,
    /// A key is missing or has the wrong type.
    #[error("host.json key {0:?} is missing or invalid")]
    Key(&'static str),
    /// The binding cannot be read.
    #[error("host.json binding is invalid")]
    Binding(#[source] krun_footer::BindingError),
}

/// What a measured host.json says about its launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedLaunch {
    /// Launch type.
    pub mode: TeeMode,
    /// vCPUs, RAM, vCPU model, data disk.
    pub shape: LaunchShape,
    /// The binding, if the launch has one.
    pub binding: Option<Binding>,
}

/// Reads the launch description back from host.json bytes [`build`] wrote.
pub fn describe(json: &[u8]) -> Result<DescribedLaunch, HostJsonError> {
    let v: Value = serde_json::from_slice(json).map_err(|_| HostJsonError::NotObject)?;
    let obj = v.as_object().ok_or(HostJsonError::NotObject)?;
    let mode = obj
        .get("tee")
        .and_then(Value::as_str)
        .and_then(TeeMode::parse)
        .ok_or(HostJsonError::Key("tee"))?;
    let launch = obj.get("launch").ok_or(HostJsonError::Key("launch"))?;
    let vcpus = launch
        .get("vcpus")
        .and_then(Value::as_u64)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or(HostJsonError::Key("launch.vcpus"))?;
    let ram_mib = launch
        .get("ram_mib")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(HostJsonError::Key("launch.ram_mib"))?;
    let vcpu_model = launch
        .get("vcpu_model")
        .and_then(Value::as_str)
        .and_then(|n| VcpuModel::parse(n).ok())
        .ok_or(HostJsonError::Key("launch.vcpu_model"))?;
    let data_disk = launch
        .get("data_disk")
        .and_then(Value::as_bool)
        .ok_or(HostJsonError::Key("launch.data_disk"))?;
    let binding = obj
        .get("binding")
        .map(Binding::from_value)
        .transpose()
        .map_err(HostJsonError::Binding)?;
    Ok(DescribedLaunch {
        mode,
        shape: LaunchShape {
            vcpus,
            ram_mib,
            vcpu_model,
            data_disk,
        },
        binding,
    })
}

/// `json` without its binding: the host.json of the same launch made with no workload or
/// broker named, whose digest is the one `krunfw_measurement` prints and `buildah mkcw`
/// registers. Equal to what [`build`] writes with `binding = None`, because both serialize
/// the same map with the same key order.
pub fn unbound(json: &[u8]) -> Result<Vec<u8>, HostJsonError> {
    let mut v: Value = serde_json::from_slice(json).map_err(|_| HostJsonError::NotObject)?;
    v.as_object_mut()
        .ok_or(HostJsonError::NotObject)?
        .remove("binding");
    Ok(v.to_string().into_bytes())
}

/// The JSON text for `mode`. `binding` (the workload and the broker the TEE config names)
/// is what makes two workloads' launches, or one workload's launches against two brokers,
/// measure differently; the init trusts only this copy of it. Nothing here depends on the
/// backend or the machine, so `krun-sev measure` computes the same bytes anywhere.
pub fn build(
    resources: &VmResources,
    mode: TeeMode,
    shape: &LaunchShape,
    binding: Option<&Binding>,
) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("format".into(), json!(1));
    m.insert("tee".into(), json!(mode.host_json_name()));
    m.insert(
        "launch".into(),
        json!({
            "vcpus": shape.vcpus,
            "ram_mib": shape.ram_mib,
            "vcpu_model": shape.vcpu_model.name(),
            "data_disk": shape.data_disk,
        }),
    );
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

    const SHAPE: LaunchShape = LaunchShape {
        vcpus: 2,
        ram_mib: 512,
        vcpu_model: VcpuModel::Milan,
        data_disk: false,
    };

    #[test]
    fn defaults_are_minimal_and_stable() {
        let r = VmResources::default();
        let bytes = build(&r, TeeMode::Snp, &SHAPE, None);
        assert_eq!(bytes, build(&r, TeeMode::Snp, &SHAPE, None));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({"format": 1, "tee": "snp", "launch":
                {"vcpus": 2, "ram_mib": 512, "vcpu_model": "milan", "data_disk": false}})
        );
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
        let bx = build(&r, TeeMode::Snp, &SHAPE, Some(&x));
        let v: Value = serde_json::from_slice(&bx).unwrap();
        assert_eq!(Binding::from_value(&v["binding"]).unwrap(), x);
        assert_ne!(bx, build(&r, TeeMode::Snp, &SHAPE, Some(&y)));
        assert_ne!(bx, build(&r, TeeMode::Snp, &SHAPE, Some(&other_broker)));
        assert_ne!(bx, build(&r, TeeMode::Snp, &SHAPE, None));
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
        let v: Value = serde_json::from_slice(&build(&r, TeeMode::SevEs, &SHAPE, None)).unwrap();
        assert_eq!(v["exec_path"], "/bin/sh");
        assert_eq!(v["args"], json!(["-c", "true"]));
        assert_eq!(v["env"], json!(["A=B"]));
        assert_eq!(v["workdir"], "/w");
        assert_eq!(v["tee"], "sev-es");
        assert!(v.get("port_map").is_none());
    }

    #[test]
    fn the_description_reads_back_and_unbinding_gives_the_unbound_bytes() {
        let r = VmResources::default();
        let binding = Binding {
            workload_id: "w".into(),
            attestation_url: "https://kbs.example:8443".into(),
            kbs_protocol: krun_footer::KbsProtocol::Rcar,
            broker_pin: Some([7; 32]),
        };
        let shape = LaunchShape {
            vcpus: 4,
            ram_mib: 4096,
            vcpu_model: VcpuModel::Genoa,
            data_disk: true,
        };
        for mode in [TeeMode::Sev, TeeMode::SevEs, TeeMode::Snp] {
            let bound = build(&r, mode, &shape, Some(&binding));
            let d = describe(&bound).unwrap();
            assert_eq!(d.mode, mode);
            assert_eq!(d.shape, shape);
            assert_eq!(d.binding.as_ref(), Some(&binding));
            let unbound_bytes = unbound(&bound).unwrap();
            assert_eq!(unbound_bytes, build(&r, mode, &shape, None));
            assert_eq!(describe(&unbound_bytes).unwrap().binding, None);
        }
    }

    #[test]
    fn a_description_missing_a_key_is_refused() {
        for text in [
            &b"[]"[..],
            br#"{"format":1,"tee":"snp"}"#,
            br#"{"tee":"tdx","launch":{"vcpus":1,"ram_mib":512,"vcpu_model":"milan","data_disk":false}}"#,
            br#"{"tee":"snp","launch":{"vcpus":300,"ram_mib":512,"vcpu_model":"milan","data_disk":false}}"#,
            br#"{"tee":"snp","launch":{"vcpus":1,"ram_mib":512,"vcpu_model":"rome2","data_disk":false}}"#,
            br#"{"tee":"snp","launch":{"vcpus":1,"ram_mib":512,"vcpu_model":"milan"}}"#,
            br#"{"tee":"snp","binding":{"workload_id":1},"launch":{"vcpus":1,"ram_mib":512,"vcpu_model":"milan","data_disk":false}}"#,
        ] {
            assert!(describe(text).is_err(), "{}", String::from_utf8_lossy(text));
        }
    }
}
