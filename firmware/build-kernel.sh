#!/bin/bash
# Builds the guest kernel (the compressed bzImage, and an uncompressed, stripped ELF vmlinux
# with the PVH note) from Debian's linux-source-6.12 and our config fragment, reproducibly,
# and caches it.
#
# Output: prints the cache directory on stdout; it holds
#   bzImage          the kernel the bundle ships (64-bit boot protocol, zstd payload)
#   vmlinux          the same kernel uncompressed (PVH entry: QEMU -M microvm boots it)
#   config           the final .config
#   kernel-version   `uname -r` of the kernel (include/config/kernel.release)
#   nr_cpus          CONFIG_NR_CPUS
#   build-info       what the cache key covers
# Progress goes to stderr. A second run with the same inputs does no work.
#
# Environment:
#   KRUN_SEV_CACHE   cache root (default ~/.cache/krun-sev)
#   KRUN_SEV_JOBS    parallel make jobs (default: nproc)
#   KRUN_SEV_KEEP_KERNEL_TREE=1  keep the build tree (for debugging; ~1.5 GB)
#
# Build dependencies (Debian): build-essential bc bison flex libelf-dev libssl-dev
#   xz-utils binutils apt (for `apt-get download`).
set -euo pipefail

# The pinned source package. Launch measurements are computed from the kernel bytes, so the
# version is pinned; bump it deliberately (and expect new measurements).
SOURCE_PACKAGE=linux-source-6.12
SOURCE_VERSION=6.12.117-1~deb12u1
BASE_CONFIG=allnoconfig

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment=$here/kernel/guest.config
checker=$here/kernel/check-config.sh
cache_root=${KRUN_SEV_CACHE:-$HOME/.cache/krun-sev}
jobs=${KRUN_SEV_JOBS:-$(nproc)}

say() { echo "[build-kernel] $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

for tool in gcc ld make bc flex bison strip readelf apt-get dpkg-deb xz sha256sum; do
    command -v "$tool" >/dev/null || die "missing build tool '$tool' (apt-get install build-essential bc bison flex libelf-dev libssl-dev xz-utils)"
done
[ -e /usr/include/libelf.h ] || die "missing libelf headers (apt-get install libelf-dev)"
[ -e /usr/include/openssl/ssl.h ] || die "missing OpenSSL headers (apt-get install libssl-dev)"

# The toolchain is part of the key: another compiler gives other bytes.
toolchain="$(gcc --version | head -n1); $(ld --version | head -n1)"
build_info=$(
    echo "base=$BASE_CONFIG"
    echo "source=$SOURCE_PACKAGE=$SOURCE_VERSION"
    echo "toolchain=$toolchain"
    echo "fragment-sha256=$(sha256sum <"$fragment" | cut -d' ' -f1)"
    echo "checker-sha256=$(sha256sum <"$checker" | cut -d' ' -f1)"
    echo "script-sha256=$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)"
)
key=$(printf '%s\n' "$build_info" | sha256sum | cut -d' ' -f1)
out=$cache_root/kernel-$key

if [ -f "$out/bzImage" ] && [ -f "$out/vmlinux" ] && [ -f "$out/kernel-version" ]; then
    say "cached: $out"
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root/downloads"
deb=$cache_root/downloads/${SOURCE_PACKAGE}_${SOURCE_VERSION}_all.deb
if [ ! -f "$deb" ]; then
    say "downloading $SOURCE_PACKAGE=$SOURCE_VERSION"
    tmpdl=$(mktemp -d "$cache_root/downloads/.dl.XXXXXX")
    if ! (cd "$tmpdl" && apt-get download "$SOURCE_PACKAGE=$SOURCE_VERSION" >&2); then
        rm -rf "$tmpdl"
        die "the pinned $SOURCE_PACKAGE=$SOURCE_VERSION is not available from the configured apt sources (is bookworm-security enabled and 'apt-get update' run?). Available: $(apt-cache madison "$SOURCE_PACKAGE" 2>/dev/null | awk '{print $3}' | tr '\n' ' ')"
    fi
    mv "$tmpdl"/*.deb "$deb"
    rmdir "$tmpdl"
fi

# The build tree is keyed by what determines its contents only, so a failure after the
# compile (or a change to the packaging steps of this script) reuses it incrementally. It is
# removed once the result is in the cache.
tree_key=$(printf '%s\n' "$build_info" | grep -v '^script-sha256=' | sha256sum | cut -d' ' -f1)
work=$cache_root/.kernel-tree-$tree_key
src=$work/$SOURCE_PACKAGE
if [ ! -f "$work/unpacked" ]; then
    rm -rf "$work"
    mkdir -p "$work"
    say "unpacking $(basename "$deb")"
    dpkg-deb --fsys-tarfile "$deb" |
        tar -xO "./usr/src/$SOURCE_PACKAGE.tar.xz" |
        tar -xJ -C "$work"
    [ -f "$src/Makefile" ] || die "unexpected layout in $deb: no $SOURCE_PACKAGE/Makefile"
    touch "$work/unpacked"
else
    say "reusing build tree $work"
fi

# Everything that could leak the build machine or time into the kernel is fixed.
export ARCH=x86_64
export KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 2026"
export KBUILD_BUILD_USER=krun
export KBUILD_BUILD_HOST=krun-sev
export KBUILD_BUILD_VERSION=1
export LOCALVERSION=
export LC_ALL=C
export TZ=UTC
export SOURCE_DATE_EPOCH=1767225600

say "configuring: $BASE_CONFIG + $(basename "$fragment")"
(cd "$src" && scripts/kconfig/merge_config.sh -n "$fragment") >"$work/config.log" 2>&1 ||
    { tail -n 30 "$work/config.log" >&2; die "merge_config.sh failed"; }
"$checker" "$fragment" "$src/.config" >&2 ||
    die "the kernel config lacks required options (see above; a dependency is probably missing from $fragment)"

say "building bzImage with $jobs jobs (about 8 minutes on 2 cores; log: $work/build.log)"
start=$(date +%s)
set +e
make -C "$src" -j"$jobs" bzImage 2>&1 | tee "$work/build.log" |
    awk '/ CC / { n++; if (n % 250 == 0) { print "[build-kernel] " n " files compiled" > "/dev/stderr"; fflush("/dev/stderr") } }'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
    grep -E 'error|Error' "$work/build.log" | head -n 20 >&2 || true
    tail -n 20 "$work/build.log" >&2
    die "kernel build failed"
fi
say "built in $(($(date +%s) - start))s"

strip --strip-all -o "$work/vmlinux" "$src/vmlinux"
# QEMU (and any PVH loader) needs the XEN_ELFNOTE_PHYS32_ENTRY note (type 0x12).
readelf -W -n "$work/vmlinux" | grep -E '^[[:space:]]+Xen[[:space:]]' | grep -q '0x00000012' ||
    die "stripped vmlinux has no PVH entry note (readelf -n $work/vmlinux)"

stage=$cache_root/.kernel-$key.stage
rm -rf "$stage"
mkdir -p "$stage"
mv "$work/vmlinux" "$stage/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$src/.config" "$stage/config"
cat "$src/include/config/kernel.release" >"$stage/kernel-version"
sed -n 's/^CONFIG_NR_CPUS=//p' "$src/.config" >"$stage/nr_cpus"
printf '%s\n' "$build_info" >"$stage/build-info"
rm -rf "$out"
mv "$stage" "$out"
[ "${KRUN_SEV_KEEP_KERNEL_TREE:-0}" = 1 ] || rm -rf "$work"
say "vmlinux $(stat -c %s "$out/vmlinux") bytes, sha256 $(sha256sum <"$out/vmlinux" | cut -d' ' -f1)"
say "bzImage $(stat -c %s "$out/bzImage") bytes, sha256 $(sha256sum <"$out/bzImage" | cut -d' ' -f1)"
echo "$out"
