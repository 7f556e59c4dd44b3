// Shared by the build scripts of the crates whose tests use the Python oracles (included
// with `include!`, so there is one copy of the rule).

/// `cfg(krun_oracles)` when the Python oracle `var` names is configured, or required by
/// `KRUN_TEST_REQUIRE_ORACLES=1` (`make test`). Tests that need it are ignored without it,
/// so a plain `cargo test` shows them as ignored and `make test` fails if the oracle is
/// missing (docs/measurement.md, "Tests").
fn oracle_cfg(var: &str) {
    println!("cargo::rustc-check-cfg=cfg(krun_oracles)");
    println!("cargo::rerun-if-env-changed={var}");
    println!("cargo::rerun-if-env-changed=KRUN_TEST_REQUIRE_ORACLES");
    let configured = std::env::var_os(var).is_some_and(|v| !v.is_empty());
    let required = std::env::var("KRUN_TEST_REQUIRE_ORACLES").as_deref() == Ok("1");
    if configured || required {
        println!("cargo::rustc-cfg=krun_oracles");
    }
}
