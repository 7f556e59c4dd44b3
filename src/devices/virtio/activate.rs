//! The activation steps every device shares: refuse a second activation, check that the
//! driver configured exactly the device's queues, and run the device's queue loop on a
//! [`Worker`] thread until reset.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::Interrupt;
use super::worker::Worker;
use super::{ActivateContext, VirtioError};
use crate::vmm::memory::GuestMemory;
use crate::vmm::seccomp::ThreadKind;

/// What a worker of a device with `N` queues gets: an [`ActivateContext`] whose queue count
/// has been checked.
#[derive(Debug)]
pub struct Activation<const N: usize> {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// The queues, in index order.
    pub queues: [Queue; N],
    /// Their notification eventfds, in the same order.
    pub queue_evts: [EventFd; N],
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

impl<const N: usize> TryFrom<ActivateContext> for Activation<N> {
    type Error = VirtioError;

    fn try_from(ctx: ActivateContext) -> Result<Self, VirtioError> {
        let queues = <[Queue; N]>::try_from(ctx.queues).map_err(|_| VirtioError::QueueCount)?;
        let queue_evts =
            <[EventFd; N]>::try_from(ctx.queue_evts).map_err(|_| VirtioError::QueueCount)?;
        Ok(Activation {
            mem: ctx.mem,
            queues,
            queue_evts,
            interrupt: ctx.interrupt,
            acked_features: ctx.acked_features,
        })
    }
}

/// A device's worker between activation and reset; empty while the device is inactive.
#[derive(Debug, Default)]
pub struct DeviceWorker(Option<Worker>);

impl DeviceWorker {
    /// Activates the device: checks the queues (`N` of them) and runs `body` on a thread
    /// named `name`. `body` must return once the kill eventfd is readable; an error or a
    /// panic in it marks the device as needing a reset ([`Worker::spawn`]).
    pub fn activate<const N: usize, F, E>(
        &mut self,
        name: &str,
        kind: ThreadKind,
        ctx: ActivateContext,
        body: F,
    ) -> Result<(), VirtioError>
    where
        F: FnOnce(Activation<N>, &EventFd) -> Result<(), E> + Send + 'static,
        E: std::fmt::Display,
    {
        if self.0.is_some() {
            return Err(VirtioError::AlreadyActive);
        }
        let activation = Activation::<N>::try_from(ctx)?;
        let interrupt = activation.interrupt.clone();
        let worker = Worker::spawn(name, kind, interrupt, move |kill| {
            body(activation, kill).map_err(|e| e.to_string())
        })
        .map_err(VirtioError::Worker)?;
        self.0 = Some(worker);
        Ok(())
    }

    /// Stops the worker, if any, and waits for it (device reset).
    pub fn stop(&mut self) {
        if let Some(mut w) = self.0.take() {
            w.stop();
        }
    }

    /// Whether a worker is running (the device is active).
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::descriptor::tests::mem;
    use crate::devices::virtio::worker::{poll, Interest};
    use std::sync::mpsc;
    use std::time::Duration;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn ctx(queues: usize, evts: usize) -> ActivateContext {
        let m = Arc::new(mem());
        let queues = (0..queues)
            .map(|i| {
                let base = GuestAddress(0x1_0000 * u64::try_from(i).unwrap());
                MockSplitQueue::create(m.as_ref(), base, 16)
                    .create_queue()
                    .unwrap()
            })
            .collect();
        ActivateContext {
            mem: m,
            queues,
            queue_evts: (0..evts)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
            acked_features: 1 << 32,
        }
    }

    /// Waits for the kill eventfd, like a device's queue loop.
    fn wait_for_kill(kill: &EventFd) -> Result<(), String> {
        loop {
            if poll(&[Interest::read(kill)], 1000).map_err(|e| e.to_string())?[0].readable {
                return Ok(());
            }
        }
    }

    #[test]
    fn worker_gets_queues_in_order_and_stops_on_reset() {
        let (tx, rx) = mpsc::channel();
        let mut w = DeviceWorker::default();
        w.activate(
            "t",
            ThreadKind::Block,
            ctx(3, 3),
            move |a: Activation<3>, kill| {
                let descs: Vec<u64> = a.queues.iter().map(|q| q.desc_table()).collect();
                tx.send((descs, a.acked_features)).unwrap();
                wait_for_kill(kill)
            },
        )
        .unwrap();
        assert!(w.is_active());
        let (descs, features) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(descs, vec![0, 0x1_0000, 0x2_0000]);
        assert_eq!(features, 1 << 32);
        assert!(matches!(
            w.activate(
                "t",
                ThreadKind::Block,
                ctx(3, 3),
                |_: Activation<3>, _| Ok::<(), String>(())
            ),
            Err(VirtioError::AlreadyActive)
        ));
        w.stop();
        assert!(!w.is_active());
        // After a reset the device can be activated again.
        w.activate(
            "t",
            ThreadKind::Block,
            ctx(1, 1),
            |_: Activation<1>, kill| wait_for_kill(kill),
        )
        .unwrap();
        w.stop();
    }

    #[test]
    fn wrong_queue_counts_are_refused_without_a_worker() {
        let mut w = DeviceWorker::default();
        for (queues, evts) in [(1, 2), (2, 1), (3, 3), (0, 0)] {
            assert!(matches!(
                w.activate(
                    "t",
                    ThreadKind::Block,
                    ctx(queues, evts),
                    |_: Activation<2>, _| { Ok::<(), String>(()) }
                ),
                Err(VirtioError::QueueCount)
            ));
            assert!(!w.is_active());
        }
    }

    #[test]
    fn a_failing_worker_marks_the_device_for_reset() {
        let c = ctx(1, 1);
        let irq = c.interrupt.clone();
        let mut w = DeviceWorker::default();
        w.activate("t", ThreadKind::Block, c, |_: Activation<1>, _| {
            Err("broken ring")
        })
        .unwrap();
        w.stop();
        assert!(irq.needs_reset());
    }
}
