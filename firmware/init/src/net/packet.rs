//! DHCP's transport before the interface has an address: IPv4/UDP datagrams on an
//! `AF_PACKET`/`SOCK_DGRAM` socket bound to the interface (the kernel adds and strips the
//! Ethernet header). Received packets are untrusted: [`unwrap_udp`] checks every length.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::dhcp::Transport;
use crate::sys;

/// DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// DHCP server port.
pub const SERVER_PORT: u16 = 67;
const IPPROTO_UDP: u8 = 17;
const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
/// Larger packets are not DHCP replies we can use.
const RECV_BUFFER: usize = 4096;

/// The Internet checksum (RFC 1071) of `data` with `initial` already summed in.
fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The fold above leaves at most 16 bits.
    !(u16::try_from(sum).unwrap_or(0xffff))
}

/// An IPv4 packet carrying one UDP datagram, with both checksums.
pub fn wrap_udp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> io::Result<Vec<u8>> {
    let udp_len = u16::try_from(UDP_HEADER_LEN + payload.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let total = u16::try_from(IPV4_HEADER_LEN + UDP_HEADER_LEN + payload.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, IPPROTO_UDP, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let ip_sum = checksum(0, &p[..IPV4_HEADER_LEN]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let pseudo = u32::from(u16::from_be_bytes([src.octets()[0], src.octets()[1]]))
        + u32::from(u16::from_be_bytes([src.octets()[2], src.octets()[3]]))
        + u32::from(u16::from_be_bytes([dst.octets()[0], dst.octets()[1]]))
        + u32::from(u16::from_be_bytes([dst.octets()[2], dst.octets()[3]]))
        + u32::from(IPPROTO_UDP)
        + u32::from(udp_len);
    let udp_sum = match checksum(pseudo, &p[IPV4_HEADER_LEN..]) {
        0 => 0xffff,
        s => s,
    };
    p[IPV4_HEADER_LEN + 6..IPV4_HEADER_LEN + 8].copy_from_slice(&udp_sum.to_be_bytes());
    Ok(p)
}

/// The UDP payload of an unfragmented IPv4 packet from `sport` to `dport`, or `None`.
/// The UDP checksum is not verified: with checksum offload the device may hand over
/// packets whose checksum was never filled in (the IP header checksum is verified).
pub fn unwrap_udp(packet: &[u8], sport: u16, dport: u16) -> Option<&[u8]> {
    let first = *packet.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < IPV4_HEADER_LEN || packet.len() < ihl + UDP_HEADER_LEN {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < ihl + UDP_HEADER_LEN || total > packet.len() {
        return None;
    }
    let fragment = u16::from_be_bytes([packet[6], packet[7]]);
    // More-fragments flag or a fragment offset: not a whole datagram.
    if fragment & 0x3fff != 0 || packet[9] != IPPROTO_UDP || checksum(0, &packet[..ihl]) != 0 {
        return None;
    }
    let udp = &packet[ihl..total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if u16::from_be_bytes([udp[0], udp[1]]) != sport
        || u16::from_be_bytes([udp[2], udp[3]]) != dport
        || udp_len < UDP_HEADER_LEN
        || udp_len > udp.len()
    {
        return None;
    }
    Some(&udp[UDP_HEADER_LEN..udp_len])
}

/// An `AF_PACKET` socket on one interface speaking DHCP client ↔ server.
#[derive(Debug)]
pub struct PacketTransport {
    fd: OwnedFd,
    ifindex: libc::c_int,
}

fn eth_p_ip_be() -> u16 {
    // ETH_P_IP is 0x0800.
    u16::try_from(libc::ETH_P_IP).unwrap_or(0x0800).to_be()
}

fn link_addr(ifindex: libc::c_int, dest: [u8; 6]) -> libc::sockaddr_ll {
    let mut addr = [0u8; 8];
    addr[..6].copy_from_slice(&dest);
    libc::sockaddr_ll {
        sll_family: u16::try_from(libc::AF_PACKET).unwrap_or(17),
        sll_protocol: eth_p_ip_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: addr,
    }
}

const SOCKADDR_LL_LEN: libc::socklen_t = 20;
const _: () = assert!(std::mem::size_of::<libc::sockaddr_ll>() == 20);

impl PacketTransport {
    /// Opens a socket receiving the IPv4 packets of interface `ifindex`.
    pub fn open(ifindex: libc::c_int) -> io::Result<Self> {
        // SAFETY: socket takes no pointers.
        let fd = sys::check(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::c_int::from(eth_p_ip_be()),
            )
        })?;
        // SAFETY: `fd` is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = link_addr(ifindex, [0; 6]);
        // SAFETY: `addr` is a valid sockaddr_ll of the length passed, alive for the call.
        sys::check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                SOCKADDR_LL_LEN,
            )
        })?;
        Ok(PacketTransport { fd, ifindex })
    }
}

impl Transport for PacketTransport {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let packet = wrap_udp(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            CLIENT_PORT,
            SERVER_PORT,
            msg,
        )?;
        let addr = link_addr(self.ifindex, [0xff; 6]);
        // SAFETY: the buffer and address are valid for the lengths passed during the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                SOCKADDR_LL_LEN,
            )
        };
        if usize::try_from(n).map_err(|_| io::Error::last_os_error())? != packet.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short packet send",
            ));
        }
        Ok(())
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, alive for the call.
            match sys::check(unsafe { libc::poll(&mut pfd, 1, ms) }) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            // MSG_TRUNC: the return value is the packet's real length.
            // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return Err(e);
            };
            if n > buf.len() {
                continue;
            }
            if let Some(payload) = unwrap_udp(&buf[..n], SERVER_PORT, CLIENT_PORT) {
                return Ok(Some(payload.to_vec()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    use super::*;

    /// passt's side of the wire: Ethernet frames with a 32-bit big-endian length prefix.
    struct PasstStream {
        stream: UnixStream,
        mac: [u8; 6],
    }

    impl Transport for PasstStream {
        fn send(&mut self, msg: &[u8]) -> io::Result<()> {
            let ip = wrap_udp(
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                CLIENT_PORT,
                SERVER_PORT,
                msg,
            )?;
            let mut frame = vec![0xff; 6];
            frame.extend_from_slice(&self.mac);
            frame.extend_from_slice(&[0x08, 0x00]);
            frame.extend_from_slice(&ip);
            let len = u32::try_from(frame.len()).unwrap();
            self.stream.write_all(&len.to_be_bytes())?;
            self.stream.write_all(&frame)
        }

        fn recv(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
            self.stream.set_read_timeout(Some(timeout))?;
            loop {
                let mut len = [0u8; 4];
                match self.stream.read_exact(&mut len) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    other => other?,
                }
                let mut frame = vec![0u8; usize::try_from(u32::from_be_bytes(len)).unwrap()];
                self.stream.read_exact(&mut frame)?;
                if frame.len() > 14 && frame[12..14] == [0x08, 0x00] {
                    if let Some(p) = unwrap_udp(&frame[14..], SERVER_PORT, CLIENT_PORT) {
                        return Ok(Some(p.to_vec()));
                    }
                }
            }
        }
    }

    /// The whole client (DHCP messages, IPv4/UDP framing) against Debian's real passt, which
    /// copies this machine's network: `cargo test -p krun-init -- --ignored real_passt`.
    #[test]
    #[ignore = "needs passt and a host interface with an IPv4 default route"]
    fn dhcp_lease_from_real_passt() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        // passt's end must survive exec.
        let fd = theirs.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own takes no pointers.
        let cleared = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        assert_eq!(cleared, 0);
        let mut passt = Command::new("passt")
            .args(["-f", "-q", "-4", "--fd", &fd.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("passt");
        drop(theirs);
        let mac = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];
        let mut t = PasstStream { stream: ours, mac };
        let mut xid = 0x4b52_0000;
        let lease =
            super::super::dhcp::obtain_lease(&mut t, mac, &[Duration::from_secs(5); 2], || {
                xid += 1;
                xid
            });
        drop(t);
        let _ = passt.wait();
        let lease = lease.unwrap();
        eprintln!("lease from passt: {lease:?}");
        assert!(super::super::config::usable_host_address(lease.address));
        assert!(lease.router.is_some());
    }

    #[test]
    fn udp_round_trip_and_checksums() {
        let src = Ipv4Addr::new(10, 0, 2, 2);
        let dst = Ipv4Addr::BROADCAST;
        let p = wrap_udp(src, dst, 67, 68, b"hello").unwrap();
        assert_eq!(p.len(), 20 + 8 + 5);
        assert_eq!(checksum(0, &p[..20]), 0, "IP header checksum");
        assert_eq!(unwrap_udp(&p, 67, 68), Some(&b"hello"[..]));
        assert_eq!(unwrap_udp(&p, 68, 67), None);
        // The UDP checksum verifies over the pseudo-header.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, 17, 0, 13]);
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(checksum(0, &pseudo), 0);
        // Known value: RFC 1071's example words.
        assert_eq!(
            checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn hostile_packets_are_dropped() {
        let good = wrap_udp(
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::BROADCAST,
            67,
            68,
            b"xy",
        )
        .unwrap();
        let fix_ip_sum = |p: &mut Vec<u8>| {
            p[10] = 0;
            p[11] = 0;
            let s = checksum(0, &p[..20]);
            p[10..12].copy_from_slice(&s.to_be_bytes());
        };
        for n in 0..good.len() {
            assert_eq!(unwrap_udp(&good[..n], 67, 68), None, "truncated to {n}");
        }
        let mutations: [(usize, u8); 9] = [
            (0, 0x65),  // IPv6 version nibble
            (0, 0x44),  // IHL below 5
            (0, 0x4f),  // IHL past the packet
            (2, 0xff),  // total length past the buffer
            (3, 10),    // total length shorter than the headers
            (6, 0x20),  // more fragments
            (7, 1),     // fragment offset
            (9, 6),     // TCP
            (24, 0xff), // UDP length past the datagram
        ];
        for (at, value) in mutations {
            let mut p = good.clone();
            p[at] = value;
            fix_ip_sum(&mut p);
            assert_eq!(unwrap_udp(&p, 67, 68), None, "byte {at} = {value}");
        }
        let mut bad_sum = good.clone();
        bad_sum[10] ^= 1;
        assert_eq!(unwrap_udp(&bad_sum, 67, 68), None);
        let mut short_udp = good.clone();
        short_udp[25] = 7;
        assert_eq!(unwrap_udp(&short_udp, 67, 68), None);
        // Trailing link-layer padding after the IP total length is ignored.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 20]);
        assert_eq!(unwrap_udp(&padded, 67, 68), Some(&b"xy"[..]));
    }
}
