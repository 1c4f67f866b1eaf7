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
        let winner = rows
            .iter()
            .enumerate()
            .max_by(|(ai, a), (bi, b)| {
                keys[a.0 as usize]
                    .1
                    .cmp(&keys[b.0 as usize].1)
                    .then(bi.cmp(ai))
            })
            .map(|(_, r)| r.clone());
        let Some((win_row, win_seg)) = winner else {
            continue;
        };
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
