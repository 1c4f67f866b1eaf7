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

use super::fetcher::Wanted;
use crate::error::UsageError;
use crate::files::{self, AtomicFile};
use crate::records::ProfileRecord;
use crate::state::{self, checkpoint, checkpoint::Checkpoint};
use crate::ui::{self, Progress};
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
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

/// One row of either table, as read.
struct Row {
    id: String,
    /// Trait name, or identifier type.
    key: String,
    value: Option<String>,
    seq: i64,
    /// Milliseconds since the epoch, when the part has a usable `timestamp`.
    ts: Option<i64>,
}

/// The columns a table needs, by index in a part.
struct Columns {
    id: usize,
    key: usize,
    value: usize,
    seq: usize,
    ts: Option<usize>,
}

fn columns(names: &[String], key: &str, file: &Path) -> Result<Columns> {
    let find = |want: &str| {
        names.iter().position(|n| {
            n.trim()
                .trim_start_matches('\u{feff}')
                .eq_ignore_ascii_case(want)
        })
    };
    let need = |want: &str| {
        find(want).ok_or_else(|| {
            UsageError::new(format!(
                "{}: no `{want}` column (columns: {}); a Profiles Sync {} part needs canonical_segment_id, {key}, value, seq",
                file.display(),
                names.join(", "),
                if key == "name" { "user_traits" } else { "user_identifiers" }
            ))
        })
    };
    Ok(Columns {
        id: need("canonical_segment_id")?,
        key: need(key)?,
        value: need("value")?,
        seq: need("seq")?,
        ts: find("timestamp"),
    })
}

fn parse_seq(s: &str, file: &Path, row: u64) -> Result<i64> {
    let t = s.trim();
    t.parse::<i64>()
        .ok()
        .or_else(|| {
            t.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0)
                .map(|f| f as i64)
        })
        .ok_or_else(|| {
            UsageError::new(format!(
                "{}: row {row}: seq {s:?} is not a number",
                file.display()
            ))
            .into()
        })
}

fn parse_ts_text(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i64>() {
        // Epoch seconds, milliseconds or microseconds, by size.
        return Some(match n {
            n if n > 100_000_000_000_000 => n / 1000,
            n if n > 100_000_000_000 => n,
            n => n * 1000,
        });
    }
    crate::dates::parse_timestamp(&t.replace(' ', "T")).map(|t| t.as_millisecond())
}

/// Reads one part file, row by row.
fn read_part(path: &Path, key: &str, each: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if name.ends_with(".parquet") {
        read_parquet(path, key, each)
    } else if name.ends_with(".csv.gz") || name.ends_with(".gz") {
        let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        read_csv(path, flate2::read::MultiGzDecoder::new(f), key, each)
    } else {
        let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        read_csv(path, f, key, each)
    }
}

fn read_csv(
    path: &Path,
    input: impl Read,
    key: &str,
    each: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<()> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 20, input));
    let names: Vec<String> = rdr
        .headers()
        .with_context(|| format!("{}: cannot read the header", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let c = columns(&names, key, path)?;
    let mut rec = csv::StringRecord::new();
    let mut n = 0u64;
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => {
                return Err(UsageError::new(format!(
                    "{}: row {}: not readable CSV ({e})",
                    path.display(),
                    n + 1
                ))
                .into())
            }
        }
        n += 1;
        let get = |i: usize| rec.get(i).unwrap_or("");
        let value = get(c.value);
        each(Row {
            id: get(c.id).to_string(),
            key: get(c.key).to_string(),
            // An unload writes NULL as an empty field (or \N).
            value: (!value.is_empty() && value != "\\N").then(|| value.to_string()),
            seq: parse_seq(get(c.seq), path, n)?,
            ts: c.ts.and_then(|i| parse_ts_text(get(i))),
        })?;
    }
}

fn read_parquet(path: &Path, key: &str, each: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let reader = SerializedFileReader::new(f).map_err(|e| {
        UsageError::new(format!(
            "{}: not a readable Parquet file ({e})",
            path.display()
        ))
    })?;
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let all = columns(&names, key, path)?;
    // Read only the columns needed, in the file's order.
    let mut wanted: Vec<usize> = [
        Some(all.id),
        Some(all.key),
        Some(all.value),
        Some(all.seq),
        all.ts,
    ]
    .into_iter()
    .flatten()
    .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let at = |i: usize| wanted.iter().position(|w| *w == i).unwrap_or(0);
    let c = Columns {
        id: at(all.id),
        key: at(all.key),
        value: at(all.value),
        seq: at(all.seq),
        ts: all.ts.map(at),
    };
    let fields = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .to_vec();
    let projection = parquet::schema::types::Type::group_type_builder("schema")
        .with_fields(wanted.iter().map(|i| fields[*i].clone()).collect())
        .build()
        .map_err(|e| UsageError::new(format!("{}: {e}", path.display())))?;
    let text = |f: &Field| -> Option<String> {
        match f {
            Field::Null => None,
            Field::Str(s) => Some(s.clone()),
            Field::Bytes(b) => Some(String::from_utf8_lossy(b.data()).into_owned()),
            Field::Bool(b) => Some(b.to_string()),
            Field::Byte(n) => Some(n.to_string()),
            Field::Short(n) => Some(n.to_string()),
            Field::Int(n) => Some(n.to_string()),
            Field::Long(n) => Some(n.to_string()),
            Field::UByte(n) => Some(n.to_string()),
            Field::UShort(n) => Some(n.to_string()),
            Field::UInt(n) => Some(n.to_string()),
            Field::ULong(n) => Some(n.to_string()),
            Field::Float(n) => Some(n.to_string()),
            Field::Double(n) => Some(n.to_string()),
            Field::TimestampMillis(n) => Some(n.to_string()),
            Field::TimestampMicros(n) => Some((n / 1000).to_string()),
            other => Some(other.to_string()),
        }
    };
    let ts = |f: &Field| -> Option<i64> {
        match f {
            Field::TimestampMillis(n) => Some(*n),
            Field::TimestampMicros(n) => Some(n / 1000),
            Field::Date(d) => Some(*d as i64 * 86_400_000),
            Field::Str(s) => parse_ts_text(s),
            Field::Long(n) => parse_ts_text(&n.to_string()),
            _ => None,
        }
    };
    let rows = reader.get_row_iter(Some(projection)).map_err(|e| {
        UsageError::new(format!(
            "{}: not a readable Parquet file ({e})",
            path.display()
        ))
    })?;
    for (n, row) in rows.enumerate() {
        let row = row.map_err(|e| {
            UsageError::new(format!(
                "{}: row {}: unreadable ({e})",
                path.display(),
                n + 1
            ))
        })?;
        let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        let get = |i: usize| fields.get(i).copied().unwrap_or(&Field::Null);
        let seq = match get(c.seq) {
            Field::Long(n) => *n,
            Field::Int(n) => *n as i64,
            Field::UInt(n) => *n as i64,
            Field::ULong(n) => *n as i64,
            other => parse_seq(&text(other).unwrap_or_default(), path, n as u64 + 1)?,
        };
        each(Row {
            id: text(get(c.id)).unwrap_or_default(),
            key: text(get(c.key)).unwrap_or_default(),
            value: text(get(c.value)),
            seq,
            ts: c.ts.and_then(|i| ts(get(i))),
        })?;
    }
    Ok(())
}

/// A table's folder, found case-insensitively, and its part files.
fn parts(dir: &Path, table: &str) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        UsageError::new(format!(
            "{}: cannot read the unload folder ({e})",
            dir.display()
        ))
    })?;
    let folder = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.eq_ignore_ascii_case(table))
        })
        .ok_or_else(|| {
            UsageError::new(format!(
                "{}: no {table}/ folder; unload Profiles Sync's {table} table there (see the README's \"Large spaces\")",
                dir.display()
            ))
        })?;
    let mut out: Vec<PathBuf> = std::fs::read_dir(&folder)
        .with_context(|| format!("cannot read {}", folder.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            p.is_file()
                && (n.ends_with(".parquet") || n.ends_with(".csv") || n.ends_with(".csv.gz"))
        })
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(UsageError::new(format!(
            "{}: no part files (*.parquet, *.csv, *.csv.gz)",
            folder.display()
        ))
        .into());
    }
    Ok(out)
}

fn partition_of(id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
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
    let mut partitions = Partitions::create(tmp)?;
    let progress = Progress::new("extract", "rows", None);
    let mut summary = Summary::default();
    let mut all_json = true;
    let keep_trait = |name: &str| wanted.everything || wanted.traits.iter().any(|t| t == name);
    let keep_id = |ty: &str| wanted.everything || wanted.id_types.iter().any(|t| t == ty);

    // Pass 1: every row once, aggregated per profile in a bounded window,
    // into its partition.
    let mut window: HashMap<String, Acc> = HashMap::new();
    let mut in_window = 0usize;
    for (table, key, list) in [('t', "name", &trait_parts), ('i', "type", &id_parts)] {
        for part in list.iter() {
            read_part(part, key, &mut |r: Row| {
                summary.rows += 1;
                if summary.rows % 65_536 == 0 {
                    progress.set_position(summary.rows);
                    progress.tick(|| format!("reading {}", part.display()));
                }
                if r.id.is_empty() {
                    return Ok(());
                }
                let keep = if table == 't' {
                    keep_trait(&r.key)
                } else {
                    keep_id(&r.key)
                };
                if table == 't' {
                    if let Some(v) = &r.value {
                        if all_json && values.is_none() {
                            all_json = serde_json::from_str::<serde::de::IgnoredAny>(v).is_ok();
                        }
                    }
                }
                // A row not kept still says the profile exists, and dates it.
                let a = match window.get_mut(&r.id) {
                    Some(a) => a,
                    None => window.entry(r.id.clone()).or_default(),
                };
                a.time(r.ts);
                if keep {
                    if table == 't' {
                        a.set_trait(r.key, r.seq, r.value);
                    } else if let Some(v) = r.value {
                        a.ids.push((r.seq, r.key, v));
                    }
                }
                in_window += 1;
                if in_window >= WINDOW_ROWS {
                    partitions.write(&mut window)?;
                    in_window = 0;
                }
                Ok(())
            })?;
        }
    }
    partitions.write(&mut window)?;
    drop(window);
    let tmp = partitions.finish()?;
    summary.json_values = match values {
        Some(TraitValues::Json) => true,
        Some(TraitValues::Text) => false,
        None => all_json,
    };

    // Pass 2: a partition at a time, grouped by profile.
    let mut output = AtomicFile::create(out)?;
    let mut line = Vec::with_capacity(64 * 1024);
    for i in 0..PARTITIONS {
        let p = tmp.join(format!("part-{i:03}.ndjson"));
        let f = File::open(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let mut accs: HashMap<String, Acc> = HashMap::new();
        for l in BufReader::with_capacity(1 << 20, f).lines() {
            let l = l?;
            let r: Record = serde_json::from_str(&l)
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
        let mut ids: Vec<String> = accs.keys().cloned().collect();
        ids.sort();
        for id in ids {
            let Some(a) = accs.remove(&id) else { continue };
            let rec = assemble(id, a, wanted, summary.json_values);
            line.clear();
            serde_json::to_writer(&mut line, &rec)?;
            line.push(b'\n');
            output.write_all(&line)?;
            summary.profiles += 1;
        }
        progress.set_position(summary.rows);
        progress.tick(|| format!("{} profiles written", summary.profiles));
    }
    output.commit()?;
    let _ = std::fs::remove_dir_all(&tmp);
    progress.finish();

    // A complete checkpoint, so transform and status know what was read.
    let mut cp = Checkpoint {
        version: checkpoint::VERSION,
        space_id: format!("profiles-sync:{}", dir.display()),
        api_url: String::new(),
        started_at: state::now(),
        complete: true,
        lines: summary.profiles,
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
    checkpoint::save(&state::checkpoint(out), &mut cp)?;
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
