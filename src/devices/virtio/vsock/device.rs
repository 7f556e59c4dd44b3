//! The virtio-vsock device.

use crate::vmm::seccomp::ThreadKind;
use std::sync::{Arc, Mutex};

use super::event_handler::VsockWorker;
use super::muxer::Muxer;
use super::{GUEST_CID, QUEUE_SIZE};
use crate::devices::virtio::activate::{Activation, DeviceWorker};
use crate::devices::virtio::{
    read_config_bytes, ActivateContext, VirtioDevice, VirtioError, TYPE_VSOCK,
};

/// A vsock device for guest CID 3. The muxer (and with it the port-map listeners) lives as
/// long as the device; a device reset drops open connections but keeps the listeners.
#[derive(Debug)]
pub struct VirtioVsock {
    muxer: Arc<Mutex<Option<Muxer>>>,
    worker: DeviceWorker,
}

impl VirtioVsock {
    /// A device whose host side is `muxer`.
    pub fn new(muxer: Muxer) -> Self {
        VirtioVsock {
            muxer: Arc::new(Mutex::new(Some(muxer))),
            worker: DeviceWorker::default(),
        }
    }
}

impl VirtioDevice for VirtioVsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&GUEST_CID.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("virtio-vsock: ignoring config write at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let slot = self.muxer.clone();
        self.worker.activate(
            "virtio-vsock",
            ThreadKind::Vsock,
            ctx,
            move |a: Activation<3>, kill| {
                let [rx, tx, _event_queue] = a.queues;
                let [rx_evt, tx_evt, ev_evt] = a.queue_evts;
                // Only this worker uses the muxer while the device is active.
                let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
                let Some(muxer) = guard.as_mut() else {
                    return Err("vsock muxer is missing".to_owned());
                };
                // Connections from before a device reset are gone on the guest side.
                muxer.drop_connections();
                let worker = VsockWorker {
                    mem: a.mem.as_ref(),
                    rx,
                    tx,
                    rx_evt,
                    tx_evt,
                    ev_evt,
                    muxer,
                    interrupt: &a.interrupt,
                };
                worker.run(kill).map_err(|e| e.to_string())
            },
        )
    }

    fn reset(&mut self) {
        self.worker.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::descriptor::tests::{mem, raw, F_WRITE};
    use crate::devices::virtio::interrupt::Interrupt;
    use crate::devices::virtio::vsock::backend::HostServices;
    use crate::devices::virtio::vsock::packet::{PacketHeader, HEADER_LEN};
    use crate::devices::virtio::vsock::{HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM};
    use std::time::{Duration, Instant};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// The worker on real rings: a guest REQUEST to a port without a service comes back as
    /// RST in a receive buffer, and the config space holds CID 3.
    #[test]
    fn worker_answers_requests_through_the_rings() {
        let m: Arc<GuestMemoryMmap<()>> = Arc::new(mem());
        let rxq = MockSplitQueue::create(m.as_ref(), GuestAddress(0), 16);
        let txq = MockSplitQueue::create(m.as_ref(), GuestAddress(0x8000), 16);
        let evq = MockSplitQueue::create(m.as_ref(), GuestAddress(0x1_0000), 16);
        let req = PacketHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: 4444,
            dst_port: 7777,
            type_: TYPE_STREAM,
            op: OP_REQUEST,
            buf_alloc: 4096,
            ..Default::default()
        };
        m.write_slice(&req.to_bytes(), GuestAddress(0x30_0000))
            .unwrap();
        rxq.build_desc_chain(&[raw(0x40_0000, 4096, F_WRITE, 0)])
            .unwrap();
        let mut dev = VirtioVsock::new(Muxer::new(HostServices::new(), &[]).unwrap());
        let mut cid = [0u8; 8];
        dev.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 3);
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let tx_evt = evts[1].try_clone().unwrap();
        dev.activate(ActivateContext {
            mem: m.clone(),
            queues: vec![
                rxq.create_queue().unwrap(),
                txq.create_queue().unwrap(),
                evq.create_queue().unwrap(),
            ],
            queue_evts: evts,
            interrupt: irq.clone(),
            acked_features: 0,
        })
        .unwrap();
        txq.build_desc_chain(&[raw(0x30_0000, 44, 0, 0)]).unwrap();
        tx_evt.write(1).unwrap();
        let start = Instant::now();
        while rxq.used().idx().load() == 0 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(rxq.used().idx().load(), 1);
        let used = rxq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), u32::try_from(HEADER_LEN).unwrap());
        let mut b = [0u8; HEADER_LEN];
        m.read_slice(&mut b, GuestAddress(0x40_0000)).unwrap();
        let h = PacketHeader::from_bytes(&b);
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (OP_RST, 7777, 4444, 3)
        );
        assert_eq!(txq.used().idx().load(), 1);
        dev.reset();
        assert!(!irq.needs_reset());
    }
}
