//! load and the whole pipeline against the sandbox over loopback: the end
//! state field by field, hand edits, kill and resume, per-customer errors,
//! the broken-CSV corpus, dry runs.

mod common;
use common::*;
use segsync::sandbox::{Misbehave, SandboxOptions};
use serde_json::json;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    fixture_copy("csv", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_end_state_matches_the_mapping_and_hand_edits_send_only_that_row() {
    let sb = sandbox(opts(400)).await;
    let dir = tempdir();
    for stage in ["extract", "transform", "load"] {
        let r = segsync(dir.path(), Some(&sb), &[stage]).await;
        assert_eq!(r.code, 0, "{stage}: {}", r.all());
    }
    assert_end_state(&sb, &HashMap::new());
    assert_eq!(
        stat(&sb, "bulk_requests_rejected"),
        0,
        "every request validated against the vendor schema"
    );
    let received = stat(&sb, "customers_received");
    assert_eq!(
        received as usize,
        sb.customers().len(),
        "every customer sent exactly once"
    );

    // A rerun with nothing changed sends nothing.
    let r = segsync(dir.path(), Some(&sb), &["load"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(stat(&sb, "customers_received"), received);

    // Hand-edit one cell of one row: only that row is sent, and the sandbox holds the edit.
    let csv = data(dir.path()).join("customers.csv");
    let mut rdr = csv::Reader::from_path(&csv).unwrap();
    let headers = rdr.headers().unwrap().clone();
    let mut rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let city = headers.iter().position(|h| h == "address_city").unwrap();
    let sid = rows[5][0].to_string();
    let mut edited: Vec<String> = rows[5].iter().map(str::to_string).collect();
    edited[city] = "Edited City, \"quoted\"".into();
    rows[5] = csv::StringRecord::from(edited);
    let mut w = csv::Writer::from_path(&csv).unwrap();
    w.write_record(&headers).unwrap();
    for r in &rows {
        w.write_record(r).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let r = segsync(dir.path(), Some(&sb), &["load"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        stat(&sb, "customers_received"),
        received + 1,
        "{}",
        r.stderr
    );
    assert_eq!(sb.receipts()[&sid], 2);
    assert_eq!(
        sb.customers()[&sid]["address"]["city"],
        "Edited City, \"quoted\""
    );
    let st = segsync(dir.path(), None, &["status"]).await;
    assert!(st.stdout.contains("nothing pending"), "{}", st.stdout);

    // --full resends everything
    let r = segsync(dir.path(), Some(&sb), &["load", "--full"]).await;
    assert_eq!(r.code, 0);
    assert_eq!(stat(&sb, "customers_received"), 2 * received + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_load_then_rerun_confirms_everything_without_resending_confirmed_batches() {
    let sb = sandbox(SandboxOptions {
        processing_ms: 300,
        ..opts(600)
    })
    .await;
    let dir = tempdir();
    assert_eq!(segsync(dir.path(), Some(&sb), &["extract"]).await.code, 0);
    assert_eq!(segsync(dir.path(), Some(&sb), &["transform"]).await.code, 0);
    let ledger = data(dir.path()).join("load.ledger.ndjson");
    let mut child = command(
        dir.path(),
        Some(&sb),
        &["load", "--batch-size", "20", "--concurrency", "2"],
    )
    .spawn()
    .unwrap();
    for _ in 0..1000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let confirmed = std::fs::read_to_string(&ledger)
            .map(|s| s.matches("\"confirmed\"").count())
            .unwrap_or(0);
        if confirmed >= 4 {
            break;
        }
    }
    child.start_kill().unwrap();
    assert!(!child.wait().await.unwrap().success());
    // Which customers were confirmed before the kill.
    let confirmed_before = confirmed_in_ledger(&ledger);
    assert!(confirmed_before.len() >= 80);
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--batch-size", "20", "--concurrency", "2"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_end_state(&sb, &HashMap::new());
    let receipts = sb.receipts();
    for sid in &confirmed_before {
        assert_eq!(
            receipts[sid], 1,
            "{sid} was confirmed before the kill and sent again"
        );
    }
    // Only batches in flight at the kill (2 of 20) can have gone twice.
    let twice = receipts.values().filter(|n| **n > 1).count();
    assert!(twice <= 40, "{twice} customers sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_voucherify_rejects_go_to_the_report_with_exit_3() {
    let sb = sandbox(opts(10)).await;
    let dir = tempdir();
    let (_, r) = load_csv(
        dir.path(),
        &sb,
        "source_id,email,name\nok-1,a@example.com,A\nbad-1,someone@mail.invalid,B\nok-2,,C\n",
        &[],
    )
    .await;
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(r.stderr.contains("1 failed"), "{}", r.stderr);
    let report = read_csv(&dir.path().join("load-report.csv"));
    assert_eq!(report.len(), 1);
    assert_eq!(report[0]["source_id"], "bad-1");
    assert_eq!(report[0]["line"], "3");
    assert_eq!(report[0]["key"], "invalid_customer_email");
    assert!(report[0]["message"].contains("email"));
    let held = sb.customers();
    assert!(held.contains_key("ok-1") && held.contains_key("ok-2") && !held.contains_key("bad-1"));
    assert!(
        held["ok-2"].get("email").is_none(),
        "an empty cell is not sent"
    );
    // Voucherify's answer for a partly refused batch, as the contract quotes
    // the OpenAPI description: `status` DONE, `operation_status` one of
    // SUCCESS | FAILED | UNKNOWN (FAILED here), `errors[]` naming the refused.
    let ledger = std::fs::read_to_string(dir.path().join("load.ledger.ndjson")).unwrap();
    let confirmed: Value = ledger
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["event"] == "confirmed")
        .expect("a confirmed line");
    let id = confirmed["async_action_id"].as_str().unwrap();
    let action = voucherify_get(&sb, &format!("/v1/async-actions/{id}")).await;
    assert_eq!(action["status"], "DONE", "{action}");
    assert_eq!(action["operation_status"], "FAILED", "{action}");
    assert_eq!(action["result"]["done_count"], 2, "{action}");
    assert_eq!(action["result"]["failed_count"], 1, "{action}");
    // The others are confirmed one by one, the refused one is not.
    let done: Vec<&str> = confirmed["done"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["source_id"].as_str().unwrap())
        .collect();
    assert_eq!(done, ["ok-1", "ok-2"], "{confirmed}");
    assert_eq!(confirmed["failed"][0]["source_id"], "bad-1");
    // A rerun sends only the refused customer, by plan and by ledger alone.
    let csv = dir.path().join("customers-by-hand.csv");
    for how in ["--plan", "--from-ledger"] {
        let r = segsync(
            dir.path(),
            Some(&sb),
            &["load", "--in", csv.to_str().unwrap(), how],
        )
        .await;
        assert_eq!(r.code, 3, "{how}: {}", r.all());
    }
    let receipts = sb.receipts();
    assert_eq!(receipts["ok-1"], 1, "{receipts:?}");
    assert_eq!(receipts["ok-2"], 1, "{receipts:?}");
    assert_eq!(receipts["bad-1"], 3, "{receipts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_csv_corpus_gives_its_error_and_sends_nothing() {
    let sb = sandbox(opts(10)).await;
    let dir = tempdir();
    let cases: &[(&str, &[&str])] = &[
        ("empty.csv", &["empty.csv:1:", "empty"]),
        (
            "bad_header.csv",
            &["bad_header.csv:1: column \"emial\": unknown column"],
        ),
        (
            "no_source_id_column.csv",
            &["no_source_id_column.csv:1: column source_id: required column is missing"],
        ),
        (
            "ragged_rows.csv",
            &[
                "ragged_rows.csv:3: row has 2 fields but the header has 3",
                "ragged_rows.csv:4: row has 4 fields",
            ],
        ),
        (
            "bad_json.csv",
            &[
                "bad_json.csv:3: metadata: not valid JSON",
                "bad_json.csv:4: metadata: must be a JSON object",
            ],
        ),
        (
            "bad_dates.csv",
            &[
                "bad_dates.csv:3: birthdate",
                "bad_dates.csv:4: birthdate",
                "bad_dates.csv:5: birthdate",
            ],
        ),
        (
            "duplicate_ids.csv",
            &["duplicate_ids.csv:4: source_id: \"u1\" already appears on line 2"],
        ),
        (
            "empty_source_id.csv",
            &["empty_source_id.csv:3: source_id: empty"],
        ),
        (
            "bad_email.csv",
            &["bad_email.csv:3: email", "bad_email.csv:4: email"],
        ),
        (
            "invalid_utf8.csv",
            &["invalid_utf8.csv:3: name: not valid UTF-8"],
        ),
    ];
    for (file, expected) in cases {
        let r = segsync(
            dir.path(),
            Some(&sb),
            &["load", "--in", fixture(file).to_str().unwrap()],
        )
        .await;
        assert_eq!(r.code, 2, "{file}: {}", r.all());
        for e in *expected {
            assert!(
                r.stderr.contains(e),
                "{file}: expected {e:?} in:\n{}",
                r.stderr
            );
        }
        assert!(
            r.stderr.contains("nothing was sent"),
            "{file}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"));
    }
    assert_eq!(
        requests(&sb, "voucherify.customers_bulk_async"),
        0,
        "nothing sent for any broken file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bom_crlf_and_hand_written_subsets_load_as_written() {
    let sb = sandbox(opts(10)).await;
    let dir = tempdir();
    for f in ["bom_crlf.csv", "hand_written.csv"] {
        let copy = dir.path().join(f);
        std::fs::copy(fixture(f), &copy).unwrap();
        let r = segsync(
            dir.path(),
            Some(&sb),
            &["load", "--in", copy.to_str().unwrap()],
        )
        .await;
        assert_eq!(r.code, 0, "{f}: {}", r.all());
    }
    let held = sb.customers();
    assert_eq!(held["u-bom-1"]["name"], "Zoë, Ångström");
    assert_eq!(
        held["u-bom-2"]["name"], "=cmd",
        "a hand-typed value without the guard apostrophe is sent as typed"
    );
    assert!(held["u-bom-2"].get("email").is_none());
    assert_eq!(held["hand-1"]["address"]["city"], "Kraków");
    assert_eq!(held["hand-1"]["metadata"], json!({"tier": "gold"}));
    assert_eq!(
        held["hand-2"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !["id", "object", "created_at", "updated_at"].contains(&k.as_str()))
            .count(),
        1,
        "only source_id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_invalid_loads_the_valid_rows_and_sets_the_rest_aside() {
    let sb = sandbox(opts(10)).await;
    let dir = tempdir();
    let copy = dir.path().join("bad_dates.csv");
    std::fs::copy(fixture("bad_dates.csv"), &copy).unwrap();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", copy.to_str().unwrap(), "--skip-invalid"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        sb.customers().keys().cloned().collect::<Vec<_>>(),
        vec!["u1"]
    );
    let rejects = read_csv(&dir.path().join("load.rejects.csv"));
    assert_eq!(rejects.len(), 3);
    assert!(rejects.iter().all(|r| r["errors"].contains("birthdate")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_validates_and_shows_the_request_without_sending_or_credentials() {
    let sb = sandbox(opts(60)).await;
    let dir = tempdir();
    assert_eq!(segsync(dir.path(), Some(&sb), &["extract"]).await.code, 0);
    assert_eq!(segsync(dir.path(), None, &["transform"]).await.code, 0);
    let r = segsync(
        dir.path(),
        None,
        &["load", "--dry-run", "--batch-size", "10"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("nothing was sent") && r.stderr.contains("batches"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("\"source_id\""), "{}", r.stdout);
    assert!(!r.stdout.contains("segment_id"), "segment_id is never sent");
    assert_eq!(requests(&sb, "voucherify.customers_bulk_async"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_are_followed_without_provoking_429() {
    // 4 requests per 2-second window and 10 requests to make: the client must
    // wait out the window the headers announce, not hammer it into 429s.
    let sb = sandbox(SandboxOptions {
        voucherify_rpm: 4,
        voucherify_window: Duration::from_secs(2),
        processing_ms: 20,
        ..opts(10)
    })
    .await;
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    let rows: String = (0..5).map(|i| format!("r{i},n{i}\n")).collect();
    std::fs::write(&csv, format!("source_id,name\n{rows}")).unwrap();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &[
            "load",
            "--in",
            csv.to_str().unwrap(),
            "--batch-size",
            "1",
            "--concurrency",
            "1",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(sb.customers().len(), 5);
    assert_eq!(
        requests(&sb, "voucherify.customers_bulk_async") + requests(&sb, "voucherify.async_action"),
        10
    );
    assert_eq!(stat(&sb, "throttled.voucherify"), 0, "{}", sb.stats());
}

fn many_customers(n: usize) -> String {
    let mut csv = String::from("source_id,name,description\n");
    for i in 0..n {
        csv.push_str(&format!("r{i:03},Name {i},{}\n", "x".repeat(200)));
    }
    csv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_voucherify_finds_too_large_is_split_and_every_customer_lands() {
    // A project whose body limit is 8 KB: a 100-customer batch (~25 KB) gets 413.
    let sb = sandbox(SandboxOptions {
        max_body_bytes: 8 * 1024,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let (_, r) = load_csv(dir.path(), &sb, &many_customers(100), &[]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        stat(&sb, "bulk_requests_rejected") >= 1,
        "no 413 was provoked"
    );
    let held = sb.customers();
    assert_eq!(held.len(), 100);
    assert_eq!(held["r042"]["name"], "Name 42");
    assert!(
        sb.receipts().values().all(|n| *n == 1),
        "a customer landed twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_async_action_is_reported_and_its_customers_resent_by_the_next_load() {
    let sb = sandbox(SandboxOptions {
        misbehave: Some(Misbehave::FailFirstAction),
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let (csv, r) = load_csv(
        dir.path(),
        &sb,
        &many_customers(30),
        &["--batch-size", "10", "--concurrency", "1"],
    )
    .await;
    assert_eq!(r.code, 3, "{}", r.all());
    let report = read_csv(&dir.path().join("load-report.csv"));
    assert_eq!(
        report.len(),
        10,
        "the failed batch's customers are reported"
    );
    assert!(report.iter().all(|r| r["key"] == "async_action_failed"));
    assert_eq!(sb.customers().len(), 20);
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", csv.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(sb.customers().len(), 30);
    let twice = sb.receipts().values().filter(|n| **n == 2).count();
    assert_eq!(twice, 10, "only the failed batch is sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_action_voucherify_no_longer_knows_is_abandoned_and_resent() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let csv = dir.path().join("customers-by-hand.csv");
    std::fs::write(&csv, "source_id,name\np1,Ann\np2,Bob\n").unwrap();
    // As a run killed after submitting, against a project that has since
    // forgotten the action (a restart, a retention limit): the ledger holds
    // the submission, Voucherify answers 404 for it.
    let target = format!("{}#{}", sb.url(), sb.creds.app_id);
    let line = serde_json::json!({
        "event": "submitted", "at": "2026-01-01T00:00:00Z", "target": target,
        "async_action_id": "aa_forgotten",
        "customers": [{"source_id": "p1", "hash": "00000000000000000000000000000000", "line": 2}]
    });
    std::fs::write(dir.path().join("load.ledger.ndjson"), format!("{line}\n")).unwrap();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", csv.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("aa_forgotten") && r.stderr.contains("404"),
        "{}",
        r.stderr
    );
    assert_eq!(sb.customers().len(), 2);
    let ledger = read_lines(&dir.path().join("load.ledger.ndjson"));
    assert!(ledger
        .iter()
        .any(|l| l["event"] == "abandoned" && l["async_action_id"] == "aa_forgotten"));
    // A second load finds nothing pending and nothing to send.
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", csv.to_str().unwrap()],
    )
    .await;
    assert!(r.stderr.contains("0 sent"), "{}", r.stderr);
}

/// The first look at a batch is timed by Voucherify's own clock, read on
/// ours through the offset its `created_at`s show. With that clock seconds
/// ahead of or behind ours, a look timed without the offset (or with it
/// the wrong way round) comes before the job ends, batch after batch: the
/// sandbox counts every read of every action, and when the job finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_looked_at_after_they_finish_whatever_voucherifys_clock_says() {
    for skew in [5_000i64, -5_000] {
        let sb = sandbox(SandboxOptions {
            processing_ms: 300,
            action_clock_ms: skew,
            ..opts(0)
        })
        .await;
        let dir = tempdir();
        let csv = dir.path().join("customers.csv");
        let mut rows = String::from("source_id,name,email\n");
        for i in 0..160 {
            rows.push_str(&format!("c{i:03},Name {i},c{i}@example.com\n"));
        }
        std::fs::write(&csv, rows).unwrap();
        let path = csv.to_str().unwrap();
        let r = segsync(
            dir.path(),
            Some(&sb),
            &[
                "load",
                "--in",
                path,
                "--method",
                "bulk",
                "--from-ledger",
                "--batch-size",
                "10",
            ],
        )
        .await;
        assert_eq!(r.code, 0, "{}", r.all());
        assert_eq!(sb.customers().len(), 160, "{}", r.all());
        let timeline = action_timeline(&sb).await;
        let actions = timeline["actions"].as_array().unwrap();
        assert_eq!(actions.len(), 16, "{timeline}");
        let early: usize = actions
            .iter()
            .map(|a| {
                let finished = a["finished_ms"].as_f64().expect("every job finished");
                let looks = a["looks_ms"].as_array().unwrap();
                assert!(
                    looks.iter().any(|t| t.as_f64().unwrap() >= finished),
                    "never read after it finished: {a}"
                );
                looks
                    .iter()
                    .filter(|t| t.as_f64().unwrap() < finished)
                    .count()
            })
            .sum();
        // The first batch's look has no finish to go by; a scheduling
        // hiccup may make one more early. A look timed on the wrong clock
        // is early at every batch.
        assert!(
            early <= 3,
            "clock {skew:+} ms: {early} reads before the job ended, of 16 jobs: {timeline}"
        );
    }
}
