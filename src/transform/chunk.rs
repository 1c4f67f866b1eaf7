//! The mapper's unit of work: a chunk of whole input lines turned into the
//! CSV bytes of each output file, and the counts. Pure but for `ui::verbosity`.

use crate::mapping::{map_profile, Mapped, Mapping};
use crate::spreadsheet::overrides::Overrides;

/// The traits the parse keeps.
pub type TraitSet = std::collections::HashSet<String>;
use crate::records::{guard_cell, ProfileRecord};
use crate::ui;
use std::collections::BTreeMap;

/// Input read per chunk handed to a worker.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Whole lines of the input, starting at line `first_line`.
pub struct Chunk {
    pub first_line: u64,
    pub data: Vec<u8>,
}

/// A chunk turned into output: CSV bytes for each file, and the counts.
#[derive(Default)]
pub struct ChunkResult {
    pub customers: Vec<u8>,
    pub rejected: Vec<u8>,
    pub warnings: Vec<u8>,
    pub keys: Vec<(u64, i64)>,
    pub profiles: u64,
    pub warning_count: u64,
    pub rejected_counts: Vec<(&'static str, u64)>,
    pub invalid: Vec<String>,
    pub debug: Vec<String>,
}

impl Chunk {
    pub fn process(
        &self,
        m: &Mapping,
        edits: &Overrides,
        wanted: &TraitSet,
        input: &str,
        skip_invalid: bool,
    ) -> ChunkResult {
        let mut r = ChunkResult::default();
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        {
            let csv_writer = |buf: &mut Vec<u8>| {
                csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(std::mem::take(buf))
            };
            let mut customers = csv_writer(&mut r.customers);
            let mut rejected = csv_writer(&mut r.rejected);
            let mut warnings = csv_writer(&mut r.warnings);
            let lines = self.data.split(|&b| b == b'\n');
            let mut line_no = self.first_line - 1;
            // Writing CSV into memory cannot fail; errors are ignored on that basis.
            for line in lines {
                line_no += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                r.profiles += 1;
                let profile = match crate::records::parse_for_mapping(line, wanted) {
                    Ok(p) => p,
                    Err(e) => {
                        let problem = format!("{input}:{line_no}: not a valid profile line: {e}");
                        if skip_invalid {
                            *counts.entry("invalid_json").or_default() += 1;
                            let _ = rejected.write_record(["", "invalid_json", &problem]);
                        } else {
                            r.invalid.push(problem);
                        }
                        continue;
                    }
                };
                match map_profile(&profile, m) {
                    Mapped::Rejected(rej) => {
                        *counts.entry(rej.reason).or_default() += 1;
                        let _ = rejected.write_record([
                            guard_cell(&profile.segment_id).as_ref(),
                            rej.reason,
                            &rej.detail,
                        ]);
                    }
                    Mapped::Customer {
                        mut row,
                        warnings: ws,
                    } => {
                        edits.apply(&mut row);
                        let sid = row.source_id.as_deref().unwrap_or("");
                        for w in &ws {
                            r.warning_count += 1;
                            if ui::verbosity() >= 1 {
                                r.debug.push(format!(
                                    "transform: {} ({sid}): {} {:?} dropped: {}",
                                    profile.segment_id, w.field, w.value, w.reason
                                ));
                            }
                            let _ = warnings.write_record([
                                guard_cell(&profile.segment_id).as_ref(),
                                &guard_cell(sid),
                                &w.field,
                                &guard_cell(&w.value),
                                &w.reason,
                            ]);
                        }
                        let cells = row.cells().map(|c| guard_cell(c.as_deref().unwrap_or("")));
                        let _ = customers.write_record(cells.iter().map(|c| c.as_ref()));
                        r.keys.push((h64(sid), updated_millis(&profile)));
                    }
                }
            }
            r.customers = customers.into_inner().unwrap_or_default();
            r.rejected = rejected.into_inner().unwrap_or_default();
            r.warnings = warnings.into_inner().unwrap_or_default();
        }
        r.rejected_counts = counts.into_iter().collect();
        r
    }
}

/// A customer's cells, with its profile's update time (ms since the epoch).
pub type TimedRow = (i64, Vec<Option<String>>);

impl Chunk {
    /// The customers of this chunk as cells, each with its update time.
    /// Err: the first line that is not a profile (line number and why).
    pub fn rows(
        &self,
        m: &Mapping,
        edits: &Overrides,
        wanted: &TraitSet,
    ) -> Result<Vec<TimedRow>, String> {
        let mut out = Vec::new();
        for (i, line) in self.data.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let profile = crate::records::parse_for_mapping(line, wanted)
                .map_err(|e| format!("{}: {e}", self.first_line + i as u64))?;
            if let Mapped::Customer { mut row, .. } = map_profile(&profile, m) {
                edits.apply(&mut row);
                out.push((
                    updated_millis(&profile),
                    row.cells().iter().map(|c| (*c).clone()).collect(),
                ));
            }
        }
        Ok(out)
    }
}

pub use crate::keys::h64;

/// `updated_at` as milliseconds since the epoch, for ordering duplicates.
fn updated_millis(p: &ProfileRecord) -> i64 {
    p.updated_at()
        .and_then(crate::dates::parse_timestamp)
        .map(|t| t.as_millisecond())
        .unwrap_or(i64::MIN)
}
