//! Reliability suite: the whole pipeline under faults on both APIs, kills at
//! many points of every stage, APIs that break their contract, hostile input
//! files, a full disk and an unwritable directory. The end state must be exact
//! every time: no customer missing, duplicated, or without source_id.

mod common;
use common::*;
use segsync::sandbox::{Misbehave, SandboxOptions};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_under_faults_on_both_apis_ends_exact_for_several_seeds() {
    for seed in [11, 12, 13] {
        let sb = sandbox(SandboxOptions {
            seed,
            profiles: 150,
            fault_rate: 0.1,
            latency_ms: 5,
            segment_rps: 60,
            voucherify_rpm: 12,
            voucherify_window: Duration::from_secs(1),
            processing_ms: 50,
            ..Default::default()
        })
        .await;
        let dir = tempdir();
        // The client is told there is no Segment limit: 429 storms follow.
        let r = segsync(
            dir.path(),
            Some(&sb),
            &[
                "run",
                "--segment-rate-limit",
                "0",
                "--batch-size",
                "10",
                "--load-concurrency",
                "6",
            ],
        )
        .await;
        assert_eq!(r.code, 0, "seed {seed}: {}", r.all());
        assert_end_state(&sb, &HashMap::new());
        let s = sb.stats();
        let faults = stat(&sb, "faults.server_errors")
            + stat(&sb, "faults.dropped_connections")
            + stat(&sb, "faults.slow");
        eprintln!(
            "seed {seed}: {faults} faults injected, {} Segment and {} Voucherify 429s",
            s["throttled"]["segment"], s["throttled"]["voucherify"]
        );
        assert!(faults > 10, "seed {seed}: {s}");
        assert!(stat(&sb, "throttled.segment") > 0, "seed {seed}: {s}");
    }
}

/// Run `args` to completion, killing it first each time `progress` (a
/// count the command leaves on disk) reaches the next of `kill_at`: kill
/// points are counts of work done, not moments, so a faster or slower
/// machine kills at the same places. Returns the kills.
async fn run_with_kills(
    dir: &Path,
    sb: &segsync::sandbox::Sandbox,
    args: &[&str],
    progress: impl Fn() -> u64,
    kill_at: &[u64],
    mut after_kill: impl FnMut(),
) -> u32 {
    let mut kills = 0;
    for &target in kill_at {
        let mut child = command(dir, Some(sb), args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Bounded: the command ends (or reaches the point) well within this.
        let mut reached = false;
        for _ in 0..12_000 {
            if progress() >= target {
                reached = true;
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !reached {
            let status = child.wait().await.unwrap();
            assert!(status.success(), "{args:?} failed without a kill");
            return kills;
        }
        child.start_kill().unwrap();
        let _ = child.wait().await;
        kills += 1;
        after_kill();
    }
    let r = segsync(dir, Some(sb), args).await;
    assert_eq!(r.code, 0, "{args:?} after {kills} kills: {}", r.all());
    kills
}

/// Complete lines of a file (0 when it is not there).
fn lines_in(path: &Path) -> u64 {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0)
}

/// Ledger lines of one event.
fn events(ledger: &Path, event: &str) -> u64 {
    std::fs::read_to_string(ledger)
        .map(|t| t.matches(&format!("\"event\":\"{event}\"")).count() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_at_many_points_of_extract_and_load_still_end_exact() {
    let sb = sandbox(SandboxOptions {
        latency_ms: 10,
        processing_ms: 150,
        ..opts(500)
    })
    .await;
    let ds = sb.dataset();
    let dir = tempdir();
    let d = data(dir.path());
    let partial = d.join("profiles.ndjson.partial");
    let extract_kills = run_with_kills(
        dir.path(),
        &sb,
        &["extract", "--rate-limit", "0", "--concurrency", "8"],
        || lines_in(&partial),
        &[40, 150, 320],
        || {},
    )
    .await;
    assert_eq!(extract_kills, 3, "every kill point was reached");
    let lines = read_lines(&d.join("profiles.ndjson"));
    let ids: HashSet<_> = lines
        .iter()
        .map(|l| l["segment_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        (lines.len(), ids.len()),
        (500, 500),
        "every profile exactly once after {extract_kills} kills"
    );
    let minimal = minimal_detail_requests(ds);
    let detail = requests(&sb, "segment.traits") + requests(&sb, "segment.external_ids");
    // each kill may repeat at most the 8 profiles in flight (each at most 2+2 pages)
    assert!(
        detail <= minimal + extract_kills as u64 * 32,
        "{detail} detail requests, minimal {minimal}, {extract_kills} kills"
    );

    // Transform of 500 profiles ends before a kill can land; its crash
    // safety (write aside, rename) is covered by the full-disk test.
    assert_eq!(segsync(dir.path(), None, &["transform"]).await.code, 0);
    let rows = read_csv(&d.join("customers.csv"));
    let rejected = read_csv(&d.join("rejected.csv"));
    assert_eq!(rows.len() + rejected.len(), 500);

    let ledger = d.join("load.ledger.ndjson");
    // Customer → times the sandbox had received it when a kill found it confirmed.
    let mut confirmed_before_kills: HashMap<String, u64> = HashMap::new();
    let load_kills = run_with_kills(
        dir.path(),
        &sb,
        &["load", "--batch-size", "20", "--concurrency", "3"],
        || events(&ledger, "submitted"),
        &[3, 9, 16],
        || {
            if ledger.exists() {
                let receipts = sb.receipts();
                for l in read_lines(&ledger)
                    .iter()
                    .filter(|l| l["event"] == "confirmed")
                {
                    for c in l["done"].as_array().unwrap() {
                        let sid = c["source_id"].as_str().unwrap().to_string();
                        let n = receipts[&sid];
                        confirmed_before_kills.entry(sid).or_insert(n);
                    }
                }
            }
        },
    )
    .await;
    assert_end_state(&sb, &HashMap::new());
    let receipts = sb.receipts();
    for (sid, n) in &confirmed_before_kills {
        assert_eq!(
            receipts[sid], *n,
            "{sid} confirmed before a kill, sent again after"
        );
    }
    // Only what was in flight at a kill (3 batches of 20) can have gone twice.
    let twice = receipts.values().filter(|n| **n > 1).count();
    assert!(
        twice as u32 <= 60 * load_kills,
        "{twice} customers sent more than once over {load_kills} kills"
    );
    eprintln!("kills survived: extract {extract_kills}, load {load_kills}; {} customers confirmed before a kill were never resent", confirmed_before_kills.len());
    assert_eq!(load_kills, 3, "every kill point was reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apis_that_break_their_contract_end_in_a_clear_error_not_a_hang() {
    let cases: &[(Misbehave, &[&str], &str)] = &[
        (Misbehave::NonJson, &["extract"], "not JSON"),
        (Misbehave::NoCursor, &["extract"], "no `cursor`"),
        (Misbehave::EndlessCursor, &["extract"], "never end"),
        (
            Misbehave::RepeatPage,
            &["extract"],
            "repeats the previous page",
        ),
        (
            Misbehave::StuckAction,
            &["load", "--poll-timeout", "2"],
            "still IN_PROGRESS",
        ),
    ];
    for (mode, args, expected) in cases {
        let sb = sandbox(SandboxOptions {
            misbehave: Some(*mode),
            ..opts(250)
        })
        .await;
        let dir = tempdir();
        if *mode == Misbehave::StuckAction {
            std::fs::create_dir_all(data(dir.path())).unwrap();
            std::fs::write(
                data(dir.path()).join("customers.csv"),
                "source_id,name\na,A\nb,B\n",
            )
            .unwrap();
        }
        let r = tokio::time::timeout(
            Duration::from_secs(120),
            segsync(dir.path(), Some(&sb), args),
        )
        .await
        .unwrap_or_else(|_| panic!("{mode:?}: segsync hung"));
        assert_eq!(r.code, 1, "{mode:?}: {}", r.all());
        assert!(
            r.stderr.contains(expected),
            "{mode:?}: expected {expected:?} in {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("rerun"),
            "{mode:?}: says what to do next: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("crashed"),
            "{}",
            r.stderr
        );
    }
}

fn ndjson_fixture(name: &str) -> std::path::PathBuf {
    fixture_copy("ndjson", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_profile_files_give_a_clear_error_or_a_documented_outcome() {
    let cases: &[(&str, &[&str])] = &[
        ("truncated.ndjson", &[":2:"]),
        ("binary_garbage.ndjson", &[":2:"]),
        ("invalid_utf8.ndjson", &[":2:"]),
        ("wrong_types.ndjson", &[":2:", ":3:", ":4:"]),
        ("not_an_object.ndjson", &[":2:", ":3:"]),
        ("missing_segment_id.ndjson", &[":2:", "segment_id"]),
    ];
    for (file, expected) in cases {
        let dir = tempdir();
        let r = segsync(
            dir.path(),
            None,
            &["transform", "--in", ndjson_fixture(file).to_str().unwrap()],
        )
        .await;
        assert_eq!(r.code, 2, "{file}: {}", r.all());
        for e in *expected {
            assert!(
                r.stderr.contains(&format!("{file}{e}")) || r.stderr.contains(e),
                "{file}: {e:?} in {}",
                r.stderr
            );
        }
        assert!(
            !data(dir.path()).join("customers.csv").exists(),
            "{file}: nothing written"
        );
        assert!(!r.stderr.contains("crashed"));
    }
    // Tolerated: absent-looking values, numeric ids, unknown fields, formulas guarded.
    let dir = tempdir();
    let r = segsync(
        dir.path(),
        None,
        &[
            "transform",
            "--in",
            ndjson_fixture("tolerated.ndjson").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let rows = read_csv(&data(dir.path()).join("customers.csv"));
    let by: HashMap<_, _> = rows
        .iter()
        .map(|r| (r["segment_id"].clone(), r.clone()))
        .collect();
    assert_eq!(by.len(), 4);
    assert_eq!(by["use_t1"]["name"], "");
    assert_eq!(by["use_t1"]["email"], "");
    assert_eq!(by["use_t1"]["address_city"], "");
    assert_eq!(by["use_t2"]["source_id"], "7");
    assert_eq!(by["use_t3"]["name"], "'=1+1");
    assert_eq!(by["use_t3"]["source_id"], "'=cmd|' /C calc'!A0");

    // Generated: a huge field, very deep nesting, many traits.
    let dir = tempdir();
    let huge = dir.path().join("huge.ndjson");
    let big = "x".repeat(5_000_000);
    let many: serde_json::Map<String, serde_json::Value> = (0..20_000)
        .map(|i| (format!("t{i}"), serde_json::json!(i)))
        .collect();
    std::fs::write(
        &huge,
        format!(
            "{}\n{}\n",
            serde_json::json!({"segment_id": "use_huge", "traits": {"description": big}, "external_ids": [{"type": "user_id", "id": "h"}]}),
            serde_json::json!({"segment_id": "use_many", "traits": many, "external_ids": [{"type": "user_id", "id": "m"}]})
        ),
    )
    .unwrap();
    let r = segsync(
        dir.path(),
        None,
        &["transform", "--in", huge.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let rows = read_csv(&data(dir.path()).join("customers.csv"));
    assert_eq!(rows[0]["description"].len(), 5_000_000);
    // Deep nesting in a trait the mapping reads hits the parser's recursion
    // limit (an error naming the line); in a trait it skips, it is tolerated.
    let nest = |key: &str| {
        format!("{{\"segment_id\":\"use_{key}\",\"traits\":{{\"{key}\":{}{}}},\"external_ids\":[{{\"type\":\"user_id\",\"id\":\"{key}\"}}]}}\n", "[".repeat(100_000), "]".repeat(100_000))
    };
    let skipped = dir.path().join("deep_skipped.ndjson");
    std::fs::write(&skipped, nest("custom")).unwrap();
    let r = segsync(
        dir.path(),
        None,
        &["transform", "--force", "--in", skipped.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let deep = dir.path().join("deep.ndjson");
    std::fs::write(&deep, nest("address")).unwrap();
    let r = segsync(
        dir.path(),
        None,
        &["transform", "--force", "--in", deep.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("deep.ndjson:1:") && r.stderr.contains("recursion"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_csv_files_give_every_error_and_formulas_typed_by_hand_load_as_typed() {
    let sb = sandbox(opts(10)).await;
    let dir = tempdir();
    let fixture = |n: &str| fixture_copy("csv", n).to_str().unwrap().to_string();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", &fixture("thousands_of_columns.csv")],
    )
    .await;
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(":1: column \"col_0\": unknown column")
            && r.stderr.contains("more problems"),
        "{}",
        r.stderr
    );
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", &fixture("wrong_types.csv")],
    )
    .await;
    assert_eq!(r.code, 2);
    for e in [
        ":2: email",
        ":2: birthdate",
        ":2: metadata",
        ":3: email",
        ":3: birthdate",
        ":3: metadata",
    ] {
        assert!(r.stderr.contains(e), "{e} in {}", r.stderr);
    }
    assert_eq!(requests(&sb, "voucherify.customers_bulk_async"), 0);
    let copy = dir.path().join("formula_cells.csv");
    std::fs::copy(fixture("formula_cells.csv"), &copy).unwrap();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", copy.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let held = sb.customers();
    assert_eq!(held["f1"]["name"], "=1+1");
    assert_eq!(held["f1"]["phone"], "+48 600 700 800");
    assert_eq!(held["f1"]["description"], "@SUM(A1)");
    assert_eq!(held["f2"]["name"], "=1+1");
    assert_eq!(held["f2"]["phone"], "+48");
    assert_eq!(held["f2"]["description"], "-2");
}

/// Tests that need root (mounting a tmpfs, `chattr +i`) are `#[ignore]`d,
/// named `root_*`, and run by `make test` only as root: as another user the
/// runner reports them ignored, never passed.
/// Mount a tiny tmpfs at `at`, or fail the test saying why.
fn mount_small_disk(at: &Path, kb: u32) {
    std::fs::create_dir_all(at).unwrap();
    let ok = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={kb}k"),
            "tmpfs",
            at.to_str().unwrap(),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "could not mount a tmpfs (needs root and mount rights)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (mounts a tmpfs): `make test` runs it when it runs as root"]
async fn root_a_full_disk_is_a_clear_error_and_earlier_files_stay() {
    let sb = sandbox(opts(300)).await;
    let dir = tempdir();
    assert_eq!(segsync(dir.path(), Some(&sb), &["extract"]).await.code, 0);
    let profiles = data(dir.path()).join("profiles.ndjson");
    let small = dir.path().join("small");
    mount_small_disk(&small, 96);
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(small.clone());
    // A small transform fits and is the "previous" output.
    let tiny = dir.path().join("tiny.ndjson");
    let first: Vec<String> = std::fs::read_to_string(&profiles)
        .unwrap()
        .lines()
        .take(3)
        .map(str::to_string)
        .collect();
    std::fs::write(&tiny, first.join("\n") + "\n").unwrap();
    let out = small.join("customers.csv");
    let r = segsync(
        dir.path(),
        None,
        &[
            "transform",
            "--in",
            tiny.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let before = std::fs::read(&out).unwrap();
    // The full transform does not fit.
    let r = segsync(
        dir.path(),
        None,
        &[
            "transform",
            "--in",
            profiles.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("No space left on device") && r.stderr.contains("small"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the previous customers.csv is intact"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&small)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );
    // Extract into a full disk: a clear error, and the rerun can resume elsewhere later.
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["extract", "--out", small.join("p.ndjson").to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (chattr +i): `make test` runs it when it runs as root"]
async fn root_an_unwritable_directory_is_a_clear_error_and_the_file_there_stays() {
    // Root can write a directory whatever its mode; an immutable one it cannot.
    let dir = tempdir();
    let tiny = dir.path().join("tiny.ndjson");
    std::fs::write(
        &tiny,
        "{\"segment_id\":\"use_1\",\"external_ids\":[{\"type\":\"user_id\",\"id\":\"u1\"}]}\n",
    )
    .unwrap();
    // An unwritable data directory (immutable, so even root cannot write).
    let locked = dir.path().join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::write(locked.join("customers.csv"), "source_id\nkeep\n").unwrap();
    let locked_ok = std::process::Command::new("chattr")
        .args(["+i", locked.to_str().unwrap()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        locked_ok,
        "chattr +i failed (needs root and a file system with the immutable flag)"
    );
    {
        let r = segsync(
            dir.path(),
            None,
            &[
                "transform",
                "--force",
                "--in",
                tiny.to_str().unwrap(),
                "--out",
                locked.join("customers.csv").to_str().unwrap(),
            ],
        )
        .await;
        let _ = std::process::Command::new("chattr")
            .args(["-i", locked.to_str().unwrap()])
            .status();
        assert_eq!(r.code, 2, "{}", r.all());
        assert!(
            r.stderr.contains("locked") && r.stderr.contains("writable"),
            "{}",
            r.stderr
        );
        assert_eq!(
            std::fs::read_to_string(locked.join("customers.csv")).unwrap(),
            "source_id\nkeep\n"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_voucherify_does_not_attribute_leave_the_batch_unconfirmed() {
    let sb = sandbox(SandboxOptions {
        misbehave: Some(Misbehave::UnnamedErrors),
        ..opts(10)
    })
    .await;
    let dir = tempdir();
    let (csv, r) = load_csv(
        dir.path(),
        &sb,
        "source_id,email\nu1,a@example.com\nu2,b@mail.invalid\nu3,c@example.com\n",
        &[],
    )
    .await;
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(r.stderr.contains("stay unconfirmed"), "{}", r.stderr);
    let report = read_csv(&dir.path().join("load-report.csv"));
    assert_eq!(
        report.len(),
        3,
        "every customer of the batch is reported unconfirmed"
    );
    assert!(report.iter().all(|r| r["key"] == "unconfirmed"));
    // Nothing was recorded as confirmed: by the ledger alone, the next load
    // sends all three again.
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", csv.to_str().unwrap(), "--from-ledger"],
    )
    .await;
    assert_eq!(r.code, 3);
    assert_eq!(sb.receipts()["u1"], 2);
    // A plan sees that Voucherify holds u1 and u3 as they are: only u2 goes.
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", csv.to_str().unwrap(), "--plan"],
    )
    .await;
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(sb.receipts()["u1"], 2, "{}", r.all());
    assert_eq!(sb.receipts()["u2"], 3, "{}", r.all());
}
