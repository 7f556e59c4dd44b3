#!/bin/bash
# Installs the Debian packages listed in ci/packages.txt (the one list) that are missing.
# `make test`, `make demo` (scripts/demo.sh) and .ci/run call it before building anything.
#
# usage: ci/install-deps.sh [--check] [test|demo]
#   test (default)  everything make test needs (a superset of demo)
#   demo            what make demo needs
#   --check         only report; install nothing (exit 1 when something is missing)
#
# As root: runs `apt-get update` when the package lists are missing or something is to be
# installed, then `apt-get install -y` the missing packages. The package lists are needed
# even when nothing is missing: firmware/build-kernel.sh and tests/host/prepare.sh fetch
# pinned packages with `apt-get download`.
# Not root: when packages are missing, stops with the one command to run (exit 1); missing
# package lists only give a warning (the downloads may already be cached).
# Not Debian (no dpkg-query): says what to install and carries on.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
list=$here/packages.txt
say() { echo "[install-deps] $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

check_only=0
purpose='test'
for arg in "$@"; do
    case $arg in
        --check) check_only=1 ;;
        test | demo) purpose=$arg ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument '$arg' (usage: ci/install-deps.sh [--check] [test|demo])" ;;
    esac
done

# The packages of ci/packages.txt used by $purpose.
packages=()
while read -r line; do
    line=${line%%#*}
    read -r -a words <<<"$line"
    [ "${#words[@]}" -gt 0 ] || continue
    [ "${#words[@]}" -gt 1 ] || die "$list: '${words[0]}' has no USED-BY (test and/or demo)"
    for used_by in "${words[@]:1}"; do
        case $used_by in
            test | demo) ;;
            *) die "$list: '${words[0]}' is used by '$used_by'; expected test or demo" ;;
        esac
        # Everything in the list is needed by make test.
        if [ "$purpose" = test ] || [ "$used_by" = "$purpose" ]; then
            packages+=("${words[0]}")
            break
        fi
    done
done <"$list"
[ "${#packages[@]}" -gt 0 ] || die "$list lists no package for $purpose"

if ! command -v dpkg-query >/dev/null; then
    say "warning: not a Debian system (no dpkg-query); make sure the equivalents of these Debian packages are installed: ${packages[*]}"
    exit 0
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
have_lists=0
if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    have_lists=1
fi

if [ "${#missing[@]}" -eq 0 ] && [ "$have_lists" = 1 ]; then
    exit 0
fi

if [ "$check_only" = 1 ] || [ "$(id -u)" != 0 ]; then
    if [ "${#missing[@]}" -gt 0 ]; then
        say "error: missing Debian packages for make $purpose: ${missing[*]}"
        say "install them (as root) with:"
        say "    sudo ci/install-deps.sh $purpose"
        say "or: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
        exit 1
    fi
    say "warning: no apt package lists; the first kernel build and test host set-up fetch pinned packages with 'apt-get download', which needs them: run 'sudo apt-get update'"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
say "apt-get update"
apt-get update -qq
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get install -y -qq "${missing[@]}"
fi
