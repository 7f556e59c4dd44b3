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

/// A blob the PSP would read: what it is, and its bytes.
pub type Blob = (&'static str, Vec<u8>);

/// The fake; clones share the record.
#[derive(Debug, Clone, Default)]
pub struct FakeOps {
    /// Everything issued, in order.
    pub log: Arc<Mutex<Vec<Ioctl>>>,
    /// SNP_LAUNCH_UPDATE processes at most this many pages per call (0 = all).
    pub pages_per_update: u64,
    /// The first SNP_LAUNCH_UPDATE fails with EAGAIN once.
    pub eagain_once: bool,
    /// The blobs the PSP would read, in order: LAUNCH_START's GODH certificate and session,
    /// LAUNCH_SECRET's header and ciphertext.
    pub blobs: Arc<Mutex<Vec<Blob>>>,
}

impl FakeOps {
    /// The record so far.
    pub fn log(&self) -> Vec<Ioctl> {
        self.log.lock().unwrap().clone()
    }

    fn push(&self, i: Ioctl) {
        self.log.lock().unwrap().push(i);
    }

    /// The blobs so far.
    pub fn blobs(&self) -> Vec<Blob> {
        self.blobs.lock().unwrap().clone()
    }

    /// Copies `len` bytes at host address `addr` into the blob record (nothing for 0/0).
    ///
    /// # Safety
    /// `addr..addr + len` must be readable, as the backend guarantees during the call.
    unsafe fn keep(&self, what: &'static str, addr: u64, len: u32) {
        if addr == 0 || len == 0 {
            return;
        }
        // SAFETY: the caller's contract.
        let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) };
        self.blobs.lock().unwrap().push((what, bytes.to_vec()));
    }
}

/// A platform whose `/dev/sev` exports `id`'s PDH chain (PDH ‖ PEK ‖ OCA ‖ CEK), with
/// firmware build 1.55 build 21.
pub fn platform_of(id: &krun_psp_model::ModelIdentity) -> super::platform::PlatformInfo {
    use sev::parser::Encoder;
    let full = id.sev_chain().unwrap();
    let mut platform_chain = Vec::new();
    full.sev.encode(&mut platform_chain, ()).unwrap();
    super::platform::PlatformInfo {
        build: super::platform::FirmwareBuild {
            major: 1,
            minor: 55,
            build: 21,
        },
        platform_chain,
        identifier: "00".repeat(64),
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
                // SAFETY: the backend passes live blobs of the lengths it gives.
                unsafe {
                    self.keep("godh", s.dh_uaddr, s.dh_len);
                    self.keep("session", s.session_uaddr, s.session_len);
                }
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
                // SAFETY: the backend passes live blobs of the lengths it gives.
                unsafe {
                    self.keep("header", s.hdr_uaddr, s.hdr_len);
                    self.keep("ciphertext", s.trans_uaddr, s.trans_len);
                }
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
