//! Reading Profiles Sync part files, row by row: gzipped or plain CSV, and
//! Parquet (column by column in batches through the `parquet` crate's column
//! readers; its record API as the fallback for unusual column types). Column
//! and folder names match case-insensitively. Rows borrow from the readers'
//! buffers: only what the caller keeps gets copied.

use crate::error::UsageError;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// One row of either table, as read, borrowed from the reader's buffers:
/// only what is kept gets copied.
pub struct Row<'a> {
    pub id: &'a str,
    /// Trait name, or identifier type.
    pub key: &'a str,
    pub value: Option<&'a str>,
    pub seq: i64,
    /// Milliseconds since the epoch, when the part has a usable `timestamp`.
    pub ts: Option<i64>,
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
pub fn read_part(path: &Path, key: &str, each: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if name.ends_with(".parquet") {
        return read_parquet(path, key, each);
    }
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n = f
        .read(&mut magic)
        .with_context(|| format!("cannot read {}", path.display()))?;
    std::io::Seek::rewind(&mut f).with_context(|| format!("cannot read {}", path.display()))?;
    let gzip = n == 2 && magic == [0x1f, 0x8b];
    match (name.ends_with(".gz"), gzip) {
        (true, true) => read_csv(path, flate2::read::MultiGzDecoder::new(f), key, each),
        (false, false) => read_csv(path, f, key, each),
        (true, false) => Err(UsageError::new(format!(
            "{}: named .gz but not gzip-compressed; rename it (.csv) or compress it",
            path.display()
        ))
        .into()),
        (false, true) => Err(UsageError::new(format!(
            "{}: gzip-compressed but not named .gz; rename it .csv.gz",
            path.display()
        ))
        .into()),
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

/// Rows decoded at a time: memory follows this, never a row group's size.
const BATCH_ROWS: usize = 8192;

/// A batch of one column, decoded.
enum Col {
    Text(Vec<Option<parquet::data_type::ByteArray>>),
    Int(Vec<Option<i64>>),
}

impl Col {
    fn len(&self) -> usize {
        match self {
            Col::Text(v) => v.len(),
            Col::Int(v) => v.len(),
        }
    }

    /// Cell `i` as text; numbers are spelled into `buf`. Err: bytes that
    /// are not UTF-8 (never read as "").
    fn text<'a>(
        &'a self,
        i: usize,
        buf: &'a mut String,
    ) -> Result<Option<&'a str>, std::str::Utf8Error> {
        match self {
            Col::Text(v) => v[i]
                .as_ref()
                .map(|b| std::str::from_utf8(b.data()))
                .transpose(),
            Col::Int(v) => Ok(v[i].map(|n| {
                buf.clear();
                use std::fmt::Write as _;
                let _ = write!(buf, "{n}");
                buf.as_str()
            })),
        }
    }
}

/// One column of a row group, read batch by batch through the column
/// reader: no per-field allocation but the strings themselves.
struct ColumnBatches {
    reader: parquet::column::reader::ColumnReader,
    defs: Vec<i16>,
}

impl ColumnBatches {
    /// None: a physical type this reader does not handle (the record API
    /// reads the file instead).
    fn open(rg: &dyn parquet::file::reader::RowGroupReader, col: usize) -> Result<Option<Self>> {
        use parquet::column::reader::ColumnReader;
        let reader = rg.get_column_reader(col)?;
        Ok(match reader {
            ColumnReader::ByteArrayColumnReader(_)
            | ColumnReader::Int64ColumnReader(_)
            | ColumnReader::Int32ColumnReader(_) => Some(ColumnBatches {
                reader,
                defs: Vec::with_capacity(BATCH_ROWS),
            }),
            _ => None,
        })
    }

    /// The next up to `BATCH_ROWS` rows; an empty batch at the end.
    fn next(&mut self) -> Result<Col> {
        use parquet::column::reader::ColumnReader;
        let defs = &mut self.defs;
        defs.clear();
        // Every physical type reads the same way: the records, then the
        // values spread over the rows that have one.
        macro_rules! batch {
            ($r:expr, $wrap:path, $convert:expr) => {{
                let mut values = Vec::with_capacity(BATCH_ROWS);
                let (rows, n_values, _) =
                    $r.read_records(BATCH_ROWS, Some(defs), None, &mut values)?;
                let present: Vec<bool> = if defs.len() == rows {
                    defs.iter().map(|d| *d > 0).collect()
                } else if n_values == rows {
                    vec![true; rows]
                } else {
                    anyhow::bail!(
                        "a column with repeated values, which Profiles Sync tables do not have"
                    );
                };
                let mut it = values.into_iter();
                $wrap(
                    present
                        .into_iter()
                        .map(|p| p.then(|| it.next()).flatten().map($convert))
                        .collect(),
                )
            }};
        }
        Ok(match &mut self.reader {
            ColumnReader::ByteArrayColumnReader(r) => batch!(r, Col::Text, |b| b),
            ColumnReader::Int64ColumnReader(r) => batch!(r, Col::Int, |n| n),
            ColumnReader::Int32ColumnReader(r) => batch!(r, Col::Int, i64::from),
            _ => anyhow::bail!("a column type this reader does not handle"),
        })
    }
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
        let open = |i: usize| ColumnBatches::open(rg.as_ref(), i);
        let (Some(mut ids), Some(mut keys), Some(mut values), Some(mut seqs)) =
            (open(c.id)?, open(c.key)?, open(c.value)?, open(c.seq)?)
        else {
            return Ok(false);
        };
        let mut ts = match c.ts {
            Some(i) => open(i)?,
            None => None,
        };
        loop {
            let batch = [ids.next()?, keys.next()?, values.next()?, seqs.next()?];
            let ts_batch = ts.as_mut().map(ColumnBatches::next).transpose()?;
            let rows = batch[0].len();
            if rows == 0 {
                break;
            }
            if batch.iter().any(|b| b.len() != rows)
                || ts_batch.as_ref().is_some_and(|b| b.len() != rows)
            {
                anyhow::bail!(
                    "{}: row group {g}: its columns have different row counts",
                    path.display()
                );
            }
            let [ids_b, keys_b, values_b, seqs_b] = &batch;
            for r in 0..rows {
                row_no += 1;
                let utf8 = |what: &str, e: std::str::Utf8Error| {
                    UsageError::new(format!(
                        "{}: row {row_no}: {what} is not UTF-8 text ({e})",
                        path.display()
                    ))
                };
                let seq = match seqs_b {
                    Col::Int(v) => v[r].ok_or_else(|| {
                        UsageError::new(format!("{}: row {row_no}: seq is null; every row needs one to tell the latest value", path.display()))
                    })?,
                    text => parse_seq(text.text(r, &mut b1).map_err(|e| utf8("seq", e))?.unwrap_or(""), path, row_no)?,
                };
                let t = match (&ts_batch, ts_scale) {
                    (Some(Col::Int(v)), Some(scale)) => v[r].map(|n| (n as f64 * scale) as i64),
                    (Some(col), _) => col.text(r, &mut b1).ok().flatten().and_then(parse_ts_text),
                    (None, _) => None,
                };
                each(Row {
                    id: ids_b
                        .text(r, &mut b1)
                        .map_err(|e| utf8("canonical_segment_id", e))?
                        .unwrap_or_default(),
                    key: keys_b
                        .text(r, &mut b2)
                        .map_err(|e| utf8(key, e))?
                        .unwrap_or_default(),
                    value: values_b.text(r, &mut b3).map_err(|e| utf8("value", e))?,
                    seq,
                    ts: t,
                })?;
            }
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
pub fn parts(dir: &Path, table: &str) -> Result<Vec<PathBuf>> {
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
