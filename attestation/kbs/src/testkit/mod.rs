//! Evidence generators for tests and attestation harnesses: a fake SNP platform (chain and
//! signed reports) and a fake legacy-SEV platform (chain and PSP launch commands).
//!
//! Their roots are generated on the fly and are never AMD's: a broker accepts this evidence
//! only when the fake root is configured by hand (`--trust-root`, `--sev-trust-root`).

pub mod sev;
pub mod snp;

/// Errors from the fake platforms.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("OpenSSL operation failed")]
    Openssl(#[from] openssl::error::ErrorStack),
    #[error("encoding failed")]
    Io(#[from] std::io::Error),
    #[error("invalid input to the fake platform")]
    Invalid(&'static str),
}
