//! libFuzzer entry point; the logic and its checks are in `krun_sev_fuzz::footer_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: krun_sev_fuzz::footer_config::Input| {
    krun_sev_fuzz::footer_config::run(&input)
});
