#!/usr/bin/env bash
# Installs the library into a temporary prefix, checks the installed files (SONAME, symlinks,
# exported symbols), then compiles tests/c/api_test.c against the installed header and
# library through pkg-config and runs it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"

make -C "$repo" --no-print-directory install-lib PREFIX="$prefix" >/dev/null
libdir="$prefix/lib"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)

fail() { echo "FAIL: $*" >&2; exit 1; }

[ -f "$libdir/libkrun-sev.so.$version" ] || fail "libkrun-sev.so.$version not installed"
[ "$(readlink "$libdir/libkrun-sev.so.1")" = "libkrun-sev.so.$version" ] || fail "libkrun-sev.so.1 symlink"
[ "$(readlink "$libdir/libkrun-sev.so")" = "libkrun-sev.so.1" ] || fail "libkrun-sev.so symlink"
[ -f "$prefix/include/libkrun.h" ] || fail "header not installed"

soname=$(readelf -d "$libdir/libkrun-sev.so.$version" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = "libkrun-sev.so.1" ] || fail "SONAME is '$soname', want libkrun-sev.so.1"

exported=$(nm -D --defined-only "$libdir/libkrun-sev.so.$version" | awk '{print $3}')
for sym in krun_set_log_level krun_create_ctx krun_free_ctx krun_set_vm_config \
    krun_set_root_disk krun_set_data_disk krun_set_port_map krun_set_rlimits \
    krun_set_workdir krun_set_exec krun_set_env krun_set_tee_config_file krun_start_enter \
    krun_set_root krun_set_mapped_volumes; do
    grep -qx "$sym" <<<"$exported" || fail "symbol $sym not exported"
done
# Every function the header declares is exported.
for sym in $(grep -o 'krun_[a-z_]*(' "$prefix/include/libkrun.h" | tr -d '(' | sort -u); do
    grep -qx "$sym" <<<"$exported" || fail "header declares $sym but the library does not export it"
done

export PKG_CONFIG_PATH="$libdir/pkgconfig"
# shellcheck disable=SC2046
gcc -std=c11 -Wall -Wextra -Werror -o "$work/api_test" "$repo/tests/c/api_test.c" \
    $(pkg-config --cflags --libs libkrun-sev) -ldl
head -c 4096 /dev/zero >"$work/disk.img"
LD_LIBRARY_PATH="$libdir" "$work/api_test" "$repo/tee-configs" "$work/disk.img"
echo "installed library checks passed (SONAME $soname, $(wc -l <<<"$exported") symbols)"
