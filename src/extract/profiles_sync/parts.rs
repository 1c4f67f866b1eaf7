//! Reading Profiles Sync part files, row by row: gzipped or plain CSV, and
//! Parquet (column by column in batches through the `parquet` crate's column
//! readers; its record API as the fallback for unusual column types). Column
//! and folder names match case-insensitively. Rows borrow bytes from the
//! readers' buffers: the caller checks that what it keeps is UTF-8, and copies
//! only that.

use super::cells::{
    float_seq, parse_seq, parse_ts_text, scaled_seq, timestamp_unit, ts_cell, unsigned_seq, TsUnit,
};
use crate::error::UsageError;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

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

/// A share of a Parquet part: some of its row groups, so one large file is
/// read by every worker. `first_row` is the number of rows before them (a
/// row's number in errors counts from the file's start).
#[derive(Debug, Clone)]
pub struct Slice {
    pub groups: std::ops::Range<usize>,
    pub first_row: u64,
}

/// The rows and compressed bytes of each row group of a Parquet part; None
/// for any other file (or one whose footer cannot be read: reading it whole
/// names the damage).
pub fn row_groups(path: &Path) -> Option<Vec<(u64, u64)>> {
    use parquet::file::reader::FileReader;
    if super::unload::sniff(path).ok()? != super::unload::Content::Parquet {
        return None;
    }
    let reader = open_parquet(path).ok()?;
    let groups = reader.metadata().row_groups();
    Some(
        groups
            .iter()
            .map(|g| {
                (
                    g.num_rows().max(0) as u64,
                    g.compressed_size().max(0) as u64,
                )
            })
            .collect(),
    )
}

/// Reads one part file (or a [`Slice`] of a Parquet one), row by row.
pub fn read_part(
    path: &Path,
    key: &str,
    slice: Option<&Slice>,
    each: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<()> {
    use super::unload::{named, sniff, Content};
    let content = sniff(path)?;
    if let Some(name) = named(path).filter(|n| *n != content) {
        let is = |c: Content| match c {
            Content::Parquet => "Parquet",
            Content::Gzip => "gzip-compressed",
            Content::Text => "plain text",
        };
        return Err(UsageError::new(format!(
            "{}: named as {} but its bytes are {}; rename it to what it is",
            path.display(),
            is(name),
            is(content)
        ))
        .into());
    }
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    match content {
        Content::Parquet => read_parquet(path, key, slice, each).map_err(|e| {
            // The decoder's own words name no file: a damaged page, a torn
            // column chunk. Rows our reader refused are named already.
            match e.downcast_ref::<parquet::errors::ParquetError>() {
                Some(p) => UsageError::new(format!(
                    "{}{}: unreadable ({p}): the file is damaged; unload it again (a rerun cannot fix it)",
                    path.display(),
                    slice.map_or(String::new(), |s| format!(" (row groups {:?})", s.groups))
                ))
                .into(),
                None => e,
            }
        }),
        Content::Gzip => read_csv(path, flate2::read::MultiGzDecoder::new(f), key, each),
        Content::Text => read_csv(path, f, key, each),
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
            ts: match c.ts {
                Some(i) => ts_cell(get(i), path, n)?,
                None => None,
            },
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
    /// INT96 timestamps, read then kept in `ints` as milliseconds.
    int96s: Vec<parquet::data_type::Int96>,
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
            | ColumnReader::Int96ColumnReader(_)
            | ColumnReader::Int32ColumnReader(_) => Some(ColumnBatches {
                reader,
                defs: Vec::with_capacity(BATCH_ROWS),
                texts: Vec::new(),
                ints: Vec::new(),
                int32s: Vec::new(),
                int96s: Vec::new(),
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
            ColumnReader::Int96ColumnReader(r) => {
                self.int96s.clear();
                let read = r.read_records(BATCH_ROWS, Some(defs), None, &mut self.int96s)?;
                // Julian day and nanoseconds of the day: milliseconds, floored.
                self.ints.extend(
                    self.int96s
                        .iter()
                        .map(|t| t.to_nanos().div_euclid(1_000_000)),
                );
                read
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
            parquet::column::reader::ColumnReader::Int64ColumnReader(_)
            | parquet::column::reader::ColumnReader::Int96ColumnReader(_) => Some(get(&self.ints)),
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
    slice: Option<&Slice>,
    each: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<bool> {
    use parquet::file::reader::FileReader;
    let reader = open_parquet(path)?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    // Leaf columns by path: a column nested in a struct beside the five
    // this reads is `outer.inner`, and never taken for one of them.
    let names: Vec<String> = (0..schema.num_columns())
        .map(|i| schema.column(i).path().parts().join("."))
        .collect();
    let c = columns(&names, key, path)?;
    if !plain_signed_integer_or_text(&schema.column(c.seq)) {
        // A DECIMAL with a scale, or an unsigned 64-bit seq: the column
        // reader would give its raw bits; the record API reads it exactly.
        return Ok(false);
    }
    let ts_unit = c.ts.and_then(|i| timestamp_unit(&schema.column(i)));
    let (groups, mut row_no) = match slice {
        Some(s) => (s.groups.clone(), s.first_row),
        None => (0..reader.num_row_groups(), 0),
    };
    let (mut b1, mut b2, mut b3) = (String::new(), String::new(), String::new());
    for g in groups {
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
                let t = match (&ts, ts_unit) {
                    (Some(col), Some(unit)) if col.int(r).is_some() => {
                        col.int(r).flatten().map(|n| unit.to_ms(n))
                    }
                    (Some(col), _) => match col.text(r, &mut b1) {
                        Ok(Some(text)) => ts_cell(text, path, row_no)?,
                        _ => None,
                    },
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

fn read_parquet(
    path: &Path,
    key: &str,
    slice: Option<&Slice>,
    each: &mut dyn FnMut(Row) -> Result<()>,
) -> Result<()> {
    if read_parquet_columns(path, key, slice, each)? {
        return Ok(());
    }
    read_parquet_rows(path, key, slice, each)
}

/// The record API: any column types, one row at a time (slower).
fn read_parquet_rows(
    path: &Path,
    key: &str,
    slice: Option<&Slice>,
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
    // The projection keeps the file's own root name (DuckDB writes
    // `duckdb_schema`): the reader refuses a projection under another name.
    let root_name = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .name()
        .to_string();
    let projection = parquet::schema::types::Type::group_type_builder(&root_name)
        .with_fields(wanted.iter().map(|i| fields[*i].clone()).collect())
        .build()
        .map_err(|e| UsageError::new(format!("{}: {e}", path.display())))?;
    let unit = all.ts.and_then(|i| {
        let d = reader.metadata().file_metadata().schema_descr_ptr();
        (0..d.num_columns())
            .find(|c| d.column(*c).path().parts() == [fields[i].name()])
            .and_then(|c| timestamp_unit(&d.column(c)))
    });
    let ts = |f: &Field| field_ts(f, unit);
    let unreadable = |e: parquet::errors::ParquetError| {
        UsageError::new(format!(
            "{}: not a readable Parquet file ({e})",
            path.display()
        ))
    };
    let (groups, first_row) = match slice {
        Some(s) => (s.groups.clone(), s.first_row),
        None => (0..reader.num_row_groups(), 0),
    };
    let mut n = first_row as usize;
    for g in groups {
        let rg = reader.get_row_group(g).map_err(unreadable)?;
        for row in rg
            .get_row_iter(Some(projection.clone()))
            .map_err(unreadable)?
        {
            n += 1;
            let row = row.map_err(|e| {
                UsageError::new(format!("{}: row {n}: unreadable ({e})", path.display()))
            })?;
            let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
            let get = |i: usize| fields.get(i).copied().unwrap_or(&Field::Null);
            let seq = field_seq(get(c.seq), path, n as u64)?;
            let (id, key, value) = (
                field_text(get(c.id)),
                field_text(get(c.key)),
                field_text(get(c.value)),
            );
            each(Row {
                id: id.as_deref().unwrap_or_default().as_bytes(),
                key: key.as_deref().unwrap_or_default().as_bytes(),
                value: value.as_deref().map(str::as_bytes),
                seq,
                ts: c.ts.and_then(|i| ts(get(i))),
            })?;
        }
    }
    Ok(())
}

/// Whether a `seq` column's values are what the column reader gives: a
/// signed integer (no decimal scale) or text; anything else goes by the
/// record API, which knows decimals and unsigned integers.
fn plain_signed_integer_or_text(d: &parquet::schema::types::ColumnDescriptor) -> bool {
    use parquet::basic::{ConvertedType, LogicalType, Type};
    match d.logical_type() {
        Some(LogicalType::Decimal { scale, .. }) => scale == 0,
        Some(LogicalType::Integer { is_signed, .. }) => is_signed,
        Some(_) => true,
        None => {
            !matches!(
                d.converted_type(),
                ConvertedType::DECIMAL | ConvertedType::UINT_64 | ConvertedType::UINT_32
            ) || d.physical_type() == Type::BYTE_ARRAY
        }
    }
}

/// A record-API `seq` cell, exactly: integers of every width (an unsigned
/// one past 2^63 refused), decimals by their unscaled value and scale, a
/// DOUBLE or FLOAT only where it is still exact (else refused, with how to
/// unload it), text as `parse_seq` reads it; null is refused.
fn field_seq(f: &parquet::record::Field, path: &Path, row: u64) -> Result<i64> {
    use parquet::record::Field;
    Ok(match f {
        Field::Long(n) => *n,
        Field::Int(n) => i64::from(*n),
        Field::Short(n) => i64::from(*n),
        Field::Byte(n) => i64::from(*n),
        Field::UInt(n) => i64::from(*n),
        Field::UShort(n) => i64::from(*n),
        Field::UByte(n) => i64::from(*n),
        Field::ULong(n) => unsigned_seq(*n, path, row)?,
        Field::Double(x) => float_seq(*x, path, row)?,
        Field::Float(x) => float_seq(f64::from(*x), path, row)?,
        Field::Decimal(d) => {
            let bytes = d.data();
            if bytes.len() > 16 {
                anyhow::bail!(UsageError::new(format!(
                    "{}: row {row}: seq is a DECIMAL of {} bytes, beyond what segsync compares exactly",
                    path.display(),
                    bytes.len()
                )));
            }
            // Big-endian two's complement, sign-extended to 128 bits.
            let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut wide = [fill; 16];
            wide[16 - bytes.len()..].copy_from_slice(bytes);
            let scale = u32::try_from(d.scale()).unwrap_or(u32::MAX);
            scaled_seq(i128::from_be_bytes(wide), scale, path, row)?
        }
        Field::Null => anyhow::bail!(UsageError::new(format!(
            "{}: row {row}: seq is null; every row needs one to tell the latest value",
            path.display()
        ))),
        other => parse_seq(&field_text(other).unwrap_or_default(), path, row)?,
    })
}

/// A record-API cell as text (None: null).
fn field_text(f: &parquet::record::Field) -> Option<String> {
    use parquet::record::Field;
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
        Field::TimestampMicros(n) => Some(n.div_euclid(1_000).to_string()),
        other => Some(other.to_string()),
    }
}

/// A record-API timestamp cell in ms, by the column's unit when the cell is
/// a plain number.
fn field_ts(f: &parquet::record::Field, unit: Option<TsUnit>) -> Option<i64> {
    use parquet::record::Field;
    match (f, unit) {
        (Field::TimestampMillis(n), _) => Some(*n),
        (Field::TimestampMicros(n), _) => Some(n.div_euclid(1_000)),
        (Field::Date(d), _) => Some(i64::from(*d) * 86_400_000),
        (Field::Long(n), Some(u)) => Some(u.to_ms(*n)),
        (Field::Int(n), Some(u)) => Some(u.to_ms(i64::from(*n))),
        (Field::Str(s), _) => parse_ts_text(s),
        (Field::Long(n), None) => parse_ts_text(&n.to_string()),
        _ => None,
    }
}
