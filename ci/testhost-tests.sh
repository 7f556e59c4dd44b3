#!/bin/bash
# Builds what the test-host acceptance tests need (test host assets, guest bundle) and runs
# them in the nested-KVM test host (issues 3 to 8), plus the unit tests that need a KVM which
# boots guests (tests/host/tests/kvm_unit.rs: one boot, about 15 s). Each test host run prints
# its wall time.
#
# Cost (each step prints its wall time): about 30 minutes of test host runs on 2 cores once
# the kernel is cached, most of it the end-to-end tests' confidential launches with debug
# binaries under TCG (e2e.rs about 11 minutes, buildah.rs 2, the hostile guest 3, the others
# 1 to 2 each); a cold cache adds the guest kernel build (about 8 minutes on 2 cores), the
# two crun builds (about a minute each) and ~190 MB of Debian package downloads.
# Needs: qemu-system-x86 (the outer and inner VMM), cpio, e2fsprogs (mkfs.ext4 and debugfs,
# also copied into the test host for mkcw), gcc and tar (the end-to-end test; gcc also builds
# the hostile-guest test's guest kernel, docs/hostile-guest.md), crun's build
# dependencies (ci/build-crun.sh), cryptsetup-bin (the LUKS oracle run inside the test host),
# debootstrap and root (the real-buildah test's Debian 13 chroot), plus the kernel build
# dependencies listed in firmware/build-kernel.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bundle=${KRUN_SEV_BUNDLE_DIR:-$root/build/bundle}
start=$(date +%s)
step_start=$start
# step NAME: prints the wall time of the step that just ended (where CI time goes).
step() {
    local now
    now=$(date +%s)
    echo "[testhost-tests] $1: $((now - step_start)) s" >&2
    step_start=$now
}
"$root/tests/host/prepare.sh" >/dev/null
"$root/firmware/build-bundle.sh" "$bundle" >/dev/null
# The real-buildah test (tests/host/tests/buildah.rs): a Debian 13 chroot with buildah 1.39
# (debootstrap once, cached) and the bundle as libkrunfw-sev.so.4 (in build/).
"$root/ci/trixie-chroot.sh" >/dev/null
make -C "$root" --no-print-directory krunfw-from-bundle KRUNFW_BUNDLE="$bundle" >/dev/null
step "test host assets, bundle, trixie chroot, krunfw"
# The broker tests and the end-to-end test run these inside the test host; the end-to-end
# test also links a C program against the library's cdylib.
cargo build --manifest-path "$root/Cargo.toml" -p krun-kbs -p krun-sev-cli -p krun-sev
step "cargo build (binaries and cdylib)"
# Real crun --with-libkrun for the end-to-end test's crun boot (cached; about a minute each
# on a cold cache): Debian 12's 1.8.1 and the 1.21 tarball Debian 13 builds from.
"$root/ci/build-crun.sh" 1.8.1 >/dev/null
"$root/ci/build-crun.sh" 1.21 >/dev/null
step "crun 1.8.1 and 1.21"
# Two ignored tests that need no test host: the independent measurement oracle on the real
# bundle, and the init's DHCP client against Debian's real passt (ci/packages.txt), which
# copies this machine's network (needs an IPv4 default route). The test host tests follow.
# All run from the workspace's test build (`--workspace`): after `make test`'s unit tests
# that is the same features and environment, so little is compiled again (with `-p`, each
# package's tests would be compiled once more, minutes on 2 cores).
KRUN_SEV_BUNDLE_DIR=$bundle cargo test --manifest-path "$root/Cargo.toml" --workspace --tests \
    -- --ignored --exact --nocapture measure_agrees_with_the_oracle_on_the_real_bundle \
    net::packet::tests::dhcp_lease_from_real_passt
step "measurement oracle and DHCP against passt"
KRUN_SEV_BUNDLE_DIR=$bundle cargo test --manifest-path "$root/Cargo.toml" --workspace \
    --test testhost --test kvm_unit --test vmm_boot --test luks_boot --test tee_model --test e2e --test buildah --test hostile -- --ignored --test-threads=1 --nocapture
step "test host tests"
echo "[testhost-tests] done in $(($(date +%s) - start)) s" >&2
