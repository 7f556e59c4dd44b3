//! Confidential launches: SEV, SEV-ES and SEV-SNP.
//!
//! | module | what |
//! |---|---|
//! | `regions` | which guest memory is measured, in which order, with which SNP page type |
//! | `vmsa` | the initial VMSA of each vCPU (SEV-ES, SNP) |
//! | `cpuid_page` | the SNP CPUID page from KVM's supported CPUID |
//! | `backend` | the AMD-SP command interface (`LaunchBackend`) and the recording backend |
//! | `dump` | the launch updates with their bytes, for oracles outside this code |
//! | `measure` | the launch-update sequence over guest memory, shared by the launch and `krun-sev measure`; the PSP model backend |
//! | `hardware` | the hardware backend: KVM SEV ioctls, /dev/sev, prerequisites |
//! | `phases` | wall time and bytes of each launch phase |
//! | `model` | the PSP model's identity and loud warning |
//! | `report_service` | vsock 1026: SNP reports from the model |
//! | `snp_params` | SNP policy, HOST_DATA and ID block from the TEE config's `tee_data` |
//!
//! What is measured and why: `docs/measurement.md`.

pub mod backend;
pub mod cpuid_page;
pub mod dump;
pub mod hardware;
pub mod measure;
pub mod model;
pub mod phases;
pub mod regions;
pub mod report_service;
pub mod snp_params;
pub mod vcpu_model;
pub mod vmsa;

use crate::resources::TeeKind;

/// Environment variable selecting the backend (`docs/interfaces.md`), read when the library
/// is loaded (`crate::settings`).
pub const BACKEND_ENV: &str = crate::settings::BACKEND_ENV;

/// Errors of the TEE layer.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    /// The backend setting has an unknown value.
    #[error("the backend {value:?} (from the {origin}) must be \"hardware\" or \"model\" (KRUN_SEV_BACKEND or backend in the host configuration file)")]
    BadBackend {
        /// The value.
        value: String,
        /// Where it was set.
        origin: crate::settings::Source,
    },
    /// A host prerequisite of the hardware backend is missing.
    #[error("SEV hardware backend unavailable")]
    Prerequisite(#[source] hardware::probe::MissingPrerequisite),
    /// A KVM SEV ioctl failed.
    #[error("KVM SEV launch command failed")]
    Hardware(#[source] hardware::HardwareError),
    /// Host-side SEV/SEV-ES attestation on hardware sends the broker the platform's full
    /// certificate chain, which `/dev/sev` cannot export (its CEK is not signed by AMD): it
    /// comes from the file `tee_data.vendor_chain` names, produced on this host by
    /// `sevctl export --full`. Fetching the signed CEK and ASK/ARK from AMD KDS instead is
    /// out of scope (the VMM makes no network requests besides the broker's).
    #[error("SEV attestation on hardware needs tee_data.vendor_chain (the output of sevctl export --full on this host)")]
    NoVendorChain,
    /// The chain file `tee_data.vendor_chain` names is unusable on this platform.
    #[error("the SEV certificate chain in tee_data.vendor_chain is unusable")]
    VendorChain(#[source] hardware::vendor_chain::VendorChainError),
    /// The TEE config's vCPU model is unknown, or this host cannot present it.
    #[error("vCPU model")]
    VcpuModel(#[source] vcpu_model::VcpuModelError),
    /// The TEE config's SNP launch parameters are invalid.
    #[error("invalid SNP launch parameters in tee_data")]
    SnpParams(#[source] snp_params::SnpParamsError),
    /// The broker's SEV policy disagrees with the launch type on ENCRYPTED_STATE.
    #[error("the key broker's SEV policy {policy:#x} does not match the launch type (tee \"sev\"/\"sev-es\" need the ENCRYPTED_STATE bit 0x4, \"sev-no-es\" must not have it)")]
    BrokerPolicy {
        /// The broker's policy.
        policy: u32,
    },
    /// A launch command was issued out of order (a bug in the sequence).
    #[error("launch command issued out of order")]
    OutOfOrder,
    /// The PSP model refused an SEV/SEV-ES launch command.
    #[error("PSP model SEV launch command failed")]
    SevModel(#[source] krun_psp_model::SevLaunchError),
    /// The PSP model refused an SNP launch command.
    #[error("PSP model SNP launch command failed")]
    SnpModel(#[source] krun_psp_model::SnpLaunchError),
    /// The PSP model identity cannot be loaded or created.
    #[error("cannot load or create the PSP model identity")]
    Identity(#[source] krun_psp_model::IdentityError),
    /// Guest memory could not be read or written.
    #[error("cannot access guest memory for the launch sequence")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// The loaded guest has no firmware layout or an inconsistent one.
    #[error("the loaded guest is not laid out for a confidential launch")]
    Layout,
    /// KVM's supported CPUID cannot be read (SNP CPUID page).
    #[error("cannot read KVM's supported CPUID for the SNP CPUID page")]
    Cpuid(#[source] kvm_ioctls::Error),
    /// The key broker session (auth, attest, key) failed.
    #[error("SEV attestation with the key broker failed")]
    Broker(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The broker's secret does not fit the secret slot.
    #[error("the broker's secret does not fit the secret slot")]
    SecretTooLarge,
    /// Too many CPUID entries for one CPUID page.
    #[error("KVM reports more CPUID leaves than the SNP CPUID page holds")]
    CpuidTooLarge,
    /// The launch updates could not be written to `KRUN_SEV_DUMP_UPDATES`.
    #[error("cannot write the launch updates")]
    Dump(#[source] dump::DumpError),
}

/// The launch type after resolving the TEE config's `tee` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeMode {
    /// Plain SEV: memory encryption only.
    Sev,
    /// SEV-ES: encrypted register state, one measured VMSA per vCPU.
    SevEs,
    /// SEV-SNP.
    Snp,
}

impl TeeMode {
    /// `"sev"` means SEV-ES (the broker's policy may only add restrictions); `"sev-no-es"`
    /// is plain SEV.
    pub fn from_kind(kind: TeeKind) -> Self {
        match kind {
            TeeKind::Sev | TeeKind::SevEs => TeeMode::SevEs,
            TeeKind::SevNoEs => TeeMode::Sev,
            TeeKind::Snp => TeeMode::Snp,
        }
    }

    /// The `tee` value of `/krun/host.json`.
    pub fn host_json_name(self) -> &'static str {
        match self {
            TeeMode::Sev => "sev",
            TeeMode::SevEs => "sev-es",
            TeeMode::Snp => "snp",
        }
    }

    /// Parses `sev`, `sev-es` or `snp` (the `measure` command's spelling).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sev" => Some(TeeMode::Sev),
            "sev-es" => Some(TeeMode::SevEs),
            "snp" | "sev-snp" => Some(TeeMode::Snp),
            _ => None,
        }
    }

    /// Whether each vCPU's VMSA is measured.
    pub fn has_vmsa(self) -> bool {
        !matches!(self, TeeMode::Sev)
    }

    /// Default guest policy when no broker session supplies one (docs/measurement.md):
    /// SEV `NODBG|NOKS` (0x3), SEV-ES `NODBG|NOKS|ES` (0x7); SNP `0x30000` (bit 17 must be
    /// one, SMT allowed, debug and migration agents forbidden, ABI 0.0).
    pub fn default_policy(self) -> u64 {
        match self {
            TeeMode::Sev => 0x3,
            TeeMode::SevEs => 0x7,
            TeeMode::Snp => 0x30000,
        }
    }
}

/// Which AMD-SP performs the launch commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// /dev/sev and KVM's SEV ioctls.
    Hardware,
    /// The software PSP model: guest memory is not encrypted.
    Model,
}

impl Backend {
    /// The host's setting (`KRUN_SEV_BACKEND` when the library was loaded, else `backend` of
    /// the host configuration file, else `hardware`); never falls back.
    pub fn configured() -> Result<Self, TeeError> {
        Self::from_setting(&crate::settings::host().backend)
    }

    fn from_setting(
        setting: &crate::settings::Setting<crate::settings::BackendChoice>,
    ) -> Result<Self, TeeError> {
        use crate::settings::BackendChoice;
        match &setting.value {
            BackendChoice::Hardware => Ok(Backend::Hardware),
            BackendChoice::Model => Ok(Backend::Model),
            BackendChoice::Invalid(value) => Err(TeeError::BadBackend {
                value: value.clone(),
                origin: setting.source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_selection_is_explicit() {
        use crate::settings::{BackendChoice, Setting, Source};
        let set = |value, source| Setting { value, source };
        assert_eq!(
            Backend::from_setting(&set(BackendChoice::Hardware, Source::Default)).unwrap(),
            Backend::Hardware
        );
        assert_eq!(
            Backend::from_setting(&set(BackendChoice::Model, Source::ConfigFile)).unwrap(),
            Backend::Model
        );
        let err = Backend::from_setting(&set(
            BackendChoice::Invalid("Model".into()),
            Source::Environment,
        ))
        .unwrap_err();
        assert!(matches!(err, TeeError::BadBackend { .. }));
        assert!(err
            .to_string()
            .starts_with("the backend \"Model\" (from the environment at load) must be"));
    }

    #[test]
    fn kinds_map_to_modes() {
        assert_eq!(TeeMode::from_kind(TeeKind::Sev), TeeMode::SevEs);
        assert_eq!(TeeMode::from_kind(TeeKind::SevNoEs), TeeMode::Sev);
        assert_eq!(TeeMode::parse("snp"), Some(TeeMode::Snp));
        assert!(!TeeMode::Sev.has_vmsa());
    }
}
