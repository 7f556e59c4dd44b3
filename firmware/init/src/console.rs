//! The guest console: the start marker and log lines.
//!
//! The kernel opens `/dev/console` as fds 0-2 of the init only if the initramfs has that node.
//! When it does not, the init mounts devtmpfs itself and opens the console, so that the
//! start marker and every later message are seen on the serial port either way.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::sys;

/// The line the test host's smoke test looks for on the serial console.
pub const STARTED_MARKER: &str = "KRUN_INIT_STARTED";

/// Prints [`STARTED_MARKER`], first making sure fds 0-2 are the console.
pub fn announce_start() {
    if !fd_is_open(1) || !fd_is_open(2) {
        attach_console();
    }
    let mut out = io::stdout().lock();
    // Nothing to do if the console itself fails: the status port still reports the outcome.
    let _ = writeln!(out, "{STARTED_MARKER}");
    let _ = out.flush();
}

/// One log line on stderr, prefixed with the program name.
pub fn log(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "krun-init: {args}");
}

/// Formats and logs one line.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::console::log(format_args!($($arg)*)) };
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
