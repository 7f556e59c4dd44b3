#!/bin/bash
# Builds what the test-host acceptance tests need (test host assets, guest bundle) and runs
# them in the nested-KVM test host (issues 3 to 8), plus the unit tests that need a KVM which
# boots guests (tests/host/tests/kvm_unit.rs: one boot, about 15 s). Each test host run prints
# its wall time.
#
# Cost: about 11 minutes of test host runs once the kernel is cached (the end-to-end test's
# boots with debug binaries under TCG take most of them; its real-crun boot about 1.5 minutes;
# the hostile-guest test 2.5 to 4 minutes, up to 7.5 on a loaded machine);
# a cold cache adds the guest kernel build (about 8 minutes on 2 cores), the two crun builds
# (about a minute each) and ~190 MB of Debian package downloads.
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
"$root/tests/host/prepare.sh" >/dev/null
"$root/firmware/build-bundle.sh" "$bundle" >/dev/null
# The real-buildah test (tests/host/tests/buildah.rs): a Debian 13 chroot with buildah 1.39
# (debootstrap once, cached) and the bundle as libkrunfw-sev.so.4 (in build/).
"$root/ci/trixie-chroot.sh" >/dev/null
make -C "$root" --no-print-directory krunfw-from-bundle KRUNFW_BUNDLE="$bundle" >/dev/null
# The broker tests and the end-to-end test run these inside the test host; the end-to-end
# test also links a C program against the library's cdylib.
cargo build --manifest-path "$root/Cargo.toml" -p krun-kbs -p krun-sev-cli -p krun-sev
# Real crun --with-libkrun for the end-to-end test's crun boot (cached; about a minute each
# on a cold cache): Debian 12's 1.8.1 and the 1.21 tarball Debian 13 builds from.
"$root/ci/build-crun.sh" 1.8.1 >/dev/null
"$root/ci/build-crun.sh" 1.21 >/dev/null
# The independent measurement oracle on the real bundle (no test host needed, only the bundle).
KRUN_SEV_BUNDLE_DIR=$bundle cargo test --manifest-path "$root/Cargo.toml" -p krun-sev-cli \
    --test measure_oracle -- --ignored --nocapture
# The init's DHCP client against Debian's real passt (ci/packages.txt), which copies this
# machine's network (needs an IPv4 default route): no test host needed.
cargo test --manifest-path "$root/Cargo.toml" -p krun-init --bin krun-init dhcp_lease_from_real_passt \
    -- --ignored --nocapture
KRUN_SEV_BUNDLE_DIR=$bundle cargo test --manifest-path "$root/Cargo.toml" -p krun-testhost \
    --test testhost --test kvm_unit --test vmm_boot --test luks_boot --test tee_model --test e2e --test buildah --test hostile -- --ignored --test-threads=1 --nocapture
echo "[testhost-tests] done in $(($(date +%s) - start)) s" >&2
