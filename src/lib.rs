//! libkrun-sev: run one process inside an AMD SEV, SEV-ES or SEV-SNP microVM.
//!
//! The C API (`capi`) only parses and validates; it hands a plain Rust configuration
//! (`resources::VmResources`) to the VMM.

pub mod arch;
pub mod capi;
pub mod devices;
pub mod launch;
pub mod resources;
pub mod settings;
pub mod tee;
pub mod vmm;

/// Runs when the library is loaded: crun dlopens it on the host, then replaces the
/// environment with the container's and may make every later call inside the container. So
/// the host's settings are captured now (`settings::host`: the environment and
/// `/etc/krun-sev.conf`), the guest bundle is mapped (`launch::guest::map_bundle`; a few
/// system calls, no reads) and, with the PSP model backend, its identity is read
/// (`tee::model::preload`). Nothing may unwind out of a loader callback.
extern "C" fn map_bundle_at_load() {
    let _ = std::panic::catch_unwind(|| {
        settings::host();
        launch::guest::map_bundle();
        tee::model::preload();
    });
}

// SAFETY: a function pointer in `.init_array` is called once by the dynamic loader (or the C
// runtime) with no arguments, before any export can be called; `map_bundle_at_load` only
// reads the environment and files and maps files, and catches panics.
#[used]
#[link_section = ".init_array"]
static MAP_BUNDLE_AT_LOAD: extern "C" fn() = map_bundle_at_load;
