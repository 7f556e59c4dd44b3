#!/bin/bash
# Fetches and caches what the nested-KVM test host boots (ARCHITECTURE.md §4): Debian's stock
# cloud kernel, the modules the tests need (decompressed, in load order) and a static busybox.
# Prints the asset directory on stdout; progress goes to stderr. Cached runs do no work.
#
# Asset directory layout:
#   vmlinuz                the test host kernel
#   modules/NAME.ko        decompressed modules
#   modules.order          module names, dependencies first
#   busybox                static busybox (the test host's shell and tools)
#   kernel-release         `uname -r` of the test host kernel
#
# Environment: KRUN_SEV_CACHE (default ~/.cache/krun-sev).
set -euo pipefail

# Pinned packages: bump deliberately.
KERNEL_PACKAGE=linux-image-6.12.117+deb12-cloud-amd64-unsigned
KERNEL_VERSION=6.12.117-1~deb12u1
BUSYBOX_PACKAGE=busybox-static
BUSYBOX_VERSION=1:1.35.0-4+deb12u1+b1
# kvm-amd for nested KVM; device-mapper, dm-crypt, xts and loop for LUKS tests; vsock for
# tests that talk to a guest; dummy gives the test host a dummy0 interface, which the
# network test addresses and routes through so that passt has a host network to copy.
MODULES="irqbypass kvm kvm-amd dm-mod dm-crypt xts loop vsock vhost_vsock dummy"

cache_root=${KRUN_SEV_CACHE:-$HOME/.cache/krun-sev}
say() { echo "[testhost-prepare] $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

key=$(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)
out=$cache_root/testhost-$key
if [ -f "$out/modules.order" ]; then
    echo "$out"
    exit 0
fi
for tool in apt-get apt-cache dpkg-deb xz sha256sum; do
    command -v "$tool" >/dev/null || die "missing tool '$tool'"
done

# download PACKAGE VERSION -> path of the cached .deb
download() {
    local package=$1 version=$2
    local deb=$cache_root/downloads/${package}_${version//:/%3a}.deb
    if [ ! -f "$deb" ]; then
        say "downloading $package=$version"
        mkdir -p "$cache_root/downloads"
        local tmp
        tmp=$(mktemp -d "$cache_root/downloads/.dl.XXXXXX")
        if ! (cd "$tmp" && apt-get download "$package=$version" >&2 2>/dev/null); then
            rm -rf "$tmp"
            die "the pinned $package=$version is not available from the configured apt sources (run 'apt-get update'; available: $(apt-cache madison "$package" 2>/dev/null | awk '{print $3}' | tr '\n' ' '))"
        fi
        mv "$tmp"/*.deb "$deb"
        rmdir "$tmp"
    fi
    echo "$deb"
}

kernel_deb=$(download "$KERNEL_PACKAGE" "$KERNEL_VERSION")
busybox_deb=$(download "$BUSYBOX_PACKAGE" "$BUSYBOX_VERSION")

work=$(mktemp -d "$cache_root/.testhost.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage=$work/stage
mkdir -p "$stage/modules" "$work/kernel" "$work/busybox"

say "unpacking $KERNEL_PACKAGE"
dpkg-deb -x "$kernel_deb" "$work/kernel"
vmlinuz=$(echo "$work"/kernel/boot/vmlinuz-*)
[ -f "$vmlinuz" ] || die "no kernel image in $kernel_deb"
cp "$vmlinuz" "$stage/vmlinuz"
release=${vmlinuz##*/vmlinuz-}
echo "$release" >"$stage/kernel-release"

# Index modules by name with '-' and '_' treated alike (modinfo's depends= uses either).
declare -A module_path
while IFS= read -r -d '' ko; do
    name=${ko##*/}
    name=${name%.ko.xz}
    module_path[${name//-/_}]=$ko
done < <(find "$work/kernel/lib/modules/$release" -name '*.ko.xz' -print0)

declare -A loaded
order=()
# add_module NAME: adds NAME after its dependencies (the package has no modules.dep).
add_module() {
    local key=${1//-/_}
    [ -n "${loaded[$key]:-}" ] && return 0
    local ko=${module_path[$key]:-}
    [ -n "$ko" ] || die "module $1 is not in $KERNEL_PACKAGE (built in? then drop it from MODULES)"
    loaded[$key]=1
    local name=${ko##*/}
    name=${name%.ko.xz}
    xz -dc "$ko" >"$stage/modules/$name.ko"
    local deps
    deps=$(tr '\0' '\n' <"$stage/modules/$name.ko" | sed -n 's/^depends=//p' | head -n1)
    local dep
    for dep in ${deps//,/ }; do
        add_module "$dep"
    done
    order+=("$name")
}
for module in $MODULES; do
    add_module "$module"
done
printf '%s\n' "${order[@]}" >"$stage/modules.order.tmp"

say "unpacking $BUSYBOX_PACKAGE"
dpkg-deb -x "$busybox_deb" "$work/busybox"
cp "$work/busybox/bin/busybox" "$stage/busybox"
chmod 0755 "$stage/busybox"

mv "$stage/modules.order.tmp" "$stage/modules.order"
rm -rf "$out"
mv "$stage" "$out"
say "assets ready: $out (modules: ${order[*]})"
echo "$out"
