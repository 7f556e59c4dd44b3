//! The placeholder of an empty virtio-mmio slot (the network slot when no network is
//! configured): magic "virt", version 2, DeviceID 0, every other register 0, writes ignored.
//! Linux's virtio-mmio probe skips DeviceID 0 quietly. It keeps the slot list, and so the
//! measured kernel command line, the same with or without a network (docs/measurement.md).

use crate::devices::BusDevice;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;

/// An empty virtio-mmio slot.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlaceholderSlot;

impl BusDevice for PlaceholderSlot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            0x000 => MAGIC_VALUE,
            0x004 => MMIO_VERSION,
            _ => return,
        };
        // Only aligned 32-bit reads see the two registers, like the real transport.
        if data.len() == 4 {
            data.copy_from_slice(&value.to_le_bytes());
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(p: &mut PlaceholderSlot, off: u64) -> u32 {
        let mut b = [0u8; 4];
        p.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn reads_as_an_absent_device() {
        let mut p = PlaceholderSlot;
        assert_eq!(reg(&mut p, 0), 0x7472_6976);
        assert_eq!(reg(&mut p, 4), 2);
        // DeviceID, vendor, features, queue sizes, status, config space: all zero.
        for off in (8..0x200).step_by(4) {
            assert_eq!(reg(&mut p, off), 0, "offset {off:#x}");
        }
        // Writes change nothing (a driver would not get here: DeviceID 0 is skipped).
        p.write(0x70, &0xfu32.to_le_bytes());
        assert_eq!(reg(&mut p, 0x70), 0);
        let mut odd = [0xffu8; 2];
        p.read(0, &mut odd);
        assert_eq!(odd, [0, 0]);
    }
}
