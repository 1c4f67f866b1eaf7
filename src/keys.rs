//! In-memory keys of strings, for sets and maps over our own input (ids,
//! `source_id`s): 64 bits, or 128 where a collision would merge two
//! different things. XXH3: fast on short strings, and its bits spread
//! evenly (a [`KeyMap`]'s directory relies on it). Written to a file only
//! in the ledger's index (`plan::ledger_index`), which says so in its header.

use twox_hash::{XxHash3_128, XxHash3_64};

pub fn h64(s: &str) -> u64 {
    XxHash3_64::oneshot(s.as_bytes())
}

pub fn h128(s: &str) -> u128 {
    XxHash3_128::oneshot(s.as_bytes())
}

/// Hashing for sets of keys that are hashes already ([`h128`]'s): their
/// low 64 bits as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread;

pub struct SpreadHasher(u64);

impl std::hash::BuildHasher for Spread {
    type Hasher = SpreadHasher;
    fn build_hasher(&self) -> SpreadHasher {
        SpreadHasher(0)
    }
}

impl std::hash::Hasher for SpreadHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not a hash already: mix the bytes in.
        self.0 = XxHash3_64::oneshot_with_seed(self.0, bytes);
    }
    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64;
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A key of a [`KeyMap`]: ordered, with top bits that spread evenly (a
/// hash), which the map's directory uses to jump near a key.
pub trait Key: Copy + Ord {
    /// The key's highest 64 bits.
    fn top(self) -> u64;
}

impl Key for u64 {
    fn top(self) -> u64 {
        self
    }
}

impl Key for u128 {
    fn top(self) -> u64 {
        (self >> 64) as u64
    }
}

/// Builds a [`KeyMap`]: append `key → value` in any order, then
/// [`KeyMapBuilder::finish`] sorts and folds it. Only the finished map can
/// be read, so an unsorted map cannot be searched by mistake.
///
/// While it is built, duplicates are folded away whenever the vector would
/// grow, so it stays within about twice the distinct keys. When a key comes
/// again, `merge(key, earlier, later)` gives the value kept (for "later
/// wins", return `later`); merges run in push order.
pub struct KeyMapBuilder<K, V> {
    entries: Vec<(K, V)>,
    /// Entries up to here are sorted and folded.
    folded: usize,
    /// Room the first push past a seeded map makes (0 once made).
    tail_room: usize,
    /// A seeded map's directory, while nothing was pushed after it.
    seed_dir: Option<(Vec<u32>, u32)>,
}

impl<K: Key, V: Copy> Default for KeyMapBuilder<K, V> {
    fn default() -> Self {
        KeyMapBuilder {
            entries: Vec::new(),
            folded: 0,
            tail_room: 0,
            seed_dir: None,
        }
    }
}

impl<K: Key, V: Copy> KeyMapBuilder<K, V> {
    pub fn push(&mut self, key: K, value: V, merge: &mut impl FnMut(K, V, V) -> V) {
        self.seed_dir = None;
        if self.entries.len() == self.entries.capacity() && self.tail_room > 0 {
            self.entries.reserve(std::mem::take(&mut self.tail_room));
        } else if self.entries.len() == self.entries.capacity() && self.entries.len() >= 1024 {
            self.fold(merge);
            // Grow (double) only when folding freed less than a quarter.
            if self.entries.len() * 4 > self.entries.capacity() * 3 {
                self.entries.reserve(self.entries.capacity());
            }
        }
        self.entries.push((key, value));
    }

    /// Sort by key (stable: push order within a key) and merge each key's
    /// values into one.
    fn fold(&mut self, merge: &mut impl FnMut(K, V, V) -> V) {
        if self.folded == self.entries.len() {
            return;
        }
        self.entries.sort_by_key(|e| e.0);
        let mut out = 0;
        for i in 0..self.entries.len() {
            let e = self.entries[i];
            if out > 0 && self.entries[out - 1].0 == e.0 {
                let kept = merge(e.0, self.entries[out - 1].1, e.1);
                self.entries[out - 1].1 = kept;
            } else {
                self.entries[out] = e;
                out += 1;
            }
        }
        self.entries.truncate(out);
        self.folded = out;
    }

    /// Add entries pushed after every entry already here.
    pub fn extend(&mut self, later: Vec<(K, V)>) {
        self.seed_dir = None;
        self.entries.extend(later);
    }

    /// A builder that holds `map` already: what is pushed after it comes
    /// later (the first push makes room for an eighth more, so a short
    /// tail does not double the vector, and none copies it).
    pub fn seeded(map: KeyMap<K, V>) -> KeyMapBuilder<K, V> {
        let entries = map.entries;
        KeyMapBuilder {
            folded: entries.len(),
            tail_room: entries.len() / 8 + 1024,
            entries,
            seed_dir: Some((map.dir, map.bits)),
        }
    }

    /// The map, sorted and folded, its unused room given back (a seeded
    /// map nothing was pushed to is given back as it came).
    pub fn finish(mut self, merge: &mut impl FnMut(K, V, V) -> V) -> KeyMap<K, V> {
        if let Some((dir, bits)) = self.seed_dir.take() {
            return KeyMap {
                entries: self.entries,
                dir,
                bits,
            };
        }
        self.fold(merge);
        if self.entries.capacity() > self.entries.len() {
            self.entries.shrink_to_fit();
        }
        KeyMap::indexed(self.entries)
    }
}

/// A read-only map from keys to small values: about the key's size a key
/// more than the values, where a hash map takes two to four times that (and
/// double while it grows). Made by [`KeyMapBuilder`].
///
/// Read through a directory by the keys' top bits (one or two keys a slot,
/// 4 bytes a slot), then a search within the slot: a lookup touches a cache
/// line of the directory and one or two of the entries, where a binary
/// search over a million entries misses the cache some twenty times (and
/// eight keys a slot, five times).
pub struct KeyMap<K, V> {
    entries: Vec<(K, V)>,
    /// `dir[j]`: the first entry whose top `bits` bits are at least `j`.
    dir: Vec<u32>,
    bits: u32,
}

impl<K: Key, V: Copy> Default for KeyMap<K, V> {
    fn default() -> Self {
        KeyMap::indexed(Vec::new())
    }
}

impl<K: Key, V: Copy> KeyMap<K, V> {
    /// The map over sorted, folded entries, with its directory.
    fn indexed(entries: Vec<(K, V)>) -> KeyMap<K, V> {
        let bits = entries.len().max(1).ilog2().min(26);
        let slot = |k: K| {
            if bits == 0 {
                0
            } else {
                (k.top() >> (64 - bits)) as usize
            }
        };
        let mut dir = vec![0u32; (1 << bits) + 1];
        let mut at = 0;
        for (j, d) in dir.iter_mut().enumerate() {
            while at < entries.len() && slot(entries[at].0) < j {
                at += 1;
            }
            *d = at as u32;
        }
        KeyMap { entries, dir, bits }
    }

    /// The map over entries read back from a file: None unless their keys
    /// strictly increase (sorted, folded), as [`KeyMap::entries`] gave them.
    pub fn from_sorted(entries: Vec<(K, V)>) -> Option<KeyMap<K, V>> {
        entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0)
            .then(|| KeyMap::indexed(entries))
    }

    /// The entries, by key.
    pub fn entries(&self) -> &[(K, V)] {
        &self.entries
    }

    pub fn get(&self, key: K) -> Option<V> {
        self.position(key).map(|i| self.entries[i].1)
    }

    /// Where `key` is among the entries (0 to `len() - 1`, by key).
    pub fn position(&self, key: K) -> Option<usize> {
        let j = if self.bits == 0 {
            0
        } else {
            (key.top() >> (64 - self.bits)) as usize
        };
        let (lo, hi) = (self.dir[j] as usize, self.dir[j + 1] as usize);
        self.entries[lo..hi]
            .binary_search_by_key(&key, |e| e.0)
            .ok()
            .map(|i| lo + i)
    }

    /// [`KeyMap::position`] of many keys at once, in steps over them all:
    /// every key's directory slot, then every search. The loads of one step
    /// do not wait on each other, so the processor has many cache misses
    /// in flight where one lookup after another has one or two.
    pub fn positions(&self, keys: &[Option<K>], out: &mut Vec<Option<usize>>) {
        let slot = |key: K| {
            if self.bits == 0 {
                0
            } else {
                (key.top() >> (64 - self.bits)) as usize
            }
        };
        let ranges: Vec<(u32, u32)> = (keys.iter())
            .map(|k| k.map_or((0, 0), |k| (self.dir[slot(k)], self.dir[slot(k) + 1])))
            .collect();
        // Then each slot's first entry, in a loop of loads alone (they miss
        // the cache together, where a search's branches would wait for
        // each), so that the searches after find them in the cache.
        let touched = (ranges.iter())
            .filter(|(lo, hi)| lo < hi)
            .fold(0, |acc, (lo, _)| acc ^ self.entries[*lo as usize].0.top());
        std::hint::black_box(touched);
        out.clear();
        out.extend(keys.iter().zip(ranges).map(|(k, (lo, hi))| {
            let (key, lo) = (k.as_ref()?, lo as usize);
            (self.entries[lo..hi as usize].binary_search_by_key(key, |e| e.0))
                .ok()
                .map(|i| lo + i)
        }));
    }

    pub fn contains(&self, key: K) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.entries.iter().copied()
    }
}

/// "Later wins", for [`KeyMapBuilder`].
pub fn later<K, V>(_: K, _: V, later: V) -> V {
    later
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_pushes_win_and_merges_are_told_across_folds() {
        let mut m = KeyMapBuilder::default();
        let mut told = Vec::new();
        let mut note = |k, old, new| {
            told.push((k, old, new));
            new
        };
        for i in 0..5000u64 {
            m.push(i % 1500, i, &mut note);
        }
        let m = m.finish(&mut note);
        assert_eq!(m.len(), 1500);
        for k in 0..1500u64 {
            let last = if k < 500 { k + 4500 } else { k + 3000 };
            assert_eq!(m.get(k), Some(last), "key {k}");
        }
        assert_eq!(m.get(1500), None);
        assert_eq!(told.len(), 5000 - 1500);
        // Every merge is in push order for its key.
        assert!(told
            .iter()
            .all(|(k, old, new)| old % 1500 == *k && old < new));
    }

    #[test]
    fn a_merge_can_keep_what_came_before() {
        let mut m = KeyMapBuilder::default();
        let mut sum = |_, a: u64, b: u64| a + b;
        for i in 0..3000u128 {
            m.push(i % 7, 1u64, &mut sum);
        }
        let m = m.finish(&mut sum);
        assert_eq!(m.iter().map(|(_, v)| v).sum::<u64>(), 3000);
        assert_eq!(m.get(0), Some(429));
    }

    #[test]
    fn the_directory_finds_every_key_of_hashed_ids_and_no_other() {
        // Keys as the plan's are: hashes of ids, spread over every slot.
        let mut m = KeyMapBuilder::default();
        for i in 0..100_000u64 {
            m.push(h64(&format!("p{i:07}")), i, &mut later);
        }
        let m = m.finish(&mut later);
        assert_eq!(m.len(), 100_000);
        assert!(m.bits > 10, "a directory of {} bits", m.bits);
        for i in 0..100_000u64 {
            assert_eq!(m.get(h64(&format!("p{i:07}"))), Some(i), "p{i:07}");
        }
        for i in 100_000..110_000u64 {
            assert_eq!(m.get(h64(&format!("p{i:07}"))), None);
        }
        // The extremes of the key space sit in the first and last slots.
        let mut e = KeyMapBuilder::default();
        for k in [0u64, 1, u64::MAX - 1, u64::MAX] {
            e.push(k, k, &mut later);
        }
        for i in 0..100u64 {
            e.push(i << 50, i, &mut later);
        }
        let e = e.finish(&mut later);
        for k in [0u64, 1, u64::MAX - 1, u64::MAX] {
            assert_eq!(e.get(k), Some(k));
        }
    }

    #[test]
    fn a_seeded_map_finds_its_keys_and_the_ones_pushed_after() {
        let build = |n: u64| {
            let mut m = KeyMapBuilder::default();
            for i in 0..n {
                m.push(h64(&format!("s{i}")), i, &mut later);
            }
            m.finish(&mut later)
        };
        // Given back as it came: its directory still finds every key.
        let kept = KeyMapBuilder::seeded(build(5000)).finish(&mut later);
        for i in 0..5000u64 {
            assert_eq!(kept.get(h64(&format!("s{i}"))), Some(i));
        }
        assert_eq!(kept.get(h64("s5000")), None);
        // Pushed after: a new directory over both, later pushes winning.
        let mut m = KeyMapBuilder::seeded(kept);
        m.push(h64("s7"), 70, &mut later);
        m.push(h64("new"), 1, &mut later);
        let m = m.finish(&mut later);
        assert_eq!(
            (m.len(), m.get(h64("s7")), m.get(h64("new"))),
            (5001, Some(70), Some(1))
        );
        assert_eq!(m.get(h64("s4999")), Some(4999));
    }
}
