//! The framed stream socket: each Ethernet frame on the socket is preceded by its length as a
//! 32-bit big-endian integer (passt `--fd`, QEMU `-netdev stream`).
//!
//! The socket is non-blocking. Reads fill a buffer that always has room for one whole frame;
//! frames are handed out only when complete, so framing split across reads is reassembled.
//! A length outside [`MIN_FRAME_LEN`]`..=`[`MAX_FRAME_LEN`] is skipped (its bytes are read and
//! dropped) with a rate-limited log line. Writes queue whole frames and flush as much as the
//! socket takes; the rest waits for writability. A hang-up (EOF, `ECONNRESET`, `EPIPE`) is
//! logged once and takes the link down for good: queued frames are dropped, later ones too.

use std::io::{ErrorKind, Read};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{RateLimitedLog, MAX_FRAME_LEN, MIN_FRAME_LEN};

/// Length prefix of each frame on the socket.
pub const FRAME_PREFIX_LEN: usize = 4;
/// Receive buffer: room for several frames, and always for one of the largest.
const RX_BUF_LEN: usize = 256 * 1024;
/// Transmit frames are batched up to about this many bytes before a write.
pub const TX_BATCH_LEN: usize = 256 * 1024;

/// What [`StreamBackend::fill`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Read this many bytes.
    Read(usize),
    /// Nothing to read now (or the buffer is full).
    WouldBlock,
    /// The peer hung up (now or earlier); the link is down.
    Down,
}

/// What [`StreamBackend::flush`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Done,
    /// The socket took only part; wait for writability.
    Blocked,
    /// The peer hung up (now or earlier); queued frames were dropped.
    Down,
}

/// The host end of the network: a connected unix stream socket.
#[derive(Debug)]
pub struct StreamBackend {
    sock: UnixStream,
    link_up: Arc<AtomicBool>,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    /// Bytes of a refused frame still to skip.
    discard: u64,
    tx: Vec<u8>,
    tx_off: usize,
    bad_frames: RateLimitedLog,
}

impl StreamBackend {
    /// Wraps a connected stream socket and makes it non-blocking.
    pub fn new(sock: UnixStream) -> std::io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(StreamBackend {
            sock,
            link_up: Arc::new(AtomicBool::new(true)),
            rx: vec![0u8; RX_BUF_LEN].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            discard: 0,
            tx: Vec::with_capacity(TX_BATCH_LEN + FRAME_PREFIX_LEN + MAX_FRAME_LEN),
            tx_off: 0,
            bad_frames: RateLimitedLog::new(Duration::from_secs(5), module_path!()),
        })
    }

    /// Whether the link is up (the peer has not hung up).
    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::SeqCst)
    }

    /// The link state, shared with the device's configuration space.
    pub fn link_flag(&self) -> Arc<AtomicBool> {
        self.link_up.clone()
    }

    fn hang_up(&mut self, why: &str) {
        if self.link_up.swap(false, Ordering::SeqCst) {
            log::warn!(
                "virtio-net: the network peer is gone ({why}); the link is down and frames are dropped"
            );
        }
        self.tx.clear();
        self.tx_off = 0;
        self.rx_start = 0;
        self.rx_end = 0;
        self.discard = 0;
    }

    /// Reads what the socket has into the receive buffer.
    pub fn fill(&mut self) -> Fill {
        if !self.link_up() {
            return Fill::Down;
        }
        if self.rx_start > 0 && self.rx.len() - self.rx_end < FRAME_PREFIX_LEN + MAX_FRAME_LEN {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        if self.rx_end == self.rx.len() {
            return Fill::WouldBlock;
        }
        match self.sock.read(&mut self.rx[self.rx_end..]) {
            Ok(0) => {
                self.hang_up("end of stream");
                Fill::Down
            }
            Ok(n) => {
                self.rx_end += n;
                Fill::Read(n)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                Fill::WouldBlock
            }
            Err(e) => {
                self.hang_up(&format!("read: {e}"));
                Fill::Down
            }
        }
    }

    /// The next complete frame in the receive buffer (a range for [`StreamBackend::rx_bytes`]),
    /// skipping refused ones; `None` until one has arrived whole.
    pub fn next_frame(&mut self) -> Option<Range<usize>> {
        loop {
            let avail = self.rx_end - self.rx_start;
            if self.discard > 0 {
                let n = usize::try_from(self.discard)
                    .unwrap_or(usize::MAX)
                    .min(avail);
                self.rx_start += n;
                self.discard -= n as u64;
                if self.discard > 0 {
                    return None;
                }
                continue;
            }
            if avail < FRAME_PREFIX_LEN {
                return None;
            }
            let mut prefix = [0u8; FRAME_PREFIX_LEN];
            prefix.copy_from_slice(&self.rx[self.rx_start..self.rx_start + FRAME_PREFIX_LEN]);
            let len = u32::from_be_bytes(prefix);
            let ulen = usize::try_from(len).unwrap_or(usize::MAX);
            if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&ulen) {
                self.bad_frames.warn(format_args!(
                    "virtio-net: dropping a {len}-byte frame from the network peer (accepted: {MIN_FRAME_LEN}..={MAX_FRAME_LEN})"
                ));
                self.rx_start += FRAME_PREFIX_LEN;
                self.discard = u64::from(len);
                continue;
            }
            if avail < FRAME_PREFIX_LEN + ulen {
                return None;
            }
            let start = self.rx_start + FRAME_PREFIX_LEN;
            return Some(start..start + ulen);
        }
    }

    /// The bytes of a frame [`StreamBackend::next_frame`] returned.
    pub fn rx_bytes(&self, frame: Range<usize>) -> &[u8] {
        self.rx.get(frame).unwrap_or(&[])
    }

    /// Drops the frame [`StreamBackend::next_frame`] returned (delivered or refused).
    pub fn consume(&mut self, frame: &Range<usize>) {
        self.rx_start = frame.end.min(self.rx_end);
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        }
    }

    /// Whether queued transmit bytes wait for the socket.
    pub fn tx_pending(&self) -> bool {
        self.tx_off < self.tx.len()
    }

    /// Bytes queued for transmission.
    pub fn tx_queued(&self) -> usize {
        self.tx.len() - self.tx_off
    }

    /// Queues one frame of `len` bytes that `fill` writes into the slice it gets. A frame
    /// whose `fill` fails is not queued. Frames are dropped while the link is down.
    pub fn push_frame<E>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.link_up() {
            return Ok(());
        }
        let Ok(len32) = u32::try_from(len) else {
            return Ok(());
        };
        let at = self.tx.len();
        self.tx.extend_from_slice(&len32.to_be_bytes());
        self.tx.resize(at + FRAME_PREFIX_LEN + len, 0);
        match fill(&mut self.tx[at + FRAME_PREFIX_LEN..]) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.tx.truncate(at);
                Err(e)
            }
        }
    }

    /// Writes as much of the queued frames as the socket takes.
    pub fn flush(&mut self) -> Flush {
        if !self.link_up() {
            return Flush::Down;
        }
        while self.tx_off < self.tx.len() {
            match send_nosignal(&self.sock, &self.tx[self.tx_off..]) {
                Ok(0) => {
                    self.hang_up("write returned 0");
                    return Flush::Down;
                }
                Ok(n) => self.tx_off += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Keep the buffer small: move the unwritten tail to the front.
                    if self.tx_off > 0 {
                        self.tx.drain(..self.tx_off);
                        self.tx_off = 0;
                    }
                    return Flush::Blocked;
                }
                Err(e) => {
                    self.hang_up(&format!("write: {e}"));
                    return Flush::Down;
                }
            }
        }
        self.tx.clear();
        self.tx_off = 0;
        Flush::Done
    }
}

/// `write` without SIGPIPE: a closed peer gives `EPIPE` even in a host process that does not
/// ignore the signal.
fn send_nosignal(sock: &UnixStream, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is a valid slice for the duration of the call; send only reads it.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

impl AsRawFd for StreamBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&u32::try_from(f.len()).unwrap().to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    fn drain_frames(b: &mut StreamBackend) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(r) = b.next_frame() {
            out.push(b.rx_bytes(r.clone()).to_vec());
            b.consume(&r);
        }
        out
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut b = StreamBackend::new(ours).unwrap();
        let a = [1u8; 60];
        let c = [2u8; 1500];
        let bytes = framed(&[&a, &c]);
        let mut got = Vec::new();
        // One byte at a time: the prefix and the payload both arrive in pieces.
        for byte in &bytes {
            peer.write_all(std::slice::from_ref(byte)).unwrap();
            assert!(matches!(b.fill(), Fill::Read(1)));
            got.extend(drain_frames(&mut b));
        }
        assert_eq!(got, vec![a.to_vec(), c.to_vec()]);
        assert_eq!(b.fill(), Fill::WouldBlock);
    }

    #[test]
    fn bad_lengths_are_skipped_not_fatal() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut b = StreamBackend::new(ours).unwrap();
        let short = [9u8; 13];
        let big = vec![7u8; MAX_FRAME_LEN + 1];
        let ok = [3u8; 14];
        let ok_max = vec![4u8; MAX_FRAME_LEN];
        let bytes = framed(&[&short, &big, &[], &ok, &ok_max]);
        let writer = std::thread::spawn(move || peer.write_all(&bytes).map(|()| peer));
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < 2 && std::time::Instant::now() < deadline {
            let _ = b.fill();
            got.extend(drain_frames(&mut b));
        }
        let _peer = writer.join().unwrap().unwrap();
        assert_eq!(got, vec![ok.to_vec(), ok_max]);
        assert!(b.link_up());
    }

    #[test]
    fn huge_length_prefix_discards_until_the_peer_is_gone() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut b = StreamBackend::new(ours).unwrap();
        peer.write_all(&u32::MAX.to_be_bytes()).unwrap();
        peer.write_all(&[0u8; 100]).unwrap();
        assert!(matches!(b.fill(), Fill::Read(104)));
        assert_eq!(b.next_frame(), None);
        assert_eq!(b.discard, u64::from(u32::MAX) - 100);
        drop(peer);
        assert_eq!(b.fill(), Fill::Down);
        assert!(!b.link_up());
        assert_eq!(b.fill(), Fill::Down);
    }

    #[test]
    fn transmit_frames_and_backpressure() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let mut b = StreamBackend::new(ours).unwrap();
        b.push_frame(20, |s| {
            s.fill(0xaa);
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(b.push_frame(20, |_| Err("guest memory")).is_err());
        assert_eq!(b.tx_queued(), 24);
        assert_eq!(b.flush(), Flush::Done);
        let mut got = [0u8; 24];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..4], &20u32.to_be_bytes());
        assert!(got[4..].iter().all(|x| *x == 0xaa));
        // Fill the socket until it would block: the rest stays queued.
        let mut blocked = false;
        for _ in 0..1000 {
            b.push_frame(MAX_FRAME_LEN, |s| {
                s.fill(1);
                Ok::<(), ()>(())
            })
            .unwrap();
            if b.flush() == Flush::Blocked {
                blocked = true;
                break;
            }
        }
        assert!(blocked && b.tx_pending());
        // The peer drains; everything arrives framed.
        peer.set_nonblocking(false).unwrap();
        let reader = std::thread::spawn(move || {
            let mut total = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match peer.read(&mut buf) {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        });
        while b.flush() == Flush::Blocked {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!b.tx_pending());
        drop(b);
        let total = reader.join().unwrap();
        assert_eq!(total % (FRAME_PREFIX_LEN + MAX_FRAME_LEN), 0);
    }

    #[test]
    fn write_to_a_closed_peer_takes_the_link_down_once() {
        // No SIGPIPE handling here: the backend sends with MSG_NOSIGNAL.
        let (ours, peer) = UnixStream::pair().unwrap();
        let mut b = StreamBackend::new(ours).unwrap();
        drop(peer);
        b.push_frame(20, |_| Ok::<(), ()>(())).unwrap();
        assert_eq!(b.flush(), Flush::Down);
        assert!(!b.link_up());
        // Frames are dropped from now on.
        b.push_frame(20, |_| Ok::<(), ()>(())).unwrap();
        assert!(!b.tx_pending());
        assert_eq!(b.flush(), Flush::Down);
    }
}
