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
//! customers file) and `content` (the row's content key, for the ledger).

use super::compare::{Action, Change, Rules};
use crate::files::AtomicFile;
use crate::keys::h64;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const COLUMNS: [&str; 11] = [
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
    pub orphans: u64,
    /// Customers in the export.
    pub exported: u64,
    /// Lines per field that changes.
    pub fields: BTreeMap<String, u64>,
    /// A few lines, as people read them.
    pub examples: Vec<String>,
}

impl Counts {
    pub fn add(&mut self, c: &Change) {
        match c.action {
            Action::Create => self.create += 1,
            Action::Update => self.update += 1,
            Action::Clear => self.clear += 1,
        }
        self.elsewhere += c.elsewhere as u64;
        self.skipped += c.skip.is_some() as u64;
        if c.action != Action::Create {
            for f in &c.fields {
                *self.fields.entry(f.clone()).or_default() += 1;
            }
            if self.examples.len() < 3 {
                let sid = c
                    .send
                    .as_ref()
                    .and_then(|s| s.get("source_id"))
                    .and_then(|s| s.as_str())
                    .unwrap_or("");
                self.examples.push(format!(
                    "{} {sid}: {}",
                    c.action.name(),
                    c.fields
                        .iter()
                        .map(|f| format!(
                            "{f} {} → {}",
                            c.old.get(f).map(|v| v.to_string()).unwrap_or_default(),
                            c.new.get(f).map(|v| v.to_string()).unwrap_or_default()
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
    }

    /// Lines `load` sends.
    pub fn to_send(&self) -> u64 {
        self.create + self.update + self.clear - self.skipped
    }
}

/// `load.plan.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub made_at: String,
    pub made_at_ms: i64,
    pub target: String,
    pub customers: PathBuf,
    /// The customers file as it was: its size and modification time.
    pub customers_bytes: u64,
    pub customers_modified: Option<String>,
    /// The ledger's size then: a load since changes it.
    pub ledger_bytes: u64,
    pub rules: Rules,
    pub counts: Counts,
    pub export_calls: u64,
    pub seconds: f64,
    /// Set when a load starts to execute the plan: it is then spent.
    #[serde(default)]
    pub executed_at: Option<String>,
}

pub fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

impl Meta {
    pub fn new(
        input: &Path,
        target: &str,
        rules: Rules,
        counts: Counts,
        export_calls: u64,
        took: std::time::Duration,
    ) -> Result<Meta> {
        let now = jiff::Timestamp::now();
        Ok(Meta {
            made_at: now.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            made_at_ms: now.as_millisecond(),
            target: target.to_string(),
            customers: input.to_path_buf(),
            customers_bytes: size(input),
            customers_modified: crate::files::modified(input),
            ledger_bytes: size(&crate::state::ledger(input)),
            rules,
            counts,
            export_calls,
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

    /// Why this plan cannot be executed now, if it cannot; `ledger_bytes`
    /// is the ledger's size before this load wrote to it.
    pub fn stale(
        &self,
        input: &Path,
        target: &str,
        rules: Rules,
        max_age: u64,
        ledger_bytes: u64,
    ) -> Option<String> {
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
        } else if size(input) != self.customers_bytes
            || crate::files::modified(input) != self.customers_modified
        {
            Some(format!("{} changed since", input.display()))
        } else if ledger_bytes != self.ledger_bytes {
            Some("the ledger changed since (another load ran)".into())
        } else {
            None
        }
    }
}

/// Writes `load.plan.csv` whole or not at all.
pub struct PlanWriter {
    out: csv::Writer<AtomicFile>,
}

impl PlanWriter {
    pub fn create(path: &Path) -> Result<PlanWriter> {
        let mut out = csv::Writer::from_writer(AtomicFile::create(path)?);
        out.write_record(COLUMNS)?;
        Ok(PlanWriter { out })
    }

    pub fn write(
        &mut self,
        sid: &str,
        segment_id: Option<&str>,
        line: u64,
        content: &str,
        c: &Change,
    ) -> Result<()> {
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

/// A plan as `load` executes it: which source ids it sends, and where each
/// request body is in the file (16 bytes a customer).
pub struct PlanIndex {
    path: PathBuf,
    rdr: std::sync::Mutex<csv::Reader<std::fs::File>>,
    /// 64-bit key of the source id → (byte offset of its line, a create).
    lines: HashMap<u64, (u64, bool)>,
    pub creates: u64,
    pub updates: u64,
}

impl PlanIndex {
    pub fn read(path: &Path) -> Result<PlanIndex> {
        let mut rdr = csv::Reader::from_path(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        rdr.headers()
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut rec = csv::StringRecord::new();
        let mut lines = HashMap::new();
        let (mut creates, mut updates) = (0, 0);
        loop {
            let pos = rdr.position().byte();
            if !rdr
                .read_record(&mut rec)
                .with_context(|| format!("cannot read {}", path.display()))?
            {
                break;
            }
            if rec.get(7).unwrap_or("").is_empty() {
                continue;
            }
            let create = rec.get(1) == Some("create");
            let sid = crate::records::unguard_cell(rec.get(0).unwrap_or(""));
            lines.insert(h64(sid), (pos, create));
            if create {
                creates += 1;
            } else {
                updates += 1;
            }
        }
        Ok(PlanIndex {
            path: path.to_path_buf(),
            // Reads single records at known offsets: no header handling.
            rdr: std::sync::Mutex::new(
                csv::ReaderBuilder::new()
                    .has_headers(false)
                    .from_path(path)?,
            ),
            lines,
            creates,
            updates,
        })
    }

    /// Whether the plan sends this customer.
    pub fn sends(&self, sid: &str) -> bool {
        self.lines.contains_key(&h64(sid))
    }

    /// The request body for an update or clear of `sid` (None for a create,
    /// which sends the customers file's row).
    pub fn body_of(&self, sid: &str) -> Result<Option<Vec<u8>>> {
        let Some(&(offset, create)) = self.lines.get(&h64(sid)) else {
            return Ok(None);
        };
        if create {
            return Ok(None);
        }
        let mut rdr = self
            .rdr
            .lock()
            .map_err(|_| anyhow::anyhow!("the plan reader was lost to a panic"))?;
        let mut pos = csv::Position::new();
        pos.set_byte(offset);
        rdr.seek(pos)?;
        let mut rec = csv::StringRecord::new();
        rdr.read_record(&mut rec)?;
        if crate::records::unguard_cell(rec.get(0).unwrap_or("")) != sid {
            anyhow::bail!(
                "{}: the line for {sid} is not where it was; rerun `segsync plan`",
                self.path.display()
            );
        }
        Ok(Some(rec.get(7).unwrap_or("").as_bytes().to_vec()))
    }
}
