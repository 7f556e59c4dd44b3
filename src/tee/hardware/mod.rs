//! The hardware backend: KVM's SEV launch ioctls (modern UAPI only: KVM_SEV_INIT2 with VM
//! types 2/3/4, guest_memfd and memory attributes for SNP) and `/dev/sev` platform calls.
//!
//! | module | what |
//! |---|---|
//! | `uapi` | kernel structures and values, checked against Linux 6.12 |
//! | `ioctls` | the VM-fd ioctls behind a trait (real, or recorded in tests) |
//! | `backend` | `HardwareBackend`: launch commands → ioctls |
//! | `convert` | runtime private/shared conversions requested by the guest |
//! | `probe` | host prerequisites, in order, each with its own error |
//! | `platform` | `/dev/sev`: firmware build, certificate chain, SNP status |
//! | `vendor_chain` | the full SEV chain for the broker's `/auth` (`tee_data.vendor_chain`) |
//!
//! No SEV hardware was available while this was written: the ioctl translation, struct
//! layouts and the command order are tested; a launch on an SEV host has not been run.

pub mod backend;
pub mod convert;
pub mod ioctls;
pub mod platform;
pub mod probe;
pub mod uapi;
pub mod vendor_chain;

#[cfg(test)]
pub(crate) mod test_utils;

pub use backend::HardwareBackend;

use crate::tee::{TeeError, TeeMode};

/// Errors of hardware launch commands.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    /// A `KVM_MEMORY_ENCRYPT_OP` sub-command failed.
    #[error("{what} failed (firmware status {fw_error:#x})")]
    Command {
        /// Which command.
        what: &'static str,
        /// The firmware's status code (0 if KVM failed before reaching it).
        fw_error: u32,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_MEMORY_ENCRYPT_REG_REGION` failed.
    #[error("cannot register guest memory for encryption")]
    RegisterRegion(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_GUEST_MEMFD` failed.
    #[error("cannot create a guest_memfd")]
    GuestMemfd(#[source] kvm_ioctls::Error),
    /// `KVM_SET_USER_MEMORY_REGION2` failed.
    #[error("cannot register a guest_memfd memory slot")]
    MemorySlot(#[source] kvm_ioctls::Error),
    /// `KVM_SET_MEMORY_ATTRIBUTES` failed.
    #[error("cannot change guest memory attributes")]
    Attributes(#[source] kvm_ioctls::Error),
    /// `KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)` failed.
    #[error("cannot enable KVM_HC_MAP_GPA_RANGE exits")]
    ExitHypercall(#[source] kvm_ioctls::Error),
    /// SNP_LAUNCH_UPDATE made no progress.
    #[error("SNP_LAUNCH_UPDATE made no progress")]
    NoProgress,
    /// LAUNCH_MEASURE returned an unexpected length.
    #[error("LAUNCH_MEASURE returned an unexpected length")]
    MeasureLength,
    /// The ID block or ID auth structure has the wrong size, or an author key without one.
    #[error("SNP ID block or ID auth structure is malformed")]
    IdBlock,
    /// A guest-given range is not guest RAM, not page aligned, or empty.
    #[error("guest range {gpa:#x}+{len:#x} is not registered guest RAM")]
    GuestRange {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// A guest-given attribute or flag word has unknown bits.
    #[error("guest gave unknown memory attribute bits {bits:#x}")]
    GuestAttributes {
        /// The whole attribute or flag word.
        bits: u64,
    },
    /// `/dev/sev` cannot be used.
    #[error("cannot use /dev/sev")]
    SevDevice(#[source] std::io::Error),
    /// A `/dev/sev` platform command failed.
    #[error("SEV platform command {what} failed")]
    Platform {
        /// Which command.
        what: &'static str,
        /// The crate's error.
        #[source]
        source: sev::error::UserApiError,
    },
}

/// Checks the host prerequisites for `mode` (in order, naming the first missing one) and
/// returns a backend holding `/dev/sev`.
pub fn open(mode: TeeMode) -> Result<HardwareBackend, TeeError> {
    let (facts, sev) = probe::probe();
    probe::decide(mode, &facts).map_err(TeeError::Prerequisite)?;
    let sev = sev.ok_or(TeeError::Prerequisite(
        probe::MissingPrerequisite::NoSevDevice,
    ))?;
    Ok(HardwareBackend::new(mode, sev))
}
