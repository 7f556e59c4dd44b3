//! Test-host helper: drives the C API like crun's krun handler (`krun-sev run` does the same):
//! `krun-capi-run DISK TEE_CONFIG [LOG_LEVEL]`. Exits with the workload's status, or 125 with
//! the failing call when the library returns an error.

use std::ffi::CString;
use std::process::ExitCode;

use krun_sev::capi;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(disk), Some(tee)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: krun-capi-run DISK TEE_CONFIG [LOG_LEVEL]");
        return ExitCode::from(2);
    };
    let level = args.get(3).and_then(|l| l.parse().ok()).unwrap_or(3);
    let (Ok(disk), Ok(tee)) = (CString::new(disk.as_str()), CString::new(tee.as_str())) else {
        return ExitCode::from(2);
    };
    capi::krun_set_log_level(level);
    let ctx = capi::krun_create_ctx();
    let Ok(ctx) = u32::try_from(ctx) else {
        eprintln!("krun_create_ctx: {ctx}");
        return ExitCode::from(125);
    };
    // SAFETY: both strings are NUL-terminated and outlive the calls.
    let rc = unsafe { capi::krun_set_root_disk(ctx, disk.as_ptr()) };
    if rc != 0 {
        eprintln!("krun_set_root_disk: {rc}");
        return ExitCode::from(125);
    }
    // SAFETY: as above.
    let rc = unsafe { capi::krun_set_tee_config_file(ctx, tee.as_ptr()) };
    if rc != 0 {
        eprintln!("krun_set_tee_config_file: {rc}");
        return ExitCode::from(125);
    }
    let rc = capi::krun_start_enter(ctx);
    eprintln!("krun_start_enter: {rc}");
    ExitCode::from(125)
}
