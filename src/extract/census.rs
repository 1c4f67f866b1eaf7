//! Which `source_id` each profile of an extract maps to, known before most
//! profiles are written: what `run`'s early sending needs to send a customer
//! only when no other profile of this extract can beat it (docs/DESIGN.md,
//! "What `run` may send early").
//!
//! Extract counts a profile here as soon as its external ids are known: when
//! they are read (before its traits), when its line is reused from the
//! previous file, or when a resumed run finds its line in the partial file.
//! A profile whose traits then answer 404 is taken out again. The census is
//! **complete** when the listing's last pass is over and every listed
//! profile's ids have been read: from then on no profile of this extract
//! can add a `source_id`, and a count of 1 means the customer comes from
//! that one profile alone, as transform will find.

use crate::keys::h128;
use rustc_hash::FxHashMap;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Profiles per `source_id` (by a 128-bit key of it), and whether the
/// count can still grow.
#[derive(Debug)]
pub struct Census {
    /// The `source_id` types, in fallback order (the mapping's).
    types: Vec<String>,
    counts: Mutex<FxHashMap<u128, u32>>,
    complete: AtomicBool,
}

impl Census {
    pub fn new(types: Vec<String>) -> Census {
        Census {
            types,
            counts: Mutex::new(FxHashMap::default()),
            complete: AtomicBool::new(false),
        }
    }

    fn key(&self, ids: &[Value]) -> Option<u128> {
        crate::mapping::source_id(ids, &self.types).map(|s| h128(&s))
    }

    /// A profile with these external ids is part of the extract.
    pub fn add(&self, ids: &[Value]) {
        if let (Some(k), Ok(mut c)) = (self.key(ids), self.counts.lock()) {
            *c.entry(k).or_default() += 1;
        }
    }

    /// A profile counted with these ids is not after all (gone: 404).
    pub fn remove(&self, ids: &[Value]) {
        if let (Some(k), Ok(mut c)) = (self.key(ids), self.counts.lock()) {
            if let Some(n) = c.get_mut(&k) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// A line of `profiles.ndjson` (reused, or found by a resumed run):
    /// its external ids counted. A line that does not parse is counted as
    /// nothing here; extract and transform refuse it by name.
    pub fn add_line(&self, line: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Ids {
            #[serde(default)]
            external_ids: Vec<Value>,
        }
        if let Ok(l) = serde_json::from_slice::<Ids>(line) {
            self.add(&l.external_ids);
        }
    }

    pub fn set_complete(&self) {
        self.complete.store(true, Ordering::Release);
    }

    /// No profile of this extract can add a `source_id` any more.
    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// How many profiles of this extract map to `source_id` (so far, until
    /// the census is complete).
    pub fn profiles_of(&self, source_id: &str) -> u32 {
        self.counts
            .lock()
            .map(|c| c.get(&h128(source_id)).copied().unwrap_or(0))
            .unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_profiles_by_the_mappings_source_id() {
        let c = Census::new(vec!["user_id".into(), "email".into()]);
        let a = json!([{"type": "user_id", "id": "u1"}]);
        let b = json!([{"type": "anonymous_id", "id": "x"}, {"type": "user_id", "id": "u1"}]);
        let e = json!([{"type": "email", "id": "e@x.io"}]);
        c.add(a.as_array().unwrap());
        c.add(e.as_array().unwrap());
        assert_eq!(c.profiles_of("u1"), 1);
        c.add(b.as_array().unwrap());
        assert_eq!(c.profiles_of("u1"), 2);
        assert_eq!(c.profiles_of("e@x.io"), 1);
        c.remove(b.as_array().unwrap());
        assert_eq!(c.profiles_of("u1"), 1);
        c.add_line(br#"{"segment_id":"s","external_ids":[{"type":"user_id","id":"u1"}]}"#);
        assert_eq!(c.profiles_of("u1"), 2);
        // Anonymous profiles count for no customer.
        c.add(
            json!([{"type": "anonymous_id", "id": "y"}])
                .as_array()
                .unwrap(),
        );
        assert_eq!(c.profiles_of("y"), 0);
        assert!(!c.is_complete());
        c.set_complete();
        assert!(c.is_complete());
    }
}
