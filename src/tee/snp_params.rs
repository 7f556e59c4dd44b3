//! SNP launch parameters from the TEE config's `tee_data`: the guest policy for
//! SNP_LAUNCH_START, and HOST_DATA plus an optional ID block for SNP_LAUNCH_FINISH.
//!
//! Keys (all optional; unknown keys such as buildah's `gen` are ignored, `null` means absent):
//!
//! | key | value | default |
//! |---|---|---|
//! | `policy` | JSON integer, or a string: `"0x30000"` (hex) or decimal digits | `0x30000` |
//! | `host_data` | 64 hex digits, or base64 of 32 bytes | 32 zero bytes |
//! | `id_block` | base64 of the 96-byte ID block (as QEMU's `sev-snp-guest,id-block=`) | none |
//! | `id_auth` | base64 of the 4096-byte ID authentication structure (`id-auth=`) | none |
//! | `author_key_enabled` | bool: `id_auth` carries an author key (AUTHOR_KEY_EN) | `false` |
//!
//! Policy rules (SNP firmware ABI, guest policy structure; Linux 6.12 KVM
//! `snp_launch_start`): bit 17 is reserved and must be one; bits 26..=63 are reserved and
//! must be zero; SMT (bit 16) must be allowed and SINGLE_SOCKET (bit 20) must be clear,
//! because KVM refuses both otherwise. DEBUG (bit 19) lets the host read and write guest
//! memory through the firmware's debug commands: it is accepted, with a warning in the log,
//! because the attestation report shows the policy and a broker can refuse it. The ABI
//! version (bits 0..=15), MIGRATE_MA and bits 21..=25 are left to the firmware and KVM, which
//! refuse what the platform cannot honour.
//!
//! The ID block and ID auth are passed through unchanged: the AMD-SP verifies the
//! signatures and that the ID block names this launch's digest and policy. Only the
//! policy inside the ID block is compared here, so that a mismatch fails at config load
//! instead of at the end of the launch.
//!
//! None of these enter the launch digest (`docs/measurement.md`); the report carries them.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::{Map, Value};

use super::TeeMode;

/// Bytes of the ID block (SNP ABI `ID_BLOCK`).
pub const ID_BLOCK_LEN: usize = 96;
/// Bytes of the ID authentication information structure (SNP ABI `ID_AUTH`).
pub const ID_AUTH_LEN: usize = 4096;
/// Bytes of HOST_DATA.
pub const HOST_DATA_LEN: usize = 32;

/// Policy bit 16: SMT allowed.
pub const POLICY_SMT: u64 = 1 << 16;
/// Policy bit 17: reserved, must be one.
pub const POLICY_RESERVED_MBO: u64 = 1 << 17;
/// Policy bit 18: a migration agent may be associated.
pub const POLICY_MIGRATE_MA: u64 = 1 << 18;
/// Policy bit 19: the firmware's debug commands may read and write guest memory.
pub const POLICY_DEBUG: u64 = 1 << 19;
/// Policy bit 20: the guest may run on one socket only.
pub const POLICY_SINGLE_SOCKET: u64 = 1 << 20;
/// Policy bits the SNP ABI defines (0..=25, up to PAGE_SWAP_DISABLE); the rest are reserved.
pub const POLICY_DEFINED: u64 = (1 << 26) - 1;

/// ID block: VERSION (u32) and POLICY (u64) offsets, and the only defined version.
const ID_BLOCK_VERSION_OFFSET: usize = 0x50;
const ID_BLOCK_POLICY_OFFSET: usize = 0x58;
const ID_BLOCK_VERSION: u32 = 1;

/// Standard base64; padding optional (QEMU decodes with glib, which does not insist on it).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Errors in the SNP keys of `tee_data`. Each names the key.
#[derive(Debug, thiserror::Error)]
pub enum SnpParamsError {
    /// A key's value has the wrong type, length or content.
    #[error("tee_data key `{key}` {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A key is present without another key it depends on.
    #[error("tee_data key `{key}` needs `{needs}`")]
    Needs {
        /// The key that is present.
        key: &'static str,
        /// The key it depends on.
        needs: &'static str,
    },
}

impl SnpParamsError {
    /// The `tee_data` key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            SnpParamsError::Invalid { key, .. } | SnpParamsError::Needs { key, .. } => key,
        }
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> SnpParamsError {
    SnpParamsError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// An owner-signed ID block with its authentication structure, for SNP_LAUNCH_FINISH.
#[derive(Clone, PartialEq, Eq)]
pub struct SnpIdBlock {
    block: Box<[u8; ID_BLOCK_LEN]>,
    auth: Box<[u8; ID_AUTH_LEN]>,
    author_key_en: bool,
}

impl SnpIdBlock {
    /// The 96-byte ID block.
    pub fn block(&self) -> &[u8; ID_BLOCK_LEN] {
        &self.block
    }

    /// The 4096-byte ID authentication structure.
    pub fn auth(&self) -> &[u8; ID_AUTH_LEN] {
        &self.auth
    }

    /// Whether the ID auth structure's author key is used (AUTHOR_KEY_EN).
    pub fn author_key_en(&self) -> bool {
        self.author_key_en
    }

    /// The ID block's GUEST_SVN.
    pub fn guest_svn(&self) -> u32 {
        u32_at(&self.block[..], 0x54)
    }
}

impl std::fmt::Debug for SnpIdBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpIdBlock")
            .field("guest_svn", &self.guest_svn())
            .field("author_key_en", &self.author_key_en)
            .finish_non_exhaustive()
    }
}

/// What the SNP launch takes from `tee_data`.
#[derive(Clone, PartialEq, Eq)]
pub struct SnpLaunchParams {
    policy: u64,
    host_data: [u8; HOST_DATA_LEN],
    id: Option<SnpIdBlock>,
}

/// Policy and HOST_DATA in hex, as reports and `tee_data` spell them (for launch logs).
impl std::fmt::Debug for SnpLaunchParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host_data: String = self.host_data.iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("SnpLaunchParams")
            .field("policy", &format_args!("{:#x}", self.policy))
            .field("host_data", &format_args!("{host_data}"))
            .field("id_block", &self.id)
            .finish()
    }
}

impl Default for SnpLaunchParams {
    /// The documented default policy, zero HOST_DATA, no ID block.
    fn default() -> Self {
        SnpLaunchParams {
            policy: TeeMode::Snp.default_policy(),
            host_data: [0; HOST_DATA_LEN],
            id: None,
        }
    }
}

impl SnpLaunchParams {
    /// Reads and validates the SNP keys of a `tee_data` object (module docs).
    pub fn from_tee_data(data: &Map<String, Value>) -> Result<Self, SnpParamsError> {
        let get = |key: &str| data.get(key).filter(|v| !v.is_null());

        let policy = match get("policy") {
            Some(v) => parse_policy(v)?,
            None => TeeMode::Snp.default_policy(),
        };
        check_policy(policy)?;

        let host_data = match get("host_data") {
            Some(v) => parse_host_data(v)?,
            None => [0; HOST_DATA_LEN],
        };

        let author_key_en = match get("author_key_enabled") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("author_key_enabled", "is not true or false")),
        };

        let id = match (get("id_block"), get("id_auth")) {
            (None, None) if author_key_en => {
                return Err(SnpParamsError::Needs {
                    key: "author_key_enabled",
                    needs: "id_block",
                })
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(SnpParamsError::Needs {
                    key: "id_block",
                    needs: "id_auth",
                })
            }
            (None, Some(_)) => {
                return Err(SnpParamsError::Needs {
                    key: "id_auth",
                    needs: "id_block",
                })
            }
            (Some(block), Some(auth)) => {
                let block: Box<[u8; ID_BLOCK_LEN]> = base64_exact(block, "id_block")?;
                let auth: Box<[u8; ID_AUTH_LEN]> = base64_exact(auth, "id_auth")?;
                check_id_block(&block[..], policy)?;
                Some(SnpIdBlock {
                    block,
                    auth,
                    author_key_en,
                })
            }
        };

        if policy & POLICY_DEBUG != 0 {
            log::warn!(
                "SNP policy {policy:#x} allows DEBUG: the host can read and write this guest's \
                 memory through the AMD-SP debug commands; the attestation report shows it"
            );
        }
        Ok(SnpLaunchParams {
            policy,
            host_data,
            id,
        })
    }

    /// The guest policy for SNP_LAUNCH_START.
    pub fn policy(&self) -> u64 {
        self.policy
    }

    /// HOST_DATA for SNP_LAUNCH_FINISH.
    pub fn host_data(&self) -> &[u8; HOST_DATA_LEN] {
        &self.host_data
    }

    /// The ID block for SNP_LAUNCH_FINISH, if the owner supplied one.
    pub fn id_block(&self) -> Option<&SnpIdBlock> {
        self.id.as_ref()
    }

    /// SNP_LAUNCH_FINISH's arguments for a launch backend.
    pub fn finish_params(&self) -> crate::tee::backend::FinishParams<'_> {
        crate::tee::backend::FinishParams {
            id_block: self.id.as_ref().map(|id| (&id.block[..], &id.auth[..])),
            author_key_en: self.id.as_ref().is_some_and(|id| id.author_key_en),
            host_data: self.host_data,
        }
    }

    /// The PSP model's SNP_LAUNCH_FINISH arguments (tests drive the model directly).
    #[cfg(test)]
    pub fn model_finish(&self) -> krun_psp_model::SnpLaunchFinish<'_> {
        krun_psp_model::SnpLaunchFinish {
            id_block: self.id.as_ref().map(|id| (&id.block[..], &id.auth[..])),
            author_key_en: self.id.as_ref().is_some_and(|id| id.author_key_en),
            host_data: self.host_data,
        }
    }
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(b)
}

fn parse_policy(value: &Value) -> Result<u64, SnpParamsError> {
    const WANT: &str = "expected an integer or a string like \"0x30000\"";
    match value {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| invalid("policy", format!("is {n}; {WANT}"))),
        Value::String(s) => {
            let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    u64::from_str_radix(hex, 16).ok()
                }
                Some(_) => None,
                None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
                None => None,
            };
            parsed.ok_or_else(|| invalid("policy", format!("is {s:?}; {WANT} (64 bits)")))
        }
        _ => Err(invalid("policy", format!("is {value}; {WANT}"))),
    }
}

fn check_policy(policy: u64) -> Result<(), SnpParamsError> {
    let reserved = policy & !POLICY_DEFINED;
    if reserved != 0 {
        return Err(invalid(
            "policy",
            format!("{policy:#x} sets reserved bits ({reserved:#x}; bits 26..=63 must be zero)"),
        ));
    }
    if policy & POLICY_RESERVED_MBO == 0 {
        return Err(invalid(
            "policy",
            format!("{policy:#x} clears bit 17, which the SNP ABI requires to be one"),
        ));
    }
    if policy & POLICY_SMT == 0 {
        return Err(invalid(
            "policy",
            format!(
                "{policy:#x} forbids SMT (bit 16); KVM launches SNP guests only with SMT allowed"
            ),
        ));
    }
    if policy & POLICY_SINGLE_SOCKET != 0 {
        return Err(invalid(
            "policy",
            format!("{policy:#x} sets SINGLE_SOCKET (bit 20), which KVM does not support"),
        ));
    }
    Ok(())
}

fn parse_host_data(value: &Value) -> Result<[u8; HOST_DATA_LEN], SnpParamsError> {
    let Value::String(s) = value else {
        return Err(invalid("host_data", "is not a string"));
    };
    if s.len() == 2 * HOST_DATA_LEN && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = [0u8; HOST_DATA_LEN];
        for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            *byte = (hex_digit(pair[0]) << 4) | hex_digit(pair[1]);
        }
        return Ok(out);
    }
    let bytes = BASE64.decode(s).map_err(|_| {
        invalid(
            "host_data",
            "is neither 64 hex digits nor base64 of 32 bytes",
        )
    })?;
    <[u8; HOST_DATA_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        invalid(
            "host_data",
            format!("decodes to {} bytes; expected 32", bytes.len()),
        )
    })
}

/// The value of an ASCII hex digit; the caller checked `is_ascii_hexdigit`, so the last arm
/// is never taken.
fn hex_digit(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Base64 of exactly `N` bytes.
fn base64_exact<const N: usize>(
    value: &Value,
    key: &'static str,
) -> Result<Box<[u8; N]>, SnpParamsError> {
    let Value::String(s) = value else {
        return Err(invalid(key, "is not a base64 string"));
    };
    let bytes = BASE64
        .decode(s)
        .map_err(|e| invalid(key, format!("is not valid base64 ({e})")))?;
    let len = bytes.len();
    Box::<[u8; N]>::try_from(bytes.into_boxed_slice())
        .map_err(|_| invalid(key, format!("decodes to {len} bytes; expected {N}")))
}

/// Early checks of fields the AMD-SP would refuse at the end of the launch.
fn check_id_block(block: &[u8], policy: u64) -> Result<(), SnpParamsError> {
    let version = u32_at(block, ID_BLOCK_VERSION_OFFSET);
    if version != ID_BLOCK_VERSION {
        return Err(invalid(
            "id_block",
            format!("has VERSION {version}; expected {ID_BLOCK_VERSION}"),
        ));
    }
    let signed_policy = u64_at(block, ID_BLOCK_POLICY_OFFSET);
    if signed_policy != policy {
        return Err(invalid(
            "id_block",
            format!(
                "is signed for policy {signed_policy:#x}, but the launch policy is {policy:#x} \
                 (set `policy` to match)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Result<SnpLaunchParams, SnpParamsError> {
        let Value::Object(m) = v else {
            panic!("not an object")
        };
        SnpLaunchParams::from_tee_data(&m)
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// A syntactically valid ID block for `policy` (not signed).
    fn block_for(policy: u64) -> [u8; ID_BLOCK_LEN] {
        let mut b = [0u8; ID_BLOCK_LEN];
        b[0x50..0x54].copy_from_slice(&1u32.to_le_bytes());
        b[0x58..0x60].copy_from_slice(&policy.to_le_bytes());
        b
    }

    #[test]
    fn buildah_tee_data_gives_the_defaults() {
        let p = params(json!({"gen": "milan"})).unwrap();
        assert_eq!(p, SnpLaunchParams::default());
        assert_eq!(p.policy(), 0x30000);
        assert_eq!(p.host_data(), &[0u8; 32]);
        assert!(p.id_block().is_none());
        let f = p.model_finish();
        assert!(f.id_block.is_none() && !f.author_key_en && f.host_data == [0; 32]);
        assert_eq!(params(json!({"policy": null})).unwrap(), p);
        assert_eq!(
            format!("{p:?}"),
            format!(
                "SnpLaunchParams {{ policy: 0x30000, host_data: {}, id_block: None }}",
                "0".repeat(64)
            )
        );
    }

    #[test]
    fn policy_spellings() {
        for v in [
            json!(0x30000),
            json!("0x30000"),
            json!("0X30000"),
            json!("196608"),
            json!("0x0000000000030000"),
        ] {
            assert_eq!(
                params(json!({ "policy": v })).unwrap().policy(),
                0x30000,
                "{v}"
            );
        }
        assert_eq!(
            params(json!({"policy": "0x70000"})).unwrap().policy(),
            0x70000
        );
        // ABI 1.55 minimum, ciphertext hiding and page-swap-disable are left to the firmware.
        assert_eq!(
            params(json!({"policy": "0x3030137"})).unwrap().policy(),
            0x303_0137
        );
        for v in [
            json!(-1),
            json!(1.5),
            json!("30000h"),
            json!("0x"),
            json!(""),
            json!("0x10000000000000000"),
            json!(" 0x30000"),
            json!(true),
            json!([0x30000]),
        ] {
            let e = params(json!({ "policy": v })).unwrap_err();
            assert_eq!(e.key(), "policy", "{v}");
        }
    }

    #[test]
    fn policy_rules() {
        let reason = |p: u64| params(json!({ "policy": p })).unwrap_err().to_string();
        assert!(reason(0x10000).contains("bit 17"));
        assert!(reason(0x20000).contains("SMT"));
        assert!(reason(0x30000 | 1 << 20).contains("SINGLE_SOCKET"));
        assert!(reason(0x30000 | 1 << 26).contains("reserved bits"));
        assert!(reason(0x30000 | 1 << 63).contains("reserved bits"));
        assert!(reason(0x30000 | 1 << 63).starts_with("tee_data key `policy`"));
        // DEBUG and MIGRATE_MA are accepted (DEBUG with a warning).
        assert!(params(json!({ "policy": 0x30000 | POLICY_DEBUG })).is_ok());
        assert!(params(json!({ "policy": 0x30000 | POLICY_MIGRATE_MA })).is_ok());
    }

    #[test]
    fn host_data_hex_and_base64() {
        let want: Vec<u8> = (0u8..32).collect();
        let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
        let upper = hex.to_ascii_uppercase();
        let padded = b64(&want);
        let unpadded = padded.trim_end_matches('=').to_owned();
        for s in [hex, upper, padded, unpadded] {
            let p = params(json!({ "host_data": s })).unwrap();
            assert_eq!(&p.host_data()[..], &want[..], "{s}");
            assert_eq!(&p.model_finish().host_data[..], &want[..]);
        }
        for v in [
            json!("00"),
            json!(b64(&[1u8; 31])),
            json!(b64(&[1u8; 33])),
            json!("zz".repeat(32)),
            json!("not base64!"),
            json!(42),
        ] {
            assert_eq!(
                params(json!({ "host_data": v })).unwrap_err().key(),
                "host_data",
                "{v}"
            );
        }
    }

    #[test]
    fn id_block_and_auth_pass_through() {
        let block = block_for(0x30000);
        let mut auth = [0u8; ID_AUTH_LEN];
        auth[7] = 9;
        let p = params(json!({
            "id_block": b64(&block), "id_auth": b64(&auth), "author_key_enabled": true
        }))
        .unwrap();
        let id = p.id_block().unwrap();
        assert_eq!(id.block(), &block);
        assert_eq!(id.auth(), &auth);
        assert!(id.author_key_en());
        let f = p.model_finish();
        assert_eq!(f.id_block, Some((&block[..], &auth[..])));
        assert!(f.author_key_en);
        let p = params(json!({"id_block": b64(&block), "id_auth": b64(&auth)})).unwrap();
        assert!(!p.model_finish().author_key_en);
    }

    #[test]
    fn id_keys_depend_on_each_other() {
        let block = b64(&block_for(0x30000));
        let auth = b64(&[0u8; ID_AUTH_LEN]);
        let needs = |v: Value| match params(v) {
            Err(SnpParamsError::Needs { key, needs }) => format!("{key} needs {needs}"),
            other => format!("{other:?}"),
        };
        assert_eq!(needs(json!({ "id_auth": auth })), "id_auth needs id_block");
        assert_eq!(
            needs(json!({ "id_block": block })),
            "id_block needs id_auth"
        );
        assert_eq!(
            needs(json!({"author_key_enabled": true})),
            "author_key_enabled needs id_block"
        );
        assert!(params(json!({"author_key_enabled": false})).is_ok());
        assert_eq!(
            params(json!({"author_key_enabled": "yes"}))
                .unwrap_err()
                .key(),
            "author_key_enabled"
        );
    }

    #[test]
    fn id_block_lengths_and_early_checks() {
        let auth = b64(&[0u8; ID_AUTH_LEN]);
        let block = b64(&block_for(0x30000));
        let key_of = |v: Value| params(v).unwrap_err().key();
        assert_eq!(
            key_of(json!({"id_block": b64(&[0u8; 95]), "id_auth": auth})),
            "id_block"
        );
        assert_eq!(
            key_of(json!({"id_block": b64(&[0u8; 97]), "id_auth": auth})),
            "id_block"
        );
        assert_eq!(
            key_of(json!({"id_block": "***", "id_auth": auth})),
            "id_block"
        );
        assert_eq!(key_of(json!({"id_block": 5, "id_auth": auth})), "id_block");
        assert_eq!(
            key_of(json!({"id_block": block, "id_auth": b64(&[0u8; 4095])})),
            "id_auth"
        );
        // VERSION must be 1.
        let mut v2 = block_for(0x30000);
        v2[0x50] = 2;
        assert_eq!(
            key_of(json!({"id_block": b64(&v2), "id_auth": auth})),
            "id_block"
        );
        // The ID block's POLICY must be the launch policy.
        let e =
            params(json!({"id_block": block, "id_auth": auth, "policy": "0x70000"})).unwrap_err();
        assert_eq!(e.key(), "id_block");
        assert!(e.to_string().contains("0x30000") && e.to_string().contains("0x70000"));
        let ok = b64(&block_for(0x70000));
        assert!(params(json!({"id_block": ok, "id_auth": auth, "policy": "0x70000"})).is_ok());
    }

    /// End to end against the PSP model, with the ID block built by the `sev` crate's
    /// owner-side tooling from ECDSA P-384 keys made with OpenSSL (independent of this
    /// module and of the model).
    mod with_model {
        use std::sync::{Arc, OnceLock};

        use krun_psp_model::{ModelIdentity, SnpGuest, SnpLaunchError};
        use sev::certs::snp::Verifiable;
        use sev::firmware::guest::AttestationReport;
        use sev::measurement::idblock::snp_calculate_id;
        use sev::measurement::idblock_types::{FamilyId, ImageId};
        use sev::measurement::snp::SnpLaunchDigest;
        use sev::parser::ByteParser;

        use super::*;

        fn identity() -> Arc<ModelIdentity> {
            static ID: OnceLock<Arc<ModelIdentity>> = OnceLock::new();
            ID.get_or_init(|| Arc::new(ModelIdentity::generate().unwrap()))
                .clone()
        }

        /// A model guest after SNP_LAUNCH_START and a few measured pages.
        fn launched(policy: u64) -> SnpGuest {
            let mut g = SnpGuest::launch_start(identity(), policy, [0; 16]).unwrap();
            let page: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
            g.update_normal(0xFFFF_E000, &page).unwrap();
            g.update_zero(0x10_0000, 4096).unwrap();
            g.update_vmsa(&[0x11; 4096]).unwrap();
            g
        }

        struct Owner {
            block: Vec<u8>,
            auth: Vec<u8>,
            id_key_digest: Vec<u8>,
            author_key_digest: Vec<u8>,
        }

        /// The owner signs an ID block for `ld` and `policy` (svn 5) with fresh keys.
        fn owner_sign(ld: [u8; 48], policy: u64) -> Owner {
            let dir = tempfile::tempdir().unwrap();
            let group =
                openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::SECP384R1).unwrap();
            let mut paths = Vec::new();
            for name in ["id_key.pem", "author_key.pem"] {
                let key = openssl::ec::EcKey::generate(&group).unwrap();
                let pem = openssl::pkey::PKey::from_ec_key(key)
                    .unwrap()
                    .private_key_to_pem_pkcs8()
                    .unwrap();
                let path = dir.path().join(name);
                std::fs::write(&path, pem).unwrap();
                paths.push(path);
            }
            let m = snp_calculate_id(
                Some(SnpLaunchDigest::new(ld)),
                Some(FamilyId::new([0xF1; 16])),
                Some(ImageId::new([0x1D; 16])),
                Some(5),
                Some(policy.into()),
                paths[0].clone(),
                paths[1].clone(),
            )
            .unwrap();
            Owner {
                block: m.id_block.to_bytes().unwrap().to_vec(),
                auth: m.id_auth.to_bytes().unwrap().to_vec(),
                id_key_digest: m.id_key_digest.try_into().unwrap(),
                author_key_digest: m.auth_key_digest.try_into().unwrap(),
            }
        }

        fn tee_data(owner: &Owner, policy: &str, host_data: &str) -> Value {
            json!({
                "gen": "milan",
                "policy": policy,
                "host_data": host_data,
                "id_block": b64(&owner.block),
                "id_auth": b64(&owner.auth),
                "author_key_enabled": true,
            })
        }

        #[test]
        fn signed_id_block_is_accepted_and_host_data_is_reported() {
            let policy = 0x30000u64;
            let mut g = launched(policy);
            let owner = owner_sign(g.launch_digest(), policy);
            let host_data = "a5".repeat(32);
            let p = params(tee_data(&owner, "0x30000", &host_data)).unwrap();
            assert_eq!(p.policy(), g.policy());
            g.launch_finish(p.model_finish()).unwrap();

            let raw = g.report(&[0x42; 64], 0).unwrap();
            let report = AttestationReport::from_bytes(&raw[..]).unwrap();
            (&identity().snp_chain(), &report).verify().unwrap();
            assert_eq!(report.host_data, [0xA5; 32]);
            assert_eq!(u64::from(report.policy), policy);
            assert_eq!(report.measurement, g.launch_digest());
            assert_eq!(&report.id_key_digest[..], &owner.id_key_digest[..]);
            assert_eq!(&report.author_key_digest[..], &owner.author_key_digest[..]);
            assert_eq!(report.family_id, [0xF1; 16]);
            assert_eq!(report.image_id, [0x1D; 16]);
            assert_eq!(report.guest_svn, 5);
            assert!(report.key_info.author_key_en());
        }

        #[test]
        fn host_data_without_id_block_is_reported() {
            let mut g = launched(0x30000);
            let host_data: Vec<u8> = (100u8..132).collect();
            let p = params(json!({"gen": "milan", "host_data": b64(&host_data)})).unwrap();
            g.launch_finish(p.model_finish()).unwrap();
            let report =
                AttestationReport::from_bytes(&g.report(&[0; 64], 0).unwrap()[..]).unwrap();
            assert_eq!(&report.host_data[..], &host_data[..]);
            assert_eq!(report.id_key_digest, [0; 48]);
        }

        #[test]
        fn tampered_or_foreign_id_blocks_are_refused_by_the_psp() {
            let policy = 0x30000u64;
            let mut g = launched(policy);
            let ld = g.launch_digest();
            let zero_host = "00".repeat(32);

            // GUEST_SVN changed after signing: the signature no longer verifies.
            let mut owner = owner_sign(ld, policy);
            owner.block[0x54] ^= 1;
            let p = params(tee_data(&owner, "0x30000", &zero_host)).unwrap();
            assert!(matches!(
                g.launch_finish(p.model_finish()),
                Err(SnpLaunchError::BadSignature)
            ));

            // The author's signature over the ID key damaged.
            let mut owner = owner_sign(ld, policy);
            owner.auth[0x680] ^= 0x80;
            let p = params(tee_data(&owner, "0x30000", &zero_host)).unwrap();
            assert!(matches!(
                g.launch_finish(p.model_finish()),
                Err(SnpLaunchError::BadSignature)
            ));

            // Validly signed, but for another launch.
            let owner = owner_sign([0x33; 48], policy);
            let p = params(tee_data(&owner, "0x30000", &zero_host)).unwrap();
            assert!(matches!(
                g.launch_finish(p.model_finish()),
                Err(SnpLaunchError::IdBlockMismatch)
            ));

            // Signed for a DEBUG policy: refused at config load already.
            let owner = owner_sign(ld, policy | POLICY_DEBUG);
            let e = params(tee_data(&owner, "0x30000", &zero_host)).unwrap_err();
            assert_eq!(e.key(), "id_block");

            // The genuine one still goes through.
            let owner = owner_sign(ld, policy);
            let p = params(tee_data(&owner, "0x30000", &zero_host)).unwrap();
            g.launch_finish(p.model_finish()).unwrap();
        }
    }
}
