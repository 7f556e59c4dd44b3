//! What a confidential launch puts into guest memory besides the bundle, shared by the launch
//! and the measurement calculator (`krun-sev measure`) so both measure the same bytes.

use std::sync::{Mutex, PoisonError};

use krun_bundle::{Bundle, BundleError, BundleFiles};

use super::bundle_map::MappedBundle;

use crate::arch::layout::{virtio_mmio_slot, VIRTIO_IRQ_BASE};
use crate::launch::segment::{self, Segment, SegmentError};
use crate::tee::TeeMode;
use crate::vmm::device_manager::cmdline_entry;

/// Size of the `/krun/secret` slot.
pub const SECRET_SLOT_LEN: usize = segment::SECRET_LEN;

/// Kernel command line of every launch before the VMM appends its `virtio_mmio.device=`
/// entries. Measured.
pub const BASE_CMDLINE: &str = "console=hvc0 quiet reboot=t panic=-1 acpi=off";

/// Install location of the guest bundle: `$(LIBDIR)/krun-sev` as the Makefile exports it in
/// `KRUN_SEV_BUNDLE_DEFAULT` to every build, else the default prefix's (`build.rs`). The
/// host's settings (`crate::settings`) override it.
pub const DEFAULT_BUNDLE_DIR: &str = env!("KRUN_SEV_BUNDLE_DEFAULT_DIR");

/// The bundle directory in effect: the host's setting (`KRUN_SEV_BUNDLE_DIR` when the library
/// was loaded, else `bundle_dir` of the host configuration file, else [`DEFAULT_BUNDLE_DIR`]).
pub fn bundle_dir() -> std::path::PathBuf {
    crate::settings::host().bundle_dir.value.clone()
}

/// The bundle mapped when the library was loaded or a context created
/// ([`super::bundle_map`]).
static MAPPED: Mutex<Option<MappedBundle>> = Mutex::new(None);

/// Maps the bundle, unless it is mapped already. Runs when the library is loaded (crun
/// dlopens it on the host) and again at `krun_create_ctx` in case the bundle was installed
/// in between. Cheap: no file is read.
pub fn map_bundle() {
    let dir = bundle_dir();
    let mut slot = MAPPED.lock().unwrap_or_else(PoisonError::into_inner);
    if slot
        .as_ref()
        .is_some_and(|m| m.dir() == dir && m.has_manifest())
    {
        return;
    }
    *slot = Some(MappedBundle::map(&dir));
}

/// The bundle for a launch, checked against its manifest: from the mapping, else read from
/// the directory now.
pub fn load_bundle() -> Result<Bundle, BundleError> {
    let dir = bundle_dir();
    let slot = MAPPED.lock().unwrap_or_else(PoisonError::into_inner);
    match slot.as_ref() {
        Some(m) if m.dir() == dir && m.has_manifest() => Bundle::load_from(m),
        _ => Bundle::load(&dir),
    }
}

/// Number of virtio-mmio slots: root disk, optional data disk, console, vsock, and the
/// network slot (the VMM's slot order, `vmm::builder::config_devices`). The network slot is
/// always counted: without a network it holds a placeholder (DeviceID 0), so the measured
/// command line is the same with or without one (docs/measurement.md).
pub fn device_count(data_disk: bool) -> u32 {
    4 + u32::from(data_disk)
}

/// The full command line the VMM writes for `devices` virtio devices, NUL-terminated.
pub fn full_cmdline(devices: u32) -> Result<Vec<u8>, crate::vmm::VmmError> {
    let entries: Vec<String> = (0..devices)
        .map(|slot| cmdline_entry(virtio_mmio_slot(slot), VIRTIO_IRQ_BASE + slot))
        .collect();
    crate::vmm::builder::full_cmdline(BASE_CMDLINE, &entries)
}

/// The launch segment holding `host_json` for `mode` (secret slot for SEV and SEV-ES).
pub fn launch_segment(host_json: &[u8], mode: TeeMode) -> Result<Segment, SegmentError> {
    segment::build_with_secret(host_json, mode != TeeMode::Snp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_lists_devices_in_slot_order() {
        let line = full_cmdline(device_count(false)).unwrap();
        assert_eq!(line.last(), Some(&0));
        let text = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
        assert!(text.starts_with(BASE_CMDLINE));
        // Root disk, console, vsock, network slot.
        assert_eq!(text.matches("virtio_mmio.device=").count(), 4);
        assert!(text.ends_with(&cmdline_entry(virtio_mmio_slot(3), VIRTIO_IRQ_BASE + 3)));
        assert_eq!(
            full_cmdline(device_count(true)).unwrap().len()
                - full_cmdline(device_count(false)).unwrap().len(),
            cmdline_entry(virtio_mmio_slot(4), VIRTIO_IRQ_BASE + 4).len() + 1
        );
    }
}
