//! The virtio-net device, its configuration space and the queue processing.
//!
//! Every guest chain is checked with [`check_chain`] before use (bounds, loops, memory
//! ranges). A transmit chain must be device-readable only and hold a 12-byte header plus a
//! frame of [`MIN_FRAME_LEN`]`..=`[`MAX_FRAME_LEN`] bytes; a receive chain must be
//! device-writable only. A bad chain is completed with length 0 and logged (rate-limited); it
//! never stops the device. Only a broken ring (for example an available index beyond the
//! queue size) is an error, and that puts the device into `DEVICE_NEEDS_RESET`.

use crate::vmm::seccomp::ThreadKind;
use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use super::backend::{Fill, Flush, StreamBackend, TX_BATCH_LEN};
use super::{
    NetError, RateLimitedLog, DEVICE_MTU, MAX_FRAME_LEN, MIN_FRAME_LEN, NET_HDR_LEN,
    OPTIONAL_FEATURES, QUEUE_SIZE, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use crate::devices::virtio::activate::{Activation, DeviceWorker};
use crate::devices::virtio::descriptor::{
    check_chain, gather, scatter_at, total_len, CheckedDescriptor,
};
use crate::devices::virtio::interrupt::Interrupt;
use crate::devices::virtio::{
    read_config_bytes, ActivateContext, VirtioDevice, VirtioError, TYPE_NET,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Ring features: both queue loops re-arm notifications whenever they wait for the guest
/// (transmit after each drain, receive when it runs out of buffers), which event indexes need;
/// indirect tables let a 64 KiB frame of many fragments take one ring slot.
const RING_FEATURES: u64 = (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);
/// Mergeable receive buffers: the guest posts small buffers and a frame spans as many as it
/// needs, instead of one 64 KiB buffer per frame (an ACK included) at passt's MTU.
const RX_FEATURES: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

/// The receive header: `struct virtio_net_hdr_v1` with no offload and `num_buffers` = 1
/// (virtio 1.2, 5.1.6.4: one buffer per packet without `VIRTIO_NET_F_MRG_RXBUF`).
const RX_HEADER: [u8; NET_HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// What happened to one receive chain.
enum Delivery {
    /// The frame was written; the used length.
    Delivered(u32),
    /// The chain is unusable (bad descriptors, device-readable buffers): returned empty,
    /// the frame waits for the next chain.
    BadChain,
    /// The chain is fine but smaller than the frame: the frame is dropped, the chain reused.
    TooSmall,
}

/// The device's data path: the framed socket and the queue processing, independent of the
/// worker thread (the fuzz target and the tests drive it directly).
#[derive(Debug)]
pub struct NetEngine {
    backend: StreamBackend,
    /// `VIRTIO_NET_F_MRG_RXBUF` was negotiated: a frame may span several receive chains.
    mergeable: bool,
    /// With mergeable buffers, the chains taken for the frame at the head of the socket
    /// buffer while the guest had too few: they wait there (never put back, so event
    /// indexes stay right) until enough arrive.
    rx_held: VecDeque<HeldChain>,
    rx_stalled: bool,
    link_reported: bool,
    bad_tx: RateLimitedLog,
    bad_rx: RateLimitedLog,
}

impl NetEngine {
    /// An engine over `backend`.
    pub fn new(backend: StreamBackend) -> Self {
        NetEngine {
            backend,
            mergeable: false,
            rx_held: VecDeque::new(),
            rx_stalled: false,
            link_reported: true,
            bad_tx: RateLimitedLog::new(Duration::from_secs(5), module_path!()),
            bad_rx: RateLimitedLog::new(Duration::from_secs(5), module_path!()),
        }
    }

    /// Starts receiving on a newly activated queue: whether frames may span several chains
    /// (`VIRTIO_NET_F_MRG_RXBUF` negotiated); chains held from before a reset are forgotten.
    pub fn start_rx(&mut self, mergeable: bool) {
        self.mergeable = mergeable;
        self.rx_held.clear();
        self.rx_stalled = false;
    }

    /// The socket side.
    pub fn backend(&self) -> &StreamBackend {
        &self.backend
    }

    /// Whether the worker should wait for the socket to be readable: the link is up and the
    /// guest had a receive buffer the last time a frame was waiting.
    pub fn wants_read(&self) -> bool {
        self.backend.link_up() && !self.rx_stalled
    }

    /// Whether transmit bytes wait for the socket to be writable.
    pub fn wants_write(&self) -> bool {
        self.backend.link_up() && self.backend.tx_pending()
    }

    /// Tells the guest (configuration interrupt) when the link went down.
    pub fn check_link(&mut self, interrupt: &Interrupt) {
        let up = self.backend.link_up();
        if self.link_reported && !up {
            interrupt.signal_config();
        }
        self.link_reported = up;
    }

    fn take_tx_frame<M: GuestMemory>(&mut self, mem: &M, chain: DescriptorChain<&M>, max: usize) {
        let descs = match check_chain(chain, max) {
            Ok(d) => d,
            Err(e) => {
                self.bad_tx
                    .warn(format_args!("virtio-net: rejected transmit chain: {e}"));
                return;
            }
        };
        if descs.iter().any(|d| d.write_only) {
            self.bad_tx.warn(format_args!(
                "virtio-net: rejected transmit chain: it has a device-writable buffer"
            ));
            return;
        }
        let total = total_len(&descs).map_or(usize::MAX, |t| t as usize);
        let frame_len = total.saturating_sub(NET_HDR_LEN);
        if total < NET_HDR_LEN || !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame_len) {
            self.bad_tx.warn(format_args!(
                "virtio-net: dropping a transmit chain of {total} bytes (a {NET_HDR_LEN}-byte header and a frame of {MIN_FRAME_LEN}..={MAX_FRAME_LEN} bytes)"
            ));
            return;
        }
        let pushed = self.backend.push_frame(frame_len, |buf| {
            match gather(mem, &descs, NET_HDR_LEN, buf) {
                Ok(n) if n == frame_len => Ok(()),
                Ok(_) => Err("the chain is shorter than its lengths".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        });
        if let Err(e) = pushed {
            self.bad_tx.warn(format_args!(
                "virtio-net: cannot read a transmit frame: {e}"
            ));
        }
    }

    /// Moves every available transmit chain to the socket. Stops taking chains while the
    /// socket would block (the worker calls again once it is writable). Errors mean the
    /// queue's rings are broken.
    pub fn process_tx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        interrupt: &Interrupt,
    ) -> Result<(), NetError> {
        let max = usize::from(queue.size());
        let mut used_any = false;
        loop {
            if self.backend.flush() == Flush::Blocked {
                break;
            }
            queue.disable_notification(mem).map_err(NetError::Queue)?;
            let mut blocked = false;
            loop {
                let chain = queue.iter(mem).map_err(NetError::Queue)?.next();
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                self.take_tx_frame(mem, chain, max);
                queue.add_used(mem, head, 0).map_err(NetError::Queue)?;
                used_any = true;
                if self.backend.tx_queued() >= TX_BATCH_LEN
                    && self.backend.flush() == Flush::Blocked
                {
                    blocked = true;
                    break;
                }
            }
            if blocked || self.backend.flush() == Flush::Blocked {
                // Notifications stay off: the worker resumes on writability.
                break;
            }
            if !queue.enable_notification(mem).map_err(NetError::Queue)? {
                break;
            }
        }
        if used_any && queue.needs_notification(mem).map_err(NetError::Queue)? {
            interrupt.signal_used();
        }
        Ok(())
    }

    /// Reads the socket and fills receive chains with whole frames until the socket has
    /// nothing more or the guest has no buffer left (then the socket is not read until the
    /// guest adds buffers). Errors mean the queue's rings are broken.
    pub fn process_rx<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        interrupt: &Interrupt,
    ) -> Result<(), NetError> {
        let max = usize::from(queue.size());
        let mut used_any = false;
        self.rx_stalled = false;
        'outer: loop {
            while let Some(frame) = self.backend.next_frame() {
                if self.mergeable {
                    let bytes = self.backend.rx_bytes(frame.clone());
                    let (placed, used) =
                        place_merged(&mut self.rx_held, &mut self.bad_rx, mem, queue, max, bytes)?;
                    used_any |= used;
                    match placed {
                        Placed::Delivered | Placed::Dropped => self.backend.consume(&frame),
                        Placed::NoBuffers => {
                            if queue.enable_notification(mem).map_err(NetError::Queue)? {
                                continue;
                            }
                            self.rx_stalled = true;
                            break 'outer;
                        }
                    }
                    continue;
                }
                let chain = queue.iter(mem).map_err(NetError::Queue)?.next();
                let Some(chain) = chain else {
                    if queue.enable_notification(mem).map_err(NetError::Queue)? {
                        continue;
                    }
                    self.rx_stalled = true;
                    break 'outer;
                };
                let head = chain.head_index();
                let bytes = self.backend.rx_bytes(frame.clone());
                match deliver(&mut self.bad_rx, mem, chain, max, bytes) {
                    Delivery::Delivered(len) => {
                        self.backend.consume(&frame);
                        queue.add_used(mem, head, len).map_err(NetError::Queue)?;
                        used_any = true;
                    }
                    Delivery::BadChain => {
                        queue.add_used(mem, head, 0).map_err(NetError::Queue)?;
                        used_any = true;
                    }
                    Delivery::TooSmall => {
                        self.backend.consume(&frame);
                        queue.go_to_previous_position();
                    }
                }
            }
            match self.backend.fill() {
                Fill::Read(_) => {}
                Fill::WouldBlock | Fill::Down => break,
            }
        }
        if used_any && queue.needs_notification(mem).map_err(NetError::Queue)? {
            interrupt.signal_used();
        }
        Ok(())
    }
}

/// Writes `frame` with its header into a receive chain.
fn deliver<M: GuestMemory>(
    bad_rx: &mut RateLimitedLog,
    mem: &M,
    chain: DescriptorChain<&M>,
    max: usize,
    frame: &[u8],
) -> Delivery {
    let descs = match check_chain(chain, max) {
        Ok(d) => d,
        Err(e) => {
            bad_rx.warn(format_args!("virtio-net: rejected receive chain: {e}"));
            return Delivery::BadChain;
        }
    };
    if descs.iter().any(|d| !d.write_only) {
        bad_rx.warn(format_args!(
            "virtio-net: rejected receive chain: it has a device-readable buffer"
        ));
        return Delivery::BadChain;
    }
    let room = total_len(&descs).map_or(usize::MAX, |t| t as usize);
    let needed = NET_HDR_LEN + frame.len();
    if room < needed {
        bad_rx.warn(format_args!(
            "virtio-net: dropping a {}-byte frame: the guest's receive buffer has {room} bytes",
            frame.len()
        ));
        return Delivery::TooSmall;
    }
    let written = scatter_at(mem, &descs, 0, &RX_HEADER)
        .and_then(|h| scatter_at(mem, &descs, NET_HDR_LEN, frame).map(|f| h + f));
    match written {
        Ok(n) if n == needed => Delivery::Delivered(u32::try_from(n).unwrap_or(0)),
        Ok(_) => Delivery::BadChain,
        Err(e) => {
            bad_rx.warn(format_args!(
                "virtio-net: cannot write a received frame: {e}"
            ));
            Delivery::BadChain
        }
    }
}

/// What [`place_merged`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
enum Placed {
    /// Written over one or more chains, all returned to the guest.
    Delivered,
    /// The guest has too few buffers for it now: the chains taken so far are held for it.
    NoBuffers,
    /// It cannot fit even in a full queue of the guest's buffers (or guest memory refused
    /// the bytes): dropped.
    Dropped,
}

/// A receive chain taken from the queue and not yet returned: its head, its checked buffers
/// and their room.
#[derive(Debug)]
struct HeldChain {
    head: u16,
    descs: Vec<CheckedDescriptor>,
    room: usize,
}

/// Places `frame` with `VIRTIO_NET_F_MRG_RXBUF` (virtio 1.2, 5.1.6.4.2): the header and
/// the frame fill as many chains as needed, the header's `num_buffers` says how many,
/// and the chains are returned in order, each with the bytes written to it. Chains are
/// taken into `held` until they hold the frame; unused ones stay for the next
/// frame. A bad chain (bad descriptors, a device-readable buffer, no room) is returned
/// empty together with the chains held, and the frame starts over with the next chains; a
/// chain that would come first but cannot hold the header (the spec forbids such
/// buffers) is returned empty too. The guest drops empty buffers. Also returns whether
/// anything was returned to the guest.
fn place_merged<M: GuestMemory>(
    held: &mut VecDeque<HeldChain>,
    bad_rx: &mut RateLimitedLog,
    mem: &M,
    queue: &mut Queue,
    max: usize,
    frame: &[u8],
) -> Result<(Placed, bool), NetError> {
    let needed = NET_HDR_LEN + frame.len();
    let mut used_any = false;
    // The room of the chains held, kept as they come and go.
    let mut room: usize = held.iter().map(|c| c.room).sum();
    loop {
        while let Some(first) = held.front() {
            if first.room >= NET_HDR_LEN {
                break;
            }
            bad_rx.warn(format_args!(
                "virtio-net: rejected receive chain: its {} bytes cannot hold the header",
                first.room
            ));
            queue
                .add_used(mem, first.head, 0)
                .map_err(NetError::Queue)?;
            room -= first.room;
            held.pop_front();
            used_any = true;
        }
        if room >= needed {
            break;
        }
        if held.len() >= max {
            bad_rx.warn(format_args!(
                "virtio-net: dropping a {}-byte frame: a full queue of the guest's receive buffers is too small",
                frame.len()
            ));
            return Ok((Placed::Dropped, used_any));
        }
        let Some(chain) = queue.iter(mem).map_err(NetError::Queue)?.next() else {
            return Ok((Placed::NoBuffers, used_any));
        };
        let head = chain.head_index();
        let checked = match check_chain(chain, max) {
            Ok(d) if d.iter().any(|d| !d.write_only) => {
                Err("it has a device-readable buffer".to_owned())
            }
            Ok(d) => match total_len(&d).map_or(usize::MAX, |t| t as usize) {
                0 => Err("it has no room".to_owned()),
                room => Ok(HeldChain {
                    head,
                    descs: d,
                    room,
                }),
            },
            Err(e) => Err(e.to_string()),
        };
        match checked {
            Ok(c) => {
                room += c.room;
                held.push_back(c);
            }
            Err(why) => {
                bad_rx.warn(format_args!("virtio-net: rejected receive chain: {why}"));
                for c in held.drain(..) {
                    queue.add_used(mem, c.head, 0).map_err(NetError::Queue)?;
                }
                queue.add_used(mem, head, 0).map_err(NetError::Queue)?;
                room = 0;
                used_any = true;
            }
        }
    }
    // The chains the frame needs, in order; the header goes first, with their count.
    let mut count = 0;
    let mut filled = 0;
    while filled < needed {
        filled += held[count].room;
        count += 1;
    }
    let mut header = RX_HEADER;
    header[10..12].copy_from_slice(&u16::try_from(count).unwrap_or(u16::MAX).to_le_bytes());
    let mut data = frame;
    let mut ok = true;
    let mut lens = Vec::with_capacity(count);
    for (i, c) in held.iter().take(count).enumerate() {
        let skip = if i == 0 { NET_HDR_LEN } else { 0 };
        let take = data.len().min(c.room - skip);
        let wrote = if i == 0 {
            scatter_at(mem, &c.descs, 0, &header)
                .and_then(|h| scatter_at(mem, &c.descs, skip, &data[..take]).map(|f| h + f))
        } else {
            scatter_at(mem, &c.descs, 0, &data[..take])
        };
        match wrote {
            Ok(n) if n == skip + take => lens.push(n),
            Ok(_) | Err(_) => {
                ok = false;
                break;
            }
        }
        data = &data[take..];
    }
    if !ok {
        // Checked buffers take their bytes; if guest memory did not, the frame is lost
        // and its chains go back empty, as a bad chain's would.
        bad_rx.warn(format_args!("virtio-net: cannot write a received frame"));
        lens.clear();
    }
    for (i, c) in held.drain(..count).enumerate() {
        let len = lens.get(i).copied().unwrap_or(0);
        queue
            .add_used(mem, c.head, u32::try_from(len).unwrap_or(0))
            .map_err(NetError::Queue)?;
    }
    let placed = if ok {
        Placed::Delivered
    } else {
        Placed::Dropped
    };
    Ok((placed, true))
}

/// A virtio-net device whose frames go to a unix stream socket.
#[derive(Debug)]
pub struct VirtioNet {
    engine: Arc<Mutex<NetEngine>>,
    link: Arc<AtomicBool>,
    mac: [u8; 6],
    features: u64,
    worker: DeviceWorker,
}

impl VirtioNet {
    /// A device with MAC `mac` over the connected socket `sock`. `requested_features` are
    /// virtio-net feature bits the caller asks for; only those in [`OPTIONAL_FEATURES`] are
    /// offered (MAC, MTU and STATUS always are).
    pub fn new(sock: UnixStream, mac: [u8; 6], requested_features: u64) -> Result<Self, NetError> {
        let backend = StreamBackend::new(sock).map_err(NetError::Socket)?;
        let link = backend.link_flag();
        Ok(VirtioNet {
            engine: Arc::new(Mutex::new(NetEngine::new(backend))),
            link,
            mac,
            features: (1 << VIRTIO_NET_F_MAC)
                | (1 << VIRTIO_NET_F_MTU)
                | (1 << VIRTIO_NET_F_STATUS)
                | RING_FEATURES
                | RX_FEATURES
                | (requested_features & OPTIONAL_FEATURES),
            worker: DeviceWorker::default(),
        })
    }

    /// `struct virtio_net_config` up to `mtu`: mac, status, max_virtqueue_pairs, mtu.
    fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac);
        let status = if self.link.load(Ordering::SeqCst) {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&DEVICE_MTU.to_le_bytes());
        c
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        log::debug!("virtio-net: ignoring config write at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let engine = self.engine.clone();
        let mergeable = ctx.acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        self.worker.activate(
            "virtio-net",
            ThreadKind::Net,
            ctx,
            move |a: Activation<2>, kill| {
                let [rx, tx] = a.queues;
                let [rx_evt, tx_evt] = a.queue_evts;
                // Held for the worker's life; a reset stops the worker and releases it.
                let mut engine = engine.lock().unwrap_or_else(PoisonError::into_inner);
                engine.start_rx(mergeable);
                super::event_handler::run(
                    &a.mem,
                    super::event_handler::Queues {
                        rx,
                        tx,
                        rx_evt,
                        tx_evt,
                    },
                    kill,
                    &mut engine,
                    &a.interrupt,
                )
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
    use crate::devices::virtio::descriptor::tests::{mem, raw, F_INDIRECT, F_NEXT, F_WRITE};
    use crate::devices::virtio::interrupt::INT_CONFIG;
    use std::io::{Read, Write};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    type Mem = GuestMemoryMmap<()>;
    const RX_USED: u64 = 0x4000;
    const TX_USED: u64 = 0xc000;

    struct Rig<'a> {
        m: &'a Mem,
        rxq: MockSplitQueue<'a, Mem>,
        txq: MockSplitQueue<'a, Mem>,
        rx: Queue,
        tx: Queue,
        irq: Interrupt,
        engine: NetEngine,
        peer: UnixStream,
        next_rx_desc: u16,
        next_tx_desc: u16,
    }

    /// Writes a chain of (addr, len, flags) buffers at descriptor `base` onwards (wrapping
    /// at 16), chains them with NEXT, and makes it available; returns the next free index.
    fn post(q: &MockSplitQueue<'_, Mem>, base: u16, bufs: &[(u64, u32, u16)]) -> u16 {
        let n = u16::try_from(bufs.len()).unwrap();
        for (i, (a, l, f)) in bufs.iter().enumerate() {
            let i = u16::try_from(i).unwrap();
            let d = if i + 1 < n {
                raw(*a, *l, f | F_NEXT, (base + i + 1) % 16)
            } else {
                raw(*a, *l, f & !F_NEXT, 0)
            };
            q.desc_table().store((base + i) % 16, d).unwrap();
        }
        let idx = q.avail().idx().load();
        q.avail()
            .ring()
            .ref_at(usize::from(idx % 16))
            .unwrap()
            .store(base);
        q.avail().idx().store(idx.wrapping_add(1));
        (base + n) % 16
    }

    impl<'a> Rig<'a> {
        fn new(m: &'a Mem) -> Self {
            let rxq = MockSplitQueue::create(m, GuestAddress(0), 16);
            let txq = MockSplitQueue::create(m, GuestAddress(0x8000), 16);
            let (ours, peer) = UnixStream::pair().unwrap();
            peer.set_nonblocking(true).unwrap();
            // The mock's used ring overlaps its avail ring beyond 8 entries: the queues use
            // rings of their own at RX_USED and TX_USED.
            let queue = |mq: &MockSplitQueue<'a, Mem>, used: u64| {
                let mut q: Queue = mq.create_queue().unwrap();
                q.set_used_ring_address(Some(u32::try_from(used).unwrap()), Some(0));
                q
            };
            Rig {
                m,
                rx: queue(&rxq, RX_USED),
                tx: queue(&txq, TX_USED),
                rxq,
                txq,
                irq: Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()),
                engine: NetEngine::new(StreamBackend::new(ours).unwrap()),
                peer,
                next_rx_desc: 0,
                next_tx_desc: 0,
            }
        }

        /// Offers one receive chain of the given (addr, len, flags) buffers.
        fn post_rx(&mut self, bufs: &[(u64, u32, u16)]) {
            self.next_rx_desc = post(&self.rxq, self.next_rx_desc, bufs);
        }

        /// Submits one transmit chain.
        fn submit_tx(&mut self, descs: &[RawDescriptor]) {
            let bufs: Vec<(u64, u32, u16)> = descs
                .iter()
                .map(|d| {
                    let d = virtio_queue::desc::split::Descriptor::from(*d);
                    (d.addr().0, d.len(), d.flags())
                })
                .collect();
            self.next_tx_desc = post(&self.txq, self.next_tx_desc, &bufs);
        }

        fn tx(&mut self) {
            self.engine
                .process_tx(self.m, &mut self.tx, &self.irq)
                .unwrap();
        }

        fn rx(&mut self) {
            self.engine
                .process_rx(self.m, &mut self.rx, &self.irq)
                .unwrap();
        }

        fn used_idx(&self, ring: u64) -> u16 {
            self.m.read_obj(GuestAddress(ring + 2)).unwrap()
        }

        /// Used element `i`: (head, length).
        fn used(&self, ring: u64, i: u16) -> (u32, u32) {
            let at = ring + 4 + 8 * u64::from(i % 16);
            (
                self.m.read_obj(GuestAddress(at)).unwrap(),
                self.m.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }

        /// Everything the peer can read now.
        fn peer_bytes(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match self.peer.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
            out
        }
    }

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&u32::try_from(f.len()).unwrap().to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| seed.wrapping_add(u8::try_from(i % 251).unwrap()))
            .collect()
    }

    #[test]
    fn transmit_strips_the_header_and_frames_the_packet() {
        let m = mem();
        let mut r = Rig::new(&m);
        let f1 = frame(60, 1);
        let f2 = frame(1514, 2);
        // Header split over two buffers, frame over two more.
        m.write_slice(&[0xee; 12], GuestAddress(0x10_0000)).unwrap();
        m.write_slice(&f1[..20], GuestAddress(0x11_0000)).unwrap();
        m.write_slice(&f1[20..], GuestAddress(0x12_0000)).unwrap();
        r.submit_tx(&[
            raw(0x10_0000, 5, 0, 0),
            raw(0x10_0005, 7, 0, 0),
            raw(0x11_0000, 20, 0, 0),
            raw(0x12_0000, 40, 0, 0),
        ]);
        r.tx();
        // Header and frame in one buffer.
        m.write_slice(&[0; 12], GuestAddress(0x20_0000)).unwrap();
        m.write_slice(&f2, GuestAddress(0x20_000c)).unwrap();
        r.submit_tx(&[raw(0x20_0000, 12 + 1514, 0, 0)]);
        r.tx();
        assert_eq!(r.peer_bytes(), framed(&[&f1, &f2]));
        assert_eq!(r.used_idx(TX_USED), 2);
        assert_eq!(r.used(TX_USED, 0).1, 0);
        assert!(r.irq.irq_evt().read().unwrap() >= 1);
    }

    /// With event indexes, the transmit loop leaves `avail_event` at the last chain it took
    /// (so the guest's next chain notifies), the receive loop sets it when it runs out of
    /// buffers, and a transmit chain through an indirect table is read like a direct one.
    #[test]
    fn event_indexes_rearm_and_indirect_tables_are_followed() {
        let m = mem();
        let mut r = Rig::new(&m);
        r.tx.set_event_idx(true);
        r.rx.set_event_idx(true);
        // avail_event follows the 16 used elements.
        let avail_event =
            |ring: u64| -> u16 { m.read_obj(GuestAddress(ring + 4 + 8 * 16)).unwrap() };
        let f1 = frame(1514, 5);
        let f2 = frame(60, 6);
        m.write_slice(&[0; 12], GuestAddress(0x10_0000)).unwrap();
        m.write_slice(&f1, GuestAddress(0x10_000c)).unwrap();
        r.submit_tx(&[raw(0x10_0000, 12 + 1514, 0, 0)]);
        // An indirect table of three descriptors: header, then the frame in two parts.
        let table = [
            raw(0x30_0000, 12, F_NEXT, 1),
            raw(0x31_0000, 30, F_NEXT, 2),
            raw(0x32_0000, 30, 0, 0),
        ];
        for (i, d) in table.iter().enumerate() {
            m.write_obj(*d, GuestAddress(0x40_0000 + 16 * i as u64))
                .unwrap();
        }
        m.write_slice(&[0; 12], GuestAddress(0x30_0000)).unwrap();
        m.write_slice(&f2[..30], GuestAddress(0x31_0000)).unwrap();
        m.write_slice(&f2[30..], GuestAddress(0x32_0000)).unwrap();
        r.submit_tx(&[raw(0x40_0000, 48, F_INDIRECT, 0)]);
        r.tx();
        assert_eq!(r.peer_bytes(), framed(&[&f1, &f2]));
        assert_eq!(r.used_idx(TX_USED), 2);
        assert_eq!(avail_event(TX_USED), 2);

        // One receive buffer for two frames: the second waits, and avail_event asks for a
        // notification at the guest's next buffer.
        r.post_rx(&[(0x50_0000, 4096, F_WRITE)]);
        r.peer.write_all(&framed(&[&f2, &f2])).unwrap();
        r.rx();
        assert_eq!(r.used_idx(RX_USED), 1);
        assert_eq!(avail_event(RX_USED), 1);
        assert!(!r.engine.wants_read());
        r.post_rx(&[(0x51_0000, 4096, F_WRITE)]);
        r.rx();
        assert_eq!(r.used_idx(RX_USED), 2);
    }

    /// With mergeable buffers a frame spans chains: the header counts them, each chain's used
    /// length is what it holds; too few buffers put the chains back until the guest adds
    /// more; a bad chain returns the frame's chains empty and the frame starts over; a frame
    /// that no full queue can hold is dropped and its chains reused.
    #[test]
    fn mergeable_buffers_span_frames_and_survive_bad_chains() {
        let m = mem();
        let mut r = Rig::new(&m);
        r.engine.start_rx(true);
        let hdr = |at: u64| -> [u8; 12] {
            let mut h = [0u8; 12];
            m.read_slice(&mut h, GuestAddress(at)).unwrap();
            h
        };
        let read = |at: u64, len: usize| -> Vec<u8> {
            let mut b = vec![0u8; len];
            m.read_slice(&mut b, GuestAddress(at)).unwrap();
            b
        };
        let f1 = frame(3000, 7);
        // One 1024-byte buffer is not enough: it goes back, and the device waits.
        r.post_rx(&[(0x10_0000, 1024, F_WRITE)]);
        r.peer.write_all(&framed(&[&f1])).unwrap();
        r.rx();
        assert_eq!(r.used_idx(RX_USED), 0);
        assert!(!r.engine.wants_read());
        // Two more: the frame takes all three, in order.
        r.post_rx(&[(0x11_0000, 1024, F_WRITE)]);
        r.post_rx(&[(0x12_0000, 512, F_WRITE), (0x12_1000, 2048, F_WRITE)]);
        r.rx();
        assert_eq!(r.used_idx(RX_USED), 3);
        assert_eq!(r.used(RX_USED, 0), (0, 1024));
        assert_eq!(r.used(RX_USED, 1), (1, 1024));
        assert_eq!(r.used(RX_USED, 2), (2, 12 + 3000 - 2048));
        assert_eq!(hdr(0x10_0000), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0]);
        let mut got = read(0x10_000c, 1012);
        got.extend(read(0x11_0000, 1024));
        got.extend(read(0x12_0000, 512));
        got.extend(read(0x12_1000, 3000 - 1012 - 1024 - 512));
        assert_eq!(got, f1);

        // A good chain, then one with a device-readable buffer, then a good one: the first
        // two go back empty and the frame lands whole in the third.
        let f2 = frame(200, 8);
        r.post_rx(&[(0x20_0000, 100, F_WRITE)]);
        r.post_rx(&[(0x21_0000, 100, 0)]);
        r.post_rx(&[(0x22_0000, 4096, F_WRITE)]);
        // A first chain too small for the header is bad too.
        r.peer.write_all(&framed(&[&f2])).unwrap();
        r.rx();
        assert_eq!(r.used_idx(RX_USED), 6);
        assert_eq!(r.used(RX_USED, 3).1, 0);
        assert_eq!(r.used(RX_USED, 4).1, 0);
        assert_eq!(r.used(RX_USED, 5).1, 212);
        assert_eq!(hdr(0x22_0000)[10..], [1, 0]);
        assert_eq!(read(0x22_000c, 200), f2);
        r.post_rx(&[(0x23_0000, 8, F_WRITE)]);
        r.post_rx(&[(0x24_0000, 4096, F_WRITE)]);
        r.peer.write_all(&framed(&[&f2])).unwrap();
        r.rx();
        assert_eq!(r.used_idx(RX_USED), 8);
        assert_eq!(r.used(RX_USED, 6).1, 0);
        assert_eq!(r.used(RX_USED, 7).1, 212);

        // A frame larger than 16 buffers of 64 bytes can ever hold is dropped; the buffers
        // stay and take the next frame.
        for i in 0..8u64 {
            r.post_rx(&[(0x30_0000 + i * 0x1000, 64, F_WRITE)]);
        }
        let big = frame(2000, 9);
        r.peer.write_all(&framed(&[&big, &f2])).unwrap();
        r.rx();
        // 8 buffers: not yet known to be hopeless (the queue holds 16); the device waits.
        assert_eq!(r.used_idx(RX_USED), 8);
        for i in 8..16u64 {
            r.post_rx(&[(0x30_0000 + i * 0x1000, 64, F_WRITE)]);
        }
        r.rx();
        // 2000 bytes dropped; f2 (212 bytes with its header) takes 4 of the buffers.
        assert_eq!(r.used_idx(RX_USED), 12);
        assert_eq!(r.used(RX_USED, 8).1, 64);
        assert_eq!(r.used(RX_USED, 11).1, 212 - 3 * 64);
        assert_eq!(hdr(0x30_0000)[10..], [4, 0]);
    }

    #[test]
    fn receive_prepends_a_zeroed_header_across_split_reads() {
        let m = mem();
        let mut r = Rig::new(&m);
        let f1 = frame(98, 3);
        let f2 = frame(4000, 4);
        r.post_rx(&[(0x10_0000, 2048, F_WRITE)]);
        // Header and frame split over two buffers of one chain.
        r.post_rx(&[(0x20_0000, 8, F_WRITE), (0x21_0000, 8192, F_WRITE)]);
        m.write_slice(&[0xff; 16], GuestAddress(0x10_0000)).unwrap();
        let bytes = framed(&[&f1, &f2]);
        // The peer writes in three pieces that cut the length prefix and the payload.
        for piece in [&bytes[..2], &bytes[2..50], &bytes[50..]] {
            r.peer.write_all(piece).unwrap();
            r.rx();
        }
        assert_eq!(r.used_idx(RX_USED), 2);
        assert_eq!(r.used(RX_USED, 0), (0, 12 + 98));
        assert_eq!(r.used(RX_USED, 1).1, 12 + 4000);
        let mut hdr = [0u8; 12];
        m.read_slice(&mut hdr, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(hdr, RX_HEADER);
        let mut got = vec![0u8; 98];
        m.read_slice(&mut got, GuestAddress(0x10_000c)).unwrap();
        assert_eq!(got, f1);
        // The header's last 4 bytes went to the second buffer, the frame follows them.
        let mut got = vec![0u8; 4000];
        m.read_slice(&mut got, GuestAddress(0x21_0004)).unwrap();
        assert_eq!(got, f2);
        let mut hdr_tail = [0xffu8; 4];
        m.read_slice(&mut hdr_tail, GuestAddress(0x21_0000))
            .unwrap();
        assert_eq!(hdr_tail, RX_HEADER[8..]);
    }

    #[test]
    fn no_receive_buffer_stops_reading_the_socket() {
        let m = mem();
        let mut r = Rig::new(&m);
        let f = frame(200, 5);
        r.peer.write_all(&framed(&[&f, &f, &f])).unwrap();
        r.rx();
        assert!(!r.engine.wants_read());
        assert_eq!(r.used_idx(RX_USED), 0);
        // The guest adds buffers: the waiting frames arrive, in order, none lost.
        r.post_rx(&[(0x10_0000, 1024, F_WRITE)]);
        r.post_rx(&[(0x11_0000, 1024, F_WRITE)]);
        r.rx();
        assert_eq!(r.used_idx(RX_USED), 2);
        assert!(!r.engine.wants_read());
        r.post_rx(&[(0x12_0000, 1024, F_WRITE)]);
        r.rx();
        assert_eq!(r.used_idx(RX_USED), 3);
        assert!(r.engine.wants_read());
        let mut got = vec![0u8; 200];
        m.read_slice(&mut got, GuestAddress(0x12_000c)).unwrap();
        assert_eq!(got, f);
    }

    #[test]
    fn bad_transmit_chains_are_dropped_and_the_queue_goes_on() {
        let m = mem();
        let mut r = Rig::new(&m);
        let end = 0x100_0000u64;
        for chain in [
            // Frame of 13 bytes: too short.
            vec![raw(0x10_0000, 12 + 13, 0, 0)],
            // Header only, and less than a header.
            vec![raw(0x10_0000, 12, 0, 0)],
            vec![raw(0x10_0000, 5, 0, 0)],
            // One byte more than the largest frame.
            vec![raw(0x10_0000, 12 + 65551, 0, 0)],
            // A device-writable buffer in a transmit chain.
            vec![raw(0x10_0000, 12, 0, 0), raw(0x20_0000, 60, F_WRITE, 0)],
            // Outside guest memory, and wrapping the address space.
            vec![raw(end - 30, 60, 0, 0)],
            vec![raw(u64::MAX - 10, 60, 0, 0)],
        ] {
            r.submit_tx(&chain);
            r.tx();
        }
        assert_eq!(r.used_idx(TX_USED), 7);
        assert!(r.peer_bytes().is_empty());
        // The largest and smallest frames still go through.
        let big = frame(65550, 6);
        m.write_slice(&big, GuestAddress(0x10_000c)).unwrap();
        r.submit_tx(&[raw(0x10_0000, 12 + 65550, 0, 0)]);
        r.tx();
        r.submit_tx(&[raw(0x10_0000, 12 + 14, 0, 0)]);
        r.tx();
        let sent = r.peer_bytes();
        let want = framed(&[&big, &big[..14]]);
        assert_eq!((sent.len(), sent == want), (want.len(), true));
        // A loop: descriptor 0 -> 1 -> 0, on a fresh queue.
        let mut r = Rig::new(&m);
        r.txq
            .desc_table()
            .store(0, raw(0x10_0000, 40, F_NEXT, 1))
            .unwrap();
        r.txq
            .desc_table()
            .store(1, raw(0x10_0000, 40, F_NEXT, 0))
            .unwrap();
        r.txq.avail().ring().ref_at(0).unwrap().store(0);
        r.txq.avail().idx().store(1);
        r.tx();
        assert_eq!(r.used_idx(TX_USED), 1);
        assert!(r.peer_bytes().is_empty());
    }

    #[test]
    fn bad_receive_chains_do_not_lose_frames() {
        let m = mem();
        let mut r = Rig::new(&m);
        let small = frame(100, 7);
        let large = frame(3000, 8);
        // A device-readable buffer: returned empty, the frame waits.
        r.post_rx(&[(0x10_0000, 2048, 0)]);
        // Outside memory: returned empty.
        r.post_rx(&[(0xfff_0000, 2048, F_WRITE)]);
        // Fits the small frame.
        r.post_rx(&[(0x11_0000, 2048, F_WRITE)]);
        // Too small for the large frame: the frame is dropped and the chain reused for the
        // next one.
        r.post_rx(&[(0x12_0000, 2048, F_WRITE)]);
        r.peer
            .write_all(&framed(&[&small, &large, &small]))
            .unwrap();
        r.rx();
        assert_eq!(r.used_idx(RX_USED), 4);
        assert_eq!(r.used(RX_USED, 0).1, 0);
        assert_eq!(r.used(RX_USED, 1).1, 0);
        assert_eq!(r.used(RX_USED, 2).1, 112);
        assert_eq!(r.used(RX_USED, 3).1, 112);
        let mut got = vec![0u8; 100];
        m.read_slice(&mut got, GuestAddress(0x12_000c)).unwrap();
        assert_eq!(got, small);
        // A peer sending garbage lengths does not stop the device.
        r.peer.write_all(&5u32.to_be_bytes()).unwrap();
        r.peer.write_all(&[0; 5]).unwrap();
        r.post_rx(&[(0x13_0000, 2048, F_WRITE)]);
        r.peer.write_all(&framed(&[&small])).unwrap();
        r.rx();
        assert_eq!(r.used_idx(RX_USED), 5);
        assert!(r.engine.backend().link_up());
    }

    #[test]
    fn a_full_socket_stops_taking_transmit_chains() {
        let m = mem();
        let mut r = Rig::new(&m);
        let big = frame(65000, 9);
        m.write_slice(&big, GuestAddress(0x10_000c)).unwrap();
        // Submit until the engine stops consuming because the peer does not read.
        let mut submitted = 0u16;
        while submitted < 200 {
            r.submit_tx(&[raw(0x10_0000, 12 + 65000, 0, 0)]);
            submitted += 1;
            r.tx();
            if r.used_idx(TX_USED) < submitted {
                break;
            }
        }
        let stalled_at = r.used_idx(TX_USED);
        assert!(stalled_at < submitted, "the socket never filled");
        assert!(r.engine.wants_write());
        // Still stalled while nothing is read.
        r.tx();
        assert_eq!(r.used_idx(TX_USED), stalled_at);
        // The peer reads; everything is sent, framed and whole.
        let mut received = Vec::new();
        for _ in 0..10_000 {
            received.extend(r.peer_bytes());
            r.tx();
            if r.used_idx(TX_USED) == submitted && !r.engine.wants_write() {
                break;
            }
        }
        received.extend(r.peer_bytes());
        assert_eq!(r.used_idx(TX_USED), submitted);
        let one = framed(&[&big]);
        assert_eq!(received.len(), one.len() * usize::from(submitted));
        assert!(received.chunks(one.len()).all(|c| c == one.as_slice()));
    }

    #[test]
    fn peer_hang_up_takes_the_link_down_and_the_device_keeps_running() {
        let m = mem();
        let mut r = Rig::new(&m);
        r.post_rx(&[(0x10_0000, 2048, F_WRITE)]);
        let (dead, _) = UnixStream::pair().unwrap();
        let old = std::mem::replace(&mut r.peer, dead);
        drop(old);
        r.rx();
        assert!(!r.engine.backend().link_up());
        r.engine.check_link(&r.irq);
        assert_ne!(r.irq.status() & INT_CONFIG, 0);
        // Transmit chains are still completed (and dropped).
        r.submit_tx(&[raw(0x10_0000, 12 + 60, 0, 0)]);
        r.tx();
        assert_eq!(r.used_idx(TX_USED), 1);
        assert!(!r.engine.wants_read() && !r.engine.wants_write());
    }

    #[test]
    fn bogus_avail_index_is_a_queue_error() {
        let m = mem();
        let mut r = Rig::new(&m);
        r.txq.avail().idx().store(1000);
        assert!(matches!(
            r.engine.process_tx(&m, &mut r.tx, &r.irq),
            Err(NetError::Queue(_))
        ));
        r.rxq.avail().idx().store(1000);
        r.peer.write_all(&framed(&[&frame(60, 1)])).unwrap();
        assert!(matches!(
            r.engine.process_rx(&m, &mut r.rx, &r.irq),
            Err(NetError::Queue(_))
        ));
    }

    #[test]
    fn features_and_config_space() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mac = [0x5a, 0x94, 0xef, 0xe4, 0x0c, 0xee];
        // Offloads the caller asks for (crun's COMPAT_NET_FEATURES) are not offered.
        let dev = VirtioNet::new(a, mac, 0x4883).unwrap();
        assert_eq!(
            dev.device_features(),
            (1 << VIRTIO_NET_F_MAC)
                | (1 << VIRTIO_NET_F_MTU)
                | (1 << VIRTIO_NET_F_STATUS)
                | (1 << 15)
                | (1 << 28)
                | (1 << 29)
        );
        assert_eq!(dev.device_type(), 1);
        assert_eq!(dev.queue_max_sizes(), &[256, 256]);
        let mut c = [0u8; 12];
        dev.read_config(0, &mut c);
        assert_eq!(&c[..6], &mac);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1);
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 65520);
        let mut beyond = [0xffu8; 4];
        dev.read_config(10, &mut beyond);
        assert_eq!(beyond, [0xf0, 0xff, 0, 0]);
        dev.link.store(false, Ordering::SeqCst);
        dev.read_config(6, &mut beyond[..2]);
        assert_eq!(&beyond[..2], &[0, 0]);
    }

    /// A guest driver's view: the transport activates the device and its worker; a frame the
    /// guest sends reaches the peer, a frame the peer sends reaches the guest, both with
    /// interrupts, and a reset stops the worker.
    #[test]
    fn driver_through_transport_sends_and_receives() {
        use crate::devices::virtio::transport::mmio::MmioTransport;
        use crate::devices::BusDevice;
        use std::time::{Duration, Instant};

        let m = Arc::new(mem());
        let rxq = MockSplitQueue::create(m.as_ref(), GuestAddress(0), 16);
        let txq = MockSplitQueue::create(m.as_ref(), GuestAddress(0x8000), 16);
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let dev = Box::new(VirtioNet::new(ours, [2, 0, 0, 0, 0, 1], 0).unwrap());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new(dev, m.clone(), irq).unwrap();
        let w = |t: &mut MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());
        let lo = |a: GuestAddress| u32::try_from(a.0).unwrap();
        w(&mut t, 0x70, 1);
        w(&mut t, 0x70, 3);
        w(&mut t, 0x24, 0);
        w(
            &mut t,
            0x20,
            (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_MTU),
        );
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(&mut t, 0x70, 0xb);
        for (i, q) in [&rxq, &txq].into_iter().enumerate() {
            w(&mut t, 0x30, u32::try_from(i).unwrap());
            w(&mut t, 0x38, 16);
            w(&mut t, 0x80, lo(q.desc_table_addr()));
            w(&mut t, 0x90, lo(q.avail_addr()));
            w(&mut t, 0xa0, lo(q.used_addr()));
            w(&mut t, 0x44, 1);
        }
        w(&mut t, 0x70, 0xf);
        let mut st = [0u8; 4];
        t.read(0x70, &mut st);
        assert_eq!(u32::from_le_bytes(st), 0xf);

        let wait = |cond: &dyn Fn() -> bool| {
            let start = Instant::now();
            while !cond() && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(2));
            }
            cond()
        };
        // Transmit.
        let f = frame(100, 10);
        m.write_slice(&f, GuestAddress(0x10_000c)).unwrap();
        txq.build_desc_chain(&[raw(0x10_0000, 112, 0, 0)]).unwrap();
        w(&mut t, 0x50, 1);
        let mut got = vec![0u8; 104];
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, framed(&[&f]));
        assert!(wait(&|| txq.used().idx().load() == 1));
        // Receive: the frame arrives before the guest has a buffer, then the guest adds one.
        peer.write_all(&framed(&[&f])).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rxq.used().idx().load(), 0);
        rxq.build_desc_chain(&[raw(0x20_0000, 2048, F_WRITE, 0)])
            .unwrap();
        w(&mut t, 0x50, 0);
        assert!(wait(&|| rxq.used().idx().load() == 1));
        let mut back = vec![0u8; 100];
        m.read_slice(&mut back, GuestAddress(0x20_000c)).unwrap();
        assert_eq!(back, f);
        t.read(0x60, &mut st);
        assert_eq!(u32::from_le_bytes(st) & 1, 1);
        // The peer hangs up: the guest gets a configuration interrupt, status says link down.
        drop(peer);
        let start = Instant::now();
        let link_down = loop {
            let mut s = [0u8; 4];
            let mut status = [0xffu8; 2];
            t.read(0x60, &mut s);
            t.read(0x106, &mut status);
            if u32::from_le_bytes(s) & INT_CONFIG != 0 && status == [0, 0] {
                break true;
            }
            if start.elapsed() > Duration::from_secs(5) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        assert!(link_down);
        w(&mut t, 0x70, 0);
        t.read(0x70, &mut st);
        assert_eq!(u32::from_le_bytes(st), 0);
    }
}
