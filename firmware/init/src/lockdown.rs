//! Once the init holds the disk key, the workload must have no way to produce attestation
//! evidence of its own (docs/threat-model.md, "The workload cannot attest"): a root workload
//! with a genuine report could otherwise ask the broker for any key its launch digest
//! matches.
//!
//! - [`close_attestation_channels`]: the VMM stops its attestation proxy (vsock 1025) and
//!   the PSP model's report service (1026) for the rest of the VM's life; the init checks
//!   that they refuse.
//! - [`remove_attestation_devices`]: `/dev/sev-guest` leaves the container's devtmpfs (the
//!   only devtmpfs instance, so no other mount shows it).
//! - [`drop_capabilities`]: the workload's bounding set lacks `CAP_MKNOD` (no new device
//!   node for the SNP guest device), `CAP_SYS_ADMIN` (no devtmpfs or configfs mount, so no
//!   configfs-tsm reports, no dm table with the key), `CAP_SYS_MODULE` and `CAP_SYS_RAWIO`.
//!   The kernel has no module loading and no `/dev/mem` either (`firmware/kernel`).

use std::io;
use std::path::Path;

use crate::sys;
use crate::vsock::{self, VsockStream};

/// Device nodes that produce attestation evidence.
const ATTESTATION_DEVICES: [&str; 1] = [crate::snp_report::SEV_GUEST_DEVICE];

/// Capabilities no workload keeps.
pub const DROPPED_CAPABILITIES: [u32; 4] = [
    16, // CAP_SYS_MODULE
    17, // CAP_SYS_RAWIO
    21, // CAP_SYS_ADMIN
    27, // CAP_MKNOD
];

/// Errors locking attestation away.
#[derive(Debug, thiserror::Error)]
pub enum LockdownError {
    /// The VMM still accepts connections on an attestation port.
    #[error("the VMM still accepts connections on vsock port {0} after attestation")]
    StillOpen(u32),
    /// A device node could not be removed.
    #[error("cannot remove {path}")]
    Remove {
        /// The node.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A capability could not be dropped.
    #[error("cannot drop capability {cap}")]
    Capability {
        /// The capability number.
        cap: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Asks the VMM to close the attestation proxy and report service (vsock 1028), then checks
/// that both refuse connections.
pub fn close_attestation_channels() -> Result<(), LockdownError> {
    // The VMM answers the request with a reset: the connect fails by design.
    let _ = VsockStream::connect(vsock::HOST_CID, vsock::ATTESTATION_DONE_PORT);
    for port in [vsock::ATTESTATION_PROXY_PORT, vsock::PSP_MODEL_REPORT_PORT] {
        if VsockStream::connect(vsock::HOST_CID, port).is_ok() {
            return Err(LockdownError::StillOpen(port));
        }
    }
    Ok(())
}

/// Removes the attestation device nodes under `dev` (a missing one is fine: only SNP guests
/// have one).
pub fn remove_attestation_devices(dev: &Path) -> Result<(), LockdownError> {
    for name in ATTESTATION_DEVICES {
        let path = dev.join(name.trim_start_matches("/dev/"));
        match std::fs::remove_file(&path) {
            Ok(()) => crate::log!("removed {} from the workload's /dev", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LockdownError::Remove {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Drops [`DROPPED_CAPABILITIES`] from the bounding and inheritable sets, so no process
/// started afterwards (the workload, root or not) can gain them.
pub fn drop_capabilities() -> Result<(), LockdownError> {
    for cap in DROPPED_CAPABILITIES {
        // SAFETY: prctl(PR_CAPBSET_DROP) takes plain integers.
        sys::check(unsafe {
            libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0)
        })
        .map_err(|source| LockdownError::Capability { cap, source })?;
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are the two-element v3 layout capget expects.
    let got = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    syscall_result(got)?;
    for cap in DROPPED_CAPABILITIES {
        let (word, bit) = ((cap / 32) as usize, cap % 32);
        data[word].inheritable &= !(1 << bit);
    }
    // SAFETY: as above; capset reads the same layout.
    let set = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    syscall_result(set)
}

fn syscall_result(r: libc::c_long) -> Result<(), LockdownError> {
    if r < 0 {
        return Err(LockdownError::Capability {
            cap: 0,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `cap` is still in this process's bounding set.
    fn in_bounding_set(cap: u32) -> io::Result<bool> {
        // SAFETY: prctl(PR_CAPBSET_READ) takes plain integers.
        sys::check(unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) })
            .map(|r| r == 1)
    }

    #[test]
    fn device_nodes_are_removed_and_absent_ones_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sev-guest"), b"").unwrap();
        std::fs::write(dir.path().join("null"), b"").unwrap();
        remove_attestation_devices(dir.path()).unwrap();
        assert!(!dir.path().join("sev-guest").exists());
        assert!(dir.path().join("null").exists());
        remove_attestation_devices(dir.path()).unwrap();
    }

    /// In a child process (the drop is per process): afterwards the bounding set lacks the
    /// capabilities and a root child cannot mknod.
    #[test]
    fn capabilities_leave_the_bounding_set() {
        // SAFETY: fork in a test; the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = drop_capabilities().is_ok()
                && DROPPED_CAPABILITIES
                    .iter()
                    .all(|&c| in_bounding_set(c).ok() == Some(false));
            // SAFETY: _exit ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        // Needs CAP_SETPCAP, as the init has and `make test` (run as root) has.
        assert!(libc::WIFEXITED(status));
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "capabilities not dropped (run as root)"
        );
    }
}
