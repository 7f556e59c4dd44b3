# Shared by ci/bench-boot.sh and ci/bench-net.sh, which source it after setting $root.

# bench_prepare BIN...: $bundle (KRUN_SEV_BUNDLE_DIR, else build/bundle, built), $assets (the
# test host's), and in release mode krun-testhost, krun-vmm-boot and each BIN of krun-testhost,
# in $bin.
bench_prepare() {
    if [ -n "${KRUN_SEV_BUNDLE_DIR:-}" ]; then
        bundle=$KRUN_SEV_BUNDLE_DIR
    else
        bundle=$root/build/bundle
        "$root/firmware/build-bundle.sh" "$bundle" >/dev/null
    fi
    assets=$("$root/tests/host/prepare.sh" | tail -n 1)
    local bins=()
    for b in "$@"; do bins+=(--bin "$b"); done
    cargo build --quiet --release --manifest-path "$root/Cargo.toml" -p krun-testhost \
        --bin krun-testhost --bin krun-vmm-boot "${bins[@]}"
    bin=$root/target/release
}

# bench_root_disk DIR COMMAND TOOL...: DIR/root.img, a 32 MiB raw ext4 root disk made from
# the tree DIR/root, whose workload is `/bin/sh -c COMMAND` (static busybox as sh and as each
# TOOL; COMMAND holds no double quote or backslash).
bench_root_disk() {
    local dir=$1 cmd=$2
    shift 2
    mkdir -p "$dir/root/bin" "$dir/root/proc" "$dir/root/sys" "$dir/root/dev" \
        "$dir/root/tmp" "$dir/root/run" "$dir/root/etc"
    cp "$assets/busybox" "$dir/root/bin/busybox"
    for t in sh "$@"; do ln -s busybox "$dir/root/bin/$t"; done
    printf '{"config":{"Cmd":["/bin/sh","-c","%s"],"Env":["PATH=/bin"],"WorkingDir":"/"}}' \
        "$cmd" >"$dir/root/.krun_config.json"
    truncate -s 32M "$dir/root.img"
    mkfs.ext4 -q -F -d "$dir/root" "$dir/root.img"
}
