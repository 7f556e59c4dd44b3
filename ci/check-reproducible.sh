#!/bin/bash
# Checks that the guest bundle is reproducible (issue 3 acceptance): builds it twice from
# scratch, with separate empty kernel caches and cargo target directories, compares the
# SHA-256 of bzImage, initrd.cpio.zst and manifest.json, and checks the first build against
# the pins in firmware/bundle.pins (firmware/bundle-pins.sh).
#
# A manual tool, not part of CI: CI builds the bundle once and checks it against the pins
# (make bundle-pins), which catches a build that differs from the pinned one. This finds out
# whether a difference comes from this machine's build being non-deterministic, without the
# cache: use it after changing the kernel or bundle build steps, or when the pins check fails
# with an unchanged tree and the pinned toolchain.
#
# Cost: two full guest kernel builds (about 8-10 minutes each on 2 cores) plus two release
# builds of krun-init: 17-25 minutes. Scratch space: ~4 GB under $TMPDIR (or
# KRUN_REPRO_DIR), removed at the end.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
scratch=${KRUN_REPRO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/krun-repro.XXXXXX")}
trap 'rm -rf "$scratch"' EXIT
say() { echo "[check-reproducible] $*" >&2; }

for run in 1 2; do
    say "build $run of 2 (empty cache $scratch/cache$run)"
    KRUN_SEV_CACHE=$scratch/cache$run CARGO_TARGET_DIR=$scratch/target$run \
        "$root/firmware/build-bundle.sh" "$scratch/bundle$run" >/dev/null
done

status=0
for file in bzImage initrd.cpio.zst manifest.json; do
    a=$(sha256sum <"$scratch/bundle1/$file" | cut -d' ' -f1)
    b=$(sha256sum <"$scratch/bundle2/$file" | cut -d' ' -f1)
    if [ "$a" = "$b" ]; then
        say "$file: identical ($a)"
    else
        say "$file: DIFFERS ($a vs $b)"
        status=1
    fi
done
[ "$status" = 0 ] && say "the bundle is reproducible"
"$root/firmware/bundle-pins.sh" check "$scratch/bundle1" || status=1
exit "$status"
