//! segsync against the vendors' documented contracts, as the sandbox
//! emulates them: the 100-customer cap, nullable async-action fields, the
//! serial bulk-job queue, quota types, the activity-sorted profile list.

mod common;
use common::*;
use segsync::sandbox::SandboxOptions;
use std::collections::HashSet;
use std::time::Duration;

fn csv_of(n: usize) -> String {
    let mut csv = String::from("source_id,name\n");
    for i in 0..n {
        csv.push_str(&format!("c{i:04},Name {i}\n"));
    }
    csv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_customers_from_voucherify_splits_the_batch_and_carries_on() {
    // A project that caps bulk requests lower than documented.
    let sb = sandbox(SandboxOptions {
        max_customers: 30,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let (_, r) = load_csv(dir.path(), &sb, &csv_of(100), &[]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(stat(&sb, "bulk_requests_rejected") >= 1);
    assert_eq!(sb.customers().len(), 100);
    assert!(sb.receipts().values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_fields_and_a_serial_queue_end_exact_with_about_one_poll_per_batch() {
    let sb = sandbox(SandboxOptions {
        null_fields: true,
        processing_ms: 120,
        ..opts(1500)
    })
    .await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_end_state(&sb, &Default::default());
    let batches = requests(&sb, "voucherify.customers_bulk_async");
    let polls = requests(&sb, "voucherify.async_action");
    eprintln!("{polls} polls for {batches} batches");
    // Polling only the oldest unfinished job, timed by its service time:
    // about one poll a batch (make bench measures it); twice that is broken.
    assert!(polls < 2 * batches, "{polls} polls for {batches} batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_monthly_quota_stops_load_at_once_and_a_rerun_resumes() {
    // Each load's plan takes the schema read and 3 export calls (request,
    // poll, download); 12 leaves room for about half of the batches.
    let sb = sandbox(SandboxOptions {
        cycle_quota: Some(12),
        processing_ms: 30,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, csv_of(400)).unwrap();
    let args = [
        "load",
        "--in",
        csv.to_str().unwrap(),
        "--batch-size",
        "50",
        "--concurrency",
        "1",
    ];
    // A guard against waiting out the cycle, not a speed assertion.
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        segsync(dir.path(), Some(&sb), &args),
    )
    .await
    .expect("load must stop, not wait for the next billing cycle");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("api_calls_cycle"), "{}", r.stderr);
    assert!(
        r.stderr.contains("resets at 20"),
        "the reset as a date: {}",
        r.stderr
    );
    assert!(r.stderr.contains("rerun `segsync load`"), "{}", r.stderr);
    let confirmed = confirmed_in_ledger(&dir.path().join("load.ledger.ndjson"));
    assert!(!confirmed.is_empty() && confirmed.len() < 400);
    // The next cycle: the rerun sends only what was not confirmed.
    sb.reset_quotas();
    let r = segsync(dir.path(), Some(&sb), &args).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(sb.customers().len(), 400);
    let receipts = sb.receipts();
    for sid in &confirmed {
        assert_eq!(receipts[sid], 1, "{sid} was confirmed, then sent again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_bulk_quota_is_waited_for_within_max_wait_and_stops_beyond() {
    let sb = sandbox(SandboxOptions {
        bulk_quota: Some(2),
        bulk_window: Duration::from_secs(3),
        processing_ms: 30,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let (_, r) = load_csv(
        dir.path(),
        &sb,
        &csv_of(60),
        &[
            "--batch-size",
            "20",
            "--concurrency",
            "1",
            "--max-wait",
            "1",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("bulk_api_calls") && r.stderr.contains("waiting for it to refill"),
        "{}",
        r.stderr
    );
    assert_eq!(sb.customers().len(), 60);

    // An hour's bucket, and only a minute to wait: stop, naming it.
    let sb = sandbox(SandboxOptions {
        bulk_quota: Some(1),
        processing_ms: 30,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let (_, r) = load_csv(
        dir.path(),
        &sb,
        &csv_of(40),
        &[
            "--batch-size",
            "20",
            "--concurrency",
            "1",
            "--max-wait",
            "1",
        ],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("bulk_api_calls") && r.stderr.contains("--max-wait"),
        "{}",
        r.stderr
    );
    assert_eq!(sb.customers().len(), 20);
}

fn ids_in(file: &std::path::Path) -> (usize, HashSet<String>) {
    let lines = read_lines(file);
    let ids = lines
        .iter()
        .map(|l| l["segment_id"].as_str().unwrap().to_string())
        .collect();
    (lines.len(), ids)
}

fn all_ids(sb: &segsync::sandbox::Sandbox) -> HashSet<String> {
    (0..sb.dataset().n)
        .map(|i| sb.dataset().segment_id(i))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_churn_every_profile_is_extracted_exactly_once() {
    // 300 profiles a second get activity and jump to the head of the list
    // while extract pages through it with an offset-like cursor.
    let sb = sandbox(SandboxOptions {
        churn: 300,
        latency_ms: 5,
        ..opts(1200)
    })
    .await;
    let dir = tempdir();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["extract", "--rate-limit", "0", "--concurrency", "8"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let (lines, ids) = ids_in(&data(dir.path()).join("profiles.ndjson"));
    assert_eq!(ids, all_ids(&sb), "every profile");
    assert_eq!(lines, 1200, "exactly once");
    assert!(stat(&sb, "activity") > 0);
    assert!(r.stderr.contains("listing passes"), "{}", r.stderr);
    // Re-listing costs list calls only for profiles already written.
    let detail = requests(&sb, "segment.external_ids");
    assert!(
        detail <= 1200 + 16,
        "{detail} ids requests for 1200 profiles"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_churn_a_kill_9_and_a_rerun_still_extract_every_profile_exactly_once() {
    let sb = sandbox(SandboxOptions {
        churn: 300,
        latency_ms: 5,
        ..opts(1200)
    })
    .await;
    let dir = tempdir();
    let partial = data(dir.path()).join("profiles.ndjson.partial");
    let args = ["extract", "--rate-limit", "0", "--concurrency", "4"];
    let mut kills = 0;
    for _ in 0..3 {
        let mut child = command(dir.path(), Some(&sb), &args).spawn().unwrap();
        let mut waited = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += 1;
            let n = std::fs::read(&partial)
                .map(|b| b.iter().filter(|&&c| c == b'\n').count())
                .unwrap_or(0);
            if n >= 300 * (kills + 1) || waited > 1500 {
                break;
            }
        }
        if child.try_wait().unwrap().is_none() {
            child.start_kill().unwrap();
            kills += 1;
        }
        let _ = child.wait().await;
    }
    let r = segsync(dir.path(), Some(&sb), &args).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(kills >= 1, "the test must kill at least once");
    let (lines, ids) = ids_in(&data(dir.path()).join("profiles.ndjson"));
    assert_eq!(ids, all_ids(&sb));
    assert_eq!(lines, 1200, "exactly once after {kills} kills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_extracts_incrementally_and_says_so() {
    let sb = sandbox(opts(300)).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("run: full extract"), "{}", r.stderr);
    let detail_before = requests(&sb, "segment.external_ids") + requests(&sb, "segment.traits");
    let changed = sb.touch(3);
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("run: incremental extract"),
        "{}",
        r.stderr
    );
    // Less the slow last reads asked again (hedges), which extract counts.
    let detail = requests(&sb, "segment.external_ids") + requests(&sb, "segment.traits")
        - detail_before
        - hedged(&r.stderr);
    assert!(
        detail <= 2 * changed.len() as u64,
        "{detail} detail requests for {} changed profiles",
        changed.len()
    );
    assert_end_state(&sb, &sb.versions());
    // --fresh asks for a full extract again.
    let r = segsync(dir.path(), Some(&sb), &["run", "--fresh"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("run: full extract"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_states_the_calls_and_the_share_of_the_budget_the_headers_reveal() {
    let sb = sandbox(SandboxOptions {
        voucherify_rpm: 100,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let (_, r) = load_csv(dir.path(), &sb, &csv_of(1000), &["--dry-run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr
            .contains("cost about 20 Voucherify API calls (10 bulk requests + about 10 polls)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("of 100 api_calls calls are left in the current window")
            && r.stderr.contains("20.0% of one full window"),
        "{}",
        r.stderr
    );
    assert_eq!(
        stat(&sb, "customers_received"),
        0,
        "a dry run sends nothing"
    );
}
