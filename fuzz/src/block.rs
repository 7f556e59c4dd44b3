//! virtio-blk: `Request::parse` on the first chain (with the invariants a parsed request must
//! hold), then `process_queue` over the whole queue against a small disk image, read-only or
//! writable.

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use krun_sev::devices::virtio::block::backend::DiskFile;
use krun_sev::devices::virtio::block::device::process_queue;
use krun_sev::devices::virtio::block::request::{Request, RequestType};
use krun_sev::devices::virtio::block::SECTOR_SIZE;
use krun_sev::devices::virtio::interrupt::Interrupt;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::queue::{Mem, QueueInput};

/// Disk size: small, so that sector ranges reach past the end often.
pub const DISK_SECTORS: u64 = 64;

#[derive(Debug, Arbitrary)]
pub struct Input {
    pub queue: QueueInput,
    pub read_only: bool,
    /// A request header written where descriptor 0 points (after the queue's guest bytes),
    /// so that types and sectors near the end of the disk are common.
    pub header: Option<Header>,
}

#[derive(Debug, Arbitrary)]
pub struct Header {
    pub kind: Kind,
    pub sector: Sector,
}

#[derive(Debug, Arbitrary)]
pub enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Other(u32),
}

#[derive(Debug, Arbitrary)]
pub enum Sector {
    /// `n % 80`: around the end of the 64-sector disk.
    Near(u8),
    Raw(u64),
}

impl Header {
    fn bytes(&self) -> [u8; 16] {
        let kind: u32 = match self.kind {
            Kind::In => 0,
            Kind::Out => 1,
            Kind::Flush => 4,
            Kind::GetId => 8,
            Kind::Other(k) => k,
        };
        let sector = match self.sector {
            Sector::Near(n) => u64::from(n % 80),
            Sector::Raw(s) => s,
        };
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&kind.to_le_bytes());
        b[8..].copy_from_slice(&sector.to_le_bytes());
        b
    }
}

struct Disks {
    rw: DiskFile,
    ro: DiskFile,
    ro_path: PathBuf,
}

/// Two images per process (tmpfs when there is one, so flushes cost nothing).
fn disks() -> &'static Disks {
    static DISKS: OnceLock<Disks> = OnceLock::new();
    DISKS.get_or_init(|| {
        let dir = ["/dev/shm", "/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let image = |name: &str| {
            let path = dir.join(format!("krun-fuzz-{}-{name}.img", std::process::id()));
            let bytes: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE).map(|i| i as u8).collect();
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            path
        };
        let open = |path: &PathBuf, ro| {
            DiskFile::open(path, ro).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let (rw_path, ro_path) = (image("rw"), image("ro"));
        let disks = Disks {
            rw: open(&rw_path, false),
            ro: open(&ro_path, true),
            ro_path,
        };
        // The writable image stays open; its name is not needed any more.
        let _ = std::fs::remove_file(rw_path);
        disks
    })
}

pub fn run(input: &Input) {
    let mem = input.queue.memory();
    if let Some(h) = &input.header {
        // Outside RAM the write fails, as a guest's would.
        let _ = mem.write_slice(
            &h.bytes(),
            GuestAddress(input.queue.descs[0].addr.resolve()),
        );
    }
    check_first_request(&mem, &input.queue);
    let Some(mut queue) = input.queue.queue(&mem) else {
        return;
    };

    let disks = disks();
    let disk = if input.read_only {
        &disks.ro
    } else {
        &disks.rw
    };
    assert_eq!(disk.sectors(), DISK_SECTORS);
    let ro_before = std::fs::read(&disks.ro_path).ok();
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    // Errors mean broken rings (the device then needs a reset); only panics are bugs.
    let _ = process_queue(&mem, &mut queue, disk, &Interrupt::new(irq));
    assert_eq!(
        std::fs::read(&disks.ro_path).ok(),
        ro_before,
        "the read-only image changed"
    );
}

/// A request the parser accepts lies inside guest memory and the disk, and its buffers point
/// the way its type needs.
fn check_first_request(mem: &Mem, input: &QueueInput) {
    let Some(mut q) = input.queue(mem) else {
        return;
    };
    let max = usize::from(q.size());
    let Ok(mut chains) = q.iter(mem) else {
        return;
    };
    let Some(chain) = chains.next() else {
        return;
    };
    let Ok(req) = Request::parse(chain, max, DISK_SECTORS) else {
        return;
    };
    let total: u64 = req.data.iter().map(|d| u64::from(d.len)).sum();
    assert_eq!(total, u64::from(req.data_len), "{req:?}");
    assert!(
        req.data.len() + 2 <= max,
        "more descriptors than the queue: {req:?}"
    );
    for d in &req.data {
        assert!(
            mem.check_range(d.addr, d.len as usize),
            "data buffer outside guest memory: {req:?}"
        );
    }
    assert!(mem.address_in_range(req.status_addr), "{req:?}");
    match req.kind {
        RequestType::In | RequestType::GetId => {
            assert!(req.data.iter().all(|d| d.write_only), "{req:?}")
        }
        RequestType::Out => assert!(req.data.iter().all(|d| !d.write_only), "{req:?}"),
        RequestType::Flush | RequestType::Unsupported(_) => {}
    }
    if matches!(req.kind, RequestType::In | RequestType::Out) {
        let len = u64::from(req.data_len);
        assert_eq!(len % SECTOR_SIZE, 0, "{req:?}");
        assert!(req.sector + len / SECTOR_SIZE <= DISK_SECTORS, "{req:?}");
    }
}
