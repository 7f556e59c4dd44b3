//! Saving and loading an identity directory.
//!
//! Files (all written at once, private keys mode 0600):
//!
//! | file | contents |
//! |---|---|
//! | `identity.json` | format, SEV platform version, SNP platform (CPU, CHIP_ID, TCB, firmware) |
//! | `sev_cert_chain.bin` | PDH‖PEK‖OCA‖CEK‖ASK‖ARK, the `sev` crate's `certs::sev::Chain` encoding |
//! | `sev_pdh_key.pem`, `sev_pek_key.pem` | PKCS#8 P-384 private keys |
//! | `snp_ark.pem`, `snp_ask.pem`, `snp_vcek.pem` | X.509 certificates |
//! | `snp_cert_chain.pem` | ASK then ARK (the layout AMD's KDS `cert_chain` serves) |
//! | `snp_vcek_key.pem` | PKCS#8 P-384 private key |

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use openssl::ec::EcKey;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{IdentityError, ModelIdentity, SevPlatformVersion, SnpPlatform};

const FORMAT: u32 = 1;
const IDENTITY_JSON: &str = "identity.json";
const SEV_CHAIN: &str = "sev_cert_chain.bin";
const PDH_KEY: &str = "sev_pdh_key.pem";
const PEK_KEY: &str = "sev_pek_key.pem";
const SNP_ARK: &str = "snp_ark.pem";
const SNP_ASK: &str = "snp_ask.pem";
const SNP_VCEK: &str = "snp_vcek.pem";
const SNP_CHAIN: &str = "snp_cert_chain.pem";
const VCEK_KEY: &str = "snp_vcek_key.pem";
/// Upper bound for any identity file; real ones are a few KiB.
const MAX_FILE: u64 = 1 << 20;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    format: u32,
    sev: SevPlatformVersion,
    snp: SnpPlatform,
}

fn read(dir: &Path, name: &str) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    let path = dir.join(name);
    let file_error = |source| IdentityError::File {
        path: path.clone(),
        source,
    };
    let len = fs::metadata(&path).map_err(file_error)?.len();
    if len > MAX_FILE {
        return Err(IdentityError::Invalid {
            reason: "identity file is too large",
        });
    }
    Ok(Zeroizing::new(fs::read(&path).map_err(file_error)?))
}

fn write(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    let path = dir.join(name);
    let file_error = |source| IdentityError::File {
        path: path.clone(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(file_error)?;
    file.write_all(data).map_err(file_error)?;
    file.sync_all().map_err(file_error)
}

fn private_key(pem: &[u8]) -> Result<EcKey<Private>, IdentityError> {
    let key = PKey::private_key_from_pem(pem)?.ec_key()?;
    let p384 = openssl::nid::Nid::SECP384R1;
    if key.group().curve_name() != Some(p384) {
        return Err(IdentityError::Invalid {
            reason: "private key is not on P-384",
        });
    }
    key.check_key()?;
    Ok(key)
}

fn private_pem(key: &EcKey<Private>) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    Ok(Zeroizing::new(
        PKey::from_ec_key(key.clone())?.private_key_to_pem_pkcs8()?,
    ))
}

pub(super) fn save(id: &ModelIdentity, dir: &Path) -> Result<(), IdentityError> {
    let dir_error = |source| IdentityError::File {
        path: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(dir_error)?;
    if dir.join(IDENTITY_JSON).exists() {
        return Err(IdentityError::AlreadyExists {
            path: dir.to_path_buf(),
        });
    }
    let json = serde_json::to_vec_pretty(&IdentityFile {
        format: FORMAT,
        sev: id.sev_version,
        snp: id.snp.clone(),
    })?;
    let mut snp_chain = id.snp_ask.to_pem()?;
    snp_chain.extend_from_slice(&id.snp_ark.to_pem()?);
    write(dir, SEV_CHAIN, &id.sev_chain, 0o644)?;
    write(dir, PDH_KEY, &private_pem(&id.pdh_key)?, 0o600)?;
    write(dir, PEK_KEY, &private_pem(&id.pek_key)?, 0o600)?;
    write(dir, SNP_ARK, &id.snp_ark.to_pem()?, 0o644)?;
    write(dir, SNP_ASK, &id.snp_ask.to_pem()?, 0o644)?;
    write(dir, SNP_VCEK, &id.vcek.to_pem()?, 0o644)?;
    write(dir, SNP_CHAIN, &snp_chain, 0o644)?;
    write(dir, VCEK_KEY, &private_pem(&id.vcek_key)?, 0o600)?;
    // Last, so that a directory with identity.json is a complete identity.
    write(dir, IDENTITY_JSON, &json, 0o644)
}

pub(super) fn load(dir: &Path) -> Result<ModelIdentity, IdentityError> {
    let file: IdentityFile = serde_json::from_slice(&read(dir, IDENTITY_JSON)?)?;
    if file.format != FORMAT {
        return Err(IdentityError::Invalid {
            reason: "unsupported identity format",
        });
    }
    let certs = [
        X509::from_pem(&read(dir, SNP_ARK)?)?,
        X509::from_pem(&read(dir, SNP_ASK)?)?,
        X509::from_pem(&read(dir, SNP_VCEK)?)?,
    ];
    ModelIdentity::assemble(
        file.sev,
        file.snp,
        read(dir, SEV_CHAIN)?.to_vec(),
        private_key(&read(dir, PDH_KEY)?)?,
        private_key(&read(dir, PEK_KEY)?)?,
        certs,
        private_key(&read(dir, VCEK_KEY)?)?,
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::tests::shared;
    use super::*;

    #[test]
    fn save_then_load_gives_the_same_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model");
        let id = shared();
        id.save(&dir).unwrap();
        let mode = fs::metadata(dir.join(VCEK_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = ModelIdentity::load(&dir).unwrap();
        assert_eq!(back.sev_chain_bytes(), id.sev_chain_bytes());
        assert_eq!(back.snp_platform(), id.snp_platform());
        assert_eq!(back.sev_version(), id.sev_version());
        assert_eq!(back.vcek_pem().unwrap(), id.vcek_pem().unwrap());
        assert_eq!(
            back.pdh_key().private_key().to_vec(),
            id.pdh_key().private_key().to_vec()
        );
        // The KDS-style chain file holds ASK then ARK.
        let stack = fs::read(dir.join(SNP_CHAIN)).unwrap();
        let ca = sev::certs::snp::ca::Chain::from_pem_bytes(&stack).unwrap();
        assert_eq!(ca.ark.to_pem().unwrap(), id.snp_ark_pem().unwrap());
        // No overwriting.
        assert!(matches!(
            id.save(&dir),
            Err(IdentityError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn load_rejects_mismatched_or_corrupt_parts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("model");
        shared().save(&dir).unwrap();

        // A PDH key that is not the PDH certificate's.
        let other = EcKey::generate(&crate::crypto::p384().unwrap()).unwrap();
        fs::remove_file(dir.join(PDH_KEY)).unwrap();
        write(&dir, PDH_KEY, &private_pem(&other).unwrap(), 0o600).unwrap();
        assert!(matches!(
            ModelIdentity::load(&dir),
            Err(IdentityError::Invalid { .. })
        ));

        // A flipped bit in the SEV chain breaks a signature.
        let tmp2 = tempfile::tempdir().unwrap();
        let dir2 = tmp2.path().join("model");
        shared().save(&dir2).unwrap();
        let mut chain = fs::read(dir2.join(SEV_CHAIN)).unwrap();
        chain[0x20] ^= 1;
        fs::write(dir2.join(SEV_CHAIN), &chain).unwrap();
        assert!(ModelIdentity::load(&dir2).is_err());
        fs::write(dir2.join(SEV_CHAIN), &chain[..100]).unwrap();
        assert!(ModelIdentity::load(&dir2).is_err());

        // Garbage JSON and a missing directory are errors, not panics.
        fs::write(dir2.join(IDENTITY_JSON), b"{").unwrap();
        assert!(matches!(
            ModelIdentity::load(&dir2),
            Err(IdentityError::Json(_))
        ));
        assert!(matches!(
            ModelIdentity::load(&tmp.path().join("missing")),
            Err(IdentityError::File { .. })
        ));
    }
}
