//! The hardware backend: each launch command becomes the KVM ioctl and kernel structure
//! Linux 6.12 documents (`Documentation/virt/kvm/x86/amd-memory-encryption.rst`).
//!
//! Not run on SEV hardware (none is available to this project's CI); the translation is
//! checked with a fake [`KvmSevOps`] that records every structure the kernel would get.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::convert::{AttributeConverter, GuestRanges, MemoryConverter};
use super::ioctls::{KvmSevOps, VmSevOps};
use super::uapi::{self, cmd};
use super::HardwareError;
use crate::tee::backend::{
    vm_type, FinishParams, LaunchBackend, LaunchMeasure, SnpPageType, StartParams,
};
use crate::tee::vmsa::VMSA_SIZE;
use crate::tee::{TeeError, TeeMode};
use crate::vmm::memory::GuestMemory;

/// How often SNP_LAUNCH_UPDATE may answer EAGAIN or make partial progress for one region.
const MAX_UPDATE_ROUNDS: usize = 1 << 16;

/// A launch on AMD hardware through KVM.
#[derive(Debug)]
pub struct HardwareBackend {
    mode: TeeMode,
    /// `/dev/sev`, until the VM arrives.
    sev: Option<std::fs::File>,
    ops: Option<Box<dyn KvmSevOps>>,
    /// guest_memfd of each SNP slot. KVM's memslot does not hold the file: releasing it
    /// unbinds the slot's private memory, so these live as long as the VM (the VMM keeps
    /// the launch until the run ends).
    gmem: Vec<OwnedFd>,
    /// Registered guest RAM, for validating runtime conversions.
    ranges: GuestRanges,
    /// The VM, for the runtime converter.
    vm: Option<Arc<VmFd>>,
}

fn hw(e: HardwareError) -> TeeError {
    TeeError::Hardware(e)
}

impl HardwareBackend {
    /// A backend for `mode` that will issue its ioctls on the VM given to
    /// [`LaunchBackend::attach_vm`], with `sev` (`/dev/sev`, opened read-write) as the
    /// firmware fd.
    pub fn new(mode: TeeMode, sev: std::fs::File) -> Self {
        HardwareBackend {
            mode,
            sev: Some(sev),
            ops: None,
            gmem: Vec::new(),
            ranges: GuestRanges::default(),
            vm: None,
        }
    }

    /// A backend issuing its ioctls through `ops` (tests).
    pub fn with_ops(mode: TeeMode, ops: Box<dyn KvmSevOps>) -> Self {
        HardwareBackend {
            mode,
            sev: None,
            ops: Some(ops),
            gmem: Vec::new(),
            ranges: GuestRanges::default(),
            vm: None,
        }
    }

    /// The registered guest RAM.
    pub fn ranges(&self) -> &GuestRanges {
        &self.ranges
    }

    fn ops(&mut self) -> Result<&mut Box<dyn KvmSevOps>, TeeError> {
        self.ops.as_mut().ok_or(TeeError::OutOfOrder)
    }

    /// Issues sub-command `id` with `data` (a sub-command structure or nothing).
    fn op<T>(&mut self, id: u32, data: Option<&mut T>, what: &'static str) -> Result<(), TeeError> {
        let ops = self.ops()?;
        let mut c = uapi::kvm_sev_cmd {
            id,
            data: data.map_or(0, |d| d as *mut T as u64),
            sev_fd: ops.sev_fd(),
            ..Default::default()
        };
        ops.encrypt_op(&mut c).map_err(|source| {
            hw(HardwareError::Command {
                what,
                fw_error: c.error,
                source,
            })
        })
    }

    /// The host address of `[gpa, gpa + len)`, which must lie in one region of `mem`.
    fn host_range(mem: &GuestMemory, gpa: u64, len: u64) -> Result<u64, TeeError> {
        let n = usize::try_from(len).map_err(|_| TeeError::Layout)?;
        let slice = mem
            .get_slice(GuestAddress(gpa), n)
            .map_err(TeeError::Memory)?;
        Ok(slice.ptr_guard().as_ptr() as u64)
    }
}

impl LaunchBackend for HardwareBackend {
    fn vm_type(&self, mode: TeeMode) -> u64 {
        match mode {
            TeeMode::Sev => vm_type::SEV,
            TeeMode::SevEs => vm_type::SEV_ES,
            TeeMode::Snp => vm_type::SNP,
        }
    }

    fn creates_memory_slots(&self, mode: TeeMode) -> bool {
        mode == TeeMode::Snp
    }

    fn attach_vm(&mut self, vm: Arc<VmFd>) {
        if let Some(sev) = self.sev.take() {
            self.ops = Some(Box::new(VmSevOps::new(vm.clone(), sev)));
        }
        self.vm = Some(vm);
    }

    fn memory_converter(&self) -> Option<Arc<dyn MemoryConverter>> {
        match (&self.vm, self.mode) {
            (Some(vm), TeeMode::Snp) => Some(Arc::new(AttributeConverter::new(
                vm.clone(),
                self.ranges.clone(),
            ))),
            _ => None,
        }
    }

    /// KVM_SEV_INIT2 with no VMSA features (so the VMSA equals `crate::tee::vmsa`'s:
    /// SEV_FEATURES 0 under SEV-ES, SNPActive under SNP, which KVM adds itself) and GHCB
    /// protocol 2 for SEV-ES/SNP (0 is required for plain SEV).
    fn sev_init(&mut self, mode: TeeMode) -> Result<(), TeeError> {
        if mode != self.mode {
            return Err(TeeError::OutOfOrder);
        }
        let mut init = uapi::kvm_sev_init {
            ghcb_version: if mode == TeeMode::Sev {
                0
            } else {
                uapi::GHCB_VERSION
            },
            ..Default::default()
        };
        self.op(cmd::INIT2, Some(&mut init), "KVM_SEV_INIT2")
    }

    fn register_memory(&mut self, mem: &GuestMemory) -> Result<(), TeeError> {
        for (slot, region) in mem.iter().enumerate() {
            let gpa = region.start_addr().0;
            let len = region.len();
            let host = Self::host_range(mem, gpa, len)?;
            self.ranges.add(gpa, len)?;
            if self.mode != TeeMode::Snp {
                let r = uapi::kvm_enc_region {
                    addr: host,
                    size: len,
                };
                self.ops()?
                    .register_enc_region(&r)
                    .map_err(|e| hw(HardwareError::RegisterRegion(e)))?;
                continue;
            }
            let fd = self
                .ops()?
                .create_guest_memfd(uapi::kvm_create_guest_memfd {
                    size: len,
                    ..Default::default()
                })
                .map_err(|e| hw(HardwareError::GuestMemfd(e)))?;
            // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let entry = uapi::kvm_userspace_memory_region2 {
                slot: u32::try_from(slot).map_err(|_| TeeError::Layout)?,
                flags: uapi::MEM_GUEST_MEMFD,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: host,
                guest_memfd_offset: 0,
                guest_memfd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd))
                    .map_err(|_| TeeError::Layout)?,
                ..Default::default()
            };
            // SAFETY: the host range is `mem`'s live mapping of this region (regions do not
            // overlap) and the VMM keeps `mem` alive until the VM is gone.
            unsafe { self.ops()?.set_user_memory_region2(entry) }
                .map_err(|e| hw(HardwareError::MemorySlot(e)))?;
            self.gmem.push(fd);
            // Everything starts private: the launch updates need it, and the guest converts
            // what it shares with KVM_HC_MAP_GPA_RANGE.
            self.set_private(gpa, len, true)?;
        }
        if self.mode == TeeMode::Snp {
            // The guest's page-state changes reach the VMM as KVM_HC_MAP_GPA_RANGE exits.
            self.ops()?
                .enable_exit_hypercall(1 << uapi::HC_MAP_GPA_RANGE)
                .map_err(|e| hw(HardwareError::ExitHypercall(e)))?;
        }
        Ok(())
    }

    fn set_private(&mut self, gpa: u64, len: u64, private: bool) -> Result<(), TeeError> {
        self.ranges.check(gpa, len).map_err(hw)?;
        let attr = uapi::kvm_memory_attributes {
            address: gpa,
            size: len,
            attributes: if private {
                uapi::MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            },
            flags: 0,
        };
        self.ops()?
            .set_memory_attributes(attr)
            .map_err(|e| hw(HardwareError::Attributes(e)))
    }

    fn launch_start(&mut self, start: &StartParams<'_>) -> Result<(), TeeError> {
        if self.mode == TeeMode::Snp {
            let mut s = uapi::kvm_sev_snp_launch_start {
                policy: start.policy,
                ..Default::default()
            };
            return self.op(
                cmd::SNP_LAUNCH_START,
                Some(&mut s),
                "KVM_SEV_SNP_LAUNCH_START",
            );
        }
        let mut s = uapi::kvm_sev_launch_start {
            policy: u32::try_from(start.policy).map_err(|_| TeeError::Layout)?,
            ..Default::default()
        };
        if let Some(o) = start.owner {
            s.dh_uaddr = o.godh_cert.as_ptr() as u64;
            s.dh_len = u32::try_from(o.godh_cert.len()).map_err(|_| TeeError::Layout)?;
            s.session_uaddr = o.session.as_ptr() as u64;
            s.session_len = u32::try_from(o.session.len()).map_err(|_| TeeError::Layout)?;
        }
        self.op(cmd::LAUNCH_START, Some(&mut s), "KVM_SEV_LAUNCH_START")
    }

    /// In-place encryption of the VMM's mapping (the kernel pins and flushes it).
    fn update_data(&mut self, mem: &GuestMemory, gpa: u64, len: u64) -> Result<(), TeeError> {
        let mut u = uapi::kvm_sev_launch_update_data {
            uaddr: Self::host_range(mem, gpa, len)?,
            len: u32::try_from(len).map_err(|_| TeeError::Layout)?,
            ..Default::default()
        };
        self.op(
            cmd::LAUNCH_UPDATE_DATA,
            Some(&mut u),
            "KVM_SEV_LAUNCH_UPDATE_DATA",
        )
    }

    /// The kernel copies the source pages into the private guest_memfd pages and may stop
    /// early (a slot boundary); it writes the remaining range back, so loop until done.
    fn snp_update(
        &mut self,
        mem: &GuestMemory,
        gpa: u64,
        len: u64,
        ty: SnpPageType,
    ) -> Result<(), TeeError> {
        let mut u = uapi::kvm_sev_snp_launch_update {
            gfn_start: gpa >> 12,
            uaddr: Self::host_range(mem, gpa, len)?,
            len,
            type_: ty as u8,
            ..Default::default()
        };
        let mut cpuid_retry = ty == SnpPageType::Cpuid;
        for _ in 0..MAX_UPDATE_ROUNDS {
            if u.len == 0 {
                return Ok(());
            }
            let before = u.len;
            match self.op(
                cmd::SNP_LAUNCH_UPDATE,
                Some(&mut u),
                "KVM_SEV_SNP_LAUNCH_UPDATE",
            ) {
                Ok(()) if u.len >= before => return Err(hw(HardwareError::NoProgress)),
                Ok(()) => {}
                Err(TeeError::Hardware(HardwareError::Command { source, .. }))
                    if source.errno() == libc::EAGAIN => {}
                // The firmware rejected the CPUID page and KVM wrote its corrected values
                // back into the source page: log the difference and issue it once more.
                Err(e) if cpuid_retry => {
                    log::warn!("SNP CPUID page rejected by the firmware ({e}); retrying with its corrections");
                    cpuid_retry = false;
                }
                Err(e) => return Err(e),
            }
        }
        Err(hw(HardwareError::NoProgress))
    }

    /// KVM builds each VMSA from the vCPU's registers (`sev_es_sync_vmsa`) and measures them
    /// all in one LAUNCH_UPDATE_VMSA (SEV-ES); under SNP it does so inside
    /// SNP_LAUNCH_FINISH, so nothing is issued here. The modelled pages are not sent.
    fn update_vmsas(&mut self, _vmsas: &[Box<[u8; VMSA_SIZE]>]) -> Result<(), TeeError> {
        match self.mode {
            TeeMode::SevEs => {
                self.op::<u8>(cmd::LAUNCH_UPDATE_VMSA, None, "KVM_SEV_LAUNCH_UPDATE_VMSA")
            }
            TeeMode::Snp => Ok(()),
            TeeMode::Sev => Err(TeeError::OutOfOrder),
        }
    }

    fn measure(&mut self) -> Result<LaunchMeasure, TeeError> {
        let mut out = [0u8; 48];
        let mut m = uapi::kvm_sev_launch_measure {
            uaddr: out.as_mut_ptr() as u64,
            len: 48,
            ..Default::default()
        };
        self.op(cmd::LAUNCH_MEASURE, Some(&mut m), "KVM_SEV_LAUNCH_MEASURE")?;
        if m.len != 48 {
            return Err(hw(HardwareError::MeasureLength));
        }
        Ok(out)
    }

    /// The secret is decrypted by the firmware straight into the guest page (which must be
    /// one physically contiguous page: the slot is page aligned and at most a page).
    fn secret(
        &mut self,
        mem: &GuestMemory,
        gpa: u64,
        header: &[u8],
        ciphertext: &[u8],
    ) -> Result<(), TeeError> {
        let len = u64::try_from(ciphertext.len()).map_err(|_| TeeError::Layout)?;
        if len == 0 || (gpa & 0xfff) + len > 4096 {
            return Err(TeeError::SecretTooLarge);
        }
        let mut s = uapi::kvm_sev_launch_secret {
            hdr_uaddr: header.as_ptr() as u64,
            hdr_len: u32::try_from(header.len()).map_err(|_| TeeError::Layout)?,
            guest_uaddr: Self::host_range(mem, gpa, len)?,
            guest_len: u32::try_from(len).map_err(|_| TeeError::Layout)?,
            trans_uaddr: ciphertext.as_ptr() as u64,
            trans_len: u32::try_from(len).map_err(|_| TeeError::Layout)?,
            ..Default::default()
        };
        self.op(cmd::LAUNCH_SECRET, Some(&mut s), "KVM_SEV_LAUNCH_SECRET")
    }

    fn finish(&mut self, params: &FinishParams<'_>) -> Result<(), TeeError> {
        if self.mode != TeeMode::Snp {
            return self.op::<u8>(cmd::LAUNCH_FINISH, None, "KVM_SEV_LAUNCH_FINISH");
        }
        let mut f = uapi::kvm_sev_snp_launch_finish {
            host_data: params.host_data,
            auth_key_en: u8::from(params.author_key_en),
            ..Default::default()
        };
        if let Some((block, auth)) = params.id_block {
            if block.len() != uapi::SNP_ID_BLOCK_SIZE || auth.len() != uapi::SNP_ID_AUTH_SIZE {
                return Err(hw(HardwareError::IdBlock));
            }
            f.id_block_en = 1;
            f.id_block_uaddr = block.as_ptr() as u64;
            f.id_auth_uaddr = auth.as_ptr() as u64;
        } else if params.author_key_en {
            return Err(hw(HardwareError::IdBlock));
        }
        self.op(
            cmd::SNP_LAUNCH_FINISH,
            Some(&mut f),
            "KVM_SEV_SNP_LAUNCH_FINISH",
        )
    }
}
