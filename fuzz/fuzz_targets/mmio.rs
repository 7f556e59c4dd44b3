//! libFuzzer entry point; the logic and its checks are in `krun_sev_fuzz::mmio`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: krun_sev_fuzz::mmio::Input| krun_sev_fuzz::mmio::run(&input));
