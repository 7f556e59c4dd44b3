//! The guest's diagnostics: the start marker and log lines, and the standard error stream.
//!
//! The kernel opens `/dev/console` as fds 0-2 of the init only if the initramfs has that node.
//! When it does not, the init mounts devtmpfs itself and opens the console. The console then
//! carries only the workload's stdout: the init connects to the host's stderr port
//! (docs/interfaces.md "vsock", port 1030) and makes that connection its fd 2, which the
//! workload inherits, so the workload's stderr and the init's diagnostics reach the caller's
//! stderr. The host's first byte there is the level the caller asked for; errors are always
//! shown. Without the port (no vsock device, an older VMM) everything stays on the console
//! and every line is shown, as before.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use crate::sys;

/// The line the test host's smoke test looks for (an info line).
pub const STARTED_MARKER: &str = "KRUN_INIT_STARTED";

/// How important a line is; the host's byte on the stderr port is the highest level shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// A failure: always shown.
    Error = 1,
    /// Something the caller should know about that does not stop the launch.
    Warn = 2,
    /// Progress.
    Info = 3,
}

/// The highest level shown; everything until the host says otherwise.
static SHOWN: AtomicU8 = AtomicU8::new(Level::Info as u8);
/// Whether fd 2 is the host's stderr stream (and must be drained before the VM stops).
static STREAM: AtomicBool = AtomicBool::new(false);

/// How long the init waits for the host's level byte and, at the end, for the host to have
/// written out everything.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes sure fds 0-2 exist, moves fd 2 to the host's stderr stream when there is one, then
/// shows [`STARTED_MARKER`].
pub fn announce_start() {
    if !fd_is_open(1) || !fd_is_open(2) {
        attach_console();
    }
    match attach_stderr_stream() {
        Ok(()) => {}
        // No vsock, or a host without the port: diagnostics stay on the console.
        Err(err) => log_at(
            Level::Info,
            format_args!("diagnostics stay on the console: {err}"),
        ),
    }
    line_at(Level::Info, format_args!("{STARTED_MARKER}"));
}

/// Connects to the host's stderr port, reads the level and makes the stream fd 2.
fn attach_stderr_stream() -> io::Result<()> {
    let mut stream =
        crate::vsock::VsockStream::connect(crate::vsock::HOST_CID, crate::vsock::STDERR_PORT)?;
    stream.set_read_timeout(STREAM_TIMEOUT)?;
    let mut level = [0u8; 1];
    stream.read_exact(&mut level)?;
    let fd: OwnedFd = stream.into();
    // SAFETY: dup2 onto fd 2; `fd` stays open for the call. fd 2 loses O_CLOEXEC, so the
    // workload inherits it.
    sys::check(unsafe { libc::dup2(fd.as_raw_fd(), 2) })?;
    // The host is untrusted, but this byte only hides or shows the init's own lines: an
    // unknown value shows everything rather than hiding errors.
    let shown = match level[0] {
        1..=3 => level[0],
        _ => Level::Info as u8,
    };
    SHOWN.store(shown, Ordering::Relaxed);
    STREAM.store(true, Ordering::Relaxed);
    Ok(())
}

/// Before the VM stops: ends the stderr stream and waits (bounded) until the host has
/// written out everything sent on it, which it signals by closing its end.
pub fn finish_stderr() {
    if !STREAM.swap(false, Ordering::Relaxed) {
        return;
    }
    let _ = io::stderr().flush();
    // A second descriptor of the same socket: the shutdown and the timeout act on the socket.
    let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() else {
        return;
    };
    let mut stream = crate::vsock::VsockStream::from(fd);
    if stream.shutdown(std::net::Shutdown::Write).is_err()
        || stream.set_read_timeout(STREAM_TIMEOUT).is_err()
    {
        return;
    }
    let mut buf = [0u8; 256];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// One line on stderr, prefixed with the program name, if `level` is shown.
pub fn log_at(level: Level, args: std::fmt::Arguments<'_>) {
    if shown(level) {
        let _ = writeln!(io::stderr().lock(), "krun-init: {args}");
    }
}

/// One unprefixed line on stderr, if `level` is shown.
fn line_at(level: Level, args: std::fmt::Arguments<'_>) {
    if shown(level) {
        let _ = writeln!(io::stderr().lock(), "{args}");
    }
}

fn shown(level: Level) -> bool {
    level == Level::Error || level as u8 <= SHOWN.load(Ordering::Relaxed)
}

/// Logs one progress line (shown at the info level).
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::console::log_at($crate::console::Level::Info, format_args!($($arg)*)) };
}

/// Logs one warning (shown at the warn level and above).
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::console::log_at($crate::console::Level::Warn, format_args!($($arg)*)) };
}

/// Logs one failure (always shown).
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::console::log_at($crate::console::Level::Error, format_args!($($arg)*)) };
}

/// Renders an error and its `source()` chain on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn fd_is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn attach_console() {
    let dev = Path::new("/dev");
    let _ = std::fs::create_dir_all(dev);
    // EBUSY when devtmpfs is already mounted there is fine.
    let _ = sys::mount(
        "devtmpfs",
        dev,
        Some("devtmpfs"),
        libc::MS_NOSUID,
        Some("mode=0755"),
    );
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        if !fd_is_open(fd) {
            // SAFETY: dup2 onto a closed descriptor number; `console` stays open for the call.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[test]
    fn error_chain_joins_causes() {
        let err = Outer(io::Error::other("inner"));
        assert_eq!(error_chain(&err), "outer: inner");
    }

    #[test]
    fn standard_descriptors_are_detected() {
        assert!(fd_is_open(1) || fd_is_open(2) || !fd_is_open(-1));
        assert!(!fd_is_open(-1));
    }
}
