//! What the ledger says segsync last confirmed, per customer, kept small
//! for a plan over a million customers: by 128-bit key of the source id (a
//! collision would merge two customers), the content key of the row
//! confirmed, when, which fields segsync has set and not cleared since (lists
//! interned: few distinct ones), and from which profile. Source ids
//! themselves are read again only for the few customers the orphans file
//! names ([`source_ids_of`]).
//!
//! The fields segsync set are never forgotten: each confirmation adds the
//! fields it gave and takes away those it cleared (`cleared`), so a field the
//! source emptied stays set, and so a pending clear, until it is cleared or
//! set again.

use crate::keys::{h128, KeyMap, KeyMapBuilder};
use crate::state::ledger::content_key;
use anyhow::{Context, Result};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use std::borrow::Cow;
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
    /// Index into [`Confirmed::field_lists`]: the fields segsync set and has
    /// not cleared since. None when only lines from before plans confirmed
    /// the customer (which fields segsync set is unknown).
    pub fields: Option<u32>,
}

/// [`Last`] in 16 bytes, plus the confirmation's cleared list while the
/// index is built: the time in the low 44 bits of the second word
/// (milliseconds to the year 2527), the field list index above it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Packed(pub u64, pub u64, pub u32);

const MS_BITS: u32 = 44;
const NO_FIELDS: u64 = (1 << (64 - MS_BITS)) - 1;
/// Distinct field lists a plan can tell apart (2^20 - 1): past it a plan
/// stops rather than compute one customer's clears from another's fields.
pub const MAX_LISTS: usize = NO_FIELDS as usize;

impl Packed {
    /// `l` packed; its field list index is below [`MAX_LISTS`] (the
    /// interner refuses more, so no two lists ever share an index).
    fn new(l: Last, cleared: u32) -> Packed {
        let ms = l.at_ms.clamp(0, (1 << MS_BITS) - 1) as u64;
        let f = l.fields.map_or(NO_FIELDS, u64::from);
        debug_assert!(f <= NO_FIELDS);
        Packed(l.content, (f << MS_BITS) | ms, cleared)
    }

    pub(super) fn last(self) -> Last {
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
    pub(super) by_source: KeyMap<u128, Packed>,
    /// Profile (128-bit key of `segment_id`) → the source id key it was last
    /// confirmed under.
    pub by_profile: KeyMap<u128, u128>,
    /// Profiles confirmed under more than one source id: the earlier ones
    /// (few; a customer left behind stays reported).
    pub earlier: HashMap<u128, Vec<u128>>,
    pub field_lists: Vec<Vec<String>>,
}

impl Confirmed {
    /// No confirmations, only field lists (for tests of the comparison).
    #[cfg(test)]
    pub fn with_field_lists(field_lists: Vec<Vec<String>>) -> Confirmed {
        Confirmed {
            field_lists,
            ..Default::default()
        }
    }

    pub fn last(&self, sid: &str) -> Option<Last> {
        self.last_of(h128(sid))
    }

    /// [`Confirmed::last`] by the source id's key.
    pub fn last_of(&self, key: u128) -> Option<Last> {
        self.by_source.get(key).map(Packed::last)
    }

    /// Every source id key `profile` was confirmed under.
    pub fn sources_of(&self, profile: u128) -> impl Iterator<Item = u128> + '_ {
        self.by_profile
            .get(profile)
            .into_iter()
            .chain(self.earlier.get(&profile).into_iter().flatten().copied())
    }

    /// The fields segsync set for this customer and has not cleared since.
    pub fn fields(&self, last: &Last) -> Option<&[String]> {
        last.fields.map(|i| self.field_lists[i as usize].as_slice())
    }
}

/// One ledger line as a plan reads it: borrowed from the line, so a
/// million confirmed customers cost no allocation each; what a plan does not
/// use (a submission's customers) is skipped unparsed.
#[derive(serde::Deserialize)]
struct LineView<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    target: Cow<'a, str>,
    /// Every event has its time (ours: a plan reads Voucherify's, `vf_at`).
    #[serde(borrow)]
    #[allow(dead_code)]
    at: Cow<'a, str>,
    // What the other events require, checked present (not read).
    #[serde(default)]
    version: Option<IgnoredAny>,
    #[serde(default)]
    async_action_id: Option<IgnoredAny>,
    #[serde(default)]
    customers: Option<IgnoredAny>,
    #[serde(default)]
    status: Option<IgnoredAny>,
    #[serde(default)]
    failed: Option<IgnoredAny>,
    #[serde(default)]
    reason: Option<IgnoredAny>,
    #[serde(borrow, default)]
    done: Option<Vec<CustomerView<'a>>>,
    /// Voucherify's time of a confirmation (ledger version 3).
    #[serde(borrow, default)]
    vf_at: Option<Cow<'a, str>>,
}

/// An `unverified` line's customers (rare: read when met).
#[derive(serde::Deserialize)]
struct UnverifiedView<'a> {
    #[serde(borrow)]
    customers: Vec<CustomerView<'a>>,
}

impl LineView<'_> {
    /// The fields its event requires (`LedgerEvent`) that it lacks.
    fn missing(&self) -> Option<&'static str> {
        let has = |f: &Option<IgnoredAny>| f.is_some();
        let known = [
            "opened",
            "submitted",
            "confirmed",
            "abandoned",
            "unverified",
        ];
        if !known.contains(&self.event.as_ref()) {
            return Some("a known event");
        }
        match self.event.as_ref() {
            "opened" if !has(&self.version) => Some("version"),
            "opened" => None,
            "unverified" if !has(&self.customers) => Some("customers"),
            "unverified" => None,
            _ if !has(&self.async_action_id) => Some("async_action_id"),
            "submitted" if !has(&self.customers) => Some("customers"),
            "confirmed" if !has(&self.status) => Some("status"),
            "confirmed" if self.done.is_none() => Some("done"),
            "confirmed" if !has(&self.failed) => Some("failed"),
            "abandoned" if !has(&self.reason) => Some("reason"),
            _ => None,
        }
    }
}

/// One confirmed customer of a ledger line (`LedgerCustomer`, borrowed).
#[derive(serde::Deserialize)]
struct CustomerView<'a> {
    #[serde(borrow)]
    source_id: Cow<'a, str>,
    #[serde(borrow)]
    hash: Cow<'a, str>,
    /// Required in a ledger line; not used by a plan.
    #[allow(dead_code)]
    line: u64,
    #[serde(borrow, default)]
    segment_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    fields: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cleared: Option<&'a RawValue>,
}

/// Where a read of the ledger starts, or where it ended: the bytes of
/// whole lines before it, and how many lines they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    pub bytes: u64,
    pub lines: u64,
}

/// Each confirmation of `target` in the ledger from `from` on, in order:
/// when, and who. A line that is not a ledger line stops the read (exit 2,
/// naming it); a torn last line (an interrupted run's) ends it. Returns the
/// end of the last whole line.
fn each_confirmed(
    path: &Path,
    target: &str,
    from: Mark,
    mut f: impl FnMut(Seen, Vec<CustomerView>) -> Result<()>,
) -> Result<Mark> {
    use std::io::{Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Mark::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    file.seek(SeekFrom::Start(from.bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let damaged = |n: u64, why: &str| -> anyhow::Error {
        crate::error::UsageError::new(format!(
            "{}:{n}: not a ledger line ({why}); the ledger was damaged (it is written by segsync only): restore it from a backup, or move it aside, in which case the next `segsync load` sends every row again",
            path.display()
        ))
        .into()
    };
    let mut rdr = std::io::BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    let mut at = from;
    loop {
        line.clear();
        let n = rdr
            .read_line(&mut line)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        // A last line without its newline is read when it parses, but an
        // index never covers it (it may yet be torn away).
        let whole = line.ends_with('\n');
        let number = at.lines + 1;
        if whole {
            at = Mark {
                bytes: at.bytes + n as u64,
                lines: number,
            };
        }
        let view = serde_json::from_str::<LineView>(line.trim_end()).map_err(|e| e.to_string());
        let view = match view {
            Ok(v) => match v.missing() {
                None => v,
                Some(what) => return Err(damaged(number, &format!("no {what}"))),
            },
            Err(_) if !whole => break,
            Err(why) => return Err(damaged(number, &why)),
        };
        if view.target != target {
            continue;
        }
        match view.event.as_ref() {
            "confirmed" => {
                // Voucherify's time, never ours: a line without it (before
                // version 3) fails closed, as confirmed at the epoch.
                let at_ms = (view.vf_at.as_deref())
                    .and_then(crate::dates::parse_timestamp)
                    .map_or(0, |t| t.as_millisecond());
                f(Seen::Confirmed(at_ms), view.done.unwrap_or_default())?;
            }
            "unverified" => {
                let u: UnverifiedView = serde_json::from_str(line.trim_end())
                    .map_err(|e| damaged(number, &e.to_string()))?;
                f(Seen::Unverified, u.customers)?;
            }
            _ => {}
        }
    }
    Ok(at)
}

/// What a ledger line says of its customers.
#[derive(Debug, Clone, Copy)]
enum Seen {
    /// Confirmed, at this time by Voucherify's clock (ms).
    Confirmed(i64),
    /// Confirmed before, but Voucherify does not hold it as sent.
    Unverified,
}

/// Field lists, each stored once.
struct Interned {
    lists: Vec<Vec<String>>,
    index: HashMap<Vec<String>, u32>,
    /// At most this many lists ([`MAX_LISTS`]; fewer in tests).
    cap: usize,
    /// More distinct lists were asked for than `cap`: the read fails (an
    /// index shared by two lists would mix two customers).
    overflow: bool,
}

impl Default for Interned {
    fn default() -> Interned {
        Interned {
            lists: Vec::new(),
            index: HashMap::new(),
            cap: MAX_LISTS,
            overflow: false,
        }
    }
}

impl Interned {
    fn get(&mut self, mut f: Vec<String>) -> u32 {
        f.sort();
        f.dedup();
        if let Some(i) = self.index.get(&f) {
            return *i;
        }
        if self.lists.len() >= self.cap {
            self.overflow = true;
            return 0;
        }
        let i = self.lists.len() as u32;
        self.lists.push(f.clone());
        self.index.insert(f, i);
        i
    }

    /// What segsync has set after `later` (a confirmation: the fields it
    /// gave, the fields it cleared) follows `earlier`.
    /// A field list as the ledger spells it (a JSON array of names), by its
    /// text: the ledger repeats a few lists a million times.
    fn get_raw(
        &mut self,
        by_text: &mut HashMap<String, u32>,
        raw: &RawValue,
        path: &Path,
    ) -> Result<u32> {
        if let Some(i) = by_text.get(raw.get()) {
            return Ok(*i);
        }
        let list: Vec<String> = serde_json::from_str(raw.get()).map_err(|e| {
            crate::error::UsageError::new(format!(
                "{}: a field list that is not a list of names ({e}); the ledger was damaged (it is written by segsync only)",
                path.display()
            ))
        })?;
        let i = self.get(list);
        by_text.insert(raw.get().to_string(), i);
        Ok(i)
    }

    fn merge(&mut self, earlier: Packed, later: Packed) -> Packed {
        let (e, l) = (earlier.last(), later.last());
        let set = match (e.fields, l.fields) {
            (Some(e), Some(l)) => {
                let cleared = &self.lists[later.2 as usize];
                let mut set: Vec<String> = self.lists[e as usize]
                    .iter()
                    .filter(|f| !cleared.contains(f))
                    .cloned()
                    .collect();
                set.extend(self.lists[l as usize].iter().cloned());
                Some(self.get(set))
            }
            (e, None) => e,
            (None, l) => l,
        };
        Packed::new(Last { fields: set, ..l }, later.2)
    }
}

/// Read the ledger's confirmations for `target` from `from` on, starting
/// from what an index kept of the lines before it (`super::ledger_index`,
/// which reads through this); also where the read ended.
pub fn read_from(
    path: &Path,
    target: &str,
    kept: Option<(Confirmed, Mark)>,
) -> Result<(Confirmed, Mark, Mark)> {
    read_capped(path, target, kept, MAX_LISTS)
}

/// [`read_from`], telling apart at most `cap` field lists.
fn read_capped(
    path: &Path,
    target: &str,
    kept: Option<(Confirmed, Mark)>,
    cap: usize,
) -> Result<(Confirmed, Mark, Mark)> {
    let (mut building, from) = match kept {
        Some((confirmed, mark)) => (Building::new(Some(confirmed)), mark),
        None => (Building::new(None), Mark::default()),
    };
    building.interned.cap = cap;
    let end = each_confirmed(path, target, from, |seen, done| {
        building.apply(seen, done, path)
    })?;
    let confirmed = building.finish(path)?;
    Ok((confirmed, from, end))
}

/// The confirmations read so far.
struct Building {
    interned: Interned,
    none: u32,
    by_text: HashMap<String, u32>,
    by_source: KeyMapBuilder<u128, Packed>,
    by_profile: KeyMapBuilder<u128, u128>,
    earlier: HashMap<u128, Vec<u128>>,
}

impl Building {
    /// From nothing, or from what the ledger's index kept.
    fn new(kept: Option<Confirmed>) -> Building {
        let mut interned = Interned::default();
        let (by_source, by_profile, earlier) = match kept {
            Some(c) => {
                // The lists keep their places: the entries name them by it.
                for (i, list) in c.field_lists.iter().enumerate() {
                    interned.index.insert(list.clone(), i as u32);
                }
                interned.lists = c.field_lists;
                (
                    KeyMapBuilder::seeded(c.by_source),
                    KeyMapBuilder::seeded(c.by_profile),
                    c.earlier,
                )
            }
            None => Default::default(),
        };
        let none = interned.get(vec![]);
        Building {
            interned,
            none,
            by_text: HashMap::new(),
            by_source,
            by_profile,
            earlier,
        }
    }

    /// One confirmation (when, by Voucherify's clock, and who), or a
    /// verification's finding that Voucherify does not hold what was
    /// confirmed: the content no longer counts, and the clears it did not
    /// apply are set again (pending).
    fn apply(&mut self, seen: Seen, done: Vec<CustomerView>, path: &Path) -> Result<()> {
        let at_ms = match seen {
            Seen::Confirmed(ms) => ms,
            Seen::Unverified => return self.unverified(done, path),
        };
        let Building {
            interned,
            none,
            by_text,
            by_source,
            by_profile,
            earlier,
        } = self;
        for c in done {
            let sid = h128(&c.source_id);
            let fields = c
                .fields
                .map(|f| interned.get_raw(by_text, f, path))
                .transpose()?;
            let cleared = match c.cleared {
                Some(f) => interned.get_raw(by_text, f, path)?,
                None => *none,
            };
            let last = Last {
                content: content_key(&c.hash).map_or(0, |k| (k >> 64) as u64),
                at_ms,
                fields,
            };
            by_source.push(sid, Packed::new(last, cleared), &mut |_, e, l| {
                interned.merge(e, l)
            });
            if let Some(seg) = &c.segment_id {
                by_profile.push(h128(seg), sid, &mut |pk, old, new| {
                    note_earlier(earlier, pk, old, new)
                });
            }
        }
        Ok(())
    }

    /// Customers whose confirmed content Voucherify does not hold.
    fn unverified(&mut self, customers: Vec<CustomerView>, path: &Path) -> Result<()> {
        for c in customers {
            let again = match c.cleared {
                Some(f) => self.interned.get_raw(&mut self.by_text, f, path)?,
                None => self.none,
            };
            let last = Last {
                content: 0,
                at_ms: 0,
                fields: Some(again),
            };
            let (interned, none) = (&mut self.interned, self.none);
            self.by_source.push(
                h128(&c.source_id),
                Packed::new(last, none),
                &mut |_, e, l| interned.merge(e, l),
            );
        }
        Ok(())
    }

    fn finish(self, path: &Path) -> Result<Confirmed> {
        let Building {
            mut interned,
            by_source,
            by_profile,
            mut earlier,
            ..
        } = self;
        let by_source = by_source.finish(&mut |_, e, l| interned.merge(e, l));
        let by_profile =
            by_profile.finish(&mut |pk, old, new| note_earlier(&mut earlier, pk, old, new));
        if interned.overflow {
            anyhow::bail!(
                "{}: more than {} distinct lists of fields segsync set; a plan cannot tell them apart (it would take one customer's fields for another's): decide by the ledger alone with `load --from-ledger`",
                path.display(),
                interned.cap
            );
        }
        Ok(Confirmed {
            by_source,
            by_profile,
            earlier,
            field_lists: interned.lists,
        })
    }
}

/// A profile confirmed under `new` after `old`: `old` is an earlier one.
fn note_earlier(
    earlier: &mut HashMap<u128, Vec<u128>>,
    profile: u128,
    old: u128,
    new: u128,
) -> u128 {
    if old != new {
        let e = earlier.entry(profile).or_default();
        if !e.contains(&old) {
            e.push(old);
        }
    }
    new
}

/// The source ids (and profiles) behind some 64-bit source id keys: a
/// second pass over the ledger, for the few customers an orphans file names.
pub fn source_ids_of(
    path: &Path,
    target: &str,
    keys: &HashSet<u128>,
) -> Result<HashMap<u128, (String, Option<String>)>> {
    let mut out = HashMap::new();
    each_confirmed(path, target, Mark::default(), |_, done| {
        for c in done {
            let k = h128(&c.source_id);
            if keys.contains(&k) {
                out.insert(
                    k,
                    (c.source_id.into_owned(), c.segment_id.map(Cow::into_owned)),
                );
            }
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(lines: &[String]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("load.ledger.ndjson");
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        (dir, p)
    }

    fn confirmed(at: &str, sid: &str, fields: &[&str]) -> String {
        serde_json::json!({"event": "confirmed", "at": at, "target": "t",
            "async_action_id": "a", "status": "DONE", "failed": [],
            "done": [{"source_id": sid, "hash": format!("{:032x}", 7), "line": 1, "fields": fields}]})
        .to_string()
    }

    /// More distinct field lists than a plan can tell apart stop the read:
    /// never two customers' lists under one index.
    #[test]
    fn field_lists_beyond_the_cap_fail_the_read_never_alias() {
        let lines: Vec<String> = (0..5)
            .map(|i| {
                confirmed(
                    "2026-01-01T00:00:00Z",
                    &format!("c{i}"),
                    &[&format!("metadata.k{i}")],
                )
            })
            .collect();
        let (_d, p) = ledger(&lines);
        // Five lists, and the empty one every read starts with.
        let (c, _, _) = read_capped(&p, "t", None, 6).unwrap();
        for i in 0..5 {
            let last = c.last(&format!("c{i}")).unwrap();
            assert_eq!(c.fields(&last).unwrap(), [format!("metadata.k{i}")]);
        }
        let e = read_capped(&p, "t", None, 5).err().expect("refused");
        assert!(e.to_string().contains("distinct lists"), "{e}");
    }

    /// A confirmation whose time cannot be read counts as the earliest:
    /// any `updated_at` is then a change after it, never segsync's own.
    #[test]
    fn an_unreadable_confirmation_time_fails_closed() {
        let (_d, p) = ledger(&[confirmed("not a time", "c1", &["name"])]);
        let (c, _, _) = read_from(&p, "t", None).unwrap();
        assert_eq!(c.last("c1").unwrap().at_ms, 0);
    }
}
