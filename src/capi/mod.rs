//! The libkrun-sev C API (`include/libkrun.h`).
//!
//! Each `extern "C"` function converts and checks its arguments, updates the context table or
//! calls into [`crate::launch`], and maps errors to negative errno values. Every failure is
//! logged with the function name and the full error chain; no panic crosses the boundary.

mod context;
mod exports;
mod logger;
mod strings;

use std::panic::{catch_unwind, AssertUnwindSafe};

pub use exports::*;
pub(crate) use logger::always_warn;

use crate::launch::LaunchError;
use crate::resources::{NetConfigError, PortMapError, ResourcesError, RlimitError, TeeConfigError};

/// Errors returned through the C API.
#[derive(Debug, thiserror::Error)]
pub enum CapiError {
    /// A required pointer argument was NULL.
    #[error("`{0}` is NULL")]
    NullPointer(&'static str),
    /// A string argument was not UTF-8.
    #[error("`{0}` is not valid UTF-8")]
    NotUtf8(&'static str),
    /// An entry of a string array was not UTF-8.
    #[error("entry {index} of `{what}` is not valid UTF-8")]
    NotUtf8Entry {
        /// The argument.
        what: &'static str,
        /// Position in the array.
        index: usize,
    },
    /// A string array without a NULL terminator within the bound.
    #[error("`{0}` has more than 65536 entries or no NULL terminator")]
    TooManyEntries(&'static str),
    /// No context has this ID.
    #[error("no context with ID {0}")]
    UnknownContext(u32),
    /// The context table is full.
    #[error("too many contexts")]
    TooManyContexts,
    /// A log level outside 0..=5.
    #[error("log level {0} is outside 0..=5")]
    LogLevel(u32),
    /// A function libkrun-sev does not provide.
    #[error("{0}")]
    NotSupported(&'static str),
    /// Invalid VM settings.
    #[error("invalid setting")]
    Resources(#[source] ResourcesError),
    /// Invalid port map.
    #[error("invalid port map")]
    PortMap(#[source] PortMapError),
    /// Invalid network settings.
    #[error("invalid network device")]
    Net(#[source] NetConfigError),
    /// Invalid rlimits.
    #[error("invalid rlimits")]
    Rlimit(#[source] RlimitError),
    /// Invalid TEE config file.
    #[error("TEE config file {path}")]
    TeeConfig {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: TeeConfigError,
    },
    /// The launch failed before the guest started.
    #[error("cannot start the microVM")]
    Launch(#[source] LaunchError),
}

impl CapiError {
    /// The positive errno for this error.
    fn errno(&self) -> i32 {
        match self {
            CapiError::UnknownContext(_) => libc::ENOENT,
            CapiError::TooManyContexts => libc::ENOMEM,
            CapiError::NotSupported(_) => libc::ENOTSUP,
            CapiError::Net(NetConfigError::Exists) => libc::EEXIST,
            CapiError::TeeConfig { source, .. } => source.errno(),
            CapiError::Launch(e) => e.errno(),
            _ => libc::EINVAL,
        }
    }
}

/// Renders an error and its sources on one line: `outer: inner: innermost`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Runs the body of a C entry point: catches panics, logs failures and turns them into
/// negative errno values.
fn guarded(func: &'static str, body: impl FnOnce() -> Result<i32, CapiError>) -> i32 {
    logger::ensure_logger();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(ret)) => ret,
        Ok(Err(err)) => {
            log::error!("{func}: {}", error_chain(&err));
            -err.errno()
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            log::error!("{func}: internal error: {msg}");
            -libc::EFAULT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_efault() {
        assert_eq!(guarded("test", || panic!("boom")), -libc::EFAULT);
    }

    #[test]
    fn errors_become_negative_errno() {
        assert_eq!(
            guarded("test", || Err(CapiError::UnknownContext(7))),
            -libc::ENOENT
        );
        assert_eq!(
            guarded("test", || Err(CapiError::NullPointer("p"))),
            -libc::EINVAL
        );
        assert_eq!(guarded("test", || Ok(5)), 5);
    }

    #[test]
    fn chain_includes_sources() {
        let err = CapiError::Resources(ResourcesError::VcpuCount(0));
        assert_eq!(
            error_chain(&err),
            "invalid setting: vCPU count 0 is outside 1..=32"
        );
    }
}
