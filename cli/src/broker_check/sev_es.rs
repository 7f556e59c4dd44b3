//! SEV-ES launches made by the PSP model for `broker-check --tee sev-es` (reference protocol):
//! broker-check is the host. It takes the LAUNCH_START parameters from `/auth`, launches its
//! own fixed guest in the model, sends LAUNCH_MEASURE to `/attest` and injects the
//! LAUNCH_SECRET packet from `/key` into the model guest, which checks its MAC and decrypts it.
//! SEV API 55766: LAUNCH_START (§6.2), LAUNCH_MEASURE (§6.5), LAUNCH_SECRET (§6.6).

use krun_attestation::reference::{self, SevBuild, SevMeasurement, SevSecret, TeePubKey};
use krun_attestation::secret_table;
use krun_psp_model::{OwnerSession, SevGuest, SevMode};
use sha2::Digest as _;

use super::{Ctx, Observed, Session, Step};

/// The guest memory broker-check's launch measures (LAUNCH_UPDATE_DATA).
pub const LAUNCH_DATA: [u8; 4096] = [0x42; 4096];
/// Another launch's memory (the `wrong-measurement` case and the other workload).
pub const OTHER_DATA: [u8; 4096] = [0x24; 4096];
/// The one vCPU's VMSA (LAUNCH_UPDATE_VMSA).
pub const VMSA: [u8; 4096] = [0x17; 4096];

/// The SEV-ES launch digest of `data` and [`VMSA`]: SHA-256 over everything measured.
pub fn digest(data: &[u8]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(data);
    h.update(VMSA);
    h.finalize().into()
}

/// SEV policy bit 0: NODBG (debugging disallowed).
pub const POLICY_NODBG: u32 = 1;
/// SEV policy bit 1: NOKS (no key sharing with other guests).
pub const POLICY_NOKS: u32 = 2;

/// How a case launches the guest.
pub struct Launch<'a> {
    /// The policy word; `None`: the one the broker chose.
    pub policy: Option<u32>,
    /// Whether LAUNCH_START gets the broker's owner session (its TEK/TIK); without it the
    /// PSP makes random ones.
    pub owner: bool,
    pub data: &'a [u8],
}

/// The genuine launch.
pub const GENUINE: Launch<'static> = Launch {
    policy: None,
    owner: true,
    data: &LAUNCH_DATA,
};

fn model_refused(e: impl std::fmt::Display) -> Observed {
    Observed::Skipped(format!("the PSP model refused the launch: {e}"))
}

impl Ctx {
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
            SevMode::SevEs,
            policy,
            launch.owner.then_some(owner),
        )
        .map_err(model_refused)?;
        guest
            .launch_update_data(launch.data)
            .map_err(model_refused)?;
        guest.launch_update_vmsa(&VMSA).map_err(model_refused)?;
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
            let session = self.auth_with(&self.sev_auth_body(build))?;
            let (mut guest, body) = self.sev_launch(&session, &GENUINE)?;
            self.attest(&session, &body)?;
            Ok(self.sev_key(&session, &self.workload_id, &mut guest))
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
