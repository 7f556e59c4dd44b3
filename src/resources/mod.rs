//! Validated VM configuration handed from the C API to the VMM.
//!
//! Everything here is plain Rust: the C layer converts pointers to strings and calls these
//! constructors, which do all semantic validation. Nothing here touches KVM.

mod footer;
pub mod net;
mod port_map;
mod rlimit;
pub mod tee_config;

use std::path::PathBuf;

pub use footer::{
    footer_bytes, read_footer, FooterError, FOOTER_MAGIC, FOOTER_TRAILER_LEN, MAX_FOOTER_JSON_LEN,
};
pub use net::{NetConfig, NetConfigError, NetEndpoint, SharedFd};
pub use port_map::{PortMap, PortMapError, PortMapping};
pub use rlimit::{Rlimit, RlimitError};
pub use tee_config::{KbsProtocol, TeeConfig, TeeConfigError, TeeKind};

/// Highest vCPU count the guest kernel is built for (`CONFIG_NR_CPUS` in
/// `firmware/kernel`); the bundle manifest repeats it and is checked again at launch. The TEE
/// config format (`krun-footer`) enforces the same bound.
pub const MAX_VCPUS: u8 = krun_footer::MAX_CPUS;

/// Largest guest RAM accepted, in MiB (1 TiB). The guest physical map places RAM above
/// 4 GiB past the MMIO hole, so this stays far below the 52-bit physical address limit. The
/// TEE config format (`krun-footer`) enforces the same bound.
pub const MAX_RAM_MIB: u32 = krun_footer::MAX_RAM_MIB;

/// vCPU count used when nothing sets one (libkrun's default).
pub const DEFAULT_VCPUS: u8 = 1;
/// RAM size used when nothing sets one, in MiB (libkrun's default).
pub const DEFAULT_RAM_MIB: u32 = 512;

/// Errors in the plain VM settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourcesError {
    /// A vCPU count of 0 or above [`MAX_VCPUS`].
    #[error("vCPU count {0} is outside 1..={MAX_VCPUS}")]
    VcpuCount(u32),
    /// A RAM size of 0 or above [`MAX_RAM_MIB`].
    #[error("RAM size {0} MiB is outside 1..={MAX_RAM_MIB}")]
    RamSize(u64),
    /// An empty path or string where one is required.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// An environment entry without `NAME=`.
    #[error("environment entry {index} is not NAME=VALUE")]
    EnvEntry {
        /// Position in the array.
        index: usize,
    },
}

/// Number of vCPUs and RAM size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u8,
    /// RAM in MiB, 1..=[`MAX_RAM_MIB`].
    pub ram_mib: u32,
}

impl MachineConfig {
    /// Validates a vCPU count and RAM size.
    pub fn new(vcpus: u32, ram_mib: u64) -> Result<Self, ResourcesError> {
        let vcpus = u8::try_from(vcpus)
            .ok()
            .filter(|v| (1..=MAX_VCPUS).contains(v))
            .ok_or(ResourcesError::VcpuCount(vcpus))?;
        let ram_mib = u32::try_from(ram_mib)
            .ok()
            .filter(|r| (1..=MAX_RAM_MIB).contains(r))
            .ok_or(ResourcesError::RamSize(ram_mib))?;
        Ok(MachineConfig { vcpus, ram_mib })
    }
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpus: DEFAULT_VCPUS,
            ram_mib: DEFAULT_RAM_MIB,
        }
    }
}

/// A raw disk image attached as a virtio-blk device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Host path of the raw image.
    pub path: PathBuf,
    /// Whether the guest sees the disk read-only.
    pub read_only: bool,
}

/// The program the guest runs, when the host supplies one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecConfig {
    /// Path of the executable inside the guest root.
    pub path: String,
    /// Arguments after argv\[0\].
    pub args: Vec<String>,
}

/// Everything a launch needs, as set through the C API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmResources {
    /// vCPUs and RAM as set by `krun_set_vm_config`; a TEE config overrides them at launch.
    pub machine: MachineConfig,
    /// The root disk (`/dev/vda`).
    pub root_disk: Option<DiskConfig>,
    /// The data disk (`/dev/vdb`).
    pub data_disk: Option<DiskConfig>,
    /// TCP ports forwarded from the host into the guest.
    pub port_map: PortMap,
    /// Resource limits applied to the workload.
    pub rlimits: Vec<Rlimit>,
    /// Working directory of the workload inside the guest.
    pub workdir: Option<String>,
    /// Host-supplied executable and arguments.
    pub exec: Option<ExecConfig>,
    /// Host-supplied environment (`NAME=VALUE` entries).
    pub env: Option<Vec<String>>,
    /// The parsed TEE config and the file it came from.
    pub tee_config: Option<(PathBuf, TeeConfig)>,
    /// The network device (`krun_add_net_unixstream`); without it the library may start
    /// passt itself (`launch::net`).
    pub net: Option<NetConfig>,
}

impl VmResources {
    /// The vCPU count and RAM size the launch uses: the TEE config's values win over
    /// `krun_set_vm_config`, because the launch measurement depends on them.
    pub fn effective_machine(&self) -> MachineConfig {
        match &self.tee_config {
            Some((_, tee)) => MachineConfig {
                vcpus: tee.cpus,
                ram_mib: tee.ram_mib,
            },
            None => self.machine,
        }
    }
}

/// Checks that every entry looks like `NAME=VALUE` with a non-empty name.
pub fn validate_env(env: &[String]) -> Result<(), ResourcesError> {
    match env
        .iter()
        .position(|e| e.split_once('=').is_none_or(|(name, _)| name.is_empty()))
    {
        Some(index) => Err(ResourcesError::EnvEntry { index }),
        None => Ok(()),
    }
}

/// The calling process's environment as `NAME=VALUE` strings (what a NULL `envp` means).
/// Entries that are not UTF-8 cannot be passed to the guest and are left out.
pub fn inherited_env() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            Some(format!(
                "{}={}",
                k.into_string().ok()?,
                v.into_string().ok()?
            ))
        })
        .filter(|e| !e.starts_with('='))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_limits() {
        assert_eq!(
            MachineConfig::new(2, 512),
            Ok(MachineConfig {
                vcpus: 2,
                ram_mib: 512
            })
        );
        assert_eq!(
            MachineConfig::new(0, 512),
            Err(ResourcesError::VcpuCount(0))
        );
        assert_eq!(
            MachineConfig::new(u32::from(MAX_VCPUS) + 1, 512),
            Err(ResourcesError::VcpuCount(33))
        );
        assert_eq!(
            MachineConfig::new(300, 512),
            Err(ResourcesError::VcpuCount(300))
        );
        assert_eq!(MachineConfig::new(1, 0), Err(ResourcesError::RamSize(0)));
        assert!(MachineConfig::new(1, u64::from(MAX_RAM_MIB)).is_ok());
        assert_eq!(
            MachineConfig::new(1, u64::from(MAX_RAM_MIB) + 1),
            Err(ResourcesError::RamSize(u64::from(MAX_RAM_MIB) + 1))
        );
    }

    #[test]
    fn tee_config_overrides_machine() {
        let mut res = VmResources {
            machine: MachineConfig::new(16, 1024).unwrap(),
            ..Default::default()
        };
        assert_eq!(res.effective_machine().vcpus, 16);
        let tee = tee_config::load_json(
            br#"{"workload_id":"w","cpus":2,"ram_mib":512,"tee":"snp","tee_data":"","attestation_url":""}"#,
        )
        .unwrap();
        res.tee_config = Some((PathBuf::from("/krun-sev.json"), tee));
        assert_eq!(
            res.effective_machine(),
            MachineConfig {
                vcpus: 2,
                ram_mib: 512
            }
        );
    }

    #[test]
    fn env_entries() {
        assert!(validate_env(&["A=1".into(), "B=".into(), "C=x=y".into()]).is_ok());
        assert_eq!(
            validate_env(&["A=1".into(), "NOEQUALS".into()]),
            Err(ResourcesError::EnvEntry { index: 1 })
        );
        assert_eq!(
            validate_env(&["=value".into()]),
            Err(ResourcesError::EnvEntry { index: 0 })
        );
    }

    #[test]
    fn inherited_env_has_the_callers_variables() {
        let env = inherited_env();
        let path = std::env::var("PATH").unwrap();
        assert!(env.contains(&format!("PATH={path}")));
    }
}
