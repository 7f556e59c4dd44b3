//! The host side of vsock connections: streams and the handlers of host ports.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// The host end of one connection.
#[derive(Debug)]
pub enum HostStream {
    /// A TCP connection (attestation proxy, port maps).
    Tcp(TcpStream),
    /// A Unix stream, typically one end of a socketpair served by an in-process handler.
    Unix(UnixStream),
}

impl HostStream {
    /// Switches the stream to non-blocking mode.
    pub fn set_nonblocking(&self) -> std::io::Result<()> {
        match self {
            HostStream::Tcp(s) => s.set_nonblocking(true),
            HostStream::Unix(s) => s.set_nonblocking(true),
        }
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            HostStream::Tcp(s) => s.shutdown(how),
            HostStream::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for HostStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            HostStream::Tcp(s) => s.read(buf),
            HostStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for HostStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            HostStream::Tcp(s) => s.write(buf),
            HostStream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for HostStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            HostStream::Tcp(s) => s.as_raw_fd(),
            HostStream::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// Serves guest-initiated connections to one host vsock port.
///
/// `connect` runs on the vsock worker thread; it must not block for long (a handler that does
/// real work should hand one end of a `UnixStream::pair` to its own thread and return the
/// other).
pub trait GuestPortHandler: Send + Sync + std::fmt::Debug {
    /// Opens the host end for a new connection from guest port `guest_port`.
    fn connect(&self, guest_port: u32) -> std::io::Result<HostStream>;
}

/// Forwards connections to one fixed TCP address (the attestation proxy: only the TEE config's
/// broker address is ever reachable).
#[derive(Debug, Clone)]
pub struct TcpForward {
    target: SocketAddr,
    timeout: Duration,
}

impl TcpForward {
    /// Forwards to `target`, giving up on a connect after `timeout`.
    pub fn new(target: SocketAddr, timeout: Duration) -> Self {
        TcpForward { target, timeout }
    }
}

impl GuestPortHandler for TcpForward {
    fn connect(&self, _guest_port: u32) -> std::io::Result<HostStream> {
        let s = TcpStream::connect_timeout(&self.target, self.timeout)?;
        s.set_nodelay(true)?;
        Ok(HostStream::Tcp(s))
    }
}

/// Host vsock ports the guest may connect to, and their handlers.
#[derive(Debug, Clone, Default)]
pub struct HostServices {
    handlers: BTreeMap<u32, Arc<dyn GuestPortHandler>>,
}

impl HostServices {
    /// No services.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `port` with `handler` (replacing an earlier one).
    pub fn insert(&mut self, port: u32, handler: Arc<dyn GuestPortHandler>) {
        self.handlers.insert(port, handler);
    }

    /// Stops serving `port`; returns whether it was served.
    pub fn remove(&mut self, port: u32) -> bool {
        self.handlers.remove(&port).is_some()
    }

    /// The handler of `port`.
    pub fn get(&self, port: u32) -> Option<&Arc<dyn GuestPortHandler>> {
        self.handlers.get(&port)
    }
}
