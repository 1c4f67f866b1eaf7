//! In-memory keys of strings, for sets and maps over our own input (ids,
//! `source_id`s): 64 bits, or 128 (two independently seeded SipHashes) where
//! a collision would merge two different things. Never written to a file.

use std::hash::{Hash, Hasher};

pub fn h64(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

pub fn h128(s: &str) -> u128 {
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (0x5E6u32, s).hash(&mut b);
    ((h64(s) as u128) << 64) | b.finish() as u128
}

/// A map from 64-bit keys to small values, built by appending and read by
/// binary search: about 8 bytes a key more than the values, where a hash
/// map takes two to four times that (and double while it grows). Later
/// pushes of a key win. While it is built, duplicates are folded away
/// whenever the vector would grow, so it stays within about twice the
/// distinct keys.
pub struct KeyMap<V> {
    entries: Vec<(u64, V)>,
    /// Entries past this index are not yet sorted and folded.
    folded: usize,
}

impl<V: Copy> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap {
            entries: Vec::new(),
            folded: 0,
        }
    }
}

impl<V: Copy> KeyMap<V> {
    /// Append `key → value`; `replaced(key, old, new)` is told of every
    /// value a later one replaces, when it is folded away.
    pub fn push(&mut self, key: u64, value: V, replaced: &mut impl FnMut(u64, V, V)) {
        if self.entries.len() == self.entries.capacity() && self.entries.len() >= 1024 {
            self.fold(replaced);
            // Grow (double) only when folding freed less than a quarter.
            if self.entries.len() * 4 > self.entries.capacity() * 3 {
                self.entries.reserve(self.entries.capacity());
            }
        }
        self.entries.push((key, value));
    }

    /// Sort by key (stable: push order within a key) and keep the last
    /// value of each key. Call before reading.
    pub fn fold(&mut self, replaced: &mut impl FnMut(u64, V, V)) {
        if self.folded == self.entries.len() {
            return;
        }
        self.entries.sort_by_key(|e| e.0);
        let mut out = 0;
        for i in 0..self.entries.len() {
            let e = self.entries[i];
            if out > 0 && self.entries[out - 1].0 == e.0 {
                replaced(e.0, self.entries[out - 1].1, e.1);
                self.entries[out - 1] = e;
            } else {
                self.entries[out] = e;
                out += 1;
            }
        }
        self.entries.truncate(out);
        self.folded = out;
    }

    /// The value of `key` (after [`KeyMap::fold`]).
    pub fn get(&self, key: u64) -> Option<V> {
        debug_assert_eq!(self.folded, self.entries.len(), "fold before reading");
        self.entries
            .binary_search_by_key(&key, |e| e.0)
            .ok()
            .map(|i| self.entries[i].1)
    }

    pub fn contains(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, V)> + '_ {
        self.entries.iter().copied()
    }

    /// Give back what growing left unused.
    pub fn shrink(&mut self) {
        self.entries.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_pushes_win_and_replacements_are_told_across_folds() {
        let mut m = KeyMap::default();
        let mut told = Vec::new();
        let mut note = |k, old, new| told.push((k, old, new));
        for i in 0..5000u64 {
            m.push(i % 1500, i, &mut note);
        }
        m.fold(&mut note);
        assert_eq!(m.len(), 1500);
        for k in 0..1500u64 {
            let last = if k < 500 { k + 4500 } else { k + 3000 };
            assert_eq!(m.get(k), Some(last), "key {k}");
        }
        assert_eq!(m.get(1500), None);
        assert_eq!(told.len(), 5000 - 1500);
        // Every replacement is in push order for its key.
        assert!(told
            .iter()
            .all(|(k, old, new)| old % 1500 == *k && old < new));
    }
}
