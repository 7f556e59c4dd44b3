//! The platform's full SEV certificate chain for the key broker's `/auth` on hardware.
//!
//! `/dev/sev` exports only PDH ‖ PEK ‖ OCA ‖ CEK, and that CEK is not signed by AMD's ASK.
//! Like libkrun, the full chain (`sevctl export --full`, the `sev` crate's
//! `certs::sev::Chain` encoding: PDH ‖ PEK ‖ OCA ‖ CEK ‖ ASK ‖ ARK) comes from the file
//! `tee_data.vendor_chain` names. A file from another host, or from before a PDH
//! regeneration, would start a session the PSP cannot open, so its PDH must be the one the
//! platform exports now, and the chain must verify (ARK → ASK → CEK → PEK ← OCA, PEK → PDH).
//! Whether the ARK is AMD's is the broker's decision (its SEV trust root); a chain with
//! another ARK is only logged here.

use std::io::Read;
use std::path::Path;

use krun_attestation::reference::SevCertChain;
use sev::certs::sev::{sev as platform, Chain, Verifiable};
use sev::parser::{Decoder, Encoder};

use super::platform::{FirmwareBuild, PlatformInfo};

/// Largest chain file read (AMD's own chains are 11536 bytes).
const MAX_CHAIN_FILE: u64 = 64 * 1024;

/// Errors of loading `tee_data.vendor_chain`.
#[derive(Debug, thiserror::Error)]
pub enum VendorChainError {
    /// The file cannot be read.
    #[error("cannot read the SEV certificate chain file")]
    Read(#[source] std::io::Error),
    /// The file is larger than any certificate chain.
    #[error("the SEV certificate chain file is too large")]
    TooLarge,
    /// The file is not laid out as a `sevctl export --full` chain (lengths, key sizes).
    #[error("the SEV certificate chain file is not a full SEV chain (sevctl export --full)")]
    Layout(#[source] krun_attestation::reference::ReferenceError),
    /// A certificate of the chain cannot be decoded.
    #[error("the SEV certificate chain file holds a malformed certificate")]
    Malformed(#[source] std::io::Error),
    /// A signature in the chain does not verify.
    #[error("the SEV certificate chain does not verify")]
    Invalid(#[source] std::io::Error),
    /// The platform's exported chain cannot be decoded.
    #[error("the platform's exported SEV chain is malformed")]
    PlatformChain(#[source] std::io::Error),
    /// The chain's PDH is not the one the platform exports now.
    #[error("the SEV certificate chain's PDH is not this platform's (re-run sevctl export --full on this host)")]
    PdhMismatch,
}

/// What `/auth` sends for the platform: the full chain and the firmware build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthChain {
    /// PDH ‖ PEK ‖ OCA ‖ CEK ‖ ASK ‖ ARK, as read from the file.
    pub chain: Vec<u8>,
    /// The platform's firmware build (PLATFORM_STATUS).
    pub build: FirmwareBuild,
}

/// Reads the chain at `path` and checks it against `platform` (PDH equal, chain verifies).
pub fn load(path: &Path, platform: &PlatformInfo) -> Result<AuthChain, VendorChainError> {
    let file = std::fs::File::open(path).map_err(VendorChainError::Read)?;
    let mut bytes = Vec::new();
    file.take(MAX_CHAIN_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(VendorChainError::Read)?;
    if bytes.len() as u64 > MAX_CHAIN_FILE {
        return Err(VendorChainError::TooLarge);
    }
    check(&bytes, platform)?;
    Ok(AuthChain {
        chain: bytes,
        build: platform.build,
    })
}

/// Decodes and verifies `bytes`; its PDH must be the platform's.
fn check(bytes: &[u8], platform: &PlatformInfo) -> Result<(), VendorChainError> {
    // The broker's parser checks every length first: the `sev` crate's decoder panics on
    // some truncated CA certificates.
    SevCertChain::from_bytes(bytes).map_err(VendorChainError::Layout)?;
    let mut rest = bytes;
    let chain = Chain::decode(&mut rest, ()).map_err(VendorChainError::Malformed)?;
    (&chain).verify().map_err(VendorChainError::Invalid)?;
    let mut exported = platform.platform_chain.as_slice();
    let exported =
        platform::Chain::decode(&mut exported, ()).map_err(VendorChainError::PlatformChain)?;
    if chain.sev.pdh != exported.pdh {
        return Err(VendorChainError::PdhMismatch);
    }
    if !ark_is_amds(&chain) {
        log::warn!(
            "the SEV chain's ARK is not one of AMD's built-in ARKs; the broker's trust root decides"
        );
    }
    Ok(())
}

fn ark_is_amds(chain: &Chain) -> bool {
    use sev::certs::sev::builtin::{genoa, milan, naples, rome, turin};
    let mut ark = Vec::new();
    if chain.ca.ark.encode(&mut ark, ()).is_err() {
        return false;
    }
    [naples::ARK, rome::ARK, milan::ARK, genoa::ARK, turin::ARK].contains(&ark.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tee::hardware::test_utils::platform_of;
    use krun_psp_model::ModelIdentity;
    use std::sync::OnceLock;
    use vmm_sys_util::tempdir::TempDir;

    /// Two platforms (identity generation is slow).
    fn ids() -> &'static [ModelIdentity; 2] {
        static IDS: OnceLock<[ModelIdentity; 2]> = OnceLock::new();
        IDS.get_or_init(|| {
            [
                ModelIdentity::generate().unwrap(),
                ModelIdentity::generate().unwrap(),
            ]
        })
    }

    fn write(dir: &TempDir, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.as_path().join("sev.chain");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn the_platforms_chain_loads_with_its_build() {
        let id = &ids()[0];
        let dir = TempDir::new().unwrap();
        let path = write(&dir, id.sev_chain_bytes());
        let platform = platform_of(id);
        let got = load(&path, &platform).unwrap();
        assert_eq!(got.chain, id.sev_chain_bytes());
        assert_eq!(got.build, platform.build);
        // The broker's parser reads the same bytes as this chain.
        let parsed = SevCertChain::from_bytes(&got.chain).unwrap();
        assert_eq!(parsed.sev.pdh, id.pdh_cert_bytes());
    }

    #[test]
    fn another_platforms_chain_is_refused() {
        let [ours, theirs] = ids();
        let dir = TempDir::new().unwrap();
        let path = write(&dir, theirs.sev_chain_bytes());
        assert!(matches!(
            load(&path, &platform_of(ours)),
            Err(VendorChainError::PdhMismatch)
        ));
    }

    #[test]
    fn bad_files_are_refused() {
        let id = &ids()[0];
        let platform = platform_of(id);
        let dir = TempDir::new().unwrap();
        assert!(matches!(
            load(&dir.as_path().join("missing"), &platform),
            Err(VendorChainError::Read(_))
        ));
        let good = id.sev_chain_bytes();
        let truncated = write(&dir, &good[..good.len() - 1]);
        assert!(matches!(
            load(&truncated, &platform),
            Err(VendorChainError::Layout(_))
        ));
        // Only the platform part (what /dev/sev exports) is not a full chain.
        let platform_only = write(&dir, &platform.platform_chain);
        assert!(matches!(
            load(&platform_only, &platform),
            Err(VendorChainError::Layout(_))
        ));
        let trailing = write(&dir, &[good, &[0u8]].concat());
        assert!(matches!(
            load(&trailing, &platform),
            Err(VendorChainError::Layout(_))
        ));
        // Right lengths, but the PDH's usage field says PEK.
        let mut wrong_usage = good.to_vec();
        wrong_usage[..0x824].copy_from_slice(&good[0x824..2 * 0x824]);
        let wrong_usage = write(&dir, &wrong_usage);
        assert!(matches!(
            load(&wrong_usage, &platform),
            Err(VendorChainError::Malformed(_))
        ));
        let huge = write(&dir, &vec![0u8; 70_000]);
        assert!(matches!(
            load(&huge, &platform),
            Err(VendorChainError::TooLarge)
        ));
    }

    #[test]
    fn a_broken_signature_is_refused() {
        let id = &ids()[0];
        let mut full = id.sev_chain().unwrap();
        let other = ids()[1].sev_chain().unwrap();
        // Another ASK: the ARK no longer signs it, the PDH is still the platform's.
        full.ca.ask = other.ca.ask;
        let mut bytes = Vec::new();
        full.encode(&mut bytes, ()).unwrap();
        let dir = TempDir::new().unwrap();
        let path = write(&dir, &bytes);
        assert!(matches!(
            load(&path, &platform_of(id)),
            Err(VendorChainError::Invalid(_))
        ));
    }
}
