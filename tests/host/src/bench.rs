//! What the benchmarks run inside the test host share (`krun-boot-bench`, `krun-net-bench`):
//! the guest both VMMs boot, QEMU's `-M microvm` command for it, and medians.

use std::path::{Path, PathBuf};
use std::process::Command;

use krun_sev::launch::segment;

/// The guest command line both VMMs get (krun-vmm-boot's non-debug line).
pub const GUEST_CMDLINE: &str = "console=hvc0 quiet reboot=t panic=-1 acpi=off";
/// The launch segment is placed on the next page boundary after the bundle initrd.
const PAGE: usize = 4096;

/// The guest both VMMs boot (kernel, bundle initrd, raw root disk, RAM) and the two VMMs.
#[derive(Debug, Clone)]
pub struct BenchGuest {
    /// The bzImage.
    pub kernel: PathBuf,
    /// The bundle initrd (our VMM appends the launch segment in guest memory).
    pub initrd: PathBuf,
    /// The raw root disk.
    pub root: PathBuf,
    /// `krun-vmm-boot`.
    pub vmm: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// Guest RAM.
    pub ram_mib: u32,
}

impl Default for BenchGuest {
    fn default() -> Self {
        BenchGuest {
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            root: PathBuf::new(),
            vmm: PathBuf::new(),
            qemu: PathBuf::new(),
            ram_mib: 256,
        }
    }
}

impl BenchGuest {
    /// Takes `flag` if it is one of the guest's (`--kernel`, `--initrd`, `--root`, `--vmm`,
    /// `--qemu`, `--ram-mib`), with its value from `value`; false if it is another flag.
    pub fn take_flag(
        &mut self,
        flag: &str,
        value: impl FnOnce() -> Result<String, String>,
    ) -> Result<bool, String> {
        match flag {
            "--kernel" => self.kernel = value()?.into(),
            "--initrd" => self.initrd = value()?.into(),
            "--root" => self.root = value()?.into(),
            "--vmm" => self.vmm = value()?.into(),
            "--qemu" => self.qemu = value()?.into(),
            "--ram-mib" => {
                self.ram_mib = value()?.parse().map_err(|e| format!("--ram-mib: {e}"))?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Fails when a path was not given.
    pub fn check(&self) -> Result<(), String> {
        for (name, p) in [
            ("--kernel", &self.kernel),
            ("--initrd", &self.initrd),
            ("--root", &self.root),
            ("--vmm", &self.vmm),
            ("--qemu", &self.qemu),
        ] {
            if p.as_os_str().is_empty() {
                return Err(format!("{name} is required"));
            }
        }
        Ok(())
    }

    /// Writes the bundle initrd with the launch segment krun-vmm-boot builds, as one file
    /// for QEMU.
    pub fn write_qemu_initrd(&self, out: &Path) -> Result<(), String> {
        let initrd = &self.initrd;
        let mut bytes = std::fs::read(initrd).map_err(|e| format!("{}: {e}", initrd.display()))?;
        let seg = segment::build(br#"{"format":1,"tee":"none","port_map":[]}"#)
            .map_err(|e| format!("launch segment: {e}"))?;
        bytes.resize(bytes.len().div_ceil(PAGE) * PAGE, 0);
        bytes.extend_from_slice(&seg);
        std::fs::write(out, bytes).map_err(|e| format!("{}: {e}", out.display()))
    }

    /// QEMU `-M microvm` booting the guest (`qemu_initrd` from [`Self::write_qemu_initrd`])
    /// with its devices in our VMM's order: root disk, console (stdio), vsock (in-kernel
    /// vhost, CID 3). Callers add devices after these.
    pub fn qemu_command(&self, qemu_initrd: &Path) -> Command {
        let ram = self.ram_mib.to_string();
        let drive = format!("file={},format=raw,if=none,id=root", self.root.display());
        let mut c = Command::new(&self.qemu);
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
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(qemu_initrd)
            .args(["-append", GUEST_CMDLINE])
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
    }
}

/// The median (NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_flags() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
        let mut g = BenchGuest::default();
        assert!(g.take_flag("--kernel", || Ok("/k".into())).unwrap());
        assert!(g.take_flag("--ram-mib", || Ok("512".into())).unwrap());
        assert!(!g.take_flag("--runs", || Ok("1".into())).unwrap());
        assert!(g.take_flag("--ram-mib", || Ok("x".into())).is_err());
        assert_eq!(g.ram_mib, 512);
        assert_eq!(g.check().unwrap_err(), "--initrd is required");
    }
}
