//! Profiles Sync parts written by the parquet crate for the memory tests,
//! and the peak memory of the children a test ran.

use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::Path;
use std::sync::Arc;

/// A part with one row group of `rows` rows, written in batches (the row
/// group is one, however it is written).
pub fn write_part(
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
pub fn children_peak_mb() -> i64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    u.ru_maxrss / 1024
}

/// Run `segsync extract --from profiles-sync UNLOAD` in `dir`, after checking
/// that no child so far came near `ceiling_mb`; its lines, once it exited 0.
pub async fn extract_lines(dir: &Path, unload: &Path, ceiling_mb: i64) -> Vec<serde_json::Value> {
    let before = children_peak_mb();
    assert!(
        before < ceiling_mb,
        "no child so far came near the ceiling ({before} MB)"
    );
    let r = super::segsync(
        dir,
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
    super::read_lines(&super::data(dir).join("profiles.ndjson"))
}
