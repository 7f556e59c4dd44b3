//! Virtio transports. Only virtio-mmio (version 2) is provided.

pub mod mmio;
