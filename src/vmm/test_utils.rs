//! Helpers for tests that run tiny guests on real KVM.
//!
//! Those tests are `#[ignore = "needs a KVM that boots guests: runs in the test host"]`: a
//! plain `cargo test` lists them as ignored, and `make test` runs them with `--ignored` inside
//! the nested-KVM test host (`tests/host/tests/kvm_unit.rs`).

/// Set to 1 where the KVM tests must run on a KVM with hardware virtualization (the test host).
pub const REQUIRE_KVM_ENV: &str = "KRUN_TEST_REQUIRE_KVM";

/// Fails the calling test unless KVM can run it: an ignored KVM test that was asked to run
/// never passes without running. With `KRUN_TEST_REQUIRE_KVM=1` the CPU must also offer
/// hardware virtualization (`svm` or `vmx`), which a paravirtual `/dev/kvm` (PVM) lacks.
#[track_caller]
pub fn require_kvm() {
    if let Err(e) = kvm_ioctls::Kvm::new() {
        panic!(
            "this test needs /dev/kvm ({e}); it runs in the nested-KVM test host \
             (ci/testhost-tests.sh, tests/host/tests/kvm_unit.rs)"
        );
    }
    if std::env::var(REQUIRE_KVM_ENV).as_deref() == Ok("1") {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hardware = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "svm" || f == "vmx"));
        assert!(
            hardware,
            "{REQUIRE_KVM_ENV}=1 but this CPU has no svm/vmx flag: not a KVM that boots guests"
        );
    }
}

/// A console without input whose stdout and stderr both go to one new file at `path`, in
/// the order the guest writes them.
#[allow(clippy::unwrap_used)]
pub fn console_to_file(path: &std::path::Path) -> crate::vmm::config::ConsoleConfig {
    let file = std::fs::File::create(path).unwrap();
    crate::vmm::config::ConsoleConfig {
        input: None,
        errors: file.try_clone().unwrap().into(),
        output: file.into(),
    }
}
