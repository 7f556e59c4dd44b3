//! vsock packets (virtio 1.2, 5.10.6): a 44-byte little-endian header and an optional payload.
//!
//! [`TxPacket::parse`] copies the header out of guest memory exactly once into a local
//! [`PacketHeader`] and validates the copy; the payload is copied too, so nothing later reads
//! guest memory that the guest could change behind the device's back.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use super::MAX_PKT_PAYLOAD;
use crate::devices::virtio::descriptor::{
    check_chain, gather, scatter, total_len, CheckedDescriptor, DescriptorError,
};

/// Size of the packet header.
pub const HEADER_LEN: usize = 44;

/// Packet errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// The chain is malformed.
    #[error("invalid descriptor chain")]
    Chain(#[source] DescriptorError),
    /// A transmit chain has a device-writable buffer, or a receive chain a readable one.
    #[error("packet buffer has the wrong direction")]
    WrongDirection,
    /// The buffers are shorter than a header.
    #[error("packet is shorter than its header")]
    ShortHeader,
    /// The header's length exceeds the payload limit or the buffers.
    #[error("packet length is invalid")]
    BadLength,
    /// Guest memory access failed.
    #[error("cannot access packet memory")]
    Memory,
}

/// The packet header, as a plain local copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketHeader {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (`TYPE_STREAM`).
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (shutdown bits).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

impl PacketHeader {
    /// Decodes a header.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        PacketHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A packet the guest sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    /// The header copy.
    pub hdr: PacketHeader,
    /// The payload copy (`hdr.len` bytes).
    pub payload: Vec<u8>,
}

impl TxPacket {
    /// Parses a transmit chain.
    pub fn parse<M>(chain: DescriptorChain<M>, max_descriptors: usize) -> Result<Self, PacketError>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        let mem = chain.memory();
        let descs = check_chain(chain.clone(), max_descriptors).map_err(PacketError::Chain)?;
        if descs.iter().any(|d| d.write_only) {
            return Err(PacketError::WrongDirection);
        }
        let mut raw = [0u8; HEADER_LEN];
        let got = gather(mem, &descs, 0, &mut raw).map_err(|_| PacketError::Memory)?;
        if got < HEADER_LEN {
            return Err(PacketError::ShortHeader);
        }
        let hdr = PacketHeader::from_bytes(&raw);
        let len = usize::try_from(hdr.len).map_err(|_| PacketError::BadLength)?;
        let available = usize::try_from(total_len(&descs).ok_or(PacketError::BadLength)?)
            .map_err(|_| PacketError::BadLength)?
            - HEADER_LEN;
        if len > MAX_PKT_PAYLOAD || len > available {
            return Err(PacketError::BadLength);
        }
        let mut payload = vec![0u8; len];
        gather(mem, &descs, HEADER_LEN, &mut payload).map_err(|_| PacketError::Memory)?;
        Ok(TxPacket { hdr, payload })
    }
}

/// Writable room of a receive chain.
#[derive(Debug)]
pub struct RxBuffer {
    descs: Vec<CheckedDescriptor>,
    capacity: usize,
}

impl RxBuffer {
    /// Checks a receive chain: all buffers device-writable, room for at least a header.
    pub fn parse<M>(chain: DescriptorChain<M>, max_descriptors: usize) -> Result<Self, PacketError>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        let descs = check_chain(chain, max_descriptors).map_err(PacketError::Chain)?;
        if descs.iter().any(|d| !d.write_only) {
            return Err(PacketError::WrongDirection);
        }
        let capacity = usize::try_from(total_len(&descs).ok_or(PacketError::BadLength)?)
            .map_err(|_| PacketError::BadLength)?;
        if capacity < HEADER_LEN {
            return Err(PacketError::ShortHeader);
        }
        Ok(RxBuffer { descs, capacity })
    }

    /// Payload bytes that fit after the header.
    pub fn payload_room(&self) -> usize {
        self.capacity - HEADER_LEN
    }

    /// Writes `hdr` (whose `len` must equal `payload.len()`) and the payload; returns the used
    /// length.
    pub fn write<M: GuestMemory>(
        &self,
        mem: &M,
        hdr: &PacketHeader,
        payload: &[u8],
    ) -> Result<u32, PacketError> {
        if payload.len() > self.payload_room() || usize::try_from(hdr.len) != Ok(payload.len()) {
            return Err(PacketError::BadLength);
        }
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.extend_from_slice(&hdr.to_bytes());
        bytes.extend_from_slice(payload);
        let n = scatter(mem, &self.descs, &bytes).map_err(|_| PacketError::Memory)?;
        u32::try_from(n).map_err(|_| PacketError::BadLength)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::descriptor::tests::{mem, raw, F_NEXT, F_WRITE};
    use proptest::prelude::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn chain_of<'a>(
        m: &'a GuestMemoryMmap<()>,
        descs: &[RawDescriptor],
    ) -> DescriptorChain<&'a GuestMemoryMmap<()>> {
        let vq = MockSplitQueue::create(m, GuestAddress(0), 16);
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table()
                .store(u16::try_from(i).unwrap(), *d)
                .unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        q.iter(m).unwrap().next().unwrap()
    }

    fn hdr(len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5000,
            dst_port: 1025,
            len,
            type_: 1,
            op: 5,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn header_round_trip_and_layout() {
        let h = hdr(3);
        let b = h.to_bytes();
        assert_eq!(PacketHeader::from_bytes(&b), h);
        assert_eq!(&b[24..28], &3u32.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
    }

    #[test]
    fn parses_header_split_over_buffers() {
        let m = mem();
        let mut bytes = hdr(5).to_bytes().to_vec();
        bytes.extend_from_slice(b"hello");
        m.write_slice(&bytes[..10], GuestAddress(0x10_0000))
            .unwrap();
        m.write_slice(&bytes[10..], GuestAddress(0x20_0000))
            .unwrap();
        let p = TxPacket::parse(
            chain_of(
                &m,
                &[raw(0x10_0000, 10, F_NEXT, 1), raw(0x20_0000, 39, 0, 0)],
            ),
            16,
        )
        .unwrap();
        assert_eq!(p.hdr, hdr(5));
        assert_eq!(p.payload, b"hello");
    }

    #[test]
    fn rejects_bad_lengths_and_directions() {
        let m = mem();
        m.write_slice(&hdr(100).to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(
            TxPacket::parse(chain_of(&m, &[raw(0x10_0000, 60, 0, 0)]), 16),
            Err(PacketError::BadLength)
        );
        m.write_slice(&hdr(u32::MAX).to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(
            TxPacket::parse(chain_of(&m, &[raw(0x10_0000, 0x1_0000, 0, 0)]), 16),
            Err(PacketError::BadLength)
        );
        assert_eq!(
            TxPacket::parse(chain_of(&m, &[raw(0x10_0000, 43, 0, 0)]), 16),
            Err(PacketError::ShortHeader)
        );
        assert_eq!(
            TxPacket::parse(chain_of(&m, &[raw(0x10_0000, 44, F_WRITE, 0)]), 16),
            Err(PacketError::WrongDirection)
        );
        assert!(matches!(
            TxPacket::parse(chain_of(&m, &[raw(0xfff_fff0, 44, 0, 0)]), 16),
            Err(PacketError::Chain(_))
        ));
    }

    #[test]
    fn rx_buffer_writes_header_and_payload() {
        let m = mem();
        let rx = RxBuffer::parse(
            chain_of(
                &m,
                &[
                    raw(0x10_0000, 40, F_WRITE | F_NEXT, 1),
                    raw(0x20_0000, 100, F_WRITE, 0),
                ],
            ),
            16,
        )
        .unwrap();
        assert_eq!(rx.payload_room(), 96);
        let used = rx.write(&m, &hdr(3), b"abc").unwrap();
        assert_eq!(used, 47);
        let mut back = [0u8; HEADER_LEN];
        m.read_slice(&mut back[..40], GuestAddress(0x10_0000))
            .unwrap();
        m.read_slice(&mut back[40..], GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(PacketHeader::from_bytes(&back), hdr(3));
        assert_eq!(
            rx.write(&m, &hdr(97), &[0; 97]),
            Err(PacketError::BadLength)
        );
        assert_eq!(rx.write(&m, &hdr(2), b"abc"), Err(PacketError::BadLength));
        assert_eq!(
            RxBuffer::parse(chain_of(&m, &[raw(0x10_0000, 43, F_WRITE, 0)]), 16).err(),
            Some(PacketError::ShortHeader)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary headers and buffer layouts never panic; accepted packets carry exactly
        /// `hdr.len` payload bytes within the limit.
        #[test]
        fn parse_never_panics(
            len in prop_oneof![Just(0u32), Just(5), Just(4096), Just(65536), Just(65537), any::<u32>()],
            op in any::<u16>(),
            descs in proptest::collection::vec(
                (prop_oneof![Just(0x10_0000u64), Just(0x20_0000), Just(0xff_ffc0), any::<u64>()],
                 prop_oneof![Just(0u32), Just(20), Just(44), Just(49), Just(0x1_0000), any::<u32>()],
                 0u16..8, 0u16..20),
                1..6),
        ) {
            let m = mem();
            let mut h = hdr(len);
            h.op = op;
            m.write_slice(&h.to_bytes(), GuestAddress(0x10_0000)).unwrap();
            let table: Vec<RawDescriptor> =
                descs.iter().map(|(a, l, f, n)| raw(*a, *l, *f, *n)).collect();
            if let Ok(p) = TxPacket::parse(chain_of(&m, &table), 16) {
                prop_assert_eq!(p.payload.len(), p.hdr.len as usize);
                prop_assert!(p.payload.len() <= MAX_PKT_PAYLOAD);
            }
        }
    }
}
