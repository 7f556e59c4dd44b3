//! SEV and SEV-ES launches made by the PSP model for `broker-check --tee sev|sev-es`
//! (reference protocol): broker-check is the host. It takes the LAUNCH_START parameters from
//! `/auth`, launches a guest in the model, sends LAUNCH_MEASURE to `/attest` and injects the
//! LAUNCH_SECRET packet from `/key` into the model guest, which checks its MAC and decrypts it.
//! The guest is broker-check's own page (plus one VMSA for SEV-ES), or with `--bundle` the
//! launch of the bundle, its measured bytes replayed in the order the library issues them.
//! SEV API 55766: LAUNCH_START (§6.2), LAUNCH_MEASURE (§6.5), LAUNCH_SECRET (§6.6).

use krun_attestation::reference::{self, SevBuild, SevMeasurement, SevSecret, TeePubKey};
use krun_attestation::secret_table;
use krun_psp_model::{OwnerSession, SevGuest, SevMode};
use krun_sev::tee::dump::Update;
use sha2::Digest as _;

use super::{BrokerCheckError, Ctx, Observed, Sent, Session, Step, TeeArg};

/// The guest memory broker-check's own launch measures (LAUNCH_UPDATE_DATA).
pub const LAUNCH_DATA: [u8; 4096] = [0x42; 4096];
/// Another launch's memory (the `wrong-measurement` case and the other workload).
pub const OTHER_DATA: [u8; 4096] = [0x24; 4096];
/// The one vCPU's VMSA of broker-check's own SEV-ES launch (LAUNCH_UPDATE_VMSA).
pub const VMSA: [u8; 4096] = [0x17; 4096];

/// The launch digest of broker-check's own launch with `data`: SHA-256 over everything
/// measured, the page and, for SEV-ES, the [`VMSA`].
pub fn digest(mode: SevMode, data: &[u8]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(data);
    if mode == SevMode::SevEs {
        h.update(VMSA);
    }
    h.finalize().into()
}

/// SEV policy bit 0: NODBG (debugging disallowed).
pub const POLICY_NODBG: u32 = 1;
/// SEV policy bit 1: NOKS (no key sharing with other guests).
pub const POLICY_NOKS: u32 = 2;
/// SEV policy bit 2: ES (the guest must be SEV-ES).
pub const POLICY_ES: u32 = 4;
/// The policy broker-check registers: NODBG, NOKS, NOSEND, DOMAIN, SEV, and ES for SEV-ES
/// (what `krun-sev mkcw --register` sends: 0x3f, or 0x3b for plain SEV).
pub fn registered_policy(mode: SevMode) -> u32 {
    match mode {
        SevMode::SevEs => 0x3f,
        SevMode::Sev => 0x3f & !POLICY_ES,
    }
}

/// A bundle launch: its measured host.json, the launch updates with their bytes, its digest.
#[derive(Debug)]
pub struct SevImage {
    pub host_json: Vec<u8>,
    pub updates: Vec<Update>,
    pub digest: [u8; 32],
}

/// What a launch measures.
#[derive(Clone, Copy)]
pub enum Memory<'a> {
    /// The workload's own launch: the bundle's bound launch with --bundle, else
    /// [`LAUNCH_DATA`].
    Own,
    /// One page (and the [`VMSA`] under SEV-ES).
    Page(&'a [u8]),
    /// A bundle launch.
    Image(&'a SevImage),
}

/// How a case launches the guest.
pub struct Launch<'a> {
    /// The policy word; `None`: the one the broker chose.
    pub policy: Option<u32>,
    /// Whether LAUNCH_START gets the broker's owner session (its TEK/TIK); without it the
    /// PSP makes random ones.
    pub owner: bool,
    /// The launch type; `None`: --tee's.
    pub mode: Option<SevMode>,
    pub memory: Memory<'a>,
    /// A plain SEV launch measures the VMSA pages as data (the same bytes, so the same
    /// digest as the SEV-ES launch).
    pub vmsas_as_data: bool,
}

/// The genuine launch.
pub const GENUINE: Launch<'static> = Launch {
    policy: None,
    owner: true,
    mode: None,
    memory: Memory::Own,
    vmsas_as_data: false,
};

fn model_refused(e: impl std::fmt::Display) -> Observed {
    Observed::Skipped(format!("the PSP model refused the launch: {e}"))
}

/// Measures one VMSA page: LAUNCH_UPDATE_VMSA under SEV-ES; under plain SEV, as data when
/// `as_data`, else not at all.
fn measure_vmsa(guest: &mut SevGuest, vmsa: &[u8], as_data: bool) -> Step<()> {
    match guest.mode() {
        SevMode::SevEs => guest.launch_update_vmsa(vmsa).map_err(model_refused),
        SevMode::Sev if as_data => guest.launch_update_data(vmsa).map_err(model_refused),
        SevMode::Sev => Ok(()),
    }
}

/// Measures `data` and, for SEV-ES (or `vmsas_as_data`), the [`VMSA`] in `guest`.
fn measure_page(guest: &mut SevGuest, data: &[u8], vmsas_as_data: bool) -> Step<()> {
    guest.launch_update_data(data).map_err(model_refused)?;
    if guest.mode() == SevMode::SevEs || vmsas_as_data {
        measure_vmsa(guest, &VMSA, vmsas_as_data)?;
    }
    Ok(())
}

/// Replays a bundle launch's measured updates in `guest`; its VMSAs as [`measure_vmsa`]
/// says (a host launching the same memory as plain SEV has none to measure).
fn replay(guest: &mut SevGuest, updates: &[Update], vmsas_as_data: bool) -> Step<()> {
    for u in updates {
        match u {
            Update::Data { bytes, .. } => guest.launch_update_data(bytes).map_err(model_refused)?,
            Update::Vmsa { bytes } => measure_vmsa(guest, bytes, vmsas_as_data)?,
            _ => {}
        }
    }
    Ok(())
}

impl Ctx {
    /// The SEV launch type of --tee (SEV-ES for SNP, unused there).
    pub fn sev_mode(&self) -> SevMode {
        match self.tee {
            TeeArg::Sev => SevMode::Sev,
            TeeArg::SevEs | TeeArg::Snp => SevMode::SevEs,
        }
    }

    /// The launch of --bundle bound to `binding` (or unbound) with --tee's launch type, its
    /// updates recorded from the library's own launch sequence on the model.
    pub fn sev_image(
        &self,
        binding: Option<krun_footer::Binding>,
    ) -> Result<SevImage, BrokerCheckError> {
        let (dir, shape) = match (&self.bundle_dir, &self.launch) {
            (Some(dir), Some((_, shape))) => (dir, shape),
            _ => return Err(BrokerCheckError::NoBundle),
        };
        let req = krun_sev::launch::MeasureRequest {
            port_map: Default::default(),
            mode: self.tee_mode(),
            vcpus: shape.vcpus,
            ram_mib: shape.ram_mib,
            bundle_dir: dir.clone(),
            data_disk: shape.data_disk,
            vcpu_model: shape.vcpu_model,
            binding,
        };
        let (m, dump) =
            krun_sev::launch::expected_measurement_dump(&req).map_err(BrokerCheckError::Digest)?;
        Ok(SevImage {
            host_json: req.host_json(),
            updates: dump.updates,
            digest: m
                .digest
                .try_into()
                .map_err(|_| BrokerCheckError::NoBundle)?,
        })
    }

    /// The digest of the workload's own launch.
    pub fn sev_own_digest(&self) -> [u8; 32] {
        match &self.sev_own {
            Some(image) => image.digest,
            None => digest(self.sev_mode(), &LAUNCH_DATA),
        }
    }

    /// The digest of the other workload's launch: --bundle's launch bound to it, else the
    /// page [`OTHER_DATA`].
    pub fn sev_other_digest(&self) -> Result<[u8; 32], BrokerCheckError> {
        if self.launch.is_some() {
            let image =
                self.sev_image(Some(self.binding((&self.other_workload_id, &self.broker))))?;
            return Ok(image.digest);
        }
        Ok(digest(self.sev_mode(), &OTHER_DATA))
    }

    /// Launches a guest in the model for `session` as `launch` says; the guest and the
    /// `/attest` body carrying its LAUNCH_MEASURE.
    pub fn sev_launch(&self, session: &Session, launch: &Launch<'_>) -> Step<(SevGuest, Vec<u8>)> {
        let start = session.sev.as_ref().ok_or_else(|| Observed::BadAnswer {
            step: "auth",
            error: "no SEV LAUNCH_START parameters".into(),
        })?;
        let session_bytes = start.session.to_bytes();
        let owner = OwnerSession {
            godh_cert: &start.cert,
            session: &session_bytes,
        };
        let policy = launch.policy.unwrap_or_else(|| start.policy.to_u32());
        let mut guest = SevGuest::launch_start(
            &self.identity,
            launch.mode.unwrap_or_else(|| self.sev_mode()),
            policy,
            launch.owner.then_some(owner),
        )
        .map_err(model_refused)?;
        match (launch.memory, &self.sev_own) {
            (Memory::Own, Some(image)) | (Memory::Image(image), _) => {
                replay(&mut guest, &image.updates, launch.vmsas_as_data)?
            }
            (Memory::Own, None) => measure_page(&mut guest, &LAUNCH_DATA, launch.vmsas_as_data)?,
            (Memory::Page(data), _) => measure_page(&mut guest, data, launch.vmsas_as_data)?,
        }
        let m = guest.launch_measure().map_err(model_refused)?;
        let body = sev_attest_body(&m.to_bytes())?;
        Ok((guest, body))
    }

    /// Asks for `workload`'s key in `session` and injects the packet into `guest`: released
    /// only when the model accepts its MAC and it decrypts into a passphrase (never printed).
    pub fn sev_key(&self, session: &Session, workload: &str, guest: &mut SevGuest) -> Observed {
        let resp = match self.fetch_key(session, workload) {
            Ok(r) => r,
            Err(o) => return o,
        };
        let bad = |error: String| Observed::BadAnswer { step: "key", error };
        let packet: SevSecret = match serde_json::from_slice(&resp.body) {
            Ok(p) => p,
            Err(e) => return bad(format!("not a LAUNCH_SECRET packet: {e}")),
        };
        let plain = match guest.launch_secret(
            &packet.header_bytes(),
            packet.ciphertext.len(),
            &packet.ciphertext,
        ) {
            Ok(p) => p,
            Err(e) => return bad(format!("released, but LAUNCH_SECRET refuses it: {e}")),
        };
        match secret_table::passphrase(&plain) {
            Ok(p) if !p.is_empty() => Observed::Released,
            Ok(_) => bad("the released secret is empty".into()),
            Err(e) => bad(format!("released, but holds no passphrase: {e}")),
        }
    }

    /// Auth, the launch, attest, the key of `workload`.
    pub fn sev_flow(&self, launch: &Launch<'_>) -> Observed {
        let run = || -> Step<Observed> {
            let session = self.auth()?;
            let (mut guest, body) = self.sev_launch(&session, launch)?;
            self.attest(&session, &body)?;
            Ok(self.sev_key(&session, &self.workload_id, &mut guest))
        };
        run().unwrap_or_else(|o| o)
    }

    /// The genuine flow from an `/auth` claiming firmware `build`.
    pub fn sev_flow_claiming(&self, build: SevBuild) -> Observed {
        let run = || -> Step<Observed> {
            let host_json = self.sev_own.as_ref().map(|i| i.host_json.as_slice());
            let session =
                self.auth_with(&self.sev_auth_body(&self.workload_id, build, host_json))?;
            let (mut guest, body) = self.sev_launch(&session, &GENUINE)?;
            self.attest(&session, &body)?;
            Ok(self.sev_key(&session, &self.workload_id, &mut guest))
        };
        run().unwrap_or_else(|o| o)
    }

    /// [`Ctx::launch_flow`] for SEV and SEV-ES: the launch replays the measured launch's
    /// updates with the broker's session.
    pub fn sev_launch_flow(
        &self,
        workload: &str,
        measured: Option<krun_footer::Binding>,
        sent: Sent,
    ) -> Observed {
        let run = || -> Step<Observed> {
            let image = self
                .sev_image(measured)
                .map_err(|e| Observed::Skipped(super::error_chain(&e)))?;
            let sent = match sent {
                Sent::Own => Some(image.host_json.clone()),
                Sent::Nothing => None,
                Sent::Of(other) => self.host_json_of(other.as_ref()),
            };
            let session =
                self.auth_with(&self.sev_auth_body(workload, self.sev_build(), sent.as_deref()))?;
            let (mut guest, body) = self.sev_launch(
                &session,
                &Launch {
                    memory: Memory::Image(&image),
                    ..GENUINE
                },
            )?;
            self.attest(&session, &body)?;
            Ok(self.sev_key(&session, workload, &mut guest))
        };
        run().unwrap_or_else(|o| o)
    }
}

/// The reference `/attest` body of a SEV launch: LAUNCH_MEASURE's MEASURE ‖ MNONCE.
pub fn sev_attest_body(measure: &[u8]) -> Step<Vec<u8>> {
    let bad = |e: String| Observed::Skipped(format!("cannot encode the evidence: {e}"));
    let m = SevMeasurement::from_bytes(measure).map_err(|e| bad(e.to_string()))?;
    let att = reference::Attestation {
        tee_pubkey: TeePubKey::default(),
        tee_evidence: serde_json::to_string(&m).map_err(|e| bad(e.to_string()))?,
    };
    serde_json::to_vec(&att).map_err(|e| bad(e.to_string()))
}
