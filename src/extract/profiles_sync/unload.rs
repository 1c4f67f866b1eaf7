//! The files of an unload: every file below a table's folder is read as a
//! part, skipped by name as a marker, or refused by name. Warehouses nest
//! parts in Hive-style `key=value/` folders (Spark, Databricks) and name
//! them their own way (`0000_part_00.gz`, `data_0_0_0.snappy.parquet`,
//! `part-00000-….c000.snappy.parquet`); a part without a known extension is
//! read by what its bytes are (`PAR1`, gzip, else CSV).

use crate::error::UsageError;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// What an unload's folder held, by kind, for the summary.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    pub parts: Vec<PathBuf>,
    /// `_SUCCESS`, `_committed_*`, `.crc` files, manifests: any name that
    /// starts with `_` or `.` (Hadoop's and Spark's convention for files
    /// that are not data).
    pub markers: Vec<PathBuf>,
    /// Files `--ignore` matched.
    pub ignored: Vec<PathBuf>,
}

/// A file name's kind: Some(true) a part, Some(false) a marker, None unknown.
fn kind(name: &str) -> Option<bool> {
    let n = name.to_ascii_lowercase();
    if n.starts_with('_') || n.starts_with('.') {
        return Some(false);
    }
    let part = n.ends_with(".parquet")
        || n.ends_with(".parq")
        || n.ends_with(".csv")
        || n.ends_with(".csv.gz")
        || n.ends_with(".gz")
        // No extension: `0000_part_00`, `data_0_0_0`, `part-00000`.
        || !n.contains('.');
    part.then_some(true)
}

/// Every file below `folder`, recursively, sorted by path.
fn walk(folder: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(folder).map_err(|e| {
        UsageError::new(format!(
            "{}: cannot read the folder ({e})",
            folder.display()
        ))
    })?;
    for e in entries {
        let p = e
            .map_err(|e| {
                UsageError::new(format!(
                    "{}: cannot read the folder ({e})",
                    folder.display()
                ))
            })?
            .path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// A table's folder, found case-insensitively, and what is in it: every
/// file a part, a marker, ignored, or an error naming it.
pub fn inventory(dir: &Path, table: &str, ignore: &[glob::Pattern]) -> Result<Inventory> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        UsageError::new(format!(
            "{}: cannot read the unload folder ({e})",
            dir.display()
        ))
    })?;
    let folder = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.eq_ignore_ascii_case(table))
        })
        .ok_or_else(|| {
            UsageError::new(format!(
                "{}: no {table}/ folder; unload Profiles Sync's {table} table there (docs/profiles-sync.md)",
                dir.display()
            ))
        })?;
    let mut files = Vec::new();
    walk(&folder, &mut files)?;
    files.sort();
    let mut inv = Inventory::default();
    let mut unknown = Vec::new();
    for p in files {
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if ignore
            .iter()
            .any(|g| g.matches_path(rel) || g.matches(name))
        {
            inv.ignored.push(p);
            continue;
        }
        match kind(name) {
            Some(true) => inv.parts.push(p),
            Some(false) => inv.markers.push(p),
            None => unknown.push(p),
        }
    }
    if !unknown.is_empty() {
        return Err(UsageError::new(format!(
            "{}: {} file(s) that are neither a part (.parquet, .csv, .csv.gz, .gz, or a name without an extension) nor a marker (a name starting with _ or .): {}; move them out, or pass --ignore GLOB (e.g. --ignore '*.json')",
            folder.display(),
            unknown.len(),
            unknown.iter().take(5).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
        .into());
    }
    if inv.parts.is_empty() {
        return Err(UsageError::new(format!(
            "{}: no part files (*.parquet, *.csv, *.csv.gz, *.gz, or part names without an extension)",
            folder.display()
        ))
        .into());
    }
    Ok(inv)
}

/// What a part's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Parquet,
    Gzip,
    Text,
}

pub fn sniff(path: &Path) -> Result<Content> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| UsageError::new(format!("{}: cannot read ({e})", path.display())))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).unwrap_or(0);
    Ok(match &magic[..n] {
        [b'P', b'A', b'R', b'1'] => Content::Parquet,
        [0x1f, 0x8b, ..] => Content::Gzip,
        _ => Content::Text,
    })
}

/// The content a part's name promises, when it promises one.
pub fn named(path: &Path) -> Option<Content> {
    let n = path.file_name()?.to_str()?.to_ascii_lowercase();
    if n.ends_with(".parquet") || n.ends_with(".parq") {
        Some(Content::Parquet)
    } else if n.ends_with(".gz") {
        Some(Content::Gzip)
    } else if n.ends_with(".csv") {
        Some(Content::Text)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_a_part_a_marker_ignored_or_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("USER_TRAITS");
        std::fs::create_dir_all(t.join("dt=2024-01-02/hour=03")).unwrap();
        for f in [
            "dt=2024-01-02/hour=03/part-00000-1.c000.snappy.parquet",
            "dt=2024-01-02/_SUCCESS",
            "dt=2024-01-02/.part-00000-1.c000.snappy.parquet.crc",
            "0000_part_00",
            "0001_part_00.gz",
            "data_0_0_0.csv.gz",
            "_committed_123",
            "manifest.json",
        ] {
            std::fs::write(t.join(f), "x").unwrap();
        }
        let e = inventory(d.path(), "user_traits", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("manifest.json"), "{e}");
        let ignore = [glob::Pattern::new("*.json").unwrap()];
        let inv = inventory(d.path(), "user_traits", &ignore).unwrap();
        let names = |v: &[PathBuf]| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(&inv.parts),
            [
                "0000_part_00",
                "0001_part_00.gz",
                "data_0_0_0.csv.gz",
                "part-00000-1.c000.snappy.parquet"
            ]
        );
        assert_eq!(inv.markers.len(), 3);
        assert_eq!(names(&inv.ignored), ["manifest.json"]);
    }
}
