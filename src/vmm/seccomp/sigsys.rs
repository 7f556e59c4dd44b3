//! The SIGSYS handler: a denied system call ends the process with one log line naming it.
//!
//! The handler runs inside whatever the thread was doing, so it is async-signal-safe: it
//! formats into a stack buffer (no allocation, no lock), `write`s it to fd 2 and calls
//! `_exit`. Both calls are on every allow-list.

use std::cell::Cell;

use super::syscall_names::NAMES;

/// The status the process exits with after a denied system call: 128 + SIGSYS, what a shell
/// reports for a process killed by that signal.
pub const DENIED_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

thread_local! {
    /// The name of the filter this thread installed (empty: none), for the message.
    static KIND: Cell<&'static str> = const { Cell::new("") };
}

/// Records the filter the calling thread installed.
pub(super) fn set_thread_kind(name: &'static str) {
    KIND.with(|k| k.set(name));
}

/// The name of system call `nr`, or "" if unknown.
pub fn syscall_name(nr: i64) -> &'static str {
    usize::try_from(nr)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("")
}

/// A fixed buffer that formats without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &str) {
        for b in s.bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, n: i64) {
        if n < 0 {
            self.push("-");
        }
        let mut digits = [0u8; 20];
        let mut v = n.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            // `v % 10` is a single digit.
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for d in &digits[i..] {
            if self.len < self.buf.len() {
                self.buf[self.len] = *d;
                self.len += 1;
            }
        }
    }
}

/// The log line for a denied system call `nr` on a thread that installed `kind`'s filter.
fn message(nr: i64, kind: &str) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push("[libkrun-sev ERROR krun_sev::seccomp] denied system call ");
    let name = syscall_name(nr);
    line.push(if name.is_empty() { "?" } else { name });
    line.push(" (");
    line.push_number(nr);
    line.push(") on a ");
    line.push(if kind.is_empty() { "?" } else { kind });
    line.push(" thread: not in its seccomp allow-list; the VMM exits (KRUN_SEV_SECCOMP=off when the library loads turns the filters off)\n");
    line
}

/// The message as a string, for tests.
#[cfg(test)]
pub(super) fn message_text(nr: i64, kind: &str) -> String {
    let line = message(nr, kind);
    String::from_utf8_lossy(&line.buf[..line.len]).into_owned()
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86_64: three ints and padding, then
/// `_sigsys { void *_call_addr; int _syscall; unsigned int _arch; }`
/// (`include/uapi/asm-generic/siginfo.h`).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t (128 bytes) for an SA_SIGINFO handler;
        // for SIGSYS from seccomp the int at SI_SYSCALL_OFFSET is the system call number.
        i64::from(unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        })
    };
    // A const-initialized thread-local without destructor: a plain TLS read.
    let kind = KIND.with(Cell::get);
    let line = message(nr, kind);
    // SAFETY: `line.buf` holds `line.len` initialized bytes; write(2) and _exit(2) are
    // async-signal-safe and on every allow-list.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(DENIED_EXIT_STATUS);
    }
}

/// Installs the handler for the whole process (before any filter).
pub fn install() -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid starting value; every field used is set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handle_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
    unsafe { libc::sigfillset(&mut action.sa_mask) };
    // SAFETY: `action` is fully initialized and outlives the call; the old action is not
    // needed.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A blocked SIGSYS is unblocked by the kernel when seccomp raises it (force_sig), so the
    // handler runs even on threads of a caller that blocks signals.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_message() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(41), "socket");
        assert_eq!(syscall_name(59), "execve");
        assert_eq!(syscall_name(435), "clone3");
        assert_eq!(syscall_name(-1), "");
        assert_eq!(syscall_name(10_000), "");
        let m = message_text(41, "vcpu");
        assert!(
            m.starts_with("[libkrun-sev ERROR krun_sev::seccomp] denied system call socket (41) on a vcpu thread"),
            "{m}"
        );
        assert!(m.ends_with('\n'));
        assert!(message_text(999, "").contains("denied system call ? (999) on a ? thread"));
        assert!(message_text(-1, "main").contains("(-1)"));
    }
}
