//! Parsing a virtio-blk request from a descriptor chain (no I/O happens here).
//!
//! Layout (virtio 1.2, 5.2.6): a device-readable 16-byte header `{type: le32, reserved: le32,
//! sector: le64}`, zero or more data buffers, and a device-writable status byte. The header
//! is copied out of guest memory once and only the copy is used.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{
    SECTOR_SHIFT, SECTOR_SIZE, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use crate::devices::virtio::descriptor::{
    check_chain, total_len, CheckedDescriptor, DescriptorError,
};

/// Size of the request header.
pub const HEADER_LEN: u32 = 16;

/// Why a chain is not a valid request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The chain itself is malformed.
    #[error("invalid descriptor chain")]
    Chain(#[source] DescriptorError),
    /// The chain has no room for header and status.
    #[error("request chain is too short")]
    TooShort,
    /// The header descriptor is device-writable or shorter than 16 bytes.
    #[error("request header descriptor is invalid")]
    BadHeader,
    /// Reading the header from guest memory failed.
    #[error("cannot read the request header")]
    ReadHeader,
    /// The status descriptor is device-readable or empty.
    #[error("request status descriptor is invalid")]
    BadStatus,
    /// A data buffer's direction does not match the request type.
    #[error("data buffer direction does not match the request")]
    WrongDirection,
    /// The data length is not a whole number of sectors.
    #[error("data length is not a multiple of the sector size")]
    UnalignedLength,
    /// The request reaches beyond the end of the disk.
    #[error("request is beyond the end of the disk")]
    OutOfRange,
}

/// What the guest asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into guest buffers.
    In,
    /// Write guest buffers to sectors.
    Out,
    /// Make previous writes durable.
    Flush,
    /// Return the disk ID string.
    GetId,
    /// Anything else: answered with `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(v: u32) -> Self {
        match v {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub kind: RequestType,
    /// First sector (meaningful for `In`/`Out`).
    pub sector: u64,
    /// Data buffers, all checked against guest memory and of the right direction.
    pub data: Vec<CheckedDescriptor>,
    /// Total data length in bytes.
    pub data_len: u32,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
}

/// A request the device refuses to execute.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub error: RequestError,
    /// The status byte's address when the chain's status descriptor itself is valid: the
    /// device then answers `VIRTIO_BLK_S_IOERR` there (virtio 1.2, 5.2.6.1: the device sets
    /// the status of every request it completes), so the driver does not read a stale status.
    pub status_addr: Option<GuestAddress>,
}

impl Request {
    /// Parses `chain` for a disk of `disk_sectors` sectors.
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        max_descriptors: usize,
        disk_sectors: u64,
    ) -> Result<Request, RequestError>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        Self::parse_or_reject(chain, max_descriptors, disk_sectors).map_err(|r| r.error)
    }

    /// [`Request::parse`], also saying where to put the error status of a rejected request
    /// whose status descriptor is valid.
    pub fn parse_or_reject<M>(
        chain: DescriptorChain<M>,
        max_descriptors: usize,
        disk_sectors: u64,
    ) -> Result<Request, Rejected>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        let mut status_addr = None;
        Self::parse_inner(chain, max_descriptors, disk_sectors, &mut status_addr)
            .map_err(|error| Rejected { error, status_addr })
    }

    fn parse_inner<M>(
        chain: DescriptorChain<M>,
        max_descriptors: usize,
        disk_sectors: u64,
        status_addr: &mut Option<GuestAddress>,
    ) -> Result<Request, RequestError>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        let mem = chain.memory();
        let descs = check_chain(chain.clone(), max_descriptors).map_err(RequestError::Chain)?;
        let (header, rest) = descs.split_first().ok_or(RequestError::TooShort)?;
        let (status, data) = rest.split_last().ok_or(RequestError::TooShort)?;
        if header.write_only || header.len < HEADER_LEN {
            return Err(RequestError::BadHeader);
        }
        if !status.write_only || status.len < 1 {
            return Err(RequestError::BadStatus);
        }
        *status_addr = Some(status.addr);
        // One copy of the header; nothing below reads guest memory again.
        let mut raw = [0u8; HEADER_LEN as usize];
        mem.read_slice(&mut raw, header.addr)
            .map_err(|_| RequestError::ReadHeader)?;
        let kind = RequestType::from(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&raw[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);

        let data_len = total_len(data).ok_or(RequestError::OutOfRange)?;
        match kind {
            RequestType::In | RequestType::GetId => {
                if data.iter().any(|d| !d.write_only) {
                    return Err(RequestError::WrongDirection);
                }
            }
            RequestType::Out => {
                if data.iter().any(|d| d.write_only) {
                    return Err(RequestError::WrongDirection);
                }
            }
            RequestType::Flush | RequestType::Unsupported(_) => {}
        }
        if matches!(kind, RequestType::In | RequestType::Out) {
            if u64::from(data_len) % SECTOR_SIZE != 0 {
                return Err(RequestError::UnalignedLength);
            }
            let end = sector
                .checked_add(u64::from(data_len) >> SECTOR_SHIFT)
                .ok_or(RequestError::OutOfRange)?;
            if end > disk_sectors {
                return Err(RequestError::OutOfRange);
            }
        }
        Ok(Request {
            kind,
            sector,
            data: data.to_vec(),
            data_len,
            status_addr: status.addr,
        })
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
    use vm_memory::GuestMemoryMmap;

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const DISK: u64 = 100;

    fn put_header(m: &GuestMemoryMmap<()>, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn parse(m: &GuestMemoryMmap<()>, descs: &[RawDescriptor]) -> Result<Request, RequestError> {
        let vq = MockSplitQueue::create(m, GuestAddress(0), 16);
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table()
                .store(u16::try_from(i).unwrap(), *d)
                .unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(m).unwrap().next().unwrap();
        Request::parse(chain, 16, DISK)
    }

    fn read_req(data_flags: u16, data_len: u32) -> Vec<RawDescriptor> {
        vec![
            raw(HDR, 16, F_NEXT, 1),
            raw(DATA, data_len, data_flags | F_NEXT, 2),
            raw(STATUS, 1, F_WRITE, 0),
        ]
    }

    #[test]
    fn parses_read_write_flush_getid_unsupported() {
        let m = mem();
        put_header(&m, VIRTIO_BLK_T_IN, 3);
        let r = parse(&m, &read_req(F_WRITE, 1024)).unwrap();
        assert_eq!((r.kind, r.sector, r.data_len), (RequestType::In, 3, 1024));
        assert_eq!(r.status_addr, GuestAddress(STATUS));
        put_header(&m, VIRTIO_BLK_T_OUT, 98);
        let r = parse(&m, &read_req(0, 1024)).unwrap();
        assert_eq!(r.kind, RequestType::Out);
        put_header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let r = parse(&m, &[raw(HDR, 16, F_NEXT, 1), raw(STATUS, 1, F_WRITE, 0)]).unwrap();
        assert_eq!((r.kind, r.data.len()), (RequestType::Flush, 0));
        put_header(&m, VIRTIO_BLK_T_GET_ID, 0);
        assert_eq!(
            parse(&m, &read_req(F_WRITE, 20)).unwrap().kind,
            RequestType::GetId
        );
        put_header(&m, 0x77, 0);
        assert_eq!(
            parse(&m, &read_req(F_WRITE, 20)).unwrap().kind,
            RequestType::Unsupported(0x77)
        );
    }

    #[test]
    fn wrong_direction() {
        let m = mem();
        put_header(&m, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            parse(&m, &read_req(0, 512)),
            Err(RequestError::WrongDirection)
        );
        put_header(&m, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            parse(&m, &read_req(F_WRITE, 512)),
            Err(RequestError::WrongDirection)
        );
        // Writable header, readable status.
        assert_eq!(
            parse(
                &m,
                &[
                    raw(HDR, 16, F_NEXT | F_WRITE, 1),
                    raw(STATUS, 1, F_WRITE, 0)
                ]
            ),
            Err(RequestError::BadHeader)
        );
        assert_eq!(
            parse(&m, &[raw(HDR, 16, F_NEXT, 1), raw(STATUS, 1, 0, 0)]),
            Err(RequestError::BadStatus)
        );
    }

    #[test]
    fn lengths_and_ranges() {
        let m = mem();
        put_header(&m, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            parse(&m, &read_req(F_WRITE, 513)),
            Err(RequestError::UnalignedLength)
        );
        // Zero-length data is a valid (empty) read.
        assert_eq!(parse(&m, &read_req(F_WRITE, 0)).unwrap().data_len, 0);
        put_header(&m, VIRTIO_BLK_T_IN, 99);
        assert_eq!(
            parse(&m, &read_req(F_WRITE, 1024)),
            Err(RequestError::OutOfRange)
        );
        put_header(&m, VIRTIO_BLK_T_IN, u64::MAX);
        assert_eq!(
            parse(&m, &read_req(F_WRITE, 512)),
            Err(RequestError::OutOfRange)
        );
        // Short header, empty status, single descriptor.
        put_header(&m, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(
            parse(&m, &[raw(HDR, 15, F_NEXT, 1), raw(STATUS, 1, F_WRITE, 0)]),
            Err(RequestError::BadHeader)
        );
        assert_eq!(
            parse(&m, &[raw(HDR, 16, F_NEXT, 1), raw(STATUS, 0, F_WRITE, 0)]),
            Err(RequestError::BadStatus)
        );
        assert_eq!(
            parse(&m, &[raw(HDR, 16, 0, 0)]),
            Err(RequestError::TooShort)
        );
    }

    #[test]
    fn malformed_chains() {
        let m = mem();
        put_header(&m, VIRTIO_BLK_T_IN, 0);
        // Data buffer past the end of RAM.
        assert_eq!(
            parse(
                &m,
                &read_req(F_WRITE, 0x1000)
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| {
                        if i == 1 {
                            raw(0xff_f000, 0x2000, F_WRITE | F_NEXT, 2)
                        } else {
                            d
                        }
                    })
                    .collect::<Vec<_>>()
            ),
            Err(RequestError::Chain(DescriptorError::OutsideMemory))
        );
        // Huge length.
        assert!(matches!(
            parse(&m, &read_req(F_WRITE, u32::MAX)),
            Err(RequestError::Chain(_))
        ));
        // A loop.
        assert!(matches!(
            parse(
                &m,
                &[raw(HDR, 16, F_NEXT, 1), raw(DATA, 512, F_WRITE | F_NEXT, 0)]
            ),
            Err(RequestError::Chain(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary descriptor tables and headers never panic, and anything accepted satisfies
        /// the request invariants.
        #[test]
        fn parse_never_panics_and_accepts_only_valid(
            descs in proptest::collection::vec(
                (prop_oneof![Just(HDR), Just(DATA), Just(STATUS), Just(0xff_fff0u64), any::<u64>()],
                 prop_oneof![Just(0u32), Just(1), Just(16), Just(512), Just(4096), any::<u32>()],
                 0u16..8,
                 0u16..20),
                1..8),
            kind in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), any::<u32>()],
            sector in prop_oneof![Just(0u64), Just(DISK - 1), Just(DISK), any::<u64>()],
        ) {
            let m = mem();
            put_header(&m, kind, sector);
            let table: Vec<RawDescriptor> =
                descs.iter().map(|(a, l, f, n)| raw(*a, *l, *f, *n)).collect();
            if let Ok(r) = parse(&m, &table) {
                prop_assert!(r.data.iter().all(|d| d.len == 0
                    || m.check_range(d.addr, d.len as usize, vm_memory::Permissions::ReadWrite)));
                match r.kind {
                    RequestType::In | RequestType::Out => {
                        prop_assert_eq!(u64::from(r.data_len) % SECTOR_SIZE, 0);
                        prop_assert!(r.sector + u64::from(r.data_len) / SECTOR_SIZE <= DISK);
                        let want_write = r.kind == RequestType::In;
                        prop_assert!(r.data.iter().all(|d| d.write_only == want_write));
                    }
                    _ => {}
                }
            }
        }
    }
}
