//! Runs the firmware in a plain (non-SEV) KVM guest: reset vector -> long mode -> a tiny
//! fake kernel that reports RSI and what it reads through the identity map.
//!
//! They need a /dev/kvm that can run real-mode code (the development machines' PVM /dev/kvm,
//! KVM's instruction emulator, does too), so a plain `cargo test` lists them as ignored and
//! `make test` runs them with `--ignored` inside the nested-KVM test host
//! (`tests/host/tests/kvm_unit.rs`). Asked to run without a usable /dev/kvm (or without an
//! in-kernel irqchip, for the 2-vCPU test) they fail; with `KRUN_TEST_REQUIRE_KVM=1` the CPU
//! must also have hardware virtualization (svm or vmx).

// A test program: helpers outside #[test] fns may panic on setup failures too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use krun_resetvec::layout::{AP_ENTRY_IP, FATAL_PORT, IMAGE_GPA, IMAGE_SIZE, RESET_CS_BASE};
use krun_resetvec::params::{patch, FirmwareParams};
use krun_resetvec::IMAGE;

const RAM_SIZE: usize = 32 << 20;
const BOOT_PARAMS: u64 = 0x7000;
const AP_TRAMPOLINE: u64 = 0x8000;
const PT_BASE: u64 = 0x20_000;
const KERNEL: u64 = 0x100_0000;
const MARKER: u32 = 0x4B52_554E;
const OUT_PORT: u16 = 0xF4;
const AP_PORT: u16 = 0xF6;
const DONE_PORT: u16 = 0xF7;

/// 64-bit fake kernel: reports RSI (low, high), boot_params.hdr.header read through the
/// firmware's page tables, and a marker on port 0xf4.
const REPORT: &[u8] = &[
    0x89, 0xF0, // mov eax, esi
    0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
    0xEF, // out dx, eax
    0x48, 0x89, 0xF0, // mov rax, rsi
    0x48, 0xC1, 0xE8, 0x20, // shr rax, 32
    0xEF, // out dx, eax
    0x8B, 0x86, 0x02, 0x02, 0x00, 0x00, // mov eax, [rsi + 0x202]
    0xEF, // out dx, eax
    0xB8, 0x4E, 0x55, 0x52, 0x4B, // mov eax, MARKER
    0xEF, // out dx, eax
];
const HLT: &[u8] = &[0xF4];
/// Enables the xAPIC and starts the AP at AP_TRAMPOLINE with INIT + SIPI, like Linux in a
/// plain VM, then says so on DONE_PORT and spins (HLT would block with an in-kernel LAPIC).
const START_AP: &[u8] = &[
    0xBF, 0x00, 0x00, 0xE0, 0xFE, // mov edi, 0xfee00000
    0xC7, 0x87, 0xF0, 0x00, 0x00, 0x00, 0xFF, 0x01, 0x00, 0x00, // SVR: APIC enabled
    0xC7, 0x87, 0x10, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // ICR high: APIC ID 1
    0xC7, 0x87, 0x00, 0x03, 0x00, 0x00, 0x00, 0x45, 0x00, 0x00, // ICR low: INIT, assert
    0xC7, 0x87, 0x10, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // ICR high: APIC ID 1
    0xC7, 0x87, 0x00, 0x03, 0x00, 0x00, 0x08, 0x46, 0x00, 0x00, // ICR low: SIPI, vector 8
    0x66, 0xBA, 0xF7, 0x00, // mov dx, 0xf7
    0xEF, // out dx, eax
    0xEB, 0xFE, // jmp $
];
/// Real-mode AP trampoline: reports CS on port 0xf6, spins.
const AP_CODE: &[u8] = &[
    0x8C, 0xC8, // mov ax, cs
    0xE7, 0xF6, // out 0xf6, ax
    0xEB, 0xFE, // jmp $
];

struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Self {
        // SAFETY: anonymous private mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
        Self {
            ptr: ptr.cast(),
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe a live mapping owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access from the host side.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping created in new(); the VM using it is gone by then
        // (fields of Guest drop the VmFd first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// SAFETY: the mapping is plain memory; the tests synchronise through thread joins.
unsafe impl Send for Mapping {}

struct Guest {
    kvm: Kvm,
    vm: VmFd,
    ram: Mapping,
    fw: Mapping,
}

/// Opens /dev/kvm or fails the test: an ignored test that was asked to run never passes
/// without running.
fn open_kvm() -> Kvm {
    let kvm = Kvm::new().unwrap_or_else(|e| {
        panic!(
            "/dev/kvm cannot be opened ({e}); the firmware boot tests run in the nested-KVM \
             test host (ci/testhost-tests.sh)"
        )
    });
    if std::env::var("KRUN_TEST_REQUIRE_KVM").as_deref() == Ok("1") {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        assert!(
            cpuinfo
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "svm" || f == "vmx")),
            "KRUN_TEST_REQUIRE_KVM=1 but this CPU has no svm/vmx flag"
        );
    }
    kvm
}

fn put(ram: &mut [u8], gpa: u64, bytes: &[u8]) {
    let at = usize::try_from(gpa).unwrap();
    ram[at..at + bytes.len()].copy_from_slice(bytes);
}

fn u64_at(mem: &[u8], off: u64) -> u64 {
    let at = usize::try_from(off).unwrap();
    u64::from_le_bytes(mem[at..at + 8].try_into().unwrap())
}

/// A page-table entry without the accessed and dirty bits the CPU sets.
fn pte_at(mem: &[u8], off: u64) -> u64 {
    u64_at(mem, off) & !0x60
}

/// boot_params with the "HdrS" signature and the given e820 table.
fn boot_params(ram: &mut [u8], e820: &[(u64, u64, u32)]) {
    let mut bp = vec![0u8; 4096];
    bp[0x202..0x206].copy_from_slice(b"HdrS");
    bp[0x1E8] = u8::try_from(e820.len()).unwrap();
    for (i, (addr, size, ty)) in e820.iter().enumerate() {
        let at = 0x2D0 + i * 20;
        bp[at..at + 8].copy_from_slice(&addr.to_le_bytes());
        bp[at + 8..at + 16].copy_from_slice(&size.to_le_bytes());
        bp[at + 16..at + 20].copy_from_slice(&ty.to_le_bytes());
    }
    put(ram, BOOT_PARAMS, &bp);
}

fn default_e820() -> Vec<(u64, u64, u32)> {
    vec![
        (0, 0x9_FC00, 1),
        (0x10_0000, RAM_SIZE as u64 - 0x10_0000, 1),
    ]
}

impl Guest {
    fn new(kvm: Kvm, irqchip: bool) -> Self {
        let vm = kvm.create_vm().unwrap();
        if irqchip {
            if let Err(e) = vm.create_irq_chip() {
                panic!("this /dev/kvm has no in-kernel irqchip ({e}); run in the test host");
            }
        }
        let mut ram = Mapping::new(RAM_SIZE);
        let mut fw = Mapping::new(IMAGE_SIZE);
        fw.bytes_mut().copy_from_slice(&IMAGE[..]);
        boot_params(ram.bytes_mut(), &default_e820());
        for (slot, gpa, m) in [(0, 0, &ram), (1, IMAGE_GPA, &fw)] {
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: m.len as u64,
                userspace_addr: m.ptr as u64,
            };
            // SAFETY: the mappings live in the same Guest as the VM and are dropped after it.
            unsafe { vm.set_user_memory_region(region) }.unwrap();
        }
        Self { kvm, vm, ram, fw }
    }

    fn patch(&mut self, params: &FirmwareParams) {
        patch(self.fw.bytes_mut(), params).unwrap();
    }

    fn params(pt_pages: u64) -> FirmwareParams {
        FirmwareParams {
            kernel_entry: KERNEL,
            boot_params: BOOT_PARAMS,
            pt_base: PT_BASE,
            pt_size: pt_pages * 0x1000,
            snp: None,
        }
    }

    fn vcpu(&self, id: u64) -> VcpuFd {
        let vcpu = self.vm.create_vcpu(id).unwrap();
        let cpuid = self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        vcpu
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Out(u16, u32),
    Hlt,
}

/// Runs until HLT or an OUT to `stop_port`; any other exit fails the test.
fn run(vcpu: &mut VcpuFd, stop_port: Option<u16>) -> Vec<Event> {
    let mut events = Vec::new();
    for _ in 0..1000 {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                let mut v = [0u8; 4];
                v[..data.len()].copy_from_slice(data);
                events.push(Event::Out(port, u32::from_le_bytes(v)));
                if Some(port) == stop_port {
                    return events;
                }
            }
            Ok(VcpuExit::Hlt) => {
                events.push(Event::Hlt);
                return events;
            }
            // KVM_RUN says EAGAIN when an AP leaves wait-for-SIPI: run again.
            Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => {}
            other => {
                let desc = format!("{other:?}");
                let regs = vcpu.get_regs().unwrap();
                let sregs = vcpu.get_sregs().unwrap();
                panic!("unexpected exit {desc} after {events:?}\nregs {regs:x?}\nsregs {sregs:x?}");
            }
        }
    }
    panic!("vCPU did not stop: {events:?}");
}

fn expected_report() -> Vec<Event> {
    vec![
        Event::Out(OUT_PORT, u32::try_from(BOOT_PARAMS).unwrap()),
        Event::Out(OUT_PORT, 0),
        Event::Out(OUT_PORT, u32::from_le_bytes(*b"HdrS")),
        Event::Out(OUT_PORT, MARKER),
    ]
}

fn assert_long_mode(vcpu: &VcpuFd) {
    let regs = vcpu.get_regs().unwrap();
    let sregs = vcpu.get_sregs().unwrap();
    assert_eq!(regs.rsi, BOOT_PARAMS);
    assert_eq!(regs.rip, KERNEL + (REPORT.len() + HLT.len()) as u64);
    assert_eq!(
        sregs.cr0 & 0x8000_0001,
        0x8000_0001,
        "PE and PG: {:#x}",
        sregs.cr0
    );
    assert_eq!(
        sregs.cr0 & 0x6000_0000,
        0,
        "caches enabled: {:#x}",
        sregs.cr0
    );
    assert_ne!(sregs.cr4 & 0x20, 0, "PAE: {:#x}", sregs.cr4);
    assert_eq!(sregs.efer & 0x500, 0x500, "LME and LMA: {:#x}", sregs.efer);
    assert_eq!(sregs.cr3, PT_BASE);
    assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.cs.db), (0x10, 1, 0));
    for seg in [sregs.ds, sregs.es, sregs.ss] {
        assert_eq!(seg.selector, 0x18);
    }
    assert_eq!(regs.rflags & 0x200, 0, "interrupts off");
}

/// Checks the identity map of `gib` GiB with 2 MiB pages and no C-bit.
fn assert_identity_map(ram: &[u8], gib: u64) {
    assert_eq!(pte_at(ram, PT_BASE), PT_BASE + 0x1000 + 3);
    for i in 1..512 {
        assert_eq!(pte_at(ram, PT_BASE + i * 8), 0, "PML4[{i}]");
    }
    for g in 0..512 {
        let pdpte = pte_at(ram, PT_BASE + 0x1000 + g * 8);
        if g < gib {
            let pd = PT_BASE + 0x4000 + g * 0x1000;
            assert_eq!(pdpte, pd + 3, "PDPT[{g}]");
            for e in 0..512 {
                let addr = (g << 30) + (e << 21);
                assert_eq!(pte_at(ram, pd + e * 8), addr | 0x83, "PD {g}/{e}");
            }
        } else {
            assert_eq!(pdpte, 0, "PDPT[{g}]");
        }
    }
}

/// The firmware writes guest RAM only in the page-table region (in a plain VM).
fn assert_ram_untouched(before: &[u8], after: &[u8], pt_pages: u64) {
    let pt =
        usize::try_from(PT_BASE).unwrap()..usize::try_from(PT_BASE + pt_pages * 0x1000).unwrap();
    let changed = (0..before.len()).find(|&i| before[i] != after[i] && !pt.contains(&i));
    assert_eq!(
        changed, None,
        "firmware wrote RAM outside the page-table region"
    );
}

#[test]
#[ignore = "needs a KVM that boots guests: runs in the test host"]
fn boots_fake_kernel_in_long_mode() {
    let mut g = Guest::new(open_kvm(), false);
    g.patch(&Guest::params(8));
    put(g.ram.bytes_mut(), KERNEL, &[REPORT, HLT].concat());
    let before = g.ram.bytes().to_vec();
    let mut vcpu = g.vcpu(0);
    assert_eq!(
        run(&mut vcpu, None),
        [expected_report(), vec![Event::Hlt]].concat()
    );
    assert_long_mode(&vcpu);
    assert_identity_map(g.ram.bytes(), 4);
    assert_ram_untouched(&before, g.ram.bytes(), 8);
}

#[test]
#[ignore = "needs a KVM that boots guests: runs in the test host"]
fn maps_e820_ram_above_4gib() {
    let mut g = Guest::new(open_kvm(), false);
    let mut e820 = default_e820();
    e820.push((0xD000_0000, 0x100_0000, 2)); // reserved: ignored
    e820.push((1 << 32, (5 << 30) / 2, 1)); // RAM up to 6.5 GiB: 7 GiB mapped
    boot_params(g.ram.bytes_mut(), &e820);
    g.patch(&Guest::params(11));
    put(g.ram.bytes_mut(), KERNEL, &[REPORT, HLT].concat());
    let mut vcpu = g.vcpu(0);
    assert_eq!(
        run(&mut vcpu, None),
        [expected_report(), vec![Event::Hlt]].concat()
    );
    assert_long_mode(&vcpu);
    assert_identity_map(g.ram.bytes(), 7);
}

fn expect_fatal(g: &Guest, code: u8) {
    let mut vcpu = g.vcpu(0);
    let events = run(&mut vcpu, None);
    assert_eq!(
        events,
        vec![Event::Out(FATAL_PORT, u32::from(code)), Event::Hlt]
    );
}

#[test]
#[ignore = "needs a KVM that boots guests: runs in the test host"]
fn reports_unpatched_parameters() {
    let g = Guest::new(open_kvm(), false);
    expect_fatal(&g, 0x01);
}

#[test]
#[ignore = "needs a KVM that boots guests: runs in the test host"]
fn reports_page_table_region_too_small_for_ram() {
    let mut g = Guest::new(open_kvm(), false);
    let mut e820 = default_e820();
    e820.push((1 << 32, 60 << 30, 1));
    boot_params(g.ram.bytes_mut(), &e820);
    g.patch(&Guest::params(67)); // 64 GiB need 68 pages
    expect_fatal(&g, 0x02);
}

#[test]
#[ignore = "needs a KVM that boots guests: runs in the test host"]
fn reports_malformed_e820() {
    let mut g = Guest::new(open_kvm(), false);
    g.patch(&Guest::params(8));
    g.ram.bytes_mut()[usize::try_from(BOOT_PARAMS).unwrap() + 0x1E8] = 129;
    expect_fatal(&g, 0x09);
}

#[test]
#[ignore = "needs a KVM that boots guests: runs in the test host"]
fn ap_entry_parks_without_sev() {
    // Only SEV-ES/SNP APs start at the AP entry (measured VMSA). Reached in a VM without
    // SEV-ES, the AP must halt without touching RAM, so a kernel INIT-SIPI can restart it.
    let mut g = Guest::new(open_kvm(), false);
    g.patch(&Guest::params(8));
    let before = g.ram.bytes().to_vec();
    let mut vcpu = g.vcpu(0);
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = AP_ENTRY_IP;
    vcpu.set_regs(&regs).unwrap();
    assert_eq!(vcpu.get_sregs().unwrap().cs.base, RESET_CS_BASE);
    assert_eq!(run(&mut vcpu, None), vec![Event::Hlt]);
    let sregs = vcpu.get_sregs().unwrap();
    assert_eq!(sregs.cr0 & 0x8000_0001, 1, "protected mode, no paging");
    assert_eq!(before, g.ram.bytes(), "AP path wrote guest RAM");
}

#[test]
#[ignore = "needs a KVM that boots guests: runs in the test host"]
fn two_vcpus_kernel_starts_ap_with_init_sipi() {
    let mut g = Guest::new(open_kvm(), true);
    g.patch(&Guest::params(8));
    put(g.ram.bytes_mut(), KERNEL, &[REPORT, START_AP].concat());
    put(g.ram.bytes_mut(), AP_TRAMPOLINE, AP_CODE);
    let mut bsp = g.vcpu(0);
    let mut ap = g.vcpu(1);
    // What the VMM sets for SEV-ES APs: INIT-SIPI must override it in a plain VM.
    let mut regs = ap.get_regs().unwrap();
    regs.rip = AP_ENTRY_IP;
    ap.set_regs(&regs).unwrap();

    let (tx, rx) = mpsc::channel();
    let tx_ap = tx.clone();
    thread::spawn(move || {
        let events = run(&mut ap, Some(AP_PORT));
        let cs = ap.get_sregs().unwrap().cs;
        tx_ap.send(("ap", events, cs.base)).unwrap();
    });
    thread::spawn(move || {
        let events = run(&mut bsp, Some(DONE_PORT));
        tx.send(("bsp", events, 0)).unwrap();
    });
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            rx.recv_timeout(Duration::from_secs(30))
                .expect("vCPU did not finish"),
        );
    }
    got.sort_by_key(|(who, _, _)| *who);
    let (_, ap_events, ap_cs_base) = &got[0];
    let (_, bsp_events, _) = &got[1];
    let mut expected = expected_report();
    expected.push(Event::Out(DONE_PORT, MARKER));
    assert_eq!(bsp_events, &expected);
    assert_eq!(ap_events, &vec![Event::Out(AP_PORT, 0x0800)]);
    assert_eq!(*ap_cs_base, AP_TRAMPOLINE);
}
