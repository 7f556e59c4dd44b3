//! The AMD-SP command interface one launch sequence drives, whatever performs it.
//!
//! [`LaunchBackend`] has one method per launch command (LAUNCH_START, UPDATE_DATA,
//! SNP_LAUNCH_UPDATE, UPDATE_VMSA, MEASURE, SECRET, FINISH) plus the VM-level steps the
//! hardware needs before them (VM type, KVM_SEV_INIT2, memory registration, private/shared
//! attributes). Implementations: the PSP model (`super::measure::ModelBackend`), the
//! hardware (`super::hardware::HardwareBackend`), and [`Recorder`], which records every
//! command with its arguments and forwards it, so tests can compare what two code paths
//! issue, and optionally the bytes each measures (`super::dump`). The order is decided once, in `super::measure` and `crate::launch::sequence`.

use std::sync::{Arc, Mutex};

use super::dump::Update;
use super::measure::ModelBackend;
use super::vmsa::VMSA_SIZE;
use super::{TeeError, TeeMode};
use crate::vmm::memory::GuestMemory;

/// `KVM_CREATE_VM` machine types (Linux `arch/x86/include/uapi/asm/kvm.h`).
pub mod vm_type {
    /// A plain VM (the PSP model runs the guest unencrypted).
    pub const DEFAULT: u64 = 0;
    /// `KVM_X86_SEV_VM`.
    pub const SEV: u64 = 2;
    /// `KVM_X86_SEV_ES_VM`.
    pub const SEV_ES: u64 = 3;
    /// `KVM_X86_SNP_VM`.
    pub const SNP: u64 = 4;
}

/// SNP_LAUNCH_UPDATE page types (`KVM_SEV_SNP_PAGE_TYPE_*`, equal to the firmware's; VMSA
/// pages are issued by KVM itself at SNP_LAUNCH_FINISH and have no userspace value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SnpPageType {
    /// Contents measured.
    Normal = 1,
    /// Zero-filled and validated.
    Zero = 3,
    /// Validated, not measured.
    Unmeasured = 4,
    /// The secrets page (filled by the firmware).
    Secrets = 5,
    /// The CPUID page (checked by the firmware).
    Cpuid = 6,
}

/// The guest owner's LAUNCH_START blobs (SEV/SEV-ES with a key broker).
#[derive(Debug, Clone, Copy)]
pub struct OwnerBlobs<'a> {
    /// The owner's Diffie-Hellman certificate (0x824 bytes).
    pub godh_cert: &'a [u8],
    /// The session buffer (0x80 bytes).
    pub session: &'a [u8],
}

/// LAUNCH_START / SNP_LAUNCH_START parameters.
#[derive(Debug, Clone, Copy)]
pub struct StartParams<'a> {
    /// Guest policy (u32 for SEV/SEV-ES, u64 for SNP).
    pub policy: u64,
    /// SEV/SEV-ES: the owner's session; `None` = a local session with random keys.
    pub owner: Option<OwnerBlobs<'a>>,
}

/// SNP_LAUNCH_FINISH parameters (SEV/SEV-ES ignore them).
#[derive(Debug, Clone, Copy, Default)]
pub struct FinishParams<'a> {
    /// ID block (96 bytes) and ID auth structure (4096 bytes).
    pub id_block: Option<(&'a [u8], &'a [u8])>,
    /// Whether the ID auth structure carries an author key.
    pub author_key_en: bool,
    /// HOST_DATA bound into every report.
    pub host_data: [u8; 32],
}

/// What LAUNCH_MEASURE returns (SEV/SEV-ES): MEASURE (HMAC) ‖ MNONCE.
pub type LaunchMeasure = [u8; 48];

/// The AMD-SP launch commands and the VM-level steps before them.
///
/// Call order (enforced by the callers, checked by the recording tests): `sev_init`,
/// `register_memory`, `launch_start`, `update_data`/`snp_update` per region, `update_vmsas`,
/// `measure` (SEV/SEV-ES), `secret` (optional), `finish`. `set_private` may come at any
/// time after `register_memory` (runtime page-state changes).
pub trait LaunchBackend: Send + std::fmt::Debug {
    /// The `KVM_CREATE_VM` type this backend needs for `mode`.
    fn vm_type(&self, mode: TeeMode) -> u64;
    /// Whether [`Self::register_memory`] creates the KVM memory slots itself (SNP
    /// guest_memfd slots); otherwise the VMM registers plain slots first.
    fn creates_memory_slots(&self, mode: TeeMode) -> bool;
    /// Gives the backend the VM it works on (hardware); not a launch command.
    fn attach_vm(&mut self, _vm: Arc<kvm_ioctls::VmFd>) {}
    /// KVM_SEV_INIT2 for the VM type of `mode`, before any vCPU exists.
    fn sev_init(&mut self, mode: TeeMode) -> Result<(), TeeError>;
    /// Registers guest RAM: KVM_MEMORY_ENCRYPT_REG_REGION (SEV/SEV-ES) or guest_memfd slots
    /// with the PRIVATE attribute (SNP).
    fn register_memory(&mut self, mem: &GuestMemory) -> Result<(), TeeError>;
    /// KVM_SET_MEMORY_ATTRIBUTES for `[gpa, gpa + len)`: private or shared (SNP).
    fn set_private(&mut self, gpa: u64, len: u64, private: bool) -> Result<(), TeeError>;
    /// LAUNCH_START / SNP_LAUNCH_START.
    fn launch_start(&mut self, start: &StartParams<'_>) -> Result<(), TeeError>;
    /// LAUNCH_UPDATE_DATA over `[gpa, gpa + len)` of `mem` (SEV/SEV-ES).
    fn update_data(&mut self, mem: &GuestMemory, gpa: u64, len: u64) -> Result<(), TeeError>;
    /// SNP_LAUNCH_UPDATE over `[gpa, gpa + len)` with page type `ty`. The secrets page comes
    /// back filled in `mem` where the backend can see it (model); the CPUID page must already
    /// be in `mem`.
    fn snp_update(
        &mut self,
        mem: &GuestMemory,
        gpa: u64,
        len: u64,
        ty: SnpPageType,
    ) -> Result<(), TeeError>;
    /// LAUNCH_UPDATE_VMSA (SEV-ES) or the VMSA updates of SNP_LAUNCH_FINISH, vCPU 0 first.
    /// `vmsas` is what `super::vmsa` models; the hardware measures KVM's own VMSAs, built
    /// from the vCPU registers (which the VMM sets to the same reset state).
    fn update_vmsas(&mut self, vmsas: &[Box<[u8; VMSA_SIZE]>]) -> Result<(), TeeError>;
    /// LAUNCH_MEASURE (SEV/SEV-ES).
    fn measure(&mut self) -> Result<LaunchMeasure, TeeError>;
    /// LAUNCH_SECRET of an owner packet into guest memory at `gpa`.
    fn secret(
        &mut self,
        mem: &GuestMemory,
        gpa: u64,
        header: &[u8],
        ciphertext: &[u8],
    ) -> Result<(), TeeError>;
    /// LAUNCH_FINISH / SNP_LAUNCH_FINISH.
    fn finish(&mut self, params: &FinishParams<'_>) -> Result<(), TeeError>;
    /// Applies the guest's runtime private/shared conversions (SNP on hardware).
    fn memory_converter(&self) -> Option<Arc<dyn super::hardware::convert::MemoryConverter>> {
        None
    }
    /// The PSP model behind this backend, if any (launch digest, SNP report context).
    fn as_model(&mut self) -> Option<&mut ModelBackend> {
        None
    }
}

/// One recorded command with the arguments that matter to the AMD-SP or KVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The VM was created with this `KVM_CREATE_VM` type.
    VmType(u64),
    /// KVM_SEV_INIT2.
    SevInit(TeeMode),
    /// Guest RAM registration, one entry per region.
    RegisterMemory {
        /// Region start.
        gpa: u64,
        /// Region length.
        len: u64,
    },
    /// KVM_SET_MEMORY_ATTRIBUTES.
    SetPrivate {
        /// Range start.
        gpa: u64,
        /// Range length.
        len: u64,
        /// PRIVATE or shared.
        private: bool,
    },
    /// LAUNCH_START.
    LaunchStart {
        /// Policy.
        policy: u64,
        /// Whether an owner session was given.
        owner: bool,
    },
    /// LAUNCH_UPDATE_DATA.
    UpdateData {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// SNP_LAUNCH_UPDATE.
    SnpUpdate {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
        /// Page type.
        ty: SnpPageType,
    },
    /// LAUNCH_UPDATE_VMSA for this many vCPUs.
    UpdateVmsas(usize),
    /// LAUNCH_MEASURE.
    Measure,
    /// LAUNCH_SECRET.
    Secret {
        /// Guest address.
        gpa: u64,
        /// Ciphertext length.
        len: usize,
    },
    /// LAUNCH_FINISH.
    Finish {
        /// An ID block was given.
        id_block: bool,
        /// HOST_DATA.
        host_data: [u8; 32],
    },
}

/// Records every command, then forwards it to the wrapped backend.
#[derive(Debug)]
pub struct Recorder<B> {
    /// The backend doing the work.
    pub inner: B,
    /// What was issued, in order.
    pub commands: Arc<Mutex<Vec<Command>>>,
    /// With [`Recorder::with_updates`]: the measured commands with their bytes, read from
    /// guest memory just before the command reaches `inner`.
    pub updates: Option<Arc<Mutex<Vec<Update>>>>,
}

impl<B> Recorder<B> {
    /// Wraps `inner` with an empty record.
    pub fn new(inner: B) -> Self {
        Recorder {
            inner,
            commands: Default::default(),
            updates: None,
        }
    }

    /// Wraps `inner`, recording the launch updates' bytes too (`super::dump`).
    pub fn with_updates(inner: B) -> Self {
        Recorder {
            updates: Some(Default::default()),
            ..Recorder::new(inner)
        }
    }

    fn push(&self, c: Command) {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
    }

    /// Records `make()`'s update when updates are recorded.
    fn push_update(&self, make: impl FnOnce() -> Result<Update, TeeError>) -> Result<(), TeeError> {
        if let Some(updates) = &self.updates {
            let u = make()?;
            updates.lock().unwrap_or_else(|e| e.into_inner()).push(u);
        }
        Ok(())
    }

    /// A copy of the record.
    pub fn record(&self) -> Vec<Command> {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl<B: LaunchBackend> LaunchBackend for Recorder<B> {
    fn vm_type(&self, mode: TeeMode) -> u64 {
        self.inner.vm_type(mode)
    }
    fn creates_memory_slots(&self, mode: TeeMode) -> bool {
        self.inner.creates_memory_slots(mode)
    }
    fn attach_vm(&mut self, vm: Arc<kvm_ioctls::VmFd>) {
        self.inner.attach_vm(vm)
    }
    fn sev_init(&mut self, mode: TeeMode) -> Result<(), TeeError> {
        self.push(Command::VmType(self.inner.vm_type(mode)));
        self.push(Command::SevInit(mode));
        self.inner.sev_init(mode)
    }
    fn register_memory(&mut self, mem: &GuestMemory) -> Result<(), TeeError> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        for r in mem.iter() {
            self.push(Command::RegisterMemory {
                gpa: r.start_addr().0,
                len: r.len(),
            });
        }
        self.inner.register_memory(mem)
    }
    fn set_private(&mut self, gpa: u64, len: u64, private: bool) -> Result<(), TeeError> {
        self.push(Command::SetPrivate { gpa, len, private });
        self.inner.set_private(gpa, len, private)
    }
    fn launch_start(&mut self, start: &StartParams<'_>) -> Result<(), TeeError> {
        self.push(Command::LaunchStart {
            policy: start.policy,
            owner: start.owner.is_some(),
        });
        self.push_update(|| {
            Ok(Update::LaunchStart {
                policy: start.policy,
            })
        })?;
        self.inner.launch_start(start)
    }
    fn update_data(&mut self, mem: &GuestMemory, gpa: u64, len: u64) -> Result<(), TeeError> {
        self.push(Command::UpdateData { gpa, len });
        self.push_update(|| {
            Ok(Update::Data {
                gpa,
                bytes: read_guest(mem, gpa, len)?,
            })
        })?;
        self.inner.update_data(mem, gpa, len)
    }
    fn snp_update(
        &mut self,
        mem: &GuestMemory,
        gpa: u64,
        len: u64,
        ty: SnpPageType,
    ) -> Result<(), TeeError> {
        self.push(Command::SnpUpdate { gpa, len, ty });
        self.push_update(|| {
            // The secrets page is filled by the AMD-SP: never dumped.
            let bytes = match ty {
                SnpPageType::Normal | SnpPageType::Cpuid => Some(read_guest(mem, gpa, len)?),
                SnpPageType::Zero | SnpPageType::Unmeasured | SnpPageType::Secrets => None,
            };
            Ok(Update::Snp {
                gpa,
                len,
                ty,
                bytes,
            })
        })?;
        self.inner.snp_update(mem, gpa, len, ty)
    }
    fn update_vmsas(&mut self, vmsas: &[Box<[u8; VMSA_SIZE]>]) -> Result<(), TeeError> {
        self.push(Command::UpdateVmsas(vmsas.len()));
        for page in vmsas {
            self.push_update(|| {
                Ok(Update::Vmsa {
                    bytes: page.to_vec(),
                })
            })?;
        }
        self.inner.update_vmsas(vmsas)
    }
    fn measure(&mut self) -> Result<LaunchMeasure, TeeError> {
        self.push(Command::Measure);
        self.push_update(|| Ok(Update::Measure))?;
        self.inner.measure()
    }
    fn secret(
        &mut self,
        mem: &GuestMemory,
        gpa: u64,
        header: &[u8],
        ciphertext: &[u8],
    ) -> Result<(), TeeError> {
        self.push(Command::Secret {
            gpa,
            len: ciphertext.len(),
        });
        self.inner.secret(mem, gpa, header, ciphertext)
    }
    fn finish(&mut self, params: &FinishParams<'_>) -> Result<(), TeeError> {
        self.push(Command::Finish {
            id_block: params.id_block.is_some(),
            host_data: params.host_data,
        });
        self.push_update(|| Ok(Update::Finish))?;
        self.inner.finish(params)
    }
    fn memory_converter(&self) -> Option<Arc<dyn super::hardware::convert::MemoryConverter>> {
        self.inner.memory_converter()
    }
    fn as_model(&mut self) -> Option<&mut ModelBackend> {
        self.inner.as_model()
    }
}

/// `len` bytes of `mem` from `gpa`.
fn read_guest(mem: &GuestMemory, gpa: u64, len: u64) -> Result<Vec<u8>, TeeError> {
    use vm_memory::{Bytes, GuestAddress};
    let len = usize::try_from(len).map_err(|_| TeeError::Layout)?;
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(gpa))
        .map_err(TeeError::Memory)?;
    Ok(buf)
}

impl LaunchBackend for Box<dyn LaunchBackend> {
    fn vm_type(&self, mode: TeeMode) -> u64 {
        (**self).vm_type(mode)
    }
    fn creates_memory_slots(&self, mode: TeeMode) -> bool {
        (**self).creates_memory_slots(mode)
    }
    fn attach_vm(&mut self, vm: Arc<kvm_ioctls::VmFd>) {
        (**self).attach_vm(vm)
    }
    fn sev_init(&mut self, mode: TeeMode) -> Result<(), TeeError> {
        (**self).sev_init(mode)
    }
    fn register_memory(&mut self, mem: &GuestMemory) -> Result<(), TeeError> {
        (**self).register_memory(mem)
    }
    fn set_private(&mut self, gpa: u64, len: u64, private: bool) -> Result<(), TeeError> {
        (**self).set_private(gpa, len, private)
    }
    fn launch_start(&mut self, start: &StartParams<'_>) -> Result<(), TeeError> {
        (**self).launch_start(start)
    }
    fn update_data(&mut self, mem: &GuestMemory, gpa: u64, len: u64) -> Result<(), TeeError> {
        (**self).update_data(mem, gpa, len)
    }
    fn snp_update(
        &mut self,
        mem: &GuestMemory,
        gpa: u64,
        len: u64,
        ty: SnpPageType,
    ) -> Result<(), TeeError> {
        (**self).snp_update(mem, gpa, len, ty)
    }
    fn update_vmsas(&mut self, vmsas: &[Box<[u8; VMSA_SIZE]>]) -> Result<(), TeeError> {
        (**self).update_vmsas(vmsas)
    }
    fn measure(&mut self) -> Result<LaunchMeasure, TeeError> {
        (**self).measure()
    }
    fn secret(
        &mut self,
        mem: &GuestMemory,
        gpa: u64,
        header: &[u8],
        ciphertext: &[u8],
    ) -> Result<(), TeeError> {
        (**self).secret(mem, gpa, header, ciphertext)
    }
    fn finish(&mut self, params: &FinishParams<'_>) -> Result<(), TeeError> {
        (**self).finish(params)
    }
    fn memory_converter(&self) -> Option<Arc<dyn super::hardware::convert::MemoryConverter>> {
        (**self).memory_converter()
    }
    fn as_model(&mut self) -> Option<&mut ModelBackend> {
        (**self).as_model()
    }
}
