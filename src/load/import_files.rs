//! Which new customers travel by import file, and the files themselves.
//!
//! Read against Voucherify's documents: a file must never carry a cell the
//! customer's data does not mean. What an empty cell does is undocumented;
//! metadata "not defined in the schema is stored as unknown metadata and
//! treated as a string", so an empty cell may become a `""` key, and a
//! boolean schema property must be `null` "otherwise the whole data row will
//! be ignored". So customers are grouped by the columns they fill (their
//! *signature*), each file holds one signature, and every cell of every file
//! is filled. A signature goes by file only when that saves calls: a file
//! costs an import and a poll, the bulk upsert a request and a poll per 100.
//! Headers: "No spaces allowed in field names", and `Id` (Voucherify's own
//! customer id) and the dashboard template's `City`, `State`, `Country`,
//! `Postal_Code` are reserved: such metadata keys go by bulk. Files are
//! measured as rendered, never estimated.

use super::batch::Prepared;
use super::import::{Existing, Signature, STANDARD};
use crate::files::AtomicFile;
use anyhow::Result;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Names an import header may not take for a metadata key (compared
/// case-insensitively), besides the standard columns.
const RESERVED: [&str; 5] = ["Id", "City", "State", "Country", "Postal_Code"];

/// The fewest customers of one signature that go by file: a file and its
/// poll are 2 calls, as are 100 customers by bulk.
pub const MIN_FILE_GROUP: u64 = 101;

/// Files written at once, one per signature (more signatures go by bulk).
const MAX_OPEN_GROUPS: usize = 64;

impl Signature {
    fn header(&self) -> Vec<&str> {
        let mut h: Vec<&str> = STANDARD
            .iter()
            .enumerate()
            .filter(|(i, _)| self.standard & (1 << i) != 0)
            .map(|(_, (col, _))| *col)
            .collect();
        h.extend(self.keys.iter().map(String::as_str));
        h
    }
}

fn field<'a>(body: &'a Map<String, Value>, path: &str) -> Option<&'a str> {
    let v = match path.split_once('.') {
        Some((a, b)) => body.get(a).and_then(|o| o.get(b)),
        None => body.get(path),
    };
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// A metadata key a header can carry as itself.
fn header_safe(k: &str) -> bool {
    !k.is_empty()
        && !k.chars().any(|c| c.is_whitespace() || c.is_control())
        && !STANDARD.iter().any(|(col, _)| col.eq_ignore_ascii_case(k))
        && !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(k))
}

/// The signature of a customer that may go by file without loss: new to the
/// project, its metadata all non-empty text under header-safe keys.
pub fn candidate(c: &Prepared, existing: &Existing) -> Option<Signature> {
    if existing.unknown.is_some() || existing.contains(&c.source_id) {
        return None;
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&c.body) else {
        return None;
    };
    signature(&body)
}

fn signature(body: &Map<String, Value>) -> Option<Signature> {
    let mut standard = 0u16;
    for (i, (_, f)) in STANDARD.iter().enumerate() {
        if field(body, f).is_some() {
            standard |= 1 << i;
        }
    }
    let keys = match body.get("metadata") {
        None => Vec::new(),
        Some(Value::Object(m)) => {
            let ok = m
                .iter()
                .all(|(k, v)| header_safe(k) && v.as_str().is_some_and(|s| !s.is_empty()));
            if !ok {
                return None;
            }
            let mut keys: Vec<String> = m.keys().cloned().collect();
            keys.sort();
            keys
        }
        Some(_) => return None,
    };
    Some(Signature { standard, keys })
}

/// The signatures that go by file, from the candidates' counts: those with
/// at least [`MIN_FILE_GROUP`] customers, the largest first, at most
/// [`MAX_OPEN_GROUPS`] of them.
pub fn choose(counts: HashMap<Signature, u64>) -> std::collections::HashSet<Signature> {
    let mut big: Vec<(Signature, u64)> = counts
        .into_iter()
        .filter(|(_, n)| *n >= MIN_FILE_GROUP)
        .collect();
    big.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    big.into_iter()
        .take(MAX_OPEN_GROUPS)
        .map(|(s, _)| s)
        .collect()
}

/// Whether a customer goes by file: a candidate whose signature was chosen.
pub fn importable(c: &Prepared, existing: &Existing) -> bool {
    candidate(c, existing).is_some_and(|s| existing.by_file.contains(&s))
}

/// An import file as written.
pub struct ImportFile {
    pub name: String,
    pub path: PathBuf,
    /// Its customers in row order (request bodies dropped once written).
    pub customers: Vec<Prepared>,
    pub size: usize,
}

/// A file being filled with the customers of one signature.
struct Open {
    name: String,
    path: PathBuf,
    file: AtomicFile,
    customers: Vec<Prepared>,
    size: usize,
}

/// Writes customers into files named `load.import.NNN.csv` from the first
/// free number, one signature a file, each at most `max_bytes` as rendered.
struct Writer {
    dir: PathBuf,
    next: u32,
    max_bytes: usize,
    open: BTreeMap<Signature, Open>,
    done: Vec<ImportFile>,
}

fn csv_line(cells: &[&str]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(cells)?;
    Ok(w.into_inner().map_err(|e| e.into_error())?)
}

impl Writer {
    fn open(&mut self, sig: &Signature) -> Result<Open> {
        let name = format!("load.import.{:03}.csv", self.next);
        self.next += 1;
        let path = self.dir.join(&name);
        let mut file = AtomicFile::create(&path)?;
        let header = csv_line(&sig.header())?;
        std::io::Write::write_all(&mut file, &header)?;
        Ok(Open {
            name,
            path,
            file,
            customers: Vec::new(),
            size: header.len(),
        })
    }

    fn close(&mut self, o: Open) -> Result<()> {
        o.file.commit()?;
        self.done.push(ImportFile {
            name: o.name,
            path: o.path,
            customers: o.customers,
            size: o.size,
        });
        Ok(())
    }

    fn add(&mut self, sig: Signature, body: &Map<String, Value>, mut c: Prepared) -> Result<()> {
        let mut cells: Vec<&str> = STANDARD
            .iter()
            .filter_map(|(_, f)| field(body, f))
            .collect();
        let meta = body.get("metadata").and_then(Value::as_object);
        cells.extend(
            sig.keys
                .iter()
                .filter_map(|k| meta.and_then(|m| m.get(k)).and_then(Value::as_str)),
        );
        let row = csv_line(&cells)?;
        let full = self
            .open
            .get(&sig)
            .is_some_and(|o| o.size + row.len() > self.max_bytes && !o.customers.is_empty());
        if full {
            if let Some(o) = self.open.remove(&sig) {
                self.close(o)?;
            }
        }
        if !self.open.contains_key(&sig) {
            let o = self.open(&sig)?;
            self.open.insert(sig.clone(), o);
        }
        let o = self
            .open
            .get_mut(&sig)
            .ok_or_else(|| anyhow::anyhow!("import file for a signature vanished"))?;
        std::io::Write::write_all(&mut o.file, &row)?;
        o.size += row.len();
        c.body = Vec::new();
        o.customers.push(c);
        Ok(())
    }
}

/// Write the customers as Voucherify import files of at most `max_bytes`
/// each (measured as written), one column signature a file, in `dir` (the
/// customers file's folder).
pub fn write_files(
    dir: &Path,
    rows: impl IntoIterator<Item = Result<Prepared>>,
    max_bytes: usize,
) -> Result<Vec<ImportFile>> {
    let dir = dir.to_path_buf();
    let next = (1..)
        .find(|n| !dir.join(format!("load.import.{n:03}.csv")).exists())
        .unwrap_or(1);
    let mut w = Writer {
        dir,
        next,
        max_bytes,
        open: BTreeMap::new(),
        done: Vec::new(),
    };
    for c in rows {
        let c = c?;
        let body: Map<String, Value> = serde_json::from_slice(&c.body)?;
        let sig = signature(&body)
            .ok_or_else(|| anyhow::anyhow!("{}: not a customer for a file", c.source_id))?;
        w.add(sig, &body, c)?;
    }
    for o in std::mem::take(&mut w.open).into_values() {
        w.close(o)?;
    }
    w.done.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(w.done)
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
            segment_id: None,
            fields: vec![],
            cleared: vec![],
        }
    }

    fn existing(by_file: &[Signature]) -> Existing {
        Existing::known(
            ["old".to_string()].into(),
            by_file.iter().cloned().collect(),
        )
    }

    #[test]
    fn only_new_customers_with_header_safe_text_metadata_are_candidates() {
        let ex = existing(&[]);
        let ok = prepared(
            "n1",
            serde_json::json!({"source_id": "n1", "metadata": {"plan": "gold"}}),
        );
        assert!(candidate(&ok, &ex).is_some());
        let old = prepared("old", serde_json::json!({"source_id": "old"}));
        assert!(
            candidate(&old, &ex).is_none(),
            "existing customers go by bulk"
        );
        for meta in [
            serde_json::json!({"vip": true}),
            serde_json::json!({"ltv": 12}),
            serde_json::json!({"tags": ["a"]}),
            serde_json::json!({"nested": {"a": "b"}}),
            serde_json::json!({"email": "x@y.z"}),
            serde_json::json!({"NAME": "x"}),
            serde_json::json!({"id": "x"}),
            serde_json::json!({"city": "x"}),
            serde_json::json!({"POSTAL_CODE": "x"}),
            serde_json::json!({"Campaign Name": "x"}),
            serde_json::json!({"empty": ""}),
        ] {
            let c = prepared(
                "n2",
                serde_json::json!({"source_id": "n2", "metadata": meta}),
            );
            assert!(candidate(&c, &ex).is_none(), "{meta}");
        }
    }

    #[test]
    fn a_signature_goes_by_file_only_from_101_customers() {
        let sig = |keys: &[&str]| Signature {
            standard: 1,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        };
        let chosen = choose(HashMap::from([(sig(&["a"]), 101), (sig(&["b"]), 100)]));
        assert!(chosen.contains(&sig(&["a"])) && !chosen.contains(&sig(&["b"])));
    }

    #[test]
    fn every_cell_of_every_file_is_filled_and_files_are_measured_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let customers = dir.path().join("customers.csv");
        let rows: Vec<Prepared> = (0..60)
            .map(|i| {
                let meta = if i % 2 == 0 {
                    serde_json::json!({"plan": "gold", "note": "x".repeat(100)})
                } else {
                    serde_json::json!({"plan": "free"})
                };
                prepared(
                    &format!("c{i}"),
                    serde_json::json!({"source_id": format!("c{i}"), "name": "N", "address": {"city": "Oslo"}, "metadata": meta}),
                )
            })
            .collect();
        let files = write_files(
            &crate::files::parent_dir(&customers),
            rows.into_iter().map(Ok),
            2_000,
        )
        .unwrap();
        assert!(files.len() > 2);
        assert_eq!(files[0].name, "load.import.001.csv");
        assert_eq!(files.iter().map(|f| f.customers.len()).sum::<usize>(), 60);
        for f in &files {
            let bytes = std::fs::read(&f.path).unwrap();
            assert_eq!(bytes.len(), f.size, "measured as written");
            assert!(f.size <= 2_000, "{}", f.size);
            let mut r = csv::Reader::from_reader(bytes.as_slice());
            let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
            assert!(
                header == ["Source_id", "Name", "Address_City", "note", "plan"]
                    || header == ["Source_id", "Name", "Address_City", "plan"],
                "{header:?}"
            );
            for rec in r.records() {
                assert!(rec.unwrap().iter().all(|c| !c.is_empty()), "an empty cell");
            }
        }
        let more = write_files(
            &crate::files::parent_dir(&customers),
            vec![Ok(prepared("z", serde_json::json!({"source_id": "z"})))],
            2_000,
        )
        .unwrap();
        assert_eq!(
            more[0].name,
            format!("load.import.{:03}.csv", files.len() + 1)
        );
    }
}
