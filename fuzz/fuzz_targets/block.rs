//! libFuzzer entry point; the logic and its checks are in `krun_sev_fuzz::block`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: krun_sev_fuzz::block::Input| krun_sev_fuzz::block::run(&input));
