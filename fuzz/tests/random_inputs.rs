//! Runs every fuzz target on stable Rust over seeded pseudo-random inputs (no coverage
//! guidance) and over its committed corpus, `corpus/<target>/` (which must be there).
//! `KRUN_FUZZ_ITERS` sets the inputs per target (default 20000), `KRUN_FUZZ_SEED` the seed.

use std::path::Path;

use krun_sev_fuzz::{
    block, broker, footer_config, input_from_bytes, luks_header, mmio, net, secret_table, vsock,
};

/// splitmix64: a small deterministic generator, enough to produce input bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Mostly short inputs, some long ones (to reach payloads and long chains).
    fn bytes(&mut self) -> Vec<u8> {
        let len = match self.next() % 8 {
            0..=4 => self.next() % 1024,
            5 | 6 => self.next() % 4096,
            _ => self.next() % 16384,
        };
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn drive<T: for<'a> arbitrary::Arbitrary<'a>>(name: &str, run: fn(&T)) {
    let iters = env("KRUN_FUZZ_ITERS", 20000);
    let mut rng = Rng(env("KRUN_FUZZ_SEED", 0x6b72_756e) ^ name.len() as u64);
    let mut built = 0u64;
    for _ in 0..iters {
        let data = rng.bytes();
        if let Some(input) = input_from_bytes::<T>(&data) {
            run(&input);
            built += 1;
        }
    }
    // The corpora of the coverage-guided runs are committed (`corpus/<target>/`, merged
    // with `-merge=1`); a missing or empty one would leave only the random inputs.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let entries = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("{name}: corpus {}: {e}", corpus.display()));
    let mut replayed = 0u64;
    for e in entries {
        let path = e.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        if let Some(input) = input_from_bytes::<T>(&data) {
            run(&input);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "{name}: no input in {}", corpus.display());
    eprintln!("{name}: {built} random inputs, {replayed} corpus inputs");
    // Most random byte strings must become inputs, or the run tests nothing.
    assert!(
        built * 2 > iters,
        "{name}: only {built} of {iters} inputs were built"
    );
}

#[test]
fn block_random_inputs() {
    drive::<block::Input>("block", block::run);
}

#[test]
fn vsock_random_inputs() {
    drive::<vsock::Input>("vsock", vsock::run);
}

#[test]
fn mmio_random_inputs() {
    drive::<mmio::Input>("mmio", mmio::run);
}

#[test]
fn net_random_inputs() {
    drive::<net::Input>("virtio_net", net::run);
}

#[test]
fn footer_config_random_inputs() {
    drive::<footer_config::Input>("footer_config", footer_config::run);
}

#[test]
fn secret_table_random_inputs() {
    drive::<secret_table::Input>("secret_table", secret_table::run);
}

#[test]
fn broker_random_inputs() {
    drive::<broker::Input>("broker", broker::run);
}

#[test]
fn luks_header_random_inputs() {
    drive::<luks_header::Input>("luks_header", luks_header::run);
}
