//! A map with a cap on the number of keys. When it is full, a new key takes
//! the place of the least recently seen key if that key has been idle for
//! at least the map's idle time (a renamed endpoint, a finished job); when
//! every key is active, new keys share one overflow entry, so a cardinality
//! explosion costs bounded memory and cannot push out the keys in use.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A map's content in a snapshot: (key, state, last seen) and the overflow state.
#[derive(Debug, Serialize, Deserialize)]
pub struct MapSnapshot<V> {
    /// Tracked keys.
    pub entries: Vec<(KeyHash, V, u64)>,
    /// The overflow state.
    pub overflow: Option<V>,
}

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

/// Bounded key → state map with idle eviction and an overflow entry.
#[derive(Debug)]
pub struct BoundedMap<V> {
    map: HashMap<KeyHash, (V, u64)>,
    overflow: Option<V>,
    cap: usize,
    overflowed: u64,
    evicted: u64,
    /// A key idle this long (in the caller's time unit) may be evicted; 0 = never.
    min_idle: u64,
    /// Oldest last-seen time found by the last eviction scan (skip scans until then).
    next_idle_at: u64,
}

impl<V> BoundedMap<V> {
    /// A map holding at most `cap` keys (plus the overflow entry).
    pub fn new(cap: usize) -> Self {
        Self::with_idle_eviction(cap, 0)
    }

    /// A map holding at most `cap` keys, where a key not seen for `min_idle`
    /// (same unit as the `now` passed to `get_or_insert_at`) may be evicted
    /// to make room; `min_idle` 0 never evicts.
    pub fn with_idle_eviction(cap: usize, min_idle: u64) -> Self {
        Self {
            map: HashMap::new(),
            overflow: None,
            cap: cap.max(1),
            overflowed: 0,
            evicted: 0,
            min_idle,
            next_idle_at: 0,
        }
    }

    /// The state of `key`, created with `make` if new; past the cap, the
    /// overflow state. The flag is true when the overflow state was returned.
    pub fn get_or_insert(&mut self, key: KeyHash, make: impl FnOnce() -> V) -> (&mut V, bool) {
        self.get_or_insert_at(key, 0, make)
    }

    /// As `get_or_insert`, recording `now` as the key's last-seen time and
    /// evicting idle keys when the map is full.
    pub fn get_or_insert_at(
        &mut self,
        key: KeyHash,
        now: u64,
        make: impl FnOnce() -> V,
    ) -> (&mut V, bool) {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.evict_idle(now);
        }
        if self.map.len() < self.cap || self.map.contains_key(&key) {
            let e = self.map.entry(key).or_insert_with(|| (make(), now));
            e.1 = e.1.max(now);
            return (&mut e.0, false);
        }
        self.overflowed += 1;
        (self.overflow.get_or_insert_with(make), true)
    }

    /// Evicts the idle keys among the least recently seen sixteenth of the
    /// map (at least one), so the O(n) scan is paid once per n/16 new keys.
    fn evict_idle(&mut self, now: u64) {
        if self.min_idle == 0 || now < self.next_idle_at {
            return;
        }
        let min_idle = self.min_idle;
        let mut idle: Vec<(u64, KeyHash)> = self
            .map
            .iter()
            .filter(|(_, (_, seen))| now.saturating_sub(*seen) >= min_idle)
            .map(|(k, (_, seen))| (*seen, *k))
            .collect();
        if idle.is_empty() {
            // Nothing can become idle before the oldest key does.
            let oldest = self.map.values().map(|(_, s)| *s).min().unwrap_or(now);
            self.next_idle_at = oldest.saturating_add(self.min_idle);
            return;
        }
        let batch = (self.cap / 16).max(1).min(idle.len());
        idle.select_nth_unstable(batch - 1);
        for (_, k) in &idle[..batch] {
            self.map.remove(k);
        }
        self.evicted += batch as u64;
    }

    /// Keys evicted for being idle so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Every tracked key with its state and last-seen time.
    pub fn iter(&self) -> impl Iterator<Item = (KeyHash, &V, u64)> {
        self.map.iter().map(|(k, (v, s))| (*k, v, *s))
    }

    /// Every tracked state, mutable, the overflow state included.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.map
            .values_mut()
            .map(|(v, _)| v)
            .chain(self.overflow.iter_mut())
    }

    /// Every tracked key with its mutable state.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (KeyHash, &mut V)> {
        self.map.iter_mut().map(|(k, (v, _))| (*k, v))
    }

    /// The overflow state, if any record reached it.
    pub fn overflow(&self) -> Option<&V> {
        self.overflow.as_ref()
    }

    /// The map's content, borrowed, ready to serialise (serialises exactly
    /// like a `MapSnapshot<V>`).
    pub fn snapshot(&self) -> MapSnapshot<&V> {
        MapSnapshot {
            entries: self.map.iter().map(|(k, (v, s))| (*k, v, *s)).collect(),
            overflow: self.overflow.as_ref(),
        }
    }

    /// Adds the content of a snapshot (keys past the cap are dropped).
    pub fn restore_snapshot(&mut self, snap: MapSnapshot<V>) {
        for (k, v, seen) in snap.entries {
            self.restore(k, v, seen);
        }
        if let Some(o) = snap.overflow {
            self.overflow = Some(o);
        }
    }

    /// Puts back a key restored from a snapshot (ignored past the cap).
    pub fn restore(&mut self, key: KeyHash, state: V, last_seen: u64) {
        if self.map.len() < self.cap || self.map.contains_key(&key) {
            self.map.insert(key, (state, last_seen));
        }
    }

    /// Puts back the overflow state restored from a snapshot.
    pub fn restore_overflow(&mut self, state: V) {
        self.overflow = Some(state);
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
        self.map.values().map(|(v, _)| v)
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
    fn idle_keys_make_room_and_active_keys_stay() {
        let mut m: BoundedMap<u32> = BoundedMap::with_idle_eviction(4, 100);
        for k in 0..4 {
            m.get_or_insert_at(k, 10 * k, || 0);
        }
        // All four were seen within the idle time: key 9 overflows.
        let (_, over) = m.get_or_insert_at(9, 50, || 0);
        assert!(over);
        assert_eq!(m.evicted(), 0);
        // Key 0 (seen at 0) keeps being used; keys 1..3 go idle.
        m.get_or_insert_at(0, 140, || 0);
        let (_, over) = m.get_or_insert_at(9, 125, || 0);
        assert!(!over, "idle key 1 (seen at 10) made room");
        assert_eq!(m.evicted(), 1);
        assert_eq!(m.len(), 4);
        let keys: Vec<_> = m.iter().map(|(k, _, _)| k).collect();
        assert!(keys.contains(&0) && keys.contains(&9) && !keys.contains(&1));
    }

    #[test]
    fn key_hash_is_unambiguous() {
        assert_ne!(key_hash(&[b"ab", b"c"]), key_hash(&[b"a", b"bc"]));
        assert_eq!(key_hash(&[b"x"]), key_hash(&[b"x"]));
    }
}
