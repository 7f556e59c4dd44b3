//! The launch-update sequence over loaded guest memory, and the measurement calculator.
//!
//! [`launch_updates`] is the one place that decides what the AMD-SP measures: the launch
//! calls it on the VM's memory, [`calculate`] (`krun-sev measure`) on scratch memory filled
//! by the same loader. Order and page types: [`super::regions`], docs/measurement.md.

use std::sync::Arc;

use krun_psp_model::sev_launch::OwnerSession;
use krun_psp_model::{ModelIdentity, SevGuest, SevMode, SnpGuest, SnpLaunchFinish};
use vm_memory::{Bytes, GuestAddress};

use super::backend::{
    vm_type, FinishParams, LaunchBackend, LaunchMeasure, SnpPageType, StartParams,
};
use super::phases::{Phase, PhaseTimes};
use super::regions::{firmware_layout, measured_regions, MeasuredRegion, PageKind};
use super::vmsa::VMSA_SIZE;
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

/// The PSP model as a [`LaunchBackend`]: the guest runs in a plain VM, the VM-level steps
/// do nothing, the launch commands go to the model over the same bytes.
#[derive(Debug)]
pub struct ModelBackend {
    id: Arc<ModelIdentity>,
    mode: TeeMode,
    launch: Option<ModelLaunch>,
}

impl ModelBackend {
    /// A model AMD-SP for one `mode` launch with identity `id`.
    pub fn new(id: Arc<ModelIdentity>, mode: TeeMode) -> Self {
        ModelBackend {
            id,
            mode,
            launch: None,
        }
    }

    fn launch(&mut self) -> Result<&mut ModelLaunch, TeeError> {
        self.launch.as_mut().ok_or(TeeError::OutOfOrder)
    }

    /// The launch digest after the updates: SEV LAUNCH_MEASURE's digest (32 bytes) or the
    /// SNP PAGE_INFO chain (48 bytes). For SEV this moves the context to LSECRET.
    pub fn digest(&mut self) -> Result<Vec<u8>, TeeError> {
        match self.launch()? {
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

    /// The finished SNP guest context (for the report service).
    pub fn take_snp(&mut self) -> Option<SnpGuest> {
        match self.launch.take() {
            Some(ModelLaunch::Snp(g)) => Some(g),
            other => {
                self.launch = other;
                None
            }
        }
    }
}

impl LaunchBackend for ModelBackend {
    fn vm_type(&self, _mode: TeeMode) -> u64 {
        vm_type::DEFAULT
    }
    fn creates_memory_slots(&self, _mode: TeeMode) -> bool {
        false
    }
    fn sev_init(&mut self, _mode: TeeMode) -> Result<(), TeeError> {
        Ok(())
    }
    fn register_memory(&mut self, _mem: &GuestMemory) -> Result<(), TeeError> {
        Ok(())
    }
    fn set_private(&mut self, _gpa: u64, _len: u64, _private: bool) -> Result<(), TeeError> {
        Ok(())
    }

    /// SEV without an owner session gets random TEK/TIK (no secret can be injected then).
    fn launch_start(&mut self, start: &StartParams<'_>) -> Result<(), TeeError> {
        if self.launch.is_some() {
            return Err(TeeError::OutOfOrder);
        }
        let sev_mode = match self.mode {
            TeeMode::Sev => SevMode::Sev,
            TeeMode::SevEs => SevMode::SevEs,
            TeeMode::Snp => {
                let g = SnpGuest::launch_start(self.id.clone(), start.policy, [0; 16])
                    .map_err(TeeError::SnpModel)?;
                self.launch = Some(ModelLaunch::Snp(g));
                return Ok(());
            }
        };
        let policy = u32::try_from(start.policy).map_err(|_| TeeError::Layout)?;
        let owner = start.owner.map(|o| OwnerSession {
            godh_cert: o.godh_cert,
            session: o.session,
        });
        let g = SevGuest::launch_start(&self.id, sev_mode, policy, owner)
            .map_err(TeeError::SevModel)?;
        self.launch = Some(ModelLaunch::Sev(g));
        Ok(())
    }

    fn update_data(&mut self, mem: &GuestMemory, gpa: u64, len: u64) -> Result<(), TeeError> {
        let bytes = read(mem, gpa, len)?;
        match self.launch()? {
            ModelLaunch::Sev(g) => g.launch_update_data(&bytes).map_err(TeeError::SevModel),
            ModelLaunch::Snp(_) => Err(TeeError::OutOfOrder),
        }
    }

    fn snp_update(
        &mut self,
        mem: &GuestMemory,
        gpa: u64,
        len: u64,
        ty: SnpPageType,
    ) -> Result<(), TeeError> {
        let ModelLaunch::Snp(g) = self.launch()? else {
            return Err(TeeError::OutOfOrder);
        };
        let n = usize::try_from(len).map_err(|_| TeeError::Layout)?;
        match ty {
            SnpPageType::Normal => {
                let bytes = read(mem, gpa, len)?;
                g.update_normal(gpa, &bytes).map_err(TeeError::SnpModel)
            }
            SnpPageType::Zero => g.update_zero(gpa, n).map_err(TeeError::SnpModel),
            SnpPageType::Unmeasured => g.update_unmeasured(gpa, n).map_err(TeeError::SnpModel),
            SnpPageType::Secrets => {
                let page = g.update_secrets(gpa).map_err(TeeError::SnpModel)?;
                mem.write_slice(&page, GuestAddress(gpa))
                    .map_err(TeeError::Memory)
            }
            SnpPageType::Cpuid => {
                let page = read(mem, gpa, len)?;
                g.update_cpuid(gpa, &page).map_err(TeeError::SnpModel)
            }
        }
    }

    fn update_vmsas(&mut self, vmsas: &[Box<[u8; VMSA_SIZE]>]) -> Result<(), TeeError> {
        for page in vmsas {
            match self.launch()? {
                ModelLaunch::Sev(g) => g
                    .launch_update_vmsa(&page[..])
                    .map_err(TeeError::SevModel)?,
                ModelLaunch::Snp(g) => g.update_vmsa(&page[..]).map_err(TeeError::SnpModel)?,
            }
        }
        Ok(())
    }

    fn measure(&mut self) -> Result<LaunchMeasure, TeeError> {
        match self.launch()? {
            ModelLaunch::Sev(g) => g
                .launch_measure()
                .map(|m| m.to_bytes())
                .map_err(TeeError::SevModel),
            ModelLaunch::Snp(_) => Err(TeeError::OutOfOrder),
        }
    }

    fn secret(
        &mut self,
        mem: &GuestMemory,
        gpa: u64,
        header: &[u8],
        ciphertext: &[u8],
    ) -> Result<(), TeeError> {
        let ModelLaunch::Sev(g) = self.launch()? else {
            return Err(TeeError::OutOfOrder);
        };
        let plain = g
            .launch_secret(header, ciphertext.len(), ciphertext)
            .map_err(TeeError::SevModel)?;
        mem.write_slice(&plain, GuestAddress(gpa))
            .map_err(TeeError::Memory)
    }

    fn finish(&mut self, params: &FinishParams<'_>) -> Result<(), TeeError> {
        match self.launch()? {
            ModelLaunch::Sev(g) => g.launch_finish().map_err(TeeError::SevModel),
            ModelLaunch::Snp(g) => g
                .launch_finish(SnpLaunchFinish {
                    id_block: params.id_block,
                    author_key_en: params.author_key_en,
                    host_data: params.host_data,
                })
                .map_err(TeeError::SnpModel),
        }
    }

    fn as_model(&mut self) -> Option<&mut ModelBackend> {
        Some(self)
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

/// The SNP page type of a measured region.
fn snp_type(kind: PageKind) -> SnpPageType {
    match kind {
        PageKind::Normal => SnpPageType::Normal,
        PageKind::Zero => SnpPageType::Zero,
        PageKind::Secrets => SnpPageType::Secrets,
        PageKind::Cpuid => SnpPageType::Cpuid,
    }
}

/// Issues the memory launch updates for `loaded` in the documented order; writes the SNP
/// CPUID page into guest memory before it is measured. Returns the regions issued.
pub fn launch_updates(
    psp: &mut dyn LaunchBackend,
    mem: &GuestMemory,
    loaded: &LoadedGuest,
    inputs: SequenceInputs<'_>,
    phases: &mut PhaseTimes,
) -> Result<Vec<MeasuredRegion>, TeeError> {
    let regions = measured_regions(inputs.mode, loaded)?;
    if let Some(r) = regions.iter().find(|r| r.kind == PageKind::Cpuid) {
        let page = inputs.cpuid_page.ok_or(TeeError::Layout)?;
        mem.write_slice(page, GuestAddress(r.gpa))
            .map_err(TeeError::Memory)?;
    }
    phases.time(Phase::UpdateMemory, || {
        let mut bytes = 0u64;
        for r in &regions {
            match (inputs.mode, r.kind) {
                (TeeMode::Snp, kind) => psp.snp_update(mem, r.gpa, r.len, snp_type(kind))?,
                (_, PageKind::Normal) => psp.update_data(mem, r.gpa, r.len)?,
                (_, _) => return Err(TeeError::Layout),
            }
            bytes += r.len;
        }
        Ok(((), bytes))
    })?;
    Ok(regions)
}

/// Issues the VMSA updates (SEV-ES, SNP) for `inputs.vcpus` vCPUs; returns how many.
pub fn update_vmsas(
    psp: &mut dyn LaunchBackend,
    inputs: SequenceInputs<'_>,
    phases: &mut PhaseTimes,
) -> Result<u8, TeeError> {
    if !inputs.mode.has_vmsa() {
        return Ok(0);
    }
    let pages: Vec<_> = (0..inputs.vcpus)
        .map(|i| vmsa::build(inputs.mode, i, inputs.vcpu_sig))
        .collect();
    phases.time(Phase::UpdateVmsa, || {
        psp.update_vmsas(&pages)?;
        Ok(((), (VMSA_SIZE * pages.len()) as u64))
    })?;
    Ok(inputs.vcpus)
}

fn read(mem: &GuestMemory, gpa: u64, len: u64) -> Result<Vec<u8>, TeeError> {
    let len = usize::try_from(len).map_err(|_| TeeError::Layout)?;
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
    /// The bundle kernel (bzImage).
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
/// the VMM's loader and runs the launch sequence on the model.
pub fn calculate(
    id: &Arc<ModelIdentity>,
    inputs: &MeasureInputs<'_>,
) -> Result<Measurement, MeasureError> {
    calculate_with(&mut ModelBackend::new(id.clone(), inputs.mode), inputs).map(|(m, _)| m)
}

/// [`calculate`] on a given backend (the model, or a [`super::backend::Recorder`] around
/// it); also returns the time and bytes of each phase.
pub fn calculate_with(
    psp: &mut dyn LaunchBackend,
    inputs: &MeasureInputs<'_>,
) -> Result<(Measurement, PhaseTimes), MeasureError> {
    let mut phases = PhaseTimes::default();
    let ram_bytes = u64::from(inputs.ram_mib) << 20;
    let mem = phases
        .time(Phase::MemoryAllocation, || {
            memory::create_guest_memory_with(
                ram_bytes,
                &[(krun_resetvec::IMAGE_GPA, krun_resetvec::IMAGE_SIZE as u64)],
            )
            .map(|m| (m, 0))
        })
        .map_err(MeasureError::Memory)?;
    let loaded = phases
        .time(Phase::ImageLoad, || {
            loader::load_guest(&mem, guest_image(inputs, inputs.initrd.clone())).map(|l| (l, 0))
        })
        .map_err(MeasureError::Load)?;
    let seq = sequence_inputs(inputs);
    let run = |psp: &mut dyn LaunchBackend, phases: &mut PhaseTimes| {
        let start = StartParams {
            policy: inputs.mode.default_policy(),
            owner: None,
        };
        phases.time(Phase::LaunchStart, || {
            psp.launch_start(&start).map(|()| ((), 0))
        })?;
        let regions = launch_updates(psp, &mem, &loaded, seq, phases)?;
        let vmsas = update_vmsas(psp, seq, phases)?;
        if inputs.mode != TeeMode::Snp {
            phases.time(Phase::Measure, || psp.measure().map(|_| ((), 0)))?;
        }
        let digest = psp.as_model().ok_or(TeeError::OutOfOrder)?.digest()?;
        Ok::<_, TeeError>((regions, vmsas, digest))
    };
    let (regions, vmsas, digest) = run(psp, &mut phases).map_err(MeasureError::Tee)?;
    Ok((
        Measurement {
            mode: inputs.mode,
            digest,
            record: LaunchRecord { regions, vmsas },
        },
        phases,
    ))
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
