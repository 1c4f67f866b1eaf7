//! extract --from profiles-sync reads a row group larger than its memory
//! ceiling, in bounded memory. The only test of this binary, so the peak
//! RSS of its children (getrusage(RUSAGE_CHILDREN), measured by the kernel,
//! not by segsync) is the one extract's.

mod common;
use common::*;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::Path;
use std::sync::Arc;

/// The ceiling the extract must stay under, whatever the row group's size:
/// a quarter of DuckDB's peak on the bench's 100,000-profile unload (about
/// 300 MB), rounded up to leave room for a debug build.
const CEILING_MB: i64 = 100;
/// Rows of the one row group, and the bytes of each row's value: 400 MB of
/// text decoded, 4 times the ceiling (Snappy makes it a 20 MB file).
const ROWS: usize = 200_000;
const VALUE_BYTES: usize = 2_000;
const PROFILES: usize = 1_000;

/// A part with one row group of `rows` rows, written in batches (the row
/// group is one, however it is written).
fn write_part(
    path: &Path,
    key: &str,
    rows: usize,
    row: impl Fn(usize) -> (String, String, String),
) {
    let schema = parse_message_type(&format!(
        "message schema {{
            REQUIRED BYTE_ARRAY canonical_segment_id (UTF8);
            REQUIRED BYTE_ARRAY {key} (UTF8);
            OPTIONAL BYTE_ARRAY value (UTF8);
            REQUIRED INT64 seq;
            REQUIRED INT64 timestamp (TIMESTAMP(MICROS,true));
        }}"
    ))
    .unwrap();
    // No dictionary: every value is stored, and decoded, whole.
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_max_row_group_size(usize::MAX)
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(f, Arc::new(schema), Arc::new(props)).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut col = 0;
    while let Some(mut c) = rg.next_column().unwrap() {
        for from in (0..rows).step_by(10_000) {
            let batch: Vec<(String, String, String)> =
                (from..(from + 10_000).min(rows)).map(&row).collect();
            match col {
                0..=2 => {
                    let values: Vec<ByteArray> = batch
                        .iter()
                        .map(|r| ByteArray::from([r.0.as_str(), &r.1, &r.2][col]))
                        .collect();
                    let defs = vec![1i16; values.len()];
                    let defs = (col == 2).then_some(defs.as_slice());
                    c.typed::<ByteArrayType>()
                        .write_batch(&values, defs, None)
                        .unwrap();
                }
                3 => {
                    let seqs: Vec<i64> = (from..from + batch.len()).map(|i| i as i64).collect();
                    c.typed::<Int64Type>()
                        .write_batch(&seqs, None, None)
                        .unwrap();
                }
                _ => {
                    let ts: Vec<i64> = (from..from + batch.len())
                        .map(|i| 1_700_000_000_000_000 + i as i64 * 1_000_000)
                        .collect();
                    c.typed::<Int64Type>().write_batch(&ts, None, None).unwrap();
                }
            }
        }
        c.close().unwrap();
        col += 1;
    }
    let meta = rg.close().unwrap();
    assert_eq!(meta.num_rows() as usize, rows);
    w.close().unwrap();
}

/// The largest resident set of any child this process has waited for.
fn children_peak_mb() -> i64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_group_larger_than_the_memory_ceiling_is_read_in_bounded_memory() {
    let dir = tempdir();
    let unload = dir.path().join("unload");
    std::fs::create_dir_all(unload.join("user_traits")).unwrap();
    std::fs::create_dir_all(unload.join("user_identifiers")).unwrap();
    let filler = "b".repeat(VALUE_BYTES - 12);
    // Every profile's bio, again and again (each value unique, so that no
    // encoding can share it), and one email a profile, written last.
    write_part(
        &unload.join("user_traits/part-0.parquet"),
        "name",
        ROWS,
        |i| {
            let id = format!("p{:04}", i % PROFILES);
            if i >= ROWS - PROFILES {
                (
                    id,
                    "email".into(),
                    format!("\"{}@example.com\"", i % PROFILES),
                )
            } else {
                (id, "bio".into(), format!("\"{filler}{i:010}\""))
            }
        },
    );
    write_part(
        &unload.join("user_identifiers/part-0.parquet"),
        "type",
        PROFILES,
        |i| (format!("p{i:04}"), "user_id".into(), format!("u{i}")),
    );
    let decoded_mb = (ROWS * VALUE_BYTES) as i64 >> 20;
    assert!(
        decoded_mb > 3 * CEILING_MB,
        "the row group is larger than the ceiling"
    );
    let before = children_peak_mb();
    assert!(
        before < CEILING_MB,
        "no child so far came near the ceiling ({before} MB)"
    );
    let r = segsync(
        dir.path(),
        None,
        &[
            "extract",
            "--from",
            "profiles-sync",
            unload.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let lines = read_lines(&data(dir.path()).join("profiles.ndjson"));
    assert_eq!(lines.len(), PROFILES);
    for l in &lines {
        let n: usize = l["segment_id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(l["traits"]["email"], format!("{n}@example.com"), "{l}");
        assert_eq!(l["external_ids"][0]["id"], format!("u{n}"));
    }
    let peak = children_peak_mb();
    assert!(
        peak < CEILING_MB,
        "extract peaked at {peak} MB reading a row group of {decoded_mb} MB of values; the ceiling is {CEILING_MB} MB"
    );
    eprintln!("extract peaked at {peak} MB for a row group of {decoded_mb} MB of values");
}
