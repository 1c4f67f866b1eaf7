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
