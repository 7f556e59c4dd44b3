//! vCPU state for the Linux 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit
//! boot protocol"): long mode, identity-mapped page tables, flat segments, `rsi` pointing to
//! the zero page.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};

/// Errors while writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables to guest memory failed.
    #[error("cannot write boot structures to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE: u64 = 0x80;

/// GDT index of the code, data and TSS segments.
const GDT_CODE: u16 = 1;
const GDT_DATA: u16 = 2;
const GDT_TSS: u16 = 3;

/// Packs a GDT entry from flags, base and limit (Intel SDM vol. 3, 3.4.5).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Unpacks a GDT entry into a KVM segment with selector `index * 8`.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages.
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

/// Writes the GDT, an empty IDT and page tables identity-mapping the low 4 GiB with 2 MiB
/// pages.
pub fn write_boot_structures(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::Write)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::Write)?;
    mem.write_obj(PDPTE_START | PTE_PRESENT_RW, GuestAddress(PML4_START))
        .map_err(RegsError::Write)?;
    for gib in 0..4u64 {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | PTE_PRESENT_RW, GuestAddress(PDPTE_START + gib * 8))
            .map_err(RegsError::Write)?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            mem.write_obj(phys | PTE_PRESENT_RW | PDE_HUGE, GuestAddress(pd + i * 8))
                .map_err(RegsError::Write)?;
        }
    }
    Ok(())
}

/// Long-mode special registers, starting from the vCPU's current ones.
pub fn boot_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[usize::from(GDT_CODE)], GDT_CODE);
    let data = segment_from_gdt(BOOT_GDT[usize::from(GDT_DATA)], GDT_DATA);
    let tss = segment_from_gdt(BOOT_GDT[usize::from(GDT_TSS)], GDT_TSS);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&BOOT_GDT) - 1).unwrap_or(0);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// General registers at kernel entry: `rip` = entry, `rsi` = zero page.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Initial FPU state (x87 control word and MXCSR at their reset values).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (dst, src) in b.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        *dst = src.to_ne_bytes()[0];
    }
    u32::from_le_bytes(b)
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = std::os::raw::c_char::from_ne_bytes([src]);
    }
}

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Configures LINT0 as ExtINT and LINT1 as NMI, matching the MP table.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, set_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode() {
        let code = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!((code.selector, code.l, code.db, code.present), (8, 1, 0, 1));
        assert_eq!(
            (code.type_, code.s, code.g, code.limit),
            (0xb, 1, 1, 0xffff_ffff)
        );
        let data = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((data.selector, data.db, data.type_), (16, 1, 3));
        let null = segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        write_boot_structures(&mem).unwrap();
        let rd = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(rd(PML4_START), PDPTE_START | 3);
        for gib in 0..4 {
            assert_eq!(rd(PDPTE_START + gib * 8), (PDE_START + gib * 0x1000) | 3);
        }
        // Last 2 MiB page below 4 GiB.
        assert_eq!(rd(PDE_START + 3 * 0x1000 + 511 * 8), 0xffe0_0000 | 0x83);
        assert_eq!(rd(BOOT_GDT_START + 8), BOOT_GDT[1]);
    }

    #[test]
    fn lint_modes() {
        let mut l = kvm_lapic_state::default();
        set_reg(&mut l, APIC_LVT0, 0xffff_ffff);
        set_lint(&mut l);
        assert_eq!((get_reg(&l, APIC_LVT0) >> 8) & 7, 7);
        assert_eq!((get_reg(&l, APIC_LVT1) >> 8) & 7, 4);
        assert_eq!(get_reg(&l, APIC_LVT0) & !0x700, 0xffff_f8ff);
    }

    #[test]
    fn boot_registers() {
        let r = boot_regs(0x100_0000);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0000, 0x7000, 0x8ff0, 2)
        );
        let s = boot_sregs(kvm_sregs::default());
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.efer & EFER_LMA, 0);
    }
}
