//! Two profiles with the same `source_id` are not both sent: the one updated
//! most recently (`metadata.updated_at`) is kept, the first listed on a tie,
//! and the other is rejected as `duplicate_source_id`. Found from 16 bytes per
//! row held in memory (a hash of the `source_id` and the update time); only
//! rows whose hash collides are read back to compare the real values.

use super::Summary;
use crate::files::AtomicFile;
use crate::records::COLUMNS;
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

/// The one rule for two rows with the same `source_id`, the earlier kept
/// so far: the later one wins only when it was updated more recently (the
/// first listed wins a tie). `diff` and `load` apply it too (through
/// `transform::expected_rows`), so they can never report edits nobody made.
pub fn later_wins(kept_updated: i64, later_updated: i64) -> bool {
    later_updated > kept_updated
}

/// Decide which rows lose to another row with the same `source_id`: the one
/// updated most recently wins, the first listed on a tie. Losers are written
/// to `rejected`; returns their row indices.
pub fn find_duplicates<W: Write>(
    keys: &[(u64, i64)],
    rows_path: &Path,
    rejected: &mut csv::Writer<W>,
    summary: &mut Summary,
) -> Result<HashSet<u32>> {
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_unstable_by_key(|&i| keys[i as usize].0);
    let mut candidates: HashSet<u32> = HashSet::new();
    for w in order.windows(2) {
        if keys[w[0] as usize].0 == keys[w[1] as usize].0 {
            candidates.insert(w[0]);
            candidates.insert(w[1]);
        }
    }
    let mut losers = HashSet::new();
    if candidates.is_empty() {
        return Ok(losers);
    }
    // Read the candidates' real source_id and segment_id.
    let mut groups: HashMap<Vec<u8>, Vec<(u32, Vec<u8>)>> = HashMap::new();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(rows_path)?;
    let sid_col = 0;
    let seg_col = COLUMNS.len() - 1;
    for (i, rec) in rdr.byte_records().enumerate() {
        let rec = rec?;
        if candidates.contains(&(i as u32)) {
            groups
                .entry(rec[sid_col].to_vec())
                .or_default()
                .push((i as u32, rec[seg_col].to_vec()));
        }
    }
    for (sid, rows) in groups {
        if rows.len() < 2 {
            continue;
        }
        // Rows are in file order: each later one takes over only by the rule.
        let mut winner = &rows[0];
        for r in &rows[1..] {
            if later_wins(keys[winner.0 as usize].1, keys[r.0 as usize].1) {
                winner = r;
            }
        }
        let (win_row, win_seg) = winner.clone();
        for (row, seg) in rows {
            if row == win_row {
                continue;
            }
            losers.insert(row);
            *summary.rejected.entry("duplicate_source_id").or_default() += 1;
            let detail = format!(
                "source_id {} also maps from segment_id {}, updated more recently, which was kept",
                String::from_utf8_lossy(&sid),
                String::from_utf8_lossy(&win_seg)
            );
            rejected.write_record([&seg[..], b"duplicate_source_id", detail.as_bytes()])?;
        }
    }
    Ok(losers)
}

/// Copy the rows written so far to a new `out`, leaving out `losers`.
pub fn without_rows(rows_path: &Path, out: &Path, losers: &HashSet<u32>) -> Result<AtomicFile> {
    let mut filtered = AtomicFile::create(out)?;
    {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(rows_path)?;
        let mut w = csv::Writer::from_writer(filtered.writer());
        w.write_record(COLUMNS)?;
        for (i, rec) in rdr.byte_records().enumerate() {
            if !losers.contains(&(i as u32)) {
                w.write_byte_record(&rec?)?;
            }
        }
        w.flush()?;
    }
    Ok(filtered)
}
