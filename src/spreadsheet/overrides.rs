//! `edits.csv`: a person's hand edits of `customers.csv`, kept as
//! overrides that every transform (and `run`'s early sending) applies after
//! the mapping, so a fix made by hand survives every rerun.
//!
//! Columns: `source_id`, `field` (a column of `customers.csv` other than
//! `source_id` and `segment_id`), `value` (what the person wrote; empty: the
//! cell left empty), `at` (when segsync recorded it) and `was` (what
//! transform had written there then: Segment's value by the mapping). Where
//! Segment's value later differs from `was`, the edit still wins and
//! transform says so. A person may edit the file, or drop entries with
//! `transform --drop-edit SOURCE_ID[:FIELD]`.
//!
//! Edits are found by comparing the edited `customers.csv` with the copy of
//! what transform wrote (`transform.written.csv`, its hash in the manifest):
//! never with what transform would write now, which Segment may have changed
//! since (an extract run between the edit and the transform).

use crate::error::UsageError;
use crate::files::AtomicFile;
use crate::records::{guard_cell, unguard_cell, CustomerRow, COLUMNS};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub const HEADER: [&str; 5] = ["source_id", "field", "value", "at", "was"];

/// One override: the column (index in `COLUMNS`), the value, and what
/// transform had written there when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub column: usize,
    pub value: String,
    pub at: String,
    pub was: String,
}

/// Every override, by source id, and what applying them found.
#[derive(Default)]
pub struct Overrides {
    by_sid: BTreeMap<String, Vec<Override>>,
    /// Fields overridden while mapping.
    applied: AtomicU64,
    /// Of them, fields whose mapped (Segment's) value differs from `was`:
    /// Segment changed it since the edit.
    changed: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl PartialEq for Overrides {
    fn eq(&self, other: &Self) -> bool {
        self.by_sid == other.by_sid
    }
}

impl Eq for Overrides {}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Overrides({} customers)", self.by_sid.len())
    }
}

/// The columns a person's edit may override.
fn editable(column: usize) -> bool {
    column != 0 && COLUMNS[column] != "segment_id"
}

impl Overrides {
    /// `edits.csv` at `path`; none when it does not exist. A row that names
    /// no customer or an unknown field is refused by file, line and field.
    pub fn read(path: &Path) -> Result<Overrides> {
        let mut out = Overrides::default();
        let mut rdr = match csv::Reader::from_path(path) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound) => {
                return Ok(out)
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let header = rdr
            .headers()
            .with_context(|| format!("cannot read {}", path.display()))?
            .clone();
        if header.iter().collect::<Vec<_>>() != HEADER {
            return Err(UsageError::new(format!(
                "{}: line 1: the header must be {} (it is {})",
                path.display(),
                HEADER.join(","),
                header.iter().collect::<Vec<_>>().join(",")
            ))
            .into());
        }
        for rec in rdr.records() {
            let rec = rec.with_context(|| format!("cannot read {}", path.display()))?;
            let line = rec.position().map_or(0, |p| p.line());
            let bad = |field: &str, why: String| -> anyhow::Error {
                UsageError::new(format!(
                    "{}: line {line}: {field}: {why}; fix or delete the line",
                    path.display()
                ))
                .into()
            };
            let cell = |i: usize| unguard_cell(rec.get(i).unwrap_or_default()).to_string();
            let sid = cell(0);
            let sid = sid.as_str();
            if sid.is_empty() {
                return Err(bad("source_id", "empty".into()));
            }
            let name = rec.get(1).unwrap_or_default();
            let column = (COLUMNS.iter().position(|c| *c == name))
                .filter(|c| editable(*c))
                .ok_or_else(|| {
                    bad(
                        "field",
                        format!(
                            "{name:?} is not a column an edit may change ({})",
                            editable_names()
                        ),
                    )
                })?;
            let o = Override {
                column,
                value: cell(2),
                at: cell(3),
                was: cell(4),
            };
            let list = out.by_sid.entry(sid.to_string()).or_default();
            list.retain(|e| e.column != column);
            list.push(o);
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.by_sid.is_empty()
    }

    /// Overridden fields in all.
    pub fn len(&self) -> usize {
        self.by_sid.values().map(Vec::len).sum()
    }

    /// The fields overridden for `sid`.
    pub fn fields_of(&self, sid: &str) -> Vec<&'static str> {
        (self.by_sid.get(sid).into_iter().flatten())
            .map(|o| COLUMNS[o.column])
            .collect()
    }

    /// Apply the overrides of the row's customer; counts what it applied
    /// and where Segment's value moved since the edit.
    pub fn apply(&self, row: &mut CustomerRow) {
        let Some(list) = row.source_id.as_deref().and_then(|s| self.by_sid.get(s)) else {
            return;
        };
        for o in list {
            let mapped = row.cell(o.column).unwrap_or_default().to_string();
            self.applied.fetch_add(1, Ordering::Relaxed);
            if mapped != o.was && mapped != o.value {
                self.changed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut ex) = self.examples.lock() {
                    if ex.len() < 5 {
                        ex.push(format!(
                            "{} {}: yours {:?}, Segment's now {:?} (was {:?})",
                            row.source_id.as_deref().unwrap_or_default(),
                            COLUMNS[o.column],
                            o.value,
                            mapped,
                            o.was
                        ));
                    }
                }
            }
            row.set(o.column, (!o.value.is_empty()).then(|| o.value.clone()));
        }
    }

    /// What applying found: fields overridden, of them changed in Segment
    /// since, and some of those.
    pub fn found(&self) -> (u64, u64, Vec<String>) {
        (
            self.applied.load(Ordering::Relaxed),
            self.changed.load(Ordering::Relaxed),
            self.examples.lock().map(|e| e.clone()).unwrap_or_default(),
        )
    }
}

fn editable_names() -> String {
    (0..COLUMNS.len())
        .filter(|c| editable(*c))
        .map(|c| COLUMNS[c])
        .collect::<Vec<_>>()
        .join(", ")
}

/// What recording a file's hand edits found.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Cells recorded as overrides (new or changed).
    pub cells: u64,
    pub customers: u64,
    /// Changed cells that look like a spreadsheet's doing, not recorded:
    /// `source_id column: old → new`.
    pub damaged: Vec<String>,
    /// Rows a person added or removed (by source id), not recorded.
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Record the hand edits of `customers` (against `written`, what transform
/// wrote) into `edits`, merged with what it holds: a cell edited again
/// replaces its entry. Returns what was found.
pub fn record(customers: &Path, written: &Path, edits: &Path) -> Result<Recorded> {
    let old = rows_by_sid(written)?;
    let new = rows_by_sid(customers)?;
    let mut found = Recorded::default();
    let at = crate::state::now();
    let mut entries = read_entries(edits)?;
    for (sid, cells) in &new {
        let Some(before) = old.get(sid) else {
            found.added.push(sid.clone());
            continue;
        };
        let mut any = false;
        for (column, (was, now)) in before.iter().zip(cells).enumerate() {
            if was == now || !editable(column) {
                continue;
            }
            if let Some(d) = crate::spreadsheet::edits::classify(was, now) {
                found.damaged.push(format!(
                    "{sid} {}: {was:?} → {now:?} ({})",
                    COLUMNS[column],
                    d.explain()
                ));
                continue;
            }
            // The value transform wrote is Segment's, unless an earlier
            // edit of the cell made it: then keep that edit's `was`.
            let key = (sid.clone(), COLUMNS[column].to_string());
            if entries.get(&key).is_some_and(|e| e.0 == *now) {
                continue; // kept already (run records before its transform)
            }
            let segment = entries
                .get(&key)
                .map_or_else(|| was.clone(), |e| e.1.clone());
            entries.insert(key, (now.clone(), segment, at.clone()));
            found.cells += 1;
            any = true;
        }
        found.customers += any as u64;
    }
    found.removed = old
        .keys()
        .filter(|s| !new.contains_key(*s))
        .cloned()
        .collect();
    if found.cells > 0 {
        write_entries(edits, &entries)?;
    }
    Ok(found)
}

/// Drop entries named `SOURCE_ID` (all of its fields) or
/// `SOURCE_ID:FIELD`. Returns how many went; a spec that names none is an
/// error (a mistyped id would otherwise drop nothing in silence).
pub fn drop(edits: &Path, specs: &[String]) -> Result<usize> {
    let mut entries = read_entries(edits)?;
    let before = entries.len();
    for spec in specs {
        let (sid, field) = match spec.rsplit_once(':') {
            Some((s, f)) if COLUMNS.contains(&f) => (s, Some(f)),
            _ => (spec.as_str(), None),
        };
        let n = entries.len();
        entries.retain(|(s, f), _| !(s == sid && field.is_none_or(|field| field == f)));
        if entries.len() == n {
            return Err(UsageError::new(format!(
                "--drop-edit {spec}: {} holds no edit of {}",
                edits.display(),
                field.map_or(format!("customer {sid}"), |f| format!("{f} of {sid}"))
            ))
            .into());
        }
    }
    write_entries(edits, &entries)?;
    Ok(before - entries.len())
}

/// (source_id, field) → (value, was, at), as the file holds them.
type Entries = BTreeMap<(String, String), (String, String, String)>;

fn read_entries(edits: &Path) -> Result<Entries> {
    let o = Overrides::read(edits)?;
    Ok((o.by_sid.into_iter())
        .flat_map(|(sid, list)| {
            list.into_iter().map(move |e| {
                (
                    (sid.clone(), COLUMNS[e.column].to_string()),
                    (e.value, e.was, e.at),
                )
            })
        })
        .collect())
}

fn write_entries(edits: &Path, entries: &Entries) -> Result<()> {
    let mut w = csv::Writer::from_writer(AtomicFile::create(edits)?);
    w.write_record(HEADER)?;
    for ((sid, field), (value, was, at)) in entries {
        w.write_record([
            guard_cell(sid).as_ref(),
            field,
            &guard_cell(value),
            at,
            &guard_cell(was),
        ])?;
    }
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", edits.display(), e.error()))?
        .commit()
}

/// Every row of a customers file by source id, its cells in `COLUMNS`
/// order (empty for a column the file lacks). Rows a load would refuse are
/// read as they are: only their cells are compared.
fn rows_by_sid(path: &Path) -> Result<HashMap<String, Vec<String>>> {
    use crate::spreadsheet::customers_csv::{open_csv, parse_row, read_layout};
    let mut rdr = open_csv(path)?;
    let layout = read_layout(path, &mut rdr).map_err(|problems| crate::error::InputErrors {
        problems,
        hint: format!("{}: fix the header", path.display()),
    })?;
    let mut out = HashMap::new();
    let mut rec = csv::ByteRecord::new();
    while rdr
        .read_byte_record(&mut rec)
        .with_context(|| format!("cannot read {}", path.display()))?
    {
        let (row, _) = parse_row(&layout, &rec);
        let Some(sid) = row.source_id.clone() else {
            continue;
        };
        let cells = row
            .cells()
            .iter()
            .map(|c| c.as_deref().unwrap_or_default().to_string())
            .collect();
        out.insert(sid, cells);
    }
    Ok(out)
}
