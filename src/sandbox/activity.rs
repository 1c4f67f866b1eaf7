//! The profile list's order. Segment documents the list as "sorted by recent
//! activity": a profile that gets activity moves to the head. The cursor
//! works like an offset into that order (the pessimistic reading), so a
//! profile that moves while a client lists can be skipped, and others repeat.

use std::collections::BTreeSet;

/// Profiles that got activity, most recent first; then the rest in index order.
#[derive(Default)]
pub struct ActivityOrder {
    /// Moved profiles, most recent last.
    moved: Vec<u64>,
    moved_set: BTreeSet<u64>,
}

impl ActivityOrder {
    /// Profile `index` got activity: it moves to the head.
    pub fn touch(&mut self, index: u64) {
        if self.moved_set.insert(index) {
            self.moved.push(index);
        } else if let Some(pos) = self.moved.iter().rposition(|&i| i == index) {
            self.moved.remove(pos);
            self.moved.push(index);
        }
    }

    /// The profiles at positions `offset..offset + limit` of a list of `n`.
    pub fn page(&self, offset: usize, limit: usize, n: u64) -> Vec<u64> {
        let mut out = Vec::with_capacity(limit);
        let m = self.moved.len();
        let mut pos = offset;
        while out.len() < limit && pos < m {
            out.push(self.moved[m - 1 - pos]);
            pos += 1;
        }
        if out.len() == limit {
            return out;
        }
        // The k-th profile that has not moved: k plus the moved ones up to it.
        let k = (pos - m) as u64;
        let mut candidate = k;
        loop {
            let below = self.moved_set.range(..=candidate).count() as u64;
            if k + below == candidate {
                break;
            }
            candidate = k + below;
        }
        while out.len() < limit && candidate < n {
            if !self.moved_set.contains(&candidate) {
                out.push(candidate);
            }
            candidate += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_profiles_lead_and_the_rest_keep_their_order() {
        let mut o = ActivityOrder::default();
        assert_eq!(o.page(0, 5, 8), [0, 1, 2, 3, 4]);
        o.touch(3);
        o.touch(6);
        o.touch(3);
        assert_eq!(o.page(0, 8, 8), [3, 6, 0, 1, 2, 4, 5, 7]);
        assert_eq!(o.page(2, 3, 8), [0, 1, 2]);
        assert_eq!(o.page(5, 5, 8), [4, 5, 7]);
        assert_eq!(o.page(1, 3, 8), [6, 0, 1]);
    }

    #[test]
    fn a_move_during_listing_skips_a_profile_for_an_offset_cursor() {
        let mut o = ActivityOrder::default();
        let first = o.page(0, 3, 6);
        o.touch(4); // activity while the client is between pages
        let second = o.page(3, 3, 6);
        let seen: BTreeSet<u64> = first.iter().chain(&second).copied().collect();
        assert!(
            !seen.contains(&4),
            "the moved profile is skipped by this pass"
        );
        assert!(second.contains(&2), "and another is repeated");
    }
}
