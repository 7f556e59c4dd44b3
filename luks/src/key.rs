//! The volume (master) key.

use zeroize::Zeroizing;

/// The LUKS volume key. Zeroized on drop; its `Debug` shows only the length.
pub struct MasterKey(Zeroizing<Vec<u8>>);

impl MasterKey {
    pub(crate) fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }

    /// A fresh random key of `len` bytes from the operating system.
    pub fn random(len: usize) -> Result<Self, getrandom::Error> {
        let mut k = Zeroizing::new(vec![0u8; len]);
        getrandom::getrandom(&mut k)?;
        Ok(Self(k))
    }

    /// Wraps existing key bytes (for example a key handed over by a key broker).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// The raw key. Keep copies in `Zeroizing` buffers.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty key (never produced by unlock).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Lowercase hex of the key, as a dm-crypt table wants it.
    pub fn to_hex(&self) -> Zeroizing<String> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = Zeroizing::new(String::with_capacity(self.0.len() * 2));
        for b in self.0.iter() {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey([redacted; {} bytes])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes_and_hex_is_lowercase() {
        let k = MasterKey::from_bytes(&[0xab, 0x01]);
        let d = format!("{k:?}");
        assert!(!d.contains("ab") && !d.contains("171"), "{d}");
        assert_eq!(k.to_hex().as_str(), "ab01");
        assert_eq!(MasterKey::random(64).unwrap().len(), 64);
    }
}
