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
use rustc_hash::FxHashMap as HashMap;
use serde_json::{json, Map, Value};
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

/// One row of either table, as read, borrowed from the reader's buffers:
/// only what is kept gets copied.
struct Row<'a> {
    id: &'a str,
    /// Trait name, or identifier type.
    key: &'a str,
    value: Option<&'a str>,
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
            id: get(c.id),
            key: get(c.key),
            // An unload writes NULL as an empty field (or \N).
            value: (!value.is_empty() && value != "\\N").then_some(value),
            seq: parse_seq(get(c.seq), path, n)?,
            ts: c.ts.and_then(|i| parse_ts_text(get(i))),
        })?;
    }
}

/// A column of a row group, decoded.
enum Col {
    Text(Vec<Option<parquet::data_type::ByteArray>>),
    Int(Vec<Option<i64>>),
}

impl Col {
    /// Cell `i` as text; numbers are spelled into `buf`.
    fn text<'a>(&'a self, i: usize, buf: &'a mut String) -> Option<&'a str> {
        match self {
            Col::Text(v) => v[i]
                .as_ref()
                .map(|b| std::str::from_utf8(b.data()).unwrap_or("")),
            Col::Int(v) => v[i].map(|n| {
                buf.clear();
                use std::fmt::Write as _;
                let _ = write!(buf, "{n}");
                buf.as_str()
            }),
        }
    }
}

/// Read one column of a row group through the column reader: whole batches
/// of values, no per-field allocation but the strings themselves. `scale`
/// turns INT64 timestamps into milliseconds. None: a physical type this
/// reader does not handle (the record API reads the file instead).
fn read_column(
    rg: &dyn parquet::file::reader::RowGroupReader,
    col: usize,
    rows: usize,
) -> Result<Option<Col>> {
    use parquet::column::reader::ColumnReader;
    let spread = |defs: &[i16], n_values: usize| -> Option<Vec<bool>> {
        // Which rows have a value: all of them when no levels were produced.
        if defs.len() == rows {
            Some(defs.iter().map(|d| *d > 0).collect())
        } else if n_values == rows {
            Some(vec![true; rows])
        } else {
            None
        }
    };
    let mut defs: Vec<i16> = Vec::with_capacity(rows);
    Ok(Some(match rg.get_column_reader(col)? {
        ColumnReader::ByteArrayColumnReader(mut r) => {
            let mut values = Vec::with_capacity(rows);
            while r.read_records(rows, Some(&mut defs), None, &mut values)?.0 > 0 {}
            let Some(present) = spread(&defs, values.len()) else {
                return Ok(None);
            };
            let mut it = values.into_iter();
            Col::Text(
                present
                    .into_iter()
                    .map(|p| p.then(|| it.next()).flatten())
                    .collect(),
            )
        }
        ColumnReader::Int64ColumnReader(mut r) => {
            let mut values = Vec::with_capacity(rows);
            while r.read_records(rows, Some(&mut defs), None, &mut values)?.0 > 0 {}
            let Some(present) = spread(&defs, values.len()) else {
                return Ok(None);
            };
            let mut it = values.into_iter();
            Col::Int(
                present
                    .into_iter()
                    .map(|p| p.then(|| it.next()).flatten())
                    .collect(),
            )
        }
        ColumnReader::Int32ColumnReader(mut r) => {
            let mut values = Vec::with_capacity(rows);
            while r.read_records(rows, Some(&mut defs), None, &mut values)?.0 > 0 {}
            let Some(present) = spread(&defs, values.len()) else {
                return Ok(None);
            };
            let mut it = values.into_iter();
            Col::Int(
                present
                    .into_iter()
                    .map(|p| p.then(|| it.next()).flatten().map(i64::from))
                    .collect(),
            )
        }
        _ => return Ok(None),
    }))
}

/// Milliseconds per unit of an INT64 timestamp column (by its logical or
/// converted type); None for a plain number.
fn timestamp_scale(d: &parquet::schema::types::ColumnDescriptor) -> Option<f64> {
    use parquet::basic::{ConvertedType, LogicalType, TimeUnit};
    match d.logical_type() {
        Some(LogicalType::Timestamp { unit, .. }) => Some(match unit {
            TimeUnit::MILLIS(_) => 1.0,
            TimeUnit::MICROS(_) => 0.001,
            TimeUnit::NANOS(_) => 0.000_001,
        }),
        _ => match d.converted_type() {
            ConvertedType::TIMESTAMP_MILLIS => Some(1.0),
            ConvertedType::TIMESTAMP_MICROS => Some(0.001),
            _ => None,
        },
    }
}

/// Read a Parquet part column by column. Ok(false): a column's physical type
/// is not one this reader handles; nothing was read.
fn read_parquet_columns(
    path: &Path,
    key: &str,
    each: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<bool> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let reader = SerializedFileReader::new(f).map_err(|e| {
        UsageError::new(format!(
            "{}: not a readable Parquet file ({e})",
            path.display()
        ))
    })?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    if schema.num_columns() != schema.root_schema().get_fields().len() {
        return Ok(false); // nested columns: the record API handles them
    }
    let names: Vec<String> = (0..schema.num_columns())
        .map(|i| schema.column(i).name().to_string())
        .collect();
    let c = columns(&names, key, path)?;
    let ts_scale = c.ts.and_then(|i| timestamp_scale(&schema.column(i)));
    let mut row_no = 0u64;
    let (mut b1, mut b2, mut b3) = (String::new(), String::new(), String::new());
    for g in 0..reader.num_row_groups() {
        let rg = reader.get_row_group(g)?;
        let rows = rg.metadata().num_rows() as usize;
        let read = |i: usize| read_column(rg.as_ref(), i, rows);
        let (Some(ids), Some(keys), Some(values), Some(seqs)) =
            (read(c.id)?, read(c.key)?, read(c.value)?, read(c.seq)?)
        else {
            return Ok(false);
        };
        let ts = match c.ts {
            Some(i) => read(i)?,
            None => None,
        };
        for r in 0..rows {
            row_no += 1;
            let seq = match &seqs {
                Col::Int(v) => v[r].unwrap_or(0),
                text => parse_seq(text.text(r, &mut b1).unwrap_or(""), path, row_no)?,
            };
            let t = match (&ts, ts_scale) {
                (Some(Col::Int(v)), Some(scale)) => v[r].map(|n| (n as f64 * scale) as i64),
                (Some(col), _) => col.text(r, &mut b1).and_then(parse_ts_text),
                (None, _) => None,
            };
            each(Row {
                id: ids.text(r, &mut b1).unwrap_or_default(),
                key: keys.text(r, &mut b2).unwrap_or_default(),
                value: values.text(r, &mut b3),
                seq,
                ts: t,
            })?;
        }
    }
    Ok(true)
}

fn read_parquet(path: &Path, key: &str, each: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
    if read_parquet_columns(path, key, each)? {
        return Ok(());
    }
    read_parquet_rows(path, key, each)
}

/// The record API: any column types, one row at a time (slower).
fn read_parquet_rows(
    path: &Path,
    key: &str,
    each: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<()> {
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
        let (id, key, value) = (text(get(c.id)), text(get(c.key)), text(get(c.value)));
        each(Row {
            id: id.as_deref().unwrap_or_default(),
            key: key.as_deref().unwrap_or_default(),
            value: value.as_deref(),
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
    let mut summary = Summary::default();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8);

    // Pass 1: the part files shared out among the workers; each aggregates
    // its rows per profile in a bounded window and writes its own set of
    // partition files.
    let jobs: Vec<(char, &str, &PathBuf)> = trait_parts
        .iter()
        .map(|p| ('t', "name", p))
        .chain(id_parts.iter().map(|p| ('i', "type", p)))
        .collect();
    let next_job = std::sync::atomic::AtomicUsize::new(0);
    let rows = std::sync::atomic::AtomicU64::new(0);
    let non_json = std::sync::atomic::AtomicBool::new(false);
    let check_json = values.is_none();
    let worker = |w: usize| -> Result<()> {
        let mut partitions = Partitions::create(tmp.join(format!("w{w}")))?;
        let mut window: HashMap<String, Acc> = HashMap::default();
        let mut in_window = 0usize;
        loop {
            let j = next_job.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&(table, key, part)) = jobs.get(j) else {
                break;
            };
            read_part(part, key, &mut |r: Row| {
                let n = rows.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n % 65_536 == 0 {
                    progress.set_position(n);
                    progress.tick(|| format!("reading {}", part.display()));
                }
                if r.id.is_empty() {
                    return Ok(());
                }
                let keep = if table == 't' {
                    wanted.everything || wanted.traits.iter().any(|t| t == r.key)
                } else {
                    wanted.everything || wanted.id_types.iter().any(|t| t == r.key)
                };
                if table == 't' && check_json {
                    if let Some(v) = r.value {
                        if !non_json.load(std::sync::atomic::Ordering::Relaxed)
                            && serde_json::from_str::<serde::de::IgnoredAny>(v).is_err()
                        {
                            non_json.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                // A row not kept still says the profile exists, and dates it.
                let a = match window.get_mut(r.id) {
                    Some(a) => a,
                    None => window.entry(r.id.to_string()).or_default(),
                };
                a.time(r.ts);
                if keep {
                    if table == 't' {
                        if a.traits.get(r.key).is_none_or(|(s, _)| *s < r.seq) {
                            a.traits
                                .insert(r.key.to_string(), (r.seq, r.value.map(str::to_string)));
                        }
                    } else if let Some(v) = r.value {
                        a.ids.push((r.seq, r.key.to_string(), v.to_string()));
                    }
                }
                in_window += 1;
                if in_window >= WINDOW_ROWS / workers {
                    partitions.write(&mut window)?;
                    in_window = 0;
                }
                Ok(())
            })?;
        }
        partitions.write(&mut window)?;
        partitions.finish()?;
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
    summary.rows = rows.load(std::sync::atomic::Ordering::Relaxed);
    ui::debug(format!(
        "extract: pass 1 (read {} rows into {PARTITIONS} partitions on {workers} threads) took {:.1}s",
        summary.rows,
        started.elapsed().as_secs_f64()
    ));
    summary.json_values = match values {
        Some(TraitValues::Json) => true,
        Some(TraitValues::Text) => false,
        None => !non_json.load(std::sync::atomic::Ordering::Relaxed),
    };

    // Pass 2: partitions grouped by profile on every core, written in order.
    let mut output = AtomicFile::create(out)?;
    let mut write_error = None;
    let json_values = summary.json_values;
    crate::transform::pool::ordered_map(
        (0..PARTITIONS).map(Ok::<u64, anyhow::Error>),
        workers,
        |i| group_partition(&tmp, workers, i, wanted, json_values),
        |r: Result<(Vec<u8>, u64)>| {
            if write_error.is_some() {
                return;
            }
            match r.and_then(|(bytes, n)| {
                output.write_all(&bytes)?;
                Ok(n)
            }) {
                Ok(n) => {
                    summary.profiles += n;
                    progress.tick(|| format!("{} profiles written", summary.profiles));
                }
                Err(e) => write_error = Some(e),
            }
        },
    )?;
    if let Some(e) = write_error {
        return Err(e);
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
