#!/usr/bin/env bash
# Boots the static krun-init as the initrd's /init in QEMU (TCG, -M microvm, no KVM needed)
# against mkcw-shaped LUKS1 disks and checks what the workload and the init print, and the
# exit status the init writes to port 0xf4 (QEMU isa-debug-exit: code = status*2+1).
#
#   firmware/init/tests/boot-smoke.sh VMLINUX
#
# VMLINUX: the guest kernel (firmware/build-kernel.sh prints its cache dir). Needs
# qemu-system-x86 (qemu-system-x86_64), e2fsprogs (mkfs.ext4 -d), cpio, python3, a static
# busybox ($BUSYBOX, default /bin/busybox from busybox-static) and cryptsetup-bin (header check).
# The status port needs CONFIG_X86_IOPL_IOPERM=y in the guest kernel; with a kernel that
# lacks it, KRUN_SMOKE_NO_STATUS_PORT=1 checks the logged status instead of QEMU's exit code.
# KRUN_SMOKE_PORT_KERNEL=<bzImage with CONFIG_X86_IOPL_IOPERM, e.g. Debian's cloud kernel>
# adds a diskless boot under -M pc that checks the status port alone (status 1, code 3).
set -euo pipefail

VMLINUX=${1:?usage: boot-smoke.sh VMLINUX}
BUSYBOX=${BUSYBOX:-/bin/busybox}
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"

RUSTFLAGS="-C target-feature=+crt-static" cargo build -q -p krun-init --release --target x86_64-unknown-linux-gnu
cargo build -q -p krun-init --release --example make-test-disk
INIT=target/x86_64-unknown-linux-gnu/release/krun-init
MKDISK=target/release/examples/make-test-disk

# --- root file system -------------------------------------------------------------------
R=$WORK/rootfs
mkdir -p "$R/bin" "$R/etc" "$R/home/app" "$R/tmp"
cp "$BUSYBOX" "$R/bin/busybox"
for a in sh echo cat id hostname pwd sleep env; do ln -s busybox "$R/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\napp:x:1000:\nwheel:x:10:app\n' >"$R/etc/group"

make_disk() { # $1 = .krun_config.json content, $2 = footer JSON or -, $3 = passphrase, $4 = out
    printf '%s' "$1" >"$R/.krun_config.json"
    rm -f "$WORK/plain.img"
    truncate -s 16M "$WORK/plain.img"
    mkfs.ext4 -q -d "$R" "$WORK/plain.img"
    local footer=-
    if [ "$2" != - ]; then printf '%s' "$2" >"$WORK/footer.json"; footer=$WORK/footer.json; fi
    "$MKDISK" "$WORK/plain.img" "$3" "$footer" "$4" 2>/dev/null
    printf '%s' "$3" | cryptsetup open --test-passphrase --key-file - "$4"
}

make_initrd() { # $1 = host.json content, $2 = secret file or -, $3 = out
    local I=$WORK/initrd
    rm -rf "$I"
    mkdir -p "$I/dev" "$I/proc" "$I/sys" "$I/krun"
    mknod "$I/dev/console" c 5 1
    strip -o "$I/init" "$INIT"
    printf '%s' "$1" >"$I/krun/host.json"
    if [ "$2" != - ]; then cp "$2" "$I/krun/secret"; fi
    (cd "$I" && find . | sort | cpio -o -H newc --quiet) >"$3"
}

boot() { # $1 = initrd, $2 = disk, $3 = log, rest = more QEMU arguments; prints QEMU's exit code
    local rc=0
    timeout 300 qemu-system-x86_64 -M microvm,acpi=off -accel tcg -cpu max -m 512 -smp 1 \
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        -kernel "$VMLINUX" -initrd "$1" -append "console=ttyS0 reboot=t panic=-1 acpi=off quiet" \
        -drive id=d0,file="$2",format=raw,if=none -device virtio-blk-device,drive=d0 \
        -device isa-debug-exit,iobase=0xf4,iosize=4 "${@:4}" >"$3" 2>&1 || rc=$?
    echo "$rc"
}

FAILED=0
expect() { # $1 = name, $2 = log, $3 = qemu code, $4 = expected status, rest = patterns
    local name=$1 log=$2 code=$3 status=$4
    shift 4
    local ok=1
    for p in "$@"; do grep -qF -- "$p" "$log" || { echo "  missing: $p"; ok=0; }; done
    # isa-debug-exit makes QEMU exit with (status*2+1) & 255.
    local want=$(((status * 2 + 1) & 255))
    if [ "${KRUN_SMOKE_NO_STATUS_PORT:-0}" = 1 ]; then
        grep -qF "exited with status $status" "$log" || grep -qF "failed:" "$log" || { echo "  no status line"; ok=0; }
    elif [ "$code" != "$want" ]; then
        echo "  exit status: qemu code $code, want $want (status $status)"; ok=0
    fi
    if [ $ok = 1 ]; then echo "ok   $name"; else echo "FAIL $name"; sed 's/^/  | /' "$log" | tail -40; FAILED=1; fi
}

IMAGE_CFG='{"architecture":"amd64","os":"linux","config":{"User":"app","Env":["APP_MODE=prod","PATH=/bin"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo WL_START; id; pwd; echo APP_MODE=$APP_MODE HOME=$HOME TERM=$TERM; hostname; echo WL_END; exit 42"],"WorkingDir":"/srv/app"}}'
SNP_FOOTER='{"tee":"snp","tee_data":"{\"gen\":\"milan\"}","workload_id":"w1","cpus":1,"ram_mib":512,"attestation_url":"http://127.0.0.1:8000"}'
SEV_FOOTER='{"tee":"sev","tee_data":"{\"vendor_chain\":\"\",\"attestation_server_pubkey\":\"\"}","workload_id":"w1","cpus":1,"ram_mib":512,"attestation_url":""}'

# 1. Development passphrase, OCI image config (buildah mkcw shape), 4096-aligned footer.
make_disk "$IMAGE_CFG" "$SNP_FOOTER" pw "$WORK/disk1.img"
make_initrd '{"tee":"none","dev_passphrase":"pw","hostname":"krunvm","port_map":[]}' - "$WORK/i1.cpio"
code=$(boot "$WORK/i1.cpio" "$WORK/disk1.img" "$WORK/1.log")
expect "image config, dev passphrase" "$WORK/1.log" "$code" 42 KRUN_INIT_STARTED WL_START \
    "uid=1000(app) gid=1000(app) groups=10(wheel)" /srv/app "APP_MODE=prod HOME=/home/app TERM=xterm" \
    krunvm WL_END "workload exited with status 42"

# 2. Wrong passphrase: clear message, status 125 (init failure).
make_initrd '{"tee":"none","dev_passphrase":"wrong","port_map":[]}' - "$WORK/i2.cpio"
code=$(boot "$WORK/i2.cpio" "$WORK/disk1.img" "$WORK/2.log")
expect "wrong passphrase" "$WORK/2.log" "$code" 125 "unlocking the LUKS root disk failed"

# 3. SEV: passphrase from the launch-secret table; runtime-spec config; killed by a signal.
python3 - "$WORK/secret" <<'PY'
import struct, sys, uuid
def g(s): return uuid.UUID(s).bytes_le
data = b"sev-pass\0"
entry = g("736869e5-84f0-4973-92ec-06879ce3da0b") + struct.pack("<I", 20 + len(data)) + data
table = g("1e74f542-71dd-4d66-963e-ef4287ff173b") + struct.pack("<I", 20 + len(entry)) + entry
open(sys.argv[1], "wb").write(table.ljust(4096, b"\0"))
PY
SPEC_CFG='{"ociVersion":"1.0.0","process":{"user":{"uid":0,"gid":0},"args":["/bin/sh","-c","echo SPEC_RUN $(cat /proc/self/status | grep -c Sig); kill -TERM $$"],"env":["PATH=/bin"],"cwd":"/"},"hostname":"spec-host"}'
make_disk "$SPEC_CFG" "$SEV_FOOTER" sev-pass "$WORK/disk3.img"
make_initrd '{"tee":"sev","port_map":[]}' "$WORK/secret" "$WORK/i3.cpio"
code=$(boot "$WORK/i3.cpio" "$WORK/disk3.img" "$WORK/3.log")
expect "sev launch secret, runtime spec, signal" "$WORK/3.log" "$code" 143 "launch: tee Sev" SPEC_RUN \
    "workload exited with status 143"

# 4. Dev passphrase refused in a confidential launch.
make_initrd '{"tee":"snp","dev_passphrase":"pw"}' - "$WORK/i4.cpio"
code=$(boot "$WORK/i4.cpio" "$WORK/disk1.img" "$WORK/4.log")
expect "dev passphrase refused under snp" "$WORK/4.log" "$code" 125 \
    "a development passphrase is refused in a confidential launch"

# 5. A network device but no host settings (no vsock device at all): the init logs one line
# and the workload runs as without a network.
code=$(boot "$WORK/i1.cpio" "$WORK/disk1.img" "$WORK/6.log" \
    -netdev hubport,id=n0,hubid=0 -device virtio-net-device,netdev=n0)
expect "eth0 without host settings" "$WORK/6.log" "$code" 42 \
    "krun-init: network: eth0 exists but the host sent no network settings (vsock port 1029)" \
    WL_END "workload exited with status 42"

# 6. Status port alone, with a kernel that has ioperm (no disk: the unlock step fails).
if [ -n "${KRUN_SMOKE_PORT_KERNEL:-}" ]; then
    rc=0
    timeout 300 qemu-system-x86_64 -M pc -accel tcg -cpu max -m 512 -smp 1 -nodefaults \
        -no-user-config -nographic -serial stdio -no-reboot -kernel "$KRUN_SMOKE_PORT_KERNEL" \
        -initrd "$WORK/i1.cpio" -append "console=ttyS0 reboot=t panic=-1 quiet" \
        -device isa-debug-exit,iobase=0xf4,iosize=4 >"$WORK/5.log" 2>&1 || rc=$?
    KRUN_SMOKE_NO_STATUS_PORT=0 expect "status port (ioperm + outb)" "$WORK/5.log" "$rc" 1 \
        "unlocking the LUKS root disk failed: cannot open the root disk"
fi

exit $FAILED
