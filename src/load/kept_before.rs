//! What `segsync undo` needs from a load: before its first batch, a copy of
//! the export it decides by (`load.undo.before.csv`) and where its ledger
//! lines begin (`load.undo.json`). Kept here, in the load, so the load
//! never reaches up into `undo`.

use crate::files::{self, AtomicFile};
use crate::state::{self, Beside};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// `load.undo.json`: where the last sending load's ledger lines begin, and
/// when it was undone.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub ledger_from: u64,
    pub at: String,
    pub target: String,
    #[serde(default)]
    pub undone_at: Option<String>,
}

pub(crate) fn record_path(files: &Beside) -> PathBuf {
    files.dir.join("load.undo.json")
}

pub(crate) fn before_path(files: &Beside) -> PathBuf {
    files.dir.join("load.undo.before.csv")
}

/// Before a load's (or a run's) first batch: keep the export it decides by
/// and where its ledger lines begin. Once per load: a run that kept it
/// beside extract keeps it (same `ledger_from`).
pub fn keep_before(files: &Beside, target: &str, ledger_from: u64) -> Result<()> {
    let path = record_path(files);
    let kept: Option<Record> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if kept.is_some_and(|r| r.ledger_from == ledger_from && r.target == target) {
        return Ok(());
    }
    if !files.export.is_file() {
        // No export to decide by (`--from-ledger`): nothing says what was
        // held before; an earlier record would undo the wrong load.
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    let mut out = AtomicFile::create(&before_path(files))?;
    std::io::copy(&mut files::open_regular(&files.export)?, out.writer())
        .with_context(|| format!("cannot write {}", before_path(files).display()))?;
    out.commit()?;
    let r = Record {
        ledger_from,
        at: state::now(),
        target: target.to_string(),
        undone_at: None,
    };
    files::write_atomic(&path, &serde_json::to_vec_pretty(&r)?)
}
