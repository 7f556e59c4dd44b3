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
use krun_psp_model::sev_launch::OwnerSession;
use krun_psp_model::{ModelIdentity, SnpGuest, SnpLaunchFinish};
use vm_memory::{Bytes, GuestAddress};

use super::{guest, LaunchError, LaunchPlan};
use crate::resources::{PortMap as ResPortMap, VmResources};
use crate::tee::measure::{self, MeasureInputs, Measurement, ModelLaunch, SequenceInputs};
use crate::tee::report_service::ReportService;
use crate::tee::{cpuid_page, model, regions, vmsa, Backend, TeeError, TeeMode};
use crate::vmm::loader::LoadedGuest;
use crate::vmm::memory::GuestMemory;
use crate::vmm::{
    ConsoleConfig, DiskConfig, PortMap, PortMapping, TeeBoot, VmConfig, Vmm, VmmError,
};

/// What `krun-sev measure` asks for.
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
    /// Whether the launch uses the PSP model (`psp_model` in host.json).
    pub psp_model: bool,
    /// CPUID leaf 1 EAX of the target host; `None` = this host.
    pub vcpu_sig: Option<u32>,
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
    let bundle = Bundle::load(&req.bundle_dir).map_err(LaunchError::Bundle)?;
    let seg = guest::launch_segment(&VmResources::default(), req.mode, req.psp_model)
        .map_err(LaunchError::Segment)?;
    let cmdline =
        guest::full_cmdline(guest::device_count(req.data_disk)).map_err(LaunchError::Vmm)?;
    let cpuid = match req.mode {
        TeeMode::Snp => Some(cpuid_page::from_kvm(req.vcpus).map_err(LaunchError::Tee)?),
        _ => None,
    };
    measure::calculate(
        id,
        &MeasureInputs {
            mode: req.mode,
            vcpus: req.vcpus,
            ram_mib: req.ram_mib,
            kernel: &bundle.kernel,
            initrd: bundle.initrd,
            segment: &seg.bytes,
            cmdline: &cmdline,
            vcpu_sig: req.vcpu_sig.unwrap_or_else(vmsa::host_vcpu_sig),
            cpuid_page: cpuid.as_deref(),
        },
    )
    .map_err(LaunchError::Measure)
}

/// The launch sequence's state, shared with the VMM hook.
#[derive(Debug)]
pub(crate) struct Sequence {
    pub mode: TeeMode,
    pub vcpus: u8,
    pub vcpu_sig: u32,
    pub identity: Arc<ModelIdentity>,
    /// Where a finished SNP context goes (the 1026 report service reads it).
    pub snp_slot: Arc<OnceLock<SnpGuest>>,
    /// The measurement the launch computed, for logs and tests.
    pub recorded: Arc<Mutex<Option<Measurement>>>,
    /// SEV/SEV-ES: the key broker, when the TEE config names one.
    pub broker: Option<Broker>,
    /// SEV/SEV-ES: guest address of the `/krun/secret` slot.
    pub secret_gpa: Option<u64>,
}

/// Where SEV/SEV-ES host-side attestation goes.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    /// `attestation_url`.
    pub url: String,
    /// `workload_id`.
    pub workload_id: String,
}

/// How long one broker request may take.
const BROKER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn broker_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> TeeError {
    TeeError::Broker(Box::new(e))
}

/// `/auth` with the model's SEV chain and firmware build; returns the open session.
fn broker_auth(id: &ModelIdentity, broker: &Broker) -> Result<SevAttestation, TeeError> {
    let cfg = ClientConfig::tcp(&broker.url, BROKER_TIMEOUT, None).map_err(broker_err)?;
    let chain = SevCertChain::from_bytes(id.sev_chain_bytes()).map_err(broker_err)?;
    let b = id.sev_version().build();
    let build = SevBuild {
        version: SevVersion {
            major: b.version.major,
            minor: b.version.minor,
        },
        build: b.build,
    };
    SevAttestation::auth(&cfg, &broker.workload_id, build, chain).map_err(broker_err)
}

impl Sequence {
    /// LAUNCH_START .. FINISH on the loaded memory. SEV/SEV-ES without a broker use a
    /// local session with random keys: nothing is injected into the secret slot.
    pub fn run(&self, mem: &GuestMemory, loaded: &LoadedGuest) -> Result<(), TeeError> {
        let cpuid = match self.mode {
            TeeMode::Snp => Some(cpuid_page::from_kvm(self.vcpus)?),
            _ => None,
        };
        let session = match (&self.broker, self.mode) {
            (Some(b), TeeMode::Sev | TeeMode::SevEs) => Some(broker_auth(&self.identity, b)?),
            _ => None,
        };
        let mut psp = match &session {
            Some(s) => {
                let session_bytes = s.start.session.to_bytes();
                let owner = OwnerSession {
                    godh_cert: &s.start.cert,
                    session: &session_bytes,
                };
                ModelLaunch::start(
                    &self.identity,
                    self.mode,
                    u64::from(s.start.policy.to_u32()),
                    Some(owner),
                )?
            }
            None => {
                ModelLaunch::start(&self.identity, self.mode, self.mode.default_policy(), None)?
            }
        };
        let record = measure::launch_updates(
            &mut psp,
            mem,
            loaded,
            SequenceInputs {
                mode: self.mode,
                vcpus: self.vcpus,
                vcpu_sig: self.vcpu_sig,
                cpuid_page: cpuid.as_deref(),
            },
        )?;
        let launch_measure = match &mut psp {
            ModelLaunch::Sev(g) => Some(g.launch_measure().map_err(TeeError::SevModel)?),
            ModelLaunch::Snp(_) => None,
        };
        let digest = psp.digest()?;
        let m = Measurement {
            mode: self.mode,
            digest,
            record,
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
        match psp {
            ModelLaunch::Sev(mut g) => {
                match (session, launch_measure) {
                    (Some(s), Some(lm)) => {
                        let gpa = self.secret_gpa.ok_or(TeeError::Layout)?;
                        s.attest(&SevMeasurement::from_bytes(&lm.to_bytes()).map_err(broker_err)?)
                            .map_err(broker_err)?;
                        let packet = s.key().map_err(broker_err)?;
                        if packet.ciphertext.len() > guest::SECRET_SLOT_LEN {
                            return Err(TeeError::SecretTooLarge);
                        }
                        let plain = g
                            .launch_secret(
                                &packet.header_bytes(),
                                packet.ciphertext.len(),
                                &packet.ciphertext,
                            )
                            .map_err(TeeError::SevModel)?;
                        mem.write_slice(&plain, GuestAddress(gpa))
                            .map_err(TeeError::Memory)?;
                        log::info!("LAUNCH_SECRET: {} bytes into the secret slot", plain.len());
                    }
                    _ => {
                        log::warn!("no attestation_url: local session, the secret slot stays empty")
                    }
                }
                g.launch_finish().map_err(TeeError::SevModel)
            }
            ModelLaunch::Snp(mut g) => {
                g.launch_finish(SnpLaunchFinish {
                    id_block: None,
                    author_key_en: false,
                    host_data: [0; 32],
                })
                .map_err(TeeError::SnpModel)?;
                // A second launch in one process cannot happen (start consumes the context).
                let _ = self.snp_slot.set(g);
                Ok(())
            }
        }
    }
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
    match Backend::from_env().map_err(LaunchError::Tee)? {
        Backend::Hardware => return Err(LaunchError::Tee(TeeError::HardwareUnavailable)),
        Backend::Model => model::warn_unencrypted(),
    }
    // SNP guests reach the broker themselves through vsock 1025; SEV/SEV-ES attestation runs
    // here, before the guest starts.
    let target = match (tee.attestation_url.as_str(), mode) {
        ("", _) | (_, TeeMode::Sev | TeeMode::SevEs) => None,
        (url, TeeMode::Snp) => Some(attestation_target(url)?),
    };
    let broker = match (tee.attestation_url.as_str(), mode) {
        ("", _) | (_, TeeMode::Snp) => None,
        (url, _) => Some(Broker {
            url: url.to_owned(),
            workload_id: tee.workload_id.clone(),
        }),
    };
    let bundle = Bundle::load(&guest::bundle_dir()).map_err(LaunchError::Bundle)?;
    let seg = guest::launch_segment(&plan.resources, mode, true).map_err(LaunchError::Segment)?;
    let identity = model::load_or_create(&model::identity_dir()).map_err(LaunchError::Tee)?;
    let secret_gpa = seg.secret_offset.map(|off| {
        crate::arch::layout::INITRD_START
            + (crate::vmm::memory::launch_segment_offset(bundle.initrd.len()) + off) as u64
    });
    let report = ReportService::new();
    let sequence = Sequence {
        mode,
        vcpus: plan.machine.vcpus,
        vcpu_sig: vmsa::host_vcpu_sig(),
        identity,
        snp_slot: report.slot(),
        recorded: Arc::new(Mutex::new(None)),
        broker,
        secret_gpa,
    };
    let mut services = crate::devices::virtio::vsock::HostServices::new();
    if mode == TeeMode::Snp {
        services.insert(crate::devices::virtio::vsock::PORT_REPORT, Arc::new(report));
    }
    let r = &plan.resources;
    let root = r.root_disk.clone().ok_or(LaunchError::MissingRootDisk)?;
    let port_map = match &r.port_map {
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
    let ram_bytes = u64::from(plan.machine.ram_mib) << 20;
    let config = VmConfig {
        vcpus: plan.machine.vcpus,
        ram_mib: plan.machine.ram_mib,
        kernel_path: bundle.dir.join("vmlinux"),
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
        },
        tee: Some(TeeBoot {
            kernel: bundle.kernel,
            initrd: bundle.initrd,
            layout: regions::firmware_layout(mode, ram_bytes),
            before_start: Box::new(move |mem, loaded| {
                sequence.run(mem, loaded).map_err(|e| Box::new(e) as _)
            }),
        }),
    };
    match Vmm::run(config) {
        Ok(status) => Ok(status.0),
        Err(VmmError::NoExitStatus { reason }) => {
            log::error!("guest stopped without an exit status ({reason:?}); exiting with 1");
            Ok(1)
        }
        Err(e) => Err(LaunchError::Vmm(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ExecConfig, MachineConfig};
    use crate::vmm::loader::{self, GuestImage};
    use crate::vmm::memory;
    use vmm_sys_util::tempdir::TempDir;

    fn identity() -> Arc<ModelIdentity> {
        static ID: OnceLock<Arc<ModelIdentity>> = OnceLock::new();
        ID.get_or_init(|| Arc::new(ModelIdentity::generate().unwrap()))
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
    fn launch_records(
        bundle_dir: &std::path::Path,
        resources: &VmResources,
        mode: TeeMode,
        machine: MachineConfig,
    ) -> Measurement {
        let bundle = Bundle::load(bundle_dir).unwrap();
        let seg = guest::launch_segment(resources, mode, true).unwrap();
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
        let seq = Sequence {
            mode,
            vcpus: machine.vcpus,
            vcpu_sig: vmsa::host_vcpu_sig(),
            identity: identity(),
            snp_slot: Arc::new(OnceLock::new()),
            recorded: Arc::new(Mutex::new(None)),
            broker: None,
            secret_gpa: None,
        };
        seq.run(&mem, &loaded).unwrap();
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
        let m = seq.recorded.lock().unwrap().clone().unwrap();
        m
    }

    fn kvm_available() -> bool {
        std::fs::File::open("/dev/kvm").is_ok()
    }

    #[test]
    fn measure_equals_what_the_launch_measures() {
        let bundle = fake_bundle();
        let mut modes = vec![TeeMode::Sev, TeeMode::SevEs];
        if kvm_available() {
            modes.push(TeeMode::Snp);
        } else {
            eprintln!("SKIP snp part of measure_equals_what_the_launch_measures: no /dev/kvm");
        }
        let machine = MachineConfig {
            vcpus: 2,
            ram_mib: 256,
        };
        for mode in modes {
            let req = MeasureRequest {
                mode,
                vcpus: machine.vcpus,
                ram_mib: machine.ram_mib,
                bundle_dir: bundle.as_path().to_path_buf(),
                data_disk: false,
                psp_model: true,
                vcpu_sig: None,
            };
            let expected = expected_measurement_with(&identity(), &req).unwrap();
            let launched = launch_records(bundle.as_path(), &VmResources::default(), mode, machine);
            assert_eq!(expected, launched, "{mode:?}");
            let len = if mode == TeeMode::Snp { 48 } else { 32 };
            assert_eq!(expected.digest.len(), len);
            assert_eq!(expected.record.vmsas, if mode.has_vmsa() { 2 } else { 0 });

            // Inputs the measurement must cover change it.
            let one_cpu = expected_measurement_with(
                &identity(),
                &MeasureRequest {
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
            let exec = launch_records(bundle.as_path(), &with_exec, mode, machine);
            assert_ne!(exec.digest, expected.digest, "{mode:?} host.json");
            let hardware = expected_measurement_with(
                &identity(),
                &MeasureRequest {
                    psp_model: false,
                    ..req.clone()
                },
            )
            .unwrap();
            assert_ne!(hardware.digest, expected.digest, "{mode:?} psp_model flag");
        }
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
