//! Sets the shared library's SONAME: crun dlopens exactly `libkrun-sev.so.1`.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "1".to_owned());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libkrun-sev.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
