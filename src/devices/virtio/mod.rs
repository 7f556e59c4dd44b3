//! Virtio devices (virtio 1.2, modern only) on the virtio-mmio transport.
//!
//! A device is inactive until the driver sets `DRIVER_OK`; then the transport hands it guest
//! memory, its queues, their notification eventfds and the interrupt ([`ActivateContext`]),
//! and the device starts a worker thread ([`activate::DeviceWorker`]). Guest input never panics: a bad request is
//! completed with zero length and logged, and a broken queue puts the device into
//! `DEVICE_NEEDS_RESET` ([`interrupt::Interrupt::set_needs_reset`]).

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::memory::GuestMemory;

pub mod activate;
pub mod block;
pub mod console;
pub mod descriptor;
pub mod interrupt;
pub mod net;
pub mod placeholder;
pub mod rate_limit;
pub mod transport;
pub mod vsock;
pub mod worker;

/// Device ID of a network device.
pub const TYPE_NET: u32 = 1;
/// Device ID of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Device ID of a console.
pub const TYPE_CONSOLE: u32 = 3;
/// Device ID of a vsock device.
pub const TYPE_VSOCK: u32 = 19;

/// Feature bit: virtio 1.x device.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the device accesses memory through the platform's DMA translation. Offered by
/// every device so that SEV guests bounce buffers through shared (unencrypted) memory without
/// a patched kernel.
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;
/// Feature bit: the driver may put a table of descriptors in one ring slot (virtio-queue
/// follows them; `descriptor::check_chain` validates them like direct ones).
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: used/avail event index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Status bit: the guest found the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Status bit: the guest has a driver.
pub const STATUS_DRIVER: u32 = 2;
/// Status bit: the driver is ready.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Status bit: feature negotiation done.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Status bit: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
/// Status bit: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 0x80;

/// Features every device offers on top of its own. `VIRTIO_RING_F_EVENT_IDX` is not among
/// them: a device offers it only if its queue loop re-arms notifications after every drain
/// (virtio-blk does); otherwise a stale `avail_event` would silence the driver.
pub const TRANSPORT_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_F_ACCESS_PLATFORM);

/// Errors shared by virtio devices at activation.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The driver set up fewer or more queues than the device has.
    #[error("wrong number of queues at activation")]
    QueueCount,
    /// A queue is not ready or does not fit guest memory.
    #[error("a queue is not ready or is invalid")]
    InvalidQueue,
    /// The device is already active.
    #[error("device is already active")]
    AlreadyActive,
    /// Cloning an eventfd or spawning the worker failed.
    #[error("cannot start the device worker")]
    Worker(#[source] std::io::Error),
}

/// What a device receives when the driver sets `DRIVER_OK`.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// The configured queues, in index order.
    pub queues: Vec<Queue>,
    /// One notification eventfd per queue (signalled on `QueueNotify`).
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<interrupt::Interrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// The virtio device ID.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device-specific features (the transport adds [`TRANSPORT_FEATURES`]).
    fn device_features(&self) -> u64;
    /// Reads the device configuration space. Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space. Unsupported writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError>;
    /// Stops the device's worker and returns it to the inactive state.
    fn reset(&mut self);
}

/// Copies `src[offset..]` into `data`, zero-filling what lies beyond `src`.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(avail) = src.get(start..) {
        let n = avail.len().min(data.len());
        data[..n].copy_from_slice(&avail[..n]);
    }
}
