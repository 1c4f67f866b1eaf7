//! The plan's files: `load.plan.csv`, a line per customer that would change,
//! and `load.plan.json`, when and from what the plan was made, its counts,
//! and whether a load has executed it.
//!
//! `load.plan.csv` columns: `source_id`, `action` (create, update, clear),
//! `fields` (the fields that change, `; `-separated), `old` and `new` (JSON
//! objects of those fields: Voucherify's value and today's; `null` for no
//! value), `changed_elsewhere` (`yes` when Voucherify changed the customer
//! after segsync last confirmed it), `skip` (why nothing is sent), `send`
//! (the exact request body `load` sends), `segment_id`, `line` (of the
//! customers file), `content` (the row's content key, for the ledger) and
//! `pending_clear` (fields the source emptied that stay as they are in
//! Voucherify until `--clear-removed`) and `hand_edit` (the fields of the
//! row a person's kept edit sets, from `edits.csv`, not Segment).
//!
//! The plan file is an audit record, never an input: `load.plan.json`
//! records content hashes of the inputs (`customers.csv`, the ledger, the
//! export) and of `load.plan.csv` itself. `load` executes a plan only while
//! every input is unchanged, refuses an edited plan file, and builds every
//! body it sends from `customers.csv` again ([`PlanIndex`]).

use super::compare::{Action, Change, Rules};
use crate::files::AtomicFile;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const COLUMNS: [&str; 13] = [
    "source_id",
    "action",
    "fields",
    "old",
    "new",
    "changed_elsewhere",
    "skip",
    "send",
    "segment_id",
    "line",
    "content",
    "pending_clear",
    "hand_edit",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub rows: u64,
    pub unchanged: u64,
    pub create: u64,
    pub update: u64,
    pub clear: u64,
    /// Changed in Voucherify after segsync last confirmed them.
    pub elsewhere: u64,
    /// Listed, not sent (`--keep-newer`, or clears without `--clear-removed`).
    pub skipped: u64,
    /// Customers with fields the source emptied that are not cleared
    /// (no `--clear-removed`): listed on every plan until cleared or set.
    #[serde(default)]
    pub pending_clear: u64,
    /// Customers segsync confirmed whose `updated_at` the export does not
    /// show in a readable form (`--keep-newer` skips them).
    #[serde(default)]
    pub unknown_updated: u64,
    pub orphans: u64,
    /// Customers the ledger confirmed in this project that the export does
    /// not show (deleted in Voucherify, or an export that lacks them).
    #[serde(default)]
    pub confirmed_missing: u64,
    /// Customers in the export.
    pub exported: u64,
    /// Lines per field that changes.
    pub fields: BTreeMap<String, u64>,
    /// A few lines, as people read them.
    pub examples: Vec<String>,
}

impl Counts {
    pub fn add(&mut self, sid: &str, c: &Change) {
        match c.action {
            Action::Create => self.create += 1,
            Action::Update => self.update += 1,
            Action::Clear => self.clear += 1,
        }
        self.elsewhere += c.elsewhere as u64;
        self.skipped += c.skip.is_some() as u64;
        self.unknown_updated += c.unknown_updated as u64;
        let pending = c.pending_clears();
        self.pending_clear += !pending.is_empty() as u64;
        if c.action != Action::Create {
            for f in &c.fields {
                *self.fields.entry(f.clone()).or_default() += 1;
            }
            if self.examples.len() < 3 {
                let shown = |f: &String| {
                    let old = c.old.get(f).map(|v| v.to_string()).unwrap_or_default();
                    if pending.contains(f) {
                        format!("{f} {old} (emptied in the source; kept until --clear-removed)")
                    } else {
                        let new = c.new.get(f).map(|v| v.to_string()).unwrap_or_default();
                        format!("{f} {old} → {new}")
                    }
                };
                self.examples.push(format!(
                    "{} {sid}: {}",
                    c.action.name(),
                    c.fields.iter().map(shown).collect::<Vec<_>>().join("; ")
                ));
            }
        }
    }

    /// Lines `load` sends.
    pub fn to_send(&self) -> u64 {
        self.create + self.update + self.clear - self.skipped
    }

    /// The plan's summary in one line, as `plan` and `status` print it.
    pub fn summary(&self) -> String {
        format!(
            "{} customers: {} unchanged, {} to create, {} to update, {} to clear; {} with fields the source emptied left as they are (--clear-removed clears them); {} changed in Voucherify since segsync confirmed them; {} with an unreadable updated_at; {} skipped ({}); {} orphans",
            self.rows,
            self.unchanged,
            self.create,
            self.update,
            self.clear,
            self.pending_clear,
            self.elsewhere,
            self.unknown_updated,
            self.skipped,
            if self.skipped > 0 { "see the skip column" } else { "none" },
            self.orphans,
        )
    }
}

/// `load.plan.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub made_at: String,
    pub made_at_ms: i64,
    pub target: String,
    pub customers: PathBuf,
    /// Content hashes (XXH3-128, hex) of the inputs as the plan read them,
    /// and of the plan file as written.
    pub hashes: Hashes,
    pub rules: Rules,
    pub counts: Counts,
    pub export_calls: u64,
    /// What the plan compared with: a full export, a delta applied to the
    /// kept one, or a file given.
    #[serde(default)]
    pub export_kind: String,
    /// Every Voucherify call the command made (the schema read too); 0 in
    /// the file, set by `segsync plan` for its report.
    #[serde(default)]
    pub calls: u64,
    pub seconds: f64,
    /// Set when a load starts to execute the plan: it is then spent.
    #[serde(default)]
    pub executed_at: Option<String>,
}

pub fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// What a plan was made from, by content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hashes {
    pub customers: String,
    /// The ledger as the plan read it ("" when there was none).
    pub ledger: String,
    /// The export file compared with, and its path.
    pub export: String,
    pub export_file: PathBuf,
    /// The project's customer metadata schema, as read.
    pub schema: String,
    /// `load.plan.csv` as written.
    pub plan: String,
}

/// XXH3-128 of the ledger's lines but the `opened` ones (every load appends
/// one as it starts, which changes nothing it says), "" when there is none
/// or it holds nothing else.
pub fn ledger_hash(p: &Path) -> Result<String> {
    Ok(ledger_hashes(p, None, 1 << 20)?.0)
}

/// [`ledger_hash`], and in the same read the same hash of the ledger's
/// first `prefix` bytes (what the ledger's index checks, `ledger_index`):
/// None when the ledger is shorter or no line ends there.
pub fn ledger_hashes(
    p: &Path,
    prefix: Option<u64>,
    block: usize,
) -> Result<(String, Option<u128>)> {
    use std::io::Read;
    let mut f = match std::fs::File::open(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), None)),
        other => other.with_context(|| format!("cannot read {}", p.display()))?,
    };
    const OPENED: &[u8] = br#"{"event":"opened""#;
    let mut h = twox_hash::XxHash3_128::new();
    let mut at_prefix = prefix.filter(|n| *n == 0).map(|_| h.finish_128());
    // Read in blocks; the lines between `opened` ones are hashed from the
    // block in place, a run at a time (XXH3 streamed gives the same hash
    // however its input is cut, and can be finished midway). A line that
    // runs past a block's end is carried into the next.
    let mut buf = vec![0u8; block.max(1)];
    let (mut filled, mut any, mut base) = (0, false, 0u64);
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = f
            .read(&mut buf[filled..])
            .with_context(|| format!("cannot read {}", p.display()))?;
        let end = filled + n;
        let (mut start, mut run) = (0, 0);
        while let Some(i) = memchr::memchr(b'\n', &buf[start..end]) {
            let line_end = start + i + 1;
            if buf[start..line_end].starts_with(OPENED) {
                h.write(&buf[run..start]);
                run = line_end;
            } else {
                any = true;
            }
            if prefix == Some(base + line_end as u64) {
                h.write(&buf[run..line_end]);
                run = line_end;
                at_prefix = Some(h.finish_128());
            }
            start = line_end;
        }
        h.write(&buf[run..start]);
        if n == 0 {
            // A last line without its newline.
            let line = &buf[start..end];
            if !line.is_empty() && !line.starts_with(OPENED) {
                any = true;
                h.write(line);
            }
            if !line.is_empty() && prefix == Some(base + end as u64) {
                at_prefix = Some(h.finish_128());
            }
            break;
        }
        base += start as u64;
        buf.copy_within(start..end, 0);
        filled = end - start;
    }
    // A ledger of `opened` lines alone says what no ledger says.
    let whole = if any {
        format!("{:032x}", h.finish_128())
    } else {
        String::new()
    };
    Ok((whole, at_prefix))
}

/// A file's content hash (XXH3-128, in hex: it tells a changed input from
/// the same one, which is all a plan asks of it); empty when it is missing.
pub fn hash_of(p: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = match std::fs::File::open(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        other => other.with_context(|| format!("cannot read {}", p.display()))?,
    };
    let mut h = twox_hash::XxHash3_128::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    Ok(format!("{:032x}", h.finish_128()))
}

impl Meta {
    pub fn new(
        input: &Path,
        target: &str,
        rules: Rules,
        counts: Counts,
        hashes: Hashes,
        export_calls: u64,
        took: std::time::Duration,
    ) -> Result<Meta> {
        let now = jiff::Timestamp::now();
        Ok(Meta {
            made_at: now.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            made_at_ms: now.as_millisecond(),
            target: target.to_string(),
            customers: input.to_path_buf(),
            hashes,
            rules,
            counts,
            export_calls,
            export_kind: String::new(),
            calls: 0,
            seconds: took.as_secs_f64(),
            executed_at: None,
        })
    }

    pub fn read(path: &Path) -> Option<Meta> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn age(&self) -> std::time::Duration {
        let ms = jiff::Timestamp::now().as_millisecond() - self.made_at_ms;
        std::time::Duration::from_millis(ms.max(0) as u64)
    }

    /// Why this plan cannot be executed now, if it cannot: `now` are the
    /// hashes of its inputs as they are now (the plan's own is not checked
    /// here: see [`Meta::edited`]).
    pub fn stale(&self, now: &Hashes, target: &str, rules: Rules, max_age: u64) -> Option<String> {
        let was = &self.hashes;
        if self.executed_at.is_some() {
            Some("a load already executed it".into())
        } else if self.target != target {
            Some("it was made for another Voucherify project".into())
        } else if self.rules != rules {
            Some("it was made with other --clear-removed/--keep-newer flags".into())
        } else if self.age().as_secs() > max_age {
            Some(format!(
                "it is {}s old (--plan-max-age {max_age})",
                self.age().as_secs()
            ))
        } else if now.customers != was.customers {
            Some(format!("{} changed since", self.customers.display()))
        } else if now.ledger != was.ledger {
            Some("the ledger changed since (another load ran)".into())
        } else if now.export != was.export {
            Some(format!("{} changed since", was.export_file.display()))
        } else if now.schema != was.schema {
            Some("the project's customer metadata schema changed since".into())
        } else {
            None
        }
    }

    /// Whether `load.plan.csv` differs from what the plan wrote.
    pub fn edited(&self, plan_file: &Path) -> Result<bool> {
        Ok(hash_of(plan_file)? != self.hashes.plan)
    }
}

/// Writes `load.plan.csv` whole or not at all.
pub struct PlanWriter {
    out: csv::Writer<AtomicFile>,
    edits: crate::spreadsheet::overrides::Overrides,
}

impl PlanWriter {
    /// A plan file at `path`; `edits` names the fields people set by hand.
    pub fn create(
        path: &Path,
        edits: crate::spreadsheet::overrides::Overrides,
    ) -> Result<PlanWriter> {
        let mut out = csv::Writer::from_writer(AtomicFile::create(path)?);
        out.write_record(COLUMNS)?;
        Ok(PlanWriter { out, edits })
    }

    pub fn write(
        &mut self,
        sid: &str,
        segment_id: Option<&str>,
        line: u64,
        content: &str,
        c: &Change,
    ) -> Result<()> {
        let pending = c.pending_clears().join("; ");
        let json = |v: &serde_json::Map<String, serde_json::Value>| serde_json::to_string(v);
        let send = match &c.send {
            Some(s) => serde_json::to_string(s)?,
            None => String::new(),
        };
        self.out.write_record([
            crate::records::guard_cell(sid).as_ref(),
            c.action.name(),
            &c.fields.join("; "),
            &json(&c.old)?,
            &json(&c.new)?,
            if c.elsewhere { "yes" } else { "" },
            c.skip.unwrap_or(""),
            &send,
            segment_id.unwrap_or(""),
            &line.to_string(),
            content,
            &pending,
            &self.edits.fields_of(sid).join("; "),
        ])?;
        Ok(())
    }

    pub fn commit(self) -> Result<()> {
        let f = self
            .out
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write the plan: {}", e.error()))?;
        f.commit()
    }
}

/// A plan as `load` executes it: which customers it sends, and for an
/// update or clear the body it sends, built again from `customers.csv` by
/// the plan's own comparison ([`super::replay`]), never read back from
/// `load.plan.csv`.
#[derive(Default)]
pub struct PlanIndex {
    /// 128-bit key of the source id → index into `bodies` (`CREATE`: the
    /// customers file's row is sent whole).
    sends: crate::keys::KeyMap<u128, u32>,
    bodies: Vec<Box<[u8]>>,
    pub creates: u64,
    pub updates: u64,
}

const CREATE: u32 = u32::MAX;

/// Builds a [`PlanIndex`] as the comparison goes.
#[derive(Default)]
pub struct PlanIndexBuilder {
    sends: crate::keys::KeyMapBuilder<u128, u32>,
    bodies: Vec<Box<[u8]>>,
    creates: u64,
    updates: u64,
}

impl PlanIndexBuilder {
    pub fn add(&mut self, sid: &str, c: &Change) -> Result<()> {
        let Some(send) = &c.send else {
            return Ok(());
        };
        let at = if c.action == Action::Create {
            self.creates += 1;
            CREATE
        } else {
            self.updates += 1;
            self.bodies
                .push(serde_json::to_vec(send)?.into_boxed_slice());
            (self.bodies.len() - 1) as u32
        };
        self.sends
            .push(crate::keys::h128(sid), at, &mut crate::keys::later);
        Ok(())
    }

    pub fn finish(self) -> PlanIndex {
        PlanIndex {
            sends: self.sends.finish(&mut crate::keys::later),
            bodies: self.bodies,
            creates: self.creates,
            updates: self.updates,
        }
    }
}

impl PlanIndex {
    /// Whether the plan sends this customer.
    pub fn sends(&self, sid: &str) -> bool {
        self.sends.contains(crate::keys::h128(sid))
    }

    /// Whether the plan creates this customer (the export does not show it).
    pub fn creates_customer(&self, sid: &str) -> bool {
        self.sends.get(crate::keys::h128(sid)) == Some(CREATE)
    }

    /// The request body for an update or clear of `sid` (None for a create,
    /// which sends the customers file's row).
    pub fn body_of(&self, sid: &str) -> Option<Vec<u8>> {
        match self.sends.get(crate::keys::h128(sid)) {
            Some(i) if i != CREATE => Some(self.bodies[i as usize].to_vec()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_hashes_in_one_read_are_the_hashes_of_the_lines() {
        let opened = "{\"event\":\"opened\",\"at\":\"2026-01-01T00:00:00Z\"}\n";
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("load.ledger.ndjson");
        for shape in 0..12 {
            // Lines of several lengths, `opened` ones among them (first,
            // in runs, last, the last line without its newline); the hash
            // of the kept lines up to each line's end.
            let mut text = String::new();
            let mut kept = Vec::new();
            let mut ends = vec![(0, twox_hash::XxHash3_128::oneshot(b""))];
            for n in 0..40 {
                if (n * 7 + shape) % 5 == 0 || (shape == 3 && n < 3) {
                    text.push_str(opened);
                    ends.push((text.len(), twox_hash::XxHash3_128::oneshot(&kept)));
                }
                let pad = "x".repeat((n * shape) % 23);
                let line = format!("{{\"event\":\"confirmed\",\"n\":{n},\"pad\":\"{pad}\"}}\n");
                text.push_str(&line);
                kept.extend_from_slice(line.as_bytes());
                ends.push((text.len(), twox_hash::XxHash3_128::oneshot(&kept)));
            }
            if shape % 2 == 1 {
                text.pop();
                kept.pop();
                ends.pop();
                ends.push((text.len(), twox_hash::XxHash3_128::oneshot(&kept)));
            }
            std::fs::write(&p, &text).unwrap();
            let whole = format!("{:032x}", twox_hash::XxHash3_128::oneshot(&kept));
            for block in [1, 3, 7, 64, 1 << 20] {
                for (at, want) in &ends {
                    let (h, pre) = ledger_hashes(&p, Some(*at as u64), block).unwrap();
                    assert_eq!(h, whole, "shape {shape}, block {block}");
                    assert_eq!(
                        pre,
                        Some(*want),
                        "shape {shape}, block {block}, prefix {at}"
                    );
                }
                for at in [1, 5, text.len() - 2, text.len() + 1] {
                    let (_, pre) = ledger_hashes(&p, Some(at as u64), block).unwrap();
                    assert_eq!(
                        pre, None,
                        "shape {shape}, block {block}: no line ends at {at}"
                    );
                }
            }
        }
        std::fs::write(&p, opened.repeat(3)).unwrap();
        assert_eq!(ledger_hash(&p).unwrap(), "", "opened lines alone");
    }
}
