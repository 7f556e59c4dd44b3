#!/usr/bin/env python3
"""An independent oracle for libkrun-sev launch measurements.

Reads a launch-update dump (`krun-sev measure --dump-updates FILE`, or the file a launch
writes with KRUN_SEV_DUMP_UPDATES; format in src/tee/dump.rs) and, sharing no code with the
Rust launch:

1. recomputes the launch digest from the dump alone: SEV/SEV-ES SHA-256 over the
   LAUNCH_UPDATE_DATA bytes then the VMSAs, in order; SNP the PAGE_INFO chain with
   sev-snp-measure's GCTX (VMSAs last, as KVM issues them at SNP_LAUNCH_FINISH);
2. checks the command sequence against the layout docs/measurement.md documents (order,
   addresses, page types);
3. rebuilds what it can from the inputs and compares: the kernel region from vmlinux's ELF
   program headers (parsed here, not with the Rust loader), the initrd region as the bundle
   initrd + zero padding to a page + a newc launch segment holding /krun/host.json (with the
   expected tee and workload) and, for SEV/SEV-ES, a page-aligned all-zero /krun/secret, the
   boot_params fields that point at them, the command line, the MP table's vCPU count, and
   every VMSA with sev-snp-measure's VMSA builder for the named vCPU type.

Prints {"digest": HEX, "checked": [...]} and exits 0, or prints what differs and exits 1.
Needs the sev-snp-measure package (ci/test-requirements.txt).

usage: measure_oracle.py --dump FILE --bundle DIR --tee sev|sev-es|snp --vcpus N
       --ram-mib M --vcpu-type EPYC-Milan [--workload-id ID] [--data-disk]
       [--expect-digest HEX]
"""

import argparse
import base64
import hashlib
import json
import struct
import sys

from sevsnpmeasure import vcpu_types
from sevsnpmeasure.gctx import GCTX
from sevsnpmeasure.sev_mode import SevMode
from sevsnpmeasure.vmm_types import VMMType
from sevsnpmeasure.vmsa import VMSA

PAGE = 4096

# docs/measurement.md, "Guest memory at measurement time".
FIRMWARE_GPA, FIRMWARE_LEN = 0xFFFFE000, 0x2000
KERNEL_GPA = 0x1000000
INITRD_GPA = 0x4000000
BOOT_PARAMS_GPA = 0x7000
CMDLINE_GPA = 0x20000
MPTABLE_GPA = 0x9FC00
PAGE_TABLES_GPA = 0x100000
SNP_SECRETS_GPA, SNP_CPUID_GPA = 0x5000, 0x6000
BASE_CMDLINE = b"console=hvc0 quiet reboot=t panic=-1 acpi=off"
# docs/measurement.md, "VMSAs": vCPU 0 at the reset vector, the others at the firmware's AP
# entry (RIP 0xFFF8 with CS base 0xFFFF0000).
AP_EIP = 0xFFFFFFF8
SECRET_LEN = 4096


class Mismatch(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Mismatch(what)


def page_down(a):
    return a & ~(PAGE - 1)


def page_up(a):
    return (a + PAGE - 1) & ~(PAGE - 1)


def read_dump(path):
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    check(lines and lines[0].get("dump") == "krun-sev launch updates", "not a launch-update dump")
    check(lines[0].get("format") == 1, f"unknown dump format {lines[0].get('format')}")
    for c in lines[1:]:
        if "data" in c:
            c["bytes"] = base64.b64decode(c["data"])
            if c["cmd"] != "update_vmsa":
                check(len(c["bytes"]) == c["len"], f"{c['cmd']} at {c['gpa']:#x}: data length")
    return lines[0], lines[1:]


def digest(tee, cmds):
    """The launch digest of the dumped commands, from the dump alone."""
    if tee in ("sev", "sev-es"):
        h = hashlib.sha256()
        for c in cmds:
            if c["cmd"] in ("update_data", "update_vmsa"):
                h.update(c["bytes"])
            check(c["cmd"] != "snp_update", "snp_update in an SEV launch")
        return h.digest()
    g = GCTX()
    vmsas = []
    for c in cmds:
        check(c["cmd"] != "update_data", "update_data in an SNP launch")
        if c["cmd"] == "update_vmsa":
            vmsas.append(c["bytes"])
        elif c["cmd"] == "snp_update":
            gpa, n, ty = c["gpa"], c["len"], c["page_type"]
            if ty == "normal":
                g.update_normal_pages(gpa, c["bytes"])
            elif ty == "zero":
                g.update_zero_pages(gpa, n)
            elif ty == "unmeasured":
                g.update_unmeasured_pages(gpa, n)
            elif ty == "secrets":
                check(n == PAGE, "secrets page length")
                g.update_secrets_page(gpa)
            elif ty == "cpuid":
                check(n == PAGE, "CPUID page length")
                g.update_cpuid_page(gpa)
            else:
                raise Mismatch(f"unknown page type {ty}")
    # KVM issues the VMSAs at SNP_LAUNCH_FINISH, after every memory update.
    for v in vmsas:
        g.update_vmsa_page(v)
    return g.ld()


def elf_kernel_region(vmlinux):
    """[KERNEL_GPA, page_up(end)) as the PT_LOAD segments of vmlinux fill it (file bytes at
    p_paddr, the rest of p_memsz and every gap zero)."""
    check(vmlinux[:4] == b"\x7fELF" and vmlinux[4] == 2 and vmlinux[5] == 1, "vmlinux: not ELF64 LE")
    (e_phoff,) = struct.unpack_from("<Q", vmlinux, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", vmlinux, 0x36)
    loads = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", vmlinux, e_phoff + i * e_phentsize)
        if p_type == 1:  # PT_LOAD
            loads.append((p_paddr, p_offset, p_filesz, p_memsz))
    check(loads, "vmlinux has no PT_LOAD segment")
    check(min(p for p, _, _, _ in loads) >= KERNEL_GPA, "vmlinux loads below 16 MiB")
    end = max(p + m for p, _, _, m in loads)
    region = bytearray(page_up(end) - KERNEL_GPA)
    for paddr, off, filesz, _ in loads:
        at = paddr - KERNEL_GPA
        region[at:at + filesz] = vmlinux[off:off + filesz]
    return bytes(region)


def newc_entries(seg):
    """(name, data offset in seg, data) of each newc member, and the end of the trailer."""
    out, pos = [], 0
    while True:
        check(seg[pos:pos + 6] == b"070701", f"launch segment: no newc header at {pos}")
        fields = [int(seg[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        filesize, namesize = fields[6], fields[11]
        name = seg[pos + 110:pos + 110 + namesize - 1].decode()
        data_at = (pos + 110 + namesize + 3) & ~3
        data = seg[data_at:data_at + filesize]
        pos = (data_at + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return out, pos
        out.append((name, data_at, data))


def check_initrd(region, initrd, tee, workload_id):
    pad = page_up(len(initrd)) - len(initrd)
    check(region[:len(initrd)] == initrd, "initrd region does not start with the bundle initrd")
    check(region[len(initrd):len(initrd) + pad] == bytes(pad), "initrd padding is not zero")
    seg_at = len(initrd) + pad
    entries, end = newc_entries(region[seg_at:])
    check(region[seg_at + end:] == bytes(len(region) - seg_at - end),
          "bytes after the launch segment's trailer are not zero")
    files = {name: (at, data) for name, at, data in entries}
    check("krun/host.json" in files, "launch segment has no krun/host.json")
    host = json.loads(files["krun/host.json"][1])
    check(host.get("tee") == tee, f"host.json tee {host.get('tee')!r}, expected {tee!r}")
    if workload_id is not None:
        got = (host.get("binding") or {}).get("workload_id")
        check(got == workload_id, f"host.json workload {got!r}, expected {workload_id!r}")
    if tee == "snp":
        check("krun/secret" not in files, "SNP launch segment has a secret slot")
    else:
        check("krun/secret" in files, "SEV launch segment has no krun/secret")
        at, data = files["krun/secret"]
        check((INITRD_GPA + seg_at + at) % PAGE == 0, "secret slot is not page aligned")
        check(data == bytes(SECRET_LEN), "secret slot is not 4096 zero bytes")
    return seg_at + end  # bytes the kernel is told about (ramdisk_size)


def check_boot_params(page, initrd_size, tee, ram_mib):
    u32 = lambda off: struct.unpack_from("<I", page, off)[0]
    check(page[0x202:0x206] == b"HdrS", "boot_params: no HdrS")
    check(u32(0x218) == INITRD_GPA, "boot_params: ramdisk_image")
    check(u32(0x21C) == initrd_size, f"boot_params: ramdisk_size {u32(0x21C)} != {initrd_size}")
    check(u32(0x228) == CMDLINE_GPA, "boot_params: cmd_line_ptr")
    e820 = [struct.unpack_from("<QQI", page, 0x2D0 + 20 * i) for i in range(page[0x1E8])]
    ram = [(a, a + n) for a, n, t in e820 if t == 1]
    if ram_mib <= 2048:
        check(max(e for _, e in ram) == ram_mib << 20, "boot_params: e820 RAM end")
    if tee == "snp":
        for a, e in ram:
            check(e <= SNP_SECRETS_GPA or a >= SNP_CPUID_GPA + PAGE,
                  "boot_params: SNP secrets/CPUID pages are e820 RAM")


def check_mptable(page, vcpus):
    at = MPTABLE_GPA - page_down(MPTABLE_GPA)
    check(page[at:at + 4] == b"_MP_", "MP table: no floating pointer at 0x9fc00")
    (physptr,) = struct.unpack_from("<I", page, at + 4)
    mpc = physptr - page_down(MPTABLE_GPA)
    check(page[mpc:mpc + 4] == b"PCMP", "MP table: no PCMP header")
    (count,) = struct.unpack_from("<H", page, mpc + 0x22)
    pos, cpus = mpc + 0x2C, 0
    for _ in range(count):
        kind = page[pos]
        if kind == 0:
            cpus += 1
        pos += 20 if kind == 0 else 8
    check(cpus == vcpus, f"MP table lists {cpus} processors, expected {vcpus}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--tee", required=True, choices=["sev", "sev-es", "snp"])
    ap.add_argument("--vcpus", required=True, type=int)
    ap.add_argument("--ram-mib", required=True, type=int)
    ap.add_argument("--vcpu-type", required=True, choices=sorted(vcpu_types.CPU_SIGS))
    ap.add_argument("--workload-id")
    ap.add_argument("--data-disk", action="store_true")
    ap.add_argument("--expect-digest")
    a = ap.parse_args()
    checked = []
    try:
        header, cmds = read_dump(a.dump)
        check(header.get("tee") == a.tee, f"dump is a {header.get('tee')} launch, expected {a.tee}")
        ld = digest(a.tee, cmds)
        checked.append("digest")

        # The documented order of the memory updates.
        updates = [c for c in cmds if c["cmd"] in ("update_data", "snp_update")]
        want = [FIRMWARE_GPA, KERNEL_GPA, INITRD_GPA, BOOT_PARAMS_GPA, CMDLINE_GPA,
                page_down(MPTABLE_GPA)]
        types = ["normal"] * 6
        if a.tee == "snp":
            want += [PAGE_TABLES_GPA, SNP_SECRETS_GPA, SNP_CPUID_GPA]
            types += ["zero", "secrets", "cpuid"]
        got = [c["gpa"] for c in updates]
        check(got == want, "memory updates are not in the documented order: "
              + ", ".join(f"{g:#x}" for g in got))
        if a.tee == "snp":
            got_types = [c["page_type"] for c in updates]
            check(got_types == types, f"SNP page types {got_types}")
        check(cmds[0]["cmd"] == "launch_start", "the first command is not LAUNCH_START")
        names = [c["cmd"] for c in cmds]
        last_update = max(i for i, n in enumerate(names) if n in ("update_data", "snp_update"))
        vmsa_at = [i for i, n in enumerate(names) if n == "update_vmsa"]
        check(all(i > last_update for i in vmsa_at), "a VMSA precedes a memory update")
        checked.append("order")
        fw, kernel, initrd, boot_params, cmdline, mptable = updates[:6]
        for c in updates:
            check(c["gpa"] % PAGE == 0 and c["len"] % PAGE == 0 and c["len"] > 0,
                  f"update at {c['gpa']:#x} is not whole pages")
        check(fw["len"] == FIRMWARE_LEN, "firmware region length")

        with open(f"{a.bundle}/vmlinux", "rb") as f:
            expected_kernel = elf_kernel_region(f.read())
        check(kernel["bytes"] == expected_kernel,
              "kernel region differs from vmlinux's PT_LOAD segments"
              f" ({len(kernel['bytes'])} vs {len(expected_kernel)} bytes)")
        checked.append("kernel")

        with open(f"{a.bundle}/initrd.cpio.gz", "rb") as f:
            bundle_initrd = f.read()
        initrd_size = check_initrd(initrd["bytes"], bundle_initrd, a.tee, a.workload_id)
        check(initrd["len"] == page_up(initrd_size), "initrd region length")
        checked.append("initrd")

        text = cmdline["bytes"]
        nul = text.index(b"\0")
        check(text[nul:] == bytes(len(text) - nul), "command line: bytes after the NUL")
        words = text[:nul].split(b" ")
        base = BASE_CMDLINE.split(b" ")
        check(words[:len(base)] == base, f"command line {text[:nul]!r}")
        devices = [w for w in words[len(base):] if w.startswith(b"virtio_mmio.device=")]
        check(len(devices) == len(words) - len(base), f"command line {text[:nul]!r}")
        # Root disk, [data disk], console, vsock and the network slot (always listed).
        check(len(devices) == (5 if a.data_disk else 4), f"command line lists {len(devices)} devices")
        checked.append("cmdline")

        check_boot_params(boot_params["bytes"], initrd_size, a.tee, a.ram_mib)
        checked.append("boot_params")
        check_mptable(mptable["bytes"], a.vcpus)
        checked.append("mptable")

        vmsas = [c["bytes"] for c in cmds if c["cmd"] == "update_vmsa"]
        if a.tee == "sev":
            check(not vmsas, "plain SEV measured VMSAs")
        else:
            mode = SevMode.SEV_SNP if a.tee == "snp" else SevMode.SEV_ES
            features = 0x1 if a.tee == "snp" else 0x0
            sig = vcpu_types.CPU_SIGS[a.vcpu_type]
            expected = list(VMSA(mode, AP_EIP, sig, features, VMMType.QEMU).pages(a.vcpus))
            check(len(vmsas) == a.vcpus, f"{len(vmsas)} VMSAs for {a.vcpus} vCPUs")
            for i, (got_v, want_v) in enumerate(zip(vmsas, expected)):
                check(got_v == want_v, f"VMSA of vCPU {i} differs from sev-snp-measure's")
            checked.append("vmsas")

        if a.expect_digest is not None:
            check(ld.hex() == a.expect_digest.lower(),
                  f"digest {ld.hex()} != expected {a.expect_digest}")
    except Mismatch as e:
        print(json.dumps({"error": str(e), "checked": checked}))
        print(f"measure_oracle: MISMATCH: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"digest": ld.hex(), "checked": checked}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
