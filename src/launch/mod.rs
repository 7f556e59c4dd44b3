//! The hand-off from a validated configuration to the VMM.
//!
//! `krun_start_enter` checks the context here before consuming it: a configuration that
//! cannot launch is reported with the step that failed and the context is kept.

pub mod segment;

use std::convert::Infallible;

use crate::resources::{DiskConfig, MachineConfig, VmResources};

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
}

impl LaunchError {
    /// The errno the C API returns.
    pub fn errno(&self) -> i32 {
        match self {
            LaunchError::MissingTeeConfig | LaunchError::MissingRootDisk => libc::EINVAL,
            LaunchError::Disk { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            LaunchError::DiskType(_) => libc::EINVAL,
            LaunchError::VmmUnavailable => libc::ENOSYS,
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

/// Boots the planned VM and never returns on success: the process exits with the
/// workload's status.
pub fn start(plan: LaunchPlan) -> Result<Infallible, LaunchError> {
    log::debug!(
        "launch planned: {} vCPUs, {} MiB",
        plan.machine.vcpus,
        plan.machine.ram_mib
    );
    Err(LaunchError::VmmUnavailable)
}
