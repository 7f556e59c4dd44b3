//! Network throughput benchmark, run inside the test host by `ci/bench-net.sh`: a TCP bulk
//! transfer guest→host through passt, with our virtio-net (`krun-vmm-boot --net-socket`)
//! and with QEMU's (`-M microvm`, `-netdev stream` + `virtio-net-device`), the same guest
//! kernel, initrd, root disk and passt binary, alternating. Prints the median throughput of
//! each and the ratio ours/QEMU.
//!
//! Each run starts its own passt on a socketpair (`--fd`, as the library does), then the
//! VMM on the other end, whose workload
//! sends `--mib` MiB of zeros to the gateway address, port `--port`; passt maps the gateway
//! to this host's loopback, where this process receives them. Throughput is the bytes over
//! the time from the first received byte to the last, measured here with a monotonic clock,
//! so the boot is not in it. The guest learns its network from vsock port 1029 either way:
//! our VMM serves it, and for QEMU (in-kernel vhost-vsock) this process does.
//!
//! usage: krun-net-bench --kernel BZIMAGE --initrd INITRD --root DISK --vmm KRUN_VMM_BOOT
//!        --qemu QEMU --passt PASST [--runs N] [--mib M] [--port P] [--ram-mib M]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use krun_sev::devices::virtio::net::DEVICE_MTU;
use krun_sev::devices::virtio::vsock::PORT_NET_CONFIG;
use krun_sev::launch::net;
use krun_testhost::bench::{median, BenchGuest};

/// How long a VM may take to boot and connect, and then to send everything.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(180);
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

struct Args {
    guest: BenchGuest,
    passt: PathBuf,
    runs: usize,
    mib: u64,
    port: u16,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        guest: BenchGuest::default(),
        passt: PathBuf::new(),
        runs: 5,
        mib: 64,
        port: 5201,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        if a.guest.take_flag(&flag, &mut value)? {
            continue;
        }
        match flag.as_str() {
            "--passt" => a.passt = value()?.into(),
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--mib" => a.mib = value()?.parse().map_err(|e| format!("--mib: {e}"))?,
            "--port" => a.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    a.guest.check()?;
    if a.passt.as_os_str().is_empty() {
        return Err("--passt is required".into());
    }
    if a.runs == 0 || a.mib == 0 {
        return Err("--runs and --mib must be at least 1".into());
    }
    Ok(a)
}

/// `AF_VSOCK` as an address family field, and `sizeof(struct sockaddr_vm)`.
const AF_VSOCK_FAMILY: libc::sa_family_t = 40;
const _: () = assert!(libc::AF_VSOCK == 40);
const SOCKADDR_VM_LEN: libc::socklen_t = 16;
const _: () = assert!(std::mem::size_of::<libc::sockaddr_vm>() == 16);

/// Serves the guest's network settings on host vsock port 1029 for QEMU's vhost-vsock guest,
/// as our VMM does for its own: one JSON object per connection, then close.
fn serve_settings_on_vsock() -> Result<(), String> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("vsock socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let listener = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_vm {
        svm_family: AF_VSOCK_FAMILY,
        svm_reserved1: 0,
        svm_port: PORT_NET_CONFIG,
        svm_cid: libc::VMADDR_CID_ANY,
        svm_zero: [0; 4],
    };
    // SAFETY: addr is a valid sockaddr_vm of length len; fd is a socket we own.
    let bound = unsafe {
        libc::bind(
            fd,
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            SOCKADDR_VM_LEN,
        )
    };
    // SAFETY: fd is a bound socket we own.
    if bound < 0 || unsafe { libc::listen(fd, 8) } < 0 {
        return Err(format!(
            "vsock port {PORT_NET_CONFIG}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let json = net::GuestNetConfig::dhcp(&net::DEFAULT_MAC).to_json();
    std::thread::spawn(move || loop {
        // SAFETY: the thread owns the listening socket; no peer address is asked for.
        let conn = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            continue;
        }
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let mut conn = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(conn) });
        let _ = conn.write_all(&json);
    });
    Ok(())
}

/// Lets `fd` survive exec into the next child (Rust opens sockets close-on-exec).
fn inheritable(fd: &impl AsRawFd) -> Result<(), String> {
    // SAFETY: fcntl on a descriptor we own; no pointers.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(format!("fcntl: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Waits for `child` at most `limit`, then kills it; its exit status, if it exited by itself.
fn reap(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Accepts the guest's connection (through passt) within `limit`.
fn accept(listener: &TcpListener, limit: Duration) -> Result<TcpStream, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| format!("stream: {e}"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err("the guest did not connect".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Reads `expected` bytes; the time from the first byte to the last.
fn receive(stream: &mut TcpStream, expected: u64) -> Result<Duration, String> {
    stream
        .set_read_timeout(Some(TRANSFER_TIMEOUT))
        .map_err(|e| format!("stream: {e}"))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    let mut first = None;
    while got < expected {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("after {got} of {expected} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("the guest closed after {got} of {expected} bytes"));
        }
        first.get_or_insert_with(Instant::now);
        got += n as u64;
    }
    Ok(first.map_or(Duration::ZERO, |t| t.elapsed()))
}

/// One transfer with the VMM `cmd`, given the descriptor of its end of passt's socketpair:
/// MB/s (10^6 bytes).
fn run_once(cmd: &dyn Fn(i32) -> Command, a: &Args, listener: &TcpListener) -> Result<f64, String> {
    // The library's own way of starting passt (`passt --fd`), as for a launch.
    let (sock, mut passt) =
        net::start_passt(&a.passt, &[]).map_err(|e| format!("cannot start passt: {e}"))?;
    inheritable(&sock)?;
    let spawned = cmd(sock.as_raw_fd())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    // passt's peer is the VMM's copy now.
    drop(sock);
    let mut vmm = spawned.map_err(|e| format!("cannot start the VMM: {e}"))?;
    // The VMM's output is kept for the error message.
    let (tx, rx) = mpsc::channel();
    for mut pipe in [
        vmm.stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        vmm.stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            let _ = tx.send(s);
        });
    }
    drop(tx);
    let expected = a.mib << 20;
    let result = accept(listener, CONNECT_TIMEOUT).and_then(|mut s| receive(&mut s, expected));
    let status = reap(&mut vmm, Duration::from_secs(60));
    reap(&mut passt, Duration::from_secs(5));
    let output: Vec<String> = rx.iter().collect();
    let elapsed =
        result.map_err(|e| format!("{e}; VMM {status:?}, output:\n{}", output.join("\n")))?;
    if status.is_none_or(|s| !s.success()) {
        return Err(format!(
            "the VMM did not exit 0 ({status:?}); output:\n{}",
            output.join("\n")
        ));
    }
    Ok(expected as f64 / elapsed.as_secs_f64() / 1e6)
}

fn run() -> Result<(), String> {
    let a = parse()?;
    let initrd_q = std::env::temp_dir().join("krun-net-bench-initrd");
    a.guest.write_qemu_initrd(&initrd_q)?;
    serve_settings_on_vsock()?;
    let listener =
        TcpListener::bind(("0.0.0.0", a.port)).map_err(|e| format!("port {}: {e}", a.port))?;
    let ram = a.guest.ram_mib.to_string();
    let ours = |fd: i32| {
        let mut c = Command::new(&a.guest.vmm);
        c.arg("--kernel")
            .arg(&a.guest.kernel)
            .arg("--initrd")
            .arg(&a.guest.initrd)
            .arg("--root")
            .arg(&a.guest.root)
            .args(["--net-fd", &fd.to_string()])
            .args(["--vcpus", "1", "--ram-mib", &ram]);
        c
    };
    let mac = krun_sev::devices::virtio::net::format_mac(&net::DEFAULT_MAC);
    let qemu = |fd: i32| {
        let mut c = a.guest.qemu_command(&initrd_q);
        c.arg("-netdev")
            .arg(format!("stream,id=net0,addr.type=fd,addr.str={fd}"))
            // The MTU our device announces (passt's), so both guests send the same frames.
            .arg("-device")
            .arg(format!(
                "virtio-net-device,netdev=net0,mac={mac},host_mtu={DEVICE_MTU}"
            ));
        c
    };
    // One unmeasured transfer each warms caches; then the two alternate so drift hits both.
    run_once(&ours, &a, &listener)?;
    run_once(&qemu, &a, &listener)?;
    let (mut o, mut q) = (Vec::new(), Vec::new());
    for i in 0..a.runs {
        let so = run_once(&ours, &a, &listener)?;
        let sq = run_once(&qemu, &a, &listener)?;
        eprintln!("run {}: ours {so:.1} MB/s, qemu {sq:.1} MB/s", i + 1);
        o.push(so);
        q.push(sq);
    }
    let (mo, mq) = (median(o), median(q));
    println!(
        "guest->host TCP through passt, {} MiB per run, medians of {} runs each (1 vCPU, {} MiB)",
        a.mib, a.runs, a.guest.ram_mib
    );
    println!(
        "| {:<24} | {:>10} | {:>10} | {:>9} |",
        "", "ours", "qemu", "ours/qemu"
    );
    println!("|{:-<26}|{:->12}|{:->12}|{:->11}|", "", "", "", "");
    println!(
        "| {:<24} | {mo:>10.1} | {mq:>10.1} | {:>9.2} |",
        "throughput (MB/s)",
        mo / mq
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("krun-net-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
