#!/bin/bash
# Builds the guest bundle (docs/interfaces.md, "Guest bundle") into OUT_DIR
# (default: build/bundle in the checkout): the cached kernel from build-kernel.sh, the static
# krun-init packed into a deterministic initrd, and manifest.json.
#
# usage: firmware/build-bundle.sh [OUT_DIR]
# Environment: KRUN_SEV_CACHE (kernel cache root), CARGO_TARGET_DIR (as for cargo).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/build/bundle}
target_dir=${CARGO_TARGET_DIR:-$root/target}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
say() { echo "[build-bundle] $*" >&2; }

kernel_dir=$("$root/firmware/build-kernel.sh")

say "building krun-init (static)"
# crt-static only applies to the target artifacts because of the explicit --target (build
# scripts stay dynamic). Paths are remapped so the binary does not depend on where the
# checkout, the cargo home or the target directory are. Debug info is stripped: every initrd
# byte is measured at launch.
RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo --remap-path-prefix=$root=/krun-sev --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target_dir=/target" \
    cargo build --quiet --manifest-path "$root/Cargo.toml" -p krun-init --release \
    --target x86_64-unknown-linux-gnu
init=$target_dir/x86_64-unknown-linux-gnu/release/krun-init
if readelf -l "$init" | grep -q INTERP; then
    say "error: $init is dynamically linked"
    exit 1
fi

cargo build --quiet --manifest-path "$root/Cargo.toml" -p krun-bundle --release --bin krun-mkbundle
mkbundle=$target_dir/release/krun-mkbundle
say "packing $out"
"$mkbundle" build --kernel-dir "$kernel_dir" --init "$init" --out "$out" >&2
"$mkbundle" verify "$out" >&2
echo "$out"
