//! virtio-blk over a raw image file (virtio 1.2, 5.2).
//!
//! `request.rs` parses a descriptor chain into a [`request::Request`] without doing I/O,
//! `backend.rs` does the file I/O, `device.rs` holds the device and processes the queue,
//! `event_handler.rs` is the worker loop.

pub mod backend;
pub mod device;
pub mod event_handler;
pub mod request;

pub use device::VirtioBlock;

/// Sector size the guest addresses in.
pub const SECTOR_SIZE: u64 = 512;
/// Sector shift.
pub const SECTOR_SHIFT: u32 = 9;
/// Queue size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the `GET_ID` answer.
pub const DISK_ID_LEN: usize = 20;

/// Feature bit: `seg_max` in the config space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Most data segments per request: the queue size minus header and status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Feature bit: the device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: the device supports `FLUSH`.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Errors of the block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Opening the image failed.
    #[error("cannot open the disk image")]
    Open(#[source] std::io::Error),
    /// Reading the image's metadata failed.
    #[error("cannot read the disk image's size")]
    Metadata(#[source] std::io::Error),
    /// The queue's rings are broken (for example an available index beyond the queue size).
    #[error("block queue is broken")]
    Queue(#[source] virtio_queue::Error),
    /// Waiting for events failed.
    #[error("cannot poll block device events")]
    Poll(#[source] std::io::Error),
}
