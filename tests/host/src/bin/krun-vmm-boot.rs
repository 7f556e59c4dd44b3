//! Boots a guest with the library's VMM through its Rust API, without a TEE, wired to this
//! process's stdin/stdout, and exits with the workload's status. Runs inside the test host.
//!
//! usage: krun-vmm-boot --kernel VMLINUX --initrd INITRD --root DISK [--root-ro]
//!        [--data DISK] [--vcpus N] [--ram-mib M] [--host-json FILE] [--port HOST:GUEST]...
//!        [--expose-ports] [--net-fd FD] [--stats] [--debug]
//!
//! `--net-fd` gives the guest a virtio-net device on an inherited, connected unix stream
//! socket speaking passt's framing (the other end of `passt --fd`), and serves the settings on vsock port 1029: DHCP,
//! with [`net::DEFAULT_MAC`].

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use krun_sev::devices::virtio::vsock::{HostServices, PORT_NET_CONFIG};
use krun_sev::launch::{net, segment};
use krun_sev::resources::{NetConfig, NetEndpoint, SharedFd};
use krun_sev::vmm::config::NetDeviceConfig;
use krun_sev::vmm::{ConsoleConfig, DiskConfig, PortMap, PortMapping, VmConfig, Vmm};

/// Exit status when the VM could not run (distinct from any guest status we test for).
const EXIT_VMM_FAILED: u8 = 125;

struct Args {
    kernel: PathBuf,
    initrd: PathBuf,
    root: PathBuf,
    root_ro: bool,
    data: Option<PathBuf>,
    vcpus: u8,
    ram_mib: u32,
    host_json: Option<PathBuf>,
    ports: Vec<PortMapping>,
    expose: bool,
    net_fd: Option<i32>,
    stats: bool,
    debug: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        kernel: PathBuf::new(),
        initrd: PathBuf::new(),
        root: PathBuf::new(),
        root_ro: false,
        data: None,
        vcpus: 1,
        ram_mib: 256,
        host_json: None,
        ports: Vec::new(),
        expose: false,
        net_fd: None,
        stats: false,
        debug: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--kernel" => a.kernel = value()?.into(),
            "--initrd" => a.initrd = value()?.into(),
            "--root" => a.root = value()?.into(),
            "--root-ro" => a.root_ro = true,
            "--data" => a.data = Some(value()?.into()),
            "--vcpus" => a.vcpus = value()?.parse().map_err(|e| format!("--vcpus: {e}"))?,
            "--ram-mib" => a.ram_mib = value()?.parse().map_err(|e| format!("--ram-mib: {e}"))?,
            "--host-json" => a.host_json = Some(value()?.into()),
            "--port" => {
                let v = value()?;
                let (h, g) = v.split_once(':').ok_or("--port wants HOST:GUEST")?;
                a.ports.push(PortMapping {
                    host_port: h.parse().map_err(|e| format!("--port: {e}"))?,
                    guest_port: g.parse().map_err(|e| format!("--port: {e}"))?,
                });
            }
            "--expose-ports" => a.expose = true,
            "--net-fd" => a.net_fd = Some(value()?.parse().map_err(|e| format!("--net-fd: {e}"))?),
            "--stats" => a.stats = true,
            "--debug" => a.debug = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.kernel.as_os_str().is_empty()
        || a.initrd.as_os_str().is_empty()
        || a.root.as_os_str().is_empty()
    {
        return Err("--kernel, --initrd and --root are required".into());
    }
    Ok(a)
}

fn dup(fd: impl AsFd) -> Result<OwnedFd, String> {
    fd.as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate a standard stream: {e}"))
}

fn run() -> Result<u8, String> {
    let a = parse()?;
    // Installs the library's logger (RUST_LOG, when set, wins over the level).
    krun_sev::capi::krun_set_log_level(if a.debug { 4 } else { 2 });
    let host_json = match &a.host_json {
        Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
        // The init's port handling must match the VMM's port map.
        None => {
            let port_map = if a.expose {
                "null".to_owned()
            } else {
                let entries: Vec<String> = a
                    .ports
                    .iter()
                    .map(|p| {
                        format!(
                            r#"{{"host_port":{},"guest_port":{}}}"#,
                            p.host_port, p.guest_port
                        )
                    })
                    .collect();
                format!("[{}]", entries.join(","))
            };
            format!(r#"{{"format":1,"tee":"none","port_map":{port_map}}}"#).into_bytes()
        }
    };
    let seg = segment::build(&host_json).map_err(|e| format!("launch segment: {e}"))?;
    let console = if a.debug {
        "console=ttyS0"
    } else {
        "console=hvc0 quiet"
    };
    let port_map = if a.expose {
        PortMap::Exposed
    } else {
        PortMap::List(a.ports)
    };
    let mut vsock_handlers = HostServices::new();
    let net = match a.net_fd {
        Some(fd) => {
            // SAFETY: --net-fd names a descriptor this process inherited for this purpose and
            // nothing else in the process uses; `connect` checks it is a unix stream socket.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let socket = net::connect(&NetConfig {
                endpoint: NetEndpoint::Fd(SharedFd(Arc::new(owned))),
                mac: net::DEFAULT_MAC,
                features: 0,
                dhcp: true,
            })
            .map_err(|e| krun_sev::capi::error_chain(&e))?;
            let settings = net::GuestNetConfig::dhcp(&net::DEFAULT_MAC);
            vsock_handlers.insert(
                PORT_NET_CONFIG,
                Arc::new(net::NetConfigService::new(&settings)),
            );
            Some(NetDeviceConfig {
                socket,
                mac: net::DEFAULT_MAC,
                features: 0,
            })
        }
        None => None,
    };
    let config = VmConfig {
        vcpus: a.vcpus,
        ram_mib: a.ram_mib,
        kernel_path: a.kernel,
        initrd_path: Some(a.initrd),
        initrd_append: seg,
        cmdline: format!("{console} reboot=t panic=-1 acpi=off"),
        root_disk: DiskConfig {
            path: a.root,
            read_only: a.root_ro,
        },
        data_disk: a.data.map(|path| DiskConfig {
            path,
            read_only: false,
        }),
        attestation_target: None,
        port_map,
        vsock_handlers,
        console: ConsoleConfig {
            input: Some(dup(std::io::stdin())?),
            output: dup(std::io::stdout())?,
            errors: dup(std::io::stderr())?,
        },
        net,
        tee: None,
    };
    let (status, stats) =
        Vmm::run_with_stats(config).map_err(|e| krun_sev::capi::error_chain(&e))?;
    if a.stats {
        eprintln!(
            "krun-vmm-boot: stats: exits={} wall_ms={}",
            stats.exits,
            stats.wall.as_millis()
        );
    }
    Ok(status.0)
}

fn main() -> ExitCode {
    match run() {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("krun-vmm-boot: {e}");
            ExitCode::from(EXIT_VMM_FAILED)
        }
    }
}
