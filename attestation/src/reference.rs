//! The reference-kbs wire format (kbs-types 0.2.0 era), spoken by virtee/reference-kbs, the
//! libkrun-sev 1.x clients and `buildah mkcw` registration.
//!
//! The 0.2.0 shapes carry nested JSON as *strings* (`extra-params`, `tee-evidence`) and the SEV
//! structures use the serde form of sev 1.x, where bitflags serialise as `{"bits":N}` and byte
//! arrays as JSON arrays of numbers. Newer sev releases serialise flags as a bare number, so the
//! flag types here accept both and emit `{"bits":N}`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Value of `Request.version` sent by reference-protocol clients (the server never checks it).
pub const PROTOCOL_VERSION: &str = "0.0.0";
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "session_id";
/// Size of a legacy SEV certificate (PDH, PEK, OCA, CEK, GODH).
pub const SEV_CERT_LEN: usize = 0x824;
/// Size of the LAUNCH_START session blob.
pub const SEV_SESSION_LEN: usize = 128;
/// Size of a LAUNCH_SECRET packet header.
pub const SEV_SECRET_HEADER_LEN: usize = 52;

/// Errors from converting between wire types and firmware byte images.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("SEV certificate chain is truncated")]
    ChainTruncated,
    #[error("SEV CA certificate has an invalid key size")]
    CaCertKeySize,
    #[error("SEV certificate chain has trailing bytes")]
    ChainTrailing,
    #[error("SEV certificate has the wrong length")]
    CertLength,
    #[error("SEV measurement must be 48 bytes")]
    MeasurementLength,
    #[error("SEV secret packet is shorter than its header")]
    SecretTruncated,
}

/// TEE names as serialised by kbs-types 0.2.0.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tee {
    Sev,
    Sgx,
    Snp,
    Tdx,
    Sample,
}

/// `POST /kbs/v0/auth` body.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub version: String,
    pub tee: Tee,
    /// JSON text of [`SnpRequest`] or [`SevRequest`].
    #[serde(rename = "extra-params")]
    pub extra_params: String,
}

/// `/auth` answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub nonce: String,
    /// `""` for SNP, JSON text of [`SevChallenge`] for SEV.
    #[serde(rename = "extra-params")]
    pub extra_params: String,
}

/// The guest's RSA public key: standard base64 (with padding) of the big-endian modulus and
/// exponent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct TeePubKey {
    pub alg: String,
    #[serde(rename = "k-mod")]
    pub k_mod: String,
    #[serde(rename = "k-exp")]
    pub k_exp: String,
}

/// `POST /kbs/v0/attest` body.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    #[serde(rename = "tee-pubkey")]
    pub tee_pubkey: TeePubKey,
    /// JSON text of [`SnpAttestation`] or [`SevMeasurement`].
    #[serde(rename = "tee-evidence")]
    pub tee_evidence: String,
}

/// Error body (kbs-types `ErrorInformation`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorInformation {
    #[serde(rename = "type")]
    pub error_type: String,
    pub detail: String,
}

/// SNP `extra-params` of the `/auth` request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnpRequest {
    pub workload_id: String,
    /// Standard base64 of the launch's measured `/krun/host.json` (an extension: other
    /// brokers ignore it). A broker holding the guest bundle recomputes the launch digest
    /// from it, which lets it accept launches of workloads registered with unbound digests
    /// (buildah's `krunfw_measurement`; docs/measurement.md, "Unbound digests").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_json: Option<String>,
}

/// SNP `tee-evidence`: the raw 1184-byte report in hex (either case).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnpAttestation {
    pub gen: String,
    pub report: String,
    /// JSON text; `"[]"` from the libkrun C client.
    pub cert_chain: String,
}

/// `POST /kbs/v0/register_workload` body as sent by `buildah mkcw` and oci2cw.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RegisterWorkload {
    pub workload_id: String,
    /// Lowercase hex launch digest (64 hex for SEV/SEV-ES, 96 for SNP).
    pub launch_measurement: String,
    pub passphrase: String,
    /// JSON text of a [`SevPolicy`].
    pub tee_config: String,
    /// What `launch_measurement` is (an extension): absent (buildah, whose digest comes from
    /// `krunfw_measurement`) means the digest of the launch without its binding; `bound`
    /// (`krun-sev mkcw --register`) means the digest of the launch itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement_kind: Option<MeasurementKind>,
}

/// Whether a registered digest covers the launch's binding (docs/measurement.md).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MeasurementKind {
    /// The digest of the launch as it runs, binding included: matched directly.
    #[default]
    Bound,
    /// The digest of the launch with its binding removed (`krunfw_measurement`, buildah):
    /// never matched directly; a broker holding the bundle recomputes it from the launch's
    /// host.json.
    Unbound,
}

/// Encodes measured host.json bytes for the `host_json` request fields.
pub fn encode_host_json(json: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(json)
}

/// A bitflags value in sev 1.x serde form (`{"bits":N}`), also accepting a bare `N`.
fn ser_bits<S: Serializer, T: Serialize>(bits: T, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Bits<T> {
        bits: T,
    }
    Bits { bits }.serialize(s)
}

fn de_bits<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Bare(T),
        Wrapped { bits: T },
    }
    Ok(match Either::<T>::deserialize(d)? {
        Either::Bare(v) | Either::Wrapped { bits: v } => v,
    })
}

/// SEV guest policy flags (low 16 bits of the SEV API policy).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct PolicyFlags(#[serde(serialize_with = "ser_bits", deserialize_with = "de_bits")] pub u16);

impl PolicyFlags {
    pub const NO_DEBUG: u16 = 1;
    pub const NO_KEY_SHARING: u16 = 2;
    pub const ENCRYPTED_STATE: u16 = 4;
    pub const NO_SEND: u16 = 8;
    pub const DOMAIN: u16 = 0x10;
    pub const SEV: u16 = 0x20;

    /// Whether every bit of `mask` is set.
    pub fn contains(self, mask: u16) -> bool {
        self.0 & mask == mask
    }
}

/// Firmware API version.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SevVersion {
    pub major: u8,
    pub minor: u8,
}

/// SEV launch policy (sev 1.x `launch::sev::Policy`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SevPolicy {
    pub flags: PolicyFlags,
    pub minfw: SevVersion,
}

impl SevPolicy {
    /// The SEV API policy word: flags in bits 0-15, minimum firmware major/minor above.
    pub fn to_u32(self) -> u32 {
        u32::from(self.flags.0)
            | (u32::from(self.minfw.major) << 16)
            | (u32::from(self.minfw.minor) << 24)
    }

    /// Inverse of [`SevPolicy::to_u32`].
    pub fn from_u32(word: u32) -> Self {
        let [lo, hi, major, minor] = word.to_le_bytes();
        SevPolicy {
            flags: PolicyFlags(u16::from_le_bytes([lo, hi])),
            minfw: SevVersion { major, minor },
        }
    }
}

/// Platform firmware build (`platform_status().build`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SevBuild {
    pub version: SevVersion,
    pub build: u8,
}

/// AMD CA part of the SEV chain (raw AMD certificate images).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SevCaChain {
    pub ask: Vec<u8>,
    pub ark: Vec<u8>,
}

/// Platform part of the SEV chain (raw 0x824-byte certificates).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SevPlatformChain {
    pub pdh: Vec<u8>,
    pub pek: Vec<u8>,
    pub oca: Vec<u8>,
    pub cek: Vec<u8>,
}

/// The full SEV certificate chain (sev `certs::sev::Chain`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SevCertChain {
    pub ca: SevCaChain,
    pub sev: SevPlatformChain,
}

/// Length of an AMD SEV CA certificate (ARK/ASK) at the start of `bytes`.
fn ca_cert_len(bytes: &[u8]) -> Result<usize, ReferenceError> {
    let field = |off: usize| -> Result<u32, ReferenceError> {
        let b = bytes
            .get(off..off + 4)
            .ok_or(ReferenceError::ChainTruncated)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (exp_bits, mod_bits) = (field(0x38)?, field(0x3C)?);
    if exp_bits != mod_bits || !matches!(mod_bits, 2048 | 4096) {
        return Err(ReferenceError::CaCertKeySize);
    }
    // mod_bits is 2048 or 4096, so this cannot overflow.
    let len = 0x40 + 3 * (mod_bits as usize / 8);
    if bytes.len() < len {
        return Err(ReferenceError::ChainTruncated);
    }
    Ok(len)
}

impl SevCertChain {
    /// Parses the `sevctl export --full` / libkrun `/tmp/libkrun-sev.chain` encoding:
    /// PDH ‖ PEK ‖ OCA ‖ CEK (0x824 bytes each) ‖ ASK ‖ ARK.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReferenceError> {
        let platform_len = 4 * SEV_CERT_LEN;
        if bytes.len() < platform_len {
            return Err(ReferenceError::ChainTruncated);
        }
        let cert = |i: usize| bytes[i * SEV_CERT_LEN..(i + 1) * SEV_CERT_LEN].to_vec();
        let rest = &bytes[platform_len..];
        let ask_len = ca_cert_len(rest)?;
        let (ask, rest) = rest.split_at(ask_len);
        let ark_len = ca_cert_len(rest)?;
        if rest.len() != ark_len {
            return Err(ReferenceError::ChainTrailing);
        }
        Ok(SevCertChain {
            ca: SevCaChain {
                ask: ask.to_vec(),
                ark: rest.to_vec(),
            },
            sev: SevPlatformChain {
                pdh: cert(0),
                pek: cert(1),
                oca: cert(2),
                cek: cert(3),
            },
        })
    }

    /// Inverse of [`SevCertChain::from_bytes`].
    pub fn to_bytes(&self) -> Vec<u8> {
        [
            self.sev.pdh.as_slice(),
            &self.sev.pek,
            &self.sev.oca,
            &self.sev.cek,
            &self.ca.ask,
            &self.ca.ark,
        ]
        .concat()
    }
}

/// SEV `extra-params` of the `/auth` request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SevRequest {
    pub build: SevBuild,
    pub chain: SevCertChain,
    pub workload_id: String,
    /// As [`SnpRequest::host_json`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_json: Option<String>,
}

/// The LAUNCH_START session blob (sev `launch::sev::Session`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SevSession {
    pub nonce: [u8; 16],
    pub wrap_tk: [u8; 32],
    pub wrap_iv: [u8; 16],
    pub wrap_mac: [u8; 32],
    pub policy_mac: [u8; 32],
}

impl SevSession {
    /// The 128-byte image passed to LAUNCH_START.
    pub fn to_bytes(&self) -> [u8; SEV_SESSION_LEN] {
        let mut out = [0u8; SEV_SESSION_LEN];
        out[..16].copy_from_slice(&self.nonce);
        out[16..48].copy_from_slice(&self.wrap_tk);
        out[48..64].copy_from_slice(&self.wrap_iv);
        out[64..96].copy_from_slice(&self.wrap_mac);
        out[96..].copy_from_slice(&self.policy_mac);
        out
    }

    /// Inverse of [`SevSession::to_bytes`].
    pub fn from_bytes(b: &[u8; SEV_SESSION_LEN]) -> Self {
        let mut s = SevSession::default();
        s.nonce.copy_from_slice(&b[..16]);
        s.wrap_tk.copy_from_slice(&b[16..48]);
        s.wrap_iv.copy_from_slice(&b[48..64]);
        s.wrap_mac.copy_from_slice(&b[64..96]);
        s.policy_mac.copy_from_slice(&b[96..]);
        s
    }
}

/// LAUNCH_START parameters chosen by the guest owner (sev 1.x `launch::sev::Start`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SevStart {
    pub policy: SevPolicy,
    /// The owner's Diffie-Hellman certificate (GODH), 0x824 bytes.
    pub cert: Vec<u8>,
    pub session: SevSession,
}

impl SevStart {
    /// Checks the certificate length so the VMM can pass it to the firmware as is.
    pub fn validate(&self) -> Result<(), ReferenceError> {
        if self.cert.len() != SEV_CERT_LEN {
            return Err(ReferenceError::CertLength);
        }
        Ok(())
    }
}

/// SEV `extra-params` of the `/auth` answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SevChallenge {
    pub id: String,
    pub start: SevStart,
}

/// LAUNCH_MEASURE output, sent as the SEV `tee-evidence`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SevMeasurement {
    pub measure: [u8; 32],
    pub mnonce: [u8; 16],
}

impl SevMeasurement {
    /// Parses the 48-byte LAUNCH_MEASURE buffer (MEASURE ‖ MNONCE).
    pub fn from_bytes(b: &[u8]) -> Result<Self, ReferenceError> {
        if b.len() != 48 {
            return Err(ReferenceError::MeasurementLength);
        }
        let mut m = SevMeasurement::default();
        m.measure.copy_from_slice(&b[..32]);
        m.mnonce.copy_from_slice(&b[32..]);
        Ok(m)
    }
}

/// LAUNCH_SECRET header flags (bit 0: compressed).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct HeaderFlags(#[serde(serialize_with = "ser_bits", deserialize_with = "de_bits")] pub u32);

/// LAUNCH_SECRET packet header.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SevSecretHeader {
    pub flags: HeaderFlags,
    pub iv: [u8; 16],
    pub mac: [u8; 32],
}

/// The `/key` answer for SEV: a LAUNCH_SECRET packet.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SevSecret {
    pub header: SevSecretHeader,
    pub ciphertext: Vec<u8>,
}

impl SevSecret {
    /// The 52-byte header image passed to LAUNCH_SECRET.
    pub fn header_bytes(&self) -> [u8; SEV_SECRET_HEADER_LEN] {
        let mut out = [0u8; SEV_SECRET_HEADER_LEN];
        out[..4].copy_from_slice(&self.header.flags.0.to_le_bytes());
        out[4..20].copy_from_slice(&self.header.iv);
        out[20..].copy_from_slice(&self.header.mac);
        out
    }

    /// Parses header ‖ ciphertext (the sev crate's `Secret` encoding).
    pub fn from_bytes(b: &[u8]) -> Result<Self, ReferenceError> {
        if b.len() < SEV_SECRET_HEADER_LEN {
            return Err(ReferenceError::SecretTruncated);
        }
        let mut header = SevSecretHeader {
            flags: HeaderFlags(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ..Default::default()
        };
        header.iv.copy_from_slice(&b[4..20]);
        header.mac.copy_from_slice(&b[20..52]);
        Ok(SevSecret {
            header,
            ciphertext: b[SEV_SECRET_HEADER_LEN..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn testdata(name: &str) -> String {
        let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn snp_auth_request_matches_libkrun_client() {
        // The libkrun C client's exact bytes for an SNP /auth.
        let text = r#"{"version":"0.0.0","tee":"snp","extra-params":"{\"workload_id\":\"wid\"}"}"#;
        let req: Request = serde_json::from_str(text).unwrap();
        assert_eq!(req.tee, Tee::Snp);
        let snp: SnpRequest = serde_json::from_str(&req.extra_params).unwrap();
        assert_eq!(snp.workload_id, "wid");
        assert_eq!(serde_json::to_string(&req).unwrap(), text);
    }

    #[test]
    fn snp_attestation_round_trips_string_evidence() {
        let text = r#"{"tee-pubkey":{"alg":"RSA","k-mod":"AQAB","k-exp":"AQAB"},"tee-evidence":"{\"gen\":\"milan\",\"report\":\"0A0b\",\"cert_chain\":\"[]\"}"}"#;
        let att: Attestation = serde_json::from_str(text).unwrap();
        assert_eq!(att.tee_pubkey.k_mod, "AQAB");
        let ev: SnpAttestation = serde_json::from_str(&att.tee_evidence).unwrap();
        assert_eq!(ev.gen, "milan");
        assert_eq!(hex::decode(&ev.report).unwrap(), vec![0x0a, 0x0b]);
        assert_eq!(ev.cert_chain, "[]");
        assert_eq!(serde_json::to_string(&att).unwrap(), text);
        assert_eq!(serde_json::to_string(&ev).unwrap(), att.tee_evidence);
    }

    #[test]
    fn buildah_registration_body_parses_and_reserialises_in_go_order() {
        let text = r#"{"workload_id":"w1","launch_measurement":"abcd","passphrase":"pw","tee_config":"{\"flags\":{\"bits\":63},\"minfw\":{\"major\":0,\"minor\":0}}"}"#;
        let reg: RegisterWorkload = serde_json::from_str(text).unwrap();
        let policy: SevPolicy = serde_json::from_str(&reg.tee_config).unwrap();
        assert_eq!(policy.flags.0, 63);
        assert!(policy
            .flags
            .contains(PolicyFlags::ENCRYPTED_STATE | PolicyFlags::NO_DEBUG));
        assert_eq!(serde_json::to_string(&reg).unwrap(), text);
        assert_eq!(
            serde_json::to_string(&policy).unwrap(),
            r#"{"flags":{"bits":63},"minfw":{"major":0,"minor":0}}"#
        );
    }

    #[test]
    fn policy_accepts_bare_number_from_sev_7() {
        let policy: SevPolicy =
            serde_json::from_str(r#"{"flags":59,"minfw":{"major":1,"minor":2}}"#).unwrap();
        assert_eq!(policy.flags.0, 59);
        assert_eq!(policy.to_u32(), 59 | (1 << 16) | (2 << 24));
        assert_eq!(SevPolicy::from_u32(policy.to_u32()), policy);
        assert!(serde_json::from_str::<SevPolicy>(r#"{"flags":"x","minfw":{}}"#).is_err());
    }

    #[test]
    fn real_sev_request_from_kbs_types_parses() {
        // testdata/sev_request.json is kbs-types 0.2.0's fixture: a real AMD chain.
        let req: Request = serde_json::from_str(&testdata("sev_request.json")).unwrap();
        assert_eq!(req.tee, Tee::Sev);
        let sev: SevRequest = serde_json::from_str(&req.extra_params).unwrap();
        assert_eq!(sev.workload_id, "fakeid");
        assert_eq!(
            sev.build,
            SevBuild {
                version: SevVersion {
                    major: 1,
                    minor: 49
                },
                build: 6
            }
        );
        assert_eq!(sev.chain.sev.pdh.len(), SEV_CERT_LEN);
        assert_eq!(sev.chain.ca.ark.len(), 1600);
        // Byte image round trip, then the JSON is identical to the fixture's.
        let again = SevCertChain::from_bytes(&sev.chain.to_bytes()).unwrap();
        assert_eq!(again, sev.chain);
        let original: Value = serde_json::from_str(&req.extra_params).unwrap();
        let ours: Value = serde_json::to_value(&sev).unwrap();
        assert_eq!(ours, original);
    }

    #[test]
    fn real_sev_challenge_from_kbs_types_parses_and_reserialises() {
        let ch: Challenge = serde_json::from_str(&testdata("sev_challenge.json")).unwrap();
        let sev: SevChallenge = serde_json::from_str(&ch.extra_params).unwrap();
        assert_eq!(sev.id, "fakeid");
        sev.start.validate().unwrap();
        assert_eq!(sev.start.policy.to_u32(), 0);
        let blob = sev.start.session.to_bytes();
        assert_eq!(SevSession::from_bytes(&blob), sev.start.session);
        let original: Value = serde_json::from_str(&ch.extra_params).unwrap();
        assert_eq!(serde_json::to_value(&sev).unwrap(), original);
    }

    #[test]
    fn chain_with_bad_ca_sizes_is_refused() {
        let mut bytes = vec![0u8; 4 * SEV_CERT_LEN + 0x40];
        assert!(matches!(
            SevCertChain::from_bytes(&bytes),
            Err(ReferenceError::CaCertKeySize)
        ));
        bytes.truncate(100);
        assert!(matches!(
            SevCertChain::from_bytes(&bytes),
            Err(ReferenceError::ChainTruncated)
        ));
    }

    #[test]
    fn sev_measurement_and_secret_in_sev1_form() {
        let m = SevMeasurement {
            measure: [7; 32],
            mnonce: [9; 16],
        };
        let v = serde_json::to_value(m).unwrap();
        assert_eq!(v["measure"].as_array().unwrap().len(), 32);
        assert_eq!(v["mnonce"][0], json!(9));
        let raw: Vec<u8> = [[7u8; 32].as_slice(), [9u8; 16].as_slice()].concat();
        assert_eq!(SevMeasurement::from_bytes(&raw).unwrap(), m);
        assert!(SevMeasurement::from_bytes(&raw[..47]).is_err());

        let secret_json = json!({
            "header": {"flags": {"bits": 0}, "iv": vec![1u8; 16], "mac": vec![2u8; 32]},
            "ciphertext": [3, 4, 5]
        });
        let s: SevSecret = serde_json::from_value(secret_json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), secret_json);
        let bytes = [s.header_bytes().as_slice(), &s.ciphertext].concat();
        assert_eq!(SevSecret::from_bytes(&bytes).unwrap(), s);
        // sev 7+ writes the flags as a bare number.
        let bare = json!({"header": {"flags": 0, "iv": vec![1u8; 16], "mac": vec![2u8; 32]}, "ciphertext": []});
        assert!(serde_json::from_value::<SevSecret>(bare).is_ok());
    }
}
