//! `load.export.json`: which export is kept (or under way) beside the
//! customers file, what it holds, and when a delta of it may stand in for a
//! full export.

use super::{Kind, Policy};
use crate::files;
use crate::state::{self, Beside};
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// `load.export.json`: the export under way (`pending`) or the one whose
/// file is kept (`downloaded`), and what the kept file holds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub export_id: String,
    /// `pending` until the file is downloaded, then `downloaded`.
    pub state: String,
    pub fields: Vec<String>,
    /// The project (API host and application id) it was made in.
    #[serde(default)]
    pub target: String,
    /// A pending delta's `$after`.
    #[serde(default)]
    pub after: Option<String>,
    /// The kept file: what the last applied export's `created_at` says,
    /// minus [`SNAPSHOT_MARGIN`]: a delta asks for updates after it.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// The kept file: the `$after` of the next delta of customers created
    /// since (`created_at`), when it is not `snapshot`: a read-back brings
    /// the updated ones up to date alone (a customer another writer
    /// creates has `updated_at: null` until it is updated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_snapshot: Option<String>,
    /// The kept file: when its last full export was made.
    #[serde(default)]
    pub full_at: Option<String>,
    /// `full` or `delta` (of `delta_rows` customers).
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub delta_rows: u64,
    #[serde(default)]
    pub at: String,
    /// While `pending`: the kept file's own export id and state, which an
    /// export that ends without a usable file gives back (so no export is
    /// left pending that no rerun can finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_id: Option<String>,
    /// A pending delta's filter field: `updated_at` (empty) or `created_at`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
    /// Why deltas of this project cannot be trusted (a delta lacked
    /// customers segsync had confirmed since the kept export: the filter
    /// is read otherwise than sent): every plan then exports in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lossy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_state: Option<String>,
    /// A delta of this project held every customer segsync had confirmed
    /// since its `$after` (one that day): the filter is read as sent, and
    /// a delta with nothing to check it by may be trusted.
    #[serde(default)]
    pub proven: bool,
}

impl Record {
    /// This record with a new export `id` pending (asking `after`), the
    /// kept file's own id and state remembered.
    pub(super) fn pending(
        &self,
        id: &str,
        fields: &[&str],
        target: &str,
        since: Option<&super::Since>,
    ) -> Record {
        let (kept_id, kept_state) = if self.state == "pending" {
            (self.kept_id.clone(), self.kept_state.clone())
        } else {
            (Some(self.export_id.clone()), Some(self.state.clone()))
        };
        Record {
            export_id: id.to_string(),
            state: "pending".into(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
            target: target.to_string(),
            after: since.map(|s| s.after.clone()),
            by: since.map(|s| s.by.to_string()).unwrap_or_default(),
            at: state::now(),
            kept_id,
            kept_state,
            ..self.clone()
        }
    }

    /// What a pending delta asked, to poll it again.
    pub(super) fn since(&self) -> Option<super::Since> {
        let after = self.after.clone()?;
        let by = if self.by == "created_at" {
            "created_at"
        } else {
            "updated_at"
        };
        Some(super::Since { by, after })
    }

    /// The kept file's record again, the pending export given up (it ended
    /// without a file that can be kept).
    pub(super) fn given_up(&self) -> Record {
        if self.state != "pending" {
            return self.clone();
        }
        Record {
            export_id: self.kept_id.clone().unwrap_or_default(),
            state: self.kept_state.clone().unwrap_or_default(),
            after: None,
            by: String::new(),
            kept_id: None,
            kept_state: None,
            ..self.clone()
        }
    }

    /// An export an earlier run left pending, which this one may poll
    /// again: same project, same fields, and a delta only when a delta is
    /// allowed (`--full-export` asks for a full one).
    pub(super) fn resumable(&self, fields: &[&str], p: &Policy<'_>) -> bool {
        self.state == "pending"
            && !self.export_id.is_empty()
            && self.target == p.target
            && self
                .fields
                .iter()
                .map(String::as_str)
                .eq(fields.iter().copied())
            && !(p.force_full && self.after.is_some())
    }
}

/// How far before an export's `created_at` the next delta starts: an update
/// Voucherify stamped just before the export began may not be in its file
/// (the docs do not say when the snapshot is taken), so the next delta asks
/// again for a minute's worth. Both stamps are Voucherify's own clock.
pub const SNAPSHOT_MARGIN: Duration = Duration::from_secs(60);

pub fn read_record(meta_path: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(meta_path).ok()?).ok()
}

pub(super) fn write_record(meta_path: &Path, r: &Record) -> Result<()> {
    files::write_atomic(meta_path, &serde_json::to_vec_pretty(r)?)
}

/// The `$after` of a delta the kept file allows, if it allows one.
pub(super) fn delta_after(
    prev: &Record,
    files: &Beside,
    fields: &[&str],
    p: &Policy<'_>,
) -> Option<String> {
    let fresh = prev
        .full_at
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| {
            let age = jiff::Timestamp::now().as_millisecond() - t.as_millisecond();
            age >= 0 && (age as u128) < p.full_every.as_millis()
        });
    let same = prev
        .fields
        .iter()
        .map(String::as_str)
        .eq(fields.iter().copied());
    if let Some(why) = prev.lossy.as_ref().filter(|_| prev.target == p.target) {
        crate::ui::info(format!(
            "Voucherify's customer export: a full export, as every export of this project ({why})"
        ));
        return None;
    }
    (!p.force_full
        && prev.state == "downloaded"
        && same
        && prev.target == p.target
        && fresh
        && files.export.is_file())
    .then(|| prev.snapshot.clone())?
}

/// The kept export's kind, when the policy reuses it as it is: the export
/// named, downloaded for these fields in this project, and young enough.
pub(super) fn reusable(
    prev: &Record,
    files: &Beside,
    fields: &[&str],
    p: &Policy<'_>,
) -> Option<Kind> {
    let (id, max_age) = p.reuse.as_ref()?;
    let age_ms = prev
        .at
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| jiff::Timestamp::now().as_millisecond() - t.as_millisecond())?;
    // `at` is rounded to the second, so it may read up to half a second
    // ahead of now.
    let young = (-1000..=max_age.as_millis() as i64).contains(&age_ms);
    let same = prev
        .fields
        .iter()
        .map(String::as_str)
        .eq(fields.iter().copied());
    (prev.export_id == *id
        && !id.is_empty()
        && prev.state == "downloaded"
        && prev.target == p.target
        && same
        && young
        && files.export.is_file())
    .then_some(match prev.kind.as_str() {
        "delta" => Kind::Delta {
            rows: prev.delta_rows,
        },
        _ => Kind::Full,
    })
}

/// The margin in force: [`SNAPSHOT_MARGIN`], or `SEGSYNC_SNAPSHOT_MARGIN_SECS`
/// (tests that rerun within a minute set it lower).
fn margin() -> Duration {
    std::env::var("SEGSYNC_SNAPSHOT_MARGIN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(SNAPSHOT_MARGIN, Duration::from_secs)
}

/// The next delta's `$after`: the export's `created_at` less the margin.
pub(super) fn snapshot_of(created_at: &str) -> Option<String> {
    let t: jiff::Timestamp = created_at.parse().ok()?;
    let back = jiff::SignedDuration::try_from(margin()).ok()?;
    Some(
        t.checked_sub(back)
            .ok()?
            .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
    )
}
