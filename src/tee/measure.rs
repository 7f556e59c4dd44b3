//! The launch-update sequence over loaded guest memory, and the measurement calculator.
//!
//! [`launch_updates`] is the one place that decides what the AMD-SP measures: the launch
//! calls it on the VM's memory, [`calculate`] (`krun-sev measure`) on scratch memory filled
//! by the same loader. Order and page types: [`super::regions`], docs/measurement.md.

use std::sync::Arc;

use krun_psp_model::{ModelIdentity, SevGuest, SevMode, SnpGuest};
use vm_memory::{Bytes, GuestAddress};

use super::regions::{firmware_layout, measured_regions, MeasuredRegion, PageKind};
use super::{cpuid_page, vmsa, TeeError, TeeMode};
use crate::vmm::loader::{self, GuestImage, LoadedGuest, LoaderError};
use crate::vmm::memory::{self, GuestMemory, MemoryError};

/// Errors of the calculator (the launch reports its own through `TeeError`).
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// Scratch guest memory cannot be created.
    #[error("cannot create scratch guest memory")]
    Memory(#[source] MemoryError),
    /// The loader refused the inputs.
    #[error("cannot lay out the guest image")]
    Load(#[source] LoaderError),
    /// The launch sequence failed.
    #[error("launch sequence failed")]
    Tee(#[source] TeeError),
}

/// The model AMD-SP guest context of one launch.
#[derive(Debug)]
pub enum ModelLaunch {
    /// SEV or SEV-ES.
    Sev(SevGuest),
    /// SEV-SNP.
    Snp(SnpGuest),
}

impl ModelLaunch {
    /// LAUNCH_START / SNP_LAUNCH_START with `policy`. SEV without an owner session gets
    /// random TEK/TIK (no secret can be injected then).
    pub fn start(
        id: &Arc<ModelIdentity>,
        mode: TeeMode,
        policy: u64,
        owner: Option<krun_psp_model::sev_launch::OwnerSession<'_>>,
    ) -> Result<Self, TeeError> {
        let sev_mode = match mode {
            TeeMode::Sev => SevMode::Sev,
            TeeMode::SevEs => SevMode::SevEs,
            TeeMode::Snp => {
                return SnpGuest::launch_start(id.clone(), policy, [0; 16])
                    .map(ModelLaunch::Snp)
                    .map_err(TeeError::SnpModel)
            }
        };
        let policy = u32::try_from(policy).map_err(|_| TeeError::Layout)?;
        SevGuest::launch_start(id, sev_mode, policy, owner)
            .map(ModelLaunch::Sev)
            .map_err(TeeError::SevModel)
    }

    /// The launch digest after the updates: SEV LAUNCH_MEASURE's digest (32 bytes) or the
    /// SNP PAGE_INFO chain (48 bytes). For SEV this moves the context to LSECRET.
    pub fn digest(&mut self) -> Result<Vec<u8>, TeeError> {
        match self {
            ModelLaunch::Sev(g) => {
                if g.launch_digest().is_none() {
                    g.launch_measure().map_err(TeeError::SevModel)?;
                }
                g.launch_digest()
                    .map(|d| d.to_vec())
                    .ok_or(TeeError::Layout)
            }
            ModelLaunch::Snp(g) => Ok(g.launch_digest().to_vec()),
        }
    }
}

/// Inputs of the launch-update sequence that are not in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct SequenceInputs<'a> {
    /// Launch type.
    pub mode: TeeMode,
    /// vCPU count (one VMSA each under SEV-ES/SNP).
    pub vcpus: u8,
    /// CPUID leaf 1 EAX placed in each VMSA's RDX.
    pub vcpu_sig: u32,
    /// SNP CPUID page.
    pub cpuid_page: Option<&'a [u8; cpuid_page::PAGE_LEN]>,
}

/// What the sequence measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRecord {
    /// Memory regions in the order issued.
    pub regions: Vec<MeasuredRegion>,
    /// VMSAs measured (after the regions).
    pub vmsas: u8,
}

/// Issues the launch updates for `loaded` in the documented order; writes the SNP CPUID
/// page before measuring it and the SNP secrets page the model returns.
pub fn launch_updates(
    psp: &mut ModelLaunch,
    mem: &GuestMemory,
    loaded: &LoadedGuest,
    inputs: SequenceInputs<'_>,
) -> Result<LaunchRecord, TeeError> {
    let regions = measured_regions(inputs.mode, loaded)?;
    for r in &regions {
        let len = usize::try_from(r.len).map_err(|_| TeeError::Layout)?;
        match (&mut *psp, r.kind) {
            (ModelLaunch::Sev(g), PageKind::Normal) => {
                let bytes = read(mem, r.gpa, len)?;
                g.launch_update_data(&bytes).map_err(TeeError::SevModel)?;
            }
            (ModelLaunch::Snp(g), PageKind::Normal) => {
                let bytes = read(mem, r.gpa, len)?;
                g.update_normal(r.gpa, &bytes).map_err(TeeError::SnpModel)?;
            }
            (ModelLaunch::Snp(g), PageKind::Zero) => {
                g.update_zero(r.gpa, len).map_err(TeeError::SnpModel)?;
            }
            (ModelLaunch::Snp(g), PageKind::Secrets) => {
                let page = g.update_secrets(r.gpa).map_err(TeeError::SnpModel)?;
                mem.write_slice(&page, GuestAddress(r.gpa))
                    .map_err(TeeError::Memory)?;
            }
            (ModelLaunch::Snp(g), PageKind::Cpuid) => {
                let page = inputs.cpuid_page.ok_or(TeeError::Layout)?;
                mem.write_slice(page, GuestAddress(r.gpa))
                    .map_err(TeeError::Memory)?;
                g.update_cpuid(r.gpa, page).map_err(TeeError::SnpModel)?;
            }
            (ModelLaunch::Sev(_), _) => return Err(TeeError::Layout),
        }
    }
    let mut vmsas = 0;
    if inputs.mode.has_vmsa() {
        for index in 0..inputs.vcpus {
            let page = vmsa::build(inputs.mode, index, inputs.vcpu_sig);
            match psp {
                ModelLaunch::Sev(g) => g
                    .launch_update_vmsa(&page[..])
                    .map_err(TeeError::SevModel)?,
                ModelLaunch::Snp(g) => g.update_vmsa(&page[..]).map_err(TeeError::SnpModel)?,
            }
            vmsas += 1;
        }
    }
    Ok(LaunchRecord { regions, vmsas })
}

fn read(mem: &GuestMemory, gpa: u64, len: usize) -> Result<Vec<u8>, TeeError> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(gpa))
        .map_err(TeeError::Memory)?;
    Ok(buf)
}

/// Everything a launch measurement depends on.
#[derive(Debug)]
pub struct MeasureInputs<'a> {
    /// Launch type.
    pub mode: TeeMode,
    /// vCPUs.
    pub vcpus: u8,
    /// RAM in MiB.
    pub ram_mib: u32,
    /// ELF vmlinux from the bundle.
    pub kernel: &'a [u8],
    /// Bundle initrd.
    pub initrd: Vec<u8>,
    /// Launch segment (host.json, secret slot).
    pub segment: &'a [u8],
    /// Full kernel command line with the device entries, NUL-terminated.
    pub cmdline: &'a [u8],
    /// CPUID leaf 1 EAX for the VMSAs.
    pub vcpu_sig: u32,
    /// SNP CPUID page.
    pub cpuid_page: Option<&'a [u8; cpuid_page::PAGE_LEN]>,
}

/// A launch measurement as a broker registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurement {
    /// Launch type.
    pub mode: TeeMode,
    /// Launch digest: SHA-256 (SEV, SEV-ES) or SNP MEASUREMENT (SHA-384 chain).
    pub digest: Vec<u8>,
    /// What was measured.
    pub record: LaunchRecord,
}

impl Measurement {
    /// Lower-case hex of the digest.
    pub fn digest_hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The guest image a confidential launch loads (shared by the VMM path and [`calculate`]).
pub fn guest_image<'a>(inputs: &'a MeasureInputs<'a>, initrd: Vec<u8>) -> GuestImage<'a> {
    GuestImage {
        ram_bytes: u64::from(inputs.ram_mib) << 20,
        vcpus: inputs.vcpus,
        kernel: inputs.kernel,
        initrd,
        initrd_append: inputs.segment,
        cmdline: inputs.cmdline,
        firmware: Some(firmware_layout(
            inputs.mode,
            u64::from(inputs.ram_mib) << 20,
        )),
    }
}

/// Computes the launch measurement without a VM: loads the guest into scratch memory with
/// the VMM's loader and runs [`launch_updates`] on the model.
pub fn calculate(
    id: &Arc<ModelIdentity>,
    inputs: &MeasureInputs<'_>,
) -> Result<Measurement, MeasureError> {
    let ram_bytes = u64::from(inputs.ram_mib) << 20;
    let mem = memory::create_guest_memory_with(
        ram_bytes,
        &[(krun_resetvec::IMAGE_GPA, krun_resetvec::IMAGE_SIZE as u64)],
    )
    .map_err(MeasureError::Memory)?;
    let loaded = loader::load_guest(&mem, guest_image(inputs, inputs.initrd.clone()))
        .map_err(MeasureError::Load)?;
    let mut psp = ModelLaunch::start(id, inputs.mode, inputs.mode.default_policy(), None)
        .map_err(MeasureError::Tee)?;
    let record = launch_updates(&mut psp, &mem, &loaded, sequence_inputs(inputs))
        .map_err(MeasureError::Tee)?;
    let digest = psp.digest().map_err(MeasureError::Tee)?;
    Ok(Measurement {
        mode: inputs.mode,
        digest,
        record,
    })
}

/// The non-memory inputs of [`launch_updates`] for `inputs`.
pub fn sequence_inputs<'a>(inputs: &MeasureInputs<'a>) -> SequenceInputs<'a> {
    SequenceInputs {
        mode: inputs.mode,
        vcpus: inputs.vcpus,
        vcpu_sig: inputs.vcpu_sig,
        cpuid_page: inputs.cpuid_page,
    }
}
