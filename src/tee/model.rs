//! The PSP model backend: where its identity lives and the warning every model launch logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use krun_psp_model::ModelIdentity;

use super::TeeError;

/// Directory of the model's persisted identity (ARK/ASK/CEK/PEK/PDH, VCEK); overrides
/// [`DEFAULT_MODEL_DIR`].
pub const MODEL_DIR_ENV: &str = "KRUN_SEV_PSP_MODEL_DIR";
/// Default identity directory.
pub const DEFAULT_MODEL_DIR: &str = "/var/lib/krun-sev/psp-model";

/// The identity directory in effect.
pub fn identity_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_MODEL_DIR),
    }
}

/// Loads the identity from `dir`, or generates and saves one when `dir` does not exist or
/// is empty. A broker trusts model evidence only after its chain is configured by hand.
pub fn load_or_create(dir: &Path) -> Result<Arc<ModelIdentity>, TeeError> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => false,
    };
    if empty {
        let id = ModelIdentity::generate().map_err(TeeError::Identity)?;
        id.save(dir).map_err(TeeError::Identity)?;
        log::warn!(
            "created a new PSP model identity in {}; brokers must be configured with its chain",
            dir.display()
        );
        return Ok(Arc::new(id));
    }
    ModelIdentity::load(dir)
        .map(Arc::new)
        .map_err(TeeError::Identity)
}

/// Logged at every model launch.
pub fn warn_unencrypted() {
    log::warn!("**********************************************************************");
    log::warn!("KRUN_SEV_BACKEND=model: the PSP model stands in for the AMD Secure Processor.");
    log::warn!("Guest memory is NOT encrypted and NOT protected from this host. Testing only.");
    log::warn!("**********************************************************************");
}

/// For the calculator: the persisted identity when there is one, else a throw-away one (the
/// launch digest does not depend on the identity, only MEASURE's MAC and reports do).
pub fn load_or_ephemeral(dir: &Path) -> Result<Arc<ModelIdentity>, TeeError> {
    let present = std::fs::read_dir(dir)
        .map(|mut e| e.next().is_some())
        .unwrap_or(false);
    if present {
        return ModelIdentity::load(dir)
            .map(Arc::new)
            .map_err(TeeError::Identity);
    }
    ModelIdentity::generate()
        .map(Arc::new)
        .map_err(TeeError::Identity)
}
