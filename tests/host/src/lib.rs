//! The nested-KVM test host (issue 3, ARCHITECTURE.md §4).
//!
//! `qemu-system-x86_64 -accel tcg -cpu EPYC,+svm` boots Debian's stock cloud kernel with a
//! one-vCPU microVM; inside it `/dev/kvm` is real nested KVM (kvm-amd loaded with the
//! parameters in [`initramfs::KVM_AMD_PARAMS`]). Files and the command go in through the
//! initramfs, results come back over the serial console between per-run markers.
//!
//! ```no_run
//! use std::time::Duration;
//! let outcome = krun_testhost::TestHost::new()
//!     .mem_mib(2048)
//!     .file("/usr/bin/true", "/usr/bin/true")
//!     .timeout(Duration::from_secs(60))
//!     .run(&["/usr/bin/true"])?;
//! assert_eq!(outcome.status, 0);
//! # Ok::<(), krun_testhost::TestHostError>(())
//! ```

pub mod bench;
pub mod console;
pub mod initramfs;
pub mod ldd;
mod qemu;
pub mod rootfs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use console::ConsoleResult;
pub use initramfs::{FileSpec, InitramfsError, KVM_AMD_PARAMS};
pub use rootfs::{
    busybox_rootfs, ext4_image, krun_kbs_bin, krun_sev_bin, workspace_bin, RootfsError,
};

/// Overrides the asset directory (otherwise `prepare.sh` provides it).
pub const ASSETS_ENV: &str = "KRUN_TESTHOST_ASSETS";
/// Set to 1 to echo the test host console to stderr while it runs.
pub const VERBOSE_ENV: &str = "KRUN_TESTHOST_VERBOSE";
/// Console lines included in failure reports.
const REPORT_LINES: usize = 40;

/// Errors from a test host run. A command that exits non-zero is not an error: see
/// [`Outcome::status`].
#[derive(Debug, thiserror::Error)]
pub enum TestHostError {
    #[error("cannot prepare the test host assets (tests/host/prepare.sh)")]
    Prepare(#[source] std::io::Error),
    #[error("tests/host/prepare.sh failed: {stderr}")]
    PrepareFailed { stderr: String },
    #[error("cannot build the test host initramfs")]
    Initramfs(#[source] InitramfsError),
    #[error("cannot write the test host initramfs {path}")]
    WriteInitramfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {qemu}")]
    Qemu {
        qemu: String,
        source: std::io::Error,
    },
    #[error("the test host did not finish within {timeout:?}; last console lines:\n{last_lines}")]
    Timeout {
        timeout: Duration,
        last_lines: String,
    },
    #[error("the test host could not set itself up; last console lines:\n{last_lines}")]
    SetupFailed { last_lines: String },
    #[error("the test host stopped without reporting the command's exit status; last console lines:\n{last_lines}")]
    NoResult { last_lines: String },
}

/// The result of running a command in the test host.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command's exit status (128+N when killed by signal N).
    pub status: i32,
    /// The command's stdout and stderr, as they appeared on the console.
    pub output: String,
    /// The whole console, kernel messages included.
    pub console: String,
    /// From starting QEMU to its exit.
    pub wall_time: Duration,
}

/// A test host run under construction.
#[derive(Debug, Clone)]
pub struct TestHost {
    mem_mib: u32,
    files: Vec<FileSpec>,
    timeout: Duration,
    qemu: String,
    verbose: bool,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// 2 GiB of memory, a 120 s timeout, `qemu-system-x86_64` from PATH.
    pub fn new() -> Self {
        Self {
            mem_mib: 2048,
            files: Vec::new(),
            timeout: Duration::from_secs(120),
            qemu: "qemu-system-x86_64".to_owned(),
            verbose: std::env::var(VERBOSE_ENV).is_ok_and(|v| v == "1"),
        }
    }

    /// Test host memory in MiB (the initramfs lives in it too).
    pub fn mem_mib(mut self, mem_mib: u32) -> Self {
        self.mem_mib = mem_mib;
        self
    }

    /// Copies a host file or directory (recursively) to an absolute path in the test host.
    /// ELF files bring the shared libraries `ldd` finds for them.
    pub fn file(mut self, host: impl AsRef<Path>, guest: &str) -> Self {
        self.files.push(FileSpec {
            host: host.as_ref().to_path_buf(),
            guest: guest.to_owned(),
        });
        self
    }

    /// Kills the test host after this long and reports a failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The QEMU binary that runs the test host.
    pub fn qemu(mut self, qemu: &str) -> Self {
        self.qemu = qemu.to_owned();
        self
    }

    /// Echo the console to stderr while the test host runs.
    pub fn verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }

    /// Boots the test host, runs `command` (searched in PATH inside it) and returns its
    /// status and output. Prints the run's wall time to stderr.
    pub fn run<S: AsRef<str>>(&self, command: &[S]) -> Result<Outcome, TestHostError> {
        let command: Vec<String> = command.iter().map(|a| a.as_ref().to_owned()).collect();
        let assets = assets_dir()?;
        let nonce = nonce();
        let archive = initramfs::build(&initramfs::InitramfsSpec {
            assets: &assets,
            files: &self.files,
            command: &command,
            nonce: &nonce,
        })
        .map_err(TestHostError::Initramfs)?;
        let initramfs = std::env::temp_dir().join(format!("krun-testhost-{nonce}.cpio"));
        std::fs::write(&initramfs, &archive).map_err(|source| TestHostError::WriteInitramfs {
            path: initramfs.clone(),
            source,
        })?;
        drop(archive);

        let start = Instant::now();
        let result = qemu::run(&qemu::QemuRun {
            qemu: &self.qemu,
            kernel: &assets.join("vmlinuz"),
            initramfs: &initramfs,
            mem_mib: self.mem_mib,
            timeout: self.timeout,
            verbose: self.verbose,
        });
        let wall_time = start.elapsed();
        let _ = std::fs::remove_file(&initramfs);
        eprintln!(
            "[testhost] {:?}: {:.1} s wall",
            command.join(" "),
            wall_time.as_secs_f64()
        );

        let run = result.map_err(|source| TestHostError::Qemu {
            qemu: self.qemu.clone(),
            source,
        })?;
        let console = console::normalize(&run.console);
        let last_lines = || {
            let mut text = console::last_lines(&console, REPORT_LINES);
            let stderr = String::from_utf8_lossy(&run.stderr);
            if !stderr.trim().is_empty() {
                text.push_str(&format!(
                    "\n[qemu stderr]\n{}",
                    console::last_lines(&stderr, 10)
                ));
            }
            text
        };
        if run.timed_out {
            return Err(TestHostError::Timeout {
                timeout: self.timeout,
                last_lines: last_lines(),
            });
        }
        match console::parse(&console, &nonce) {
            ConsoleResult::Finished { status, output } => Ok(Outcome {
                status,
                output,
                console,
                wall_time,
            }),
            ConsoleResult::SetupFailed => Err(TestHostError::SetupFailed {
                last_lines: last_lines(),
            }),
            ConsoleResult::Incomplete => Err(TestHostError::NoResult {
                last_lines: last_lines(),
            }),
        }
    }
}

/// The guest bundle the guest-boot tests use: `$KRUN_SEV_BUNDLE_DIR`, else the checkout's
/// `build/bundle` (what `firmware/build-bundle.sh` writes by default).
fn test_bundle_dir() -> PathBuf {
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../build/bundle");
    krun_bundle::bundle_dir(&default)
}

/// [`test_bundle_dir`] with its bundle loaded and checked (manifest sizes and hashes). A
/// guest-boot test cannot run without it, so a missing or stale bundle fails the calling test
/// with what to do.
#[track_caller]
pub fn test_bundle() -> (PathBuf, krun_bundle::Bundle) {
    let dir = test_bundle_dir();
    match krun_bundle::Bundle::load(&dir) {
        Ok(bundle) => (dir, bundle),
        Err(e) => panic!(
            "no valid guest bundle in {} ({e}); build it with firmware/build-bundle.sh or set {}",
            dir.display(),
            krun_bundle::BUNDLE_DIR_ENV
        ),
    }
}

/// The values of every output line starting with `key` (`KEY=value` markers the guest-boot
/// tests print), with carriage returns from the console removed.
pub fn marker_values<'a>(output: &'a str, key: &str) -> Vec<&'a str> {
    output
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .collect()
}

/// What follows `key` on each output line containing it (log lines carry a prefix), with
/// carriage returns from the console removed.
pub fn after<'a>(output: &'a str, key: &str) -> Vec<&'a str> {
    output
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once(key).map(|(_, v)| v))
        .collect()
}

/// The hex digests the launches in `output` logged for `mode` (`sev`, `sev-es`, `snp`): the
/// VMM's `launch measurement (MODE, ..., vcpu_sig ...): HEX` lines.
pub fn launch_measurements<'a>(output: &'a str, mode: &str) -> Vec<&'a str> {
    after(output, &format!("launch measurement ({mode}, "))
        .into_iter()
        .filter(|l| l.contains("vcpu_sig"))
        .filter_map(|l| l.rsplit_once("): ").map(|(_, m)| m.trim()))
        .collect()
}

/// The asset directory: `$KRUN_TESTHOST_ASSETS`, or what `prepare.sh` prints (it downloads
/// and caches the Debian packages on first use).
pub fn assets_dir() -> Result<PathBuf, TestHostError> {
    if let Some(dir) = std::env::var_os(ASSETS_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("prepare.sh");
    let output = std::process::Command::new(&script)
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(TestHostError::Prepare)?;
    if !output.status.success() {
        return Err(TestHostError::PrepareFailed {
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// A per-run marker nonce: unique per process and call.
fn nonce() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{:x}-{:x}-{count}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
    }

    #[test]
    fn builder_records_settings() {
        let host = TestHost::new()
            .mem_mib(512)
            .file("/a", "/b")
            .timeout(Duration::from_secs(5))
            .qemu("q");
        assert_eq!(host.mem_mib, 512);
        assert_eq!(host.files.len(), 1);
        assert_eq!(host.timeout, Duration::from_secs(5));
        assert_eq!(host.qemu, "q");
    }

    #[test]
    fn missing_qemu_is_a_clear_error() {
        let assets = tempfile::tempdir().unwrap();
        std::fs::write(assets.path().join("busybox"), b"").unwrap();
        std::fs::write(assets.path().join("modules.order"), b"").unwrap();
        std::env::set_var(ASSETS_ENV, assets.path());
        let err = TestHost::new()
            .qemu("/nonexistent/qemu")
            .run(&["true"])
            .unwrap_err();
        std::env::remove_var(ASSETS_ENV);
        assert!(matches!(err, TestHostError::Qemu { .. }), "{err:?}");
    }
}
