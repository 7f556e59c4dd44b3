//! `krun-sev measure`: the launch measurement a key broker registers for a bundle, vCPU count
//! and RAM size, computed by the library's own launch sequence (`krun_sev::launch::
//! expected_measurement`) over the same bytes a launch loads. Output format:
//! docs/measurement.md.

use std::path::PathBuf;
use std::process::ExitCode;

use krun_sev::launch::{self, MeasureRequest};
use krun_sev::tee::measure::Measurement;
use krun_sev::tee::{Backend, TeeMode};

/// Arguments of `krun-sev measure`.
#[derive(Debug, clap::Args)]
pub struct MeasureArgs {
    /// Launch type: sev, sev-es or snp (a TEE config's "sev" launches as sev-es).
    #[arg(long, value_parser = parse_mode)]
    tee: TeeMode,
    /// vCPUs (the TEE config's "cpus").
    #[arg(long)]
    cpus: u8,
    /// RAM in MiB (the TEE config's "ram_mib").
    #[arg(long)]
    ram_mib: u32,
    /// Guest bundle directory (default: $KRUN_SEV_BUNDLE_DIR, else the install location).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// The launch attaches a data disk (one more virtio device on the command line).
    #[arg(long)]
    data_disk: bool,
    /// CPUID leaf 1 EAX of the host that will run the guest, in hex (default: this host's).
    #[arg(long, value_parser = parse_hex_u32)]
    vcpu_sig: Option<u32>,
    /// Print JSON instead of the bare hex digest.
    #[arg(long)]
    json: bool,
}

fn parse_mode(s: &str) -> Result<TeeMode, String> {
    TeeMode::parse(s).ok_or_else(|| "expected sev, sev-es or snp".to_owned())
}

fn parse_hex_u32(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| e.to_string())
}

/// Errors of `krun-sev measure`.
#[derive(Debug, thiserror::Error)]
pub enum MeasureCliError {
    /// The library could not compute it.
    #[error("cannot compute the measurement")]
    Launch(#[source] launch::LaunchError),
}

/// The JSON document of `--json`.
pub fn to_json(req: &MeasureRequest, m: &Measurement) -> serde_json::Value {
    let regions: Vec<serde_json::Value> = m
        .record
        .regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "what": r.what,
                "gpa": format!("{:#x}", r.gpa),
                "len": r.len,
                "kind": format!("{:?}", r.kind).to_lowercase(),
            })
        })
        .collect();
    serde_json::json!({
        "format": 1,
        "tee": req.mode.host_json_name(),
        "cpus": req.vcpus,
        "ram_mib": req.ram_mib,
        "psp_model": req.psp_model,
        "data_disk": req.data_disk,
        "digest": m.digest_hex(),
        "vmsas": m.record.vmsas,
        "regions": regions,
    })
}

/// Runs the command.
pub fn measure(args: &MeasureArgs) -> Result<ExitCode, MeasureCliError> {
    // The backend changes host.json ("psp_model"), so it is part of what is measured; read
    // it the way the launch does.
    let psp_model = matches!(Backend::from_env(), Ok(Backend::Model));
    let req = MeasureRequest {
        mode: args.tee,
        vcpus: args.cpus,
        ram_mib: args.ram_mib,
        bundle_dir: args
            .bundle
            .clone()
            .unwrap_or_else(launch::guest::bundle_dir),
        data_disk: args.data_disk,
        psp_model,
        vcpu_sig: args.vcpu_sig,
    };
    let m = launch::expected_measurement(&req).map_err(MeasureCliError::Launch)?;
    if args.json {
        println!("{}", to_json(&req, &m));
    } else {
        println!("{}", m.digest_hex());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use krun_sev::tee::measure::LaunchRecord;
    use krun_sev::tee::regions::{MeasuredRegion, PageKind};

    #[test]
    fn json_names_inputs_digest_and_regions() {
        let req = MeasureRequest {
            mode: TeeMode::Snp,
            vcpus: 2,
            ram_mib: 512,
            bundle_dir: PathBuf::from("/b"),
            data_disk: false,
            psp_model: true,
            vcpu_sig: None,
        };
        let m = Measurement {
            mode: TeeMode::Snp,
            digest: vec![0xab; 48],
            record: LaunchRecord {
                regions: vec![MeasuredRegion {
                    what: "page_tables",
                    gpa: 0x100000,
                    len: 0x8000,
                    kind: PageKind::Zero,
                }],
                vmsas: 2,
            },
        };
        let v = to_json(&req, &m);
        assert_eq!(v["tee"], "snp");
        assert_eq!(v["digest"], "ab".repeat(48));
        assert_eq!(v["vmsas"], 2);
        assert_eq!(v["psp_model"], true);
        assert_eq!(v["regions"][0]["gpa"], "0x100000");
        assert_eq!(v["regions"][0]["kind"], "zero");
    }

    #[test]
    fn modes_and_signatures_parse() {
        assert_eq!(parse_mode("sev-es").unwrap(), TeeMode::SevEs);
        assert!(parse_mode("tdx").is_err());
        assert_eq!(parse_hex_u32("0x800f12").unwrap(), 0x800f12);
    }
}
