//! Legacy SEV and SEV-ES launch: LAUNCH_START, UPDATE_DATA, UPDATE_VMSA, MEASURE, SECRET,
//! FINISH (`research/psp-model.md` §1–§3).
//!
//! [`SevGuest`] is the firmware's guest context. Its state follows the firmware's guest state
//! machine (LUPDATE → LSECRET → RUNNING) and commands in the wrong state fail with
//! INVALID_GUEST_STATE, as on hardware; the caller's own typestate sits above the backend
//! interface, which a hardware backend implements with the same runtime checks.

use openssl::sha::Sha256;
use sev::error::SevError;
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError};
use crate::identity::{self, ModelIdentity, SevPlatformVersion, SEV_CERT_LEN};

/// Bytes of the owner's session buffer.
pub const SESSION_LEN: usize = 0x80;
/// Bytes of the LAUNCH_SECRET packet header.
pub const SECRET_HEADER_LEN: usize = 0x34;
/// Bytes of the LAUNCH_MEASURE output (MEASURE ‖ MNONCE).
pub const MEASUREMENT_LEN: usize = 48;
/// Bytes of the legacy ATTESTATION report.
pub const ATTESTATION_REPORT_LEN: usize = 0xD0;
/// Bytes of one VMSA page.
pub const VMSA_LEN: usize = 4096;

/// Policy bits the SEV API defines (NODBG, NOKS, ES, NOSEND, DOMAIN, SEV); bits 6..15 are
/// reserved and rejected.
const POLICY_FLAGS_KNOWN: u32 = 0x3F;
const POLICY_ES: u32 = 1 << 2;
/// The GODH is a PDH-usage certificate with an ECDH key (SHA-256 or SHA-384 variant).
const GODH_USAGE_PDH: u32 = 0x1003;
const GODH_ALGOS: [u32; 2] = [0x0003, 0x0103];
/// FLAGS.COMPRESSED of a LAUNCH_SECRET header.
const SECRET_FLAG_COMPRESSED: u32 = 1;

/// Errors of the SEV launch commands. [`SevLaunchError::status`] gives the firmware status
/// code a real PSP would return.
#[derive(Debug, thiserror::Error)]
pub enum SevLaunchError {
    /// The command is not allowed in the guest's current state.
    #[error("command not allowed in guest state {state:?}")]
    InvalidGuestState { state: SevGuestState },
    /// The guest policy cannot be honoured on this platform.
    #[error("guest policy rejected: {reason}")]
    PolicyFailure { reason: &'static str },
    /// The owner's DH certificate is malformed or its key is not a P-384 point.
    #[error("guest owner DH certificate is invalid: {reason}")]
    InvalidCertificate { reason: &'static str },
    /// A buffer has the wrong length.
    #[error("invalid length for {what}")]
    InvalidLength { what: &'static str },
    /// The session's WRAP_MAC does not match: wrong PDH, nonce or tampered keys.
    #[error("session key wrapping MAC mismatch")]
    WrapMacMismatch,
    /// The session's POLICY_MAC does not match the policy given at LAUNCH_START.
    #[error("session policy MAC mismatch")]
    PolicyMacMismatch,
    /// The secret packet's MAC does not match (tampered, or made for another measurement).
    #[error("launch secret MAC mismatch")]
    SecretMacMismatch,
    /// The packet asks for something the model does not implement.
    #[error("unsupported request: {what}")]
    Unsupported { what: &'static str },
    /// A cryptographic primitive failed.
    #[error("cryptographic operation failed")]
    Crypto(#[from] CryptoError),
}

impl SevLaunchError {
    /// The SEV firmware status code for this error.
    pub fn status(&self) -> SevError {
        match self {
            SevLaunchError::InvalidGuestState { .. } => SevError::InvalidGuestState,
            SevLaunchError::PolicyFailure { .. } => SevError::PolicyFailure,
            SevLaunchError::InvalidCertificate { .. } => SevError::InvalidCertificate,
            SevLaunchError::InvalidLength { .. } => SevError::InvalidLen,
            // The firmware reports integrity failures of owner-supplied blobs as
            // BAD_MEASUREMENT (not confirmed from the spec; research/psp-model.md §8).
            SevLaunchError::WrapMacMismatch
            | SevLaunchError::PolicyMacMismatch
            | SevLaunchError::SecretMacMismatch => SevError::BadMeasurement,
            SevLaunchError::Unsupported { .. } => SevError::Unsupported,
            SevLaunchError::Crypto(_) => SevError::HardwarePlatform,
        }
    }
}

/// Legacy SEV or SEV-ES (what KVM_SEV_INIT2 chose through the VM type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SevMode {
    Sev,
    SevEs,
}

/// The firmware's guest states after LAUNCH_START.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SevGuestState {
    /// LUPDATE: UPDATE_DATA, UPDATE_VMSA and MEASURE are allowed.
    LaunchUpdate,
    /// LSECRET: SECRET and FINISH are allowed.
    LaunchSecret,
    /// RUNNING: the launch is over.
    Running,
}

/// The guest owner's LAUNCH_START inputs: the GODH certificate (0x824 bytes) and the
/// session buffer (0x80 bytes).
#[derive(Clone, Copy, Debug)]
pub struct OwnerSession<'a> {
    pub godh_cert: &'a [u8],
    pub session: &'a [u8],
}

/// The LAUNCH_MEASURE output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchMeasurement {
    /// HMAC-SHA256 with TIK over the platform version, policy, digest and nonce.
    pub measure: [u8; 32],
    pub mnonce: [u8; 16],
}

impl LaunchMeasurement {
    /// The 48-byte buffer the firmware writes: MEASURE ‖ MNONCE.
    pub fn to_bytes(&self) -> [u8; MEASUREMENT_LEN] {
        let mut out = [0u8; MEASUREMENT_LEN];
        out[..32].copy_from_slice(&self.measure);
        out[32..].copy_from_slice(&self.mnonce);
        out
    }
}

/// One SEV or SEV-ES guest context inside the model PSP.
pub struct SevGuest {
    mode: SevMode,
    policy: u32,
    version: SevPlatformVersion,
    tek: Zeroizing<[u8; 16]>,
    tik: Zeroizing<[u8; 16]>,
    state: SevGuestState,
    digest: Option<Sha256>,
    launch_digest: Option<[u8; 32]>,
    measure: Option<[u8; 32]>,
    measured_bytes: u64,
}

impl std::fmt::Debug for SevGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SevGuest")
            .field("mode", &self.mode)
            .field("policy", &format_args!("{:#x}", self.policy))
            .field("state", &self.state)
            .field("measured_bytes", &self.measured_bytes)
            .finish_non_exhaustive()
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// The guest's transport encryption and integrity keys.
struct GuestKeys {
    tek: Zeroizing<[u8; 16]>,
    tik: Zeroizing<[u8; 16]>,
}

/// Unwraps TEK and TIK from the owner's session (the PSP side of `Session::start`).
fn unwrap_session(
    identity: &ModelIdentity,
    policy: u32,
    owner: OwnerSession<'_>,
) -> Result<GuestKeys, SevLaunchError> {
    if owner.godh_cert.len() != SEV_CERT_LEN {
        return Err(SevLaunchError::InvalidLength {
            what: "guest owner DH certificate",
        });
    }
    if owner.session.len() != SESSION_LEN {
        return Err(SevLaunchError::InvalidLength {
            what: "session buffer",
        });
    }
    let cert = owner.godh_cert;
    let usage = u32::from_le_bytes(array::<4>(&cert[0x08..0x0C]));
    let algo = u32::from_le_bytes(array::<4>(&cert[0x0C..0x10]));
    if usage != GODH_USAGE_PDH || !GODH_ALGOS.contains(&algo) {
        return Err(SevLaunchError::InvalidCertificate {
            reason: "not an ECDH key",
        });
    }
    let godh =
        identity::sev_cert_public_key(cert).map_err(|_| SevLaunchError::InvalidCertificate {
            reason: "key is not a P-384 point",
        })?;
    let s = owner.session;
    let (nonce, wrap_tk, wrap_iv) = (&s[0x00..0x10], &s[0x10..0x30], array::<16>(&s[0x30..0x40]));
    let (wrap_mac, policy_mac) = (&s[0x40..0x60], &s[0x60..0x80]);

    let z = crypto::ecdh_p384(identity.pdh_key(), &godh)?;
    let master = crypto::kdf(&z, "sev-master-secret", nonce)?;
    let kek = crypto::kdf(&*master, "sev-kek", &[])?;
    let kik = crypto::kdf(&*master, "sev-kik", &[])?;
    if !crypto::mac_eq(&crypto::hmac_sha256(&*kik, &[wrap_tk])?, wrap_mac) {
        return Err(SevLaunchError::WrapMacMismatch);
    }
    let keys = crypto::aes128_ctr(&kek, &wrap_iv, wrap_tk)?;
    let tek = Zeroizing::new(array::<16>(&keys[..16]));
    let tik = Zeroizing::new(array::<16>(&keys[16..32]));
    let expected = crypto::hmac_sha256(&*tik, &[&policy.to_le_bytes()])?;
    if !crypto::mac_eq(&expected, policy_mac) {
        return Err(SevLaunchError::PolicyMacMismatch);
    }
    Ok(GuestKeys { tek, tik })
}

/// MEASURE = HMAC-SHA256(TIK, 0x04 ‖ API_MAJOR ‖ API_MINOR ‖ BUILD ‖ POLICY ‖ LD ‖ MNONCE).
fn measure_mac(
    tik: &[u8; 16],
    v: SevPlatformVersion,
    policy: u32,
    ld: &[u8; 32],
    mnonce: &[u8; 16],
) -> Result<[u8; 32], CryptoError> {
    crypto::hmac_sha256(
        tik,
        &[
            &[0x04, v.api_major, v.api_minor, v.build],
            &policy.to_le_bytes(),
            ld,
            mnonce,
        ],
    )
}

/// Bytes of the `sev` crate's encoded `launch::sev::Start`: POLICY ‖ GODH ‖ SESSION.
pub const START_BLOB_LEN: usize = 4 + SEV_CERT_LEN + SESSION_LEN;

/// Splits an encoded `launch::sev::Start` (what a key broker sends) into the policy and the
/// owner session.
pub fn parse_start_blob(blob: &[u8]) -> Result<(u32, OwnerSession<'_>), SevLaunchError> {
    if blob.len() != START_BLOB_LEN {
        return Err(SevLaunchError::InvalidLength {
            what: "LAUNCH_START blob",
        });
    }
    let policy = u32::from_le_bytes(array::<4>(&blob[..4]));
    Ok((
        policy,
        OwnerSession {
            godh_cert: &blob[4..4 + SEV_CERT_LEN],
            session: &blob[4 + SEV_CERT_LEN..],
        },
    ))
}

impl SevGuest {
    /// LAUNCH_START: checks the policy against the platform and unwraps the owner's TEK/TIK,
    /// or, without an owner session, makes random ones (the owner can then neither verify
    /// the measurement nor inject secrets).
    pub fn launch_start(
        identity: &ModelIdentity,
        mode: SevMode,
        policy: u32,
        owner: Option<OwnerSession<'_>>,
    ) -> Result<Self, SevLaunchError> {
        let version = identity.sev_version();
        if policy & 0xFFFF & !POLICY_FLAGS_KNOWN != 0 {
            return Err(SevLaunchError::PolicyFailure {
                reason: "reserved policy bits are set",
            });
        }
        if policy & POLICY_ES != 0 && mode != SevMode::SevEs {
            return Err(SevLaunchError::PolicyFailure {
                reason: "policy requires SEV-ES but the guest is not SEV-ES",
            });
        }
        let [_, _, min_major, min_minor] = policy.to_le_bytes();
        if (min_major, min_minor) > (version.api_major, version.api_minor) {
            return Err(SevLaunchError::PolicyFailure {
                reason: "policy requires a newer firmware API",
            });
        }
        let GuestKeys { tek, tik } = match owner {
            Some(owner) => unwrap_session(identity, policy, owner)?,
            None => {
                let mut tek = Zeroizing::new([0u8; 16]);
                let mut tik = Zeroizing::new([0u8; 16]);
                openssl::rand::rand_bytes(&mut *tek).map_err(CryptoError::from)?;
                openssl::rand::rand_bytes(&mut *tik).map_err(CryptoError::from)?;
                GuestKeys { tek, tik }
            }
        };
        Ok(SevGuest {
            mode,
            policy,
            version,
            tek,
            tik,
            state: SevGuestState::LaunchUpdate,
            digest: Some(Sha256::new()),
            launch_digest: None,
            measure: None,
            measured_bytes: 0,
        })
    }

    fn require(&self, state: SevGuestState) -> Result<(), SevLaunchError> {
        if self.state != state {
            return Err(SevLaunchError::InvalidGuestState { state: self.state });
        }
        Ok(())
    }

    fn extend(&mut self, data: &[u8]) -> Result<(), SevLaunchError> {
        self.require(SevGuestState::LaunchUpdate)?;
        let digest = self
            .digest
            .as_mut()
            .ok_or(SevLaunchError::InvalidGuestState { state: self.state })?;
        digest.update(data);
        self.measured_bytes = self.measured_bytes.saturating_add(data.len() as u64);
        Ok(())
    }

    /// LAUNCH_UPDATE_DATA: adds `data` (plaintext, a non-empty multiple of 16 bytes) to the
    /// launch digest. On hardware the bytes are then encrypted in place; in the model the
    /// guest memory stays plaintext.
    pub fn launch_update_data(&mut self, data: &[u8]) -> Result<(), SevLaunchError> {
        self.require(SevGuestState::LaunchUpdate)?;
        if data.is_empty() || data.len() % 16 != 0 {
            return Err(SevLaunchError::InvalidLength {
                what: "LAUNCH_UPDATE_DATA buffer",
            });
        }
        self.extend(data)
    }

    /// LAUNCH_UPDATE_VMSA (SEV-ES only): adds one vCPU's 4096-byte VMSA to the digest.
    pub fn launch_update_vmsa(&mut self, vmsa: &[u8]) -> Result<(), SevLaunchError> {
        self.require(SevGuestState::LaunchUpdate)?;
        if self.mode != SevMode::SevEs {
            return Err(SevLaunchError::Unsupported {
                what: "LAUNCH_UPDATE_VMSA on a guest without SEV-ES",
            });
        }
        if vmsa.len() != VMSA_LEN {
            return Err(SevLaunchError::InvalidLength { what: "VMSA page" });
        }
        self.extend(vmsa)
    }

    /// LAUNCH_MEASURE: finishes the digest and returns MEASURE ‖ MNONCE, exactly as the
    /// firmware: `HMAC-SHA256(TIK, 0x04 ‖ API_MAJOR ‖ API_MINOR ‖ BUILD ‖ POLICY ‖ LD ‖ MNONCE)`.
    pub fn launch_measure(&mut self) -> Result<LaunchMeasurement, SevLaunchError> {
        self.require(SevGuestState::LaunchUpdate)?;
        let digest = self
            .digest
            .take()
            .ok_or(SevLaunchError::InvalidGuestState { state: self.state })?;
        let ld = digest.finish();
        let mut mnonce = [0u8; 16];
        openssl::rand::rand_bytes(&mut mnonce).map_err(CryptoError::from)?;
        let measure = measure_mac(&self.tik, self.version, self.policy, &ld, &mnonce)?;
        self.launch_digest = Some(ld);
        self.measure = Some(measure);
        self.state = SevGuestState::LaunchSecret;
        Ok(LaunchMeasurement { measure, mnonce })
    }

    /// LAUNCH_SECRET: checks the packet MAC over header, lengths, ciphertext and the
    /// measurement, then decrypts. Returns the plaintext the caller writes at the guest
    /// address (`guest_len` bytes). May be issued several times; the digest is unchanged.
    pub fn launch_secret(
        &mut self,
        header: &[u8],
        guest_len: usize,
        trans: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SevLaunchError> {
        self.require(SevGuestState::LaunchSecret)?;
        if header.len() != SECRET_HEADER_LEN {
            return Err(SevLaunchError::InvalidLength {
                what: "LAUNCH_SECRET header",
            });
        }
        if trans.is_empty() || trans.len() % 16 != 0 {
            return Err(SevLaunchError::InvalidLength {
                what: "LAUNCH_SECRET ciphertext",
            });
        }
        if guest_len != trans.len() {
            return Err(SevLaunchError::InvalidLength {
                what: "LAUNCH_SECRET guest length",
            });
        }
        let measure = self
            .measure
            .ok_or(SevLaunchError::InvalidGuestState { state: self.state })?;
        let flags = u32::from_le_bytes(array::<4>(&header[0..4]));
        let iv = array::<16>(&header[4..20]);
        let mac = &header[20..52];
        let len = u32::try_from(trans.len()).map_err(|_| SevLaunchError::InvalidLength {
            what: "LAUNCH_SECRET ciphertext",
        })?;
        let expected = crypto::hmac_sha256(
            &*self.tik,
            &[
                &[0x01],
                &header[0..4],
                &iv,
                &len.to_le_bytes(),
                &len.to_le_bytes(),
                trans,
                &measure,
            ],
        )?;
        if !crypto::mac_eq(&expected, mac) {
            return Err(SevLaunchError::SecretMacMismatch);
        }
        if flags & SECRET_FLAG_COMPRESSED != 0 {
            return Err(SevLaunchError::Unsupported {
                what: "compressed launch secret",
            });
        }
        Ok(crypto::aes128_ctr(&self.tek, &iv, trans)?)
    }

    /// LAUNCH_FINISH: the guest may run; no further launch commands.
    pub fn launch_finish(&mut self) -> Result<(), SevLaunchError> {
        self.require(SevGuestState::LaunchSecret)?;
        self.state = SevGuestState::Running;
        Ok(())
    }

    /// ATTESTATION (KVM_SEV_GET_ATTESTATION_REPORT): MNONCE ‖ LD ‖ POLICY ‖ SIG_USAGE (PEK) ‖
    /// SIG_ALGO (ECDSA SHA-256) ‖ reserved ‖ r[72] ‖ s[72], signed by the PEK over SHA-256 of
    /// bytes [0, 0x34). Allowed once the digest is final (LSECRET or RUNNING).
    pub fn attestation_report(
        &self,
        identity: &ModelIdentity,
        mnonce: [u8; 16],
    ) -> Result<[u8; ATTESTATION_REPORT_LEN], SevLaunchError> {
        let ld = match (self.state, self.launch_digest) {
            (SevGuestState::LaunchUpdate, _) | (_, None) => {
                return Err(SevLaunchError::InvalidGuestState { state: self.state })
            }
            (_, Some(ld)) => ld,
        };
        let mut report = [0u8; ATTESTATION_REPORT_LEN];
        report[0x00..0x10].copy_from_slice(&mnonce);
        report[0x10..0x30].copy_from_slice(&ld);
        report[0x30..0x34].copy_from_slice(&self.policy.to_le_bytes());
        report[0x34..0x38].copy_from_slice(&0x1002u32.to_le_bytes());
        report[0x38..0x3C].copy_from_slice(&2u32.to_le_bytes());
        let digest = openssl::sha::sha256(&report[..0x34]);
        let (r, s) = crypto::ecdsa_sign_le(identity.pek_key(), &digest)?;
        report[0x40..0x88].copy_from_slice(&r);
        report[0x88..0xD0].copy_from_slice(&s);
        Ok(report)
    }

    /// The current guest state.
    pub fn state(&self) -> SevGuestState {
        self.state
    }

    /// The policy given at LAUNCH_START.
    pub fn policy(&self) -> u32 {
        self.policy
    }

    /// SEV or SEV-ES.
    pub fn mode(&self) -> SevMode {
        self.mode
    }

    /// The SHA-256 launch digest, once LAUNCH_MEASURE has run.
    pub fn launch_digest(&self) -> Option<[u8; 32]> {
        self.launch_digest
    }

    /// Bytes added to the digest so far (UPDATE_DATA and UPDATE_VMSA).
    pub fn measured_bytes(&self) -> u64 {
        self.measured_bytes
    }
}

#[cfg(test)]
mod tests {
    use sev::certs::sev::sev::{Certificate as SevCert, Usage};
    use sev::firmware::host::Version;
    use sev::launch::sev::{HeaderFlags, Measurement, Policy, PolicyFlags, Start};
    use sev::parser::Encoder;
    use sev::session::Session;

    use super::*;
    use crate::identity::tests::shared;

    fn policy(flags: PolicyFlags) -> Policy {
        Policy {
            flags,
            minfw: Version { major: 0, minor: 0 },
        }
    }

    fn policy_u32(p: Policy) -> u32 {
        u32::from(p.flags.bits()) | u32::from(p.minfw.major) << 16 | u32::from(p.minfw.minor) << 24
    }

    fn encode<T: Encoder<()>>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode(&mut out, ()).unwrap();
        out
    }

    fn owner_start(p: Policy) -> (Session<sev::session::Initialized>, Vec<u8>) {
        let session = Session::try_from(p).unwrap();
        let start: Start = session.start(shared().sev_chain().unwrap()).unwrap();
        (session, encode(&start))
    }

    fn pages(n: usize, seed: u8) -> Vec<u8> {
        (0..n * 4096)
            .map(|i| u8::try_from(i % 251).unwrap() ^ seed)
            .collect()
    }

    fn to_sev(m: LaunchMeasurement) -> Measurement {
        Measurement {
            measure: m.measure,
            mnonce: m.mnonce,
        }
    }

    #[test]
    fn measure_mac_matches_sev_crate_known_answer() {
        let tik = array::<16>(&hex::decode("66320db73158a35a255d051758e95ed4").unwrap());
        let mnonce = array::<16>(&hex::decode("4fbe0bedbad6c86ae8f68971d103e554").unwrap());
        let v = SevPlatformVersion {
            api_major: 0,
            api_minor: 0x12,
            build: 0x0f,
        };
        let ld = openssl::sha::sha256(b"");
        assert_eq!(
            hex::encode(measure_mac(&tik, v, 0, &ld, &mnonce).unwrap()),
            "6faab2daae389bcd3405a05d6cafe33c0414f7bedd0bae19ba5f38b7fd1664ea"
        );
    }

    #[test]
    fn sev_launch_interoperates_with_owner_session() {
        let id = shared();
        let p = policy(PolicyFlags::NO_DEBUG | PolicyFlags::NO_KEY_SHARING);
        let (session, blob) = owner_start(p);
        let (pol, owner) = parse_start_blob(&blob).unwrap();
        assert_eq!(pol, policy_u32(p));
        let mut guest = SevGuest::launch_start(id, SevMode::Sev, pol, Some(owner)).unwrap();
        // The unwrapped keys are the owner's.
        assert_eq!(&*guest.tek, &session.tek[..]);
        assert_eq!(&*guest.tik, &session.tik[..]);

        let kernel = pages(3, 0x5a);
        let cmdline = [0x42u8; 32];
        guest.launch_update_data(&kernel).unwrap();
        guest.launch_update_data(&cmdline).unwrap();
        let m = guest.launch_measure().unwrap();
        assert_eq!(
            guest.measured_bytes(),
            (kernel.len() + cmdline.len()) as u64
        );

        // The owner knows the digest of the bytes it expects (independent SHA-256).
        let mut expected = kernel.clone();
        expected.extend_from_slice(&cmdline);
        let digest = openssl::sha::sha256(&expected);
        assert_eq!(guest.launch_digest(), Some(digest));
        let verified = session
            .verify(&digest, id.sev_version().build(), to_sev(m))
            .unwrap();

        let mut secret = vec![0u8; 64];
        secret[..16].copy_from_slice(b"luks-passphrase\0");
        let packet = encode(&verified.secret(HeaderFlags::empty(), &secret).unwrap());
        let (header, trans) = packet.split_at(SECRET_HEADER_LEN);
        let plain = guest.launch_secret(header, trans.len(), trans).unwrap();
        assert_eq!(&plain[..], &secret[..]);
        // The secret may be injected again; then the launch finishes.
        assert_eq!(
            &guest.launch_secret(header, trans.len(), trans).unwrap()[..],
            &secret[..]
        );
        guest.launch_finish().unwrap();
        assert_eq!(guest.state(), SevGuestState::Running);
    }

    #[test]
    fn sev_es_digest_covers_vmsas_in_order() {
        let id = shared();
        let p = policy(PolicyFlags::NO_DEBUG | PolicyFlags::ENCRYPTED_STATE);
        let (session, blob) = owner_start(p);
        let (pol, owner) = parse_start_blob(&blob).unwrap();
        let mut guest = SevGuest::launch_start(id, SevMode::SevEs, pol, Some(owner)).unwrap();
        let data = pages(2, 1);
        let (vmsa0, vmsa1) = (pages(1, 2), pages(1, 3));
        guest.launch_update_data(&data).unwrap();
        guest.launch_update_vmsa(&vmsa0).unwrap();
        guest.launch_update_vmsa(&vmsa1).unwrap();
        let m = guest.launch_measure().unwrap();

        // The owner streams the same bytes through its own SHA-256.
        let mut measuring = session.measure().unwrap();
        measuring.update_data(&data).unwrap();
        measuring.update_data(&vmsa1).unwrap();
        measuring.update_data(&vmsa0).unwrap();
        // VMSAs in the wrong order give another digest.
        assert!(measuring
            .verify(id.sev_version().build(), to_sev(m))
            .is_err());

        let (session, blob) = owner_start(p);
        let (pol, owner) = parse_start_blob(&blob).unwrap();
        let mut guest = SevGuest::launch_start(id, SevMode::SevEs, pol, Some(owner)).unwrap();
        guest.launch_update_data(&data).unwrap();
        guest.launch_update_vmsa(&vmsa0).unwrap();
        guest.launch_update_vmsa(&vmsa1).unwrap();
        let m = guest.launch_measure().unwrap();
        let mut measuring = session.measure().unwrap();
        for part in [&data, &vmsa0, &vmsa1] {
            measuring.update_data(part).unwrap();
        }
        measuring
            .verify(id.sev_version().build(), to_sev(m))
            .unwrap();
    }

    #[test]
    fn owner_rejects_wrong_digest_and_wrong_platform_version() {
        let id = shared();
        let p = policy(PolicyFlags::NO_DEBUG);
        let (session, blob) = owner_start(p);
        let (pol, owner) = parse_start_blob(&blob).unwrap();
        let mut guest = SevGuest::launch_start(id, SevMode::Sev, pol, Some(owner)).unwrap();
        guest.launch_update_data(&pages(1, 9)).unwrap();
        let m = guest.launch_measure().unwrap();
        let wrong = openssl::sha::sha256(&pages(1, 8));
        assert!(session
            .verify(&wrong, id.sev_version().build(), to_sev(m))
            .is_err());

        let (session, blob) = owner_start(p);
        let (pol, owner) = parse_start_blob(&blob).unwrap();
        let mut guest = SevGuest::launch_start(id, SevMode::Sev, pol, Some(owner)).unwrap();
        guest.launch_update_data(&pages(1, 9)).unwrap();
        let m = guest.launch_measure().unwrap();
        let mut build = id.sev_version().build();
        build.build ^= 1;
        let right = openssl::sha::sha256(&pages(1, 9));
        assert!(session.verify(&right, build, to_sev(m)).is_err());
    }

    #[test]
    fn launch_start_rejects_tampered_sessions() {
        let id = shared();
        let p = policy(PolicyFlags::NO_DEBUG);
        let (_, blob) = owner_start(p);
        let (pol, owner) = parse_start_blob(&blob).unwrap();

        // A policy other than the one the owner MACed.
        let err = SevGuest::launch_start(id, SevMode::Sev, pol | 0x2, Some(owner)).unwrap_err();
        assert!(matches!(err, SevLaunchError::PolicyMacMismatch));
        assert_eq!(err.status(), SevError::BadMeasurement);

        // Flipped bits in each session field.
        for offset in [0x00, 0x10, 0x2f, 0x30, 0x40, 0x60, 0x7f] {
            let mut session = owner.session.to_vec();
            session[offset] ^= 0x01;
            let tampered = OwnerSession {
                godh_cert: owner.godh_cert,
                session: &session,
            };
            let err = SevGuest::launch_start(id, SevMode::Sev, pol, Some(tampered)).unwrap_err();
            // WRAP_MAC covers WRAP_TK only: a changed WRAP_IV unwraps a wrong TIK, which
            // the policy MAC then catches.
            let expected_policy_mac = offset >= 0x60 || (0x30..0x40).contains(&offset);
            assert_eq!(
                matches!(err, SevLaunchError::PolicyMacMismatch),
                expected_policy_mac,
                "offset {offset:#x}: {err:?}"
            );
            assert_eq!(
                matches!(err, SevLaunchError::WrapMacMismatch),
                !expected_policy_mac,
                "offset {offset:#x}: {err:?}"
            );
        }

        // A session made for another platform's PDH.
        let (other_pdh, _) = SevCert::generate(Usage::PDH).unwrap();
        let session = Session::try_from(p).unwrap();
        let start = encode(&session.start_pdh(other_pdh).unwrap());
        let (pol, owner) = parse_start_blob(&start).unwrap();
        assert!(matches!(
            SevGuest::launch_start(id, SevMode::Sev, pol, Some(owner)),
            Err(SevLaunchError::WrapMacMismatch)
        ));
    }

    #[test]
    fn launch_start_rejects_malformed_input_without_panicking() {
        let id = shared();
        let (_, blob) = owner_start(policy(PolicyFlags::NO_DEBUG));
        let (pol, owner) = parse_start_blob(&blob).unwrap();
        assert!(parse_start_blob(&blob[1..]).is_err());

        let short = OwnerSession {
            godh_cert: &owner.godh_cert[..100],
            session: owner.session,
        };
        assert!(matches!(
            SevGuest::launch_start(id, SevMode::Sev, pol, Some(short)),
            Err(SevLaunchError::InvalidLength { .. })
        ));
        let short = OwnerSession {
            godh_cert: owner.godh_cert,
            session: &owner.session[..0x7f],
        };
        assert!(matches!(
            SevGuest::launch_start(id, SevMode::Sev, pol, Some(short)),
            Err(SevLaunchError::InvalidLength { .. })
        ));
        // A point that is not on the curve, and garbage.
        let mut godh = owner.godh_cert.to_vec();
        godh[0x5C] ^= 1;
        let off_curve = OwnerSession {
            godh_cert: &godh,
            session: owner.session,
        };
        let err = SevGuest::launch_start(id, SevMode::Sev, pol, Some(off_curve)).unwrap_err();
        assert_eq!(err.status(), SevError::InvalidCertificate);
        // A signing key (PEK usage, ECDSA) is not a DH key.
        let mut godh = owner.godh_cert.to_vec();
        godh[0x08..0x10].copy_from_slice(&[0x02, 0x10, 0, 0, 0x02, 0, 0, 0]);
        let signing = OwnerSession {
            godh_cert: &godh,
            session: owner.session,
        };
        assert!(matches!(
            SevGuest::launch_start(id, SevMode::Sev, pol, Some(signing)),
            Err(SevLaunchError::InvalidCertificate { .. })
        ));
        for seed in 0..32u8 {
            let mut junk = vec![0u8; START_BLOB_LEN];
            openssl::rand::rand_bytes(&mut junk).unwrap();
            junk[0] = seed;
            if let Ok((pol, owner)) = parse_start_blob(&junk) {
                assert!(SevGuest::launch_start(id, SevMode::SevEs, pol, Some(owner)).is_err());
            }
        }
    }

    #[test]
    fn launch_start_enforces_policy() {
        let id = shared();
        let es = policy_u32(policy(PolicyFlags::ENCRYPTED_STATE));
        assert!(matches!(
            SevGuest::launch_start(id, SevMode::Sev, es, None),
            Err(SevLaunchError::PolicyFailure { .. })
        ));
        SevGuest::launch_start(id, SevMode::SevEs, es, None).unwrap();
        // Reserved bits.
        assert!(SevGuest::launch_start(id, SevMode::Sev, 1 << 7, None).is_err());
        // Minimum firmware newer than the platform's.
        let v = id.sev_version();
        let newer = u32::from(v.api_major) << 16 | u32::from(v.api_minor + 1) << 24;
        assert!(SevGuest::launch_start(id, SevMode::Sev, newer, None).is_err());
        let same = u32::from(v.api_major) << 16 | u32::from(v.api_minor) << 24;
        SevGuest::launch_start(id, SevMode::Sev, same, None).unwrap();
    }

    #[test]
    fn secret_rejects_tampering_and_other_measurements() {
        let id = shared();
        let p = policy(PolicyFlags::NO_DEBUG);
        let (session, blob) = owner_start(p);
        let (pol, owner) = parse_start_blob(&blob).unwrap();
        let data = pages(1, 4);
        let mut first = SevGuest::launch_start(id, SevMode::Sev, pol, Some(owner)).unwrap();
        first.launch_update_data(&data).unwrap();
        let m = first.launch_measure().unwrap();
        let verified = session
            .verify(
                &openssl::sha::sha256(&data),
                id.sev_version().build(),
                to_sev(m),
            )
            .unwrap();
        let packet = encode(&verified.secret(HeaderFlags::empty(), &[7u8; 48]).unwrap());
        let (header, trans) = packet.split_at(SECRET_HEADER_LEN);

        for (what, offset) in [("flags", 0), ("iv", 4), ("mac", 20), ("ciphertext", 60)] {
            let mut bad = packet.clone();
            bad[offset] ^= 0x80;
            let (h, t) = bad.split_at(SECRET_HEADER_LEN);
            let err = first.launch_secret(h, t.len(), t).unwrap_err();
            assert!(
                matches!(err, SevLaunchError::SecretMacMismatch),
                "{what}: {err:?}"
            );
        }
        assert!(matches!(
            first.launch_secret(&header[..51], trans.len(), trans),
            Err(SevLaunchError::InvalidLength { .. })
        ));
        assert!(matches!(
            first.launch_secret(header, trans.len() - 16, &trans[..trans.len() - 16]),
            Err(SevLaunchError::SecretMacMismatch)
        ));
        assert!(first
            .launch_secret(header, trans.len() + 16, trans)
            .is_err());

        // The same start blob replayed: a second launch measures with another MNONCE, so the
        // packet bound to the first measurement is refused.
        let (pol, owner) = parse_start_blob(&blob).unwrap();
        let mut second = SevGuest::launch_start(id, SevMode::Sev, pol, Some(owner)).unwrap();
        second.launch_update_data(&data).unwrap();
        second.launch_measure().unwrap();
        assert!(matches!(
            second.launch_secret(header, trans.len(), trans),
            Err(SevLaunchError::SecretMacMismatch)
        ));
        assert_eq!(
            &first.launch_secret(header, trans.len(), trans).unwrap()[..],
            &[7u8; 48]
        );
    }

    #[test]
    fn attestation_report_verifies_with_pek() {
        use openssl::bn::BigNum;
        use openssl::ecdsa::EcdsaSig;
        use sev::firmware::host::LegacyAttestationReport;

        let id = shared();
        let mut g = SevGuest::launch_start(id, SevMode::Sev, 0x1, None).unwrap();
        g.launch_update_data(&pages(1, 6)).unwrap();
        assert!(g.attestation_report(id, [0; 16]).is_err());
        g.launch_measure().unwrap();
        let raw = g.attestation_report(id, [0x5E; 16]).unwrap();
        let mut report = LegacyAttestationReport::default();
        report.mnonce.copy_from_slice(&raw[..16]);
        report.launch_digest.copy_from_slice(&raw[16..48]);
        report.policy = u32::from_le_bytes(array(&raw[48..52]));
        assert_eq!(report.launch_digest, openssl::sha::sha256(&pages(1, 6)));
        assert_eq!(report.policy, 1);
        assert_eq!(&raw[0x34..0x3C], &[0x02, 0x10, 0, 0, 2, 0, 0, 0]);

        // The sev crate's own `(&Certificate, &LegacyAttestationReport).verify()` parses the
        // 144-byte r‖s field as DER and so cannot check a firmware-format report; verify the
        // signed bytes it defines (`measurable_bytes`) with the PEK by hand instead.
        let le =
            |b: &[u8]| BigNum::from_slice(&b.iter().rev().copied().collect::<Vec<_>>()).unwrap();
        let sig =
            EcdsaSig::from_private_components(le(&raw[0x40..0x88]), le(&raw[0x88..0xD0])).unwrap();
        let chain = id.sev_chain().unwrap();
        let pek_bytes = crate::identity::tests::cert_bytes(&chain.sev.pek);
        let pek = identity::sev_cert_public_key(&pek_bytes).unwrap();
        let digest = openssl::sha::sha256(&report.measurable_bytes());
        assert!(sig.verify(&digest, &pek).unwrap());
        report.policy ^= 1;
        let digest = openssl::sha::sha256(&report.measurable_bytes());
        assert!(!sig.verify(&digest, &pek).unwrap());
    }

    #[test]
    fn commands_out_of_order_are_rejected() {
        let id = shared();
        let mut g = SevGuest::launch_start(id, SevMode::Sev, 0, None).unwrap();
        let header = [0u8; SECRET_HEADER_LEN];
        let trans = [0u8; 16];
        assert!(matches!(
            g.launch_secret(&header, 16, &trans),
            Err(SevLaunchError::InvalidGuestState {
                state: SevGuestState::LaunchUpdate
            })
        ));
        assert!(g.launch_finish().is_err());
        assert!(matches!(
            g.launch_update_vmsa(&[0u8; VMSA_LEN]),
            Err(SevLaunchError::Unsupported { .. })
        ));
        assert!(g.launch_update_data(&[0u8; 15]).is_err());
        assert!(g.launch_update_data(&[]).is_err());
        g.launch_update_data(&[0u8; 16]).unwrap();
        g.launch_measure().unwrap();
        let err = g.launch_update_data(&[0u8; 16]).unwrap_err();
        assert_eq!(err.status(), SevError::InvalidGuestState);
        assert!(g.launch_measure().is_err());
        g.launch_finish().unwrap();
        assert!(g.launch_secret(&header, 16, &trans).is_err());
        assert!(g.launch_finish().is_err());
        assert!(g.launch_update_data(&[0u8; 16]).is_err());

        let mut es = SevGuest::launch_start(id, SevMode::SevEs, 0, None).unwrap();
        assert!(es.launch_update_vmsa(&[0u8; 100]).is_err());
        es.launch_measure().unwrap();
        assert!(es.launch_update_vmsa(&[0u8; VMSA_LEN]).is_err());
    }
}
