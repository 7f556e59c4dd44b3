#!/bin/bash
# A Debian 13 (trixie) chroot with the real buildah 1.39 (`buildah mkcw`; Debian 12's 1.28
# has none), for tests/host/tests/buildah.rs. Needs root and debootstrap.
#
#   ci/trixie-chroot.sh
#       makes the chroot once (debootstrap from the mirror the machine's apt sources use) and
#       prints its cache directory: root/ (the chroot), debootstrap.log, source (mirror and
#       suite), buildah-version. Cached runs do no work.
#   ci/trixie-chroot.sh run WORK -- COMMAND [ARG]...
#       runs COMMAND inside a throw-away copy of the chroot: an overlay whose lower layer is
#       the cached root (never written) and whose upper layer is WORK/upper (files put there
#       beforehand appear in the chroot; what the command writes stays there). The overlay
#       is a mount point of its own, which buildah's commit needs (otherwise `remount /,
#       flags: 0x44000: invalid argument`); /proc, /sys and /dev are mounted inside. Every
#       mount is undone on exit, also on failure. COMMAND's exit status is the script's.
#       buildah's storage (/var/lib/containers) and /var/tmp are WORK/var-lib-containers and
#       WORK/var-tmp, bind-mounted: the overlay mkcw mounts cannot have an upper directory
#       on overlayfs.
#
# Cache: ${KRUN_SEV_CACHE:-~/.cache/krun-sev}/trixie-<key>/ (about 300 MB), the key being the
# sha256 of what makes the chroot (SUITE, PACKAGES and the functions mirror and make_chroot),
# so that changing the run mode does not debootstrap again.
set -euo pipefail

SUITE=trixie
# buildah and what `buildah mkcw` runs: netavark (buildah refuses to start without a network
# backend), e2fsprogs (mkcw makes the ext4 file system with mkfs.ext4), ca-certificates;
# libssl3t64 for this project's krunfw_measurement (built on Debian 12, links libssl.so.3).
PACKAGES=buildah,netavark,e2fsprogs,ca-certificates,libssl3t64

cache_root=${KRUN_SEV_CACHE:-$HOME/.cache/krun-sev}
say() { echo "[trixie-chroot] $*" >&2; }
die() {
    say "error: $*"
    exit 1
}


# The Debian mirror of the machine's apt sources (deb822 `URIs:` or one-line `deb` entries),
# the first one serving the main archive (not -security).
mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        sed -n -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' "$f"
    done | tr ' ' '\n' | grep -E '/debian/?$' | head -n1
}

make_chroot() {
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"
    local url
    url=$(mirror)
    [ -n "$url" ] || die "no Debian mirror found in /etc/apt/sources.list*"
    mkdir -p "$cache_root"
    local tmp
    tmp=$(mktemp -d "$cache_root/.trixie.XXXXXX")
    say "debootstrap $SUITE from $url into $out (a few minutes)"
    if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp/root" "$url" \
        >"$tmp/debootstrap.log" 2>&1; then
        tail -n 20 "$tmp/debootstrap.log" >&2
        rm -rf "$tmp"
        die "debootstrap failed (log above)"
    fi
    echo "$url $SUITE" >"$tmp/source"
    chroot "$tmp/root" buildah --version >"$tmp/buildah-version"
    grep -q '^buildah version 1\.' "$tmp/buildah-version" || die "no buildah in the chroot"
    rm -rf "$tmp/root/var/cache/apt/archives/"*.deb
    mv "$tmp" "$out"
    say "$(cat "$out/buildah-version")"
}

key=$( (
    echo "$SUITE $PACKAGES"
    declare -f mirror make_chroot
) | sha256sum | cut -d' ' -f1)
out=$cache_root/trixie-$key

run_in() {
    [ "$(id -u)" = 0 ] || die "chroot needs root"
    local work=$1
    shift
    [ "${1:-}" = -- ] && shift
    [ $# -gt 0 ] || die "usage: $0 run WORK -- COMMAND [ARG]..."
    local merged=$work/merged
    mkdir -p "$work/upper" "$work/ovl-work" "$merged"
    # Global: the EXIT trap runs after this function has returned.
    mounted=()
    cleanup() {
        local i
        for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
            umount -R "${mounted[i]}" 2>/dev/null || umount -R -l "${mounted[i]}" || true
        done
    }
    trap cleanup EXIT
    mount -t overlay overlay -o "lowerdir=$out/root,upperdir=$work/upper,workdir=$work/ovl-work" "$merged"
    mounted+=("$merged")
    mount -t proc proc "$merged/proc"
    mounted+=("$merged/proc")
    mount -t sysfs sysfs "$merged/sys"
    mounted+=("$merged/sys")
    mount --rbind /dev "$merged/dev"
    mount --make-rslave "$merged/dev"
    mounted+=("$merged/dev")
    # Overlay mounts buildah makes (mkcw mounts one over the image's root file system) need
    # an upper directory outside overlayfs: buildah's storage and temporary files live in
    # WORK, bind-mounted.
    local d
    for d in var/lib/containers var/tmp; do
        mkdir -p "$work/${d//\//-}" "$merged/$d"
        mount --bind "$work/${d//\//-}" "$merged/$d"
        mounted+=("$merged/$d")
    done
    cp /etc/resolv.conf "$merged/etc/resolv.conf" 2>/dev/null || true
    local status=0
    chroot "$merged" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin \
        HOME=/root "$@" || status=$?
    return "$status"
}

[ -f "$out/buildah-version" ] || make_chroot
case "${1:-}" in
"") echo "$out" ;;
run)
    shift
    [ $# -ge 1 ] || die "usage: $0 run WORK -- COMMAND [ARG]..."
    run_in "$@"
    ;;
*) die "usage: $0 [run WORK -- COMMAND [ARG]...]" ;;
esac
