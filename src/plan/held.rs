//! What Voucherify holds, read from a customer export file: an index from
//! source id to the record's place in the file (16 bytes a customer, so a
//! million customers cost tens of megabytes), and each record read back when
//! its customer is compared.
//!
//! The export's headers are human-readable and their exact spelling is not
//! documented, so a column is found by its name with case, spaces and
//! underscores ignored (`Source ID`, `source_id`, `Address City`). Metadata
//! comes as one column per key the customer schema defines; the docs spell
//! order metadata `metadata.X`, so a header `metadata` followed by `.`,
//! `_`, `:` or a space, then a defined key, is that key's column. A field
//! without a column cannot be read.

use crate::keys::h64;
use crate::keys::{KeyMap, KeyMapBuilder};
use crate::mapping::metadata_schema::CustomerSchema;
use anyhow::Result;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

// The fields a plan compares besides metadata: `crate::fields::STANDARD`,
// in its order (a `Held`'s `standard` cells follow it).
use crate::fields::STANDARD;

use super::digest::{Kind, Layout};
use crate::export::header_key as norm;

/// Marks an index entry whose digest cannot be used: two records share its
/// 64-bit key (or the export lists one customer twice).
const NO_DIGEST: u64 = 1 << 63;

/// Where each field is in the export.
struct Columns {
    source_id: usize,
    standard: [Option<usize>; 11],
    updated_at: Option<usize>,
    /// Defined metadata key → column.
    metadata: HashMap<String, usize>,
    /// The comparable columns, for the digests (`super::digest`).
    layout: Layout,
}

fn columns(path: &Path, header: &csv::StringRecord, schema: &CustomerSchema) -> Result<Columns> {
    let names: Vec<String> = header.iter().map(norm).collect();
    let find = |want: &str| names.iter().position(|n| n == want);
    let source_id = find("sourceid").ok_or_else(|| {
        crate::error::UsageError::new(format!(
            "{}: Voucherify's customer export has no source id column (its columns: {}); nothing can be compared",
            path.display(),
            header.iter().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let mut standard = [None; 11];
    for (i, f) in STANDARD.iter().enumerate() {
        standard[i] = find(&norm(f.export));
    }
    let mut metadata = HashMap::new();
    for (col, raw) in header.iter().enumerate() {
        let raw = raw.trim_start_matches('\u{feff}').trim();
        let Some(rest) = raw
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("metadata"))
            .map(|_| &raw[8..])
        else {
            continue;
        };
        let Some(key) = rest.strip_prefix(['.', '_', ':', ' ']).map(str::trim) else {
            continue;
        };
        let defined = schema.properties.keys().find(|k| *k == key).or_else(|| {
            let mut same = schema.properties.keys().filter(|k| norm(k) == norm(key));
            let one = same.next();
            one.filter(|_| same.next().is_none())
        });
        if let Some(k) = defined {
            metadata.insert(k.clone(), col);
        }
    }
    let mut comparable: Vec<(String, usize, Kind)> = metadata
        .iter()
        .filter_map(|(k, c)| Some((k.clone(), *c, Kind::metadata(&schema.properties[k])?)))
        .collect();
    comparable.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Columns {
        source_id,
        standard,
        updated_at: find("updatedat"),
        metadata,
        layout: Layout {
            standard,
            metadata: comparable,
        },
    })
}

/// One customer as the export shows it. `None`: the field has no column.
pub struct Held {
    /// Per [`STANDARD`] field: the cell (empty = no value).
    pub standard: [Option<String>; 11],
    /// `updated_at`, when the export has it and it parses.
    pub updated_at: Option<jiff::Timestamp>,
    /// Defined metadata keys that have a column → their cell.
    pub metadata: HashMap<String, String>,
}

/// The export file, indexed by source id.
pub struct HeldFile {
    path: PathBuf,
    /// 64-bit key of the source id → (the record's offset, its digest).
    index: KeyMap<u64, (u64, u128)>,
    cols: Columns,
    rdr: csv::Reader<std::fs::File>,
    rec: csv::StringRecord,
    /// Source ids whose 64-bit keys collide: looked up by scanning.
    pub collisions: u64,
}

impl HeldFile {
    /// Index `path` (one pass).
    pub fn open(path: &Path, schema: &CustomerSchema) -> Result<HeldFile> {
        // An export is read whole or refused, naming the file: a rerun that
        // compares the same file cannot fix it.
        let refuse = |what: String| {
            crate::error::UsageError::new(format!(
                "{}: {what}; it cannot be compared (a new export, or another --export-file, can)",
                path.display()
            ))
        };
        if !path.is_file() {
            return Err(refuse("not a file".into()).into());
        }
        let open = |headers: bool| {
            csv::ReaderBuilder::new()
                .flexible(!headers)
                .has_headers(headers)
                .from_path(path)
                .map_err(|e| refuse(format!("cannot be read ({e})")))
        };
        let mut rdr = open(true)?;
        let header = rdr
            .headers()
            .map_err(|e| refuse(format!("its header cannot be read ({e})")))?
            .clone();
        let cols = columns(path, &header, schema)?;
        let mut index = KeyMapBuilder::default();
        let mut rec = csv::StringRecord::new();
        let mut collisions = 0;
        let mut collided = |_, (at, digest): (u64, u128), _| {
            collisions += 1;
            (at | NO_DIGEST, digest)
        };
        loop {
            let pos = rdr.position().byte();
            match rdr.read_record(&mut rec) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    return Err(refuse(format!("line {line}: {e} (a torn or damaged file)")).into());
                }
            }
            let Some(sid) = rec.get(cols.source_id).filter(|s| !s.is_empty()) else {
                continue;
            };
            let digest = cols.layout.of_record(sid, &rec);
            index.push(h64(sid), (pos, digest), &mut collided);
        }
        let index = index.finish(&mut collided);
        Ok(HeldFile {
            path: path.to_path_buf(),
            index,
            cols,
            // Reads single records at known offsets: no header handling.
            rdr: open(false)?,
            rec,
            collisions,
        })
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether the export has a column for this metadata key.
    pub fn has_metadata_column(&self, key: &str) -> bool {
        self.cols.metadata.contains_key(key)
    }

    /// Where the comparable fields are (for a row's digest).
    pub fn layout(&self) -> &Layout {
        &self.cols.layout
    }

    /// Whether the export shows `sid`, and its digest when usable: Some(None)
    /// when it does but the digest cannot speak for it.
    pub fn digest(&self, sid: &str) -> Option<Option<u128>> {
        let (at, digest) = self.index.get(h64(sid))?;
        Some((at & NO_DIGEST == 0).then_some(digest))
    }

    /// Whether the export has a comparable column for `field` (`name`,
    /// `address.city`, `metadata.KEY`): its value can be read back.
    pub fn readable(&self, field: &str) -> bool {
        match field.strip_prefix("metadata.") {
            Some(key) => self.cols.layout.metadata.iter().any(|(k, _, _)| k == key),
            None => {
                crate::fields::by_path(field).is_some_and(|(i, _)| self.cols.standard[i].is_some())
            }
        }
    }

    /// The customer `sid` as exported; None when the export lacks it.
    pub fn get(&mut self, sid: &str) -> Result<Option<Held>> {
        let Some((offset, _)) = self.index.get(h64(sid)) else {
            return Ok(None);
        };
        let offset = offset & !NO_DIGEST;
        let mut pos = csv::Position::new();
        pos.set_byte(offset);
        self.rdr.seek(pos)?;
        if !self.rdr.read_record(&mut self.rec)? {
            return Ok(None);
        }
        if self.rec.get(self.cols.source_id) != Some(sid) {
            // Two source ids share a 64-bit key: find this one the slow way.
            return self.scan(sid);
        }
        Ok(Some(self.held()))
    }

    fn scan(&mut self, sid: &str) -> Result<Option<Held>> {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(&self.path)?;
        while rdr.read_record(&mut self.rec)? {
            if self.rec.get(self.cols.source_id) == Some(sid) {
                return Ok(Some(self.held()));
            }
        }
        Ok(None)
    }

    fn held(&self) -> Held {
        let cell = |c: Option<usize>| c.map(|c| self.rec.get(c).unwrap_or("").to_string());
        let mut standard: [Option<String>; 11] = Default::default();
        for (i, c) in self.cols.standard.iter().enumerate() {
            standard[i] = cell(*c);
        }
        Held {
            standard,
            updated_at: self
                .cols
                .updated_at
                .and_then(|c| self.rec.get(c))
                .and_then(|t| t.trim().parse().ok()),
            metadata: self
                .cols
                .metadata
                .iter()
                .map(|(k, c)| (k.clone(), self.rec.get(*c).unwrap_or("").to_string()))
                .collect(),
        }
    }

    /// Every source id in the export, in file order (a pass of its own).
    pub fn each_source_id(&self, mut f: impl FnMut(&str)) -> Result<()> {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(&self.path)?;
        let mut rec = csv::StringRecord::new();
        while rdr.read_record(&mut rec)? {
            if let Some(s) = rec.get(self.cols.source_id).filter(|s| !s.is_empty()) {
                f(s);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_found_by_human_readable_names_and_metadata_by_defined_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.csv");
        std::fs::write(
            &p,
            "\u{feff}Source ID,Name,Address City,Updated At,metadata.tier,Metadata: Big Spender,metadata.other\n\
             a,Ann,Oslo,2026-01-02T03:04:05.678Z,gold,true,x\n\
             b,,,,,,\n",
        )
        .unwrap();
        let schema: CustomerSchema = serde_json::from_value(serde_json::json!({
            "properties": {"tier": {"type": "string"}, "big_spender": {"type": "boolean"}}
        }))
        .unwrap();
        let mut f = HeldFile::open(&p, &schema).unwrap();
        assert_eq!(f.len(), 2);
        let a = f.get("a").unwrap().unwrap();
        assert_eq!(a.standard[0].as_deref(), Some("Ann"));
        assert_eq!(a.standard[7].as_deref(), Some("Oslo"));
        assert_eq!(a.standard[1], None, "no email column: unreadable");
        assert_eq!(a.metadata["tier"], "gold");
        assert_eq!(a.metadata["big_spender"], "true");
        assert!(!f.has_metadata_column("other"), "not defined in the schema");
        assert!(a.updated_at.is_some());
        let b = f.get("b").unwrap().unwrap();
        assert_eq!(b.standard[0].as_deref(), Some(""));
        assert!(f.get("c").unwrap().is_none());
    }
}
