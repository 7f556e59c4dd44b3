#!/usr/bin/env bash
# The end of `make test`: how many tests ran outside the test host and inside it, and proof
# that none was skipped. Every test a plain `cargo test` ignores (the KVM unit tests and the
# guest-boot tests) must have passed in the test host (ci/testhost-tests.sh); otherwise this
# fails and names them. Reads the logs the Makefile tees into LOGDIR.
set -euo pipefail
logs=${1:?usage: ci/test-summary.sh LOGDIR}
outside=("$logs/unit-tests.log" "$logs/fuzz-smoke.log")
host="$logs/testhost-tests.log"
for f in "${outside[@]}" "$host"; do
    [ -f "$f" ] || { echo "test-summary: missing $f" >&2; exit 1; }
done

# "test result: ok. P passed; F failed; I ignored; ..." summed over the given lines (not
# anchored: parallel tests' output can precede it on its line).
totals() {
    sed -nE 's/.*test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/p' |
        awk '{p += $1; f += $2; i += $3} END {print p + 0, f + 0, i + 0}'
}
names() { sed -nE "s/^test (.*) \.\.\. $1.*/\1/p" | sort -u; }
# Tests that passed, also where --nocapture output separates "test NAME ... " from its "ok"
# (ci/testhost-tests.sh runs one test at a time, so the next lone "ok" is that test's).
passed_names() {
    awk '/^test .* \.\.\. / {
             name = $0; sub(/^test /, "", name); sub(/ \.\.\. .*/, "", name)
             rest = $0; sub(/^test .* \.\.\. /, "", rest)
             if (rest == "ok") print name; else pending = name
             next
         }
         pending != "" && /^ok$/ { print pending; pending = "" }' | sort -u
}

read -r out_passed out_failed out_ignored < <(cat "${outside[@]}" | totals)
read -r boot_passed boot_failed boot_ignored < <(grep -v '^\[kvm-unit\]' "$host" | totals)
read -r kvm_passed kvm_failed _ < <(grep '^\[kvm-unit\]' "$host" | totals)
ignored=$(cat "${outside[@]}" | names ignored)
ran_in_host=$( { grep -v '^\[kvm-unit\]' "$host" | passed_names; sed -n 's/^\[kvm-unit\] //p' "$host" | names ok; } | sort -u)
not_run=$(comm -23 <(printf '%s\n' "$ignored" | sed '/^$/d') <(printf '%s\n' "$ran_in_host" | sed '/^$/d'))
ignored_count=$(printf '%s\n' "$ignored" | sed '/^$/d' | wc -l)
kvm_boot=$(sed -n 's/^\[kvm-unit\] [0-9]* KVM unit tests passed in one test-host boot (\(.*\) wall)$/\1/p' "$host")

echo "== make test: summary =="
echo "outside the test host: $out_passed passed, $out_failed failed, $out_ignored ignored (unit, integration, doc and fuzz-smoke tests); C API test passed"
echo "in the test host (ci/testhost-tests.sh): $boot_passed guest-boot and guest-bundle tests passed, $boot_failed failed, $boot_ignored ignored; $kvm_passed KVM unit tests passed, $kvm_failed failed (one boot, ${kvm_boot:-? s})"
if [ -n "$not_run" ]; then
    echo "ignored outside the test host and NOT passed inside it:"
    printf '%s\n' "$not_run" | sed 's/^/  /'
    exit 1
fi
if [ "$out_failed$boot_failed$kvm_failed" != 000 ] || [ "$boot_ignored" != 0 ]; then
    echo "test-summary: failures or ignored tests in the test host" >&2
    exit 1
fi
echo "skipped: none ($ignored_count tests ignored outside the test host, all $ignored_count passed inside it)"
