//! `manifest.json`: what the bundle holds, with each file's size and SHA-256
//! (docs/interfaces.md, "Guest bundle").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format this crate writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// Errors from parsing or writing a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("bundle manifest is not valid JSON of the expected shape")]
    Parse(#[source] serde_json::Error),
    #[error("bundle manifest has format {found}, this build reads format {MANIFEST_FORMAT}")]
    UnsupportedFormat { found: u32 },
    #[error("bundle manifest cannot be serialized")]
    Serialize(#[source] serde_json::Error),
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

impl FileDigest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        let hash = Sha256::digest(data);
        let sha256 = hash.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            size: data.len() as u64,
            sha256,
        }
    }
}

/// The parsed `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `uname -r` of the guest kernel.
    pub kernel_version: String,
    /// CONFIG_NR_CPUS of the guest kernel: the most vCPUs the guest can bring up.
    pub nr_cpus: u32,
    /// File name inside the bundle directory -> digest. Sorted, so serialization is stable.
    pub files: BTreeMap<String, FileDigest>,
}

impl Manifest {
    /// Parses and checks the format version.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_str(text).map_err(ManifestError::Parse)?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat {
                found: manifest.format,
            });
        }
        Ok(manifest)
    }

    /// Pretty JSON with a trailing newline; byte-identical for equal manifests.
    pub fn to_json(&self) -> Result<String, ManifestError> {
        let mut text = serde_json::to_string_pretty(self).map_err(ManifestError::Serialize)?;
        text.push('\n');
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_known_sha256() {
        let digest = FileDigest::of(b"abc");
        assert_eq!(digest.size, 3);
        assert_eq!(
            digest.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn round_trips_and_rejects_other_formats() {
        let manifest = Manifest {
            format: 1,
            kernel_version: "6.12.117".into(),
            nr_cpus: 32,
            files: BTreeMap::from([("bzImage".into(), FileDigest::of(b"k"))]),
        };
        let json = manifest.to_json().unwrap();
        assert!(json.starts_with("{\n  \"format\": 1,\n  \"kernel_version\": \"6.12.117\""));
        assert_eq!(Manifest::parse(&json).unwrap(), manifest);
        let v2 = json.replace("\"format\": 1", "\"format\": 2");
        assert!(matches!(
            Manifest::parse(&v2),
            Err(ManifestError::UnsupportedFormat { found: 2 })
        ));
        assert!(matches!(
            Manifest::parse("{\"format\":1}"),
            Err(ManifestError::Parse(_))
        ));
    }
}
