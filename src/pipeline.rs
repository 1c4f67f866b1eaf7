//! `segsync run` with its stages overlapped (issue 33). Two things run
//! beside extract:
//!
//! - **the plan's export** ([`prefetch_export`]), so a slow export is not
//!   added to the run;
//! - **early sending** ([`follow`]): the customers of the profiles extract
//!   has written (up to its last checkpoint: bytes that are never rewritten)
//!   are mapped as transform maps them, checked as load checks them, and sent
//!   by the bulk upsert in full batches as they come, through load's own
//!   session and ledger. The last partial batch goes when extract ends.
//!
//! Then transform and load run as always, writing every file they write
//! alone. When anything was sent early, the load's plan brings the export
//! made as the run started up to date by a delta (the customers sent early
//! are in it), so it finds them unchanged: nothing is sent twice but the
//! batches in flight when a run is stopped.
//!
//! Duplicates: a profile is sent early only when it wins so far, by the rule
//! transform applies (`transform::later_wins`: updated more recently; the
//! first listed on a tie). A later profile of the same customer that wins is
//! sent too, with `null` for what only the earlier one gave
//! ([`clear_the_rest`]), so Voucherify ends as a run one stage after another
//! leaves it. Profiles the last transform set aside as beaten duplicates are
//! left to the load.

use crate::api::voucherify::VoucherifyClient;
use crate::load::batch::{Batch, Prepared};
use crate::load::confirm::{self, Session};
use crate::mapping::metadata_schema::CustomerSchema;
use crate::records::{guard_cell, COLUMNS};
use crate::spreadsheet::input::{check_row, Layout};
use crate::state::{self, ledger::LedgerWriter};
use crate::transform::{Chunk, TraitSet};
use crate::ui;
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The export a plan compares with, made in a task of its own as the run
/// starts (`export::export_held`, as the plan makes it: a delta of the kept
/// export when it allows); the task gives its id. The plan uses it as it is
/// while younger than `--plan-max-age`; a failure is said, and the plan
/// exports again. None when the load makes no plan.
pub fn prefetch_export(
    args: &crate::load::Args,
    data: &Path,
) -> Option<tokio::task::JoinHandle<Option<String>>> {
    if !args.plans() {
        return None;
    }
    let cfg = args.voucherify.resolve().ok()?;
    let target = crate::config::project_target(&cfg.api_url, &cfg.app_id);
    // Batches an earlier run left unconfirmed may still be in Voucherify's
    // queue: an export made now could miss what they set, and the load
    // checks them first. The plan exports after that check instead.
    let ledger = state::Beside::of(&state::customers(data)).ledger;
    match crate::state::ledger::read(&ledger, Some(&target)) {
        Ok(l) if l.pending.is_empty() => {}
        _ => return None,
    }
    let client = VoucherifyClient::new(cfg, crate::plan::http_settings()).ok()?;
    let files = state::Beside::of(&state::customers(data));
    let exports = args.exports.exports();
    let deadline = Duration::from_secs(args.export_timeout);
    Some(tokio::spawn(async move {
        let policy = crate::export::Policy {
            target: &target,
            full_every: exports.full_every,
            force_full: exports.force_full,
            reuse: None,
        };
        let fields = crate::fields::export_fields();
        match crate::export::export_held(&client, &files, &fields, deadline, &policy).await {
            Ok((crate::export::Exported::File(_) | crate::export::Exported::Empty, _, _)) => {
                ui::debug("run: Voucherify's customer export, made beside extract, is ready");
                crate::export::read_record(&files.export_meta).map(|r| r.export_id)
            }
            Ok(_) => None,
            Err(e) => {
                ui::warn(format!("run: Voucherify's customer export, started beside extract, failed ({e:#}); the plan exports again"));
                None
            }
        }
    }))
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
    /// Rows left to the load: confirmed already as they are.
    pub already_confirmed: u64,
    /// Rows left to the load for it to decide: beaten by the last
    /// transform, or metadata the schema refuses or that a later duplicate
    /// could not clear.
    pub left: u64,
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
    } else {
        None
    }
}

/// Follow extract's file and send each new customer as it comes, until
/// extract ends (`extract` says so); `since` is when the run started.
pub async fn follow(
    args: &crate::load::Args,
    data: &Path,
    since: SystemTime,
    mut extract: tokio::sync::watch::Receiver<Extract>,
) -> Early {
    let mut sender = match Sender::new(args, data).await {
        Ok(s) => s,
        Err(why) => {
            ui::info(format!("run: customers are sent after transform ({why})"));
            return Early {
                stopped: Some(why),
                ..Default::default()
            };
        }
    };
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

/// The profiles the last transform set aside as beaten duplicates, by
/// `segment_id` (none when there is no `rejected.csv`).
fn last_losers(data: &Path) -> HashSet<String> {
    let path = state::rejected(&state::customers(data));
    let Ok(mut rdr) = csv::Reader::from_path(&path) else {
        return HashSet::new();
    };
    (rdr.records().flatten())
        .filter(|r| r.get(1) == Some("duplicate_source_id"))
        .filter_map(|r| r.get(0).map(str::to_string))
        .collect()
}

/// The customer `c` (of `row`) sent after an earlier profile of it this
/// run gave `earlier`: the fields only the earlier one gave are sent as
/// `null` (inside `address` and `metadata` too, which are sent whole), so
/// Voucherify holds what the winner gives, as a run one stage after another
/// leaves it. The ledger records the row's own content key and fields, and
/// these as cleared (as a plan's update records them).
fn clear_the_rest(
    c: &mut Prepared,
    row: &crate::records::CustomerRow,
    earlier: &[String],
) -> Result<(), String> {
    let cleared: Vec<String> = (earlier.iter())
        .filter(|f| !c.fields.contains(f))
        .cloned()
        .collect();
    if cleared.is_empty() {
        return Ok(());
    }
    let serde_json::Value::Object(mut body) = row.to_request()? else {
        return Err("a request that is not an object".into());
    };
    for f in &cleared {
        match f.split_once('.') {
            Some((group, key)) => {
                let obj = body
                    .entry(group.to_string())
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                if let serde_json::Value::Object(o) = obj {
                    o.insert(key.to_string(), serde_json::Value::Null);
                }
            }
            None => {
                body.insert(f.clone(), serde_json::Value::Null);
            }
        }
    }
    c.body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    c.cleared = cleared;
    Ok(())
}

/// Whether a row's metadata may go early: the schema finds nothing wrong
/// with it (what it refuses the load refuses by name, before sending), it
/// lacks no key the schema requires (the row may be a new customer), and
/// it sets no array-typed key. A later duplicate that wins clears what
/// only the earlier profile gave with `null`, and `null` for an array-typed
/// key is refused (the sandbox's reading: the schema's `array: true` admits
/// arrays only, and no document says `null` is one), which would leave the
/// loser's values in place.
fn sendable_metadata(schema: &CustomerSchema, required: &[String], metadata: Option<&str>) -> bool {
    let Some(text) = metadata.filter(|t| !t.trim().is_empty()) else {
        return required.is_empty();
    };
    let Ok(serde_json::Value::Object(meta)) = serde_json::from_str(text) else {
        return false;
    };
    schema.check(&meta).is_empty()
        && (required.iter()).all(|k| meta.get(k).is_some_and(|v| !v.is_null()))
        && !meta
            .keys()
            .any(|k| (schema.properties.get(k)).is_some_and(|d| d.array == Some(true)))
}

/// Maps, checks and sends.
struct Sender {
    session: Arc<Session>,
    mapping: crate::mapping::Mapping,
    wanted: TraitSet,
    layout: Layout,
    /// The project's customer metadata schema, as the run started.
    schema: CustomerSchema,
    /// The keys it requires.
    required: Vec<String>,
    /// Content keys the ledger confirms: sent already as they are.
    confirmed: HashSet<u128>,
    /// Per source id key: the `updated_at` (ms) of the profile that wins so
    /// far (transform's rule).
    winners: HashMap<u128, i64>,
    /// Per source id key sent early in this run: the fields of the row sent
    /// last (an index into `lists`, interned: few distinct lists).
    sent_fields: HashMap<u128, u32>,
    /// Profiles the last transform set aside as a duplicate a later profile
    /// beat (`rejected.csv`): left to the load, so a rerun whose listing
    /// order changed does not send the loser and then the winner again.
    losers: HashSet<String>,
    /// The batch being filled holds a profile that beats one sent earlier:
    /// every batch in flight is confirmed before it goes (batches in flight
    /// at once may reach Voucherify's queue in any order).
    after_in_flight: bool,
    lists: Vec<Vec<String>>,
    list_ids: HashMap<Vec<String>, u32>,
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
    async fn new(args: &crate::load::Args, data: &Path) -> Result<Sender, String> {
        if let Some(why) = not_early(args) {
            return Err(why.to_string());
        }
        let cfg = args.voucherify.resolve().map_err(|e| format!("{e:#}"))?;
        let target = crate::config::project_target(&cfg.api_url, &cfg.app_id);
        let ledger_file = state::Beside::of(&state::customers(data)).ledger;
        let ledger = crate::state::ledger::read(&ledger_file, Some(&target))
            .map_err(|e| format!("{e:#}"))?;
        if !ledger.pending.is_empty() {
            return Err(format!(
                "{} batches an earlier run left unconfirmed: the load checks them first",
                ledger.pending.len()
            ));
        }
        let client = VoucherifyClient::new(cfg, crate::load::setup::http_settings(args))
            .map_err(|e| format!("{e:#}"))?;
        // Rows the project's metadata schema refuses are the load's to
        // refuse by name, before it sends anything.
        let schema = crate::mapping::metadata_schema::read(&client)
            .await
            .map_err(|e| format!("cannot read the project's customer metadata schema: {e}"))?;
        let writer = LedgerWriter::open(&ledger_file, &target).map_err(|e| format!("{e:#}"))?;
        let mapping = args.mapping.resolve().map_err(|e| format!("{e:#}"))?;
        Ok(Sender {
            session: Arc::new(Session::new(
                client,
                writer,
                Duration::from_secs(args.poll_timeout),
            )),
            wanted: mapping.traits_read().into_iter().collect(),
            mapping,
            layout: Layout::standard(),
            required: schema.required_keys(),
            schema,
            confirmed: ledger.confirmed,
            winners: HashMap::new(),
            sent_fields: HashMap::new(),
            losers: last_losers(data),
            after_in_flight: false,
            lists: Vec::new(),
            list_ids: HashMap::new(),
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

    /// Map, check and batch the profiles of these chunks.
    async fn take(&mut self, chunks: Vec<Chunk>) -> Result<()> {
        for chunk in chunks {
            let rows = chunk
                .rows(&self.mapping, &self.wanted)
                .map_err(|e| anyhow::anyhow!("profiles.ndjson:{e}"))?;
            for (updated, cells) in rows {
                if let Some((c, beats)) = self.prepare(updated, &cells) {
                    self.add(c, beats).await?;
                }
            }
        }
        Ok(())
    }

    /// The customer to send for one mapped row, when it is valid, wins so
    /// far, and is not confirmed as it is; with whether it beats a profile
    /// sent (or batched) earlier in this run.
    fn prepare(&mut self, updated: i64, cells: &[Option<String>]) -> Option<(Prepared, bool)> {
        // As transform writes it (cells guarded), as load reads it back.
        let guarded: Vec<String> = (0..COLUMNS.len())
            .map(|i| {
                let cell = cells.get(i).and_then(|c| c.as_deref()).unwrap_or("");
                guard_cell(cell).into_owned()
            })
            .collect();
        let rec = csv::ByteRecord::from(guarded);
        let (row, problems) = check_row(&self.layout, &rec);
        let sid = row.source_id.as_deref().filter(|_| problems.is_empty())?;
        if (row.segment_id.as_ref()).is_some_and(|s| self.losers.contains(s))
            || !sendable_metadata(&self.schema, &self.required, row.metadata.as_deref())
        {
            self.early.left += 1;
            return None;
        }
        let key = crate::keys::h128(sid);
        if let Some(kept) = self.winners.get(&key) {
            if !crate::transform::later_wins(*kept, updated) {
                return None;
            }
        }
        self.winners.insert(key, updated);
        let mut c = Prepared::of_row(&row, 0).ok()?;
        let content = u128::from_str_radix(&c.hash, 16).ok()?;
        // A profile that beats one sent earlier in this run goes too, even
        // when the ledger confirms its content: Voucherify holds the
        // earlier one's now.
        let earlier = self
            .sent_fields
            .get(&key)
            .map(|i| self.lists[*i as usize].clone());
        if !self.confirmed.insert(content) && earlier.is_none() {
            self.early.already_confirmed += 1;
            return None;
        }
        let beats = earlier.is_some();
        if let Some(earlier) = earlier {
            clear_the_rest(&mut c, &row, &earlier).ok()?;
        }
        let id = match self.list_ids.get(&c.fields) {
            Some(id) => *id,
            None => {
                let id = self.lists.len() as u32;
                self.lists.push(c.fields.clone());
                self.list_ids.insert(c.fields.clone(), id);
                id
            }
        };
        self.sent_fields.insert(key, id);
        Some((c, beats))
    }

    /// Add a customer to the batch being filled. One that beats a profile
    /// sent earlier starts a batch of its own making (the beaten one may be
    /// in the batch being filled: one batch naming a customer twice leaves
    /// an order nobody documents), and that batch goes only once every
    /// batch before it is confirmed.
    async fn add(&mut self, c: Prepared, beats: bool) -> Result<()> {
        if !self.batch.is_empty() && (beats || self.bytes + c.body.len() + 1 > self.max_bytes) {
            self.send().await?;
        }
        self.after_in_flight |= beats;
        self.bytes += c.body.len() + 1;
        self.batch.push(c);
        if self.batch.len() >= self.batch_size {
            self.send().await?;
        }
        Ok(())
    }

    /// Send the batch in a task of its own, at most `concurrency` at once.
    async fn send(&mut self) -> Result<()> {
        while self.tasks.len() >= self.concurrency
            || (self.after_in_flight && !self.tasks.is_empty())
        {
            self.join_one().await?;
        }
        self.after_in_flight = false;
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
        ui::info(format!(
            "run: {} customers sent during extract in {} batches, {} confirmed; {} rows confirmed already as they are, {} left to the load",
            self.early.sent, self.early.batches, self.early.confirmed, self.early.already_confirmed, self.early.left
        ));
        self.early
    }
}
