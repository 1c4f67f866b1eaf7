//! `--method import`: new customers go to Voucherify as CSV files
//! (`POST /v1/customers/importCSV`), one call for tens of thousands of them,
//! and customers the project already holds go through the bulk upsert.
//!
//! Why the split: what an empty cell of an import does to a value a customer
//! already has is undocumented, so the import is used only where an empty
//! cell can harm nothing: customers that do not exist yet. Existing ones are
//! learned from a customer export (`POST /v1/exports`, saved as
//! `load.export.csv`, the audit trail of what existed) plus the customers the
//! ledger shows confirmed. Which new customers go by file, and the files
//! themselves, are `load::import_files`'s. The files sent are kept as
//! `load.import.NNN.csv`.

use crate::api::voucherify::VoucherifyClient;
use crate::files;
use crate::state;
use crate::ui;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How `load` sends customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// Every customer through the bulk upsert (100 a request, a poll each).
    Bulk,
    /// New customers by CSV import, existing ones by the bulk upsert.
    Import,
    /// The import when it saves calls (many new customers), else bulk.
    Auto,
}

/// The standard columns of Voucherify's customer import, and the request
/// field each one carries.
pub const STANDARD: [(&str, &str); 12] = [
    ("Source_id", "source_id"),
    ("Name", "name"),
    ("Email", "email"),
    ("Phone", "phone"),
    ("Birthdate", "birthdate"),
    ("Description", "description"),
    ("Address_line_1", "address.line_1"),
    ("Address_line_2", "address.line_2"),
    ("Address_City", "address.city"),
    ("Address_State", "address.state"),
    ("Address_Postal_Code", "address.postal_code"),
    ("Address_Country", "address.country"),
];

/// The columns a customer fills: the standard ones (a bit each) and its
/// metadata keys, sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signature {
    pub(super) standard: u16,
    pub(super) keys: Vec<String>,
}

/// The source ids the project holds: an export's, plus the ledger's.
pub struct Existing {
    ids: HashSet<String>,
    pub from_export: u64,
    /// API calls the export took (request, polls, download).
    pub calls: u64,
    /// Why it is unknown which customers exist, when it is: then every
    /// customer goes by the bulk upsert, which never overwrites a field it
    /// does not carry.
    pub unknown: Option<String>,
    /// The column signatures whose customers go by file
    /// (`import_files::choose`).
    pub by_file: HashSet<Signature>,
}

impl Existing {
    pub fn contains(&self, sid: &str) -> bool {
        self.ids.contains(sid)
    }

    /// Customers known to exist; `by_file` the signatures that go by file.
    pub fn known(ids: HashSet<String>, by_file: HashSet<Signature>) -> Existing {
        Existing {
            ids,
            from_export: 0,
            calls: 0,
            unknown: None,
            by_file,
        }
    }
}

/// The export file, with the content hash of the customers file it serves.
pub fn export_paths(customers: &Path) -> (PathBuf, PathBuf) {
    let dir = files::parent_dir(customers);
    (dir.join("load.export.csv"), dir.join("load.export.json"))
}

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
    customers: &Path,
    fields: &[&str],
    deadline: Duration,
) -> Result<(Exported, u64)> {
    let (csv_path, meta_path) = export_paths(customers);
    let id = client.export_customers(fields).await?;
    let mut calls = 1;
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(200);
    let state = loop {
        if started.elapsed() >= deadline {
            anyhow::bail!(
                "Voucherify's customer export {id} did not finish within --export-timeout ({}s); nothing was sent: rerun `segsync load` (or use --method bulk)",
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
    let url = match (state.status.as_str(), state.url) {
        ("DONE", Some(url)) => url,
        ("DONE", None) => {
            // No file: maybe an empty project (a first migration), maybe not.
            calls += 1;
            if client.holds_any_customer().await? != Some(false) {
                return Ok((Exported::Unknown(format!("Voucherify's customer export {id} is DONE without a file, and the project holds customers")), calls));
            }
            ui::info(format!("Voucherify's customer export {id} has no file and the project holds no customer: every customer is new"));
            write_export(&csv_path, &meta_path, &id, b"source_id\n")?;
            return Ok((Exported::Empty, calls));
        }
        (status, _) => {
            let why = state.message.unwrap_or_else(|| "no message".into());
            return Ok((
                Exported::Unknown(format!(
                    "Voucherify's customer export {id} ended {status}: {why}"
                )),
                calls,
            ));
        }
    };
    // Straight to the file: an export of a million customers is ~100 MB.
    client.download(&url, &csv_path).await?;
    calls += 1;
    write_meta(&meta_path, &id)?;
    Ok((Exported::File(csv_path), calls))
}

/// Learn which customers exist, from a new export on every run: an import
/// fully overwrites a customer, so an export from an earlier run could miss
/// one another writer created since. The export is polled until `deadline`.
pub async fn existing(
    client: &VoucherifyClient,
    customers: &Path,
    confirmed_ids: HashSet<String>,
    deadline: Duration,
) -> Result<Existing> {
    let (outcome, calls) = export(client, customers, &["source_id"], deadline).await?;
    Existing::from_export(outcome, calls, confirmed_ids)
}

impl Existing {
    /// Who exists after an export: its source ids and the ledger's.
    pub fn from_export(
        outcome: Exported,
        calls: u64,
        confirmed_ids: HashSet<String>,
    ) -> Result<Existing> {
        let (mut ids, from_export) = match outcome {
            Exported::Unknown(why) => {
                ui::warn(format!("load: {why}; so every customer goes by the bulk upsert, which never overwrites a field it does not carry"));
                return Ok(Existing {
                    ids: HashSet::new(),
                    from_export: 0,
                    calls,
                    unknown: Some(why),
                    by_file: HashSet::new(),
                });
            }
            Exported::Empty => (HashSet::new(), 0),
            Exported::File(path) => {
                let ids = read_export(&path)?;
                let n = ids.len() as u64;
                (ids, n)
            }
        };
        ids.extend(confirmed_ids);
        Ok(Existing {
            ids,
            from_export,
            calls,
            unknown: None,
            by_file: HashSet::new(),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_column_is_found_by_a_human_readable_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.csv");
        std::fs::write(
            &p,
            "\u{feff}Id,Source ID,Name\ncust_1,a,A\ncust_2,,B\ncust_3,c,C\n",
        )
        .unwrap();
        assert_eq!(
            read_export(&p).unwrap(),
            ["a".to_string(), "c".to_string()].into()
        );
        std::fs::write(&p, "ID,Code\n1,x\n").unwrap();
        let e = read_export(&p).unwrap_err().to_string();
        assert!(
            e.contains("no source id column") && e.contains("ID, Code"),
            "{e}"
        );
    }
}
