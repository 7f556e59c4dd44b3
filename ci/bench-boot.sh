#!/bin/bash
# Boot benchmark (not a test; not part of `make test`): inside the nested-KVM test host, boots
# the same kernel, initrd and root-disk workload with our VMM (krun-vmm-boot, Rust API, no TEE)
# and with `qemu-system-x86_64 -M microvm`, and prints median boot-to-workload time, process
# wall time, VMM resident memory without guest RAM and VM exits (counted by kvm tracepoints)
# with the ratio ours/QEMU; then the confidential boot (`krun-sev run`, SNP on the PSP model,
# key from a krun-kbs broker after in-guest attestation) against the non-confidential boot of
# the same bundle and LUKS disk, and a per-phase trace of every VMM.
# See docs/benchmarks.md for what is measured and a result table.
#
# usage: ci/bench-boot.sh [RUNS]        (default 5 measured runs per VMM, plus 1 warm-up each)
# Env: KRUN_SEV_BUNDLE_DIR=DIR uses an existing bundle instead of building build/bundle.
# Needs: qemu-system-x86 (outer and inner VMM), e2fsprogs (mkfs.ext4 -d), cpio and the bundle's
# build dependencies (firmware/build-bundle.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${1:-5}
. "$root/ci/bench-lib.sh"
bench_prepare krun-boot-bench
cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p krun-sev-cli --bin krun-sev
cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p krun-kbs --bin krun-kbs

# The workload: a raw ext4 root disk whose command prints the marker and exits 0.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bench_root_disk "$work" "echo BENCH_WORKLOAD_DONE" echo

# The confidential case: the same files as a `krun-sev mkcw` SNP image (LUKS1, cheap PBKDF2
# as in the test-host tests: TCG), 1 vCPU and 256 MiB like the others, whose broker runs in
# the test host; the PSP model identity is made here (RSA key generation under TCG is slow).
passphrase="bench broker passphrase"
cp -a "$work/root" "$work/tee-root"
rm "$work/tee-root/.krun_config.json"
"$bin/krun-sev" mkcw --tee snp --cpus 1 --ram-mib 256 \
    --attestation-url http://127.0.0.1:8123 --workload-id boot-bench \
    --passphrase "$passphrase" --pbkdf2-iterations 1000 --env PATH=/bin \
    --cmd /bin/sh --cmd -c --cmd "echo BENCH_WORKLOAD_DONE" \
    "$work/tee-root" "$work/tee" 2>/dev/null
KRUN_SEV_PSP_MODEL_DIR=$work/psp "$bin/krun-sev" model-trust "$work/trust" 2>/dev/null

qemu=/usr/bin/qemu-system-x86_64
# VM exits are counted with hist triggers on kvm tracepoints; the test host does not mount
# tracefs itself.
script="mount -t tracefs tracefs /sys/kernel/tracing
M=\$(KRUN_SEV_BUNDLE_DIR=/bundle /bin/krun-sev measure --tee-config /tee/krun-sev.json)
echo '$passphrase' > /tmp/pp
/bin/krun-kbs --db /tmp/kbs.db workload add --id boot-bench --tee snp --measurement \"\$M\" \
  --passphrase-file /tmp/pp
/bin/krun-kbs --listen 127.0.0.1:8123 --db /tmp/kbs.db --trust-root /trust/roots.pem \
  --vcek-dir /trust/vcek > /tmp/kbs.log 2>&1 &
for i in \$(seq 50); do grep -q listening /tmp/kbs.log && break; sleep 0.2; done
krun-boot-bench --kernel /bundle/bzImage --initrd /bundle/initrd.cpio.zst --root /disks/root.img \
  --vmm /bin/krun-vmm-boot --qemu $qemu --runs $runs \
  --tee-disk /tee/disk.img --tee-config /tee/krun-sev.json --krun-sev /bin/krun-sev \
  --dev-passphrase '$passphrase' --bundle-dir /bundle --psp-model-dir /psp \
  || { cat /tmp/kbs.log; exit 1; }"
"$bin/krun-testhost" --mem 2048 --timeout $((240 + runs * 150)) \
    --file "$bundle:/bundle" \
    --file "$bin/krun-vmm-boot:/bin/krun-vmm-boot" \
    --file "$bin/krun-boot-bench:/usr/local/bin/krun-boot-bench" \
    --file "$bin/krun-sev:/bin/krun-sev" \
    --file "$bin/krun-kbs:/bin/krun-kbs" \
    --file "$work/psp:/psp" \
    --file "$work/trust:/trust" \
    --file "$work/tee/disk.img:/tee/disk.img" \
    --file "$work/tee/krun-sev.json:/tee/krun-sev.json" \
    --file "$work/root.img:/disks/root.img" \
    --file "$qemu:$qemu" \
    --file /usr/share/qemu/qboot.rom:/usr/share/qemu/qboot.rom \
    --file /usr/share/qemu/pvh.bin:/usr/share/qemu/pvh.bin \
    -- sh -c "$script"
