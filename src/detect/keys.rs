//! A map with a cap on the number of keys; keys past the cap share one
//! overflow entry, so a cardinality explosion costs bounded memory.

use std::collections::HashMap;

/// Hash of a detector key (64-bit xxh3 of its parts; collisions at 10^5 keys
/// are ~10^-9 likely and would only merge two baselines).
pub type KeyHash = u64;

/// Hashes the parts of a key, each length-prefixed so ("ab","c") ≠ ("a","bc").
pub fn key_hash(parts: &[&[u8]]) -> KeyHash {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(&(p.len() as u32).to_le_bytes());
        h.update(p);
    }
    h.digest()
}

/// Bounded key → state map with an overflow entry.
#[derive(Debug)]
pub struct BoundedMap<V> {
    map: HashMap<KeyHash, V>,
    overflow: Option<V>,
    cap: usize,
    overflowed: u64,
}

impl<V> BoundedMap<V> {
    /// A map holding at most `cap` keys (plus the overflow entry).
    pub fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            overflow: None,
            cap: cap.max(1),
            overflowed: 0,
        }
    }

    /// The state of `key`, created with `make` if new; past the cap, the
    /// overflow state. The flag is true when the overflow state was returned.
    pub fn get_or_insert(&mut self, key: KeyHash, make: impl FnOnce() -> V) -> (&mut V, bool) {
        if self.map.len() < self.cap || self.map.contains_key(&key) {
            return (self.map.entry(key).or_insert_with(make), false);
        }
        self.overflowed += 1;
        (self.overflow.get_or_insert_with(make), true)
    }

    /// Number of tracked keys (not counting overflow).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records routed to the overflow entry so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// All tracked states (not the overflow one).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_routes_new_keys_to_overflow() {
        let mut m: BoundedMap<u32> = BoundedMap::new(2);
        *m.get_or_insert(1, || 0).0 += 1;
        *m.get_or_insert(2, || 0).0 += 1;
        let (v, over) = m.get_or_insert(3, || 0);
        *v += 1;
        assert!(over);
        let (v, over) = m.get_or_insert(1, || 0);
        assert!(!over);
        assert_eq!(*v, 1);
        assert_eq!(m.len(), 2);
        assert_eq!(m.overflowed(), 1);
    }

    #[test]
    fn key_hash_is_unambiguous() {
        assert_ne!(key_hash(&[b"ab", b"c"]), key_hash(&[b"a", b"bc"]));
        assert_eq!(key_hash(&[b"x"]), key_hash(&[b"x"]));
    }
}
