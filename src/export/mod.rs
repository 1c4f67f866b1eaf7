//! Voucherify's customer export, which both `plan` (what Voucherify holds)
//! and `load --method import` (who exists) read: made (`POST /v1/exports`),
//! polled until its deadline, downloaded straight to `load.export.csv`
//! beside the customers file, and its source ids read back. One owner, below
//! both.

mod file;
mod probes;
mod record;

pub use file::{apply_delta, header_key, read_export};
use record::{delta_after, reusable, snapshot_of, write_record};
pub use record::{read_record, Record, SNAPSHOT_MARGIN};

use crate::api::voucherify::VoucherifyClient;
use crate::files;
use crate::state::{self, Beside};
use crate::ui;
use anyhow::Result;
use std::path::PathBuf;
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

/// A delta export's one filter: customers whose `by` (`updated_at`) is
/// `$after` the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub by: &'static str,
    pub after: String,
}

/// What a plan's export may be: a delta of the kept file, or a full one.
pub struct Policy<'a> {
    /// The ledger, whose confirmations a delta must hold: a delta that
    /// lacks a customer segsync confirmed after its `$after` is not trusted
    /// (Voucherify read the filter otherwise than sent), and neither is
    /// any later delta of the project.
    pub ledger: Option<&'a std::path::Path>,
    /// The project, as the ledger names it: a kept file of another is not used.
    pub target: &'a str,
    /// A full export again when the kept one's is older than this.
    pub full_every: Duration,
    /// A full export whatever is kept (`--full-export`).
    pub force_full: bool,
    /// A delta of updated customers is followed by one of customers
    /// created since (a plan's); a read-back asks the updated ones alone.
    pub created_too: bool,
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
    let since = match prev.state.as_str() {
        // A stopped run's export (`export_held` checked it is this plan's),
        // polled again with what it asked.
        "pending" => prev.since(),
        _ => delta_after(&prev, files, fields, policy).map(|after| Since {
            by: "updated_at",
            after,
        }),
    };
    let since = match since {
        Some(since) if prev.state != "pending" && !prev.proven => probes::checkable(policy, since)?,
        since => since,
    };
    let Some(since) = since else {
        let (out, calls) = run(client, files, fields, deadline, None, &prev, policy).await?;
        return Ok((out.into_exported(files), calls, Kind::Full));
    };
    let (out, calls) = run(
        client,
        files,
        fields,
        deadline,
        Some(since.clone()),
        &prev,
        policy,
    )
    .await?;
    let (out, calls) = match out {
        Delta::Applied(rows) if since.by == "updated_at" && policy.created_too => {
            let (out, more) = created_since(client, files, fields, deadline, policy).await?;
            let out = match out {
                Delta::Applied(created) => Delta::Applied(rows + created),
                other => other,
            };
            (out, calls + more)
        }
        other => (other, calls),
    };
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
            // The record as the delta left it (given up, maybe marked lossy).
            let fresh = Record {
                state: String::new(),
                ..read_record(&files.export_meta).unwrap_or(prev)
            };
            let (out, more) = run(client, files, fields, deadline, None, &fresh, policy).await?;
            Ok((out.into_exported(files), calls + more, Kind::Full))
        }
        Delta::Done(e) => Ok((e, calls, Kind::Full)),
    }
}

/// The delta of customers created since the kept file's `created_snapshot`
/// (or `snapshot`), applied after the delta of updated ones.
async fn created_since(
    client: &VoucherifyClient,
    files: &Beside,
    fields: &[&str],
    deadline: Duration,
    policy: &Policy<'_>,
) -> Result<(Delta, u64)> {
    let kept = read_record(&files.export_meta).unwrap_or_default();
    let Some(after) = kept
        .created_snapshot
        .clone()
        .or_else(|| kept.snapshot.clone())
    else {
        return Ok((
            Delta::Full("the kept export has no time to ask created customers after".into()),
            0,
        ));
    };
    let since = Since {
        by: "created_at",
        after,
    };
    run(client, files, fields, deadline, Some(since), &kept, policy).await
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
    let policy = Policy {
        ledger: None,
        target: "",
        full_every: Duration::ZERO,
        force_full: true,
        created_too: false,
        reuse: None,
    };
    let (out, calls) = run(client, &ids, fields, deadline, None, &prev, &policy).await?;
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
    since: Option<Since>,
    prev: &Record,
    policy: &Policy<'_>,
) -> Result<(Delta, u64)> {
    let target = policy.target;
    let meta_path = &files.export_meta;
    let mut calls = 0;
    let mut resumed = (prev.state == "pending" && prev.since() == since)
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
                let filter = since.as_ref().map(|s| (s.by, s.after.as_str()));
                let (id, created_at) = client.export_customers(fields, filter).await?;
                write_record(
                    meta_path,
                    &prev.pending(&id, fields, target, since.as_ref()),
                )?;
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
        by: String::new(),
        lossy: prev.lossy.clone().filter(|_| prev.target == target),
        proven: prev.proven && prev.target == target,
        snapshot: created_at.as_deref().and_then(snapshot_of),
        created_snapshot: None,
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
    match (state.status.as_str(), &state.url, &since) {
        ("DONE", Some(url), None) => {
            // Straight to the file: an export of a million customers is ~100 MB.
            client.download(url, &files.export).await?;
            calls += 1;
            done.full_at = Some(created_at.unwrap_or_else(state::now));
            write_record(meta_path, &done)?;
            Ok((Delta::Done(Exported::File(files.export.clone())), calls))
        }
        ("DONE", Some(url), Some(since)) => {
            calls += 1;
            let kept = keep_delta(client, files, url, since, policy, prev, done).await?;
            Ok((kept, calls))
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

/// Download a delta, check it holds what the ledger says it must, and
/// apply it to the kept file; its record `done` as the export ended.
async fn keep_delta(
    client: &VoucherifyClient,
    files: &Beside,
    url: &str,
    since: &Since,
    policy: &Policy<'_>,
    prev: &Record,
    mut done: Record,
) -> Result<Delta> {
    let meta_path = &files.export_meta;
    let delta_file = match since.by {
        "created_at" => &files.export_created,
        _ => &files.export_delta,
    };
    client.download(url, delta_file).await?;
    // What segsync confirmed is looked for among the updated.
    let probes = match since.by {
        "updated_at" => probes::probes(policy, since)?,
        _ => None,
    };
    let lacking = match &probes {
        Some(p) => p.lacking(delta_file, since)?,
        None => None,
    };
    let now = || read_record(meta_path).unwrap_or_else(|| prev.clone());
    if let Some(why) = lacking {
        let lossy = Record {
            lossy: Some(why.clone()),
            ..now().given_up()
        };
        write_record(meta_path, &lossy)?;
        return Ok(Delta::Full(why));
    }
    let rows = match apply_delta(&files.export, delta_file)? {
        Err(why) => {
            write_record(meta_path, &now().given_up())?;
            return Ok(Delta::Full(why));
        }
        Ok(rows) => rows,
    };
    // Held every probe, one of them on `$after`'s own day: the filter is
    // read as sent, and later deltas of the project may be trusted without
    // a probe.
    done.proven = prev.proven || probes.is_some_and(|p| p.can_prove());
    // Each kind of delta moves its own time on.
    if since.by == "created_at" {
        done.created_snapshot = done.snapshot.take();
        done.snapshot = prev.snapshot.clone();
    } else {
        done.created_snapshot = (prev.created_snapshot.clone()).or_else(|| prev.snapshot.clone());
    }
    done.kind = "delta".into();
    done.delta_rows = rows;
    done.full_at = prev.full_at.clone();
    write_record(meta_path, &done)?;
    Ok(Delta::Applied(rows))
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
