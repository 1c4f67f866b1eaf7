//! extract --from profiles-sync: Segment's Profiles Sync tables unloaded by a
//! warehouse give the same profiles.ndjson as the Profile API.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A profile's metadata, traits and (type, id) pairs.
type Shared = (Value, Value, BTreeSet<(String, String)>);

/// Profiles by id, external ids reduced to (type, id): what both paths share.
fn by_id(file: &Path) -> BTreeMap<String, Shared> {
    read_lines(file)
        .into_iter()
        .map(|l| {
            let ids = l["external_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["type"].as_str().unwrap().to_string(),
                        e["id"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            (
                l["segment_id"].as_str().unwrap().to_string(),
                (l["metadata"].clone(), l["traits"].clone(), ids),
            )
        })
        .collect()
}

fn sorted_rows(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_gives_the_same_profiles_and_customers_as_the_api() {
    let sb = sandbox(opts(400)).await;
    let dir = tempdir();
    let api = dir.path().join("api");
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["--data-dir", api.to_str().unwrap(), "extract"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    // The sandbox's shapes: a profile's rows together in 4 parts; gzipped
    // CSV; and a warehouse's shape, rows shuffled within row groups of 37
    // rows spread over 9 parts.
    let shapes: [(&str, &[&str]); 3] = [
        ("parquet", &["--sync-format", "parquet"]),
        ("csv-gz", &["--sync-format", "csv-gz"]),
        (
            "parquet-shuffled",
            &[
                "--sync-shuffle",
                "--sync-parts",
                "9",
                "--sync-row-group",
                "37",
            ],
        ),
    ];
    for (format, flags) in shapes {
        let unload = dir.path().join(format!("unload-{format}"));
        let mut args = vec![
            "sandbox",
            "--profiles",
            "400",
            "--write-profiles-sync",
            unload.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        let r = segsync(dir.path(), None, &args).await;
        assert_eq!(r.code, 0, "{}", r.all());
        let out = dir.path().join(format!("sync-{format}"));
        let r = segsync(
            dir.path(),
            None,
            &[
                "--data-dir",
                out.to_str().unwrap(),
                "extract",
                "--from",
                "profiles-sync",
                unload.to_str().unwrap(),
            ],
        )
        .await;
        assert_eq!(r.code, 0, "{}", r.all());
        assert!(
            r.stderr.contains("400 profiles") && r.stderr.contains("read as JSON"),
            "{}",
            r.stderr
        );
        assert_eq!(
            by_id(&out.join("profiles.ndjson")),
            by_id(&api.join("profiles.ndjson")),
            "{format}: the same profiles, traits (latest by seq) and ids as the API path"
        );
        assert!(
            !out.join(".profiles-sync.tmp").exists(),
            "temporary files removed"
        );
        if format == "parquet-shuffled" {
            // The order of the output follows the profiles, not the rows.
            assert_eq!(
                std::fs::read(out.join("profiles.ndjson")).unwrap(),
                std::fs::read(dir.path().join("sync-parquet/profiles.ndjson")).unwrap(),
                "shuffled rows in more parts give the same file, byte for byte"
            );
        }
        // And transform makes the same customers of them.
        for d in [&api, &out] {
            let r = segsync(
                dir.path(),
                None,
                &["--data-dir", d.to_str().unwrap(), "transform", "--force"],
            )
            .await;
            assert_eq!(r.code, 0, "{}", r.all());
        }
        assert_eq!(
            sorted_rows(&out.join("customers.csv")),
            sorted_rows(&api.join("customers.csv"))
        );
        assert_eq!(
            sorted_rows(&out.join("rejected.csv")).len(),
            sorted_rows(&api.join("rejected.csv")).len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_unloads_are_named_by_file_and_row_and_text_values_stay_text() {
    let dir = tempdir();
    let u = dir.path().join("u");
    std::fs::create_dir_all(u.join("user_traits")).unwrap();
    let run = |args: Vec<String>| {
        let dir = dir.path().to_path_buf();
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            segsync(&dir, None, &a).await
        }
    };
    let extract = || {
        vec![
            "extract".to_string(),
            "--from".into(),
            "profiles-sync".into(),
            u.to_str().unwrap().into(),
        ]
    };
    let r = run(extract()).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("no user_traits/ folder") || r.stderr.contains("no part files"),
        "{}",
        r.stderr
    );
    std::fs::create_dir_all(u.join("user_identifiers")).unwrap();
    std::fs::write(
        u.join("user_identifiers/part-1.csv"),
        "canonical_segment_id,type,value,seq,timestamp\nuse_1,user_id,u1,1,2024-01-01 10:00:00\nuse_2,anonymous_id,a2,1,2024-01-01 10:00:00\n",
    )
    .unwrap();
    // A missing column.
    std::fs::write(
        u.join("user_traits/part-1.csv"),
        "canonical_segment_id,name,seq\nuse_1,city,1\n",
    )
    .unwrap();
    let r = run(extract()).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("part-1.csv") && r.stderr.contains("no `value` column"),
        "{}",
        r.stderr
    );
    // A seq that is not a number.
    std::fs::write(
        u.join("user_traits/part-1.csv"),
        "CANONICAL_SEGMENT_ID,NAME,VALUE,SEQ\nuse_1,city,Oslo,1\nuse_1,city,Bergen,two\n",
    )
    .unwrap();
    let r = run(extract()).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("part-1.csv: row 2: seq \"two\" is not a number"),
        "{}",
        r.stderr
    );
    // An unreadable Parquet file.
    std::fs::write(
        u.join("user_traits/part-1.csv"),
        "canonical_segment_id,name,value,seq\nuse_1,city,Oslo,1\n",
    )
    .unwrap();
    std::fs::write(u.join("user_traits/part-2.parquet"), b"not parquet at all").unwrap();
    let r = run(extract()).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("part-2.parquet: named as Parquet but its bytes are plain text"),
        "{}",
        r.stderr
    );
    // Parquet's magic, a torn middle.
    std::fs::write(
        u.join("user_traits/part-2.parquet"),
        b"PAR1 torn in the middle PAR1",
    )
    .unwrap();
    let r = run(extract()).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("part-2.parquet: not a readable Parquet file"),
        "{}",
        r.stderr
    );
    // A sound footer over a damaged page (pyarrow's file, bytes overwritten).
    let mut sound = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/unloads/pyarrow_none/user_traits/part-0.parquet"),
    )
    .unwrap();
    sound[200..600].fill(0xFF);
    std::fs::write(u.join("user_traits/part-2.parquet"), sound).unwrap();
    let r = run(extract()).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("part-2.parquet: unreadable (")
            && r.stderr.contains("the file is damaged"),
        "{}",
        r.stderr
    );
    std::fs::remove_file(u.join("user_traits/part-2.parquet")).unwrap();
    // Plain text values (not JSON) are read as text; the latest seq wins.
    std::fs::write(
        u.join("user_traits/part-1.csv"),
        "canonical_segment_id,name,value,seq,timestamp\nuse_1,city,Kraków,2,2024-01-02T00:00:00Z\nuse_1,city,Oslo,1,2024-01-01T00:00:00Z\nuse_1,name,Ann Lee,1,2024-01-01T00:00:00Z\n",
    )
    .unwrap();
    let r = run(extract()).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("read as text"), "{}", r.stderr);
    let lines = read_lines(&data(dir.path()).join("profiles.ndjson"));
    let p1 = lines.iter().find(|l| l["segment_id"] == "use_1").unwrap();
    assert_eq!(p1["traits"]["city"], "Kraków");
    assert_eq!(p1["traits"]["name"], "Ann Lee");
    assert_eq!(p1["metadata"]["updated_at"], "2024-01-02T00:00:00.000Z");
    let p2 = lines.iter().find(|l| l["segment_id"] == "use_2").unwrap();
    assert_eq!(
        p2["external_ids"].as_array().unwrap().len(),
        0,
        "only source_id types are kept"
    );
    // --trait-values text is accepted and says so.
    let mut a = extract();
    a.extend(["--trait-values".into(), "text".into()]);
    assert_eq!(run(a).await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_leaves_nothing_a_rerun_trips_over() {
    let dir = tempdir();
    let unload = dir.path().join("unload");
    let r = segsync(
        dir.path(),
        None,
        &[
            "sandbox",
            "--profiles",
            "20000",
            "--write-profiles-sync",
            unload.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let args = [
        "extract",
        "--from",
        "profiles-sync",
        unload.to_str().unwrap(),
    ];
    let mut child = command(dir.path(), None, &args).spawn().unwrap();
    let tmp = data(dir.path()).join(".profiles-sync.tmp");
    for _ in 0..500 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        if tmp.exists() {
            break;
        }
    }
    assert!(tmp.exists(), "extract started writing its partitions");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The kill must land while extract runs: it has not exited on its own.
    assert!(
        child.try_wait().unwrap().is_none(),
        "extract ended before the kill; the test proves nothing"
    );
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed by SIGKILL"
    );
    assert!(
        !data(dir.path()).join("profiles.ndjson").exists(),
        "no half-written output"
    );
    let r = segsync(dir.path(), None, &args).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        read_lines(&data(dir.path()).join("profiles.ndjson")).len(),
        20000
    );
    assert!(!tmp.exists());
}
