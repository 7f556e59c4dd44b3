//! libFuzzer entry point; the logic and its checks are in `krun_sev_fuzz::luks_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: krun_sev_fuzz::luks_header::Input| {
    krun_sev_fuzz::luks_header::run(&input)
});
