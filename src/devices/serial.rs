//! A write-only 8250 UART at COM1, used only as a sink for early kernel logs.
//!
//! The guest sees an always-empty transmitter and no modem; bytes are collected into lines
//! and logged at debug level. Nothing from the host is ever fed back.

use super::BusDevice;

const THR: u64 = 0;
const LSR: u64 = 5;
/// Transmitter holding register empty and transmitter empty.
const LSR_THR_EMPTY: u8 = 0x60;
const MAX_LINE: usize = 512;

/// The serial log sink.
#[derive(Debug, Default)]
pub struct SerialSink {
    line: Vec<u8>,
    lcr_dlab: bool,
}

impl SerialSink {
    /// A sink with an empty line buffer.
    pub fn new() -> Self {
        Self::default()
    }

    fn flush_line(&mut self) {
        if !self.line.is_empty() {
            log::debug!("guest serial: {}", String::from_utf8_lossy(&self.line));
            self.line.clear();
        }
    }

    /// Lines collected so far that were not yet logged (for tests).
    pub fn pending(&self) -> &[u8] {
        &self.line
    }
}

impl BusDevice for SerialSink {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == LSR {
            if let Some(b) = data.first_mut() {
                *b = LSR_THR_EMPTY;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else { return };
        match offset {
            THR if !self.lcr_dlab => {
                if byte == b'\n' || self.line.len() >= MAX_LINE {
                    self.flush_line();
                }
                if byte != b'\n' && byte != b'\r' {
                    self.line.push(byte);
                }
            }
            // Line control register: bit 7 switches offsets 0/1 to the divisor latch.
            3 => self.lcr_dlab = byte & 0x80 != 0,
            _ => {}
        }
    }
}

impl Drop for SerialSink {
    fn drop(&mut self) {
        self.flush_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_lines_and_reports_empty_transmitter() {
        let mut s = SerialSink::new();
        let mut lsr = [0u8; 1];
        s.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x20, 0x20);
        for b in b"hi\r\n" {
            s.write(THR, &[*b]);
        }
        assert!(s.pending().is_empty());
        s.write(THR, b"x");
        assert_eq!(s.pending(), b"x");
        s.write(3, &[0x80]);
        s.write(THR, &[0x01]); // divisor latch, not data
        assert_eq!(s.pending(), b"x");
        s.write(THR, &[]);
        for _ in 0..2000 {
            s.write(3, &[0x03]);
            s.write(THR, b"y");
        }
        assert!(s.pending().len() <= MAX_LINE);
    }
}
