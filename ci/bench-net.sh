#!/bin/bash
# Network throughput benchmark (not a test; not part of `make test`): inside the nested-KVM
# test host, a guest sends MiB of zeros over TCP to the host through passt, with our
# virtio-net (krun-vmm-boot --net-socket) and with QEMU's (-M microvm, -netdev stream), the
# same kernel, initrd, root disk and passt; prints the median throughput and the ratio
# ours/QEMU. See docs/benchmarks.md for what is measured and a result table.
#
# usage: ci/bench-net.sh [RUNS] [MIB]   (default 5 measured runs per VMM plus 1 warm-up each,
#                                        64 MiB per run)
# Env: KRUN_SEV_BUNDLE_DIR=DIR uses an existing bundle instead of building build/bundle.
# Needs: what ci/bench-boot.sh needs, plus passt.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${1:-5}
mib=${2:-64}
port=5201
. "$root/ci/bench-lib.sh"
bench_prepare krun-net-bench

# The workload: a raw ext4 root disk whose command sends the zeros to the gateway address,
# which passt maps to the test host's loopback. It exits 0 whatever nc reports: the
# benchmark checks the byte count on the receiving side.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bench_root_disk "$work" "dd if=/dev/zero bs=65536 count=$((mib * 16)) 2>/dev/null | nc 192.0.2.1 $port; exit 0" dd nc

qemu=/usr/bin/qemu-system-x86_64
# The host network passt copies (dummy0, a default route, a nameserver); passt started as
# root changes to the user nobody; its sandbox pivots its root, which the initramfs root
# cannot be, so the benchmark runs in a mount namespace whose root is a bind mount of it
# (tests/host/tests/e2e.rs does the same).
script="ip addr add 192.0.2.10/24 dev dummy0 && ip link set dummy0 up && ip route add default via 192.0.2.1
echo nameserver 192.0.2.53 > /etc/resolv.conf
echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >> /etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' > /etc/group
mkdir -p /host
unshare -m sh -c 'mount -o rbind / /host && cd /host && mount -o move . / && exec chroot . \
krun-net-bench --kernel /bundle/bzImage --initrd /bundle/initrd.cpio.zst --root /disks/root.img \
--vmm /bin/krun-vmm-boot --qemu $qemu --passt /usr/bin/passt --runs $runs --mib $mib --port $port'"
"$bin/krun-testhost" --mem 2048 --timeout $((300 + runs * 240)) \
    --file "$bundle:/bundle" \
    --file "$bin/krun-vmm-boot:/bin/krun-vmm-boot" \
    --file "$bin/krun-net-bench:/usr/local/bin/krun-net-bench" \
    --file "$work/root.img:/disks/root.img" \
    --file /usr/bin/passt:/usr/bin/passt \
    --file "$qemu:$qemu" \
    --file /usr/share/qemu/qboot.rom:/usr/share/qemu/qboot.rom \
    --file /usr/share/qemu/pvh.bin:/usr/share/qemu/pvh.bin \
    -- sh -c "$script"
