//! Bringing the loopback interface up (the workload and port forwarding use 127.0.0.1).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys;

/// Errors from network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The control socket cannot be created.
    #[error("cannot create a socket for interface configuration")]
    Socket(#[source] io::Error),
    /// Reading or setting the flags failed.
    #[error("cannot configure interface lo")]
    Flags(#[source] io::Error),
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    Ok(req)
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let fd = sys::check(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface's `IFF_*` flags.
pub fn interface_flags(name: &str) -> io::Result<libc::c_short> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags inside `req`.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel filled the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

/// Sets IFF_UP on `lo`.
pub fn loopback_up() -> Result<(), NetError> {
    let sock = control_socket().map_err(NetError::Socket)?;
    let mut req = ifreq("lo").map_err(NetError::Flags)?;
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags inside `req`.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })
        .map_err(NetError::Flags)?;
    let up = libc::c_short::try_from(libc::IFF_UP)
        .map_err(|_| NetError::Flags(io::Error::from(io::ErrorKind::InvalidData)))?;
    // SAFETY: the flags member was just filled by the kernel; we update it in place.
    unsafe { req.ifr_ifru.ifru_flags |= up };
    // SAFETY: SIOCSIFFLAGS reads `req`, which stays alive for the call.
    sys::check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })
        .map_err(NetError::Flags)?;
    let now = interface_flags("lo").map_err(NetError::Flags)?;
    if now & up == 0 {
        return Err(NetError::Flags(io::Error::other("lo stayed down")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_flags_are_readable() {
        let flags = interface_flags("lo").unwrap();
        assert_ne!(i32::from(flags) & libc::IFF_LOOPBACK, 0);
        assert!(interface_flags("krun-nonexistent").is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(ifreq("lo").is_ok());
        assert!(ifreq("").is_err());
        assert!(ifreq("a-name-that-is-far-too-long").is_err());
    }
}
