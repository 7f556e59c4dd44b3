//! Runs `tests/sev_sim.py`: the firmware under the Unicorn CPU emulator on a simulated
//! SEV / SEV-ES / SNP platform (the paths no machine here can execute on hardware).
//!
//! Python: `$KRUN_RESETVEC_PYTHON`, a virtualenv with `pip install unicorn==2.1.4` (`make
//! test` sets it). Without it (and without `KRUN_TEST_REQUIRE_ORACLES=1`) the test is
//! ignored (build.rs); once it runs, a Python without unicorn fails it.

use std::path::PathBuf;
use std::process::Command;

#[test]
#[cfg_attr(
    not(krun_oracles),
    ignore = "needs the Python oracles (KRUN_RESETVEC_PYTHON with unicorn): make test runs it"
)]
fn firmware_on_simulated_sev_platforms() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("KRUN_RESETVEC_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "KRUN_RESETVEC_PYTHON is not set: python3 -m venv V && V/bin/pip install \
                 unicorn==2.1.4, then KRUN_RESETVEC_PYTHON=V/bin/python (make test-deps)"
            )
        });
    let has_unicorn = Command::new(&python)
        .args(["-c", "import unicorn"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_unicorn,
        "KRUN_RESETVEC_PYTHON={python} cannot import unicorn"
    );
    let out = Command::new(&python)
        .arg(dir.join("tests/sev_sim.py"))
        .arg(dir.join("resetvec.bin"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "simulated SEV tests failed");
    assert!(stdout.lines().filter(|l| l.ends_with("... ok")).count() >= 9);
}
