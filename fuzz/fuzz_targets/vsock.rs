//! libFuzzer entry point; the logic and its checks are in `krun_sev_fuzz::vsock`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: krun_sev_fuzz::vsock::Input| krun_sev_fuzz::vsock::run(&input));
