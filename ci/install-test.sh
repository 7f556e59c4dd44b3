#!/bin/bash
# One install, one default (issue 24): `make install PREFIX=/usr DESTDIR=WORK/root`, then the
# installed binaries run in a chroot of WORK/root with no --bundle and no KRUN_SEV_* variable,
# so they must find the bundle at their built-in default, /usr/lib/krun-sev:
# - `krun-sev measure --tee snp --cpus 1 --ram-mib 512` prints the same digest as the same
#   binary given `--bundle` explicitly;
# - the library, dlopened by crun's call order (tests/c/crun_chroot_order.c), logs that
#   bundle directory as its built-in default and gets past loading and checking the bundle
#   (the launch then fails at /dev/kvm, absent from the chroot, with exit status 125);
# - krunfw_measurement reads /usr/lib/krun-sev and /usr/lib/libkrunfw-sev.so.4.
# Nothing is written outside WORK: the chroot runs in its own mount namespace (and user
# namespace when not root), with the host's shared libraries bind-mounted read-only.
# Cost: a release build of the library, krun-sev and krun-kbs (cached in target/release),
# the guest bundle (cached kernel) and a few seconds of checks.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
dest=$work/root
fail() { echo "FAIL: $*" >&2; exit 1; }

# Not inherited from make test (testhost-tests exports KRUN_SEV_BUNDLE_DIR for its own use).
unset KRUN_SEV_BUNDLE_DIR KRUN_SEV_BACKEND KRUN_SEV_PSP_MODEL_DIR KRUN_SEV_CONFIG RUST_LOG
if ! make -C "$root" --no-print-directory install PREFIX=/usr DESTDIR="$dest" >"$work/make.log" 2>&1; then
    tail -n 40 "$work/make.log" >&2
    fail "make install PREFIX=/usr DESTDIR=$dest"
fi
for f in usr/bin/krun-sev usr/bin/krunfw_measurement usr/bin/krun-kbs usr/lib/libkrun-sev.so.1 \
    usr/lib/libkrunfw-sev.so.4 usr/lib/krun-sev/manifest.json; do
    [ -e "$dest/$f" ] || fail "make install did not install /$f"
done

# The chroot: the installed tree plus the host's libraries, a /dev and a probe playing crun.
gcc -std=c11 -Wall -Wextra -Werror -o "$dest/usr/bin/crun-chroot-order" \
    "$root/tests/c/crun_chroot_order.c" -ldl
mkdir -p "$dest/usr/lib/x86_64-linux-gnu" "$dest/usr/lib64" "$dest/dev" "$dest/tmp"
ln -sfn usr/lib64 "$dest/lib64"
ln -sfn usr/lib "$dest/lib"
ln -sfn usr/bin "$dest/bin"
head -c 4096 /dev/zero >"$dest/disk.img"
printf '%s' '{"tee":"snp","tee_data":"","workload_id":"w","cpus":1,"ram_mib":512,"attestation_url":""}' \
    >"$dest/krun-sev.json"
# in_chroot [VAR=VALUE...] COMMAND [ARG...]: COMMAND in the chroot with only those variables.
chroot=$(command -v chroot)
in_chroot() {
    local vars=(PATH=/usr/bin)
    while [[ $# -gt 0 && $1 == *=* ]]; do vars+=("$1"); shift; done
    local ns=(unshare --mount)
    [ "$(id -u)" = 0 ] || ns=(unshare --user --map-root-user --mount)
    "${ns[@]}" bash -c '
        set -e
        d=$1; shift
        mount --bind -o ro /usr/lib/x86_64-linux-gnu "$d/usr/lib/x86_64-linux-gnu"
        mount --bind -o ro /usr/lib64 "$d/usr/lib64"
        for n in null zero urandom random; do touch "$d/dev/$n"; mount --bind "/dev/$n" "$d/dev/$n"; done
        exec "$@"' in-chroot "$dest" env -i "${vars[@]}" "$chroot" "$dest" "$@"
}

# krun-sev measure without --bundle: the installed default, the same digest as explicit.
in_chroot krun-sev measure --tee snp --cpus 1 --ram-mib 512 >"$work/default.txt" 2>"$work/default.err" \
    || fail "krun-sev measure without --bundle: $(cat "$work/default.err")"
in_chroot krun-sev measure --tee snp --cpus 1 --ram-mib 512 --bundle /usr/lib/krun-sev \
    >"$work/explicit.txt" 2>"$work/explicit.err" || fail "krun-sev measure --bundle: $(cat "$work/explicit.err")"
grep -Eq '[0-9a-f]{96}' "$work/default.txt" || fail "no SNP digest in: $(cat "$work/default.txt")"
cmp -s "$work/default.txt" "$work/explicit.txt" \
    || fail "default and explicit bundle differ: $(cat "$work/default.txt") vs $(cat "$work/explicit.txt")"
echo "krun-sev measure (no --bundle) reads /usr/lib/krun-sev: $(grep -Eo '[0-9a-f]{96}' "$work/default.txt" | head -n1)"

# The library: its built-in default is the same directory, and the bundle there loads.
# The launch fails (exit status 125, one line) at /dev/kvm.
rc=0
in_chroot RUST_LOG=info KRUN_SEV_BACKEND=model KRUN_SEV_PSP_MODEL_DIR=/tmp/psp \
    crun-chroot-order / >"$work/lib.out" 2>"$work/lib.err" || rc=$?
grep -q 'bundle directory /usr/lib/krun-sev (built-in default)' "$work/lib.err" \
    || fail "library default: $(cat "$work/lib.out" "$work/lib.err")"
[ "$rc" = 125 ] || fail "library launch: status $rc: $(cat "$work/lib.out" "$work/lib.err")"
if grep -q 'guest bundle' "$work/lib.err"; then
    fail "the library did not load the installed bundle: $(cat "$work/lib.err")"
fi
grep -q 'kvm' "$work/lib.err" || fail "the library's launch should stop at /dev/kvm: $(cat "$work/lib.err")"
echo "libkrun-sev.so.1 (no KRUN_SEV_BUNDLE_DIR) loads the bundle in /usr/lib/krun-sev"

# krunfw_measurement, as buildah runs it, over both installed forms of the bundle.
for b in /usr/lib/krun-sev /usr/lib/libkrunfw-sev.so.4; do
    in_chroot krunfw_measurement -c 1 -m 512 "$b" >"$work/krunfw.txt" 2>&1 \
        || fail "krunfw_measurement $b: $(cat "$work/krunfw.txt")"
    grep -q '^SNP:' "$work/krunfw.txt" || fail "krunfw_measurement $b: $(cat "$work/krunfw.txt")"
done
echo "install test passed in $(($(date +%s) - start)) s: make install PREFIX=/usr DESTDIR=..., every binary uses /usr/lib/krun-sev"
