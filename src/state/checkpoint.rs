//! `extract.checkpoint.json`: where an unfinished extraction resumes.

use crate::files::AtomicFile;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

pub const VERSION: u32 = 1;

/// What the checkpoint holds. Small and readable on purpose.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Checkpoint {
    pub version: u32,
    pub space_id: String,
    pub api_url: String,
    pub started_at: String,
    pub updated_at: String,
    /// The listing is exhausted and `profiles.ndjson` holds the result.
    pub complete: bool,
    pub incremental: bool,
    /// Listing cursor of the first page not yet fully written (None: the first page).
    pub cursor: Option<String>,
    pub pages_committed: u64,
    /// Length of the partial file when `cursor` was committed.
    pub offset: u64,
    /// Complete lines before `offset`.
    pub lines: u64,
    /// Profiles of later pages already written before `offset`.
    pub ahead: Vec<String>,
    /// Profiles listed but gone (404) when their traits were read.
    pub missing: Vec<String>,
    pub reused: u64,
    pub requests: u64,
    /// Listing pass: 1 is the first walk of the list; later passes re-list
    /// the space to find profiles that activity moved past the cursor.
    #[serde(default = "one")]
    pub pass: u32,
    /// Profiles found by re-listing (passes after the first), in all.
    #[serde(default)]
    pub found_by_relisting: u64,
    /// External-id types extract asked for (what `source_id` can come from).
    #[serde(default)]
    pub source_id_types: Vec<String>,
    /// The traits extract asked for (`include=`), when not all.
    #[serde(default)]
    pub traits: Vec<String>,
    /// Every trait and id was copied (`--all-traits`).
    #[serde(default)]
    pub all_traits: bool,
    /// Profiles listed so far (or ids of the `--ids` file read), each once.
    #[serde(default)]
    pub listed: u64,
    /// Where the profiles were listed from: empty for Segment's listing,
    /// `ids:TYPE:HASH` for `--ids FILE` (its id type and content).
    #[serde(default)]
    pub source: String,
}

fn one() -> u32 {
    1
}

/// Read a checkpoint; None when there is none.
pub fn read(path: &Path) -> Result<Option<Checkpoint>> {
    match std::fs::read(path) {
        // A damaged checkpoint is no rerun's to fix: exit 2.
        Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
            crate::error::UsageError::new(format!(
                "{}: not a segsync checkpoint ({e}); run `segsync extract --fresh` (or delete it)",
                path.display()
            ))
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Replace the checkpoint atomically, stamping `updated_at`.
pub fn save(path: &Path, cp: &mut Checkpoint) -> Result<()> {
    cp.updated_at = super::now();
    let mut f = AtomicFile::create(path)?;
    serde_json::to_writer_pretty(&mut f, cp)?;
    f.write_all(b"\n")?;
    f.commit()
}
