//! `segsync plan` and `load` executing it, against the sandbox, with
//! another writer changing customers between runs.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;

const CUSTOMERS: &str = "source_id,name,email,phone,address_city,metadata,segment_id\n\
    a,Ann Able,ann@example.com,,Oslo,\"{\"\"tier\"\":\"\"gold\"\"}\",seg_a\n\
    b,Bob Best,bob@example.com,,Rome,,seg_b\n\
    c,Cy Cole,cy@example.com,+4712345678,Lima,,seg_c\n";

async fn first_load(
    dir: &Path,
    sb: &segsync::sandbox::Sandbox,
    content: &str,
) -> std::path::PathBuf {
    // The schema defines `tier`, so the export shows it.
    sb.set_metadata_schema(Some(
        json!({"properties": {"tier": {"type": "string", "optional": true}}}),
    ));
    let csv = dir.join("customers.csv");
    std::fs::write(&csv, content).unwrap();
    let r = segsync(dir, Some(sb), &["load", "--in", csv.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(sb.customers().len(), 3, "{}", r.all());
    csv
}

/// The request bodies of the bulk calls made since `from` (the sandbox's
/// receipts count applications by content).
fn bulk_calls(sb: &segsync::sandbox::Sandbox) -> u64 {
    requests(sb, "voucherify.customers_bulk_async")
}

fn plan_lines(dir: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    read_csv(&dir.join("load.plan.csv"))
}

#[tokio::test]
async fn another_writers_rename_is_set_back_and_a_field_segsync_never_set_is_left_alone() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let csv = first_load(dir.path(), &sb, CUSTOMERS).await;
    let path = csv.to_str().unwrap();
    // Another writer renames A and gives B a phone (B's profile has none).
    sb.another_writer("a", &json!({"name": "Ann Renamed"}))
        .unwrap();
    sb.another_writer("b", &json!({"phone": "+48 600 000 000"}))
        .unwrap();

    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let lines = plan_lines(dir.path());
    assert_eq!(lines.len(), 1, "only A changes: {lines:?}\n{}", r.all());
    let a = &lines[0];
    assert_eq!(a["source_id"], "a");
    assert_eq!(a["action"], "update");
    assert_eq!(a["fields"], "name");
    assert_eq!(a["changed_elsewhere"], "yes");
    let old: Value = serde_json::from_str(&a["old"]).unwrap();
    let new: Value = serde_json::from_str(&a["new"]).unwrap();
    assert_eq!(old, json!({"name": "Ann Renamed"}));
    assert_eq!(new, json!({"name": "Ann Able"}));

    let bulk_before = bulk_calls(&sb);
    let received_before = stat(&sb, "customers_received");
    let exports_before = requests(&sb, "voucherify.exports_created");
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // It executes the plan just made: no export to plan by, one to read
    // back what it sent (a delta of the updated customers, issue 43).
    assert!(r.stderr.contains("load: executing"), "{}", r.stderr);
    assert_eq!(
        requests(&sb, "voucherify.exports_created"),
        exports_before + 1
    );
    assert!(r.stderr.contains("read back 1 customers"), "{}", r.stderr);
    assert_eq!(bulk_calls(&sb) - bulk_before, 1, "{}", r.all());
    assert_eq!(
        stat(&sb, "customers_received") - received_before,
        1,
        "{}",
        r.all()
    );
    // The one customer sent carried one field besides source_id.
    let ledger = read_lines(&dir.path().join("load.ledger.ndjson"));
    let sent = ledger
        .iter()
        .rev()
        .find(|l| l["event"] == "submitted")
        .unwrap();
    assert_eq!(sent["customers"].as_array().unwrap().len(), 1);
    let held = sb.customers();
    assert_eq!(held["a"]["name"], "Ann Able", "A's name is restored");
    assert_eq!(held["a"]["metadata"], json!({"tier": "gold"}));
    assert_eq!(held["b"]["phone"], "+48 600 000 000", "B keeps the phone");

    // A second load right after sends nothing; it costs the schema read and
    // the export (request, polls, download).
    let (bulk, exports, downloads, schemas) = (
        bulk_calls(&sb),
        requests(&sb, "voucherify.exports"),
        requests(&sb, "voucherify.export_download"),
        requests(&sb, "voucherify.metadata_schemas"),
    );
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(bulk_calls(&sb), bulk, "{}", r.all());
    assert_eq!(requests(&sb, "voucherify.customers_import_csv"), 0);
    assert!(
        requests(&sb, "voucherify.exports") - exports >= 2,
        "an export and its polls"
    );
    assert_eq!(requests(&sb, "voucherify.export_download") - downloads, 1);
    assert_eq!(requests(&sb, "voucherify.metadata_schemas") - schemas, 1);
    assert!(
        r.stderr.contains("0 to create, 0 to update"),
        "{}",
        r.stderr
    );
}

/// The one customer's request body of the newest submitted batch, as the
/// sandbox received it.
fn last_request(sb: &segsync::sandbox::Sandbox, sid: &str) -> Value {
    sb.customers()[sid].clone()
}

#[tokio::test]
async fn keep_newer_skips_what_another_writer_changed_and_says_so() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let csv = first_load(dir.path(), &sb, CUSTOMERS).await;
    let path = csv.to_str().unwrap();
    sb.another_writer("a", &json!({"name": "Ann Renamed"}))
        .unwrap();
    let bulk = bulk_calls(&sb);
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", path, "--plan", "--keep-newer"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(bulk_calls(&sb), bulk, "nothing sent: {}", r.all());
    assert_eq!(last_request(&sb, "a")["name"], "Ann Renamed");
    let lines = plan_lines(dir.path());
    assert_eq!(lines.len(), 1);
    assert!(lines[0]["skip"].contains("--keep-newer"), "{lines:?}");
    assert_eq!(lines[0]["send"], "");
}

#[tokio::test]
async fn a_removed_trait_is_cleared_only_with_clear_removed_and_only_if_segsync_set_it() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let csv = first_load(dir.path(), &sb, CUSTOMERS).await;
    let path = csv.to_str().unwrap();
    // C's profile loses its phone (segsync set it); B gets a phone elsewhere.
    sb.another_writer("b", &json!({"phone": "+48 600 000 000"}))
        .unwrap();
    std::fs::write(&csv, CUSTOMERS.replace("+4712345678", "")).unwrap();

    let bulk = bulk_calls(&sb);
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", path, "--plan"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        bulk_calls(&sb),
        bulk,
        "without the flag nothing is cleared: {}",
        r.all()
    );
    let lines = plan_lines(dir.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        (lines[0]["source_id"].as_str(), lines[0]["action"].as_str()),
        ("c", "clear")
    );
    assert_eq!(sb.customers()["c"]["phone"], "+4712345678");

    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", path, "--plan", "--clear-removed"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(bulk_calls(&sb), bulk + 1, "{}", r.all());
    let held = sb.customers();
    assert!(held["c"]["phone"].is_null(), "cleared: {}", held["c"]);
    assert_eq!(held["c"]["name"], "Cy Cole");
    assert_eq!(
        held["b"]["phone"], "+48 600 000 000",
        "never set by segsync: kept"
    );
}

#[tokio::test]
async fn a_profile_whose_source_id_changed_leaves_its_old_customer_in_the_orphans_file() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let csv = first_load(dir.path(), &sb, CUSTOMERS).await;
    let path = csv.to_str().unwrap();
    // B's profile gains a user_id: its customer is now "u-b"; C's profile is gone.
    let today = "source_id,name,email,phone,address_city,metadata,segment_id\n\
        a,Ann Able,ann@example.com,,Oslo,\"{\"\"tier\"\":\"\"gold\"\"}\",seg_a\n\
        u-b,Bob Best,bob@example.com,,Rome,,seg_b\n";
    std::fs::write(&csv, today).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", path, "--plan"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let held = sb.customers();
    assert!(
        held.contains_key("u-b") && held.contains_key("b") && held.contains_key("c"),
        "nothing deleted"
    );
    let orphans = read_csv(&dir.path().join("load.orphans.csv"));
    let got: Vec<(&str, &str, &str)> = orphans
        .iter()
        .map(|o| {
            (
                o["source_id"].as_str(),
                o["reason"].as_str(),
                o["now_source_id"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("b", "source_id changed", "u-b"), ("c", "profile gone", "")],
        "{}",
        r.all()
    );
    // Still reported after the new customer is confirmed.
    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        read_csv(&dir.path().join("load.orphans.csv")).len(),
        2,
        "{}",
        r.all()
    );
}

/// A plan made while batches of a stopped load were still pending is stale
/// once the next load's checks confirm them: it makes a new plan instead of
/// executing one that counted those customers as not yet there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_made_before_pending_batches_were_checked_is_not_executed() {
    let sb = sandbox(segsync::sandbox::SandboxOptions {
        cycle_quota: Some(7),
        processing_ms: 300,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, simple_customers("q", 300)).unwrap();
    let path = csv.to_str().unwrap();
    let args = ["load", "--in", path, "--batch-size", "50"];
    let r = segsync(dir.path(), Some(&sb), &args).await;
    assert_eq!(r.code, 1, "the quota stops it: {}", r.all());
    let ledger = read_lines(&dir.path().join("load.ledger.ndjson"));
    let submitted = ledger.iter().filter(|l| l["event"] == "submitted").count();
    let confirmed = ledger.iter().filter(|l| l["event"] == "confirmed").count();
    assert!(
        submitted > confirmed,
        "a batch is left pending: {}",
        r.all()
    );
    sb.heal();
    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let r = segsync(dir.path(), Some(&sb), &args).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("confirmed by checking")
            && r.stderr
                .contains("making a new plan (the newest: the ledger changed since"),
        "{}",
        r.stderr
    );
    assert_eq!(sb.customers().len(), 300);
    assert_eq!(
        sb.repeated_applications(),
        0,
        "nothing confirmed was sent again"
    );
}
