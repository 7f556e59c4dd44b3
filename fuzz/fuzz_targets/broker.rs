//! libFuzzer entry point; the logic and its checks are in `krun_sev_fuzz::broker`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |input: krun_sev_fuzz::broker::Input| krun_sev_fuzz::broker::run(&input)
);
