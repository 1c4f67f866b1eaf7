//! What the ledger says segsync last confirmed, per customer, kept small
//! for a plan over a million customers: by 64-bit key of the source id, the
//! content key of the row confirmed, when, which fields it gave (lists
//! interned: few distinct ones), and from which profile. Source ids
//! themselves are read again only for the few customers the orphans file
//! names ([`source_ids_of`]).

use crate::keys::{h64, KeyMap};
use crate::state::ledger::{content_key, LedgerEvent};
use anyhow::{Context, Result};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

/// The last confirmation of one customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Last {
    /// The first 64 bits of the row's content key.
    pub content: u64,
    /// When Voucherify confirmed it (ms since the epoch).
    pub at_ms: i64,
    /// Index into [`Confirmed::field_lists`]; None for lines from before
    /// plans (which fields segsync set is unknown).
    pub fields: Option<u32>,
}

/// [`Last`] in 16 bytes: the time in the low 44 bits of the second word
/// (milliseconds to the year 2527), the field list index above it.
#[derive(Debug, Clone, Copy)]
struct Packed(u64, u64);

const MS_BITS: u32 = 44;
const NO_FIELDS: u64 = (1 << (64 - MS_BITS)) - 1;

impl Packed {
    fn new(l: Last) -> Packed {
        let ms = l.at_ms.clamp(0, (1 << MS_BITS) - 1) as u64;
        let f = l
            .fields
            .map_or(NO_FIELDS, |f| u64::from(f).min(NO_FIELDS - 1));
        Packed(l.content, (f << MS_BITS) | ms)
    }

    fn last(self) -> Last {
        let f = self.1 >> MS_BITS;
        Last {
            content: self.0,
            at_ms: (self.1 & ((1 << MS_BITS) - 1)) as i64,
            fields: (f != NO_FIELDS).then_some(f as u32),
        }
    }
}

#[derive(Default)]
pub struct Confirmed {
    by_source: KeyMap<Packed>,
    /// Profile (64-bit key of `segment_id`) → the source id key it was last
    /// confirmed under.
    pub by_profile: KeyMap<u64>,
    /// Profiles confirmed under more than one source id: the earlier ones
    /// (few; a customer left behind stays reported).
    pub earlier: HashMap<u64, Vec<u64>>,
    pub field_lists: Vec<Vec<String>>,
}

impl Confirmed {
    pub fn last(&self, sid: &str) -> Option<Last> {
        self.by_source.get(h64(sid)).map(Packed::last)
    }

    /// Every source id key `profile` was confirmed under.
    pub fn sources_of(&self, profile: u64) -> impl Iterator<Item = u64> + '_ {
        self.by_profile
            .get(profile)
            .into_iter()
            .chain(self.earlier.get(&profile).into_iter().flatten().copied())
    }

    pub fn fields(&self, last: &Last) -> Option<&[String]> {
        last.fields.map(|i| self.field_lists[i as usize].as_slice())
    }
}

/// Each ledger line for `target`, parsed, in order (torn or foreign lines
/// skipped: `load` reports those).
fn each_event(path: &Path, target: &str, mut f: impl FnMut(LedgerEvent)) -> Result<()> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let Ok(ev) = serde_json::from_str::<LedgerEvent>(&line) else {
            continue;
        };
        let t = match &ev {
            LedgerEvent::Opened { target, .. }
            | LedgerEvent::Submitted { target, .. }
            | LedgerEvent::Confirmed { target, .. }
            | LedgerEvent::Abandoned { target, .. } => target,
        };
        if t == target {
            f(ev);
        }
    }
    Ok(())
}

/// Read the ledger's confirmations for `target`.
pub fn read(path: &Path, target: &str) -> Result<Confirmed> {
    let mut out = Confirmed::default();
    let mut interned: HashMap<Vec<String>, u32> = HashMap::new();
    each_event(path, target, |ev| {
        let LedgerEvent::Confirmed { at, done, .. } = ev else {
            return;
        };
        let at_ms = at
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond())
            .unwrap_or(i64::MAX);
        for c in done {
            let sid = h64(&c.source_id);
            let fields = c.fields.map(|mut f| {
                f.sort();
                let next = out.field_lists.len() as u32;
                *interned.entry(f.clone()).or_insert_with(|| {
                    out.field_lists.push(f);
                    next
                })
            });
            let last = Last {
                content: content_key(&c.hash).map_or(0, |k| (k >> 64) as u64),
                at_ms,
                fields,
            };
            out.by_source
                .push(sid, Packed::new(last), &mut |_, _, _| {});
            if let Some(seg) = &c.segment_id {
                out.by_profile.push(h64(seg), sid, &mut |pk, old, new| {
                    note_earlier(&mut out.earlier, pk, old, new)
                });
            }
        }
    })?;
    out.by_source.fold(&mut |_, _, _| {});
    out.by_source.shrink();
    let earlier = &mut out.earlier;
    out.by_profile
        .fold(&mut |pk, old, new| note_earlier(earlier, pk, old, new));
    out.by_profile.shrink();
    Ok(out)
}

/// A profile confirmed under `new` after `old`: `old` is an earlier one.
fn note_earlier(earlier: &mut HashMap<u64, Vec<u64>>, profile: u64, old: u64, new: u64) {
    if old != new {
        let e = earlier.entry(profile).or_default();
        if !e.contains(&old) {
            e.push(old);
        }
    }
}

/// The source ids (and profiles) behind some 64-bit source id keys: a
/// second pass over the ledger, for the few customers an orphans file names.
pub fn source_ids_of(
    path: &Path,
    target: &str,
    keys: &HashSet<u64>,
) -> Result<HashMap<u64, (String, Option<String>)>> {
    let mut out = HashMap::new();
    each_event(path, target, |ev| {
        if let LedgerEvent::Confirmed { done, .. } = ev {
            for c in done {
                let k = h64(&c.source_id);
                if keys.contains(&k) {
                    out.insert(k, (c.source_id, c.segment_id));
                }
            }
        }
    })?;
    Ok(out)
}
