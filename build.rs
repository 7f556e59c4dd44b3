//! Sets the shared library's SONAME (crun dlopens exactly `libkrun-sev.so.1`) and
//! `cfg(krun_oracles)` for the tests that need the Python oracles.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "1".to_owned());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkrun-sev.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=ci/build/oracle_cfg.rs");
    oracle_cfg("KRUN_SEV_PYTHON");
}

include!("ci/build/oracle_cfg.rs");
