//! The confidential launch: bundle, launch segment, VMM with the reset-vector firmware, and
//! the AMD-SP launch sequence (PSP model) on the loaded memory before any vCPU runs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use krun_attestation::client::sev::SevAttestation;
use krun_attestation::reference::{SevBuild, SevCertChain, SevMeasurement, SevVersion};
use krun_attestation::ClientConfig;
use krun_bundle::Bundle;
use krun_psp_model::{ModelIdentity, SnpGuest};
use kvm_ioctls::VmFd;

use super::host_json::{self, LaunchShape};
use super::{guest, LaunchError, LaunchPlan};
use crate::resources::{PortMap as ResPortMap, VmResources};
use crate::tee::backend::{LaunchBackend, OwnerBlobs, Recorder, StartParams};
use crate::tee::dump::{self, LaunchDump, Update};
use crate::tee::hardware::platform::FirmwareBuild;
use crate::tee::hardware::vendor_chain::AuthChain;
use crate::tee::hardware::{self, convert::MemoryConverter};
use crate::tee::measure::{
    self, LaunchRecord, MeasureInputs, Measurement, ModelBackend, SequenceInputs,
};
use crate::tee::phases::{Phase, PhaseTimes};
use crate::tee::report_service::ReportService;
use crate::tee::snp_params::SnpLaunchParams;
use crate::tee::vcpu_model::VcpuModel;
use crate::tee::{cpuid_page, model, regions, vmsa, Backend, TeeError, TeeMode};
use crate::vmm::loader::LoadedGuest;
use crate::vmm::memory::GuestMemory;
use crate::vmm::{
    ConsoleConfig, DiskConfig, PortMap, PortMapping, TeeBoot, TeeHookError, TeeLaunch, VmConfig,
    Vmm, VmmError,
};
use krun_footer::{Binding, TeeConfig};

/// Everything a launch digest depends on besides the bundle and the caller's host settings
/// (ARCHITECTURE.md §10): the launch, `krun-sev measure`, `krunfw_measurement` and
/// registration all derive it from a TEE config with [`MeasureRequest::from_tee_config`],
/// never from the machine they run on.
#[derive(Debug, Clone)]
pub struct MeasureRequest {
    /// Launch type.
    pub mode: TeeMode,
    /// vCPUs.
    pub vcpus: u8,
    /// RAM in MiB.
    pub ram_mib: u32,
    /// Bundle directory.
    pub bundle_dir: PathBuf,
    /// Whether the launch attaches a data disk (adds a device to the command line).
    pub data_disk: bool,
    /// The vCPU model the guest sees (VMSA reset RDX, CPUID leaf 1).
    pub vcpu_model: VcpuModel,
    /// The workload and broker the launch is bound to (in the measured host.json).
    pub binding: Option<Binding>,
    /// The caller's port map (`krun_set_port_map`); an explicit one is measured.
    pub port_map: ResPortMap,
}

impl MeasureRequest {
    /// vCPUs, RAM, vCPU model and data disk of the launch.
    pub fn shape(&self) -> LaunchShape {
        LaunchShape {
            vcpus: self.vcpus,
            ram_mib: self.ram_mib,
            vcpu_model: self.vcpu_model,
            data_disk: self.data_disk,
        }
    }

    /// The measured host.json of the launch: what crun's launch of an image writes (no
    /// exec, environment or port map from the caller).
    pub fn host_json(&self) -> Vec<u8> {
        host_json::build(
            &VmResources {
                port_map: self.port_map.clone(),
                ..VmResources::default()
            },
            self.mode,
            &self.shape(),
            self.binding.as_ref(),
        )
    }

    /// The request for the launch `cfg` describes (its TEE, vCPUs, RAM, `tee_data.gen` and
    /// binding).
    pub fn from_tee_config(
        cfg: &TeeConfig,
        bundle_dir: PathBuf,
        data_disk: bool,
    ) -> Result<MeasureRequest, LaunchError> {
        let (vcpu_model, binding) = declared(cfg)?;
        Ok(MeasureRequest {
            port_map: Default::default(),
            mode: TeeMode::from_kind(cfg.tee),
            vcpus: cfg.cpus,
            ram_mib: cfg.ram_mib,
            bundle_dir,
            data_disk,
            vcpu_model,
            binding,
        })
    }
}

/// The vCPU model and binding a TEE config declares.
fn declared(cfg: &TeeConfig) -> Result<(VcpuModel, Option<Binding>), LaunchError> {
    let model =
        VcpuModel::from_tee_config(cfg).map_err(|e| LaunchError::Tee(TeeError::VcpuModel(e)))?;
    let binding = Binding::from_tee_config(cfg).map_err(LaunchError::TeeConfig)?;
    Ok((model, binding))
}

/// The measurement a launch with default host settings (no exec/env/workdir/rlimits/port
/// map from the caller) produces for `req`.
pub fn expected_measurement(req: &MeasureRequest) -> Result<Measurement, LaunchError> {
    let id = model::load_or_ephemeral(&model::identity_dir()).map_err(LaunchError::Tee)?;
    expected_measurement_with(&id, req)
}

/// [`expected_measurement`] with a given model identity.
pub fn expected_measurement_with(
    id: &Arc<ModelIdentity>,
    req: &MeasureRequest,
) -> Result<Measurement, LaunchError> {
    measure_on(&mut ModelBackend::new(id.clone(), req.mode), req)
}

/// [`expected_measurement`] and the launch updates it issued with their bytes, for oracles
/// that do not share this code (`krun-sev measure --dump-updates`, `tee::dump`).
pub fn expected_measurement_dump(
    req: &MeasureRequest,
) -> Result<(Measurement, LaunchDump), LaunchError> {
    let id = model::load_or_ephemeral(&model::identity_dir()).map_err(LaunchError::Tee)?;
    let mut recorder = Recorder::with_updates(ModelBackend::new(id, req.mode));
    let m = measure_on(&mut recorder, req)?;
    let updates = recorder
        .updates
        .map(|u| std::mem::take(&mut *u.lock().unwrap_or_else(|e| e.into_inner())))
        .unwrap_or_default();
    Ok((
        m,
        LaunchDump {
            mode: req.mode,
            updates,
        },
    ))
}

/// The measurement of `req` computed on `psp` (the model, or a recorder around it).
fn measure_on(
    psp: &mut dyn LaunchBackend,
    req: &MeasureRequest,
) -> Result<Measurement, LaunchError> {
    let bundle = Bundle::load(&req.bundle_dir).map_err(LaunchError::Bundle)?;
    measure_host_json_on(psp, &bundle, &req.host_json())
}

/// The measurement of the launch of `bundle` whose measured host.json is `host_json`: the
/// file names the TEE, vCPUs, RAM, vCPU model, data disk and binding, so nothing else is
/// needed. A broker holding the bundle uses it to recompute the digest a launch reports
/// and, with [`host_json::unbound`], the digest `krunfw_measurement` printed for it.
pub fn measurement_of_host_json(
    id: &Arc<ModelIdentity>,
    bundle: &Bundle,
    host_json: &[u8],
) -> Result<Measurement, LaunchError> {
    let mode = host_json::describe(host_json)
        .map_err(LaunchError::HostJson)?
        .mode;
    measure_host_json_on(&mut ModelBackend::new(id.clone(), mode), bundle, host_json)
}

fn measure_host_json_on(
    psp: &mut dyn LaunchBackend,
    bundle: &Bundle,
    host_json: &[u8],
) -> Result<Measurement, LaunchError> {
    let launch = host_json::describe(host_json).map_err(LaunchError::HostJson)?;
    let shape = launch.shape;
    let seg = guest::launch_segment(host_json, launch.mode).map_err(LaunchError::Segment)?;
    let cmdline =
        guest::full_cmdline(guest::device_count(shape.data_disk)).map_err(LaunchError::Vmm)?;
    // The AMD-SP does not hash a CPUID page's contents into the digest, so no host's KVM
    // is asked here: the digest can be computed on any machine.
    let cpuid = match launch.mode {
        TeeMode::Snp => Some(cpuid_page::build(&[]).map_err(LaunchError::Tee)?),
        _ => None,
    };
    measure::calculate_with(
        psp,
        &MeasureInputs {
            mode: launch.mode,
            vcpus: shape.vcpus,
            ram_mib: shape.ram_mib,
            kernel: &bundle.kernel,
            initrd: bundle.initrd.clone(),
            segment: &seg.bytes,
            cmdline: &cmdline,
            vcpu_sig: shape.vcpu_model.signature(),
            cpuid_page: cpuid.as_deref(),
        },
    )
    .map(|(m, _)| m)
    .map_err(LaunchError::Measure)
}

/// The launch sequence's state, driven by the VMM through [`TeeLaunch`]: the same steps in
/// the same order for every backend (model, hardware, recorder).
#[derive(Debug)]
pub(crate) struct Sequence {
    pub mode: TeeMode,
    pub vcpus: u8,
    pub vcpu_sig: u32,
    /// Who performs the AMD-SP commands.
    pub backend: Box<dyn LaunchBackend>,
    /// The model's identity (its chain answers the broker's `/auth`); `None` on hardware.
    pub identity: Option<Arc<ModelIdentity>>,
    /// Hardware: the platform's checked `tee_data.vendor_chain` and firmware build for the
    /// broker's `/auth` (the model's come from `identity`).
    pub auth_chain: Option<AuthChain>,
    /// Where a finished SNP context goes (the 1026 report service reads it).
    pub snp_slot: Arc<OnceLock<SnpGuest>>,
    /// The measurement the launch computed (model only), for logs and tests.
    pub recorded: Arc<Mutex<Option<Measurement>>>,
    /// Time and bytes of each phase.
    pub phases: Arc<Mutex<PhaseTimes>>,
    /// SEV/SEV-ES: the key broker, when the TEE config names one.
    pub broker: Option<Broker>,
    /// SEV/SEV-ES: guest address of the `/krun/secret` slot.
    pub secret_gpa: Option<u64>,
    /// The broker session between LAUNCH_START and LAUNCH_SECRET.
    session: Option<SevAttestation>,
    /// SNP launch parameters (policy, HOST_DATA, ID block); defaults without `tee_data`.
    pub snp: SnpLaunchParams,
    /// The regions the memory updates covered.
    regions: Vec<regions::MeasuredRegion>,
    /// SNP: a fixed CPUID page instead of the one built from this host's KVM. The digest does
    /// not depend on the page's contents (docs/measurement.md), so tests of the sequence
    /// need no `/dev/kvm`.
    pub cpuid_page: Option<Box<[u8; cpuid_page::PAGE_LEN]>>,
    /// With `KRUN_SEV_DUMP_UPDATES`: where the launch updates go after FINISH, and the
    /// recorder's list of them.
    pub dump: Option<(PathBuf, Arc<Mutex<Vec<Update>>>)>,
}

impl Sequence {
    /// A sequence for `mode` on `backend`; nothing is issued yet.
    pub fn new(
        mode: TeeMode,
        vcpus: u8,
        vcpu_sig: u32,
        backend: Box<dyn LaunchBackend>,
        identity: Option<Arc<ModelIdentity>>,
    ) -> Self {
        Sequence {
            mode,
            vcpus,
            vcpu_sig,
            backend,
            identity,
            auth_chain: None,
            snp_slot: Arc::new(OnceLock::new()),
            recorded: Arc::new(Mutex::new(None)),
            phases: Arc::new(Mutex::new(PhaseTimes::default())),
            broker: None,
            secret_gpa: None,
            session: None,
            snp: SnpLaunchParams::default(),
            regions: Vec::new(),
            cpuid_page: None,
            dump: None,
        }
    }

    fn phases(&self) -> std::sync::MutexGuard<'_, PhaseTimes> {
        self.phases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inputs<'a>(&self, cpuid: Option<&'a [u8; cpuid_page::PAGE_LEN]>) -> SequenceInputs<'a> {
        SequenceInputs {
            mode: self.mode,
            vcpus: self.vcpus,
            vcpu_sig: self.vcpu_sig,
            cpuid_page: cpuid,
        }
    }

    /// KVM_SEV_INIT2, then guest memory registration.
    pub fn vm_setup(&mut self, mem: &GuestMemory) -> Result<(), TeeError> {
        let start = std::time::Instant::now();
        self.backend.sev_init(self.mode)?;
        self.backend.register_memory(mem)?;
        self.phases().add(Phase::VmSetup, start.elapsed(), 0);
        Ok(())
    }

    /// LAUNCH_START (with the broker's session for SEV/SEV-ES when one is configured), then
    /// the memory updates in the documented order.
    pub fn start_and_update(
        &mut self,
        mem: &GuestMemory,
        loaded: &LoadedGuest,
    ) -> Result<(), TeeError> {
        let cpuid = match (self.mode, self.cpuid_page.take()) {
            (TeeMode::Snp, Some(page)) => Some(page),
            (TeeMode::Snp, None) => Some(cpuid_page::from_kvm(self.vcpus, self.vcpu_sig)?),
            _ => None,
        };
        self.session = match (&self.broker, self.mode) {
            (Some(b), TeeMode::Sev | TeeMode::SevEs) => {
                let auth = match (&self.auth_chain, &self.identity) {
                    (Some(a), _) => a.clone(),
                    (None, Some(id)) => model_auth_chain(id),
                    (None, None) => return Err(TeeError::NoVendorChain),
                };
                Some(broker_auth(&auth, b)?)
            }
            _ => None,
        };
        let mut phases = PhaseTimes::default();
        let session_bytes = self.session.as_ref().map(|s| s.start.session.to_bytes());
        let (policy, owner) = match (&self.session, &session_bytes) {
            (Some(s), Some(bytes)) => (
                broker_policy(self.mode, s.start.policy.to_u32())?,
                Some(OwnerBlobs {
                    godh_cert: &s.start.cert,
                    session: bytes,
                }),
            ),
            _ if self.mode == TeeMode::Snp => (self.snp.policy(), None),
            _ => (self.mode.default_policy(), None),
        };
        let backend = &mut self.backend;
        phases.time(Phase::LaunchStart, || {
            backend
                .launch_start(&StartParams { policy, owner })
                .map(|()| ((), 0))
        })?;
        let inputs = self.inputs(cpuid.as_deref());
        self.regions =
            measure::launch_updates(&mut *self.backend, mem, loaded, inputs, &mut phases)?;
        self.phases().extend(&phases);
        Ok(())
    }

    /// VMSAs, MEASURE, attestation and SECRET (SEV/SEV-ES with a broker), FINISH. SEV/SEV-ES
    /// without a broker use a local session with random keys: nothing is injected.
    pub fn finish(&mut self, mem: &GuestMemory) -> Result<(), TeeError> {
        let mut phases = PhaseTimes::default();
        let inputs = self.inputs(None);
        let vmsas = measure::update_vmsas(&mut *self.backend, inputs, &mut phases)?;
        let launch_measure = match self.mode {
            TeeMode::Snp => None,
            _ => {
                let backend = &mut self.backend;
                Some(phases.time(Phase::Measure, || backend.measure().map(|m| (m, 0)))?)
            }
        };
        if let Some(model) = self.backend.as_model() {
            let m = Measurement {
                mode: self.mode,
                digest: model.digest()?,
                record: LaunchRecord {
                    regions: std::mem::take(&mut self.regions),
                    vmsas,
                },
            };
            log::info!(
                "launch measurement ({}, {} vCPUs, vcpu_sig {:#x}): {}",
                self.mode.host_json_name(),
                self.vcpus,
                self.vcpu_sig,
                m.digest_hex()
            );
            if let Ok(mut slot) = self.recorded.lock() {
                *slot = Some(m);
            }
        } else if let Some(lm) = &launch_measure {
            let hex: String = lm.iter().map(|b| format!("{b:02x}")).collect();
            log::info!("LAUNCH_MEASURE (MEASURE ‖ MNONCE): {hex}");
        }
        match (self.session.take(), launch_measure) {
            (Some(s), Some(lm)) => {
                let gpa = self.secret_gpa.ok_or(TeeError::Layout)?;
                s.attest(&SevMeasurement::from_bytes(&lm).map_err(broker_err)?)
                    .map_err(broker_err)?;
                let packet = s.key().map_err(broker_err)?;
                if packet.ciphertext.len() > guest::SECRET_SLOT_LEN {
                    return Err(TeeError::SecretTooLarge);
                }
                let header = packet.header_bytes();
                let backend = &mut self.backend;
                phases.time(Phase::Secret, || {
                    backend
                        .secret(mem, gpa, &header, &packet.ciphertext)
                        .map(|()| ((), packet.ciphertext.len() as u64))
                })?;
                log::info!(
                    "LAUNCH_SECRET: {} bytes into the secret slot",
                    packet.ciphertext.len()
                );
            }
            _ if self.mode != TeeMode::Snp => {
                log::warn!("no attestation_url: local session, the secret slot stays empty")
            }
            _ => {}
        }
        let finish_params = self.snp.finish_params();
        let backend = &mut self.backend;
        phases.time(Phase::Finish, || {
            backend.finish(&finish_params).map(|()| ((), 0))
        })?;
        if let Some((path, updates)) = &self.dump {
            let dump = LaunchDump {
                mode: self.mode,
                updates: std::mem::take(&mut *updates.lock().unwrap_or_else(|e| e.into_inner())),
            };
            dump.write(path).map_err(TeeError::Dump)?;
            log::info!(
                "launch updates written to {} ({})",
                path.display(),
                dump::DUMP_ENV
            );
        }
        if let Some(g) = self.backend.as_model().and_then(ModelBackend::take_snp) {
            // A second launch in one process cannot happen (start consumes the context).
            let _ = self.snp_slot.set(g);
        }
        self.phases().extend(&phases);
        for s in &self.phases().samples {
            log::debug!(
                "launch phase {}: {:?}, {} bytes",
                s.phase.name(),
                s.wall,
                s.bytes
            );
        }
        Ok(())
    }
}

impl TeeLaunch for Sequence {
    fn vm_type(&self) -> u64 {
        self.backend.vm_type(self.mode)
    }
    fn creates_memory_slots(&self) -> bool {
        self.backend.creates_memory_slots(self.mode)
    }
    fn vm_created(&mut self, vm: &Arc<VmFd>, mem: &GuestMemory) -> Result<(), TeeHookError> {
        self.backend.attach_vm(vm.clone());
        self.vm_setup(mem).map_err(|e| Box::new(e) as _)
    }
    fn loaded(&mut self, mem: &GuestMemory, loaded: &LoadedGuest) -> Result<(), TeeHookError> {
        self.start_and_update(mem, loaded)
            .map_err(|e| Box::new(e) as _)
    }
    fn vcpus_ready(&mut self, mem: &GuestMemory) -> Result<(), TeeHookError> {
        self.finish(mem).map_err(|e| Box::new(e) as _)
    }
    fn memory_converter(&self) -> Option<Arc<dyn MemoryConverter>> {
        self.backend.memory_converter()
    }
    fn vmm_phase(&mut self, phase: Phase, wall: std::time::Duration, bytes: u64) {
        self.phases().add(phase, wall, bytes);
    }
}

/// Where SEV/SEV-ES host-side attestation goes.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    /// `attestation_url`.
    pub url: String,
    /// `workload_id`.
    pub workload_id: String,
    /// The measured host.json, sent with `/auth` (docs/measurement.md, "Unbound digests").
    pub host_json: Vec<u8>,
}

/// How long one broker request may take.
const BROKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn broker_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> TeeError {
    TeeError::Broker(Box::new(e))
}

/// The model's SEV chain and firmware build, as the hardware's come from the platform.
fn model_auth_chain(id: &ModelIdentity) -> AuthChain {
    let b = id.sev_version().build();
    AuthChain {
        chain: id.sev_chain_bytes().to_vec(),
        build: FirmwareBuild {
            major: b.version.major,
            minor: b.version.minor,
            build: b.build,
        },
    }
}

/// The platform's `tee_data.vendor_chain`, checked against what `/dev/sev` exports now.
fn hardware_auth_chain(path: Option<&std::path::Path>) -> Result<AuthChain, TeeError> {
    let path = path.ok_or(TeeError::NoVendorChain)?;
    let platform = hardware::platform::platform_info().map_err(TeeError::Hardware)?;
    hardware::vendor_chain::load(path, &platform).map_err(TeeError::VendorChain)
}

/// `/auth` with the platform's SEV chain and firmware build (the model's or the
/// hardware's); returns the open session.
fn broker_auth(auth: &AuthChain, broker: &Broker) -> Result<SevAttestation, TeeError> {
    let cfg = ClientConfig::tcp(&broker.url, BROKER_TIMEOUT, None).map_err(broker_err)?;
    let chain = SevCertChain::from_bytes(&auth.chain).map_err(broker_err)?;
    let build = SevBuild {
        version: SevVersion {
            major: auth.build.major,
            minor: auth.build.minor,
        },
        build: auth.build.build,
    };
    SevAttestation::auth(
        &cfg,
        &broker.workload_id,
        build,
        chain,
        Some(&broker.host_json),
    )
    .map_err(broker_err)
}

/// The broker's SEV policy for LAUNCH_START: its ENCRYPTED_STATE bit must agree with the
/// launch type fixed by the TEE config, or the firmware would refuse with a bare error.
fn broker_policy(mode: TeeMode, policy: u32) -> Result<u64, TeeError> {
    const ES: u32 = krun_attestation::reference::PolicyFlags::ENCRYPTED_STATE as u32;
    let es = policy & ES != 0;
    if es != (mode == TeeMode::SevEs) {
        return Err(TeeError::BrokerPolicy { policy });
    }
    Ok(u64::from(policy))
}

/// `scheme://host:port/...` → the first address of `host:port` (default port 80/443).
fn attestation_target(url: &str) -> Result<SocketAddr, LaunchError> {
    let (scheme, rest) = url.split_once("://").ok_or(LaunchError::AttestationUrl)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(LaunchError::AttestationUrl);
    }
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return Err(LaunchError::AttestationUrl),
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|_| LaunchError::AttestationUrl)?
        .next()
        .ok_or(LaunchError::AttestationUrl)
}

fn dup_fd(fd: i32) -> Result<OwnedFd, LaunchError> {
    use std::os::fd::BorrowedFd;
    // SAFETY: 0 and 1 are the process's standard descriptors, open for its whole life; the
    // borrow only lasts for the duplication.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned().map_err(LaunchError::Host)
}

/// Runs the planned launch; returns the workload's exit status.
pub(crate) fn run(plan: LaunchPlan) -> Result<u8, LaunchError> {
    let Some((_, tee)) = &plan.resources.tee_config else {
        return Err(LaunchError::MissingTeeConfig);
    };
    let mode = TeeMode::from_kind(tee.tee);
    let (vcpu_model, binding) = declared(tee)?;
    let backend_kind = Backend::configured().map_err(LaunchError::Tee)?;
    // The hardware prerequisites are checked before anything else happens.
    let hardware = match backend_kind {
        Backend::Hardware => {
            let hw = hardware::open(mode).map_err(LaunchError::Tee)?;
            vcpu_model
                .check_host(vmsa::host_vcpu_sig())
                .map_err(|e| LaunchError::Tee(TeeError::VcpuModel(e)))?;
            Some(hw)
        }
        Backend::Model => {
            model::warn_unencrypted();
            None
        }
    };
    // SNP guests reach the broker themselves through vsock 1025; SEV/SEV-ES attestation runs
    // here, before the guest starts.
    let target = match (tee.attestation_url.as_str(), mode) {
        ("", _) | (_, TeeMode::Sev | TeeMode::SevEs) => None,
        (url, TeeMode::Snp) => Some(attestation_target(url)?),
    };
    let mut broker = match (tee.attestation_url.as_str(), mode) {
        ("", _) | (_, TeeMode::Snp) => None,
        (url, _) => Some(Broker {
            url: url.to_owned(),
            workload_id: tee.workload_id.clone(),
            host_json: Vec::new(),
        }),
    };
    // The chain is checked before the guest is loaded: a wrong file fails fast.
    let auth_chain = match (&hardware, &broker) {
        (Some(_), Some(_)) => Some(
            hardware_auth_chain(tee.vendor_chain().map(std::path::Path::new))
                .map_err(LaunchError::Tee)?,
        ),
        _ => None,
    };
    let bundle = guest::load_bundle().map_err(LaunchError::Bundle)?;
    let shape = LaunchShape {
        vcpus: plan.machine.vcpus,
        ram_mib: plan.machine.ram_mib,
        vcpu_model,
        data_disk: plan.resources.data_disk.is_some(),
    };
    let host_json = host_json::build(&plan.resources, mode, &shape, binding.as_ref());
    let seg = guest::launch_segment(&host_json, mode).map_err(LaunchError::Segment)?;
    if let Some(b) = &mut broker {
        b.host_json.clone_from(&host_json);
    }
    let (backend, identity): (Box<dyn LaunchBackend>, _) = match hardware {
        Some(hw) => (Box::new(hw), None),
        None => {
            let id = model::launch_identity().map_err(LaunchError::Tee)?;
            (Box::new(ModelBackend::new(id.clone(), mode)), Some(id))
        }
    };
    // KRUN_SEV_DUMP_UPDATES: the launch updates with their bytes go to that file (tee::dump).
    let dump_path = crate::settings::host().dump_updates.clone();
    let (backend, dump) = match dump_path {
        Some(path) => {
            let recorder = Recorder::with_updates(backend);
            let updates = recorder.updates.clone().unwrap_or_default();
            (
                Box::new(recorder) as Box<dyn LaunchBackend>,
                Some((path, updates)),
            )
        }
        None => (backend, None),
    };
    let secret_gpa = seg.secret_offset.map(|off| {
        crate::arch::layout::INITRD_START
            + (crate::vmm::memory::launch_segment_offset(bundle.initrd.len()) + off) as u64
    });
    let report = ReportService::new();
    let mut sequence = Sequence::new(
        mode,
        plan.machine.vcpus,
        vcpu_model.signature(),
        backend,
        identity.clone(),
    );
    sequence.snp_slot = report.slot();
    sequence.dump = dump;
    sequence.broker = broker;
    sequence.auth_chain = auth_chain;
    sequence.secret_gpa = secret_gpa;
    if mode == TeeMode::Snp {
        sequence.snp = SnpLaunchParams::from_tee_data(&tee.tee_data)
            .map_err(|e| LaunchError::Tee(TeeError::SnpParams(e)))?;
        log::info!("SNP launch parameters: {:?}", sequence.snp);
    }
    let mut services = crate::devices::virtio::vsock::HostServices::new();
    // The report service answers from the model; on hardware the guest asks the AMD-SP.
    if mode == TeeMode::Snp && identity.is_some() {
        services.insert(crate::devices::virtio::vsock::PORT_REPORT, Arc::new(report));
    }
    let r = &plan.resources;
    let root = r.root_disk.clone().ok_or(LaunchError::MissingRootDisk)?;
    let mut port_map = match &r.port_map {
        ResPortMap::ExposeListening => PortMap::Exposed,
        ResPortMap::Explicit(list) => PortMap::List(
            list.iter()
                .map(|p| PortMapping {
                    host_port: p.host,
                    guest_port: p.guest,
                })
                .collect(),
        ),
    };
    let network = super::net::prepare(r, &mut port_map).map_err(LaunchError::Net)?;
    // `_passt` lives as long as the launch; passt quits when the VMM's end of its socket
    // closes (dropping a `Child` neither kills nor waits for it).
    let (net_device, _passt) = match network {
        Some(n) => {
            services.insert(
                crate::devices::virtio::vsock::PORT_NET_CONFIG,
                Arc::new(n.service),
            );
            (Some(n.device), n.passt)
        }
        None => (None, None),
    };
    let ram_bytes = u64::from(plan.machine.ram_mib) << 20;
    let config = VmConfig {
        vcpus: plan.machine.vcpus,
        ram_mib: plan.machine.ram_mib,
        kernel_path: bundle.dir.join("bzImage"),
        initrd_path: None,
        initrd_append: seg.bytes,
        cmdline: guest::BASE_CMDLINE.to_owned(),
        root_disk: DiskConfig {
            path: root.path,
            read_only: root.read_only,
        },
        data_disk: r.data_disk.clone().map(|d| DiskConfig {
            path: d.path,
            read_only: d.read_only,
        }),
        attestation_target: target,
        port_map,
        vsock_handlers: services,
        console: ConsoleConfig {
            input: Some(dup_fd(0)?),
            output: dup_fd(1)?,
            errors: dup_fd(2)?,
        },
        net: net_device,
        tee: Some(TeeBoot {
            kernel: bundle.kernel,
            initrd: bundle.initrd,
            layout: regions::firmware_layout(mode, ram_bytes),
            launch: Box::new(sequence),
            vcpu_sig: vcpu_model.signature(),
        }),
        seccomp: seccomp_setting(),
    };
    match Vmm::run(config) {
        Ok(status) => Ok(status.0),
        Err(VmmError::NoExitStatus { reason }) => {
            log::error!(
                "guest stopped without an exit status ({reason:?}); exiting with {}",
                super::LAUNCH_FAILURE_STATUS
            );
            Ok(super::LAUNCH_FAILURE_STATUS)
        }
        Err(e) => Err(LaunchError::Vmm(e)),
    }
}

/// Whether the VMM's seccomp filters go on (docs/hardening.md): a host setting, so the
/// container's environment cannot turn them off. Off is logged once, as a warning.
fn seccomp_setting() -> bool {
    let s = &crate::settings::host().seccomp;
    if !s.value {
        log::warn!(
            "seccomp filters are OFF ({} {}=off or `seccomp = off`): the VMM runs without its per-thread system call allow-lists; use this only for debugging",
            s.source,
            crate::vmm::seccomp::SECCOMP_ENV
        );
    }
    s.value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ExecConfig, MachineConfig};
    use crate::tee::backend::{Command, FinishParams, Recorder, SnpPageType};
    use crate::tee::hardware::test_utils::{FakeOps, Ioctl};
    use crate::tee::hardware::HardwareBackend;
    use crate::vmm::loader::{self, GuestImage};
    use crate::vmm::memory;
    use krun_attestation::reference::{
        Attestation, Challenge, HeaderFlags, Request, SevChallenge, SevPolicy, SevRequest,
        SevSecret, SevSecretHeader, SevSession, SevStart,
    };
    use vmm_sys_util::tempdir::TempDir;

    /// `KRUN_SEV_PSP_MODEL_DIR`'s identity when there is one (the test host gets one made
    /// outside: RSA key generation under TCG takes minutes), else a fresh one.
    fn identity() -> Arc<ModelIdentity> {
        static ID: OnceLock<Arc<ModelIdentity>> = OnceLock::new();
        ID.get_or_init(|| model::load_or_ephemeral(&model::identity_dir()).unwrap())
            .clone()
    }

    fn fake_bundle() -> TempDir {
        let dir = TempDir::new_with_prefix("/tmp/krun-tee-bundle").unwrap();
        let kernel =
            memory::tests::tiny_elf(&[0xf4; 300], crate::arch::layout::KERNEL_START, 0x3000);
        krun_bundle::write_bundle(
            dir.as_path(),
            &krun_bundle::BundleContents {
                kernel: &kernel,
                kernel_version: "6.12-test",
                nr_cpus: 8,
                initrd: &[0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7],
                firmware: None,
            },
        )
        .unwrap();
        dir
    }

    /// What `run` does up to the VMM: the same segment and loader, then the launch sequence
    /// on that memory. Returns the measurement the launch recorded.
    fn load(
        bundle_dir: &std::path::Path,
        resources: &VmResources,
        mode: TeeMode,
        machine: MachineConfig,
        binding: Option<&Binding>,
    ) -> (GuestMemory, LoadedGuest) {
        let bundle = Bundle::load(bundle_dir).unwrap();
        let shape = LaunchShape {
            vcpus: machine.vcpus,
            ram_mib: machine.ram_mib,
            vcpu_model: VcpuModel::default(),
            data_disk: resources.data_disk.is_some(),
        };
        let json = host_json::build(resources, mode, &shape, binding);
        let seg = guest::launch_segment(&json, mode).unwrap();
        let cmdline =
            guest::full_cmdline(guest::device_count(resources.data_disk.is_some())).unwrap();
        let ram_bytes = u64::from(machine.ram_mib) << 20;
        let mem = memory::create_guest_memory_with(
            ram_bytes,
            &[(krun_resetvec::IMAGE_GPA, krun_resetvec::IMAGE_SIZE as u64)],
        )
        .unwrap();
        let loaded = loader::load_guest(
            &mem,
            GuestImage {
                ram_bytes,
                vcpus: machine.vcpus,
                kernel: &bundle.kernel,
                initrd: bundle.initrd.clone(),
                initrd_append: &seg.bytes,
                cmdline: &cmdline,
                firmware: Some(regions::firmware_layout(mode, ram_bytes)),
            },
        )
        .unwrap();
        (mem, loaded)
    }

    /// The VMM's hook order: VM set-up, LAUNCH_START and memory updates after the load,
    /// the rest once the vCPUs exist.
    fn drive(seq: &mut Sequence, mem: &GuestMemory, loaded: &LoadedGuest) {
        seq.vm_setup(mem).unwrap();
        seq.start_and_update(mem, loaded).unwrap();
        seq.finish(mem).unwrap();
    }

    /// What `run` does up to the VMM: the same segment and loader, then the launch sequence
    /// on that memory. Returns the measurement the launch recorded.
    fn launch_records(
        bundle_dir: &std::path::Path,
        resources: &VmResources,
        mode: TeeMode,
        machine: MachineConfig,
        binding: Option<&Binding>,
    ) -> Measurement {
        let (mem, loaded) = load(bundle_dir, resources, mode, machine, binding);
        let mut seq = Sequence::new(
            mode,
            machine.vcpus,
            VcpuModel::default().signature(),
            Box::new(ModelBackend::new(identity(), mode)),
            Some(identity()),
        );
        seq.cpuid_page = fixed_cpuid_page(mode);
        drive(&mut seq, &mem, &loaded);
        if mode == TeeMode::Snp {
            assert!(
                seq.snp_slot.get().is_some(),
                "finished SNP context kept for reports"
            );
            // The secrets page the model returned is in guest memory.
            let mut page = [0u8; 16];
            vm_memory::Bytes::read_slice(
                &mem,
                &mut page,
                vm_memory::GuestAddress(crate::arch::layout::SNP_SECRETS_START),
            )
            .unwrap();
            assert_ne!(page, [0u8; 16]);
        }
        for phase in [
            Phase::VmSetup,
            Phase::LaunchStart,
            Phase::UpdateMemory,
            Phase::Finish,
        ] {
            assert!(seq.phases.lock().unwrap().ran(phase), "{phase:?}");
        }
        let m = seq.recorded.lock().unwrap().clone().unwrap();
        m
    }

    /// SNP: the CPUID page `krun-sev measure` uses (no host's KVM asked); the launch would
    /// build it from `/dev/kvm`, which only changes the page, not the digest.
    fn fixed_cpuid_page(mode: TeeMode) -> Option<Box<[u8; cpuid_page::PAGE_LEN]>> {
        (mode == TeeMode::Snp).then(|| cpuid_page::build(&[]).unwrap())
    }

    #[test]
    fn measure_equals_what_the_launch_measures() {
        let bundle = fake_bundle();
        let modes = [TeeMode::Sev, TeeMode::SevEs, TeeMode::Snp];
        let machine = MachineConfig {
            vcpus: 2,
            ram_mib: 256,
        };
        for mode in modes {
            let binding = Binding {
                workload_id: "x".into(),
                attestation_url: "http://kbs:8000".into(),
                kbs_protocol: krun_footer::KbsProtocol::Reference,
                broker_pin: None,
            };
            let req = MeasureRequest {
                port_map: Default::default(),
                mode,
                vcpus: machine.vcpus,
                ram_mib: machine.ram_mib,
                bundle_dir: bundle.as_path().to_path_buf(),
                data_disk: false,
                vcpu_model: VcpuModel::default(),
                binding: Some(binding.clone()),
            };
            let expected = expected_measurement_with(&identity(), &req).unwrap();
            let launched = launch_records(
                bundle.as_path(),
                &VmResources::default(),
                mode,
                machine,
                Some(&binding),
            );
            assert_eq!(expected, launched, "{mode:?}");
            let len = if mode == TeeMode::Snp { 48 } else { 32 };
            assert_eq!(expected.digest.len(), len);
            assert_eq!(expected.record.vmsas, if mode.has_vmsa() { 2 } else { 0 });

            // Inputs the measurement must cover change it.
            let one_cpu = expected_measurement_with(
                &identity(),
                &MeasureRequest {
                    port_map: Default::default(),
                    vcpus: 1,
                    ..req.clone()
                },
            )
            .unwrap();
            assert_ne!(one_cpu.digest, expected.digest, "{mode:?} vCPUs");
            let with_exec = VmResources {
                exec: Some(ExecConfig {
                    path: "/bin/evil".into(),
                    args: vec![],
                }),
                ..Default::default()
            };
            let exec = launch_records(bundle.as_path(), &with_exec, mode, machine, Some(&binding));
            assert_ne!(exec.digest, expected.digest, "{mode:?} host.json");
            // The binding and the vCPU model are measured: another workload, another broker
            // or another generation is another digest.
            for (what, other) in [
                (
                    "workload",
                    MeasureRequest {
                        port_map: Default::default(),
                        binding: Some(Binding {
                            workload_id: "y".into(),
                            ..binding.clone()
                        }),
                        ..req.clone()
                    },
                ),
                (
                    "broker",
                    MeasureRequest {
                        port_map: Default::default(),
                        binding: Some(Binding {
                            attestation_url: "http://evil:8000".into(),
                            ..binding.clone()
                        }),
                        ..req.clone()
                    },
                ),
                (
                    "vcpu model",
                    MeasureRequest {
                        port_map: Default::default(),
                        vcpu_model: VcpuModel::Genoa,
                        ..req.clone()
                    },
                ),
            ] {
                let m = expected_measurement_with(&identity(), &other).unwrap();
                // Plain SEV has no VMSA; the vCPU model shows in its digest through host.json.
                assert_ne!(m.digest, expected.digest, "{mode:?} {what}");
            }
        }
    }

    /// A broker holding the bundle recomputes a launch's digest from its measured host.json
    /// alone, and the unbound form of that host.json gives the digest of the same launch
    /// made without a binding (what `krunfw_measurement` prints).
    #[test]
    fn the_digest_is_recomputed_from_host_json() {
        let dir = fake_bundle();
        let bundle = Bundle::load(dir.as_path()).unwrap();
        for mode in modes() {
            let req = MeasureRequest {
                port_map: Default::default(),
                mode,
                vcpus: 3,
                ram_mib: 384,
                bundle_dir: dir.as_path().to_path_buf(),
                data_disk: true,
                vcpu_model: VcpuModel::Genoa,
                binding: Some(Binding {
                    workload_id: "w".into(),
                    attestation_url: "http://kbs:8000".into(),
                    kbs_protocol: krun_footer::KbsProtocol::Rcar,
                    broker_pin: None,
                }),
            };
            let bound = expected_measurement_with(&identity(), &req).unwrap();
            let json = req.host_json();
            let again = measurement_of_host_json(&identity(), &bundle, &json).unwrap();
            assert_eq!(again.digest, bound.digest, "{mode:?}");
            let unbound_req = MeasureRequest {
                port_map: Default::default(),
                binding: None,
                ..req.clone()
            };
            let unbound = expected_measurement_with(&identity(), &unbound_req).unwrap();
            let from_unbound_json =
                measurement_of_host_json(&identity(), &bundle, &host_json::unbound(&json).unwrap())
                    .unwrap();
            assert_eq!(from_unbound_json.digest, unbound.digest, "{mode:?}");
            assert_ne!(unbound.digest, bound.digest, "{mode:?}");
        }
        assert!(matches!(
            measurement_of_host_json(&identity(), &bundle, br#"{"tee":"snp"}"#),
            Err(LaunchError::HostJson(_))
        ));
    }

    /// The command order docs/measurement.md documents, for a launch of `mem`/`loaded`.
    fn documented_order(
        mode: TeeMode,
        vcpus: u8,
        mem: &GuestMemory,
        loaded: &LoadedGuest,
    ) -> Vec<Command> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let vm = match mode {
            TeeMode::Sev => 2,
            TeeMode::SevEs => 3,
            TeeMode::Snp => 4,
        };
        let mut c = vec![Command::VmType(vm), Command::SevInit(mode)];
        for r in mem.iter() {
            c.push(Command::RegisterMemory {
                gpa: r.start_addr().0,
                len: r.len(),
            });
        }
        c.push(Command::LaunchStart {
            policy: mode.default_policy(),
            owner: false,
        });
        let regions = regions::measured_regions(mode, loaded).unwrap();
        let names: Vec<_> = regions.iter().map(|r| r.what).collect();
        let mut want = vec![
            "firmware",
            "kernel",
            "initrd",
            "boot_params",
            "cmdline",
            "mptable",
        ];
        if mode == TeeMode::Snp {
            want.extend(["page_tables", "secrets", "cpuid"]);
        }
        assert_eq!(names, want, "docs/measurement.md order");
        for r in regions {
            c.push(match mode {
                TeeMode::Snp => Command::SnpUpdate {
                    gpa: r.gpa,
                    len: r.len,
                    ty: match r.what {
                        "page_tables" => SnpPageType::Zero,
                        "secrets" => SnpPageType::Secrets,
                        "cpuid" => SnpPageType::Cpuid,
                        _ => SnpPageType::Normal,
                    },
                },
                _ => Command::UpdateData {
                    gpa: r.gpa,
                    len: r.len,
                },
            });
        }
        if mode.has_vmsa() {
            c.push(Command::UpdateVmsas(usize::from(vcpus)));
        }
        if mode != TeeMode::Snp {
            c.push(Command::Measure);
        }
        c.push(Command::Finish {
            id_block: false,
            host_data: [0; 32],
        });
        c
    }

    fn modes() -> [TeeMode; 3] {
        [TeeMode::Sev, TeeMode::SevEs, TeeMode::Snp]
    }

    /// Runs one launch on `backend` behind a recorder; returns the commands and the memory.
    fn record(
        bundle: &std::path::Path,
        mode: TeeMode,
        backend: Box<dyn LaunchBackend>,
    ) -> (Vec<Command>, GuestMemory, LoadedGuest) {
        let machine = MachineConfig {
            vcpus: 2,
            ram_mib: 256,
        };
        let (mem, loaded) = load(bundle, &VmResources::default(), mode, machine, None);
        let recorder = Recorder::new(backend);
        let commands = recorder.commands.clone();
        let mut seq = Sequence::new(
            mode,
            machine.vcpus,
            VcpuModel::default().signature(),
            Box::new(recorder),
            Some(identity()),
        );
        seq.cpuid_page = fixed_cpuid_page(mode);
        drive(&mut seq, &mem, &loaded);
        let c = commands.lock().unwrap().clone();
        (c, mem, loaded)
    }

    #[test]
    fn model_and_hardware_paths_issue_the_documented_order() {
        let bundle = fake_bundle();
        for mode in modes() {
            let (model, mem, loaded) = record(
                bundle.as_path(),
                mode,
                Box::new(ModelBackend::new(identity(), mode)),
            );
            let fake = FakeOps::default();
            let (hardware, _, _) = record(
                bundle.as_path(),
                mode,
                Box::new(HardwareBackend::with_ops(mode, Box::new(fake.clone()))),
            );
            let want = documented_order(mode, 2, &mem, &loaded);
            // The model path records the VM type the hardware needs, not its own plain VM.
            let model_vm_type = match &model[0] {
                Command::VmType(0) => Command::VmType(match mode {
                    TeeMode::Sev => 2,
                    TeeMode::SevEs => 3,
                    TeeMode::Snp => 4,
                }),
                other => other.clone(),
            };
            let mut model = model;
            model[0] = model_vm_type;
            assert_eq!(hardware, want, "{mode:?} hardware");
            assert_eq!(model, want, "{mode:?} model");
        }
    }

    /// Forwards to a sequence, logs the hook order, and stops the run before any vCPU runs.
    #[derive(Debug)]
    struct StopBeforeRun {
        inner: Sequence,
        hooks: Arc<Mutex<Vec<&'static str>>>,
    }

    impl TeeLaunch for StopBeforeRun {
        fn vm_type(&self) -> u64 {
            self.inner.vm_type()
        }
        fn creates_memory_slots(&self) -> bool {
            self.inner.creates_memory_slots()
        }
        fn vm_created(&mut self, vm: &Arc<VmFd>, mem: &GuestMemory) -> Result<(), TeeHookError> {
            self.hooks.lock().unwrap().push("vm_created");
            self.inner.vm_created(vm, mem)
        }
        fn loaded(&mut self, mem: &GuestMemory, l: &LoadedGuest) -> Result<(), TeeHookError> {
            self.hooks.lock().unwrap().push("loaded");
            self.inner.loaded(mem, l)
        }
        fn vcpus_ready(&mut self, mem: &GuestMemory) -> Result<(), TeeHookError> {
            self.hooks.lock().unwrap().push("vcpus_ready");
            self.inner.vcpus_ready(mem)?;
            Err("stop before the guest runs".into())
        }
        fn memory_converter(&self) -> Option<Arc<dyn MemoryConverter>> {
            self.inner.memory_converter()
        }
        fn vmm_phase(&mut self, phase: Phase, wall: std::time::Duration, bytes: u64) {
            self.hooks.lock().unwrap().push(match phase {
                Phase::MemoryAllocation => "phase:memory",
                Phase::ImageLoad => "phase:load",
                _ => "phase:other",
            });
            self.inner.vmm_phase(phase, wall, bytes)
        }
    }

    /// The VMM calls the launch at the points the hardware needs (VM set-up before vCPUs,
    /// updates after the load, VMSAs and FINISH after the vCPU registers), and the commands
    /// a real `Vmm::run` issues are the documented order.
    #[test]
    #[ignore = "needs a KVM that boots guests: runs in the test host"]
    fn vmm_drives_the_sequence_in_the_documented_order() {
        use crate::vmm::memory::tests::{temp_file, tempfile_lite::TempPath};
        crate::vmm::test_utils::require_kvm();
        let bundle_dir = fake_bundle();
        let bundle = Bundle::load(bundle_dir.as_path()).unwrap();
        let machine = MachineConfig {
            vcpus: 2,
            ram_mib: 256,
        };
        for mode in modes() {
            let shape = LaunchShape {
                vcpus: machine.vcpus,
                ram_mib: machine.ram_mib,
                vcpu_model: VcpuModel::default(),
                data_disk: false,
            };
            let json = host_json::build(&VmResources::default(), mode, &shape, None);
            let seg = guest::launch_segment(&json, mode).unwrap();
            let recorder = Recorder::new(ModelBackend::new(identity(), mode));
            let commands = recorder.commands.clone();
            let hooks = Arc::new(Mutex::new(Vec::new()));
            let seq = Sequence::new(
                mode,
                2,
                VcpuModel::default().signature(),
                Box::new(recorder),
                None,
            );
            let root = temp_file(&[0u8; 4096]);
            let out = TempPath::new();
            let config = VmConfig {
                vcpus: machine.vcpus,
                ram_mib: machine.ram_mib,
                kernel_path: bundle.dir.join("bzImage"),
                initrd_path: None,
                initrd_append: seg.bytes.clone(),
                cmdline: guest::BASE_CMDLINE.to_owned(),
                root_disk: DiskConfig {
                    path: root.0.clone(),
                    read_only: true,
                },
                data_disk: None,
                attestation_target: None,
                port_map: PortMap::List(vec![]),
                vsock_handlers: crate::devices::virtio::vsock::HostServices::new(),
                console: crate::vmm::test_utils::console_to_file(&out.0),
                net: None,
                tee: Some(TeeBoot {
                    kernel: bundle.kernel.clone(),
                    initrd: bundle.initrd.clone(),
                    layout: regions::firmware_layout(mode, u64::from(machine.ram_mib) << 20),
                    launch: Box::new(StopBeforeRun {
                        inner: seq,
                        hooks: hooks.clone(),
                    }),
                    vcpu_sig: VcpuModel::default().signature(),
                }),
                seccomp: false,
            };
            assert!(matches!(Vmm::run(config), Err(VmmError::Tee(_))));
            assert_eq!(
                *hooks.lock().unwrap(),
                [
                    "phase:memory",
                    "vm_created",
                    "phase:load",
                    "loaded",
                    "vcpus_ready"
                ]
            );
            let (mem, loaded) = load(
                bundle_dir.as_path(),
                &VmResources::default(),
                mode,
                machine,
                None,
            );
            let mut want = documented_order(mode, 2, &mem, &loaded);
            want[0] = Command::VmType(0); // the model runs in a plain VM
            assert_eq!(*commands.lock().unwrap(), want, "{mode:?}");
        }
    }

    /// KRUN_SEV_DUMP_UPDATES: after FINISH the launch writes the updates it issued with
    /// their bytes; they are `krun-sev measure`'s, and for SEV-ES the SHA-256 over their data
    /// and VMSAs is the launch digest.
    #[test]
    fn a_launch_dumps_the_updates_measure_dumps() {
        let bundle = fake_bundle();
        let machine = MachineConfig {
            vcpus: 2,
            ram_mib: 256,
        };
        for mode in modes() {
            let (mem, loaded) = load(
                bundle.as_path(),
                &VmResources::default(),
                mode,
                machine,
                None,
            );
            let recorder = Recorder::with_updates(ModelBackend::new(identity(), mode));
            let updates = recorder.updates.clone().unwrap();
            let dir = TempDir::new().unwrap();
            let path = dir.as_path().join("updates.jsonl");
            let mut seq = Sequence::new(
                mode,
                machine.vcpus,
                VcpuModel::default().signature(),
                Box::new(recorder),
                Some(identity()),
            );
            seq.cpuid_page = fixed_cpuid_page(mode);
            seq.dump = Some((path.clone(), updates));
            drive(&mut seq, &mem, &loaded);
            let launched = seq.recorded.lock().unwrap().clone().unwrap();
            let written = std::fs::read_to_string(&path).unwrap();

            let (measured, dump) = expected_measurement_dump(&MeasureRequest {
                port_map: Default::default(),
                mode,
                vcpus: machine.vcpus,
                ram_mib: machine.ram_mib,
                bundle_dir: bundle.as_path().to_path_buf(),
                data_disk: false,
                vcpu_model: VcpuModel::default(),
                binding: None,
            })
            .unwrap();
            assert_eq!(measured.digest, launched.digest, "{mode:?}");
            // The launch also issues FINISH, the calculator stops before it.
            let mut with_finish = dump.clone();
            with_finish.updates.push(Update::Finish);
            assert_eq!(written, with_finish.to_json_lines(), "{mode:?}");
            if mode == TeeMode::SevEs {
                let mut h = openssl::sha::Sha256::new();
                for u in &dump.updates {
                    if let Update::Data { bytes, .. } | Update::Vmsa { bytes } = u {
                        h.update(bytes);
                    }
                }
                assert_eq!(h.finish().to_vec(), launched.digest);
            }
        }
    }

    /// The TEE config's SNP policy, HOST_DATA and ID block reach SNP_LAUNCH_START/FINISH.
    #[test]
    fn snp_parameters_reach_launch_start_and_finish() {
        let bundle = fake_bundle();
        let machine = MachineConfig {
            vcpus: 1,
            ram_mib: 256,
        };
        let (mem, loaded) = load(
            bundle.as_path(),
            &VmResources::default(),
            TeeMode::Snp,
            machine,
            None,
        );
        let fake = FakeOps::default();
        let recorder = Recorder::new(HardwareBackend::with_ops(
            TeeMode::Snp,
            Box::new(fake.clone()),
        ));
        let commands = recorder.commands.clone();
        let mut seq = Sequence::new(TeeMode::Snp, 1, 0xa00f11, Box::new(recorder), None);
        seq.cpuid_page = fixed_cpuid_page(TeeMode::Snp);
        let policy: u64 = 0x30000 | 1 << 19;
        // ID block: VERSION 1 at 0x50, POLICY at 0x58 (the rest is the PSP's to check).
        let mut block = vec![0u8; 96];
        block[0x50] = 1;
        block[0x58..0x60].copy_from_slice(&policy.to_le_bytes());
        let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
        let tee_data = serde_json::json!({
            "policy": format!("{policy:#x}"),
            "host_data": "5a".repeat(32),
            "id_block": b64(&block),
            "id_auth": b64(&[2u8; 4096]),
        });
        seq.snp = SnpLaunchParams::from_tee_data(tee_data.as_object().unwrap()).unwrap();
        drive(&mut seq, &mem, &loaded);
        let c = commands.lock().unwrap().clone();
        assert!(c.contains(&Command::LaunchStart {
            policy: 0x30000 | 1 << 19,
            owner: false
        }));
        assert_eq!(
            c.last(),
            Some(&Command::Finish {
                id_block: true,
                host_data: [0x5a; 32]
            })
        );
        let log = fake.log();
        assert!(log.contains(&Ioctl::SnpStart(0x30000 | 1 << 19, 0)));
        assert_eq!(log.last(), Some(&Ioctl::SnpFinish(1, 0, 0, 0x5a)));
    }

    fn hva(mem: &GuestMemory, gpa: u64) -> u64 {
        use vm_memory::GuestMemoryBackend as _;
        mem.get_host_address(vm_memory::GuestAddress(gpa)).unwrap() as u64
    }

    /// What the kernel would receive from the hardware backend, ioctl by ioctl.
    #[test]
    fn hardware_backend_issues_the_kernel_structures() {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let bundle = fake_bundle();
        for mode in modes() {
            let fake = FakeOps::default();
            let (_, mem, loaded) = record(
                bundle.as_path(),
                mode,
                Box::new(HardwareBackend::with_ops(mode, Box::new(fake.clone()))),
            );
            let regions = regions::measured_regions(mode, &loaded).unwrap();
            let mut want = vec![Ioctl::Init2 {
                vmsa_features: 0,
                ghcb_version: if mode == TeeMode::Sev { 0 } else { 2 },
            }];
            for (slot, r) in mem.iter().enumerate() {
                let (gpa, len) = (r.start_addr().0, r.len());
                match mode {
                    TeeMode::Snp => want.extend([
                        Ioctl::CreateGmem(len),
                        Ioctl::Slot2(u32::try_from(slot).unwrap(), 4, gpa, len, hva(&mem, gpa)),
                        Ioctl::Attributes(gpa, len, 8),
                    ]),
                    _ => want.push(Ioctl::RegRegion(hva(&mem, gpa), len)),
                }
            }
            match mode {
                TeeMode::Snp => {
                    want.push(Ioctl::ExitHypercall(1 << 12));
                    want.push(Ioctl::SnpStart(0x30000, 0));
                    for r in &regions {
                        let ty = match r.kind {
                            regions::PageKind::Normal => 1,
                            regions::PageKind::Zero => 3,
                            regions::PageKind::Secrets => 5,
                            regions::PageKind::Cpuid => 6,
                        };
                        want.push(Ioctl::SnpUpdate(r.gpa >> 12, hva(&mem, r.gpa), r.len, ty));
                    }
                    // KVM measures the VMSAs inside SNP_LAUNCH_FINISH.
                    want.push(Ioctl::SnpFinish(0, 0, 0, 0));
                }
                _ => {
                    want.push(Ioctl::LaunchStart(
                        u32::try_from(mode.default_policy()).unwrap(),
                        0,
                        0,
                    ));
                    for r in &regions {
                        want.push(Ioctl::UpdateData(
                            hva(&mem, r.gpa),
                            u32::try_from(r.len).unwrap(),
                        ));
                    }
                    if mode == TeeMode::SevEs {
                        want.push(Ioctl::UpdateVmsa(0));
                    }
                    want.push(Ioctl::Measure(48));
                    want.push(Ioctl::Finish);
                }
            }
            assert_eq!(fake.log(), want, "{mode:?}");
        }
    }

    /// KVM may stop SNP_LAUNCH_UPDATE early or answer EAGAIN; the backend continues where
    /// the kernel says it stopped.
    #[test]
    fn snp_update_follows_partial_progress() {
        let mem = memory::create_guest_memory(memory::MIN_RAM_BYTES).unwrap();
        let fake = FakeOps {
            pages_per_update: 1,
            eagain_once: true,
            ..Default::default()
        };
        let mut b = HardwareBackend::with_ops(TeeMode::Snp, Box::new(fake.clone()));
        b.snp_update(&mem, 0x10_0000, 0x3000, SnpPageType::Normal)
            .unwrap();
        let h = hva(&mem, 0x10_0000);
        assert_eq!(
            fake.log(),
            vec![
                Ioctl::SnpUpdate(0x100, h, 0x3000, 1),
                Ioctl::SnpUpdate(0x101, h + 0x1000, 0x2000, 1),
                Ioctl::SnpUpdate(0x102, h + 0x2000, 0x1000, 1),
            ]
        );
        // A range outside guest memory never reaches the kernel.
        assert!(b
            .snp_update(&mem, 0xd000_0000, 0x1000, SnpPageType::Normal)
            .is_err());
        assert_eq!(fake.log().len(), 3);
    }

    #[test]
    fn hardware_secret_and_finish_arguments_are_checked() {
        let mem = memory::create_guest_memory(memory::MIN_RAM_BYTES).unwrap();
        let fake = FakeOps::default();
        let mut b = HardwareBackend::with_ops(TeeMode::SevEs, Box::new(fake.clone()));
        let header = [0u8; 52];
        b.secret(&mem, 0x400_0000, &header, &[1u8; 64]).unwrap();
        assert_eq!(
            fake.log(),
            vec![Ioctl::Secret(52, hva(&mem, 0x400_0000), 64, 64)]
        );
        assert!(matches!(
            b.secret(&mem, 0x400_0fc0, &header, &[1u8; 128]),
            Err(TeeError::SecretTooLarge)
        ));
        assert!(matches!(
            b.secret(&mem, 0x400_0000, &header, &[]),
            Err(TeeError::SecretTooLarge)
        ));
        let mut snp = HardwareBackend::with_ops(TeeMode::Snp, Box::new(fake.clone()));
        let short = [0u8; 95];
        let auth = [0u8; 4096];
        assert!(snp
            .finish(&FinishParams {
                id_block: Some((&short, &auth)),
                ..Default::default()
            })
            .is_err());
        let block = [0u8; 96];
        snp.finish(&FinishParams {
            id_block: Some((&block, &auth)),
            author_key_en: true,
            host_data: [9; 32],
        })
        .unwrap();
        assert_eq!(fake.log().last(), Some(&Ioctl::SnpFinish(1, 1, 0, 9)));
    }

    /// Request heads and bodies a fake broker saw.
    type Seen = Vec<(String, Vec<u8>)>;

    /// A reference-protocol broker for one `/auth`, `/attest`, `/key` exchange; returns its
    /// URL and, once joined, the requests it saw.
    fn fake_broker(start: SevStart, secret: SevSecret) -> (String, std::thread::JoinHandle<Seen>) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = listener.accept().unwrap();
                let (head, body) = read_request(&mut s);
                let line = head.lines().next().unwrap().to_owned();
                let (cookie, answer) = if line.starts_with("POST /kbs/v0/auth ") {
                    let sev = SevChallenge {
                        id: "s1".into(),
                        start: start.clone(),
                    };
                    let challenge = Challenge {
                        nonce: "n".into(),
                        extra_params: serde_json::to_string(&sev).unwrap(),
                    };
                    (true, serde_json::to_vec(&challenge).unwrap())
                } else if line.starts_with("GET /kbs/v0/key/w1 ") {
                    (false, serde_json::to_vec(&secret).unwrap())
                } else {
                    (false, Vec::new())
                };
                let set_cookie = if cookie {
                    "Set-Cookie: session_id=s1; Path=/\r\n"
                } else {
                    ""
                };
                write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{set_cookie}Connection: close\r\n\r\n",
                    answer.len()
                )
                .unwrap();
                s.write_all(&answer).unwrap();
                seen.push((head, body));
            }
            seen
        });
        (url, thread)
    }

    fn read_request(s: &mut std::net::TcpStream) -> (String, Vec<u8>) {
        use std::io::Read;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let len = head
            .lines()
            .find_map(|l| {
                let l = l.to_ascii_lowercase();
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        (head, body)
    }

    /// Hardware SEV/SEV-ES with a broker: `/auth` carries the checked `vendor_chain` file and
    /// the platform's build; LAUNCH_START gets the broker's policy, GODH and session; the
    /// LAUNCH_MEASURE result goes to `/attest`; the `/key` packet reaches LAUNCH_SECRET
    /// before FINISH.
    #[test]
    fn hardware_sev_attests_with_the_vendor_chain() {
        use crate::tee::hardware::test_utils::platform_of;
        let bundle = fake_bundle();
        let id = identity();
        let dir = TempDir::new().unwrap();
        let chain_path = dir.as_path().join("sev.chain");
        std::fs::write(&chain_path, id.sev_chain_bytes()).unwrap();
        let platform = platform_of(&id);
        let auth = hardware::vendor_chain::load(&chain_path, &platform).unwrap();
        let secret = SevSecret {
            header: SevSecretHeader {
                flags: HeaderFlags(0),
                iv: [1; 16],
                mac: [2; 32],
            },
            ciphertext: vec![0x77; 512],
        };
        let secret_gpa = 0x400_0000;
        let machine = MachineConfig {
            vcpus: 2,
            ram_mib: 256,
        };
        // NODBG|NOKS|NOSEND, plus ENCRYPTED_STATE for SEV-ES.
        for (mode, broker_policy) in [(TeeMode::Sev, 0x0b), (TeeMode::SevEs, 0x0f)] {
            let start = SevStart {
                policy: SevPolicy::from_u32(broker_policy),
                cert: vec![0x5c; 0x824],
                session: SevSession::from_bytes(&[0x3d; 128]),
            };
            let (url, broker) = fake_broker(start.clone(), secret.clone());
            let (mem, loaded) = load(
                bundle.as_path(),
                &VmResources::default(),
                mode,
                machine,
                None,
            );
            let fake = FakeOps::default();
            let recorder = Recorder::new(HardwareBackend::with_ops(mode, Box::new(fake.clone())));
            let commands = recorder.commands.clone();
            let mut seq = Sequence::new(
                mode,
                2,
                VcpuModel::default().signature(),
                Box::new(recorder),
                None,
            );
            seq.broker = Some(Broker {
                url,
                workload_id: "w1".into(),
                host_json: b"{}".to_vec(),
            });
            seq.auth_chain = Some(auth.clone());
            seq.secret_gpa = Some(secret_gpa);
            drive(&mut seq, &mem, &loaded);

            let mut want = documented_order(mode, 2, &mem, &loaded);
            for c in &mut want {
                if let Command::LaunchStart { policy, owner } = c {
                    *policy = u64::from(broker_policy);
                    *owner = true;
                }
            }
            let finish = want.pop().unwrap();
            want.push(Command::Secret {
                gpa: secret_gpa,
                len: 512,
            });
            want.push(finish);
            assert_eq!(*commands.lock().unwrap(), want, "{mode:?}");

            let log = fake.log();
            let at = |i: &Ioctl| log.iter().position(|l| l == i).unwrap();
            let secret_ioctl = Ioctl::Secret(52, hva(&mem, secret_gpa), 512, 512);
            assert!(at(&Ioctl::LaunchStart(broker_policy, 0x824, 128)) < at(&Ioctl::Measure(48)));
            assert!(at(&Ioctl::Measure(48)) < at(&secret_ioctl));
            assert_eq!(at(&secret_ioctl) + 1, log.len() - 1);
            assert_eq!(log.last(), Some(&Ioctl::Finish));
            assert_eq!(
                fake.blobs(),
                vec![
                    ("godh", start.cert.clone()),
                    ("session", start.session.to_bytes().to_vec()),
                    ("header", secret.header_bytes().to_vec()),
                    ("ciphertext", secret.ciphertext.clone()),
                ]
            );

            let seen = broker.join().unwrap();
            assert!(seen[0].0.starts_with("POST /kbs/v0/auth "));
            let req: Request = serde_json::from_slice(&seen[0].1).unwrap();
            let sev: SevRequest = serde_json::from_str(&req.extra_params).unwrap();
            assert_eq!(
                sev.chain,
                SevCertChain::from_bytes(id.sev_chain_bytes()).unwrap()
            );
            assert_eq!(
                sev.build,
                SevBuild {
                    version: SevVersion {
                        major: 1,
                        minor: 55
                    },
                    build: 21
                }
            );
            assert_eq!(sev.workload_id, "w1");
            assert!(seen[1].0.starts_with("POST /kbs/v0/attest "));
            assert!(seen[1].0.contains("session_id=s1"));
            let att: Attestation = serde_json::from_slice(&seen[1].1).unwrap();
            let m: SevMeasurement = serde_json::from_str(&att.tee_evidence).unwrap();
            // What the fake LAUNCH_MEASURE wrote.
            assert_eq!(m, SevMeasurement::from_bytes(&[0xab; 48]).unwrap());
            assert!(seen[2].0.starts_with("GET /kbs/v0/key/w1 "));
            assert!(seen[2].0.contains("session_id=s1"));
        }
    }

    /// Without a checked chain (hardware, no `vendor_chain`) no session is opened and
    /// nothing reaches LAUNCH_START.
    #[test]
    fn hardware_sev_attestation_needs_a_vendor_chain() {
        assert!(matches!(
            hardware_auth_chain(None),
            Err(TeeError::NoVendorChain)
        ));
        let bundle = fake_bundle();
        let machine = MachineConfig {
            vcpus: 1,
            ram_mib: 256,
        };
        let (mem, loaded) = load(
            bundle.as_path(),
            &VmResources::default(),
            TeeMode::SevEs,
            machine,
            None,
        );
        let fake = FakeOps::default();
        let mut seq = Sequence::new(
            TeeMode::SevEs,
            1,
            VcpuModel::default().signature(),
            Box::new(HardwareBackend::with_ops(
                TeeMode::SevEs,
                Box::new(fake.clone()),
            )),
            None,
        );
        seq.broker = Some(Broker {
            url: "http://127.0.0.1:9".into(),
            workload_id: "w1".into(),
            host_json: b"{}".to_vec(),
        });
        seq.vm_setup(&mem).unwrap();
        assert!(matches!(
            seq.start_and_update(&mem, &loaded),
            Err(TeeError::NoVendorChain)
        ));
        assert!(!fake
            .log()
            .iter()
            .any(|i| matches!(i, Ioctl::LaunchStart(..))));
    }

    #[test]
    fn broker_policy_must_match_the_launch_type() {
        assert_eq!(broker_policy(TeeMode::SevEs, 0x7).unwrap(), 0x7);
        assert_eq!(broker_policy(TeeMode::Sev, 0x3).unwrap(), 0x3);
        assert!(matches!(
            broker_policy(TeeMode::SevEs, 0x3),
            Err(TeeError::BrokerPolicy { policy: 0x3 })
        ));
        assert!(broker_policy(TeeMode::Sev, 0x7).is_err());
    }

    #[test]
    fn attestation_targets() {
        assert_eq!(
            attestation_target("http://127.0.0.1:8080/kbs").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            attestation_target("https://127.0.0.1").unwrap(),
            "127.0.0.1:443".parse().unwrap()
        );
        assert!(attestation_target("ftp://127.0.0.1").is_err());
        assert!(attestation_target("http://user@127.0.0.1").is_err());
        assert!(attestation_target("127.0.0.1:80").is_err());
    }
}
