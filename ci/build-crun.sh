#!/bin/bash
# Builds crun VERSION --with-libkrun against this project's libkrun.h and caches the binary:
#
#   ci/build-crun.sh 1.8.1|1.21      prints the path of the cached crun binary
#
# 1.8.1 is Debian 12's source package (`apt-get source crun` from the bookworm deb-src of the
# mirror /etc/apt/sources.list* names; Debian's patches applied). 1.21 is the upstream release
# tarball Debian 13 builds from, `crun_1.21.orig.tar.gz` in pool/main/c/crun/ of the same mirror
# (the mirror does not serve its .dsc), checked against the pinned sha256 of crun's release
# tarball. apt runs with a private sources list, state and cache, so the system's apt state
# is untouched.
#
# Cache: ${KRUN_SEV_CACHE:-~/.cache/krun-sev}/crun-VERSION-<sha256 of this script>/ holds
# `crun` and `build-info`; it is rebuilt when include/libkrun.h changed (so a header change is
# compiled against crun's sources again). Build dependencies: ci/packages.txt (libyajl-dev,
# libseccomp-dev, libcap-dev, dpkg-dev, curl, build-essential). systemd and CRIU are disabled
# (fewer dependencies; the test host runs crun with --cgroup-manager=cgroupfs); eBPF stays on,
# since crun applies its device rules on cgroup v2 with it. Only the binary is installed.
set -euo pipefail
version=${1:?usage: ci/build-crun.sh 1.8.1|1.21}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
header=${KRUN_SEV_HEADER:-$root/include/libkrun.h}
script_sha=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
header_sha=$(sha256sum "$header" | cut -d' ' -f1)
cache=${KRUN_SEV_CACHE:-$HOME/.cache/krun-sev}/crun-$version-$script_sha
log() { echo "[build-crun $version] $*" >&2; }

if [ -x "$cache/crun" ] && grep -qx "header-sha256=$header_sha" "$cache/build-info" 2>/dev/null; then
    echo "$cache/crun"
    exit 0
fi

# The Debian mirror the machine uses (one-line or deb822 sources).
mirror=$({ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } |
    sed -n -e 's|^deb \(\[[^]]*\] \)\{0,1\}\(https\{0,1\}://[^ ]*/debian/\{0,1\}\) .*|\2|p' \
        -e 's|^URIs: *\(https\{0,1\}://[^ ]*/debian/\{0,1\}\)$|\1|p' | head -n1)
[ -n "$mirror" ] || { log "no Debian mirror found in /etc/apt/sources.list*"; exit 1; }
mirror=${mirror%/}/

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case "$version" in
1.8.1)
    suite=bookworm
    mkdir -p "$work/apt/state/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
        >"$work/apt/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State=$work/apt/state" -o "Dir::Cache=$work/apt/cache"
        -o Dir::State::status=/var/lib/dpkg/status -o Debug::NoLocking=1
        -o APT::Sandbox::User="$(id -un)")
    log "apt-get source crun ($suite, $mirror)"
    apt-get "${apt_opts[@]}" -qq update >&2
    (cd "$work/src" && apt-get "${apt_opts[@]}" -qq source crun >&2)
    src=$work/src/crun-$version
    [ -d "$src" ] || { log "$suite's crun source is not $version: $(ls "$work/src")"; exit 1; }
    ;;
1.21)
    suite=trixie
    # crun's release tarball (github.com/containers/crun/releases/download/1.21/crun-1.21.tar.gz),
    # which Debian 13 uses as its .orig.
    sha=4bfb700e764a4804a4de3ecf07753f4c391005356d60356df65d80ae0914c486
    log "downloading ${mirror}pool/main/c/crun/crun_$version.orig.tar.gz"
    curl -fsSL -o "$work/crun.tar.gz" "${mirror}pool/main/c/crun/crun_$version.orig.tar.gz"
    echo "$sha  $work/crun.tar.gz" | sha256sum -c --quiet - ||
        { log "sha256 of crun_$version.orig.tar.gz is not $sha"; exit 1; }
    tar -xzf "$work/crun.tar.gz" -C "$work"
    src=$work/crun-$version
    ;;
*)
    log "unknown version (1.8.1 or 1.21)"
    exit 1
    ;;
esac
[ -f "$src/configure" ] || { log "no configure in $src"; exit 1; }

# The header as `make install` installs it, alone in an include directory.
mkdir -p "$work/include"
cp "$header" "$work/include/libkrun.h"
log "building in $src"
(
    cd "$src"
    ./configure --with-libkrun --disable-systemd --disable-criu \
        CPPFLAGS="-I$work/include" CFLAGS="-O2 -g0" >"$work/configure.log" 2>&1 ||
        { tail -n 30 "$work/configure.log" >&2; exit 1; }
    make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 40 "$work/make.log" >&2; exit 1; }
)
"$src/crun" --version | grep -q '+LIBKRUN' || { log "crun was built without libkrun"; exit 1; }

mkdir -p "$cache"
install -m 0755 "$src/crun" "$cache/crun.new"
mv "$cache/crun.new" "$cache/crun"
{
    echo "crun=$version suite=$suite"
    echo "toolchain=$(gcc --version | head -n1)"
    echo "header-sha256=$header_sha"
    echo "script-sha256=$script_sha"
    echo "mirror=$mirror"
    "$cache/crun" --version
} >"$cache/build-info"
log "cached $cache/crun"
echo "$cache/crun"
