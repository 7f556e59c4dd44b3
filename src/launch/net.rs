//! The network of a launch: the virtio-net device's socket, the settings the guest reads on
//! vsock port 1029, and the passt the library starts itself when the caller configured no
//! network.
//!
//! None of this is measured (docs/measurement.md): the network slot is on the command line
//! either way, and the settings reach the guest over vsock after boot. The host is untrusted
//! in a confidential launch; it already sees and can change every frame, so stating the
//! addresses gives it no further power (docs/threat-model.md).

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::devices::virtio::net::{format_mac, DEVICE_MTU};
use crate::devices::virtio::vsock::{GuestPortHandler, HostStream};
use crate::resources::{NetConfig, NetEndpoint, VmResources};
use crate::settings::PasstChoice;
use crate::vmm::config::{NetDeviceConfig, PortMap, PortMapping};

/// Longest settings object the guest accepts (net contract §2).
pub const MAX_CONFIG_LEN: usize = 4096;
/// Most nameservers stated.
pub const MAX_NAMESERVERS: usize = 3;
/// The MAC of the guest when the library starts passt itself (crun's choice too).
pub const DEFAULT_MAC: [u8; 6] = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];

/// Errors setting up an explicitly configured network.
#[derive(Debug, thiserror::Error)]
pub enum NetSetupError {
    /// Connecting to the socket path failed.
    #[error("cannot connect to the network socket {path}")]
    Connect {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The caller's fd cannot be used.
    #[error("the network fd is not a connected unix stream socket")]
    Fd(#[source] std::io::Error),
}

/// The IPv4 settings the host states when the guest does not use DHCP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ipv4Settings {
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway.
    pub gateway: Ipv4Addr,
}

/// The object the guest reads on vsock port 1029 (net contract §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestNetConfig {
    /// Whether the guest asks DHCP.
    pub dhcp: bool,
    /// The interface's MAC (informational; the device's config space has it too).
    pub mac: String,
    /// The interface MTU.
    pub mtu: u16,
    /// Address, prefix and gateway (only without DHCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Settings>,
    /// Nameservers (only without DHCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<Ipv4Addr>>,
}

impl GuestNetConfig {
    /// DHCP.
    pub fn dhcp(mac: &[u8; 6]) -> Self {
        GuestNetConfig {
            dhcp: true,
            mac: format_mac(mac),
            mtu: DEVICE_MTU,
            ipv4: None,
            dns: None,
        }
    }

    /// The settings for `want_dhcp`: with DHCP as asked, otherwise the addresses passt copies
    /// from the host (`host` is what [`HostNetwork::read`] found). Without a usable host
    /// address the guest is told to use DHCP after all, and the reason is logged.
    pub fn for_launch(mac: &[u8; 6], want_dhcp: bool, host: Result<HostNetwork, String>) -> Self {
        if want_dhcp {
            return Self::dhcp(mac);
        }
        match host {
            Ok(h) => GuestNetConfig {
                dhcp: false,
                mac: format_mac(mac),
                mtu: DEVICE_MTU,
                ipv4: Some(h.ipv4),
                dns: Some(h.dns),
            },
            Err(why) => {
                log::warn!(
                    "network: cannot state the guest's address ({why}); the guest uses DHCP instead"
                );
                Self::dhcp(mac)
            }
        }
    }

    /// The JSON bytes sent to the guest.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and addresses cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"dhcp\":true}".to_vec())
    }
}

/// What passt copies from the host namespace: the address of the interface with the default
/// route, that route's gateway, and the nameservers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    /// Address, prefix, gateway.
    pub ipv4: Ipv4Settings,
    /// Nameservers (at most [`MAX_NAMESERVERS`]).
    pub dns: Vec<Ipv4Addr>,
}

impl HostNetwork {
    /// Reads the calling process's network namespace.
    pub fn read() -> Result<HostNetwork, String> {
        let routes = std::fs::read_to_string("/proc/net/route")
            .map_err(|e| format!("cannot read /proc/net/route: {e}"))?;
        let (iface, gateway) = default_route(&routes)
            .ok_or_else(|| "no IPv4 default route in /proc/net/route".to_owned())?;
        let (address, prefix_len) = interface_ipv4(&iface)
            .ok_or_else(|| format!("interface {iface} has no IPv4 address"))?;
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Ok(HostNetwork {
            ipv4: Ipv4Settings {
                address,
                prefix_len,
                gateway,
            },
            dns: nameservers(&resolv, gateway),
        })
    }
}

/// The interface and gateway of the default route with the lowest metric in
/// `/proc/net/route` text.
pub fn default_route(text: &str) -> Option<(String, Ipv4Addr)> {
    const RTF_UP: u32 = 1;
    const RTF_GATEWAY: u32 = 2;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, gw, flags, metric, mask) = (
                *f.first()?,
                hex(f.get(1)?)?,
                hex(f.get(2)?)?,
                hex(f.get(3)?)?,
                f.get(6)?.parse::<u32>().ok()?,
                hex(f.get(7)?)?,
            );
            // The kernel prints the network-order address as a host-order (little-endian)
            // integer.
            let gateway = Ipv4Addr::from(gw.to_le_bytes());
            (dest == 0
                && mask == 0
                && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY
                && !gateway.is_unspecified())
            .then(|| (metric, iface.to_owned(), gateway))
        })
        .min_by_key(|(metric, _, _)| *metric)
        .map(|(_, iface, gw)| (iface, gw))
}

/// Nameservers of `resolv.conf` text, IPv4 only, at most [`MAX_NAMESERVERS`]. A loopback
/// resolver (systemd-resolved's 127.0.0.53) cannot be reached from the guest: passt forwards
/// DNS sent to the gateway to the host's resolver, so the gateway stands in for it.
pub fn nameservers(text: &str, gateway: Ipv4Addr) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        let addr = if addr.is_loopback() { gateway } else { addr };
        if !out.contains(&addr) && out.len() < MAX_NAMESERVERS {
            out.push(addr);
        }
    }
    out
}

/// The first IPv4 address and prefix length of interface `name`.
fn interface_ipv4(name: &str) -> Option<(Ipv4Addr, u8)> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: `ifa_addr` points to a sockaddr of at least `sa_family`'s size.
        let family = unsafe { (*ifa.ifa_addr).sa_family };
        if ifname.to_bytes() != name.as_bytes() || i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: for AF_INET both point to sockaddr_in structures.
        let (addr, mask) = unsafe {
            (
                *(ifa.ifa_addr as *const libc::sockaddr_in),
                *(ifa.ifa_netmask as *const libc::sockaddr_in),
            )
        };
        let address = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        let prefix = u32::from_be(mask.sin_addr.s_addr).count_ones();
        found = Some((address, u8::try_from(prefix).unwrap_or(32)));
        break;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// Serves vsock port 1029: writes the settings object and closes.
#[derive(Debug, Clone)]
pub struct NetConfigService {
    json: Arc<[u8]>,
}

impl NetConfigService {
    /// Serves `config`.
    pub fn new(config: &GuestNetConfig) -> Self {
        let mut json = config.to_json();
        json.truncate(MAX_CONFIG_LEN);
        NetConfigService { json: json.into() }
    }
}

impl GuestPortHandler for NetConfigService {
    fn connect(&self, _guest_port: u32) -> std::io::Result<HostStream> {
        let (ours, mut theirs) = UnixStream::pair()?;
        // At most 4 KiB: fits the socket buffer, so this never blocks the vsock worker.
        theirs.write_all(&self.json)?;
        drop(theirs);
        Ok(HostStream::Unix(ours))
    }
}

/// The network of one launch: the device's socket, the settings service, and the passt the
/// library started (if it did).
#[derive(Debug)]
pub struct LaunchNetwork {
    /// The virtio-net device's host side.
    pub device: NetDeviceConfig,
    /// Serves vsock port 1029.
    pub service: NetConfigService,
    /// The passt child started for this launch; it exits when its socket closes (`--fd`
    /// implies `--one-off`) and gets SIGTERM when the launching thread exits.
    pub passt: Option<std::process::Child>,
}

/// Sets up the network of a launch: the caller's (`krun_add_net_unixstream`), else passt
/// started by the library ([`default_network`]). `None` when the VM has no network (logged
/// once, with the reason). `port_map` is the VMM's vsock port map; the default network may
/// take its entries over.
pub fn prepare(
    r: &VmResources,
    port_map: &mut PortMap,
) -> Result<Option<LaunchNetwork>, NetSetupError> {
    let Some(net) = &r.net else {
        let passt = &crate::settings::host().passt;
        return Ok(default_network(&passt.value, port_map));
    };
    let socket = connect(net)?;
    let host = if net.dhcp {
        Err(String::new())
    } else {
        HostNetwork::read()
    };
    let config = GuestNetConfig::for_launch(&net.mac, net.dhcp, host);
    log::info!(
        "network: virtio-net with MAC {}, guest settings {}",
        format_mac(&net.mac),
        String::from_utf8_lossy(&config.to_json())
    );
    Ok(Some(LaunchNetwork {
        device: NetDeviceConfig {
            socket,
            mac: net.mac,
            features: u64::from(net.features),
        },
        service: NetConfigService::new(&config),
        passt: None,
    }))
}

/// The network of a VM whose caller configured none: passt (`passt`, from the host
/// settings) started in the caller's network namespace on one end of a socketpair, the guest
/// using DHCP. An explicit port map's entries become passt's TCP forwards (`-t HOST:GUEST`)
/// and are removed from `port_map`: passt binds those host ports, so the VMM's vsock
/// forwarder cannot, and connections then reach the guest's network interface rather than
/// its loopback. The exposed-ports map (NULL port map) stays on vsock. Without passt, `None`
/// and one log line saying why.
pub fn default_network(passt: &PasstChoice, port_map: &mut PortMap) -> Option<LaunchNetwork> {
    let bin = match passt {
        PasstChoice::Path(p) => p,
        PasstChoice::Off => {
            log::warn!(
                "network: the workload has no network: none was configured and the default network is off (passt = none)"
            );
            return None;
        }
        PasstChoice::NotFound => {
            log::warn!(
                "network: the workload has no network: none was configured and passt was not found on PATH (install passt or set KRUN_SEV_PASST)"
            );
            return None;
        }
    };
    let forwards = match port_map {
        PortMap::List(list) => std::mem::take(list),
        PortMap::Exposed => Vec::new(),
    };
    match start_passt(bin, &forwards) {
        Ok((socket, child)) => {
            let config = GuestNetConfig::dhcp(&DEFAULT_MAC);
            log::info!(
                "network: started {} (pid {}) for the workload, guest uses DHCP{}",
                bin.display(),
                child.id(),
                if forwards.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", TCP ports forwarded by passt: {}",
                        passt_tcp_spec(&forwards)
                    )
                }
            );
            Some(LaunchNetwork {
                device: NetDeviceConfig {
                    socket,
                    mac: DEFAULT_MAC,
                    features: 0,
                },
                service: NetConfigService::new(&config),
                passt: Some(child),
            })
        }
        Err(e) => {
            log::warn!(
                "network: the workload has no network: cannot start {}: {e}",
                bin.display()
            );
            // The port map goes back to the vsock forwarder.
            if let PortMap::List(list) = port_map {
                *list = forwards;
            }
            None
        }
    }
}

/// passt's `-t` argument for `forwards`: `HOST:GUEST` entries, comma-separated.
pub fn passt_tcp_spec(forwards: &[PortMapping]) -> String {
    forwards
        .iter()
        .map(|f| format!("{}:{}", f.host_port, f.guest_port))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `passt --fd N --foreground --quiet [-t SPEC]` on one end of a new socketpair and
/// returns the other end. passt runs in the caller's namespaces; `--fd` implies `--one-off`,
/// so it exits once the VMM's end closes (the VMM exits or the device goes away), and the
/// child also gets SIGTERM if the thread that started it exits (PR_SET_PDEATHSIG).
pub fn start_passt(
    bin: &Path,
    forwards: &[PortMapping],
) -> std::io::Result<(UnixStream, std::process::Child)> {
    use std::os::unix::process::CommandExt;
    let (ours, theirs) = UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("--fd")
        .arg(fd.to_string())
        .arg("--foreground")
        .arg("--quiet");
    if !forwards.is_empty() {
        cmd.arg("-t").arg(passt_tcp_spec(forwards));
    }
    // passt writes a few lines even with --quiet (it changes to nobody when run as root, it
    // cannot reach syslog in a container); they would land on the workload's console. They
    // are shown at debug level. If passt stops, the device logs that its peer is gone.
    let stderr = if log::log_enabled!(log::Level::Debug) {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    };
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (fcntl, prctl) on values copied into it.
    unsafe {
        cmd.pre_exec(move || {
            // The child's end must survive exec (Rust opens sockets close-on-exec).
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok((ours, child))
}

/// Opens the socket of an explicitly configured network.
pub fn connect(net: &NetConfig) -> Result<UnixStream, NetSetupError> {
    match &net.endpoint {
        NetEndpoint::Path(p) => UnixStream::connect(p).map_err(|source| NetSetupError::Connect {
            path: p.display().to_string(),
            source,
        }),
        NetEndpoint::Fd(fd) => {
            let owned: OwnedFd = fd.0.try_clone().map_err(NetSetupError::Fd)?;
            check_stream_socket(&owned).map_err(NetSetupError::Fd)?;
            Ok(UnixStream::from(owned))
        }
    }
}

fn check_stream_socket(fd: &OwnedFd) -> std::io::Result<()> {
    let mut ty: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `ty` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if ty != libc::SOCK_STREAM {
        return Err(std::io::Error::from_raw_os_error(libc::ESOCKTNOSUPPORT));
    }
    Ok(())
}

/// The first executable `passt` in the directories of `path_env` (a `PATH` value).
pub fn find_passt(path_env: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_env?)
        .map(|dir| dir.join("passt"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const MAC: [u8; 6] = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];

    #[test]
    fn dhcp_json() {
        let c = GuestNetConfig::for_launch(&MAC, true, Err("unused".into()));
        assert_eq!(
            String::from_utf8(c.to_json()).unwrap(),
            r#"{"dhcp":true,"mac":"5a:94:ef:e4:0c:ee","mtu":65520}"#
        );
    }

    #[test]
    fn static_json_and_fallback() {
        let host = HostNetwork {
            ipv4: Ipv4Settings {
                address: Ipv4Addr::new(192, 168, 1, 20),
                prefix_len: 24,
                gateway: Ipv4Addr::new(192, 168, 1, 1),
            },
            dns: vec![Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(9, 9, 9, 9)],
        };
        let c = GuestNetConfig::for_launch(&MAC, false, Ok(host));
        let v: serde_json::Value = serde_json::from_slice(&c.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "dhcp": false, "mac": "5a:94:ef:e4:0c:ee", "mtu": 65520,
                "ipv4": {"address": "192.168.1.20", "prefix_len": 24, "gateway": "192.168.1.1"},
                "dns": ["192.168.1.1", "9.9.9.9"]
            })
        );
        // Nothing found: DHCP after all.
        let c = GuestNetConfig::for_launch(&MAC, false, Err("no default route".into()));
        assert_eq!(c, GuestNetConfig::dhcp(&MAC));
    }

    #[test]
    fn route_table_parsing() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            default_route(text),
            Some(("eth0".into(), Ipv4Addr::new(192, 168, 1, 1)))
        );
        // A down route, a non-default route or none at all.
        assert_eq!(
            default_route("h\neth0\t00000000\t0101A8C0\t0002\t0\t0\t0\t00000000\n"),
            None
        );
        assert_eq!(default_route("h\n"), None);
        assert_eq!(default_route("h\ngarbage line\n"), None);
    }

    #[test]
    fn resolv_conf_parsing() {
        let gw = Ipv4Addr::new(10, 0, 2, 2);
        let text = "# c\nsearch x\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 1.1.1.1\n\
            nameserver 10.0.2.2\nnameserver 8.8.8.8\nnameserver 9.9.9.9\nnameserver bogus\n";
        assert_eq!(
            nameservers(text, gw),
            vec![gw, Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)]
        );
        assert!(nameservers("", gw).is_empty());
    }

    #[test]
    fn loopback_interface_address() {
        assert_eq!(interface_ipv4("lo"), Some((Ipv4Addr::LOCALHOST, 8)));
        assert_eq!(interface_ipv4("no-such-interface"), None);
    }

    #[test]
    fn service_writes_the_object_and_closes() {
        let svc = NetConfigService::new(&GuestNetConfig::dhcp(&MAC));
        let HostStream::Unix(mut s) = svc.connect(5000).unwrap() else {
            panic!("not a unix stream");
        };
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(
            got,
            r#"{"dhcp":true,"mac":"5a:94:ef:e4:0c:ee","mtu":65520}"#
        );
    }

    #[test]
    fn connect_checks_the_endpoint() {
        use crate::resources::SharedFd;
        let (a, _b) = UnixStream::pair().unwrap();
        let net = |endpoint| NetConfig {
            endpoint,
            mac: MAC,
            features: 0,
            dhcp: true,
        };
        assert!(connect(&net(NetEndpoint::Fd(SharedFd(Arc::new(a.into()))))).is_ok());
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            connect(&net(NetEndpoint::Fd(SharedFd(Arc::new(file.into()))))),
            Err(NetSetupError::Fd(_))
        ));
        let (d, _d2) = UnixStream::pair().unwrap();
        drop(d);
        assert!(matches!(
            connect(&net(NetEndpoint::Path("/nonexistent/sock".into()))),
            Err(NetSetupError::Connect { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        assert!(connect(&net(NetEndpoint::Path(p))).is_ok());
    }

    /// An ARP request for `target` from `DEFAULT_MAC`/`sender`.
    fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&DEFAULT_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&DEFAULT_MAC);
        f.extend_from_slice(&sender.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f
    }

    /// The real passt (Debian's package, ci/packages.txt) started the way the default network
    /// starts it: it answers an ARP request over our framed socket, and it exits once our end
    /// of the socket closes, so it never outlives the VMM.
    #[test]
    fn real_passt_answers_and_exits_with_its_socket() {
        use crate::devices::virtio::net::backend::{Flush, StreamBackend};
        use std::time::{Duration, Instant};
        let bin = find_passt(std::env::var_os("PATH").as_deref())
            .or_else(|| find_passt(Some(std::ffi::OsStr::new("/usr/bin:/usr/sbin"))))
            .expect("passt is not installed (ci/packages.txt lists it)");
        let (sock, mut child) = start_passt(&bin, &[]).unwrap();
        let mut b = StreamBackend::new(sock).unwrap();
        let req = arp_request(Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2));
        b.push_frame(req.len(), |buf| {
            buf.copy_from_slice(&req);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(b.flush(), Flush::Done);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut reply = None;
        while reply.is_none() && Instant::now() < deadline {
            let _ = b.fill();
            while let Some(r) = b.next_frame() {
                let f = b.rx_bytes(r.clone()).to_vec();
                b.consume(&r);
                // An ARP reply (EtherType 0x0806, operation 2) to our MAC.
                if f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2] {
                    reply = Some(f);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let reply = reply.expect("no ARP reply from passt");
        assert_eq!(&reply[..6], &DEFAULT_MAC);
        assert_eq!(&reply[32..38], &DEFAULT_MAC);
        drop(b);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.is_some(),
            "passt did not exit after its socket closed"
        );
    }

    #[test]
    fn default_network_without_passt_keeps_the_port_map() {
        let list = vec![PortMapping {
            host_port: 8080,
            guest_port: 80,
        }];
        for choice in [
            PasstChoice::Off,
            PasstChoice::NotFound,
            PasstChoice::Path("/nonexistent/passt".into()),
        ] {
            let mut pm = PortMap::List(list.clone());
            assert!(default_network(&choice, &mut pm).is_none(), "{choice:?}");
            assert_eq!(pm, PortMap::List(list.clone()));
        }
    }

    /// A stand-in passt that records its arguments and checks it got the socket: the port map
    /// moves to `-t`, the device and the DHCP settings are set up.
    #[test]
    fn default_network_hands_the_port_map_to_passt() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("args");
        let bin = dir.path().join("passt");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\nfd=$2\n[ -S /proc/self/fd/$fd ] && echo socket >{0}.fd\necho \"$@\" >{0}.tmp\nmv {0}.tmp {0}\n",
                out.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut pm = PortMap::List(vec![
            PortMapping {
                host_port: 8080,
                guest_port: 80,
            },
            PortMapping {
                host_port: 2222,
                guest_port: 22,
            },
        ]);
        let net = default_network(&PasstChoice::Path(bin), &mut pm).unwrap();
        let mut child = net.passt.unwrap();
        child.wait().unwrap();
        assert_eq!(pm, PortMap::List(vec![]));
        let args = std::fs::read_to_string(&out).unwrap();
        let fd = args.split_whitespace().nth(1).unwrap().to_owned();
        assert_eq!(
            args.trim(),
            format!("--fd {fd} --foreground --quiet -t 8080:80,2222:22")
        );
        assert_eq!(
            std::fs::read_to_string(format!("{}.fd", out.display())).unwrap(),
            "socket\n"
        );
        assert_eq!(net.device.mac, DEFAULT_MAC);
        assert_eq!(
            net.service.json.as_ref(),
            GuestNetConfig::dhcp(&DEFAULT_MAC).to_json().as_slice()
        );
        // The exposed-ports map stays with the vsock forwarder; passt gets no -t.
        let mut exposed = PortMap::Exposed;
        let bin = dir.path().join("passt");
        let net = default_network(&PasstChoice::Path(bin), &mut exposed).unwrap();
        net.passt.unwrap().wait().unwrap();
        assert_eq!(exposed, PortMap::Exposed);
        let args = std::fs::read_to_string(&out).unwrap();
        assert!(!args.contains("-t"), "{args}");
    }

    #[test]
    fn passt_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("passt");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        assert_eq!(find_passt(Some(dir.path().as_os_str())), None);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_passt(Some(dir.path().as_os_str())), Some(bin.clone()));
        assert_eq!(find_passt(None), None);
    }
}
