//! `cfg(krun_oracles)` for the tests that need the Python oracles.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../ci/build/oracle_cfg.rs");
    oracle_cfg("KRUN_SEV_PYTHON");
}

include!("../ci/build/oracle_cfg.rs");
