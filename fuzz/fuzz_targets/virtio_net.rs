//! libFuzzer entry point; the logic and its checks are in `krun_sev_fuzz::net`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: krun_sev_fuzz::net::Input| krun_sev_fuzz::net::run(&input));
