//! `--method import`: new customers go to Voucherify as CSV files
//! (`POST /v1/customers/importCSV`), one call for tens of thousands of them,
//! and customers the project already holds go through the bulk upsert.
//!
//! Why the split: what an empty cell of an import does to a value a customer
//! already has is undocumented, so the import is used only where an empty
//! cell can harm nothing: customers that do not exist yet. Existing ones are
//! learned from a customer export (`POST /v1/exports`, saved as
//! `load.export.csv`, the audit trail of what existed) plus the customers the
//! ledger shows confirmed. A cell is text, so a customer whose metadata holds
//! anything but strings, or a key a standard column would swallow, goes
//! through the bulk upsert too: no metadata changes type because of the
//! method. The files sent are kept as `load.import.NNN.csv`.

use super::batch::Prepared;
use crate::files::{self, AtomicFile};
use crate::state;
use crate::ui;
use crate::voucherify::VoucherifyClient;
use anyhow::{Context, Result};
use serde_json::{Map, Value};
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

/// The source ids the project holds: an export's, plus the ledger's.
pub struct Existing {
    ids: HashSet<String>,
    pub from_export: u64,
    /// API calls the export took (request, polls, download).
    pub calls: u64,
}

impl Existing {
    pub fn contains(&self, sid: &str) -> bool {
        self.ids.contains(sid)
    }
}

/// The export file, with the content hash of the customers file it serves.
fn export_paths(customers: &Path) -> (PathBuf, PathBuf) {
    let dir = files::parent_dir(customers);
    (dir.join("load.export.csv"), dir.join("load.export.json"))
}

/// Learn which customers exist. A saved export made for this same
/// `customers.csv` content (a rerun of the same load) is reused; otherwise
/// the project is exported again.
pub async fn existing(
    client: &VoucherifyClient,
    customers: &Path,
    confirmed_ids: HashSet<String>,
) -> Result<Existing> {
    let (csv_path, meta_path) = export_paths(customers);
    let sha = files::sha256_file(customers)?;
    let saved: Option<Value> = std::fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut calls = 0;
    let reuse = saved
        .as_ref()
        .is_some_and(|m| m["customers_sha256"] == sha.as_str())
        && csv_path.exists();
    if reuse {
        ui::info(format!(
            "load: reusing {} (made for this customers.csv by an earlier run of this load)",
            csv_path.display()
        ));
    } else {
        let id = client.export_customer_ids().await?;
        calls += 1;
        let mut wait = Duration::from_millis(200);
        let url = loop {
            tokio::time::sleep(wait).await;
            calls += 1;
            let (status, url) = client.export(&id).await?;
            match (status.as_str(), url) {
                ("DONE", Some(u)) => break u,
                ("FAILED" | "ERROR", _) => anyhow::bail!(
                    "Voucherify's customer export {id} failed; the import needs it to know which customers exist: rerun `segsync load`, or use --method bulk"
                ),
                _ => wait = (wait * 2).min(Duration::from_secs(5)),
            }
        };
        let bytes = client.download(&url).await?;
        calls += 1;
        files::write_atomic(&csv_path, &bytes)?;
        files::write_atomic(
            &meta_path,
            &serde_json::to_vec_pretty(&serde_json::json!({
                "export_id": id,
                "at": state::now(),
                "customers_sha256": sha,
            }))?,
        )?;
    }
    let exported = read_export(&csv_path)?;
    let from_export = exported.len() as u64;
    let mut ids = exported;
    ids.extend(confirmed_ids);
    Ok(Existing {
        ids,
        from_export,
        calls,
    })
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

/// Whether a customer can go by file without loss: new to the project, its
/// metadata all text, under keys no standard column would take.
pub fn importable(c: &Prepared, existing: &Existing) -> bool {
    if existing.contains(&c.source_id) {
        return false;
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&c.body) else {
        return false;
    };
    match body.get("metadata") {
        None => true,
        Some(Value::Object(m)) => m.iter().all(|(k, v)| {
            v.is_string()
                && !STANDARD.iter().any(|(col, _)| col.eq_ignore_ascii_case(k))
                && !k.contains(['\n', '\r'])
        }),
        Some(_) => false,
    }
}

/// An import file being filled.
pub struct ImportFile {
    pub name: String,
    pub path: PathBuf,
    /// Its customers in row order (request bodies dropped once written).
    pub customers: Vec<Prepared>,
    pub size: usize,
}

fn field<'a>(body: &'a Map<String, Value>, path: &str) -> &'a str {
    let v = match path.split_once('.') {
        Some((a, b)) => body.get(a).and_then(|o| o.get(b)),
        None => body.get(path),
    };
    v.and_then(Value::as_str).unwrap_or("")
}

/// Write customers as Voucherify import files of at most `max_bytes` each,
/// named `load.import.NNN.csv` from the first free number.
pub fn write_files(
    customers: &Path,
    rows: impl IntoIterator<Item = Prepared>,
    max_bytes: usize,
) -> Result<Vec<ImportFile>> {
    let dir = files::parent_dir(customers);
    let mut next = (1..)
        .find(|n| !dir.join(format!("load.import.{n:03}.csv")).exists())
        .unwrap_or(1);
    let mut out = Vec::new();
    let mut group: Vec<(Prepared, Map<String, Value>)> = Vec::new();
    let mut size = 0usize;
    let flush = |group: &mut Vec<(Prepared, Map<String, Value>)>,
                 out: &mut Vec<ImportFile>,
                 next: &mut u32|
     -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        let name = format!("load.import.{:03}.csv", *next);
        *next += 1;
        let path = dir.join(&name);
        let bytes = render(group)?;
        let mut f = AtomicFile::create(&path)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.commit()?;
        out.push(ImportFile {
            name,
            path,
            customers: std::mem::take(group)
                .into_iter()
                .map(|(mut p, _)| {
                    p.body = Vec::new();
                    p
                })
                .collect(),
            size: bytes.len(),
        });
        Ok(())
    };
    for c in rows {
        let body: Map<String, Value> = serde_json::from_slice(&c.body)?;
        // Room for the row, its metadata columns, and the header.
        let estimate = c.body.len() + 64;
        if size + estimate > max_bytes && !group.is_empty() {
            flush(&mut group, &mut out, &mut next)?;
            size = 0;
        }
        size += estimate;
        group.push((c, body));
    }
    flush(&mut group, &mut out, &mut next)?;
    Ok(out)
}

/// One file: the standard columns, then one column per metadata key.
fn render(group: &[(Prepared, Map<String, Value>)]) -> Result<Vec<u8>> {
    let mut keys: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for (_, body) in group {
        if let Some(Value::Object(m)) = body.get("metadata") {
            for k in m.keys() {
                if seen.insert(k.clone()) {
                    keys.push(k.clone());
                }
            }
        }
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<&str> = STANDARD.iter().map(|(c, _)| *c).collect();
    header.extend(keys.iter().map(String::as_str));
    w.write_record(&header)?;
    for (_, body) in group {
        let mut row: Vec<&str> = STANDARD.iter().map(|(_, f)| field(body, f)).collect();
        let meta = body.get("metadata").and_then(Value::as_object);
        row.extend(keys.iter().map(|k| {
            meta.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
        }));
        w.write_record(&row)?;
    }
    Ok(w.into_inner().map_err(|e| e.into_error())?)
}

/// Bulk calls a set of customers would take: a request and a poll per 100.
pub fn bulk_calls(customers: u64) -> u64 {
    customers.div_ceil(100) * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(sid: &str, body: Value) -> Prepared {
        Prepared {
            source_id: sid.into(),
            line: 2,
            hash: "h".into(),
            body: serde_json::to_vec(&body).unwrap(),
        }
    }

    #[test]
    fn only_new_customers_with_text_metadata_go_by_file() {
        let existing = Existing {
            ids: ["old".to_string()].into(),
            from_export: 1,
            calls: 0,
        };
        let ok = prepared(
            "n1",
            serde_json::json!({"source_id": "n1", "metadata": {"plan": "gold"}}),
        );
        assert!(importable(&ok, &existing));
        let old = prepared("old", serde_json::json!({"source_id": "old"}));
        assert!(
            !importable(&old, &existing),
            "existing customers go through bulk"
        );
        for meta in [
            serde_json::json!({"vip": true}),
            serde_json::json!({"ltv": 12}),
            serde_json::json!({"tags": ["a"]}),
            serde_json::json!({"nested": {"a": "b"}}),
            serde_json::json!({"email": "x@y.z"}),
            serde_json::json!({"NAME": "x"}),
        ] {
            let c = prepared(
                "n2",
                serde_json::json!({"source_id": "n2", "metadata": meta}),
            );
            assert!(!importable(&c, &existing), "{meta}");
        }
    }

    #[test]
    fn files_have_the_standard_columns_then_metadata_and_respect_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let customers = dir.path().join("customers.csv");
        let rows: Vec<Prepared> = (0..50)
            .map(|i| {
                prepared(
                    &format!("c{i}"),
                    serde_json::json!({"source_id": format!("c{i}"), "name": "N", "address": {"city": "Oslo"},
                        "metadata": {"plan": "gold", "note": "x".repeat(100)}}),
                )
            })
            .collect();
        let files = write_files(&customers, rows, 4_000).unwrap();
        assert!(files.len() > 1);
        assert_eq!(files[0].name, "load.import.001.csv");
        assert_eq!(files.iter().map(|f| f.customers.len()).sum::<usize>(), 50);
        for f in &files {
            assert!(f.size <= 4_000 + 400, "{}", f.size);
            let text = std::fs::read_to_string(&f.path).unwrap();
            let header = text.lines().next().unwrap();
            assert!(header.starts_with("Source_id,Name,Email,Phone,Birthdate,Description,Address_line_1,Address_line_2,Address_City,Address_State,Address_Postal_Code,Address_Country,plan,note"), "{header}");
            assert!(text.lines().nth(1).unwrap().starts_with("c"));
        }
        // The next run numbers on.
        let more = write_files(
            &customers,
            vec![prepared("z", serde_json::json!({"source_id": "z"}))],
            4_000,
        )
        .unwrap();
        assert_eq!(
            more[0].name,
            format!("load.import.{:03}.csv", files.len() + 1)
        );
    }

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
