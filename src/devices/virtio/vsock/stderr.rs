//! The guest's standard error stream (host vsock port 1030, docs/interfaces.md "vsock").
//!
//! The console carries only what the workload writes to stdout; the guest init connects here
//! first thing, makes the connection its own and the workload's fd 2, and writes its
//! diagnostics there. On connect the host sends one byte, the log level the guest shows
//! ([`GuestLogLevel`]), and from then on copies every byte the guest sends to the caller's
//! stderr. When the guest half-closes, the host finishes writing and then closes its end: the
//! guest waits for that end-of-file before it reports its exit status, so nothing it wrote is
//! lost when the VM stops.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::backend::{GuestPortHandler, HostStream};
use crate::devices::virtio::rate_limit::guest_warn;

/// How much the guest init reports, as the byte the host sends on connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum GuestLogLevel {
    /// Failures only (the init's errors are always shown).
    Error = 1,
    /// Failures and warnings.
    Warn = 2,
    /// Progress lines too (the start marker, the launch summary, the workload's status).
    Info = 3,
    /// Everything.
    Debug = 4,
}

impl GuestLogLevel {
    /// The level the library's own logger shows for guest messages.
    pub fn from_host_logger() -> Self {
        let target = "krun_sev::guest";
        if log::log_enabled!(target: target, log::Level::Debug) {
            GuestLogLevel::Debug
        } else if log::log_enabled!(target: target, log::Level::Info) {
            GuestLogLevel::Info
        } else if log::log_enabled!(target: target, log::Level::Warn) {
            GuestLogLevel::Warn
        } else {
            GuestLogLevel::Error
        }
    }
}

/// Serves port 1030: one copier thread per connection, writing to `output`.
#[derive(Debug)]
pub struct GuestStderr {
    output: Arc<File>,
    level: GuestLogLevel,
}

impl GuestStderr {
    /// Copies the guest's stderr to `output` (usually the caller's fd 2).
    pub fn new(output: File, level: GuestLogLevel) -> Self {
        GuestStderr {
            output: Arc::new(output),
            level,
        }
    }
}

impl GuestPortHandler for GuestStderr {
    fn connect(&self, _guest_port: u32) -> std::io::Result<HostStream> {
        let (ours, theirs) = UnixStream::pair()?;
        let output = Arc::clone(&self.output);
        let level = self.level as u8;
        crate::vmm::seccomp::spawn(
            crate::vmm::seccomp::ThreadKind::Service,
            "guest-stderr",
            move || copy_out(ours, level, &output),
        )?;
        Ok(HostStream::Unix(theirs))
    }
}

fn copy_out(mut stream: UnixStream, level: u8, mut output: &File) {
    if let Err(e) = stream.write_all(&[level]) {
        log::warn!("guest stderr: cannot send the log level: {e}");
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A caller whose stderr is gone loses the guest's stderr, like a process's
                // would; the guest is not stalled by it.
                let _ = output.write_all(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // The guest resets its end as often as it likes.
                guest_warn!("guest stderr: {e}");
                break;
            }
        }
    }
    // Dropping `stream` after the last write is the guest's signal that everything arrived.
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::Seek;
    use std::net::Shutdown;

    #[test]
    fn sends_the_level_copies_everything_then_closes() {
        let out = tempfile::tempfile().unwrap();
        let service = GuestStderr::new(out.try_clone().unwrap(), GuestLogLevel::Warn);
        let HostStream::Unix(mut guest) = service.connect(5).unwrap() else {
            panic!("not a unix stream");
        };
        let mut level = [0u8; 1];
        guest.read_exact(&mut level).unwrap();
        assert_eq!(level, [2]);
        let text = "krun-init: x failed\n".repeat(5000);
        guest.write_all(text.as_bytes()).unwrap();
        guest.shutdown(Shutdown::Write).unwrap();
        // End-of-file only once the host has written everything.
        let mut rest = Vec::new();
        guest.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let mut written = String::new();
        let mut out = out;
        out.rewind().unwrap();
        out.read_to_string(&mut written).unwrap();
        assert_eq!(written, text);
    }

    #[test]
    fn level_bytes_are_the_wire_values_the_init_reads() {
        let bytes = [
            GuestLogLevel::Error,
            GuestLogLevel::Warn,
            GuestLogLevel::Info,
            GuestLogLevel::Debug,
        ]
        .map(|l| l as u8);
        assert_eq!(bytes, [1, 2, 3, 4]);
    }
}
