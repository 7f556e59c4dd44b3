//! Boots a guest with the library's VMM through its Rust API, without a TEE, wired to this
//! process's stdin/stdout, and exits with the workload's status. Runs inside the test host.
//!
//! usage: krun-vmm-boot --kernel VMLINUX --initrd INITRD --root DISK [--root-ro]
//!        [--data DISK] [--vcpus N] [--ram-mib M] [--host-json FILE] [--port HOST:GUEST]...
//!        [--expose-ports] [--net-sink | --net-fd FD] [--seccomp] [--stats] [--debug]
//!        [--log-level N]
//!
//! `--seccomp` turns on the VMM's per-thread seccomp filters, as a confidential launch does
//! (docs/hardening.md); they are off otherwise, as for every in-process user of the Rust API.
//!
//! `--log-level` is the C API's level (3 = info shows the boot-phase lines and the init's
//! progress lines that `krun-boot-bench` stamps); the default is 2 (warnings), 4 with
//! `--debug`.
//!
//! `--net-sink` gives the guest a virtio-net device whose peer (a unix socket pair, passt's
//! stream framing) sends it a few frames, reads everything the guest sends and prints
//! `krun-vmm-boot: net peer read N bytes` at the end. `--net-fd` gives it one on an
//! inherited, connected unix stream socket in that framing (the other end of `passt --fd`)
//! and serves the settings on vsock port 1029: DHCP, with [`net::DEFAULT_MAC`].

use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
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
    net_sink: bool,
    net_fd: Option<i32>,
    seccomp: bool,
    stats: bool,
    debug: bool,
    log_level: Option<u32>,
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
        net_sink: false,
        net_fd: None,
        seccomp: false,
        stats: false,
        debug: false,
        log_level: None,
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
            "--net-sink" => a.net_sink = true,
            "--seccomp" => a.seccomp = true,
            "--net-fd" => a.net_fd = Some(value()?.parse().map_err(|e| format!("--net-fd: {e}"))?),
            "--stats" => a.stats = true,
            "--debug" => a.debug = true,
            "--log-level" => {
                a.log_level = Some(value()?.parse().map_err(|e| format!("--log-level: {e}"))?)
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.kernel.as_os_str().is_empty()
        || a.initrd.as_os_str().is_empty()
        || a.root.as_os_str().is_empty()
    {
        return Err("--kernel, --initrd and --root are required".into());
    }
    if a.net_sink && a.net_fd.is_some() {
        return Err("--net-sink and --net-fd exclude each other".into());
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
    let level = a.log_level.unwrap_or(if a.debug { 4 } else { 2 });
    if krun_sev::capi::krun_set_log_level(level) != 0 {
        return Err(format!("--log-level {level}: not a log level"));
    }
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
        vsock_handlers: Default::default(),
        console: ConsoleConfig {
            input: Some(dup(std::io::stdin())?),
            output: dup(std::io::stdout())?,
            errors: dup(std::io::stderr())?,
        },
        net: None,
        tee: None,
        // The library's launch path turns the filters on; here --seccomp does.
        seccomp: a.seccomp,
    };
    let mut config = config;
    if let Some(fd) = a.net_fd {
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
        let mut services = HostServices::new();
        services.insert(
            PORT_NET_CONFIG,
            Arc::new(net::NetConfigService::new(&net::GuestNetConfig::dhcp(
                &net::DEFAULT_MAC,
            ))),
        );
        config.vsock_handlers = services;
        config.net = Some(NetDeviceConfig {
            socket,
            mac: net::DEFAULT_MAC,
            features: 0,
        });
    }
    let sink = if a.net_sink {
        let (vmm_end, peer) = UnixStream::pair().map_err(|e| format!("net socket pair: {e}"))?;
        config.net = Some(NetDeviceConfig {
            socket: vmm_end,
            mac: [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee],
            features: 0,
        });
        Some(std::thread::spawn(move || net_peer(peer)))
    } else {
        None
    };
    let (status, stats) =
        Vmm::run_with_stats(config).map_err(|e| krun_sev::capi::error_chain(&e))?;
    if let Some(sink) = sink {
        // The VMM's end closed with the VM: the peer has read everything.
        let read = sink.join().map_err(|_| "net peer panicked".to_owned())?;
        eprintln!("krun-vmm-boot: net peer read {read} bytes");
    }
    if a.stats {
        eprintln!(
            "krun-vmm-boot: stats: exits={} wall_ms={}",
            stats.exits,
            stats.wall.as_millis()
        );
    }
    Ok(status.0)
}

/// The network peer: sends the guest a few frames (4-byte big-endian length, then an
/// Ethernet broadcast frame), then reads until the VMM closes its end; returns the bytes read.
fn net_peer(mut peer: UnixStream) -> u64 {
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x52; 6]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.resize(64, 0x42);
    for _ in 0..32 {
        let len = u32::try_from(frame.len()).unwrap_or(0);
        if peer.write_all(&len.to_be_bytes()).is_err() || peer.write_all(&frame).is_err() {
            break;
        }
    }
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return total,
        }
    }
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
