//! Seccomp filters and least privilege for the VMM once the guest is set up
//! (docs/hardening.md).
//!
//! [`activate`] runs once, on the thread that built the VM, after the confidential launch
//! finished and before the first vCPU runs: it compiles one allow-list per [`ThreadKind`]
//! (`filters`), installs the SIGSYS handler that names a denied call (`sigsys`), sets
//! `PR_SET_NO_NEW_PRIVS`, drops capabilities, and starts the spawner thread. Then each thread
//! installs its own list with [`enter`]: vCPU threads first thing, the main thread once the
//! vCPUs run.
//!
//! A thread inherits its creator's filters and the kernel runs them all (the strictest
//! answer wins), so a thread created by a vCPU would be limited by the vCPU's list. Threads
//! created after the filters are on (device workers on the guest's DRIVER_OK, vsock service
//! connections) therefore come from one spawner thread ([`spawn`]) whose list is the union of
//! theirs, and each installs its own list before running its body.

pub mod filters;
mod sigsys;
mod syscall_names;

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;

use seccompiler::BpfProgram;

pub use sigsys::{syscall_name, DENIED_EXIT_STATUS};

/// The environment variable (read when the library loads, like every host setting) that
/// turns the filters off for debugging: `KRUN_SEV_SECCOMP=off`.
pub const SECCOMP_ENV: &str = "KRUN_SEV_SECCOMP";

/// The kinds of VMM thread, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// The thread that called `krun_start_enter`: waits for the VM to end, stops it.
    Main,
    /// A vCPU: `KVM_RUN` and the MMIO/PIO exits it handles.
    Vcpu,
    /// The virtio-blk worker.
    Block,
    /// The virtio-console worker.
    Console,
    /// The virtio-vsock worker (host sockets of guest connections).
    Vsock,
    /// The virtio-net worker (the passt socket).
    Net,
    /// A thread serving one vsock connection in-process (guest stderr, port control, SNP
    /// report service, network configuration).
    Service,
    /// Creates the threads above once the filters are on.
    Spawner,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Block,
        ThreadKind::Console,
        ThreadKind::Vsock,
        ThreadKind::Net,
        ThreadKind::Service,
        ThreadKind::Spawner,
    ];

    /// The kinds the spawner creates.
    pub const SPAWNED: [ThreadKind; 5] = [
        ThreadKind::Block,
        ThreadKind::Console,
        ThreadKind::Vsock,
        ThreadKind::Net,
        ThreadKind::Service,
    ];

    /// The kind's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Block => "virtio-blk worker",
            ThreadKind::Console => "virtio-console worker",
            ThreadKind::Vsock => "virtio-vsock worker",
            ThreadKind::Net => "virtio-net worker",
            ThreadKind::Service => "vsock service",
            ThreadKind::Spawner => "spawner",
        }
    }
}

/// Errors setting up the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused an allow-list.
    #[error("cannot build the seccomp filter of {kind} threads")]
    Build {
        /// The thread kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused a filter.
    #[error("cannot install the seccomp filter of {kind} threads")]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
    /// `sigaction(SIGSYS)` failed.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
    /// `capget`/`capset` failed.
    #[error("cannot drop capabilities")]
    Capabilities(#[source] std::io::Error),
    /// The spawner thread could not start.
    #[error("cannot start the thread spawner")]
    Spawner(#[source] std::io::Error),
    /// The filters are on already (one VM per process once they are).
    #[error("seccomp filters are already active in this process")]
    AlreadyActive,
}

type Programs = BTreeMap<ThreadKind, BpfProgram>;

struct SpawnRequest {
    kind: ThreadKind,
    name: String,
    body: Box<dyn FnOnce() + Send>,
    reply: mpsc::SyncSender<std::io::Result<JoinHandle<()>>>,
}

struct Sandbox {
    programs: Arc<Programs>,
    spawner: mpsc::Sender<SpawnRequest>,
}

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

/// Whether [`activate`] ran in this process.
pub fn active() -> bool {
    SANDBOX.get().is_some()
}

/// Whether this process's stack is executable (`/proc/self/maps`): glibc then maps every
/// thread stack with `PROT_EXEC` ([`filters::program`]).
fn exec_stacks() -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|l| l.ends_with("[stack]"))
        .any(|l| l.split_whitespace().nth(1).is_some_and(|p| p.contains('x')))
}

fn compile_all() -> Result<Programs, SeccompError> {
    let exec_stacks = exec_stacks();
    if exec_stacks {
        log::warn!("this process runs with executable stacks: the seccomp filters cannot forbid executable mappings");
    }
    ThreadKind::ALL
        .iter()
        .map(|kind| {
            filters::program(*kind, exec_stacks)
                .map(|p| (*kind, p))
                .map_err(|source| SeccompError::Build {
                    kind: kind.name(),
                    source,
                })
        })
        .collect()
}

fn apply(kind: ThreadKind, programs: &Programs) -> Result<(), SeccompError> {
    let install = |p: &BpfProgram| {
        seccompiler::apply_filter(p).map_err(|source| SeccompError::Install {
            kind: kind.name(),
            source,
        })
    };
    // Stacked first: how thread and process creation is answered (filters::no_spawn).
    let first = if kind == ThreadKind::Spawner {
        filters::clone3_enosys()
    } else {
        filters::no_spawn()
    }
    .map_err(|source| SeccompError::Build {
        kind: kind.name(),
        source,
    })?;
    install(&first)?;
    let Some(program) = programs.get(&kind) else {
        return Err(SeccompError::Install {
            kind: kind.name(),
            source: seccompiler::Error::EmptyFilter,
        });
    };
    install(program)?;
    sigsys::set_thread_kind(kind.name());
    log::debug!(
        "thread {:?} installed the seccomp filter of {} threads ({} BPF instructions)",
        std::thread::current().name().unwrap_or("?"),
        kind.name(),
        program.len()
    );
    Ok(())
}

/// Turns the sandbox on for this process: compiles the filters, installs the SIGSYS handler,
/// sets no_new_privs, drops capabilities and starts the spawner. Threads install their own
/// filter afterwards with [`enter`]; this thread installs none yet.
pub fn activate() -> Result<(), SeccompError> {
    if active() {
        return Err(SeccompError::AlreadyActive);
    }
    let programs = Arc::new(compile_all()?);
    pin_malloc_arena_limit();
    stop_heap_shrinking();
    sigsys::install().map_err(SeccompError::Handler)?;
    set_no_new_privs()?;
    drop_capabilities()?;
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let for_spawner = programs.clone();
    std::thread::Builder::new()
        .name("krun-spawner".into())
        .spawn(move || {
            let installed = apply(ThreadKind::Spawner, &for_spawner);
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed);
            if ok {
                serve_spawns(&for_spawner, &rx);
            }
        })
        .map_err(SeccompError::Spawner)?;
    ready_rx
        .recv()
        .map_err(|_| SeccompError::Spawner(std::io::Error::other("spawner thread died")))??;
    SANDBOX
        .set(Sandbox {
            programs,
            spawner: tx,
        })
        .map_err(|_| SeccompError::AlreadyActive)?;
    log::info!("seccomp filters on: one allow-list per thread kind (docs/hardening.md)");
    Ok(())
}

fn serve_spawns(programs: &Arc<Programs>, rx: &mpsc::Receiver<SpawnRequest>) {
    while let Ok(req) = rx.recv() {
        let programs = programs.clone();
        let kind = req.kind;
        let body = req.body;
        let thread_name = req.name.clone();
        let spawned = std::thread::Builder::new()
            .name(req.name)
            .spawn(move || run_filtered(kind, &thread_name, &programs, body));
        let _ = req.reply.send(spawned);
    }
}

fn run_filtered(kind: ThreadKind, name: &str, programs: &Programs, body: Box<dyn FnOnce()>) {
    // Until its own list is on, the thread runs under the spawner's.
    sigsys::set_thread_kind("new (still under the spawner's filter)");
    match apply(kind, programs) {
        Ok(()) => body(),
        Err(e) => log::error!("{name}: {}; the thread does not run", chain(&e)),
    }
}

/// `e` with its causes, for a log line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Installs `kind`'s filter on the calling thread when the sandbox is active; nothing
/// otherwise.
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    match SANDBOX.get() {
        Some(s) => apply(kind, &s.programs),
        None => Ok(()),
    }
}

/// Starts a thread named `name` running `body` under `kind`'s filter. Once the sandbox is
/// active the spawner creates it (see the module doc); before, or without a sandbox, it is
/// created here.
pub fn spawn<F>(kind: ThreadKind, name: &str, body: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let Some(sandbox) = SANDBOX.get() else {
        return std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(body);
    };
    let (reply, answer) = mpsc::sync_channel(1);
    sandbox
        .spawner
        .send(SpawnRequest {
            kind,
            name: name.to_owned(),
            body: Box::new(body),
            reply,
        })
        .map_err(|_| std::io::Error::other("the thread spawner is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the thread spawner did not answer"))?
}

/// Sets glibc's malloc arena limit now, to what glibc would compute itself (8 per CPU): it
/// computes it the first time more than eight arenas exist (as many threads allocating at
/// once), from the CPU count it reads under `/sys`, which no list allows. A limit the host
/// set (`MALLOC_ARENA_MAX`, `glibc.malloc.arena_max`) already spares glibc that read and is
/// kept.
fn pin_malloc_arena_limit() {
    #[cfg(target_env = "gnu")]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() || tunables.contains("arena_max") {
            return;
        }
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let limit = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes a malloc parameter; M_ARENA_MAX takes any positive
        // count.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, limit) } != 1 {
            log::warn!("cannot set the malloc arena limit; many threads allocating at once may hit the seccomp filters");
        }
    }
}

/// Keeps glibc from shrinking the heaps of its per-thread arenas: the first time it would,
/// it reads `/proc/sys/vm/overcommit_memory`, which no list allows (the hostile-guest test
/// hit it on a spawner thread after many device resets; any worker freeing a burst of
/// buffers could). Freed memory stays in the arenas for reuse, as it does below the default
/// 128 KiB threshold.
fn stop_heap_shrinking() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes a malloc parameter; M_TRIM_THRESHOLD takes any
        // non-negative size.
        if unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) } != 1 {
            log::warn!("cannot set the malloc trim threshold; a thread freeing much memory may hit the seccomp filters");
        }
    }
}

fn set_no_new_privs() -> Result<(), SeccompError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SeccompError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `struct __user_cap_header_struct` (`include/uapi/linux/capability.h`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const _LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_NET_BIND_SERVICE: u32 = 10;

/// The capability sets kept after set-up: only `CAP_NET_BIND_SERVICE` (the vsock worker
/// binds host listeners for the ports the guest exposes, which may be below 1024), and only
/// if the process had it.
fn kept(data: [CapData; 2]) -> [CapData; 2] {
    let keep = 1u32 << CAP_NET_BIND_SERVICE;
    [
        CapData {
            effective: data[0].effective & data[0].permitted & keep,
            permitted: data[0].permitted & keep,
            inheritable: 0,
        },
        CapData::default(),
    ]
}

/// Drops every capability but [`kept`]'s from this thread (and the threads it creates from
/// now on: capabilities are per thread and inherited).
fn drop_capabilities() -> Result<(), SeccompError> {
    let mut header = CapHeader {
        version: _LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are the version-3 structures capget reads and writes (two
    // data elements), both owned by this frame.
    if unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    } != 0
    {
        return Err(SeccompError::Capabilities(std::io::Error::last_os_error()));
    }
    let new = kept(data);
    // SAFETY: as above; capset only reads `new`.
    if unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            new.as_ptr(),
        )
    } != 0
    {
        return Err(SeccompError::Capabilities(std::io::Error::last_os_error()));
    }
    log::debug!(
        "capabilities dropped (permitted {:#x}:{:#x} -> {:#x})",
        data[1].permitted,
        data[0].permitted,
        new[0].permitted
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_not_executable_here() {
        assert!(!exec_stacks());
    }

    #[test]
    fn only_net_bind_service_is_kept() {
        let all = CapData {
            effective: u32::MAX,
            permitted: u32::MAX,
            inheritable: u32::MAX,
        };
        let k = kept([all, all]);
        assert_eq!(k[0].permitted, 1 << 10);
        assert_eq!(k[0].effective, 1 << 10);
        assert_eq!(k[0].inheritable, 0);
        assert_eq!(k[1].permitted, 0);
        let none = kept([CapData::default(); 2]);
        assert_eq!(none[0].permitted, 0);
    }

    #[test]
    fn without_a_sandbox_spawn_and_enter_do_nothing_special() {
        assert!(!active());
        enter(ThreadKind::Vcpu).unwrap();
        let (tx, rx) = mpsc::channel();
        spawn(ThreadKind::Block, "t", move || tx.send(7).unwrap())
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(rx.recv().unwrap(), 7);
    }
}
