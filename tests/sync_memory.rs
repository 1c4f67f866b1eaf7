//! extract --from profiles-sync reads a row group larger than its memory
//! ceiling, in bounded memory. The only test of this binary, so the peak
//! RSS of its children (getrusage(RUSAGE_CHILDREN), measured by the kernel,
//! not by segsync) is the one extract's.

mod common;
use common::unload::{children_peak_mb, extract_lines, write_part};
use common::*;

/// The ceiling the extract must stay under, whatever the row group's size:
/// a quarter of DuckDB's peak on the bench's 100,000-profile unload (about
/// 300 MB), rounded up to leave room for a debug build.
const CEILING_MB: i64 = 100;
/// Rows of the one row group, and the bytes of each row's value: 400 MB of
/// text decoded, 4 times the ceiling (Snappy makes it a 20 MB file).
const ROWS: usize = 200_000;
const VALUE_BYTES: usize = 2_000;
const PROFILES: usize = 1_000;

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
    let lines = extract_lines(dir.path(), &unload, CEILING_MB).await;
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
