//! `segsync transform`: `profiles.ndjson` → `customers.csv` + `rejected.csv`.
//!
//! Streams the profiles through the pure mapping (`mapping::map_profile`) and
//! writes every customer as a CSV row a person can review and edit, every
//! profile that produced no customer to `rejected.csv` with the reason, and
//! every dropped value (an invalid birthdate) to `transform.warnings.csv`.
//! Profiles in = customers out + rejected, always.
//!
//! Two profiles with the same `source_id` are not both sent: the one updated
//! most recently (`metadata.updated_at`) is kept, the other rejected as
//! `duplicate_source_id`. Duplicates are found from 16 bytes per row held in
//! memory (a hash of the `source_id` and the update time), so memory stays
//! small for any input size.
//!
//! Outputs are written aside and renamed when complete. `transform.manifest.json`
//! records the SHA-256 of the `customers.csv` it wrote, so a later run can tell
//! a hand-edited file from its own and refuse to overwrite it.
//!
//! Rooms: [`chunk`] maps a chunk of lines to CSV bytes, [`pool`] runs chunks
//! on every core and returns them in order, [`duplicates`] settles rows that
//! share a `source_id`; `run` below reads as the steps of the stage.

mod chunk;
mod duplicates;
use crate::pool;
pub use chunk::{Chunk, TraitSet};
pub use duplicates::later_wins;

use crate::error::{InputErrors, UsageError};
use crate::files::{self, AtomicFile};
use crate::records::{COLUMNS, REJECTED_COLUMNS};
use crate::state::manifest::{self, Manifest};
use crate::state::{self, now};
use crate::ui;
use anyhow::{Context, Result};
use chunk::{ChunkResult, CHUNK_BYTES};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Profiles to read [default: DATA_DIR/profiles.ndjson]
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Customers CSV to write [default: DATA_DIR/customers.csv]
    #[arg(long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Rejected profiles CSV [default: rejected.csv beside --out]
    #[arg(long = "rejected", value_name = "FILE")]
    pub rejected: Option<PathBuf>,
    #[command(flatten)]
    pub mapping: crate::mapping::MappingArgs,
    /// Overwrite customers.csv even if it was edited after transform wrote
    /// it, without keeping its edits in edits.csv
    #[arg(long)]
    pub force: bool,
    /// Drop a kept hand edit from edits.csv before mapping: SOURCE_ID (every
    /// field of it) or SOURCE_ID:FIELD; repeat for more
    #[arg(long = "drop-edit", value_name = "SOURCE_ID[:FIELD]")]
    pub drop_edit: Vec<String>,
    /// Send malformed lines of the input to rejected.csv instead of stopping
    #[arg(long = "skip-invalid")]
    pub skip_invalid: bool,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub profiles: u64,
    pub customers: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub warnings: u64,
}

impl Summary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn add(&mut self, r: &ChunkResult) {
        self.profiles += r.profiles;
        self.customers += r.keys.len() as u64;
        self.warnings += r.warning_count;
        for (reason, n) in &r.rejected_counts {
            *self.rejected.entry(reason).or_default() += n;
        }
    }
}

/// The three output files being written aside.
struct Outputs {
    customers: AtomicFile,
    rejected: AtomicFile,
    warnings: AtomicFile,
}

impl Outputs {
    fn create(out: &Path, rejected: &Path) -> Result<Outputs> {
        let mut o = Outputs {
            customers: AtomicFile::create(out)?,
            rejected: AtomicFile::create(rejected)?,
            warnings: AtomicFile::create(&state::warnings(out))?,
        };
        csv::Writer::from_writer(o.customers.writer()).write_record(COLUMNS)?;
        csv::Writer::from_writer(o.rejected.writer()).write_record(REJECTED_COLUMNS)?;
        csv::Writer::from_writer(o.warnings.writer()).write_record([
            "segment_id",
            "source_id",
            "field",
            "value",
            "reason",
        ])?;
        Ok(o)
    }

    fn append(&mut self, r: &ChunkResult) -> std::io::Result<()> {
        self.customers.write_all(&r.customers)?;
        self.rejected.write_all(&r.rejected)?;
        self.warnings.write_all(&r.warnings)
    }
}

/// Chunks of whole lines from the input.
/// The chunks of `file`, read errors naming it.
fn read_chunks<'a>(
    file: std::fs::File,
    path: &'a Path,
) -> impl Iterator<Item = Result<Chunk>> + Send + 'a {
    chunks(BufReader::with_capacity(1 << 20, file))
        .map(move |c| c.with_context(|| format!("cannot read {}", path.display())))
}

fn chunks(mut reader: impl BufRead) -> impl Iterator<Item = std::io::Result<Chunk>> {
    let mut line_no = 0u64;
    std::iter::from_fn(move || {
        let mut chunk = Chunk {
            first_line: line_no + 1,
            data: Vec::with_capacity(CHUNK_BYTES + 64 * 1024),
        };
        while chunk.data.len() < CHUNK_BYTES {
            match reader.read_until(b'\n', &mut chunk.data) {
                Ok(0) => break,
                Ok(_) => line_no += 1,
                Err(e) => return Some(Err(e)),
            }
        }
        (!chunk.data.is_empty()).then_some(Ok(chunk))
    })
}

/// Extract fetches only the external-id types that can become `source_id`
/// (and traits only for profiles that have one): a transform asking for
/// other types would silently reject profiles whose ids were never fetched.
fn check_extracted_for(input: &Path, mapping: &crate::mapping::Mapping) -> Result<()> {
    let id_types = &mapping.source_id_types;
    let Ok(Some(cp)) = state::checkpoint::read(&state::checkpoint(input)) else {
        return Ok(());
    };
    if cp.all_traits || cp.source_id_types.is_empty() {
        return Ok(());
    }
    let missing: Vec<&String> = id_types
        .iter()
        .filter(|t| !cp.source_id_types.contains(t))
        .collect();
    if missing.is_empty() {
        let unread: Vec<String> = mapping
            .traits_read()
            .into_iter()
            .filter(|t| !cp.traits.is_empty() && !cp.traits.contains(t))
            .collect();
        if unread.is_empty() {
            return Ok(());
        }
        return Err(UsageError::new(format!(
            "the mapping reads traits that {} was extracted without ({}): extract asks Segment only for the traits the mapping reads; rerun `segsync extract --fresh` with this mapping",
            input.display(),
            unread.join(", ")
        ))
        .into());
    }
    Err(UsageError::new(format!(
        "{} was extracted for source_id types {} only, so it holds no {} ids: rerun `segsync extract --fresh` with the same --source-id-type (or IDENTIFIER_SAVED_AS_SOURCE_ID) as transform",
        input.display(),
        cp.source_id_types.join(","),
        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    ))
    .into())
}

/// A `customers.csv` edited by hand since transform wrote it: its edits
/// are kept in `edits.csv` (every transform applies them), found against
/// the copy of what transform wrote. With `force`, overwritten and not
/// kept, said. A file no copy can speak for (written by hand, or by an
/// older segsync) is refused as before: nothing tells its edits from
/// Segment's changes. Returns the hash of the file being replaced.
pub fn keep_edits(out: &Path, force: bool, command: &str) -> Result<Option<String>> {
    let edited = match manifest::edited_since_transform(out) {
        Err(_) if force => Some(true),
        r => r?,
    };
    match edited {
        None => return Ok(None),
        Some(false) => return Ok(Some(files::sha256_file(out)?)),
        Some(true) if force => {
            ui::warn(format!(
                "{command} --force: the hand edits of {} are overwritten, not kept",
                out.display()
            ));
            return Ok(Some(files::sha256_file(out)?));
        }
        Some(true) => {}
    }
    let written = state::written(out);
    let speaks = manifest::read(out).is_some_and(|m| {
        files::sha256_file(&written).is_ok_and(|sha| m.customers_sha256.contains(&sha))
    });
    if !speaks {
        return Err(UsageError::new(format!(
            "{command} refused before sending anything: {} was changed after transform wrote it, and no copy of what transform wrote ({}) can tell your edits from Segment's changes. To keep your edits, load it as it is with `segsync load`, or move it aside first; to overwrite it, rerun with --force.",
            out.display(),
            written.display()
        ))
        .into());
    }
    let edits = state::edits(out);
    let found = crate::spreadsheet::overrides::record(out, &written, &edits)?;
    say_kept(&found, out, &edits, command);
    Ok(Some(files::sha256_file(out)?))
}

fn say_kept(
    found: &crate::spreadsheet::overrides::Recorded,
    out: &Path,
    edits: &Path,
    command: &str,
) {
    if found.cells > 0 {
        ui::info(format!(
            "{command}: kept {} hand edits of {} ({} customers) in {}: every transform applies them (`transform --drop-edit SOURCE_ID[:FIELD]` drops one)",
            found.cells,
            out.display(),
            found.customers,
            edits.display()
        ));
    }
    let some = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    if !found.damaged.is_empty() {
        ui::warn(format!(
            "{command}: {} changed cells look like a spreadsheet's doing and are not kept as edits (e.g. {})",
            found.damaged.len(),
            some(&found.damaged)
        ));
    }
    if !found.added.is_empty() || !found.removed.is_empty() {
        ui::warn(format!(
            "{command}: rows added ({}) or removed ({}) by hand are not kept: transform writes a row per profile (add or remove them in Segment, or load a file of your own with `load --in FILE`){}{}",
            found.added.len(),
            found.removed.len(),
            if found.added.is_empty() { String::new() } else { format!("; added: {}", some(&found.added)) },
            if found.removed.is_empty() { String::new() } else { format!("; removed: {}", some(&found.removed)) },
        ));
    }
}

/// The hand edits every row gets (`edits.csv` beside `out`), once the
/// entries `drop` names are dropped.
fn edits_for(
    out: &Path,
    drop: &[String],
) -> Result<(crate::spreadsheet::overrides::Overrides, PathBuf)> {
    let path = state::edits(out);
    if !drop.is_empty() {
        let n = crate::spreadsheet::overrides::drop(&path, drop)?;
        ui::info(format!(
            "transform: dropped {n} hand edits from {}",
            path.display()
        ));
    }
    Ok((crate::spreadsheet::overrides::Overrides::read(&path)?, path))
}

/// Copy what transform wrote beside it (`transform.written.csv`), whole or
/// not at all.
fn keep_written(out: &Path) -> Result<()> {
    let written = state::written(out);
    let mut f = files::AtomicFile::create(&written)?;
    let mut from = files::open_regular(out)?;
    std::io::copy(&mut from, f.writer())
        .with_context(|| format!("cannot write {}", written.display()))?;
    f.commit()
}

pub fn run(args: &Args, data_dir: &Path) -> Result<Summary> {
    let input = args
        .input
        .clone()
        .unwrap_or_else(|| state::profiles(data_dir));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| state::customers(data_dir));
    let rejected_path = args
        .rejected
        .clone()
        .unwrap_or_else(|| state::rejected(&out));
    let mapping = args.mapping.resolve()?;
    let wanted: chunk::TraitSet = mapping.traits_read().into_iter().collect();
    if !input.exists() {
        return Err(UsageError::new(format!(
            "{} not found: `segsync extract` writes it (or pass --in FILE)",
            input.display()
        ))
        .into());
    }
    check_extracted_for(&input, &mapping)?;
    let previous_sha = keep_edits(&out, args.force, "transform")?;
    let (edits, edits_path) = edits_for(&out, &args.drop_edit)?;

    let started = Instant::now();
    let file = crate::files::open_regular(&input)?;
    let input_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut outputs = Outputs::create(&out, &rejected_path)?;

    // Map every chunk on every core; write the results in input order.
    let mut summary = Summary::default();
    let mut keys: Vec<(u64, i64)> = Vec::new();
    let mut invalid = Vec::new();
    let progress = ui::Progress::new("transform", "profiles", None);
    let workers = crate::pool::workers();
    let input_name = input.display().to_string();
    pool::ordered_map(
        read_chunks(file, &input),
        workers,
        |chunk| chunk.process(&mapping, &edits, &wanted, &input_name, args.skip_invalid),
        |r| {
            for msg in &r.debug {
                ui::debug(msg);
            }
            outputs
                .append(&r)
                .with_context(|| format!("cannot write {}", out.display()))?;
            keys.extend_from_slice(&r.keys);
            summary.add(&r);
            if invalid.len() < 20 {
                invalid.extend(r.invalid);
            }
            progress.set_position(summary.profiles);
            progress.tick(|| {
                format!(
                    "{} customers, {} rejected",
                    summary.customers,
                    summary.rejected_total()
                )
            });
            Ok(())
        },
    )?;
    progress.finish();
    invalid.truncate(20);
    if !invalid.is_empty() {
        return Err(InputErrors {
            problems: invalid,
            hint: format!(
                "{}: fix or remove these lines, or rerun with --skip-invalid to send them to {}; nothing was written",
                input.display(),
                rejected_path.display()
            ),
        }
        .into());
    }

    // Duplicates: rows whose source_id hash is shared, checked on the real value.
    outputs.customers.writer().flush()?;
    let losers = {
        let mut rejected = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(outputs.rejected.writer());
        let losers = duplicates::find_duplicates(
            &keys,
            outputs.customers.temp_path(),
            &mut rejected,
            &mut summary,
        )?;
        rejected.flush()?;
        losers
    };
    if !losers.is_empty() {
        let filtered = duplicates::without_rows(outputs.customers.temp_path(), &out, &losers)?;
        summary.customers -= losers.len() as u64;
        outputs.customers = filtered;
    }
    commit(outputs, &out, &input, &mapping, previous_sha, &summary)?;
    keep_written(&out)?;
    say_applied(&edits, &edits_path);

    if summary.profiles != summary.customers + summary.rejected_total() {
        anyhow::bail!(
            "internal error: {} profiles in but {} customers + {} rejected out",
            summary.profiles,
            summary.customers,
            summary.rejected_total()
        );
    }
    report(&summary, &out, &rejected_path, started, input_bytes);
    Ok(summary)
}

/// Put the outputs in place, with the manifest that tells transform's own
/// `customers.csv` from a hand-edited one. The manifest lists the old and the
/// new hash while the files are being renamed, so a crash between the
/// renames is never mistaken for a hand edit.
fn commit(
    mut outputs: Outputs,
    out: &Path,
    input: &Path,
    mapping: &crate::mapping::Mapping,
    previous_sha: Option<String>,
    summary: &Summary,
) -> Result<()> {
    outputs.customers.writer().flush()?;
    let new_sha = files::sha256_file(outputs.customers.temp_path())?;
    let mut m = Manifest {
        version: manifest::VERSION,
        written_at: now(),
        input: input.display().to_string(),
        source_id_types: mapping.source_id_types.clone(),
        mapping: mapping.fingerprint(),
        mapping_file: mapping.file.as_ref().map(|f| f.display().to_string()),
        profiles: summary.profiles,
        customers: summary.customers,
        rejected: summary.rejected_total(),
        warnings: summary.warnings,
        customers_sha256: [previous_sha, Some(new_sha.clone())]
            .into_iter()
            .flatten()
            .collect(),
    };
    manifest::write(out, &m)?;
    outputs.customers.commit()?;
    outputs.rejected.commit()?;
    outputs.warnings.commit()?;
    m.customers_sha256 = vec![new_sha];
    manifest::write(out, &m)
}

/// The kept hand edits transform applied, and those Segment has changed
/// since (the edit still wins).
fn say_applied(edits: &crate::spreadsheet::overrides::Overrides, path: &Path) {
    let (applied, changed, examples) = edits.found();
    if applied == 0 {
        return;
    }
    ui::info(format!(
        "transform: {applied} hand edits applied from {} (over {} kept)",
        path.display(),
        edits.len()
    ));
    if changed > 0 {
        ui::warn(format!(
            "transform: Segment has changed {changed} fields you edited by hand since; your edits win (e.g. {}); `transform --drop-edit SOURCE_ID[:FIELD]` takes Segment's again",
            examples.join("; ")
        ));
    }
}

fn report(summary: &Summary, out: &Path, rejected: &Path, started: Instant, input_bytes: u64) {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let reasons: Vec<String> = summary
        .rejected
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    ui::info(format!(
        "transform: {} profiles in = {} customers ({}) + {} rejected ({}{})",
        summary.profiles,
        summary.customers,
        out.display(),
        summary.rejected_total(),
        rejected.display(),
        if reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", reasons.join(", "))
        }
    ));
    if summary.warnings > 0 {
        ui::info(format!(
            "transform: {} values dropped (invalid birthdates, metadata that would not convert losslessly), customers kept (listed in {}; -v prints them)",
            summary.warnings,
            state::warnings(out).display()
        ));
    }
    ui::info(format!(
        "transform: {:.1}s, {}, {:.1} MB/s",
        secs,
        ui::rate_of(summary.profiles as f64 / secs, "profiles"),
        input_bytes as f64 / 1e6 / secs
    ));
}

/// What transform would write from `input`, in memory and nothing written:
/// `source_id` → the row's cells (the CSV's columns, `segment_id` included),
/// duplicates settled as transform settles them. For `diff` and `load`'s
/// check of hand edits; runs on every core like transform.
pub fn expected_rows(
    input: &Path,
    mapping: &crate::mapping::Mapping,
    edits: &crate::spreadsheet::overrides::Overrides,
) -> Result<std::collections::HashMap<String, Vec<Option<String>>>> {
    let wanted: chunk::TraitSet = mapping.traits_read().into_iter().collect();
    let file =
        std::fs::File::open(input).with_context(|| format!("cannot read {}", input.display()))?;
    let workers = crate::pool::workers();
    let mut rows: std::collections::HashMap<String, (i64, Vec<Option<String>>)> =
        std::collections::HashMap::new();
    let mut invalid = None;
    pool::ordered_map(
        read_chunks(file, input),
        workers,
        |c: Chunk| c.rows(mapping, edits, &wanted),
        |r| {
            match r {
                Ok(list) => {
                    for (updated, row) in list {
                        let Some(sid) = row[0].clone() else { continue };
                        // The rule transform's duplicates follow: the most
                        // recently updated wins, the first read on a tie.
                        let wins = rows
                            .get(&sid)
                            .is_none_or(|(kept, _)| duplicates::later_wins(*kept, updated));
                        if wins {
                            rows.insert(sid, (updated, row));
                        }
                    }
                }
                Err(e) => {
                    invalid.get_or_insert(e);
                }
            }
            Ok(())
        },
    )?;
    if let Some(e) = invalid {
        anyhow::bail!(
            "{}:{e}; `segsync transform` names every problem",
            input.display()
        );
    }
    Ok(rows.into_iter().map(|(k, (_, row))| (k, row)).collect())
}
