//! Running the outer QEMU with a deadline and capturing its console.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::initramfs::KVM_AMD_PARAMS;

pub struct QemuRun<'a> {
    pub qemu: &'a str,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub mem_mib: u32,
    pub timeout: Duration,
    pub verbose: bool,
}

pub struct QemuResult {
    pub console: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// Kernel command line of the test host. The kvm_amd parameters are also passed to insmod;
/// here they document the setup in /proc/cmdline.
///
/// Under TCG the guest TSC runs at the host TSC rate, and on a busy host the kernel's PIT
/// calibration fails (microvm has no HPET or PM timer to fall back on); the kernel then marks
/// the TSC unstable and hangs early in boot (seen in about 1 of 5 boots). Passing the host's
/// frequency as tsc_early_khz skips that calibration.
fn cmdline(tsc_khz: Option<u64>) -> String {
    let amd: Vec<String> = KVM_AMD_PARAMS
        .split(' ')
        .map(|p| format!("kvm_amd.{p}"))
        .collect();
    let tsc = tsc_khz
        .map(|khz| format!(" tsc_early_khz={khz}"))
        .unwrap_or_default();
    format!(
        "console=ttyS0 reboot=t panic=-1 quiet{tsc} {}",
        amd.join(" ")
    )
}

/// The host CPU frequency in kHz from /proc/cpuinfo ("cpu MHz : 2596.120").
fn host_tsc_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz = line.split(':').nth(1)?.trim();
    let (whole, frac) = mhz.split_once('.').unwrap_or((mhz, "0"));
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
    let khz = whole
        .parse::<u64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(frac.parse().ok()?)?;
    (khz > 0).then_some(khz)
}

fn host_cpuinfo() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo").ok()
}

/// Runs the test host to completion or until the deadline, whichever comes first.
pub fn run(spec: &QemuRun<'_>) -> std::io::Result<QemuResult> {
    // One vCPU: with -smp 2 (multi-threaded TCG) the nested vCPU hangs (ARCHITECTURE.md §4).
    let mut child = Command::new(spec.qemu)
        .args([
            "-M",
            "microvm",
            "-accel",
            "tcg",
            "-cpu",
            "EPYC,+svm",
            "-smp",
            "1",
        ])
        .args(["-m", &spec.mem_mib.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(spec.kernel)
        .arg("-initrd")
        .arg(spec.initramfs)
        .args([
            "-append",
            &cmdline(host_cpuinfo().as_deref().and_then(host_tsc_khz)),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;

    let console = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take();
    let verbose = spec.verbose;
    let console_sink = Arc::clone(&console);
    let console_reader = std::thread::spawn(move || {
        let Some(mut stdout) = stdout else { return };
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            if verbose {
                eprint!("{}", String::from_utf8_lossy(&buf[..n]));
            }
            if let Ok(mut console) = console_sink.lock() {
                console.extend_from_slice(&buf[..n]);
            }
        }
    });
    let stderr = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || {
        let mut data = Vec::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_end(&mut data);
        }
        data
    });

    let deadline = Instant::now() + spec.timeout;
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            child.wait()?;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = console_reader.join();
    let stderr = stderr_reader.join().unwrap_or_default();
    let console = console.lock().map(|c| c.clone()).unwrap_or_default();
    Ok(QemuResult {
        console,
        stderr,
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_carries_console_and_kvm_amd_parameters() {
        let line = cmdline(Some(2_596_120));
        assert!(line.starts_with("console=ttyS0 reboot=t panic=-1"));
        assert!(line.contains(" tsc_early_khz=2596120 "));
        assert!(!cmdline(None).contains("tsc_early_khz"));
        assert!(line.contains("kvm_amd.npt=0"));
        assert!(line.contains("kvm_amd.nested=0"));
    }

    #[test]
    fn parses_cpu_mhz() {
        assert_eq!(
            host_tsc_khz("processor : 0\ncpu MHz\t\t: 2596.120\n"),
            Some(2_596_120)
        );
        assert_eq!(host_tsc_khz("cpu MHz : 3000\n"), Some(3_000_000));
        assert_eq!(host_tsc_khz("cpu MHz : 1999.9\n"), Some(1_999_900));
        assert_eq!(host_tsc_khz("no frequency here\n"), None);
        assert_eq!(host_tsc_khz("cpu MHz : garbage\n"), None);
    }
}
