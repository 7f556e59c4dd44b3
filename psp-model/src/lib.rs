//! A software model of the AMD Secure Processor (PSP) launch commands.
//!
//! The model computes what the firmware would over the same bytes, in the same order, so the
//! guest owner's tools accept its evidence: the `sev` crate's owner-side `Session` for legacy
//! SEV/SEV-ES, and `sev-snp-measure` plus the `sev` crate's report verification for SNP. It
//! knows nothing about KVM or the guest memory layout: the launch sequence hands it the bytes
//! and guest physical addresses it measures. Its trust roots are generated, never AMD's.

pub mod crypto;
pub mod identity;
pub mod sev_launch;
pub mod snp_launch;
pub mod snp_report;

#[cfg(test)]
mod test_oracle;

pub use identity::{
    IdentityError, ModelIdentity, SevPlatformVersion, SnpFirmwareVersion, SnpPlatform, TcbVersion,
};
pub use sev_launch::{
    LaunchMeasurement, OwnerSession, SevGuest, SevGuestState, SevLaunchError, SevMode,
};
pub use snp_launch::{SnpGuest, SnpGuestState, SnpLaunchError, SnpLaunchFinish, SnpPageType};
pub use snp_report::{SnpReportError, SnpReportFields};
