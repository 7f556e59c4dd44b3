//! vCPU configuration, the per-vCPU thread and its exit handling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{CpuId, KVM_SYSTEM_EVENT_RESET};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::layout::{EXIT_STATUS_PORT, SERIAL_PORT_BASE};
use crate::arch::{cpuid, msr, regs};
use crate::devices::serial::SerialSink;
use crate::devices::BusDevice;
use crate::tee::hardware::convert::MemoryConverter;
use crate::tee::hardware::uapi;
use crate::vmm::bus::MmioBus;
use crate::vmm::seccomp::{self, ThreadKind};
use crate::vmm::vstate::exit::{ExitState, StopReason};

/// Errors while configuring or starting a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Building the guest CPUID failed.
    #[error("cannot build the guest CPUID")]
    Cpuid(#[source] cpuid::CpuidError),
    /// Building the boot MSRs failed.
    #[error("cannot build the boot MSRs")]
    Msrs(#[source] msr::MsrError),
    /// A KVM vCPU ioctl failed.
    #[error("vCPU ioctl failed while configuring the vCPU")]
    Ioctl(#[source] kvm_ioctls::Error),
    /// KVM accepted fewer MSRs than given.
    #[error("KVM did not accept all boot MSRs")]
    MsrsPartial,
    /// The vCPU kick signal handler cannot be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The vCPU thread cannot be spawned.
    #[error("cannot spawn a vCPU thread")]
    Spawn(#[source] std::io::Error),
}

/// The keyboard controller's command port; command 0xfe pulses the CPU reset line.
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_RESET_CMD: u8 = 0xfe;
/// The PCI reset control register; bit 2 requests a reset.
const RESET_CONTROL_PORT: u16 = 0xcf9;
const RESET_CONTROL_RESET_BIT: u8 = 0x4;
const SERIAL_PORT_COUNT: u16 = 8;
/// `-KVM_ENOSYS` (`include/uapi/linux/kvm_para.h`: 1000) as the guest reads a hypercall's
/// return value: the hypercall is not implemented.
const KVM_ENOSYS: u64 = (-1000i64) as u64;

/// Configures vCPU `index` of `vcpus`: CPUID, MSRs, FPU, LAPIC LINT pins, and for the boot
/// vCPU (index 0) the 64-bit boot protocol registers with `rip = entry`. Application
/// processors stay in wait-for-SIPI; the guest starts them through its LAPIC.
pub fn configure(
    fd: &VcpuFd,
    index: u8,
    vcpus: u8,
    supported: &CpuId,
    entry: u64,
) -> Result<(), VcpuError> {
    configure_boot(fd, index, vcpus, supported, BootEntry::Direct(entry))
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// The kernel's 64-bit entry, with the VMM's page tables and GDT (plain launches).
    Direct(u64),
    /// The reset-vector firmware (confidential launches): the BSP keeps KVM's reset state
    /// (CS 0xF000 base 0xFFFF0000, RIP 0xFFF0, real mode), which is what the measured VMSA
    /// describes; APs get RIP 0xFFF8 (the firmware's SEV-ES/SNP AP entry, same CS). In a VM
    /// without SEV-ES INIT-SIPI overrides the AP RIP, so the same state serves the model run.
    /// Every vCPU presents `vcpu_sig` as CPUID leaf 1 EAX (the named vCPU model).
    ResetVector {
        /// CPUID leaf 1 EAX, also the reset RDX.
        vcpu_sig: u32,
    },
}

/// [`configure`] with an explicit [`BootEntry`].
pub fn configure_boot(
    fd: &VcpuFd,
    index: u8,
    vcpus: u8,
    supported: &CpuId,
    entry: BootEntry,
) -> Result<(), VcpuError> {
    let mut guest_cpuid = cpuid::for_vcpu(supported, index, vcpus).map_err(VcpuError::Cpuid)?;
    if let BootEntry::ResetVector { vcpu_sig } = entry {
        cpuid::present_signature(&mut guest_cpuid, vcpu_sig);
    }
    fd.set_cpuid2(&guest_cpuid).map_err(VcpuError::Ioctl)?;
    let msrs = msr::boot_msrs().map_err(VcpuError::Msrs)?;
    let written = fd.set_msrs(&msrs).map_err(VcpuError::Ioctl)?;
    if written != msrs.as_slice().len() {
        return Err(VcpuError::MsrsPartial);
    }
    fd.set_fpu(&regs::boot_fpu()).map_err(VcpuError::Ioctl)?;
    let mut lapic = fd.get_lapic().map_err(VcpuError::Ioctl)?;
    regs::set_lint(&mut lapic);
    fd.set_lapic(&lapic).map_err(VcpuError::Ioctl)?;
    match (entry, index) {
        (BootEntry::Direct(entry), 0) => {
            let sregs = fd.get_sregs().map_err(VcpuError::Ioctl)?;
            fd.set_sregs(&regs::boot_sregs(sregs))
                .map_err(VcpuError::Ioctl)?;
            fd.set_regs(&regs::boot_regs(entry))
                .map_err(VcpuError::Ioctl)?;
        }
        (BootEntry::ResetVector { .. }, _) => {
            // SEV-ES/SNP measure a VMSA that KVM copies from these registers; it must equal
            // `crate::tee::vmsa::build`. KVM computed the reset RDX when the vCPU was created,
            // before KVM_SET_CPUID2 (so 0x600); the architectural value, which the model
            // measures, is CPUID leaf 1 EAX.
            let mut r = fd.get_regs().map_err(VcpuError::Ioctl)?;
            r.rdx = reset_rdx(&guest_cpuid);
            if index > 0 {
                r.rip = krun_resetvec::layout::AP_ENTRY_IP;
            }
            fd.set_regs(&r).map_err(VcpuError::Ioctl)?;
        }
        (BootEntry::Direct(_), _) => {}
    }
    Ok(())
}

/// CPUID leaf 1 EAX (family, model, stepping) of `cpuid`, the x86 reset value of RDX.
pub fn reset_rdx(cpuid: &CpuId) -> u64 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 1 && e.index == 0)
        .map_or(0x600, |e| u64::from(e.eax))
}

/// What every vCPU thread shares: device buses and the run's exit state.
#[derive(Debug)]
pub struct VcpuShared {
    /// MMIO devices.
    pub mmio: MmioBus,
    /// COM1 early log sink.
    pub serial: Mutex<SerialSink>,
    /// Exit status and stop request.
    pub exit: Arc<ExitState>,
    /// VM exits seen by all vCPUs (for boot benchmarks).
    pub exits: AtomicU64,
    /// Private/shared conversions requested by an SNP guest (hardware backend only).
    pub converter: Option<Arc<dyn MemoryConverter>>,
}

impl VcpuShared {
    /// Handles a port write.
    pub fn io_out(&self, port: u16, data: &[u8]) {
        let first = data.first().copied().unwrap_or(0);
        match port {
            EXIT_STATUS_PORT => {
                log::debug!("guest reported exit status {first}");
                self.exit.set_status(first);
            }
            p if (SERIAL_PORT_BASE..SERIAL_PORT_BASE + SERIAL_PORT_COUNT).contains(&p) => {
                lock_serial(&self.serial).write(u64::from(p - SERIAL_PORT_BASE), data);
            }
            I8042_COMMAND_PORT if first == I8042_RESET_CMD => {
                self.exit.request_stop(StopReason::Reset);
            }
            RESET_CONTROL_PORT if first & RESET_CONTROL_RESET_BIT != 0 => {
                self.exit.request_stop(StopReason::Reset);
            }
            _ => {}
        }
    }

    /// Handles a port read: the serial sink, or all-ones for nothing present.
    pub fn io_in(&self, port: u16, data: &mut [u8]) {
        if (SERIAL_PORT_BASE..SERIAL_PORT_BASE + SERIAL_PORT_COUNT).contains(&port) {
            lock_serial(&self.serial).read(u64::from(port - SERIAL_PORT_BASE), data);
        } else {
            data.fill(0xff);
        }
    }

    /// Handles one vCPU exit; returns false when this vCPU must stop.
    pub fn handle_exit(&self, index: u8, exit: VcpuExit<'_>) -> bool {
        match exit {
            VcpuExit::IoOut(port, data) => self.io_out(port, data),
            VcpuExit::IoIn(port, data) => self.io_in(port, data),
            VcpuExit::MmioRead(addr, data) => {
                if !self.mmio.read(addr, data) {
                    log::debug!("vCPU {index}: read from unmapped MMIO {addr:#x}");
                    data.fill(0);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                if !self.mmio.write(addr, data) {
                    log::debug!("vCPU {index}: write to unmapped MMIO {addr:#x}");
                }
            }
            VcpuExit::Hlt => {
                self.exit.request_stop(StopReason::Halted);
                return false;
            }
            VcpuExit::Shutdown => {
                log::debug!("vCPU {index} shut down");
                self.exit.request_stop(StopReason::Shutdown);
                return false;
            }
            VcpuExit::SystemEvent(kind, _) => {
                let reason = if kind == KVM_SYSTEM_EVENT_RESET {
                    StopReason::Reset
                } else {
                    StopReason::Shutdown
                };
                self.exit.request_stop(reason);
                return false;
            }
            VcpuExit::FailEntry(reason, cpu) => {
                self.exit.request_stop(StopReason::VcpuError(format!(
                    "vCPU {index}: entry failed (reason {reason:#x}, cpu {cpu})"
                )));
                return false;
            }
            VcpuExit::InternalError => {
                self.exit.request_stop(StopReason::VcpuError(format!(
                    "vCPU {index}: KVM internal error"
                )));
                return false;
            }
            VcpuExit::Intr => {}
            VcpuExit::Hypercall(h) => {
                *h.ret = match (&self.converter, h.nr) {
                    (Some(c), uapi::HC_MAP_GPA_RANGE) => c.map_gpa_range(h.args),
                    _ => {
                        log::debug!("vCPU {index}: unexpected hypercall {}", h.nr);
                        KVM_ENOSYS
                    }
                };
            }
            VcpuExit::MemoryFault { flags, gpa, size } => {
                let resolved = self
                    .converter
                    .as_ref()
                    .is_some_and(|c| c.memory_fault(flags, gpa, size));
                if !resolved {
                    self.exit.request_stop(StopReason::VcpuError(format!(
                        "vCPU {index}: unresolved memory fault at {gpa:#x} (+{size:#x}, flags {flags:#x})"
                    )));
                    return false;
                }
            }
            other => {
                log::debug!("vCPU {index}: unhandled exit {other:?}");
            }
        }
        true
    }
}

fn lock_serial(s: &Mutex<SerialSink>) -> std::sync::MutexGuard<'_, SerialSink> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The signal used to kick vCPU threads out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn kick_handler(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only interrupts KVM_RUN (it returns EINTR); the run loop re-checks the stop flag.
}

/// The outcome of installing the handler (once per process), as an errno.
static KICK_HANDLER: OnceLock<Result<(), i32>> = OnceLock::new();

fn install_kick_handler() -> Result<(), VcpuError> {
    KICK_HANDLER
        .get_or_init(|| register_signal_handler(kick_signal(), kick_handler).map_err(|e| e.errno()))
        .map_err(|errno| VcpuError::Signal(vmm_sys_util::errno::Error::new(errno)))
}

/// The vCPU run loop.
fn run_loop(mut fd: VcpuFd, index: u8, shared: Arc<VcpuShared>) {
    if let Err(e) = seccomp::enter(ThreadKind::Vcpu) {
        shared.exit.request_stop(StopReason::VcpuError(format!(
            "vCPU {index}: {}",
            seccomp::chain(&e)
        )));
        return;
    }
    // The caller's thread may block our kick signal; this thread must receive it.
    if let Err(e) = vmm_sys_util::signal::unblock_signal(kick_signal()) {
        log::warn!("vCPU {index}: cannot unblock the kick signal: {e}");
    }
    while !shared.exit.stopping() {
        match fd.run() {
            Ok(exit) => {
                shared.exits.fetch_add(1, Ordering::Relaxed);
                if !shared.handle_exit(index, exit) {
                    break;
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                shared.exit.request_stop(StopReason::VcpuError(format!(
                    "vCPU {index}: KVM_RUN failed: {e}"
                )));
                break;
            }
        }
    }
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    thread: JoinHandle<()>,
}

/// Starts vCPU `index` on its own thread.
pub fn spawn(fd: VcpuFd, index: u8, shared: Arc<VcpuShared>) -> Result<VcpuHandle, VcpuError> {
    install_kick_handler()?;
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || run_loop(fd, index, shared))
        .map_err(VcpuError::Spawn)?;
    Ok(VcpuHandle { thread })
}

/// Stops and joins vCPU threads. Call after [`ExitState::request_stop`]: each thread is
/// kicked until it leaves `KVM_RUN` (a kick that lands just before `KVM_RUN` is lost, so it
/// is repeated).
pub fn join_all(handles: Vec<VcpuHandle>) {
    for handle in handles {
        while !handle.thread.is_finished() {
            if let Err(e) = handle.thread.kill(kick_signal()) {
                log::debug!("cannot kick a vCPU thread: {e}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if handle.thread.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::boot_params::{self, BootParamsInput};
    use crate::arch::layout::{KERNEL_START, VIRTIO_MMIO_START};
    use crate::vmm::memory::{
        self,
        tests::{temp_file, tiny_elf},
    };
    use crate::vmm::test_utils::require_kvm;
    use crate::vmm::vstate::vm::Vm;

    /// Records MMIO writes and answers reads with a fixed value.
    type Writes = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;
    struct Probe(Writes);
    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(0);
            data[0] = 0x40 + u8::try_from(offset).unwrap();
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    /// Boots a tiny 64-bit "kernel" through the real boot path (ELF load, zero page, page
    /// tables, long-mode registers) and checks what it reports through port 0xf4 and MMIO.
    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn tiny_guest_boots_in_long_mode_and_reports_status() {
        require_kvm();
        #[rustfmt::skip]
        let code: Vec<u8> = vec![
            0x89, 0xf0,                         // mov eax, esi      (zero page address)
            0xc1, 0xe8, 0x0c,                   // shr eax, 12
            0xe6, 0xf4,                         // out 0xf4, al      -> 7
            0x8a, 0x86, 0xe8, 0x01, 0, 0,       // mov al, [rsi+0x1e8] (e820 entries)
            0xe6, 0xf4,                         // out 0xf4, al      -> 2
            0xbb, 0x00, 0x00, 0x00, 0xd0,       // mov ebx, 0xd0000000
            0xc7, 0x03, 0x78, 0x56, 0x34, 0x12, // mov dword [rbx], 0x12345678
            0x8b, 0x43, 0x04,                   // mov eax, [rbx+4]
            0xe6, 0xf4,                         // out 0xf4, al      -> 0x44
            0x0f, 0x01, 0x1c, 0x25, 0x00, 0x40, 0x00, 0x00, // lidt [0x4000] (limit 0)
            0x0f, 0x0b,                         // ud2 -> #GP -> #DF -> triple fault
        ];
        let mem = memory::create_guest_memory(memory::MIN_RAM_BYTES).unwrap();
        let elf = temp_file(&tiny_elf(&code, KERNEL_START, 0));
        let kernel = memory::load_kernel(&mem, &elf.0).unwrap();
        regs::write_boot_structures(&mem).unwrap();
        boot_params::write(
            &mem,
            &BootParamsInput {
                setup_header: None,
                ram_bytes: memory::MIN_RAM_BYTES,
                cmdline_len: 1,
                initrd: None,
                reserved: None,
            },
        )
        .unwrap();

        let vm = Vm::new().unwrap();
        vm.register_memory(&mem).unwrap();
        let supported = vm.supported_cpuid().unwrap();
        let fd = vm.create_vcpu(0).unwrap();
        configure(&fd, 0, 1, &supported, kernel.entry).unwrap();

        let writes = Arc::new(Mutex::new(Vec::new()));
        let mut bus = MmioBus::new();
        bus.insert(
            VIRTIO_MMIO_START,
            0x1000,
            Arc::new(Mutex::new(Probe(writes.clone()))),
        )
        .unwrap();
        let exit = Arc::new(ExitState::new());
        let shared = Arc::new(VcpuShared {
            mmio: bus,
            serial: Mutex::new(SerialSink::new()),
            exit: exit.clone(),
            exits: AtomicU64::new(0),
            converter: None,
        });
        let handle = spawn(fd, 0, shared).unwrap();
        let watchdog_exit = exit.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            watchdog_exit.request_stop(StopReason::HostRequest);
        });
        let (status, reason) = exit.wait();
        join_all(vec![handle]);
        assert_eq!(reason, StopReason::Shutdown);
        assert_eq!(status, Some(0x44));
        assert_eq!(
            *writes.lock().unwrap(),
            vec![(0, vec![0x78, 0x56, 0x34, 0x12])]
        );
    }

    /// Records conversions and answers with a fixed value.
    #[derive(Debug, Default)]
    struct FakeConverter(Mutex<Vec<(u64, u64, u64)>>);
    impl MemoryConverter for FakeConverter {
        fn map_gpa_range(&self, args: [u64; 6]) -> u64 {
            self.0.lock().unwrap().push((args[0], args[1], args[2]));
            0
        }
        fn memory_fault(&self, flags: u64, gpa: u64, size: u64) -> bool {
            self.0.lock().unwrap().push((gpa, size, flags));
            gpa < 0x1000_0000
        }
    }

    fn shared(converter: Option<Arc<dyn MemoryConverter>>) -> VcpuShared {
        VcpuShared {
            mmio: MmioBus::new(),
            serial: Mutex::new(SerialSink::new()),
            exit: Arc::new(ExitState::new()),
            exits: AtomicU64::new(0),
            converter,
        }
    }

    /// SNP page-state exits reach the converter; without one (plain and model launches) the
    /// guest gets -KVM_ENOSYS and a memory fault stops the VM.
    #[test]
    fn conversion_exits_go_to_the_converter() {
        let fake = Arc::new(FakeConverter::default());
        let s = shared(Some(fake.clone()));
        let mut ret = 77u64;
        let exit = VcpuExit::Hypercall(kvm_ioctls::HypercallExit {
            nr: uapi::HC_MAP_GPA_RANGE,
            args: [0x2000, 3, 0x10, 0, 0, 0],
            ret: &mut ret,
            longmode: 1,
        });
        assert!(s.handle_exit(0, exit));
        assert_eq!(ret, 0);
        let mut ret = 77u64;
        let other = VcpuExit::Hypercall(kvm_ioctls::HypercallExit {
            nr: 5,
            args: [0; 6],
            ret: &mut ret,
            longmode: 1,
        });
        assert!(s.handle_exit(0, other));
        assert_eq!(ret as i64, -1000, "only MAP_GPA_RANGE is served");
        assert!(s.handle_exit(
            0,
            VcpuExit::MemoryFault {
                flags: 8,
                gpa: 0x3000,
                size: 0x1000
            }
        ));
        assert!(!s.handle_exit(
            1,
            VcpuExit::MemoryFault {
                flags: 0,
                gpa: 0x2000_0000,
                size: 0x1000
            }
        ));
        assert!(s.exit.stopping());
        assert_eq!(
            *fake.0.lock().unwrap(),
            [
                (0x2000, 3, 0x10),
                (0x3000, 0x1000, 8),
                (0x2000_0000, 0x1000, 0)
            ]
        );

        let plain = shared(None);
        let mut ret = 0u64;
        let exit = VcpuExit::Hypercall(kvm_ioctls::HypercallExit {
            nr: uapi::HC_MAP_GPA_RANGE,
            args: [0x2000, 1, 0, 0, 0, 0],
            ret: &mut ret,
            longmode: 1,
        });
        assert!(plain.handle_exit(0, exit));
        assert_eq!(ret as i64, -1000);
        assert!(!plain.handle_exit(
            0,
            VcpuExit::MemoryFault {
                flags: 0,
                gpa: 0,
                size: 0x1000
            }
        ));
    }

    /// The registers KVM syncs into an SEV-ES/SNP VMSA match what `tee::vmsa` measures
    /// (RIP, CS, RFLAGS, RDX) for the BSP and an AP, and the vCPU presents the named model's
    /// signature whatever this host's CPU is. Checked on this host's KVM; on SEV hardware the
    /// same registers are what `sev_es_sync_vmsa` copies.
    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn reset_vector_registers_match_the_modelled_vmsa() {
        require_kvm();
        let vm = Vm::new().unwrap();
        let supported = vm.supported_cpuid().unwrap();
        let vcpu_sig = crate::tee::vcpu_model::VcpuModel::Genoa.signature();
        for index in 0..2u8 {
            let fd = vm.create_vcpu(index).unwrap();
            configure_boot(
                &fd,
                index,
                2,
                &supported,
                BootEntry::ResetVector { vcpu_sig },
            )
            .unwrap();
            let r = fd.get_regs().unwrap();
            let sr = fd.get_sregs().unwrap();
            let page = crate::tee::vmsa::build(crate::tee::TeeMode::SevEs, index, vcpu_sig);
            let q = |at: usize| u64::from_le_bytes(page[at..at + 8].try_into().unwrap());
            assert_eq!(r.rip, q(0x178), "vCPU {index} RIP");
            assert_eq!(r.rdx, q(0x310), "vCPU {index} RDX");
            assert_eq!(
                r.rdx,
                u64::from(vcpu_sig),
                "vCPU {index} RDX is the model's"
            );
            assert_eq!(r.rflags, q(0x170), "vCPU {index} RFLAGS");
            assert_eq!(u64::from(sr.cs.selector), q(0x10) & 0xffff, "CS selector");
            assert_eq!(sr.cs.base, q(0x18), "CS base");
            let leaf1 = fd
                .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .unwrap()
                .as_slice()
                .iter()
                .find(|e| e.function == 1 && e.index == 0)
                .map(|e| e.eax);
            assert_eq!(leaf1, Some(vcpu_sig), "vCPU {index} CPUID leaf 1 EAX");
        }
    }

    /// A vCPU parked in `hlt` (in-kernel LAPIC) is kicked out and joined on a host stop.
    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn halted_vcpu_is_kicked_on_stop() {
        require_kvm();
        let code = [0xb0, 42, 0xe6, 0xf4, 0xfa, 0xf4, 0xeb, 0xfd]; // out 42; cli; hlt; jmp
        let mem = memory::create_guest_memory(memory::MIN_RAM_BYTES).unwrap();
        let elf = temp_file(&tiny_elf(&code, KERNEL_START, 0));
        let kernel = memory::load_kernel(&mem, &elf.0).unwrap();
        regs::write_boot_structures(&mem).unwrap();
        let vm = Vm::new().unwrap();
        vm.register_memory(&mem).unwrap();
        let supported = vm.supported_cpuid().unwrap();
        let fd = vm.create_vcpu(0).unwrap();
        configure(&fd, 0, 1, &supported, kernel.entry).unwrap();
        let exit = Arc::new(ExitState::new());
        let shared = Arc::new(VcpuShared {
            mmio: MmioBus::new(),
            serial: Mutex::new(SerialSink::new()),
            exit: exit.clone(),
            exits: AtomicU64::new(0),
            converter: None,
        });
        let handle = spawn(fd, 0, shared).unwrap();
        let start = std::time::Instant::now();
        while exit.status().is_none() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        exit.request_stop(StopReason::HostRequest);
        join_all(vec![handle]);
        assert_eq!(exit.wait(), (Some(42), StopReason::HostRequest));
    }

    /// SMP bring-up through the in-kernel LAPIC: the boot vCPU sends INIT and SIPI to APIC ID
    /// 1, the application processor starts in real mode at the SIPI vector, reports on port
    /// 0xf4 and resets the VM through the keyboard controller while the boot vCPU spins (and
    /// must be kicked out of KVM_RUN).
    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn boot_vcpu_starts_an_application_processor() {
        require_kvm();
        #[rustfmt::skip]
        let bsp: Vec<u8> = vec![
            0xbb, 0x00, 0x00, 0xe0, 0xfe,                         // mov ebx, 0xfee00000
            0xc7, 0x83, 0x10, 0x03, 0, 0, 0x00, 0x00, 0x00, 0x01, // ICR high: APIC ID 1
            0xc7, 0x83, 0x00, 0x03, 0, 0, 0x00, 0x45, 0x00, 0x00, // ICR low: INIT, assert
            0xc7, 0x83, 0x10, 0x03, 0, 0, 0x00, 0x00, 0x00, 0x01,
            0xc7, 0x83, 0x00, 0x03, 0, 0, 0x10, 0x46, 0x00, 0x00, // ICR low: SIPI vector 0x10
            0xeb, 0xfe,                                           // spin
        ];
        #[rustfmt::skip]
        let ap: [u8; 12] = [
            0xb0, 0x55, 0xe6, 0xf4, // mov al, 0x55; out 0xf4, al
            0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al  (reset)
            0xf4, 0xeb, 0xfd, 0x90, // hlt; jmp back
        ];
        let mem = memory::create_guest_memory(memory::MIN_RAM_BYTES).unwrap();
        let elf = temp_file(&tiny_elf(&bsp, KERNEL_START, 0));
        let kernel = memory::load_kernel(&mem, &elf.0).unwrap();
        regs::write_boot_structures(&mem).unwrap();
        vm_memory::Bytes::write_slice(&mem, &ap, vm_memory::GuestAddress(0x10000)).unwrap();
        let vm = Vm::new().unwrap();
        vm.register_memory(&mem).unwrap();
        let supported = vm.supported_cpuid().unwrap();
        let exit = Arc::new(ExitState::new());
        let shared = Arc::new(VcpuShared {
            mmio: MmioBus::new(),
            serial: Mutex::new(SerialSink::new()),
            exit: exit.clone(),
            exits: AtomicU64::new(0),
            converter: None,
        });
        // Every vCPU exists before any runs, as in Vmm::run: an IPI to a vCPU that KVM does
        // not know yet is lost.
        let fds: Vec<VcpuFd> = (0..2u8)
            .map(|i| {
                let fd = vm.create_vcpu(i).unwrap();
                configure(&fd, i, 2, &supported, kernel.entry).unwrap();
                fd
            })
            .collect();
        let handles: Vec<VcpuHandle> = (0u8..)
            .zip(fds)
            .map(|(i, fd)| spawn(fd, i, shared.clone()).unwrap())
            .collect();
        let watchdog_exit = exit.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            watchdog_exit.request_stop(StopReason::HostRequest);
        });
        let (status, reason) = exit.wait();
        join_all(handles);
        assert_eq!((status, reason), (Some(0x55), StopReason::Reset));
    }
}
