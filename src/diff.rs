//! `segsync diff`: what a hand edit of `customers.csv` changed.
//!
//! Reads: `customers.csv` (or `--in FILE`, any separator `load` accepts) and
//! `profiles.ndjson`, from which it recomputes in memory what `transform`
//! would write (nothing is written). Prints rows added and removed, each
//! changed cell with its old and new value, a count per column, and the
//! changes that look like a spreadsheet's doing (`edits::Damage`). `--csv
//! FILE` writes the full list. `load` uses [`compare`] to refuse rows whose
//! leading zeros a spreadsheet stripped.

use crate::error::UsageError;
use crate::files::{self, AtomicFile};
use crate::mapping::Mapping;
use crate::mapping::MappingArgs;
use crate::records::{guard_cell, COLUMNS};
use crate::spreadsheet::customers_csv::{open_csv, parse_row, read_layout, separator};
use crate::spreadsheet::edits::{classify, separator_name, Damage};
use crate::state;
use crate::ui;
use anyhow::Result;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Customers CSV to compare [default: DATA_DIR/customers.csv]
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Profiles it came from [default: profiles.ndjson beside the CSV]
    #[arg(long = "profiles", value_name = "FILE")]
    pub profiles: Option<PathBuf>,
    /// Write every change to FILE (line,source_id,column,old,new,damage)
    #[arg(long = "csv", value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Changes shown on the terminal (the rest are counted)
    #[arg(long, default_value_t = 50)]
    pub show: usize,
    #[command(flatten)]
    pub mapping: MappingArgs,
}

/// One changed cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The line of the file where the row starts (a quoted newline makes
    /// a row span lines), for load's messages.
    pub line: u64,
    /// The row as a spreadsheet numbers it: the header is row 1.
    pub row: u64,
    pub source_id: String,
    pub column: &'static str,
    pub old: String,
    pub new: String,
    pub damage: Option<Damage>,
}

/// What a hand edit changed against what transform would write.
#[derive(Debug, Default)]
pub struct EditReport {
    pub separator: u8,
    pub rows: u64,
    /// Rows whose `source_id` transform would not write: (line, source_id).
    pub added: Vec<(u64, String)>,
    /// `source_id`s transform would write that the file lacks.
    pub removed: Vec<String>,
    pub changes: Vec<Change>,
}

impl EditReport {
    pub fn per_column(&self) -> BTreeMap<&'static str, (u64, u64)> {
        let mut m: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
        for c in &self.changes {
            let e = m.entry(c.column).or_default();
            e.0 += 1;
            if c.damage.is_some() {
                e.1 += 1;
            }
        }
        m
    }

    pub fn damaged(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.damage.is_some())
    }

    /// One line of counts: "2 changed cells (1 name, 1 address_postal_code), …".
    pub fn counts(&self) -> String {
        let cols: Vec<String> = self
            .per_column()
            .iter()
            .map(|(c, (n, d))| {
                if *d > 0 {
                    format!("{n} {c} ({d} spreadsheet damage)")
                } else {
                    format!("{n} {c}")
                }
            })
            .collect();
        format!(
            "{} rows added, {} removed, {} changed cells{}",
            self.added.len(),
            self.removed.len(),
            self.changes.len(),
            if cols.is_empty() {
                String::new()
            } else {
                format!(": {}", cols.join(", "))
            }
        )
    }
}

/// Compare `customers` with what transform would write from `profiles`.
pub fn compare(customers: &Path, profiles: &Path, mapping: &Mapping) -> Result<EditReport> {
    let edits = crate::spreadsheet::overrides::Overrides::read(&state::edits(customers))?;
    let mut expected = crate::transform::expected_rows(profiles, mapping, &edits)?;
    let mut report = EditReport {
        separator: separator(customers)?,
        ..Default::default()
    };
    let mut rdr = open_csv(customers)?;
    let layout =
        read_layout(customers, &mut rdr).map_err(|problems| crate::error::InputErrors {
            problems,
            hint: format!("{}: fix the header; nothing was sent", customers.display()),
        })?;
    let mut seen = HashSet::new();
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            // load's validation names malformed rows; diff compares the rest.
            Err(_) => continue,
        }
        report.rows += 1;
        let row_no = report.rows + 1;
        let line = layout.line(rec.position());
        let (row, _) = parse_row(&layout, &rec);
        let Some(sid) = row.source_id.clone() else {
            continue;
        };
        let cells = row.cells();
        match expected.remove(&sid) {
            None => report.added.push((line, sid.clone())),
            Some(old) => {
                for &col in &layout.fields {
                    let (o, n) = (
                        old[col].clone().unwrap_or_default(),
                        cells[col].clone().unwrap_or_default(),
                    );
                    if o != n {
                        report.changes.push(Change {
                            line,
                            row: row_no,
                            source_id: sid.clone(),
                            column: COLUMNS[col],
                            damage: classify(&o, &n),
                            old: o,
                            new: n,
                        });
                    }
                }
            }
        }
        seen.insert(sid);
    }
    let mut removed: Vec<String> = expected.into_keys().filter(|k| !seen.contains(k)).collect();
    removed.sort();
    report.removed = removed;
    report.changes.sort_by_key(|c| c.line);
    Ok(report)
}

/// The profiles file that `customers` came from, if there is one.
pub fn profiles_for(customers: &Path, given: Option<&Path>) -> Option<PathBuf> {
    let p = given
        .map(Path::to_path_buf)
        .unwrap_or_else(|| state::profiles(&files::parent_dir(customers)));
    p.exists().then_some(p)
}

pub fn run(args: &Args, data_dir: &Path) -> Result<()> {
    let customers = args
        .input
        .clone()
        .unwrap_or_else(|| state::customers(data_dir));
    if !customers.exists() {
        return Err(UsageError::new(format!(
            "{} not found: `segsync transform` writes it (or pass --in FILE)",
            customers.display()
        ))
        .into());
    }
    let Some(profiles) = profiles_for(&customers, args.profiles.as_deref()) else {
        crate::outln!(
            "{}: no profiles.ndjson beside it to compare with (a file written by hand from scratch); nothing to compare",
            customers.display()
        );
        return Ok(());
    };
    let r = compare(&customers, &profiles, &args.mapping.resolve()?)?;
    crate::outln!(
        "{} ({} rows, {}-separated) against what `segsync transform` would write from {}:",
        customers.display(),
        r.rows,
        separator_name(r.separator),
        profiles.display()
    );
    for (line, sid) in r.added.iter().take(args.show) {
        crate::outln!("  line {line}: {sid}  added (not a customer of profiles.ndjson)");
    }
    for sid in r.removed.iter().take(args.show) {
        crate::outln!("  {sid}  removed");
    }
    for c in r.changes.iter().take(args.show) {
        crate::outln!(
            "  row {}{}: {}  {}  {:?} → {:?}{}",
            c.row,
            if c.line == c.row {
                String::new()
            } else {
                format!(" (line {})", c.line)
            },
            c.source_id,
            c.column,
            c.old,
            c.new,
            c.damage
                .map(|d| format!("  [spreadsheet damage? {}]", short(d)))
                .unwrap_or_default()
        );
    }
    let shown = r.added.len().min(args.show)
        + r.removed.len().min(args.show)
        + r.changes.len().min(args.show);
    let total = r.added.len() + r.removed.len() + r.changes.len();
    if total > shown {
        crate::outln!("  … and {} more (--csv FILE lists them all)", total - shown);
    }
    crate::outln!("{}", r.counts());
    let mut kinds: Vec<Damage> = r.damaged().filter_map(|c| c.damage).collect();
    kinds.dedup();
    kinds.sort_by_key(|d| *d as u8);
    kinds.dedup();
    for d in kinds {
        let n = r.damaged().filter(|c| c.damage == Some(d)).count();
        ui::warn(format!(
            "{n} changed {}: each {}",
            if n == 1 { "value" } else { "values" },
            d.explain()
        ));
    }
    if let Some(out) = &args.csv {
        write_csv(out, &r)?;
        crate::outln!("every change: {}", out.display());
    }
    Ok(())
}

fn short(d: Damage) -> &'static str {
    match d {
        Damage::LostLeadingZeros => "leading zeros lost",
        Damage::LocaleDate => "date in a locale format",
        Damage::ScientificNotation => "scientific notation",
    }
}

fn write_csv(path: &Path, r: &EditReport) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    {
        let mut w = csv::Writer::from_writer(f.writer());
        w.write_record(["line", "source_id", "column", "old", "new", "damage"])?;
        for (line, sid) in &r.added {
            w.write_record([
                &line.to_string(),
                guard_cell(sid).as_ref(),
                "(row)",
                "",
                "added",
                "",
            ])?;
        }
        for sid in &r.removed {
            w.write_record(["", guard_cell(sid).as_ref(), "(row)", "", "removed", ""])?;
        }
        for c in &r.changes {
            w.write_record([
                c.line.to_string().as_str(),
                &guard_cell(&c.source_id),
                c.column,
                &guard_cell(&c.old),
                &guard_cell(&c.new),
                c.damage.map(short).unwrap_or(""),
            ])?;
        }
        w.flush()?;
    }
    f.commit()
}
