//! The data directory: every file name the pipeline uses and every state
//! format it keeps (extract's checkpoint, transform's manifest, load's
//! ledger), each with a format version. Stages ask this module where a file
//! is; no stage imports another stage to learn a name.
//!
//! Names are derived from the file a stage reads or writes (`--in`/`--out`),
//! so a stage pointed at another directory keeps its state beside its files.

pub mod checkpoint;
pub mod ledger;
pub mod lock;
pub mod manifest;

use crate::files::parent_dir;
use std::path::{Path, PathBuf};

pub const PROFILES: &str = "profiles.ndjson";
pub const CUSTOMERS: &str = "customers.csv";
pub const REJECTED: &str = "rejected.csv";

/// `profiles.ndjson` in the data directory.
pub fn profiles(data_dir: &Path) -> PathBuf {
    data_dir.join(PROFILES)
}

/// `customers.csv` in the data directory.
pub fn customers(data_dir: &Path) -> PathBuf {
    data_dir.join(CUSTOMERS)
}

/// `rejected.csv` beside a customers file.
pub fn rejected(customers: &Path) -> PathBuf {
    parent_dir(customers).join(REJECTED)
}

/// The file extract appends to until the listing is exhausted.
pub fn partial(profiles: &Path) -> PathBuf {
    let mut s = profiles.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// `extract.checkpoint.json` beside a profiles file.
pub fn checkpoint(profiles: &Path) -> PathBuf {
    parent_dir(profiles).join("extract.checkpoint.json")
}

/// `transform.manifest.json` beside a customers file.
pub fn manifest(customers: &Path) -> PathBuf {
    parent_dir(customers).join("transform.manifest.json")
}

/// `transform.warnings.csv` beside a customers file.
pub fn warnings(customers: &Path) -> PathBuf {
    parent_dir(customers).join("transform.warnings.csv")
}

/// `load.ledger.ndjson` beside a customers file.
pub fn ledger(customers: &Path) -> PathBuf {
    parent_dir(customers).join("load.ledger.ndjson")
}

/// `load-report.csv` beside a customers file.
pub fn report(customers: &Path) -> PathBuf {
    parent_dir(customers).join("load-report.csv")
}

/// `load.rejects.csv` beside a customers file.
pub fn rejects(customers: &Path) -> PathBuf {
    parent_dir(customers).join("load.rejects.csv")
}

/// `runs.ndjson` in the data directory: a line per run of a writing command.
pub fn runs(data_dir: &Path) -> PathBuf {
    data_dir.join("runs.ndjson")
}

/// Now as RFC 3339 (seconds), for the timestamps state files carry.
/// Now, to the millisecond (a confirmation is compared with Voucherify's
/// `updated_at`, which has milliseconds).
pub fn now_ms() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
