//! vsock port 1026 in PSP-model SNP launches: the guest init asks the model for attestation
//! reports (docs/interfaces.md: request = 64-byte REPORT_DATA ‖ u32 LE VMPL, response =
//! u32 LE status ‖ 1184-byte report). Only registered in model mode; hardware SNP guests use
//! /dev/sev-guest.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};

use krun_psp_model::snp_report::REPORT_REQUEST_LEN;
use krun_psp_model::SnpGuest;

use crate::devices::virtio::vsock::backend::{GuestPortHandler, HostStream};

/// Most requests one connection may make (the init needs one or two).
const MAX_REQUESTS_PER_CONNECTION: usize = 16;

/// Serves report requests once the launch has finished the guest context.
#[derive(Debug, Clone, Default)]
pub struct ReportService {
    guest: Arc<OnceLock<SnpGuest>>,
}

impl ReportService {
    /// A service whose guest context is set later with [`ReportService::slot`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Where the launch stores the finished SNP guest context.
    pub fn slot(&self) -> Arc<OnceLock<SnpGuest>> {
        self.guest.clone()
    }
}

fn serve(guest: &OnceLock<SnpGuest>, mut stream: UnixStream) {
    let Some(guest) = guest.get() else {
        log::error!("report request before the SNP launch finished");
        return;
    };
    let mut request = [0u8; REPORT_REQUEST_LEN];
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        if stream.read_exact(&mut request).is_err() {
            return;
        }
        // Progress lines for the boot trace (`ci/bench-boot.sh`); REPORT_DATA is not logged.
        log::info!("PSP model: SNP report requested");
        let response = guest.report_service_response(&request);
        log::info!("PSP model: SNP report signed");
        if stream.write_all(&response).is_err() {
            return;
        }
    }
}

impl GuestPortHandler for ReportService {
    fn connect(&self, _guest_port: u32) -> std::io::Result<HostStream> {
        let (ours, theirs) = UnixStream::pair()?;
        let guest = self.guest.clone();
        crate::vmm::seccomp::spawn(
            crate::vmm::seccomp::ThreadKind::Service,
            "snp-report",
            move || serve(&guest, theirs),
        )?;
        Ok(HostStream::Unix(ours))
    }
}
