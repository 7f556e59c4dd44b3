//! The confidential launch: bundle, launch segment, VMM with the reset-vector firmware, and
//! the AMD-SP launch sequence (PSP model) on the loaded memory before any vCPU runs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use krun_bundle::Bundle;
use krun_psp_model::{ModelIdentity, SnpGuest, SnpLaunchFinish};

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
    let bundle = Bundle::load(&req.bundle_dir).map_err(LaunchError::Bundle)?;
    let seg = guest::launch_segment(&VmResources::default(), req.mode, req.psp_model)
        .map_err(LaunchError::Segment)?;
    let cmdline =
        guest::full_cmdline(guest::device_count(req.data_disk)).map_err(LaunchError::Vmm)?;
    let cpuid = match req.mode {
        TeeMode::Snp => Some(cpuid_page::from_kvm(req.vcpus).map_err(LaunchError::Tee)?),
        _ => None,
    };
    let id = model::load_or_ephemeral(&model::identity_dir()).map_err(LaunchError::Tee)?;
    measure::calculate(
        &id,
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
}

impl Sequence {
    /// LAUNCH_START .. FINISH on the loaded memory. SEV/SEV-ES without a broker use a
    /// local session with random keys: nothing is injected into the secret slot.
    pub fn run(&self, mem: &GuestMemory, loaded: &LoadedGuest) -> Result<(), TeeError> {
        let cpuid = match self.mode {
            TeeMode::Snp => Some(cpuid_page::from_kvm(self.vcpus)?),
            _ => None,
        };
        let mut psp =
            ModelLaunch::start(&self.identity, self.mode, self.mode.default_policy(), None)?;
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
        let digest = psp.digest()?;
        let m = Measurement {
            mode: self.mode,
            digest,
            record,
        };
        log::info!(
            "launch measurement ({}, {} vCPUs): {}",
            self.mode.host_json_name(),
            self.vcpus,
            m.digest_hex()
        );
        if let Ok(mut slot) = self.recorded.lock() {
            *slot = Some(m);
        }
        match psp {
            ModelLaunch::Sev(mut g) => {
                log::warn!("no key broker session: the secret slot stays empty");
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
    if mode != TeeMode::Snp && !tee.attestation_url.is_empty() {
        return Err(LaunchError::SevAttestationUnavailable);
    }
    let target = match tee.attestation_url.as_str() {
        "" => None,
        url => Some(attestation_target(url)?),
    };
    let bundle = Bundle::load(&guest::bundle_dir()).map_err(LaunchError::Bundle)?;
    let seg = guest::launch_segment(&plan.resources, mode, true).map_err(LaunchError::Segment)?;
    let identity = model::load_or_create(&model::identity_dir()).map_err(LaunchError::Tee)?;
    let report = ReportService::new();
    let sequence = Sequence {
        mode,
        vcpus: plan.machine.vcpus,
        vcpu_sig: vmsa::host_vcpu_sig(),
        identity,
        snp_slot: report.slot(),
        recorded: Arc::new(Mutex::new(None)),
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
