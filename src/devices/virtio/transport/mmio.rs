//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2).
//!
//! Register accesses below `0x100` must be aligned 32-bit accesses; others are ignored (reads
//! return zero). The driver's status writes drive the device lifecycle: `FEATURES_OK` is
//! refused unless the driver's features are a subset of the offer and include
//! `VIRTIO_F_VERSION_1`; `DRIVER_OK` activates the device; a failed activation sets
//! `DEVICE_NEEDS_RESET` and raises a configuration interrupt; writing 0 resets.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio::interrupt::Interrupt;
use crate::devices::virtio::rate_limit::guest_warn;
use crate::devices::virtio::{
    ActivateContext, VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER,
    STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, TRANSPORT_FEATURES, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::BusDevice;
use crate::vmm::memory::GuestMemory;

/// Errors while creating the transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// Creating an eventfd failed.
    #[error("cannot create a queue eventfd")]
    EventFd(#[source] std::io::Error),
}

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Offset of the `QueueNotify` register (for an ioeventfd registration).
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Driver-side configuration of one queue, kept by the transport until activation.
#[derive(Debug, Clone, Default)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: (u32, u32),
    driver: (u32, u32),
    device: (u32, u32),
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        QueueConfig {
            max_size,
            size: max_size,
            ..Default::default()
        }
    }

    fn build(&self, event_idx: bool) -> Option<Queue> {
        // virtio-queue ignores a misaligned ring address (it logs and keeps the previous
        // one, here 0), so the device would use rings at guest address 0 that the driver
        // never gave it (seen with the hostile-guest test). Refuse such a queue instead.
        let addr = |(lo, hi): (u32, u32)| u64::from(lo) | u64::from(hi) << 32;
        if addr(self.desc) % 16 != 0 || addr(self.driver) % 2 != 0 || addr(self.device) % 4 != 0 {
            return None;
        }
        let mut q = Queue::new(self.max_size).ok()?;
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc.0), Some(self.desc.1));
        q.set_avail_ring_address(Some(self.driver.0), Some(self.driver.1));
        q.set_used_ring_address(Some(self.device.0), Some(self.device.1));
        q.set_event_idx(event_idx);
        q.set_ready(self.ready);
        Some(q)
    }
}

/// A virtio device behind the virtio-mmio register layout.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    queue_evts: Vec<EventFd>,
    queues: Vec<QueueConfig>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    config_generation: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish()
    }
}

impl MmioTransport {
    /// Wraps `device`; `irq_evt` is the eventfd registered as the device's irqfd.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemory>,
        irq_evt: EventFd,
    ) -> Result<Self, MmioError> {
        let queues: Vec<QueueConfig> = device
            .queue_max_sizes()
            .iter()
            .map(|m| QueueConfig::new(*m))
            .collect();
        let queue_evts = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq_evt)),
            queue_evts,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The queue notification eventfds (for ioeventfd registration), in queue order.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | STATUS_DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn offered_features(&self) -> u64 {
        self.device.device_features() | TRANSPORT_FEATURES
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        // Queue registers may only change before DRIVER_OK.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        let sel = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(sel)
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        for evt in &self.queue_evts {
            super::super::worker::drain(evt);
        }
        self.interrupt.reset();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // Bits the driver may set; anything else (NEEDS_RESET included) is not the driver's.
        let value = value
            & (STATUS_ACKNOWLEDGE
                | STATUS_DRIVER
                | STATUS_FEATURES_OK
                | STATUS_DRIVER_OK
                | STATUS_FAILED);
        // Status bits only accumulate; anything else but FAILED is a driver bug we ignore.
        if value & self.status != self.status {
            log::debug!(
                "virtio-mmio: ignoring status {value:#x} over {:#x}",
                self.status
            );
            return;
        }
        let new_bits = value & !self.status;
        if new_bits & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
            return;
        }
        if new_bits & STATUS_FEATURES_OK != 0 {
            let offered = self.offered_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
                && self.status & STATUS_DRIVER != 0;
            if !ok {
                guest_warn!(
                    "virtio-mmio: driver features {:#x} refused",
                    self.driver_features
                );
                self.status |= value & !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
                return;
            }
        }
        if new_bits & STATUS_DRIVER_OK != 0 {
            if value & STATUS_FEATURES_OK == 0 || self.interrupt.needs_reset() {
                return;
            }
            self.status = value;
            self.activate();
            return;
        }
        let allowed = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.status |= new_bits & allowed;
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues: Option<Vec<Queue>> = self
            .queues
            .iter()
            .map(|q| q.build(event_idx).filter(|q| q.is_valid(self.mem.as_ref())))
            .collect();
        let Some(queues) = queues else {
            guest_warn!("virtio-mmio: activation with an invalid or unready queue");
            self.interrupt.set_needs_reset();
            return;
        };
        let evts: std::io::Result<Vec<EventFd>> =
            self.queue_evts.iter().map(EventFd::try_clone).collect();
        let evts = match evts {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio-mmio: cannot clone queue eventfds: {e}");
                self.interrupt.set_needs_reset();
                return;
            }
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts: evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::error!("virtio-mmio: device activation failed: {e}");
                self.interrupt.set_needs_reset();
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let half = |v: u64, sel: u32| match sel {
            0 => (v & 0xffff_ffff) as u32,
            1 => (v >> 32) as u32,
            _ => 0,
        };
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => half(self.offered_features(), self.device_features_sel),
            REG_QUEUE_NUM_MAX => usize::try_from(self.queue_sel)
                .ok()
                .and_then(|s| self.queues.get(s))
                .map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => usize::try_from(self.queue_sel)
                .ok()
                .and_then(|s| self.queues.get(s))
                .map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: length all-ones means "absent".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK) != 0 {
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    // Split queues need a power-of-two size up to the maximum.
                    match u16::try_from(v) {
                        Ok(n) if n.is_power_of_two() && n <= q.max_size => q.size = n,
                        _ => log::debug!("virtio-mmio: invalid queue size {v}"),
                    }
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.ready = v == 1;
                }
            }
            REG_QUEUE_NOTIFY => {
                let evt = usize::try_from(v).ok().and_then(|i| self.queue_evts.get(i));
                match evt {
                    Some(evt) if self.activated => {
                        if let Err(e) = evt.write(1) {
                            log::error!("virtio-mmio: cannot signal queue {v}: {e}");
                        }
                    }
                    _ => log::debug!("virtio-mmio: notify for queue {v} ignored"),
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            REG_QUEUE_DESC_LOW => self.with_queue(|q| q.desc.0 = v),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| q.desc.1 = v),
            REG_QUEUE_DRIVER_LOW => self.with_queue(|q| q.driver.0 = v),
            REG_QUEUE_DRIVER_HIGH => self.with_queue(|q| q.driver.1 = v),
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| q.device.0 = v),
            REG_QUEUE_DEVICE_HIGH => self.with_queue(|q| q.device.1 = v),
            REG_SHM_SEL => self.shm_sel = v,
            _ => log::debug!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut QueueConfig)) {
        if let Some(q) = self.selected_queue() {
            // Addresses may only change while the queue is not ready.
            if !q.ready {
                f(q);
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            log::debug!(
                "virtio-mmio: bad register read at {offset:#x} size {}",
                data.len()
            );
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            // Config writes are allowed in any state; devices decide what they accept.
            self.device.write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "virtio-mmio: bad register write at {offset:#x} size {}",
                data.len()
            );
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::interrupt::INT_CONFIG;
    use crate::devices::virtio::VirtioError;
    use std::sync::Mutex;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    #[derive(Default)]
    struct Log {
        activations: Vec<(usize, u64)>,
        resets: usize,
        config: Vec<u8>,
    }

    struct Dummy {
        log: Arc<Mutex<Log>>,
        fail: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn device_features(&self) -> u64 {
            1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::devices::virtio::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn write_config(&mut self, _offset: u64, data: &[u8]) {
            self.log.lock().unwrap().config.extend_from_slice(data);
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
            if self.fail {
                return Err(VirtioError::AlreadyActive);
            }
            self.log
                .lock()
                .unwrap()
                .activations
                .push((ctx.queues.len(), ctx.acked_features));
            Ok(())
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().resets += 1;
        }
    }

    fn transport(fail: bool) -> (MmioTransport, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
        let dev = Box::new(Dummy {
            log: log.clone(),
            fail,
        });
        let t = MmioTransport::new(dev, mem, EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        (t, log)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Negotiates VERSION_1 + bit 5 and configures both queues in valid memory.
    fn drive_to_features_ok(t: &mut MmioTransport) {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, 1 << 5);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, 1);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for (q, base) in [(0u32, 0x1000u32), (1, 0x3000)] {
            w(t, REG_QUEUE_SEL, q);
            w(t, REG_QUEUE_NUM, 8);
            w(t, REG_QUEUE_DESC_LOW, base);
            w(t, REG_QUEUE_DRIVER_LOW, base + 0x800);
            w(t, REG_QUEUE_DEVICE_LOW, base + 0x1000);
            w(t, REG_QUEUE_READY, 1);
        }
    }

    const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport(false);
        assert_eq!(r(&mut t, REG_MAGIC), 0x7472_6976);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1 << 5);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0b11);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 8);
        w(&mut t, REG_QUEUE_SEL, 9);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
        assert_eq!(r(&mut t, REG_SHM_LEN_LOW), u32::MAX);
        let mut c = [0u8; 2];
        t.read(CONFIG_SPACE + 3, &mut c);
        assert_eq!(c, [4, 0]);
    }

    #[test]
    fn full_init_activates_with_acked_features() {
        let (mut t, log) = transport(false);
        drive_to_features_ok(&mut t);
        assert_eq!(
            r(&mut t, REG_STATUS) & STATUS_FEATURES_OK,
            STATUS_FEATURES_OK
        );
        w(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(r(&mut t, REG_STATUS), ALL_OK);
        assert_eq!(
            log.lock().unwrap().activations,
            vec![(2, (1 << 32) | (1 << 5))]
        );
        // Queue registers are frozen after DRIVER_OK.
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
        // Notify reaches the queue's eventfd; out-of-range queues are ignored.
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        w(&mut t, REG_QUEUE_NOTIFY, 99);
        assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
        assert!(t.queue_evts()[0].read().is_err());
        // Reset stops the device and clears the state.
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn features_outside_offer_or_without_version_1_refused() {
        let (mut t, _) = transport(false);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES, 1 << 6); // not offered
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        let (mut t, log) = transport(false);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES, 1 << 5); // legacy driver: no VERSION_1
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(log.lock().unwrap().activations.is_empty());
    }

    #[test]
    fn invalid_queue_sets_needs_reset() {
        let (mut t, log) = transport(false);
        drive_to_features_ok(&mut t);
        w(&mut t, REG_QUEUE_SEL, 1);
        w(&mut t, REG_QUEUE_READY, 0);
        w(&mut t, REG_QUEUE_DESC_LOW, 0xffff_f000); // outside RAM
        w(&mut t, REG_QUEUE_DESC_HIGH, 0x10);
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(log.lock().unwrap().activations.is_empty());
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
        assert_eq!(t.interrupt().irq_evt().read().unwrap(), 1);
        w(&mut t, REG_INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn misaligned_rings_set_needs_reset() {
        for (desc, driver, device) in [
            (0x1008, 0x1800, 0x2000),
            (0x1000, 0x1801, 0x2000),
            (0x1000, 0x1800, 0x2002),
        ] {
            let (mut t, log) = transport(false);
            drive_to_features_ok(&mut t);
            w(&mut t, REG_QUEUE_SEL, 0);
            w(&mut t, REG_QUEUE_READY, 0);
            w(&mut t, REG_QUEUE_DESC_LOW, desc);
            w(&mut t, REG_QUEUE_DRIVER_LOW, driver);
            w(&mut t, REG_QUEUE_DEVICE_LOW, device);
            w(&mut t, REG_QUEUE_READY, 1);
            w(&mut t, REG_STATUS, ALL_OK);
            assert!(
                log.lock().unwrap().activations.is_empty(),
                "{desc:#x} {driver:#x} {device:#x}"
            );
            assert_ne!(r(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        }
    }

    #[test]
    fn failed_activation_sets_needs_reset() {
        let (mut t, _) = transport(true);
        drive_to_features_ok(&mut t);
        w(&mut t, REG_STATUS, ALL_OK);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn bad_sizes_and_alignment_ignored() {
        let (mut t, _) = transport(false);
        let mut d = [0xaau8; 2];
        t.read(REG_MAGIC, &mut d);
        assert_eq!(d, [0, 0]);
        let mut d = [0xaau8; 4];
        t.read(REG_MAGIC + 1, &mut d);
        assert_eq!(d, [0; 4]);
        t.write(REG_STATUS, &[1]);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        t.write(REG_STATUS + 2, &[1, 0, 0, 0]);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        w(&mut t, REG_QUEUE_NUM, 3); // not a power of two
        w(&mut t, REG_QUEUE_NUM, 32); // above max
        assert_eq!(t.queues[0].size, 16);
        // Notify before activation is ignored, not a crash.
        w(&mut t, REG_QUEUE_NOTIFY, 0);
        assert!(t.queue_evts()[0].read().is_err());
        // Config writes pass through and bump the generation.
        t.write(CONFIG_SPACE, &[9]);
        assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 1);
    }

    #[test]
    fn status_bits_cannot_be_cleared_without_reset() {
        let (mut t, _) = transport(false);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(r(&mut t, REG_STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED,
        );
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_FAILED, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Arbitrary register traffic (any offset, size and value, reads and writes mixed)
        /// never panics and the status register only ever shows defined bits.
        #[test]
        fn arbitrary_register_traffic_is_safe(
            ops in proptest::collection::vec(
                (proptest::prelude::any::<bool>(), 0u64..0x140, 0usize..9, proptest::prelude::any::<u32>()),
                1..200)
        ) {
            let (mut t, _) = transport(false);
            for (write, offset, len, value) in ops {
                let bytes = value.to_le_bytes();
                let mut buf = [0u8; 8];
                let n = len.min(8);
                if write {
                    buf[..4].copy_from_slice(&bytes);
                    t.write(offset, &buf[..n]);
                } else {
                    t.read(offset, &mut buf[..n]);
                }
                let status = r(&mut t, REG_STATUS);
                proptest::prop_assert_eq!(status & !0xcf, 0);
            }
        }
    }
}
