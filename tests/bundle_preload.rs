//! crun creates the context on the host (1.21+; 1.6-1.20 after `pivot_root`) and launches
//! after `pivot_root` into the container: the guest bundle is mapped when the library is
//! loaded and again at `krun_create_ctx` when `KRUN_SEV_BUNDLE_DIR` changed since.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use krun_sev::capi::{krun_create_ctx, krun_free_ctx};
use krun_sev::launch::guest::load_bundle;

#[test]
fn bundle_mapped_at_context_creation_survives_losing_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    let kernel = b"\x7fELF not really a kernel, the manifest only checks size and hash";
    krun_bundle::write_bundle(
        &bundle,
        &krun_bundle::BundleContents {
            kernel,
            kernel_version: "6.12-test",
            nr_cpus: 8,
            initrd: b"initrd bytes",
            firmware: None,
        },
    )
    .unwrap();
    // The only test in this process: nothing else reads the environment concurrently.
    std::env::set_var(krun_bundle::BUNDLE_DIR_ENV, &bundle);

    let ctx = krun_create_ctx();
    assert!(ctx >= 0);
    // What pivot_root does to the install directory, as the launch sees it.
    std::fs::remove_dir_all(&bundle).unwrap();

    let loaded = load_bundle().expect("the bundle mapped at krun_create_ctx");
    assert_eq!(loaded.kernel, kernel);
    assert_eq!(loaded.initrd, b"initrd bytes");
    // The mapping stays: a second load works as well.
    assert_eq!(load_bundle().unwrap().kernel, kernel);
    assert_eq!(krun_free_ctx(u32::try_from(ctx).unwrap()), 0);
}
