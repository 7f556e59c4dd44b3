//! The launch commands of one launch with the bytes they measured, written for oracles that
//! do not share this code (`tests/oracle/measure_oracle.py`): `krun-sev measure
//! --dump-updates FILE`, and [`DUMP_ENV`] for a real launch.
//!
//! Recorded by [`super::backend::Recorder::with_updates`] before each command reaches the
//! backend, so the bytes are the ones the backend reads. Format (JSON lines, one object each,
//! data base64): a header `{"format":1,"dump":"krun-sev launch updates","tee":"sev"|"sev-es"|"snp"}`,
//! then in launch order `{"cmd":"launch_start","policy":N}`,
//! `{"cmd":"update_data","gpa":N,"len":N,"data":B64}` (SEV/SEV-ES),
//! `{"cmd":"snp_update","gpa":N,"len":N,"page_type":"normal"|"zero"|"unmeasured"|"secrets"|"cpuid","data":B64}`
//! (`data` only for normal and CPUID pages), `{"cmd":"update_vmsa","vcpu":N,"data":B64}` (one
//! per vCPU, vCPU 0 first), `{"cmd":"measure"}`, `{"cmd":"finish"}`. docs/measurement.md.

use std::io::Write;
use std::path::Path;

use base64::Engine;

use super::backend::SnpPageType;
use super::TeeMode;

/// A file path: a launch writes its launch updates there (PSP model or hardware; on
/// hardware the SNP VMSAs are the modelled ones, KVM measures its own).
pub const DUMP_ENV: &str = "KRUN_SEV_DUMP_UPDATES";

/// Errors writing a dump.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The file cannot be written.
    #[error("cannot write the launch-update dump {0}")]
    Write(String, #[source] std::io::Error),
}

/// One launch command and what it measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// LAUNCH_START / SNP_LAUNCH_START.
    LaunchStart {
        /// Guest policy.
        policy: u64,
    },
    /// LAUNCH_UPDATE_DATA (SEV, SEV-ES).
    Data {
        /// Start.
        gpa: u64,
        /// The bytes measured.
        bytes: Vec<u8>,
    },
    /// SNP_LAUNCH_UPDATE.
    Snp {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
        /// Page type.
        ty: SnpPageType,
        /// The pages' bytes for NORMAL (measured) and CPUID (checked, not measured) pages.
        bytes: Option<Vec<u8>>,
    },
    /// One VMSA (LAUNCH_UPDATE_VMSA, or the VMSAs of SNP_LAUNCH_FINISH), vCPU order.
    Vmsa {
        /// The page.
        bytes: Vec<u8>,
    },
    /// LAUNCH_MEASURE.
    Measure,
    /// LAUNCH_FINISH / SNP_LAUNCH_FINISH.
    Finish,
}

/// The launch updates of one launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDump {
    /// Launch type.
    pub mode: TeeMode,
    /// The commands in the order issued.
    pub updates: Vec<Update>,
}

fn page_type_name(ty: SnpPageType) -> &'static str {
    match ty {
        SnpPageType::Normal => "normal",
        SnpPageType::Zero => "zero",
        SnpPageType::Unmeasured => "unmeasured",
        SnpPageType::Secrets => "secrets",
        SnpPageType::Cpuid => "cpuid",
    }
}

impl LaunchDump {
    /// The JSON lines (module docs), each ending in a newline.
    pub fn to_json_lines(&self) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut lines = vec![serde_json::json!({
            "format": 1,
            "dump": "krun-sev launch updates",
            "tee": self.mode.host_json_name(),
        })];
        let mut vcpu = 0u32;
        for u in &self.updates {
            lines.push(match u {
                Update::LaunchStart { policy } => {
                    serde_json::json!({"cmd": "launch_start", "policy": policy})
                }
                Update::Data { gpa, bytes } => serde_json::json!({
                    "cmd": "update_data", "gpa": gpa, "len": bytes.len(), "data": b64(bytes),
                }),
                Update::Snp {
                    gpa,
                    len,
                    ty,
                    bytes,
                } => {
                    let mut v = serde_json::json!({
                        "cmd": "snp_update", "gpa": gpa, "len": len,
                        "page_type": page_type_name(*ty),
                    });
                    if let Some(b) = bytes {
                        v["data"] = b64(b).into();
                    }
                    v
                }
                Update::Vmsa { bytes } => {
                    let v =
                        serde_json::json!({"cmd": "update_vmsa", "vcpu": vcpu, "data": b64(bytes)});
                    vcpu += 1;
                    v
                }
                Update::Measure => serde_json::json!({"cmd": "measure"}),
                Update::Finish => serde_json::json!({"cmd": "finish"}),
            });
        }
        let mut out = String::new();
        for l in lines {
            out.push_str(&l.to_string());
            out.push('\n');
        }
        out
    }

    /// Writes [`Self::to_json_lines`] to `path`.
    pub fn write(&self, path: &Path) -> Result<(), DumpError> {
        let err = |e| DumpError::Write(path.display().to_string(), e);
        let mut f = std::fs::File::create(path).map_err(err)?;
        f.write_all(self.to_json_lines().as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_commands_and_bytes() {
        let d = LaunchDump {
            mode: TeeMode::Snp,
            updates: vec![
                Update::LaunchStart { policy: 0x30000 },
                Update::Snp {
                    gpa: 0x1000,
                    len: 0x1000,
                    ty: SnpPageType::Normal,
                    bytes: Some(vec![1, 2, 3]),
                },
                Update::Snp {
                    gpa: 0x5000,
                    len: 0x1000,
                    ty: SnpPageType::Secrets,
                    bytes: None,
                },
                Update::Vmsa { bytes: vec![9] },
                Update::Vmsa { bytes: vec![8] },
                Update::Finish,
            ],
        };
        let text = d.to_json_lines();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 7);
        assert_eq!(lines[0]["tee"], "snp");
        assert_eq!(lines[1]["policy"], 0x30000);
        assert_eq!(lines[2]["page_type"], "normal");
        assert_eq!(lines[2]["data"], "AQID");
        assert_eq!(lines[3].get("data"), None);
        assert_eq!(lines[5]["vcpu"], 1);
        assert_eq!(lines[6]["cmd"], "finish");
    }
}
