//! `krun-sev model-trust OUT_DIR`: writes what a key broker needs to trust the PSP model's
//! evidence (testing only): the model identity at `KRUN_SEV_PSP_MODEL_DIR` (created there if
//! missing) supplies `ark.cert` (its SEV ARK, for `krun-kbs --sev-trust-root`), `roots.pem`
//! (its SNP ARK and ASK, for `--trust-root`) and `vcek/<chip id>.pem` (for `--vcek-dir`).
//! The model never shares trust roots with AMD hardware (ARCHITECTURE.md §5).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use krun_attestation::reference::SevCertChain;
use krun_sev::tee::model;

/// Arguments of `krun-sev model-trust`.
#[derive(Debug, clap::Args)]
pub struct ModelTrustArgs {
    /// Directory to write ark.cert, roots.pem and vcek/ into.
    out_dir: PathBuf,
}

/// Errors of `krun-sev model-trust`.
#[derive(Debug, thiserror::Error)]
pub enum ModelTrustError {
    /// The identity cannot be loaded or created.
    #[error("cannot load or create the PSP model identity in {0}")]
    Identity(String, #[source] krun_sev::tee::TeeError),
    /// A certificate cannot be encoded.
    #[error("cannot encode the model's certificates")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A file cannot be written.
    #[error("cannot write {0}")]
    Write(String, #[source] std::io::Error),
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ModelTrustError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| ModelTrustError::Write(parent.display().to_string(), e))?;
    }
    fs::write(path, bytes).map_err(|e| ModelTrustError::Write(path.display().to_string(), e))
}

/// Runs the command.
pub fn model_trust(args: &ModelTrustArgs) -> Result<ExitCode, ModelTrustError> {
    let dir = model::identity_dir();
    let id = model::load_or_create(&dir)
        .map_err(|e| ModelTrustError::Identity(dir.display().to_string(), e))?;
    let chain = SevCertChain::from_bytes(id.sev_chain_bytes())
        .map_err(|e| ModelTrustError::Encode(Box::new(e)))?;
    let encode = |e: krun_psp_model::IdentityError| ModelTrustError::Encode(Box::new(e));
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
    let out = &args.out_dir;
    write(&out.join("ark.cert"), &chain.ca.ark)?;
    write(&out.join("roots.pem"), &roots)?;
    write(
        &out.join("vcek").join(format!("{chip}.pem")),
        &id.vcek_pem().map_err(encode)?,
    )?;
    eprintln!(
        "model-trust: wrote the trust roots of the PSP model identity in {id_dir} to {out}; \
         use krun-kbs --sev-trust-root {out}/ark.cert --trust-root {out}/roots.pem --vcek-dir {out}/vcek",
        id_dir = dir.display(),
        out = out.display()
    );
    Ok(ExitCode::SUCCESS)
}
