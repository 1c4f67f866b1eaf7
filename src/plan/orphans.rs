//! `load.orphans.csv`: customers segsync created whose profile now maps to
//! another `source_id` (it gained a `user_id` where `email` was used) or
//! gave no row at all (deleted, merged, or lost its identifier). The ledger
//! records each confirmed customer's profile; nothing is ever deleted.
//!
//! Columns: `source_id` (the customer left behind), `segment_id`, `reason`
//! (`source_id changed` or `profile gone`), `now_source_id`,
//! `in_voucherify` (whether the export shows it), `what_to_do`.

use super::confirmed::Confirmed;
use super::held::{Found, HeldFile, Present};
use crate::files::AtomicFile;
use crate::keys::{h128, later, KeyMap, KeyMapBuilder};
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// What the customers file says of identities, gathered row by row.
pub struct Identities {
    /// Profiles (128-bit keys) that gave a row.
    profiles: KeyMapBuilder<u128, ()>,
    /// Source ids of today's rows.
    sources: Present,
    /// Old source id key → (profile, today's source id).
    moved: HashMap<u128, (String, String)>,
    /// Rows that named their profile.
    with_profile: u64,
}

/// One row's identities, worked out where the row is read.
pub struct Seen {
    /// The row's source id key.
    pub key: u128,
    /// Its place in the export's index, when the export shows it.
    pub at: Option<u32>,
    /// Its profile's key, when the row names one.
    pub profile: Option<u128>,
    /// Source ids the profile was confirmed under before (old key → the
    /// profile and today's source id): few, usually none.
    pub moved: Vec<(u128, (String, String))>,
}

impl Seen {
    pub fn of(found: Found, sid: &str, segment_id: Option<&str>, confirmed: &Confirmed) -> Seen {
        let key = found.key;
        let profile = segment_id.map(h128);
        let moved = match (profile, segment_id) {
            (Some(pk), Some(seg)) => confirmed
                .sources_of(pk)
                .filter(|o| *o != key)
                .map(|old| (old, (seg.to_string(), sid.to_string())))
                .collect(),
            _ => Vec::new(),
        };
        Seen {
            key,
            at: found.at,
            profile,
            moved,
        }
    }
}

impl Identities {
    pub fn new(held: &HeldFile) -> Identities {
        Identities {
            profiles: Default::default(),
            sources: Present::new(held),
            moved: Default::default(),
            with_profile: 0,
        }
    }

    pub fn saw(&mut self, seen: Seen) {
        self.sources.insert(seen.at, seen.key);
        let Some(pk) = seen.profile else { return };
        self.with_profile += 1;
        self.profiles.push(pk, (), &mut later);
        self.moved.extend(seen.moved);
    }
}

/// Write the orphans file; returns how many it lists.
pub fn write(
    path: &Path,
    ids: Identities,
    confirmed: &Confirmed,
    (ledger, target): (&Path, &str),
    held: &HeldFile,
    whole: bool,
) -> Result<u64> {
    let sources = |k: u128| ids.sources.contains(held, k);
    let profiles: KeyMap<u128, ()> = ids.profiles.finish(&mut later);
    let mut keys: HashSet<u128> = ids
        .moved
        .keys()
        .filter(|k| !sources(**k))
        .copied()
        .collect();
    // Profiles gone: only transform's whole file, naming profiles, can tell.
    if whole && ids.with_profile > 0 {
        keys.extend(
            confirmed
                .by_profile
                .iter()
                .filter(|(p, s)| !profiles.contains(*p) && !sources(*s))
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
