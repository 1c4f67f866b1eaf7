//! Voucherify's customer export, which both `plan` (what Voucherify holds)
//! and `load --method import` (who exists) read: made (`POST /v1/exports`),
//! polled until its deadline, downloaded straight to `load.export.csv`
//! beside the customers file, and its source ids read back. One owner, below
//! both.

use crate::api::voucherify::VoucherifyClient;
use crate::files;
use crate::state::{self, Beside};
use crate::ui;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a customer export ended.
pub enum Exported {
    /// The file, saved as `load.export.csv`.
    File(PathBuf),
    /// `DONE` without a file, and the project holds no customer.
    Empty,
    /// Who exists is unknown, and why.
    Unknown(String),
}

/// Export the customers' `fields` (`POST /v1/exports`), poll it until
/// `deadline`, and download its file; also returns the calls it took.
pub async fn export(
    client: &VoucherifyClient,
    files: &Beside,
    fields: &[&str],
    deadline: Duration,
) -> Result<(Exported, u64)> {
    let (csv_path, meta_path) = (&files.export, &files.export_meta);
    let id = client.export_customers(fields).await?;
    let mut calls = 1;
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(200);
    let state = loop {
        if started.elapsed() >= deadline {
            anyhow::bail!(
                "Voucherify's customer export {id} did not finish within --export-timeout ({}s); nothing was sent: rerun `segsync load` (it resumes polling the same export), give it longer with --export-timeout SECONDS, or decide by the ledger alone with `load --from-ledger`",
                deadline.as_secs()
            );
        }
        tokio::time::sleep(wait.min(deadline.saturating_sub(started.elapsed()))).await;
        calls += 1;
        let state = client.export(&id).await?;
        match state.status.as_str() {
            "DONE" | "ERROR" | "FAILED" => break state,
            _ => wait = (wait * 2).min(Duration::from_secs(5)),
        }
    };
    if let ("DONE", Some(url)) = (state.status.as_str(), &state.url) {
        // Straight to the file: an export of a million customers is ~100 MB.
        client.download(url, csv_path).await?;
        calls += 1;
        write_meta(meta_path, &id)?;
        return Ok((Exported::File(csv_path.clone()), calls));
    }
    if state.status == "DONE" {
        // No file: maybe an empty project (a first migration), maybe not.
        calls += 1;
        if client.holds_any_customer().await? != Some(false) {
            return Ok((Exported::Unknown(format!("Voucherify's customer export {id} is DONE without a file, and the project holds customers")), calls));
        }
        ui::info(format!("Voucherify's customer export {id} has no file and the project holds no customer: every customer is new"));
        write_export(csv_path, meta_path, &id, b"source_id\n")?;
        return Ok((Exported::Empty, calls));
    }
    let why = state.message.unwrap_or_else(|| "no message".into());
    Ok((
        Exported::Unknown(format!(
            "Voucherify's customer export {id} ended {}: {why}",
            state.status
        )),
        calls,
    ))
}

/// Keep the export (the audit trail of what existed) and when it was made.
fn write_export(csv_path: &Path, meta_path: &Path, id: &str, bytes: &[u8]) -> Result<()> {
    files::write_atomic(csv_path, bytes)?;
    write_meta(meta_path, id)
}

fn write_meta(meta_path: &Path, id: &str) -> Result<()> {
    files::write_atomic(
        meta_path,
        &serde_json::to_vec_pretty(&serde_json::json!({"export_id": id, "at": state::now()}))?,
    )
}

/// The source ids of an export file. Its headers are human-readable, so
/// the column is found by name, ignoring case, spaces and underscores.
pub fn read_export(path: &Path) -> Result<HashSet<String>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let norm = |h: &str| {
        h.trim_start_matches('\u{feff}')
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '_')
            .collect::<String>()
            .to_lowercase()
    };
    let headers = rdr.headers()?.clone();
    let col = headers.iter().position(|h| norm(h) == "sourceid").ok_or_else(|| {
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
