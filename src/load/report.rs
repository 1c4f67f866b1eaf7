//! `load-report.csv`: every customer Voucherify did not accept, with the CSV
//! line it came from and Voucherify's own words.

use crate::files::AtomicFile;
use crate::records::guard_cell;
use anyhow::Result;
use std::path::Path;

/// One line of load-report.csv.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub source_id: String,
    pub line: Option<u64>,
    pub key: String,
    pub message: String,
    pub details: String,
    /// The content key of what was refused, when Voucherify refused this
    /// customer by name (not written: `run`'s load sends a content refused
    /// during the same run no second time).
    pub content: Option<u128>,
}

pub const COLUMNS: [&str; 5] = ["source_id", "line", "key", "message", "details"];

pub fn write(path: &Path, rows: &[ReportRow]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    {
        let mut w = csv::Writer::from_writer(f.writer());
        w.write_record(COLUMNS)?;
        for r in rows {
            let line = r.line.map(|l| l.to_string()).unwrap_or_default();
            w.write_record([
                guard_cell(&r.source_id).as_ref(),
                &line,
                &r.key,
                &guard_cell(&r.message),
                &guard_cell(&r.details),
            ])?;
        }
        w.flush()?;
    }
    f.commit()
}
