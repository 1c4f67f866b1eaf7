//! `segsync extract --from profiles-sync DIR`: Segment's Profiles Sync
//! tables, unloaded by a warehouse, → the same `profiles.ndjson` as the API.
//!
//! Reads `DIR/user_traits/` (`canonical_segment_id, name, value, seq, …,
//! timestamp`: a row per trait value, the latest by `seq`) and
//! `DIR/user_identifiers/` (`canonical_segment_id, type, value, seq, …`: a row
//! per external id), each as unsorted part files: `*.parquet`, `*.csv`,
//! `*.csv.gz`. Column and folder names match case-insensitively (Snowflake
//! upper-cases them).
//!
//! Any size in bounded memory: pass 1 streams every part once, batch by
//! batch (never a whole row group), and spills each row as a compact record
//! to a partition chosen by a hash of its profile id (`spill`: one file per
//! reader thread in `DATA/.profiles-sync.tmp/`, removed at the start and the
//! end, so a killed run leaves nothing a rerun trips over). The number of
//! partitions grows with the unload, so one stays a few MB. Pass 2 reads one
//! partition at a time per core, groups it by profile and writes the
//! profiles straight from the records' bytes (`group`). The output is written
//! aside and renamed.
//!
//! Trait values: a warehouse stores semi-structured values as JSON text (a
//! Snowflake VARIANT unloads that way); when every non-null value parses as
//! JSON they are read as JSON, otherwise as text (`--trait-values` decides
//! instead), and the summary says which.

mod cells;
mod group;
mod parts;
mod reduce;
mod spill;
pub mod unload;

use super::fetcher::Wanted;
use crate::files::{self, AtomicFile};
use crate::state::{self, checkpoint, checkpoint::Checkpoint};
use crate::ui::{self, Progress};
use anyhow::Result;
use parts::{read_part, Row, Slice};
use spill::{Kind, Spill, Spilled};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// How trait values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraitValues {
    /// Every value is JSON text (a VARIANT unloaded as JSON)
    Json,
    /// Every value is plain text
    Text,
}

/// Pass 1's spill buffers, all reader threads together: the bound of its
/// memory beyond the Parquet reader's pages.
const SPILL_BYTES: usize = 16 << 20;

#[derive(Debug, Default)]
pub struct Summary {
    pub profiles: u64,
    pub rows: u64,
    pub json_values: bool,
}

/// What the unload held: parts by kind, markers skipped, files ignored.
fn say_inventory(traits: &unload::Inventory, ids: &unload::Inventory) {
    use unload::Content;
    let (mut parquet, mut gzip, mut text) = (0, 0, 0);
    for p in traits.parts.iter().chain(&ids.parts) {
        match unload::sniff(p) {
            Ok(Content::Parquet) => parquet += 1,
            Ok(Content::Gzip) => gzip += 1,
            _ => text += 1,
        }
    }
    let markers = traits.markers.len() + ids.markers.len();
    let ignored = traits.ignored.len() + ids.ignored.len();
    crate::ui::info(format!(
        "extract: the unload holds {parquet} Parquet, {gzip} gzipped CSV and {text} CSV parts; {markers} markers skipped by name (_SUCCESS, _committed_*, .crc, …){}",
        if ignored > 0 { format!("; {ignored} files ignored (--ignore)") } else { String::new() }
    ));
}

pub fn run(
    dir: &Path,
    ignore: &[glob::Pattern],
    out: &Path,
    wanted: &Wanted,
    values: Option<TraitValues>,
) -> Result<Summary> {
    let started = Instant::now();
    let traits = unload::inventory(dir, "user_traits", ignore)?;
    let ids = unload::inventory(dir, "user_identifiers", ignore)?;
    say_inventory(&traits, &ids);
    let (trait_parts, id_parts) = (traits.parts, ids.parts);
    files::ensure_dir(&files::parent_dir(out))?;
    let tmp = files::parent_dir(out).join(".profiles-sync.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    files::ensure_dir(&tmp)?;
    let progress = Progress::new("extract", "rows", None);
    let workers = crate::pool::workers();
    let parts: Vec<(Table, &PathBuf)> = trait_parts
        .iter()
        .map(|p| (Table::Traits, p))
        .chain(id_parts.iter().map(|p| (Table::Identifiers, p)))
        .collect();
    let input_bytes: u64 = parts
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let jobs = share_out(&parts);
    let partitions = spill::partitions_for(input_bytes);
    let read = pass1(
        &tmp,
        &jobs,
        partitions,
        workers,
        wanted,
        values.is_none(),
        &progress,
    )?;
    let mut summary = Summary {
        rows: read.rows,
        ..Default::default()
    };
    ui::debug(format!(
        "extract: pass 1 (read {} rows into {partitions} partitions on {workers} threads, {} MB spilled) took {:.1}s",
        summary.rows,
        read.spills.iter().map(|s| s.bytes).sum::<u64>() >> 20,
        started.elapsed().as_secs_f64()
    ));
    summary.json_values = match values {
        Some(TraitValues::Json) => true,
        Some(TraitValues::Text) => false,
        None => !read.non_json,
    };
    let shape = group::Shape {
        wanted,
        json_values: summary.json_values,
    };
    summary.profiles = pass2(
        &tmp,
        &read.spills,
        partitions,
        out,
        workers,
        &shape,
        &progress,
    )?;
    let _ = std::fs::remove_dir_all(&tmp);
    progress.finish();
    save_checkpoint(dir, out, wanted, summary.profiles)?;
    let secs = started.elapsed().as_secs_f64().max(0.001);
    ui::info(format!(
        "extract: {} profiles in {} from {} rows of Profiles Sync ({} trait parts, {} identifier parts); trait values read as {}",
        summary.profiles,
        out.display(),
        summary.rows,
        trait_parts.len(),
        id_parts.len(),
        if summary.json_values { "JSON" } else { "text" }
    ));
    ui::info(format!(
        "extract: {:.1}s, {}",
        secs,
        crate::ui::rate_of(summary.profiles as f64 / secs, "profiles")
    ));
    Ok(summary)
}

/// Which table a part file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// `user_traits`: a row per trait value.
    Traits,
    /// `user_identifiers`: a row per external id.
    Identifiers,
}

impl Table {
    /// The column that names the trait or the identifier type.
    fn key_column(self) -> &'static str {
        match self {
            Table::Traits => "name",
            Table::Identifiers => "type",
        }
    }
}

/// What pass 1 read.
struct Read {
    rows: u64,
    /// A trait value that is not JSON text was seen.
    non_json: bool,
    /// Each reader thread's spill.
    spills: Vec<Spilled>,
}

/// What pass 1's workers take, one at a time: a part file, or a run of row
/// groups of a large Parquet part (so a warehouse's one large file is read
/// by every worker, while small parts stay whole: each job opens its file).
type Job<'a> = (Table, &'a PathBuf, Option<Slice>);

/// A large part is cut into runs of row groups of about this many
/// compressed bytes (`SEGSYNC_SLICE_BYTES` sets it for tests: 1 makes every
/// row group a job).
const SLICE_BYTES: u64 = 32 << 20;

fn share_out<'a>(parts: &[(Table, &'a PathBuf)]) -> Vec<Job<'a>> {
    let slice_bytes = std::env::var("SEGSYNC_SLICE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SLICE_BYTES)
        .max(1);
    let mut jobs = Vec::new();
    for &(table, part) in parts {
        let groups = parts::row_groups(part).unwrap_or_default();
        if groups.len() < 2 || groups.iter().map(|g| g.1).sum::<u64>() < 2 * slice_bytes {
            jobs.push((table, part, None));
            continue;
        }
        let (mut start, mut first_row, mut rows, mut bytes) = (0, 0, 0, 0);
        for (g, (n, size)) in groups.iter().enumerate() {
            rows += n;
            bytes += size;
            if bytes >= slice_bytes || g + 1 == groups.len() {
                let groups = start..g + 1;
                jobs.push((table, part, Some(Slice { groups, first_row })));
                (start, first_row, bytes) = (g + 1, first_row + rows, 0);
                rows = 0;
            }
        }
    }
    jobs
}

/// Pass 1: the part files (and row groups) shared out among the workers;
/// each spills its rows to its own file, partitioned by profile.
fn pass1(
    tmp: &Path,
    jobs: &[Job],
    partitions: usize,
    workers: usize,
    wanted: &Wanted,
    check_json: bool,
    progress: &Progress,
) -> Result<Read> {
    let keeps = Keeps {
        everything: wanted.everything,
        traits: wanted.traits.iter().map(|t| t.as_bytes().into()).collect(),
        ids: wanted
            .id_types
            .iter()
            .map(|t| t.as_bytes().into())
            .collect(),
    };
    let keeps = &keeps;
    let next_job = AtomicUsize::new(0);
    let rows = AtomicU64::new(0);
    let non_json = AtomicBool::new(false);
    let worker = |w: usize| -> Result<Spilled> {
        let path = tmp.join(format!("w{w}.bin"));
        let mut spill = Spill::create(path, partitions, SPILL_BYTES / workers)?;
        while let Some((table, part, slice)) = jobs.get(next_job.fetch_add(1, Ordering::Relaxed)) {
            let (table, first_row) = (*table, slice.as_ref().map_or(0, |s| s.first_row));
            let mut read = 0u64;
            let result = read_part(part, table.key_column(), slice.as_ref(), &mut |r: Row| {
                read += 1;
                let row_no = first_row + read;
                if read.is_multiple_of(65_536) {
                    let n = rows.fetch_add(65_536, Ordering::Relaxed) + 65_536;
                    progress.set_position(n);
                    progress.tick(|| format!("reading {}", part.display()));
                }
                let bad = |what: String| -> anyhow::Error {
                    crate::error::UsageError::new(format!(
                        "{}: row {row_no}: {what}",
                        part.display()
                    ))
                    .into()
                };
                let utf8 =
                    |what: &str, b: &[u8]| match b.is_ascii() || std::str::from_utf8(b).is_ok() {
                        true => Ok(()),
                        false => Err(bad(format!("{what} is not UTF-8 text"))),
                    };
                if r.id.is_empty() {
                    // Dropping it could change which value of a trait wins.
                    return Err(bad("canonical_segment_id is empty; every row of a Profiles Sync table names its profile, so the unload is damaged: unload the table again".into()));
                }
                utf8("canonical_segment_id", r.id)?;
                let keep = keeps.keeps(table, r.key);
                if keep {
                    utf8(table.key_column(), r.key)?;
                    r.value.map_or(Ok(()), |v| utf8("value", v))?;
                }
                // Only the values written out decide how values are read.
                if keep
                    && table == Table::Traits
                    && check_json
                    && !non_json.load(Ordering::Relaxed)
                    && r.value.is_some_and(|v| !group::is_json(v))
                {
                    non_json.store(true, Ordering::Relaxed);
                }
                let (kind, kept) = match table {
                    Table::Traits if keep => (Kind::Trait, Some((r.seq, r.key, r.value))),
                    Table::Identifiers if keep && r.value.is_some() => {
                        (Kind::Id, Some((r.seq, r.key, r.value)))
                    }
                    // A row not kept still says the profile exists, and dates it.
                    _ => (Kind::Seen, None),
                };
                spill
                    .push(kind, r.id, r.ts, kept)
                    .map_err(|what| bad(format!("{what} is too long (a row's id and name are at most 65,535 bytes, a value at most 4 GB)")))?;
                if spill.full() {
                    spill.flush()?;
                }
                Ok(())
            });
            rows.fetch_add(read % 65_536, Ordering::Relaxed);
            result?;
        }
        spill.finish()
    };
    let spills = std::thread::scope(|s| -> Result<Vec<Spilled>> {
        let handles: Vec<_> = (0..workers).map(|w| s.spawn(move || worker(w))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a reader thread panicked")))
            })
            .collect()
    })?;
    Ok(Read {
        rows: rows.load(Ordering::Relaxed),
        non_json: non_json.load(Ordering::Relaxed),
        spills,
    })
}

/// Which rows are kept: a set lookup per row, not a scan of the names.
struct Keeps {
    everything: bool,
    traits: rustc_hash::FxHashSet<Box<[u8]>>,
    ids: rustc_hash::FxHashSet<Box<[u8]>>,
}

impl Keeps {
    fn keeps(&self, table: Table, key: &[u8]) -> bool {
        self.everything
            || match table {
                Table::Traits => self.traits.contains(key),
                Table::Identifiers => self.ids.contains(key),
            }
    }
}

/// The spilled bytes above which a partition is read through
/// [`reduce::reduced`] (`SEGSYNC_REDUCE_BYTES` sets it for tests: 0 reduces
/// every partition).
fn reduce_above() -> u64 {
    std::env::var("SEGSYNC_REDUCE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(reduce::HOLD_BYTES)
}

/// Pass 2: partitions grouped by profile on every core, written in order.
/// Returns the profiles written.
fn pass2(
    tmp: &Path,
    spills: &[Spilled],
    partitions: usize,
    out: &Path,
    workers: usize,
    shape: &group::Shape,
    progress: &Progress,
) -> Result<u64> {
    let mut output = AtomicFile::create(out)?;
    let mut profiles = 0u64;
    crate::pool::ordered_map(
        (0..partitions).map(Ok::<usize, anyhow::Error>),
        workers,
        |p| -> Result<(Vec<u8>, u64)> {
            let mut buf = Vec::new();
            if spill::partition_bytes(spills, p) > reduce_above() {
                // One profile's rows too many to hold: only what its line shows.
                reduce::reduced(spills, p, tmp, &mut buf)?;
            } else {
                spill::read_partition(spills, p, &mut buf)?;
            }
            let recs = spill::records(&buf, tmp)?;
            let mut lines = Vec::with_capacity(buf.len() / 2);
            let n = group::write_profiles(&recs, shape, &mut lines)?;
            Ok((lines, n))
        },
        |r: Result<(Vec<u8>, u64)>| {
            let (bytes, n) = r?;
            output.write_all(&bytes)?;
            profiles += n;
            progress.tick(|| format!("{profiles} profiles written"));
            Ok(())
        },
    )?;
    output.commit()?;
    Ok(profiles)
}

/// A complete checkpoint, so transform and status know what was read.
fn save_checkpoint(dir: &Path, out: &Path, wanted: &Wanted, profiles: u64) -> Result<()> {
    let mut cp = Checkpoint {
        version: checkpoint::VERSION,
        space_id: format!("profiles-sync:{}", dir.display()),
        api_url: String::new(),
        started_at: state::now(),
        complete: true,
        lines: profiles,
        pass: 1,
        source_id_types: wanted.id_types.clone(),
        traits: if wanted.everything {
            vec![]
        } else {
            wanted.traits.clone()
        },
        all_traits: wanted.everything,
        ..Default::default()
    };
    cp.offset = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    checkpoint::save(&state::checkpoint(out), &mut cp)
}
