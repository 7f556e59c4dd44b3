//! Device models: the legacy serial log sink and the virtio devices on virtio-mmio.

pub mod serial;
pub mod virtio;

/// A device reached through guest MMIO (or port I/O) accesses, addressed relative to its base.
///
/// Implementations must treat every access as hostile guest input: no panics, any size, any
/// offset.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}
