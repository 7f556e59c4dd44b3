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
//! Every line the VMM writes (stdout: the guest console; stderr: the VMM's log and the
//! guest's stderr stream) is stamped on arrival with the same clock; the per-phase trace is
//! the first line of each phase (our VMM's `boot phase ...` info lines, the init's
//! `KRUN_INIT_STARTED` and `root disk unlocked`, the workload's marker). The VMM's memory is
//! its resident set when the marker arrives, from `/proc/PID/smaps`, minus the guest RAM
//! mapping's `Rss` (the mapping of the guest RAM size; the same method for QEMU).
//!
//! With `--tee-disk`, two more VMMs boot in each round: our VMM on that LUKS disk without a
//! TEE (the development passphrase in host.json), and `krun-sev run` on the same disk as a
//! confidential SNP launch with the PSP model (`KRUN_SEV_BACKEND=model`, the bundle
//! directory and model identity given here; the caller runs the key broker the image names);
//! their ratio is the cost of the confidential launch. Only that command gets the model's
//! environment: the library loads the model identity when it is loaded with the model
//! backend (hundreds of ms under TCG), which a launch without a TEE must not pay.
//!
//! usage: krun-boot-bench --kernel BZIMAGE --initrd INITRD --root DISK --vmm KRUN_VMM_BOOT
//!        --qemu QEMU [--runs N] [--marker TEXT] [--ram-mib M]
//!        [--tee-disk DISK --tee-config JSON --krun-sev KRUN_SEV --dev-passphrase TEXT
//!         --bundle-dir DIR --psp-model-dir DIR]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use krun_testhost::bench::{median, BenchGuest};

/// tracefs (the caller mounts it).
const TRACEFS: &str = "/sys/kernel/tracing";
/// The tracepoints counted and the key of each one's histogram: every exit from guest mode,
/// and the exits that return to the VMM in user space.
const EVENTS: &[(&str, &str)] = &[
    ("kvm_exit", "exit_reason"),
    ("kvm_userspace_exit", "reason"),
];
/// The library's environment for the model backend (`settings`), set only for `ours-snp`.
const TEE_ENV: [&str; 3] = [
    "KRUN_SEV_BACKEND",
    "KRUN_SEV_BUNDLE_DIR",
    "KRUN_SEV_PSP_MODEL_DIR",
];

struct Args {
    guest: BenchGuest,
    runs: usize,
    marker: String,
    /// The confidential comparison (all four set, or none).
    tee: Option<TeeArgs>,
}

struct TeeArgs {
    disk: PathBuf,
    config: PathBuf,
    krun_sev: PathBuf,
    dev_passphrase: String,
    bundle_dir: PathBuf,
    psp_model_dir: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        guest: BenchGuest::default(),
        runs: 5,
        marker: "BENCH_WORKLOAD_DONE".into(),
        tee: None,
    };
    let (mut tee_disk, mut tee_config, mut krun_sev, mut dev_passphrase) = (None, None, None, None);
    let (mut bundle_dir, mut psp_model_dir) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        if a.guest.take_flag(&flag, &mut value)? {
            continue;
        }
        match flag.as_str() {
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--marker" => a.marker = value()?,
            "--tee-disk" => tee_disk = Some(PathBuf::from(value()?)),
            "--tee-config" => tee_config = Some(PathBuf::from(value()?)),
            "--krun-sev" => krun_sev = Some(PathBuf::from(value()?)),
            "--dev-passphrase" => dev_passphrase = Some(value()?),
            "--bundle-dir" => bundle_dir = Some(PathBuf::from(value()?)),
            "--psp-model-dir" => psp_model_dir = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    a.tee = match (
        tee_disk,
        tee_config,
        krun_sev,
        dev_passphrase,
        bundle_dir,
        psp_model_dir,
    ) {
        (
            Some(disk),
            Some(config),
            Some(krun_sev),
            Some(dev_passphrase),
            Some(bundle_dir),
            Some(psp_model_dir),
        ) => Some(TeeArgs {
            disk,
            config,
            krun_sev,
            dev_passphrase,
            bundle_dir,
            psp_model_dir,
        }),
        (None, None, None, None, None, None) => None,
        _ => return Err("--tee-disk, --tee-config, --krun-sev, --dev-passphrase, --bundle-dir and --psp-model-dir go together".into()),
    };
    a.guest.check()?;
    if a.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(a)
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

/// Resident memory of a VMM process when the marker arrived (`/proc/PID/smaps`), KiB.
#[derive(Clone, Copy)]
struct Rss {
    /// Every mapping's `Rss`.
    total: u64,
    /// The `Rss` of the guest RAM mapping(s): mappings of the guest RAM size (up to 4 MiB
    /// more, for alignment); ROM and firmware regions stay in the VMM's figure.
    guest: u64,
}

/// The VMM's resident memory from the text of `/proc/PID/smaps`; `ram_kib` is the guest RAM
/// size. None if there is no mapping of that size (the method would count guest RAM).
fn parse_smaps(smaps: &str, ram_kib: u64) -> Option<Rss> {
    let kib = |l: &str, key: &str| -> Option<u64> {
        l.strip_prefix(key)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    };
    let (mut total, mut guest, mut found) = (0, 0, false);
    let mut in_guest = false;
    for l in smaps.lines() {
        // A mapping's header: "start-end perms offset dev inode [path]".
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_guest = false;
        } else if let Some(size) = kib(l, "Size:") {
            in_guest = (ram_kib..=ram_kib + 4096).contains(&size);
            found |= in_guest;
        } else if let Some(rss) = kib(l, "Rss:") {
            total += rss;
            if in_guest {
                guest += rss;
            }
        }
    }
    found.then_some(Rss { total, guest })
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn read_rss(pid: u32, ram_kib: u64) -> Option<Rss> {
    parse_smaps(
        &std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?,
        ram_kib,
    )
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
    /// Every output line (stdout and stderr) with its arrival time.
    lines: Vec<(Duration, String)>,
    /// Resident memory when the marker arrived.
    rss: Option<Rss>,
}

/// One output line: arrival time, from stderr, text.
type Line = (Instant, bool, String);

fn forward(stream: impl Read, is_err: bool, tx: mpsc::Sender<Line>) {
    for line in BufReader::new(stream).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        if tx.send((Instant::now(), is_err, text)).is_err() {
            break;
        }
    }
}

fn run_once(cmd: &mut Command, marker: &str, ram_kib: u64) -> Result<Sample, String> {
    let tracing = reset_counters();
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let tx_err = tx.clone();
    let readers = [
        std::thread::spawn(move || forward(stdout, false, tx)),
        std::thread::spawn(move || forward(stderr, true, tx_err)),
    ];
    let mut to_marker = None;
    let mut rss = None;
    let mut lines = Vec::new();
    let (mut output, mut errors) = (String::new(), String::new());
    // Ends when both pipes are closed (the VMM and anything holding its pipes exited).
    for (at, is_err, text) in rx {
        if to_marker.is_none() && text.contains(marker) {
            to_marker = Some(at.duration_since(start));
            rss = read_rss(child.id(), ram_kib);
        }
        let out = if is_err { &mut errors } else { &mut output };
        out.push_str(&text);
        out.push('\n');
        lines.push((at.duration_since(start), text));
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let process = start.elapsed();
    for r in readers {
        let _ = r.join();
    }
    let kvm = if tracing { read_counters() } else { None };
    let reasons = if tracing { exit_reasons() } else { Vec::new() };
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
        lines,
        rss,
    })
}

fn med<F: Fn(&Sample) -> Option<f64>>(s: &[Sample], f: F) -> Option<f64> {
    let v: Option<Vec<f64>> = s.iter().map(f).collect();
    v.map(median)
}

fn cell(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.0}"))
}

/// The head of a table of [`row`]s comparing `left` with `right`.
fn header(left: &str, right: &str, ratio: &str) {
    println!("| {:<36} | {left:>10} | {right:>10} | {ratio:>9} |", "");
    println!("|{:-<38}|{:->12}|{:->12}|{:->11}|", "", "", "", "");
}

fn row<F: Fn(&Sample) -> Option<f64> + Copy>(name: &str, ours: &[Sample], qemu: &[Sample], f: F) {
    let (o, q) = (med(ours, f), med(qemu, f));
    let ratio = o
        .zip(q)
        .map_or("n/a".into(), |(o, q)| format!("{:.2}", o / q));
    println!(
        "| {name:<36} | {:>10} | {:>10} | {ratio:>9} |",
        cell(o),
        cell(q)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The phases of the trace: a name and the texts whose first line marks it.
fn phases(marker: &str) -> Vec<(&'static str, Vec<String>)> {
    let v = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        ("VMM start (Vmm::run entered)", v(&["boot phase vmm start"])),
        (
            "guest RAM mapped, kernel read, VM created",
            v(&["boot phase vm created"]),
        ),
        ("devices attached", v(&["boot phase devices attached"])),
        ("image loaded", v(&["boot phase loaded"])),
        (
            "launch done (measured) / vCPUs set up",
            v(&[
                "boot phase launched (measured)",
                "boot phase vcpus configured",
            ]),
        ),
        (
            "guest entry (vCPU threads run)",
            v(&["boot phase guest entry"]),
        ),
        ("init start (KRUN_INIT_STARTED)", v(&["KRUN_INIT_STARTED"])),
        // The init prints this at the start of its unlock step in any guest without
        // /dev/sev-guest, so it also marks the LUKS boot without a TEE.
        (
            "unlock step starts (init)",
            v(&["asking the PSP model's report service"]),
        ),
        (
            "SNP: report requested (auth, TEE key)",
            v(&["SNP report requested"]),
        ),
        ("SNP: report signed (PSP model)", v(&["SNP report signed"])),
        (
            "SNP: key received (attest, key)",
            v(&["vsock: attestation finished"]),
        ),
        ("root disk unlocked", v(&["root disk unlocked"])),
        ("workload exec (its marker line)", vec![marker.to_owned()]),
    ]
}

/// When the first line containing one of `needles` arrived, in ms since spawning.
fn first_line(s: &Sample, needles: &[String]) -> Option<f64> {
    s.lines
        .iter()
        .find(|(_, l)| needles.iter().any(|n| l.contains(n.as_str())))
        .map(|(t, _)| ms(*t))
}

/// A VMM configuration in the comparison.
struct Variant {
    name: &'static str,
    what: String,
    cmd: Box<dyn Fn() -> Command>,
    samples: Vec<Sample>,
}

fn print_trace(variants: &[Variant], marker: &str) {
    println!();
    println!("per-phase trace: median ms from spawning the VMM to the first line of each phase, stamped on arrival (+ms after the previous phase shown)");
    let mut head = format!("| {:<40} |", "phase");
    let mut rule = format!("|{:-<42}|", "");
    for v in variants {
        head.push_str(&format!(" {:>16} |", v.name));
        rule.push_str(&format!("{:->18}|", ""));
    }
    println!("{head}");
    println!("{rule}");
    let mut prev: Vec<Option<f64>> = vec![Some(0.0); variants.len()];
    let mut rows: Vec<(&str, Vec<Option<f64>>)> = phases(marker)
        .into_iter()
        .map(|(name, needles)| {
            (
                name,
                variants
                    .iter()
                    .map(|v| med(&v.samples, |s| first_line(s, &needles)))
                    .collect(),
            )
        })
        .collect();
    rows.push((
        "VMM process exited",
        variants
            .iter()
            .map(|v| med(&v.samples, |s| Some(ms(s.process))))
            .collect(),
    ));
    for (name, cells) in rows {
        let mut line = format!("| {name:<40} |");
        for (i, c) in cells.iter().enumerate() {
            let text = match (c, prev[i]) {
                (Some(t), Some(p)) => format!("{t:.0} (+{:.0})", t - p),
                (Some(t), None) => format!("{t:.0}"),
                (None, _) => "-".to_owned(),
            };
            if c.is_some() {
                prev[i] = *c;
            }
            line.push_str(&format!(" {text:>16} |"));
        }
        println!("{line}");
    }
    for v in variants {
        println!("  {}: {}", v.name, v.what);
    }
}

fn run() -> Result<(), String> {
    let a = parse()?;
    let initrd_q = std::env::temp_dir().join("krun-boot-bench-initrd");
    a.guest.write_qemu_initrd(&initrd_q)?;
    if !reset_counters() {
        eprintln!("krun-boot-bench: no kvm tracepoints in {TRACEFS}; exit counts are n/a");
    }
    let ram = a.guest.ram_mib.to_string();
    let ram_kib = u64::from(a.guest.ram_mib) * 1024;
    let ours_cmd = {
        let (vmm, kernel, initrd, root, ram) = (
            a.guest.vmm.clone(),
            a.guest.kernel.clone(),
            a.guest.initrd.clone(),
            a.guest.root.clone(),
            ram.clone(),
        );
        move |root_disk: Option<&Path>, host_json: Option<&Path>| {
            let mut c = Command::new(&vmm);
            for k in TEE_ENV {
                c.env_remove(k);
            }
            c.arg("--kernel")
                .arg(&kernel)
                .arg("--initrd")
                .arg(&initrd)
                .arg("--root")
                .arg(root_disk.unwrap_or(&root))
                .args(["--vcpus", "1", "--ram-mib", &ram, "--stats"])
                .args(["--log-level", "3"]);
            if let Some(h) = host_json {
                c.arg("--host-json").arg(h);
            }
            c
        }
    };
    let guest = a.guest.clone();
    let qemu = move || {
        let mut c = guest.qemu_command(&initrd_q);
        for k in TEE_ENV {
            c.env_remove(k);
        }
        c
    };
    let mut variants = vec![
        Variant {
            name: "ours",
            what: "krun-vmm-boot, plain ext4 root, no TEE".into(),
            cmd: Box::new({
                let o = ours_cmd.clone();
                move || o(None, None)
            }),
            samples: Vec::new(),
        },
        Variant {
            name: "qemu",
            what: "qemu-system-x86_64 -M microvm, plain ext4 root".into(),
            cmd: Box::new(qemu),
            samples: Vec::new(),
        },
    ];
    if let Some(t) = &a.tee {
        let host_json = std::env::temp_dir().join("krun-boot-bench-host.json");
        let json = format!(
            r#"{{"format":1,"tee":"none","dev_passphrase":{},"port_map":[]}}"#,
            json_string(&t.dev_passphrase)
        );
        std::fs::write(&host_json, json).map_err(|e| format!("{}: {e}", host_json.display()))?;
        let disk = t.disk.clone();
        let o = ours_cmd.clone();
        variants.push(Variant {
            name: "ours-luks",
            what: "krun-vmm-boot, the SNP image's LUKS root, no TEE (development passphrase)"
                .into(),
            cmd: Box::new(move || o(Some(&disk), Some(&host_json))),
            samples: Vec::new(),
        });
        let (krun_sev, disk, config) = (t.krun_sev.clone(), t.disk.clone(), t.config.clone());
        let (bundle_dir, psp_model_dir) = (t.bundle_dir.clone(), t.psp_model_dir.clone());
        variants.push(Variant {
            name: "ours-snp",
            what: "krun-sev run, same LUKS root, SNP launch on the PSP model, key from the broker after in-guest attestation".into(),
            cmd: Box::new(move || {
                let mut c = Command::new(&krun_sev);
                c.env(TEE_ENV[0], "model")
                    .env(TEE_ENV[1], &bundle_dir)
                    .env(TEE_ENV[2], &psp_model_dir)
                    .arg("run")
                    .arg("--disk")
                    .arg(&disk)
                    .arg("--tee-config")
                    .arg(&config)
                    .args(["--log-level", "3"]);
                c
            }),
            samples: Vec::new(),
        });
    }
    // One unmeasured boot each warms caches; then they alternate so drift hits all.
    for v in &variants {
        run_once(&mut (v.cmd)(), &a.marker, ram_kib)?;
    }
    for i in 0..a.runs {
        let mut report = format!("run {}:", i + 1);
        for v in &mut variants {
            let s = run_once(&mut (v.cmd)(), &a.marker, ram_kib)?;
            report.push_str(&format!(
                " {} {:.0}/{:.0} ms exits {} rss {} KiB;",
                v.name,
                ms(s.to_marker),
                ms(s.process),
                s.kvm.as_ref().map_or("n/a".into(), |k| k[0].to_string()),
                s.rss
                    .map_or("n/a".into(), |r| (r.total - r.guest).to_string()),
            ));
            v.samples.push(s);
        }
        eprintln!("{report}");
    }
    let (o, q) = (&variants[0].samples, &variants[1].samples);
    println!(
        "medians of {} runs each (1 vCPU, {} MiB)",
        a.runs, a.guest.ram_mib
    );
    header("ours", "qemu", "ours/qemu");
    row("boot-to-workload marker (ms)", o, q, |s| {
        Some(ms(s.to_marker))
    });
    row("process wall time (ms)", o, q, |s| Some(ms(s.process)));
    row("VMM RSS without guest RAM (KiB)", o, q, |s| {
        s.rss.map(|r| (r.total - r.guest) as f64)
    });
    row("guest RAM mapping Rss (KiB)", o, q, |s| {
        s.rss.map(|r| r.guest as f64)
    });
    for (i, (event, _)) in EVENTS.iter().enumerate() {
        row(&format!("{event} (tracepoint)"), o, q, |s| {
            s.kvm.as_ref().and_then(|k| k.get(i)).map(|&n| n as f64)
        });
    }
    row("KVM_RUN exits (VMM's own count)", o, q, |s| {
        s.own_exits.map(|n| n as f64)
    });
    for v in &variants[..2] {
        if let Some(last) = v.samples.last() {
            let top: Vec<String> = last
                .reasons
                .iter()
                .take(8)
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            println!(
                "kvm_exit by reason, last {} run: {}",
                v.name,
                top.join(", ")
            );
        }
    }
    if variants.len() == 4 {
        let (n, c) = (&variants[2].samples, &variants[3].samples);
        println!();
        println!("confidential (SNP, PSP model) against non-confidential, same bundle and LUKS root disk");
        header("ours-snp", "ours-luks", "snp/luks");
        row("boot-to-workload marker (ms)", c, n, |s| {
            Some(ms(s.to_marker))
        });
        row("process wall time (ms)", c, n, |s| Some(ms(s.process)));
        row("VMM RSS without guest RAM (KiB)", c, n, |s| {
            s.rss.map(|r| (r.total - r.guest) as f64)
        });
        row("kvm_userspace_exit (tracepoint)", c, n, |s| {
            s.kvm.as_ref().and_then(|k| k.get(1)).map(|&n| n as f64)
        });
    }
    print_trace(&variants, &a.marker);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn smaps_guest_mapping_is_left_out() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 42 /bin/vmm
Size:               1024 kB
Rss:                 800 kB
Pss:                 800 kB
VmFlags: rd ex mr mw me dw
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:               40960 kB
VmFlags: rd wr mr mw me ac
7fff00000000-7fff00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
";
        let r = parse_smaps(smaps, 256 * 1024).unwrap();
        assert_eq!((r.total, r.guest), (800 + 40960 + 16, 40960));
        // No mapping of the RAM size: no figure rather than one that counts guest RAM.
        assert!(parse_smaps(smaps, 512 * 1024).is_none());
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a \"b\" \\ \n"), r#""a \"b\" \\ \u000a""#);
    }
}
