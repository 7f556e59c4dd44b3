//! The VMM's input: a plain, already validated description of one microVM.
//!
//! The C API layer (`capi`, `resources`) builds this; nothing here parses user strings.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::devices::virtio::vsock::HostServices;
use crate::vmm::loader::{FirmwareLayout, LoadedGuest};
use crate::vmm::memory::GuestMemory;

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
    /// Write end for guest output (usually stdout): the workload's stdout only.
    pub output: OwnedFd,
    /// Write end for the guest's standard error (usually stderr): the workload's stderr and
    /// the init's diagnostics, at the level the host's logger shows.
    pub errors: OwnedFd,
}

/// The network device's host side (the last virtio-mmio slot; without it the slot holds a
/// placeholder).
#[derive(Debug)]
pub struct NetDeviceConfig {
    /// A connected unix stream socket speaking passt/QEMU stream framing.
    pub socket: std::os::unix::net::UnixStream,
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// virtio-net feature bits the caller asked for (ANDed with what the device supports).
    pub features: u64,
}

/// Everything the VMM needs to boot one guest.
#[derive(Debug)]
pub struct VmConfig {
    /// Number of vCPUs (1..=32).
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub ram_mib: u32,
    /// Guest kernel: a bzImage or an ELF `vmlinux`.
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
    /// The network device; `None` leaves a placeholder in its slot.
    pub net: Option<NetDeviceConfig>,
    /// A confidential launch: boot through the reset-vector firmware and run the TEE launch
    /// sequence on the loaded memory before any vCPU starts. `None` for a plain boot.
    pub tee: Option<TeeBoot>,
    /// Seccomp filters and least privilege once the guest is set up
    /// (`crate::vmm::seccomp`, docs/hardening.md). The process is then the VMM's: at most one
    /// such VM per process, and nothing else may run in it afterwards.
    pub seccomp: bool,
}

/// Errors a TEE hook returns to the VMM.
pub type TeeHookError = Box<dyn std::error::Error + Send + Sync>;

/// The TEE side of a confidential launch, called by the VMM at fixed points of the boot
/// (`crate::launch::sequence` implements it; docs/measurement.md has the order).
pub trait TeeLaunch: Send {
    /// The `KVM_CREATE_VM` type.
    fn vm_type(&self) -> u64;
    /// Whether [`TeeLaunch::vm_created`] creates the KVM memory slots (SNP guest_memfd);
    /// otherwise the VMM registers plain slots before calling it.
    fn creates_memory_slots(&self) -> bool;
    /// Once the VM exists, before any vCPU: KVM_SEV_INIT2 and memory registration.
    fn vm_created(
        &mut self,
        vm: &std::sync::Arc<kvm_ioctls::VmFd>,
        mem: &GuestMemory,
    ) -> Result<(), TeeHookError>;
    /// Once guest memory holds everything the guest boots from: LAUNCH_START and the memory
    /// launch updates.
    fn loaded(&mut self, mem: &GuestMemory, loaded: &LoadedGuest) -> Result<(), TeeHookError>;
    /// Once every vCPU exists with its reset registers, before any runs: VMSAs, MEASURE,
    /// attestation and SECRET, FINISH.
    fn vcpus_ready(&mut self, mem: &GuestMemory) -> Result<(), TeeHookError>;
    /// Handles the guest's private/shared conversions at run time (SNP on hardware).
    fn memory_converter(
        &self,
    ) -> Option<std::sync::Arc<dyn crate::tee::hardware::convert::MemoryConverter>>;
    /// Records the VMM-side phases (memory allocation, image load) of the launch.
    fn vmm_phase(
        &mut self,
        phase: crate::tee::phases::Phase,
        wall: std::time::Duration,
        bytes: u64,
    );
}

/// The VMM side of a confidential launch (see `crate::tee`).
pub struct TeeBoot {
    /// The verified kernel bytes (used instead of `kernel_path`, so what was verified is what
    /// is loaded and measured).
    pub kernel: Vec<u8>,
    /// The verified bundle initrd (used instead of `initrd_path`).
    pub initrd: Vec<u8>,
    /// Firmware page tables and SNP pages.
    pub layout: FirmwareLayout,
    /// The launch sequence (measure, inject secrets, finish).
    pub launch: Box<dyn TeeLaunch>,
    /// CPUID leaf 1 EAX every vCPU presents (the TEE config's named vCPU model), also the
    /// reset RDX that the measured VMSAs hold.
    pub vcpu_sig: u32,
}

impl std::fmt::Debug for TeeBoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeBoot")
            .field("kernel_len", &self.kernel.len())
            .field("initrd_len", &self.initrd.len())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}
