#!/usr/bin/env bash
# Installs the library into a temporary prefix, checks the installed files (SONAME, symlinks,
# exported symbols), then compiles tests/c/api_test.c and tests/c/crun_names.c against the
# installed header and library through pkg-config and runs them.
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
    krun_set_root krun_set_mapped_volumes krun_add_net_unixstream; do
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
# The libkrun.h names crun's krun handler uses (1.8.1 to HEAD), against the installed header.
# shellcheck disable=SC2046
gcc -std=c11 -Wall -Wextra -Werror -o "$work/crun_names" "$repo/tests/c/crun_names.c" \
    $(pkg-config --cflags --libs libkrun-sev)
[ "$(LD_LIBRARY_PATH="$libdir" "$work/crun_names")" = CRUN_NAMES_OK ] || fail "crun_names"
echo "the libkrun.h names crun uses compile and have upstream's values"
# crun 1.6-1.20 (Debian 12's 1.8.1) make every call after pivot_root into the container: the
# bundle must come from the mapping made when the library was loaded on the host.
gcc -std=c11 -Wall -Wextra -Werror -o "$work/crun_chroot_order" "$repo/tests/c/crun_chroot_order.c" -ldl
bundle="$work/bundle"
mkdir -p "$bundle" "$work/root"
printf '\177ELF not a kernel: the launch fails later, at KVM' >"$bundle/vmlinux"
printf 'initrd' >"$bundle/initrd.cpio.gz"
entry() { printf '"%s":{"size":%s,"sha256":"%s"}' "$1" "$(stat -c %s "$bundle/$1")" "$(sha256sum "$bundle/$1" | cut -d' ' -f1)"; }
printf '{"format":1,"kernel_version":"6.12-test","nr_cpus":8,"files":{%s,%s}}' \
    "$(entry vmlinux)" "$(entry initrd.cpio.gz)" >"$bundle/manifest.json"
head -c 4096 /dev/zero >"$work/root/disk.img"
printf '%s' '{"tee":"snp","tee_data":"","workload_id":"w","cpus":1,"ram_mib":64,"attestation_url":""}' \
    >"$work/root/krun-sev.json"
# chroot needs CAP_SYS_CHROOT: root, or a user namespace mapping us to root.
as_root=()
[ "$(id -u)" = 0 ] || as_root=(unshare --user --map-root-user)
# A launch that begins and fails ends the process with 125 and one line saying why
# (docs/crun-podman.md, "Exit status"); krun_start_enter does not return.
launch_failed() { # launch_failed STATUS OUT WHAT: checks the status, the output, the one line
    [ "$1" = 125 ] && [ -z "$2" ] && [ "$(grep -c 'krun_start_enter: cannot start the microVM' "$work/stderr")" = 1 ] \
        || fail "$3: status $1, stdout '$2', stderr: $(cat "$work/stderr")"
}
chroot_run() {
    LD_LIBRARY_PATH="$libdir" KRUN_SEV_BACKEND=model KRUN_SEV_PSP_MODEL_DIR=/psp \
        KRUN_SEV_BUNDLE_DIR="$1" "${as_root[@]}" "$work/crun_chroot_order" "$work/root" 2>"$work/stderr"
}
rc=0; out=$(chroot_run "$bundle") || rc=$?
launch_failed "$rc" "$out" "crun 1.8.1 order"
if grep -q 'guest bundle' "$work/stderr"; then
    fail "crun 1.8.1 order: the bundle mapped at load was not used after chroot: $(cat "$work/stderr")"
fi
# The control: no bundle where the library looked when it was loaded.
rc=0; out=$(chroot_run "$work/no-bundle") || rc=$?
launch_failed "$rc" "$out" "crun 1.8.1 order without a bundle"
grep -q 'cannot load the guest bundle' "$work/stderr" \
    || fail "crun 1.8.1 order without a bundle: $(cat "$work/stderr")"
echo "crun 1.8.1 call order (dlopen on the host, every call after chroot) reaches past the bundle"

# The host decides the settings, never the container (docs/crun-podman.md, "Host settings"):
# they are taken when the library is loaded, from the loading process's environment and the
# host configuration file (KRUN_SEV_CONFIG names it here), and what crun's process.env says
# afterwards changes nothing. Each run replaces the environment after dlopen as crun does.
# Model launches show the "NOT encrypted" warning at crun's log level 1.
settings_run() { # settings_run ENV_AT_LOAD... -- CONTAINER_ENV...
    local load=()
    while [ "$1" != -- ]; do load+=("$1"); shift; done
    shift
    env -u KRUN_SEV_BACKEND -u KRUN_SEV_BUNDLE_DIR -u KRUN_SEV_PSP_MODEL_DIR -u KRUN_SEV_CONFIG \
        -u RUST_LOG LD_LIBRARY_PATH="$libdir" "${load[@]}" \
        "${as_root[@]}" "$work/crun_chroot_order" "$work/root" "$@" 2>"$work/stderr"
}
container_env=(KRUN_SEV_BACKEND=hardware "KRUN_SEV_BUNDLE_DIR=$work/no-bundle" KRUN_SEV_CONFIG=/no.conf RUST_LOG=trace)
printf 'backend = model\nbundle_dir = %s\nmodel_dir = /psp\nlog_level = info\n' "$bundle" >"$work/krun-sev.conf"
# 1. Everything from the host configuration file; the container asks for other values.
rc=0; out=$(settings_run KRUN_SEV_CONFIG="$work/krun-sev.conf" -- "${container_env[@]}") || rc=$?
launch_failed "$rc" "$out" "settings from the file"
grep -q "bundle directory $bundle (configuration file), backend model (configuration file), PSP model identity /psp (configuration file), log filter \"info\" (configuration file)" "$work/stderr" \
    || fail "settings from the file not used: $(cat "$work/stderr")"
grep -q 'Guest memory is NOT encrypted' "$work/stderr" || fail "no model warning: $(cat "$work/stderr")"
if grep -q 'guest bundle\|SEV hardware backend' "$work/stderr"; then
    fail "the container's environment was used: $(cat "$work/stderr")"
fi
# 2. The loading process's environment wins over the file.
rc=0; out=$(settings_run KRUN_SEV_CONFIG="$work/krun-sev.conf" KRUN_SEV_BACKEND=hardware -- KRUN_SEV_BACKEND=model) || rc=$?
launch_failed "$rc" "$out" "environment at load over the file"
grep -q 'backend hardware (environment at load)' "$work/stderr" \
    && grep -q 'SEV hardware backend unavailable' "$work/stderr" \
    || fail "environment at load over the file: $out $(cat "$work/stderr")"
if grep -q 'NOT encrypted' "$work/stderr"; then fail "model used: $(cat "$work/stderr")"; fi
# 3. Nothing at load (no file, default backend): the container's KRUN_SEV_BACKEND=model and
#    bundle are ignored; the log level is crun's 1, so only the launch error shows.
rc=0; out=$(settings_run KRUN_SEV_CONFIG="$work/none.conf" -- KRUN_SEV_BACKEND=model "KRUN_SEV_BUNDLE_DIR=$bundle") || rc=$?
launch_failed "$rc" "$out" "nothing at load"
grep -q 'SEV hardware backend unavailable' "$work/stderr" || fail "container's backend used: $out $(cat "$work/stderr")"
grep -q "host settings: cannot read $work/none.conf" "$work/stderr" || fail "missing config not reported: $(cat "$work/stderr")"
# 4. A bad line in the file is reported with its line number; a bad backend fails the launch.
printf 'bundle_dir = %s\nbackend = modle\n' "$bundle" >"$work/bad.conf"
rc=0; out=$(settings_run KRUN_SEV_CONFIG="$work/bad.conf" -- KRUN_SEV_BACKEND=model) || rc=$?
launch_failed "$rc" "$out" "bad backend in the file"
grep -q "host settings: $work/bad.conf line 2: .backend. is \"modle\"" "$work/stderr" \
    && grep -q 'the backend "modle" (from the configuration file) must be' "$work/stderr" \
    || fail "bad backend in the file: $(cat "$work/stderr")"
echo "host settings come from the loading process and /etc/krun-sev.conf, not the container's environment"

echo "installed library checks passed (SONAME $soname, $(wc -l <<<"$exported") symbols)"
