//! Checked descriptors: every buffer of a chain validated against guest memory before any
//! device looks at it (cloud-hypervisor's `CheckedDescriptor` idea).
//!
//! `virtio-queue` already stops loops (a TTL), out-of-table indices and chains over 4 GiB,
//! but it does so silently, by ending the iteration. [`check_chain`] turns those silent stops
//! into errors, bounds the number of descriptors, and checks each `(addr, len)` against guest
//! RAM. Zero-length descriptors are allowed and never dereferenced (CVE-2023-5158 came from
//! rejecting them in a way that hung the queue).

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory};

/// Errors in a descriptor chain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DescriptorError {
    /// The chain has no descriptors.
    #[error("descriptor chain is empty")]
    Empty,
    /// The chain loops, points outside the table or is longer than 4 GiB.
    #[error("descriptor chain is truncated, loops or exceeds 4 GiB")]
    Truncated,
    /// The chain has more descriptors than the device accepts.
    #[error("descriptor chain has too many descriptors")]
    TooManyDescriptors,
    /// A buffer lies (partly) outside guest RAM.
    #[error("descriptor buffer lies outside guest memory")]
    OutsideMemory,
}

/// A descriptor whose whole buffer lies in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedDescriptor {
    /// Guest address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// The device may write (and must not read) this buffer.
    pub write_only: bool,
}

/// Walks a chain, validating each descriptor; stops at `max_descriptors`.
pub fn check_chain<M>(
    chain: DescriptorChain<M>,
    max_descriptors: usize,
) -> Result<Vec<CheckedDescriptor>, DescriptorError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mem = chain.memory();
    let mut out = Vec::new();
    let mut last_has_next = false;
    for desc in chain.clone() {
        if out.len() == max_descriptors {
            return Err(DescriptorError::TooManyDescriptors);
        }
        let len = desc.len();
        let size = usize::try_from(len).map_err(|_| DescriptorError::OutsideMemory)?;
        if len > 0 && !mem.check_range(desc.addr(), size, vm_memory::Permissions::ReadWrite) {
            return Err(DescriptorError::OutsideMemory);
        }
        last_has_next = desc.has_next();
        out.push(CheckedDescriptor {
            addr: desc.addr(),
            len,
            write_only: desc.is_write_only(),
        });
    }
    if out.is_empty() {
        return Err(DescriptorError::Empty);
    }
    if last_has_next {
        return Err(DescriptorError::Truncated);
    }
    Ok(out)
}

/// Total length of `descs`, failing on overflow.
pub fn total_len(descs: &[CheckedDescriptor]) -> Option<u32> {
    descs.iter().try_fold(0u32, |acc, d| acc.checked_add(d.len))
}

/// Copies bytes from the buffers `descs` (taken as one contiguous stream, starting `skip` bytes
/// in) into `dst`; returns how many bytes were copied (less than `dst.len()` if the buffers
/// end first).
pub fn gather<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[CheckedDescriptor],
    mut skip: usize,
    dst: &mut [u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    use vm_memory::{Address, Bytes};
    let mut done = 0;
    for d in descs {
        if done == dst.len() {
            break;
        }
        let len = usize::try_from(d.len).unwrap_or(0);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(dst.len() - done);
        // `skip < len <= u32::MAX` and the range was checked against memory.
        let addr = d.addr.unchecked_add(skip as u64);
        mem.read_slice(&mut dst[done..done + n], addr)?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// Copies `src` into the buffers `descs` (one contiguous stream); returns the bytes written.
pub fn scatter<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[CheckedDescriptor],
    src: &[u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    scatter_at(mem, descs, 0, src)
}

/// Copies `src` into the buffers `descs` (one contiguous stream), starting `skip` bytes in;
/// returns the bytes written.
pub fn scatter_at<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[CheckedDescriptor],
    mut skip: usize,
    src: &[u8],
) -> Result<usize, vm_memory::GuestMemoryError> {
    use vm_memory::{Address, Bytes};
    let mut done = 0;
    for d in descs {
        if done == src.len() {
            break;
        }
        let len = usize::try_from(d.len).unwrap_or(0);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(src.len() - done);
        // `skip < len <= u32::MAX` and the range was checked against memory.
        let addr = d.addr.unchecked_add(skip as u64);
        mem.write_slice(&src[done..done + n], addr)?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::GuestMemoryMmap;

    pub(crate) const F_NEXT: u16 = 1;
    pub(crate) const F_WRITE: u16 = 2;
    pub(crate) const F_INDIRECT: u16 = 4;

    pub(crate) fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    pub(crate) fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// Builds a queue whose descriptor table holds exactly `descs` (flags and `next` as given,
    /// not fixed up), with one available chain starting at descriptor 0.
    pub(crate) fn first_chain(
        m: &GuestMemoryMmap<()>,
        descs: &[RawDescriptor],
    ) -> Result<Vec<CheckedDescriptor>, DescriptorError> {
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
        check_chain(chain, 8)
    }

    #[test]
    fn gather_and_scatter_span_buffers() {
        use vm_memory::Bytes;
        let m = mem();
        let descs = [
            CheckedDescriptor {
                addr: GuestAddress(0x1000),
                len: 3,
                write_only: true,
            },
            CheckedDescriptor {
                addr: GuestAddress(0x2000),
                len: 0,
                write_only: true,
            },
            CheckedDescriptor {
                addr: GuestAddress(0x3000),
                len: 4,
                write_only: true,
            },
        ];
        assert_eq!(scatter(&m, &descs, b"abcdefgh").unwrap(), 7);
        let mut b = [0u8; 4];
        m.read_slice(&mut b, GuestAddress(0x3000)).unwrap();
        assert_eq!(&b, b"defg");
        let mut out = [0u8; 5];
        assert_eq!(gather(&m, &descs, 2, &mut out).unwrap(), 5);
        assert_eq!(&out, b"cdefg");
        let mut big = [0u8; 10];
        assert_eq!(gather(&m, &descs, 6, &mut big).unwrap(), 1);
        // Writing from an offset: skips whole and partial buffers.
        assert_eq!(scatter_at(&m, &descs, 4, b"XY").unwrap(), 2);
        m.read_slice(&mut b, GuestAddress(0x3000)).unwrap();
        assert_eq!(&b, b"dXYg");
        assert_eq!(scatter_at(&m, &descs, 7, b"Z").unwrap(), 0);
    }

    #[test]
    fn valid_chain() {
        let m = mem();
        let d = first_chain(
            &m,
            &[raw(0x10_0000, 16, F_NEXT, 1), raw(0x20_0000, 1, F_WRITE, 0)],
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert!(!d[0].write_only && d[1].write_only);
        assert_eq!(total_len(&d), Some(17));
    }

    #[test]
    fn outside_memory_rejected() {
        let m = mem();
        let end = 0x100_0000u64;
        assert_eq!(
            first_chain(&m, &[raw(end - 8, 16, 0, 0)]),
            Err(DescriptorError::OutsideMemory)
        );
        assert_eq!(
            first_chain(&m, &[raw(u64::MAX - 4, 16, 0, 0)]),
            Err(DescriptorError::OutsideMemory)
        );
        assert_eq!(
            first_chain(&m, &[raw(0x10_0000, u32::MAX, 0, 0)]),
            Err(DescriptorError::OutsideMemory)
        );
    }

    #[test]
    fn zero_length_allowed_even_at_bad_address() {
        let m = mem();
        let d = first_chain(&m, &[raw(u64::MAX, 0, 0, 0)]).unwrap();
        assert_eq!(d[0].len, 0);
    }

    #[test]
    fn loops_and_bad_next_rejected() {
        let m = mem();
        // 0 -> 1 -> 0 -> ... : ends by TTL with NEXT still set.
        assert_eq!(
            first_chain(
                &m,
                &[raw(0x10_0000, 1, F_NEXT, 1), raw(0x10_0000, 1, F_NEXT, 0)]
            ),
            Err(DescriptorError::TooManyDescriptors)
        );
        // next index beyond the queue size.
        assert_eq!(
            first_chain(&m, &[raw(0x10_0000, 1, F_NEXT, 500)]),
            Err(DescriptorError::Truncated)
        );
    }

    #[test]
    fn huge_total_length_rejected() {
        let m = mem();
        // Two descriptors whose lengths sum beyond 4 GiB: virtio-queue stops, we report it.
        let r = first_chain(
            &m,
            &[raw(0, 0x8000_0000, F_NEXT, 1), raw(0, 0x8000_0000, 0, 0)],
        );
        assert_eq!(r, Err(DescriptorError::OutsideMemory));
    }

    #[test]
    fn indirect_table_outside_memory_is_truncated() {
        let m = mem();
        let r = first_chain(&m, &[raw(0x2000_0000, 32, F_INDIRECT, 0)]);
        assert!(matches!(
            r,
            Err(DescriptorError::Empty) | Err(DescriptorError::Truncated)
        ));
    }
}
