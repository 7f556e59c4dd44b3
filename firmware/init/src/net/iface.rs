//! Interface configuration with the classic ioctls: flags, MTU, hardware address, IPv4
//! address and netmask (SIOCSIFADDR/SIOCSIFNETMASK), routes (SIOCADDRT).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys;

pub(super) fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    Ok(req)
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = sys::check(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs one SIOC* ioctl on `req` with a fresh control socket.
fn ifreq_ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    let sock = control_socket()?;
    // SAFETY: every request used here reads the name and reads or writes one member of the
    // ifreq union, which lives inside `req` for the whole call.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) })
        .map(|_| ())
}

/// The interface's `IFF_*` flags.
pub fn flags(name: &str) -> io::Result<libc::c_short> {
    let mut req = ifreq(name)?;
    ifreq_ioctl(libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: the kernel filled the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

/// Whether an interface called `name` exists.
pub fn exists(name: &str) -> bool {
    flags(name).is_ok()
}

/// Sets IFF_UP and checks that it stuck.
pub fn set_up(name: &str) -> io::Result<()> {
    let up = libc::c_short::try_from(libc::IFF_UP)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = flags(name)? | up;
    ifreq_ioctl(libc::SIOCSIFFLAGS, &mut req)?;
    if flags(name)? & up == 0 {
        return Err(io::Error::other(format!("{name} stayed down")));
    }
    Ok(())
}

/// The interface index.
pub fn index(name: &str) -> io::Result<libc::c_int> {
    let mut req = ifreq(name)?;
    ifreq_ioctl(libc::SIOCGIFINDEX, &mut req)?;
    // SAFETY: the kernel filled the ifindex member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// The Ethernet address.
pub fn hardware_address(name: &str) -> io::Result<[u8; 6]> {
    let mut req = ifreq(name)?;
    ifreq_ioctl(libc::SIOCGIFHWADDR, &mut req)?;
    // SAFETY: the kernel filled the hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *dst = src.to_ne_bytes()[0];
    }
    Ok(mac)
}

/// The MTU.
pub fn mtu(name: &str) -> io::Result<u32> {
    let mut req = ifreq(name)?;
    ifreq_ioctl(libc::SIOCGIFMTU, &mut req)?;
    // SAFETY: the kernel filled the mtu member of the union.
    u32::try_from(unsafe { req.ifr_ifru.ifru_mtu })
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Sets the MTU.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu =
        libc::c_int::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    ifreq_ioctl(libc::SIOCSIFMTU, &mut req)
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and are plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The netmask of a prefix length (0..=32).
pub fn prefix_mask(prefix_len: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// Sets the IPv4 address and netmask (the kernel derives the broadcast address and the
/// prefix route).
pub fn set_ipv4(name: &str, address: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(address);
    ifreq_ioctl(libc::SIOCSIFADDR, &mut req)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(prefix_mask(prefix_len));
    ifreq_ioctl(libc::SIOCSIFNETMASK, &mut req)
}

/// `struct rtentry` (net/route.h; the libc crate has it only for musl). The layout is
/// checked against the C header in the tests.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;
const RTF_HOST: libc::c_ushort = 0x0004;

fn add_route(
    name: &str,
    dst: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
) -> io::Result<()> {
    let dev = sys::c_string(name.as_bytes())?;
    let mut flags = RTF_UP;
    if gateway.is_some() {
        flags |= RTF_GATEWAY;
    }
    if prefix_len == 32 {
        flags |= RTF_HOST;
    }
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(dst),
        rt_gateway: sockaddr_in(gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr_in(prefix_mask(prefix_len)),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_ptr().cast_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    let sock = control_socket()?;
    // SAFETY: SIOCADDRT reads `rt` and the device name it points to; both outlive the call.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &mut rt as *mut RtEntry) })
        .map(|_| ())
}

/// The default route via `gateway` on `name`. A gateway outside the interface's subnet
/// (as a /32 address from a DHCP server would have) first gets a host route on the link.
pub fn add_default_route(
    name: &str,
    address: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> io::Result<()> {
    let mask = u32::from(prefix_mask(prefix_len));
    if u32::from(address) & mask != u32::from(gateway) & mask {
        match add_route(name, gateway, 32, None) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
    }
    add_route(name, Ipv4Addr::UNSPECIFIED, 0, Some(gateway))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_visible() {
        let f = flags("lo").unwrap();
        assert_ne!(i32::from(f) & libc::IFF_LOOPBACK, 0);
        assert!(exists("lo"));
        assert!(!exists("krun-nonexistent"));
        assert!(index("lo").unwrap() > 0);
        assert_eq!(mtu("lo").unwrap(), 65536);
        assert_eq!(hardware_address("lo").unwrap(), [0; 6]);
    }

    #[test]
    fn names_are_checked() {
        assert!(ifreq("lo").is_ok());
        assert!(ifreq("").is_err());
        assert!(ifreq("a-name-that-is-far-too-long").is_err());
        assert!(ifreq("a\0b").is_err());
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_mask(1), Ipv4Addr::new(128, 0, 0, 0));
        assert_eq!(prefix_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask(32), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn rtentry_matches_the_c_header() {
        let out = crate::c_probe::run(
            &["net/route.h"],
            r#"printf("size=%zu\n", sizeof(struct rtentry));
               printf("gateway=%zu\n", offsetof(struct rtentry, rt_gateway));
               printf("genmask=%zu\n", offsetof(struct rtentry, rt_genmask));
               printf("flags=%zu\n", offsetof(struct rtentry, rt_flags));
               printf("metric=%zu\n", offsetof(struct rtentry, rt_metric));
               printf("dev=%zu\n", offsetof(struct rtentry, rt_dev));
               printf("irtt=%zu\n", offsetof(struct rtentry, rt_irtt));
               printf("up=%d\ngw=%d\nhost=%d\n", RTF_UP, RTF_GATEWAY, RTF_HOST);"#,
        );
        let ours = [
            ("size", std::mem::size_of::<RtEntry>()),
            ("gateway", std::mem::offset_of!(RtEntry, rt_gateway)),
            ("genmask", std::mem::offset_of!(RtEntry, rt_genmask)),
            ("flags", std::mem::offset_of!(RtEntry, rt_flags)),
            ("metric", std::mem::offset_of!(RtEntry, rt_metric)),
            ("dev", std::mem::offset_of!(RtEntry, rt_dev)),
            ("irtt", std::mem::offset_of!(RtEntry, rt_irtt)),
            ("up", usize::from(RTF_UP)),
            ("gw", usize::from(RTF_GATEWAY)),
            ("host", usize::from(RTF_HOST)),
        ]
        .map(|(k, v)| (k.to_string(), u64::try_from(v).unwrap()));
        assert_eq!(crate::c_probe::values(&out), ours.to_vec());
    }
}
