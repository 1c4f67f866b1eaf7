//! Never hang, never lose: a spent monthly quota on any call ends `load`
//! within moments with every submitted action kept pending, and an export
//! that is DONE without a file is never polled again.

mod common;
use common::*;
use segsync::sandbox::SandboxOptions;
use std::time::{Duration, Instant};

fn csv_of(n: usize) -> String {
    simple_customers("h", n)
}

/// A guard against a hang, not a speed assertion.
const GUARD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_quota_spent_on_a_poll_ends_load_and_a_rerun_sends_nothing_twice() {
    // The schema read is call 1, then the plan's export (request, polls,
    // download), then submits and polls interleave: quotas of 2 to 10 calls
    // run out during the export, on a submit, or on a poll with batches in
    // flight.
    for quota in 2..=10 {
        let sb = sandbox(SandboxOptions {
            cycle_quota: Some(quota),
            processing_ms: 400,
            ..opts(0)
        })
        .await;
        let dir = tempdir();
        let csv = dir.path().join("c.csv");
        std::fs::write(&csv, csv_of(300)).unwrap();
        let args = ["load", "--in", csv.to_str().unwrap(), "--batch-size", "50"];
        let r = tokio::time::timeout(GUARD, segsync(dir.path(), Some(&sb), &args))
            .await
            .unwrap_or_else(|_| panic!("quota {quota}: load hung after the quota was spent"));
        let exited = Instant::now();
        assert_eq!(r.code, 1, "quota {quota}: {}", r.all());
        assert!(r.stderr.contains("api_calls_cycle"), "{}", r.stderr);
        assert!(r.stderr.contains("rerun `segsync load`"), "{}", r.stderr);
        let spent = sb.quota_spent_at().expect("the quota ran out");
        eprintln!(
            "quota {quota}: exit {:?} after the quota ran out",
            exited - spent
        );
        // Every submitted action is confirmed or still pending in the ledger.
        let ledger = read_lines(&dir.path().join("load.ledger.ndjson"));
        let submitted = ledger.iter().filter(|l| l["event"] == "submitted").count();
        let received = stat(&sb, "async_actions_accepted") as usize;
        assert_eq!(
            submitted, received,
            "quota {quota}: every accepted batch is in the ledger"
        );
        sb.heal();
        let r = segsync(dir.path(), Some(&sb), &args).await;
        assert_eq!(r.code, 0, "quota {quota}: {}", r.all());
        assert_eq!(sb.customers().len(), 300);
        assert_eq!(sb.repeated_applications(), 0, "quota {quota}: sent twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_without_a_file_into_an_empty_project_imports_everyone() {
    let sb = sandbox(SandboxOptions {
        export_without_file: true,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, csv_of(250)).unwrap();
    let args = ["load", "--in", csv.to_str().unwrap(), "--method", "import"];
    let r = tokio::time::timeout(GUARD, segsync(dir.path(), Some(&sb), &args))
        .await
        .expect("an export without a file must not be polled forever");
    // Everyone is sent and confirmed, but the read-back's export has no
    // file either, and the project now holds customers: not verified, and
    // said (exit 1), never a silent 0.
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("cannot be read back"), "{}", r.stderr);
    assert!(r.stderr.contains("holds no customer"), "{}", r.stderr);
    assert_eq!(requests(&sb, "voucherify.customers_list"), 2);
    assert!(requests(&sb, "voucherify.exports") <= 12, "{}", sb.stats());
    assert_eq!(requests(&sb, "voucherify.customers_import_csv"), 1);
    assert_eq!(requests(&sb, "voucherify.customers_bulk_async"), 0);
    assert_eq!(sb.customers().len(), 250);
}

/// An export `DONE` without a file, in a project that holds customers:
/// what Voucherify holds cannot be seen, so the load sends nothing (a plan
/// is its default); `--from-ledger` is the choice to send by the ledger
/// alone, everyone by the bulk upsert, which never carries a field a row
/// does not give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_without_a_file_of_a_project_with_customers_stops_the_load_unless_by_ledger() {
    let sb = sandbox(SandboxOptions {
        export_without_file: true,
        ..opts(0)
    })
    .await;
    // Another writer's customer, with a field the file does not carry.
    sb.seed_customers([serde_json::json!({"source_id": "h0001", "phone": "+48 600 000 000"})]);
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, csv_of(120)).unwrap();
    let args = ["load", "--in", csv.to_str().unwrap(), "--method", "import"];
    let r = tokio::time::timeout(GUARD, segsync(dir.path(), Some(&sb), &args))
        .await
        .expect("no hang");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("no plan can be made") && r.stderr.contains("nothing was sent"),
        "{}",
        r.stderr
    );
    assert_eq!(stat(&sb, "customers_received"), 0);
    let mut args = args.to_vec();
    args.push("--from-ledger");
    let r = tokio::time::timeout(GUARD, segsync(dir.path(), Some(&sb), &args))
        .await
        .expect("no hang");
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(requests(&sb, "voucherify.customers_import_csv"), 0);
    assert_eq!(sb.customers().len(), 120);
    assert_eq!(sb.customers()["h0001"]["phone"], "+48 600 000 000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_plan_stops_with_nothing_sent_when_no_plan_can_be_made() {
    let sb = sandbox(SandboxOptions {
        export_without_file: true,
        ..opts(0)
    })
    .await;
    sb.seed_customers([serde_json::json!({"source_id": "h0001", "name": "Someone else's"})]);
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, csv_of(30)).unwrap();
    let args = ["load", "--in", csv.to_str().unwrap(), "--plan"];
    let r = tokio::time::timeout(GUARD, segsync(dir.path(), Some(&sb), &args))
        .await
        .expect("no hang");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("no plan can be made") && r.stderr.contains("nothing was sent"),
        "{}",
        r.stderr
    );
    assert_eq!(stat(&sb, "customers_received"), 0);
    assert_eq!(sb.customers()["h0001"]["name"], "Someone else's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_never_finishes_ends_at_its_deadline_with_nothing_sent() {
    let sb = sandbox(SandboxOptions {
        processing_ms: 60_000,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, csv_of(20)).unwrap();
    let args = [
        "load",
        "--in",
        csv.to_str().unwrap(),
        "--method",
        "import",
        "--export-timeout",
        "2",
    ];
    let r = tokio::time::timeout(GUARD, segsync(dir.path(), Some(&sb), &args))
        .await
        .expect("the export's deadline ends the wait");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("--export-timeout"), "{}", r.stderr);
    assert_eq!(stat(&sb, "customers_received"), 0);
}
