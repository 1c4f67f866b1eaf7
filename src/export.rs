//! Voucherify's customer export, which both `plan` (what Voucherify holds)
//! and `load --method import` (who exists) read: made (`POST /v1/exports`),
//! polled until its deadline, downloaded straight to `load.export.csv`
//! beside the customers file, and its source ids read back. One owner, below
//! both.

use crate::api::voucherify::VoucherifyClient;
use crate::files;
use crate::state::{self, Beside};
use crate::ui;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a customer export ended.
pub enum Exported {
    /// The file, saved as `load.export.csv`.
    File(PathBuf),
    /// `DONE` without a file, and the project holds no customer.
    Empty,
    /// Who exists is unknown, and why.
    Unknown(String),
}

/// How long to wait before the next look at an export that has run for
/// `elapsed`: a share of the time already waited (so a long export costs
/// few polls: 15 for one minute, 20 for five, 25 for fifteen), never under
/// half a second nor over two minutes; the first look after 0.2 s, so a
/// small export (a delta) is seen at once. Voucherify documents no pace for
/// export polls; its Sandbox projects allow 100 calls an hour. (Under a
/// floor of 0.2 s throughout, the first second alone cost five polls.)
pub fn next_poll(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_millis(200) {
        return Duration::from_millis(200);
    }
    elapsed
        .mul_f64(0.4)
        .clamp(Duration::from_millis(500), Duration::from_secs(120))
}

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_state: Option<String>,
}

impl Record {
    /// This record with a new export `id` pending (asking `after`), the
    /// kept file's own id and state remembered.
    fn pending(&self, id: &str, fields: &[&str], target: &str, after: Option<String>) -> Record {
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
            after,
            at: state::now(),
            kept_id,
            kept_state,
            ..self.clone()
        }
    }

    /// The kept file's record again, the pending export given up (it ended
    /// without a file that can be kept).
    fn given_up(&self) -> Record {
        if self.state != "pending" {
            return self.clone();
        }
        Record {
            export_id: self.kept_id.clone().unwrap_or_default(),
            state: self.kept_state.clone().unwrap_or_default(),
            after: None,
            kept_id: None,
            kept_state: None,
            ..self.clone()
        }
    }

    /// An export an earlier run left pending, which this one may poll
    /// again: same project, same fields, and a delta only when a delta is
    /// allowed (`--full-export` asks for a full one).
    fn resumable(&self, fields: &[&str], p: &Policy<'_>) -> bool {
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

fn write_record(meta_path: &Path, r: &Record) -> Result<()> {
    files::write_atomic(meta_path, &serde_json::to_vec_pretty(r)?)
}

/// What a plan's export may be: a delta of the kept file, or a full one.
pub struct Policy<'a> {
    /// The project, as the ledger names it: a kept file of another is not used.
    pub target: &'a str,
    /// A full export again when the kept one's is older than this.
    pub full_every: Duration,
    /// A full export whatever is kept (`--full-export`).
    pub force_full: bool,
    /// Use the kept export as it is, without a call, when it is this one
    /// (by id) and younger than this.
    pub reuse: Option<(String, Duration)>,
}

/// Which kind of export a plan compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Full,
    /// The customers updated since the kept export's snapshot, applied to it.
    Delta {
        rows: u64,
    },
}

/// The `$after` of a delta the kept file allows, if it allows one.
fn delta_after(prev: &Record, files: &Beside, fields: &[&str], p: &Policy<'_>) -> Option<String> {
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
fn reusable(prev: &Record, files: &Beside, fields: &[&str], p: &Policy<'_>) -> Option<Kind> {
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

/// The export a plan compares with: a delta applied to the kept file when
/// it is fresh enough, else a full one. Returns the outcome, the calls it
/// took and its kind.
///
/// An export an earlier run left pending is polled again by its id, but it
/// was made before whatever that run (and any since) sent after it: once it
/// is kept, a delta from its snapshot brings it up to date (world 31 of the
/// simulation: a run stopped by the monthly quota left both an export and
/// a batch; the rerun confirmed the batch, compared with the older export,
/// and sent the batch's customers again).
pub async fn export_held(
    client: &VoucherifyClient,
    files: &Beside,
    fields: &[&str],
    deadline: Duration,
    policy: &Policy<'_>,
) -> Result<(Exported, u64, Kind)> {
    let mut prev = read_record(&files.export_meta).unwrap_or_default();
    if prev.state == "pending" && !prev.resumable(fields, policy) {
        // Another project's, other fields, or a delta where a full export
        // is asked for: not this plan's to poll.
        ui::info(format!(
            "Voucherify's customer export {} that an earlier run left is not for this plan (another project, other fields, or a delta where a full export is asked); a new one",
            prev.export_id
        ));
        prev = prev.given_up();
        write_record(&files.export_meta, &prev)?;
    }
    let resumed = prev.state == "pending";
    let (out, calls, kind) = export_once(client, files, fields, deadline, policy, prev).await?;
    let (out, calls, kind) = match out {
        // An export an earlier run left that ends without a file to keep
        // (its snapshot may be of a project that held nothing then): given
        // up, and a new one made now, once.
        Exported::Unknown(why) if resumed => {
            ui::info(format!("{why}; it was an earlier run's: a new export"));
            let kept = read_record(&files.export_meta).unwrap_or_default();
            let (out, more, kind) =
                export_once(client, files, fields, deadline, policy, kept).await?;
            return Ok((out, calls + more, kind));
        }
        other => (other, calls, kind),
    };
    if !resumed || !matches!(out, Exported::File(_)) {
        return Ok((out, calls, kind));
    }
    ui::info("Voucherify's customer export an earlier run started is older than what was sent since: a delta from it brings it up to date");
    let again = Policy {
        reuse: None,
        force_full: false,
        ..*policy
    };
    let kept = read_record(&files.export_meta).unwrap_or_default();
    let (out, more, kind) = export_once(client, files, fields, deadline, &again, kept).await?;
    Ok((out, calls + more, kind))
}

/// [`export_held`] once, from the record `prev` of `load.export.json`.
async fn export_once(
    client: &VoucherifyClient,
    files: &Beside,
    fields: &[&str],
    deadline: Duration,
    policy: &Policy<'_>,
    prev: Record,
) -> Result<(Exported, u64, Kind)> {
    if let Some(kind) = reusable(&prev, files, fields, policy) {
        return Ok((Exported::File(files.export.clone()), 0, kind));
    }
    let after = match prev.state.as_str() {
        // A stopped run's export (`export_held` checked it is this plan's),
        // polled again with what it asked.
        "pending" => prev.after.clone(),
        _ => delta_after(&prev, files, fields, policy),
    };
    let Some(after) = after else {
        let (out, calls) = run(client, files, fields, deadline, None, &prev, policy.target).await?;
        return Ok((out.into_exported(files), calls, Kind::Full));
    };
    let (out, calls) = run(
        client,
        files,
        fields,
        deadline,
        Some(after),
        &prev,
        policy.target,
    )
    .await?;
    match out {
        Delta::Applied(rows) => Ok((
            Exported::File(files.export.clone()),
            calls,
            Kind::Delta { rows },
        )),
        // The delta cannot be applied (no file, another header): a full one.
        Delta::Full(why) => {
            ui::info(format!(
                "Voucherify's customer export: {why}; a full export instead"
            ));
            let fresh = Record {
                state: String::new(),
                ..prev
            };
            let (out, more) =
                run(client, files, fields, deadline, None, &fresh, policy.target).await?;
            Ok((out.into_exported(files), calls + more, Kind::Full))
        }
        Delta::Done(e) => Ok((e, calls, Kind::Full)),
    }
}

/// Export the customers' `fields` in full to `load.export.ids.csv` (who
/// exists, for the import): also returns the calls it took.
pub async fn export(
    client: &VoucherifyClient,
    files: &Beside,
    fields: &[&str],
    deadline: Duration,
) -> Result<(Exported, u64)> {
    let ids = Beside {
        export: files.export_ids.clone(),
        export_meta: files.export_ids_meta.clone(),
        ..files.clone()
    };
    let prev = read_record(&ids.export_meta).unwrap_or_default();
    let (out, calls) = run(client, &ids, fields, deadline, None, &prev, "").await?;
    Ok((out.into_exported(&ids), calls))
}

/// How one export run ended.
enum Delta {
    /// A full export's outcome.
    Done(Exported),
    /// A delta of this many customers applied to the kept file.
    Applied(u64),
    /// A delta that cannot be applied, and why.
    Full(String),
}

impl Delta {
    fn into_exported(self, files: &Beside) -> Exported {
        match self {
            Delta::Done(e) => e,
            Delta::Applied(_) => Exported::File(files.export.clone()),
            Delta::Full(why) => Exported::Unknown(why),
        }
    }
}

/// Make (or resume) one export, poll it, and keep its file: in full as
/// `load.export.csv`, or, with `after`, as `load.export.delta.csv` applied
/// to it. An export an earlier run left unfinished is polled again by its
/// id, not started anew.
async fn run(
    client: &VoucherifyClient,
    files: &Beside,
    fields: &[&str],
    deadline: Duration,
    after: Option<String>,
    prev: &Record,
    target: &str,
) -> Result<(Delta, u64)> {
    let meta_path = &files.export_meta;
    let mut calls = 0;
    let mut resumed = (prev.state == "pending" && prev.after == after)
        .then(|| prev.export_id.clone())
        .filter(|id| !id.is_empty());
    let started = tokio::time::Instant::now();
    let (id, state, created_at) = loop {
        let (id, created_at) = match resumed.take() {
            Some(id) => {
                ui::info(format!("Voucherify's customer export {id}, which an earlier run started, is polled again"));
                (id, None)
            }
            None => {
                calls += 1;
                let (id, created_at) = client.export_customers(fields, after.as_deref()).await?;
                write_record(meta_path, &prev.pending(&id, fields, target, after.clone()))?;
                (id, created_at)
            }
        };
        match poll(client, &id, started, deadline, &mut calls).await {
            // The export an earlier run started is gone: start another.
            Err(e) if calls == 1 && is_not_found(&e) => continue,
            r => {
                let state = r?;
                let created = created_at.or_else(|| state.created_at.clone());
                break (id, state, created);
            }
        }
    };
    let mut done = Record {
        export_id: id.clone(),
        state: "downloaded".into(),
        fields: fields.iter().map(|f| f.to_string()).collect(),
        target: target.to_string(),
        after: None,
        snapshot: created_at.as_deref().and_then(snapshot_of),
        full_at: None,
        kind: "full".into(),
        delta_rows: 0,
        at: state::now(),
        kept_id: None,
        kept_state: None,
    };
    // The export ended: an outcome that keeps no file gives the pending
    // record up, so no later run polls it again.
    let give_up = || {
        let now = read_record(meta_path).unwrap_or_else(|| prev.clone());
        write_record(meta_path, &now.given_up())
    };
    match (state.status.as_str(), &state.url, &after) {
        ("DONE", Some(url), None) => {
            // Straight to the file: an export of a million customers is ~100 MB.
            client.download(url, &files.export).await?;
            calls += 1;
            done.full_at = Some(created_at.unwrap_or_else(state::now));
            write_record(meta_path, &done)?;
            Ok((Delta::Done(Exported::File(files.export.clone())), calls))
        }
        ("DONE", Some(url), Some(_)) => {
            client.download(url, &files.export_delta).await?;
            calls += 1;
            match apply_delta(&files.export, &files.export_delta)? {
                Err(why) => {
                    give_up()?;
                    Ok((Delta::Full(why), calls))
                }
                Ok(rows) => {
                    done.kind = "delta".into();
                    done.delta_rows = rows;
                    done.full_at = prev.full_at.clone();
                    write_record(meta_path, &done)?;
                    Ok((Delta::Applied(rows), calls))
                }
            }
        }
        ("DONE", None, Some(_)) => {
            give_up()?;
            Ok((
                Delta::Full(format!("the delta export {id} is DONE without a file")),
                calls,
            ))
        }
        ("DONE", None, None) => {
            // No file: maybe an empty project (a first migration), maybe not.
            calls += 1;
            if client.holds_any_customer().await? != Some(false) {
                give_up()?;
                return Ok((Delta::Done(Exported::Unknown(format!("Voucherify's customer export {id} is DONE without a file, and the project holds customers"))), calls));
            }
            ui::info(format!("Voucherify's customer export {id} has no file and the project holds no customer: every customer is new"));
            files::write_atomic(&files.export, b"source_id\n")?;
            done.full_at = Some(created_at.unwrap_or_else(state::now));
            write_record(meta_path, &done)?;
            Ok((Delta::Done(Exported::Empty), calls))
        }
        (status, _, _) => {
            give_up()?;
            let why = state.message.clone().unwrap_or_else(|| "no message".into());
            Ok((
                Delta::Done(Exported::Unknown(format!(
                    "Voucherify's customer export {id} ended {status}: {why}"
                ))),
                calls,
            ))
        }
    }
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
fn snapshot_of(created_at: &str) -> Option<String> {
    let t: jiff::Timestamp = created_at.parse().ok()?;
    let back = jiff::SignedDuration::try_from(margin()).ok()?;
    Some(
        t.checked_sub(back)
            .ok()?
            .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
    )
}

/// A header as the export's human-readable headers are compared: case,
/// white space, underscores and a byte-order mark ignored (`Source ID`,
/// `source_id`, `Address City`).
pub fn header_key(h: &str) -> String {
    h.trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '_')
        .collect::<String>()
        .to_lowercase()
}

/// Apply a delta file to the kept export: a customer in the delta replaces
/// its row (in place), a new one is appended. Err inside when the two
/// files' headers differ (a schema change): then only a full export will do.
/// Returns the delta's rows.
pub fn apply_delta(kept: &Path, delta: &Path) -> Result<std::result::Result<u64, String>> {
    let reader = |p: &Path| {
        csv::ReaderBuilder::new()
            .from_path(p)
            .with_context(|| format!("cannot read {}", p.display()))
    };
    let mut d = reader(delta)?;
    let header = d.byte_headers()?.clone();
    let mut k = reader(kept)?;
    let kept_header = k.byte_headers()?.clone();
    if k.byte_records().next().is_none() {
        // The kept export holds no customer (an empty project's): the delta
        // is the whole state, whatever columns the kept one had.
        let mut rows = 0u64;
        for rec in d.byte_records() {
            rec.with_context(|| format!("cannot read {}", delta.display()))?;
            rows += 1;
        }
        let bytes =
            std::fs::read(delta).with_context(|| format!("cannot read {}", delta.display()))?;
        files::write_atomic(kept, &bytes)?;
        return Ok(Ok(rows));
    }
    let mut k = reader(kept)?;
    k.byte_headers()?;
    let names = |h: &csv::ByteRecord| -> Vec<String> {
        h.iter()
            .map(|c| header_key(&String::from_utf8_lossy(c)))
            .collect()
    };
    if names(&header) != names(&kept_header) {
        return Ok(Err(
            "the delta's columns differ from the kept export's".into()
        ));
    }
    let Some(col) = names(&header).iter().position(|n| n == "sourceid") else {
        return Ok(Err("the delta has no source id column".into()));
    };
    let mut changed: std::collections::HashMap<Vec<u8>, csv::ByteRecord> = Default::default();
    let mut order = Vec::new();
    for rec in d.byte_records() {
        let rec = rec.with_context(|| format!("cannot read {}", delta.display()))?;
        let sid = rec.get(col).unwrap_or_default().to_vec();
        if changed.insert(sid.clone(), rec).is_none() {
            order.push(sid);
        }
    }
    let rows = order.len() as u64;
    let mut out = csv::Writer::from_writer(files::AtomicFile::create(kept)?);
    out.write_byte_record(&kept_header)?;
    for rec in k.byte_records() {
        let rec = rec.with_context(|| format!("cannot read {}", kept.display()))?;
        match changed.remove(rec.get(col).unwrap_or_default()) {
            Some(newer) => out.write_byte_record(&newer)?,
            None => out.write_byte_record(&rec)?,
        }
    }
    for sid in order {
        if let Some(rec) = changed.remove(&sid) {
            out.write_byte_record(&rec)?;
        }
    }
    out.into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", kept.display(), e.error()))?
        .commit()?;
    Ok(Ok(rows))
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::error::ApiError>()
        .and_then(|e| e.status())
        == Some(404)
}

/// Look at export `id`, paced by [`next_poll`], until it ends or the
/// deadline (counted from `started`) passes.
async fn poll(
    client: &VoucherifyClient,
    id: &str,
    started: tokio::time::Instant,
    deadline: Duration,
    calls: &mut u64,
) -> Result<crate::api::voucherify::ExportState> {
    loop {
        if started.elapsed() >= deadline {
            anyhow::bail!(
                "Voucherify's customer export {id} did not finish within --export-timeout ({}s); nothing was sent: rerun `segsync load` (it polls the same export again), give it longer with --export-timeout SECONDS, or decide by the ledger alone with `load --from-ledger`",
                deadline.as_secs()
            );
        }
        let wait = next_poll(started.elapsed());
        tokio::time::sleep(wait.min(deadline.saturating_sub(started.elapsed()))).await;
        *calls += 1;
        let state = client.export(id).await?;
        // A null status is not finished (nullable in the spec).
        if matches!(state.status.as_str(), "DONE" | "ERROR" | "FAILED") {
            return Ok(state);
        }
    }
}

/// The source ids of an export file. Its headers are human-readable, so
/// the column is found by name, ignoring case, spaces and underscores.
pub fn read_export(path: &Path) -> Result<HashSet<String>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let headers = rdr.headers()?.clone();
    let col = headers.iter().position(|h| header_key(h) == "sourceid").ok_or_else(|| {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls until an export of `secs` is seen done, by the pacing alone.
    fn polls_for(secs: u64) -> u32 {
        let (mut t, mut n) = (Duration::ZERO, 0);
        while t < Duration::from_secs(secs) {
            t += next_poll(t);
            n += 1;
        }
        n
    }

    #[test]
    fn polls_are_paced_by_the_time_already_waited() {
        // With the export's creation and its download, a 5-minute export
        // costs at most 25 calls.
        // With the schema read, the export's creation and its download, a
        // 5-minute export costs at most 25 calls.
        assert!(polls_for(300) + 3 <= 25, "{}", polls_for(300));
        assert!(polls_for(60) <= 15, "{}", polls_for(60));
        assert!(polls_for(900) <= 25, "{}", polls_for(900));
        // A quick export is seen quickly, and the first second costs three.
        assert_eq!(next_poll(Duration::ZERO), Duration::from_millis(200));
        assert_eq!(polls_for(1), 3);
        // Never more than two minutes between looks.
        assert_eq!(
            next_poll(Duration::from_secs(3600)),
            Duration::from_secs(120)
        );
        eprintln!(
            "polls: 1 min {}, 5 min {}, 15 min {}",
            polls_for(60),
            polls_for(300),
            polls_for(900)
        );
    }
}
