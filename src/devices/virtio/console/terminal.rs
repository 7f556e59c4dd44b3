//! Raw terminal mode for the console's input, restored when the guard goes away.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::ConsoleError;

/// Puts a terminal in raw mode and restores the saved mode on drop (normal return, error
/// return or unwinding). Call [`TerminalGuard::restore`] before `process::exit`, which skips
/// destructors.
#[derive(Debug)]
pub struct TerminalGuard {
    fd: RawFd,
    saved: Option<libc::termios>,
}

fn get_attr(fd: RawFd) -> std::io::Result<libc::termios> {
    // SAFETY: termios is plain data; zeroed is a valid value to be overwritten by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid, writable termios; tcgetattr only writes it and fails cleanly on a
    // bad or non-tty fd.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(t)
}

fn set_attr(fd: RawFd, t: &libc::termios) -> std::io::Result<()> {
    // SAFETY: `t` points to a valid termios for the duration of the call; tcsetattr only reads it.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is a terminal.
pub fn is_tty(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: isatty takes any integer and only inspects the fd.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

impl TerminalGuard {
    /// Switches `fd` to raw mode if it is a terminal; otherwise does nothing. The fd must stay
    /// open while the guard lives.
    pub fn new(fd: BorrowedFd<'_>) -> Result<Self, ConsoleError> {
        let raw_fd = fd.as_raw_fd();
        if !is_tty(fd) {
            return Ok(TerminalGuard {
                fd: raw_fd,
                saved: None,
            });
        }
        let saved = get_attr(raw_fd).map_err(ConsoleError::Termios)?;
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios; cfmakeraw only modifies its flag fields.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so host-side log lines still start at column 0.
        raw.c_oflag |= libc::OPOST;
        set_attr(raw_fd, &raw).map_err(ConsoleError::Termios)?;
        Ok(TerminalGuard {
            fd: raw_fd,
            saved: Some(saved),
        })
    }

    /// Whether the terminal mode was changed.
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }

    /// Restores the saved mode now (idempotent).
    pub fn restore(&mut self) {
        if let Some(saved) = self.saved.take() {
            if let Err(e) = set_attr(self.fd, &saved) {
                log::warn!("cannot restore the terminal mode: {e}");
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::undocumented_unsafe_blocks)]
    use super::*;
    use std::fs::File;
    use std::os::fd::{AsFd, FromRawFd};

    fn pty_slave() -> Option<(File, File)> {
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            if master < 0 || libc::grantpt(master) != 0 || libc::unlockpt(master) != 0 {
                return None;
            }
            let name = libc::ptsname(master);
            if name.is_null() {
                return None;
            }
            let slave = libc::open(name, libc::O_RDWR | libc::O_NOCTTY);
            if slave < 0 {
                return None;
            }
            Some((File::from_raw_fd(master), File::from_raw_fd(slave)))
        }
    }

    #[test]
    fn raw_mode_is_restored_on_drop() {
        // Every Linux test machine has /dev/ptmx; without one the test fails, never skips.
        let (_master, slave) = pty_slave().expect("no pseudo-terminal (/dev/ptmx)");
        let before = get_attr(slave.as_raw_fd()).unwrap();
        assert_ne!(before.c_lflag & libc::ICANON, 0);
        {
            let g = TerminalGuard::new(slave.as_fd()).unwrap();
            assert!(g.is_raw());
            let during = get_attr(slave.as_raw_fd()).unwrap();
            assert_eq!(during.c_lflag & (libc::ICANON | libc::ECHO), 0);
        }
        let after = get_attr(slave.as_raw_fd()).unwrap();
        assert_eq!(after.c_lflag, before.c_lflag);
        assert_eq!(after.c_iflag, before.c_iflag);
    }

    #[test]
    fn non_tty_is_left_alone() {
        let f = File::open("/dev/null").unwrap();
        let mut g = TerminalGuard::new(f.as_fd()).unwrap();
        assert!(!g.is_raw());
        g.restore();
    }
}
