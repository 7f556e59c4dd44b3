//! The KVM ioctls of a hardware launch behind one small trait, so the backend's translation
//! from launch commands to kernel structures can be tested without SEV.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use kvm_ioctls::VmFd;

use super::uapi::{
    kvm_create_guest_memfd, kvm_enc_region, kvm_memory_attributes, kvm_sev_cmd,
    kvm_userspace_memory_region2,
};

/// The VM-fd ioctls a hardware launch issues.
pub trait KvmSevOps: Send + std::fmt::Debug {
    /// `KVM_MEMORY_ENCRYPT_OP`. `cmd.data` is 0 or the address of the sub-command's
    /// structure, live and writable for the duration of the call; the kernel may write that
    /// structure and `cmd.error`.
    fn encrypt_op(&mut self, cmd: &mut kvm_sev_cmd) -> Result<(), kvm_ioctls::Error>;
    /// `KVM_MEMORY_ENCRYPT_REG_REGION`.
    fn register_enc_region(&mut self, region: &kvm_enc_region) -> Result<(), kvm_ioctls::Error>;
    /// `KVM_CREATE_GUEST_MEMFD`; returns the new fd.
    fn create_guest_memfd(
        &mut self,
        gmem: kvm_create_guest_memfd,
    ) -> Result<RawFd, kvm_ioctls::Error>;
    /// `KVM_SET_USER_MEMORY_REGION2`.
    ///
    /// # Safety
    /// `[userspace_addr, userspace_addr + memory_size)` must be a live mapping that outlives
    /// the VM and overlaps no other slot.
    unsafe fn set_user_memory_region2(
        &mut self,
        region: kvm_userspace_memory_region2,
    ) -> Result<(), kvm_ioctls::Error>;
    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    fn set_memory_attributes(
        &mut self,
        attr: kvm_memory_attributes,
    ) -> Result<(), kvm_ioctls::Error>;
    /// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)` with the mask of hypercalls that exit.
    fn enable_exit_hypercall(&mut self, mask: u64) -> Result<(), kvm_ioctls::Error>;
    /// The `/dev/sev` fd passed in every `kvm_sev_cmd`.
    fn sev_fd(&self) -> u32;
}

/// The real ioctls on a VM fd, with `/dev/sev` open.
#[derive(Debug)]
pub struct VmSevOps {
    vm: Arc<VmFd>,
    sev: std::fs::File,
}

impl VmSevOps {
    /// Issues ioctls on `vm` with `sev` (an open `/dev/sev`) as the firmware fd.
    pub fn new(vm: Arc<VmFd>, sev: std::fs::File) -> Self {
        VmSevOps { vm, sev }
    }
}

impl KvmSevOps for VmSevOps {
    fn encrypt_op(&mut self, cmd: &mut kvm_sev_cmd) -> Result<(), kvm_ioctls::Error> {
        self.vm.encrypt_op_sev(cmd)
    }
    fn register_enc_region(&mut self, region: &kvm_enc_region) -> Result<(), kvm_ioctls::Error> {
        self.vm.register_enc_memory_region(region)
    }
    fn create_guest_memfd(
        &mut self,
        gmem: kvm_create_guest_memfd,
    ) -> Result<RawFd, kvm_ioctls::Error> {
        self.vm.create_guest_memfd(gmem)
    }
    unsafe fn set_user_memory_region2(
        &mut self,
        region: kvm_userspace_memory_region2,
    ) -> Result<(), kvm_ioctls::Error> {
        // SAFETY: the caller upholds this function's contract (live, non-overlapping mapping
        // that outlives the VM), which is the ioctl's.
        unsafe { self.vm.set_user_memory_region2(region) }
    }
    fn set_memory_attributes(
        &mut self,
        attr: kvm_memory_attributes,
    ) -> Result<(), kvm_ioctls::Error> {
        self.vm.set_memory_attributes(attr)
    }
    fn enable_exit_hypercall(&mut self, mask: u64) -> Result<(), kvm_ioctls::Error> {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: super::uapi::CAP_EXIT_HYPERCALL,
            args: [mask, 0, 0, 0],
            ..Default::default()
        };
        self.vm.enable_cap(&cap)
    }
    fn sev_fd(&self) -> u32 {
        // A valid fd is non-negative.
        u32::try_from(self.sev.as_raw_fd()).unwrap_or(u32::MAX)
    }
}
