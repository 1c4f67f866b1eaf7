//! `segsync load`: `customers.csv` → Voucherify, verified.
//!
//! Reads the CSV by header name (any subset of the documented columns, any
//! order, `source_id` required; a UTF-8 BOM and CRLF are fine) and validates
//! *every* row before sending anything ([`input`]): a problem is reported as
//! `file:line: column: what is wrong` and nothing is sent (exit 2), unless
//! `--skip-invalid` moves the bad rows to `load.rejects.csv`.
//!
//! Sends batches ([`batch`]: by count and by bytes, under the 10 MB limit) to
//! the bulk async endpoint with bounded concurrency, then polls each async
//! action until it is DONE or FAILED ([`confirm`]), while later batches are
//! already being submitted. Per-customer errors go to `load-report.csv`
//! ([`report`]).
//!
//! Records in `load.ledger.ndjson` (`state::ledger`) each batch when
//! submitted (its async action id) and when confirmed (which customers, by
//! content hash, Voucherify accepted). A rerun skips customers whose exact
//! content is already confirmed, checks actions left pending by a killed run
//! instead of resending them, and sends everything else: after a crash only
//! unconfirmed work is sent, after a hand edit only edited rows.

pub mod by_file;
pub mod by_plan;
pub mod confirm;
pub mod dry_run;
pub mod import;
pub mod import_files;
pub mod kept_before;
pub mod pacing;
pub mod report;
pub mod setup;
pub mod verify;

// The customers file's rows and batches belong to `spreadsheet`, below both
// load and plan.
pub use crate::spreadsheet::{batch, input};

use crate::api::voucherify::MAX_REQUEST_BYTES;
use crate::config::VoucherifyArgs;
use crate::error::ApiError;
use crate::state;
use crate::state::ledger::{self, LedgerEvent, LedgerWriter};
use crate::ui::{self, Progress};
use anyhow::{Context, Result};
use batch::Batcher;
use confirm::Session;
use futures::stream::{self, StreamExt};
use input::{validate, OnInvalid};
use setup::Setup;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEFAULT_BATCH_SIZE: u32 = 100;
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 5_000_000;
pub const DEFAULT_CONCURRENCY: u32 = 4;
pub const DEFAULT_POLL_TIMEOUT: u64 = 900;
pub const DEFAULT_QUEUE_TIMEOUT: u64 = 3600;
pub const DEFAULT_EXPORT_TIMEOUT: u64 = crate::plan::DEFAULT_EXPORT_TIMEOUT;
/// The largest import file: under the 10 MB request limit, with room for
/// the multipart envelope.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 9_000_000;

/// `--batch-size`: 1 to 100 customers, Voucherify's cap for one bulk request.
pub fn batch_size_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=crate::api::voucherify::MAX_BULK_CUSTOMERS as i64)
}

pub const DEFAULT_MAX_WAIT: u64 = 15;

/// `--concurrency`: 1 to 64 batches in flight.
pub fn concurrency_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=64)
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Customers CSV to load, generated or hand-written [default: DATA_DIR/customers.csv]
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Customers per bulk request (Voucherify accepts at most 100)
    #[arg(long = "batch-size", default_value_t = DEFAULT_BATCH_SIZE, value_parser = batch_size_parser())]
    pub batch_size: u32,
    /// Largest request body in bytes (Voucherify refuses more than 10 MB)
    #[arg(long = "max-batch-bytes", default_value_t = DEFAULT_MAX_BATCH_BYTES, value_parser = clap::value_parser!(u64).range(1_000..=10_485_760))]
    pub max_batch_bytes: u64,
    /// Batches in flight at once (submitted and not yet confirmed)
    #[arg(long = "concurrency", default_value_t = DEFAULT_CONCURRENCY, value_parser = concurrency_parser())]
    pub concurrency: u32,
    /// Voucherify requests per minute, polls included (your plan's limit: Business 100, Organization 2000); default: follow the API's rate-limit headers
    #[arg(long = "rate-limit", value_name = "PER_MINUTE")]
    pub rate_limit: Option<u32>,
    /// Longest wait for one async action to finish, once Voucherify runs it
    #[arg(long = "poll-timeout", default_value_t = DEFAULT_POLL_TIMEOUT, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_timeout: u64,
    /// Longest wait for one async action still ENQUEUED (Voucherify runs a project's jobs one at a time); past it the action stays pending in the ledger and a rerun checks it
    #[arg(long = "queue-timeout", default_value_t = DEFAULT_QUEUE_TIMEOUT, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_timeout: u64,
    /// Longest wait for Voucherify's customer export (--method import, auto) to finish
    #[arg(long = "export-timeout", default_value_t = DEFAULT_EXPORT_TIMEOUT, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub export_timeout: u64,
    /// Longest wait for Voucherify's hourly bulk quota to refill before stopping (the monthly quota always stops at once)
    #[arg(long = "max-wait", default_value_t = DEFAULT_MAX_WAIT, value_name = "MINUTES")]
    pub max_wait: u64,
    /// Validate and show what would be sent, without sending anything
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Load the valid rows; write the invalid ones with their errors to load.rejects.csv
    #[arg(long = "skip-invalid")]
    pub skip_invalid: bool,
    /// Resend every row, even those the ledger shows as already confirmed (implies --from-ledger)
    #[arg(long)]
    pub full: bool,
    /// Go by a plan (the default): a fresh one `segsync plan` made, else a new one; when no plan can be made (the export cannot say what Voucherify holds), stop with nothing sent
    #[arg(long = "plan", conflicts_with_all = ["from_ledger", "full"])]
    pub plan: bool,
    /// Decide what to send by the ledger alone (what segsync confirmed before), even when a fresh plan exists: no export, and changes other writers made are not seen
    #[arg(long = "from-ledger")]
    pub from_ledger: bool,
    /// Make a new plan when the newest is older than this
    #[arg(long = "plan-max-age", default_value_t = crate::plan::DEFAULT_MAX_AGE, value_name = "SECONDS")]
    pub plan_max_age: u64,
    /// Send null for mapped fields the source no longer has and segsync itself set before
    #[arg(long = "clear-removed")]
    pub clear_removed: bool,
    /// Skip customers Voucherify changed after segsync last confirmed them (by default Segment wins)
    #[arg(long = "keep-newer")]
    pub keep_newer: bool,
    #[command(flatten)]
    pub exports: crate::plan::ExportArgs,
    /// How to send: bulk (every customer through the bulk upsert), import (new customers by CSV import, existing ones by bulk), auto (import when it saves calls)
    #[arg(long, value_enum, default_value_t = import::Method::Bulk)]
    pub method: import::Method,
    /// Largest import file in bytes (Voucherify refuses requests over 10 MB)
    #[arg(long = "max-file-bytes", default_value_t = DEFAULT_MAX_FILE_BYTES, value_parser = clap::value_parser!(u64).range(10_000..=10_000_000))]
    pub max_file_bytes: u64,
    /// Load rows whose edits look like spreadsheet damage (leading zeros lost) as they are
    #[arg(long = "accept-edits")]
    pub accept_edits: bool,
    #[command(flatten)]
    pub mapping: crate::mapping::MappingArgs,
    #[command(flatten)]
    pub voucherify: VoucherifyArgs,
    /// Do not read back from Voucherify's export what it confirmed (by default every load that sends verifies, at the cost of an export: a few calls)
    #[arg(long = "no-verify")]
    pub no_verify: bool,
    /// Customers Voucherify refused by name earlier in the same `run` (sent
    /// early), with the content it refused: reported again, never sent again
    /// with the same content.
    #[arg(skip)]
    pub refused_early: Vec<report::ReportRow>,
    /// Where in the ledger the changes to verify begin (`run`: before it
    /// sent early); by default where this load began.
    #[arg(skip)]
    pub verify_since: Option<u64>,
}

impl Args {
    /// How long an action is waited for: running, and ENQUEUED.
    pub fn timeouts(&self) -> (Duration, Duration) {
        (
            Duration::from_secs(self.poll_timeout),
            Duration::from_secs(self.queue_timeout),
        )
    }

    /// Whether this load goes by a plan (`by_plan`): unless `--from-ledger`
    /// or `--full` says the ledger alone decides.
    pub fn plans(&self) -> bool {
        !(self.from_ledger || self.full)
    }
}

#[derive(Debug, Default)]
pub struct Summary {
    pub rows: u64,
    pub invalid: u64,
    pub unchanged: u64,
    pub sent: u64,
    pub confirmed: u64,
    pub failed: u64,
    pub batches: u64,
    /// Polls of the batches this run sent (checks of earlier ones apart).
    pub polls: u64,
    /// Rows confirmed by checking batches an earlier run left pending.
    pub recovered: u64,
    /// Polls those checks took.
    pub recovery_polls: u64,
    /// Voucherify calls this load made (exports, imports, bulk, polls).
    pub calls: u64,
    /// Of them, by phase (`start`: the schema read and any export setup
    /// made; `recover`, `plan`, `send`, `verify`): they add up to `calls`.
    pub calls_by: Vec<(&'static str, u64)>,
    /// The budget the last answer's `X-Rate-Limit-*` headers revealed:
    /// (limit, remaining, type).
    pub budget: Option<(u64, u64, String)>,
    /// Customers the ledger shows confirmed in this project, after the load.
    pub confirmed_total: u64,
    /// Of `sent`, the customers sent by import files.
    pub imported: u64,
    /// What reading back from Voucherify's export found (None: not read back).
    pub verified: Option<verify::Verified>,
}

/// Where the rows of a customers file stand against the ledger (for `status`;
/// reads only).
#[derive(Debug, Default)]
pub struct Plan {
    pub rows: u64,
    pub invalid: u64,
    pub confirmed: u64,
    pub to_send: u64,
}

/// Compare `customers` with the ledger without sending or writing anything.
pub fn plan(customers: &Path, target: Option<&str>) -> Result<Plan> {
    let validated = validate(customers, OnInvalid::Count, &Default::default())?;
    let ledger = ledger::read(&state::ledger(customers), target)?;
    let mut b = Batcher::new(
        customers,
        validated.invalid_lines.clone(),
        Arc::new(ledger.confirmed),
        false,
        1000,
        MAX_REQUEST_BYTES,
    )?;
    let to_send = b.count_to_send()?;
    Ok(Plan {
        rows: validated.rows,
        invalid: validated.invalid_lines.len() as u64,
        confirmed: b.unchanged,
        to_send,
    })
}

/// Check, then send what is not confirmed (by file where that is safe and
/// saves calls, by bulk otherwise), then say what happened.
/// `load --dry-run`: the plan (made, when a load would make one) and what
/// would be sent; returns the rows already confirmed.
async fn dry_run(setup: &mut setup::Setup, args: &Args) -> Result<u64> {
    // Nothing in the data directory changes: the plan, its export and any
    // import file are made in a scratch directory (the kept export copied
    // there, so a delta still does), and the ledger's index is not saved.
    let scratch = tempfile::tempdir().context("cannot make a scratch directory for the dry run")?;
    let real = setup.files.clone();
    setup.files = real.scratch(scratch.path())?;
    crate::plan::hold_saves();
    let r = dry_run_in(setup, args).await;
    setup.files = real;
    r
}

async fn dry_run_in(setup: &mut setup::Setup, args: &Args) -> Result<u64> {
    let mut planned = Ok(None);
    if by_plan::wanted(setup, args) {
        if let Some(client) = setup.client.take() {
            let ids = setup.ledger.confirmed_ids.clone();
            planned = by_plan::prepare(setup, args, &client, ids, false).await;
            setup.client = Some(client);
        }
    }
    if let Some(meta) = planned? {
        by_plan::say_dry_run(&meta);
    }
    dry_run::report(setup, args)
}

pub async fn run(args: &Args, data_dir: &Path) -> Result<Summary> {
    let started = Instant::now();
    let mut setup = setup::setup(args, data_dir).await?;
    let mut summary = Summary {
        rows: setup.validated.rows,
        invalid: setup.validated.invalid_lines.len() as u64,
        ..Default::default()
    };
    if args.dry_run {
        summary.unchanged = dry_run(&mut setup, args).await?;
        return Ok(summary);
    }
    let client = setup
        .client
        .take()
        .ok_or_else(|| anyhow::anyhow!("credentials are required"))?;
    let ledger_start = args
        .verify_since
        .unwrap_or_else(|| std::fs::metadata(&setup.ledger_file).map_or(0, |m| m.len()));
    let session = Arc::new(Session::new(
        client,
        LedgerWriter::open(
            &setup.ledger_file,
            setup.target.as_deref().unwrap_or_default(),
        )?,
        args.timeouts(),
    ));
    // Every call this load makes, by the phase that made it: they add up
    // to the client's count, in the text and the JSON report alike.
    let calls_now = || session.client.stats().get(&session.client.stats().requests);
    let mut phase = Phases::start(calls_now());
    let (confirmed, before) = recover(&session, &mut setup, args, &mut summary).await?;
    phase.mark("recover", calls_now());
    let mut export_calls = 0;
    let snapshot_ms = plan_first(&mut setup, args, &session, &mut summary).await?;
    phase.mark("plan", calls_now());
    let to_send = setup.batcher(args, confirmed.clone())?.count_to_send()?;
    if to_send > 0 {
        // What Voucherify held before this load, for `segsync undo`.
        kept_before::keep_before(
            &setup.files,
            setup.target.as_deref().unwrap_or_default(),
            ledger_start,
        )?;
    }
    let progress = Arc::new(Progress::new("load", "customers", Some(to_send)));
    let mut results = Vec::new();
    let mut bulk_only = None;
    if to_send > 0 {
        if let Some(p) = by_file::plan(&mut setup, args, &confirmed)? {
            export_calls = p.existing.calls;
            results = by_file::send(&session, &setup, args, &confirmed, &p, &progress).await?;
            bulk_only = Some(p.existing);
        }
    }
    let batcher = match bulk_only {
        Some(ex) => setup
            .batcher(args, confirmed)?
            .only(move |c| !import_files::importable(c, &ex)),
        None => setup.batcher(args, confirmed)?,
    };
    let (batcher, refused_again) = not_refused_again(batcher, &args.refused_early);
    results.extend(send_all(&session, &progress, batcher, args.concurrency).await);
    progress.finish();
    report_refused_again(&session, &args.refused_early, &refused_again)?;
    phase.mark("send", calls_now());
    let verified = match results.iter().all(Result::is_ok) {
        true => read_back_unless(&session, &setup, args, ledger_start).await,
        false => None,
    };
    let report_file = state::report(&setup.input);
    report::write(
        &report_file,
        &session
            .report
            .lock()
            .map_err(|_| anyhow::anyhow!("the report was lost to a panic; rerun `segsync load`"))?,
    )?;
    summary.verified = verified.transpose()?;
    fill(&mut summary, &session, before);
    summary.calls = calls_now();
    phase.mark("verify", summary.calls);
    summary.calls_by = phase.done;
    summary.budget = session.client.budget();
    say(
        &summary,
        &session,
        &setup,
        &report_file,
        export_calls,
        started,
    );
    // For the JSON report (the lines above do not print it).
    summary.confirmed_total = ledger::read(&setup.ledger_file, setup.target.as_deref())
        .map(|l| l.confirmed_ids.len() as u64)
        .unwrap_or(0);
    if let (true, Some(at)) = (args.keep_newer, snapshot_ms) {
        let secs = (jiff::Timestamp::now().as_millisecond() - at).max(0) / 1000;
        ui::info(format!("load: --keep-newer cannot see a change another writer made between the export's snapshot and the last send: this time a window of {secs}s"));
    }
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e.context(format!(
            "load stopped; confirmed work is in {}: rerun `segsync load` to send the rest",
            setup.ledger_file.display()
        )));
    }
    Ok(summary)
}

/// Leave out of `batcher` every customer Voucherify refused earlier in the
/// same run with the same content (`run`'s early sending): sending it again
/// would be refused again. Their source ids are collected as they are met.
fn not_refused_again(
    batcher: Batcher,
    refused: &[report::ReportRow],
) -> (Batcher, Arc<std::sync::Mutex<HashSet<String>>>) {
    let met = Arc::new(std::sync::Mutex::new(HashSet::new()));
    if refused.is_empty() {
        return (batcher, met);
    }
    let keys: std::collections::HashMap<String, u128> = (refused.iter())
        .filter_map(|r| Some((r.source_id.clone(), r.content?)))
        .collect();
    let seen = met.clone();
    let batcher = batcher.only(move |c| {
        let again = keys.get(&c.source_id).copied() == ledger::content_key(&c.hash);
        if again {
            if let Ok(mut m) = seen.lock() {
                m.insert(c.source_id.clone());
            }
        }
        !again
    });
    (batcher, met)
}

/// Report the customers [`not_refused_again`] left out: refused, as when
/// they were sent early.
fn report_refused_again(
    session: &Session,
    refused: &[report::ReportRow],
    met: &std::sync::Mutex<HashSet<String>>,
) -> Result<()> {
    let met = met
        .lock()
        .map_err(|_| anyhow::anyhow!("the report was lost to a panic; rerun `segsync load`"))?;
    let rows: Vec<report::ReportRow> = (refused.iter())
        .filter(|r| met.contains(&r.source_id))
        .cloned()
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    ui::info(format!(
        "load: {} customers Voucherify refused earlier in this run with the same content are reported, not sent again",
        rows.len()
    ));
    session
        .failed
        .fetch_add(rows.len() as u64, Ordering::Relaxed);
    session
        .report
        .lock()
        .map_err(|_| anyhow::anyhow!("the report was lost to a panic; rerun `segsync load`"))?
        .extend(rows);
    Ok(())
}

/// Make (or find) the plan this load executes, when it executes one; the
/// unchanged rows go to the summary. Returns when the plan's export was
/// made (ms), for `--keep-newer`'s window.
async fn plan_first(
    setup: &mut Setup,
    args: &Args,
    session: &Session,
    summary: &mut Summary,
) -> Result<Option<i64>> {
    if !by_plan::wanted(setup, args) {
        return Ok(None);
    }
    // What the checks of pending batches wrote makes a saved plan stale
    // (the plan compares the ledger's content, `opened` lines aside);
    // `recover` added the customers they confirmed to these ids.
    let ids = std::mem::take(&mut setup.ledger.confirmed_ids);
    let prepared = by_plan::prepare(setup, args, &session.client, ids, true)
        .await
        .map_err(|e| {
            e.context(
                "load stopped before sending anything: rerun `segsync load` once the cause is gone",
            )
        })?;
    Ok(prepared.map(|meta| {
        // Rows the checks confirmed are the same in Voucherify by now.
        summary.unchanged =
            (meta.counts.unchanged + meta.counts.skipped).saturating_sub(summary.recovered);
        meta.made_at_ms - (meta.seconds * 1000.0) as i64
    }))
}

/// Read back what this load confirmed, unless `--no-verify` (or
/// `--from-ledger`, which reads no export: said).
async fn read_back_unless(
    session: &Session,
    setup: &Setup,
    args: &Args,
    since: u64,
) -> Option<Result<verify::Verified>> {
    match (args.no_verify, args.from_ledger) {
        (true, _) => None,
        (false, true) => {
            ui::warn("load --from-ledger: what Voucherify confirmed is not read back (by that choice, Voucherify's export is not read); --no-verify says so without a warning");
            None
        }
        (false, false) => Some(read_back(session, setup, args, since).await),
    }
}

/// Read back what this load confirmed (`verify`): the changes Voucherify
/// did not apply join the report and count as failed.
async fn read_back(
    session: &Session,
    setup: &Setup,
    args: &Args,
    since: u64,
) -> Result<verify::Verified> {
    let (found, rows) =
        verify::verify(&session.client, setup, args, &session.ledger, since).await?;
    if !rows.is_empty() {
        session
            .failed
            .fetch_add(found.not_applied, Ordering::Relaxed);
        session
            .report
            .lock()
            .map_err(|_| anyhow::anyhow!("the report was lost to a panic; rerun `segsync load`"))?
            .extend(rows);
    }
    Ok(found)
}

/// The session's counters when the checks of earlier batches were done.
#[derive(Clone, Copy, Default)]
struct Before {
    polls: u64,
    confirmed: u64,
}

/// Check what an earlier run left pending, then count the rows confirmed
/// before this run and by those checks apart. Returns every confirmed key.
async fn recover(
    session: &Arc<Session>,
    setup: &mut Setup,
    args: &Args,
    summary: &mut Summary,
) -> Result<(Arc<HashSet<u128>>, Before)> {
    let pending = std::mem::take(&mut setup.ledger.pending);
    let recovered = recover_pending(session, pending, args.concurrency).await?;
    let before = Before {
        polls: session.polls.load(Ordering::Relaxed),
        confirmed: session.confirmed.load(Ordering::Relaxed),
    };
    let mut confirmed = std::mem::take(&mut setup.ledger.confirmed);
    // One pass: rows the ledger showed confirmed before this run are
    // unchanged; rows only the checks confirmed are recovered.
    let checked: Arc<HashSet<u128>> = Arc::new(
        recovered
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !confirmed.contains(k))
            .collect(),
    );
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (only, count) = (checked.clone(), seen.clone());
    let mut b = setup
        .batcher(args, Arc::new(confirmed.clone()))?
        .only(move |c| {
            let hit = u128::from_str_radix(&c.hash, 16).is_ok_and(|k| only.contains(&k));
            if hit {
                count.fetch_add(1, Ordering::Relaxed);
            }
            !hit
        });
    b.count_to_send()?;
    summary.unchanged = b.unchanged;
    summary.recovered = seen.load(Ordering::Relaxed);
    for (key, source_id) in recovered {
        confirmed.insert(key);
        if !source_id.is_empty() {
            setup.ledger.confirmed_ids.insert(source_id);
        }
    }
    let confirmed = Arc::new(confirmed);
    Ok((confirmed, before))
}

fn fill(summary: &mut Summary, session: &Session, before: Before) {
    summary.imported = session.imported.load(Ordering::Relaxed);
    summary.sent = session.sent.load(Ordering::Relaxed) + summary.imported;
    summary.confirmed = session.confirmed.load(Ordering::Relaxed) - before.confirmed;
    summary.failed = session.failed.load(Ordering::Relaxed);
    summary.batches = session.batches.load(Ordering::Relaxed);
    summary.polls = session.polls.load(Ordering::Relaxed) - before.polls;
    summary.recovery_polls = before.polls;
}

/// The summary lines: rows (each counted once), calls and speed.
/// Calls counted by phase.
struct Phases {
    last: u64,
    done: Vec<(&'static str, u64)>,
}

impl Phases {
    /// Starting at `calls` already made (setup's: the schema read).
    fn start(calls: u64) -> Phases {
        Phases {
            last: calls,
            done: vec![("start", calls)],
        }
    }

    fn mark(&mut self, name: &'static str, calls: u64) {
        self.done.push((name, calls.saturating_sub(self.last)));
        self.last = calls;
    }
}

fn say(
    summary: &Summary,
    session: &Session,
    setup: &Setup,
    report_file: &Path,
    export_calls: u64,
    started: Instant,
) {
    ui::info(format!(
        "load: {} rows: {} unchanged since confirmed (skipped), {}{} sent in {} batches, {} confirmed, {} failed{}{}",
        summary.rows,
        summary.unchanged,
        if summary.recovered > 0 {
            format!("{} confirmed by checking the batches an earlier run left pending ({} polls), ", summary.recovered, summary.recovery_polls)
        } else {
            String::new()
        },
        summary.sent,
        summary.batches,
        summary.confirmed,
        summary.failed,
        if summary.failed > 0 { format!(" (see {})", report_file.display()) } else { String::new() },
        if summary.invalid > 0 { format!(", {} invalid set aside in {}", summary.invalid, setup.rejects.display()) } else { String::new() },
    ));
    if summary.imported > 0 {
        let files = session.import_files.load(Ordering::Relaxed);
        ui::info(format!(
            "load: {} customers by import in {files} files ({files} import calls), {} by bulk in {} batches ({} bulk calls), {} polls; the export that said who exists took {export_calls} calls",
            summary.imported,
            summary.sent - summary.imported,
            summary.batches,
            summary.batches,
            summary.polls
        ));
    }
    let by: Vec<String> = (summary.calls_by.iter())
        .map(|(name, n)| format!("{n} {}", phase_words(name)))
        .collect();
    ui::info(format!(
        "load: {} Voucherify calls: {}",
        summary.calls,
        by.join(", ")
    ));
    let secs = started.elapsed().as_secs_f64().max(0.001);
    ui::info(format!(
        "load: {}; {} polls ({:.2} per batch); {:.1}s, {}",
        session.client.stats().summary(),
        summary.polls,
        summary.polls as f64 / summary.batches.max(1) as f64,
        secs,
        ui::rate_of(summary.sent as f64 / secs, "customers")
    ));
}

fn phase_words(name: &str) -> &'static str {
    match name {
        "start" => "to start (the schema read)",
        "recover" => "to check batches an earlier run left",
        "plan" => "for the plan (its export and polls, or who exists)",
        "send" => "to send and confirm",
        "verify" => "to read back",
        _ => "other",
    }
}

/// Actions a killed run left pending: check them instead of resending.
/// Returns the content keys they confirmed, with their source ids.
async fn recover_pending(
    session: &Arc<Session>,
    pending: Vec<(String, Vec<ledger::LedgerCustomer>)>,
    concurrency: u32,
) -> Result<Vec<(u128, String)>> {
    if pending.is_empty() {
        return Ok(vec![]);
    }
    ui::info(format!(
        "load: checking {} batches an earlier run submitted but did not confirm",
        pending.len()
    ));
    // All at once, polling right away: most were processed while we were down.
    let checks = stream::iter(pending)
        .map(|(id, customers)| {
            let session = session.clone();
            async move { session.task(recover_one(&session, id, customers)).await }
        })
        .buffer_unordered(concurrency as usize)
        .filter_map(std::future::ready)
        .collect::<Vec<_>>()
        .await;
    let mut keys = Vec::new();
    for outcome in checks {
        keys.extend(outcome.map_err(|e| e.context("rerun `segsync load` to check again"))?);
    }
    Ok(keys)
}

/// Check one action an earlier run left pending. An action Voucherify does
/// not know (404) is abandoned, so its customers are sent again.
async fn recover_one(
    session: &Session,
    id: String,
    customers: Vec<ledger::LedgerCustomer>,
) -> Result<Vec<(u128, String)>> {
    let ids: std::collections::HashMap<u128, String> = customers
        .iter()
        .filter_map(|c| Some((u128::from_str_radix(&c.hash, 16).ok()?, c.source_id.clone())))
        .collect();
    let confirmed = confirm::confirm(session, &id, customers, None).await;
    match confirmed {
        Ok(keys) => Ok(keys
            .into_iter()
            .map(|k| (k, ids.get(&k).cloned().unwrap_or_default()))
            .collect()),
        Err(e) if e.downcast_ref::<ApiError>().and_then(ApiError::status) == Some(404) => {
            ui::warn(format!(
                "load: async action {id} is unknown to Voucherify (404); its customers are sent again"
            ));
            session.ledger.append(&LedgerEvent::Abandoned {
                at: state::now(),
                target: session.ledger.target.clone(),
                async_action_id: id,
                reason: "not found".into(),
            })?;
            Ok(vec![])
        }
        Err(e) => Err(e),
    }
}

/// Submit every batch with `concurrency` in flight; the first error (a
/// batch, or reading the file) halts the load.
async fn send_all(
    session: &Arc<Session>,
    progress: &Arc<Progress>,
    batcher: Batcher,
    concurrency: u32,
) -> Vec<Result<()>> {
    let ticker = {
        let session = session.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let s = session.client.stats();
                progress.tick(|| {
                    format!(
                        "{} batches out, {} failed, {} requests, {} polls, {} 429s",
                        session.in_flight.load(Ordering::Relaxed),
                        session.failed.load(Ordering::Relaxed),
                        s.get(&s.requests),
                        session.polls.load(Ordering::Relaxed),
                        s.get(&s.throttled)
                    )
                });
            }
        })
    };
    let r = stream::iter(batcher)
        .take_while(|_| std::future::ready(!session.is_halted()))
        .map(|batch| {
            let session = session.clone();
            let progress = progress.clone();
            async move {
                match batch {
                    Ok(batch) => {
                        session
                            .halt_on_error(confirm::send_batch(&session, batch, &progress))
                            .await
                    }
                    Err(e) => {
                        session.halt();
                        Err(e)
                    }
                }
            }
        })
        .buffer_unordered(concurrency as usize)
        .collect::<Vec<_>>()
        .await;
    ticker.abort();
    r
}
