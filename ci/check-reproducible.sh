#!/bin/bash
# Checks that the guest bundle is reproducible (issue 3 acceptance): builds it twice from
# scratch, with separate empty kernel caches and cargo target directories, and compares the
# SHA-256 of vmlinux, initrd.cpio.gz and manifest.json.
#
# Cost: two full guest kernel builds (about 8 minutes each on 2 cores) plus two release
# builds of krun-init; run it as its own CI step. Scratch space: ~4 GB under $TMPDIR (or
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
for file in vmlinux initrd.cpio.gz manifest.json; do
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
exit "$status"
