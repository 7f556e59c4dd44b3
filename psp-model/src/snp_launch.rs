//! SEV-SNP launch: SNP_LAUNCH_START, SNP_LAUNCH_UPDATE (the PAGE_INFO digest chain) and
//! SNP_LAUNCH_FINISH with HOST_DATA and an optional ID block (`research/psp-model.md` §4).
//!
//! For every 4 KiB page, `LD = SHA-384(PAGE_INFO)` where the 0x70-byte PAGE_INFO is
//! `LD ‖ CONTENTS ‖ u16 0x70 ‖ u8 type ‖ u8 imi ‖ 4 × u8 VMPL perms ‖ u64 GPA`; CONTENTS is
//! SHA-384 of the page for NORMAL and VMSA pages and zero for the others. FINISH does not
//! change the digest. The report is in `snp_report`.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError};
use crate::identity::ModelIdentity;

/// Bytes of one guest page.
pub const PAGE_SIZE: usize = 4096;
/// The GPA the firmware records for VMSA pages (-1, page aligned, bits above 51 cleared).
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// Bytes of the ID block.
pub const ID_BLOCK_LEN: usize = 0x60;
/// Bytes of the ID authentication information structure.
pub const ID_AUTH_LEN: usize = 0x1000;
/// Bytes of HOST_DATA.
pub const HOST_DATA_LEN: usize = 32;

const PAGE_INFO_LEN: usize = 0x70;
const PAGE_INFO_LEN_U16: u16 = 0x70;
/// GPAs have at most 52 bits.
const GPA_LIMIT: u64 = 1 << 52;
/// Policy bit 17 must be one.
const POLICY_MBO: u64 = 1 << 17;
/// Policy bit 16: SMT allowed.
const POLICY_SMT: u64 = 1 << 16;
/// PLATFORM_INFO of the model: SMT enabled (bit 0), like a typical EPYC host.
pub(crate) const PLATFORM_INFO: u64 = 1;
const PLATFORM_INFO_SMT_EN: u64 = 1;
/// Policy bits the SNP ABI defines (ABI version, SMT, MBO, MIGRATE_MA, DEBUG,
/// SINGLE_SOCKET, CXL_ALLOW, MEM_AES_256_XTS, RAPL_DIS, CIPHERTEXT_HIDING, PAGE_SWAP_DISABLE).
const POLICY_KNOWN: u64 = (1 << 26) - 1;
/// Maximum entries of an SNP CPUID table (Linux `SNP_CPUID_COUNT_MAX`).
const CPUID_COUNT_MAX: u32 = 64;
/// ID key / author key algorithm: ECDSA P-384 with SHA-384.
const ID_KEY_ALGO_P384: u32 = 1;
/// Curve code of P-384 in SEV public key structures.
const CURVE_P384: u32 = 2;
/// Bytes of an SEV ECDSA public key structure (curve, Qx, Qy, reserved).
const PUBKEY_LEN: usize = 0x404;
/// Secrets page layout version the model writes.
const SECRETS_VERSION: u32 = 2;

/// Errors of the SNP launch commands.
#[derive(Debug, thiserror::Error)]
pub enum SnpLaunchError {
    /// The command is not allowed in the guest's current state.
    #[error("command not allowed in guest state {state:?}")]
    InvalidGuestState { state: SnpGuestState },
    /// The guest policy cannot be honoured on this platform.
    #[error("guest policy rejected: {reason}")]
    PolicyFailure { reason: &'static str },
    /// A parameter is out of range.
    #[error("invalid parameter: {what}")]
    InvalidParam { what: &'static str },
    /// The ID block's launch digest or policy differs from the guest's.
    #[error("ID block does not match the launch")]
    IdBlockMismatch,
    /// An ID block or ID key signature does not verify.
    #[error("ID block signature is invalid")]
    BadSignature,
    /// A cryptographic primitive failed.
    #[error("cryptographic operation failed")]
    Crypto(#[from] CryptoError),
}

/// SNP_LAUNCH_UPDATE page types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SnpPageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Unmeasured = 4,
    Secrets = 5,
    Cpuid = 6,
}

/// Guest states of the SNP launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnpGuestState {
    /// Between SNP_LAUNCH_START and SNP_LAUNCH_FINISH.
    Launching,
    /// After SNP_LAUNCH_FINISH: reports may be requested.
    Running,
}

/// What SNP_LAUNCH_FINISH takes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SnpLaunchFinish<'a> {
    /// The ID block (96 bytes) and ID auth structure (4096 bytes), if the owner signs one.
    pub id_block: Option<(&'a [u8], &'a [u8])>,
    /// Whether the ID auth structure carries an author key (AUTHOR_KEY_EN).
    pub author_key_en: bool,
    /// Data the host binds into every report.
    pub host_data: [u8; HOST_DATA_LEN],
}

/// What the ID block put into the guest context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdInfo {
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub guest_svn: u32,
    pub id_key_digest: [u8; 48],
    pub author_key_digest: [u8; 48],
    pub author_key_en: bool,
}

impl Default for IdInfo {
    fn default() -> Self {
        IdInfo {
            family_id: [0; 16],
            image_id: [0; 16],
            guest_svn: 0,
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            author_key_en: false,
        }
    }
}

/// One SNP guest context inside the model PSP.
pub struct SnpGuest {
    pub(crate) identity: Arc<ModelIdentity>,
    pub(crate) policy: u64,
    gosvw: [u8; 16],
    pub(crate) ld: [u8; 48],
    pub(crate) state: SnpGuestState,
    vmpck: Zeroizing<[[u8; 32]; 4]>,
    pub(crate) host_data: [u8; HOST_DATA_LEN],
    pub(crate) id: IdInfo,
    pub(crate) report_id: [u8; 32],
    pages: u64,
}

impl std::fmt::Debug for SnpGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpGuest")
            .field("policy", &format_args!("{:#x}", self.policy))
            .field("state", &self.state)
            .field("launch_digest", &hex::encode(self.ld))
            .field("pages", &self.pages)
            .finish_non_exhaustive()
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

/// The public key of an SEV ECDSA public key structure (0x404 bytes).
fn id_public_key(key: &[u8]) -> Result<openssl::ec::EcKey<openssl::pkey::Public>, SnpLaunchError> {
    if u32_at(key, 0) != CURVE_P384 {
        return Err(SnpLaunchError::InvalidParam {
            what: "ID key curve",
        });
    }
    crypto::p384_public_from_le(&key[4..76], &key[76..148]).map_err(|_| {
        SnpLaunchError::InvalidParam {
            what: "ID key point",
        }
    })
}

/// Verifies a signature structure (r[72] ‖ s[72] ‖ reserved) over SHA-384 of `message`.
fn verify_sig(
    key: &openssl::ec::EcKey<openssl::pkey::Public>,
    sig: &[u8],
    message: &[u8],
) -> Result<(), SnpLaunchError> {
    let digest = crypto::sha384(message);
    match crypto::ecdsa_verify_le(key, &digest, &sig[..72], &sig[72..144]) {
        Ok(true) => Ok(()),
        _ => Err(SnpLaunchError::BadSignature),
    }
}

impl SnpGuest {
    /// SNP_LAUNCH_START: a new guest context with the given policy and GOSVW; the launch
    /// digest starts as 48 zero bytes.
    pub fn launch_start(
        identity: Arc<ModelIdentity>,
        policy: u64,
        gosvw: [u8; 16],
    ) -> Result<Self, SnpLaunchError> {
        if policy & POLICY_MBO == 0 {
            return Err(SnpLaunchError::PolicyFailure {
                reason: "policy bit 17 must be set",
            });
        }
        if PLATFORM_INFO & PLATFORM_INFO_SMT_EN != 0 && policy & POLICY_SMT == 0 {
            return Err(SnpLaunchError::PolicyFailure {
                reason: "SMT is enabled but the policy does not allow it",
            });
        }
        if policy & !POLICY_KNOWN != 0 {
            return Err(SnpLaunchError::PolicyFailure {
                reason: "reserved policy bits are set",
            });
        }
        let fw = identity.snp_platform().firmware;
        let [abi_minor, abi_major, ..] = policy.to_le_bytes();
        if (abi_major, abi_minor) > (fw.major, fw.minor) {
            return Err(SnpLaunchError::PolicyFailure {
                reason: "policy requires a newer firmware ABI",
            });
        }
        let mut vmpck = Zeroizing::new([[0u8; 32]; 4]);
        for key in vmpck.iter_mut() {
            openssl::rand::rand_bytes(key).map_err(CryptoError::from)?;
        }
        let mut report_id = [0u8; 32];
        openssl::rand::rand_bytes(&mut report_id).map_err(CryptoError::from)?;
        Ok(SnpGuest {
            identity,
            policy,
            gosvw,
            ld: [0u8; 48],
            state: SnpGuestState::Launching,
            vmpck,
            host_data: [0u8; HOST_DATA_LEN],
            id: IdInfo::default(),
            report_id,
            pages: 0,
        })
    }

    fn require(&self, state: SnpGuestState) -> Result<(), SnpLaunchError> {
        if self.state != state {
            return Err(SnpLaunchError::InvalidGuestState { state: self.state });
        }
        Ok(())
    }

    /// Extends the digest with one PAGE_INFO.
    fn extend(&mut self, page_type: SnpPageType, gpa: u64, contents: &[u8; 48]) {
        let mut info = [0u8; PAGE_INFO_LEN];
        info[..48].copy_from_slice(&self.ld);
        info[48..96].copy_from_slice(contents);
        info[0x60..0x62].copy_from_slice(&PAGE_INFO_LEN_U16.to_le_bytes());
        info[0x62] = page_type as u8;
        // IMI_PAGE and the VMPL permission bytes (0x63..0x68) stay zero, as KVM issues them.
        info[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
        self.ld = crypto::sha384(&info);
        self.pages += 1;
    }

    /// Checks a page-aligned range `[gpa, gpa + len)` of whole pages inside 52-bit GPAs.
    fn check_range(&self, gpa: u64, len: usize) -> Result<(), SnpLaunchError> {
        self.require(SnpGuestState::Launching)?;
        if gpa % PAGE_SIZE as u64 != 0 {
            return Err(SnpLaunchError::InvalidParam {
                what: "GPA is not page aligned",
            });
        }
        if len == 0 || len % PAGE_SIZE != 0 {
            return Err(SnpLaunchError::InvalidParam {
                what: "length is not a non-zero multiple of the page size",
            });
        }
        let end = u64::try_from(len)
            .ok()
            .and_then(|len| gpa.checked_add(len))
            .filter(|&end| end <= GPA_LIMIT);
        if end.is_none() {
            return Err(SnpLaunchError::InvalidParam {
                what: "GPA range exceeds 52 bits",
            });
        }
        Ok(())
    }

    /// Extends the digest with zero CONTENTS for each page of a range.
    fn extend_unhashed(&mut self, page_type: SnpPageType, gpa: u64, len: usize) {
        for page in 0..len / PAGE_SIZE {
            // check_range bounded gpa + len below 2^52, so this cannot overflow.
            let page_gpa = gpa + (page * PAGE_SIZE) as u64;
            self.extend(page_type, page_gpa, &[0u8; 48]);
        }
    }

    /// SNP_LAUNCH_UPDATE NORMAL for each 4 KiB page of `data`, at consecutive GPAs.
    pub fn update_normal(&mut self, gpa: u64, data: &[u8]) -> Result<(), SnpLaunchError> {
        self.check_range(gpa, data.len())?;
        for (index, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
            let page_gpa = gpa + (index * PAGE_SIZE) as u64;
            self.extend(SnpPageType::Normal, page_gpa, &crypto::sha384(page));
        }
        Ok(())
    }

    /// SNP_LAUNCH_UPDATE ZERO: the firmware zero-fills `len` bytes of pages.
    pub fn update_zero(&mut self, gpa: u64, len: usize) -> Result<(), SnpLaunchError> {
        self.check_range(gpa, len)?;
        self.extend_unhashed(SnpPageType::Zero, gpa, len);
        Ok(())
    }

    /// SNP_LAUNCH_UPDATE UNMEASURED: the pages are accepted but their contents not hashed
    /// (the PAGE_INFO, with its GPA, still enters the digest).
    pub fn update_unmeasured(&mut self, gpa: u64, len: usize) -> Result<(), SnpLaunchError> {
        self.check_range(gpa, len)?;
        self.extend_unhashed(SnpPageType::Unmeasured, gpa, len);
        Ok(())
    }

    /// SNP_LAUNCH_UPDATE SECRETS: returns the secrets page the firmware writes at `gpa`
    /// (version, FMS, GOSVW and the four VMPCKs; 4096 bytes); the caller places it in guest
    /// memory.
    pub fn update_secrets(&mut self, gpa: u64) -> Result<Zeroizing<Vec<u8>>, SnpLaunchError> {
        self.check_range(gpa, PAGE_SIZE)?;
        self.extend_unhashed(SnpPageType::Secrets, gpa, PAGE_SIZE);
        // Linux `struct snp_secrets_page`: version @0, imien @4, fms @8, gosvw @0x10,
        // vmpck0..3 @0x20/0x40/0x60/0x80.
        let mut page = Zeroizing::new(vec![0u8; PAGE_SIZE]);
        page[0..4].copy_from_slice(&SECRETS_VERSION.to_le_bytes());
        page[8..12].copy_from_slice(&self.identity.snp_platform().fms().to_le_bytes());
        page[0x10..0x20].copy_from_slice(&self.gosvw);
        for (index, key) in self.vmpck.iter().enumerate() {
            let offset = 0x20 + index * 32;
            page[offset..offset + 32].copy_from_slice(key);
        }
        Ok(page)
    }

    /// SNP_LAUNCH_UPDATE CPUID: accepts a CPUID table page (count at offset 0, at most 64
    /// entries, reserved fields zero). Real firmware also checks each entry against the
    /// CPU; the model has no CPU to compare with and accepts the values as given.
    pub fn update_cpuid(&mut self, gpa: u64, page: &[u8]) -> Result<(), SnpLaunchError> {
        self.check_range(gpa, page.len())?;
        if page.len() != PAGE_SIZE {
            return Err(SnpLaunchError::InvalidParam {
                what: "CPUID page must be one page",
            });
        }
        if u32_at(page, 0) > CPUID_COUNT_MAX || u32_at(page, 4) != 0 || u64_at(page, 8) != 0 {
            return Err(SnpLaunchError::InvalidParam {
                what: "CPUID table header",
            });
        }
        self.extend_unhashed(SnpPageType::Cpuid, gpa, PAGE_SIZE);
        Ok(())
    }

    /// SNP_LAUNCH_UPDATE VMSA for one vCPU (KVM issues these at LAUNCH_FINISH, in vCPU
    /// order); the GPA is always [`VMSA_GPA`].
    pub fn update_vmsa(&mut self, vmsa: &[u8]) -> Result<(), SnpLaunchError> {
        self.require(SnpGuestState::Launching)?;
        if vmsa.len() != PAGE_SIZE {
            return Err(SnpLaunchError::InvalidParam {
                what: "VMSA must be one page",
            });
        }
        self.extend(SnpPageType::Vmsa, VMSA_GPA, &crypto::sha384(vmsa));
        Ok(())
    }

    /// SNP_LAUNCH_UPDATE by page type, for callers that carry the type as data. `data` is
    /// the page contents for NORMAL, VMSA and CPUID, ignored otherwise; `len` is the range
    /// for ZERO and UNMEASURED. SECRETS returns the page to place in guest memory.
    pub fn launch_update(
        &mut self,
        page_type: SnpPageType,
        gpa: u64,
        data: &[u8],
        len: usize,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, SnpLaunchError> {
        match page_type {
            SnpPageType::Normal => self.update_normal(gpa, data)?,
            SnpPageType::Vmsa => self.update_vmsa(data)?,
            SnpPageType::Zero => self.update_zero(gpa, len)?,
            SnpPageType::Unmeasured => self.update_unmeasured(gpa, len)?,
            SnpPageType::Secrets => return self.update_secrets(gpa).map(Some),
            SnpPageType::Cpuid => self.update_cpuid(gpa, data)?,
        }
        Ok(None)
    }

    /// SNP_LAUNCH_FINISH: verifies the ID block if given (signature, launch digest and
    /// policy), records HOST_DATA and the ID fields. The launch digest is not changed.
    pub fn launch_finish(&mut self, finish: SnpLaunchFinish<'_>) -> Result<(), SnpLaunchError> {
        self.require(SnpGuestState::Launching)?;
        let id = match finish.id_block {
            Some((block, auth)) => self.check_id_block(block, auth, finish.author_key_en)?,
            None if finish.author_key_en => {
                return Err(SnpLaunchError::InvalidParam {
                    what: "author key without ID block",
                })
            }
            None => IdInfo::default(),
        };
        self.id = id;
        self.host_data = finish.host_data;
        self.state = SnpGuestState::Running;
        Ok(())
    }

    fn check_id_block(
        &self,
        block: &[u8],
        auth: &[u8],
        author_key_en: bool,
    ) -> Result<IdInfo, SnpLaunchError> {
        if block.len() != ID_BLOCK_LEN || auth.len() != ID_AUTH_LEN {
            return Err(SnpLaunchError::InvalidParam {
                what: "ID block or ID auth length",
            });
        }
        if u32_at(auth, 0) != ID_KEY_ALGO_P384 {
            return Err(SnpLaunchError::InvalidParam {
                what: "ID key algorithm",
            });
        }
        let id_key = &auth[0x240..0x240 + PUBKEY_LEN];
        verify_sig(&id_public_key(id_key)?, &auth[0x40..0x240], block)?;
        let mut info = IdInfo {
            id_key_digest: crypto::sha384(id_key),
            guest_svn: u32_at(block, 0x54),
            author_key_en,
            ..IdInfo::default()
        };
        info.family_id.copy_from_slice(&block[0x30..0x40]);
        info.image_id.copy_from_slice(&block[0x40..0x50]);
        if author_key_en {
            if u32_at(auth, 4) != ID_KEY_ALGO_P384 {
                return Err(SnpLaunchError::InvalidParam {
                    what: "author key algorithm",
                });
            }
            let author_key = &auth[0x880..0x880 + PUBKEY_LEN];
            verify_sig(&id_public_key(author_key)?, &auth[0x680..0x880], id_key)?;
            info.author_key_digest = crypto::sha384(author_key);
        }
        if block[..48] != self.ld || u64_at(block, 0x58) != self.policy {
            return Err(SnpLaunchError::IdBlockMismatch);
        }
        if u32_at(block, 0x50) != 1 {
            return Err(SnpLaunchError::InvalidParam {
                what: "ID block version",
            });
        }
        Ok(info)
    }

    /// The launch digest (MEASUREMENT) so far.
    pub fn launch_digest(&self) -> [u8; 48] {
        self.ld
    }

    /// The guest policy.
    pub fn policy(&self) -> u64 {
        self.policy
    }

    /// The current state.
    pub fn state(&self) -> SnpGuestState {
        self.state
    }

    /// Pages added to the digest so far.
    pub fn measured_pages(&self) -> u64 {
        self.pages
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{json, Value};
    use sev::measurement::idblock::snp_calculate_id;
    use sev::measurement::idblock_types::{FamilyId, ImageId};
    use sev::measurement::snp::SnpLaunchDigest;
    use sev::parser::ByteParser;

    use super::*;
    use crate::identity::tests::shared;
    use crate::test_oracle;

    pub(crate) const POLICY: u64 = 0x30000;

    pub(crate) fn arc_identity() -> Arc<ModelIdentity> {
        use std::sync::OnceLock;
        static ID: OnceLock<Arc<ModelIdentity>> = OnceLock::new();
        // Shares the key material of the process-wide identity through a saved copy.
        ID.get_or_init(|| {
            let tmp = tempfile::tempdir().unwrap();
            shared().save(&tmp.path().join("id")).unwrap();
            Arc::new(ModelIdentity::load(&tmp.path().join("id")).unwrap())
        })
        .clone()
    }

    pub(crate) fn guest() -> SnpGuest {
        SnpGuest::launch_start(arc_identity(), POLICY, [0u8; 16]).unwrap()
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| {
                u8::try_from(i % 256)
                    .unwrap()
                    .wrapping_mul(seed)
                    .wrapping_add(seed)
            })
            .collect()
    }

    /// Applies one oracle op to the model.
    fn apply(g: &mut SnpGuest, op: &Value, vmsa_pages: &mut impl Iterator<Item = Vec<Vec<u8>>>) {
        let gpa = op["gpa"].as_u64().unwrap_or(0);
        let len = usize::try_from(op["len"].as_u64().unwrap_or(0)).unwrap();
        let data = || hex::decode(op["data"].as_str().unwrap()).unwrap();
        match op["op"].as_str().unwrap() {
            "normal" => g.update_normal(gpa, &data()).unwrap(),
            "zero" => g.update_zero(gpa, len).unwrap(),
            "unmeasured" => g.update_unmeasured(gpa, len).unwrap(),
            "secrets" => drop(g.update_secrets(gpa).unwrap()),
            "cpuid" => g.update_cpuid(gpa, &[0u8; PAGE_SIZE]).unwrap(),
            "vmsa" => g.update_vmsa(&data()).unwrap(),
            "vmsa_builder" => {
                for page in vmsa_pages.next().unwrap() {
                    g.update_vmsa(&page).unwrap();
                }
            }
            other => panic!("unknown op {other}"),
        }
    }

    /// Runs `ops` through sev-snp-measure and through the model; every intermediate digest
    /// must match.
    fn check_against_oracle(ops: Vec<Value>) {
        let answer = test_oracle::gctx(&json!({ "ops": ops }));
        let mut vmsa_pages = answer["vmsa_pages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pages| {
                pages
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| hex::decode(p.as_str().unwrap()).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .into_iter();
        let mut g = guest();
        for (op, step) in ops.iter().zip(answer["steps"].as_array().unwrap()) {
            apply(&mut g, op, &mut vmsa_pages);
            assert_eq!(
                hex::encode(g.launch_digest()),
                step.as_str().unwrap(),
                "after {op}"
            );
        }
        assert_eq!(
            hex::encode(g.launch_digest()),
            answer["ld"].as_str().unwrap()
        );
    }

    // Known answers computed with sev-snp-measure (research/psp-model.md §4.5); they run
    // without the oracle.
    #[test]
    fn single_page_known_answers() {
        let mut g = guest();
        g.update_normal(0, &[0u8; PAGE_SIZE]).unwrap();
        assert_eq!(
            hex::encode(g.launch_digest()),
            "9d13634b6014bb21cf059b2dc694e7bff01a8a7137041100cd2b695f3d10fb68\
             7267b97808b27f8f471d943bc6f53a20"
        );
        let mut g = guest();
        g.update_zero(0, PAGE_SIZE).unwrap();
        assert_eq!(
            hex::encode(g.launch_digest()),
            "70c0ecaab9608f14ebf8ac6f0f07bcd8728f4e2ab30382b539b4de4de904ca9f\
             8ebdf4b2cd3cd84dd996bd55dd794676"
        );
    }

    #[test]
    #[cfg_attr(
        not(krun_oracles),
        ignore = "needs the Python oracles (KRUN_SEV_PYTHON): make test runs it"
    )]
    fn every_page_type_matches_sev_snp_measure() {
        let firmware = pattern(2 * PAGE_SIZE, 3);
        let kernel = pattern(5 * PAGE_SIZE, 7);
        check_against_oracle(vec![
            json!({"op": "normal", "gpa": 0xFFFF_E000u64, "data": hex::encode(&firmware)}),
            json!({"op": "zero", "gpa": 0x80_0000, "len": 3 * PAGE_SIZE}),
            json!({"op": "secrets", "gpa": 0x80_3000}),
            json!({"op": "cpuid", "gpa": 0x80_4000}),
            json!({"op": "unmeasured", "gpa": 0x90_0000, "len": 2 * PAGE_SIZE}),
            json!({"op": "normal", "gpa": 0x100_0000, "data": hex::encode(&kernel)}),
            json!({"op": "vmsa", "data": hex::encode(pattern(PAGE_SIZE, 11))}),
            json!({"op": "vmsa_builder", "mode": "snp", "ap_eip": 0xFFFF_F100u64,
                   "vcpu_type": "EPYC-Milan", "guest_features": 1, "vmm": "QEMU", "vcpus": 2}),
            json!({"op": "normal", "gpa": (1u64 << 52) - 0x1000, "data": hex::encode(pattern(PAGE_SIZE, 1))}),
        ]);
    }

    #[test]
    #[cfg_attr(
        not(krun_oracles),
        ignore = "needs the Python oracles (KRUN_SEV_PYTHON): make test runs it"
    )]
    fn random_launch_sequences_match_sev_snp_measure() {
        let mut ops = Vec::new();
        let mut seed = [0u8; 64];
        openssl::rand::rand_bytes(&mut seed).unwrap();
        for (i, &b) in seed.iter().enumerate() {
            let gpa = u64::from(b) << 20 | (u64::try_from(i).unwrap() << 12);
            let pages = usize::from(b % 3) + 1;
            ops.push(match b % 6 {
                0 => json!({"op": "normal", "gpa": gpa, "data": hex::encode(pattern(pages * PAGE_SIZE, b))}),
                1 => json!({"op": "zero", "gpa": gpa, "len": pages * PAGE_SIZE}),
                2 => json!({"op": "unmeasured", "gpa": gpa, "len": pages * PAGE_SIZE}),
                3 => json!({"op": "secrets", "gpa": gpa}),
                4 => json!({"op": "cpuid", "gpa": gpa}),
                _ => json!({"op": "vmsa", "data": hex::encode(pattern(PAGE_SIZE, b))}),
            });
        }
        check_against_oracle(ops);
    }

    #[test]
    fn generic_update_equals_typed_updates() {
        let data = pattern(2 * PAGE_SIZE, 5);
        let mut a = guest();
        let mut b = guest();
        a.update_normal(0x1000, &data).unwrap();
        a.update_zero(0x10_0000, PAGE_SIZE).unwrap();
        a.update_unmeasured(0x20_0000, PAGE_SIZE).unwrap();
        a.update_cpuid(0x30_0000, &[0u8; PAGE_SIZE]).unwrap();
        a.update_vmsa(&data[..PAGE_SIZE]).unwrap();
        b.launch_update(SnpPageType::Normal, 0x1000, &data, 0)
            .unwrap();
        b.launch_update(SnpPageType::Zero, 0x10_0000, &[], PAGE_SIZE)
            .unwrap();
        b.launch_update(SnpPageType::Unmeasured, 0x20_0000, &[], PAGE_SIZE)
            .unwrap();
        b.launch_update(SnpPageType::Cpuid, 0x30_0000, &[0u8; PAGE_SIZE], 0)
            .unwrap();
        b.launch_update(SnpPageType::Vmsa, 0, &data[..PAGE_SIZE], 0)
            .unwrap();
        assert_eq!(a.launch_digest(), b.launch_digest());
        assert_eq!(a.measured_pages(), 6);
        let secrets = b
            .launch_update(SnpPageType::Secrets, 0x40_0000, &[], 0)
            .unwrap();
        assert!(secrets.is_some());
    }

    #[test]
    fn secrets_page_carries_keys_and_platform() {
        let mut g = SnpGuest::launch_start(arc_identity(), POLICY, [9u8; 16]).unwrap();
        let page = g.update_secrets(0x5000).unwrap();
        assert_eq!(u32_at(&page[..], 0), SECRETS_VERSION);
        assert_eq!(u32_at(&page[..], 8), 0x00A0_0F11);
        assert_eq!(&page[0x10..0x20], &[9u8; 16]);
        let keys: Vec<&[u8]> = (0..4)
            .map(|i| &page[0x20 + 32 * i..0x40 + 32 * i])
            .collect();
        assert!(keys.iter().all(|k| k.iter().any(|&b| b != 0)));
        assert_ne!(keys[0], keys[1]);
        assert!(page[0xA0..].iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_parameters_are_errors() {
        let mut g = guest();
        assert!(g.update_normal(0x1001, &[0u8; PAGE_SIZE]).is_err());
        assert!(g.update_normal(0x1000, &[0u8; 100]).is_err());
        assert!(g.update_normal(0x1000, &[]).is_err());
        assert!(g.update_normal(1 << 52, &[0u8; PAGE_SIZE]).is_err());
        assert!(g.update_zero(!0xFFF, PAGE_SIZE).is_err());
        assert!(g.update_zero(0, 0).is_err());
        assert!(g.update_vmsa(&[0u8; 100]).is_err());
        assert!(g.update_cpuid(0, &[0u8; 2 * PAGE_SIZE]).is_err());
        let mut cpuid = [0u8; PAGE_SIZE];
        cpuid[0] = 65;
        assert!(g.update_cpuid(0, &cpuid).is_err());
        assert_eq!(
            g.launch_digest(),
            [0u8; 48],
            "failed updates leave the digest alone"
        );

        let id = arc_identity();
        assert!(SnpGuest::launch_start(id.clone(), 0x10000, [0; 16]).is_err());
        assert!(SnpGuest::launch_start(id.clone(), 0x20000, [0; 16]).is_err());
        assert!(SnpGuest::launch_start(id.clone(), POLICY | 1 << 40, [0; 16]).is_err());
        let fw = id.snp_platform().firmware;
        let newer = POLICY | u64::from(fw.major) << 8 | u64::from(fw.minor + 1);
        assert!(SnpGuest::launch_start(id.clone(), newer, [0; 16]).is_err());
        let same = POLICY | u64::from(fw.major) << 8 | u64::from(fw.minor);
        assert!(SnpGuest::launch_start(id, same, [0; 16]).is_ok());
    }

    #[test]
    fn finish_records_host_data_and_ends_the_launch() {
        let mut g = guest();
        g.update_normal(0, &[1u8; PAGE_SIZE]).unwrap();
        let before = g.launch_digest();
        g.launch_finish(SnpLaunchFinish {
            host_data: [0xAB; 32],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            g.launch_digest(),
            before,
            "FINISH does not extend the digest"
        );
        assert_eq!(g.host_data, [0xAB; 32]);
        assert_eq!(g.state(), SnpGuestState::Running);
        assert!(matches!(
            g.update_normal(0, &[1u8; PAGE_SIZE]),
            Err(SnpLaunchError::InvalidGuestState { .. })
        ));
        assert!(g.update_vmsa(&[0u8; PAGE_SIZE]).is_err());
        assert!(g.launch_finish(SnpLaunchFinish::default()).is_err());
    }

    /// An ID block and ID auth built by the sev crate's owner-side tooling.
    pub(crate) fn owner_id_block(
        ld: [u8; 48],
        policy: u64,
    ) -> (Vec<u8>, Vec<u8>, [u8; 48], [u8; 48]) {
        let tmp = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for name in ["id.pem", "author.pem"] {
            let key = openssl::ec::EcKey::generate(&crypto::p384().unwrap()).unwrap();
            let pem = openssl::pkey::PKey::from_ec_key(key)
                .unwrap()
                .private_key_to_pem_pkcs8()
                .unwrap();
            let path = tmp.path().join(name);
            std::fs::write(&path, pem).unwrap();
            paths.push(path);
        }
        let m = snp_calculate_id(
            Some(SnpLaunchDigest::new(ld)),
            Some(FamilyId::new([0x11; 16])),
            Some(ImageId::new([0x22; 16])),
            Some(7),
            Some(policy.into()),
            paths[0].clone(),
            paths[1].clone(),
        )
        .unwrap();
        let digest = |d: SnpLaunchDigest| -> [u8; 48] {
            let v: Vec<u8> = d.try_into().unwrap();
            v.try_into().unwrap()
        };
        (
            m.id_block.to_bytes().unwrap().to_vec(),
            m.id_auth.to_bytes().unwrap().to_vec(),
            digest(m.id_key_digest),
            digest(m.auth_key_digest),
        )
    }

    #[test]
    fn id_block_from_sev_crate_is_accepted_and_recorded() {
        let mut g = guest();
        g.update_normal(0, &pattern(PAGE_SIZE, 2)).unwrap();
        let (block, auth, id_digest, author_digest) = owner_id_block(g.launch_digest(), POLICY);
        g.launch_finish(SnpLaunchFinish {
            id_block: Some((&block, &auth)),
            author_key_en: true,
            host_data: [0; 32],
        })
        .unwrap();
        assert_eq!(g.id.id_key_digest, id_digest);
        assert_eq!(g.id.author_key_digest, author_digest);
        assert_eq!(g.id.family_id, [0x11; 16]);
        assert_eq!(g.id.image_id, [0x22; 16]);
        assert_eq!(g.id.guest_svn, 7);
    }

    #[test]
    fn random_id_blocks_are_errors_not_panics() {
        let mut g = guest();
        for round in 0..64u32 {
            let mut block = vec![0u8; ID_BLOCK_LEN];
            let mut auth = vec![0u8; ID_AUTH_LEN];
            openssl::rand::rand_bytes(&mut block).unwrap();
            openssl::rand::rand_bytes(&mut auth).unwrap();
            // Make the algorithm and curve fields plausible half of the time.
            if round % 2 == 0 {
                auth[0..4].copy_from_slice(&1u32.to_le_bytes());
                auth[4..8].copy_from_slice(&1u32.to_le_bytes());
                auth[0x240..0x244].copy_from_slice(&2u32.to_le_bytes());
                auth[0x880..0x884].copy_from_slice(&2u32.to_le_bytes());
            }
            let result = g.launch_finish(SnpLaunchFinish {
                id_block: Some((&block, &auth)),
                author_key_en: round % 3 == 0,
                host_data: [0; 32],
            });
            assert!(result.is_err());
        }
        assert_eq!(g.state(), SnpGuestState::Launching);
    }

    #[test]
    fn id_block_for_another_launch_or_tampered_is_refused() {
        let mut g = guest();
        g.update_normal(0, &pattern(PAGE_SIZE, 2)).unwrap();
        let ld = g.launch_digest();
        let finish = |g: &mut SnpGuest, block: &[u8], auth: &[u8]| {
            g.launch_finish(SnpLaunchFinish {
                id_block: Some((block, auth)),
                author_key_en: true,
                host_data: [0; 32],
            })
        };
        let (block, auth, ..) = owner_id_block([0x33; 48], POLICY);
        assert!(matches!(
            finish(&mut g, &block, &auth),
            Err(SnpLaunchError::IdBlockMismatch)
        ));
        let (block, auth, ..) = owner_id_block(ld, POLICY | 1 << 19);
        assert!(matches!(
            finish(&mut g, &block, &auth),
            Err(SnpLaunchError::IdBlockMismatch)
        ));
        let (mut block, auth, ..) = owner_id_block(ld, POLICY);
        block[0x54] ^= 1; // GUEST_SVN, covered by the ID key signature
        assert!(matches!(
            finish(&mut g, &block, &auth),
            Err(SnpLaunchError::BadSignature)
        ));
        let (block, mut auth, ..) = owner_id_block(ld, POLICY);
        auth[0x680] ^= 1; // ID_KEY_SIG by the author key
        assert!(matches!(
            finish(&mut g, &block, &auth),
            Err(SnpLaunchError::BadSignature)
        ));
        assert!(finish(&mut g, &block[..95], &auth).is_err());
        assert!(finish(&mut g, &block, &[0u8; ID_AUTH_LEN]).is_err());
        assert_eq!(g.state(), SnpGuestState::Launching);
        let (block, auth, ..) = owner_id_block(ld, POLICY);
        finish(&mut g, &block, &auth).unwrap();
    }
}
