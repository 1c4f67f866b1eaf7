//! The export's files: a delta applied to the kept file, the source ids of
//! an export, headers compared as people write them.

use crate::files;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::path::Path;

/// A header as the export's human-readable headers are compared: case,
/// white space, underscores and a byte-order mark ignored (`Source ID`,
/// `source_id`, `Address City`).
pub fn header_key(h: &str) -> String {
    h.trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '_')
        .collect::<String>()
        .to_lowercase()
}

/// Apply a delta file to the kept export: a customer in the delta replaces
/// its row (in place), a new one is appended. Err inside when the two
/// files' headers differ (a schema change): then only a full export will do.
/// Returns the delta's rows.
pub fn apply_delta(kept: &Path, delta: &Path) -> Result<std::result::Result<u64, String>> {
    let reader = |p: &Path| {
        csv::ReaderBuilder::new()
            .from_path(p)
            .with_context(|| format!("cannot read {}", p.display()))
    };
    let mut d = reader(delta)?;
    let header = d.byte_headers()?.clone();
    let mut k = reader(kept)?;
    let kept_header = k.byte_headers()?.clone();
    if k.byte_records().next().is_none() {
        // The kept export holds no customer (an empty project's): the delta
        // is the whole state, whatever columns the kept one had.
        let mut rows = 0u64;
        for rec in d.byte_records() {
            rec.with_context(|| format!("cannot read {}", delta.display()))?;
            rows += 1;
        }
        let bytes =
            std::fs::read(delta).with_context(|| format!("cannot read {}", delta.display()))?;
        files::write_atomic(kept, &bytes)?;
        return Ok(Ok(rows));
    }
    let mut k = reader(kept)?;
    k.byte_headers()?;
    let names = |h: &csv::ByteRecord| -> Vec<String> {
        h.iter()
            .map(|c| header_key(&String::from_utf8_lossy(c)))
            .collect()
    };
    if names(&header) != names(&kept_header) {
        return Ok(Err(
            "the delta's columns differ from the kept export's".into()
        ));
    }
    let Some(col) = names(&header).iter().position(|n| n == "sourceid") else {
        return Ok(Err("the delta has no source id column".into()));
    };
    let mut changed: std::collections::HashMap<Vec<u8>, csv::ByteRecord> = Default::default();
    let mut order = Vec::new();
    for rec in d.byte_records() {
        let rec = rec.with_context(|| format!("cannot read {}", delta.display()))?;
        let sid = rec.get(col).unwrap_or_default().to_vec();
        if changed.insert(sid.clone(), rec).is_none() {
            order.push(sid);
        }
    }
    let rows = order.len() as u64;
    let mut out = csv::Writer::from_writer(files::AtomicFile::create(kept)?);
    out.write_byte_record(&kept_header)?;
    for rec in k.byte_records() {
        let rec = rec.with_context(|| format!("cannot read {}", kept.display()))?;
        match changed.remove(rec.get(col).unwrap_or_default()) {
            Some(newer) => out.write_byte_record(&newer)?,
            None => out.write_byte_record(&rec)?,
        }
    }
    for sid in order {
        if let Some(rec) = changed.remove(&sid) {
            out.write_byte_record(&rec)?;
        }
    }
    out.into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", kept.display(), e.error()))?
        .commit()?;
    Ok(Ok(rows))
}

/// The source ids of an export file. Its headers are human-readable, so
/// the column is found by name, ignoring case, spaces and underscores.
pub fn read_export(path: &Path) -> Result<HashSet<String>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let headers = rdr.headers()?.clone();
    let col = headers.iter().position(|h| header_key(h) == "sourceid").ok_or_else(|| {
        anyhow::anyhow!(
            "{}: Voucherify's customer export has no source id column (its columns: {}); the import cannot tell new customers from existing ones: use --method bulk",
            path.display(),
            headers.iter().collect::<Vec<_>>().join(", ")
        )
    })?;
    let mut out = HashSet::new();
    for rec in rdr.records() {
        let rec = rec.with_context(|| format!("cannot read {}", path.display()))?;
        if let Some(v) = rec.get(col).filter(|v| !v.is_empty()) {
            out.insert(v.to_string());
        }
    }
    Ok(out)
}
