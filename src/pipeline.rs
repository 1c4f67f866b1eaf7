//! `segsync run` with its stages overlapped. Two things run beside extract:
//!
//! - **the plan's export** ([`prefetch_export`]), made as the run starts, so
//!   a slow export is not added to the run;
//! - **early sending** ([`follow`]): the load deciding sooner, by the plan's
//!   own rule, for the customers that cannot change before transform.
//!
//! The rule that keeps `run` exact (docs/DESIGN.md, "What `run` may send
//! early"): a customer is sent early only when the stages one after another
//! would send it the same request. So it is sent only when
//! - extract's census is complete (every listed profile's ids are read) and
//!   no other profile of this extract maps to its `source_id`: a duplicate
//!   is held back for the load, which sends the one transform keeps;
//! - the load would accept every row: `run` sends nothing early where the
//!   project's metadata schema could refuse one (the load then sends
//!   nothing at all), unless `--skip-invalid` (the load then sets the
//!   refused rows aside and sends the rest, as early sending does);
//! - the plan, compared with the export made as the run started and the
//!   ledger, sends something for it; what it sends is the plan's request
//!   (the whole row for a new customer, the changed fields for an update),
//!   recorded in the ledger as the load records it.
//!
//! Then transform and load run as always, writing every file they write
//! alone. The load's plan brings the export up to date by a delta (the
//! customers sent early are in it), so it finds them unchanged; a customer
//! Voucherify refused early is reported, not sent a second time.

use crate::api::voucherify::VoucherifyClient;
use crate::extract::census::Census;
use crate::load::batch::{Batch, Prepared};
use crate::load::confirm::{self, Session};
use crate::load::report::ReportRow;
use crate::mapping::metadata_schema::CustomerSchema;
use crate::plan::compare::Action;
use crate::records::{guard_cell, COLUMNS};
use crate::spreadsheet::input::{check_row, Layout};
use crate::state::{self, ledger::LedgerWriter};
use crate::transform::{Chunk, TraitSet};
use crate::ui;
use anyhow::Result;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Where the export made beside extract stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefetch {
    Waiting,
    /// Kept as `load.export.csv`: the export's id.
    Ready(String),
    /// None made, or it failed (the plan exports again).
    Failed,
}

/// The export a plan compares with, made in a task of its own as the run
/// starts (`export::export_held`, as the plan makes it: a delta of the kept
/// export when it allows). The plan uses it as it is while younger than
/// `--plan-max-age`; a failure is said, and the plan exports again.
pub fn prefetch_export(args: &crate::load::Args, data: &Path) -> watch::Receiver<Prefetch> {
    let (tx, rx) = watch::channel(Prefetch::Waiting);
    let Some((client, target)) = prefetchable(args, data) else {
        tx.send_replace(Prefetch::Failed);
        return rx;
    };
    let files = state::Beside::of(&state::customers(data));
    let exports = args.exports.exports();
    let created_too = args.method != crate::load::import::Method::Bulk;
    let deadline = Duration::from_secs(args.export_timeout);
    tokio::spawn(async move {
        let policy = crate::export::Policy {
            ledger: Some(&files.ledger),
            target: &target,
            full_every: exports.full_every,
            force_full: exports.force_full,
            created_too,
            reuse: None,
        };
        let fields = crate::fields::export_fields();
        let r = crate::export::export_held(&client, &files, &fields, deadline, &policy).await;
        let ready = match r {
            Ok((crate::export::Exported::File(_) | crate::export::Exported::Empty, _, _)) => {
                ui::debug("run: Voucherify's customer export, made beside extract, is ready");
                crate::export::read_record(&files.export_meta).map(|r| r.export_id)
            }
            Ok((crate::export::Exported::Unknown(why), _, _)) => {
                ui::info(format!("run: Voucherify's customer export, started beside extract, cannot say what is held ({why}); the plan exports again"));
                None
            }
            Err(e) => {
                ui::warn(format!("run: Voucherify's customer export, started beside extract, failed ({e:#}); the plan exports again"));
                None
            }
        };
        tx.send_replace(ready.map_or(Prefetch::Failed, Prefetch::Ready));
    });
    rx
}

/// The client and project for the prefetch, when the load makes a plan and
/// no batch an earlier run left is pending (an export made now could miss
/// what such a batch sets; the load checks them first, then exports).
fn prefetchable(args: &crate::load::Args, data: &Path) -> Option<(VoucherifyClient, String)> {
    if !args.plans() {
        return None;
    }
    let cfg = args.voucherify.resolve().ok()?;
    let target = crate::config::project_target(&cfg.api_url, &cfg.app_id);
    let ledger = state::Beside::of(&state::customers(data)).ledger;
    match crate::state::ledger::read(&ledger, Some(&target)) {
        Ok(l) if l.pending.is_empty() => {}
        _ => return None,
    }
    let settings = crate::plan::http_settings(args.exports.max_export_bytes);
    let client = VoucherifyClient::new(cfg, settings).ok()?;
    Some((client, target))
}

/// What early sending did.
#[derive(Debug, Default, Clone)]
pub struct Early {
    /// Customers sent (accepted by the bulk endpoint).
    pub sent: u64,
    /// Customers Voucherify confirmed.
    pub confirmed: u64,
    /// Batches sent.
    pub batches: u64,
    /// Rows the plan would not send: Voucherify holds them as they are.
    pub unchanged: u64,
    /// Rows of a `source_id` another profile of this extract shares: the
    /// load sends the one transform keeps.
    pub duplicates: u64,
    /// Rows left to the load: the schema refuses them, or they lack a key
    /// it requires.
    pub left: u64,
    /// Customers Voucherify refused by name, with the content refused: the
    /// load reports them and does not send the same content again.
    pub refused: Vec<ReportRow>,
    /// Why early sending did not run or stopped, when it did not run to
    /// the end (the load then sends what it did not).
    pub stopped: Option<String>,
}

/// Where extract stands, for the follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extract {
    Running,
    /// Ended well: `profiles.ndjson` is whole.
    Done,
    /// Ended with an error: nothing more is sent early.
    Failed,
}

/// Why early sending cannot run for these flags, if it cannot.
pub fn not_early(args: &crate::load::Args) -> Option<&'static str> {
    if args.method != crate::load::import::Method::Bulk {
        Some("--method import|auto sends new customers by CSV import, after transform")
    } else if args.full {
        Some("--full sends every row again, after transform")
    } else if !args.plans() {
        Some("the load decides by the ledger alone, after transform")
    } else {
        None
    }
}

/// What the follower waits on.
pub struct Watch {
    pub extract: watch::Receiver<Extract>,
    pub census: Arc<Census>,
    pub export: watch::Receiver<Prefetch>,
}

/// Follow extract's file and send each customer the plan would send, once
/// the census and the export allow it, until extract ends; `since` is when
/// the run started.
pub async fn follow(args: &crate::load::Args, data: &Path, since: SystemTime, w: Watch) -> Early {
    let Watch {
        mut extract,
        census,
        mut export,
    } = w;
    let ready = match ready(&mut extract, &census, &mut export).await {
        Ok(id) => id,
        Err(why) => return standing_aside(why),
    };
    let mut sender = match Sender::new(args, data, census).await {
        Ok(s) => s,
        Err(why) => return standing_aside(why),
    };
    ui::debug(format!(
        "run: sending early, by the plan against export {ready}"
    ));
    let profiles = state::profiles(data);
    let (partial, checkpoint) = (state::partial(&profiles), state::checkpoint(&profiles));
    let mut read = Reader::default();
    loop {
        let now = *extract.borrow();
        let outcome = match now {
            // The rest of the file, in steps.
            Extract::Done => read.next(&profiles, u64::MAX),
            // Whole lines up to extract's last checkpoint, once this run's
            // extract wrote one (bytes before it are never rewritten).
            Extract::Running => match checkpointed(&checkpoint, since) {
                Some(end) => read.next(&partial, end),
                None => Ok(Vec::new()),
            },
            Extract::Failed => break,
        };
        let last = matches!(&outcome, Ok(c) if c.is_empty()) && now == Extract::Done;
        let sent = match outcome {
            Ok(chunk) => sender.take(chunk).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            sender.stop(format!("{e:#}"));
            break;
        }
        if last {
            break;
        }
        if now == Extract::Done {
            // Extract has ended: the line stops redrawing (the last
            // batches go quickly; the summary says what went).
            sender.progress.finish();
            continue;
        }
        // Bounded by extract, which ends (or fails) in its own time; a
        // sender gone without a word is a failed extract.
        let wait = tokio::time::timeout(Duration::from_millis(250), extract.changed()).await;
        if matches!(wait, Ok(Err(_))) {
            break;
        }
    }
    sender.finish().await
}

fn standing_aside(why: String) -> Early {
    ui::info(format!("run: customers are sent after transform ({why})"));
    Early {
        stopped: Some(why),
        ..Default::default()
    }
}

/// Wait until the census is complete and the export is kept (the export's
/// id), or say why nothing is sent early. Every wait is bounded: extract
/// ends in its own time, the export by its deadline.
async fn ready(
    extract: &mut watch::Receiver<Extract>,
    census: &Census,
    export: &mut watch::Receiver<Prefetch>,
) -> Result<String, String> {
    loop {
        let ex = export.borrow().clone();
        match ex {
            Prefetch::Failed => {
                return Err("the plan's export, made beside extract, is not there".into())
            }
            Prefetch::Ready(id) if census.is_complete() => return Ok(id),
            _ => {}
        }
        if *extract.borrow() == Extract::Failed {
            return Err("extract failed".into());
        }
        tokio::select! {
            _ = extract.changed() => {}
            r = export.changed() => if r.is_err() && *export.borrow() == Prefetch::Waiting {
                return Err("the plan's export, made beside extract, ended without a word".into());
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// The offset of extract's last checkpoint, when this run's extract wrote
/// it (the file is newer than the run's start).
fn checkpointed(path: &Path, since: SystemTime) -> Option<u64> {
    let written = std::fs::metadata(path).ok()?.modified().ok()?;
    if written < since {
        return None;
    }
    let cp = state::checkpoint::read(path).ok()??;
    Some(cp.offset)
}

/// Reads whole lines of extract's file, from where it left off.
#[derive(Default)]
struct Reader {
    at: u64,
    line: u64,
}

impl Reader {
    /// Whole lines from where the last read ended up to `end` (or the end
    /// of the file).
    fn next(&mut self, path: &Path, end: u64) -> Result<Vec<Chunk>> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(path) else {
            return Ok(Vec::new());
        };
        let size = f.metadata()?.len().min(end);
        // At most 16 MB at a time (more only for a longer line): a follower
        // behind extract catches up in steps, never holding the file.
        let mut cap = 16u64 << 20;
        let data = loop {
            let len = size.min(self.at + cap);
            if len <= self.at {
                return Ok(Vec::new());
            }
            f.seek(SeekFrom::Start(self.at))?;
            let mut data = Vec::with_capacity((len - self.at) as usize);
            (&mut f).take(len - self.at).read_to_end(&mut data)?;
            match data.iter().rposition(|b| *b == b'\n') {
                Some(i) => {
                    data.truncate(i + 1);
                    break data;
                }
                None if len == self.at + cap => cap *= 2,
                // A last line still being written.
                None => return Ok(Vec::new()),
            }
        };
        self.at += data.len() as u64;
        let first_line = self.line + 1;
        self.line += data.iter().filter(|b| **b == b'\n').count() as u64;
        Ok(vec![Chunk { first_line, data }])
    }
}

/// Whether the project's customer metadata schema could refuse a row: it
/// defines a key (a type, bounds, a required key) or allows defined keys
/// only. The load refuses a whole file for one such row.
pub fn schema_may_refuse(schema: &CustomerSchema) -> bool {
    !schema.properties.is_empty() || schema.allow_defined_only == Some(true)
}

/// An error as early sending says why it stands aside.
fn said(e: impl Into<anyhow::Error>) -> String {
    format!("{:#}", e.into())
}

/// Maps, checks, compares and sends.
struct Sender {
    session: Arc<Session>,
    mapping: crate::mapping::Mapping,
    /// The hand edits kept in edits.csv, applied as transform applies them.
    edits: crate::spreadsheet::overrides::Overrides,
    wanted: TraitSet,
    layout: Layout,
    census: Arc<Census>,
    /// The plan's comparison: the export made as the run started, the ledger.
    basis: crate::plan::Basis,
    /// The project's customer metadata schema, as the run started.
    schema: CustomerSchema,
    /// The keys it requires (of a new customer).
    required: Vec<String>,
    batch: Vec<Prepared>,
    bytes: usize,
    batch_size: usize,
    max_bytes: usize,
    concurrency: usize,
    tasks: tokio::task::JoinSet<Result<()>>,
    progress: Arc<ui::Progress>,
    early: Early,
}

impl Sender {
    async fn new(
        args: &crate::load::Args,
        data: &Path,
        census: Arc<Census>,
    ) -> Result<Sender, String> {
        if let Some(why) = not_early(args) {
            return Err(why.to_string());
        }
        let cfg = args.voucherify.resolve().map_err(said)?;
        let target = crate::config::project_target(&cfg.api_url, &cfg.app_id);
        let files = state::Beside::of(&state::customers(data));
        let ledger = crate::state::ledger::read(&files.ledger, Some(&target)).map_err(said)?;
        if !ledger.pending.is_empty() {
            return Err(format!(
                "{} batches an earlier run left unconfirmed: the load checks them first",
                ledger.pending.len()
            ));
        }
        let client =
            VoucherifyClient::new(cfg, crate::load::setup::http_settings(args)).map_err(said)?;
        let schema = crate::mapping::metadata_schema::read(&client)
            .await
            .map_err(|e| format!("cannot read the project's customer metadata schema: {e}"))?;
        if schema_may_refuse(&schema) && !args.skip_invalid {
            return Err("the project's customer metadata schema could refuse a row, and the load then sends nothing; `run --skip-invalid` sends the rows it accepts early".into());
        }
        let rules = crate::load::by_plan::rules(args);
        let basis = crate::plan::Basis::open(&files, &files.export, &target, &schema, rules)
            .map_err(said)?;
        // What Voucherify held before this run sends, for `segsync undo`.
        let from = args
            .verify_since
            .unwrap_or_else(|| std::fs::metadata(&files.ledger).map_or(0, |m| m.len()));
        crate::load::kept_before::keep_before(&files, &target, from).map_err(said)?;
        let writer = LedgerWriter::open(&files.ledger, &target).map_err(said)?;
        let mapping = args.mapping.resolve().map_err(said)?;
        let session = Session::new(client, writer, args.timeouts());
        Ok(Sender {
            session: Arc::new(session),
            wanted: mapping.traits_read().into_iter().collect(),
            mapping,
            edits: crate::spreadsheet::overrides::Overrides::read(&state::edits(&files.customers))
                .map_err(said)?,
            layout: Layout::standard(),
            census,
            basis,
            required: schema.required_keys(),
            schema,
            batch: Vec::new(),
            bytes: 2,
            batch_size: args.batch_size as usize,
            max_bytes: args.max_batch_bytes as usize,
            concurrency: args.concurrency.max(1) as usize,
            tasks: tokio::task::JoinSet::new(),
            progress: Arc::new(ui::Progress::new("run: sent early", "customers", None)),
            early: Early::default(),
        })
    }

    /// Map, check, compare and batch the profiles of these chunks.
    async fn take(&mut self, chunks: Vec<Chunk>) -> Result<()> {
        for chunk in chunks {
            let rows = chunk
                .rows(&self.mapping, &self.edits, &self.wanted)
                .map_err(|e| anyhow::anyhow!("profiles.ndjson:{e}"))?;
            for (_, cells) in rows {
                if let Some(c) = self.prepare(&cells)? {
                    self.add(c).await?;
                }
            }
        }
        Ok(())
    }

    /// The customer to send for one mapped row, when the plan would send
    /// it now: the row as transform writes it and load reads it back, its
    /// `source_id` mapped from this one profile, accepted by the schema,
    /// and changed against the export.
    fn prepare(&mut self, cells: &[Option<String>]) -> Result<Option<Prepared>> {
        let guarded: Vec<String> = (0..COLUMNS.len())
            .map(|i| guard_cell(cells.get(i).and_then(|c| c.as_deref()).unwrap_or("")).into_owned())
            .collect();
        let (row, problems) = check_row(&self.layout, &csv::ByteRecord::from(guarded));
        if let Some((column, why)) = problems.first() {
            // Transform writes no such row; were it to, the load would
            // refuse the whole file, and nothing more may go early.
            anyhow::bail!("a row the load would refuse ({column}: {why})");
        }
        let sid = row.source_id.clone().unwrap_or_default();
        if self.census.profiles_of(&sid) != 1 {
            self.early.duplicates += 1;
            return Ok(None);
        }
        let serde_json::Value::Object(request) = row
            .to_request()
            .map_err(|e| anyhow::anyhow!("{sid}: {e}"))?
        else {
            anyhow::bail!("{sid}: a request that is not an object");
        };
        let meta = request.get("metadata").and_then(|m| m.as_object());
        if meta.is_some_and(|m| !self.schema.check(m).is_empty()) {
            self.early.left += 1;
            return Ok(None);
        }
        let mut c = Prepared::of_row(&row, 0).map_err(|e| anyhow::anyhow!("{sid}: {e}"))?;
        let key = u128::from_str_radix(&c.hash, 16)?;
        let change = self.basis.change(&sid, &request, key)?;
        let Some((action, send)) = change.and_then(|c| Some((c.action, c.send?))) else {
            self.early.unchanged += 1;
            return Ok(None);
        };
        if action == Action::Create
            && (self.required.iter())
                .any(|k| meta.and_then(|m| m.get(k)).is_none_or(|v| v.is_null()))
        {
            self.early.left += 1;
            return Ok(None);
        }
        if action != Action::Create {
            c.cleared = crate::records::null_fields(&send);
            c.body = serde_json::to_vec(&send)?;
        }
        Ok(Some(c))
    }

    /// Add a customer to the batch being filled.
    async fn add(&mut self, c: Prepared) -> Result<()> {
        if !self.batch.is_empty() && self.bytes + c.body.len() + 1 > self.max_bytes {
            self.send().await?;
        }
        self.bytes += c.body.len() + 1;
        self.batch.push(c);
        if self.batch.len() >= self.batch_size {
            self.send().await?;
        }
        Ok(())
    }

    /// Send the batch in a task of its own, at most `concurrency` at once.
    async fn send(&mut self) -> Result<()> {
        while self.tasks.len() >= self.concurrency {
            self.join_one().await?;
        }
        let customers = std::mem::take(&mut self.batch);
        self.bytes = 2;
        if customers.is_empty() {
            return Ok(());
        }
        let (s, p) = (self.session.clone(), self.progress.clone());
        self.tasks
            .spawn(async move { confirm::send_batch(&s, Batch { customers }, &p).await });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(anyhow::anyhow!("a batch sent early ended in a panic: {e}")),
            None => Ok(()),
        }
    }

    fn stop(&mut self, why: String) {
        ui::warn(format!(
            "run: sending early stopped ({why}); the load sends what is left"
        ));
        self.early.stopped.get_or_insert(why);
        self.session.halt();
    }

    /// Send the last partial batch, wait for every batch, and say so.
    async fn finish(mut self) -> Early {
        if self.early.stopped.is_none() {
            if let Err(e) = self.send().await {
                self.stop(format!("{e:#}"));
            }
        }
        while !self.tasks.is_empty() {
            if let Err(e) = self.join_one().await {
                self.stop(format!("{e:#}"));
            }
        }
        self.progress.finish();
        let s = &self.session;
        self.early.sent = s.sent.load(Ordering::Relaxed);
        self.early.confirmed = s.confirmed.load(Ordering::Relaxed);
        self.early.batches = s.batches.load(Ordering::Relaxed);
        if let Ok(report) = s.report.lock() {
            self.early.refused = report
                .iter()
                .filter(|r| r.content.is_some())
                .cloned()
                .collect();
        }
        let e = &self.early;
        ui::info(format!(
            "run: {} customers sent during extract in {} batches, {} confirmed, {} refused; {} rows Voucherify holds as they are, {} sharing a source_id held back and {} left to the load",
            e.sent, e.batches, e.confirmed, e.refused.len(), e.unchanged, e.duplicates, e.left
        ));
        self.early
    }
}
