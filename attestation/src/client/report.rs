//! Report sources for [`super::snp::attest`]: the guest's `/dev/sev-guest`, and the PSP
//! model's report service (vsock port 1026 in model mode, see docs/interfaces.md).

use std::io::{self, Read, Write};

/// Size of an SNP attestation report.
pub const REPORT_LEN: usize = 0x4a0;

/// Errors getting a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot open /dev/sev-guest")]
    Open(#[source] io::Error),
    #[error("SNP_GET_REPORT failed")]
    Firmware(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("report service I/O failed")]
    Io(#[source] io::Error),
    #[error("report service refused the request")]
    Status(u32),
    #[error("report has the wrong length")]
    Length,
}

/// A VMPL-0 report with `report_data` from `/dev/sev-guest` (message version 1).
pub fn dev_sev_guest(report_data: [u8; 64]) -> Result<Vec<u8>, ReportError> {
    let mut fw = sev::firmware::guest::Firmware::open().map_err(ReportError::Open)?;
    let report = fw
        .get_report(Some(1), Some(report_data), Some(0))
        .map_err(|e| ReportError::Firmware(Box::new(e)))?;
    if report.len() != REPORT_LEN {
        return Err(ReportError::Length);
    }
    Ok(report)
}

/// A report from the PSP model's service over `stream`:
/// request `REPORT_DATA[64] ‖ u32 LE VMPL`, answer `u32 LE status ‖ report[1184]`.
pub fn psp_model<S: Read + Write>(
    stream: &mut S,
    report_data: [u8; 64],
    vmpl: u32,
) -> Result<Vec<u8>, ReportError> {
    let mut req = [0u8; 68];
    req[..64].copy_from_slice(&report_data);
    req[64..].copy_from_slice(&vmpl.to_le_bytes());
    stream.write_all(&req).map_err(ReportError::Io)?;
    stream.flush().map_err(ReportError::Io)?;
    let mut status = [0u8; 4];
    stream.read_exact(&mut status).map_err(ReportError::Io)?;
    let status = u32::from_le_bytes(status);
    if status != 0 {
        return Err(ReportError::Status(status));
    }
    let mut report = vec![0u8; REPORT_LEN];
    stream.read_exact(&mut report).map_err(ReportError::Io)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Service {
        answer: io::Cursor<Vec<u8>>,
        request: Vec<u8>,
    }

    impl Read for Service {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.answer.read(buf)
        }
    }

    impl Write for Service {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.request.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn psp_model_wire_format() {
        let mut answer = 0u32.to_le_bytes().to_vec();
        answer.extend(vec![0xabu8; REPORT_LEN]);
        let mut s = Service {
            answer: io::Cursor::new(answer),
            request: vec![],
        };
        let r = psp_model(&mut s, [7; 64], 0).unwrap();
        assert_eq!(r, vec![0xab; REPORT_LEN]);
        assert_eq!(&s.request[..64], &[7; 64]);
        assert_eq!(&s.request[64..], &[0, 0, 0, 0]);

        let mut s = Service {
            answer: io::Cursor::new(0x16u32.to_le_bytes().to_vec()),
            request: vec![],
        };
        assert!(matches!(
            psp_model(&mut s, [0; 64], 4),
            Err(ReportError::Status(0x16))
        ));
        let mut short = 0u32.to_le_bytes().to_vec();
        short.extend([0u8; 10]);
        let mut s = Service {
            answer: io::Cursor::new(short),
            request: vec![],
        };
        assert!(matches!(
            psp_model(&mut s, [0; 64], 0),
            Err(ReportError::Io(_))
        ));
    }
}
