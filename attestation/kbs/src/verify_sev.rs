//! Legacy SEV/SEV-ES pre-attestation with the sev crate's owner `Session`: the LAUNCH_START
//! parameters for `/auth`, the measurement check for `/attest`, the secret packet for `/key`.

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use sev::certs::sev::Chain;
use sev::firmware::host::{Build, Version};
use sev::launch::sev::{HeaderFlags, Measurement, Policy, PolicyFlags};
use sev::parser::{Decoder, Encoder};
use sev::session::{Initialized, Session, Verified};

use krun_attestation::reference::{
    self, SevBuild, SevCertChain, SevMeasurement, SevSecret, SevSecretHeader, SevStart,
};

use crate::refusal::Refusal;

/// AMD SEV ARKs the broker trusts (the header and public key of each, without the signature).
#[derive(Debug, Clone)]
pub struct SevTrust {
    arks: Vec<Vec<u8>>,
}

/// The identity part of an AMD CA certificate: everything before the signature.
fn ca_identity(cert: &[u8]) -> Option<&[u8]> {
    let bits = u32::from_le_bytes(cert.get(0x3C..0x40)?.try_into().ok()?);
    let len = 0x40 + 2 * usize::try_from(bits).ok()? / 8;
    cert.get(..len)
}

impl SevTrust {
    /// AMD's Naples, Rome, Milan, Genoa and Turin ARKs plus `extra` raw ARK certificates.
    pub fn new(extra: Vec<Vec<u8>>) -> Self {
        use sev::certs::sev::builtin::{genoa, milan, naples, rome, turin};
        let mut arks: Vec<Vec<u8>> = [naples::ARK, rome::ARK, milan::ARK, genoa::ARK, turin::ARK]
            .iter()
            .filter_map(|a| ca_identity(a).map(<[u8]>::to_vec))
            .collect();
        arks.extend(
            extra
                .iter()
                .filter_map(|a| ca_identity(a).map(<[u8]>::to_vec)),
        );
        SevTrust { arks }
    }

    fn trusts(&self, ark: &[u8]) -> bool {
        ca_identity(ark).is_some_and(|id| self.arks.iter().any(|a| a == id))
    }
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

/// `/auth`: checks the platform chain and creates the owner session for `policy_word`.
pub fn start(
    chain: &SevCertChain,
    policy_word: u32,
    trust: &SevTrust,
) -> Result<(Session<Initialized>, SevStart), Refusal> {
    if !trust.trusts(&chain.ca.ark) {
        return Err(refuse("SevCertChain", "ARK is not a trusted root"));
    }
    let bytes = chain.to_bytes();
    let chain = Chain::decode(&mut bytes.as_slice(), ())
        .map_err(|_| Refusal::bad_request("SevCertChain", "certificate chain cannot be decoded"))?;
    let policy = policy_of(policy_word);
    let session = Session::try_from(policy)
        .map_err(|_| Refusal::internal("no hardware random numbers for the owner session"))?;
    let start = session
        .start(chain)
        .map_err(|_| refuse("SevCertChain", "certificate chain does not verify"))?;
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

pub fn build_of(b: &SevBuild) -> Build {
    Build {
        version: Version {
            major: b.version.major,
            minor: b.version.minor,
        },
        build: b.build,
    }
}

fn expected_measure(
    tik: &[u8],
    build: &Build,
    policy_word: u32,
    digest: &[u8],
    mnonce: &[u8; 16],
) -> Option<Vec<u8>> {
    let key = PKey::hmac(tik).ok()?;
    let mut s = Signer::new(MessageDigest::sha256(), &key).ok()?;
    s.update(&[0x04, build.version.major, build.version.minor, build.build])
        .ok()?;
    s.update(&policy_word.to_le_bytes()).ok()?;
    s.update(digest).ok()?;
    s.update(mnonce).ok()?;
    s.sign_to_vec().ok()
}

/// `/attest`: finds the allowed launch digest the measurement proves, then lets the crate
/// verify it and hand out the verified session.
pub fn attest(
    session: Session<Initialized>,
    build: Build,
    policy_word: u32,
    evidence: &SevMeasurement,
    digests: &[Vec<u8>],
) -> Result<Session<Verified>, Refusal> {
    let matching = digests.iter().find(|d| {
        expected_measure(&session.tik, &build, policy_word, d, &evidence.mnonce)
            .is_some_and(|m| openssl::memcmp::eq(&m, &evidence.measure))
    });
    let Some(digest) = matching else {
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

/// `/key`: packages `payload` as a LAUNCH_SECRET packet.
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

    #[test]
    fn real_amd_chain_from_kbs_types_is_accepted_with_builtin_roots() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/sev_request.json"
        ))
        .unwrap();
        let req: Request = serde_json::from_str(&text).unwrap();
        let sev: SevRequest = serde_json::from_str(&req.extra_params).unwrap();
        let (_, start) = start(&sev.chain, ES_POLICY, &SevTrust::new(vec![])).unwrap();
        start.validate().unwrap();
        // A corrupted PEK signature makes the crate's chain check fail.
        let mut bad = sev.chain.clone();
        bad.sev.pek[0x20] ^= 1; // inside the signed public key
        assert_eq!(start_err(&bad, &SevTrust::new(vec![])), "SevCertChain");
    }

    fn start_err(chain: &SevCertChain, trust: &SevTrust) -> &'static str {
        start(chain, ES_POLICY, trust).err().unwrap().kind
    }

    #[test]
    fn full_owner_flow_against_fake_psp() {
        let platform = FakeSevPlatform::new().unwrap();
        // Fake ARK refused unless configured.
        assert_eq!(
            start_err(&platform.chain, &SevTrust::new(vec![])),
            "SevCertChain"
        );
        let trust = SevTrust::new(vec![platform.ark().to_vec()]);
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

        // A measurement of other contents is refused.
        let (session, wire) = start(&platform.chain, ES_POLICY, &trust).unwrap();
        let mut guest = platform.launch_start(&wire).unwrap();
        guest.update(b"tampered");
        let msr = guest.measure().unwrap();
        let err = attest(session, build, ES_POLICY, &msr, &[good_digest()])
            .err()
            .unwrap();
        assert_eq!(err.kind, "SevMeasurement");
    }

    fn good_digest() -> Vec<u8> {
        openssl::sha::sha256(b"kernel and initrd").to_vec()
    }
}
