//! Fuzz targets over the library's guest-facing parsers: virtio-blk requests ([`block`]),
//! vsock packets and the vsock connection state machine ([`vsock`]), virtio-net queues over a
//! framed socket ([`net`]), and virtio-mmio register accesses ([`mmio`]); and the parsers a
//! confidential guest runs on host-controlled input: the disk footer and TEE config
//! ([`footer_config`]), the SEV launch-secret table ([`secret_table`]), key-broker answers
//! ([`broker`]) and the LUKS header ([`luks_header`]). Each target is a `run(&Input)` function
//! over a structured input
//! (`arbitrary`), called by the libFuzzer entry points in `fuzz_targets/` and, on stable Rust,
//! by `tests/random_inputs.rs`. A target panics only when the library breaks one of the
//! invariants it checks (or panics itself).

pub mod block;
pub mod broker;
pub mod footer_config;
pub mod luks_header;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod secret_table;
pub mod vsock;

/// Builds a target's input from raw bytes the way libFuzzer's `fuzz_target!` does.
pub fn input_from_bytes<'a, T: arbitrary::Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(arbitrary::Unstructured::new(data)).ok()
}
