//! SNP attestation evidence: a report from /dev/sev-guest (`SNP_GET_REPORT`), or from the PSP
//! model's report service on vsock port 1026 when the launch selected the model.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

/// Size of an SNP ATTESTATION_REPORT.
pub const SNP_REPORT_LEN: usize = 1184;
/// The guest device.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";

/// Errors from obtaining a report.
#[derive(Debug, thiserror::Error)]
pub enum SnpReportError {
    /// /dev/sev-guest cannot be opened.
    #[error("cannot open /dev/sev-guest")]
    Open(#[source] io::Error),
    /// The ioctl failed; `exitinfo2` holds the firmware/VMM error codes.
    #[error("SNP_GET_REPORT failed (exitinfo2 {exitinfo2:#x})")]
    Ioctl {
        /// Firmware error (low 32 bits) and VMM error (high 32 bits).
        exitinfo2: u64,
        /// The kernel's reason.
        #[source]
        source: io::Error,
    },
    /// The firmware's MSG_REPORT_RSP status is not success.
    #[error("the SNP firmware refused the report request (status {0:#x})")]
    Status(u32),
    /// The response's report size is not 1184.
    #[error("the SNP report has an unexpected size")]
    Size,
    /// Talking to the PSP model service failed.
    #[error("cannot reach the PSP model report service")]
    ModelIo(#[source] io::Error),
}

/// Something that produces an SNP report binding 64 bytes of guest data.
pub trait ReportSource {
    /// The 1184-byte report with `report_data` in REPORT_DATA, requested at VMPL `vmpl`.
    fn report(&mut self, report_data: &[u8; 64], vmpl: u32) -> Result<Vec<u8>, SnpReportError>;
}

/// `struct snp_report_req` (linux/sev-guest.h).
#[repr(C)]
struct SnpReportReq {
    user_data: [u8; 64],
    vmpl: u32,
    rsvd: [u8; 28],
}
const _: () = assert!(std::mem::size_of::<SnpReportReq>() == 96);

/// `struct snp_report_resp` (linux/sev-guest.h): the firmware's MSG_REPORT_RSP.
#[repr(C)]
struct SnpReportResp {
    data: [u8; 4000],
}
const _: () = assert!(std::mem::size_of::<SnpReportResp>() == 4000);

/// `struct snp_guest_request_ioctl` (linux/sev-guest.h); `exitinfo2` is the union of
/// `{ u32 fw_error; u32 vmm_error; }`.
#[repr(C)]
struct SnpGuestRequestIoctl {
    msg_version: u8,
    req_data: u64,
    resp_data: u64,
    exitinfo2: u64,
}
const _: () = assert!(std::mem::size_of::<SnpGuestRequestIoctl>() == 32);

/// `SNP_GET_REPORT` = `_IOWR('S', 0x0, struct snp_guest_request_ioctl)`.
const SNP_GET_REPORT: libc::c_ulong = (3 << 30) | (32 << 16) | ((b'S' as libc::c_ulong) << 8);
/// MSG_REPORT_RSP header before the report: status, report_size, 24 reserved bytes.
const REPORT_RSP_HEADER: usize = 32;

/// Reports from the kernel's SEV guest driver.
#[derive(Debug, Default)]
pub struct SevGuestDevice;

impl ReportSource for SevGuestDevice {
    fn report(&mut self, report_data: &[u8; 64], vmpl: u32) -> Result<Vec<u8>, SnpReportError> {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(SEV_GUEST_DEVICE)
            .map_err(SnpReportError::Open)?;
        let req = SnpReportReq {
            user_data: *report_data,
            vmpl,
            rsvd: [0; 28],
        };
        let mut resp = Box::new(SnpReportResp { data: [0; 4000] });
        let mut ioc = SnpGuestRequestIoctl {
            msg_version: 1,
            req_data: &req as *const SnpReportReq as u64,
            resp_data: &mut *resp as *mut SnpReportResp as u64,
            exitinfo2: 0,
        };
        // SAFETY: `ioc` points at a request the kernel reads (96 bytes) and a response buffer
        // it writes (4000 bytes); all three live until the call returns.
        let ret = unsafe { libc::ioctl(dev.as_raw_fd(), SNP_GET_REPORT, &mut ioc) };
        if ret < 0 {
            return Err(SnpReportError::Ioctl {
                exitinfo2: ioc.exitinfo2,
                source: io::Error::last_os_error(),
            });
        }
        parse_report_response(&resp.data)
    }
}

/// Extracts the report from MSG_REPORT_RSP.
fn parse_report_response(data: &[u8]) -> Result<Vec<u8>, SnpReportError> {
    let word = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&data[at..at + 4]);
        u32::from_le_bytes(b)
    };
    let status = word(0);
    if status != 0 {
        return Err(SnpReportError::Status(status));
    }
    if usize::try_from(word(4)).ok() != Some(SNP_REPORT_LEN) {
        return Err(SnpReportError::Size);
    }
    Ok(data[REPORT_RSP_HEADER..REPORT_RSP_HEADER + SNP_REPORT_LEN].to_vec())
}

/// Reports from the PSP model: request `REPORT_DATA (64) ‖ u32 LE VMPL`, response
/// `u32 LE status ‖ report (1184)` (docs/interfaces.md, vsock port 1026). One connection per
/// request, made by `connect`.
pub struct PspModelReports<F> {
    connect: F,
}

impl<F> std::fmt::Debug for PspModelReports<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PspModelReports")
    }
}

impl<F, S> PspModelReports<F>
where
    F: FnMut() -> io::Result<S>,
    S: Read + Write,
{
    /// A source that opens a stream with `connect` for each report.
    pub fn new(connect: F) -> Self {
        PspModelReports { connect }
    }
}

impl<F, S> ReportSource for PspModelReports<F>
where
    F: FnMut() -> io::Result<S>,
    S: Read + Write,
{
    fn report(&mut self, report_data: &[u8; 64], vmpl: u32) -> Result<Vec<u8>, SnpReportError> {
        let mut stream = (self.connect)().map_err(SnpReportError::ModelIo)?;
        let mut request = report_data.to_vec();
        request.extend_from_slice(&vmpl.to_le_bytes());
        stream
            .write_all(&request)
            .map_err(SnpReportError::ModelIo)?;
        stream.flush().map_err(SnpReportError::ModelIo)?;
        let mut status = [0u8; 4];
        stream
            .read_exact(&mut status)
            .map_err(SnpReportError::ModelIo)?;
        let status = u32::from_le_bytes(status);
        if status != 0 {
            return Err(SnpReportError::Status(status));
        }
        let mut report = vec![0u8; SNP_REPORT_LEN];
        stream
            .read_exact(&mut report)
            .map_err(SnpReportError::ModelIo)?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::c_probe;
    use std::os::unix::net::UnixStream;

    #[test]
    fn layouts_match_linux_sev_guest_h() {
        let out = c_probe::run(
            &["sys/ioctl.h", "linux/sev-guest.h"],
            r#"printf("req=%zu\nreq_vmpl=%zu\nresp=%zu\nioc=%zu\nioc_req=%zu\nioc_resp=%zu\nioc_exit=%zu\nget_report=%lu\n",
                sizeof(struct snp_report_req), offsetof(struct snp_report_req, vmpl),
                sizeof(struct snp_report_resp), sizeof(struct snp_guest_request_ioctl),
                offsetof(struct snp_guest_request_ioctl, req_data),
                offsetof(struct snp_guest_request_ioctl, resp_data),
                offsetof(struct snp_guest_request_ioctl, exitinfo2),
                (unsigned long)SNP_GET_REPORT);"#,
        );
        let expected = [
            ("req", std::mem::size_of::<SnpReportReq>()),
            ("req_vmpl", std::mem::offset_of!(SnpReportReq, vmpl)),
            ("resp", std::mem::size_of::<SnpReportResp>()),
            ("ioc", std::mem::size_of::<SnpGuestRequestIoctl>()),
            (
                "ioc_req",
                std::mem::offset_of!(SnpGuestRequestIoctl, req_data),
            ),
            (
                "ioc_resp",
                std::mem::offset_of!(SnpGuestRequestIoctl, resp_data),
            ),
            (
                "ioc_exit",
                std::mem::offset_of!(SnpGuestRequestIoctl, exitinfo2),
            ),
            ("get_report", usize::try_from(SNP_GET_REPORT).unwrap()),
        ];
        let got = c_probe::values(&out);
        for ((name, want), (cname, cval)) in expected.iter().zip(&got) {
            assert_eq!(name, cname);
            assert_eq!(*want as u64, *cval, "{name}");
        }
        assert_eq!(got.len(), expected.len());
    }

    #[test]
    fn report_response_is_checked() {
        let mut rsp = vec![0u8; 4000];
        rsp[4..8].copy_from_slice(&1184u32.to_le_bytes());
        rsp[32] = 0x02;
        rsp[32 + 1183] = 0x7f;
        let report = parse_report_response(&rsp).unwrap();
        assert_eq!(report.len(), 1184);
        assert_eq!((report[0], report[1183]), (0x02, 0x7f));
        let mut bad_status = rsp.clone();
        bad_status[0] = 0x16;
        assert!(matches!(
            parse_report_response(&bad_status),
            Err(SnpReportError::Status(0x16))
        ));
        let mut bad_size = rsp;
        bad_size[4] = 0;
        assert!(matches!(
            parse_report_response(&bad_size),
            Err(SnpReportError::Size)
        ));
    }

    /// A fake model service: checks the request, answers with `status` and a report that
    /// echoes REPORT_DATA at its offset 0x50.
    fn serve(mut s: UnixStream, status: u32) -> std::thread::JoinHandle<(Vec<u8>, u32)> {
        std::thread::spawn(move || {
            let mut req = [0u8; 68];
            s.read_exact(&mut req).unwrap();
            let vmpl = u32::from_le_bytes(req[64..68].try_into().unwrap());
            s.write_all(&status.to_le_bytes()).unwrap();
            if status == 0 {
                let mut report = vec![0u8; SNP_REPORT_LEN];
                report[0x50..0x90].copy_from_slice(&req[..64]);
                s.write_all(&report).unwrap();
            }
            (req[..64].to_vec(), vmpl)
        })
    }

    #[test]
    fn psp_model_service_round_trip() {
        let (guest, model) = UnixStream::pair().unwrap();
        let server = serve(model, 0);
        let mut guest = Some(guest);
        let mut source = PspModelReports::new(move || {
            guest
                .take()
                .ok_or_else(|| io::Error::other("one connection only"))
        });
        let data = [0x5au8; 64];
        let report = source.report(&data, 0).unwrap();
        assert_eq!(&report[0x50..0x90], &data);
        assert_eq!(server.join().unwrap(), (data.to_vec(), 0));
    }

    #[test]
    fn psp_model_errors_are_reported() {
        let (guest, model) = UnixStream::pair().unwrap();
        let server = serve(model, 0x16);
        let mut guest = Some(guest);
        let mut source = PspModelReports::new(move || {
            guest
                .take()
                .ok_or_else(|| io::Error::other("one connection only"))
        });
        assert!(matches!(
            source.report(&[0; 64], 1),
            Err(SnpReportError::Status(0x16))
        ));
        assert_eq!(server.join().unwrap().1, 1);
        let (guest, model) = UnixStream::pair().unwrap();
        drop(model);
        let mut guest = Some(guest);
        let mut source = PspModelReports::new(move || {
            guest
                .take()
                .ok_or_else(|| io::Error::other("one connection only"))
        });
        assert!(matches!(
            source.report(&[0; 64], 0),
            Err(SnpReportError::ModelIo(_))
        ));
    }
}
