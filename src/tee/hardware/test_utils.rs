//! A fake VM fd for the hardware backend's tests: records every ioctl with the structure
//! the kernel would read, answers like KVM would (partial SNP_LAUNCH_UPDATE progress,
//! EAGAIN, a 48-byte LAUNCH_MEASURE).

use std::os::fd::{IntoRawFd, RawFd};
use std::sync::{Arc, Mutex};

use super::ioctls::KvmSevOps;
use super::uapi::{self, cmd};

/// One ioctl as the kernel would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ioctl {
    /// KVM_SEV_INIT2.
    Init2 {
        /// vmsa_features.
        vmsa_features: u64,
        /// ghcb_version.
        ghcb_version: u16,
    },
    /// KVM_MEMORY_ENCRYPT_REG_REGION (host address, size).
    RegRegion(u64, u64),
    /// KVM_CREATE_GUEST_MEMFD (size).
    CreateGmem(u64),
    /// KVM_SET_USER_MEMORY_REGION2 (slot, flags, gpa, size, host address).
    Slot2(u32, u32, u64, u64, u64),
    /// KVM_SET_MEMORY_ATTRIBUTES (gpa, size, attributes).
    Attributes(u64, u64, u64),
    /// KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL) mask.
    ExitHypercall(u64),
    /// KVM_SEV_LAUNCH_START (policy, dh_len, session_len).
    LaunchStart(u32, u32, u32),
    /// KVM_SEV_LAUNCH_UPDATE_DATA (host address, len).
    UpdateData(u64, u32),
    /// KVM_SEV_LAUNCH_UPDATE_VMSA (data pointer, must be 0).
    UpdateVmsa(u64),
    /// KVM_SEV_LAUNCH_MEASURE (len).
    Measure(u32),
    /// KVM_SEV_LAUNCH_SECRET (hdr_len, guest address, guest_len, trans_len).
    Secret(u32, u64, u32, u32),
    /// KVM_SEV_LAUNCH_FINISH.
    Finish,
    /// KVM_SEV_SNP_LAUNCH_START (policy, flags).
    SnpStart(u64, u16),
    /// KVM_SEV_SNP_LAUNCH_UPDATE (gfn_start, host address, len, type) as issued.
    SnpUpdate(u64, u64, u64, u8),
    /// KVM_SEV_SNP_LAUNCH_FINISH (id_block_en, auth_key_en, vcek_disabled, host_data[0]).
    SnpFinish(u8, u8, u8, u8),
    /// A sub-command id the fake does not know.
    Unknown(u32),
}

/// The fake; clones share the record.
#[derive(Debug, Clone, Default)]
pub struct FakeOps {
    /// Everything issued, in order.
    pub log: Arc<Mutex<Vec<Ioctl>>>,
    /// SNP_LAUNCH_UPDATE processes at most this many pages per call (0 = all).
    pub pages_per_update: u64,
    /// The first SNP_LAUNCH_UPDATE fails with EAGAIN once.
    pub eagain_once: bool,
}

impl FakeOps {
    /// The record so far.
    pub fn log(&self) -> Vec<Ioctl> {
        self.log.lock().unwrap().clone()
    }

    fn push(&self, i: Ioctl) {
        self.log.lock().unwrap().push(i);
    }
}

/// Reads the sub-command structure at `data`.
///
/// # Safety
/// `data` must point to a live `T`, as the backend guarantees for the duration of the call.
unsafe fn at<'a, T>(data: u64) -> &'a mut T {
    // SAFETY: the caller's contract.
    unsafe { &mut *(data as *mut T) }
}

impl KvmSevOps for FakeOps {
    fn encrypt_op(&mut self, c: &mut uapi::kvm_sev_cmd) -> Result<(), kvm_ioctls::Error> {
        let entry = match c.id {
            cmd::INIT2 => {
                // SAFETY: the backend passes its own live structure of the type the sub-command
                // id names (and a live 48-byte buffer for MEASURE), as the kernel expects.
                let s = unsafe { at::<uapi::kvm_sev_init>(c.data) };
                Ioctl::Init2 {
                    vmsa_features: s.vmsa_features,
                    ghcb_version: s.ghcb_version,
                }
            }
            cmd::LAUNCH_START => {
                // SAFETY: the backend passes its own live structure of the type the sub-command
                // id names (and a live 48-byte buffer for MEASURE), as the kernel expects.
                let s = unsafe { at::<uapi::kvm_sev_launch_start>(c.data) };
                s.handle = 1;
                Ioctl::LaunchStart(s.policy, s.dh_len, s.session_len)
            }
            cmd::LAUNCH_UPDATE_DATA => {
                // SAFETY: the backend passes its own live structure of the type the sub-command
                // id names (and a live 48-byte buffer for MEASURE), as the kernel expects.
                let s = unsafe { at::<uapi::kvm_sev_launch_update_data>(c.data) };
                Ioctl::UpdateData(s.uaddr, s.len)
            }
            cmd::LAUNCH_UPDATE_VMSA => Ioctl::UpdateVmsa(c.data),
            cmd::LAUNCH_MEASURE => {
                // SAFETY: the backend passes its own live structure of the type the sub-command
                // id names (and a live 48-byte buffer for MEASURE), as the kernel expects.
                let s = unsafe { at::<uapi::kvm_sev_launch_measure>(c.data) };
                // SAFETY: the backend passes its own live structure of the type the sub-command
                // id names (and a live 48-byte buffer for MEASURE), as the kernel expects.
                let out = unsafe { &mut *(s.uaddr as *mut [u8; 48]) };
                out.fill(0xab);
                Ioctl::Measure(s.len)
            }
            cmd::LAUNCH_SECRET => {
                // SAFETY: the backend passes its own live structure of the type the sub-command
                // id names (and a live 48-byte buffer for MEASURE), as the kernel expects.
                let s = unsafe { at::<uapi::kvm_sev_launch_secret>(c.data) };
                Ioctl::Secret(s.hdr_len, s.guest_uaddr, s.guest_len, s.trans_len)
            }
            cmd::LAUNCH_FINISH => Ioctl::Finish,
            cmd::SNP_LAUNCH_START => {
                // SAFETY: the backend passes its own live structure of the type the sub-command
                // id names (and a live 48-byte buffer for MEASURE), as the kernel expects.
                let s = unsafe { at::<uapi::kvm_sev_snp_launch_start>(c.data) };
                Ioctl::SnpStart(s.policy, s.flags)
            }
            cmd::SNP_LAUNCH_UPDATE => {
                // SAFETY: the backend passes its own live structure of the type the sub-command
                // id names (and a live 48-byte buffer for MEASURE), as the kernel expects.
                let s = unsafe { at::<uapi::kvm_sev_snp_launch_update>(c.data) };
                if self.eagain_once {
                    self.eagain_once = false;
                    return Err(kvm_ioctls::Error::new(libc::EAGAIN));
                }
                let issued = Ioctl::SnpUpdate(s.gfn_start, s.uaddr, s.len, s.type_);
                let pages = match self.pages_per_update {
                    0 => s.len / 4096,
                    n => n.min(s.len / 4096),
                };
                s.gfn_start += pages;
                s.len -= pages * 4096;
                if u32::from(s.type_) != kvm_bindings::KVM_SEV_SNP_PAGE_TYPE_ZERO {
                    s.uaddr += pages * 4096;
                }
                issued
            }
            cmd::SNP_LAUNCH_FINISH => {
                // SAFETY: the backend passes its own live structure of the type the sub-command
                // id names (and a live 48-byte buffer for MEASURE), as the kernel expects.
                let s = unsafe { at::<uapi::kvm_sev_snp_launch_finish>(c.data) };
                Ioctl::SnpFinish(
                    s.id_block_en,
                    s.auth_key_en,
                    s.vcek_disabled,
                    s.host_data[0],
                )
            }
            other => Ioctl::Unknown(other),
        };
        self.push(entry);
        Ok(())
    }
    fn register_enc_region(&mut self, r: &uapi::kvm_enc_region) -> Result<(), kvm_ioctls::Error> {
        self.push(Ioctl::RegRegion(r.addr, r.size));
        Ok(())
    }
    fn create_guest_memfd(
        &mut self,
        g: uapi::kvm_create_guest_memfd,
    ) -> Result<RawFd, kvm_ioctls::Error> {
        self.push(Ioctl::CreateGmem(g.size));
        let f = std::fs::File::open("/dev/null").map_err(|_| kvm_ioctls::Error::new(libc::EIO))?;
        Ok(f.into_raw_fd())
    }
    unsafe fn set_user_memory_region2(
        &mut self,
        r: uapi::kvm_userspace_memory_region2,
    ) -> Result<(), kvm_ioctls::Error> {
        self.push(Ioctl::Slot2(
            r.slot,
            r.flags,
            r.guest_phys_addr,
            r.memory_size,
            r.userspace_addr,
        ));
        Ok(())
    }
    fn set_memory_attributes(
        &mut self,
        a: uapi::kvm_memory_attributes,
    ) -> Result<(), kvm_ioctls::Error> {
        self.push(Ioctl::Attributes(a.address, a.size, a.attributes));
        Ok(())
    }
    fn enable_exit_hypercall(&mut self, mask: u64) -> Result<(), kvm_ioctls::Error> {
        self.push(Ioctl::ExitHypercall(mask));
        Ok(())
    }
    fn sev_fd(&self) -> u32 {
        7
    }
}
