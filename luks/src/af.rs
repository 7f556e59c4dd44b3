//! The LUKS anti-forensic splitter (AF split/merge with hash diffusion).
//!
//! A key of `n` bytes is stored as `stripes` blocks of `n` bytes; all but the last are random,
//! and the key is recovered only from every stripe, so erasing any part destroys it.

use zeroize::{Zeroize, Zeroizing};

use crate::hash::{HashAlg, MAX_DIGEST_LEN};

/// Errors from AF merge/split.
#[derive(Debug, thiserror::Error)]
pub enum AfError {
    /// The material is shorter than `key_len * stripes`.
    #[error("anti-forensic material is too short for the key size and stripes")]
    TooShort,
    /// Zero stripes or an empty key.
    #[error("anti-forensic key size or stripe count is zero")]
    Empty,
    /// The random generator failed.
    #[error("random number generator failed")]
    Random(#[source] getrandom::Error),
}

/// Number of bytes the split material occupies.
pub fn split_len(key_len: usize, stripes: u32) -> Option<usize> {
    key_len.checked_mul(usize::try_from(stripes).ok()?)
}

/// The LUKS diffuse function: each digest-sized block `i` of `buf` is replaced by
/// `H(be32(i) || block)`, truncated for the last partial block.
fn diffuse(buf: &mut [u8], hash: HashAlg) {
    let ds = hash.digest_len();
    let mut out = [0u8; MAX_DIGEST_LEN];
    for (i, block) in buf.chunks_mut(ds).enumerate() {
        // A key has at most a few hundred bytes, so the block index fits in u32.
        let idx = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
        hash.hash_into(&[&idx, block], &mut out);
        let n = block.len();
        block.copy_from_slice(&out[..n]);
    }
    out.zeroize();
}

/// Recovers a `key_len`-byte key from `stripes` stripes in `material`.
pub fn merge(
    material: &[u8],
    key_len: usize,
    stripes: u32,
    hash: HashAlg,
) -> Result<Zeroizing<Vec<u8>>, AfError> {
    let total = split_len(key_len, stripes).ok_or(AfError::TooShort)?;
    if key_len == 0 || stripes == 0 {
        return Err(AfError::Empty);
    }
    let material = material.get(..total).ok_or(AfError::TooShort)?;
    let mut d = Zeroizing::new(vec![0u8; key_len]);
    let mut stripes_iter = material.chunks_exact(key_len);
    let last = stripes_iter.next_back().ok_or(AfError::Empty)?;
    for stripe in stripes_iter {
        xor_into(&mut d, stripe);
        diffuse(&mut d, hash);
    }
    xor_into(&mut d, last);
    Ok(d)
}

/// Splits `key` into `stripes` stripes (the inverse of [`merge`]).
pub fn split(key: &[u8], stripes: u32, hash: HashAlg) -> Result<Zeroizing<Vec<u8>>, AfError> {
    let total = split_len(key.len(), stripes).ok_or(AfError::TooShort)?;
    if key.is_empty() || stripes == 0 {
        return Err(AfError::Empty);
    }
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; total]);
    let mut d = Zeroizing::new(vec![0u8; n]);
    let (random, last) = out.split_at_mut(total - n);
    getrandom::getrandom(random).map_err(AfError::Random)?;
    for stripe in random.chunks_exact(n) {
        xor_into(&mut d, stripe);
        diffuse(&mut d, hash);
    }
    for ((o, k), x) in last.iter_mut().zip(key).zip(d.iter()) {
        *o = k ^ x;
    }
    Ok(out)
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (a, b) in dst.iter_mut().zip(src) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_recovers_key_for_each_hash() {
        let key: Vec<u8> = (0..64u8).collect();
        for h in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
            let m = split(&key, 4000, h).unwrap();
            assert_eq!(m.len(), 64 * 4000);
            assert_eq!(&merge(&m, 64, 4000, h).unwrap()[..], &key[..]);
            // A different hash gives a different key.
            let other = if h == HashAlg::Sha1 {
                HashAlg::Sha256
            } else {
                HashAlg::Sha1
            };
            assert_ne!(&merge(&m, 64, 4000, other).unwrap()[..], &key[..]);
        }
    }

    #[test]
    fn one_stripe_is_plain_copy_and_short_material_is_an_error() {
        let key = [7u8; 32];
        assert_eq!(&merge(&key, 32, 1, HashAlg::Sha256).unwrap()[..], &key[..]);
        assert!(matches!(
            merge(&key, 32, 2, HashAlg::Sha256),
            Err(AfError::TooShort)
        ));
        assert!(matches!(
            merge(&key, 0, 2, HashAlg::Sha256),
            Err(AfError::Empty)
        ));
    }

    #[test]
    fn diffuse_handles_partial_last_block() {
        // 20-byte key with sha256 (32-byte digest): one partial block, truncated.
        let mut a = [1u8; 20];
        diffuse(&mut a, HashAlg::Sha256);
        let mut full = [0u8; MAX_DIGEST_LEN];
        HashAlg::Sha256.hash_into(&[&0u32.to_be_bytes(), &[1u8; 20]], &mut full);
        assert_eq!(a[..], full[..20]);
    }
}
