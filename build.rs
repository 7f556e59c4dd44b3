//! Sets the shared library's SONAME (crun dlopens exactly `libkrun-sev.so.1`), the built-in
//! default bundle directory and `cfg(krun_oracles)` for the tests that need the Python
//! oracles.

/// The install location of the guest bundle when the build is not told one: the default
/// `PREFIX` of the Makefile.
const FALLBACK_BUNDLE_DIR: &str = "/usr/local/lib/krun-sev";

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "1".to_owned());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkrun-sev.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=ci/build/oracle_cfg.rs");
    bundle_default();
    oracle_cfg("KRUN_SEV_PYTHON");
}

/// `KRUN_SEV_BUNDLE_DEFAULT` (the Makefile exports `$(LIBDIR)/krun-sev` to every cargo build
/// it runs) becomes `KRUN_SEV_BUNDLE_DEFAULT_DIR` for `launch::guest::DEFAULT_BUNDLE_DIR`:
/// the library and every binary linking this crate get the same default.
fn bundle_default() {
    println!("cargo:rerun-if-env-changed=KRUN_SEV_BUNDLE_DEFAULT");
    let dir = match std::env::var("KRUN_SEV_BUNDLE_DEFAULT") {
        Ok(dir) if !dir.is_empty() => dir,
        Ok(_) | Err(std::env::VarError::NotPresent) => FALLBACK_BUNDLE_DIR.to_owned(),
        Err(std::env::VarError::NotUnicode(_)) => {
            panic!("KRUN_SEV_BUNDLE_DEFAULT is not UTF-8")
        }
    };
    if !dir.starts_with('/') || dir.contains('\n') {
        panic!("KRUN_SEV_BUNDLE_DEFAULT={dir:?}: the default bundle directory must be an absolute path");
    }
    println!("cargo:rustc-env=KRUN_SEV_BUNDLE_DEFAULT_DIR={dir}");
}

include!("ci/build/oracle_cfg.rs");
