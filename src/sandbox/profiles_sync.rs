//! The synthetic space as a warehouse unloads Segment's Profiles Sync tables
//! (`segsync sandbox --write-profiles-sync DIR`): `user_traits/` and
//! `user_identifiers/` as unsorted part files, Parquet (Snappy, with the
//! upper-case column names Snowflake writes for one of the tables) or
//! gzipped CSV. Trait values are JSON text (a VARIANT unloaded as JSON), and
//! some traits have an older, superseded value (a lower `seq`) in another
//! part. Written from the Profiles Sync table documentation, not from
//! segsync's reader.

use super::data::Dataset;
use anyhow::{Context, Result};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::Value;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// The unload's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Parquet,
    CsvGz,
}

/// Part files per table, unless told otherwise.
pub const PARTS: usize = 4;
/// Rows per Parquet row group, unless told otherwise.
pub const GROUP: usize = 50_000;

/// One table row: profile, name or type, value, seq, timestamp (µs).
struct Row(String, String, Option<String>, i64, i64);

fn epoch_micros(iso: &str) -> i64 {
    iso.parse::<jiff::Timestamp>()
        .map(|t| t.as_microsecond())
        .unwrap_or(0)
}

/// A part file of one table (a handful per run: their sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Part {
    Parquet {
        writer: SerializedFileWriter<File>,
        rows: Vec<Row>,
        group: usize,
        /// Rows are shuffled within each row group (a warehouse writes
        /// them in no order), from this seed.
        shuffle: Option<rand::rngs::StdRng>,
    },
    CsvGz(csv::Writer<flate2::write::GzEncoder<File>>),
}

impl Part {
    fn create(path: &Path, format: Format, key: &str, upper: bool, layout: Layout) -> Result<Part> {
        let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let name = |n: &str| {
            if upper {
                n.to_ascii_uppercase()
            } else {
                n.to_string()
            }
        };
        Ok(match format {
            Format::Parquet => {
                let schema = parse_message_type(&format!(
                    "message schema {{
                        REQUIRED BYTE_ARRAY {} (UTF8);
                        REQUIRED BYTE_ARRAY {} (UTF8);
                        OPTIONAL BYTE_ARRAY {} (UTF8);
                        REQUIRED INT64 {};
                        REQUIRED INT64 {} (TIMESTAMP(MICROS,true));
                        REQUIRED INT64 {} (TIMESTAMP(MICROS,true));
                        REQUIRED INT64 {} (TIMESTAMP(MICROS,true));
                    }}",
                    name("canonical_segment_id"),
                    name(key),
                    name("value"),
                    name("seq"),
                    name("received_at"),
                    name("uuid_ts"),
                    name("timestamp")
                ))?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                Part::Parquet {
                    writer: SerializedFileWriter::new(f, Arc::new(schema), Arc::new(props))?,
                    rows: Vec::new(),
                    group: layout.group.max(1),
                    shuffle: layout.shuffle.map(|seed| {
                        use rand::SeedableRng;
                        rand::rngs::StdRng::seed_from_u64(seed)
                    }),
                }
            }
            Format::CsvGz => {
                let mut w = csv::Writer::from_writer(flate2::write::GzEncoder::new(
                    f,
                    flate2::Compression::fast(),
                ));
                w.write_record([
                    name("canonical_segment_id"),
                    name(key),
                    name("value"),
                    name("seq"),
                    name("received_at"),
                    name("uuid_ts"),
                    name("timestamp"),
                ])?;
                Part::CsvGz(w)
            }
        })
    }

    fn push(&mut self, r: Row) -> Result<()> {
        match self {
            Part::Parquet { rows, group, .. } => {
                rows.push(r);
                if rows.len() >= *group {
                    self.flush_group()?;
                }
            }
            Part::CsvGz(w) => {
                let ts = jiff::Timestamp::from_microsecond(r.4)
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                w.write_record([
                    r.0.as_str(),
                    r.1.as_str(),
                    r.2.as_deref().unwrap_or(""),
                    &r.3.to_string(),
                    &ts,
                    &ts,
                    &ts,
                ])?;
            }
        }
        Ok(())
    }

    fn flush_group(&mut self) -> Result<()> {
        let Part::Parquet {
            writer,
            rows,
            shuffle,
            ..
        } = self
        else {
            return Ok(());
        };
        if rows.is_empty() {
            return Ok(());
        }
        let mut rows = std::mem::take(rows);
        if let Some(rng) = shuffle {
            use rand::seq::SliceRandom;
            rows.shuffle(rng);
        }
        let mut rg = writer.next_row_group()?;
        let mut col = 0;
        while let Some(mut c) = rg.next_column()? {
            match col {
                0..=2 => {
                    let (values, defs): (Vec<ByteArray>, Vec<i16>) = match col {
                        0 => (
                            rows.iter().map(|r| ByteArray::from(r.0.as_str())).collect(),
                            vec![],
                        ),
                        1 => (
                            rows.iter().map(|r| ByteArray::from(r.1.as_str())).collect(),
                            vec![],
                        ),
                        _ => (
                            rows.iter()
                                .filter_map(|r| r.2.as_deref().map(ByteArray::from))
                                .collect(),
                            rows.iter().map(|r| i16::from(r.2.is_some())).collect(),
                        ),
                    };
                    let defs = (col == 2).then_some(defs.as_slice());
                    c.typed::<ByteArrayType>()
                        .write_batch(&values, defs, None)?;
                }
                3 => {
                    let v: Vec<i64> = rows.iter().map(|r| r.3).collect();
                    c.typed::<Int64Type>().write_batch(&v, None, None)?;
                }
                _ => {
                    let v: Vec<i64> = rows.iter().map(|r| r.4).collect();
                    c.typed::<Int64Type>().write_batch(&v, None, None)?;
                }
            }
            c.close()?;
            col += 1;
        }
        rg.close()?;
        Ok(())
    }

    fn close(mut self) -> Result<()> {
        self.flush_group()?;
        match self {
            Part::Parquet { writer, .. } => {
                writer.close()?;
            }
            Part::CsvGz(w) => {
                w.into_inner()
                    .map_err(|e| e.into_error())?
                    .finish()?
                    .flush()?;
            }
        }
        Ok(())
    }
}

fn part_of(key: &(u64, &str, i64), parts: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % parts as u64) as usize
}

/// How Parquet parts lay their rows out.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Part files per table.
    pub parts: usize,
    /// Rows per row group.
    pub group: usize,
    /// Shuffle the rows of each row group, from this seed; otherwise a
    /// profile's rows of a part are next to each other.
    pub shuffle: Option<u64>,
}

/// Write the space `ds` as a Profiles Sync unload in `dir`, Parquet parts
/// laid out as `layout` says.
pub fn write(ds: &Dataset, dir: &Path, format: Format, layout: Layout) -> Result<u64> {
    let ext = match format {
        Format::Parquet => "parquet",
        Format::CsvGz => "csv.gz",
    };
    let mut tables = Vec::new();
    for (table, key, upper) in [
        ("user_traits", "name", true),
        ("user_identifiers", "type", false),
    ] {
        let folder = dir.join(if upper {
            table.to_ascii_uppercase()
        } else {
            table.to_string()
        });
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        let parts = (0..layout.parts.max(1))
            .map(|k| {
                let layout = Layout {
                    shuffle: layout
                        .shuffle
                        .map(|s| s ^ (k as u64 + 1) << 8 ^ u64::from(upper)),
                    ..layout
                };
                Part::create(
                    &folder.join(format!("part-{k:04}.{ext}")),
                    format,
                    key,
                    upper,
                    layout,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        tables.push(parts);
    }
    let mut rows = 0u64;
    for i in 0..ds.n {
        let p = ds.profile(i, 0);
        let created = epoch_micros(p.metadata["created_at"].as_str().unwrap_or(""));
        let updated = epoch_micros(p.metadata["updated_at"].as_str().unwrap_or(""));
        let id = &p.segment_id;
        for (k, (name, value)) in p.traits.iter().enumerate() {
            let text = |v: &Value| Some(v.to_string());
            if k % 3 == 0 {
                // An older value, superseded by the row below.
                let old = Row(
                    id.clone(),
                    name.clone(),
                    text(&Value::String(format!("old {name}"))),
                    1,
                    created,
                );
                tables[0][part_of(&(i, name.as_str(), 1), layout.parts.max(1))].push(old)?;
                rows += 1;
            }
            let at = if k == 0 {
                updated
            } else {
                created.max(updated - 1_000_000)
            };
            tables[0][part_of(&(i, name.as_str(), 2), layout.parts.max(1))].push(Row(
                id.clone(),
                name.clone(),
                text(value),
                2,
                at,
            ))?;
            rows += 1;
        }
        // Segment's seq follows its own time: the ids by created_at (then
        // the id's text), whatever order the API lists them in.
        let mut ids: Vec<&Value> = p.external_ids.iter().collect();
        ids.sort_by_key(|e| {
            let at = e["created_at"].as_str().unwrap_or("").to_string();
            (
                epoch_micros(&at),
                e["id"].as_str().unwrap_or("").to_string(),
            )
        });
        for (k, e) in ids.into_iter().enumerate() {
            let ty = e["type"].as_str().unwrap_or("").to_string();
            let v = e["id"].as_str().map(str::to_string);
            let at = if k == 0 {
                created
            } else {
                updated.min(created + k as i64)
            };
            tables[1][part_of(&(i, ty.as_str(), k as i64), layout.parts.max(1))].push(Row(
                id.clone(),
                ty,
                v,
                k as i64 + 1,
                at,
            ))?;
            rows += 1;
        }
    }
    for parts in tables {
        for p in parts {
            p.close()?;
        }
    }
    Ok(rows)
}
