//! Reading Profiles Sync part files, row by row: gzipped or plain CSV, and
//! Parquet (column by column in batches through the `parquet` crate's column
//! readers; its record API as the fallback for unusual column types). Column
//! and folder names match case-insensitively. Rows borrow bytes from the
//! readers' buffers: the caller checks that what it keeps is UTF-8, and copies
//! only that.

use crate::error::UsageError;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// One row of either table, as read, borrowed from the reader's buffers:
/// only what is kept gets copied. Text is as stored: not yet checked to be
/// UTF-8.
pub struct Row<'a> {
    pub id: &'a [u8],
    /// Trait name, or identifier type.
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
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
            id: get(c.id).as_bytes(),
            key: get(c.key).as_bytes(),
            // An unload writes NULL as an empty field (or \N).
            value: (!value.is_empty() && value != "\\N").then_some(value.as_bytes()),
            seq: parse_seq(get(c.seq), path, n)?,
            ts: c.ts.and_then(|i| parse_ts_text(get(i))),
        })?;
    }
}

/// Rows decoded at a time: memory follows this, never a row group's size.
const BATCH_ROWS: usize = 8192;

/// Row `i` of a batch has no value.
const NULL_SLOT: u32 = u32::MAX;

/// One column of a row group, read batch by batch through the column
/// reader into buffers kept from batch to batch: no allocation per batch,
/// nor per value but the reader's own.
struct ColumnBatches {
    reader: parquet::column::reader::ColumnReader,
    defs: Vec<i16>,
    texts: Vec<parquet::data_type::ByteArray>,
    ints: Vec<i64>,
    int32s: Vec<i32>,
    /// Per row of the batch, the index of its value, or NULL_SLOT.
    slots: Vec<u32>,
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
                texts: Vec::new(),
                ints: Vec::new(),
                int32s: Vec::new(),
                slots: Vec::with_capacity(BATCH_ROWS),
            }),
            _ => None,
        })
    }

    /// Read the next up to `BATCH_ROWS` rows: how many (0 at the end).
    fn next(&mut self) -> Result<usize> {
        use parquet::column::reader::ColumnReader;
        let defs = &mut self.defs;
        defs.clear();
        self.texts.clear();
        self.ints.clear();
        self.int32s.clear();
        let (rows, n_values, _) = match &mut self.reader {
            ColumnReader::ByteArrayColumnReader(r) => {
                r.read_records(BATCH_ROWS, Some(defs), None, &mut self.texts)?
            }
            ColumnReader::Int64ColumnReader(r) => {
                r.read_records(BATCH_ROWS, Some(defs), None, &mut self.ints)?
            }
            ColumnReader::Int32ColumnReader(r) => {
                r.read_records(BATCH_ROWS, Some(defs), None, &mut self.int32s)?
            }
            _ => anyhow::bail!("a column type this reader does not handle"),
        };
        // The values, spread over the rows that have one.
        self.slots.clear();
        if self.defs.len() == rows {
            let mut next = 0u32;
            self.slots.extend(self.defs.iter().map(|d| {
                if *d > 0 {
                    next += 1;
                    next - 1
                } else {
                    NULL_SLOT
                }
            }));
        } else if n_values == rows {
            self.slots.extend(0..rows as u32);
        } else {
            anyhow::bail!("a column with repeated values, which Profiles Sync tables do not have");
        }
        Ok(rows)
    }

    /// Row `i`'s number, when the column holds numbers.
    fn int(&self, i: usize) -> Option<Option<i64>> {
        let slot = self.slots[i];
        let get = |v: &[i64]| (slot != NULL_SLOT).then(|| v[slot as usize]);
        match self.reader {
            parquet::column::reader::ColumnReader::Int64ColumnReader(_) => Some(get(&self.ints)),
            parquet::column::reader::ColumnReader::Int32ColumnReader(_) => {
                Some((slot != NULL_SLOT).then(|| i64::from(self.int32s[slot as usize])))
            }
            _ => None,
        }
    }

    /// Row `i`'s bytes; numbers are spelled into `buf`.
    fn bytes<'a>(&'a self, i: usize, buf: &'a mut String) -> Option<&'a [u8]> {
        let slot = self.slots[i];
        if slot == NULL_SLOT {
            return None;
        }
        if let Some(n) = self.int(i) {
            buf.clear();
            use std::fmt::Write as _;
            let _ = write!(buf, "{}", n?);
            return Some(buf.as_bytes());
        }
        Some(self.texts[slot as usize].data())
    }

    /// Row `i` as text. Err: bytes that are not UTF-8 (never read as "").
    fn text<'a>(
        &'a self,
        i: usize,
        buf: &'a mut String,
    ) -> Result<Option<&'a str>, std::str::Utf8Error> {
        self.bytes(i, buf).map(std::str::from_utf8).transpose()
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

/// Open a Parquet part: its footer read, or an error naming the file.
fn open_parquet(path: &Path) -> Result<parquet::file::reader::SerializedFileReader<File>> {
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    parquet::file::reader::SerializedFileReader::new(f).map_err(|e| {
        UsageError::new(format!(
            "{}: not a readable Parquet file ({e})",
            path.display()
        ))
        .into()
    })
}

/// Read a Parquet part column by column. Ok(false): a column's physical type
/// is not one this reader handles; nothing was read.
fn read_parquet_columns(
    path: &Path,
    key: &str,
    each: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<bool> {
    use parquet::file::reader::FileReader;
    let reader = open_parquet(path)?;
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
            let rows = ids.next()?;
            let others = [keys.next()?, values.next()?, seqs.next()?];
            let ts_rows = ts.as_mut().map(ColumnBatches::next).transpose()?;
            if rows == 0 && others == [0; 3] && ts_rows.unwrap_or(0) == 0 {
                break;
            }
            if others.iter().any(|n| *n != rows) || ts_rows.is_some_and(|n| n != rows) {
                anyhow::bail!(
                    "{}: row group {g}: its columns have different row counts",
                    path.display()
                );
            }
            for r in 0..rows {
                row_no += 1;
                let seq = match seqs.int(r) {
                    Some(n) => n.ok_or_else(|| {
                        UsageError::new(format!("{}: row {row_no}: seq is null; every row needs one to tell the latest value", path.display()))
                    })?,
                    None => {
                        let text = seqs.text(r, &mut b1).map_err(|e| {
                            UsageError::new(format!(
                                "{}: row {row_no}: seq is not UTF-8 text ({e})",
                                path.display()
                            ))
                        })?;
                        parse_seq(text.unwrap_or(""), path, row_no)?
                    }
                };
                let t = match (&ts, ts_scale) {
                    (Some(col), Some(scale)) if col.int(r).is_some() => {
                        col.int(r).flatten().map(|n| (n as f64 * scale) as i64)
                    }
                    (Some(col), _) => col.text(r, &mut b1).ok().flatten().and_then(parse_ts_text),
                    (None, _) => None,
                };
                each(Row {
                    id: ids.bytes(r, &mut b1).unwrap_or_default(),
                    key: keys.bytes(r, &mut b2).unwrap_or_default(),
                    value: values.bytes(r, &mut b3),
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
    use parquet::file::reader::FileReader;
    use parquet::record::Field;
    let reader = open_parquet(path)?;
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
            id: id.as_deref().unwrap_or_default().as_bytes(),
            key: key.as_deref().unwrap_or_default().as_bytes(),
            value: value.as_deref().map(str::as_bytes),
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
