#!/bin/bash
# `make demo`: builds what the flow needs and runs a confidential workload end to end
# (scripts/demo-flow.sh): key broker on loopback, encrypted image built and registered,
# launched, output printed. Exits 0 only if the workload ran.
#
# Environment (make variables of the same name):
#   TEE=snp|sev-es|sev        the TEE (default snp; sev is plain SEV without SEV-ES)
#   TEE_BACKEND=model|hardware
#       model (default): the PSP model (KRUN_SEV_BACKEND=model; guest memory is NOT
#       encrypted). Where this machine cannot boot Linux guests with KVM, the flow runs inside
#       the nested-KVM test host (tests/host) and says so.
#       hardware: the real AMD Secure Processor (/dev/sev), directly, never in the test host.
#   SEV_CHAIN=FILE            hardware SEV/SEV-ES: `sevctl export --full FILE` of this host
#   VCEK_DIR=DIR              hardware SNP: the broker's VCEKs (docs/hardware.md)
#
# "Can boot Linux guests with KVM" means /dev/kvm exists and the CPU flags in /proc/cpuinfo
# include svm or vmx (hardware virtualization). The development machines have a paravirtual
# /dev/kvm (PVM) without either flag: Linux guests cannot run there (ARCHITECTURE.md §4).
#
# Needs: cargo, and the Debian packages of ci/packages.txt marked `demo`, which it installs
# first when run as root (ci/install-deps.sh demo; otherwise it stops and says what to run).
# apt-get fetches a static busybox for the workload (Debian's busybox-static, through
# tests/host/prepare.sh) and, on the first run, the guest kernel source.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEE=${TEE:-snp}
TEE_BACKEND=${TEE_BACKEND:-model}
say() { echo "[demo] $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

case $TEE in
    sev) mkcw_tee=sev-no-es ;;
    sev-es) mkcw_tee=sev-es ;;
    snp) mkcw_tee=snp ;;
    *) die "TEE must be sev, sev-es or snp (got '$TEE')" ;;
esac
case $TEE_BACKEND in
    model | hardware) ;;
    *) die "TEE_BACKEND must be model or hardware (got '$TEE_BACKEND')" ;;
esac

can_boot_linux_guests() {
    [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] &&
        grep -qwE 'svm|vmx' /proc/cpuinfo
}

# The Debian packages, before building anything.
"$root/ci/install-deps.sh" demo
command -v cargo >/dev/null || die "cargo is not in PATH: install Rust (README.md, Requirements)"

say "building the library, krun-sev and krun-kbs (cargo build --release)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p krun-sev -p krun-sev-cli -p krun-kbs
bin=$root/target/release
say "building the guest bundle (firmware/build-bundle.sh; the guest kernel is cached under ${KRUN_SEV_CACHE:-~/.cache/krun-sev})"
bundle=$root/build/bundle
"$root/firmware/build-bundle.sh" "$bundle" >/dev/null

work=$root/build/demo
rm -rf "$work"
mkdir -p "$work"
say "making a small busybox root file system (Debian's busybox-static via tests/host/prepare.sh)"
assets=${KRUN_TESTHOST_ASSETS:-$("$root/tests/host/prepare.sh")}
rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev" "$rootfs/tmp" "$rootfs/run"
cp "$assets/busybox" "$rootfs/bin/busybox"
for applet in sh echo uname nproc cat; do
    ln -s busybox "$rootfs/bin/$applet"
done

if [ "$TEE_BACKEND" = hardware ]; then
    [ -e /dev/sev ] || say "warning: /dev/sev is missing; the launch will fail (no fallback to the model)"
    say "running directly with KRUN_SEV_BACKEND=hardware (TEE=$TEE)"
    exec env KRUN_SEV_BACKEND=hardware KRUN_SEV_BUNDLE_DIR="$bundle" \
        sh "$root/scripts/demo-flow.sh" "$bin" "$rootfs" "$work/run" "$mkcw_tee"
fi

# The PSP model: its identity is made here (RSA key generation takes minutes under TCG) and
# the broker is configured with its roots by hand.
say "creating a PSP model identity and exporting its trust roots (krun-sev model-trust)"
KRUN_SEV_PSP_MODEL_DIR=$work/psp "$bin/krun-sev" model-trust "$work/trust"

if can_boot_linux_guests; then
    say "this machine has KVM with hardware virtualization: running directly (TEE=$TEE, PSP model)"
    exec env KRUN_SEV_BACKEND=model KRUN_SEV_BUNDLE_DIR="$bundle" \
        KRUN_SEV_PSP_MODEL_DIR="$work/psp" TRUST_DIR="$work/trust" \
        sh "$root/scripts/demo-flow.sh" "$bin" "$rootfs" "$work/run" "$mkcw_tee"
fi

say "this machine cannot boot Linux guests with KVM (no svm/vmx CPU flag or no usable /dev/kvm):"
say "running the same flow inside the nested-KVM test host (QEMU TCG emulating AMD-V); this takes a few minutes"
(cd "$rootfs" && tar -cf "$work/rootfs.tar" .)
inner='mkdir -p /tmp/rootfs && tar -xf /demo/rootfs.tar -C /tmp/rootfs &&
  export PATH=/usr/sbin:$PATH KRUN_SEV_BACKEND=model KRUN_SEV_BUNDLE_DIR=/demo/bundle KRUN_SEV_PSP_MODEL_DIR=/demo/psp TRUST_DIR=/demo/trust &&
  sh /demo/demo-flow.sh /demo/bin /tmp/rootfs /tmp/demo '"$mkcw_tee"
set +e
"$root/tests/host/run.sh" --timeout 1800 \
    --file "$bin/krun-sev:/demo/bin/krun-sev" --file "$bin/krun-kbs:/demo/bin/krun-kbs" \
    --file /usr/sbin/mkfs.ext4:/usr/sbin/mkfs.ext4 --file /usr/sbin/debugfs:/usr/sbin/debugfs \
    --file "$bundle:/demo/bundle" --file "$work/psp:/demo/psp" --file "$work/trust:/demo/trust" \
    --file "$work/rootfs.tar:/demo/rootfs.tar" --file "$root/scripts/demo-flow.sh:/demo/demo-flow.sh" \
    -- sh -c "$inner" | tee "$work/testhost.log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -eq 0 ] && grep -q '^DEMO_RESULT=ok' "$work/testhost.log"; then
    say "done: the workload ran inside the test host (TEE=$TEE, PSP model)"
    exit 0
fi
say "failed (status $status)"
exit 1
