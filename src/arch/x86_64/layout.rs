//! The guest physical memory map.
//!
//! Every address a confidential launch measures or injects into is a constant here, so the
//! measurement calculator, the TEE launch code and the firmware can agree on it without
//! reading the VMM. The low-memory part follows libkrun-sev 1.x (see
//! `shared/research/libkrunfw-sev.md` §2.1) so that an SEV launch keeps the same shape:
//!
//! | GPA | size | what |
//! |---|---|---|
//! | `0x0` | 4 KiB | zero page for the SNP firmware's IDT (`SNP_LIDT_START`) |
//! | `0x500` / `0x520` | 32 B / 8 B | boot GDT / IDT (plain 64-bit boot only) |
//! | `0x4000` | 4 KiB | SNP confidential-computing blob, written by the firmware |
//! | `0x5000` | 4 KiB | SNP secrets page |
//! | `0x6000` | 4 KiB | SNP CPUID page |
//! | `0x7000` | 4 KiB | zero page (`boot_params`), `rsi` at kernel entry |
//! | `0x8000` | 28 KiB | firmware data: boot stack (top `0x8ff0`), page tables `0x9000..0xf000` |
//! | `0x20000` | 64 KiB | kernel command line |
//! | `0x9f000` | 20 B | ACPI RSDP without tables (`boot_params.acpi_rsdp_addr`) |
//! | `0x9fc00` | 1 KiB | EBDA: MP floating pointer and MP configuration table |
//! | `0x100000` | | start of high RAM in the e820 map; in a TEE launch the reset-vector firmware's page-table region starts here |
//! | `0x1000000` | | kernel (`CONFIG_PHYSICAL_START`, ELF `p_paddr`), up to `INITRD_START` |
//! | `0x4000000` | | initrd: bundle initrd, then the uncompressed launch segment (host.json, secret slot) |
//! | `0xd0000000` | 768 MiB | MMIO gap: virtio-mmio slots (4 KiB each, IRQ 5 upwards), IOAPIC, LAPIC |
//! | `0xfffbc000` | 16 KiB | KVM identity-map page and TSS |
//! | `0xffffe000` | 8 KiB | reset-vector firmware (`krun-resetvec`, embedded in the library; TEE launches only) |
//! | `4 GiB` | | RAM above the MMIO gap, when `ram > 0xd0000000` |
//!
//! The kernel may not grow into the initrd: `vmm::memory` rejects a kernel whose last
//! `PT_LOAD` segment ends above `INITRD_START`.

/// Size of a page.
pub const PAGE_SIZE: u64 = 0x1000;

/// SNP firmware IDT page (measured as a zero page under SNP).
pub const SNP_LIDT_START: u64 = 0x0;
/// Boot GDT for the 64-bit boot protocol.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT for the 64-bit boot protocol (empty).
pub const BOOT_IDT_START: u64 = 0x520;
/// SNP confidential-computing blob (written by the firmware).
pub const SNP_CC_BLOB_START: u64 = 0x4000;
/// SNP secrets page.
pub const SNP_SECRETS_START: u64 = 0x5000;
/// SNP CPUID page.
pub const SNP_CPUID_START: u64 = 0x6000;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Firmware data area (stack and page tables), `0x8000..0xf000`.
pub const FWDATA_START: u64 = 0x8000;
/// Size of the firmware data area.
pub const FWDATA_SIZE: u64 = 0x7000;
/// Initial stack pointer of the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot page tables.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot page tables.
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories identity-mapping the low 4 GiB with 2 MiB pages.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Size of the region reserved for the command line.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Longest command line the x86 kernel reads (`COMMAND_LINE_SIZE`), including the NUL: the
/// kernel copies this many bytes and silently drops the rest, which would lose the
/// `virtio_mmio.device=` entries at the end.
pub const CMDLINE_KERNEL_LIMIT: usize = 2048;
/// Extended BIOS data area; the first e820 RAM entry ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// MP floating pointer structure and configuration table.
pub const MPTABLE_START: u64 = EBDA_START;
/// A minimal ACPI RSDP (no tables) that `boot_params.acpi_rsdp_addr` names, in the MP
/// table's page: with it, the bzImage's decompressor does not scan the BIOS area
/// [0xE0000, 0x100000) for one, which under SNP is not validated when it runs.
pub const RSDP_START: u64 = 0x9f000;
/// Start of high memory.
pub const HIMEM_START: u64 = 0x100000;
/// Kernel load address (`CONFIG_PHYSICAL_START`: a bzImage's `pref_address`, the `PT_LOAD`
/// physical addresses of a vmlinux).
pub const KERNEL_START: u64 = 0x100_0000;
/// Initrd load address; the kernel's segments must end below it.
pub const INITRD_START: u64 = 0x400_0000;
/// Start of the 32-bit MMIO gap: guest RAM below 4 GiB ends here.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First virtio-mmio slot.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Maximum number of virtio-mmio slots (their IRQs must stay below the IOAPIC's 24 pins).
pub const VIRTIO_MMIO_MAX_SLOTS: u32 = 16;
/// IRQ of the first virtio-mmio slot; slot `n` uses `VIRTIO_IRQ_BASE + n`.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// IOAPIC base address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's identity-map page (one page, just below the TSS).
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;
/// KVM's TSS (three pages).
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// Reset-vector firmware (`firmware/resetvec/README.md` is the contract).
pub const FIRMWARE_START: u64 = krun_resetvec::layout::IMAGE_GPA;
/// Size of the reset-vector firmware region.
pub const FIRMWARE_SIZE: u64 = krun_resetvec::layout::IMAGE_SIZE as u64;
/// Legacy serial port COM1, used only as an early log sink.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// I/O port through which the guest init reports the workload's exit status.
pub const EXIT_STATUS_PORT: u16 = 0xf4;
/// Number of IOAPIC pins.
pub const IOAPIC_PINS: u32 = 24;

/// Guest RAM regions `(start, size)` for `ram_bytes` of RAM: one region below the MMIO gap and,
/// when RAM does not fit there, a second one from 4 GiB.
pub fn ram_regions(ram_bytes: u64) -> Vec<(u64, u64)> {
    if ram_bytes <= MMIO_GAP_START {
        vec![(0, ram_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, ram_bytes - MMIO_GAP_START),
        ]
    }
}

/// Guest address of virtio-mmio slot `index`.
pub const fn virtio_mmio_slot(index: u32) -> u64 {
    VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SLOT_SIZE
}

// Compile-time checks of the fixed layout.
const _: () = {
    // GDT/IDT sit inside the first page, below anything else.
    assert!(BOOT_IDT_START + 8 <= SNP_CC_BLOB_START);
    // Page tables: PML4, PDPT and four PDs fit the firmware data area, above the stack.
    assert!(PML4_START > BOOT_STACK_POINTER);
    assert!(PDE_START + 4 * PAGE_SIZE <= FWDATA_START + FWDATA_SIZE);
    let last_slot = virtio_mmio_slot(VIRTIO_MMIO_MAX_SLOTS - 1) + VIRTIO_MMIO_SLOT_SIZE;
    assert!(last_slot <= IOAPIC_START);
    assert!(VIRTIO_IRQ_BASE + VIRTIO_MMIO_MAX_SLOTS <= IOAPIC_PINS);
    assert!(KVM_TSS_START + 3 * PAGE_SIZE <= FIRMWARE_START);
    assert!(CMDLINE_KERNEL_LIMIT <= CMDLINE_MAX_SIZE);
    // The RSDP shares the MP table's (measured) page, below the table.
    assert!(RSDP_START / PAGE_SIZE == MPTABLE_START / PAGE_SIZE);
    assert!(RSDP_START + 20 <= MPTABLE_START);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_regions_do_not_overlap() {
        let regions = [
            (SNP_LIDT_START, PAGE_SIZE),
            (SNP_CC_BLOB_START, PAGE_SIZE),
            (SNP_SECRETS_START, PAGE_SIZE),
            (SNP_CPUID_START, PAGE_SIZE),
            (ZERO_PAGE_START, PAGE_SIZE),
            (FWDATA_START, FWDATA_SIZE),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, 0x400),
            (KERNEL_START, INITRD_START - KERNEL_START),
        ];
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                assert!(a.0 + a.1 <= b.0, "{a:x?} overlaps {b:x?}");
            }
        }
    }

    #[test]
    fn ram_splits_around_the_mmio_gap() {
        assert_eq!(ram_regions(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![(0, MMIO_GAP_START), (1 << 32, (4 << 30) - MMIO_GAP_START)]
        );
    }
}
