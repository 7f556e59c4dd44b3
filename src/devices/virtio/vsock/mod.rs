//! virtio-vsock (virtio 1.2, 5.10): guest CID 3, host CID 2, stream sockets only.
//!
//! `packet.rs` parses guest packets; `connection.rs` is the per-connection state machine with
//! credit-based flow control; `muxer.rs` routes packets between the guest and host streams
//! (guest-initiated connections to the ports in [`backend::HostServices`], host-initiated
//! ones from the port map's TCP listeners); `device.rs`/`event_handler.rs` run it on the
//! virtqueues. The protocol on each port is in `docs/interfaces.md`.

pub mod backend;
pub mod connection;
pub mod control;
pub mod device;
pub mod event_handler;
pub mod muxer;
pub mod packet;

pub use backend::{GuestPortHandler, HostServices, HostStream, TcpForward};
pub use control::{ExposedPortsHandler, PortControl};
pub use device::VirtioVsock;

/// The guest's context ID.
pub const GUEST_CID: u64 = 3;
/// The host's context ID.
pub const HOST_CID: u64 = 2;
/// Guest port of the init's port forwarder (`CONNECT <port>\n`).
pub const PORT_FORWARDER: u32 = 1024;
/// Host port of the attestation proxy.
pub const PORT_ATTESTATION: u32 = 1025;
/// Host port of the PSP model report service.
pub const PORT_REPORT: u32 = 1026;
/// Host port of the exposed-ports control stream.
pub const PORT_CONTROL: u32 = 1027;
/// Host port the init connects to once it has the disk key: from then on the attestation
/// proxy and the report service refuse every connection, so the workload cannot attest.
pub const PORT_ATTESTATION_DONE: u32 = 1028;
/// Host port the init reads the network settings from (one JSON object, then EOF); only
/// served when the VM has a network (`launch::net`).
pub const PORT_NET_CONFIG: u32 = 1029;

/// Largest payload accepted from or sent to the guest.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Queue size of all three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// Event queue index.
pub const EVENT_QUEUE: usize = 2;

/// Socket type: stream.
pub const TYPE_STREAM: u16 = 1;
/// Operation: connection request.
pub const OP_REQUEST: u16 = 1;
/// Operation: connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Operation: reset.
pub const OP_RST: u16 = 3;
/// Operation: shutdown (flags say which directions).
pub const OP_SHUTDOWN: u16 = 4;
/// Operation: data.
pub const OP_RW: u16 = 5;
/// Operation: credit update.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Operation: credit request.
pub const OP_CREDIT_REQUEST: u16 = 7;
/// Shutdown flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A queue's rings are broken.
    #[error("vsock queue is broken")]
    Queue(#[source] virtio_queue::Error),
    /// Waiting for events failed.
    #[error("cannot poll vsock events")]
    Poll(#[source] std::io::Error),
    /// Binding a port-map listener failed.
    #[error("cannot listen on a forwarded host port")]
    Listen(#[source] std::io::Error),
}
