//! virtio-console (hvc0) wired to host file descriptors (virtio 1.2, 5.3).
//!
//! One port, no multiport: queue 0 carries guest input (receiveq), queue 1 guest output
//! (transmitq). End of input is not an error and never ends the host process: the device just
//! stops reading.

pub mod device;
pub mod event_handler;
pub mod terminal;

pub use device::VirtioConsole;
pub use terminal::TerminalGuard;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (host to guest).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (guest to host).
pub const TX_QUEUE: usize = 1;
/// Largest chunk moved per read from the input fd.
pub const RX_CHUNK: usize = 4096;

/// Errors of the console device.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A queue's rings are broken.
    #[error("console queue is broken")]
    Queue(#[source] virtio_queue::Error),
    /// Waiting for events failed.
    #[error("cannot poll console events")]
    Poll(#[source] std::io::Error),
    /// Reading or changing the terminal mode failed.
    #[error("cannot change the terminal mode")]
    Termios(#[source] std::io::Error),
}
