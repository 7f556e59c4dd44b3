//! `krun-sev measure`: the launch measurement a key broker registers for a bundle and a TEE
//! config (or a TEE, vCPU count, RAM size and vCPU model without a broker), computed by the library's own launch sequence (`krun_sev::launch::
//! expected_measurement`) over the same bytes a launch loads. Output format:
//! docs/measurement.md.

use std::path::PathBuf;
use std::process::ExitCode;

use krun_footer::{Binding, TeeConfig};
use krun_sev::launch::{self, MeasureRequest};
use krun_sev::resources::PortMap;
use krun_sev::tee::measure::Measurement;
use krun_sev::tee::vcpu_model::VcpuModel;
use krun_sev::tee::TeeMode;

/// Arguments of `krun-sev measure`.
#[derive(Debug, clap::Args)]
pub struct MeasureArgs {
    /// The TEE config (a `krun-sev.json`) of the launch: TEE, vCPUs, RAM, vCPU model
    /// (`tee_data.gen`) and the workload/broker binding all come from it.
    #[arg(long, conflicts_with_all = ["tee", "cpus", "ram_mib", "gen"], required_unless_present_all = ["tee", "cpus", "ram_mib"])]
    tee_config: Option<PathBuf>,
    /// Without --tee-config: launch type, sev, sev-es or snp (a TEE config's "sev" launches
    /// as sev-es). Such a launch names no broker, so no broker releases a key to it.
    #[arg(long, value_parser = parse_mode, requires_all = ["cpus", "ram_mib"])]
    tee: Option<TeeMode>,
    /// Without --tee-config: vCPUs.
    #[arg(long, requires = "tee")]
    cpus: Option<u8>,
    /// Without --tee-config: RAM in MiB.
    #[arg(long, requires = "tee")]
    ram_mib: Option<u32>,
    /// Without --tee-config: the vCPU model (milan, genoa, turin; default milan).
    #[arg(long, value_parser = parse_model, requires = "tee")]
    gen: Option<VcpuModel>,
    /// Guest bundle directory (default: $KRUN_SEV_BUNDLE_DIR, else the install location).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// The launch attaches a data disk (one more virtio device on the command line).
    #[arg(long)]
    data_disk: bool,
    /// HOST_PORT:GUEST_PORT, repeatable: the launch's caller sets this explicit port map
    /// (`krun_set_port_map`), which is measured. Without it, the map crun and `krun-sev run`
    /// use (none set: every listening port exposed), which adds nothing to the measurement.
    #[arg(long = "port", value_name = "HOST:GUEST")]
    ports: Vec<String>,
    /// Print JSON instead of the bare hex digest.
    #[arg(long)]
    json: bool,
    /// Also write the launch commands with the bytes they measured to FILE (JSON lines, for
    /// an independent oracle: tests/oracle/measure_oracle.py; docs/measurement.md).
    #[arg(long, value_name = "FILE")]
    dump_updates: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<TeeMode, String> {
    TeeMode::parse(s).ok_or_else(|| "expected sev, sev-es or snp".to_owned())
}

fn parse_model(s: &str) -> Result<VcpuModel, String> {
    VcpuModel::parse(s).map_err(|e| e.to_string())
}

/// Errors of `krun-sev measure`.
#[derive(Debug, thiserror::Error)]
pub enum MeasureCliError {
    /// The TEE config file cannot be read or is invalid.
    #[error("cannot read the TEE config {0}")]
    TeeConfig(String, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// The library could not compute it.
    #[error("cannot compute the measurement")]
    Launch(#[source] launch::LaunchError),
    /// A `--port` entry is malformed or repeated.
    #[error("bad --port")]
    PortMap(#[source] krun_sev::resources::PortMapError),
    /// The launch updates cannot be written.
    #[error("cannot write the launch updates")]
    Dump(#[source] krun_sev::tee::dump::DumpError),
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
        "format": 2,
        "measured_bytes": measured_bytes(m),
        "tee": req.mode.host_json_name(),
        "cpus": req.vcpus,
        "ram_mib": req.ram_mib,
        "vcpu_model": req.vcpu_model.name(),
        "vcpu_sig": format!("{:#010x}", req.vcpu_model.signature()),
        "binding": req.binding.as_ref().map(Binding::to_value),
        "data_disk": req.data_disk,
        "digest": m.digest_hex(),
        "vmsas": m.record.vmsas,
        "regions": regions,
    })
}

/// Every byte the launch passes to the AMD-SP: the memory regions (every page type: SNP
/// reads zero, secrets and CPUID pages too) and one 4 KiB page per VMSA.
pub fn measured_bytes(m: &Measurement) -> u64 {
    const VMSA_BYTES: u64 = 4096;
    let regions: u64 = m.record.regions.iter().map(|r| r.len).sum();
    regions + VMSA_BYTES * u64::from(m.record.vmsas)
}

/// The request `args` describe.
pub fn request(args: &MeasureArgs) -> Result<MeasureRequest, MeasureCliError> {
    let bundle_dir = args
        .bundle
        .clone()
        .unwrap_or_else(launch::guest::bundle_dir);
    if let Some(path) = &args.tee_config {
        let shown = path.display().to_string();
        let cfg = read_tee_config(path).map_err(|e| MeasureCliError::TeeConfig(shown, e))?;
        let mut req = MeasureRequest::from_tee_config(&cfg, bundle_dir, args.data_disk)
            .map_err(MeasureCliError::Launch)?;
        req.port_map = port_map(args)?;
        return Ok(req);
    }
    // clap requires --tee, --cpus and --ram-mib without --tee-config.
    let missing = || {
        MeasureCliError::TeeConfig(
            "(none)".into(),
            "give --tee-config, or --tee, --cpus and --ram-mib".into(),
        )
    };
    Ok(MeasureRequest {
        port_map: port_map(args)?,
        mode: args.tee.ok_or_else(missing)?,
        vcpus: args.cpus.ok_or_else(missing)?,
        ram_mib: args.ram_mib.ok_or_else(missing)?,
        bundle_dir,
        data_disk: args.data_disk,
        vcpu_model: args.gen.unwrap_or_default(),
        binding: None,
    })
}

/// The explicit port map `--port` gives, parsed as `krun_set_port_map` parses it.
fn port_map(args: &MeasureArgs) -> Result<PortMap, MeasureCliError> {
    if args.ports.is_empty() {
        return Ok(PortMap::default());
    }
    PortMap::parse(&args.ports).map_err(MeasureCliError::PortMap)
}

fn read_tee_config(
    path: &std::path::Path,
) -> Result<TeeConfig, Box<dyn std::error::Error + Send + Sync>> {
    let bytes = std::fs::read(path)?;
    Ok(TeeConfig::parse(&bytes)?)
}

/// Runs the command.
pub fn measure(args: &MeasureArgs) -> Result<ExitCode, MeasureCliError> {
    let req = request(args)?;
    let m = match &args.dump_updates {
        Some(path) => {
            let (m, dump) =
                launch::expected_measurement_dump(&req).map_err(MeasureCliError::Launch)?;
            dump.write(path).map_err(MeasureCliError::Dump)?;
            m
        }
        None => launch::expected_measurement(&req).map_err(MeasureCliError::Launch)?,
    };
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
            port_map: Default::default(),
            mode: TeeMode::Snp,
            vcpus: 2,
            ram_mib: 512,
            bundle_dir: PathBuf::from("/b"),
            data_disk: false,
            vcpu_model: VcpuModel::Genoa,
            binding: None,
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
        assert_eq!(v["measured_bytes"], 0x8000 + 2 * 4096);
        assert_eq!(v["vcpu_model"], "genoa");
        assert_eq!(v["vcpu_sig"], "0x00a10f10");
        assert_eq!(v["binding"], serde_json::Value::Null);
        assert_eq!(v["regions"][0]["gpa"], "0x100000");
        assert_eq!(v["regions"][0]["kind"], "zero");
    }

    #[test]
    fn modes_and_signatures_parse() {
        assert_eq!(parse_mode("sev-es").unwrap(), TeeMode::SevEs);
        assert!(parse_mode("tdx").is_err());
        assert_eq!(parse_model("turin").unwrap(), VcpuModel::Turin);
        assert!(parse_model("rome").is_err());
    }

    /// `--port` gives the explicit port map the launch's caller sets, which lands in the
    /// measured host.json; without it nothing about ports is measured.
    #[test]
    fn port_options_become_the_measured_port_map() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            m: MeasureArgs,
        }
        let args = |extra: &[&str]| {
            let mut argv = vec!["measure", "--tee", "snp", "--cpus", "2", "--ram-mib", "512"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().m
        };
        let plain = request(&args(&[])).unwrap();
        assert_eq!(plain.port_map, PortMap::default());
        assert!(!String::from_utf8(plain.host_json())
            .unwrap()
            .contains("port_map"));
        let mapped = request(&args(&["--port", "18082:8081", "--port", "9000:9000"])).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&mapped.host_json()).unwrap();
        assert_eq!(
            json["port_map"],
            serde_json::json!([
                {"host_port": 18082, "guest_port": 8081},
                {"host_port": 9000, "guest_port": 9000}
            ])
        );
        for bad in ["18082", "0:1", "1:70000"] {
            assert!(matches!(
                request(&args(&["--port", bad])),
                Err(MeasureCliError::PortMap(_))
            ));
        }
    }
}
