//! The VMM's seccomp filters in a real process (docs/hardening.md): a system call outside a
//! thread's allow-list ends the process through the SIGSYS handler, with the call named on
//! stderr and exit status 159 (128 + SIGSYS); calls on the list work.
//!
//! Each case runs this test binary again as a child process that turns the sandbox on
//! (`seccomp::activate`, as `Vmm::run` does once the guest is set up), installs one thread
//! kind's filter and makes its calls. No test harness (`harness = false` in Cargo.toml): the
//! child must be the only code running in its process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::process::Command;

use krun_sev::vmm::seccomp::{self, ThreadKind, DENIED_EXIT_STATUS};

const ROLE: &str = "KRUN_SEV_TEST_SECCOMP_CHILD";

fn main() {
    match std::env::var(ROLE) {
        Ok(case) => child(&case),
        Err(_) => parent(),
    }
}

/// What the child does; it exits 0 when every allowed call worked and nothing was denied.
fn child(case: &str) {
    krun_sev::capi::krun_set_log_level(4);
    // Made before the filters, like the VMM's fds.
    let file = tempfile::tempfile().unwrap();
    seccomp::activate().unwrap();
    match case {
        // A block worker does its I/O on the disk image, then tries to open a socket.
        "block-allowed" | "block-socket" => {
            seccomp::enter(ThreadKind::Block).unwrap();
            file.write_all_at(b"sector", 512).unwrap();
            file.sync_all().unwrap();
            let mut buf = [0u8; 6];
            file.read_exact_at(&mut buf, 512).unwrap();
            assert_eq!(&buf, b"sector");
            if case == "block-socket" {
                // SAFETY: plain integer arguments.
                let _ = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            }
        }
        // A vCPU runs KVM_RUN (here on a file: ENOTTY, but the filter let it through) and
        // makes eventfds for device activation; it may not run any other ioctl (here TCGETS).
        "vcpu-allowed" | "vcpu-ioctl" => {
            seccomp::enter(ThreadKind::Vcpu).unwrap();
            // SAFETY: KVM_RUN takes no argument; on a regular file it fails with ENOTTY.
            let r = unsafe { libc::ioctl(file.as_raw_fd(), seccomp::filters::KVM_RUN as _) };
            assert_eq!(r, -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOTTY)
            );
            let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
            evt.try_clone().unwrap().write(1).unwrap();
            if case == "vcpu-allowed" {
                std::process::exit(0);
            }
            let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
            // SAFETY: `t` is a termios-sized buffer.
            let _ = unsafe { libc::ioctl(2, libc::TCGETS, t.as_mut_ptr()) };
        }
        // Nothing after set-up may open a file (here the main thread).
        "main-open" => {
            seccomp::enter(ThreadKind::Main).unwrap();
            let _ = std::fs::File::open("/etc/hostname");
        }
        // Threads created once the filters are on come from the spawner and get their own
        // list: a service thread echoes on a socket pair, another one may not create threads.
        "service-allowed" | "service-socket" => {
            let (mut ours, mut theirs) = UnixStream::pair().unwrap();
            let echo = seccomp::spawn(ThreadKind::Service, "echo", move || {
                let mut b = [0u8; 4];
                theirs.read_exact(&mut b).unwrap();
                theirs.write_all(&b).unwrap();
            })
            .unwrap();
            ours.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            ours.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"ping");
            echo.join().unwrap();
            // Only the spawner creates threads: elsewhere clone fails with EPERM (glibc blocks
            // every signal around it, so a SIGSYS could not be handled).
            let t = seccomp::spawn(ThreadKind::Service, "nested", || {
                let e = std::thread::Builder::new().spawn(|| {}).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            })
            .unwrap();
            t.join().unwrap();
            // Nor can a program be started.
            seccomp::spawn(ThreadKind::Service, "exec", || {
                let e = std::process::Command::new("/bin/true")
                    .status()
                    .unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EPERM));
            })
            .unwrap()
            .join()
            .unwrap();
            if case == "service-socket" {
                seccomp::spawn(ThreadKind::Service, "socket", || {
                    // SAFETY: plain integer arguments.
                    let _ = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                })
                .unwrap()
                .join()
                .unwrap();
            }
        }
        // Many threads alive at once, each allocating: glibc sizes its malloc arenas from the
        // CPU count the first time more than eight exist, which reads a file under /sys
        // unless the limit was set before the filters went on.
        "many-threads" => {
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(17));
            let threads: Vec<_> = (0..16)
                .map(|i| {
                    let b = barrier.clone();
                    seccomp::spawn(ThreadKind::Service, &format!("t{i}"), move || {
                        let v: Vec<u8> = vec![1; 4096 * (i + 1)];
                        b.wait();
                        assert_eq!(v.len(), 4096 * (i + 1));
                    })
                    .unwrap()
                })
                .collect();
            barrier.wait();
            for t in threads {
                t.join().unwrap();
            }
        }
        "heap-shrink" => {
            // A thread with an arena of its own frees more than glibc's default trim
            // threshold at once: glibc would shrink that heap, and first read a /proc file.
            let t = seccomp::spawn(ThreadKind::Service, "shrink", || {
                for _ in 0..4 {
                    let chunks: Vec<Vec<u8>> = (0..4000).map(|i| vec![1; 100 + i % 50]).collect();
                    assert_eq!(chunks.len(), 4000);
                    drop(chunks);
                }
            })
            .unwrap();
            t.join().unwrap();
        }
        other => panic!("unknown case {other}"),
    }
    std::process::exit(0);
}

fn run(case: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, case)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn denied(case: &str, expected: &str) {
    let (code, stderr) = run(case);
    assert_eq!(code, Some(DENIED_EXIT_STATUS), "{case}: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("denied system call"))
        .collect();
    assert_eq!(lines.len(), 1, "{case}: {stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "[libkrun-sev ERROR krun_sev::seccomp] denied system call {expected}"
        )),
        "{case}: {stderr}"
    );
    println!("{case}: {}", lines[0]);
}

fn allowed(case: &str, kind: &str) {
    let (code, stderr) = run(case);
    assert_eq!(code, Some(0), "{case}: {stderr}");
    assert!(!stderr.contains("denied"), "{case}: {stderr}");
    // The debug log names the filter each thread installed.
    assert!(
        stderr.contains(&format!("installed the seccomp filter of {kind} threads")),
        "{case}: {stderr}"
    );
    assert!(
        stderr.contains("installed the seccomp filter of spawner threads"),
        "{case}: {stderr}"
    );
    println!("{case}: ok");
}

fn parent() {
    let allowed_cases = [
        ("block-allowed", "virtio-blk worker"),
        ("vcpu-allowed", "vcpu"),
        ("service-allowed", "vsock service"),
        ("many-threads", "vsock service"),
        ("heap-shrink", "vsock service"),
    ];
    let denied_cases = [
        ("block-socket", "socket (41) on a virtio-blk worker thread"),
        ("vcpu-ioctl", "ioctl (16) on a vcpu thread"),
        ("main-open", "openat (257) on a main thread"),
        ("service-socket", "socket (41) on a vsock service thread"),
    ];
    for (case, kind) in allowed_cases {
        allowed(case, kind);
    }
    for (case, expected) in denied_cases {
        denied(case, expected);
    }
    // The line ci/test-summary.sh counts, as the libtest harness prints it.
    println!(
        "test result: ok. {} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
        allowed_cases.len() + denied_cases.len()
    );
}
