//! Helpers for tests that run tiny guests on real KVM.

/// Whether KVM tests can run here. Without a usable `/dev/kvm` the KVM tests return early,
/// unless `KRUN_TEST_REQUIRE_KVM=1`, in which case they fail loudly (CI on a KVM host sets it).
pub fn kvm_available() -> bool {
    let ok = kvm_ioctls::Kvm::new().is_ok();
    if !ok {
        assert!(
            std::env::var("KRUN_TEST_REQUIRE_KVM").as_deref() != Ok("1"),
            "KRUN_TEST_REQUIRE_KVM=1 but /dev/kvm cannot be opened"
        );
        eprintln!("/dev/kvm unavailable: KVM test not run");
    }
    ok
}
