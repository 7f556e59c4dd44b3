//! Device worker threads: start, stop, poll, and turning a worker failure into
//! `DEVICE_NEEDS_RESET` instead of a crash of the host process.

use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::interrupt::Interrupt;
use crate::vmm::seccomp::{self, ThreadKind};

/// A running worker thread and the eventfd that asks it to stop.
#[derive(Debug)]
pub struct Worker {
    kill: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Runs `body(kill_evt)` on a new thread under `kind`'s seccomp filter (when the filters
    /// are on). `body` must return once `kill_evt` is readable. An error or a panic in `body`
    /// marks the device as needing a reset.
    pub fn spawn<F>(
        name: &str,
        kind: ThreadKind,
        interrupt: Arc<Interrupt>,
        body: F,
    ) -> std::io::Result<Worker>
    where
        F: FnOnce(&EventFd) -> Result<(), String> + Send + 'static,
    {
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let kill_for_thread = kill.try_clone()?;
        let thread_name = name.to_owned();
        let thread = seccomp::spawn(kind, name, move || {
            // Inside a host process that does not ignore SIGPIPE (a C program, crun), a
            // write to a closed pipe must fail with EPIPE, not kill the process.
            match vmm_sys_util::signal::block_signal(libc::SIGPIPE) {
                Ok(()) | Err(vmm_sys_util::signal::Error::SignalAlreadyBlocked(_)) => {}
                Err(e) => log::warn!("{thread_name}: cannot block SIGPIPE: {e}"),
            }
            match catch_unwind(AssertUnwindSafe(|| body(&kill_for_thread))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::error!("{thread_name}: {e}; device needs reset");
                    interrupt.set_needs_reset();
                }
                Err(_) => {
                    log::error!("{thread_name}: worker panicked; device needs reset");
                    interrupt.set_needs_reset();
                }
            }
        })?;
        Ok(Worker {
            kill,
            thread: Some(thread),
        })
    }

    /// Asks the worker to stop and waits for it.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if let Err(e) = self.kill.write(1) {
                log::error!("cannot signal a device worker to stop: {e}");
            }
            if thread.join().is_err() {
                log::error!("device worker thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Readiness reported by [`poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready {
    /// Data can be read (or the peer hung up, so a read returns 0).
    pub readable: bool,
    /// Data can be written.
    pub writable: bool,
    /// Error or hang-up.
    pub hangup: bool,
}

/// What to wait for on one fd.
#[derive(Debug, Clone, Copy)]
pub struct Interest {
    /// The fd.
    pub fd: RawFd,
    /// Wait for readability.
    pub read: bool,
    /// Wait for writability.
    pub write: bool,
}

impl Interest {
    /// Readability of `fd`.
    pub fn read(fd: &impl AsRawFd) -> Self {
        Interest {
            fd: fd.as_raw_fd(),
            read: true,
            write: false,
        }
    }
}

/// Waits up to `timeout_ms` (-1: forever) for any of `interests`; returns one [`Ready`] per
/// interest. EINTR returns all-not-ready.
pub fn poll(interests: &[Interest], timeout_ms: i32) -> std::io::Result<Vec<Ready>> {
    let mut fds: Vec<libc::pollfd> = interests
        .iter()
        .map(|i| libc::pollfd {
            fd: i.fd,
            events: (if i.read { libc::POLLIN } else { 0 })
                | (if i.write { libc::POLLOUT } else { 0 }),
            revents: 0,
        })
        .collect();
    let nfds = libc::nfds_t::try_from(fds.len())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `fds` is a valid, exclusively borrowed array of `nfds` pollfd structs that lives
    // across the call; poll only writes their `revents` fields.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout_ms) };
    if ret < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return Ok(vec![Ready::default(); interests.len()]);
        }
        return Err(err);
    }
    Ok(fds
        .iter()
        .map(|p| Ready {
            readable: p.revents & (libc::POLLIN | libc::POLLHUP) != 0,
            writable: p.revents & libc::POLLOUT != 0,
            hangup: p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0,
        })
        .collect())
}

/// Drains an eventfd's counter (non-blocking fds only; `EAGAIN` is fine).
pub fn drain(evt: &EventFd) {
    let _ = evt.read();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn interrupt() -> Arc<Interrupt> {
        Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()))
    }

    #[test]
    fn stops_on_kill() {
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let mut w = Worker::spawn("t", ThreadKind::Block, interrupt(), move |kill| loop {
            let ready = poll(&[Interest::read(kill)], 1000).map_err(|e| e.to_string())?;
            if ready[0].readable {
                r.store(true, Ordering::SeqCst);
                return Ok(());
            }
        })
        .unwrap();
        w.stop();
        assert!(ran.load(Ordering::SeqCst));
    }

    #[test]
    fn error_and_panic_set_needs_reset() {
        let i = interrupt();
        let mut w = Worker::spawn("t", ThreadKind::Block, i.clone(), |_| {
            Err("broken queue".into())
        })
        .unwrap();
        w.stop();
        assert!(i.needs_reset());
        let i = interrupt();
        #[allow(clippy::panic)]
        let mut w = Worker::spawn("t", ThreadKind::Block, i.clone(), |_| panic!("bug")).unwrap();
        w.stop();
        assert!(i.needs_reset());
    }
}
