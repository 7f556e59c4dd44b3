//! `Vmm::run`: builds the microVM from a [`VmConfig`], runs it, and returns the workload's
//! exit status.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::arch::layout::CMDLINE_KERNEL_LIMIT;

use crate::devices::serial::SerialSink;
use crate::devices::virtio::block::{BlockError, VirtioBlock};
use crate::devices::virtio::console::{ConsoleError, TerminalGuard, VirtioConsole};
use crate::devices::virtio::net::{NetError, VirtioNet};
use crate::devices::virtio::vsock::muxer::Muxer;
use crate::devices::virtio::vsock::{
    ExposedPortsHandler, GuestLogLevel, GuestStderr, PortControl, TcpForward, VirtioVsock,
    VsockError, PORT_ATTESTATION, PORT_CONTROL, PORT_STDERR,
};
use crate::tee::phases::Phase;
use crate::vmm::config::{PortMap, VmConfig};
use crate::vmm::device_manager::{DeviceManager, DeviceManagerError};
use crate::vmm::loader::{self, GuestImage, LoaderError};
use crate::vmm::memory::{self, MemoryError};
use crate::vmm::seccomp::{self, ThreadKind};
use crate::vmm::vstate::exit::{ExitState, StopReason};
use crate::vmm::vstate::vcpu::{self, BootEntry, VcpuError, VcpuShared};
use crate::vmm::vstate::vm::{Vm, VmError};

/// Most vCPUs a guest may have (the MP table must fit the EBDA).
pub const MAX_VCPUS: u8 = 32;
/// How long the attestation proxy waits for the broker's TCP connect.
const ATTESTATION_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The workload's exit status as the guest reported it (0..=255; 128+N for signal N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(pub u8);

/// Errors of a VM run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The vCPU count is 0 or above [`MAX_VCPUS`].
    #[error("vCPU count is out of range")]
    VcpuCount,
    /// RAM size overflows.
    #[error("RAM size is out of range")]
    RamSize,
    /// The kernel command line is too long or contains a NUL byte.
    #[error("kernel command line is too long or contains NUL")]
    Cmdline,
    /// Guest memory setup failed.
    #[error("cannot set up guest memory")]
    Memory(#[source] MemoryError),
    /// Loading the guest image failed.
    #[error("cannot load the guest image")]
    Load(#[source] LoaderError),
    /// The confidential launch sequence failed before the guest started.
    #[error("confidential launch failed")]
    Tee(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// KVM VM setup failed.
    #[error("cannot set up the KVM VM")]
    Vm(#[source] VmError),
    /// A disk could not be opened.
    #[error("cannot open a disk")]
    Disk(#[source] BlockError),
    /// The vsock host side could not be set up.
    #[error("cannot set up vsock")]
    Vsock(#[source] VsockError),
    /// The network device could not be set up.
    #[error("cannot set up the network device")]
    Net(#[source] NetError),
    /// A device could not be attached.
    #[error("cannot attach a device")]
    Device(#[source] DeviceManagerError),
    /// Writing boot structures failed.
    #[error("cannot write boot structures")]
    Boot(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A vCPU could not be set up or started.
    #[error("cannot start a vCPU")]
    Vcpu(#[source] VcpuError),
    /// The terminal mode could not be changed.
    #[error("cannot set up the terminal")]
    Terminal(#[source] ConsoleError),
    /// The seccomp filters or the dropped privileges could not be set up.
    #[error("cannot set up the seccomp sandbox")]
    Seccomp(#[source] seccomp::SeccompError),
    /// The guest stopped without writing its exit status to port 0xf4.
    #[error("guest stopped without reporting an exit status")]
    NoExitStatus {
        /// How the guest stopped.
        reason: StopReason,
    },
}

/// Counters of one run, for benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    /// VM exits handled in userspace, over all vCPUs.
    pub exits: u64,
    /// Wall time from starting the vCPUs to the end of the run.
    pub wall: Duration,
}

/// The virtual machine monitor.
#[derive(Debug)]
pub struct Vmm;

impl Vmm {
    /// Boots the guest described by `config` and blocks until it stops.
    pub fn run(config: VmConfig) -> Result<ExitStatus, VmmError> {
        Self::run_with_stats(config).map(|(status, _)| status)
    }

    /// [`Vmm::run`], also returning exit and time counters.
    pub fn run_with_stats(config: VmConfig) -> Result<(ExitStatus, RunStats), VmmError> {
        if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
            return Err(VmmError::VcpuCount);
        }
        let ram_bytes = u64::from(config.ram_mib)
            .checked_mul(1 << 20)
            .ok_or(VmmError::RamSize)?;
        // Boot-phase lines (info): `ci/bench-boot.sh` stamps them on arrival for its
        // per-phase trace; the figure in each is this run's own monotonic clock.
        let run_start = Instant::now();
        let phase = |name: &str| {
            log::info!(
                "boot phase {name}: {:.1} ms",
                run_start.elapsed().as_secs_f64() * 1000.0
            );
        };
        phase("vmm start");
        let mut config = config;
        let tee = config.tee.take();
        let extra: &[(u64, u64)] = match tee {
            Some(_) => &[(krun_resetvec::IMAGE_GPA, krun_resetvec::IMAGE_SIZE as u64)],
            None => &[],
        };
        let alloc_start = Instant::now();
        let mem =
            Arc::new(memory::create_guest_memory_with(ram_bytes, extra).map_err(VmmError::Memory)?);
        let alloc_wall = alloc_start.elapsed();
        let vcpu_sig = tee.as_ref().map(|t| t.vcpu_sig);
        let (kernel_bytes, initrd_bytes, firmware, mut launch) = match tee {
            Some(t) => (t.kernel, t.initrd, Some(t.layout), Some(t.launch)),
            None => {
                let k = std::fs::read(&config.kernel_path)
                    .map_err(|e| VmmError::Memory(MemoryError::OpenKernel(e)))?;
                let i = match &config.initrd_path {
                    Some(p) => std::fs::read(p)
                        .map_err(|e| VmmError::Memory(MemoryError::ReadInitrd(e)))?,
                    None => Vec::new(),
                };
                (k, i, None, None)
            }
        };
        if let Some(l) = launch.as_mut() {
            l.vmm_phase(Phase::MemoryAllocation, alloc_wall, 0);
        }
        let vm_type = launch.as_ref().map_or(0, |l| l.vm_type());
        let vm = Vm::with_type(vm_type).map_err(VmmError::Vm)?;
        if !launch.as_ref().is_some_and(|l| l.creates_memory_slots()) {
            vm.register_memory(&mem).map_err(VmmError::Vm)?;
        }
        // KVM_SEV_INIT2 and encrypted-memory registration come before any vCPU exists.
        if let Some(l) = launch.as_mut() {
            l.vm_created(vm.shared_fd(), &mem).map_err(VmmError::Tee)?;
        }
        phase("vm created");

        // Terminal first, so every later error path restores it through the guard's drop.
        let terminal = match &config.console.input {
            Some(fd) => Some(TerminalGuard::new(fd.as_fd()).map_err(VmmError::Terminal)?),
            None => None,
        };

        let slots = config_devices(&mut config)?;
        let devices = attach_devices(&vm, &mem, slots)?;
        phase("devices attached");
        let cmdline = full_cmdline(&config.cmdline, devices.cmdline_entries())?;
        let load_start = Instant::now();
        let loaded = loader::load_guest(
            &mem,
            GuestImage {
                ram_bytes,
                vcpus: config.vcpus,
                kernel: &kernel_bytes,
                initrd: initrd_bytes,
                initrd_append: &config.initrd_append,
                cmdline: &cmdline,
                firmware,
            },
        )
        .map_err(VmmError::Load)?;
        drop(kernel_bytes);
        if let Some(l) = launch.as_mut() {
            l.vmm_phase(Phase::ImageLoad, load_start.elapsed(), 0);
        }
        phase("loaded");
        if let Some(l) = launch.as_mut() {
            l.loaded(&mem, &loaded).map_err(VmmError::Tee)?;
        }
        let entry = match (loaded.firmware, vcpu_sig) {
            (Some(_), Some(vcpu_sig)) => BootEntry::ResetVector { vcpu_sig },
            _ => BootEntry::Direct(loaded.kernel.entry),
        };

        let supported = vm.supported_cpuid().map_err(VmmError::Vm)?;
        let mut fds = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let fd = vm.create_vcpu(index).map_err(VmmError::Vm)?;
            vcpu::configure_boot(&fd, index, config.vcpus, &supported, entry)
                .map_err(VmmError::Vcpu)?;
            fds.push(fd);
        }
        // SEV-ES/SNP: KVM builds each VMSA from the registers just set; the launch measures
        // and encrypts them now, then finishes.
        let converter = match launch.as_mut() {
            Some(l) => {
                l.vcpus_ready(&mem).map_err(VmmError::Tee)?;
                l.memory_converter()
            }
            None => None,
        };
        phase(if launch.is_some() {
            "launched (measured)"
        } else {
            "vcpus configured"
        });
        // `launch` stays alive until the VM is gone: on SNP hardware it owns the guest_memfd
        // files, and KVM unbinds a slot's private memory when its file is released.
        let exit = Arc::new(ExitState::new());
        let shared = Arc::new(VcpuShared {
            mmio: devices.into_bus(),
            serial: Mutex::new(SerialSink::new()),
            exit: exit.clone(),
            exits: AtomicU64::new(0),
            converter,
        });
        // Set-up is over: from here on each thread keeps to its allow-list (docs/hardening.md).
        if config.seccomp {
            seccomp::activate().map_err(VmmError::Seccomp)?;
        }
        let started = Instant::now();
        let mut handles = Vec::with_capacity(fds.len());
        for (index, fd) in (0u8..).zip(fds) {
            match vcpu::spawn(fd, index, shared.clone()) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    exit.request_stop(StopReason::HostRequest);
                    vcpu::join_all(handles);
                    return Err(VmmError::Vcpu(e));
                }
            }
        }
        if let Err(e) = seccomp::enter(ThreadKind::Main) {
            exit.request_stop(StopReason::HostRequest);
            vcpu::join_all(handles);
            return Err(VmmError::Seccomp(e));
        }
        phase("guest entry");
        log::info!(
            "guest started: {} vCPUs, {} MiB",
            config.vcpus,
            config.ram_mib
        );
        let (status, reason) = exit.wait();
        vcpu::join_all(handles);
        let stats = RunStats {
            exits: shared.exits.load(Ordering::Relaxed),
            wall: started.elapsed(),
        };
        log::info!(
            "guest stopped after {:?} and {} VM exits",
            stats.wall,
            stats.exits
        );
        // Dropping the bus stops every device worker before guest memory goes away.
        drop(shared);
        drop(terminal);
        finish(status, reason).map(|s| (s, stats))
    }
}

fn finish(status: Option<u8>, reason: StopReason) -> Result<ExitStatus, VmmError> {
    match (status, &reason) {
        (Some(s), StopReason::VcpuError(e)) => {
            log::error!("guest reported status {s} but then failed: {e}");
            Ok(ExitStatus(s))
        }
        (Some(s), _) => Ok(ExitStatus(s)),
        (None, _) => {
            log::error!("guest stopped ({reason:?}) without reporting an exit status");
            Err(VmmError::NoExitStatus { reason })
        }
    }
}

/// The guest command line with the device entries appended, NUL-terminated.
pub(crate) fn full_cmdline(base: &str, entries: &[String]) -> Result<Vec<u8>, VmmError> {
    let mut line = base.trim().to_owned();
    for e in entries {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(e);
    }
    if line.contains('\0') || line.len() + 1 > CMDLINE_KERNEL_LIMIT {
        return Err(VmmError::Cmdline);
    }
    let mut bytes = line.into_bytes();
    bytes.push(0);
    Ok(bytes)
}

/// What one virtio-mmio slot holds.
enum Slot {
    /// A device.
    Device(Box<dyn crate::devices::virtio::VirtioDevice>),
    /// An empty slot that still appears on the command line (DeviceID 0).
    Placeholder,
}

/// The devices of `config`, in slot order: root disk, data disk, console, vsock, network
/// (`launch::guest::device_count` counts them for the measured command line).
fn config_devices(config: &mut VmConfig) -> Result<Vec<Slot>, VmmError> {
    let mut devices: Vec<Box<dyn crate::devices::virtio::VirtioDevice>> = Vec::new();
    devices.push(Box::new(
        VirtioBlock::new(&config.root_disk.path, config.root_disk.read_only)
            .map_err(VmmError::Disk)?,
    ));
    if let Some(d) = &config.data_disk {
        devices.push(Box::new(
            VirtioBlock::new(&d.path, d.read_only).map_err(VmmError::Disk)?,
        ));
    }
    let input = config
        .console
        .input
        .as_ref()
        .map(|fd| fd.try_clone())
        .transpose()
        .map_err(|e| VmmError::Terminal(ConsoleError::Termios(e)))?;
    let output = config
        .console
        .output
        .try_clone()
        .map_err(|e| VmmError::Terminal(ConsoleError::Termios(e)))?;
    devices.push(Box::new(VirtioConsole::new(input, output)));

    let mut services = config.vsock_handlers.clone();
    let errors = config
        .console
        .errors
        .try_clone()
        .map_err(|e| VmmError::Terminal(ConsoleError::Termios(e)))?;
    services.insert(
        PORT_STDERR,
        Arc::new(GuestStderr::new(
            errors.into(),
            GuestLogLevel::from_host_logger(),
        )),
    );
    if let Some(target) = config.attestation_target {
        services.insert(
            PORT_ATTESTATION,
            Arc::new(TcpForward::new(target, ATTESTATION_CONNECT_TIMEOUT)),
        );
    }
    let mut control = None;
    let port_map: Vec<(SocketAddr, u16)> = match &config.port_map {
        PortMap::List(list) => list
            .iter()
            .map(|m| {
                (
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, m.host_port)),
                    m.guest_port,
                )
            })
            .collect(),
        PortMap::Exposed => {
            // A caller-supplied control handler wins; otherwise the built-in one opens a
            // host listener for every port the guest announces.
            if services.get(PORT_CONTROL).is_none() {
                let c = PortControl::new().map_err(|e| VmmError::Vsock(VsockError::Listen(e)))?;
                services.insert(PORT_CONTROL, Arc::new(ExposedPortsHandler::new(c.clone())));
                control = Some(c);
            }
            Vec::new()
        }
    };
    let mut muxer = Muxer::new(services, &port_map).map_err(VmmError::Vsock)?;
    if let Some(c) = control {
        muxer = muxer.with_control(c);
    }
    devices.push(Box::new(VirtioVsock::new(muxer)));
    let mut slots: Vec<Slot> = devices.into_iter().map(Slot::Device).collect();
    // The network slot always exists, so the command line (and the launch digest) does not
    // depend on whether the VM has a network.
    slots.push(match config.net.take() {
        Some(n) => Slot::Device(Box::new(
            VirtioNet::new(n.socket, n.mac, n.features).map_err(VmmError::Net)?,
        )),
        None => Slot::Placeholder,
    });
    Ok(slots)
}

fn attach_devices(
    vm: &Vm,
    mem: &Arc<memory::GuestMemory>,
    slots: Vec<Slot>,
) -> Result<DeviceManager, VmmError> {
    let mut manager = DeviceManager::new();
    for s in slots {
        match s {
            Slot::Device(d) => manager.attach(vm, mem, d).map(drop),
            Slot::Placeholder => manager.attach_placeholder().map(drop),
        }
        .map_err(VmmError::Device)?;
    }
    Ok(manager)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::KERNEL_START;
    use crate::devices::virtio::vsock::HostServices;
    use crate::vmm::config::DiskConfig;
    use crate::vmm::memory::tests::{temp_file, tempfile_lite::TempPath, tiny_elf};
    use crate::vmm::test_utils::require_kvm;

    #[test]
    fn cmdline_gets_device_entries() {
        let c = full_cmdline(" console=hvc0 ", &["a=1".into(), "b=2".into()]).unwrap();
        assert_eq!(c, b"console=hvc0 a=1 b=2\0");
        assert_eq!(full_cmdline("", &["a=1".into()]).unwrap(), b"a=1\0");
        assert!(matches!(full_cmdline("x\0y", &[]), Err(VmmError::Cmdline)));
        let fits = "x".repeat(CMDLINE_KERNEL_LIMIT - 1);
        assert_eq!(
            full_cmdline(&fits, &[]).unwrap().len(),
            CMDLINE_KERNEL_LIMIT
        );
        let long = "x".repeat(CMDLINE_KERNEL_LIMIT - 10);
        assert!(matches!(
            full_cmdline(&long, &["virtio_mmio.device=4K@0xd0000000:5".into()]),
            Err(VmmError::Cmdline)
        ));
    }

    #[test]
    fn status_mapping() {
        assert_eq!(
            finish(Some(42), StopReason::Shutdown).unwrap(),
            ExitStatus(42)
        );
        assert_eq!(
            finish(Some(0), StopReason::VcpuError("x".into())).unwrap(),
            ExitStatus(0)
        );
        assert!(matches!(
            finish(None, StopReason::Shutdown),
            Err(VmmError::NoExitStatus {
                reason: StopReason::Shutdown
            })
        ));
    }

    /// Guest code: sums the virtio DeviceID registers of slots 0..=4 (the network slot's
    /// placeholder reads 0), reports the sum on port
    /// 0xf4 (unless `report` is false), then triple-faults.
    fn probe_kernel(report: bool) -> TempPath {
        #[rustfmt::skip]
        let mut code: Vec<u8> = vec![
            0xbb, 0x00, 0x00, 0x00, 0xd0,             // mov ebx, 0xd0000000
            0x8b, 0x43, 0x08,                         // mov eax, [rbx+8]
            0x03, 0x83, 0x08, 0x10, 0x00, 0x00,       // add eax, [rbx+0x1008]
            0x03, 0x83, 0x08, 0x20, 0x00, 0x00,       // add eax, [rbx+0x2008]
            0x03, 0x83, 0x08, 0x30, 0x00, 0x00,       // add eax, [rbx+0x3008]
            0x03, 0x83, 0x08, 0x40, 0x00, 0x00,       // add eax, [rbx+0x4008]
        ];
        if report {
            code.extend_from_slice(&[0xe6, 0xf4]); // out 0xf4, al
        }
        code.extend_from_slice(&[0x0f, 0x01, 0x1c, 0x25, 0x00, 0x40, 0x00, 0x00, 0x0f, 0x0b]);
        temp_file(&tiny_elf(&code, KERNEL_START, 0x1000))
    }

    fn config(
        kernel: &TempPath,
        root: &TempPath,
        data: Option<&TempPath>,
        out: &TempPath,
    ) -> VmConfig {
        VmConfig {
            vcpus: 2,
            ram_mib: 128,
            kernel_path: kernel.0.clone(),
            initrd_path: None,
            initrd_append: b"070701".to_vec(),
            cmdline: "console=hvc0 reboot=t".into(),
            root_disk: DiskConfig {
                path: root.0.clone(),
                read_only: true,
            },
            data_disk: data.map(|d| DiskConfig {
                path: d.0.clone(),
                read_only: false,
            }),
            attestation_target: Some("127.0.0.1:9".parse().unwrap()),
            port_map: PortMap::List(vec![]),
            vsock_handlers: HostServices::new(),
            console: crate::vmm::test_utils::console_to_file(&out.0),
            net: None,
            tee: None,
            seccomp: false,
        }
    }

    /// The whole builder on real KVM: devices appear at their slots in order (root disk,
    /// data disk, console, vsock, then the network slot: a placeholder, DeviceID 0, or a
    /// virtio-net device, 1) and the reported status comes back.
    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn run_reports_guest_status_and_device_layout() {
        require_kvm();
        let kernel = probe_kernel(true);
        let root = temp_file(&[0u8; 4096]);
        let data = temp_file(&[0u8; 4096]);
        let out = TempPath::new();
        // block + console + vsock = 2 + 3 + 19
        assert_eq!(
            Vmm::run(config(&kernel, &root, None, &out)).unwrap(),
            ExitStatus(24)
        );
        // block + block + console + vsock + placeholder (0)
        let (status, stats) =
            Vmm::run_with_stats(config(&kernel, &root, Some(&data), &out)).unwrap();
        assert_eq!(status, ExitStatus(26));
        // block + console + vsock + virtio-net in the last slot: 2 + 3 + 19 + 1.
        let (ours, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut c = config(&kernel, &root, None, &out);
        c.net = Some(crate::vmm::config::NetDeviceConfig {
            socket: ours,
            mac: [2, 0, 0, 0, 0, 1],
            features: 0,
        });
        assert_eq!(Vmm::run(c).unwrap(), ExitStatus(25));
        // Five MMIO reads, one port write, one shutdown.
        assert!(stats.exits >= 7, "{stats:?}");
    }

    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn run_without_status_is_an_error() {
        require_kvm();
        let kernel = probe_kernel(false);
        let root = temp_file(&[0u8; 4096]);
        let out = TempPath::new();
        assert!(matches!(
            Vmm::run(config(&kernel, &root, None, &out)),
            Err(VmmError::NoExitStatus {
                reason: StopReason::Shutdown
            })
        ));
    }

    #[test]
    fn bad_config_fails_before_the_guest_starts() {
        let kernel = probe_kernel(true);
        let root = temp_file(&[0u8; 4096]);
        let out = TempPath::new();
        let mut c = config(&kernel, &root, None, &out);
        c.vcpus = 0;
        assert!(matches!(Vmm::run(c), Err(VmmError::VcpuCount)));
    }

    /// A missing disk is found once the VM exists, before any vCPU runs.
    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn missing_disk_fails_before_the_guest_starts() {
        require_kvm();
        let kernel = probe_kernel(true);
        let root = temp_file(&[0u8; 4096]);
        let out = TempPath::new();
        let mut c = config(&kernel, &root, None, &out);
        c.root_disk.path = "/nonexistent/disk.img".into();
        assert!(matches!(Vmm::run(c), Err(VmmError::Disk(_))));
    }

    /// A guest-side virtio-blk driver in a few instructions, through real MMIO exits: it
    /// negotiates VERSION_1, configures queue 0 with rings embedded in its own image, sets
    /// DRIVER_OK, notifies, spins until the used index moves, and reports the first byte of
    /// the sector it read plus the request status on port 0xf4.
    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn tiny_guest_driver_reads_the_root_disk() {
        require_kvm();
        let k = KERNEL_START;
        let (desc, avail, used) = (k + 0x1000, k + 0x2000, k + 0x3000);
        let (hdr, data, status) = (k + 0x4000, k + 0x5000, k + 0x6000);
        let d32 = |v: u64| u32::try_from(v).unwrap().to_le_bytes();
        let mut code: Vec<u8> = vec![0xbb, 0x00, 0x00, 0x00, 0xd0]; // mov ebx, 0xd0000000
        let reg8 = |code: &mut Vec<u8>, off: u8, v: u32| {
            code.extend_from_slice(&[0xc7, 0x43, off]);
            code.extend_from_slice(&v.to_le_bytes());
        };
        reg8(&mut code, 0x70, 1);
        reg8(&mut code, 0x70, 3);
        reg8(&mut code, 0x24, 1);
        reg8(&mut code, 0x20, 1);
        reg8(&mut code, 0x70, 0xb);
        reg8(&mut code, 0x30, 0);
        reg8(&mut code, 0x38, 16);
        for (off, addr) in [(0x80u32, desc), (0x90, avail), (0xa0, used)] {
            code.extend_from_slice(&[0xc7, 0x83]);
            code.extend_from_slice(&off.to_le_bytes());
            code.extend_from_slice(&d32(addr));
        }
        reg8(&mut code, 0x44, 1);
        reg8(&mut code, 0x70, 0xf);
        reg8(&mut code, 0x50, 0);
        code.extend_from_slice(&[0x0f, 0xb7, 0x04, 0x25]); // movzx eax, word [used+2]
        code.extend_from_slice(&d32(used + 2));
        code.extend_from_slice(&[0x85, 0xc0, 0x74, 0xf4]); // test eax, eax; jz back
        code.extend_from_slice(&[0x8a, 0x04, 0x25]); // mov al, [data]
        code.extend_from_slice(&d32(data));
        code.extend_from_slice(&[0x02, 0x04, 0x25]); // add al, [status]
        code.extend_from_slice(&d32(status));
        code.extend_from_slice(&[0xe6, 0xf4]);
        code.extend_from_slice(&[0x0f, 0x01, 0x1c, 0x25, 0x00, 0x40, 0x00, 0x00, 0x0f, 0x0b]);
        assert!(code.len() < 0x1000);

        let mut image = code;
        image.resize(0x7000, 0);
        let put = |image: &mut Vec<u8>, addr: u64, bytes: &[u8]| {
            let o = usize::try_from(addr - k).unwrap();
            image[o..o + bytes.len()].copy_from_slice(bytes);
        };
        // Descriptors: header (readable) -> data (writable) -> status (writable).
        for (i, (addr, len, flags, next)) in [
            (hdr, 16u32, 1u16, 1u16),
            (data, 512, 3, 2),
            (status, 1, 2, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let mut d = Vec::new();
            d.extend_from_slice(&addr.to_le_bytes());
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&next.to_le_bytes());
            put(&mut image, desc + 16 * i as u64, &d);
        }
        put(&mut image, avail, &[0, 0, 1, 0, 0, 0]); // flags, idx = 1, ring[0] = 0
        let mut h = [0u8; 16];
        h[8..16].copy_from_slice(&5u64.to_le_bytes()); // T_IN, sector 5
        put(&mut image, hdr, &h);
        put(&mut image, status, &[0xee]);
        let kernel = temp_file(&tiny_elf(&image, KERNEL_START, 0));

        let mut disk = vec![0u8; 8 * 512];
        for (i, b) in disk.iter_mut().enumerate() {
            *b = u8::try_from(i / 512).unwrap();
        }
        let root = temp_file(&disk);
        let out = TempPath::new();
        let (status, stats) = Vmm::run_with_stats(config(&kernel, &root, None, &out)).unwrap();
        // Sector 5 is filled with 5; a successful request leaves status 0.
        assert_eq!(status, ExitStatus(5), "{stats:?}");
    }
}
