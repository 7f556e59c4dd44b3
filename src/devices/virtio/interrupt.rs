//! A device's interrupt: the virtio-mmio `InterruptStatus` bits and the irqfd that raises the
//! guest IRQ line.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// `InterruptStatus` bit: a used buffer was added to a queue.
pub const INT_USED_RING: u32 = 1;
/// `InterruptStatus` bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// A device interrupt. The eventfd is registered with KVM as an irqfd for the device's GSI.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irq: EventFd,
}

impl Interrupt {
    /// An interrupt raised through `irq`.
    pub fn new(irq: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq,
        }
    }

    /// The irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            log::error!("cannot raise a virtio interrupt: {e}");
        }
    }

    /// Tells the driver that used buffers are available.
    pub fn signal_used(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the driver that the configuration changed.
    pub fn signal_config(&self) {
        self.raise(INT_CONFIG);
    }

    /// Marks the device broken (`DEVICE_NEEDS_RESET`) and raises a configuration interrupt
    /// (virtio 1.2, 2.1.2).
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config();
    }

    /// Whether the device needs a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged `bits` (`InterruptACK`).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears everything (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn status_bits_and_eventfd() {
        let i = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        i.signal_used();
        assert_eq!(i.status(), INT_USED_RING);
        assert_eq!(i.irq_evt().read().unwrap(), 1);
        i.set_needs_reset();
        assert!(i.needs_reset());
        assert_eq!(i.status(), INT_USED_RING | INT_CONFIG);
        i.ack(INT_USED_RING);
        assert_eq!(i.status(), INT_CONFIG);
        i.reset();
        assert_eq!((i.status(), i.needs_reset()), (0, false));
    }
}
