//! Host prerequisites of a hardware launch, checked in a fixed order before anything else so
//! that the first missing one is named: `/dev/kvm`, `kvm_amd` and its `sev`/`sev_es`/
//! `sev_snp` parameters, the VM type (`KVM_CAP_VM_TYPES`, i.e. KVM_SEV_INIT2), `/dev/sev`,
//! and for SNP guest_memfd and private memory attributes.
//!
//! [`probe`] gathers the facts; [`decide`] is a pure function of them (unit-tested with
//! injected facts; the real probe on a host without SEV must report what is missing).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::uapi;
use crate::tee::backend::vm_type;
use crate::tee::TeeMode;

/// Where `kvm_amd` publishes its parameters.
const KVM_AMD_PARAMS: &str = "/sys/module/kvm_amd/parameters";

/// Whether a device node could be opened read-write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAccess {
    /// Opened.
    Ok,
    /// No such node.
    Missing,
    /// Permission denied; the group owning the node, if known.
    Denied {
        /// Group name (or numeric id).
        group: String,
    },
    /// Another error (errno).
    Failed(i32),
}

/// What the host offers, as [`probe`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFacts {
    /// `/dev/kvm`.
    pub kvm: DeviceAccess,
    /// `/sys/module/kvm_amd` exists.
    pub kvm_amd: bool,
    /// `kvm_amd` parameters `sev`, `sev_es`, `sev_snp` (`None` = parameter absent).
    pub params: [Option<bool>; 3],
    /// `KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES)`: supported VM types as a bit mask.
    pub vm_types: u64,
    /// `/dev/sev`.
    pub sev: DeviceAccess,
    /// `KVM_CAP_GUEST_MEMFD` is supported.
    pub guest_memfd: bool,
    /// `KVM_CAP_MEMORY_ATTRIBUTES` includes PRIVATE.
    pub private_attributes: bool,
}

/// The first missing prerequisite of a hardware launch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MissingPrerequisite {
    /// No `/dev/kvm`.
    #[error("/dev/kvm does not exist: KVM is not available on this host")]
    NoKvm,
    /// `/dev/kvm` not accessible.
    #[error("cannot open /dev/kvm: permission denied (the device belongs to group {group})")]
    KvmDenied {
        /// Owning group.
        group: String,
    },
    /// `/dev/kvm` cannot be opened for another reason.
    #[error("cannot open /dev/kvm (errno {errno})")]
    KvmFailed {
        /// errno.
        errno: i32,
    },
    /// kvm_amd is not loaded.
    #[error("the kvm_amd module is not loaded: this is not an AMD host with SVM, or kvm_amd is not loaded")]
    KvmAmdNotLoaded,
    /// A kvm_amd parameter is off.
    #[error("kvm_amd parameter {param} is not enabled (/sys/module/kvm_amd/parameters/{param}); enable {what} in the BIOS and load kvm_amd with {param}=1")]
    ParamDisabled {
        /// Parameter name.
        param: &'static str,
        /// The feature.
        what: &'static str,
    },
    /// KVM lacks the VM type (KVM_SEV_INIT2 and the SEV VM types).
    #[error("kernel too old: needs KVM_SEV_INIT2 and VM type {vm_type} (KVM_CAP_VM_TYPES), Linux >= {linux}")]
    KernelTooOld {
        /// The VM type.
        vm_type: u64,
        /// The first Linux release with it.
        linux: &'static str,
    },
    /// No `/dev/sev`.
    #[error(
        "/dev/sev does not exist: the ccp driver has not initialised the AMD Secure Processor"
    )]
    NoSevDevice,
    /// `/dev/sev` not accessible.
    #[error("cannot open /dev/sev: permission denied (the device belongs to group {group}; add the user to it)")]
    SevDenied {
        /// Owning group.
        group: String,
    },
    /// `/dev/sev` cannot be opened for another reason.
    #[error("cannot open /dev/sev (errno {errno})")]
    SevFailed {
        /// errno.
        errno: i32,
    },
    /// No guest_memfd.
    #[error("KVM lacks guest_memfd (KVM_CAP_GUEST_MEMFD), which SNP needs: Linux >= 6.11 with KVM_SW_PROTECTED_VM/SEV support")]
    NoGuestMemfd,
    /// No private memory attribute.
    #[error("KVM lacks the PRIVATE memory attribute (KVM_CAP_MEMORY_ATTRIBUTES), which SNP needs")]
    NoPrivateAttributes,
}

impl MissingPrerequisite {
    /// The errno the C API returns: EACCES for a permission problem, ENODEV for absent
    /// hardware or modules, ENOSYS for a kernel without the needed UAPI.
    pub fn errno(&self) -> i32 {
        match self {
            Self::KvmDenied { .. } | Self::SevDenied { .. } => libc::EACCES,
            Self::KvmFailed { errno } | Self::SevFailed { errno } => *errno,
            Self::NoKvm
            | Self::KvmAmdNotLoaded
            | Self::ParamDisabled { .. }
            | Self::NoSevDevice => libc::ENODEV,
            Self::KernelTooOld { .. } | Self::NoGuestMemfd | Self::NoPrivateAttributes => {
                libc::ENOSYS
            }
        }
    }
}

/// The checks for `mode`, in order; the first failing one is returned.
pub fn decide(mode: TeeMode, f: &ProbeFacts) -> Result<(), MissingPrerequisite> {
    use MissingPrerequisite as M;
    match &f.kvm {
        DeviceAccess::Ok => {}
        DeviceAccess::Missing => return Err(M::NoKvm),
        DeviceAccess::Denied { group } => {
            return Err(M::KvmDenied {
                group: group.clone(),
            })
        }
        DeviceAccess::Failed(errno) => return Err(M::KvmFailed { errno: *errno }),
    }
    if !f.kvm_amd {
        return Err(M::KvmAmdNotLoaded);
    }
    let needed: &[(usize, &str, &str)] = match mode {
        TeeMode::Sev => &[(0, "sev", "SEV")],
        TeeMode::SevEs => &[(0, "sev", "SEV"), (1, "sev_es", "SEV-ES")],
        TeeMode::Snp => &[
            (0, "sev", "SEV"),
            (1, "sev_es", "SEV-ES"),
            (2, "sev_snp", "SEV-SNP"),
        ],
    };
    for &(i, param, what) in needed {
        if f.params[i] != Some(true) {
            return Err(M::ParamDisabled { param, what });
        }
    }
    let (ty, linux) = match mode {
        TeeMode::Sev => (vm_type::SEV, "6.10"),
        TeeMode::SevEs => (vm_type::SEV_ES, "6.10"),
        TeeMode::Snp => (vm_type::SNP, "6.11"),
    };
    if f.vm_types & (1 << ty) == 0 {
        return Err(M::KernelTooOld { vm_type: ty, linux });
    }
    match &f.sev {
        DeviceAccess::Ok => {}
        DeviceAccess::Missing => return Err(M::NoSevDevice),
        DeviceAccess::Denied { group } => {
            return Err(M::SevDenied {
                group: group.clone(),
            })
        }
        DeviceAccess::Failed(errno) => return Err(M::SevFailed { errno: *errno }),
    }
    if mode == TeeMode::Snp {
        if !f.guest_memfd {
            return Err(M::NoGuestMemfd);
        }
        if !f.private_attributes {
            return Err(M::NoPrivateAttributes);
        }
    }
    Ok(())
}

/// Opens `path` read-write.
pub fn open_device(path: &Path) -> Result<std::fs::File, DeviceAccess> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DeviceAccess::Missing,
            io::ErrorKind::PermissionDenied => DeviceAccess::Denied {
                group: owner_group(path),
            },
            _ => DeviceAccess::Failed(e.raw_os_error().unwrap_or(0)),
        })
}

/// The name of the group owning `path` (from /etc/group), else its numeric id.
fn owner_group(path: &Path) -> String {
    let Ok(gid) = std::fs::metadata(path).map(|m| m.gid()) else {
        return "unknown".to_owned();
    };
    std::fs::read_to_string("/etc/group")
        .ok()
        .and_then(|g| {
            g.lines().find_map(|l| {
                let mut it = l.split(':');
                let name = it.next()?;
                let id = it.nth(1)?.parse::<u32>().ok()?;
                (id == gid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| gid.to_string())
}

fn param(name: &str) -> Option<bool> {
    let v = std::fs::read_to_string(Path::new(KVM_AMD_PARAMS).join(name)).ok()?;
    Some(matches!(v.trim(), "Y" | "y" | "1"))
}

/// Gathers the facts from this host. Also returns `/dev/sev` when it could be opened.
pub fn probe() -> (ProbeFacts, Option<std::fs::File>) {
    let kvm_file = open_device(Path::new("/dev/kvm"));
    let kvm_access = match &kvm_file {
        Ok(_) => DeviceAccess::Ok,
        Err(a) => a.clone(),
    };
    let (mut vm_types, mut guest_memfd, mut private_attributes) = (0, false, false);
    if kvm_file.is_ok() {
        if let Ok(kvm) = kvm_ioctls::Kvm::new() {
            let ext = |cap: u32| kvm.check_extension_raw(libc::c_ulong::from(cap));
            vm_types = u64::try_from(ext(uapi::CAP_VM_TYPES)).unwrap_or(0);
            guest_memfd = ext(uapi::CAP_GUEST_MEMFD) > 0;
            private_attributes = u64::try_from(ext(uapi::CAP_MEMORY_ATTRIBUTES))
                .is_ok_and(|m| m & uapi::MEMORY_ATTRIBUTE_PRIVATE != 0);
        }
    }
    let sev = open_device(Path::new("/dev/sev"));
    let facts = ProbeFacts {
        kvm: kvm_access,
        kvm_amd: Path::new("/sys/module/kvm_amd").exists(),
        params: [param("sev"), param("sev_es"), param("sev_snp")],
        vm_types,
        sev: match &sev {
            Ok(_) => DeviceAccess::Ok,
            Err(a) => a.clone(),
        },
        guest_memfd,
        private_attributes,
    };
    (facts, sev.ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use MissingPrerequisite as M;

    fn good() -> ProbeFacts {
        ProbeFacts {
            kvm: DeviceAccess::Ok,
            kvm_amd: true,
            params: [Some(true); 3],
            vm_types: 0b11111,
            sev: DeviceAccess::Ok,
            guest_memfd: true,
            private_attributes: true,
        }
    }

    #[test]
    fn a_complete_host_passes_every_mode() {
        for mode in [TeeMode::Sev, TeeMode::SevEs, TeeMode::Snp] {
            assert_eq!(decide(mode, &good()), Ok(()));
        }
    }

    #[test]
    fn first_missing_prerequisite_is_named_in_order() {
        let mut f = good();
        f.kvm = DeviceAccess::Missing;
        f.sev = DeviceAccess::Missing;
        assert_eq!(decide(TeeMode::Sev, &f), Err(M::NoKvm), "/dev/kvm first");
        f.kvm = DeviceAccess::Denied {
            group: "kvm".into(),
        };
        let e = decide(TeeMode::Sev, &f).unwrap_err();
        assert!(e.to_string().contains("group kvm"), "{e}");

        let mut f = good();
        f.kvm_amd = false;
        f.vm_types = 0;
        assert_eq!(decide(TeeMode::Snp, &f), Err(M::KvmAmdNotLoaded));

        let mut f = good();
        f.params[2] = Some(false);
        assert_eq!(
            decide(TeeMode::SevEs, &f),
            Ok(()),
            "SNP off does not matter for ES"
        );
        assert_eq!(
            decide(TeeMode::Snp, &f),
            Err(M::ParamDisabled {
                param: "sev_snp",
                what: "SEV-SNP"
            })
        );
        f.params[1] = None;
        assert!(matches!(
            decide(TeeMode::SevEs, &f),
            Err(M::ParamDisabled {
                param: "sev_es",
                ..
            })
        ));

        let mut f = good();
        f.vm_types = 0b00011; // DEFAULT and SW_PROTECTED only: Linux 6.8/6.9
        f.sev = DeviceAccess::Missing;
        let e = decide(TeeMode::SevEs, &f).unwrap_err();
        assert_eq!(
            e,
            M::KernelTooOld {
                vm_type: 3,
                linux: "6.10"
            }
        );
        assert!(e.to_string().contains("kernel too old"), "{e}");
        f.vm_types = 0b01111; // no SNP VM: Linux 6.10
        assert_eq!(decide(TeeMode::SevEs, &f), Err(M::NoSevDevice));
        assert!(matches!(
            decide(TeeMode::Snp, &f),
            Err(M::KernelTooOld {
                vm_type: 4,
                linux: "6.11"
            })
        ));

        let mut f = good();
        f.sev = DeviceAccess::Denied {
            group: "sev".into(),
        };
        f.guest_memfd = false;
        let e = decide(TeeMode::Snp, &f).unwrap_err();
        assert!(e.to_string().contains("/dev/sev") && e.to_string().contains("group sev"));

        let mut f = good();
        f.guest_memfd = false;
        assert_eq!(decide(TeeMode::Sev, &f), Ok(()), "guest_memfd is SNP-only");
        assert_eq!(decide(TeeMode::Snp, &f), Err(M::NoGuestMemfd));
        f.guest_memfd = true;
        f.private_attributes = false;
        assert_eq!(decide(TeeMode::Snp, &f), Err(M::NoPrivateAttributes));
    }

    #[test]
    fn open_device_reports_missing_nodes() {
        assert_eq!(
            open_device(Path::new("/nonexistent/dev/sev")).unwrap_err(),
            DeviceAccess::Missing
        );
    }

    /// This project's machines have no SEV: the real probe must say what is missing rather
    /// than pass. On an SEV host it must pass for plain SEV at least when it says so.
    #[test]
    fn real_probe_names_what_this_host_lacks() {
        let (facts, sev) = probe();
        for mode in [TeeMode::Sev, TeeMode::SevEs, TeeMode::Snp] {
            match decide(mode, &facts) {
                Ok(()) => assert!(sev.is_some() && Path::new("/dev/sev").exists()),
                Err(e) => {
                    eprintln!("{mode:?}: {e}");
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        if !Path::new("/dev/sev").exists() {
            assert!(decide(TeeMode::Sev, &facts).is_err());
        }
    }
}
