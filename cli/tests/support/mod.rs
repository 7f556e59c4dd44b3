//! Shared by the cli integration tests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One PSP model identity (in `psp/` below the returned directory) for every run in a test
/// binary: generating one takes seconds, and without one each `krun-sev` invocation
/// generates a throwaway identity. No digest depends on it.
pub fn psp_model_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        krun_psp_model::ModelIdentity::generate()
            .unwrap()
            .save(&dir.path().join("psp"))
            .unwrap();
        dir
    })
    .path()
}

/// A minimal valid guest bundle (`krun_bundle::write_minimal_bundle`).
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn fake_bundle(dir: &Path) -> PathBuf {
    krun_bundle::write_minimal_bundle(dir).unwrap()
}
