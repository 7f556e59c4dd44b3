//! The guest bundle (docs/interfaces.md, "Guest bundle"): a directory with the guest kernel,
//! the initrd, optionally the reset-vector firmware, and a manifest with each file's size and
//! SHA-256.
//!
//! - `cpio`: a deterministic newc writer (also usable for the VMM's launch segment).
//! - `initrd`: the initrd layout and deterministic zstd.
//! - `manifest`: `manifest.json`.
//! - `bundle`: load-and-verify (`Bundle::load`) and `write_bundle`.
//! - `minimal`: a minimal valid bundle for tests of the tools that measure bundles.

pub mod bundle;
pub mod cpio;
pub mod initrd;
pub mod manifest;
pub mod minimal;

pub use bundle::{
    bundle_dir, write_bundle, Bundle, BundleContents, BundleError, BundleFiles, BUNDLE_DIR_ENV,
    FIRMWARE_FILE, INITRD_FILE, KERNEL_FILE, MANIFEST_FILE,
};
pub use cpio::{CpioArchive, CpioError};
pub use initrd::{build_initrd, zstd, InitrdError};
pub use manifest::{FileDigest, Manifest, ManifestError, MANIFEST_FORMAT};
pub use minimal::write_minimal_bundle;
