//! `cfg(krun_oracles)` for the tests that need the Python oracles, and `cfg(krun_podman)`
//! for the test that loads `mkcw --oci-archive` images with podman.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../ci/build/oracle_cfg.rs");
    oracle_cfg("KRUN_SEV_PYTHON");
    podman_cfg();
}

include!("../ci/build/oracle_cfg.rs");

/// `cfg(krun_podman)` when `podman` is on `PATH`, or required by
/// `KRUN_TEST_REQUIRE_ORACLES=1` (`make test`, where its absence must fail the test, not
/// skip it). Without it a plain `cargo test` shows the podman test as ignored.
fn podman_cfg() {
    println!("cargo::rustc-check-cfg=cfg(krun_podman)");
    println!("cargo::rerun-if-env-changed=PATH");
    let present = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("podman").is_file()));
    let required = std::env::var("KRUN_TEST_REQUIRE_ORACLES").as_deref() == Ok("1");
    if present || required {
        println!("cargo::rustc-cfg=krun_podman");
    }
}
