//! The KVM VM: system fd, VM fd, guest memory slots, in-kernel irqchip and PIT.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use std::sync::Arc;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};
use crate::vmm::memory::GuestMemory;

/// Errors while creating or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("cannot create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// Setting the TSS or identity-map address failed.
    #[error("cannot set the KVM TSS or identity-map address")]
    SetTss(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_IRQCHIP` failed.
    #[error("cannot create the in-kernel irqchip")]
    IrqChip(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_PIT2` failed.
    #[error("cannot create the in-kernel PIT")]
    Pit(#[source] kvm_ioctls::Error),
    /// A memory region does not fit a KVM slot.
    #[error("guest memory has too many or too large regions")]
    MemoryLayout,
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("cannot register guest memory with KVM")]
    SetMemory(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("cannot read KVM's supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// `KVM_IRQFD` failed.
    #[error("cannot register an irqfd")]
    Irqfd(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create a vCPU")]
    CreateVcpu(#[source] kvm_ioctls::Error),
}

/// An x86_64 KVM VM with its in-kernel interrupt controllers.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: Arc<VmFd>,
}

impl Vm {
    /// Creates the VM with an in-kernel IOAPIC/PIC/LAPIC and PIT.
    pub fn new() -> Result<Self, VmError> {
        Self::with_type(0)
    }

    /// [`Vm::new`] with a `KVM_CREATE_VM` machine type (0 = default; 2/3/4 = SEV, SEV-ES,
    /// SNP, `crate::tee::backend::vm_type`).
    pub fn with_type(vm_type: u64) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = match vm_type {
            0 => kvm.create_vm(),
            t => kvm.create_vm_with_type(t),
        }
        .map_err(VmError::CreateVm)?;
        let fd = Arc::new(fd);
        let tss = usize::try_from(KVM_TSS_START).map_err(|_| VmError::MemoryLayout)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_START)
            .map_err(VmError::SetTss)?;
        fd.set_tss_address(tss).map_err(VmError::SetTss)?;
        fd.create_irq_chip().map_err(VmError::IrqChip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(Vm { kvm, fd })
    }

    /// Registers every region of `mem` as a KVM memory slot.
    ///
    /// `mem` must outlive the VM: the caller keeps it alive (the VMM holds it in an `Arc` until
    /// all vCPUs have been joined).
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::MemoryLayout)?;
            let entry = kvm_userspace_memory_region {
                slot: u32::try_from(slot).map_err(|_| VmError::MemoryLayout)?,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range [host, host + len) is a live mmap owned by `mem`'s region,
            // regions of one GuestMemoryMmap do not overlap, and the caller keeps `mem` alive
            // for the VM's lifetime (documented above), so KVM never sees a dangling mapping.
            unsafe { self.fd.set_user_memory_region(entry) }.map_err(VmError::SetMemory)?;
        }
        Ok(())
    }

    /// KVM's supported CPUID entries.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::SupportedCpuid)
    }

    /// Connects `evt` to interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd.register_irqfd(evt, gsi).map_err(VmError::Irqfd)
    }

    /// Creates vCPU `id`.
    pub fn create_vcpu(&self, id: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(id))
            .map_err(VmError::CreateVcpu)
    }

    /// The VM fd (for device-specific ioctls).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The VM fd, shared with the TEE launch and the runtime memory converter.
    pub fn shared_fd(&self) -> &Arc<VmFd> {
        &self.fd
    }
}
