//! The virtio-blk worker loop.

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::backend::DiskFile;
use super::device::process_queue;
use super::BlockError;
use crate::devices::virtio::interrupt::Interrupt;
use crate::devices::virtio::worker::{drain, poll, Interest};
use crate::vmm::memory::GuestMemory;

/// Processes the queue on every notification until `kill` fires.
pub fn run(
    mem: &GuestMemory,
    mut queue: Queue,
    queue_evt: &EventFd,
    kill: &EventFd,
    disk: &DiskFile,
    interrupt: &Interrupt,
) -> Result<(), BlockError> {
    // Requests may already be queued when the driver sets DRIVER_OK.
    process_queue(mem, &mut queue, disk, interrupt)?;
    loop {
        let ready = poll(&[Interest::read(queue_evt), Interest::read(kill)], -1)
            .map_err(BlockError::Poll)?;
        if ready[1].readable {
            return Ok(());
        }
        if ready[0].readable {
            drain(queue_evt);
            process_queue(mem, &mut queue, disk, interrupt)?;
        }
    }
}
