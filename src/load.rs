//! `segsync load`: `customers.csv` → Voucherify, verified.
//!
//! Reads the CSV by header name (any subset of the documented columns, any
//! order, `source_id` required; a UTF-8 BOM and CRLF are fine) and validates
//! *every* row before sending anything: a problem is reported as
//! `file:line: column: what is wrong` and nothing is sent (exit 2), unless
//! `--skip-invalid` moves the bad rows to `load.rejects.csv`.
//!
//! Sends batches (by count and by bytes, well under the 10 MB limit) to the
//! bulk async endpoint with bounded concurrency, then polls each async action
//! until it is DONE or FAILED, backing off between polls, while later batches
//! are already being submitted. Per-customer errors go to `load-report.csv`.
//!
//! Records in `load.ledger.ndjson` (append-only, one line per event): each
//! batch when submitted (its async action id) and when confirmed (which
//! customers, by content hash, Voucherify accepted). A rerun skips customers
//! whose exact content is already confirmed, checks actions left pending by a
//! killed run instead of resending them, and sends everything else: after a
//! crash only unconfirmed work is sent, after a hand edit only edited rows.

use crate::config::VoucherifyArgs;
use crate::error::{ApiError, InputErrors, UsageError};
use crate::files::{self, AtomicFile};
use crate::http::HttpSettings;
use crate::mapping::is_real_date;
use crate::records::{unguard_cell, CustomerRow, COLUMNS};
use crate::ui::{self, Progress};
use crate::voucherify::{AsyncAction, VoucherifyClient, MAX_REQUEST_BYTES};
use anyhow::{Context, Result};
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Customers CSV to load, generated or hand-written [default: DATA_DIR/customers.csv]
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Customers per bulk request
    #[arg(long = "batch-size", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Largest request body in bytes (Voucherify refuses more than 10 MB)
    #[arg(long = "max-batch-bytes", default_value_t = 5_000_000, value_parser = clap::value_parser!(u64).range(1_000..=10_485_760))]
    pub max_batch_bytes: u64,
    /// Batches in flight at once (submitted and not yet confirmed)
    #[arg(long = "concurrency", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
    /// Voucherify requests per minute, polls included (your plan's limit: Business 100, Organization 2000); default: follow the API's rate-limit headers
    #[arg(long = "rate-limit", value_name = "PER_MINUTE")]
    pub rate_limit: Option<u32>,
    /// Longest wait for one async action to finish
    #[arg(long = "poll-timeout", default_value_t = 900, value_name = "SECONDS")]
    pub poll_timeout: u64,
    /// Validate and show what would be sent, without sending anything
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Load the valid rows; write the invalid ones with their errors to load.rejects.csv
    #[arg(long = "skip-invalid")]
    pub skip_invalid: bool,
    /// Resend every row, even those the ledger shows as already confirmed
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub voucherify: VoucherifyArgs,
}

pub fn ledger_path(customers: &Path) -> PathBuf {
    files::parent_dir(customers).join("load.ledger.ndjson")
}
pub fn report_path(customers: &Path) -> PathBuf {
    files::parent_dir(customers).join("load-report.csv")
}
pub fn rejects_path(customers: &Path) -> PathBuf {
    files::parent_dir(customers).join("load.rejects.csv")
}

/// A customer in a batch: its source_id, content hash and CSV line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerCustomer(pub String, pub String, pub u64);

/// One line of `load.ledger.ndjson`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LedgerEvent {
    Submitted {
        at: String,
        target: String,
        async_action_id: String,
        customers: Vec<LedgerCustomer>,
    },
    Confirmed {
        at: String,
        target: String,
        async_action_id: String,
        status: String,
        done: Vec<LedgerCustomer>,
        failed: Vec<LedgerCustomer>,
    },
    /// The action could not be found or failed as a whole: its customers will be resent.
    Abandoned {
        at: String,
        target: String,
        async_action_id: String,
        reason: String,
    },
}

/// What the ledger says about one Voucherify project.
#[derive(Debug, Default)]
pub struct LedgerState {
    /// Content hashes of customers Voucherify confirmed.
    pub confirmed: HashSet<u128>,
    pub confirmed_customers: u64,
    pub failed_customers: u64,
    /// Submitted, never confirmed: action id → customers.
    pub pending: HashMap<String, Vec<LedgerCustomer>>,
    pub batches: u64,
}

fn hash_key(hex: &str) -> Option<u128> {
    u128::from_str_radix(hex.get(..32)?, 16).ok()
}

/// Read the ledger (cutting a torn last line) for `target`.
pub fn read_ledger(path: &Path, target: Option<&str>) -> Result<LedgerState> {
    let mut st = LedgerState::default();
    if !path.exists() {
        return Ok(st);
    }
    let (_, dropped) = files::truncate_torn_tail(path)?;
    if dropped > 0 {
        ui::warn(format!(
            "{}: discarded a torn last line ({dropped} bytes) left by an interrupted run",
            path.display()
        ));
    }
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let ev: LedgerEvent = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a ledger line", path.display(), i + 1))?;
        let t = match &ev {
            LedgerEvent::Submitted { target, .. }
            | LedgerEvent::Confirmed { target, .. }
            | LedgerEvent::Abandoned { target, .. } => target,
        };
        if target.is_some_and(|want| want != t) {
            continue;
        }
        match ev {
            LedgerEvent::Submitted {
                async_action_id,
                customers,
                ..
            } => {
                st.pending.insert(async_action_id, customers);
            }
            LedgerEvent::Confirmed {
                async_action_id,
                done,
                failed,
                ..
            } => {
                st.pending.remove(&async_action_id);
                st.batches += 1;
                for c in &done {
                    if let Some(k) = hash_key(&c.1) {
                        st.confirmed.insert(k);
                    }
                }
                st.confirmed_customers += done.len() as u64;
                st.failed_customers += failed.len() as u64;
            }
            LedgerEvent::Abandoned {
                async_action_id, ..
            } => {
                st.pending.remove(&async_action_id);
            }
        }
    }
    Ok(st)
}

/// Appends ledger events, one complete line per write.
struct Ledger {
    file: Mutex<std::fs::File>,
    target: String,
}

impl Ledger {
    fn append(&self, ev: &LedgerEvent) -> Result<()> {
        let mut line = serde_json::to_vec(ev)?;
        line.push(b'\n');
        let mut f = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?;
        f.write_all(&line)
            .context("cannot append to the load ledger")?;
        f.flush()?;
        Ok(())
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Content hash of a customer's request body (hex, 128 bits).
fn content_hash(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    files::hex(&Sha256::digest(body)[..16])
}

fn h128(s: &str) -> u128 {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (0xC0FFEEu32, s).hash(&mut b);
    ((a.finish() as u128) << 64) | b.finish() as u128
}

/// The CSV's header mapped onto our columns.
struct Layout {
    /// For each CSV field: index into COLUMNS.
    fields: Vec<usize>,
}

fn read_layout(path: &Path, rdr: &mut csv::Reader<std::fs::File>) -> Result<Layout, Vec<String>> {
    let file = path.display();
    let header = match rdr.byte_headers() {
        Ok(h) => h.clone(),
        Err(e) => return Err(vec![format!("{file}:1: cannot read the header row: {e}")]),
    };
    if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
        return Err(vec![format!("{file}:1: the file is empty; expected a header row naming the columns (source_id required)")]);
    }
    let mut problems = Vec::new();
    let mut fields = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in header.iter().enumerate() {
        let name = match std::str::from_utf8(raw) {
            Ok(n) => n.trim_start_matches('\u{feff}'),
            Err(_) => {
                problems.push(format!(
                    "{file}:1: column {}: header is not valid UTF-8",
                    i + 1
                ));
                continue;
            }
        };
        match COLUMNS.iter().position(|c| *c == name) {
            Some(idx) => {
                if !seen.insert(idx) {
                    problems.push(format!(
                        "{file}:1: column {name}: appears twice in the header"
                    ));
                }
                fields.push(idx);
            }
            None => problems.push(format!(
                "{file}:1: column {name:?}: unknown column; known columns are {}",
                COLUMNS.join(", ")
            )),
        }
    }
    if !seen.contains(&0) && problems.is_empty() {
        problems.push(format!(
            "{file}:1: column source_id: required column is missing from the header"
        ));
    }
    if problems.is_empty() {
        Ok(Layout { fields })
    } else {
        Err(problems)
    }
}

fn plausible_email(e: &str) -> bool {
    let Some((local, domain)) = e.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Build a row from a CSV record and check it; problems are column: message.
fn parse_row(layout: &Layout, rec: &csv::ByteRecord) -> (CustomerRow, Vec<(String, String)>) {
    let mut row = CustomerRow::default();
    let mut problems = Vec::new();
    for (field, raw) in layout.fields.iter().zip(rec.iter()) {
        let col = COLUMNS[*field];
        match std::str::from_utf8(raw) {
            Ok(text) => {
                let value = unguard_cell(text);
                if let Some(cell) = row.cell_mut(*field) {
                    *cell = (!value.is_empty()).then(|| value.to_string());
                }
            }
            Err(_) => problems.push((col.to_string(), "not valid UTF-8".to_string())),
        }
    }
    match &row.source_id {
        None => problems.push((
            "source_id".into(),
            "empty; every customer needs a source_id".into(),
        )),
        Some(s) if s.trim().is_empty() => problems.push((
            "source_id".into(),
            "only whitespace; every customer needs a source_id".into(),
        )),
        _ => {}
    }
    if let Some(b) = &row.birthdate {
        if !is_real_date(b) {
            problems.push((
                "birthdate".into(),
                format!("{b:?} is not a real date in YYYY-MM-DD form"),
            ));
        }
    }
    if let Some(m) = &row.metadata {
        match serde_json::from_str::<Value>(m) {
            Ok(Value::Object(_)) => {}
            Ok(_) => problems.push((
                "metadata".into(),
                "must be a JSON object like {\"key\":\"value\"}".into(),
            )),
            Err(e) => problems.push(("metadata".into(), format!("not valid JSON ({e})"))),
        }
    }
    if let Some(e) = &row.email {
        if !plausible_email(e) {
            problems.push((
                "email".into(),
                format!("{e:?} does not look like an email address"),
            ));
        }
    }
    (row, problems)
}

fn open_csv(path: &Path) -> Result<csv::Reader<std::fs::File>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(f))
}

/// Result of the validation pass.
struct Validated {
    rows: u64,
    /// Lines of rows to leave out (--skip-invalid).
    invalid_lines: HashSet<u64>,
}

/// Check every row; with `skip_invalid` write the bad ones to `rejects`.
fn validate(path: &Path, skip_invalid: bool, rejects: &Path) -> Result<Validated> {
    let file = path.display().to_string();
    let mut rdr = open_csv(path)?;
    let layout = read_layout(path, &mut rdr).map_err(|problems| InputErrors {
        problems,
        hint: format!("{file}: fix the header; nothing was sent"),
    })?;
    let mut problems: Vec<String> = Vec::new();
    let mut invalid_lines = HashSet::new();
    let mut seen: HashMap<u128, u64> = HashMap::new();
    let mut rows = 0u64;
    let mut reject_rows: Vec<Vec<String>> = Vec::new();
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                let msg = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => {
                        format!(
                            "{file}:{line}: row has {len} fields but the header has {expected_len}"
                        )
                    }
                    _ => format!("{file}:{line}: {e}"),
                };
                if skip_invalid {
                    // A ragged row cannot be mapped to columns; record and go on.
                    invalid_lines.insert(line);
                    reject_rows.push(vec![line.to_string(), msg.clone()]);
                    rows += 1;
                    continue;
                }
                problems.push(msg);
                if problems.len() > 1000 {
                    break;
                }
                continue;
            }
        }
        rows += 1;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let (row, mut errs) = parse_row(&layout, &rec);
        if let Some(sid) = &row.source_id {
            match seen.get(&h128(sid)) {
                Some(first) => errs.push((
                    "source_id".into(),
                    format!(
                        "{sid:?} already appears on line {first}; each customer must appear once"
                    ),
                )),
                None => {
                    seen.insert(h128(sid), line);
                }
            }
        }
        if errs.is_empty() {
            continue;
        }
        let text: Vec<String> = errs
            .iter()
            .map(|(c, m)| format!("{file}:{line}: {c}: {m}"))
            .collect();
        if skip_invalid {
            invalid_lines.insert(line);
            let mut cells = vec![line.to_string(), text.join("; ")];
            cells.extend(rec.iter().map(|c| String::from_utf8_lossy(c).into_owned()));
            reject_rows.push(cells);
        } else {
            problems.extend(text);
        }
    }
    if !problems.is_empty() {
        return Err(InputErrors {
            problems,
            hint: format!("{file}: nothing was sent. Fix these rows, or rerun with --skip-invalid to load the valid rows and set the invalid ones aside"),
        }
        .into());
    }
    if !reject_rows.is_empty() {
        let mut f = AtomicFile::create(rejects)?;
        {
            let mut w = csv::WriterBuilder::new()
                .flexible(true)
                .from_writer(f.writer());
            let mut header = vec!["line".to_string(), "errors".to_string()];
            header.extend(layout.fields.iter().map(|i| COLUMNS[*i].to_string()));
            w.write_record(&header)?;
            for r in reject_rows {
                w.write_record(&r)?;
            }
            w.flush()?;
        }
        f.commit()?;
        ui::warn(format!(
            "{} invalid rows set aside in {} (not sent)",
            invalid_lines.len(),
            rejects.display()
        ));
    } else if rejects.exists() {
        let _ = std::fs::remove_file(rejects);
    }
    Ok(Validated {
        rows,
        invalid_lines,
    })
}

/// A customer ready to send.
struct Prepared {
    source_id: String,
    line: u64,
    hash: String,
    body: Vec<u8>,
}

/// A batch: customers and the request body holding them.
struct Batch {
    customers: Vec<Prepared>,
}

impl Batch {
    fn body(&self) -> bytes::Bytes {
        let mut out = Vec::with_capacity(
            self.customers
                .iter()
                .map(|c| c.body.len() + 1)
                .sum::<usize>()
                + 2,
        );
        out.push(b'[');
        for (i, c) in self.customers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&c.body);
        }
        out.push(b']');
        out.into()
    }
}

/// Reads the valid rows that still need sending and groups them in batches.
struct Batcher {
    rdr: csv::Reader<std::fs::File>,
    layout: Layout,
    skip_lines: HashSet<u64>,
    confirmed: Arc<HashSet<u128>>,
    full: bool,
    batch_size: usize,
    max_bytes: usize,
    carry: Option<Prepared>,
    unchanged: u64,
    error: Option<anyhow::Error>,
}

impl Iterator for Batcher {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        let mut batch = Batch {
            customers: Vec::new(),
        };
        let mut bytes = 2usize;
        if let Some(c) = self.carry.take() {
            bytes += c.body.len() + 1;
            batch.customers.push(c);
        }
        let mut rec = csv::ByteRecord::new();
        while batch.customers.len() < self.batch_size {
            match self.rdr.read_byte_record(&mut rec) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    if self
                        .skip_lines
                        .contains(&e.position().map(|p| p.line()).unwrap_or(0))
                    {
                        continue;
                    }
                    self.error = Some(e.into());
                    return None;
                }
            }
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            if self.skip_lines.contains(&line) {
                continue;
            }
            let (row, problems) = parse_row(&self.layout, &rec);
            let Some(source_id) = row
                .source_id
                .clone()
                .filter(|s| !s.trim().is_empty() && problems.is_empty())
            else {
                // validated earlier; a file changed under us is an error, never an empty source_id sent
                self.error = Some(anyhow::anyhow!(
                    "line {line} changed since validation; rerun `segsync load`"
                ));
                return None;
            };
            let body = match row
                .to_request()
                .and_then(|v| serde_json::to_vec(&v).map_err(|e| e.to_string()))
            {
                Ok(b) => b,
                Err(e) => {
                    self.error = Some(anyhow::anyhow!("line {line}: {e}"));
                    return None;
                }
            };
            let hash = content_hash(&body);
            if !self.full && hash_key(&hash).is_some_and(|k| self.confirmed.contains(&k)) {
                self.unchanged += 1;
                continue;
            }
            if body.len() + 2 > self.max_bytes {
                self.error = Some(anyhow::anyhow!(
                    "line {line}: this customer alone is {} bytes, over the request limit of {}",
                    body.len(),
                    self.max_bytes
                ));
                return None;
            }
            let c = Prepared {
                source_id,
                line,
                hash,
                body,
            };
            if bytes + c.body.len() + 1 > self.max_bytes && !batch.customers.is_empty() {
                self.carry = Some(c);
                break;
            }
            bytes += c.body.len() + 1;
            batch.customers.push(c);
        }
        (!batch.customers.is_empty()).then_some(batch)
    }
}

/// One line of load-report.csv.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub source_id: String,
    pub line: Option<u64>,
    pub key: String,
    pub message: String,
    pub details: String,
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
}

struct Shared {
    client: VoucherifyClient,
    ledger: Ledger,
    report: Mutex<Vec<ReportRow>>,
    sent: AtomicU64,
    confirmed: AtomicU64,
    failed: AtomicU64,
    batches: AtomicU64,
    polls: AtomicU64,
    in_flight: AtomicU64,
    /// Set on the first fatal error: no further batch is submitted.
    stop: std::sync::atomic::AtomicBool,
    /// Average processing time of finished actions (ms), to time the first poll.
    processing_ms: AtomicU64,
    poll_timeout: Duration,
}

pub async fn run(args: &Args, data_dir: &Path) -> Result<Summary> {
    let input = args
        .input
        .clone()
        .unwrap_or_else(|| data_dir.join("customers.csv"));
    if !input.exists() {
        return Err(UsageError::new(format!("{} not found: `segsync transform` writes it, or write one by hand (source_id column required), or pass --in FILE", input.display())).into());
    }
    let ledger_file = ledger_path(&input);
    let report_file = report_path(&input);
    let rejects = rejects_path(&input);
    let cfg = if args.dry_run {
        args.voucherify.resolve().ok()
    } else {
        Some(args.voucherify.resolve()?)
    };
    let target = cfg
        .as_ref()
        .map(|c| format!("{}#{}", c.api_url.as_str().trim_end_matches('/'), c.app_id));

    if matches!(
        crate::transform::edited_since_transform(&input),
        Ok(Some(true))
    ) {
        ui::info(format!("load: {} was edited after transform wrote it (or written by hand); loading it as it is", input.display()));
    }
    let started = Instant::now();
    let validated = validate(&input, args.skip_invalid, &rejects)?;
    let ledger_state = read_ledger(&ledger_file, target.as_deref())?;
    let mut summary = Summary {
        rows: validated.rows,
        invalid: validated.invalid_lines.len() as u64,
        ..Default::default()
    };

    let make_batcher = |confirmed: Arc<HashSet<u128>>| -> Result<Batcher> {
        let mut rdr = open_csv(&input)?;
        let layout = read_layout(&input, &mut rdr).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
        Ok(Batcher {
            rdr,
            layout,
            skip_lines: validated.invalid_lines.clone(),
            confirmed,
            full: args.full,
            batch_size: args.batch_size as usize,
            max_bytes: args.max_batch_bytes.min(MAX_REQUEST_BYTES as u64) as usize,
            carry: None,
            unchanged: 0,
            error: None,
        })
    };

    if args.dry_run {
        let mut b = make_batcher(Arc::new(ledger_state.confirmed))?;
        let (mut batches, mut customers, mut bytes, mut sample) = (0u64, 0u64, 0usize, None);
        for batch in b.by_ref() {
            batches += 1;
            customers += batch.customers.len() as u64;
            let body = batch.body();
            bytes += body.len();
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
        ui::info(format!(
            "load --dry-run: {} rows valid{}; {} already confirmed with this content (skipped); would send {} customers in {} batches ({:.1} KB); nothing was sent",
            validated.rows - summary.invalid,
            if summary.invalid > 0 { format!(", {} invalid set aside", summary.invalid) } else { String::new() },
            b.unchanged,
            customers,
            batches,
            bytes as f64 / 1024.0
        ));
        if let Some((s, n)) = sample {
            println!("First request body (first 2 of its {n} customers):\n{s}");
        }
        summary.unchanged = b.unchanged;
        summary.sent = 0;
        return Ok(summary);
    }

    let cfg = cfg.ok_or_else(|| anyhow::anyhow!("credentials are required"))?;
    let target = target.unwrap_or_default();
    let settings = HttpSettings {
        concurrency: args.concurrency as usize * 2,
        rate: args.rate_limit.filter(|r| *r > 0),
        rate_period: Duration::from_secs(60),
        burst: Some(1),
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let shared = Arc::new(Shared {
        client: VoucherifyClient::new(cfg, settings)?,
        ledger: Ledger {
            file: Mutex::new(files::open_append(&ledger_file)?),
            target: target.clone(),
        },
        report: Mutex::new(Vec::new()),
        sent: AtomicU64::new(0),
        confirmed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        batches: AtomicU64::new(0),
        polls: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        stop: std::sync::atomic::AtomicBool::new(false),
        processing_ms: AtomicU64::new(500),
        poll_timeout: Duration::from_secs(args.poll_timeout),
    });

    // Actions a killed run left pending: check them instead of resending.
    let mut confirmed = ledger_state.confirmed;
    if !ledger_state.pending.is_empty() {
        ui::info(format!(
            "load: checking {} batches an earlier run submitted but did not confirm",
            ledger_state.pending.len()
        ));
        // All at once, polling right away: most were processed while we were down.
        let checks = stream::iter(ledger_state.pending)
            .map(|(id, customers)| {
                let shared = shared.clone();
                async move {
                    let lines: HashMap<String, u64> =
                        customers.iter().map(|c| (c.0.clone(), c.2)).collect();
                    let r = confirm(&shared, &id, customers, &lines, Duration::ZERO).await;
                    (id, r)
                }
            })
            .buffer_unordered(args.concurrency as usize)
            .collect::<Vec<_>>()
            .await;
        for (id, outcome) in checks {
            match outcome {
                Ok(done) => {
                    summary.recovered += done.len() as u64;
                    confirmed.extend(done);
                }
                Err(e) if e.downcast_ref::<ApiError>().and_then(ApiError::status) == Some(404) => {
                    shared.ledger.append(&LedgerEvent::Abandoned {
                        at: now(),
                        target: target.clone(),
                        async_action_id: id,
                        reason: "not found".into(),
                    })?;
                }
                Err(e) => return Err(e.context("rerun `segsync load` to check again")),
            }
        }
    }
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
    let mut batcher = make_batcher(confirmed)?;
    let results: Vec<Result<()>> = {
        let shared = shared.clone();
        let progress = progress.clone();
        let ticker = {
            let shared = shared.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let s = shared.client.stats();
                    progress.tick(|| {
                        format!(
                            "{} batches in flight, {} failed, {} requests ({} polls), {} answered 429",
                            shared.in_flight.load(Ordering::Relaxed),
                            shared.failed.load(Ordering::Relaxed),
                            s.get(&s.requests),
                            shared.polls.load(Ordering::Relaxed),
                            s.get(&s.throttled)
                        )
                    });
                }
            })
        };
        let r = stream::iter(batcher.by_ref())
            .map(|batch| {
                let shared = shared.clone();
                let progress = progress.clone();
                async move {
                    if shared.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let r = send_batch(&shared, batch, &progress).await;
                    if r.is_err() {
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                    r
                }
            })
            .buffer_unordered(args.concurrency as usize)
            .collect::<Vec<_>>()
            .await;
        ticker.abort();
        r
    };
    progress.finish();
    let batch_error = batcher.error.take();

    summary.sent = shared.sent.load(Ordering::Relaxed);
    summary.confirmed = shared.confirmed.load(Ordering::Relaxed) + summary.recovered;
    summary.failed = shared.failed.load(Ordering::Relaxed);
    summary.batches = shared.batches.load(Ordering::Relaxed);
    summary.polls = shared.polls.load(Ordering::Relaxed);
    write_report(
        &report_file,
        &shared.report.lock().map(|r| r.clone()).unwrap_or_default(),
    )?;

    let first_error = results.into_iter().find_map(Result::err).or(batch_error);
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let s = shared.client.stats();
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

/// Submit a batch (splitting it if Voucherify finds it too large), then wait
/// for its confirmation.
async fn send_batch(shared: &Shared, batch: Batch, progress: &Progress) -> Result<()> {
    shared.in_flight.fetch_add(1, Ordering::Relaxed);
    let r = send_batch_inner(shared, batch, progress).await;
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    r
}

fn send_batch_inner<'a>(
    shared: &'a Shared,
    batch: Batch,
    progress: &'a Progress,
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let body = batch.body();
        let id = match shared.client.bulk_upsert(body).await {
            Ok(id) => id,
            Err(e) if e.status() == Some(413) && batch.customers.len() > 1 => {
                ui::debug(format!(
                    "load: a batch of {} customers was too large (413); splitting it",
                    batch.customers.len()
                ));
                let mut customers = batch.customers;
                let second = customers.split_off(customers.len() / 2);
                send_batch_inner(shared, Batch { customers }, progress).await?;
                return send_batch_inner(shared, Batch { customers: second }, progress).await;
            }
            Err(e) if matches!(e.status(), Some(401) | Some(403)) => {
                return Err(UsageError::new(format!(
                    "{e}\ncheck VOUCHERIFY_APPLICATION_ID and VOUCHERIFY_SECRET_KEY (Project Settings > Application Keys) and VOUCHERIFY_API_URL (your project's region)"
                ))
                .into())
            }
            Err(e) => return Err(e.into()),
        };
        let n = batch.customers.len() as u64;
        shared.sent.fetch_add(n, Ordering::Relaxed);
        shared.batches.fetch_add(1, Ordering::Relaxed);
        let customers: Vec<LedgerCustomer> = batch
            .customers
            .iter()
            .map(|c| LedgerCustomer(c.source_id.clone(), c.hash.clone(), c.line))
            .collect();
        shared.ledger.append(&LedgerEvent::Submitted {
            at: now(),
            target: shared.ledger.target.clone(),
            async_action_id: id.clone(),
            customers: customers.clone(),
        })?;
        let lines: HashMap<String, u64> = batch
            .customers
            .iter()
            .map(|c| (c.source_id.clone(), c.line))
            .collect();
        confirm(shared, &id, customers, &lines, Duration::MAX).await?;
        progress.inc(n);
        Ok(())
    })
}

/// Poll an async action until it is DONE or FAILED, record the outcome in
/// the ledger and the report; returns the content keys confirmed.
async fn confirm(
    shared: &Shared,
    id: &str,
    customers: Vec<LedgerCustomer>,
    lines: &HashMap<String, u64>,
    first_wait: Duration,
) -> Result<Vec<u128>> {
    let started = Instant::now();
    let typical = Duration::from_millis(
        (shared.processing_ms.load(Ordering::Relaxed) * 11 / 10).clamp(100, 10_000),
    );
    // First poll after the typical processing time (or `first_wait`), then back off.
    let mut wait = first_wait.min(typical);
    let first = wait;
    let mut polls = 0u32;
    let action: AsyncAction = loop {
        tokio::time::sleep(wait).await;
        polls += 1;
        shared.polls.fetch_add(1, Ordering::Relaxed);
        let a = shared.client.async_action(id).await?;
        match a.status.as_str() {
            "DONE" | "FAILED" => break a,
            _ => {}
        }
        if started.elapsed() > shared.poll_timeout {
            anyhow::bail!("async action {id} is still {} after {:?}; it stays in the ledger and the next `segsync load` checks it again", a.status, shared.poll_timeout);
        }
        wait = (wait * 2).clamp(typical / 2, Duration::from_secs(10));
    };
    // Learn how long actions take, to time the next first poll. Our own wait
    // is no measure (we only see DONE when we look), so prefer Voucherify's
    // figure; without it, look sooner next time when the first look was late.
    let old = shared.processing_ms.load(Ordering::Relaxed);
    let next =
        next_processing_estimate(old, action.processing_time, polls, first, started.elapsed());
    shared.processing_ms.store(next, Ordering::Relaxed);

    let target = shared.ledger.target.clone();
    if action.status == "FAILED" {
        let why = format!("async action {id} FAILED as a whole");
        return abandon(shared, id, target, &customers, "async_action_failed", &why);
    }
    let result = match action.result {
        Some(r) if accounts_for_all(&r, &customers) => r,
        other => {
            // Voucherify's answer does not say which customers succeeded:
            // none of them counts as confirmed, so the next load sends them again.
            let why = match other {
                None => "the finished async action has no result".to_string(),
                Some(r) => format!(
                    "the result counts {} done and {} failed but names {} failures, for {} customers sent",
                    r.done_count,
                    r.failed_count,
                    r.errors.len(),
                    customers.len()
                ),
            };
            ui::warn(format!("async action {id}: {why}; its customers stay unconfirmed and the next load sends them again"));
            let why = format!("async action {id}: {why}");
            return abandon(shared, id, target, &customers, "unconfirmed", &why);
        }
    };
    let mut failed_ids: HashSet<String> = HashSet::new();
    {
        let mut report = shared.report.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        for e in &result.errors {
            let sid = e.source_id.clone().unwrap_or_default();
            failed_ids.insert(sid.clone());
            report.push(ReportRow {
                line: lines.get(&sid).copied(),
                source_id: sid,
                key: e.key.clone().unwrap_or_default(),
                message: e.message.clone().unwrap_or_default(),
                details: e.details.clone().unwrap_or_default(),
            });
        }
    }
    let (failed, done): (Vec<LedgerCustomer>, Vec<LedgerCustomer>) = customers
        .into_iter()
        .partition(|c| failed_ids.contains(&c.0));
    shared
        .failed
        .fetch_add(failed.len() as u64, Ordering::Relaxed);
    shared
        .confirmed
        .fetch_add(done.len() as u64, Ordering::Relaxed);
    let keys = done.iter().filter_map(|c| hash_key(&c.1)).collect();
    shared.ledger.append(&LedgerEvent::Confirmed {
        at: now(),
        target,
        async_action_id: id.to_string(),
        status: action.status,
        done,
        failed,
    })?;
    Ok(keys)
}

/// Give up on a whole batch: nothing of it counts as confirmed (the next load
/// sends it again), and each customer is reported with `key` and `why`.
fn abandon(
    shared: &Shared,
    id: &str,
    target: String,
    customers: &[LedgerCustomer],
    key: &str,
    why: &str,
) -> Result<Vec<u128>> {
    shared.ledger.append(&LedgerEvent::Abandoned {
        at: now(),
        target,
        async_action_id: id.to_string(),
        reason: why.to_string(),
    })?;
    let mut report = shared
        .report
        .lock()
        .map_err(|_| anyhow::anyhow!("report lock poisoned"))?;
    for c in customers {
        report.push(ReportRow {
            source_id: c.0.clone(),
            line: Some(c.2),
            key: key.to_string(),
            message: why.to_string(),
            details: String::new(),
        });
    }
    shared
        .failed
        .fetch_add(customers.len() as u64, Ordering::Relaxed);
    Ok(vec![])
}

/// Whether a result says what became of every customer sent: the counts
/// cover the batch and every failure is named by a `source_id` we sent.
fn accounts_for_all(r: &crate::voucherify::AsyncResult, sent: &[LedgerCustomer]) -> bool {
    let named: HashSet<&str> = r
        .errors
        .iter()
        .filter_map(|e| e.source_id.as_deref())
        .collect();
    let ours: HashSet<&str> = sent.iter().map(|c| c.0.as_str()).collect();
    r.done_count + r.failed_count >= sent.len() as u64
        && named.len() as u64 >= r.failed_count
        && named.iter().all(|s| ours.contains(s))
}

/// The next estimate (ms) of how long an async action takes, from the last
/// one: Voucherify's own `processing_time` when given; otherwise, when the
/// first look already found it finished, something shorter than that look;
/// otherwise the time it took us to see it finish.
fn next_processing_estimate(
    old: u64,
    reported: Option<u64>,
    polls: u32,
    first_wait: Duration,
    took: Duration,
) -> u64 {
    let observed = match reported {
        Some(ms) => ms,
        None if polls == 1 => first_wait.as_millis() as u64 / 2,
        None => took.as_millis() as u64,
    };
    (old * 3 + observed) / 4
}

fn write_report(path: &Path, rows: &[ReportRow]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    {
        let mut w = csv::Writer::from_writer(f.writer());
        w.write_record(["source_id", "line", "key", "message", "details"])?;
        for r in rows {
            let line = r.line.map(|l| l.to_string()).unwrap_or_default();
            w.write_record([
                crate::records::guard_cell(&r.source_id).as_ref(),
                &line,
                &r.key,
                &crate::records::guard_cell(&r.message),
                &crate::records::guard_cell(&r.details),
            ])?;
        }
        w.flush()?;
    }
    f.commit()
}

/// How the rows of a customers file stand against the ledger.
#[derive(Debug, Default)]
pub struct Plan {
    pub rows: u64,
    pub invalid: u64,
    pub confirmed: u64,
    pub to_send: u64,
}

/// Compare `customers` with the ledger without sending anything (for `status`).
pub fn plan(customers: &Path) -> Result<Plan> {
    let rejects = std::env::temp_dir().join(format!("segsync-status-{}.csv", std::process::id()));
    let validated = validate(customers, true, &rejects)?;
    let _ = std::fs::remove_file(&rejects);
    let ledger = read_ledger(&ledger_path(customers), None)?;
    let mut rdr = open_csv(customers)?;
    let layout = read_layout(customers, &mut rdr).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let mut b = Batcher {
        rdr,
        layout,
        skip_lines: validated.invalid_lines.clone(),
        confirmed: Arc::new(ledger.confirmed),
        full: false,
        batch_size: 1000,
        max_bytes: MAX_REQUEST_BYTES,
        carry: None,
        unchanged: 0,
        error: None,
    };
    let to_send: u64 = b.by_ref().map(|b| b.customers.len() as u64).sum();
    Ok(Plan {
        rows: validated.rows,
        invalid: validated.invalid_lines.len() as u64,
        confirmed: b.unchanged,
        to_send,
    })
}

/// Rows of a CSV written by [`write_report`] (for status and tests).
pub fn count_csv_rows(path: &Path) -> Option<u64> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .ok()?;
    Some(rdr.byte_records().filter(|r| r.is_ok()).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processing_estimate_follows_the_server_and_never_feeds_on_its_own_wait() {
        // The server says 200 ms: the estimate converges there, whatever we waited.
        let mut est = 500;
        for _ in 0..30 {
            est = next_processing_estimate(
                est,
                Some(200),
                1,
                Duration::from_millis(est * 11 / 10),
                Duration::from_millis(est * 11 / 10),
            );
        }
        assert!((195..=205).contains(&est), "{est}");
        // No figure, and done at the first look: look sooner next time.
        let mut est = 5_000;
        for _ in 0..30 {
            est = next_processing_estimate(
                est,
                None,
                1,
                Duration::from_millis(est * 11 / 10),
                Duration::from_millis(est * 11 / 10),
            );
        }
        assert!(est < 500, "{est}");
        // Needed several looks: wait longer next time.
        assert!(
            next_processing_estimate(
                100,
                None,
                3,
                Duration::from_millis(110),
                Duration::from_millis(900)
            ) > 100
        );
    }

    #[test]
    fn a_result_must_account_for_every_customer_to_confirm_any() {
        use crate::voucherify::{AsyncResult, CustomerError};
        let sent: Vec<LedgerCustomer> = ["a", "b", "c"]
            .iter()
            .map(|s| LedgerCustomer(s.to_string(), "h".into(), 2))
            .collect();
        let err = |s: Option<&str>| CustomerError {
            source_id: s.map(str::to_string),
            ..Default::default()
        };
        let ok = AsyncResult {
            done_count: 2,
            failed_count: 1,
            errors: vec![err(Some("b"))],
        };
        assert!(accounts_for_all(&ok, &sent));
        let unnamed = AsyncResult {
            done_count: 2,
            failed_count: 1,
            errors: vec![err(None)],
        };
        assert!(!accounts_for_all(&unnamed, &sent));
        let short = AsyncResult {
            done_count: 1,
            failed_count: 0,
            errors: vec![],
        };
        assert!(!accounts_for_all(&short, &sent));
        let stranger = AsyncResult {
            done_count: 2,
            failed_count: 1,
            errors: vec![err(Some("zzz"))],
        };
        assert!(!accounts_for_all(&stranger, &sent));
    }

    #[test]
    fn email_plausibility() {
        for ok in ["a@b.co", "first.last+tag@example.com", "Zoë@exämple.de"] {
            assert!(plausible_email(ok), "{ok}");
        }
        for bad in ["", "a", "a@", "@b.co", "a@b", "a b@c.de", "a@.de", "a@de."] {
            assert!(!plausible_email(bad), "{bad}");
        }
    }
}
