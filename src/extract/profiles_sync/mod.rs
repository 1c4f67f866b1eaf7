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
//! Any size in bounded memory: pass 1 streams every part once and writes
//! each row to one of [`PARTITIONS`] temporary files by a hash of its profile
//! id (in `DATA/.profiles-sync.tmp/`, removed at the start and the end, so a
//! killed run leaves nothing a rerun trips over); pass 2 reads one partition
//! at a time, groups it by profile, and writes the profiles. Peak memory is
//! one partition's profiles. The output is written aside and renamed.
//!
//! Trait values: a warehouse stores semi-structured values as JSON text (a
//! Snowflake VARIANT unloads that way); when every non-null value parses as
//! JSON they are read as JSON, otherwise as text (`--trait-values` decides
//! instead), and the summary says which.

mod parts;

use super::fetcher::Wanted;
use crate::files::{self, AtomicFile};
use crate::records::ProfileRecord;
use crate::state::{self, checkpoint, checkpoint::Checkpoint};
use crate::ui::{self, Progress};
use anyhow::{Context, Result};
use parts::{parts, read_part, Row};
use rustc_hash::FxHashMap as HashMap;
use serde_json::{json, Map, Value};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Write};
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

/// Temporary partitions: each holds about 1/PARTITIONS of the profiles.
pub const PARTITIONS: u64 = 128;

fn partition_of(id: &str) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    id.hash(&mut h);
    h.finish() % PARTITIONS
}

/// The temporary partitions of pass 1.
struct Partitions {
    dir: PathBuf,
    files: Vec<BufWriter<File>>,
}

impl Partitions {
    fn create(dir: PathBuf) -> Result<Partitions> {
        let _ = std::fs::remove_dir_all(&dir);
        files::ensure_dir(&dir)?;
        let files = (0..PARTITIONS)
            .map(|i| {
                let p = dir.join(format!("part-{i:03}.ndjson"));
                File::create(&p)
                    .map(|f| BufWriter::with_capacity(64 * 1024, f))
                    .with_context(|| format!("cannot create {}", p.display()))
            })
            .collect::<Result<_>>()?;
        Ok(Partitions { dir, files })
    }

    /// Write a window's profiles, each as one record in its partition.
    fn write(&mut self, window: &mut HashMap<String, Acc>) -> Result<()> {
        for (id, a) in window.drain() {
            let f = &mut self.files[partition_of(&id) as usize];
            let rec = Record {
                id,
                traits: a.traits.into_iter().map(|(k, (s, v))| (k, s, v)).collect(),
                ids: a.ids,
                first: a.first,
                last: a.last,
            };
            serde_json::to_writer(&mut *f, &rec)?;
            f.write_all(b"\n")?;
        }
        Ok(())
    }

    fn finish(self) -> Result<PathBuf> {
        for mut f in self.files {
            f.flush()?;
        }
        Ok(self.dir)
    }
}

/// A profile being assembled from its rows.
#[derive(Default)]
struct Acc {
    traits: HashMap<String, (i64, Option<String>)>,
    ids: Vec<(i64, String, String)>,
    first: Option<i64>,
    last: Option<i64>,
}

impl Acc {
    fn time(&mut self, ts: Option<i64>) {
        if let Some(t) = ts {
            self.first = Some(self.first.map_or(t, |f| f.min(t)));
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
        }
    }

    /// A trait value, kept when its seq is the highest seen.
    fn set_trait(&mut self, name: String, seq: i64, value: Option<String>) {
        match self.traits.get(&name) {
            Some((s, _)) if *s >= seq => {}
            _ => {
                self.traits.insert(name, (seq, value));
            }
        }
    }

    fn merge(&mut self, r: Record) {
        self.time(r.first);
        self.time(r.last);
        for (name, seq, value) in r.traits {
            self.set_trait(name, seq, value);
        }
        self.ids.extend(r.ids);
    }
}

/// What a window of pass 1 knows of one profile: a line of a partition.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    id: String,
    traits: Vec<(String, i64, Option<String>)>,
    ids: Vec<(i64, String, String)>,
    first: Option<i64>,
    last: Option<i64>,
}

/// Rows aggregated in memory before they go to their partitions: a profile's
/// rows in one window become one record. Bounds pass 1's memory.
const WINDOW_ROWS: usize = 262_144;

#[derive(Debug, Default)]
pub struct Summary {
    pub profiles: u64,
    pub rows: u64,
    pub json_values: bool,
}

fn iso(ms: i64) -> Value {
    Value::String(crate::dates::iso_millis(ms))
}

pub fn run(
    dir: &Path,
    out: &Path,
    wanted: &Wanted,
    values: Option<TraitValues>,
) -> Result<Summary> {
    let started = Instant::now();
    let trait_parts = parts(dir, "user_traits")?;
    let id_parts = parts(dir, "user_identifiers")?;
    files::ensure_dir(&files::parent_dir(out))?;
    let tmp = files::parent_dir(out).join(".profiles-sync.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    files::ensure_dir(&tmp)?;
    let progress = Progress::new("extract", "rows", None);
    let workers = crate::pool::workers();
    let jobs: Vec<(Table, &PathBuf)> = trait_parts
        .iter()
        .map(|p| (Table::Traits, p))
        .chain(id_parts.iter().map(|p| (Table::Identifiers, p)))
        .collect();
    let read = pass1(&tmp, &jobs, workers, wanted, values.is_none(), &progress)?;
    let mut summary = Summary {
        rows: read.rows,
        ..Default::default()
    };
    ui::debug(format!(
        "extract: pass 1 (read {} rows into {PARTITIONS} partitions on {workers} threads) took {:.1}s",
        summary.rows,
        started.elapsed().as_secs_f64()
    ));
    summary.json_values = match values {
        Some(TraitValues::Json) => true,
        Some(TraitValues::Text) => false,
        None => !read.non_json,
    };
    summary.profiles = pass2(&tmp, out, workers, wanted, summary.json_values, &progress)?;
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
        "extract: {:.1}s, {:.1} profiles/s",
        secs,
        summary.profiles as f64 / secs
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
}

/// Pass 1: the part files shared out among the workers; each aggregates its
/// rows per profile in a bounded window and writes its own set of partition
/// files.
fn pass1(
    tmp: &Path,
    jobs: &[(Table, &PathBuf)],
    workers: usize,
    wanted: &Wanted,
    check_json: bool,
    progress: &Progress,
) -> Result<Read> {
    let keeps = Keeps {
        everything: wanted.everything,
        traits: wanted.traits.iter().cloned().collect(),
        ids: wanted.id_types.iter().cloned().collect(),
    };
    let keeps = &keeps;
    let next_job = AtomicUsize::new(0);
    let rows = AtomicU64::new(0);
    let non_json = AtomicBool::new(false);
    let worker = |w: usize| -> Result<()> {
        let mut agg = Window {
            partitions: Partitions::create(tmp.join(format!("w{w}")))?,
            profiles: HashMap::default(),
            rows: 0,
            limit: WINDOW_ROWS / workers,
        };
        while let Some(&(table, part)) = jobs.get(next_job.fetch_add(1, Ordering::Relaxed)) {
            let mut row_no = 0u64;
            read_part(part, table.key_column(), &mut |r: Row| {
                row_no += 1;
                let n = rows.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(65_536) {
                    progress.set_position(n);
                    progress.tick(|| format!("reading {}", part.display()));
                }
                if r.id.is_empty() {
                    // Dropping it could change which value of a trait wins.
                    return Err(crate::error::UsageError::new(format!(
                        "{}: row {row_no}: canonical_segment_id is empty; every row of a Profiles Sync table names its profile, so the unload is damaged: unload the table again",
                        part.display()
                    ))
                    .into());
                }
                let keep = keeps.keeps(table, r.key);
                // Only the values written out decide how values are read.
                if keep && table == Table::Traits && check_json && !non_json.load(Ordering::Relaxed)
                {
                    let not_json = r
                        .value
                        .is_some_and(|v| serde_json::from_str::<serde::de::IgnoredAny>(v).is_err());
                    if not_json {
                        non_json.store(true, Ordering::Relaxed);
                    }
                }
                agg.take(table, &r, keep)
            })?;
        }
        agg.partitions.write(&mut agg.profiles)?;
        agg.partitions.finish()?;
        Ok(())
    };
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers).map(|w| s.spawn(move || worker(w))).collect();
        for h in handles {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a reader thread panicked")))?;
        }
        Ok(())
    })?;
    Ok(Read {
        rows: rows.load(Ordering::Relaxed),
        non_json: non_json.load(Ordering::Relaxed),
    })
}

/// Which rows are kept: a set lookup per row, not a scan of the names.
struct Keeps {
    everything: bool,
    traits: rustc_hash::FxHashSet<String>,
    ids: rustc_hash::FxHashSet<String>,
}

impl Keeps {
    fn keeps(&self, table: Table, key: &str) -> bool {
        self.everything
            || match table {
                Table::Traits => self.traits.contains(key),
                Table::Identifiers => self.ids.contains(key),
            }
    }
}

/// A worker's window: rows aggregated per profile until `limit` rows, then
/// one record per profile written to its partition.
struct Window {
    partitions: Partitions,
    profiles: HashMap<String, Acc>,
    rows: usize,
    limit: usize,
}

impl Window {
    fn take(&mut self, table: Table, r: &Row, keep: bool) -> Result<()> {
        // A row not kept still says the profile exists, and dates it.
        let a = match self.profiles.get_mut(r.id) {
            Some(a) => a,
            None => self.profiles.entry(r.id.to_string()).or_default(),
        };
        a.time(r.ts);
        if keep {
            match table {
                Table::Traits => {
                    if a.traits.get(r.key).is_none_or(|(s, _)| *s < r.seq) {
                        a.traits
                            .insert(r.key.to_string(), (r.seq, r.value.map(str::to_string)));
                    }
                }
                Table::Identifiers => {
                    if let Some(v) = r.value {
                        a.ids.push((r.seq, r.key.to_string(), v.to_string()));
                    }
                }
            }
        }
        self.rows += 1;
        if self.rows >= self.limit {
            self.partitions.write(&mut self.profiles)?;
            self.rows = 0;
        }
        Ok(())
    }
}

/// Pass 2: partitions grouped by profile on every core, written in order.
/// Returns the profiles written.
fn pass2(
    tmp: &Path,
    out: &Path,
    workers: usize,
    wanted: &Wanted,
    json_values: bool,
    progress: &Progress,
) -> Result<u64> {
    let mut output = AtomicFile::create(out)?;
    let mut profiles = 0u64;
    crate::pool::ordered_map(
        (0..PARTITIONS).map(Ok::<u64, anyhow::Error>),
        workers,
        |i| group_partition(tmp, workers, i, wanted, json_values),
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

/// Group partition `i` (its file from every worker) by profile: the lines
/// to write, sorted by profile id, and how many.
fn group_partition(
    tmp: &Path,
    workers: usize,
    i: u64,
    wanted: &Wanted,
    json_values: bool,
) -> Result<(Vec<u8>, u64)> {
    let mut accs: HashMap<String, Acc> = HashMap::default();
    for w in 0..workers {
        let p = tmp
            .join(format!("w{w}"))
            .join(format!("part-{i:03}.ndjson"));
        let f = File::open(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let mut rdr = BufReader::with_capacity(1 << 20, f);
        let mut l = Vec::with_capacity(4096);
        loop {
            l.clear();
            if rdr.read_until(b'\n', &mut l)? == 0 {
                break;
            }
            // serde_json checks the UTF-8 of what it reads: no second pass.
            let r: Record = serde_json::from_slice(&l)
                .with_context(|| format!("{}: damaged temporary file", p.display()))?;
            match accs.get_mut(&r.id) {
                Some(a) => a.merge(r),
                None => {
                    let mut a = Acc::default();
                    let id = r.id.clone();
                    a.merge(r);
                    accs.insert(id, a);
                }
            }
        }
    }
    let mut ids: Vec<String> = accs.keys().cloned().collect();
    ids.sort();
    let mut out = Vec::new();
    let n = ids.len() as u64;
    for id in ids {
        let Some(a) = accs.remove(&id) else { continue };
        serde_json::to_writer(&mut out, &assemble(id, a, wanted, json_values))?;
        out.push(b'\n');
    }
    Ok((out, n))
}

/// A profile line in `profiles.ndjson`'s format.
fn assemble(id: String, mut a: Acc, wanted: &Wanted, json_values: bool) -> ProfileRecord {
    a.ids.sort();
    let mut seen = std::collections::HashSet::new();
    let external_ids: Vec<Value> = a
        .ids
        .into_iter()
        .filter(|(_, t, v)| seen.insert((t.clone(), v.clone())))
        .map(|(_, t, v)| json!({"type": t, "id": v}))
        .collect();
    let identified = wanted.everything
        || external_ids.iter().any(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| wanted.id_types.iter().any(|w| w == t))
        });
    let mut traits = Map::new();
    if identified {
        let mut names: Vec<(String, (i64, Option<String>))> = a.traits.into_iter().collect();
        names.sort_by(|x, y| x.0.cmp(&y.0));
        for (name, (_, value)) in names {
            // A trait whose latest value is null is no longer set.
            let v = match value {
                None => continue,
                Some(text) if json_values => {
                    serde_json::from_str(&text).unwrap_or(Value::String(text))
                }
                Some(text) => Value::String(text),
            };
            traits.insert(name, v);
        }
    }
    let mut metadata = Map::new();
    if let Some(f) = a.first {
        metadata.insert("created_at".into(), iso(f));
    }
    if let Some(l) = a.last {
        metadata.insert("updated_at".into(), iso(l));
    }
    ProfileRecord {
        segment_id: id,
        metadata: Value::Object(metadata),
        traits,
        external_ids,
        extra: Map::new(),
    }
}
