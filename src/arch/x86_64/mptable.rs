//! MP table (Intel MultiProcessor Specification 1.4, chapter 4): lists the vCPUs, the IOAPIC
//! and the IRQ routing so a guest without ACPI finds all its CPUs.
//!
//! Built as bytes with explicit little-endian fields rather than `repr(C)` structs, so no
//! `unsafe impl ByteValued` is needed; each record's size is checked against the spec.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, IOAPIC_PINS, IOAPIC_START, MPTABLE_START};

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the space below 640 KiB or the 8-bit APIC IDs.
    #[error("too many vCPUs for the MP table")]
    TooManyCpus,
    /// Writing the table to guest memory failed.
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
const MPC_SPEC: u8 = 4;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MPC_APIC_USABLE: u8 = 1;
const MP_IRQ_TYPE_INT: u8 = 0;
const MP_IRQ_TYPE_EXTINT: u8 = 3;
const MP_IRQ_TYPE_NMI: u8 = 1;
const APIC_VERSION: u8 = 0x14;
/// Family 6 model 15 stepping 11, as other VMMs report; the guest does not rely on it.
const CPU_SIGNATURE: u32 = (6 << 8) | (15 << 4) | 11;
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const BUS_ID_ISA: u8 = 0;

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
const CPU_ENTRY_SIZE: usize = 20;
const BUS_ENTRY_SIZE: usize = 8;
const IOAPIC_ENTRY_SIZE: usize = 8;
const INTSRC_ENTRY_SIZE: usize = 8;
const LINTSRC_ENTRY_SIZE: usize = 8;

/// Space available from [`MPTABLE_START`] to the end of base memory (640 KiB).
const MPTABLE_SPACE: u64 = 0xa0000 - MPTABLE_START;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

/// The table's size for `vcpus` processors.
pub fn table_size(vcpus: u8) -> usize {
    MPF_SIZE
        + MPC_HEADER_SIZE
        + CPU_ENTRY_SIZE * usize::from(vcpus)
        + BUS_ENTRY_SIZE
        + IOAPIC_ENTRY_SIZE
        + INTSRC_ENTRY_SIZE * IOAPIC_PINS as usize
        + LINTSRC_ENTRY_SIZE * 2
}

/// Builds the MP floating pointer followed by the configuration table, for a table placed at
/// `base`.
pub fn build(vcpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus >= 0xfe || table_size(vcpus) as u64 > MPTABLE_SPACE {
        return Err(MptableError::TooManyCpus);
    }
    let ioapic_id = vcpus; // first APIC ID after the CPUs
    let mpc_addr = u32::try_from(base + MPF_SIZE as u64).map_err(|_| MptableError::TooManyCpus)?;

    let mut t = Vec::with_capacity(table_size(vcpus) - MPF_SIZE);
    t.extend_from_slice(MPC_SIGNATURE);
    t.extend_from_slice(&[0, 0]); // length, patched below
    t.push(MPC_SPEC);
    t.push(0); // checksum, patched below
    t.extend_from_slice(b"KRUN-SEV");
    t.extend_from_slice(b"MICROVM     ");
    t.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&0u16.to_le_bytes()); // entry count, patched below
    t.extend_from_slice(&u32::try_from(APIC_START).unwrap_or(0).to_le_bytes());
    t.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    debug_assert_eq!(t.len(), MPC_HEADER_SIZE);

    let mut entries: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        t.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION, flags]);
        t.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        t.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
        entries += 1;
    }
    t.extend_from_slice(&[MP_BUS, BUS_ID_ISA]);
    t.extend_from_slice(b"ISA   ");
    entries += 1;
    t.extend_from_slice(&[MP_IOAPIC, ioapic_id, APIC_VERSION, MPC_APIC_USABLE]);
    t.extend_from_slice(&u32::try_from(IOAPIC_START).unwrap_or(0).to_le_bytes());
    entries += 1;
    for pin in 0..IOAPIC_PINS {
        let pin = u8::try_from(pin).unwrap_or(0);
        // Conforming polarity and trigger (flags 0): ISA defaults, edge-triggered.
        t.extend_from_slice(&[
            MP_INTSRC,
            MP_IRQ_TYPE_INT,
            0,
            0,
            BUS_ID_ISA,
            pin,
            ioapic_id,
            pin,
        ]);
        entries += 1;
    }
    // LINT0 is ExtINT and LINT1 is NMI on every local APIC (destination 0xff = all).
    t.extend_from_slice(&[MP_LINTSRC, MP_IRQ_TYPE_EXTINT, 0, 0, BUS_ID_ISA, 0, 0xff, 0]);
    t.extend_from_slice(&[MP_LINTSRC, MP_IRQ_TYPE_NMI, 0, 0, BUS_ID_ISA, 0, 0xff, 1]);
    entries += 2;

    let len = u16::try_from(t.len()).map_err(|_| MptableError::TooManyCpus)?;
    t[4..6].copy_from_slice(&len.to_le_bytes());
    t[34..36].copy_from_slice(&entries.to_le_bytes());
    t[7] = checksum(&t);

    let mut out = Vec::with_capacity(table_size(vcpus));
    out.extend_from_slice(MPF_SIGNATURE);
    out.extend_from_slice(&mpc_addr.to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(MPC_SPEC);
    out.push(0); // checksum, patched below
    out.extend_from_slice(&[0; 5]); // feature bytes: 0 = a configuration table is present
    out[10] = checksum(&out);
    out.extend_from_slice(&t);
    Ok(out)
}

/// Writes the MP table for `vcpus` processors at [`MPTABLE_START`].
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let table = build(vcpus, MPTABLE_START)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for vcpus in [1u8, 2, 8, 32] {
            let t = build(vcpus, MPTABLE_START).unwrap();
            assert_eq!(t.len(), table_size(vcpus));
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let mpc_addr = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(u64::from(mpc_addr), MPTABLE_START + 16);
            let mpc = &t[16..];
            assert_eq!(&mpc[0..4], b"PCMP");
            let len = u16::from_le_bytes([mpc[4], mpc[5]]) as usize;
            assert_eq!(len, mpc.len());
            assert_eq!(sum(mpc), 0);
            let count = u16::from_le_bytes([mpc[34], mpc[35]]);
            assert_eq!(usize::from(count), usize::from(vcpus) + 2 + 24 + 2);
            let cpus: Vec<_> = mpc[44..]
                .chunks(20)
                .take(usize::from(vcpus))
                .map(|e| (e[0], e[1], e[3]))
                .collect();
            assert_eq!(cpus[0], (MP_PROCESSOR, 0, 3));
            assert!(cpus[1..]
                .iter()
                .enumerate()
                .all(|(i, c)| *c == (MP_PROCESSOR, u8::try_from(i + 1).unwrap(), 1)));
        }
    }

    #[test]
    fn rejects_zero_and_too_many() {
        assert!(build(0, MPTABLE_START).is_err());
        assert!(build(38, MPTABLE_START).is_err());
        assert!(build(37, MPTABLE_START).is_ok());
    }

    #[test]
    fn writes_into_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap();
        write(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
