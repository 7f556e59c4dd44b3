//! `krun-sev model-trust OUT_DIR`: writes what a key broker needs to trust the PSP model's
//! evidence (testing only): the model identity at `KRUN_SEV_PSP_MODEL_DIR` (created there if
//! missing) supplies `ark.cert` (its SEV ARK, for `krun-kbs --sev-trust-root`), `roots.pem`
//! (its SNP ARK and ASK, for `--trust-root`), `vcek/<chip id>.pem` (for `--vcek-dir`) and
//! `sev.chain` (its SEV platform chain as `sevctl export --full` writes it, for the sevctl
//! stand-in `ci/sevctl-model` that `buildah mkcw --type sev` calls; docs/compatibility.md).
//! The model never shares trust roots with AMD hardware (ARCHITECTURE.md §5).

use std::path::PathBuf;
use std::process::ExitCode;

use krun_sev::tee::model;

/// Arguments of `krun-sev model-trust`.
#[derive(Debug, clap::Args)]
pub struct ModelTrustArgs {
    /// Directory to write ark.cert, roots.pem, vcek/ and sev.chain into.
    out_dir: PathBuf,
}

/// Errors of `krun-sev model-trust`.
#[derive(Debug, thiserror::Error)]
pub enum ModelTrustError {
    /// The identity cannot be loaded or created.
    #[error("cannot load or create the PSP model identity in {0}")]
    Identity(String, #[source] krun_sev::tee::TeeError),
    /// The trust roots cannot be written.
    #[error("cannot write the PSP model's trust roots")]
    Write(#[source] model::TrustRootsError),
}

/// Runs the command.
pub fn model_trust(args: &ModelTrustArgs) -> Result<ExitCode, ModelTrustError> {
    let dir = model::identity_dir();
    let id = model::load_or_create(&dir)
        .map_err(|e| ModelTrustError::Identity(dir.display().to_string(), e))?;
    let out = &args.out_dir;
    model::write_trust_roots(&id, out).map_err(ModelTrustError::Write)?;
    eprintln!(
        "model-trust: wrote the trust roots of the PSP model identity in {id_dir} to {out}; \
         use krun-kbs --sev-trust-root {out}/ark.cert --trust-root {out}/roots.pem --vcek-dir {out}/vcek",
        id_dir = dir.display(),
        out = out.display()
    );
    Ok(ExitCode::SUCCESS)
}
