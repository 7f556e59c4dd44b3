//! One vsock stream connection between a guest port and a host stream, with credit-based flow
//! control (virtio 1.2, 5.10.6.3).
//!
//! Guest-to-host bytes are written to the non-blocking host stream; what does not fit waits
//! in `tx_buf`, whose size is the `buf_alloc` we advertise, so a guest that respects credit
//! can never overflow it (one that does not is reset). Host-to-guest bytes are read only while
//! the guest has credit for them.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;

use super::backend::HostStream;
use super::packet::PacketHeader;
use super::{
    OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
    SHUTDOWN_RCV, SHUTDOWN_SEND,
};
use crate::devices::virtio::rate_limit::guest_warn;

/// Bytes of guest data we buffer per connection (our `buf_alloc`).
pub const TX_BUF_SIZE: u32 = 256 * 1024;
/// Send a credit update once the guest has this much unannounced credit back.
const CREDIT_UPDATE_THRESHOLD: u32 = TX_BUF_SIZE / 4;
/// Longest answer line to the port-forward preamble.
const MAX_OK_LINE: usize = 256;

/// Connection state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent, waiting for RESPONSE.
    Connecting,
    /// Host-initiated: preamble sent, waiting for the forwarder's `OK\n` line.
    AwaitingOk,
    /// Data flows both ways.
    Established,
    /// Done; the muxer removes the connection once its last packet went out.
    Closed,
}

/// Something to send to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A control packet with flags.
    Control(u16, u32),
    /// Data.
    Data(Vec<u8>),
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    stream: HostStream,
    state: State,
    control: VecDeque<(u16, u32)>,
    preamble: Vec<u8>,
    ok_line: Vec<u8>,
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    host_eof: bool,
    guest_no_send: bool,
    guest_no_recv: bool,
}

impl Connection {
    fn new(local_port: u32, peer_port: u32, stream: HostStream, state: State) -> Self {
        Connection {
            local_port,
            peer_port,
            stream,
            state,
            control: VecDeque::new(),
            preamble: Vec::new(),
            ok_line: Vec::new(),
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            host_eof: false,
            guest_no_send: false,
            guest_no_recv: false,
        }
    }

    /// A connection the guest asked for (its REQUEST is `req`); answers with RESPONSE.
    pub fn guest_initiated(local_port: u32, stream: HostStream, req: &PacketHeader) -> Self {
        let mut c = Connection::new(local_port, req.src_port, stream, State::Established);
        c.update_peer_credit(req);
        c.control.push_back((OP_RESPONSE, 0));
        c
    }

    /// A connection the host opens to `peer_port`; `preamble` is sent once it is accepted and
    /// the peer's `OK\n` line is awaited before host data flows.
    pub fn host_initiated(
        local_port: u32,
        peer_port: u32,
        stream: HostStream,
        preamble: Vec<u8>,
    ) -> Self {
        let mut c = Connection::new(local_port, peer_port, stream, State::Connecting);
        c.preamble = preamble;
        c.control.push_back((OP_REQUEST, 0));
        c
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The host stream (for polling).
    pub fn stream(&self) -> &HostStream {
        &self.stream
    }

    /// Our receive-side credit fields `(buf_alloc, fwd_cnt)`, marking them announced.
    pub fn credit_fields(&mut self) -> (u32, u32) {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        (TX_BUF_SIZE, self.fwd_cnt.0)
    }

    fn update_peer_credit(&mut self, hdr: &PacketHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn reset(&mut self) {
        self.control.clear();
        self.control.push_back((OP_RST, 0));
        self.state = State::Closed;
    }

    /// Handles a packet from the guest for this connection.
    pub fn on_guest_packet(&mut self, hdr: &PacketHeader, payload: &[u8]) {
        self.update_peer_credit(hdr);
        match (hdr.op, &self.state) {
            (OP_RST, _) => {
                self.control.clear();
                self.state = State::Closed;
            }
            (OP_RESPONSE, State::Connecting) => {
                self.state = State::AwaitingOk;
            }
            (OP_RW, State::AwaitingOk) => self.on_ok_line(payload),
            (OP_RW, State::Established) => self.on_guest_data(payload),
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, State::Established | State::AwaitingOk) => {
                // One pending update answers any number of requests: the guest could
                // otherwise grow this queue without bound by never posting receive buffers
                // (found by the hostile-guest test).
                if !self.control.contains(&(OP_CREDIT_UPDATE, 0)) {
                    self.control.push_back((OP_CREDIT_UPDATE, 0));
                }
            }
            (OP_SHUTDOWN, State::Established | State::AwaitingOk) => {
                self.guest_no_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.guest_no_recv |= hdr.flags & SHUTDOWN_RCV != 0;
                if self.guest_no_send && self.guest_no_recv {
                    // Both directions closed: acknowledge with RST (the Linux driver waits
                    // for it) and drop what the host had not taken yet.
                    self.reset();
                } else if self.guest_no_send && self.tx_buf.is_empty() {
                    let _ = self.stream.shutdown(Shutdown::Write);
                }
            }
            (op, state) => {
                log::debug!("vsock: op {op} in state {state:?}; resetting");
                self.reset();
            }
        }
    }

    fn on_ok_line(&mut self, payload: &[u8]) {
        let Some(nl) = payload.iter().position(|b| *b == b'\n') else {
            self.ok_line.extend_from_slice(payload);
            self.consumed(payload.len());
            if self.ok_line.len() > MAX_OK_LINE {
                self.reset();
            }
            return;
        };
        self.ok_line.extend_from_slice(&payload[..nl]);
        self.consumed(nl + 1);
        if self.ok_line == b"OK" {
            self.state = State::Established;
            self.on_guest_data(&payload[nl + 1..]);
        } else {
            log::info!(
                "vsock: guest refused forwarded connection: {}",
                String::from_utf8_lossy(&self.ok_line)
            );
            self.reset();
        }
    }

    fn consumed(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn on_guest_data(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        if self.guest_no_send {
            self.reset();
            return;
        }
        let mut rest = payload;
        if self.tx_buf.is_empty() {
            match self.stream.write(rest) {
                Ok(n) => {
                    self.consumed(n);
                    rest = &rest[n..];
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("vsock: host stream write failed: {e}");
                    self.reset();
                    return;
                }
            }
        }
        if self.tx_buf.len() + rest.len() > TX_BUF_SIZE as usize {
            guest_warn!(
                "vsock: guest exceeded its credit on port {}",
                self.local_port
            );
            self.reset();
            return;
        }
        self.tx_buf.extend(rest);
        self.maybe_credit_update();
    }

    fn maybe_credit_update(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
            && !self.control.contains(&(OP_CREDIT_UPDATE, 0))
        {
            self.control.push_back((OP_CREDIT_UPDATE, 0));
        }
    }

    /// Whether buffered guest data waits for the host stream.
    pub fn wants_write(&self) -> bool {
        !self.tx_buf.is_empty() && self.state != State::Closed
    }

    /// Whether host data may be read now.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.guest_no_recv
            && self.peer_credit() > 0
    }

    /// Whether a packet is ready without reading the host stream.
    pub fn has_control(&self) -> bool {
        !self.control.is_empty() || (self.state == State::AwaitingOk && !self.preamble.is_empty())
    }

    /// The host stream can take data: flush buffered guest data.
    pub fn on_host_writable(&mut self) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.consumed(n);
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    break
                }
                Err(e) => {
                    log::debug!("vsock: host stream write failed: {e}");
                    self.reset();
                    return;
                }
            }
        }
        if self.tx_buf.is_empty() && self.guest_no_send {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        self.maybe_credit_update();
    }

    /// The next packet for the guest, reading at most `max_payload` bytes from the host stream
    /// when `host_readable`. Returns `None` when nothing is ready (a read that would block
    /// clears readiness by returning `None`).
    pub fn next_outgoing(&mut self, max_payload: usize, host_readable: bool) -> Option<Outgoing> {
        if let Some((op, flags)) = self.control.pop_front() {
            return Some(Outgoing::Control(op, flags));
        }
        if self.state == State::AwaitingOk && !self.preamble.is_empty() {
            let n = self
                .preamble
                .len()
                .min(max_payload)
                .min(usize::try_from(self.peer_credit()).unwrap_or(usize::MAX));
            if n == 0 {
                return None;
            }
            let data: Vec<u8> = self.preamble.drain(..n).collect();
            self.rx_cnt += Wrapping(u32::try_from(n).unwrap_or(0));
            return Some(Outgoing::Data(data));
        }
        if !host_readable || !self.wants_read() {
            return None;
        }
        let n = max_payload.min(usize::try_from(self.peer_credit()).unwrap_or(usize::MAX));
        let mut buf = vec![0u8; n];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.host_eof = true;
                Some(Outgoing::Control(OP_SHUTDOWN, SHUTDOWN_SEND))
            }
            Ok(n) => {
                buf.truncate(n);
                self.rx_cnt += Wrapping(u32::try_from(n).unwrap_or(0));
                Some(Outgoing::Data(buf))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                None
            }
            Err(e) => {
                log::debug!("vsock: host stream read failed: {e}");
                self.state = State::Closed;
                Some(Outgoing::Control(OP_RST, 0))
            }
        }
    }

    /// Whether the connection can be dropped (closed and nothing left to send).
    pub fn is_finished(&self) -> bool {
        self.state == State::Closed && self.control.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (HostStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (HostStream::Unix(a), b)
    }

    fn hdr(op: u16, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
        PacketHeader {
            op,
            flags,
            buf_alloc,
            fwd_cnt,
            type_: 1,
            src_port: 7000,
            ..Default::default()
        }
    }

    #[test]
    fn credit_request_flood_queues_one_update() {
        let (s, _peer) = pair();
        let mut c = Connection::guest_initiated(1030, s, &hdr(OP_REQUEST, 0, 4096, 0));
        for _ in 0..10_000 {
            c.on_guest_packet(&hdr(OP_CREDIT_REQUEST, 0, 4096, 0), &[]);
        }
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Control(OP_RESPONSE, 0))
        );
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Control(OP_CREDIT_UPDATE, 0))
        );
        assert_eq!(c.next_outgoing(100, false), None);
        // Answered: the next request queues a new update.
        c.on_guest_packet(&hdr(OP_CREDIT_REQUEST, 0, 4096, 0), &[]);
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Control(OP_CREDIT_UPDATE, 0))
        );
    }

    #[test]
    fn guest_initiated_flow_with_credit() {
        let (s, mut peer) = pair();
        let mut c = Connection::guest_initiated(1025, s, &hdr(OP_REQUEST, 0, 10, 0));
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Control(OP_RESPONSE, 0))
        );
        assert_eq!(c.credit_fields(), (TX_BUF_SIZE, 0));
        // Guest data reaches the host.
        c.on_guest_packet(&hdr(OP_RW, 0, 10, 0), b"ping");
        let mut b = [0u8; 4];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        assert_eq!(c.credit_fields().1, 4);
        // Host data is limited by the guest's 10-byte buffer.
        peer.write_all(b"0123456789abcdef").unwrap();
        assert_eq!(
            c.next_outgoing(100, true),
            Some(Outgoing::Data(b"0123456789".to_vec()))
        );
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.wants_read());
        assert_eq!(c.next_outgoing(100, true), None);
        // The guest consumed 6 bytes.
        c.on_guest_packet(&hdr(OP_CREDIT_UPDATE, 0, 10, 6), &[]);
        assert_eq!(
            c.next_outgoing(100, true),
            Some(Outgoing::Data(b"abcdef".to_vec()))
        );
        // Credit request is answered.
        c.on_guest_packet(&hdr(OP_CREDIT_REQUEST, 0, 10, 16), &[]);
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Control(OP_CREDIT_UPDATE, 0))
        );
        // Host EOF becomes SHUTDOWN(SEND); guest full shutdown is answered with RST.
        drop(peer);
        assert_eq!(
            c.next_outgoing(100, true),
            Some(Outgoing::Control(OP_SHUTDOWN, SHUTDOWN_SEND))
        );
        c.on_guest_packet(&hdr(OP_SHUTDOWN, SHUTDOWN_SEND | SHUTDOWN_RCV, 10, 16), &[]);
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Control(OP_RST, 0))
        );
        assert!(c.is_finished());
    }

    #[test]
    fn guest_exceeding_credit_is_reset() {
        let (s, _peer) = pair();
        let mut c = Connection::guest_initiated(1025, s, &hdr(OP_REQUEST, 0, 10, 0));
        let _ = c.next_outgoing(100, false);
        // The host never reads: the socket buffer fills, then tx_buf, then the guest is over.
        let chunk = vec![0u8; 64 * 1024];
        let mut reset = false;
        for _ in 0..64 {
            c.on_guest_packet(&hdr(OP_RW, 0, 10, 0), &chunk);
            if *c.state() == State::Closed {
                reset = true;
                break;
            }
        }
        assert!(reset);
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Control(OP_RST, 0))
        );
    }

    #[test]
    fn host_initiated_preamble_and_ok_line() {
        let (s, mut peer) = pair();
        let mut c = Connection::host_initiated(50000, 1024, s, b"CONNECT 8080\n".to_vec());
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Control(OP_REQUEST, 0))
        );
        assert_eq!(c.next_outgoing(100, false), None);
        c.on_guest_packet(&hdr(OP_RESPONSE, 0, 4096, 0), &[]);
        assert_eq!(*c.state(), State::AwaitingOk);
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Data(b"CONNECT 8080\n".to_vec()))
        );
        // Host data does not flow before OK.
        peer.write_all(b"GET /").unwrap();
        assert_eq!(c.next_outgoing(100, true), None);
        // OK split over two packets, followed by payload for the host.
        c.on_guest_packet(&hdr(OP_RW, 0, 4096, 13), b"O");
        c.on_guest_packet(&hdr(OP_RW, 0, 4096, 13), b"K\nhello");
        assert_eq!(*c.state(), State::Established);
        let mut b = [0u8; 5];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(
            c.next_outgoing(100, true),
            Some(Outgoing::Data(b"GET /".to_vec()))
        );
    }

    #[test]
    fn refused_forward_resets() {
        let (s, _peer) = pair();
        let mut c = Connection::host_initiated(50000, 1024, s, b"CONNECT 1\n".to_vec());
        let _ = c.next_outgoing(100, false);
        c.on_guest_packet(&hdr(OP_RESPONSE, 0, 4096, 0), &[]);
        let _ = c.next_outgoing(100, false);
        c.on_guest_packet(&hdr(OP_RW, 0, 4096, 0), b"ERR connection refused\n");
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Control(OP_RST, 0))
        );
        assert!(c.is_finished());
    }

    #[test]
    fn unexpected_ops_reset_and_rst_closes_silently() {
        let (s, _peer) = pair();
        let mut c = Connection::host_initiated(50000, 1024, s, Vec::new());
        let _ = c.next_outgoing(100, false);
        c.on_guest_packet(&hdr(OP_RW, 0, 4096, 0), b"early data");
        assert_eq!(
            c.next_outgoing(100, false),
            Some(Outgoing::Control(OP_RST, 0))
        );
        let (s, _peer) = pair();
        let mut c = Connection::guest_initiated(1025, s, &hdr(OP_REQUEST, 0, 10, 0));
        c.on_guest_packet(&hdr(OP_RST, 0, 0, 0), &[]);
        assert!(c.is_finished());
        assert_eq!(c.next_outgoing(100, true), None);
    }
}
