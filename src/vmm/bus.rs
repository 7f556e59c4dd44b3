//! Address-range dispatch of guest MMIO exits to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::devices::BusDevice;

/// Errors while building the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range is empty, wraps, or overlaps a registered one.
    #[error("bus range overlaps another device or is empty")]
    Overlap,
}

/// A shared device on the bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Ranges `[base, base + len)` mapped to devices.
#[derive(Default)]
pub struct MmioBus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|(b, (l, _))| (*b, *l)))
            .finish()
    }
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::Overlap)?;
        if let Some((b, (l, _))) = self.ranges.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap);
            }
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// The device covering the whole access `[addr, addr + size)` and the offset into it.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        let (base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(u64::try_from(size).ok()?)?;
        (end <= *len).then_some((dev, offset))
    }

    /// Dispatches a read; returns false (and leaves `data` untouched) if nothing is mapped.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if nothing is mapped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device. A poisoned lock (a panic in another vCPU thread while it held the device)
/// is taken over: the device's state is plain data, and stopping the whole VM for it would
/// turn a bug into a guest-triggered denial of service of the host process.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(0xee));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_bounds() {
        let mut bus = MmioBus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x1000, 0x100, a.clone()).unwrap();
        bus.insert(0x1100, 0x100, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        assert!(bus.insert(0x10ff, 2, a.clone()).is_err());
        assert!(bus.insert(0xfff, 2, a.clone()).is_err());
        assert!(bus.insert(0x5000, 0, a.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, a.clone()).is_err());

        assert!(bus.write(0x1010, &[1, 2]));
        assert_eq!(a.lock().unwrap().0, vec![(0x10, vec![1, 2])]);
        let mut d = [0u8; 4];
        assert!(bus.read(0x1020, &mut d));
        assert_eq!(d, [0x20; 4]);
        // Straddling the end of a device or hitting a hole is not dispatched.
        assert!(!bus.write(0x10fe, &[0; 4]));
        assert!(!bus.read(0x2000, &mut d));
        assert!(!bus.read(0xfff, &mut d));
        assert!(!bus.read(u64::MAX, &mut d));
    }
}
