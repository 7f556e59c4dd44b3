//! vsock: `TxPacket::parse` and `RxBuffer::parse` on the first chains (with their
//! invariants), then a muxer with host services fed structured guest packets, the transmit
//! queue (`process_tx`), one poll round of its host streams, and the receive queue
//! (`process_rx`); every packet the muxer hands to the guest is checked.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use krun_sev::devices::virtio::interrupt::Interrupt;
use krun_sev::devices::virtio::vsock::event_handler::{process_rx, process_tx};
use krun_sev::devices::virtio::vsock::muxer::{Muxer, MAX_CONNECTIONS};
use krun_sev::devices::virtio::vsock::packet::{PacketHeader, RxBuffer, TxPacket, HEADER_LEN};
use krun_sev::devices::virtio::vsock::{
    GuestPortHandler, HostServices, HostStream, GUEST_CID, HOST_CID, MAX_PKT_PAYLOAD,
    PORT_ATTESTATION, PORT_REPORT, TYPE_STREAM,
};
use krun_sev::devices::virtio::worker::poll;
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::queue::{Mem, QueueInput};

#[derive(Debug, Arbitrary)]
pub struct Input {
    /// Packets handed to the muxer directly (as parsed by `TxPacket::parse`).
    pub packets: Vec<Packet>,
    pub tx: QueueInput,
    pub rx: QueueInput,
    /// Bytes the host side of each accepted connection sends toward the guest.
    pub host_bytes: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
pub enum Cid {
    Guest,
    Host,
    Other(u64),
}

impl Cid {
    fn value(&self) -> u64 {
        match self {
            Cid::Guest => GUEST_CID,
            Cid::Host => HOST_CID,
            Cid::Other(c) => *c,
        }
    }
}

/// A guest packet with a header that is mostly plausible.
#[derive(Debug, Arbitrary)]
pub struct Packet {
    pub src_cid: Cid,
    pub dst_cid: Cid,
    /// Guest port: a few values, so packets hit existing connections.
    pub src_port: u8,
    /// Host port: 1025 connects, 1026 fails to connect, anything else has no service.
    pub dst_port: DstPort,
    pub stream: bool,
    /// 0..=7 (the defined ops and one undefined).
    pub op: u8,
    pub flags: u8,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
pub enum DstPort {
    Connects,
    Fails,
    Other(u32),
}

impl Packet {
    fn to_tx(&self) -> TxPacket {
        let payload = self.payload[..self.payload.len().min(MAX_PKT_PAYLOAD)].to_vec();
        TxPacket {
            hdr: PacketHeader {
                src_cid: self.src_cid.value(),
                dst_cid: self.dst_cid.value(),
                src_port: 5000 + u32::from(self.src_port % 4),
                dst_port: match self.dst_port {
                    DstPort::Connects => PORT_ATTESTATION,
                    DstPort::Fails => PORT_REPORT,
                    DstPort::Other(p) => p,
                },
                len: payload.len() as u32,
                type_: if self.stream { TYPE_STREAM } else { 2 },
                op: u16::from(self.op % 8),
                flags: u32::from(self.flags % 4),
                buf_alloc: self.buf_alloc,
                fwd_cnt: self.fwd_cnt,
            },
            payload,
        }
    }
}

/// Connects to one end of a socket pair; keeps the other end (writing `greeting` into it).
#[derive(Debug)]
struct PairService {
    peers: Mutex<Vec<UnixStream>>,
    greeting: Vec<u8>,
}

impl GuestPortHandler for PairService {
    fn connect(&self, _guest_port: u32) -> std::io::Result<HostStream> {
        use std::io::Write;
        let (ours, mut theirs) = UnixStream::pair()?;
        theirs.set_nonblocking(true)?;
        let _ = theirs.write(&self.greeting);
        if let Ok(mut peers) = self.peers.lock() {
            peers.push(theirs);
        }
        Ok(HostStream::Unix(ours))
    }
}

#[derive(Debug)]
struct Refuses;

impl GuestPortHandler for Refuses {
    fn connect(&self, _guest_port: u32) -> std::io::Result<HostStream> {
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }
}

pub fn run(input: &Input) {
    let tx_mem = input.tx.memory();
    let rx_mem = input.rx.memory();
    check_first_tx(&tx_mem, &input.tx);
    check_first_rx(&rx_mem, &input.rx);
    let (Some(mut txq), Some(mut rxq)) = (input.tx.queue(&tx_mem), input.rx.queue(&rx_mem)) else {
        return;
    };

    let mut services = HostServices::new();
    services.insert(
        PORT_ATTESTATION,
        Arc::new(PairService {
            peers: Mutex::new(Vec::new()),
            greeting: input.host_bytes.clone(),
        }),
    );
    services.insert(PORT_REPORT, Arc::new(Refuses));
    let Ok(mut muxer) = Muxer::new(services, &[]) else {
        return;
    };
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let irq = Interrupt::new(irq);
    for p in &input.packets {
        muxer.handle_guest_packet(&p.to_tx());
        assert!(muxer.connection_count() <= MAX_CONNECTIONS);
    }
    // Queue errors mean broken rings (the device then needs a reset); only panics are bugs.
    let _ = process_tx(&tx_mem, &mut txq, &mut muxer, &irq);
    let interests = muxer.interests(true);
    let fds: Vec<_> = interests.iter().map(|(i, _)| *i).collect();
    if let Ok(ready) = poll(&fds, 0) {
        let ready: Vec<_> = interests.into_iter().map(|(_, t)| t).zip(ready).collect();
        muxer.on_ready(&ready);
    }
    let _ = process_rx(&rx_mem, &mut rxq, &mut muxer, &irq);
    for _ in 0..64 {
        let max = 4096;
        let Some((hdr, payload)) = muxer.next_rx_packet(max) else {
            break;
        };
        assert!(payload.len() <= max, "{hdr:?}");
        assert_eq!(hdr.len as usize, payload.len(), "{hdr:?}");
        assert_eq!((hdr.src_cid, hdr.dst_cid), (HOST_CID, GUEST_CID), "{hdr:?}");
        assert_eq!(hdr.type_, TYPE_STREAM, "{hdr:?}");
    }
    assert!(muxer.connection_count() <= MAX_CONNECTIONS);
}

/// A parsed transmit packet carries exactly the payload its header announces.
fn check_first_tx(mem: &Mem, input: &QueueInput) {
    let Some(mut q) = input.queue(mem) else {
        return;
    };
    let max = usize::from(q.size());
    let Some(chain) = q.iter(mem).ok().and_then(|mut c| c.next()) else {
        return;
    };
    if let Ok(pkt) = TxPacket::parse(chain, max) {
        assert_eq!(pkt.hdr.len as usize, pkt.payload.len(), "{:?}", pkt.hdr);
        assert!(pkt.payload.len() <= MAX_PKT_PAYLOAD, "{:?}", pkt.hdr);
    }
}

/// A receive buffer the parser accepts takes a full packet of its announced room.
fn check_first_rx(mem: &Mem, input: &QueueInput) {
    let Some(mut q) = input.queue(mem) else {
        return;
    };
    let max = usize::from(q.size());
    let Some(chain) = q.iter(mem).ok().and_then(|mut c| c.next()) else {
        return;
    };
    if let Ok(buf) = RxBuffer::parse(chain, max) {
        let n = buf.payload_room().min(4096);
        let hdr = PacketHeader {
            len: n as u32,
            ..Default::default()
        };
        let used = buf.write(mem, &hdr, &vec![0x5a; n]);
        assert_eq!(
            used.ok(),
            Some((HEADER_LEN + n) as u32),
            "room {}",
            buf.payload_room()
        );
    }
}
