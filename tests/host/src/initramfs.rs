//! The test host's initramfs: busybox as the shell, the kernel modules the tests need, an
//! init script that reports through console markers, the requested files and the shared
//! libraries they need. Written uncompressed: unpacking is faster than gunzip under TCG.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use krun_bundle::{CpioArchive, CpioError};

use crate::console;
use crate::ldd::{self, LddError};

/// kvm_amd parameters under which nested KVM works in QEMU TCG (ARCHITECTURE.md §4; without
/// npt=0 the inner vCPU hangs).
pub const KVM_AMD_PARAMS: &str = "npt=0 vls=0 vgif=0 avic=0 lbrv=0 pause_filter_count=0 nested=0";

/// Errors from composing the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("test host path {path:?} must be absolute")]
    RelativeGuestPath { path: String },
    #[error("cannot add {path} to the initramfs")]
    Archive { path: String, source: CpioError },
    #[error("cannot find the shared libraries of a test host file")]
    Libraries(#[source] LddError),
}

/// A host file or directory to copy into the test host.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub host: PathBuf,
    pub guest: String,
}

/// Everything one test host run needs in its initramfs.
#[derive(Debug)]
pub struct InitramfsSpec<'a> {
    pub assets: &'a Path,
    pub files: &'a [FileSpec],
    pub command: &'a [String],
    pub nonce: &'a str,
}

/// Builds the uncompressed newc archive.
pub fn build(spec: &InitramfsSpec<'_>) -> Result<Vec<u8>, InitramfsError> {
    let mut builder = Builder {
        archive: CpioArchive::new(),
        added: BTreeSet::new(),
    };
    for dir in ["dev", "proc", "sys", "root", "tmp", "run", "etc"] {
        builder.dir(dir)?;
    }
    // Requested files first: they win over anything the test host adds at the same path.
    let mut elves = Vec::new();
    for file in spec.files {
        let guest =
            file.guest
                .strip_prefix('/')
                .ok_or_else(|| InitramfsError::RelativeGuestPath {
                    path: file.guest.clone(),
                })?;
        builder.copy_tree(&file.host, guest, &mut elves)?;
    }
    for host in elves {
        for library in ldd::shared_libraries(&host).map_err(InitramfsError::Libraries)? {
            let guest = library.to_string_lossy().trim_start_matches('/').to_owned();
            if !builder.added.contains(&guest) {
                let data = read(&library)?;
                builder.file(&guest, 0o755, data)?;
            }
        }
    }
    builder.file("bin/busybox", 0o755, read(&spec.assets.join("busybox"))?)?;
    let order = String::from_utf8_lossy(&read(&spec.assets.join("modules.order"))?).into_owned();
    let modules: Vec<&str> = order.split_whitespace().collect();
    for module in &modules {
        let path = spec.assets.join("modules").join(format!("{module}.ko"));
        builder.file(
            &format!("testhost/modules/{module}.ko"),
            0o644,
            read(&path)?,
        )?;
    }
    builder.file(
        "testhost/command.sh",
        0o755,
        command_script(spec.command).into_bytes(),
    )?;
    builder.file(
        "init",
        0o755,
        init_script(&modules, spec.nonce).into_bytes(),
    )?;
    Ok(builder.archive.to_bytes())
}

struct Builder {
    archive: CpioArchive,
    added: BTreeSet<String>,
}

impl Builder {
    fn dir(&mut self, guest: &str) -> Result<(), InitramfsError> {
        if self.added.insert(guest.to_owned()) {
            self.archive
                .add_dir(guest, 0o755)
                .map_err(|source| InitramfsError::Archive {
                    path: guest.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    fn file(&mut self, guest: &str, mode: u32, data: Vec<u8>) -> Result<(), InitramfsError> {
        self.added.insert(guest.to_owned());
        self.archive
            .add_file(guest, mode, data)
            .map_err(|source| InitramfsError::Archive {
                path: guest.to_owned(),
                source,
            })
    }

    /// Copies a file, or a directory recursively (following symlinks), collecting ELF files
    /// whose libraries must come along.
    fn copy_tree(
        &mut self,
        host: &Path,
        guest: &str,
        elves: &mut Vec<PathBuf>,
    ) -> Result<(), InitramfsError> {
        let meta = std::fs::metadata(host).map_err(|source| InitramfsError::Read {
            path: host.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            self.dir(guest)?;
            let entries = std::fs::read_dir(host).map_err(|source| InitramfsError::Read {
                path: host.to_path_buf(),
                source,
            })?;
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| InitramfsError::Read {
                    path: host.to_path_buf(),
                    source,
                })?;
                names.push(entry.file_name());
            }
            names.sort();
            for name in names {
                let child = format!("{guest}/{}", name.to_string_lossy());
                self.copy_tree(&host.join(&name), &child, elves)?;
            }
            return Ok(());
        }
        let data = read(host)?;
        if ldd::is_elf(&data) {
            elves.push(host.to_path_buf());
        }
        self.file(guest, meta.permissions().mode() & 0o7777, data)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    std::fs::read(path).map_err(|source| InitramfsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Single-quotes `arg` for a POSIX shell.
pub fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

fn command_script(command: &[String]) -> String {
    let quoted: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    format!("#!/bin/sh\nexec {}\n", quoted.join(" "))
}

fn init_script(modules: &[&str], nonce: &str) -> String {
    let mut insmods = String::new();
    for module in modules {
        let params = if *module == "kvm-amd" || *module == "kvm_amd" {
            KVM_AMD_PARAMS
        } else {
            ""
        };
        insmods.push_str(&format!(
            "insmod /testhost/modules/{module}.ko {params} || fail \"insmod {module}\"\n"
        ));
    }
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
fail() {{
    echo "test host setup failed: $1"
    echo "{setup_failed}"
    reboot -f
}}
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
{insmods}ip link set lo up
# Only emergencies may interleave with the command's output.
dmesg -n 1
cd /root
echo "{begin}"
sh /testhost/command.sh </dev/null
status=$?
echo "{end}$status@@"
sync
reboot -f
"#,
        setup_failed = console::setup_failed_marker(nonce),
        begin = console::begin_marker(nonce),
        end = console::end_marker_prefix(nonce),
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    fn fake_assets() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("busybox"), b"busybox").unwrap();
        std::fs::create_dir(dir.path().join("modules")).unwrap();
        for m in ["irqbypass", "kvm", "kvm-amd"] {
            std::fs::write(
                dir.path().join("modules").join(format!("{m}.ko")),
                m.as_bytes(),
            )
            .unwrap();
        }
        std::fs::write(
            dir.path().join("modules.order"),
            "irqbypass\nkvm\nkvm-amd\n",
        )
        .unwrap();
        dir
    }

    fn list(archive: &[u8]) -> Vec<String> {
        let mut child = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("GNU cpio is installed");
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn holds_init_busybox_modules_files_and_their_libraries() {
        let assets = fake_assets();
        let files = [
            FileSpec {
                host: PathBuf::from("/bin/sh"),
                guest: "/usr/local/bin/hostsh".into(),
            },
            FileSpec {
                host: PathBuf::from("/etc/hostname"),
                guest: "/data/h".into(),
            },
        ];
        let command = vec!["hostsh".to_owned(), "-c".to_owned(), "echo 'hi'".to_owned()];
        let spec = InitramfsSpec {
            assets: assets.path(),
            files: &files,
            command: &command,
            nonce: "n1",
        };
        let names = list(&build(&spec).unwrap());
        for wanted in [
            "init",
            "bin/busybox",
            "testhost/command.sh",
            "testhost/modules/kvm-amd.ko",
            "usr/local/bin/hostsh",
            "data/h",
            "dev",
            "proc",
            "sys",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing from {names:?}"
            );
        }
        let libs = ldd::shared_libraries(Path::new("/bin/sh")).unwrap();
        for lib in libs {
            let guest = lib.to_string_lossy().trim_start_matches('/').to_owned();
            assert!(names.contains(&guest), "{guest} missing");
        }
    }

    #[test]
    fn init_loads_modules_in_order_with_kvm_amd_parameters() {
        let script = init_script(&["irqbypass", "kvm", "kvm-amd"], "n2");
        let irq = script
            .find("insmod /testhost/modules/irqbypass.ko")
            .unwrap();
        let kvm = script.find("insmod /testhost/modules/kvm.ko").unwrap();
        let amd = script
            .find(&format!(
                "insmod /testhost/modules/kvm-amd.ko {KVM_AMD_PARAMS}"
            ))
            .unwrap();
        assert!(irq < kvm && kvm < amd);
        assert!(script.contains("@@KRUN_TESTHOST_BEGIN n2@@"));
        assert!(script.contains("@@KRUN_TESTHOST_END n2 status=$status@@"));
    }

    #[test]
    fn command_is_quoted_for_the_shell() {
        let command = vec!["echo".to_owned(), "it's $HOME".to_owned(), "a b".to_owned()];
        let script = command_script(&command);
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "it's $HOME a b\n");
    }

    #[test]
    fn relative_guest_path_and_missing_file_are_errors() {
        let assets = fake_assets();
        let command = vec!["true".to_owned()];
        let relative = [FileSpec {
            host: PathBuf::from("/etc/hostname"),
            guest: "x".into(),
        }];
        let spec = InitramfsSpec {
            assets: assets.path(),
            files: &relative,
            command: &command,
            nonce: "n",
        };
        assert!(matches!(
            build(&spec),
            Err(InitramfsError::RelativeGuestPath { .. })
        ));
        let missing = [FileSpec {
            host: PathBuf::from("/nonexistent/file"),
            guest: "/x".into(),
        }];
        let spec = InitramfsSpec {
            assets: assets.path(),
            files: &missing,
            command: &command,
            nonce: "n",
        };
        assert!(matches!(build(&spec), Err(InitramfsError::Read { .. })));
    }
}
