//! `segsync plan`: what `load` would change in Voucherify, field by field.
//!
//! Reads `customers.csv` (what Segment says), a new customer export (what
//! Voucherify holds now, [`held`]) and the ledger (what segsync last
//! confirmed, [`confirmed`]); compares each customer ([`compare`]) and
//! writes `load.plan.csv` (a line per customer that would change, with the
//! exact request), `load.orphans.csv` ([`orphans`]) and `load.plan.json`
//! (when, from what, the counts). Streaming: the export and the ledger are
//! held as small indexes, the customers file is read row by row.

pub mod compare;
#[cfg(test)]
mod compare_tests;
pub mod confirmed;
pub mod digest;
#[cfg(test)]
mod digest_tests;
pub mod file;
pub mod held;
pub mod obtain;
pub mod orphans;

use crate::api::voucherify::VoucherifyClient;
use crate::config::VoucherifyArgs;
use crate::export::{self, Exported};
use crate::mapping::metadata_schema::CustomerSchema;
use crate::spreadsheet::batch::Prepared;
use crate::spreadsheet::batch::{content_key_of, Batcher};
use crate::spreadsheet::input::{validate, OnInvalid};
use crate::state;
use crate::ui;
use anyhow::Result;
use compare::Rules;
use file::{Counts, Hashes, Meta, PlanIndex, PlanIndexBuilder, PlanWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_MAX_AGE: u64 = 300;

/// The longest wait for the export, as `load`'s (seconds).
pub const DEFAULT_EXPORT_TIMEOUT: u64 = 900;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Customers CSV to compare [default: DATA_DIR/customers.csv]
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Plan to send null for mapped fields the source no longer has and segsync itself set before
    #[arg(long = "clear-removed")]
    pub clear_removed: bool,
    /// Plan to skip customers Voucherify changed after segsync last confirmed them (by default Segment wins)
    #[arg(long = "keep-newer")]
    pub keep_newer: bool,
    /// Longest wait for Voucherify's customer export to finish
    #[arg(long = "export-timeout", default_value_t = DEFAULT_EXPORT_TIMEOUT, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub export_timeout: u64,
    /// Compare with this customer export file instead of making a new export
    #[arg(long = "export-file", value_name = "FILE")]
    pub export_file: Option<PathBuf>,
    #[command(flatten)]
    pub exports: ExportArgs,
    #[command(flatten)]
    pub voucherify: VoucherifyArgs,
}

/// Where a plan's state comes from.
pub enum Source<'a> {
    /// A new export (a delta of the kept one when it allows), polled for at
    /// most this long.
    Export(&'a VoucherifyClient, Duration, Exports),
    /// An export file already downloaded.
    File(&'a Path),
}

/// When a plan's export may be a delta of the kept one.
#[derive(Debug, Clone, Copy)]
pub struct Exports {
    /// A full export again when the kept one's is older than this.
    pub full_every: Duration,
    /// Always a full export.
    pub force_full: bool,
}

/// The flags that set [`Exports`], on `plan` and `load`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Export every customer again, not only those updated since the kept export
    #[arg(long = "full-export")]
    pub full_export: bool,
    /// Days after which a full export is taken again instead of a delta
    #[arg(long = "full-export-every", default_value_t = 7, value_name = "DAYS")]
    pub full_export_every: u64,
}

impl ExportArgs {
    pub fn exports(&self) -> Exports {
        Exports {
            full_every: Duration::from_secs(self.full_export_every * 86_400),
            force_full: self.full_export,
        }
    }
}

/// A plan made.
pub struct Made {
    pub meta: Meta,
    /// The export's outcome (for the import's "who exists").
    pub exported: Exported,
}

/// A plan makes a few calls: the schema read, the export and its polls.
fn http_settings() -> crate::api::http::HttpSettings {
    crate::api::http::HttpSettings {
        concurrency: 2,
        rate: None,
        rate_period: Duration::from_secs(60),
        burst: Some(1),
        timeout: Duration::from_secs(120),
        policy: crate::api::http::RetryPolicy::default(),
    }
}

/// The `plan` command.
pub async fn run(args: &Args, data_dir: &Path) -> Result<Meta> {
    let input = args
        .input
        .clone()
        .unwrap_or_else(|| state::customers(data_dir));
    if !input.exists() {
        return Err(crate::error::UsageError::new(format!(
            "{} not found: `segsync transform` writes it, or pass --in FILE",
            input.display()
        ))
        .into());
    }
    let cfg = args.voucherify.resolve()?;
    let target = crate::config::project_target(&cfg.api_url, &cfg.app_id);
    let client = VoucherifyClient::new(cfg, http_settings())?;
    let schema = crate::mapping::metadata_schema::read(&client)
        .await
        .map_err(|e| crate::api::api_error(e).context("cannot read the project's customer metadata schema, which says which metadata the export shows"))?;
    let rules = Rules {
        clear_removed: args.clear_removed,
        keep_newer: args.keep_newer,
    };
    let source = match &args.export_file {
        Some(f) if !f.is_file() => {
            return Err(crate::error::UsageError::new(format!(
                "{}: --export-file names no file (a directory, or nothing); give the customer export's CSV file",
                f.display()
            ))
            .into())
        }
        Some(f) => Source::File(f),
        None => Source::Export(
            &client,
            Duration::from_secs(args.export_timeout),
            args.exports.exports(),
        ),
    };
    let files = state::Beside::of(&input);
    let made = make(&files, &target, &schema, rules, Invalid::Validate, source)
        .await?
        .map_err(|why| anyhow::anyhow!("cannot plan: {why}; nothing can be compared (`segsync load --from-ledger` decides by the ledger alone)"))?;
    let calls = client.stats().get(&client.stats().requests);
    say(&made.meta, &files, calls);
    Ok(Meta { calls, ..made.meta })
}

/// The rows of `customers.csv` a plan leaves out.
pub enum Invalid<'a> {
    /// Known already (`load` validated every row).
    Known(&'a std::collections::HashSet<u64>),
    /// Found by validating the file as the plan reads its other inputs.
    Validate,
}

/// Make a plan: export (or read the file), compare every valid row, write
/// the plan's files. Err inside when the export cannot say what is held.
pub async fn make(
    files: &state::Beside,
    target: &str,
    schema: &CustomerSchema,
    rules: Rules,
    invalid_lines: Invalid<'_>,
    source: Source<'_>,
) -> Result<Result<Made, String>> {
    let started = std::time::Instant::now();
    let (exported, export_calls, export_kind) = match source {
        Source::File(f) => (
            Exported::File(f.to_path_buf()),
            0,
            "the file given".to_string(),
        ),
        Source::Export(client, deadline, exports) => {
            ui::info("plan: exporting Voucherify's customers (the mapped fields, updated_at and the schema's metadata)");
            let policy = export::Policy {
                target,
                full_every: exports.full_every,
                force_full: exports.force_full,
            };
            let fields = crate::fields::export_fields();
            let (e, calls, kind) =
                export::export_held(client, files, &fields, deadline, &policy).await?;
            let kind = match kind {
                export::Kind::Full => "a full export".to_string(),
                export::Kind::Delta { rows } => format!(
                    "a delta export ({rows} customers updated since the kept one) applied to the kept export"
                ),
            };
            (e, calls, kind)
        }
    };
    let export_path = match &exported {
        Exported::File(p) => p.clone(),
        Exported::Empty => files.export.clone(),
        Exported::Unknown(why) => return Ok(Err(why.clone())),
    };
    let input = &files.customers;
    // The inputs are read two at a time: the ledger beside the rows'
    // validation (for `segsync plan`), then the export's index beside the
    // inputs' hashes. The two pairs that need the most memory (the ledger's
    // long lines, the index as it grows) are not read at once.
    let failed = |what: &str| anyhow::anyhow!("plan: reading {what} failed unexpectedly (a panic)");
    let (confirmed, invalid_lines) = std::thread::scope(|s| {
        let invalid = s.spawn(|| match invalid_lines {
            Invalid::Known(lines) => Ok(lines.clone()),
            Invalid::Validate => {
                validate(input, OnInvalid::Count, &Default::default()).map(|v| v.invalid_lines)
            }
        });
        let confirmed = confirmed::read(&files.ledger, target);
        let invalid = invalid.join().map_err(|_| failed("customers.csv"));
        Ok::<_, anyhow::Error>((confirmed?, invalid??))
    })?;
    let (mut hashes, mut held) = std::thread::scope(|s| {
        let hashes = s.spawn(|| inputs(files, &export_path, schema));
        let held = held::HeldFile::open(&export_path, schema);
        let hashes = hashes.join().map_err(|_| failed("the inputs' hashes"));
        Ok::<_, anyhow::Error>((hashes??, held?))
    })?;
    let mut writer = PlanWriter::create(&files.plan)?;
    let mut ids = orphans::Identities::default();
    let mut counts = Counts {
        exported: held.len() as u64,
        ..Default::default()
    };
    let each = Each {
        input,
        invalid_lines: &invalid_lines,
        confirmed: &confirmed,
        schema,
        rules,
    };
    each.run(&mut held, &mut counts, |c, change| {
        ids.saw(&c.source_id, c.segment_id.as_deref(), &confirmed);
        if let Some(change) = change {
            writer.write(
                &c.source_id,
                c.segment_id.as_deref(),
                c.line,
                &c.hash,
                change,
            )?;
        }
        Ok(())
    })?;
    writer.commit()?;
    hashes.plan = file::hash_of(&files.plan)?;
    counts.orphans = orphans::write(
        &files.orphans,
        ids,
        &confirmed,
        &files.ledger,
        target,
        &mut held,
    )?;
    let mut meta = Meta::new(
        input,
        target,
        rules,
        counts,
        hashes,
        export_calls,
        started.elapsed(),
    )?;
    meta.export_kind = export_kind;
    crate::files::write_atomic(&files.plan_meta, &serde_json::to_vec_pretty(&meta)?)?;
    Ok(Ok(Made { meta, exported }))
}

/// The content hashes of a plan's inputs as they are now (the plan file's
/// own is filled in once it is written).
pub fn inputs(files: &state::Beside, export: &Path, schema: &CustomerSchema) -> Result<Hashes> {
    use sha2::{Digest, Sha256};
    Ok(Hashes {
        customers: file::hash_of(&files.customers)?,
        ledger: file::ledger_hash(&files.ledger)?,
        export: file::hash_of(export)?,
        export_file: export.to_path_buf(),
        schema: crate::files::hex(&Sha256::digest(format!("{schema:?}").as_bytes())),
        plan: String::new(),
    })
}

/// The comparison of every valid row of `customers.csv`, which `make`
/// writes down and `replay` repeats to build what `load` sends.
struct Each<'a> {
    input: &'a Path,
    invalid_lines: &'a std::collections::HashSet<u64>,
    confirmed: &'a confirmed::Confirmed,
    schema: &'a CustomerSchema,
    rules: Rules,
}

impl Each<'_> {
    fn run(
        &self,
        held: &mut held::HeldFile,
        counts: &mut Counts,
        mut f: impl FnMut(&Prepared, Option<&compare::Change>) -> Result<()>,
    ) -> Result<()> {
        let batcher = Batcher::new(
            self.input,
            self.invalid_lines.clone(),
            Arc::new(Default::default()),
            true,
            100,
            usize::MAX,
        )?;
        // Reading the rows (CSV, request bodies, content keys) runs on a
        // thread of its own, a chunk ahead of the comparison. Compared
        // chunks go back to be dropped by the thread that made them (memory
        // freed across threads costs the allocator a lock each time).
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Row>>>(4);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<Row>>();
        std::thread::scope(|s| {
            s.spawn(move || read_rows(batcher, tx, done_rx));
            self.compare_rows(rx, done_tx, held, counts, &mut f)
        })
    }

    fn compare_rows(
        &self,
        rows: std::sync::mpsc::Receiver<Result<Vec<Row>>>,
        done: std::sync::mpsc::Sender<Vec<Row>>,
        held: &mut held::HeldFile,
        counts: &mut Counts,
        f: &mut impl FnMut(&Prepared, Option<&compare::Change>) -> Result<()>,
    ) -> Result<()> {
        // Per field list of the ledger: whether the export can read back
        // every field in it (else a field segsync set may be unreadable).
        let mut lists_readable: std::collections::HashMap<u32, bool> = Default::default();
        for chunk in rows {
            let chunk = chunk?;
            for c in &chunk {
                self.compare_row(c, &c.request, held, counts, &mut lists_readable)
                    .and_then(|change| f(c, change.as_ref()))?;
            }
            let _ = done.send(chunk);
        }
        Ok(())
    }

    /// One row against the export and the ledger.
    fn compare_row(
        &self,
        c: &Prepared,
        body: &serde_json::Map<String, serde_json::Value>,
        held: &mut held::HeldFile,
        counts: &mut Counts,
        lists_readable: &mut std::collections::HashMap<u32, bool>,
    ) -> Result<Option<compare::Change>> {
        let last = self.confirmed.last(&c.source_id);
        counts.rows += 1;
        // The fast path (`digest`): the export shows exactly this row.
        if let Some(Some(digest)) = held.digest(&c.source_id) {
            let set_readable = last.and_then(|l| l.fields).is_none_or(|i| {
                *lists_readable.entry(i).or_insert_with(|| {
                    self.confirmed.field_lists[i as usize]
                        .iter()
                        .all(|f| held.readable(f))
                })
            });
            if set_readable && held.layout().of_body(body) == Some(digest) {
                counts.unchanged += 1;
                return Ok(None);
            }
        }
        // The content key's first 64 bits (`Prepared::hash` is its hex).
        let content = c
            .hash
            .get(..16)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| (content_key_of(&c.body) >> 64) as u64);
        let h = held.get(&c.source_id)?;
        let change = compare::compare(
            body,
            content,
            h.as_ref(),
            last,
            self.confirmed,
            self.schema,
            self.rules,
        );
        match &change {
            None => counts.unchanged += 1,
            Some(change) => counts.add(&c.source_id, change),
        }
        Ok(change)
    }
}

/// A row to compare: the customer, with its request (`Prepared::request`).
type Row = Prepared;

/// Read every row into chunks for the comparison; a problem ends the
/// chunks with it.
fn read_rows(
    batcher: Batcher,
    tx: std::sync::mpsc::SyncSender<Result<Vec<Row>>>,
    done: std::sync::mpsc::Receiver<Vec<Row>>,
) {
    const CHUNK: usize = 1024;
    let mut chunk = Vec::with_capacity(CHUNK);
    for c in batcher.customers() {
        if chunk.is_empty() {
            while let Ok(compared) = done.try_recv() {
                drop(compared);
            }
        }
        match c {
            Ok(c) => chunk.push(c),
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
        if chunk.len() == CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            if tx.send(Ok(full)).is_err() {
                return;
            }
        }
    }
    let _ = tx.send(Ok(chunk));
}

/// Build again what a saved plan sends, from the inputs it was made from
/// (the caller has checked their hashes): `customers.csv`, the ledger and
/// the export. Err when the comparison no longer gives the plan's counts.
pub fn replay(
    meta: &Meta,
    schema: &CustomerSchema,
    invalid_lines: &std::collections::HashSet<u64>,
) -> Result<std::result::Result<PlanIndex, String>> {
    let confirmed = confirmed::read(&state::Beside::of(&meta.customers).ledger, &meta.target)?;
    let mut held = held::HeldFile::open(&meta.hashes.export_file, schema)?;
    let mut counts = Counts::default();
    let mut index = PlanIndexBuilder::default();
    let each = Each {
        input: &meta.customers,
        invalid_lines,
        confirmed: &confirmed,
        schema,
        rules: meta.rules,
    };
    each.run(&mut held, &mut counts, |c, change| match change {
        Some(change) => index.add(&c.source_id, change),
        None => Ok(()),
    })?;
    let was = &meta.counts;
    let same = (
        counts.rows,
        counts.create,
        counts.update,
        counts.clear,
        counts.skipped,
    ) == (was.rows, was.create, was.update, was.clear, was.skipped);
    Ok(if same {
        Ok(index.finish())
    } else {
        Err(format!(
            "compared again, it gives {} to send where it listed {} (rows invalid now that were valid then?)",
            counts.to_send(),
            was.to_send()
        ))
    })
}

/// The summary: counts per action and per field, and a few examples.
pub fn say(meta: &Meta, files: &state::Beside, calls: u64) {
    let c = &meta.counts;
    let (plan_path, orphans_path) = (&files.plan, &files.orphans);
    ui::info(format!(
        "plan: compared with {}",
        if meta.export_kind.is_empty() {
            "an export"
        } else {
            &meta.export_kind
        }
    ));
    ui::info(format!(
        "plan: {}{} ({:.1}s, {calls} Voucherify calls)",
        c.summary(),
        if c.orphans > 0 {
            format!(" in {}", orphans_path.display())
        } else {
            String::new()
        },
        meta.seconds,
    ));
    if c.unknown_updated > 0 {
        ui::warn(format!("plan: {} customers segsync confirmed have an updated_at the export does not show in a readable form: whether another writer changed them since cannot be told{}", c.unknown_updated, if meta.rules.keep_newer { "; --keep-newer skips them" } else { "" }));
    }
    if !c.fields.is_empty() {
        ui::info(format!(
            "plan: fields that change: {}",
            c.fields
                .iter()
                .map(|(f, n)| format!("{f} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for e in &c.examples {
        ui::info(format!("plan: e.g. {e}"));
    }
    ui::info(format!(
        "plan: written to {}; `segsync load` sends it",
        plan_path.display()
    ));
}
