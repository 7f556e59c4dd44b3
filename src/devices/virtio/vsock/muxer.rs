//! Routes packets between the guest and host streams.
//!
//! Guest-initiated connections reach only the ports in [`HostServices`]; anything else is
//! answered with RST. Host-initiated connections come from the port map's TCP listeners: each
//! accepted client becomes a connection to guest port 1024 that first sends
//! `CONNECT <guest-port>\n` and waits for the guest's `OK\n`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{SocketAddr, TcpListener};

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::backend::{HostServices, HostStream};
use super::connection::{Connection, Outgoing};
use super::control::{ControlCommand, PortControl};
use super::packet::{PacketHeader, TxPacket};
use super::{
    VsockError, GUEST_CID, HOST_CID, OP_REQUEST, OP_RST, OP_RW, PORT_ATTESTATION,
    PORT_ATTESTATION_DONE, PORT_FORWARDER, PORT_REPORT, TYPE_STREAM,
};
use crate::devices::virtio::rate_limit::guest_warn;
use crate::devices::virtio::worker::{Interest, Ready};

/// Most connections open at once; more requests are reset.
pub const MAX_CONNECTIONS: usize = 256;
/// Most RSTs for packets without a connection kept for the guest. An RST is advisory (the
/// guest's connect or send to that port fails either way), so beyond this they are dropped:
/// a guest that floods unknown ports without posting receive buffers would otherwise grow
/// this queue without bound (found by the hostile-guest test, `docs/hostile-guest.md`).
pub const MAX_STRAY_RSTS: usize = 256;
/// First host-side port used for host-initiated connections.
const LOCAL_PORT_BASE: u32 = 0x4000_0000;

/// Connection key: (host port, guest port).
type Key = (u32, u32);

/// What a poll result refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// Port-map listener at this index.
    Listener(usize),
    /// A connection's host stream.
    Conn(Key),
    /// The exposed-ports command queue.
    Control,
}

#[derive(Debug)]
struct PortListener {
    listener: TcpListener,
    guest_port: u16,
    /// Opened by a `LISTEN` command (and closed by `UNLISTEN`).
    exposed: bool,
}

/// The host side of the vsock device.
#[derive(Debug)]
pub struct Muxer {
    services: HostServices,
    listeners: Vec<PortListener>,
    conns: BTreeMap<Key, Connection>,
    readable: BTreeSet<Key>,
    stray: VecDeque<PacketHeader>,
    next_local_port: u32,
    last_served: Option<Key>,
    control: Option<Arc<PortControl>>,
}

impl Muxer {
    /// A muxer serving `services` and forwarding each `(host address, guest port)` of
    /// `port_map` into the guest.
    pub fn new(services: HostServices, port_map: &[(SocketAddr, u16)]) -> Result<Self, VsockError> {
        let listeners = port_map
            .iter()
            .map(|(addr, guest_port)| {
                let listener = TcpListener::bind(addr).map_err(VsockError::Listen)?;
                listener.set_nonblocking(true).map_err(VsockError::Listen)?;
                Ok(PortListener {
                    listener,
                    guest_port: *guest_port,
                    exposed: false,
                })
            })
            .collect::<Result<Vec<_>, VsockError>>()?;
        Ok(Muxer {
            services,
            listeners,
            conns: BTreeMap::new(),
            readable: BTreeSet::new(),
            stray: VecDeque::new(),
            next_local_port: LOCAL_PORT_BASE,
            last_served: None,
            control: None,
        })
    }

    /// Also applies `LISTEN`/`UNLISTEN` commands from `control` (the NULL port map).
    pub fn with_control(mut self, control: Arc<PortControl>) -> Self {
        self.control = Some(control);
        self
    }

    fn apply_control(&mut self) {
        let Some(control) = self.control.clone() else {
            return;
        };
        for cmd in control.take() {
            match cmd {
                ControlCommand::Listen(port) => {
                    if self.listeners.iter().any(|l| l.guest_port == port) {
                        continue;
                    }
                    let bound = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                        .and_then(|l| l.set_nonblocking(true).map(|()| l));
                    match bound {
                        Ok(listener) => self.listeners.push(PortListener {
                            listener,
                            guest_port: port,
                            exposed: true,
                        }),
                        Err(e) => log::warn!("vsock: cannot expose port {port}: {e}"),
                    }
                }
                ControlCommand::Unlisten(port) => {
                    self.listeners
                        .retain(|l| !(l.exposed && l.guest_port == port));
                }
            }
        }
    }

    /// Addresses the port-map listeners are bound to, in port-map order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.listener.local_addr().ok())
            .collect()
    }

    /// Drops every connection (after a device reset).
    pub fn drop_connections(&mut self) {
        self.conns.clear();
        self.readable.clear();
        self.stray.clear();
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn rst_for(&mut self, hdr: &PacketHeader) {
        if hdr.op == OP_RST {
            return;
        }
        if self.stray.len() >= MAX_STRAY_RSTS {
            log::debug!(
                "vsock: RST backlog full; dropping the RST for port {}",
                hdr.src_port
            );
            return;
        }
        self.stray.push_back(PacketHeader {
            src_cid: HOST_CID,
            dst_cid: GUEST_CID,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        });
    }

    /// Handles one packet from the guest.
    pub fn handle_guest_packet(&mut self, pkt: &TxPacket) {
        let hdr = &pkt.hdr;
        if hdr.src_cid != GUEST_CID || hdr.dst_cid != HOST_CID {
            log::debug!("vsock: dropping packet {}->{}", hdr.src_cid, hdr.dst_cid);
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            self.rst_for(hdr);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.on_guest_packet(hdr, &pkt.payload);
            if conn.is_finished() {
                self.remove(key);
            }
            return;
        }
        if hdr.op != OP_REQUEST {
            self.rst_for(hdr);
            return;
        }
        if hdr.dst_port == PORT_ATTESTATION_DONE {
            self.close_attestation();
            self.rst_for(hdr);
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            guest_warn!(
                "vsock: too many connections; refusing port {}",
                hdr.dst_port
            );
            self.rst_for(hdr);
            return;
        }
        let Some(handler) = self.services.get(hdr.dst_port).cloned() else {
            log::debug!("vsock: no service on host port {}", hdr.dst_port);
            self.rst_for(hdr);
            return;
        };
        match handler
            .connect(hdr.src_port)
            .and_then(|s| s.set_nonblocking().map(|()| s))
        {
            Ok(stream) => {
                self.conns
                    .insert(key, Connection::guest_initiated(hdr.dst_port, stream, hdr));
            }
            Err(e) => {
                guest_warn!("vsock: host service on port {} failed: {e}", hdr.dst_port);
                self.rst_for(hdr);
            }
        }
    }

    /// The init has its key: the attestation proxy and the report service stop for the
    /// rest of the VM's life, open connections to them included. Whoever asks first (the
    /// init, before it starts the workload) closes them; nothing reopens them.
    fn close_attestation(&mut self) {
        let mut closed = false;
        for port in [PORT_ATTESTATION, PORT_REPORT] {
            closed |= self.services.remove(port);
            let keys: Vec<Key> = self
                .conns
                .keys()
                .filter(|(host, _)| *host == port)
                .copied()
                .collect();
            for key in keys {
                self.stray.push_back(PacketHeader {
                    src_cid: HOST_CID,
                    dst_cid: GUEST_CID,
                    src_port: key.0,
                    dst_port: key.1,
                    type_: TYPE_STREAM,
                    op: OP_RST,
                    ..Default::default()
                });
                self.remove(key);
            }
        }
        if closed {
            log::info!(
                "vsock: attestation finished; proxy (1025) and report service (1026) closed"
            );
        }
    }

    fn remove(&mut self, key: Key) {
        self.conns.remove(&key);
        self.readable.remove(&key);
    }

    /// What to poll: listeners, and each connection's stream for reading (only when
    /// `can_deliver`, i.e. the guest has receive buffers) and writing.
    pub fn interests(&self, can_deliver: bool) -> Vec<(Interest, Token)> {
        let mut out: Vec<(Interest, Token)> = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (Interest::read(&l.listener), Token::Listener(i)))
            .collect();
        if let Some(c) = &self.control {
            out.push((Interest::read(c.wake_evt()), Token::Control));
        }
        for (key, conn) in &self.conns {
            let read = can_deliver && conn.wants_read();
            let write = conn.wants_write();
            if read || write {
                out.push((
                    Interest {
                        fd: std::os::fd::AsRawFd::as_raw_fd(conn.stream()),
                        read,
                        write,
                    },
                    Token::Conn(*key),
                ));
            }
        }
        out
    }

    /// Applies poll results.
    pub fn on_ready(&mut self, ready: &[(Token, Ready)]) {
        // Listener tokens are indices: apply them before commands can reorder the listeners.
        let mut control_ready = false;
        for (token, r) in ready {
            match token {
                Token::Listener(i) if r.readable => self.accept(*i),
                Token::Conn(key) => {
                    if r.writable {
                        if let Some(c) = self.conns.get_mut(key) {
                            c.on_host_writable();
                        }
                    }
                    if r.readable || r.hangup {
                        self.readable.insert(*key);
                    }
                }
                Token::Control => control_ready |= r.readable,
                Token::Listener(_) => {}
            }
        }
        if control_ready {
            self.apply_control();
        }
    }

    fn alloc_local_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(LOCAL_PORT_BASE);
            if !self.conns.contains_key(&(p, guest_port)) {
                return p;
            }
        }
    }

    fn accept(&mut self, index: usize) {
        loop {
            let Some(l) = self.listeners.get(index) else {
                return;
            };
            let guest_port = l.guest_port;
            let (stream, peer) = match l.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("vsock: accept on a forwarded port failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                log::warn!("vsock: too many connections; dropping client {peer}");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let local = self.alloc_local_port(PORT_FORWARDER);
            let preamble = format!("CONNECT {guest_port}\n").into_bytes();
            let conn = Connection::host_initiated(
                local,
                PORT_FORWARDER,
                HostStream::Tcp(stream),
                preamble,
            );
            self.conns.insert((local, PORT_FORWARDER), conn);
        }
    }

    /// Whether a packet for the guest may be ready.
    pub fn has_pending(&self) -> bool {
        !self.stray.is_empty()
            || self
                .conns
                .iter()
                .any(|(k, c)| c.has_control() || (self.readable.contains(k) && c.wants_read()))
    }

    /// The next packet for the guest with at most `max_payload` payload bytes.
    pub fn next_rx_packet(&mut self, max_payload: usize) -> Option<(PacketHeader, Vec<u8>)> {
        if let Some(h) = self.stray.pop_front() {
            return Some((h, Vec::new()));
        }
        // Round robin, starting after the connection served last.
        let keys: Vec<Key> = match self.last_served {
            Some(last) => self
                .conns
                .range((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .chain(self.conns.range(..=last))
                .map(|(k, _)| *k)
                .collect(),
            None => self.conns.keys().copied().collect(),
        };
        for key in keys {
            let readable = self.readable.contains(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let out = conn.next_outgoing(max_payload, readable);
            let Some(out) = out else {
                self.readable.remove(&key);
                if conn.is_finished() {
                    self.remove(key);
                }
                continue;
            };
            let (buf_alloc, fwd_cnt) = conn.credit_fields();
            let (op, flags, payload) = match out {
                Outgoing::Control(op, flags) => (op, flags, Vec::new()),
                Outgoing::Data(d) => (OP_RW, 0, d),
            };
            let hdr = PacketHeader {
                src_cid: HOST_CID,
                dst_cid: GUEST_CID,
                src_port: conn.local_port,
                dst_port: conn.peer_port,
                len: u32::try_from(payload.len()).unwrap_or(0),
                type_: TYPE_STREAM,
                op,
                flags,
                buf_alloc,
                fwd_cnt,
            };
            if conn.is_finished() {
                self.remove(key);
            }
            self.last_served = Some(key);
            return Some((hdr, payload));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::backend::TcpForward;
    use crate::devices::virtio::vsock::{
        OP_CREDIT_UPDATE, OP_RESPONSE, OP_SHUTDOWN, PORT_ATTESTATION, SHUTDOWN_RCV, SHUTDOWN_SEND,
    };
    use crate::devices::virtio::worker::poll;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn pkt(op: u16, src_port: u32, dst_port: u32, payload: &[u8]) -> TxPacket {
        TxPacket {
            hdr: PacketHeader {
                src_cid: GUEST_CID,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                len: u32::try_from(payload.len()).unwrap(),
                type_: TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc: 65536,
                fwd_cnt: 0,
            },
            payload: payload.to_vec(),
        }
    }

    /// Polls the muxer's fds once and returns the next packet, waiting up to 2 s.
    fn next(m: &mut Muxer) -> Option<(PacketHeader, Vec<u8>)> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if let Some(p) = m.next_rx_packet(4096) {
                return Some(p);
            }
            let ints = m.interests(true);
            let fds: Vec<Interest> = ints.iter().map(|(i, _)| *i).collect();
            let ready = poll(&fds, 50).unwrap();
            let tagged: Vec<(Token, Ready)> = ints.iter().map(|(_, t)| *t).zip(ready).collect();
            m.on_ready(&tagged);
        }
        None
    }

    #[test]
    fn attestation_proxy_forwards_to_the_allowed_address_only() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut services = HostServices::new();
        services.insert(
            PORT_ATTESTATION,
            Arc::new(TcpForward::new(
                server.local_addr().unwrap(),
                Duration::from_secs(2),
            )),
        );
        let mut m = Muxer::new(services, &[]).unwrap();
        m.handle_guest_packet(&pkt(OP_REQUEST, 5000, PORT_ATTESTATION, &[]));
        let (mut sock, _) = server.accept().unwrap();
        let (h, _) = next(&mut m).unwrap();
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (OP_RESPONSE, 1025, 5000, 3)
        );
        m.handle_guest_packet(&pkt(OP_RW, 5000, PORT_ATTESTATION, b"POST /kbs"));
        let mut b = [0u8; 9];
        sock.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"POST /kbs");
        sock.write_all(b"200 OK").unwrap();
        let (h, d) = next(&mut m).unwrap();
        assert_eq!((h.op, d.as_slice()), (OP_RW, &b"200 OK"[..]));
        assert_eq!(h.fwd_cnt, 9);
        drop(sock);
        let (h, _) = next(&mut m).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        let mut shut = pkt(OP_SHUTDOWN, 5000, PORT_ATTESTATION, &[]);
        shut.hdr.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
        m.handle_guest_packet(&shut);
        let (h, _) = next(&mut m).unwrap();
        assert_eq!(h.op, OP_RST);
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn attestation_done_closes_proxy_and_report_service_for_good() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut services = HostServices::new();
        let forward = Arc::new(TcpForward::new(
            server.local_addr().unwrap(),
            Duration::from_secs(2),
        ));
        services.insert(PORT_ATTESTATION, forward.clone());
        services.insert(PORT_REPORT, forward);
        let mut m = Muxer::new(services, &[]).unwrap();
        m.handle_guest_packet(&pkt(OP_REQUEST, 5000, PORT_ATTESTATION, &[]));
        let _sock = server.accept().unwrap();
        assert_eq!(next(&mut m).unwrap().0.op, OP_RESPONSE);
        assert_eq!(m.connection_count(), 1);

        m.handle_guest_packet(&pkt(OP_REQUEST, 5001, PORT_ATTESTATION_DONE, &[]));
        // The open proxy connection is reset, the done request too.
        let mut resets = Vec::new();
        while let Some((h, _)) = m.next_rx_packet(4096) {
            assert_eq!(h.op, OP_RST);
            resets.push((h.src_port, h.dst_port));
        }
        resets.sort_unstable();
        assert_eq!(
            resets,
            vec![(PORT_ATTESTATION, 5000), (PORT_ATTESTATION_DONE, 5001)]
        );
        assert_eq!(m.connection_count(), 0);
        // New connections to either service are refused, again and again.
        for port in [PORT_ATTESTATION, PORT_REPORT, PORT_ATTESTATION] {
            m.handle_guest_packet(&pkt(OP_REQUEST, 5002, port, &[]));
            let (h, _) = m.next_rx_packet(4096).unwrap();
            assert_eq!((h.op, h.src_port), (OP_RST, port));
        }
        // Asking again changes nothing.
        m.handle_guest_packet(&pkt(OP_REQUEST, 5003, PORT_ATTESTATION_DONE, &[]));
        assert_eq!(m.next_rx_packet(4096).unwrap().0.op, OP_RST);
    }

    #[test]
    fn rst_backlog_is_bounded_without_receive_buffers() {
        let mut m = Muxer::new(HostServices::new(), &[]).unwrap();
        for port in 0..u32::try_from(10 * MAX_STRAY_RSTS).unwrap() {
            m.handle_guest_packet(&pkt(OP_REQUEST, port, 9999, &[]));
        }
        let mut rsts = 0;
        while let Some((h, _)) = m.next_rx_packet(4096) {
            assert_eq!(h.op, OP_RST);
            rsts += 1;
        }
        assert_eq!(rsts, MAX_STRAY_RSTS);
        // Once drained, new refusals are answered again.
        m.handle_guest_packet(&pkt(OP_REQUEST, 7, 9999, &[]));
        assert_eq!(m.next_rx_packet(4096).unwrap().0.dst_port, 7);
    }

    #[test]
    fn unknown_ports_and_foreign_cids() {
        let mut m = Muxer::new(HostServices::new(), &[]).unwrap();
        m.handle_guest_packet(&pkt(OP_REQUEST, 5000, 9999, &[]));
        let (h, _) = m.next_rx_packet(4096).unwrap();
        assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 9999, 5000));
        m.handle_guest_packet(&pkt(OP_RW, 5000, 9999, b"x"));
        assert_eq!(m.next_rx_packet(4096).unwrap().0.op, OP_RST);
        m.handle_guest_packet(&pkt(OP_RST, 5000, 9999, &[]));
        assert!(m.next_rx_packet(4096).is_none());
        let mut spoofed = pkt(OP_REQUEST, 5000, 9999, &[]);
        spoofed.hdr.src_cid = 7;
        m.handle_guest_packet(&spoofed);
        let mut dgram = pkt(OP_REQUEST, 5000, 9999, &[]);
        dgram.hdr.type_ = 2;
        m.handle_guest_packet(&dgram);
        assert_eq!(m.next_rx_packet(4096).unwrap().0.op, OP_RST);
        assert!(m.next_rx_packet(4096).is_none());
        assert!(!m.has_pending());
    }

    #[test]
    fn control_stream_opens_and_closes_listeners() {
        use crate::devices::virtio::vsock::control::ExposedPortsHandler;
        use crate::devices::virtio::vsock::PORT_CONTROL;
        let control = PortControl::new().unwrap();
        let mut services = HostServices::new();
        services.insert(
            PORT_CONTROL,
            Arc::new(ExposedPortsHandler::new(control.clone())),
        );
        let mut m = Muxer::new(services, &[]).unwrap().with_control(control);
        let port = TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        m.handle_guest_packet(&pkt(OP_REQUEST, 6000, PORT_CONTROL, &[]));
        assert_eq!(next(&mut m).unwrap().0.op, OP_RESPONSE);
        let line = format!("LISTEN {port}\n");
        m.handle_guest_packet(&pkt(OP_RW, 6000, PORT_CONTROL, line.as_bytes()));
        let start = Instant::now();
        while m.listener_addrs().is_empty() && start.elapsed() < Duration::from_secs(5) {
            let _ = next_quick(&mut m);
        }
        assert_eq!(
            m.listener_addrs()
                .iter()
                .map(|a| a.port())
                .collect::<Vec<_>>(),
            vec![port]
        );
        // A client on the exposed port becomes a forward to the same guest port.
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (h, _) = next(&mut m).unwrap();
        assert_eq!((h.op, h.dst_port), (OP_REQUEST, PORT_FORWARDER));
        m.handle_guest_packet(&pkt(OP_RESPONSE, PORT_FORWARDER, h.src_port, &[]));
        let (_, d) = next(&mut m).unwrap();
        assert_eq!(d, format!("CONNECT {port}\n").into_bytes());
        let line = format!("UNLISTEN {port}\n");
        m.handle_guest_packet(&pkt(OP_RW, 6000, PORT_CONTROL, line.as_bytes()));
        let start = Instant::now();
        while !m.listener_addrs().is_empty() && start.elapsed() < Duration::from_secs(5) {
            let _ = next_quick(&mut m);
        }
        assert!(m.listener_addrs().is_empty());
    }

    /// One poll round without waiting for a packet.
    fn next_quick(m: &mut Muxer) -> Option<(PacketHeader, Vec<u8>)> {
        let ints = m.interests(true);
        let fds: Vec<Interest> = ints.iter().map(|(i, _)| *i).collect();
        let ready = poll(&fds, 20).unwrap();
        let tagged: Vec<(Token, Ready)> = ints.iter().map(|(_, t)| *t).zip(ready).collect();
        m.on_ready(&tagged);
        m.next_rx_packet(4096)
    }

    #[test]
    fn port_map_connects_into_the_guest_with_preamble() {
        let mut m = Muxer::new(
            HostServices::new(),
            &[("127.0.0.1:0".parse().unwrap(), 8080)],
        )
        .unwrap();
        let addr = m.listener_addrs()[0];
        let mut client = TcpStream::connect(addr).unwrap();
        let (h, _) = next(&mut m).unwrap();
        assert_eq!(
            (h.op, h.dst_port, h.dst_cid),
            (OP_REQUEST, PORT_FORWARDER, GUEST_CID)
        );
        let local = h.src_port;
        m.handle_guest_packet(&pkt(OP_RESPONSE, PORT_FORWARDER, local, &[]));
        let (h, d) = next(&mut m).unwrap();
        assert_eq!((h.op, d.as_slice()), (OP_RW, &b"CONNECT 8080\n"[..]));
        client.write_all(b"hello guest").unwrap();
        m.handle_guest_packet(&pkt(OP_RW, PORT_FORWARDER, local, b"OK\nhello host"));
        let mut b = [0u8; 10];
        client.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello host");
        let (h, d) = next(&mut m).unwrap();
        assert_eq!((h.op, d.as_slice()), (OP_RW, &b"hello guest"[..]));
        // Credit request from the guest is answered.
        m.handle_guest_packet(&pkt(
            crate::devices::virtio::vsock::OP_CREDIT_REQUEST,
            PORT_FORWARDER,
            local,
            &[],
        ));
        assert_eq!(next(&mut m).unwrap().0.op, OP_CREDIT_UPDATE);
        // The guest resets: the client sees EOF.
        m.handle_guest_packet(&pkt(OP_RST, PORT_FORWARDER, local, &[]));
        assert_eq!(m.connection_count(), 0);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary guest packet sequences against a live service never panic, and every
        /// packet the muxer produces is addressed from the host to the guest with a payload
        /// matching its length.
        #[test]
        fn arbitrary_guest_packets(
            pkts in proptest::collection::vec(
                (0u16..9, 0u32..4, prop_oneof(), proptest::prelude::any::<u32>(),
                 proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)),
                1..60)
        ) {
            let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
            #[derive(Debug)]
            struct Loop(std::sync::Mutex<Option<std::os::unix::net::UnixStream>>);
            impl crate::devices::virtio::vsock::GuestPortHandler for Loop {
                fn connect(&self, _: u32) -> std::io::Result<HostStream> {
                    let (x, y) = std::os::unix::net::UnixStream::pair()?;
                    *self.0.lock().unwrap() = Some(y);
                    Ok(HostStream::Unix(x))
                }
            }
            drop(a);
            let mut services = HostServices::new();
            services.insert(PORT_ATTESTATION, Arc::new(Loop(std::sync::Mutex::new(None))));
            let mut m = Muxer::new(services, &[]).unwrap();
            for (op, src_port, dst_port, credit, payload) in pkts {
                let mut p = pkt(op, src_port, dst_port, &payload);
                p.hdr.buf_alloc = credit;
                m.handle_guest_packet(&p);
                while let Some((h, d)) = m.next_rx_packet(4096) {
                    proptest::prop_assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, GUEST_CID));
                    proptest::prop_assert_eq!(h.len as usize, d.len());
                }
            }
        }
    }

    fn prop_oneof() -> impl proptest::strategy::Strategy<Value = u32> {
        proptest::prop_oneof![
            proptest::strategy::Just(PORT_ATTESTATION),
            proptest::strategy::Just(9999u32),
            proptest::prelude::any::<u32>()
        ]
    }
}
