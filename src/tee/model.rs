//! The PSP model backend: where its identity lives and the warning every model launch shows.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use krun_psp_model::ModelIdentity;

use super::TeeError;
use crate::settings::{self, BackendChoice};

/// Directory of the model's persisted identity (ARK/ASK/CEK/PEK/PDH, VCEK); overrides
/// [`DEFAULT_MODEL_DIR`] when set in the environment of the process loading the library.
pub const MODEL_DIR_ENV: &str = settings::MODEL_DIR_ENV;
/// Default identity directory.
pub const DEFAULT_MODEL_DIR: &str = settings::DEFAULT_MODEL_DIR;

/// The identity directory in effect: the host's setting (`crate::settings`).
pub fn identity_dir() -> PathBuf {
    settings::host().model_dir.value.clone()
}

/// The identity read on the host side of the launch: crun closes every descriptor and
/// `pivot_root`s into the container before `krun_start_enter`, where the host's identity
/// directory is not visible.
static HELD: Mutex<Option<Arc<ModelIdentity>>> = Mutex::new(None);

fn held() -> std::sync::MutexGuard<'static, Option<Arc<ModelIdentity>>> {
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// When the library is loaded with the model backend: reads the identity into memory if
/// [`identity_dir`] holds one (small files, no descriptor kept). A missing or unreadable one
/// is left to [`prepare`] and the launch, which report it.
pub fn preload() {
    if settings::host().backend.value != BackendChoice::Model {
        return;
    }
    let dir = identity_dir();
    let present = std::fs::read_dir(&dir).is_ok_and(|mut e| e.next().is_some());
    if present {
        if let Ok(id) = ModelIdentity::load(&dir) {
            *held() = Some(Arc::new(id));
        }
    }
}

/// At `krun_create_ctx` (on the host for crun 1.21 and later) with the model backend: the
/// identity is loaded, or created in [`identity_dir`] if there is none, unless it is held
/// already. Failures are reported again by the launch.
pub fn prepare() {
    if settings::host().backend.value != BackendChoice::Model || held().is_some() {
        return;
    }
    match load_or_create(&identity_dir()) {
        Ok(id) => *held() = Some(id),
        Err(e) => log::debug!(
            "PSP model identity not ready at context creation: {}",
            crate::capi::error_chain(&e)
        ),
    }
}

/// The identity for a model launch: the one held since load or context creation, else
/// loaded (or created) from [`identity_dir`] now.
pub fn launch_identity() -> Result<Arc<ModelIdentity>, TeeError> {
    if let Some(id) = held().as_ref() {
        return Ok(id.clone());
    }
    let id = load_or_create(&identity_dir())?;
    *held() = Some(id.clone());
    Ok(id)
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

/// Errors while writing a model identity's trust roots.
#[derive(Debug, thiserror::Error)]
pub enum TrustRootsError {
    /// A certificate cannot be encoded.
    #[error("cannot encode the PSP model's certificates")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A file cannot be written.
    #[error("cannot write {0}")]
    Write(String, #[source] std::io::Error),
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrustRootsError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| TrustRootsError::Write(parent.display().to_string(), e))?;
    }
    std::fs::write(path, bytes).map_err(|e| TrustRootsError::Write(path.display().to_string(), e))
}

/// Writes what a key broker needs to trust `id`'s evidence (testing only) into `out`:
/// `ark.cert` (the SEV ARK, for `krun-kbs --sev-trust-root`), `roots.pem` (the SNP ARK and
/// ASK, for `--trust-root`), `vcek/<hex chip id>.pem` (for `--vcek-dir`) and `sev.chain`
/// (the model's SEV platform chain PDH ‖ PEK ‖ OCA ‖ CEK ‖ ASK ‖ ARK, the format of `sevctl
/// export --full`: what stands in for sevctl when `buildah mkcw --type sev` exports it,
/// docs/compatibility.md). The model never shares trust roots with AMD hardware
/// (ARCHITECTURE.md §5).
pub fn write_trust_roots(id: &ModelIdentity, out: &Path) -> Result<(), TrustRootsError> {
    let encode = |e: krun_psp_model::IdentityError| TrustRootsError::Encode(Box::new(e));
    let chain = krun_attestation::reference::SevCertChain::from_bytes(id.sev_chain_bytes())
        .map_err(|e| TrustRootsError::Encode(Box::new(e)))?;
    let roots = [
        id.snp_ark_pem().map_err(encode)?,
        id.snp_ask_pem().map_err(encode)?,
    ]
    .concat();
    let chip: String = id
        .snp_platform()
        .chip_id
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write_file(&out.join("ark.cert"), &chain.ca.ark)?;
    write_file(&out.join("roots.pem"), &roots)?;
    write_file(&out.join("sev.chain"), id.sev_chain_bytes())?;
    write_file(
        &out.join("vcek").join(format!("{chip}.pem")),
        &id.vcek_pem().map_err(encode)?,
    )
}

/// Shown on stderr at every model launch, whatever the log level.
pub fn warn_unencrypted() {
    crate::capi::always_warn(&[
        "**********************************************************************",
        "backend model: the PSP model stands in for the AMD Secure Processor.",
        "Guest memory is NOT encrypted and NOT protected from this host. Testing only.",
        "**********************************************************************",
    ]);
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
