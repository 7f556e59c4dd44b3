//! Running the workload as a child of PID 1: start it, forward signals, reap every zombie,
//! and turn its end into the exit status byte.
//!
//! The init blocks the forwarded signals and SIGCHLD in every thread (call [`block_signals`]
//! before starting any thread) and collects them with `sigtimedwait`; the timeout makes
//! reaping independent of SIGCHLD delivery. The child gets an empty signal mask, its own
//! session (with the console as controlling terminal when stdin is one), its rlimits,
//! groups, gid and uid, in that order, just before exec.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::exec_plan::ExecPlan;
use crate::exit;
use crate::sys;

/// Signals passed on to the workload.
pub const FORWARDED: [libc::c_int; 8] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];
/// How long leftover processes get between SIGTERM and SIGKILL once the workload ended.
const GRACE: Duration = Duration::from_secs(2);
const WAIT_TICK_NS: libc::c_long = 100_000_000;

/// Errors from supervision.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The signal mask cannot be set.
    #[error("cannot block signals")]
    SignalMask(#[source] io::Error),
    /// waitpid failed for the workload.
    #[error("cannot wait for the workload")]
    Wait(#[source] io::Error),
}

/// The signals the supervisor waits for.
pub fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
    }
    set
}

/// Blocks [`signal_set`] in the calling thread (and every thread it starts later).
pub fn block_signals() -> Result<(), SupervisorError> {
    let set = signal_set();
    // SAFETY: `set` is initialized; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SupervisorError::SignalMask(io::Error::from_raw_os_error(
            rc,
        )));
    }
    Ok(())
}

/// The command for `plan`, with credentials and limits applied in the child.
pub fn command(plan: &ExecPlan) -> Command {
    let mut cmd = Command::new(&plan.program);
    if let Some((argv0, rest)) = plan.argv.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for entry in &plan.env {
        if let Some((k, v)) = entry.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.current_dir(&plan.cwd);
    let groups: Vec<libc::gid_t> = plan.groups.clone();
    let (uid, gid) = (plan.uid, plan.gid);
    let limits: Vec<libc::rlimit> = plan
        .rlimits
        .iter()
        .map(|r| libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        })
        .collect();
    let resources: Vec<_> = plan.rlimits.iter().map(|r| r.resource).collect();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls on data captured before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let empty = {
                let mut s: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut s);
                s
            };
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::setsid();
            if libc::isatty(0) == 1 {
                libc::ioctl(0, libc::TIOCSCTTY, 1);
            }
            for (res, lim) in resources.iter().zip(&limits) {
                sys::check(libc::setrlimit(*res, lim))?;
            }
            // Nothing to switch (also lets an unprivileged test run the same path).
            if groups.is_empty() && libc::getuid() == uid && libc::getgid() == gid {
                return Ok(());
            }
            sys::check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            sys::check(libc::setgid(gid))?;
            sys::check(libc::setuid(uid))?;
            Ok(())
        });
    }
    cmd
}

/// Which children to reap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// Every child (the init is PID 1 and inherits orphans).
    All,
    /// Only the workload (tests, or an init that is not PID 1).
    WorkloadOnly,
}

/// Starts the workload and supervises it until it ends; returns the status byte.
/// A workload that cannot be started gives 127 (not found) or 126 (not executable).
pub fn run(plan: &ExecPlan, reap: Reap) -> Result<u8, SupervisorError> {
    let child = match command(plan).spawn() {
        Ok(c) => c,
        Err(err) => {
            crate::log_error!("cannot start {}: {}", plan.program.display(), err);
            return Ok(exit::status_from_exec_error(&err));
        }
    };
    // std never waits for it: reaping is ours (waitpid below).
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| SupervisorError::Wait(io::Error::from(io::ErrorKind::InvalidData)))?;
    let status = supervise(pid, reap)?;
    if reap == Reap::All {
        end_leftovers();
    }
    Ok(status)
}

fn supervise(pid: libc::pid_t, reap: Reap) -> Result<u8, SupervisorError> {
    let set = signal_set();
    let tick = libc::timespec {
        tv_sec: 0,
        tv_nsec: WAIT_TICK_NS,
    };
    loop {
        // SAFETY: siginfo_t is plain data; sigtimedwait fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set`, `info` and `tick` are valid for the call.
        let sig = unsafe { libc::sigtimedwait(&set, &mut info, &tick) };
        if sig > 0 && sig != libc::SIGCHLD {
            // SAFETY: kill takes no pointers; a child that is already gone gives ESRCH.
            unsafe { libc::kill(pid, sig) };
        }
        if let Some(status) = reap_children(pid, reap)? {
            return Ok(status);
        }
    }
}

/// Reaps what has exited; returns the workload's status once it is among them.
fn reap_children(pid: libc::pid_t, reap: Reap) -> Result<Option<u8>, SupervisorError> {
    let target = if reap == Reap::All { -1 } else { pid };
    let mut found = None;
    loop {
        let mut wstatus = 0;
        // SAFETY: `wstatus` is a valid out-pointer.
        let r = unsafe { libc::waitpid(target, &mut wstatus, libc::WNOHANG) };
        if r == 0 {
            return Ok(found);
        }
        if r < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) if found.is_some() => Ok(found),
                _ => Err(SupervisorError::Wait(err)),
            };
        }
        if r == pid {
            found = Some(exit::status_from_wait(wstatus));
            if reap == Reap::WorkloadOnly {
                return Ok(found);
            }
        }
    }
}

/// Terminates whatever the workload left behind: SIGTERM, a grace period, SIGKILL.
fn end_leftovers() {
    // SAFETY: kill(-1) signals every process but the caller; no pointers involved.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        let mut wstatus = 0;
        // SAFETY: `wstatus` is a valid out-pointer.
        let r = unsafe { libc::waitpid(-1, &mut wstatus, libc::WNOHANG) };
        if r < 0 {
            return; // ECHILD: nothing left
        }
        if r == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let mut wstatus = 0;
    // SAFETY: `wstatus` is a valid out-pointer; loop ends on ECHILD.
    while unsafe { libc::waitpid(-1, &mut wstatus, 0) } > 0 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn plan(script: &str) -> ExecPlan {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        ExecPlan {
            program: PathBuf::from("/bin/sh"),
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=hi there".into()],
            cwd: PathBuf::from("/"),
            uid,
            gid,
            groups: vec![],
            rlimits: vec![crate::rlimits::Rlimit::new(libc::RLIMIT_CORE, 0, 0).unwrap()],
            hostname: None,
        }
    }

    #[test]
    fn exit_status_env_cwd_and_limits_reach_the_workload() {
        let script = r#"[ "$GREETING" = "hi there" ] && [ "$(pwd)" = / ] && [ -z "$HOME" ] && [ "$(ulimit -c)" = 0 ] && exit 42; exit 1"#;
        assert_eq!(run(&plan(script), Reap::WorkloadOnly).unwrap(), 42);
    }

    #[test]
    fn killed_workload_reports_128_plus_signal() {
        assert_eq!(
            run(&plan("kill -KILL $$"), Reap::WorkloadOnly).unwrap(),
            137
        );
    }

    #[test]
    fn missing_program_reports_127() {
        let mut p = plan("");
        p.program = PathBuf::from("/nonexistent/prog");
        assert_eq!(run(&p, Reap::WorkloadOnly).unwrap(), exit::NOT_FOUND_STATUS);
    }

    #[test]
    fn signals_are_forwarded() {
        // Thread-directed signals stay pending for this thread while blocked, so the
        // supervisor loop in this thread sees them exactly as PID 1 would.
        block_signals().unwrap();
        // SAFETY: pthread_self cannot fail.
        let me = unsafe { libc::pthread_self() };
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: `me` is alive: it is blocked in run() below until the child exits.
            unsafe { libc::pthread_kill(me, libc::SIGTERM) };
        });
        let script = "trap 'exit 7' TERM; i=0; while [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; exit 1";
        assert_eq!(run(&plan(script), Reap::WorkloadOnly).unwrap(), 7);
        sender.join().unwrap();
        // Leave this harness thread as we found it.
        let set = signal_set();
        // SAFETY: `set` is initialized.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}
