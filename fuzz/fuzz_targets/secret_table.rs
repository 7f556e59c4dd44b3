//! libFuzzer entry point; the logic and its checks are in `krun_sev_fuzz::secret_table`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: krun_sev_fuzz::secret_table::Input| {
    krun_sev_fuzz::secret_table::run(&input)
});
