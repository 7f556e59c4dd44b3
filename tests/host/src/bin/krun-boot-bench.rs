//! Boot benchmark, run inside the test host by `ci/bench-boot.sh`: boots the same kernel,
//! initrd (plus the same launch segment) and root disk with the library's VMM
//! (`krun-vmm-boot`) and with `qemu-system-x86_64 -M microvm`, alternating, and prints the
//! medians of boot-to-workload time, process wall time and VM exits, with ours/QEMU ratios.
//!
//! Times come from a monotonic clock in this process: "to marker" ends when the workload's
//! marker line arrives on the VMM's stdout, "process" when the VMM process has exited. VM
//! exits for both VMMs are counted by the (nested) host kernel with hist triggers on the
//! `kvm:kvm_exit` and `kvm:kvm_userspace_exit` tracepoints, reset before each run, so both
//! use one method. (KVM's debugfs `exits` counters cannot be used: they sum over live VMs
//! only and read 0 once the VMM has exited.) Our VMM's own count of exits is printed too.
//!
//! usage: krun-boot-bench --kernel VMLINUX --initrd INITRD --root DISK --vmm KRUN_VMM_BOOT
//!        --qemu QEMU [--runs N] [--marker TEXT] [--ram-mib M]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use krun_sev::launch::segment;

/// The guest command line both VMMs get (krun-vmm-boot's non-debug line).
const CMDLINE: &str = "console=hvc0 quiet reboot=t panic=-1 acpi=off";
/// tracefs (the caller mounts it).
const TRACEFS: &str = "/sys/kernel/tracing";
/// The tracepoints counted and the key of each one's histogram: every exit from guest mode,
/// and the exits that return to the VMM in user space.
const EVENTS: &[(&str, &str)] = &[
    ("kvm_exit", "exit_reason"),
    ("kvm_userspace_exit", "reason"),
];
/// The launch segment is placed on the next page boundary after the bundle initrd.
const PAGE: usize = 4096;

struct Args {
    kernel: PathBuf,
    initrd: PathBuf,
    root: PathBuf,
    vmm: PathBuf,
    qemu: PathBuf,
    runs: usize,
    marker: String,
    ram_mib: u32,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        kernel: PathBuf::new(),
        initrd: PathBuf::new(),
        root: PathBuf::new(),
        vmm: PathBuf::new(),
        qemu: PathBuf::new(),
        runs: 5,
        marker: "BENCH_WORKLOAD_DONE".into(),
        ram_mib: 256,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--kernel" => a.kernel = value()?.into(),
            "--initrd" => a.initrd = value()?.into(),
            "--root" => a.root = value()?.into(),
            "--vmm" => a.vmm = value()?.into(),
            "--qemu" => a.qemu = value()?.into(),
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--marker" => a.marker = value()?,
            "--ram-mib" => a.ram_mib = value()?.parse().map_err(|e| format!("--ram-mib: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    for (name, p) in [
        ("--kernel", &a.kernel),
        ("--initrd", &a.initrd),
        ("--root", &a.root),
        ("--vmm", &a.vmm),
        ("--qemu", &a.qemu),
    ] {
        if p.as_os_str().is_empty() {
            return Err(format!("{name} is required"));
        }
    }
    if a.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(a)
}

/// The bundle initrd with the launch segment krun-vmm-boot builds, as one file for QEMU.
fn qemu_initrd(initrd: &Path, out: &Path) -> Result<(), String> {
    let mut bytes = std::fs::read(initrd).map_err(|e| format!("{}: {e}", initrd.display()))?;
    let seg = segment::build(br#"{"format":1,"tee":"none","port_map":[]}"#)
        .map_err(|e| format!("launch segment: {e}"))?;
    bytes.resize(bytes.len().div_ceil(PAGE) * PAGE, 0);
    bytes.extend_from_slice(&seg);
    std::fs::write(out, bytes).map_err(|e| format!("{}: {e}", out.display()))
}

fn event_dir(event: &str) -> PathBuf {
    Path::new(TRACEFS).join("events/kvm").join(event)
}

/// Replaces each event's histogram by an empty one; false if tracing is unavailable.
fn reset_counters() -> bool {
    EVENTS.iter().all(|(event, key)| {
        let trigger = event_dir(event).join("trigger");
        // Removing a trigger that is not there fails; that is fine.
        let _ = std::fs::write(&trigger, format!("!hist:keys={key}"));
        std::fs::write(&trigger, format!("hist:keys={key}")).is_ok()
    })
}

/// The `kvm_exit` histogram since [`reset_counters`]: (exit reason, hits), most hits first.
fn exit_reasons() -> Vec<(String, u64)> {
    let hist = std::fs::read_to_string(event_dir(EVENTS[0].0).join("hist")).unwrap_or_default();
    let mut out: Vec<(String, u64)> = hist
        .lines()
        .filter_map(|l| {
            let (key, hits) = l.strip_prefix("{ exit_reason:")?.split_once('}')?;
            let hits = hits.trim().strip_prefix("hitcount:")?.trim().parse().ok()?;
            Some((svm_exit_name(key.trim()), hits))
        })
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.1));
    out
}

/// Names of the SVM exit codes a boot mostly sees (AMD APM vol. 2, appendix C); the
/// histogram prints codes in decimal.
fn svm_exit_name(code: &str) -> String {
    let Ok(n) = code.parse::<u64>() else {
        return code.to_owned();
    };
    let name = match n {
        0x10 => "CR0_WRITE",
        0x13 => "CR3_WRITE",
        0x14 => "CR4_WRITE",
        0x4e => "#PF",
        0x60 => "INTR",
        0x64 => "VINTR",
        0x72 => "CPUID",
        0x78 => "HLT",
        0x79 => "INVLPG",
        0x7b => "IOIO",
        0x7c => "MSR",
        0x400 => "NPF",
        _ => return format!("{n:#x}"),
    };
    format!("{name}({n:#x})")
}

/// Each event's total hits since [`reset_counters`].
fn read_counters() -> Option<Vec<u64>> {
    EVENTS
        .iter()
        .map(|(event, _)| {
            let hist = std::fs::read_to_string(event_dir(event).join("hist")).ok()?;
            let totals = hist.split("Totals:").nth(1)?;
            totals
                .lines()
                .find_map(|l| l.trim().strip_prefix("Hits:"))?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

struct Sample {
    to_marker: Duration,
    process: Duration,
    /// Counts of [`EVENTS`], when tracing works.
    kvm: Option<Vec<u64>>,
    /// Our VMM's own count of exits to user space (`--stats`).
    own_exits: Option<u64>,
    /// `kvm_exit` by exit reason.
    reasons: Vec<(String, u64)>,
}

fn run_once(cmd: &mut Command, marker: &str) -> Result<Sample, String> {
    let tracing = reset_counters();
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut to_marker = None;
    let mut output = String::new();
    for line in BufReader::new(stdout).split(b'\n') {
        let line = String::from_utf8_lossy(&line.map_err(|e| format!("stdout: {e}"))?).into_owned();
        if to_marker.is_none() && line.contains(marker) {
            to_marker = Some(start.elapsed());
        }
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let process = start.elapsed();
    let kvm = if tracing { read_counters() } else { None };
    let reasons = if tracing { exit_reasons() } else { Vec::new() };
    let errors = err_reader.join().unwrap_or_default();
    let to_marker = to_marker.ok_or_else(|| {
        format!("no {marker} from {cmd:?} ({status}); stdout:\n{output}\nstderr:\n{errors}")
    })?;
    let own_exits = errors
        .split_whitespace()
        .find_map(|w| w.strip_prefix("exits="))
        .and_then(|n| n.parse().ok());
    Ok(Sample {
        to_marker,
        process,
        kvm,
        own_exits,
        reasons,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn med<F: Fn(&Sample) -> Option<f64>>(s: &[Sample], f: F) -> Option<f64> {
    let v: Option<Vec<f64>> = s.iter().map(f).collect();
    v.map(median)
}

fn cell(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.0}"))
}

fn row<F: Fn(&Sample) -> Option<f64> + Copy>(name: &str, ours: &[Sample], qemu: &[Sample], f: F) {
    let (o, q) = (med(ours, f), med(qemu, f));
    let ratio = o
        .zip(q)
        .map_or("n/a".into(), |(o, q)| format!("{:.2}", o / q));
    println!(
        "| {name:<32} | {:>10} | {:>10} | {ratio:>9} |",
        cell(o),
        cell(q)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run() -> Result<(), String> {
    let a = parse()?;
    let initrd_q = std::env::temp_dir().join("krun-boot-bench-initrd");
    qemu_initrd(&a.initrd, &initrd_q)?;
    if !reset_counters() {
        eprintln!("krun-boot-bench: no kvm tracepoints in {TRACEFS}; exit counts are n/a");
    }
    let ram = a.ram_mib.to_string();
    let ours = || {
        let mut c = Command::new(&a.vmm);
        c.arg("--kernel")
            .arg(&a.kernel)
            .arg("--initrd")
            .arg(&a.initrd)
            .arg("--root")
            .arg(&a.root)
            .args(["--vcpus", "1", "--ram-mib", &ram, "--stats"]);
        c
    };
    let drive = format!("file={},format=raw,if=none,id=root", a.root.display());
    let qemu = || {
        let mut c = Command::new(&a.qemu);
        c.args(["-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host"])
            .args(["-m", &ram, "-smp", "1", "-nodefaults", "-no-user-config"])
            .args([
                "-nographic",
                "-no-reboot",
                "-serial",
                "none",
                "-monitor",
                "none",
            ])
            .arg("-kernel")
            .arg(&a.kernel)
            .arg("-initrd")
            .arg(&initrd_q)
            .args(["-append", CMDLINE])
            // Device order as in our VMM: root disk, console, vsock.
            .args(["-drive", &drive, "-device", "virtio-blk-device,drive=root"])
            .args(["-chardev", "stdio,id=con,signal=off"])
            .args([
                "-device",
                "virtio-serial-device",
                "-device",
                "virtconsole,chardev=con",
            ])
            .args(["-device", "vhost-vsock-device,guest-cid=3"]);
        c
    };
    // One unmeasured boot each warms caches; then the two alternate so drift hits both.
    run_once(&mut ours(), &a.marker)?;
    run_once(&mut qemu(), &a.marker)?;
    let (mut o, mut q) = (Vec::new(), Vec::new());
    for i in 0..a.runs {
        let so = run_once(&mut ours(), &a.marker)?;
        let sq = run_once(&mut qemu(), &a.marker)?;
        let kvm = |s: &Sample| s.kvm.as_ref().map_or("n/a".into(), |k| format!("{}", k[0]));
        eprintln!(
            "run {}: ours {:.0}/{:.0} ms exits {} (own {}), qemu {:.0}/{:.0} ms exits {}",
            i + 1,
            ms(so.to_marker),
            ms(so.process),
            kvm(&so),
            so.own_exits.map_or("n/a".into(), |n| n.to_string()),
            ms(sq.to_marker),
            ms(sq.process),
            kvm(&sq)
        );
        o.push(so);
        q.push(sq);
    }
    println!(
        "medians of {} runs each (1 vCPU, {} MiB)",
        a.runs, a.ram_mib
    );
    println!(
        "| {:<32} | {:>10} | {:>10} | {:>9} |",
        "", "ours", "qemu", "ours/qemu"
    );
    println!("|{:-<34}|{:->12}|{:->12}|{:->11}|", "", "", "", "");
    row("boot-to-workload marker (ms)", &o, &q, |s| {
        Some(ms(s.to_marker))
    });
    row("process wall time (ms)", &o, &q, |s| Some(ms(s.process)));
    for (i, (event, _)) in EVENTS.iter().enumerate() {
        row(&format!("{event} (tracepoint)"), &o, &q, |s| {
            s.kvm.as_ref().and_then(|k| k.get(i)).map(|&n| n as f64)
        });
    }
    row("KVM_RUN exits (VMM's own count)", &o, &q, |s| {
        s.own_exits.map(|n| n as f64)
    });
    for (name, samples) in [("ours", &o), ("qemu", &q)] {
        if let Some(last) = samples.last() {
            let top: Vec<String> = last
                .reasons
                .iter()
                .take(8)
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            println!("kvm_exit by reason, last {name} run: {}", top.join(", "));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("krun-boot-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
