//! virtio-net: the transmit and receive queues of `NetEngine` over a socketpair whose peer
//! sends structured stream data (well-framed frames, frames with wrong lengths, raw bytes)
//! and may hang up, for a few rounds of `process_tx` / `process_rx`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use arbitrary::Arbitrary;
use krun_sev::devices::virtio::interrupt::Interrupt;
use krun_sev::devices::virtio::net::{
    NetEngine, StreamBackend, MAX_FRAME_LEN, MIN_FRAME_LEN, NET_HDR_LEN,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::queue::{Mem, QueueInput};

#[derive(Debug, Arbitrary)]
pub struct Input {
    pub tx: QueueInput,
    pub rx: QueueInput,
    /// What the peer sends, one piece per round.
    pub peer: Vec<Chunk>,
    /// Rounds of (peer sends, process_tx, process_rx, peer reads): 1 to 4.
    pub rounds: u8,
    /// The peer hangs up after this round (if below `rounds`).
    pub hang_up_after: u8,
    /// `VIRTIO_NET_F_MRG_RXBUF` negotiated: frames may span receive chains.
    pub mergeable: bool,
}

#[derive(Debug, Arbitrary)]
pub enum Chunk {
    /// A length prefix and that many bytes.
    Frame(Vec<u8>),
    /// A frame of a length near the limits (filled with a byte).
    Sized(SizedFrame, u8),
    /// Raw bytes (a prefix split across rounds, garbage lengths).
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
pub enum SizedFrame {
    Min,
    TooShort,
    Max,
    TooLong,
    Any(u16),
}

impl Chunk {
    fn bytes(&self) -> Vec<u8> {
        let framed = |payload: &[u8]| {
            let mut v = (payload.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(payload);
            v
        };
        match self {
            Chunk::Frame(p) => framed(p),
            Chunk::Sized(s, fill) => {
                let len = match s {
                    SizedFrame::Min => MIN_FRAME_LEN,
                    SizedFrame::TooShort => MIN_FRAME_LEN - 1,
                    SizedFrame::Max => MAX_FRAME_LEN,
                    SizedFrame::TooLong => MAX_FRAME_LEN + 1,
                    SizedFrame::Any(n) => usize::from(*n),
                };
                framed(&vec![*fill; len])
            }
            Chunk::Raw(b) => b.clone(),
        }
    }
}

/// The lengths of the used ring entries the device added since `from`, counted by the
/// device's own index: the guest can point receive buffers at the used ring, so the index in
/// memory may be frame bytes (reading up to 65535 entries per input was 93% of the target's
/// time). Only the last `size` entries are still in the ring.
fn used_lens(mem: &Mem, q: &Queue, from: u16) -> Vec<u32> {
    let ring = q.used_ring();
    let size = q.size().max(1);
    let added = q.next_used().wrapping_sub(from);
    let first = from.wrapping_add(added.saturating_sub(size));
    (0..added.min(size))
        .map(|k| {
            let slot = u64::from(first.wrapping_add(k) % size);
            mem.read_obj(GuestAddress(ring + 4 + 8 * slot + 4))
                .unwrap_or(0)
        })
        .collect()
}

pub fn run(input: &Input) {
    let tx_mem = input.tx.memory();
    let rx_mem = input.rx.memory();
    let (Some(mut txq), Some(mut rxq)) = (input.tx.queue(&tx_mem), input.rx.queue(&rx_mem)) else {
        return;
    };
    let Ok((ours, peer)) = UnixStream::pair() else {
        return;
    };
    let Ok(backend) = StreamBackend::new(ours) else {
        return;
    };
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let irq = Interrupt::new(irq);
    let mut engine = NetEngine::new(backend);
    engine.start_rx(input.mergeable);
    let _ = peer.set_nonblocking(true);
    let mut peer = Some(peer);
    let mut sent_to_peer = Vec::new();
    let mut rx_used_from = 0u16;
    let rounds = 1 + input.rounds % 4;
    for round in 0..rounds {
        if let (Some(p), Some(chunk)) = (peer.as_mut(), input.peer.get(usize::from(round))) {
            let _ = p.write(&chunk.bytes());
        }
        // Queue errors mean broken rings (the device then needs a reset); only panics and
        // broken invariants are bugs.
        let _ = engine.process_tx(&tx_mem, &mut txq, &irq);
        if engine.process_rx(&rx_mem, &mut rxq, &irq).is_ok() {
            for len in used_lens(&rx_mem, &rxq, rx_used_from) {
                let l = len as usize;
                // A merged frame's later chains hold any part of it.
                let shortest = if input.mergeable {
                    1
                } else {
                    NET_HDR_LEN + MIN_FRAME_LEN
                };
                assert!(
                    len == 0 || (shortest..=NET_HDR_LEN + MAX_FRAME_LEN).contains(&l),
                    "receive used length {len}"
                );
            }
            rx_used_from = rxq.next_used();
        }
        engine.check_link(&irq);
        if let Some(p) = peer.as_mut() {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = p.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sent_to_peer.extend_from_slice(&buf[..n]);
            }
        }
        if round == input.hang_up_after {
            peer = None;
        }
    }
    // What reached the peer is whole frames of accepted lengths (a trailing partial frame
    // only while the device still has bytes queued).
    let mut rest = sent_to_peer.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        assert!(
            (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len),
            "frame of {len} bytes sent"
        );
        if rest.len() < 4 + len {
            break;
        }
        rest = &rest[4 + len..];
    }
    if !rest.is_empty() {
        assert!(
            engine.wants_write() || peer.is_none(),
            "partial frame with nothing queued"
        );
    }
}
