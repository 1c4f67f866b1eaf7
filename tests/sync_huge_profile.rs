//! extract --from profiles-sync groups a profile whose kept rows are far
//! larger than its memory ceiling: one profile whose description was
//! rewritten 200,000 times, 400 MB of kept values. The only test of this
//! binary, so the peak RSS of its children (getrusage(RUSAGE_CHILDREN),
//! measured by the kernel, not by segsync) is the one extract's.

mod common;
use common::unload::{children_peak_mb, extract_lines, write_part};
use common::*;

/// The ceiling, as tests/sync_memory.rs's: a quarter of DuckDB's peak on the
/// bench's 100,000-profile unload, rounded up for a debug build.
const CEILING_MB: i64 = 100;
/// Versions of the one profile's description, and the bytes of each: 400 MB
/// of kept values, 4 times the ceiling.
const ROWS: usize = 200_000;
const VALUE_BYTES: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_with_more_kept_values_than_the_memory_ceiling_is_grouped_in_bounded_memory() {
    let dir = tempdir();
    let unload = dir.path().join("unload");
    std::fs::create_dir_all(unload.join("user_traits")).unwrap();
    std::fs::create_dir_all(unload.join("user_identifiers")).unwrap();
    let filler = "d".repeat(VALUE_BYTES - 12);
    // `description` is a mapped trait: every version is kept until grouped.
    write_part(
        &unload.join("user_traits/part-0.parquet"),
        "name",
        ROWS,
        |i| {
            (
                "p1".into(),
                "description".into(),
                format!("\"{filler}{i:010}\""),
            )
        },
    );
    write_part(
        &unload.join("user_identifiers/part-0.parquet"),
        "type",
        1,
        |_| ("p1".into(), "user_id".into(), "u1".into()),
    );
    let kept_mb = (ROWS * VALUE_BYTES) as i64 >> 20;
    assert!(
        kept_mb > 3 * CEILING_MB,
        "the profile is larger than the ceiling"
    );
    let lines = extract_lines(dir.path(), &unload, CEILING_MB).await;
    assert_eq!(lines.len(), 1);
    // The latest version (the highest seq) wins.
    assert_eq!(
        lines[0]["traits"]["description"],
        format!("{filler}{:010}", ROWS - 1)
    );
    assert_eq!(lines[0]["external_ids"][0]["id"], "u1");
    let peak = children_peak_mb();
    assert!(
        peak < CEILING_MB,
        "extract peaked at {peak} MB grouping a profile of {kept_mb} MB of kept values; the ceiling is {CEILING_MB} MB"
    );
    eprintln!("extract peaked at {peak} MB for a profile of {kept_mb} MB of kept values");
}
