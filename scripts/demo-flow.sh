#!/bin/sh
# The confidential-workload flow of `make demo`, run either on this machine or inside the
# nested-KVM test host (POSIX sh: the test host has busybox only):
#   1. start krun-kbs on 127.0.0.1 with a fresh admin token (stopped on exit),
#   2. krun-sev mkcw --register: build the encrypted image and register its launch
#      measurement and disk passphrase with the broker,
#   3. krun-sev run: launch it (the broker releases the key only for that measurement),
#   4. exit 0 only if the workload printed its marker and exited with status 0.
#
# usage: demo-flow.sh BIN_DIR ROOTFS WORK_DIR TEE
#   BIN_DIR holds krun-sev and krun-kbs; TEE is a mkcw --tee value (sev-no-es, sev-es, snp).
# Environment: KRUN_SEV_BACKEND (model or hardware), KRUN_SEV_BUNDLE_DIR, and for the model
# KRUN_SEV_PSP_MODEL_DIR plus TRUST_DIR (what `krun-sev model-trust` wrote).
set -eu
bin=$1 rootfs=$2 work=$3 tee=$4
port=${DEMO_KBS_PORT:-8123}
url=http://127.0.0.1:$port
say() { echo "[demo] $*" >&2; }

mkdir -p "$work"
rm -rf "$work/image" "$work/kbs.db"
# A fresh admin token for registration (never printed).
head -c 32 /dev/urandom | sha256sum | cut -d' ' -f1 >"$work/admin-token"
chmod 600 "$work/admin-token"

set -- --listen "127.0.0.1:$port" --db "$work/kbs.db" --admin-token-file "$work/admin-token"
# On SEV hardware: AMD's roots are built in; SNP VCEKs come from VCEK_DIR (see
# docs/hardware.md) unless the guest's report carries them.
if [ -n "${VCEK_DIR:-}" ]; then
    set -- "$@" --vcek-dir "$VCEK_DIR"
fi
if [ -n "${TRUST_DIR:-}" ]; then
    # The PSP model's own roots: brokers never trust model evidence by default.
    set -- "$@" --sev-trust-root "$TRUST_DIR/ark.cert" --trust-root "$TRUST_DIR/roots.pem" \
        --vcek-dir "$TRUST_DIR/vcek"
fi
say "starting the key broker krun-kbs on $url"
"$bin/krun-kbs" "$@" >"$work/kbs.log" 2>&1 &
kbs=$!
trap 'st=$?; kill $kbs 2>/dev/null; wait $kbs 2>/dev/null || true; exit $st' EXIT
trap 'exit 130' INT TERM
i=0
until grep -q "listening" "$work/kbs.log"; do
    i=$((i + 1))
    if [ $i -gt 150 ] || ! kill -0 $kbs 2>/dev/null; then
        say "the key broker did not start:"
        cat "$work/kbs.log" >&2
        exit 1
    fi
    sleep 0.2
done

# SEV/SEV-ES on hardware: the platform chain the VMM sends to the broker (sevctl export --full).
chain=
if [ -n "${SEV_CHAIN:-}" ] && [ "$tee" != snp ]; then
    chain="--vendor-chain=$SEV_CHAIN"
fi
say "building and registering the encrypted image (krun-sev mkcw --tee $tee --register)"
"$bin/krun-sev" mkcw --tee "$tee" --cpus 2 --ram-mib 512 ${chain:+"$chain"} \
    --attestation-url "$url" --register --admin-token-file "$work/admin-token" \
    --workload-id demo-workload --pbkdf2-iterations 10000 --env PATH=/bin \
    --cmd /bin/sh --cmd -c \
    --cmd 'echo "hello from a confidential workload: $(uname -sr), $(nproc) vCPUs"; echo DEMO_WORKLOAD_OK' \
    "$rootfs" "$work/image"
# mkcw generated the passphrase and sent it to the broker only.

say "running it (krun-sev run, KRUN_SEV_BACKEND=${KRUN_SEV_BACKEND:-hardware})"
status=0
"$bin/krun-sev" run "$work/image" </dev/null >"$work/run.log" 2>&1 || status=$?
# The console carries the workload's output among the library's and the init's log lines.
echo "----- workload output -----"
grep -v -e '^\[libkrun-sev' -e '^krun-init:' -e '^KRUN_INIT_STARTED' "$work/run.log" || true
echo "---------------------------"
if [ $status -eq 0 ] && grep -q '^DEMO_WORKLOAD_OK' "$work/run.log"; then
    echo "DEMO_RESULT=ok"
    say "the workload ran and exited with status 0; the broker released the key after attestation"
    exit 0
fi
say "the workload did not run (krun-sev run exited with $status); the launch log:"
cat "$work/run.log" >&2
say "the key broker's log:"
cat "$work/kbs.log" >&2
echo "DEMO_RESULT=failed"
exit 1
