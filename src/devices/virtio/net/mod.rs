//! virtio-net (virtio 1.2, 5.1) over a unix stream socket that speaks passt's and QEMU's
//! stream framing (each Ethernet frame preceded by its length as a 32-bit big-endian
//! integer).
//!
//! `backend.rs` is the framed socket (non-blocking, partial reads and writes, hang-up),
//! `device.rs` holds the device, its configuration space and the queue processing,
//! `event_handler.rs` is the worker loop. The guest's `virtio_net_hdr_v1` (12 bytes) is
//! stripped on transmit and prepended zeroed on receive: no offloads are offered, so the
//! header carries nothing the peer needs. The host side is untrusted in a confidential
//! launch (docs/threat-model.md): it sees and can change every frame.

pub mod backend;
pub mod device;
pub mod event_handler;

pub use backend::StreamBackend;
pub use device::{NetEngine, VirtioNet};

/// Queue size of the receive and transmit queues.
pub const QUEUE_SIZE: u16 = 256;
/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;

/// Length of `struct virtio_net_hdr_v1` (VIRTIO_F_VERSION_1, with or without mergeable
/// buffers).
pub const NET_HDR_LEN: usize = 12;
/// Shortest Ethernet frame accepted (destination, source, EtherType).
pub const MIN_FRAME_LEN: usize = 14;
/// Longest Ethernet frame accepted: a 65535-byte IP packet plus an Ethernet header and a VLAN
/// tag (QEMU's `NET_BUFSIZE` less its header, passt's 65520-byte MTU fits).
pub const MAX_FRAME_LEN: usize = 65550;
/// The MTU the device announces (`VIRTIO_NET_F_MTU`): passt's default.
pub const DEVICE_MTU: u16 = 65520;

/// Feature bit: the device reports its maximum MTU in the configuration space.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// Feature bit: the driver may merge receive buffers (a frame spans several chains; the
/// header's `num_buffers` counts them).
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// Feature bit: the device has a MAC address in the configuration space.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature bit: the configuration space's `status` field is valid (link up/down).
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// `status` bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Optional feature bits a caller may ask for (`krun_add_net_unixstream`'s `features`, which
/// are virtio-net feature bits); the caller's bits are ANDed with this. No offloads
/// (checksum, TSO, UFO) are implemented, so nothing optional is offered yet; the device
/// always offers MAC, MTU and STATUS.
pub const OPTIONAL_FEATURES: u64 = 0;

/// Errors of the network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A queue's rings are broken (for example an available index beyond the queue size).
    #[error("net queue is broken")]
    Queue(#[source] virtio_queue::Error),
    /// Waiting for events failed.
    #[error("cannot poll network device events")]
    Poll(#[source] std::io::Error),
    /// Setting up the socket failed.
    #[error("cannot set up the network socket")]
    Socket(#[source] std::io::Error),
}

pub use crate::devices::virtio::rate_limit::RateLimitedLog;

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac(&[0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee]),
            "5a:94:ef:e4:0c:ee"
        );
    }
}
