//! The vsock worker: moves packets between the virtqueues and the muxer.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Muxer, Token};
use super::packet::{RxBuffer, TxPacket};
use super::{VsockError, MAX_PKT_PAYLOAD};
use crate::devices::virtio::interrupt::Interrupt;
use crate::devices::virtio::rate_limit::guest_warn;
use crate::devices::virtio::worker::{drain, poll, Interest, Ready};

/// Hands every pending guest packet to the muxer.
pub fn process_tx<M: GuestMemory>(
    mem: &M,
    queue: &mut Queue,
    muxer: &mut Muxer,
    interrupt: &Interrupt,
) -> Result<(), VsockError> {
    let max = usize::from(queue.size());
    let mut used_any = false;
    loop {
        let chain = queue.iter(mem).map_err(VsockError::Queue)?.next();
        let Some(chain) = chain else { break };
        let head = chain.head_index();
        match TxPacket::parse(chain, max) {
            Ok(pkt) => muxer.handle_guest_packet(&pkt),
            Err(e) => guest_warn!("vsock: rejected guest packet: {e}"),
        }
        queue.add_used(mem, head, 0).map_err(VsockError::Queue)?;
        used_any = true;
    }
    if used_any && queue.needs_notification(mem).map_err(VsockError::Queue)? {
        interrupt.signal_used();
    }
    Ok(())
}

/// Fills receive buffers with the muxer's packets; returns false when the guest ran out of
/// buffers while packets were still pending.
pub fn process_rx<M: GuestMemory>(
    mem: &M,
    queue: &mut Queue,
    muxer: &mut Muxer,
    interrupt: &Interrupt,
) -> Result<bool, VsockError> {
    let max = usize::from(queue.size());
    let mut used_any = false;
    let mut buffers_left = true;
    while muxer.has_pending() {
        let chain = queue.iter(mem).map_err(VsockError::Queue)?.next();
        let Some(chain) = chain else {
            buffers_left = false;
            break;
        };
        let head = chain.head_index();
        let buf = match RxBuffer::parse(chain, max) {
            Ok(b) => b,
            Err(e) => {
                guest_warn!("vsock: rejected receive buffer: {e}");
                queue.add_used(mem, head, 0).map_err(VsockError::Queue)?;
                used_any = true;
                continue;
            }
        };
        let Some((hdr, payload)) = muxer.next_rx_packet(buf.payload_room().min(MAX_PKT_PAYLOAD))
        else {
            queue.go_to_previous_position();
            break;
        };
        let used = buf.write(mem, &hdr, &payload).unwrap_or_else(|e| {
            guest_warn!("vsock: cannot deliver a packet: {e}");
            0
        });
        queue.add_used(mem, head, used).map_err(VsockError::Queue)?;
        used_any = true;
    }
    if used_any && queue.needs_notification(mem).map_err(VsockError::Queue)? {
        interrupt.signal_used();
    }
    Ok(buffers_left)
}

/// Everything the worker owns.
#[derive(Debug)]
pub struct VsockWorker<'a, M> {
    /// Guest memory.
    pub mem: &'a M,
    /// Receive queue.
    pub rx: Queue,
    /// Transmit queue.
    pub tx: Queue,
    /// Receive-queue notifications.
    pub rx_evt: EventFd,
    /// Transmit-queue notifications.
    pub tx_evt: EventFd,
    /// Event-queue notifications (the device sends no events; drained only).
    pub ev_evt: EventFd,
    /// The host side.
    pub muxer: &'a mut Muxer,
    /// Device interrupt.
    pub interrupt: &'a Interrupt,
}

impl<M: GuestMemory> VsockWorker<'_, M> {
    /// Runs until `kill` fires.
    pub fn run(mut self, kill: &EventFd) -> Result<(), VsockError> {
        let mut rx_buffers = true;
        loop {
            process_tx(self.mem, &mut self.tx, self.muxer, self.interrupt)?;
            if rx_buffers {
                rx_buffers = process_rx(self.mem, &mut self.rx, self.muxer, self.interrupt)?;
            }
            let muxer_interests = self.muxer.interests(rx_buffers);
            let mut interests = vec![
                Interest::read(kill),
                Interest::read(&self.rx_evt),
                Interest::read(&self.tx_evt),
                Interest::read(&self.ev_evt),
            ];
            interests.extend(muxer_interests.iter().map(|(i, _)| *i));
            let ready = poll(&interests, -1).map_err(VsockError::Poll)?;
            if ready[0].readable {
                return Ok(());
            }
            if ready[1].readable {
                drain(&self.rx_evt);
                rx_buffers = true;
            }
            if ready[2].readable {
                drain(&self.tx_evt);
            }
            if ready[3].readable {
                drain(&self.ev_evt);
            }
            let tagged: Vec<(Token, Ready)> = muxer_interests
                .iter()
                .map(|(_, t)| *t)
                .zip(ready[4..].iter().copied())
                .collect();
            self.muxer.on_ready(&tagged);
        }
    }
}
