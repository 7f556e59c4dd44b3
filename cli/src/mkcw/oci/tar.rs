//! A small deterministic tar writer (POSIX ustar, with a PAX `size` record for members of
//! 8 GiB and more): every entry is owned by 0:0 with no user or group name and the same fixed
//! mtime, so the same inputs always give the same bytes and the same layer digest.

use std::io::{self, Read, Write};

/// Tar block size.
const BLOCK: usize = 512;
/// Largest size the 11 octal digits of a ustar size field hold (8 GiB - 1).
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;
/// The mtime of every entry (the epoch; fixed so that layers are reproducible).
pub const MTIME: u64 = 0;

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    PaxHeader,
}

/// Writes a tar stream; entries go out in the order they are added.
#[derive(Debug)]
pub struct TarWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out, written: 0 }
    }

    /// A directory (`name` ends with `/`).
    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.header(name, mode, 0, Kind::Dir)
    }

    /// A regular file with `data` as its contents.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.file_from(name, mode, data.len() as u64, &mut &data[..])
    }

    /// A regular file of `size` bytes read from `data`, which must yield exactly `size`
    /// bytes (an error otherwise: the header already promised them).
    pub fn file_from(
        &mut self,
        name: &str,
        mode: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        self.header(name, mode, size, Kind::File)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        self.written += copied;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{name}: {copied} bytes read where {size} were expected (did the file change?)"
                ),
            ));
        }
        // A reader that still has bytes left changed too.
        if data.read(&mut [0u8; 1])? != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}: longer than the {size} bytes expected (did the file change?)"),
            ));
        }
        self.pad()
    }

    /// A regular file of `size` bytes that `fill` writes; an error when it writes another
    /// number of bytes.
    pub fn file_with(
        &mut self,
        name: &str,
        mode: u32,
        size: u64,
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        self.header(name, mode, size, Kind::File)?;
        let mut counted = Counter {
            out: &mut self.out,
            count: 0,
        };
        fill(&mut counted)?;
        let count = counted.count;
        self.written += count;
        if count != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}: {count} bytes written where {size} were expected (did an input change?)"),
            ));
        }
        self.pad()
    }

    /// Ends the archive (two zero blocks) and returns the writer and the bytes written.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, kind: Kind) -> io::Result<()> {
        if size > USTAR_MAX_SIZE {
            // POSIX pax: an extended header carrying the size; the ustar field is then 0.
            let record = pax_record("size", &size.to_string());
            self.header(
                "PaxHeaders/size",
                0o644,
                record.len() as u64,
                Kind::PaxHeader,
            )?;
            self.write_all(record.as_bytes())?;
            self.pad()?;
        }
        let block = ustar_header(name, mode, size, kind)?;
        self.write_all(&block)
    }

    fn pad(&mut self) -> io::Result<()> {
        // Below BLOCK, so it fits.
        let rem = usize::try_from(self.written % BLOCK as u64).unwrap_or(0);
        if rem != 0 {
            self.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Counts what passes through to `out`.
struct Counter<'a, W: Write> {
    out: &'a mut W,
    count: u64,
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// One pax record, `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}")
}

/// The 512-byte ustar header; `size` above the ustar maximum is written as 0 (a pax header
/// before it carries the real size).
fn ustar_header(name: &str, mode: u32, size: u64, kind: Kind) -> io::Result<[u8; BLOCK]> {
    if name.len() > 100 || name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tar member name {name:?} must be 1 to 100 bytes"),
        ));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(
        &mut h[124..136],
        if size > USTAR_MAX_SIZE { 0 } else { size },
    );
    octal(&mut h[136..148], MTIME);
    h[156] = match kind {
        Kind::File => b'0',
        Kind::Dir => b'5',
        Kind::PaxHeader => b'x',
    };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // devmajor and devminor are zero-filled octal like GNU and Go write them.
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let field = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(field.as_bytes());
    Ok(h)
}

/// Zero-padded octal with a NUL terminator, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// A tar member as [`list`] reads it back (tests).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub mode: u32,
    pub is_dir: bool,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub data: Vec<u8>,
}

/// Reads a tar made by [`TarWriter`] back, checking every header checksum (tests).
#[cfg(test)]
pub fn list(bytes: &[u8]) -> Vec<Member> {
    fn num(field: &[u8]) -> u64 {
        let text = std::str::from_utf8(field).unwrap();
        u64::from_str_radix(text.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap()
    }
    let mut out = Vec::new();
    let mut at = 0;
    let mut pax_size = None;
    loop {
        let h = &bytes[at..at + BLOCK];
        if h.iter().all(|&b| b == 0) {
            assert!(bytes[at + BLOCK..].iter().all(|&b| b == 0));
            break;
        }
        let mut blank = h.to_vec();
        blank[148..156].fill(b' ');
        let sum: u64 = blank.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(num(&h[148..155]), sum, "checksum at {at}");
        let name_len = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8(h[..name_len].to_vec()).unwrap();
        let size = pax_size.take().unwrap_or_else(|| num(&h[124..136]));
        let start = at + BLOCK;
        let data = bytes[start..start + usize::try_from(size).unwrap()].to_vec();
        at = start + usize::try_from(size.div_ceil(BLOCK as u64)).unwrap() * BLOCK;
        if h[156] == b'x' {
            let text = String::from_utf8(data).unwrap();
            let value = text.split_once("size=").unwrap().1.trim_end();
            pax_size = Some(value.parse().unwrap());
            continue;
        }
        out.push(Member {
            name,
            mode: u32::try_from(num(&h[100..108])).unwrap(),
            is_dir: h[156] == b'5',
            uid: num(&h[108..116]),
            gid: num(&h[116..124]),
            mtime: num(&h[136..148]),
            data,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn writes_members_that_read_back() {
        let mut t = TarWriter::new(Vec::new());
        t.dir("tmp/", 0o1777).unwrap();
        t.file("a", 0o600, b"hello").unwrap();
        t.file("empty", 0o755, b"").unwrap();
        let (bytes, n) = t.finish().unwrap();
        assert_eq!(n, bytes.len() as u64);
        assert_eq!(bytes.len() % BLOCK, 0);
        // Header + header + 1 data block + header + 2 end blocks.
        assert_eq!(bytes.len(), 6 * BLOCK);
        let m = list(&bytes);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].name.as_str(), m[0].mode, m[0].is_dir),
            ("tmp/", 0o1777, true)
        );
        assert_eq!(
            (m[1].name.as_str(), m[1].mode, &m[1].data[..]),
            ("a", 0o600, &b"hello"[..])
        );
        assert_eq!((m[2].name.as_str(), m[2].mode), ("empty", 0o755));
        assert!(m
            .iter()
            .all(|m| m.uid == 0 && m.gid == 0 && m.mtime == MTIME));
    }

    #[test]
    fn refuses_a_reader_that_does_not_match_the_size() {
        let mut t = TarWriter::new(Vec::new());
        let err = t
            .file_from("short", 0o600, 10, &mut &b"abc"[..])
            .unwrap_err();
        assert!(err.to_string().contains("3 bytes read where 10"), "{err}");
        let mut t = TarWriter::new(Vec::new());
        let err = t.file_from("long", 0o600, 2, &mut &b"abc"[..]).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn sizes_of_8_gib_and_more_get_a_pax_size_record() {
        // Only the header path: the data would be 8 GiB.
        let mut t = TarWriter::new(Vec::new());
        t.header("disk.img", 0o600, USTAR_MAX_SIZE + 1, Kind::File)
            .unwrap();
        let bytes = t.out;
        assert_eq!(bytes.len(), 3 * BLOCK);
        assert_eq!(bytes[156], b'x');
        let record = std::str::from_utf8(&bytes[BLOCK..2 * BLOCK]).unwrap();
        let record = record.trim_end_matches('\0');
        assert_eq!(record, "19 size=8589934592\n");
        assert_eq!(record.len(), 19);
        // The ustar size field of the real header is 0.
        assert_eq!(&bytes[2 * BLOCK + 124..2 * BLOCK + 135], b"00000000000");
        // Just under the limit: no pax header.
        let mut t = TarWriter::new(Vec::new());
        t.header("disk.img", 0o600, USTAR_MAX_SIZE, Kind::File)
            .unwrap();
        assert_eq!(t.out.len(), BLOCK);
        assert_eq!(&t.out[124..135], b"77777777777");
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for value in ["9", "99999999", "123456789012345678"] {
            let r = pax_record("size", value);
            let (len, _) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{r:?}");
        }
    }
}
