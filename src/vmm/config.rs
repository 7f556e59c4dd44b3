//! The VMM's input: a plain, already validated description of one microVM.
//!
//! The C API layer (`capi`, `resources`) builds this; nothing here parses user strings.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::devices::virtio::vsock::HostServices;

/// A disk backed by a raw image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Path of the raw image.
    pub path: PathBuf,
    /// Attach read-only (`VIRTIO_BLK_F_RO`, writes fail with `IOERR`).
    pub read_only: bool,
}

/// One host TCP port forwarded into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    /// Host TCP port the VMM listens on (on all local addresses).
    pub host_port: u16,
    /// Guest TCP port the guest init connects to (`CONNECT <port>`).
    pub guest_port: u16,
}

/// How host ports reach the guest. `Exposed` keeps libkrun's "NULL port map" meaning: the
/// guest announces its listeners on vsock port 1027.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMap {
    /// Forward exactly these ports (an empty list forwards nothing).
    List(Vec<PortMapping>),
    /// Forward whatever the guest announces it listens on.
    Exposed,
}

/// The console's host side.
#[derive(Debug)]
pub struct ConsoleConfig {
    /// Read end for guest input (usually stdin). `None` gives the guest no input.
    pub input: Option<OwnedFd>,
    /// Write end for guest output (usually stdout).
    pub output: OwnedFd,
}

/// Everything the VMM needs to boot one guest.
#[derive(Debug)]
pub struct VmConfig {
    /// Number of vCPUs (1..=32).
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub ram_mib: u32,
    /// Guest kernel: an ELF `vmlinux`.
    pub kernel_path: PathBuf,
    /// Bundle initrd (gzip newc cpio), if any.
    pub initrd_path: Option<PathBuf>,
    /// Extra bytes appended to the initrd in guest memory (the launch segment: an
    /// uncompressed newc cpio built by the caller).
    pub initrd_append: Vec<u8>,
    /// Kernel command line; the VMM appends its `virtio_mmio.device=` entries.
    pub cmdline: String,
    /// Root disk, `/dev/vda`.
    pub root_disk: DiskConfig,
    /// Optional data disk, `/dev/vdb`.
    pub data_disk: Option<DiskConfig>,
    /// The only TCP address the attestation proxy (vsock port 1025) may connect to.
    pub attestation_target: Option<SocketAddr>,
    /// Port forwarding into the guest.
    pub port_map: PortMap,
    /// Handlers for further host vsock ports the guest may connect to (1026 report service,
    /// 1027 control stream), supplied by the TEE and port-map code.
    pub vsock_handlers: HostServices,
    /// Console fds.
    pub console: ConsoleConfig,
}
