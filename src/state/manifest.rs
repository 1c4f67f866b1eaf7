//! `transform.manifest.json`: what transform wrote, so a hand edit of
//! `customers.csv` can be told from transform's own output.

use crate::files;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    /// Absent in files written before the field existed: read as version 1.
    #[serde(default = "one")]
    pub version: u32,
    pub written_at: String,
    pub input: String,
    pub source_id_types: Vec<String>,
    /// Fingerprint of the effective mapping that produced the file.
    #[serde(default)]
    pub mapping: String,
    /// The mapping file it was read from, if any.
    #[serde(default)]
    pub mapping_file: Option<String>,
    pub profiles: u64,
    pub customers: u64,
    pub rejected: u64,
    pub warnings: u64,
    /// SHA-256 of customers.csv as written. While a run is replacing the file,
    /// the previous hash is listed too, so a crash between the two renames is
    /// not mistaken for a hand edit.
    pub customers_sha256: Vec<String>,
}

fn one() -> u32 {
    1
}

/// The manifest beside `customers`, if there is a readable one.
pub fn read(customers: &Path) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(super::manifest(customers)).ok()?).ok()
}

pub fn write(customers: &Path, m: &Manifest) -> Result<()> {
    files::write_atomic(&super::manifest(customers), &serde_json::to_vec_pretty(m)?)
}

/// Whether `customers` differs from what transform last wrote there.
/// None: no file. Some(true): edited (or not written by transform).
pub fn edited_since_transform(customers: &Path) -> Result<Option<bool>> {
    if !customers.exists() {
        return Ok(None);
    }
    let path = super::manifest(customers);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(true)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        crate::error::UsageError::new(format!(
            "{} is damaged ({e}), so it cannot tell whether {} was edited by hand: `segsync transform --force` writes both again (overwriting any edit), or delete it to treat the file as written by hand",
            path.display(),
            customers.display()
        ))
    })?;
    let sha = files::sha256_file(customers)?;
    Ok(Some(!m.customers_sha256.contains(&sha)))
}
