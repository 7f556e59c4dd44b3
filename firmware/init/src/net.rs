//! Network interfaces: `lo` up (the workload and port forwarding use 127.0.0.1) and, when
//! the VM has a virtio-net device, `eth0` configured from the host's settings on vsock port
//! 1029 (docs/interfaces.md, "Network"): DHCP from passt or the stated addresses, MTU,
//! default route and the container's `/etc/resolv.conf`.

mod config;
mod dhcp;
mod iface;
mod packet;

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use crate::vsock;

/// The only network interface the init configures (the virtio-net device).
pub const INTERFACE: &str = "eth0";
/// How long the host may take to send its settings.
const CONFIG_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Configuring `lo` failed.
    #[error("cannot configure interface lo")]
    Loopback(#[source] io::Error),
    /// `eth0` exists but the host does not serve network settings.
    #[error("eth0 exists but the host sent no network settings (vsock port {port})")]
    NoSettings {
        /// The vsock port.
        port: u32,
        /// Why the connection failed.
        #[source]
        source: io::Error,
    },
    /// The host's settings are unusable.
    #[error("refusing the host's network settings")]
    Settings(#[source] config::ConfigError),
    /// An ioctl on eth0 failed.
    #[error("cannot {what} on eth0")]
    Interface {
        /// The step.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// DHCP failed.
    #[error("DHCP on eth0 failed")]
    Dhcp(#[source] dhcp::DhcpError),
    /// Writing the container's resolv.conf failed.
    #[error("cannot write /etc/resolv.conf")]
    ResolvConf(#[source] io::Error),
}

/// Sets IFF_UP on `lo`.
pub fn loopback_up() -> Result<(), NetError> {
    iface::set_up("lo").map_err(NetError::Loopback)
}

/// What was configured, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Nameservers written to resolv.conf.
    pub dns: Vec<IpAddr>,
    /// Whether DHCP gave the addresses.
    pub dhcp: bool,
    /// The MTU.
    pub mtu: u32,
}

impl std::fmt::Display for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{INTERFACE} {}/{}", self.address, self.prefix_len)?;
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        write!(f, " mtu {}", self.mtu)?;
        if !self.dns.is_empty() {
            let dns: Vec<String> = self.dns.iter().map(ToString::to_string).collect();
            write!(f, ", dns {}", dns.join(" "))?;
        }
        write!(f, " ({})", if self.dhcp { "DHCP" } else { "host-stated" })
    }
}

/// Configures `eth0` if it exists; `Ok(None)` when the VM has no network device. `root` is
/// the container root (for `etc/resolv.conf`).
pub fn configure(root: &Path) -> Result<Option<Configured>, NetError> {
    if !iface::exists(INTERFACE) {
        return Ok(None);
    }
    let port = vsock::NET_CONFIG_PORT;
    let stream = vsock::VsockStream::connect(vsock::HOST_CID, port)
        .and_then(|s| s.set_read_timeout(CONFIG_READ_TIMEOUT).map(|()| s))
        .map_err(|source| NetError::NoSettings { port, source })?;
    let settings = config::read(stream).map_err(NetError::Settings)?;
    apply(&settings, root).map(Some)
}

fn step<T>(what: &'static str, r: io::Result<T>) -> Result<T, NetError> {
    r.map_err(|source| NetError::Interface { what, source })
}

fn apply(settings: &config::NetConfig, root: &Path) -> Result<Configured, NetError> {
    // A device that cannot take the host's MTU keeps its own: degraded, not failed.
    let mtu = match iface::set_mtu(INTERFACE, settings.mtu) {
        Ok(()) => settings.mtu,
        Err(_) => step("read the MTU", iface::mtu(INTERFACE))?,
    };
    step("bring the link up", iface::set_up(INTERFACE))?;
    let mac = step("read the MAC address", iface::hardware_address(INTERFACE))?;
    if mac != settings.mac {
        crate::log_warn!(
            "network: eth0's MAC differs from the host's settings; DHCP uses eth0's own"
        );
    }
    let configured = match &settings.mode {
        config::Mode::Dhcp => {
            let ifindex = step("find the interface index", iface::index(INTERFACE))?;
            let mut transport = step(
                "open a packet socket",
                packet::PacketTransport::open(ifindex),
            )?;
            let lease =
                dhcp::obtain_lease(&mut transport, mac, &dhcp::ATTEMPT_TIMEOUTS, random_xid)
                    .map_err(NetError::Dhcp)?;
            Configured {
                address: lease.address,
                prefix_len: lease.prefix_len,
                gateway: lease.router,
                dns: lease.dns.into_iter().map(IpAddr::V4).collect(),
                dhcp: true,
                mtu,
            }
        }
        config::Mode::Static(s) => Configured {
            address: s.address,
            prefix_len: s.prefix_len,
            gateway: s.gateway,
            dns: s.dns.clone(),
            dhcp: false,
            mtu,
        },
    };
    step(
        "set the address",
        iface::set_ipv4(INTERFACE, configured.address, configured.prefix_len),
    )?;
    if let Some(gateway) = configured.gateway {
        step(
            "add the default route",
            iface::add_default_route(
                INTERFACE,
                configured.address,
                configured.prefix_len,
                gateway,
            ),
        )?;
    }
    if !configured.dns.is_empty() {
        write_resolv_conf(root, &configured.dns).map_err(NetError::ResolvConf)?;
    }
    Ok(configured)
}

/// The text of resolv.conf for `servers` (addresses only: nothing the host sends is
/// copied as text).
pub fn resolv_conf(servers: &[IpAddr]) -> String {
    let mut text = String::from("# Written by krun-init from the VM's network settings.\n");
    for s in servers {
        text.push_str(&format!("nameserver {s}\n"));
    }
    text
}

/// Replaces `root/etc/resolv.conf` (a symlink there is replaced, not followed).
fn write_resolv_conf(root: &Path, servers: &[IpAddr]) -> io::Result<()> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    let tmp = etc.join(".resolv.conf.krun-init");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    f.write_all(resolv_conf(servers).as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, etc.join("resolv.conf"))
}

/// A DHCP transaction id: random, or clock-derived if the kernel has no randomness yet.
fn random_xid() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: the kernel writes at most 4 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == 4 {
        return u32::from_ne_bytes(b);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.subsec_nanos() ^ u32::try_from(now.as_secs() & 0xffff_ffff).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_written_in_place_of_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("etc/resolv.conf")).unwrap();
        let servers: Vec<IpAddr> = vec!["10.0.2.3".parse().unwrap(), "fd00::3".parse().unwrap()];
        write_resolv_conf(dir.path(), &servers).unwrap();
        let text = std::fs::read_to_string(dir.path().join("etc/resolv.conf")).unwrap();
        assert!(
            text.ends_with("nameserver 10.0.2.3\nnameserver fd00::3\n"),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert!(!dir.path().join("etc/.resolv.conf.krun-init").exists());
        // A root without /etc gets one.
        let bare = tempfile::tempdir().unwrap();
        write_resolv_conf(bare.path(), &servers[..1]).unwrap();
        assert!(bare.path().join("etc/resolv.conf").is_file());
    }

    #[test]
    fn summary_line() {
        let c = Configured {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns: vec!["10.0.2.3".parse().unwrap()],
            dhcp: true,
            mtu: 65520,
        };
        assert_eq!(
            c.to_string(),
            "eth0 10.0.2.15/24 via 10.0.2.2 mtu 65520, dns 10.0.2.3 (DHCP)"
        );
    }

    #[test]
    fn xids_vary() {
        assert_ne!(random_xid(), random_xid());
    }
}
