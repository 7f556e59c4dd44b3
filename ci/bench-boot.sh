#!/bin/bash
# Boot benchmark (not a test; not part of `make test`): inside the nested-KVM test host, boots
# the same kernel, initrd and root-disk workload with our VMM (krun-vmm-boot, Rust API, no TEE)
# and with `qemu-system-x86_64 -M microvm`, and prints median boot-to-workload time, process
# wall time and VM exits (counted by kvm tracepoints) with the ratio ours/QEMU.
# See docs/benchmarks.md for what is measured and a result table.
#
# usage: ci/bench-boot.sh [RUNS]        (default 5 measured runs per VMM, plus 1 warm-up each)
# Env: KRUN_SEV_BUNDLE_DIR=DIR uses an existing bundle instead of building build/bundle.
# Needs: qemu-system-x86 (outer and inner VMM), e2fsprogs (mkfs.ext4 -d), cpio and the bundle's
# build dependencies (firmware/build-bundle.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${1:-5}
if [ -n "${KRUN_SEV_BUNDLE_DIR:-}" ]; then
    bundle=$KRUN_SEV_BUNDLE_DIR
else
    bundle=$root/build/bundle
    "$root/firmware/build-bundle.sh" "$bundle" >/dev/null
fi
assets=$("$root/tests/host/prepare.sh" | tail -n 1)
cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p krun-testhost \
    --bin krun-testhost --bin krun-vmm-boot --bin krun-boot-bench
bin=$root/target/release

# The workload: a raw ext4 root disk whose command prints the marker and exits 0.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin" "$work/root/proc" "$work/root/sys" "$work/root/dev" \
    "$work/root/tmp" "$work/root/run"
cp "$assets/busybox" "$work/root/bin/busybox"
ln -s busybox "$work/root/bin/sh"
ln -s busybox "$work/root/bin/echo"
printf '%s' '{"config":{"Cmd":["/bin/sh","-c","echo BENCH_WORKLOAD_DONE"],"Env":["PATH=/bin"],"WorkingDir":"/"}}' \
    >"$work/root/.krun_config.json"
truncate -s 32M "$work/root.img"
mkfs.ext4 -q -F -d "$work/root" "$work/root.img"

qemu=/usr/bin/qemu-system-x86_64
# VM exits are counted with hist triggers on kvm tracepoints; the test host does not mount
# tracefs itself.
script="mount -t tracefs tracefs /sys/kernel/tracing; \
krun-boot-bench --kernel /bundle/bzImage --initrd /bundle/initrd.cpio.zst --root /disks/root.img \
--vmm /bin/krun-vmm-boot --qemu $qemu --runs $runs"
"$bin/krun-testhost" --mem 2048 --timeout $((120 + runs * 60)) \
    --file "$bundle:/bundle" \
    --file "$bin/krun-vmm-boot:/bin/krun-vmm-boot" \
    --file "$bin/krun-boot-bench:/usr/local/bin/krun-boot-bench" \
    --file "$work/root.img:/disks/root.img" \
    --file "$qemu:$qemu" \
    --file /usr/share/qemu/qboot.rom:/usr/share/qemu/qboot.rom \
    --file /usr/share/qemu/pvh.bin:/usr/share/qemu/pvh.bin \
    -- sh -c "$script"
