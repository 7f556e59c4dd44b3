//! A fake legacy-SEV platform: an AMD-shaped ARK → ASK → CEK, OCA → PEK → PDH chain built here
//! (sev-crate.md §4.3) and the PSP side of LAUNCH_START / LAUNCH_MEASURE / LAUNCH_SECRET
//! (sev-crate.md §3.3), so the broker's owner session can be exercised without hardware.

use openssl::bn::{BigNum, BigNumContext};
use openssl::derive::Deriver;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer};
use openssl::symm::{Cipher, Crypter, Mode};
use rand::RngCore;
use sev::certs::sev::sev::{Certificate, Usage};
use sev::certs::sev::Signer as _;
use sev::parser::Encoder;
use zeroize::Zeroizing;

use krun_attestation::reference::{
    SevBuild, SevCertChain, SevMeasurement, SevSecret, SevStart, SEV_CERT_LEN,
};

use super::TestkitError;

const ARK_USAGE: u32 = 0;
const ASK_USAGE: u32 = 0x13;

fn rsa_pss_sha256(key: &PKey<Private>, data: &[u8]) -> Result<Vec<u8>, TestkitError> {
    let mut s = Signer::new(MessageDigest::sha256(), key)?;
    s.set_rsa_padding(Padding::PKCS1_PSS)?;
    s.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
    s.update(data)?;
    Ok(s.sign_to_vec()?)
}

fn le(bn: &openssl::bn::BigNumRef, len: usize) -> Result<Vec<u8>, TestkitError> {
    let len32 = i32::try_from(len).map_err(|_| TestkitError::Invalid("length"))?;
    let mut v = bn.to_vec_padded(len32)?;
    v.reverse();
    Ok(v)
}

/// An AMD CA certificate (RSA-2048) in the raw SEV layout.
fn ca_cert(
    usage: u32,
    kid: [u8; 16],
    sid: [u8; 16],
    key: &Rsa<Private>,
    signer: &PKey<Private>,
) -> Result<Vec<u8>, TestkitError> {
    let mut c = Vec::with_capacity(0x40 + 3 * 256);
    c.extend_from_slice(&1u32.to_le_bytes());
    c.extend_from_slice(&kid);
    c.extend_from_slice(&sid);
    c.extend_from_slice(&usage.to_le_bytes());
    c.extend_from_slice(&[0u8; 16]);
    c.extend_from_slice(&2048u32.to_le_bytes());
    c.extend_from_slice(&2048u32.to_le_bytes());
    c.extend_from_slice(&le(key.e(), 256)?);
    c.extend_from_slice(&le(key.n(), 256)?);
    let mut sig = rsa_pss_sha256(signer, &c)?;
    sig.reverse();
    c.extend_from_slice(&sig);
    Ok(c)
}

/// The platform: its chain, the PDH private key and the firmware build.
pub struct FakeSevPlatform {
    pub chain: SevCertChain,
    pub build: SevBuild,
    pdh_key: PKey<Private>,
}

impl std::fmt::Debug for FakeSevPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSevPlatform")
            .field("build", &self.build)
            .finish()
    }
}

fn encode(cert: &Certificate) -> Result<Vec<u8>, TestkitError> {
    let mut out = Vec::with_capacity(SEV_CERT_LEN);
    cert.encode(&mut out, ())?;
    Ok(out)
}

impl FakeSevPlatform {
    pub fn new() -> Result<Self, TestkitError> {
        let ark_rsa = Rsa::generate(2048)?;
        let ask_rsa = Rsa::generate(2048)?;
        let ark_key = PKey::from_rsa(ark_rsa.clone())?;
        let ask_key = PKey::from_rsa(ask_rsa.clone())?;
        let mut ark_kid = [0u8; 16];
        let mut ask_kid = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut ark_kid);
        rand::rngs::OsRng.fill_bytes(&mut ask_kid);
        let ark = ca_cert(ARK_USAGE, ark_kid, ark_kid, &ark_rsa, &ark_key)?;
        let ask = ca_cert(ASK_USAGE, ask_kid, ark_kid, &ask_rsa, &ark_key)?;

        let (cek, cek_prv) = Certificate::generate(Usage::CEK)?;
        let mut cek = encode(&cek)?;
        let sig = rsa_pss_sha256(&ask_key, &cek[..0x414])?;
        cek[0x414..0x418].copy_from_slice(&ASK_USAGE.to_le_bytes());
        cek[0x418..0x41C].copy_from_slice(&1u32.to_le_bytes());
        let mut sig_le = sig;
        sig_le.reverse();
        cek[0x41C..0x41C + sig_le.len()].copy_from_slice(&sig_le);

        let (mut oca, oca_prv) = Certificate::generate(Usage::OCA)?;
        oca_prv.sign(&mut oca)?;
        let (mut pek, pek_prv) = Certificate::generate(Usage::PEK)?;
        oca_prv.sign(&mut pek)?;
        cek_prv.sign(&mut pek)?;
        let (mut pdh, pdh_prv) = Certificate::generate(Usage::PDH)?;
        pek_prv.sign(&mut pdh)?;
        let mut der = Vec::new();
        pdh_prv.encode(&mut der, ())?;
        let pdh_key = PKey::private_key_from_der(&der)?;

        let chain = SevCertChain {
            ca: krun_attestation::reference::SevCaChain { ask, ark },
            sev: krun_attestation::reference::SevPlatformChain {
                pdh: encode(&pdh)?,
                pek: encode(&pek)?,
                oca: encode(&oca)?,
                cek,
            },
        };
        let build = SevBuild {
            version: krun_attestation::reference::SevVersion {
                major: 1,
                minor: 55,
            },
            build: 21,
        };
        Ok(FakeSevPlatform {
            chain,
            build,
            pdh_key,
        })
    }

    /// The ARK in raw form, for `krun-kbs --sev-trust-root`.
    pub fn ark(&self) -> &[u8] {
        &self.chain.ca.ark
    }

    /// LAUNCH_START: unwraps the transport keys from the owner's session blob.
    pub fn launch_start(&self, start: &SevStart) -> Result<FakeSevGuest, TestkitError> {
        if start.cert.len() != SEV_CERT_LEN {
            return Err(TestkitError::Invalid("GODH length"));
        }
        let g = &start.cert;
        if u32::from_le_bytes([g[0x10], g[0x11], g[0x12], g[0x13]]) != 2 {
            return Err(TestkitError::Invalid("GODH curve"));
        }
        let mut x = g[0x14..0x44].to_vec();
        let mut y = g[0x5C..0x8C].to_vec();
        x.reverse();
        y.reverse();
        let group = EcGroup::from_curve_name(Nid::SECP384R1)?;
        let mut ctx = BigNumContext::new()?;
        let mut point = EcPoint::new(&group)?;
        let (bx, by) = (BigNum::from_slice(&x)?, BigNum::from_slice(&y)?);
        point.set_affine_coordinates_gfp(&group, &bx, &by, &mut ctx)?;
        let godh = PKey::from_ec_key(EcKey::from_public_key(&group, &point)?)?;
        let mut d = Deriver::new(&self.pdh_key)?;
        d.set_peer(&godh)?;
        let z = Zeroizing::new(d.derive_to_vec()?);

        let s = &start.session;
        let master = kdf(&z, 16, &s.nonce, "sev-master-secret")?;
        let kek = kdf(&master, 16, &[], "sev-kek")?;
        let kik = kdf(&master, 16, &[], "sev-kik")?;
        if !openssl::memcmp::eq(&hmac(&kik, &[&s.wrap_tk])?, &s.wrap_mac) {
            return Err(TestkitError::Invalid("wrap MAC"));
        }
        let tk = Zeroizing::new(aes_ctr(&kek, &s.wrap_iv, &s.wrap_tk)?);
        let (tek, tik) = (tk[..16].to_vec(), tk[16..].to_vec());
        let policy = start.policy.to_u32().to_le_bytes();
        if !openssl::memcmp::eq(&hmac(&tik, &[&policy])?, &s.policy_mac) {
            return Err(TestkitError::Invalid("policy MAC"));
        }
        Ok(FakeSevGuest {
            tek: Zeroizing::new(tek),
            tik: Zeroizing::new(tik),
            policy,
            build: self.build,
            digest: openssl::sha::Sha256::new(),
            measure: None,
        })
    }
}

/// One launched guest on the fake platform.
pub struct FakeSevGuest {
    tek: Zeroizing<Vec<u8>>,
    tik: Zeroizing<Vec<u8>>,
    policy: [u8; 4],
    build: SevBuild,
    digest: openssl::sha::Sha256,
    measure: Option<[u8; 32]>,
}

impl std::fmt::Debug for FakeSevGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeSevGuest")
    }
}

impl FakeSevGuest {
    /// LAUNCH_UPDATE_DATA / LAUNCH_UPDATE_VMSA: extends the launch digest.
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }

    /// LAUNCH_MEASURE.
    pub fn measure(&mut self) -> Result<SevMeasurement, TestkitError> {
        let ld = self.digest.clone().finish();
        let mut mnonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut mnonce);
        let v = &self.build;
        let head = [0x04, v.version.major, v.version.minor, v.build];
        let mac = hmac(&self.tik, &[&head, &self.policy, &ld, &mnonce])?;
        let mut measure = [0u8; 32];
        measure.copy_from_slice(&mac);
        self.measure = Some(measure);
        Ok(SevMeasurement { measure, mnonce })
    }

    /// LAUNCH_SECRET: checks the packet MAC and returns the plaintext.
    pub fn launch_secret(&self, secret: &SevSecret) -> Result<Zeroizing<Vec<u8>>, TestkitError> {
        let measure = self.measure.ok_or(TestkitError::Invalid("not measured"))?;
        let len = u32::try_from(secret.ciphertext.len())
            .map_err(|_| TestkitError::Invalid("secret length"))?
            .to_le_bytes();
        let flags = secret.header.flags.0.to_le_bytes();
        let mac = hmac(
            &self.tik,
            &[
                &[1u8],
                &flags,
                &secret.header.iv,
                &len,
                &len,
                &secret.ciphertext,
                &measure,
            ],
        )?;
        if !openssl::memcmp::eq(&mac, &secret.header.mac) {
            return Err(TestkitError::Invalid("secret MAC"));
        }
        Ok(Zeroizing::new(aes_ctr(
            &self.tek,
            &secret.header.iv,
            &secret.ciphertext,
        )?))
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, TestkitError> {
    let key = PKey::hmac(key)?;
    let mut s = Signer::new(MessageDigest::sha256(), &key)?;
    for p in parts {
        s.update(p)?;
    }
    Ok(s.sign_to_vec()?)
}

/// NIST SP 800-108 counter-mode KDF with HMAC-SHA256, little-endian counter and length.
fn kdf(key: &[u8], size: usize, ctx: &[u8], label: &str) -> Result<Vec<u8>, TestkitError> {
    let bits = u32::try_from(size * 8).map_err(|_| TestkitError::Invalid("kdf size"))?;
    let mut out = Vec::new();
    let mut i = 1u32;
    while out.len() < size {
        out.extend(hmac(
            key,
            &[
                &i.to_le_bytes(),
                label.as_bytes(),
                &[0],
                ctx,
                &bits.to_le_bytes(),
            ],
        )?);
        i += 1;
    }
    out.truncate(size);
    Ok(out)
}

fn aes_ctr(key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>, TestkitError> {
    let mut c = Crypter::new(Cipher::aes_128_ctr(), Mode::Decrypt, key, Some(iv))?;
    let mut out = vec![0u8; data.len() + 16];
    let mut n = c.update(data, &mut out)?;
    n += c.finalize(&mut out[n..])?;
    out.truncate(n);
    Ok(out)
}
