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

pub mod batch;
pub mod confirm;
pub mod import;
pub mod input;
pub mod report;

use crate::config::VoucherifyArgs;
use crate::error::{ApiError, UsageError};
use crate::http::HttpSettings;
use crate::state::ledger::{self, LedgerEvent, LedgerWriter};
use crate::state::{self, manifest};
use crate::ui::{self, Progress};
use crate::voucherify::{VoucherifyClient, MAX_REQUEST_BYTES};
use anyhow::Result;
use batch::Batcher;
use confirm::Session;
use futures::stream::{self, StreamExt};
use input::{validate, OnInvalid, Validated};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEFAULT_BATCH_SIZE: u32 = 100;
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 5_000_000;
pub const DEFAULT_CONCURRENCY: u32 = 4;
pub const DEFAULT_POLL_TIMEOUT: u64 = 900;

/// `--batch-size`: 1 to 100 customers, Voucherify's cap for one bulk request.
pub fn batch_size_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=crate::voucherify::MAX_BULK_CUSTOMERS as i64)
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
    /// Longest wait for one async action to finish
    #[arg(long = "poll-timeout", default_value_t = DEFAULT_POLL_TIMEOUT, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_timeout: u64,
    /// Longest wait for Voucherify's hourly bulk quota to refill before stopping (the monthly quota always stops at once)
    #[arg(long = "max-wait", default_value_t = DEFAULT_MAX_WAIT, value_name = "MINUTES")]
    pub max_wait: u64,
    /// Validate and show what would be sent, without sending anything
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Load the valid rows; write the invalid ones with their errors to load.rejects.csv
    #[arg(long = "skip-invalid")]
    pub skip_invalid: bool,
    /// Resend every row, even those the ledger shows as already confirmed
    #[arg(long)]
    pub full: bool,
    /// How to send: bulk (every customer through the bulk upsert), import (new customers by CSV import, existing ones by bulk), auto (import when it saves calls)
    #[arg(long, value_enum, default_value_t = import::Method::Bulk)]
    pub method: import::Method,
    /// Largest import file in bytes (Voucherify refuses requests over 10 MB)
    #[arg(long = "max-file-bytes", default_value_t = 9_000_000, value_parser = clap::value_parser!(u64).range(10_000..=10_000_000))]
    pub max_file_bytes: u64,
    /// Load rows whose edits look like spreadsheet damage (leading zeros lost) as they are
    #[arg(long = "accept-edits")]
    pub accept_edits: bool,
    #[command(flatten)]
    pub mapping: crate::config::MappingArgs,
    #[command(flatten)]
    pub voucherify: VoucherifyArgs,
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
    pub polls: u64,
    pub recovered: u64,
    /// Of `sent`, the customers sent by import files.
    pub imported: u64,
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
pub fn plan(customers: &Path) -> Result<Plan> {
    let validated = validate(customers, OnInvalid::Count, &Default::default())?;
    let ledger = ledger::read(&state::ledger(customers), None)?;
    let mut b = Batcher::new(
        customers,
        validated.invalid_lines.clone(),
        Arc::new(ledger.confirmed),
        false,
        1000,
        MAX_REQUEST_BYTES,
    )?;
    let to_send: u64 = b.by_ref().map(|b| b.customers.len() as u64).sum();
    Ok(Plan {
        rows: validated.rows,
        invalid: validated.invalid_lines.len() as u64,
        confirmed: b.unchanged,
        to_send,
    })
}

pub async fn run(args: &Args, data_dir: &Path) -> Result<Summary> {
    let input = args
        .input
        .clone()
        .unwrap_or_else(|| state::customers(data_dir));
    if !input.exists() {
        return Err(UsageError::new(format!("{} not found: `segsync transform` writes it, or write one by hand (source_id column required), or pass --in FILE", input.display())).into());
    }
    let cfg = if args.dry_run {
        args.voucherify.resolve().ok()
    } else {
        Some(args.voucherify.resolve()?)
    };
    let target = cfg
        .as_ref()
        .map(|c| format!("{}#{}", c.api_url.as_str().trim_end_matches('/'), c.app_id));

    if matches!(manifest::edited_since_transform(&input), Ok(Some(true))) {
        ui::info(format!("load: {} was edited after transform wrote it (or written by hand); loading it as it is", input.display()));
    }
    let started = Instant::now();
    let rejects = state::rejects(&input);
    let edits = check_edits(&input, args)?;
    let mut refused = refused_edits(edits.as_ref(), args.accept_edits);
    let client = match cfg.clone() {
        Some(cfg) => Some(VoucherifyClient::new(cfg, http_settings(args))?),
        None => None,
    };
    if let Some(client) = &client {
        // What Voucherify would reject one customer at a time after sending,
        // found before anything is sent.
        let schema = client.customer_metadata_schema().await.map_err(|e| {
            confirm::api_error(e).context("cannot read the project's customer metadata schema, which load checks every row against before sending")
        })?;
        let problems = input::schema_problems(&input, &schema)?;
        if !schema.properties.is_empty() || schema.allow_defined_only == Some(true) {
            ui::info(format!(
                "load: metadata checked against the project's customer schema ({} keys defined{}): {} rows with problems",
                schema.properties.len(),
                if schema.allow_defined_only == Some(true) { ", defined keys only" } else { "" },
                problems.len()
            ));
        }
        for (line, p) in problems {
            refused.entry(line).or_default().extend(p);
        }
    }
    let validated = if args.skip_invalid {
        validate(&input, OnInvalid::SetAside(&rejects), &refused)?
    } else {
        let v = validate(&input, OnInvalid::Fail, &refused)?;
        // A rejects file from an earlier --skip-invalid run no longer applies.
        let _ = std::fs::remove_file(&rejects);
        v
    };
    let ledger_file = state::ledger(&input);
    if !args.dry_run {
        let dropped = ledger::repair(&ledger_file)?;
        if dropped > 0 {
            ui::warn(format!(
                "{}: discarded a torn last line ({dropped} bytes) left by an interrupted run",
                ledger_file.display()
            ));
        }
    }
    let ledger_state = ledger::read(&ledger_file, target.as_deref())?;
    let mut summary = Summary {
        rows: validated.rows,
        invalid: validated.invalid_lines.len() as u64,
        ..Default::default()
    };
    let make_batcher = |confirmed: Arc<HashSet<u128>>| -> Result<Batcher> {
        Batcher::new(
            &input,
            validated.invalid_lines.clone(),
            confirmed,
            args.full,
            args.batch_size as usize,
            args.max_batch_bytes.min(MAX_REQUEST_BYTES as u64) as usize,
        )
    };

    if args.dry_run {
        if args.method != import::Method::Bulk {
            match &client {
                Some(client) => {
                    let existing = Arc::new(
                        import::existing(client, &input, ledger_state.confirmed_ids.clone()).await?,
                    );
                    let ex = existing.clone();
                    let confirmed = Arc::new(ledger_state.confirmed.clone());
                    let by_file: u64 = make_batcher(confirmed.clone())?
                        .only(move |c| import::importable(c, &ex))
                        .map(|b| b.customers.len() as u64)
                        .sum();
                    let ex = existing.clone();
                    let by_bulk: u64 = make_batcher(confirmed)?
                        .only(move |c| !import::importable(c, &ex))
                        .map(|b| b.customers.len() as u64)
                        .sum();
                    ui::info(format!(
                        "load --dry-run --method {}: the project holds {} customers (export: {} calls); {by_file} new customers could go by import (about {} calls: a file of up to {} MB and a poll each), {by_bulk} by bulk (about {} calls)",
                        if args.method == import::Method::Import { "import" } else { "auto" },
                        existing.from_export,
                        existing.calls,
                        2 * by_file.div_ceil(20_000).max(u64::from(by_file > 0)),
                        args.max_file_bytes / 1_000_000,
                        import::bulk_calls(by_bulk)
                    ));
                }
                None => ui::info("load --dry-run: without credentials the split between import and bulk is unknown (it needs the project's customer export)"),
            }
        }
        let b = make_batcher(Arc::new(ledger_state.confirmed))?;
        let budget = client.as_ref().and_then(|c| c.budget());
        summary.unchanged = dry_run(b, &validated, budget)?;
        if let Some(r) = &edits {
            ui::info(format!(
                "load --dry-run: edits against what transform would write: {} (`segsync diff` lists them)",
                r.counts()
            ));
        }
        return Ok(summary);
    }

    let client = client.ok_or_else(|| anyhow::anyhow!("credentials are required"))?;
    let target = target.unwrap_or_default();
    let session = Arc::new(Session::new(
        client,
        LedgerWriter::open(&ledger_file, &target)?,
        Duration::from_secs(args.poll_timeout),
    ));

    let mut confirmed = ledger_state.confirmed;
    let recovered = recover_pending(&session, ledger_state.pending, args.concurrency).await?;
    summary.recovered = recovered.len() as u64;
    confirmed.extend(recovered);
    let confirmed = Arc::new(confirmed);

    // Count what needs sending for the progress bar's total.
    let mut counter = make_batcher(confirmed.clone())?;
    let to_send: u64 = counter.by_ref().map(|b| b.customers.len() as u64).sum();
    if let Some(e) = counter.error.take() {
        return Err(e);
    }
    summary.unchanged = counter.unchanged;
    drop(counter);

    let progress = Arc::new(Progress::new("load", "customers", Some(to_send)));
    let mut results = Vec::new();
    let mut export_calls = 0;
    let bulk_only: Option<Arc<import::Existing>> = if args.method != import::Method::Bulk
        && to_send > 0
    {
        let existing = Arc::new(
            import::existing(&session.client, &input, ledger_state.confirmed_ids.clone()).await?,
        );
        export_calls = existing.calls;
        let ex = existing.clone();
        let importable: u64 = make_batcher(confirmed.clone())?
            .only(move |c| import::importable(c, &ex))
            .map(|b| b.customers.len() as u64)
            .sum();
        // auto: the import when its calls (a file and a poll per file) are
        // fewer than the bulk upserts of the same customers.
        let worth = args.method == import::Method::Import
            || import::bulk_calls(importable) > 2 * importable.div_ceil(20_000) + 2;
        if worth && importable > 0 {
            let ex = existing.clone();
            let mut b = make_batcher(confirmed.clone())?.only(move |c| import::importable(c, &ex));
            let files = import::write_files(
                &input,
                b.by_ref().flat_map(|batch| batch.customers),
                args.max_file_bytes as usize,
            )?;
            if let Some(e) = b.error.take() {
                return Err(e);
            }
            ui::info(format!(
                "load: {importable} new customers go by import in {} files ({}); customers the project holds ({} exported) and typed metadata go by bulk",
                files.len(),
                files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", "),
                existing.from_export
            ));
            results.extend(
                stream::iter(files)
                    .map(|f| {
                        let session = session.clone();
                        let progress = progress.clone();
                        async move {
                            if session.stop.load(Ordering::Relaxed) {
                                return Ok(());
                            }
                            let r = confirm::send_import(&session, f, &progress).await;
                            if r.is_err() {
                                session.stop.store(true, Ordering::Relaxed);
                            }
                            r
                        }
                    })
                    .buffer_unordered(args.concurrency as usize)
                    .collect::<Vec<_>>()
                    .await,
            );
            Some(existing)
        } else {
            None
        }
    } else {
        None
    };
    let mut batcher = match bulk_only {
        Some(ex) => make_batcher(confirmed)?.only(move |c| !import::importable(c, &ex)),
        None => make_batcher(confirmed)?,
    };
    results.extend(send_all(&session, &progress, &mut batcher, args.concurrency).await);
    progress.finish();
    let batch_error = batcher.error.take();

    summary.imported = session.imported.load(Ordering::Relaxed);
    summary.sent = session.sent.load(Ordering::Relaxed) + summary.imported;
    summary.confirmed = session.confirmed.load(Ordering::Relaxed) + summary.recovered;
    summary.failed = session.failed.load(Ordering::Relaxed);
    summary.batches = session.batches.load(Ordering::Relaxed);
    summary.polls = session.polls.load(Ordering::Relaxed);
    let report_file = state::report(&input);
    report::write(
        &report_file,
        &session.report.lock().map(|r| r.clone()).unwrap_or_default(),
    )?;

    let first_error = results.into_iter().find_map(Result::err).or(batch_error);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let s = session.client.stats();
    ui::info(format!(
        "load: {} rows: {} unchanged since confirmed (skipped), {} sent in {} batches, {} confirmed, {} failed{}{}",
        summary.rows,
        summary.unchanged,
        summary.sent,
        summary.batches,
        summary.confirmed,
        summary.failed,
        if summary.failed > 0 { format!(" (see {})", report_file.display()) } else { String::new() },
        if summary.invalid > 0 { format!(", {} invalid set aside in {}", summary.invalid, rejects.display()) } else { String::new() },
    ));
    if summary.imported > 0 || export_calls > 0 {
        let files = session.import_files.load(Ordering::Relaxed);
        ui::info(format!(
            "load: {} customers by import in {files} files ({files} import calls), {} by bulk in {} batches ({} bulk calls), {} polls, {export_calls} export calls",
            summary.imported,
            summary.sent - summary.imported,
            summary.batches,
            summary.batches,
            summary.polls
        ));
    }
    ui::info(format!(
        "load: {}; {} polls ({:.2} per batch); {:.1}s, {:.0} customers/s",
        s.summary(),
        summary.polls,
        summary.polls as f64 / summary.batches.max(1) as f64,
        secs,
        summary.sent as f64 / secs
    ));
    if let Some(e) = first_error {
        return Err(e.context(format!(
            "load stopped; confirmed work is in {}: rerun `segsync load` to send the rest",
            ledger_file.display()
        )));
    }
    Ok(summary)
}

fn http_settings(args: &Args) -> HttpSettings {
    HttpSettings {
        concurrency: args.concurrency as usize * 2,
        rate: args.rate_limit.filter(|r| *r > 0),
        rate_period: Duration::from_secs(60),
        burst: Some(1),
        timeout: Duration::from_secs(120),
        policy: crate::http::RetryPolicy {
            max_quota_wait: Duration::from_secs(args.max_wait * 60),
            ..Default::default()
        },
    }
}

/// When `input` was edited after transform wrote it and the profiles it came
/// from are beside it: what the edit changed (`segsync diff`).
fn check_edits(input: &Path, args: &Args) -> Result<Option<crate::diff::EditReport>> {
    if !matches!(manifest::edited_since_transform(input), Ok(Some(true))) {
        return Ok(None);
    }
    let Some(profiles) = crate::diff::profiles_for(input, None) else {
        return Ok(None);
    };
    let report = crate::diff::compare(input, &profiles, &args.mapping.resolve()?)?;
    ui::info(format!(
        "load: {} is {}-separated; edits against what transform would write from {}: {}",
        input.display(),
        crate::edits::separator_name(report.separator),
        profiles.display(),
        report.counts()
    ));
    for c in report
        .damaged()
        .filter(|c| !c.damage.is_some_and(|d| d.refused_by_default()))
    {
        ui::warn(format!(
            "{}:{}: {}: {:?} (was {:?}) {}",
            input.display(),
            c.line,
            c.column,
            c.new,
            c.old,
            c.damage.map(|d| d.explain()).unwrap_or_default()
        ));
    }
    Ok(Some(report))
}

/// The rows `load` refuses unless `--accept-edits`: values that lost their
/// leading zeros (almost never intended), as validation problems by line.
fn refused_edits(
    report: Option<&crate::diff::EditReport>,
    accept: bool,
) -> std::collections::HashMap<u64, Vec<(String, String)>> {
    let mut out: std::collections::HashMap<u64, Vec<(String, String)>> = Default::default();
    if accept {
        return out;
    }
    for c in report.iter().flat_map(|r| r.damaged()) {
        if let Some(d) = c.damage.filter(|d| d.refused_by_default()) {
            out.entry(c.line).or_default().push((
                c.column.to_string(),
                format!(
                    "{:?} (was {:?} in profiles.ndjson) {}",
                    c.new,
                    c.old,
                    d.explain()
                ),
            ));
        }
    }
    out
}

/// Show what a load would send; returns the rows already confirmed.
fn dry_run(
    mut b: Batcher,
    validated: &Validated,
    budget: Option<(u64, u64, String)>,
) -> Result<u64> {
    let (mut batches, mut customers, mut bytes, mut sample) = (0u64, 0u64, 0usize, None);
    for batch in b.by_ref() {
        batches += 1;
        customers += batch.customers.len() as u64;
        bytes += batch.body().len();
        if sample.is_none() {
            let first: Vec<Value> = batch
                .customers
                .iter()
                .take(2)
                .filter_map(|c| serde_json::from_slice(&c.body).ok())
                .collect();
            sample = Some((serde_json::to_string_pretty(&first)?, batch.customers.len()));
        }
    }
    if let Some(e) = b.error {
        return Err(e);
    }
    let invalid = validated.invalid_lines.len() as u64;
    ui::info(format!(
        "load --dry-run: {} rows valid{}; {} already confirmed with this content (skipped); would send {} customers in {} batches ({:.1} KB); nothing was sent",
        validated.rows - invalid,
        if invalid > 0 { format!(", {invalid} invalid set aside") } else { String::new() },
        b.unchanged,
        customers,
        batches,
        bytes as f64 / 1024.0
    ));
    // Each batch is one bulk call and, as Voucherify runs bulk jobs one at a
    // time and segsync polls only the oldest, about one poll.
    ui::info(format!(
        "load --dry-run: cost about {} Voucherify API calls ({batches} bulk requests + about {batches} polls); \
         a Business plan allows 100 a minute and 100,000 a month, an Organization plan 2,000 and 300,000",
        batches * 2
    ));
    if let Some((limit, remaining, kind)) = budget {
        ui::info(format!(
            "load --dry-run: the project's headers say {remaining} of {limit} {kind} calls are left in the current window: the load needs {} windows' worth ({:.1}% of one full window)",
            (batches * 2).div_ceil(limit.max(1)),
            100.0 * (batches * 2) as f64 / limit.max(1) as f64
        ));
    }
    if let Some((s, n)) = sample {
        println!("First request body (first 2 of its {n} customers):\n{s}");
    }
    Ok(b.unchanged)
}

/// Actions a killed run left pending: check them instead of resending.
/// Returns the content keys they confirmed.
async fn recover_pending(
    session: &Arc<Session>,
    pending: Vec<(String, Vec<ledger::LedgerCustomer>)>,
    concurrency: u32,
) -> Result<Vec<u128>> {
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
            async move {
                let r = confirm::confirm(&session, &id, customers, Duration::ZERO).await;
                (id, r)
            }
        })
        .buffer_unordered(concurrency as usize)
        .collect::<Vec<_>>()
        .await;
    let mut keys = Vec::new();
    for (id, outcome) in checks {
        match outcome {
            Ok(done) => keys.extend(done),
            Err(e) if e.downcast_ref::<ApiError>().and_then(ApiError::status) == Some(404) => {
                ui::warn(format!("load: async action {id} is unknown to Voucherify (404); its customers are sent again"));
                session.ledger.append(&LedgerEvent::Abandoned {
                    at: state::now(),
                    target: session.ledger.target.clone(),
                    async_action_id: id,
                    reason: "not found".into(),
                })?;
            }
            Err(e) => return Err(e.context("rerun `segsync load` to check again")),
        }
    }
    Ok(keys)
}

/// Submit every batch with `concurrency` in flight, stopping at the first fatal error.
async fn send_all(
    session: &Arc<Session>,
    progress: &Arc<Progress>,
    batcher: &mut Batcher,
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
                        "{} batches in flight, {} failed, {} requests ({} polls), {} answered 429",
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
    let r = stream::iter(batcher.by_ref())
        .map(|batch| {
            let session = session.clone();
            let progress = progress.clone();
            async move {
                if session.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let r = confirm::send_batch(&session, batch, &progress).await;
                if r.is_err() {
                    session.stop.store(true, Ordering::Relaxed);
                }
                r
            }
        })
        .buffer_unordered(concurrency as usize)
        .collect::<Vec<_>>()
        .await;
    ticker.abort();
    r
}
