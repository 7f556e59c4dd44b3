#!/bin/bash
# Checks a built guest bundle against the pinned SHA-256 of bzImage and initrd.cpio.zst in
# firmware/bundle.pins, or rewrites the pins from it. Users compute launch digests in
# advance from these bytes, so every machine must build the same ones.
#
# usage: firmware/bundle-pins.sh check  [BUNDLE_DIR]   (exit 1 when a file differs)
#        firmware/bundle-pins.sh update [BUNDLE_DIR]   (writes firmware/bundle.pins)
# BUNDLE_DIR defaults to build/bundle. `make bundle-pins` and `make pin-bundle` build the
# bundle first and run these.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pins=$root/firmware/bundle.pins
files=(bzImage initrd.cpio.zst)
say() { echo "[bundle-pins] $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

mode=${1:-}
bundle=${2:-$root/build/bundle}
case $mode in
    check | update) ;;
    *) die "usage: firmware/bundle-pins.sh check|update [BUNDLE_DIR]" ;;
esac
for file in "${files[@]}"; do
    [ -f "$bundle/$file" ] || die "$bundle/$file is missing (build the bundle first: firmware/build-bundle.sh $bundle)"
done

# The toolchain that shapes the bytes besides the tree: the kernel depends on gcc and ld
# (also in its cache key); krun-init on rustc, and statically links glibc (libc6-dev) with
# gcc and ld.
toolchain() {
    echo "rustc: $("${RUSTC:-rustc}" -V 2>/dev/null || echo none)"
    echo "gcc: $(gcc --version 2>/dev/null | head -n1 || echo none)"
    echo "ld: $(ld --version 2>/dev/null | head -n1 || echo none)"
    echo "libc6-dev: $(dpkg-query -W -f='${Version}' libc6-dev 2>/dev/null || echo unknown)"
}

sha() { sha256sum <"$1" | cut -d' ' -f1; }

if [ "$mode" = update ]; then
    tmp=$(mktemp "$pins.XXXXXX")
    {
        cat <<'EOF'
# SHA-256 of the guest bundle that firmware/build-bundle.sh builds from this tree, in
# sha256sum format: `(cd build/bundle && sha256sum -c ../../firmware/bundle.pins)` checks a
# build. Launch digests that users register in advance are computed from these bytes.
#
# Produced by `make pin-bundle` (firmware/bundle-pins.sh update); checked by `make test`
# (make bundle-pins). Regenerate and commit it with any change that changes the bundle:
#   initrd.cpio.zst  the guest init (firmware/init and the crates it builds with: footer/,
#                   luks/, attestation/), Cargo.lock, the release profile in Cargo.toml,
#                   the initrd layout (firmware/bundle/) or firmware/build-bundle.sh
#   bzImage         the kernel config (firmware/kernel/), the pinned kernel source or the
#                   build steps (firmware/build-kernel.sh)
# Such a commit changes every launch digest: say so in its message.
#
# Made with this toolchain (another one gives other bytes):
EOF
        toolchain | sed 's/^/# toolchain /'
        for file in "${files[@]}"; do
            echo "$(sha "$bundle/$file")  $file"
        done
    } >"$tmp"
    mv "$tmp" "$pins"
    say "wrote $pins:"
    grep -v '^#' "$pins" >&2
    exit 0
fi

[ -f "$pins" ] || die "$pins is missing (make pin-bundle writes it)"

# pinned FILE -> the pinned hash
pinned() {
    local hash
    hash=$(awk -v f="$1" '$1 !~ /^#/ && $2 == f { print $1 }' "$pins")
    [[ $hash =~ ^[0-9a-f]{64}$ ]] || die "$pins has no SHA-256 for $1 (make pin-bundle rewrites it)"
    echo "$hash"
}

differs=()
for file in "${files[@]}"; do
    want=$(pinned "$file")
    got=$(sha "$bundle/$file")
    if [ "$want" = "$got" ]; then
        say "$file matches the pin ($got)"
    else
        differs+=("$file")
        say "error: $file differs from the pin in firmware/bundle.pins"
        say "    pinned: $want"
        say "    built:  $got  ($bundle/$file)"
    fi
done
[ "${#differs[@]}" -eq 0 ] && exit 0

# What may explain it: bundle inputs changed in git since the pins were last written, or a
# toolchain other than the pinned one.
changed=
pin_commit=$(git -C "$root" log -1 --format=%h -- firmware/bundle.pins 2>/dev/null || true)
if [ -n "$pin_commit" ]; then
    inputs=(Cargo.toml Cargo.lock firmware/bundle firmware/build-bundle.sh firmware/kernel firmware/build-kernel.sh)
    # The local crates krun-init builds with (firmware/init, footer, luks, attestation).
    while read -r dir; do
        inputs+=("${dir#"$root"/}")
    done < <(cargo tree --offline --quiet --manifest-path "$root/Cargo.toml" -p krun-init \
        -e normal,build --target x86_64-unknown-linux-gnu --prefix none --format '{p}' 2>/dev/null |
        sed -n "s|.*(\($root/[^)]*\)).*|\1|p" | sort -u)
    changed=$(git -C "$root" diff --name-only "$pin_commit" -- "${inputs[@]}" 2>/dev/null || true)
fi
toolchain_diff=$(diff <(sed -n 's/^# toolchain //p' "$pins") <(toolchain) | sed -n 's/^[<>] //p' || true)

if [ "${#differs[@]}" = 1 ]; then
    what="${differs[0]} differs"
else
    what="${differs[*]} differ"
fi
say ""
say "The guest bundle must be byte-identical on every machine: users compute launch digests"
say "in advance from these files, and $what from the pins."
if [ -n "$changed" ]; then
    say "Files that feed the bundle changed since the pins were last written ($pin_commit):"
    while read -r f; do say "    $f"; done <<<"$changed"
fi
if [ -n "$toolchain_diff" ]; then
    say "This machine's toolchain differs from the one the pins were made with:"
    diff <(sed -n 's/^# toolchain //p' "$pins") <(toolchain) |
        sed -n 's/^< /    pinned: /p; s/^> /    here:   /p' | while IFS= read -r l; do say "$l"; done || true
    say "Compare against the pins with a build made with the pinned toolchain; do not rewrite"
    say "the pins for a toolchain difference alone."
fi
say "If you changed the guest init (firmware/init, footer/, luks/, attestation/), Cargo.lock,"
say "the kernel config or firmware/build-*.sh on purpose, update the pins and commit"
say "firmware/bundle.pins with the change (its message should say that launch digests change):"
say "    make pin-bundle"
if [ -z "$toolchain_diff" ] && [ -z "$changed" ] && [ -n "$pin_commit" ]; then
    say "No bundle input changed since the pins were written ($pin_commit) and the toolchain is"
    say "the pinned one: the build is not reproducible here. ci/check-reproducible.sh builds the"
    say "bundle twice from scratch and compares (diffoscope shows where two files differ)."
fi
exit 1
