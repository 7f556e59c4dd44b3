//! The virtio-net worker loop: waits for queue notifications, the socket and the kill
//! eventfd, and runs the engine's queue processing.
//!
//! The socket is polled for reading only while the guest has receive buffers (otherwise
//! frames stay in the socket, which pushes back on the peer), and for writing only while
//! transmit bytes wait (the transmit queue is not read meanwhile). After a hang-up the socket
//! is not polled at all.

use std::os::fd::AsRawFd;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::device::NetEngine;
use super::NetError;
use crate::devices::virtio::interrupt::Interrupt;
use crate::devices::virtio::worker::{drain, poll, Interest};
use crate::vmm::memory::GuestMemory;

/// The device's two queues and their notification eventfds.
#[derive(Debug)]
pub struct Queues {
    /// Receive queue.
    pub rx: Queue,
    /// Transmit queue.
    pub tx: Queue,
    /// Receive queue notifications.
    pub rx_evt: EventFd,
    /// Transmit queue notifications.
    pub tx_evt: EventFd,
}

/// Runs the device until `kill` fires.
pub fn run(
    mem: &GuestMemory,
    mut q: Queues,
    kill: &EventFd,
    engine: &mut NetEngine,
    interrupt: &Interrupt,
) -> Result<(), NetError> {
    // Buffers and frames may already be queued when the driver sets DRIVER_OK.
    engine.process_tx(mem, &mut q.tx, interrupt)?;
    engine.process_rx(mem, &mut q.rx, interrupt)?;
    engine.check_link(interrupt);
    loop {
        let mut interests = vec![
            Interest::read(kill),
            Interest::read(&q.rx_evt),
            Interest::read(&q.tx_evt),
        ];
        let (read, write) = (engine.wants_read(), engine.wants_write());
        if read || write {
            interests.push(Interest {
                fd: engine.backend().as_raw_fd(),
                read,
                write,
            });
        }
        let ready = poll(&interests, -1).map_err(NetError::Poll)?;
        if ready[0].readable {
            return Ok(());
        }
        let sock = ready.get(3).copied().unwrap_or_default();
        if ready[2].readable {
            drain(&q.tx_evt);
        }
        if ready[2].readable || sock.writable || (write && sock.hangup) {
            engine.process_tx(mem, &mut q.tx, interrupt)?;
        }
        if ready[1].readable {
            drain(&q.rx_evt);
        }
        if ready[1].readable || sock.readable {
            engine.process_rx(mem, &mut q.rx, interrupt)?;
        }
        engine.check_link(interrupt);
    }
}
