//! The exposed-ports control stream (host vsock port 1027): with a NULL port map the guest
//! init announces `LISTEN <tcp-port>\n` / `UNLISTEN <tcp-port>\n`, and the host opens or
//! closes a TCP listener on the same port that forwards into the guest.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{GuestPortHandler, HostStream};

/// Longest accepted control line.
const MAX_LINE: u64 = 64;

/// A request from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlCommand {
    /// Forward host TCP port `p` to guest TCP port `p`.
    Listen(u16),
    /// Stop forwarding port `p`.
    Unlisten(u16),
}

/// Parses one line (without its newline); `None` for anything malformed or port 0.
pub fn parse_line(line: &str) -> Option<ControlCommand> {
    let (verb, port) = line.trim_end_matches('\r').split_once(' ')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    match verb {
        "LISTEN" => Some(ControlCommand::Listen(port)),
        "UNLISTEN" => Some(ControlCommand::Unlisten(port)),
        _ => None,
    }
}

/// Commands waiting for the vsock worker, and the eventfd that wakes it.
#[derive(Debug)]
pub struct PortControl {
    queue: Mutex<VecDeque<ControlCommand>>,
    wake: EventFd,
}

impl PortControl {
    /// An empty command queue.
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(PortControl {
            queue: Mutex::new(VecDeque::new()),
            wake: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    fn push(&self, cmd: ControlCommand) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(cmd);
        if let Err(e) = self.wake.write(1) {
            log::warn!("vsock: cannot wake the worker for a port command: {e}");
        }
    }

    /// Takes all queued commands.
    pub fn take(&self) -> Vec<ControlCommand> {
        let _ = self.wake.read();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    /// The eventfd signalled when commands arrive.
    pub fn wake_evt(&self) -> &EventFd {
        &self.wake
    }

    /// Reads control lines from `stream` until it closes.
    fn serve(self: Arc<Self>, stream: UnixStream) {
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            match (&mut reader).take(MAX_LINE).read_line(&mut line) {
                Ok(0) => return,
                Ok(_) if !line.ends_with('\n') => {
                    log::warn!("vsock: control line too long; closing the control stream");
                    return;
                }
                Ok(_) => match parse_line(line.trim_end_matches('\n')) {
                    Some(cmd) => self.push(cmd),
                    None => log::warn!("vsock: ignoring malformed control line"),
                },
                Err(e) => {
                    log::debug!("vsock: control stream closed: {e}");
                    return;
                }
            }
        }
    }
}

/// Serves port 1027 by feeding [`PortControl`].
#[derive(Debug, Clone)]
pub struct ExposedPortsHandler {
    control: Arc<PortControl>,
}

impl ExposedPortsHandler {
    /// A handler queueing commands into `control`.
    pub fn new(control: Arc<PortControl>) -> Self {
        ExposedPortsHandler { control }
    }
}

impl GuestPortHandler for ExposedPortsHandler {
    fn connect(&self, _guest_port: u32) -> std::io::Result<HostStream> {
        let (ours, theirs) = UnixStream::pair()?;
        let control = self.control.clone();
        crate::vmm::seccomp::spawn(
            crate::vmm::seccomp::ThreadKind::Service,
            "vsock-control",
            move || control.serve(theirs),
        )?;
        Ok(HostStream::Unix(ours))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_line("LISTEN 8080"),
            Some(ControlCommand::Listen(8080))
        );
        assert_eq!(
            parse_line("UNLISTEN 22\r"),
            Some(ControlCommand::Unlisten(22))
        );
        for bad in [
            "LISTEN 0",
            "LISTEN 70000",
            "LISTEN",
            "listen 80",
            "LISTEN -1",
            "",
            "X 1",
        ] {
            assert_eq!(parse_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn handler_queues_lines_and_wakes() {
        let control = PortControl::new().unwrap();
        let h = ExposedPortsHandler::new(control.clone());
        let HostStream::Unix(mut s) = h.connect(1234).unwrap() else {
            panic!("expected a unix stream")
        };
        s.write_all(b"LISTEN 8080\nbogus\nUNLISTEN 8080\n").unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < 2 && start.elapsed() < Duration::from_secs(5) {
            got.extend(control.take());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            got,
            vec![ControlCommand::Listen(8080), ControlCommand::Unlisten(8080)]
        );
        // An overlong line ends the stream.
        s.write_all(&[b'A'; 100]).unwrap();
        let mut buf = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(std::io::Read::read(&mut s, &mut buf).unwrap(), 0);
    }
}
