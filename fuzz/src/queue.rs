//! Guest memory and a split virtqueue built from fuzzer input, with `virtio-queue`'s mock
//! rings (as in the library's unit tests).

use arbitrary::Arbitrary;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The guest memory type the library's VMM uses.
pub type Mem = GuestMemoryMmap<()>;

/// Low RAM: the rings at 0, guest-controlled bytes from [`DATA_LOW`].
pub const LOW: (u64, u64) = (0, 0x10_0000);
/// High RAM after a hole, so addresses can fall into the hole or past the end.
pub const HIGH: (u64, u64) = (0x20_0000, 0x10_0000);
/// Where guest-controlled bytes start in low RAM (the rings of at most 32 entries are below).
pub const DATA_LOW: u64 = 0x1_0000;
/// At most this many guest-controlled bytes per region.
const MAX_BYTES: usize = 0x1_0000;

/// A descriptor address: mostly inside RAM, sometimes anything.
#[derive(Debug, Arbitrary)]
pub enum Addr {
    Low(u32),
    High(u32),
    Raw(u64),
}

impl Addr {
    pub fn resolve(&self) -> u64 {
        match self {
            Addr::Low(o) => DATA_LOW + u64::from(*o) % (LOW.1 - DATA_LOW),
            Addr::High(o) => HIGH.0 + u64::from(*o) % HIGH.1,
            Addr::Raw(a) => *a,
        }
    }
}

/// A descriptor length: small, whole sectors, or anything.
#[derive(Debug, Arbitrary)]
pub enum Len {
    Small(u8),
    Sectors(u8),
    Raw(u32),
}

impl Len {
    fn resolve(&self) -> u32 {
        match self {
            Len::Small(n) => u32::from(*n),
            Len::Sectors(n) => u32::from(*n) * 512,
            Len::Raw(n) => *n,
        }
    }
}

/// Where a descriptor's `next` points: mostly the following entry, so that random inputs
/// form chains often.
#[derive(Debug, Arbitrary)]
pub enum Next {
    Following,
    Any(u8),
}

/// One descriptor table entry.
#[derive(Debug, Arbitrary)]
pub struct Desc {
    pub addr: Addr,
    pub len: Len,
    /// Bit 0: NEXT, bit 1: WRITE; INDIRECT when bits 2-4 are all set (rarer, since an
    /// indirect flag makes most chains invalid).
    pub flags: u8,
    pub next: Next,
}

impl Desc {
    fn raw(&self, index: u16) -> RawDescriptor {
        let mut flags = u16::from(self.flags & 0x3);
        if self.flags & 0x1c == 0x1c {
            flags |= 0x4;
        }
        let next = match self.next {
            Next::Following => index.wrapping_add(1),
            Next::Any(n) => u16::from(n),
        };
        RawDescriptor::from(SplitDescriptor::new(
            self.addr.resolve(),
            self.len.resolve(),
            flags,
            next,
        ))
    }
}

/// Values from 0xf000 up are taken as they are (heads outside the table, indexes far ahead);
/// below that, avail ring entries are reduced to heads inside the table.
const WILD: u16 = 0xf000;

/// A queue as a (possibly malicious) driver leaves it.
#[derive(Debug, Arbitrary)]
pub struct QueueInput {
    /// Queue size is `1 << (size_shift % 6)`: 1 to 32.
    pub size_shift: u8,
    /// Heads for the available ring (see [`WILD`]); the first `avail_count % 5` are
    /// published.
    pub avail: [u16; 4],
    pub avail_count: u8,
    /// The available index the driver claims: the number of heads published, or the low 12
    /// bits of this value when it is at least [`WILD`].
    pub avail_idx: u16,
    /// The first descriptor table entries (fixed-size: `arbitrary` makes vectors short).
    pub descs: [Desc; 8],
    pub event_idx: bool,
    /// Guest memory contents from [`DATA_LOW`] and from the start of [`HIGH`] (headers,
    /// indirect tables, payloads).
    pub low_bytes: Vec<u8>,
    pub high_bytes: Vec<u8>,
}

impl QueueInput {
    pub fn size(&self) -> u16 {
        1 << (self.size_shift % 6)
    }

    /// Fresh guest memory holding the input's bytes.
    pub fn memory(&self) -> Mem {
        let mem = memory();
        let cap = |b: &[u8]| b[..b.len().min(MAX_BYTES)].to_vec();
        // Both ranges lie inside RAM, so the writes cannot fail.
        let _ = mem.write_slice(&cap(&self.low_bytes), GuestAddress(DATA_LOW));
        let _ = mem.write_slice(&cap(&self.high_bytes), GuestAddress(HIGH.0));
        mem
    }

    /// The rings at guest address 0, filled from the input; `None` if the mock refuses them.
    pub fn queue(&self, mem: &Mem) -> Option<Queue> {
        let size = self.size();
        let vq = MockSplitQueue::create(mem, GuestAddress(0), size);
        for (i, d) in (0..size).zip(&self.descs) {
            vq.desc_table().store(i, d.raw(i)).ok()?;
        }
        let mut published = 0u16;
        let count = usize::from(self.avail_count % 5);
        for (i, head) in (0..usize::from(size)).zip(&self.avail[..count]) {
            let head = if *head >= WILD { *head } else { *head % size };
            vq.avail().ring().ref_at(i).ok()?.store(head);
            published += 1;
        }
        let idx = if self.avail_idx >= WILD {
            self.avail_idx & 0x0fff
        } else {
            published
        };
        vq.avail().idx().store(idx);
        let mut q: Queue = vq.create_queue().ok()?;
        q.set_event_idx(self.event_idx);
        Some(q)
    }
}

/// Empty guest memory with the [`LOW`] and [`HIGH`] regions.
pub fn memory() -> Mem {
    let ranges = [
        (GuestAddress(LOW.0), LOW.1 as usize),
        (GuestAddress(HIGH.0), HIGH.1 as usize),
    ];
    match GuestMemoryMmap::from_ranges(&ranges) {
        Ok(m) => m,
        // Only fails when the host is out of memory: nothing to fuzz then.
        Err(e) => panic!("cannot map fuzzing guest memory: {e}"),
    }
}
