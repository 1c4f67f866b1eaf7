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
pub use crate::export::{export, read_export, Exported};
use crate::ui;
use anyhow::Result;
use std::collections::HashSet;
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
/// field each one carries (from [`crate::fields`]).
pub const STANDARD: [(&str, &str); 12] = {
    let mut out = [(crate::fields::SOURCE_ID_IMPORT, crate::fields::SOURCE_ID); 12];
    let mut i = 0;
    while i < crate::fields::STANDARD.len() {
        let f = crate::fields::STANDARD[i];
        out[i + 1] = (f.import, f.path);
        i += 1;
    }
    out
};

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

/// Learn which customers exist, from a new export on every run: an import
/// fully overwrites a customer, so an export from an earlier run could miss
/// one another writer created since. The export is polled until `deadline`.
pub async fn existing(
    client: &VoucherifyClient,
    files: &crate::state::Beside,
    confirmed_ids: HashSet<String>,
    deadline: Duration,
) -> Result<Existing> {
    let (outcome, calls) = export(client, files, &["source_id"], deadline).await?;
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
