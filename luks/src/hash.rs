//! The hash functions LUKS names in its headers: digests, PBKDF2 and header checksums.

use hmac::Hmac;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

/// Errors from hash selection.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The header names a hash this crate does not implement.
    #[error("unsupported hash {name:?}")]
    Unsupported {
        /// The name as found in the header.
        name: String,
    },
    /// PBKDF2 was asked for zero iterations.
    #[error("PBKDF2 iteration count is zero")]
    ZeroIterations,
}

/// A hash algorithm usable for PBKDF2, anti-forensic diffusion and checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// SHA-1 (LUKS1 default of old cryptsetup versions).
    Sha1,
    /// SHA-256 (luksy and current cryptsetup default).
    Sha256,
    /// SHA-512.
    Sha512,
}

/// The longest digest of any supported hash.
pub const MAX_DIGEST_LEN: usize = 64;

impl HashAlg {
    /// Looks a hash up by the name LUKS headers use (`sha1`, `sha256`, `sha512`).
    pub fn from_name(name: &str) -> Result<Self, HashError> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Self::Sha1),
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            _ => Err(HashError::Unsupported {
                name: name.to_owned(),
            }),
        }
    }

    /// The name as written into headers.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// Hashes the concatenation of `parts` into `out[..digest_len]`.
    ///
    /// Returns the digest length. `out` must hold `MAX_DIGEST_LEN` bytes.
    pub(crate) fn hash_into(self, parts: &[&[u8]], out: &mut [u8; MAX_DIGEST_LEN]) -> usize {
        fn run<D: Digest>(parts: &[&[u8]], out: &mut [u8]) {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            out.copy_from_slice(&d.finalize());
        }
        let n = self.digest_len();
        match self {
            Self::Sha1 => run::<Sha1>(parts, &mut out[..n]),
            Self::Sha256 => run::<Sha256>(parts, &mut out[..n]),
            Self::Sha512 => run::<Sha512>(parts, &mut out[..n]),
        }
        n
    }

    /// PBKDF2-HMAC with this hash, filling all of `out`.
    pub fn pbkdf2(
        self,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
        out: &mut [u8],
    ) -> Result<(), HashError> {
        if iterations == 0 {
            return Err(HashError::ZeroIterations);
        }
        match self {
            Self::Sha1 => pbkdf2::pbkdf2::<Hmac<Sha1>>(password, salt, iterations, out),
            Self::Sha256 => pbkdf2::pbkdf2::<Hmac<Sha256>>(password, salt, iterations, out),
            Self::Sha512 => pbkdf2::pbkdf2::<Hmac<Sha512>>(password, salt, iterations, out),
        }
        // The only error pbkdf2 reports is an invalid HMAC key length, which HMAC never has.
        .map_err(|_| HashError::ZeroIterations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn names_round_trip_and_unknown_is_named() {
        for h in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            assert_eq!(HashAlg::from_name(h.name()).unwrap(), h);
        }
        let e = HashAlg::from_name("whirlpool").unwrap_err();
        assert!(e.to_string().contains("whirlpool"));
    }

    #[test]
    fn pbkdf2_rfc6070_and_rfc7914_vectors() {
        let mut out = [0u8; 20];
        HashAlg::Sha1
            .pbkdf2(b"password", b"salt", 2, &mut out)
            .unwrap();
        assert_eq!(hex(&out), "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957");
        let mut out = [0u8; 64];
        HashAlg::Sha256
            .pbkdf2(b"passwd", b"salt", 1, &mut out)
            .unwrap();
        assert_eq!(
            hex(&out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
             49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
        );
        assert!(HashAlg::Sha512.pbkdf2(b"p", b"s", 0, &mut out).is_err());
    }

    #[test]
    fn hash_into_matches_known_sha512_of_abc() {
        let mut out = [0u8; MAX_DIGEST_LEN];
        let n = HashAlg::Sha512.hash_into(&[b"a", b"bc"], &mut out);
        assert_eq!(n, 64);
        assert!(hex(&out).starts_with("ddaf35a193617aba"));
    }
}
