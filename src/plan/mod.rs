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
mod flat;
pub mod held;
mod ledger_index;
pub use ledger_index::hold_saves;
pub mod obtain;
pub mod orphans;
pub mod rows;

use crate::api::voucherify::VoucherifyClient;
use crate::config::VoucherifyArgs;
use crate::export::{self, Exported};
use crate::mapping::metadata_schema::CustomerSchema;
use crate::state;
use crate::ui;
use anyhow::Result;
use compare::Rules;
use file::{Counts, Hashes, Meta, PlanIndex, PlanIndexBuilder, PlanWriter};
use std::path::{Path, PathBuf};
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
#[derive(Debug, Clone)]
pub struct Exports {
    /// A full export again when the kept one's is older than this.
    pub full_every: Duration,
    /// Always a full export.
    pub force_full: bool,
    /// The kept export is used as it is, without a call, when it is this
    /// one (`run` started it beside extract) and younger than the age.
    pub reuse: Option<(String, Duration)>,
    /// A delta asks customers created since too, not only those updated
    /// (a customer another writer creates may have `updated_at: null`):
    /// where a plan's export says who exists for the import, which
    /// overwrites a customer it takes for new. A bulk-only load skips it:
    /// an upsert of such a customer merges as an update would.
    pub created_too: bool,
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
    /// The largest export file downloaded (an export of a million customers is about 100 MB)
    #[arg(long = "max-export-bytes", default_value_t = crate::api::http::MAX_FILE_BYTES, value_name = "BYTES")]
    pub max_export_bytes: u64,
    /// The export `run` started beside extract (its id), to be used as it
    /// is while younger than the plan's maximum age.
    #[arg(skip)]
    pub reuse: Option<(String, Duration)>,
}

impl ExportArgs {
    pub fn exports(&self) -> Exports {
        Exports {
            full_every: Duration::from_secs(self.full_export_every * 86_400),
            force_full: self.full_export,
            reuse: self.reuse.clone(),
            created_too: true,
        }
    }
}

/// A plan made.
pub struct Made {
    pub meta: Meta,
    /// The export's outcome (for the import's "who exists").
    pub exported: Exported,
}

/// A plan makes a few calls: the schema read, the export and its polls;
/// its export file may have `max_file_bytes`.
pub fn http_settings(max_file_bytes: u64) -> crate::api::http::HttpSettings {
    crate::api::http::HttpSettings {
        concurrency: 2,
        rate: None,
        rate_period: Duration::from_secs(60),
        burst: Some(1),
        timeout: Duration::from_secs(120),
        policy: crate::api::http::RetryPolicy::default(),
        max_file_bytes,
        ..Default::default()
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
    let client = VoucherifyClient::new(cfg, http_settings(args.exports.max_export_bytes))?;
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
                ledger: Some(&files.ledger),
                target,
                full_every: exports.full_every,
                force_full: exports.force_full,
                created_too: exports.created_too,
                reuse: exports.reuse.clone(),
            };
            let fields = crate::fields::export_fields();
            let (e, calls, kind) =
                export::export_held(client, files, &fields, deadline, &policy).await?;
            let mut kind = match kind {
                export::Kind::Full => "a full export".to_string(),
                export::Kind::Delta { rows } => format!(
                    "a delta export ({rows} customers updated since the kept one) applied to the kept export"
                ),
            };
            if calls == 0 && exports.reuse.is_some() {
                kind.push_str(", made beside extract as the run started");
            }
            (e, calls, kind)
        }
    };
    let export_path = match &exported {
        Exported::File(p) => p.clone(),
        Exported::Empty => files.export.clone(),
        Exported::Unknown(why) => return Ok(Err(why.clone())),
    };
    let input = &files.customers;
    // The export's index (two halves at once) beside the ledger (from its
    // index, `ledger_index`, and the lines added since; its hash from the
    // index's stamp or the read that checks the index), then beside the
    // inputs' hashes; then the rows on every core (`rows`), validated as
    // they are compared. (The ledger's index no longer grows and shrinks
    // its entries, so the two reads together stay under the rows' peak.)
    let failed = |what: &str| anyhow::anyhow!("plan: reading {what} failed unexpectedly (a panic)");
    let (confirmed, hashes, held) = std::thread::scope(|s| {
        let held = s.spawn(|| held::HeldFile::open(&export_path, schema));
        let ledger = ledger_index::read_hashing(&files.ledger, target);
        // customers.csv's hash comes from the read that compares it, the
        // ledger's from its index or the read that checks it.
        let files_hashes = s.spawn(|| inputs_with(files, &export_path, schema, Some(None), false));
        let (confirmed, ledger_hash) = ledger?;
        let mut hashes = files_hashes
            .join()
            .map_err(|_| failed("the inputs' hashes"))??;
        hashes.ledger = match ledger_hash {
            Some(hash) => hash,
            None => file::ledger_hash(&files.ledger)?,
        };
        let held = held.join().map_err(|_| failed("the export"))??;
        Ok::<_, anyhow::Error>((confirmed, hashes, held))
    })?;
    let mut hashes = hashes;
    let confirmed_missing = missing_from_export(&confirmed, &held, files, target)?;
    let edits = crate::spreadsheet::overrides::Overrides::read(&state::edits(&files.customers))?;
    let mut writer = PlanWriter::create(&files.plan, edits)?;
    let mut ids = orphans::Identities::new(&held);
    let mut counts = Counts {
        exported: held.len() as u64,
        confirmed_missing,
        ..Default::default()
    };
    let each = Each {
        input,
        invalid_lines: &invalid_lines,
        confirmed: &confirmed,
        schema,
        rules,
    };
    hashes.customers = each.run(&held, &mut counts, Some(&mut ids), |c, hash, change| {
        writer.write(&c.source_id, c.segment_id.as_deref(), c.line, hash, change)
    })?;
    writer.commit()?;
    hashes.plan = file::hash_of(&files.plan)?;
    // A file of some rows (a pilot, a file of one's own) says nothing of
    // the profiles it does not hold: only the data directory's own
    // customers.csv (transform's, edited or not) can tell a profile gone.
    let own = files.ledger.with_file_name(state::CUSTOMERS);
    let whole = matches!(
        (std::fs::canonicalize(&files.customers), std::fs::canonicalize(&own)),
        (Ok(a), Ok(b)) if a == b
    );
    if !whole {
        ui::info(format!(
            "plan: {} is not the data directory's customers.csv (a pilot, or a file of your own): a customer it does not hold is not counted as an orphan",
            files.customers.display()
        ));
    }
    counts.orphans = orphans::write(
        &files.orphans,
        ids,
        &confirmed,
        (&files.ledger, target),
        &held,
        whole,
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

/// How many customers the ledger confirmed in `target` the export does
/// not show, said aloud with some of them: the plan creates them again
/// (their rows are new to what Voucherify shows), never silently.
fn missing_from_export(
    confirmed: &confirmed::Confirmed,
    held: &held::HeldFile,
    files: &state::Beside,
    target: &str,
) -> Result<u64> {
    let missing: Vec<u128> = (confirmed.by_source.iter())
        .filter(|(k, _)| held.place(*k).is_none())
        .map(|(k, _)| k)
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let some: std::collections::HashSet<u128> = missing.iter().take(5).copied().collect();
    let mut names: Vec<String> = confirmed::source_ids_of(&files.ledger, target, &some)?
        .into_values()
        .map(|(sid, _)| sid)
        .collect();
    names.sort();
    ui::warn(format!(
        "plan: Voucherify's export does not show {} customers segsync confirmed in this project (e.g. {}): deleted in Voucherify, or an export that lacks them; the plan sends their rows as new customers",
        missing.len(),
        names.join(", ")
    ));
    Ok(missing.len() as u64)
}

/// The content hashes of a plan's inputs as they are now (the plan file's
/// own is filled in once it is written).
pub fn inputs(files: &state::Beside, export: &Path, schema: &CustomerSchema) -> Result<Hashes> {
    inputs_with(files, export, schema, None, true)
}

/// [`inputs`], the ledger's hash given when it is known already
/// (`Some(None)`: left empty, for the caller to fill in), and
/// customers.csv's left empty unless `customers`.
fn inputs_with(
    files: &state::Beside,
    export: &Path,
    schema: &CustomerSchema,
    ledger: Option<Option<String>>,
    customers: bool,
) -> Result<Hashes> {
    use sha2::{Digest, Sha256};
    Ok(Hashes {
        customers: match customers {
            true => file::hash_of(&files.customers)?,
            false => String::new(),
        },
        ledger: match ledger {
            Some(hash) => hash.unwrap_or_default(),
            None => file::ledger_hash(&files.ledger)?,
        },
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
    invalid_lines: &'a Invalid<'a>,
    confirmed: &'a confirmed::Confirmed,
    schema: &'a CustomerSchema,
    rules: Rules,
}

impl Each<'_> {
    /// Compare every row (read on every core, `rows`), calling `f` with
    /// each change and its row's content key (hex), in file order. Gives
    /// the hash of the customers.csv it read (`file::hash_of`'s).
    fn run(
        &self,
        held: &held::HeldFile,
        counts: &mut Counts,
        mut ids: Option<&mut orphans::Identities>,
        mut f: impl FnMut(&rows::Row, &str, &compare::Change) -> Result<()>,
    ) -> Result<String> {
        let readable: Vec<bool> = (self.confirmed.field_lists.iter())
            .map(|list| list.iter().all(|f| held.readable(f)))
            .collect();
        let shared = rows::Shared {
            skip: match self.invalid_lines {
                Invalid::Known(lines) => rows::Skip::Lines(lines),
                Invalid::Validate => rows::Skip::Invalid,
            },
            held,
            confirmed: self.confirmed,
            all_readable: readable.iter().all(|r| *r),
            readable,
        };
        rows::each(self.input, &shared, |verdict| {
            let (seen, row) = match verdict {
                rows::Verdict::Invalid(_) => return Ok(()),
                rows::Verdict::Unchanged(seen) => (seen, None),
                rows::Verdict::Compare(seen, row) => (seen, Some(row)),
            };
            if let Some(ids) = ids.as_deref_mut() {
                ids.saw(seen);
            }
            counts.rows += 1;
            let Some(row) = row else {
                counts.unchanged += 1;
                return Ok(());
            };
            let key = row.content_key()?;
            let change = compare::compare(
                &row.request,
                (key >> 64) as u64,
                held.get(&row.source_id)?.as_ref(),
                self.confirmed.last(&row.source_id),
                self.confirmed,
                self.schema,
                self.rules,
            );
            match &change {
                None => counts.unchanged += 1,
                Some(change) => {
                    counts.add(&row.source_id, change);
                    f(&row, &format!("{key:032x}"), change)?;
                }
            }
            Ok(())
        })
    }
}

/// Build again what a saved plan sends, from the inputs it was made from
/// (the caller has checked their hashes): `customers.csv`, the ledger and
/// the export. Err when the comparison no longer gives the plan's counts.
pub fn replay(
    meta: &Meta,
    schema: &CustomerSchema,
    invalid_lines: &std::collections::HashSet<u64>,
) -> Result<std::result::Result<PlanIndex, String>> {
    let confirmed = ledger_index::read(&state::Beside::of(&meta.customers).ledger, &meta.target)?;
    let held = held::HeldFile::open(&meta.hashes.export_file, schema)?;
    let mut counts = Counts::default();
    let mut index = PlanIndexBuilder::default();
    let invalid_lines = Invalid::Known(invalid_lines);
    let each = Each {
        input: &meta.customers,
        invalid_lines: &invalid_lines,
        confirmed: &confirmed,
        schema,
        rules: meta.rules,
    };
    let read = each.run(&held, &mut counts, None, |c, _, change| {
        index.add(&c.source_id, change)
    })?;
    if read != meta.hashes.customers {
        return Ok(Err(format!(
            "{} changed while it was read again",
            meta.customers.display()
        )));
    }
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

/// What a plan compares one row with: an export file and the ledger. `run`
/// sends early what the plan would send for a row, by this same rule (the
/// load deciding sooner, not a second load).
pub struct Basis {
    held: held::HeldFile,
    confirmed: confirmed::Confirmed,
    schema: CustomerSchema,
    rules: Rules,
}

impl Basis {
    /// The basis of a plan made now from `export` (an export file of this
    /// project) and the ledger beside `files`' customers file.
    pub fn open(
        files: &state::Beside,
        export: &Path,
        target: &str,
        schema: &CustomerSchema,
        rules: Rules,
    ) -> Result<Basis> {
        Ok(Basis {
            held: held::HeldFile::open(export, schema)?,
            confirmed: ledger_index::read(&files.ledger, target)?,
            schema: schema.clone(),
            rules,
        })
    }

    /// What the plan does with this row (its request and content key):
    /// None when it sends nothing.
    pub fn change(
        &self,
        sid: &str,
        request: &serde_json::Map<String, serde_json::Value>,
        key: u128,
    ) -> Result<Option<compare::Change>> {
        Ok(compare::compare(
            request,
            (key >> 64) as u64,
            self.held.get(sid)?.as_ref(),
            self.confirmed.last(sid),
            &self.confirmed,
            &self.schema,
            self.rules,
        ))
    }
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
    say_cost(c);
    ui::info(format!(
        "plan: written to {}; `segsync load` sends it",
        plan_path.display()
    ));
}

/// What sending the plan costs in Voucherify calls, against the plans'
/// published limits (per minute: Business 100, Organization 2,000, a
/// sandbox project 100 an hour; per month: Business 100,000, Organization
/// 300,000).
fn say_cost(c: &Counts) {
    let send = (c.create + c.update + c.clear).saturating_sub(c.skipped);
    if send == 0 {
        ui::info("plan: nothing to send");
        return;
    }
    // A request and a poll per batch of 100, and an export to read back.
    let calls = 2 * send.div_ceil(100) + 5;
    ui::info(format!(
        "plan: sending {send} customers by bulk takes about {calls} Voucherify calls: {:.2}% of a Business plan's month (100,000), {:.2}% of an Organization plan's (300,000); {} of calls at a Business plan's 100 a minute, {} at a sandbox project's 100 an hour (docs/runbook.md)",
        calls as f64 / 1_000.0,
        calls as f64 / 3_000.0,
        ui::human_secs(calls as f64 * 0.6),
        ui::human_secs(calls as f64 * 36.0),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `load` checks a plan's inputs by hash, then replays the plan from
    /// them: a customers.csv that changes between the two is refused by the
    /// replay's own read, not sent as the plan's.
    #[test]
    fn a_replay_that_reads_another_customers_csv_than_the_plans_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let customers = dir.path().join("customers.csv");
        let export = dir.path().join("held.csv");
        std::fs::write(&customers, "source_id,name\np1,Ann\np2,Bo\n").unwrap();
        std::fs::write(&export, "source_id,name\np1,Ann\n").unwrap();
        let meta = |hash: String| Meta {
            made_at: String::new(),
            made_at_ms: 0,
            target: String::new(),
            customers: customers.clone(),
            hashes: Hashes {
                customers: hash,
                export_file: export.clone(),
                ..Default::default()
            },
            rules: Rules::default(),
            counts: Counts::default(),
            export_calls: 0,
            export_kind: String::new(),
            calls: 0,
            seconds: 0.0,
            executed_at: None,
        };
        let schema = compare_tests::schema();
        let none = std::collections::HashSet::new();
        let replayed = |hash: String| match replay(&meta(hash), &schema, &none).unwrap() {
            Ok(_) => "replayed".to_string(),
            Err(why) => why,
        };
        // The bytes the plan read: the replay goes on to compare the counts.
        let why = replayed(file::hash_of(&customers).unwrap());
        assert!(why.contains("compared again"), "{why}");
        // Other bytes than the plan's.
        let why = replayed(format!("{:032x}", 1));
        assert!(why.contains("changed while it was read again"), "{why}");
    }
}
