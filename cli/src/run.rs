//! `krun-sev run`: drives the library exactly as crun's krun handler does for SEV:
//! `krun_set_log_level`, `krun_create_ctx`, `krun_set_root_disk`, `krun_set_tee_config_file`,
//! `krun_set_vm_config`, `krun_start_enter`.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use krun_sev::capi;

/// Arguments of `krun-sev run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A directory made by `krun-sev mkcw` or `buildah mkcw` (holding disk.img and
    /// krun-sev.json).
    #[arg(required_unless_present = "disk")]
    dir: Option<PathBuf>,
    /// The encrypted disk image (instead of DIR/disk.img).
    #[arg(long, requires = "tee_config")]
    disk: Option<PathBuf>,
    /// The TEE config file (instead of DIR/krun-sev.json).
    #[arg(long)]
    tee_config: Option<PathBuf>,
    /// vCPUs passed to krun_set_vm_config (the TEE config's value wins, as with crun).
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// RAM in MiB passed to krun_set_vm_config (the TEE config's value wins).
    #[arg(long, default_value_t = 1024)]
    ram_mib: u32,
    /// Library log level, 0 (off) to 5 (trace).
    #[arg(long, default_value_t = 2)]
    log_level: u32,
}

/// Errors of `krun-sev run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Neither DIR nor the explicit paths.
    #[error("give DIR, or --disk and --tee-config")]
    Usage,
    /// A path cannot be passed to C.
    #[error("path {0} contains a NUL byte")]
    Path(String),
    /// A C API call failed.
    #[error("{call} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Call {
        /// The function.
        call: &'static str,
        /// The positive errno.
        errno: i32,
    },
}

fn check(call: &'static str, ret: i32) -> Result<i32, RunError> {
    if ret < 0 {
        Err(RunError::Call {
            call,
            errno: ret.saturating_neg(),
        })
    } else {
        Ok(ret)
    }
}

fn c_path(path: &Path) -> Result<CString, RunError> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| RunError::Path(path.display().to_string()))
}

/// Runs the workload; returns only if the library could not start it.
pub fn run(args: &RunArgs) -> Result<ExitCode, RunError> {
    let disk = c_path(&input(&args.disk, &args.dir, "disk.img")?)?;
    let tee_config = c_path(&input(&args.tee_config, &args.dir, "krun-sev.json")?)?;

    check(
        "krun_set_log_level",
        capi::krun_set_log_level(args.log_level),
    )?;
    let ctx = check("krun_create_ctx", capi::krun_create_ctx())?;
    let ctx = u32::try_from(ctx).map_err(|_| RunError::Call {
        call: "krun_create_ctx",
        errno: libc::EINVAL,
    })?;
    // SAFETY: `disk` is a valid NUL-terminated string that outlives the call.
    check("krun_set_root_disk", unsafe {
        capi::krun_set_root_disk(ctx, disk.as_ptr())
    })?;
    // SAFETY: `tee_config` is a valid NUL-terminated string that outlives the call.
    check("krun_set_tee_config_file", unsafe {
        capi::krun_set_tee_config_file(ctx, tee_config.as_ptr())
    })?;
    check(
        "krun_set_vm_config",
        capi::krun_set_vm_config(ctx, args.cpus, args.ram_mib),
    )?;
    check("krun_start_enter", capi::krun_start_enter(ctx))?;
    // krun_start_enter returns only on failure; a non-negative value means the library
    // broke its contract.
    Err(RunError::Call {
        call: "krun_start_enter",
        errno: libc::EPROTO,
    })
}

/// The explicit path, or `name` inside DIR.
fn input(
    explicit: &Option<PathBuf>,
    dir: &Option<PathBuf>,
    name: &str,
) -> Result<PathBuf, RunError> {
    match (explicit, dir) {
        (Some(path), _) => Ok(path.clone()),
        (None, Some(dir)) => Ok(dir.join(name)),
        (None, None) => Err(RunError::Usage),
    }
}
