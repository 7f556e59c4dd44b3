//! Legacy SEV/SEV-ES pre-attestation with the sev crate's owner `Session`: the LAUNCH_START
//! parameters for `/auth`, the measurement check for `/attest`, the secret packet for `/key`.

use std::sync::Arc;

use sev::certs::sev::{sev::Certificate as SevCertificate, Chain, Verifiable};
use sev::firmware::host::{Build, Version};
#[cfg(test)]
use sev::launch::sev::Measurement;
use sev::launch::sev::{HeaderFlags, Policy, PolicyFlags};
use sev::parser::{Decoder, Encoder};
#[cfg(test)]
use sev::session::Verified;
use sev::session::{Initialized, Session};

use krun_attestation::reference::{
    self, SevBuild, SevCertChain, SevMeasurement, SevSecret, SevSecretHeader, SevStart,
};

use crate::db::SevFirmware;
use crate::refusal::Refusal;
use crate::verified::{self, VerifiedCache};

/// AMD processor generations whose legacy SEV ARK is trusted only when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LegacySevGeneration {
    /// EPYC 7001 (SEV only; out of AMD's support).
    Naples,
    /// EPYC 7002.
    Rome,
}

impl LegacySevGeneration {
    pub fn name(self) -> &'static str {
        match self {
            LegacySevGeneration::Naples => "naples",
            LegacySevGeneration::Rome => "rome",
        }
    }
}

impl std::str::FromStr for LegacySevGeneration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "naples" => Ok(LegacySevGeneration::Naples),
            "rome" => Ok(LegacySevGeneration::Rome),
            "milan" | "genoa" | "turin" => Err(format!(
                "{s} is trusted by default; only naples and rome need allowing"
            )),
            _ => Err(format!("unknown SEV generation {s:?} (naples or rome)")),
        }
    }
}

/// One trusted ARK: who it is, and the identity part of its certificate.
#[derive(Debug, Clone)]
struct TrustedArk {
    name: String,
    identity: Vec<u8>,
}

/// AMD SEV ARKs the broker trusts (the header and public key of each, without the
/// signature): AMD's Milan, Genoa and Turin ARKs always, Naples and Rome only when allowed,
/// and the ARKs given with `--sev-trust-root`. Chains that verified are remembered by their
/// bytes and these roots (their PDH, which owner sessions are started with).
#[derive(Debug, Clone)]
pub struct SevTrust {
    trusted: Vec<TrustedArk>,
    /// Known AMD roots that are not trusted here, to name them in the refusal.
    refused: Vec<(LegacySevGeneration, Vec<u8>)>,
    /// SHA-256 over the trusted roots: part of every cache key.
    fingerprint: verified::Key,
    chains: Arc<VerifiedCache<VerifiedPdh>>,
}

/// A PDH whose chain verified: the certificate, and its public point when it is on P-384
/// (AMD's PDHs are), for the key agreement.
#[derive(Clone)]
struct VerifiedPdh {
    cert: SevCertificate,
    p384: Option<Arc<[u8]>>,
}

/// Offsets in a v1 SEV certificate (SEV API, appendix C): the public key starts at 0x10; an
/// ECDH key is its curve (u32), QX and QY (72 bytes each, little-endian).
const PUBKEY_CURVE: usize = 0x10;
const PUBKEY_QX: usize = 0x14;
const PUBKEY_QY: usize = 0x14 + 72;
const CURVE_P384: u32 = 2;
const P384_LEN: usize = 48;

/// The uncompressed point (0x04 ‖ X ‖ Y, big-endian) of a v1 certificate's P-384 key.
fn p384_point(cert: &[u8]) -> Option<Vec<u8>> {
    let curve = u32::from_le_bytes(cert.get(PUBKEY_CURVE..PUBKEY_CURVE + 4)?.try_into().ok()?);
    if curve != CURVE_P384 {
        return None;
    }
    let qx = cert.get(PUBKEY_QX..PUBKEY_QX + P384_LEN)?;
    let qy = cert.get(PUBKEY_QY..PUBKEY_QY + P384_LEN)?;
    let mut point = Vec::with_capacity(1 + 2 * P384_LEN);
    point.push(4);
    point.extend(qx.iter().rev());
    point.extend(qy.iter().rev());
    Some(point)
}

/// The identity part of an AMD CA certificate: everything before the signature.
fn ca_identity(cert: &[u8]) -> Option<&[u8]> {
    let bits = u32::from_le_bytes(cert.get(0x3C..0x40)?.try_into().ok()?);
    let len = 0x40 + 2 * usize::try_from(bits).ok()? / 8;
    cert.get(..len)
}

impl SevTrust {
    /// AMD's Milan, Genoa and Turin ARKs, the `legacy` generations' ARKs, and `extra` raw
    /// ARK certificates (configured by hand, e.g. the PSP model's).
    pub fn new(extra: Vec<Vec<u8>>, legacy: &[LegacySevGeneration]) -> Self {
        use sev::certs::sev::builtin::{genoa, milan, naples, rome, turin};
        let mut trusted = Vec::new();
        let mut refused = Vec::new();
        let mut add = |name: &str, cert: &[u8]| {
            if let Some(id) = ca_identity(cert) {
                trusted.push(TrustedArk {
                    name: name.to_string(),
                    identity: id.to_vec(),
                });
            }
        };
        for (name, ark) in [
            ("amd-milan", milan::ARK),
            ("amd-genoa", genoa::ARK),
            ("amd-turin", turin::ARK),
        ] {
            add(name, ark);
        }
        for (generation, ark) in [
            (LegacySevGeneration::Naples, naples::ARK),
            (LegacySevGeneration::Rome, rome::ARK),
        ] {
            if legacy.contains(&generation) {
                add(&format!("amd-{}", generation.name()), ark);
            } else if let Some(id) = ca_identity(ark) {
                refused.push((generation, id.to_vec()));
            }
        }
        for (i, ark) in extra.iter().enumerate() {
            add(&format!("sev-trust-root #{}", i + 1), ark);
        }
        let identities: Vec<&[u8]> = trusted.iter().map(|t| t.identity.as_slice()).collect();
        SevTrust {
            fingerprint: verified::key(&identities),
            trusted,
            refused,
            chains: Arc::default(),
        }
    }

    /// These roots, remembering verified chains in `other`'s cache (whose keys name the
    /// roots they were verified under).
    pub fn sharing_cache(mut self, other: &SevTrust) -> Self {
        self.chains = other.chains.clone();
        self
    }

    /// Number of verified chains remembered.
    pub fn remembered(&self) -> usize {
        self.chains.len()
    }

    /// The PDH of `chain` (raw bytes `bytes`) once the whole chain verifies: ARK self-signed,
    /// ARK → ASK → CEK, OCA self-signed, OCA and CEK → PEK → PDH. Remembered per chain bytes
    /// and trusted roots.
    fn verified_pdh(&self, bytes: &[u8], pdh_bytes: &[u8]) -> Result<VerifiedPdh, Refusal> {
        let key = verified::key(&[&self.fingerprint, bytes]);
        if let Some(pdh) = self.chains.get(&key) {
            return Ok(pdh);
        }
        let chain = Chain::decode(&mut &bytes[..], ()).map_err(|_| {
            Refusal::bad_request("SevCertChain", "certificate chain cannot be decoded")
        })?;
        let cert = *(&chain)
            .verify()
            .map_err(|_| refuse("SevCertChain", "certificate chain does not verify"))?;
        // The point must be a valid P-384 public key, checked once here (every agreement
        // checks it is on the curve again).
        let p384 = p384_point(pdh_bytes)
            .filter(|p| {
                openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::SECP384R1)
                    .and_then(|g| {
                        let mut ctx = openssl::bn::BigNumContext::new()?;
                        let point = openssl::ec::EcPoint::from_bytes(&g, p, &mut ctx)?;
                        openssl::ec::EcKey::from_public_key(&g, &point)?.check_key()
                    })
                    .is_ok()
            })
            .map(Arc::from);
        let pdh = VerifiedPdh { cert, p384 };
        self.chains.insert(key, pdh.clone());
        Ok(pdh)
    }

    /// Which trusted root `ark` is, or why it is refused.
    fn root_of(&self, ark: &[u8]) -> Result<&str, Refusal> {
        let id = ca_identity(ark)
            .ok_or_else(|| refuse("SevCertChain", "ARK certificate is truncated"))?;
        if let Some(t) = self.trusted.iter().find(|t| t.identity == id) {
            return Ok(&t.name);
        }
        if let Some((generation, _)) = self.refused.iter().find(|(_, r)| r == id) {
            let name = generation.name();
            return Err(refuse(
                "SevGeneration",
                &format!(
                    "the chain is rooted in AMD's {name} ARK; legacy SEV chains of that \
                     generation are accepted only with --allow-sev-generation {name}"
                ),
            ));
        }
        Err(refuse("SevCertChain", "ARK is not a trusted root"))
    }
}

/// `/auth`: the platform's firmware must be at least `min` (0.0.0: no minimum). The version
/// comes from the host, but the PSP includes the real one in the LAUNCH_MEASURE MAC that
/// `/attest` checks with this value, so a host that overstates it fails there.
pub fn check_firmware(build: &Build, min: SevFirmware) -> Result<(), Refusal> {
    let have = SevFirmware {
        major: build.version.major,
        minor: build.version.minor,
        build: build.build,
    };
    if have < min {
        return Err(refuse(
            "SevFirmware",
            &format!("SEV firmware {have} is below the minimum {min}"),
        ));
    }
    Ok(())
}

fn policy_of(word: u32) -> Policy {
    let w = reference::SevPolicy::from_u32(word);
    Policy {
        flags: PolicyFlags::from_bits_retain(w.flags.0),
        minfw: Version {
            major: w.minfw.major,
            minor: w.minfw.minor,
        },
    }
}

fn refuse(kind: &'static str, detail: &str) -> Refusal {
    Refusal::unauthorized(kind, detail)
}

/// `/auth`: checks the platform chain (its root every time, its signatures once per chain
/// and set of roots) and creates the owner session for `policy_word`: a new owner DH key,
/// transport keys and their wrapping keys for this session only.
pub fn start(
    chain: &SevCertChain,
    policy_word: u32,
    trust: &SevTrust,
) -> Result<(Session<Initialized>, SevStart), Refusal> {
    let root = trust.root_of(&chain.ca.ark)?;
    tracing::debug!(root, "SEV chain root");
    let pdh = trust.verified_pdh(&chain.to_bytes(), &chain.sev.pdh)?;
    let policy = policy_of(policy_word);
    let session = Session::try_from(policy)
        .map_err(|_| Refusal::internal("no hardware random numbers for the owner session"))?;
    if let Some(point) = &pdh.p384 {
        let wire = owner_start_p384(&session, policy_word, point)?;
        return Ok((session, wire));
    }
    // Another curve: the sev crate's own key agreement.
    let start = session
        .start_pdh(pdh.cert)
        .map_err(|_| refuse("SevCertChain", "platform DH key is not usable"))?;
    let mut cert = Vec::with_capacity(reference::SEV_CERT_LEN);
    start
        .cert
        .encode(&mut cert, ())
        .map_err(|_| Refusal::internal("cannot encode the owner certificate"))?;
    let s = &start.session;
    let wire = SevStart {
        policy: reference::SevPolicy::from_u32(policy_word),
        cert,
        session: reference::SevSession {
            nonce: s.nonce,
            wrap_tk: s.wrap_tk,
            wrap_iv: s.wrap_iv,
            wrap_mac: s.wrap_mac,
            policy_mac: s.policy_mac,
        },
    };
    Ok((session, wire))
}

/// A v1 PDH certificate of the owner (GODH) with no key yet: version 1, usage PDH, algorithm
/// ECDH-SHA256, curve P-384, no signatures. Made once by the sev crate.
fn godh_template() -> Result<&'static [u8], Refusal> {
    static TEMPLATE: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let (cert, _) = SevCertificate::generate(sev::certs::sev::sev::Usage::PDH).ok()?;
            let mut out = Vec::with_capacity(reference::SEV_CERT_LEN);
            cert.encode(&mut out, ()).ok()?;
            let curve =
                u32::from_le_bytes(out.get(PUBKEY_CURVE..PUBKEY_CURVE + 4)?.try_into().ok()?);
            (out.len() == reference::SEV_CERT_LEN && curve == CURVE_P384).then_some(out)
        })
        .as_deref()
        .ok_or_else(|| Refusal::internal("cannot make the owner certificate"))
}

/// NIST SP 800-108 KDF in counter mode with HMAC-SHA256, one block (`size` ≤ 32), as the
/// SEV API defines it for the master secret, KEK and KIK.
fn kdf(key: &[u8], size: usize, ctx: &[u8], label: &str) -> zeroize::Zeroizing<Vec<u8>> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut m = ring::hmac::Context::with_key(&key);
    m.update(&1u32.to_le_bytes());
    m.update(label.as_bytes());
    m.update(&[0]);
    m.update(ctx);
    m.update(&u32::try_from(size * 8).unwrap_or(0).to_le_bytes());
    let tag = m.sign();
    zeroize::Zeroizing::new(tag.as_ref()[..size].to_vec())
}

/// HMAC-SHA256 under `key` over `parts` in order (ring's: OpenSSL 3.0 fetches the algorithm
/// and builds a key object on every call, which cost more than the MAC itself in issue 23's
/// profile).
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = ring::hmac::Context::with_key(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key));
    for part in parts {
        m.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(m.sign().as_ref());
    out
}

/// LAUNCH_START parameters for `session`'s transport keys under a platform PDH on P-384
/// (`pdh`: its uncompressed point): a new owner DH key for this session, the shared secret,
/// the master secret from it and a new nonce, KEK and KIK, TEK ‖ TIK wrapped with AES-128-CTR
/// under the KEK and MACed with the KIK, and the policy MACed with the TIK.
fn owner_start_p384(
    session: &Session<Initialized>,
    policy_word: u32,
    pdh: &[u8],
) -> Result<SevStart, Refusal> {
    use ring::agreement::{agree_ephemeral, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P384};
    let unusable = || refuse("SevCertChain", "platform DH key is not usable");
    let rng = ring::rand::SystemRandom::new();
    let godh = EphemeralPrivateKey::generate(&ECDH_P384, &rng)
        .map_err(|_| Refusal::internal("cannot make the owner DH key"))?;
    let public = godh
        .compute_public_key()
        .map_err(|_| Refusal::internal("cannot make the owner DH key"))?;
    let public = public.as_ref();
    if public.len() != 1 + 2 * P384_LEN {
        return Err(Refusal::internal("cannot make the owner DH key"));
    }
    let mut cert = godh_template()?.to_vec();
    for (i, b) in public[1..=P384_LEN].iter().rev().enumerate() {
        cert[PUBKEY_QX + i] = *b;
    }
    for (i, b) in public[1 + P384_LEN..].iter().rev().enumerate() {
        cert[PUBKEY_QY + i] = *b;
    }
    let z = agree_ephemeral(godh, &UnparsedPublicKey::new(&ECDH_P384, pdh), |z| {
        zeroize::Zeroizing::new(z.to_vec())
    })
    .map_err(|_| unusable())?;
    let mut nonce = [0u8; 16];
    let mut iv = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut iv);
    let master = kdf(&z, 16, &nonce, "sev-master-secret");
    let kek = kdf(&master, 16, &[], "sev-kek");
    let kik = kdf(&master, 16, &[], "sev-kik");
    let keys = zeroize::Zeroizing::new([&session.tek[..], &session.tik[..]].concat());
    let wrapped =
        openssl::symm::encrypt(openssl::symm::Cipher::aes_128_ctr(), &kek, Some(&iv), &keys)
            .map_err(|_| Refusal::internal("cannot wrap the transport keys"))?;
    let wrap_tk: [u8; 32] = wrapped
        .as_slice()
        .try_into()
        .map_err(|_| Refusal::internal("cannot wrap the transport keys"))?;
    Ok(SevStart {
        policy: reference::SevPolicy::from_u32(policy_word),
        cert,
        session: reference::SevSession {
            nonce,
            wrap_tk,
            wrap_iv: iv,
            wrap_mac: hmac(&kik, &[&wrap_tk]),
            policy_mac: hmac(&session.tik, &[&policy_word.to_le_bytes()]),
        },
    })
}

pub fn build_of(b: &SevBuild) -> Build {
    Build {
        version: Version {
            major: b.version.major,
            minor: b.version.minor,
        },
        build: b.build,
    }
}

/// The MAC LAUNCH_MEASURE must carry for `digest` (SEV API, LAUNCH_MEASURE): HMAC-SHA256
/// under the TIK over 0x04, the firmware build, the policy, the digest and the PSP's nonce.
fn expected_measure(
    tik: &[u8],
    build: &Build,
    policy_word: u32,
    digest: &[u8],
    mnonce: &[u8; 16],
) -> [u8; 32] {
    hmac(
        tik,
        &[
            &[0x04, build.version.major, build.version.minor, build.build],
            &policy_word.to_le_bytes(),
            digest,
            mnonce,
        ],
    )
}

/// The allowed digest whose expected measurement (under `tik`) is the one the PSP sent.
fn matching_digest<'a>(
    tik: &[u8],
    build: &Build,
    policy_word: u32,
    evidence: &SevMeasurement,
    digests: &'a [Vec<u8>],
) -> Option<&'a Vec<u8>> {
    digests.iter().find(|d| {
        let m = expected_measure(tik, build, policy_word, d, &evidence.mnonce);
        openssl::memcmp::eq(&m, &evidence.measure)
    })
}

/// The sev crate's own `/attest`: finds the allowed launch digest the measurement proves,
/// then lets the crate verify it and hand out the verified session. The broker packages the
/// secret itself ([`SevOwner::package`]); the tests check its packet against this path.
#[cfg(test)]
pub fn attest(
    session: Session<Initialized>,
    build: Build,
    policy_word: u32,
    evidence: &SevMeasurement,
    digests: &[Vec<u8>],
) -> Result<Session<Verified>, Refusal> {
    let Some(digest) = matching_digest(&session.tik, &build, policy_word, evidence, digests) else {
        return Err(refuse(
            "SevMeasurement",
            "launch measurement is not an allowed one",
        ));
    };
    let msr = Measurement {
        measure: evidence.measure,
        mnonce: evidence.mnonce,
    };
    session
        .verify(digest, build, msr)
        .map_err(|_| refuse("SevMeasurement", "launch measurement does not verify"))
}

/// An owner session between requests, as the session store keeps it: any replica can
/// continue it. The transport keys are session secrets: they go to the store through
/// `Store::seal_session`, and the bytes here are wiped when dropped.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SevOwner {
    tek: [u8; 16],
    tik: [u8; 16],
    /// The policy word LAUNCH_START was given.
    policy: u32,
    /// The firmware build the platform reported: major, minor, build.
    build: [u8; 3],
}

impl std::fmt::Debug for SevOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The transport keys stay out of logs.
        f.debug_struct("SevOwner")
            .field("policy", &self.policy)
            .field("build", &self.build)
            .finish_non_exhaustive()
    }
}

impl Drop for SevOwner {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.tek);
        zeroize::Zeroize::zeroize(&mut self.tik);
    }
}

impl SevOwner {
    /// The state of `session`, started with `policy_word` on a platform of `build`.
    pub fn new(
        session: &Session<Initialized>,
        policy_word: u32,
        build: &Build,
    ) -> Result<Self, Refusal> {
        let key = |k: &[u8]| -> Result<[u8; 16], Refusal> {
            k.try_into()
                .map_err(|_| Refusal::internal("owner session key of unexpected length"))
        };
        Ok(SevOwner {
            tek: key(&session.tek)?,
            tik: key(&session.tik)?,
            policy: policy_word,
            build: [build.version.major, build.version.minor, build.build],
        })
    }

    fn build(&self) -> Build {
        Build {
            version: Version {
                major: self.build[0],
                minor: self.build[1],
            },
            build: self.build[2],
        }
    }

    /// The sev crate's session with these transport keys.
    #[cfg(test)]
    fn session(&self) -> Result<Session<Initialized>, Refusal> {
        let mut session = Session::try_from(policy_of(self.policy))
            .map_err(|_| Refusal::internal("no hardware random numbers for the owner session"))?;
        if session.tek.len() != self.tek.len() || session.tik.len() != self.tik.len() {
            return Err(Refusal::internal("owner session key of unexpected length"));
        }
        session.tek.copy_from_slice(&self.tek);
        session.tik.copy_from_slice(&self.tik);
        Ok(session)
    }

    /// `/attest`: finds the allowed digest whose expected measurement under this session's
    /// TIK is the one the PSP sent; the proof lets a later request package the secret (and
    /// check the proof again).
    pub fn attest(
        &self,
        evidence: &SevMeasurement,
        digests: &[Vec<u8>],
    ) -> Result<SevProof, Refusal> {
        let build = self.build();
        let digest = matching_digest(&self.tik, &build, self.policy, evidence, digests)
            .ok_or_else(|| refuse("SevMeasurement", "launch measurement is not an allowed one"))?
            .clone();
        Ok(SevProof {
            digest,
            measure: evidence.measure,
            mnonce: evidence.mnonce,
        })
    }

    /// The verified session `proof` (from [`SevOwner::attest`]) stands for, as the sev
    /// crate rebuilds it (the crate checks the measurement again): the tests' oracle for
    /// [`SevOwner::package`].
    #[cfg(test)]
    pub fn verified(&self, proof: &SevProof) -> Result<Session<Verified>, Refusal> {
        let msr = Measurement {
            measure: proof.measure,
            mnonce: proof.mnonce,
        };
        self.session()?
            .verify(&proof.digest, self.build(), msr)
            .map_err(|_| refuse("SevMeasurement", "launch measurement does not verify"))
    }

    /// `/key`: `payload` as a LAUNCH_SECRET packet for the guest `proof` attested, once the
    /// proof's measurement is checked again under this session's TIK (a stored proof that
    /// does not match its session releases nothing). The packet as the sev crate's
    /// `Session::secret` makes it (SEV API, LAUNCH_SECRET): a new IV, the payload under the
    /// TEK with AES-128-CTR, and HMAC-SHA256 under the TIK over 0x01, the header flags, the
    /// IV, both lengths, the ciphertext and the launch measurement.
    pub fn package(&self, proof: &SevProof, payload: &[u8]) -> Result<SevSecret, Refusal> {
        let expected = expected_measure(
            &self.tik,
            &self.build(),
            self.policy,
            &proof.digest,
            &proof.mnonce,
        );
        if !openssl::memcmp::eq(&expected, &proof.measure) {
            return Err(refuse(
                "SevMeasurement",
                "launch measurement does not verify",
            ));
        }
        let mut iv = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut iv);
        let ciphertext = openssl::symm::encrypt(
            openssl::symm::Cipher::aes_128_ctr(),
            &self.tek,
            Some(&iv),
            payload,
        )
        .map_err(|_| Refusal::internal("cannot package the secret"))?;
        let length = |n: usize| {
            u32::try_from(n).map_err(|_| Refusal::internal("secret does not fit the launch secret"))
        };
        let flags = HeaderFlags::default().bits();
        let mac = hmac(
            &self.tik,
            &[
                &[0x01],
                &flags.to_le_bytes(),
                &iv,
                &length(payload.len())?.to_le_bytes(),
                &length(ciphertext.len())?.to_le_bytes(),
                &ciphertext,
                &proof.measure,
            ],
        );
        Ok(SevSecret {
            header: SevSecretHeader {
                flags: reference::HeaderFlags(flags),
                iv,
                mac,
            },
            ciphertext,
        })
    }
}

/// What an owner session's attestation established: the allowed digest and the PSP's
/// measurement of it.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct SevProof {
    digest: Vec<u8>,
    measure: [u8; 32],
    mnonce: [u8; 16],
}

/// The sev crate's LAUNCH_SECRET packet of `payload` (the tests' oracle for
/// [`SevOwner::package`]).
#[cfg(test)]
pub fn package(session: &Session<Verified>, payload: &[u8]) -> Result<SevSecret, Refusal> {
    let secret = session
        .secret(HeaderFlags::default(), payload)
        .map_err(|_| Refusal::internal("cannot package the secret"))?;
    Ok(SevSecret {
        header: SevSecretHeader {
            flags: reference::HeaderFlags(secret.header.flags.bits()),
            iv: secret.header.iv,
            mac: secret.header.mac,
        },
        ciphertext: secret.ciphertext.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::sev::FakeSevPlatform;
    use krun_attestation::reference::{Request, SevRequest};

    const ES_POLICY: u32 = 0x3f; // buildah's SEV-ES bits 63

    /// The SEV `/auth` request with a real AMD (Milan) chain, from kbs-types' test data.
    fn amd_milan_request() -> SevRequest {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/sev_request.json"
        ))
        .unwrap();
        let req: Request = serde_json::from_str(&text).unwrap();
        serde_json::from_str(&req.extra_params).unwrap()
    }

    #[test]
    fn real_amd_chain_from_kbs_types_is_accepted_with_builtin_roots() {
        let sev = amd_milan_request();
        let (_, start) = start(&sev.chain, ES_POLICY, &SevTrust::new(vec![], &[])).unwrap();
        start.validate().unwrap();
        // A corrupted PEK signature makes the crate's chain check fail.
        let mut bad = sev.chain.clone();
        bad.sev.pek[0x20] ^= 1; // inside the signed public key
        assert_eq!(start_err(&bad, &SevTrust::new(vec![], &[])), "SevCertChain");
    }

    #[test]
    fn naples_and_rome_roots_need_allowing() {
        use sev::certs::sev::builtin::{milan, naples, rome};
        let sev = amd_milan_request();
        assert_eq!(sev.chain.ca.ark, milan::ARK, "the test chain is Milan's");
        for (generation, ark, ask) in [
            (LegacySevGeneration::Naples, naples::ARK, naples::ASK),
            (LegacySevGeneration::Rome, rome::ARK, rome::ASK),
        ] {
            let mut chain = sev.chain.clone();
            chain.ca.ark = ark.to_vec();
            chain.ca.ask = ask.to_vec();
            let err = start(&chain, ES_POLICY, &SevTrust::new(vec![], &[]))
                .err()
                .unwrap();
            assert_eq!(err.kind, "SevGeneration");
            assert!(
                err.detail
                    .contains(&format!("--allow-sev-generation {}", generation.name())),
                "{}",
                err.detail
            );
            // Allowed: the root is trusted, and the chain is checked (this platform's CEK is
            // signed by Milan's ASK, so it fails there).
            let allowed = SevTrust::new(vec![], &[generation]);
            assert_eq!(start_err(&chain, &allowed), "SevCertChain");
            // The other legacy generation does not open this one.
            let other = if generation == LegacySevGeneration::Naples {
                LegacySevGeneration::Rome
            } else {
                LegacySevGeneration::Naples
            };
            assert_eq!(
                start_err(&chain, &SevTrust::new(vec![], &[other])),
                "SevGeneration"
            );
        }
        assert!("milan".parse::<LegacySevGeneration>().is_err());
        assert_eq!(
            "Rome".parse::<LegacySevGeneration>().unwrap(),
            LegacySevGeneration::Rome
        );
    }

    #[test]
    fn firmware_minimum_compares_major_minor_build() {
        let build = |major, minor, b| Build {
            version: Version { major, minor },
            build: b,
        };
        let min: SevFirmware = "1.55.21".parse().unwrap();
        check_firmware(&build(1, 55, 21), min).unwrap();
        check_firmware(&build(1, 56, 0), min).unwrap();
        check_firmware(&build(2, 0, 0), min).unwrap();
        let err = check_firmware(&build(1, 55, 20), min).unwrap_err();
        assert_eq!(err.kind, "SevFirmware");
        assert_eq!(
            err.detail,
            "SEV firmware 1.55.20 is below the minimum 1.55.21"
        );
        assert!(check_firmware(&build(1, 49, 99), min).is_err());
        assert!(check_firmware(&build(0, 0, 0), SevFirmware::default()).is_ok());
        assert_eq!("1.55".parse::<SevFirmware>().unwrap().to_string(), "1.55.0");
        assert!("1".parse::<SevFirmware>().is_err());
        assert!("1.2.3.4".parse::<SevFirmware>().is_err());
        assert!("1.256".parse::<SevFirmware>().is_err());
    }

    fn start_err(chain: &SevCertChain, trust: &SevTrust) -> &'static str {
        start(chain, ES_POLICY, trust).err().unwrap().kind
    }

    #[test]
    fn full_owner_flow_against_fake_psp() {
        let platform = FakeSevPlatform::new().unwrap();
        // Fake ARK refused unless configured.
        assert_eq!(
            start_err(&platform.chain, &SevTrust::new(vec![], &[])),
            "SevCertChain"
        );
        let trust = SevTrust::new(vec![platform.ark().to_vec()], &[]);
        let (session, wire) = start(&platform.chain, ES_POLICY, &trust).unwrap();
        let mut guest = platform.launch_start(&wire).unwrap();
        guest.update(b"kernel and initrd");
        let msr = guest.measure().unwrap();
        let good = openssl::sha::sha256(b"kernel and initrd").to_vec();
        let build = build_of(&platform.build);
        let verified = attest(session, build, ES_POLICY, &msr, &[vec![0; 32], good]).unwrap();
        let packet = package(&verified, b"0123456789abcdef").unwrap();
        assert_eq!(
            guest.launch_secret(&packet).unwrap().as_slice(),
            b"0123456789abcdef"
        );

        // A measurement of other contents is refused (this session's chain came from the
        // cache, its owner key and transport keys are new).
        let (session, wire2) = start(&platform.chain, ES_POLICY, &trust).unwrap();
        assert_eq!(trust.remembered(), 1);
        assert_ne!(wire2.cert, wire.cert, "a new owner DH key per session");
        assert_ne!(wire2.session.wrap_tk, wire.session.wrap_tk);
        let wire = wire2;
        let mut guest = platform.launch_start(&wire).unwrap();
        guest.update(b"tampered");
        let msr = guest.measure().unwrap();
        let err = attest(session, build, ES_POLICY, &msr, &[good_digest()])
            .err()
            .unwrap();
        assert_eq!(err.kind, "SevMeasurement");
    }

    #[test]
    fn a_stored_owner_session_is_continued_after_a_round_trip() {
        let platform = FakeSevPlatform::new().unwrap();
        let trust = SevTrust::new(vec![platform.ark().to_vec()], &[]);
        let (session, wire) = start(&platform.chain, ES_POLICY, &trust).unwrap();
        let build = build_of(&platform.build);
        let owner = SevOwner::new(&session, ES_POLICY, &build).unwrap();
        drop(session);
        let owner: SevOwner = serde_json::from_slice(&serde_json::to_vec(&owner).unwrap()).unwrap();
        let mut guest = platform.launch_start(&wire).unwrap();
        guest.update(b"kernel and initrd");
        let msr = guest.measure().unwrap();
        let refused = owner.attest(&msr, &[vec![0; 32]]).err().unwrap();
        assert_eq!(refused.kind, "SevMeasurement");
        let proof = owner.attest(&msr, &[vec![0; 32], good_digest()]).unwrap();
        let proof: SevProof = serde_json::from_slice(&serde_json::to_vec(&proof).unwrap()).unwrap();
        // The broker's own packet and the sev crate's both open in the guest (MAC checked).
        let packet = owner.package(&proof, b"0123456789abcdef").unwrap();
        assert_eq!(
            guest.launch_secret(&packet).unwrap().as_slice(),
            b"0123456789abcdef"
        );
        let crate_packet = package(&owner.verified(&proof).unwrap(), b"0123456789abcdef").unwrap();
        assert_eq!(
            guest.launch_secret(&crate_packet).unwrap().as_slice(),
            b"0123456789abcdef"
        );
        assert_ne!(
            packet.header.iv, crate_packet.header.iv,
            "a new IV per packet"
        );
        // A stored proof that does not match the session's TIK releases nothing: a changed
        // measurement, digest or nonce is refused like the crate refuses it.
        let tampered = [
            SevProof {
                measure: [proof.measure[0] ^ 1; 32],
                ..proof.clone()
            },
            SevProof {
                digest: vec![0; 32],
                ..proof.clone()
            },
            SevProof {
                mnonce: [0; 16],
                ..proof.clone()
            },
        ];
        for bad in &tampered {
            assert_eq!(
                owner.package(bad, b"x").err().unwrap().kind,
                "SevMeasurement"
            );
            assert!(owner.verified(bad).is_err());
        }
    }

    #[test]
    fn remembered_chains_serve_only_the_same_bytes_under_the_same_roots() {
        let platform = FakeSevPlatform::new().unwrap();
        let trust = SevTrust::new(vec![platform.ark().to_vec()], &[]);
        start(&platform.chain, ES_POLICY, &trust).unwrap();
        start(&platform.chain, ES_POLICY, &trust).unwrap();
        assert_eq!(trust.remembered(), 1);
        // A changed chain (PEK key bits) with the good one remembered: verified, refused.
        let mut bad = platform.chain.clone();
        bad.sev.pek[0x20] ^= 1;
        assert_eq!(start_err(&bad, &trust), "SevCertChain");
        // A changed PDH: refused, not served as the remembered chain's PDH.
        let mut bad = platform.chain.clone();
        bad.sev.pdh[0x20] ^= 1;
        assert_eq!(start_err(&bad, &trust), "SevCertChain");
        assert_eq!(trust.remembered(), 1);
        // The same cache under roots without this ARK: refused.
        let amd_only = SevTrust::new(vec![], &[]).sharing_cache(&trust);
        assert_eq!(start_err(&platform.chain, &amd_only), "SevCertChain");
        // Under another set of roots that still trusts it, the chain is verified afresh
        // (a new entry), not served from the other roots' entry.
        let other = FakeSevPlatform::new().unwrap();
        let more = SevTrust::new(vec![platform.ark().to_vec(), other.ark().to_vec()], &[])
            .sharing_cache(&trust);
        start(&platform.chain, ES_POLICY, &more).unwrap();
        assert_eq!(trust.remembered(), 2);
        // A chain whose CEK is signed by another ASK under the trusted ARK does not verify.
        let mut mixed = platform.chain.clone();
        mixed.ca.ask = other.chain.ca.ask.clone();
        assert_eq!(start_err(&mixed, &trust), "SevCertChain");
    }

    #[test]
    fn kdf_matches_the_sev_api_known_answer() {
        // The sev crate's test vector for the master secret of a zero key and nonce.
        assert_eq!(
            kdf(&[0; 16], 16, &[0; 16], "sev-master-secret").as_slice(),
            [
                0xab, 0x4d, 0x26, 0x9f, 0xcc, 0x62, 0xbe, 0xdb, 0x45, 0x11, 0xd5, 0x6c, 0x38, 0x6c,
                0xe7, 0x06
            ]
        );
    }

    fn good_digest() -> Vec<u8> {
        openssl::sha::sha256(b"kernel and initrd").to_vec()
    }
}
