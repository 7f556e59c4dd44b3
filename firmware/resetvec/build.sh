#!/bin/sh
# Builds resetvec.bin from resetvec.asm. The output is deterministic (NASM flat binary: no
# timestamps, no paths), so the committed resetvec.bin must equal a fresh build; the test
# tests/reproducible.rs checks that. Needs nasm (Debian: apt-get install nasm).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/resetvec.bin"}
nasm -f bin -w+all -Werror -o "$out" "$here/resetvec.asm"
size=$(wc -c <"$out")
if [ "$size" -ne 8192 ]; then
    echo "build.sh: $out is $size bytes, expected 8192" >&2
    exit 1
fi
