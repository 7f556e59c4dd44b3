//! The allow-list of each thread kind, as seccompiler rules (x86_64 system call numbers).
//!
//! docs/hardening.md explains each entry. Every list starts from [`base`]: what the Rust
//! runtime, glibc's allocator and thread exit, and the logger (a `write` to fd 2) need on any
//! thread. A syscall missing from a list kills the process through the SIGSYS handler, so an
//! entry is added when a path needs it, with the reason next to it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::ThreadKind;

/// Rules of one filter: system call number to the rules of which one must match (an empty
/// list allows every call).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

const KVMIO: u64 = 0xae;

/// `_IO(KVMIO, nr)`.
const fn kvm_io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}

/// `_IOW(KVMIO, nr, size)`.
const fn kvm_iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// `KVM_RUN` (`include/uapi/linux/kvm.h`).
pub const KVM_RUN: u64 = kvm_io(0x80);
/// `KVM_SET_MEMORY_ATTRIBUTES`: the SNP hardware backend's private/shared conversions, issued
/// by the vCPU that took the guest's page-state exit.
pub const KVM_SET_MEMORY_ATTRIBUTES: u64 =
    kvm_iow(0xd2, size_of::<kvm_bindings::kvm_memory_attributes>());
const _: () = assert!(KVM_SET_MEMORY_ATTRIBUTES == 0x4020_aed2);
const _: () = assert!(KVM_RUN == 0xae80);

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Argument indexes are 0..=5 here, so the condition is always valid.
    SeccompCondition::new(arg, len, op, value).unwrap_or_else(|_| unreachable!("argument {arg}"))
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).unwrap_or_else(|_| unreachable!("a rule has a condition"))
}

/// Rules for `nr`: one per value of argument `arg` (32-bit compare: requests, commands).
fn arg_in(arg: u8, values: &[u64]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|v| {
            rule(vec![cond(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                *v,
            )])
        })
        .collect()
}

/// `mmap` and `mprotect` without `PROT_EXEC` (argument 2): no new executable memory after
/// set-up.
fn no_exec() -> Vec<SeccompRule> {
    let prot = u64::try_from(libc::PROT_EXEC).unwrap_or(4);
    vec![rule(vec![cond(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(prot),
        0,
    )])]
}

fn allow(rules: &mut Rules, nrs: &[libc::c_long]) {
    for nr in nrs {
        rules.insert(*nr, Vec::new());
    }
}

/// What every thread needs: memory, futexes (locks, condvars, joins), signal return (the
/// vCPU kick, SIGSYS), time, sleeping, thread exit, logging to fd 2, closing its fds.
fn base() -> Rules {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_getrandom,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    r.insert(libc::SYS_mmap, no_exec());
    r.insert(libc::SYS_mprotect, no_exec());
    // std checks descriptors it adopts (F_GETFD) and clones them (F_DUPFD_CLOEXEC).
    r.insert(libc::SYS_fcntl, fcntl_rules());
    r
}

/// `fcntl` commands std uses (`try_clone`, non-blocking files).
fn fcntl_rules() -> Vec<SeccompRule> {
    arg_in(
        1,
        &[
            libc::F_DUPFD_CLOEXEC as u64,
            libc::F_GETFD as u64,
            libc::F_SETFD as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
        ],
    )
}

/// Reading and writing streams and sockets, and waiting on them.
fn stream_io(r: &mut Rules) {
    allow(
        r,
        &[
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_shutdown,
            libc::SYS_poll,
            libc::SYS_ppoll,
        ],
    );
}

/// The allow-list of `kind`.
pub fn rules(kind: ThreadKind) -> Rules {
    let mut r = base();
    match kind {
        ThreadKind::Main => {
            // Kicks vCPU threads out of KVM_RUN (pthread_kill) and restores the terminal;
            // exit(3) may seek a buffered input stream back.
            allow(&mut r, &[libc::SYS_tgkill, libc::SYS_lseek]);
            r.insert(
                libc::SYS_ioctl,
                arg_in(
                    1,
                    &[libc::TCGETS, libc::TCSETS, libc::TCSETSW, libc::TCSETSF],
                ),
            );
        }
        ThreadKind::Vcpu => {
            r.insert(
                libc::SYS_ioctl,
                arg_in(1, &[KVM_RUN, KVM_SET_MEMORY_ATTRIBUTES]),
            );
            // Device activation on the guest's DRIVER_OK: the worker's kill eventfd and clones
            // of the queue eventfds (the worker thread itself comes from the spawner). A
            // device reset (status 0) drains the queue eventfds.
            allow(&mut r, &[libc::SYS_eventfd2, libc::SYS_read]);
        }
        ThreadKind::Block => {
            stream_io(&mut r);
            allow(
                &mut r,
                &[
                    libc::SYS_lseek,
                    libc::SYS_pread64,
                    libc::SYS_pwrite64,
                    libc::SYS_preadv,
                    libc::SYS_pwritev,
                    libc::SYS_fsync,
                    libc::SYS_fdatasync,
                ],
            );
        }
        ThreadKind::Console | ThreadKind::Net | ThreadKind::Service => stream_io(&mut r),
        ThreadKind::Vsock => {
            stream_io(&mut r);
            // Host ends of guest connections: TCP to the broker (SNP attestation), listeners
            // for the ports the guest exposes, socket pairs for the in-process services.
            r.insert(
                libc::SYS_socket,
                arg_in(0, &[libc::AF_INET as u64, libc::AF_INET6 as u64]),
            );
            r.insert(libc::SYS_socketpair, arg_in(0, &[libc::AF_UNIX as u64]));
            allow(
                &mut r,
                &[
                    libc::SYS_connect,
                    libc::SYS_bind,
                    libc::SYS_listen,
                    libc::SYS_accept4,
                    libc::SYS_setsockopt,
                    libc::SYS_getsockopt,
                    libc::SYS_getsockname,
                    libc::SYS_getpeername,
                    libc::SYS_eventfd2,
                ],
            );
            // `set_nonblocking` on sockets is ioctl(FIONBIO).
            r.insert(libc::SYS_ioctl, arg_in(1, &[libc::FIONBIO]));
        }
        ThreadKind::Spawner => {
            // Every list, since threads inherit their creator's filter (the kernel runs all
            // stacked filters, the strictest answer wins)...
            for other in ThreadKind::SPAWNED {
                merge(&mut r, rules(other));
            }
            // ...plus creating a thread, naming it and installing its filter.
            r.insert(
                libc::SYS_clone,
                vec![rule(vec![cond(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                    libc::CLONE_THREAD as u64,
                )])],
            );
            // clone3's flags are in memory the filter cannot read: it gets ENOSYS from
            // [`clone3_enosys`] and glibc falls back to clone.
            allow(
                &mut r,
                &[
                    libc::SYS_clone3,
                    libc::SYS_set_robust_list,
                    libc::SYS_rseq,
                    libc::SYS_sched_getaffinity,
                ],
            );
            r.insert(
                libc::SYS_prctl,
                arg_in(
                    0,
                    &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
                ),
            );
            r.insert(
                libc::SYS_seccomp,
                arg_in(0, &[u64::from(libc::SECCOMP_SET_MODE_FILTER)]),
            );
        }
    }
    r
}

/// Adds `other`'s rules to `into`: a syscall allowed without conditions by either stays so;
/// otherwise the rules of both apply (any one matching allows the call).
pub fn merge(into: &mut Rules, other: Rules) {
    for (nr, rules) in other {
        match into.get_mut(&nr) {
            None => {
                into.insert(nr, rules);
            }
            Some(existing) if existing.is_empty() => {}
            Some(existing) if rules.is_empty() => existing.clear(),
            Some(existing) => {
                for rule in rules {
                    if !existing.contains(&rule) {
                        existing.push(rule);
                    }
                }
            }
        }
    }
}

/// System calls that create threads or processes: outside the spawner they fail with EPERM
/// ([`no_spawn`]) instead of raising SIGSYS, because glibc blocks every signal around
/// `clone`, and the kernel kills a thread whose SIGSYS is blocked without running the handler
/// (no log line).
pub const SPAWN_SYSCALLS: [libc::c_long; 4] = [
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_fork,
    libc::SYS_vfork,
];

/// The program of `kind`'s own list: [`rules`], plus [`SPAWN_SYSCALLS`] for every kind but
/// the spawner (its stacked [`no_spawn`] filter answers them). `exec_stacks`: the process
/// runs with executable stacks (a loaded object without a non-executable `PT_GNU_STACK`), so
/// glibc maps new thread stacks with `PROT_EXEC` and the no-exec rule would kill the first
/// thread the spawner creates; `mmap` and `mprotect` are then unrestricted.
pub fn program(
    kind: ThreadKind,
    exec_stacks: bool,
) -> Result<BpfProgram, seccompiler::BackendError> {
    let mut r = rules(kind);
    if kind != ThreadKind::Spawner {
        allow(&mut r, &SPAWN_SYSCALLS);
    }
    if exec_stacks {
        allow(&mut r, &[libc::SYS_mmap, libc::SYS_mprotect]);
    }
    compile(r)
}

/// Compiles `rules`: matching calls are allowed, everything else raises SIGSYS.
pub fn compile(rules: Rules) -> Result<BpfProgram, seccompiler::BackendError> {
    SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?
    .try_into()
}

/// A filter answering [`SPAWN_SYSCALLS`] with EPERM and allowing everything else, stacked
/// under every list but the spawner's.
pub fn no_spawn() -> Result<BpfProgram, seccompiler::BackendError> {
    let mut rules = Rules::new();
    allow(&mut rules, &SPAWN_SYSCALLS);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::EPERM).unwrap_or(1)),
        TargetArch::x86_64,
    )?
    .try_into()
}

/// A filter answering `clone3` with ENOSYS and allowing everything else, stacked under the
/// spawner's list.
pub fn clone3_enosys() -> Result<BpfProgram, seccompiler::BackendError> {
    let mut rules = Rules::new();
    rules.insert(libc::SYS_clone3, Vec::new());
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::ENOSYS).unwrap_or(38)),
        TargetArch::x86_64,
    )?
    .try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        for kind in ThreadKind::ALL {
            for exec_stacks in [false, true] {
                let program = program(kind, exec_stacks).unwrap();
                assert!(!program.is_empty(), "{kind:?}");
            }
        }
        assert!(!clone3_enosys().unwrap().is_empty());
        assert!(!no_spawn().unwrap().is_empty());
    }

    #[test]
    fn lists_are_tight_where_it_matters() {
        for kind in ThreadKind::ALL {
            let r = rules(kind);
            // Nothing may start a program, open a file or change credentials after set-up.
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_ptrace,
                libc::SYS_setuid,
                libc::SYS_mount,
                libc::SYS_unlink,
                libc::SYS_kill,
            ] {
                assert!(!r.contains_key(&nr), "{kind:?} allows {nr}");
            }
            for nr in [libc::SYS_write, libc::SYS_exit_group, libc::SYS_futex] {
                assert!(r.contains_key(&nr), "{kind:?} lacks {nr}");
            }
        }
        // Only vCPUs run guests; only the vsock worker makes sockets; only the spawner
        // creates threads.
        let vcpu = rules(ThreadKind::Vcpu);
        assert_eq!(vcpu[&libc::SYS_ioctl].len(), 2);
        assert!(!rules(ThreadKind::Block).contains_key(&libc::SYS_ioctl));
        for kind in ThreadKind::SPAWNED {
            let r = rules(kind);
            assert!(!r.contains_key(&libc::SYS_clone), "{kind:?}");
            assert!(!r.contains_key(&libc::SYS_seccomp), "{kind:?}");
            if kind != ThreadKind::Vsock {
                assert!(!r.contains_key(&libc::SYS_socket), "{kind:?}");
            }
        }
        assert!(!rules(ThreadKind::Main).contains_key(&libc::SYS_clone));
    }

    #[test]
    fn spawner_allows_what_every_spawned_thread_allows() {
        let spawner = rules(ThreadKind::Spawner);
        for kind in ThreadKind::SPAWNED {
            for (nr, rules) in rules(kind) {
                let s = &spawner[&nr];
                assert!(
                    s.is_empty() || (!rules.is_empty() && rules.iter().all(|r| s.contains(r))),
                    "{kind:?}: syscall {nr}"
                );
            }
        }
    }

    #[test]
    fn merge_keeps_unconditional_entries() {
        let mut a = Rules::new();
        a.insert(1, arg_in(0, &[1]));
        a.insert(2, Vec::new());
        let mut b = Rules::new();
        b.insert(1, arg_in(0, &[2]));
        b.insert(2, arg_in(0, &[3]));
        b.insert(3, Vec::new());
        merge(&mut a, b);
        assert_eq!(a[&1].len(), 2);
        assert!(a[&2].is_empty());
        assert!(a[&3].is_empty());
        let mut c = Rules::new();
        c.insert(1, Vec::new());
        merge(&mut a, c);
        assert!(a[&1].is_empty());
    }
}
