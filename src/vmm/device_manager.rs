//! Attaching virtio devices: one virtio-mmio slot each, at fixed addresses with fixed IRQs,
//! in a fixed order so guest device names are stable (root disk `/dev/vda`, data disk
//! `/dev/vdb`, then console, vsock and the network slot, which holds a virtio-net device or a
//! placeholder).

use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::layout::{
    virtio_mmio_slot, VIRTIO_IRQ_BASE, VIRTIO_MMIO_MAX_SLOTS, VIRTIO_MMIO_SLOT_SIZE,
};
use crate::devices::virtio::placeholder::PlaceholderSlot;
use crate::devices::virtio::transport::mmio::{MmioError, MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::VirtioDevice;
use crate::vmm::bus::{BusError, MmioBus};
use crate::vmm::memory::GuestMemory;
use crate::vmm::vstate::vm::{Vm, VmError};

/// Errors while attaching devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// All virtio-mmio slots are in use.
    #[error("no free virtio-mmio slot")]
    NoSlot,
    /// Creating the interrupt eventfd failed.
    #[error("cannot create a device interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    /// Registering the irqfd failed.
    #[error("cannot connect a device interrupt")]
    Irq(#[source] VmError),
    /// Creating the transport failed.
    #[error("cannot create a virtio-mmio transport")]
    Transport(#[source] MmioError),
    /// Placing the device on the bus failed.
    #[error("cannot place a device on the MMIO bus")]
    Bus(#[source] BusError),
}

/// Devices attached so far.
#[derive(Debug, Default)]
pub struct DeviceManager {
    bus: MmioBus,
    cmdline_entries: Vec<String>,
    slots_used: u32,
}

impl DeviceManager {
    /// No devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `device` at the next slot; returns `(mmio base, irq)`.
    pub fn attach(
        &mut self,
        vm: &Vm,
        mem: &Arc<GuestMemory>,
        device: Box<dyn VirtioDevice>,
    ) -> Result<(u64, u32), DeviceManagerError> {
        if self.slots_used >= VIRTIO_MMIO_MAX_SLOTS {
            return Err(DeviceManagerError::NoSlot);
        }
        let slot = self.slots_used;
        let base = virtio_mmio_slot(slot);
        let irq = VIRTIO_IRQ_BASE + slot;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&irq_evt, irq)
            .map_err(DeviceManagerError::Irq)?;
        let transport = MmioTransport::new(device, mem.clone(), irq_evt)
            .map_err(DeviceManagerError::Transport)?;
        // Queue notifications go straight to the worker's eventfd without a userspace exit
        // when KVM supports ioeventfd; otherwise the transport signals the same eventfd.
        for (index, evt) in transport.queue_evts().iter().enumerate() {
            let Ok(index) = u32::try_from(index) else {
                break;
            };
            let addr = IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY);
            if let Err(e) = vm.fd().register_ioevent(evt, &addr, index) {
                log::debug!("no ioeventfd for {base:#x} queue {index}: {e}");
            }
        }
        self.bus
            .insert(base, VIRTIO_MMIO_SLOT_SIZE, Arc::new(Mutex::new(transport)))
            .map_err(DeviceManagerError::Bus)?;
        self.cmdline_entries.push(cmdline_entry(base, irq));
        self.slots_used += 1;
        Ok((base, irq))
    }

    /// Fills the next slot with a [`PlaceholderSlot`] (DeviceID 0, no interrupt) and still
    /// announces it on the command line, so the slot list does not depend on whether the
    /// device exists; returns the slot's mmio base.
    pub fn attach_placeholder(&mut self) -> Result<u64, DeviceManagerError> {
        if self.slots_used >= VIRTIO_MMIO_MAX_SLOTS {
            return Err(DeviceManagerError::NoSlot);
        }
        let slot = self.slots_used;
        let base = virtio_mmio_slot(slot);
        self.bus
            .insert(
                base,
                VIRTIO_MMIO_SLOT_SIZE,
                Arc::new(Mutex::new(PlaceholderSlot)),
            )
            .map_err(DeviceManagerError::Bus)?;
        self.cmdline_entries
            .push(cmdline_entry(base, VIRTIO_IRQ_BASE + slot));
        self.slots_used += 1;
        Ok(base)
    }

    /// The `virtio_mmio.device=` kernel parameters for the attached devices, in slot order.
    pub fn cmdline_entries(&self) -> &[String] {
        &self.cmdline_entries
    }

    /// Hands over the bus.
    pub fn into_bus(self) -> MmioBus {
        self.bus
    }
}

/// The kernel parameter announcing a virtio-mmio device (`VIRTIO_MMIO_CMDLINE_DEVICES`).
pub fn cmdline_entry(base: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{base:#x}:{irq}",
        VIRTIO_MMIO_SLOT_SIZE >> 10
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_entry_format() {
        assert_eq!(
            cmdline_entry(0xd000_1000, 6),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
    }

    #[test]
    fn placeholder_takes_a_slot_and_a_cmdline_entry() {
        let mut m = DeviceManager::new();
        assert_eq!(m.attach_placeholder().unwrap(), virtio_mmio_slot(0));
        assert_eq!(m.attach_placeholder().unwrap(), virtio_mmio_slot(1));
        assert_eq!(
            m.cmdline_entries(),
            &[
                cmdline_entry(virtio_mmio_slot(0), VIRTIO_IRQ_BASE),
                cmdline_entry(virtio_mmio_slot(1), VIRTIO_IRQ_BASE + 1)
            ]
        );
        let bus = m.into_bus();
        let mut b = [0u8; 4];
        bus.read(virtio_mmio_slot(1), &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x7472_6976);
        bus.read(virtio_mmio_slot(1) + 8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
    }
}
