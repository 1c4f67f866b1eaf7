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

/// `profiles.missing.csv` beside a profiles file: every profile extract
/// could not read (Segment answered 404), what it asked and what Segment
/// answered.
pub fn missing(profiles: &Path) -> PathBuf {
    parent_dir(profiles).join("profiles.missing.csv")
}

/// `transform.manifest.json` beside a customers file.
pub fn manifest(customers: &Path) -> PathBuf {
    parent_dir(customers).join("transform.manifest.json")
}

/// `edits.csv` beside a customers file: a person's hand edits, kept as
/// overrides every transform applies.
pub fn edits(customers: &Path) -> PathBuf {
    parent_dir(customers).join("edits.csv")
}

/// `transform.written.csv` beside a customers file: a copy of what
/// transform wrote, which tells a person's edits from Segment's changes.
pub fn written(customers: &Path) -> PathBuf {
    parent_dir(customers).join("transform.written.csv")
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

/// Every file `plan` and `load` keep beside a customers file, named once
/// (callers pass this around instead of deriving paths again).
#[derive(Debug, Clone)]
pub struct Beside {
    /// The folder they share (the import files go there too).
    pub dir: PathBuf,
    pub customers: PathBuf,
    pub ledger: PathBuf,
    pub report: PathBuf,
    pub rejects: PathBuf,
    /// `load.plan.csv`, `load.plan.json`, `load.orphans.csv`.
    pub plan: PathBuf,
    pub plan_meta: PathBuf,
    pub orphans: PathBuf,
    /// `load.export.csv` and `load.export.json` (the export's id and time):
    /// what a plan compares with, kept for the next plan's delta.
    pub export: PathBuf,
    pub export_meta: PathBuf,
    /// `load.export.delta.csv`: the last delta export, as downloaded.
    pub export_delta: PathBuf,
    /// `load.export.created.csv`: the last delta of customers created since.
    pub export_created: PathBuf,
    /// `load.export.ids.csv`/`.json`: the source-id export that tells the
    /// import who exists, kept apart from the plan's.
    pub export_ids: PathBuf,
    pub export_ids_meta: PathBuf,
    /// `load.verify.json`: what the last read-back found.
    pub verify: PathBuf,
}

impl Beside {
    /// These files with every one a command writes moved into `dir`
    /// (`load --dry-run`): the customers file and the ledger stay, and the
    /// kept export (with its record) is copied, so a delta of it still does.
    pub fn scratch(&self, dir: &Path) -> anyhow::Result<Beside> {
        let to = |p: &Path| dir.join(p.file_name().unwrap_or_default());
        for kept in [&self.export, &self.export_meta] {
            if kept.is_file() {
                std::fs::copy(kept, to(kept)).map_err(|e| {
                    anyhow::anyhow!("cannot copy {} for the dry run: {e}", kept.display())
                })?;
            }
        }
        Ok(Beside {
            dir: dir.to_path_buf(),
            customers: self.customers.clone(),
            ledger: self.ledger.clone(),
            report: to(&self.report),
            rejects: to(&self.rejects),
            plan: to(&self.plan),
            plan_meta: to(&self.plan_meta),
            orphans: to(&self.orphans),
            export: to(&self.export),
            export_meta: to(&self.export_meta),
            export_delta: to(&self.export_delta),
            export_created: to(&self.export_created),
            export_ids: to(&self.export_ids),
            export_ids_meta: to(&self.export_ids_meta),
            verify: to(&self.verify),
        })
    }

    pub fn of(customers: &Path) -> Beside {
        let dir = parent_dir(customers);
        Beside {
            dir: dir.clone(),
            customers: customers.to_path_buf(),
            ledger: dir.join("load.ledger.ndjson"),
            report: dir.join("load-report.csv"),
            rejects: dir.join("load.rejects.csv"),
            plan: dir.join("load.plan.csv"),
            plan_meta: dir.join("load.plan.json"),
            orphans: dir.join("load.orphans.csv"),
            export: dir.join("load.export.csv"),
            export_meta: dir.join("load.export.json"),
            export_delta: dir.join("load.export.delta.csv"),
            export_created: dir.join("load.export.created.csv"),
            export_ids: dir.join("load.export.ids.csv"),
            export_ids_meta: dir.join("load.export.ids.json"),
            verify: dir.join("load.verify.json"),
        }
    }
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
