//! Results of certificate-chain verification, remembered: a given SEV certificate chain or
//! SNP certificate is verified once, and later requests carrying the same bytes under the same
//! trust roots reuse the result. Keys are SHA-256 over the trust roots in effect and the exact
//! bytes checked, so a changed certificate or another set of roots is verified afresh. Only
//! successful verifications are remembered (a refusal is recomputed, and says the same), and
//! the number of entries is bounded: the oldest is forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Default number of remembered verifications (one per platform chain or certificate edge).
pub const DEFAULT_CAPACITY: usize = 1024;

/// A cache key: SHA-256 over length-prefixed parts.
pub type Key = [u8; 32];

/// The key of `parts` (each prefixed with its length, so no two part lists collide).
pub fn key(parts: &[&[u8]]) -> Key {
    let mut h = openssl::sha::Sha256::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finish()
}

struct Entries<V> {
    map: HashMap<Key, V>,
    order: VecDeque<Key>,
}

/// A bounded map from verified inputs to what their verification produced.
pub struct VerifiedCache<V> {
    entries: Mutex<Entries<V>>,
    capacity: usize,
}

impl<V> std::fmt::Debug for VerifiedCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.entries.lock().map(|e| e.map.len()).unwrap_or(0);
        f.debug_struct("VerifiedCache")
            .field("len", &len)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<V: Clone> Default for VerifiedCache<V> {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl<V: Clone> VerifiedCache<V> {
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            capacity: capacity.max(1),
        }
    }

    /// What verifying the input of `key` produced, if remembered.
    pub fn get(&self, key: &Key) -> Option<V> {
        self.entries.lock().ok()?.map.get(key).cloned()
    }

    /// Remembers a successful verification, forgetting the oldest one when full.
    pub fn insert(&self, key: Key, value: V) {
        let Ok(mut e) = self.entries.lock() else {
            return;
        };
        if e.map.insert(key, value).is_some() {
            return;
        }
        e.order.push_back(key);
        while e.order.len() > self.capacity {
            if let Some(old) = e.order.pop_front() {
                e.map.remove(&old);
            }
        }
    }

    /// Number of remembered verifications.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_oldest_first_and_keys_separate_parts() {
        let c = VerifiedCache::new(2);
        let (a, b, d) = (key(&[b"a"]), key(&[b"b"]), key(&[b"d"]));
        c.insert(a, 1);
        c.insert(b, 2);
        c.insert(a, 1);
        assert_eq!((c.get(&a), c.get(&b), c.len()), (Some(1), Some(2), 2));
        c.insert(d, 3);
        assert_eq!((c.get(&a), c.get(&b), c.get(&d)), (None, Some(2), Some(3)));
        assert_eq!(c.len(), 2);
        // Length prefixes: moving a byte between parts changes the key.
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
        assert_ne!(key(&[b"abc"]), key(&[b"ab", b"c"]));
    }
}
