//! The raw image file behind a block device.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vm_memory::{Bytes, GuestMemory};

use super::request::{Request, RequestType};
use super::{
    BlockError, DISK_ID_LEN, SECTOR_SHIFT, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};

/// An open raw image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    sectors: u64,
    read_only: bool,
    id: [u8; DISK_ID_LEN],
}

impl DiskFile {
    /// Opens `path`; a read-only disk is opened without write access.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(BlockError::Open)?;
        let meta = file.metadata().map_err(BlockError::Metadata)?;
        // The image size, not metadata size: works for regular files and block devices.
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(BlockError::Metadata)?;
        let mut id = [0u8; DISK_ID_LEN];
        let text = format!("{:x}{:x}{:x}", meta.dev(), meta.rdev(), meta.ino());
        for (dst, src) in id.iter_mut().zip(text.bytes()) {
            *dst = src;
        }
        Ok(DiskFile {
            file,
            sectors: size >> SECTOR_SHIFT,
            read_only,
            id,
        })
    }

    /// Capacity in 512-byte sectors (a trailing partial sector is not exposed).
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the disk is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Executes `req`; returns the status byte and how many data bytes were written into guest
    /// memory.
    pub fn execute<M: GuestMemory>(&self, mem: &M, req: &Request) -> (u8, u32) {
        match self.try_execute(mem, req) {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(status) => (status, 0),
        }
    }

    fn try_execute<M: GuestMemory>(&self, mem: &M, req: &Request) -> Result<u32, u8> {
        let io_err = |e: &dyn std::fmt::Display| {
            log::warn!(
                "virtio-blk: {:?} at sector {} failed: {e}",
                req.kind,
                req.sector
            );
            VIRTIO_BLK_S_IOERR
        };
        match req.kind {
            RequestType::In | RequestType::Out => {
                if req.kind == RequestType::Out && self.read_only {
                    return Err(VIRTIO_BLK_S_IOERR);
                }
                let offset = req.sector << SECTOR_SHIFT; // parse bounded sector to the disk
                let mut f = &self.file;
                f.seek(SeekFrom::Start(offset)).map_err(|e| io_err(&e))?;
                for d in &req.data {
                    let len = usize::try_from(d.len).map_err(|e| io_err(&e))?;
                    if req.kind == RequestType::In {
                        mem.read_exact_volatile_from(d.addr, &mut f, len)
                            .map_err(|e| io_err(&e))?;
                    } else {
                        mem.write_all_volatile_to(d.addr, &mut f, len)
                            .map_err(|e| io_err(&e))?;
                    }
                }
                Ok(if req.kind == RequestType::In {
                    req.data_len
                } else {
                    0
                })
            }
            RequestType::Flush => {
                if !self.read_only {
                    self.file.sync_all().map_err(|e| io_err(&e))?;
                }
                Ok(0)
            }
            RequestType::GetId => {
                let mut remaining: &[u8] = &self.id;
                let mut written = 0u32;
                for d in &req.data {
                    let n = remaining
                        .len()
                        .min(usize::try_from(d.len).unwrap_or(usize::MAX));
                    mem.write_slice(&remaining[..n], d.addr)
                        .map_err(|e| io_err(&e))?;
                    remaining = &remaining[n..];
                    written += u32::try_from(n).unwrap_or(0);
                }
                Ok(written)
            }
            RequestType::Unsupported(_) => Err(VIRTIO_BLK_S_UNSUPP),
        }
    }
}
