//! `load.orphans.csv`: customers segsync created whose profile now maps to
//! another `source_id` (it gained a `user_id` where `email` was used) or
//! gave no row at all (deleted, merged, or lost its identifier). The ledger
//! records each confirmed customer's profile; nothing is ever deleted.
//!
//! Columns: `source_id` (the customer left behind), `segment_id`, `reason`
//! (`source_id changed` or `profile gone`), `now_source_id`,
//! `in_voucherify` (whether the export shows it), `what_to_do`.

use super::confirmed::Confirmed;
use super::held::HeldFile;
use crate::files::AtomicFile;
use crate::keys::{h128, later, KeyMap, KeyMapBuilder};
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// What the customers file says of identities, gathered row by row.
#[derive(Default)]
pub struct Identities {
    /// Profiles (128-bit keys) that gave a row.
    profiles: KeyMapBuilder<u128, ()>,
    /// Source ids (128-bit keys) of today's rows.
    sources: KeyMapBuilder<u128, ()>,
    /// Old source id key → (profile, today's source id).
    moved: HashMap<u128, (String, String)>,
    /// Rows that named their profile.
    with_profile: u64,
}

impl Identities {
    pub fn saw(&mut self, sid: &str, segment_id: Option<&str>, confirmed: &Confirmed) {
        let key = h128(sid);
        self.sources.push(key, (), &mut later);
        let Some(seg) = segment_id else { return };
        self.with_profile += 1;
        let pk = h128(seg);
        self.profiles.push(pk, (), &mut later);
        for old in confirmed.sources_of(pk).filter(|o| *o != key) {
            self.moved.insert(old, (seg.to_string(), sid.to_string()));
        }
    }
}

/// Write the orphans file; returns how many it lists.
pub fn write(
    path: &Path,
    ids: Identities,
    confirmed: &Confirmed,
    ledger: &Path,
    target: &str,
    held: &mut HeldFile,
) -> Result<u64> {
    let sources: KeyMap<u128, ()> = ids.sources.finish(&mut later);
    let profiles: KeyMap<u128, ()> = ids.profiles.finish(&mut later);
    let mut keys: HashSet<u128> = ids
        .moved
        .keys()
        .filter(|k| !sources.contains(**k))
        .copied()
        .collect();
    // Profiles gone: only a file that names profiles can tell.
    if ids.with_profile > 0 {
        keys.extend(
            confirmed
                .by_profile
                .iter()
                .filter(|(p, s)| !profiles.contains(*p) && !sources.contains(*s))
                .map(|(_, s)| s),
        );
    }
    let names = if keys.is_empty() {
        HashMap::new()
    } else {
        super::confirmed::source_ids_of(ledger, target, &keys)?
    };
    let mut rows: Vec<[String; 6]> = Vec::new();
    for k in &keys {
        let Some((sid, seg)) = names.get(k) else {
            continue;
        };
        let in_voucherify = held.get(sid)?.is_some();
        let (reason, now, todo) = match ids.moved.get(k) {
            Some((_, now)) => (
                "source_id changed",
                now.clone(),
                format!("the profile's customer is now {now}; if {sid} is the same person, merge or delete {sid} in Voucherify (segsync never deletes)"),
            ),
            None => (
                "profile gone",
                String::new(),
                "no row of the customers file comes from this profile (deleted, merged, or no identifier: see rejected.csv); delete the customer in Voucherify if it should go".to_string(),
            ),
        };
        rows.push([
            sid.clone(),
            seg.clone().unwrap_or_default(),
            reason.into(),
            now,
            if in_voucherify { "yes" } else { "no" }.into(),
            todo,
        ]);
    }
    rows.sort();
    let mut out = csv::Writer::from_writer(AtomicFile::create(path)?);
    out.write_record([
        "source_id",
        "segment_id",
        "reason",
        "now_source_id",
        "in_voucherify",
        "what_to_do",
    ])?;
    for r in &rows {
        out.write_record(r.iter().map(|c| crate::records::guard_cell(c).into_owned()))?;
    }
    out.into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error()))?
        .commit()?;
    Ok(rows.len() as u64)
}
