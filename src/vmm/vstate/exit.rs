//! How a VM run ends: the guest-reported exit status and the first reason to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A vCPU shut down (triple fault, the `reboot=t` path) or the guest asked for power-off.
    Shutdown,
    /// The guest asked for a reset (keyboard controller or port 0xcf9).
    Reset,
    /// A vCPU executed `hlt` with interrupts off (only seen without an in-kernel LAPIC).
    Halted,
    /// KVM failed to run a vCPU or reported an internal error.
    VcpuError(String),
    /// The host asked the VM to stop.
    HostRequest,
}

#[derive(Debug, Default)]
struct Inner {
    status: Option<u8>,
    reason: Option<StopReason>,
}

/// State shared by all vCPU threads and the thread waiting for the VM to end.
#[derive(Debug, Default)]
pub struct ExitState {
    inner: Mutex<Inner>,
    cond: Condvar,
    stopping: AtomicBool,
}

impl ExitState {
    /// A running VM with no status yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Inner is two plain values; a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the status the guest wrote to the exit port (the last write wins).
    pub fn set_status(&self, status: u8) {
        self.lock().status = Some(status);
    }

    /// The status reported so far.
    pub fn status(&self) -> Option<u8> {
        self.lock().status
    }

    /// Asks the VM to stop; the first reason is kept.
    pub fn request_stop(&self, reason: StopReason) {
        let mut inner = self.lock();
        if inner.reason.is_none() {
            inner.reason = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.cond.notify_all();
    }

    /// Whether a stop was requested; vCPU threads check this before each `KVM_RUN`.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Blocks until a stop is requested; returns the reported status and the stop reason.
    pub fn wait(&self) -> (Option<u8>, StopReason) {
        let mut inner = self.lock();
        loop {
            if let Some(reason) = inner.reason.clone() {
                return (inner.status, reason);
            }
            inner = self
                .cond
                .wait_timeout(inner, Duration::from_secs(1))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_status_is_kept() {
        let s = Arc::new(ExitState::new());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait());
        s.set_status(3);
        s.set_status(42);
        s.request_stop(StopReason::Shutdown);
        s.request_stop(StopReason::HostRequest);
        assert_eq!(t.join().unwrap(), (Some(42), StopReason::Shutdown));
        assert!(s.stopping());
    }
}
