//! Leaving the VM: the status byte on I/O port 0xf4, sync, reboot.
//!
//! Convention (docs/interfaces.md "Guest → host exit status"): the workload's exit code, or
//! 128+N when it was killed by signal N. The init's own failures (the disk key could not be
//! obtained or attestation was refused, the disk does not unlock or mount, ...: the workload
//! never ran) report [`INIT_FAILURE_STATUS`], 125, the status the host side uses for "the VM
//! could not start or attest" (podman's convention for a runtime failure); a workload that cannot be started reports 127 when the program
//! does not exist and 126 when it exists but cannot be executed (the POSIX shell and podman
//! convention). The kernel is booted with `reboot=t`, so the reboot is a triple fault that
//! ends the VM.

use std::io;

use crate::{log_error, sys};

/// The I/O port the VMM reads the status byte from.
pub const EXIT_STATUS_PORT: u16 = 0xf4;
/// Status reported when the init itself fails: the workload never ran (the same as the
/// library's and `krun-sev run`'s launch failures).
pub const INIT_FAILURE_STATUS: u8 = 125;
/// Status reported when the workload's program exists but cannot be executed.
pub const NOT_EXECUTABLE_STATUS: u8 = 126;
/// Status reported when the workload's program does not exist.
pub const NOT_FOUND_STATUS: u8 = 127;

/// Errors from reporting the status.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// `ioperm` refused access to the port.
    #[error("cannot get access to the exit status port")]
    Ioperm(#[source] io::Error),
}

/// The status byte for a `waitpid` status word.
pub fn status_from_wait(wstatus: libc::c_int) -> u8 {
    if libc::WIFEXITED(wstatus) {
        u8::try_from(libc::WEXITSTATUS(wstatus) & 0xff).unwrap_or(INIT_FAILURE_STATUS)
    } else if libc::WIFSIGNALED(wstatus) {
        u8::try_from(128 + (libc::WTERMSIG(wstatus) & 0x7f)).unwrap_or(INIT_FAILURE_STATUS)
    } else {
        INIT_FAILURE_STATUS
    }
}

/// The status byte for an error returned by `execve` of the workload.
pub fn status_from_exec_error(err: &io::Error) -> u8 {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => NOT_FOUND_STATUS,
        _ => NOT_EXECUTABLE_STATUS,
    }
}

/// Writes the status byte to [`EXIT_STATUS_PORT`].
pub fn report_status(status: u8) -> Result<(), ExitError> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    sys::check(unsafe { libc::ioperm(libc::c_ulong::from(EXIT_STATUS_PORT), 1, 1) })
        .map_err(ExitError::Ioperm)?;
    // SAFETY: ioperm above granted access to exactly this port, so `out` cannot fault; the
    // instruction touches no memory.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") EXIT_STATUS_PORT, in("al") status,
            options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

/// Reports `status`, flushes file systems and ends the VM. Never returns.
pub fn power_off(status: u8) -> ! {
    // Everything written to stderr reaches the host before the status ends the VM.
    crate::console::finish_stderr();
    if let Err(err) = report_status(status) {
        log_error!("{}", crate::console::error_chain(&err));
    }
    sys::sync();
    // SAFETY: reboot with RB_AUTOBOOT takes no pointers; it returns only on failure.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    // Only reached when not running as the VM's init (e.g. under a debugger on a host).
    std::process::exit(i32::from(status))
}

/// Logs which step failed and why, then powers off with [`INIT_FAILURE_STATUS`].
pub fn fatal(step: &str, err: &dyn std::error::Error) -> ! {
    log_error!("{step} failed: {}", crate::console::error_chain(err));
    power_off(INIT_FAILURE_STATUS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_status_of(cmd: &str) -> libc::c_int {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .unwrap();
        status.into_raw()
    }

    #[test]
    fn exit_codes_pass_through() {
        assert_eq!(status_from_wait(wait_status_of("exit 0")), 0);
        assert_eq!(status_from_wait(wait_status_of("exit 42")), 42);
        assert_eq!(status_from_wait(wait_status_of("exit 255")), 255);
    }

    #[test]
    fn signals_map_to_128_plus_signal() {
        assert_eq!(status_from_wait(wait_status_of("kill -TERM $$")), 128 + 15);
        assert_eq!(status_from_wait(wait_status_of("kill -KILL $$")), 128 + 9);
    }

    #[test]
    fn init_failures_are_the_launch_failure_status() {
        // docs/interfaces.md: distinct from any usual workload status and from 126/127.
        assert_eq!(INIT_FAILURE_STATUS, 125);
    }

    #[test]
    fn exec_errors_follow_the_shell_convention() {
        let missing = std::process::Command::new("/nonexistent/program")
            .spawn()
            .unwrap_err();
        assert_eq!(status_from_exec_error(&missing), NOT_FOUND_STATUS);
        let dir = std::process::Command::new("/").spawn().unwrap_err();
        assert_eq!(status_from_exec_error(&dir), NOT_EXECUTABLE_STATUS);
    }
}
