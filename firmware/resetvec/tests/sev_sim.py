#!/usr/bin/env python3
"""Runs resetvec.bin under the Unicorn CPU emulator with a simulated SEV / SEV-ES / SNP
platform, to execute the paths no machine here can run on hardware.

What is simulated (and what that proves):
- SEV_STATUS and the GHCB MSR are answered by a hook; the GHCB MSR protocol (CPUID, SEV
  information, AP reset hold, termination) and the full-GHCB AP_JUMP_TABLE event are served
  by a small model of KVM's handler.
- Under SEV-ES/SNP, CPUID raises #VC (delivered through the firmware's IDT like hardware
  does); under SNP the hypervisor is not asked for CPUID at all.
- PVALIDATE is answered from a model RMP (4 KiB and 2 MiB entries, pre-validated pages).
- The C-bit is bit 39 (Unicorn's CPU has 40 physical address bits); guest memory is also
  mapped at (1 << 39) | gpa, so page-table entries with the C-bit reach the same bytes, and
  the tables are checked entry by entry afterwards.
Not simulated: encryption itself (private/shared contents), real #VC for anything but CPUID.

Usage: sev_sim.py RESETVEC_BIN   (needs the `unicorn` Python package); exit 0 = all passed.
"""

import ctypes
import struct
import sys

from unicorn import Uc, UcError, UC_ARCH_X86, UC_MODE_16, UC_HOOK_CODE, UC_PROT_ALL
from unicorn.x86_const import (
    UC_X86_REG_CS, UC_X86_REG_EAX, UC_X86_REG_EBX, UC_X86_REG_ECX, UC_X86_REG_EDX,
    UC_X86_REG_ESP, UC_X86_REG_EIP, UC_X86_REG_ESI, UC_X86_REG_EFLAGS, UC_X86_REG_IDTR,
    UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_IP,
)

CBIT = 39
C = 1 << CBIT
IMAGE_GPA = 0xFFFFE000
PB = 0x1000                      # parameter block offset in the image
RAM_SIZE = 12 << 20
BOOT_PARAMS = 0x7000
SECRETS = 0x5000
CPUID_PAGE = 0x6000
PT_BASE = 0x20000
PT_PAGES = 8
KERNEL = 0x800000
TRAMPOLINE_CS = 0x0800           # kernel AP trampoline at 0x8000
GHCB_TERM = lambda code: 0x100 | (0xA << 12) | (code << 16)

E820 = [(0, 0x5000, 1), (0x5000, 0x2000, 2), (0x7000, 0x98C00, 1),
        (0x100000, RAM_SIZE - 0x100000, 1)]

CPUID_8000001F = (0x1B, CBIT | (1 << 6), 509, 0)


def u64(b, off):
    return struct.unpack_from("<Q", b, off)[0]


class Platform:
    def __init__(self, image, status, *, ap=False, cpuid_table=True, refuse_jt=False,
                 rmp_4k=((0x100000, 0x400000),), prevalidated=(), e820=None):
        self.status = status
        self.e820 = e820 or E820
        self.ram = ctypes.create_string_buffer(RAM_SIZE)
        self.img = ctypes.create_string_buffer(bytes(image), len(image))
        self.ghcb_msr = 0x0002000100000000 | (CBIT << 24) | 0x001 if status & 2 else 0
        self.events = []           # ("cpuid-msr", fn, reg) ("sev-info") ("jt-set", gpa) ...
        self.pvalidated = {}       # 4 KiB page -> count
        self.pv_total = 0
        self.vc_count = 0
        self.native_cpuid = 0
        self.stop = None
        self.refuse_jt = refuse_jt
        self.rmp_4k = rmp_4k
        self.prevalidated = set(prevalidated)
        self.ap = ap
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_16)
        ram = ctypes.addressof(self.ram)
        img = ctypes.addressof(self.img)
        for base in (0, C):
            uc.mem_map_ptr(base, 0xFE000, UC_PROT_ALL, ram)
            uc.mem_map_ptr(base + 0x100000, RAM_SIZE - 0x100000, UC_PROT_ALL, ram + 0x100000)
            uc.mem_map_ptr(base + IMAGE_GPA, 0x2000, UC_PROT_ALL, img)
        # Real mode starts at F000:FFF0 = 0xFFFF0 here (Unicorn cannot load the reset CS
        # base 0xFFFF0000), so the image is also visible just below 1 MiB.
        uc.mem_map_ptr(0xFE000, 0x2000, UC_PROT_ALL, img)
        uc.hook_add(UC_HOOK_CODE, self.on_insn)
        self.write_boot_params()
        if cpuid_table:
            self.write_cpuid_page()

    # --- guest memory set-up ---
    def poke(self, gpa, data):
        ctypes.memmove(ctypes.addressof(self.ram) + gpa, data, len(data))

    def write_boot_params(self):
        bp = bytearray(4096)
        bp[0x202:0x206] = b"HdrS"
        bp[0x1E8] = len(self.e820)
        for i, (a, s, t) in enumerate(self.e820):
            struct.pack_into("<QQI", bp, 0x2D0 + 20 * i, a, s, t)
        self.poke(BOOT_PARAMS, bytes(bp))

    def write_cpuid_page(self):
        page = bytearray(4096)
        leaves = [(0x1, 0, (0x800F12, 0, 0, 0)), (0x8000001F, 0, CPUID_8000001F),
                  (0x8000001F, 1, (0, 0, 0, 0))]
        struct.pack_into("<I", page, 0, len(leaves))
        for i, (fn, sub, regs) in enumerate(leaves):
            struct.pack_into("<IIQQIIIIQ", page, 16 + 48 * i, fn, sub, 0, 0, *regs, 0)
        self.poke(CPUID_PAGE, bytes(page))

    # --- the simulated CPU / hypervisor ---
    # Unicorn was opened in 16-bit mode (to start at the reset vector) and then ignores the
    # 64-bit register names; every address here is below 4 GiB, so the 32-bit names do.
    def pc(self):
        return self.uc.reg_read(UC_X86_REG_EIP)

    def skip(self, n):
        self.uc.reg_write(UC_X86_REG_EIP, self.pc() + n)

    def cpuid_values(self, fn):
        return {0x8000001F: CPUID_8000001F, 0x80000000: (0x8000001F, 0, 0, 0)}.get(fn, (0, 0, 0, 0))

    def hv_msr_protocol(self):
        v = self.ghcb_msr
        info = v & 0xFFF
        if info == 0x004:
            fn, reg = v >> 32, (v >> 30) & 3
            self.events.append(("cpuid-msr", fn, reg))
            self.ghcb_msr = (self.cpuid_values(fn)[reg] << 32) | 0x005
        elif info == 0x002:
            self.events.append(("sev-info",))
            self.ghcb_msr = (2 << 48) | (1 << 32) | (CBIT << 24) | 0x001
        elif info == 0x006:
            self.events.append(("ap-hold",))
            # While the AP is held, the kernel publishes its trampoline and sends INIT-SIPI.
            self.img[0:4] = struct.pack("<HH", 0x0000, TRAMPOLINE_CS)
            self.ghcb_msr = (1 << 12) | 0x007
        elif info == 0x100:
            self.events.append(("terminate", v))
            self.stop = ("terminate", v)
            self.uc.emu_stop()
        elif info == 0 and v:
            self.hv_ghcb(v)
        else:
            raise AssertionError(f"unexpected GHCB MSR value {v:#x}")

    def hv_ghcb(self, gpa):
        g = bytearray(self.uc.mem_read(gpa, 4096))
        valid = int.from_bytes(g[0x3F0:0x400], "little")
        code, info1, info2 = u64(g, 0x390), u64(g, 0x398), u64(g, 0x3A0)
        usage = struct.unpack_from("<I", g, 0xFFC)[0]
        version = struct.unpack_from("<H", g, 0xFFA)[0]
        ok = usage == 0 and all(valid >> b & 1 for b in (114, 115, 116))
        self.events.append(("ghcb", gpa, code, info1, info2, version, ok))
        result = 0 if ok and code == 0x80000005 and info1 == 0 and not self.refuse_jt else 2
        self.uc.mem_write(gpa + 0x398, struct.pack("<Q", result))

    def rmp_level_4k(self, gpa):
        return any(a <= gpa < b for a, b in self.rmp_4k) or gpa in self.prevalidated

    def pvalidate(self):
        va = self.uc.reg_read(UC_X86_REG_EAX)
        size = self.uc.reg_read(UC_X86_REG_ECX) & 0xFFFFFFFF
        validate = self.uc.reg_read(UC_X86_REG_EDX) & 0xFFFFFFFF
        assert validate == 1
        flags = self.uc.reg_read(UC_X86_REG_EFLAGS) & ~1
        pages = range(va, va + (0x200000 if size else 0x1000), 0x1000)
        if size == 1 and any(self.rmp_level_4k(p) for p in pages):
            self.uc.reg_write(UC_X86_REG_EAX, 6)              # FAIL_SIZEMISMATCH
        else:
            if all(p in self.prevalidated for p in pages):
                flags |= 1                                      # no RMP update
            self.pv_total += len(pages)
            for p in pages:
                self.pvalidated[p] = self.pvalidated.get(p, 0) + 1
            self.uc.reg_write(UC_X86_REG_EAX, 0)
        self.uc.reg_write(UC_X86_REG_EFLAGS, flags)

    def deliver_vc(self, exit_code):
        uc = self.uc
        esp = uc.reg_read(UC_X86_REG_ESP)
        eip = uc.reg_read(UC_X86_REG_EIP)
        eflags = uc.reg_read(UC_X86_REG_EFLAGS)
        frame = struct.pack("<IIII", exit_code, eip, 0x08, eflags)
        esp -= len(frame)
        uc.mem_write(esp, frame)
        _, base, _, _ = uc.reg_read(UC_X86_REG_IDTR)
        gate = bytes(uc.mem_read(base + 29 * 8, 8))
        lo, sel, _, hi = struct.unpack("<HHHH", gate)
        assert sel == 0x08
        uc.reg_write(UC_X86_REG_ESP, esp)
        uc.reg_write(UC_X86_REG_EFLAGS, eflags & ~0x300)
        uc.reg_write(UC_X86_REG_EIP, lo | hi << 16)

    def on_insn(self, uc, addr, size, _):
        if addr == KERNEL or addr == TRAMPOLINE_CS * 16:
            self.stop = ("kernel" if addr == KERNEL else "trampoline", addr)
            uc.emu_stop()
            return
        b = bytes(uc.mem_read(addr, 4))
        ecx = uc.reg_read(UC_X86_REG_ECX) & 0xFFFFFFFF
        if b[:2] == b"\x0f\x32" and ecx in (0xC0010131, 0xC0010130):       # rdmsr
            v = self.status if ecx == 0xC0010131 else self.ghcb_msr
            uc.reg_write(UC_X86_REG_EAX, v & 0xFFFFFFFF)
            uc.reg_write(UC_X86_REG_EDX, v >> 32)
            self.skip(2)
        elif b[:2] == b"\x0f\x30" and ecx == 0xC0010130:                    # wrmsr GHCB
            assert self.status & 2, "GHCB MSR written without SEV-ES"
            self.ghcb_msr = (uc.reg_read(UC_X86_REG_EDX) & 0xFFFFFFFF) << 32 | (
                uc.reg_read(UC_X86_REG_EAX) & 0xFFFFFFFF)
            self.skip(2)
        elif b == b"\xf3\x0f\x01\xd9":                                      # VMGEXIT
            assert self.status & 2, "VMGEXIT without SEV-ES"
            self.skip(4)
            self.hv_msr_protocol()
        elif b == b"\xf2\x0f\x01\xff":                                      # PVALIDATE
            assert self.status & 4, "PVALIDATE without SNP"
            self.pvalidate()
            self.skip(4)
        elif b[:2] == b"\x0f\xa2":                                          # CPUID
            if self.status & 2:
                self.vc_count += 1
                self.deliver_vc(0x72)
            else:
                self.native_cpuid += 1
                vals = self.cpuid_values(uc.reg_read(UC_X86_REG_EAX) & 0xFFFFFFFF)
                for r, v in zip((UC_X86_REG_EAX, UC_X86_REG_EBX, UC_X86_REG_ECX,
                                 UC_X86_REG_EDX), vals):
                    uc.reg_write(r, v)
                self.skip(2)
        elif b[0] == 0xF4:                                                  # HLT
            self.stop = ("hlt", addr)
            uc.emu_stop()
        elif b[:2] == b"\xe6\xf5":                                          # OUT 0xF5
            self.stop = ("fatal-port", uc.reg_read(UC_X86_REG_EAX) & 0xFF)
            uc.emu_stop()

    def run(self):
        self.uc.reg_write(UC_X86_REG_CS, 0xF000)
        start = 0xFFFF8 if self.ap else 0xFFFF0
        try:
            self.uc.emu_start(start, 0, count=5_000_000)
        except UcError as e:
            raise AssertionError(f"emulation error {e} at {self.pc():#x}, events {self.events}")
        return self.stop

    # --- checks ---
    def pte(self, gpa):
        return u64(self.ram.raw, gpa) & ~0x60


def patch(image, snp_pages=True, pt_pages=PT_PAGES):
    img = bytearray(image)
    assert img[PB:PB + 8] == b"KRUNRVFW" and struct.unpack_from("<I", img, PB + 8)[0] == 1
    struct.pack_into("<QQQQ", img, PB + 0x20, KERNEL, BOOT_PARAMS, PT_BASE, pt_pages * 4096)
    if snp_pages:
        struct.pack_into("<QI", img, PB + 0x48, SECRETS, 4096)
        struct.pack_into("<QI", img, PB + 0x58, CPUID_PAGE, 4096)
    return bytes(img)


def check_identity_map(p, cbit, ghcb=None, gib=4):
    assert p.pte(PT_BASE) == (PT_BASE + 0x1000) | 3 | cbit, hex(p.pte(PT_BASE))
    for g in range(gib):
        pd = PT_BASE + 0x4000 + g * 0x1000
        assert p.pte(PT_BASE + 0x1000 + 8 * g) == pd | 3 | cbit
        for e in range(512):
            addr = (g << 30) | (e << 21)
            got = p.pte(pd + 8 * e)
            if ghcb is not None and addr == ghcb & ~0x1FFFFF:
                assert got == (PT_BASE + 0x2000) | 3 | cbit, hex(got)
                for k in range(512):
                    want = (addr + k * 4096) | 3 | (0 if addr + k * 4096 == ghcb else cbit)
                    assert p.pte(PT_BASE + 0x2000 + 8 * k) == want
            else:
                assert got == addr | 0x83 | cbit, (g, e, hex(got))
    assert p.pte(PT_BASE + 0x1000 + 8 * gib) == 0


def check_kernel_entry(p):
    assert p.stop == ("kernel", KERNEL), (p.stop, p.events)
    uc = p.uc
    assert uc.reg_read(UC_X86_REG_ESI) == BOOT_PARAMS
    assert uc.reg_read(UC_X86_REG_CR3) == PT_BASE
    assert uc.msr_read(0xC0000080) & 0x500 == 0x500
    assert uc.reg_read(UC_X86_REG_CR0) & 0x80000001 == 0x80000001
    assert uc.reg_read(UC_X86_REG_CS) == 0x10


def test_sev(image):
    p = Platform(patch(image), 1)
    p.run()
    check_kernel_entry(p)
    assert p.native_cpuid == 1 and p.vc_count == 0 and p.events == []
    check_identity_map(p, C)
    assert u64(p.ram.raw, BOOT_PARAMS + 0x13C) & 0xFFFFFFFF == 0   # no CC blob outside SNP


def test_sev_es(image):
    p = Platform(patch(image), 3)
    p.run()
    check_kernel_entry(p)
    assert p.vc_count == 1
    cpuid = [e for e in p.events if e[0] == "cpuid-msr"]
    assert cpuid == [("cpuid-msr", 0x8000001F, r) for r in range(4)], cpuid
    ghcb = PT_BASE + 0x3000
    assert ("sev-info",) in p.events
    assert ("ghcb", ghcb, 0x80000005, 0, IMAGE_GPA, 2, True) in p.events, p.events
    check_identity_map(p, C, ghcb=ghcb)
    assert not p.pvalidated


def test_snp(image, e820=E820, pt_pages=PT_PAGES, gib=4):
    pre = {PT_BASE + i * 4096 for i in range(pt_pages)} | {BOOT_PARAMS, SECRETS, CPUID_PAGE}
    pre |= {KERNEL + i * 4096 for i in range(4)}
    p = Platform(patch(image, pt_pages=pt_pages), 7, prevalidated=pre, e820=e820,
                 rmp_4k=((0x100000, 0x400000), (KERNEL, KERNEL + 0x200000)))
    p.run()
    check_kernel_entry(p)
    assert p.vc_count == 0 and p.native_cpuid == 0
    assert not [e for e in p.events if e[0] != "terminate"], p.events
    check_identity_map(p, C, gib=gib)
    want = set()
    for a, s, t in e820:
        if t == 1:
            want |= {x for x in range(a, a + s - 0xFFF, 4096) if not 0xC0000 <= x < 0x100000}
    assert p.pv_total == len(want)
    if max(want) < 1 << 32:
        assert set(p.pvalidated) == want, sorted(set(p.pvalidated) ^ want)[:8]
        assert all(n == 1 for n in p.pvalidated.values())
    # else: the hook sees only EAX (see pc()), so addresses above 4 GiB alias low ones and
    # only the page count is checked; the KVM test checks the >4 GiB mapping itself.
    cc = struct.unpack_from("<I", p.ram.raw, BOOT_PARAMS + 0x13C)[0]
    assert cc == IMAGE_GPA + PB + 0x40
    blob = bytes(p.img.raw[PB + 0x40:PB + 0x68])
    assert struct.unpack("<IHHQIIQII", blob) == (0x45444D41, 1, 0, SECRETS, 4096, 0,
                                                  CPUID_PAGE, 4096, 0)


def test_snp_ram_above_4gib(image):
    # The RAM above 4 GiB is only PVALIDATEd (a hook), never touched, so it needs no mapping.
    e820 = E820 + [(1 << 32, 0x600000, 1), ((1 << 32) + 0x600000, 0x1000, 2)]
    test_snp(image, e820=e820, pt_pages=9, gib=5)


def test_snp_without_cpuid_leaf(image):
    p = Platform(patch(image), 7, cpuid_table=False)
    assert p.run() == ("terminate", GHCB_TERM(0x03)), (p.stop, p.events)


def test_snp_without_cc_pages(image):
    p = Platform(patch(image, snp_pages=False), 7)
    assert p.run() == ("terminate", GHCB_TERM(0x07)), (p.stop, p.events)


def test_sev_es_jump_table_refused(image):
    p = Platform(patch(image), 3, refuse_jt=True)
    assert p.run() == ("terminate", GHCB_TERM(0x06)), (p.stop, p.events)


def test_sev_es_ap(image):
    p = Platform(patch(image), 3, ap=True)
    before = p.ram.raw
    p.run()
    assert p.stop == ("trampoline", TRAMPOLINE_CS * 16), (p.stop, p.events)
    assert p.events == [("ap-hold",)], p.events
    uc = p.uc
    assert uc.reg_read(UC_X86_REG_CR0) & 1 == 0, "real mode"
    assert uc.reg_read(UC_X86_REG_CS) == TRAMPOLINE_CS
    assert uc.reg_read(UC_X86_REG_IP) == 0
    assert p.ram.raw == before, "AP wrote guest RAM"


def test_sev_es_ap_table_already_set(image):
    p = Platform(patch(image), 3, ap=True)
    p.img[0:4] = struct.pack("<HH", 0x0000, TRAMPOLINE_CS)
    p.run()
    assert p.stop == ("trampoline", TRAMPOLINE_CS * 16) and p.events == [], (p.stop, p.events)


def main():
    image = open(sys.argv[1], "rb").read()
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_")]
    failed = 0
    for t in tests:
        try:
            t(image)
            print(f"sev_sim {t.__name__} ... ok")
        except AssertionError as e:
            failed += 1
            print(f"sev_sim {t.__name__} ... FAILED: {e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
