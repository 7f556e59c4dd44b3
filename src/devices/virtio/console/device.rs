//! The virtio-console device.

use crate::vmm::seccomp::ThreadKind;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::event_handler::ConsoleWorker;
use super::{QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::activate::{Activation, DeviceWorker};
use crate::devices::virtio::{
    read_config_bytes, ActivateContext, VirtioDevice, VirtioError, TYPE_CONSOLE,
};

/// A single-port console reading `input` and writing `output`.
#[derive(Debug)]
pub struct VirtioConsole {
    input: Option<Arc<File>>,
    output: Arc<File>,
    worker: DeviceWorker,
}

impl VirtioConsole {
    /// A console over the given fds (`input = None`: the guest gets no input).
    pub fn new(input: Option<OwnedFd>, output: OwnedFd) -> Self {
        VirtioConsole {
            input: input.map(|fd| Arc::new(File::from(fd))),
            output: Arc::new(File::from(output)),
            worker: DeviceWorker::default(),
        }
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: all zero (no size, no multiport).
        read_config_bytes(&[0u8; 12], offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("virtio-console: ignoring config write at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        debug_assert_eq!((RX_QUEUE, TX_QUEUE), (0, 1));
        let input = self.input.clone();
        let output = self.output.clone();
        self.worker.activate(
            "virtio-console",
            ThreadKind::Console,
            ctx,
            move |a: Activation<2>, kill| {
                let [rx, tx] = a.queues;
                let [rx_evt, tx_evt] = a.queue_evts;
                ConsoleWorker {
                    mem: a.mem.as_ref(),
                    rx,
                    tx,
                    rx_evt,
                    tx_evt,
                    input: input.as_deref(),
                    output: &output,
                    interrupt: &a.interrupt,
                }
                .run(kill)
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
    use crate::devices::virtio::console::event_handler::{process_rx, InputState};
    use crate::devices::virtio::descriptor::tests::{mem, raw, F_WRITE};
    use crate::devices::virtio::interrupt::Interrupt;
    use crate::vmm::memory::tests::tempfile_lite::TempPath;
    use std::io::Write;
    use std::time::{Duration, Instant};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn pipe() -> (File, File) {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: both fds were just created and are owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    fn wait_until(mut f: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn rx_splits_input_over_buffers_and_reports_eof() {
        let m = mem();
        let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let mut q: Queue = vq.create_queue().unwrap();
        let irq = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut input: &[u8] = b"hello";
        assert_eq!(
            process_rx(&m, &mut q, &mut input, &irq).unwrap(),
            InputState::NeedBuffers
        );
        vq.build_desc_chain(&[raw(0x10_0000, 2, F_WRITE, 0), raw(0x20_0000, 8, F_WRITE, 0)])
            .unwrap();
        assert_eq!(
            process_rx(&m, &mut q, &mut input, &irq).unwrap(),
            InputState::Ok
        );
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), 5);
        let mut a = [0u8; 2];
        let mut b = [0u8; 3];
        m.read_slice(&mut a, GuestAddress(0x10_0000)).unwrap();
        m.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert_eq!((&a, &b), (b"he", b"llo"));
        // EOF leaves the next buffer available for later.
        vq.build_desc_chain(&[raw(0x10_0000, 8, F_WRITE, 0)])
            .unwrap();
        assert_eq!(
            process_rx(&m, &mut q, &mut input, &irq).unwrap(),
            InputState::Closed
        );
        assert_eq!(vq.used().idx().load(), 1);
        // A read-only receive buffer is completed empty, not written.
        let mut more: &[u8] = b"x";
        vq.build_desc_chain(&[raw(0x10_0000, 8, 0, 0)]).unwrap();
        let _ = process_rx(&m, &mut q, &mut more, &irq).unwrap();
        assert_eq!(more, b"x");
    }

    /// The device end to end on its worker thread: pending output is written, input arrives
    /// in the guest, input EOF does not stop the worker, and stop joins it.
    #[test]
    fn worker_moves_bytes_both_ways() {
        let m: Arc<GuestMemoryMmap<()>> = Arc::new(mem());
        let rxq = MockSplitQueue::create(m.as_ref(), GuestAddress(0), 16);
        let txq = MockSplitQueue::create(m.as_ref(), GuestAddress(0x8000), 16);
        m.write_slice(b"guest says hi\n", GuestAddress(0x30_0000))
            .unwrap();
        txq.build_desc_chain(&[raw(0x30_0000, 14, 0, 0)]).unwrap();
        rxq.build_desc_chain(&[raw(0x40_0000, 64, F_WRITE, 0)])
            .unwrap();

        let out_path = TempPath::new();
        let out = File::create(&out_path.0).unwrap();
        let (in_read, mut in_write) = pipe();
        let mut dev = VirtioConsole::new(Some(in_read.into()), out.into());
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        dev.activate(ActivateContext {
            mem: m.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            queue_evts: vec![
                EventFd::new(EFD_NONBLOCK).unwrap(),
                EventFd::new(EFD_NONBLOCK).unwrap(),
            ],
            interrupt: irq.clone(),
            acked_features: 0,
        })
        .unwrap();
        assert!(wait_until(
            || std::fs::read(&out_path.0).unwrap() == b"guest says hi\n"
        ));
        in_write.write_all(b"typed").unwrap();
        assert!(wait_until(|| rxq.used().idx().load() == 1));
        let mut got = [0u8; 5];
        m.read_slice(&mut got, GuestAddress(0x40_0000)).unwrap();
        assert_eq!(&got, b"typed");
        drop(in_write);
        std::thread::sleep(Duration::from_millis(50));
        dev.reset();
        assert!(!irq.needs_reset());
    }

    /// Input typed before the guest ever wrote to the console waits: Linux discards receive
    /// data until its console port is connected.
    #[test]
    fn input_waits_for_the_guest_to_write_first() {
        let m: Arc<GuestMemoryMmap<()>> = Arc::new(mem());
        let rxq = MockSplitQueue::create(m.as_ref(), GuestAddress(0), 16);
        let txq = MockSplitQueue::create(m.as_ref(), GuestAddress(0x8000), 16);
        rxq.build_desc_chain(&[raw(0x40_0000, 64, F_WRITE, 0)])
            .unwrap();
        let out_path = TempPath::new();
        let out = File::create(&out_path.0).unwrap();
        let (in_read, mut in_write) = pipe();
        in_write.write_all(b"early").unwrap();
        let mut dev = VirtioConsole::new(Some(in_read.into()), out.into());
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let tx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let tx_kick = tx_evt.try_clone().unwrap();
        dev.activate(ActivateContext {
            mem: m.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            queue_evts: vec![EventFd::new(EFD_NONBLOCK).unwrap(), tx_evt],
            interrupt: irq.clone(),
            acked_features: 0,
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            rxq.used().idx().load(),
            0,
            "input delivered before the guest spoke"
        );
        m.write_slice(b"ready\n", GuestAddress(0x30_0000)).unwrap();
        txq.build_desc_chain(&[raw(0x30_0000, 6, 0, 0)]).unwrap();
        tx_kick.write(1).unwrap();
        assert!(wait_until(|| rxq.used().idx().load() == 1));
        let mut got = [0u8; 5];
        m.read_slice(&mut got, GuestAddress(0x40_0000)).unwrap();
        assert_eq!(&got, b"early");
        dev.reset();
    }
}
