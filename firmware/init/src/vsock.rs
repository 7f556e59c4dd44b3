//! AF_VSOCK stream sockets (guest CID 3, host CID 2; docs/interfaces.md "vsock").

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys;

/// The host's CID.
pub const HOST_CID: u32 = libc::VMADDR_CID_HOST;
/// Guest listener for port forwarding.
pub const PORT_FORWARD_PORT: u32 = 1024;
/// Host attestation proxy to the TEE config's `attestation_url`.
pub const ATTESTATION_PROXY_PORT: u32 = 1025;
/// Host PSP model report service (model mode only).
pub const PSP_MODEL_REPORT_PORT: u32 = 1026;
/// Host control stream for LISTEN/UNLISTEN announcements.
pub const LISTEN_ANNOUNCE_PORT: u32 = 1027;
/// Connecting here tells the VMM the init is done with attestation (ports 1025/1026 close).
pub const ATTESTATION_DONE_PORT: u32 = 1028;
/// Host network settings (one JSON object, then EOF; refused when there is no network).
pub const NET_CONFIG_PORT: u32 = 1029;
/// Host end of the guest's standard error stream (`console`).
pub const STDERR_PORT: u32 = 1030;

/// `struct sockaddr_vm` for `cid:port`.
pub fn sockaddr(cid: u32, port: u32) -> libc::sockaddr_vm {
    libc::sockaddr_vm {
        svm_family: AF_VSOCK_FAMILY,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: cid,
        svm_zero: [0; 4],
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; a non-negative return is a new descriptor we own.
    let fd = sys::check(unsafe {
        libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `AF_VSOCK` as an address family field.
const AF_VSOCK_FAMILY: libc::sa_family_t = 40;
const _: () = assert!(libc::AF_VSOCK == 40);
/// `sizeof(struct sockaddr_vm)` (linux/vm_sockets.h).
const SOCKADDR_VM_LEN: libc::socklen_t = 16;
const _: () = assert!(std::mem::size_of::<libc::sockaddr_vm>() == 16);

/// A connected vsock stream.
#[derive(Debug)]
pub struct VsockStream(OwnedFd);

impl VsockStream {
    /// Connects to `cid:port`.
    pub fn connect(cid: u32, port: u32) -> io::Result<Self> {
        let fd = socket()?;
        let addr = sockaddr(cid, port);
        // SAFETY: `addr` is a valid sockaddr_vm of the length passed, alive for the call.
        sys::check(unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                SOCKADDR_VM_LEN,
            )
        })?;
        Ok(VsockStream(fd))
    }

    /// A second handle to the same connection (for the other copy direction).
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(VsockStream)
    }

    /// Bounds how long a read waits (`SO_RCVTIMEO`); a read that times out fails with
    /// `WouldBlock`.
    pub fn set_read_timeout(&self, timeout: std::time::Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
        };
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `tv` is a valid timeval of the length passed, alive for the call.
        sys::check(unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                len,
            )
        })
        .map(|_| ())
    }

    /// `shutdown(2)`.
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        let how = match how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: shutdown takes no pointers and the descriptor is open.
        sys::check(unsafe { libc::shutdown(self.0.as_raw_fd(), how) }).map(|_| ())
    }
}

impl From<OwnedFd> for VsockStream {
    /// A stream over a descriptor of a connected vsock socket.
    fn from(fd: OwnedFd) -> VsockStream {
        VsockStream(fd)
    }
}

impl From<VsockStream> for OwnedFd {
    fn from(s: VsockStream) -> OwnedFd {
        s.0
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // MSG_NOSIGNAL: a peer that went away is an EPIPE error, not a SIGPIPE.
        // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening vsock socket.
#[derive(Debug)]
pub struct VsockListener(OwnedFd);

impl VsockListener {
    /// Listens on `port` for any CID.
    pub fn bind(port: u32) -> io::Result<Self> {
        let fd = socket()?;
        let addr = sockaddr(libc::VMADDR_CID_ANY, port);
        // SAFETY: `addr` is a valid sockaddr_vm of the length passed, alive for the call.
        sys::check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_vm).cast(),
                SOCKADDR_VM_LEN,
            )
        })?;
        // SAFETY: listen takes no pointers.
        sys::check(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
        Ok(VsockListener(fd))
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<VsockStream> {
        // SAFETY: null address pointers ask accept4 not to report the peer.
        let fd = sys::check(unsafe {
            libc::accept4(
                self.0.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just returned by accept4 and is owned by nobody else.
        Ok(VsockStream(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_layout_matches_linux() {
        let a = sockaddr(HOST_CID, ATTESTATION_PROXY_PORT);
        // SAFETY: sockaddr_vm is plain old data of 16 bytes.
        let bytes: [u8; 16] = unsafe { std::mem::transmute(a) };
        // family 40 (LE u16), reserved, port 1025 (LE u32), cid 2 (LE u32), zero.
        assert_eq!(
            bytes,
            [40, 0, 0, 0, 0x01, 0x04, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn stream_read_write_over_a_socketpair() {
        // The Read/Write impls only use the descriptor, so a Unix socketpair exercises them.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut a = VsockStream(OwnedFd::from(a));
        let mut b = VsockStream(OwnedFd::from(b));
        a.write_all(b"ping").unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ping");
        let mut clone = b.try_clone().unwrap();
        clone.write_all(b"pong").unwrap();
        let mut buf = [0u8; 4];
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }
}
