//! The hand-off from a validated configuration to the VMM.
//!
//! `krun_start_enter` checks the context here before consuming it: a configuration that
//! cannot launch is reported with the step that failed and the context is kept.

mod bundle_map;
pub mod guest;
pub mod host_json;
pub mod net;
pub mod segment;
mod sequence;

use std::convert::Infallible;

use crate::resources::{DiskConfig, MachineConfig, VmResources};
use crate::tee::TeeError;

pub use sequence::{
    expected_measurement, expected_measurement_dump, measurement_of_host_json, MeasureRequest,
};

/// Errors before the guest starts.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No `krun_set_tee_config_file` call: libkrun-sev only runs confidential workloads.
    #[error("missing TEE config: call krun_set_tee_config_file first")]
    MissingTeeConfig,
    /// No root disk.
    #[error("missing root disk: call krun_set_root_disk first")]
    MissingRootDisk,
    /// A disk image cannot be opened with the access the guest needs.
    #[error("cannot open disk image {path}")]
    Disk {
        /// The image path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A disk path names something other than a regular file or block device.
    #[error("disk image {0} is not a regular file or block device")]
    DiskType(String),
    /// The VMM is not part of this build yet.
    #[error("starting the microVM is not available in this build yet (the VMM has not landed)")]
    VmmUnavailable,
    /// The guest bundle is missing or does not match its manifest.
    #[error("cannot load the guest bundle")]
    Bundle(#[source] krun_bundle::BundleError),
    /// The launch segment cannot be built.
    #[error("cannot build the launch segment")]
    Segment(#[source] segment::SegmentError),
    /// Backend selection, the PSP model or the launch sequence failed.
    #[error("confidential launch setup failed")]
    Tee(#[source] TeeError),
    /// The TEE config cannot describe a launch (checked again at launch).
    #[error("invalid TEE config")]
    TeeConfig(#[source] krun_footer::TeeConfigError),
    /// A measured host.json does not describe a launch.
    #[error("host.json does not describe a launch")]
    HostJson(#[source] host_json::HostJsonError),
    /// The attestation URL has no usable host and port.
    #[error("attestation_url has no resolvable host:port")]
    AttestationUrl,
    /// The VM failed before the guest reported a status.
    #[error("the microVM failed")]
    Vmm(#[source] crate::vmm::VmmError),
    /// The network the caller configured cannot be set up.
    #[error("cannot set up the network")]
    Net(#[source] net::NetSetupError),
    /// The measurement calculator failed.
    #[error("cannot compute the launch measurement")]
    Measure(#[source] crate::tee::measure::MeasureError),
    /// `/dev/kvm` or the host CPU could not provide an input of the measurement.
    #[error("cannot read a host input of the measurement")]
    Host(#[source] std::io::Error),
}

impl LaunchError {
    /// The errno the C API returns.
    pub fn errno(&self) -> i32 {
        match self {
            LaunchError::MissingTeeConfig | LaunchError::MissingRootDisk => libc::EINVAL,
            LaunchError::Disk { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            LaunchError::DiskType(_) => libc::EINVAL,
            LaunchError::VmmUnavailable => libc::ENOSYS,
            LaunchError::Bundle(_) => libc::ENOENT,
            LaunchError::Segment(_)
            | LaunchError::AttestationUrl
            | LaunchError::TeeConfig(_)
            | LaunchError::HostJson(_) => libc::EINVAL,
            // A missing host prerequisite (no SEV, no /dev/sev access, old kernel).
            LaunchError::Tee(TeeError::Prerequisite(p)) => p.errno(),
            LaunchError::Tee(_) | LaunchError::Measure(_) => libc::EIO,
            LaunchError::Vmm(_) | LaunchError::Host(_) => libc::EIO,
            LaunchError::Net(net::NetSetupError::Connect { source, .. }) => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            LaunchError::Net(_) => libc::EINVAL,
        }
    }
}

/// A configuration that passed every host-side check and is ready to boot.
#[derive(Debug)]
pub struct LaunchPlan {
    /// The settings as given.
    pub resources: VmResources,
    /// vCPUs and RAM after the TEE config override.
    pub machine: MachineConfig,
}

/// Checks that `resources` can launch.
pub fn plan(resources: VmResources) -> Result<LaunchPlan, LaunchError> {
    let Some((_, tee)) = &resources.tee_config else {
        return Err(LaunchError::MissingTeeConfig);
    };
    let root = resources
        .root_disk
        .as_ref()
        .ok_or(LaunchError::MissingRootDisk)?;
    check_disk(root)?;
    if let Some(data) = &resources.data_disk {
        check_disk(data)?;
    }
    let machine = resources.effective_machine();
    if machine != resources.machine {
        log::info!(
            "TEE config sets {} vCPUs and {} MiB (krun_set_vm_config asked for {} and {}); the launch measurement depends on them",
            tee.cpus,
            tee.ram_mib,
            resources.machine.vcpus,
            resources.machine.ram_mib
        );
    }
    Ok(LaunchPlan { resources, machine })
}

fn check_disk(disk: &DiskConfig) -> Result<(), LaunchError> {
    let shown = disk.path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!disk.read_only)
        .open(&disk.path)
        .map_err(|source| LaunchError::Disk {
            path: shown.clone(),
            source,
        })?;
    let meta = file.metadata().map_err(|source| LaunchError::Disk {
        path: shown.clone(),
        source,
    })?;
    use std::os::unix::fs::FileTypeExt;
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Err(LaunchError::DiskType(shown));
    }
    Ok(())
}

/// Exit status of a process whose microVM could not start or attest, so the workload never
/// ran: podman's convention for a failure of the runtime itself (126 and 127 mean the
/// command could not be run, anything else may be the workload's own status). The guest init
/// reports the same status for its own failures (firmware/init/src/exit.rs), and `krun-sev
/// run` exits with it when the library returns.
pub const LAUNCH_FAILURE_STATUS: u8 = 125;

/// Boots the planned VM and never returns on success: the process exits with the
/// workload's status.
pub fn start(plan: LaunchPlan) -> Result<Infallible, LaunchError> {
    log::debug!(
        "launch planned: {} vCPUs, {} MiB",
        plan.machine.vcpus,
        plan.machine.ram_mib
    );
    let status = sequence::run(plan)?;
    std::process::exit(i32::from(status));
}
