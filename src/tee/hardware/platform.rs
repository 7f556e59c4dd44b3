//! `/dev/sev` platform calls through the `sev` crate: firmware build, the platform's
//! certificate chain (for the key broker's `/auth`) and SNP identification.
//!
//! Not run here (no /dev/sev on this project's machines); the calls are the crate's.

use sev::firmware::host::Firmware;
use sev::parser::Encoder;

use super::HardwareError;

/// SEV firmware build (API major.minor, build id) as LAUNCH_MEASURE's MAC covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareBuild {
    /// API major version.
    pub major: u8,
    /// API minor version.
    pub minor: u8,
    /// Build id.
    pub build: u8,
}

/// What the platform says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformInfo {
    /// SEV firmware build.
    pub build: FirmwareBuild,
    /// `PDH ‖ PEK ‖ OCA ‖ CEK` (4 × 0x824 bytes, the `sev` crate's encoding). The CEK the
    /// firmware exports is not signed by AMD's ASK: a broker fetches the signed CEK from
    /// AMD KDS with [`PlatformInfo::identifier`].
    pub platform_chain: Vec<u8>,
    /// GET_ID, lower-case hex (the KDS key of this chip's CEK/VCEK).
    pub identifier: String,
}

fn open() -> Result<Firmware, HardwareError> {
    Firmware::open().map_err(HardwareError::SevDevice)
}

/// PLATFORM_STATUS, PDH_CERT_EXPORT and GET_ID.
pub fn platform_info() -> Result<PlatformInfo, HardwareError> {
    let mut fw = open()?;
    let status = fw.platform_status().map_err(|e| HardwareError::Platform {
        what: "PLATFORM_STATUS",
        source: e,
    })?;
    let chain = fw.pdh_cert_export().map_err(|e| HardwareError::Platform {
        what: "PDH_CERT_EXPORT",
        source: e,
    })?;
    let mut platform_chain = Vec::new();
    chain
        .encode(&mut platform_chain, ())
        .map_err(HardwareError::SevDevice)?;
    let id = fw.get_identifier().map_err(|e| HardwareError::Platform {
        what: "GET_ID",
        source: e,
    })?;
    Ok(PlatformInfo {
        build: FirmwareBuild {
            major: status.build.version.major,
            minor: status.build.version.minor,
            build: status.build.build,
        },
        platform_chain,
        identifier: id.0.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// SNP_PLATFORM_STATUS: firmware version and reported TCB (for logs and VCEK lookup).
pub fn snp_identify() -> Result<String, HardwareError> {
    let mut fw = open()?;
    let s = fw
        .snp_platform_status()
        .map_err(|e| HardwareError::Platform {
            what: "SNP_PLATFORM_STATUS",
            source: e,
        })?;
    Ok(format!(
        "SNP firmware {}.{} build {}, {} guests, reported TCB {:?}",
        s.version.0, s.version.1, s.build_id, s.guest_count, s.reported_tcb_version
    ))
}
