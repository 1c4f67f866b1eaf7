//! Issue 43: Voucherify's state, not segsync's view. Every load reads back
//! what it confirmed from Voucherify's own export; every time compared with
//! an export's `updated_at` is Voucherify's; a delta export that lacks what
//! segsync confirmed is not trusted. Each reading the docs leave open is a
//! sandbox flag, and in each segsync ends exact or names what Voucherify
//! did not apply with a non-zero exit (the real binary over loopback HTTP).

mod common;
use common::*;
use segsync::sandbox::{Filters, Nulls, SandboxOptions};
use serde_json::{json, Value};
use std::path::Path;

fn with(f: impl FnOnce(&mut SandboxOptions)) -> SandboxOptions {
    let mut o = opts(0);
    f(&mut o);
    o
}

fn plan_meta(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("load.plan.json")).expect("load.plan.json"))
        .expect("load.plan.json is JSON")
}

fn verified(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("load.verify.json")).expect("load.verify.json"))
        .expect("load.verify.json is JSON")
}

fn held(sb: &segsync::sandbox::Sandbox, sid: &str, field: &str) -> Option<Value> {
    sb.customers().get(sid).and_then(|c| c.get(field).cloned())
}

/// Voucherify's clock 45 s ahead of ours, and 45 s behind: a rerun with
/// nothing changed sends nothing and sees no change elsewhere (the ledger
/// keeps Voucherify's own time of each confirmation; with ours, the
/// customers' `updated_at` 45 s ahead read as another writer's change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clock_a_rerun_with_nothing_changed_sends_nothing() {
    for skew in [45_000i64, -45_000] {
        let sb = sandbox(with(|o| o.action_clock_ms = skew)).await;
        let dir = tempdir();
        let (_, r) = load_csv(dir.path(), &sb, &simple_customers("k", 20), &[]).await;
        assert_eq!(r.code, 0, "skew {skew}: {}", r.all());
        let before = stat(&sb, "customers_received");
        let (_, r) = load_csv(dir.path(), &sb, &simple_customers("k", 20), &[]).await;
        assert_eq!(r.code, 0, "skew {skew}: {}", r.all());
        assert_eq!(
            stat(&sb, "customers_received"),
            before,
            "skew {skew}: {}",
            r.all()
        );
        let counts = &plan_meta(dir.path())["counts"];
        assert_eq!(counts["elsewhere"], 0, "skew {skew}: {counts}");
        assert_eq!(counts["unchanged"], 20, "skew {skew}: {counts}");
    }
}

/// With `--keep-newer`, another writer's change made a second after
/// segsync's confirmation is kept, whichever way Voucherify's clock is off
/// (45 s behind ours, our clock would place it 44 s before the
/// confirmation: segsync's own, and overwritten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_newer_keeps_a_change_made_a_second_after_the_confirmation() {
    for skew in [-45_000i64, 45_000] {
        let sb = sandbox(with(|o| o.action_clock_ms = skew)).await;
        let dir = tempdir();
        let (_, r) = load_csv(dir.path(), &sb, &simple_customers("n", 5), &[]).await;
        assert_eq!(r.code, 0, "skew {skew}: {}", r.all());
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        sb.another_writer("n0002", &json!({"name": "Theirs"}));
        let (_, r) = load_csv(
            dir.path(),
            &sb,
            &simple_customers("n", 5),
            &["--keep-newer"],
        )
        .await;
        assert_eq!(r.code, 0, "skew {skew}: {}", r.all());
        assert_eq!(
            held(&sb, "n0002", "name"),
            Some(json!("Theirs")),
            "skew {skew}: {}",
            r.all()
        );
        let counts = &plan_meta(dir.path())["counts"];
        assert_eq!(counts["elsewhere"], 1, "skew {skew}: {counts}");
        assert_eq!(counts["skipped"], 1, "skew {skew}: {counts}");
        // Without it, Segment's value is set back.
        let (_, r) = load_csv(dir.path(), &sb, &simple_customers("n", 5), &[]).await;
        assert_eq!(r.code, 0, "skew {skew}: {}", r.all());
        assert_eq!(held(&sb, "n0002", "name"), Some(json!("Name 2")));
    }
}

const WITH_PHONES: &str = "source_id,name,email,phone\n\
    p1,Ann Able,ann@example.com,+48 100 000 001\n\
    p2,Bob Best,bob@example.com,+48 100 000 002\n\
    p3,Cy Cole,cy@example.com,+48 100 000 003\n";

/// p1's phone emptied (a clear with --clear-removed), p3 renamed.
const PHONE_EMPTIED: &str = "source_id,name,email,phone\n\
    p1,Ann Able,ann@example.com,\n\
    p2,Bob Best,bob@example.com,+48 100 000 002\n\
    p3,Cy Cole-Smith,cy@example.com,+48 100 000 003\n";

/// Load the phones, then empty p1's with `--clear-removed` (and rename
/// p3): the second load's run.
async fn clear_a_phone(sb: &segsync::sandbox::Sandbox, dir: &Path) -> Run {
    let (_, r) = load_csv(dir, sb, WITH_PHONES, &[]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let (_, r) = load_csv(dir, sb, PHONE_EMPTIED, &["--clear-removed"]).await;
    r
}

/// Voucherify's spec documents no `null` in an upsert. As the sandbox
/// applies it (the reading segsync was built on), the clear is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_applied_clears_and_the_read_back_agrees() {
    let sb = sandbox(with(|o| o.nulls = Nulls::Applied)).await;
    let dir = tempdir();
    let r = clear_a_phone(&sb, dir.path()).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(held(&sb, "p1", "phone"), None);
    assert_eq!(held(&sb, "p3", "name"), Some(json!("Cy Cole-Smith")));
    let v = verified(dir.path());
    assert_eq!(v["checked"], 2, "{v}");
    assert_eq!(v["not_applied"], 0, "{v}");
}

/// A null Voucherify ignores: the action is DONE, the phone stays. The
/// read-back names it (customer, field, sent, held), exit 3, the ledger
/// records it unverified, and the next plan lists the clear again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_ignored_is_named_not_recorded_as_cleared() {
    let sb = sandbox(with(|o| o.nulls = Nulls::Ignored)).await;
    let dir = tempdir();
    let r = clear_a_phone(&sb, dir.path()).await;
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(held(&sb, "p1", "phone"), Some(json!("+48 100 000 001")));
    assert_eq!(held(&sb, "p3", "name"), Some(json!("Cy Cole-Smith")));
    let report = read_csv(&dir.path().join("load-report.csv"));
    let named: Vec<_> = report
        .iter()
        .filter(|r| r["key"] == "not_applied")
        .collect();
    assert_eq!(named.len(), 1, "{report:?}");
    assert_eq!(named[0]["source_id"], "p1");
    assert!(named[0]["message"].contains("phone"), "{named:?}");
    assert!(named[0]["details"].contains("+48 100 000 001"), "{named:?}");
    assert!(r.stderr.contains("p1 phone"), "{}", r.stderr);
    let v = verified(dir.path());
    assert_eq!(v["not_applied"], 1, "{v}");
    let ledger = read_lines(&dir.path().join("load.ledger.ndjson"));
    assert!(
        ledger
            .iter()
            .any(|l| l["event"] == "unverified" && l["customers"][0]["source_id"] == "p1"),
        "{ledger:?}"
    );
    // The next plan lists the clear again, and status shows the finding.
    let csv = dir.path().join("customers-by-hand.csv");
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["plan", "--in", csv.to_str().unwrap(), "--clear-removed"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let lines = read_csv(&dir.path().join("load.plan.csv"));
    assert!(lines.iter().any(|l| l["source_id"] == "p1"), "{lines:?}");
    // status reads the data directory's customers.csv, and what is beside it.
    std::fs::copy(&csv, dir.path().join("customers.csv")).unwrap();
    let r: Run = command(dir.path(), Some(&sb), &["status"])
        .env("SEGSYNC_DATA_DIR", dir.path())
        .output()
        .await
        .expect("status runs")
        .into();
    assert!(r.all().contains("1 changes not applied"), "{}", r.all());
}

/// A null that refuses the customer in the batch's `errors`: the customer
/// is named, the others are applied, exit 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_refusing_the_customer_names_it() {
    let sb = sandbox(with(|o| o.nulls = Nulls::RefusedCustomer)).await;
    let dir = tempdir();
    let r = clear_a_phone(&sb, dir.path()).await;
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(held(&sb, "p1", "phone"), Some(json!("+48 100 000 001")));
    assert_eq!(held(&sb, "p3", "name"), Some(json!("Cy Cole-Smith")));
    let report = read_csv(&dir.path().join("load-report.csv"));
    assert!(report.iter().any(|r| r["source_id"] == "p1"), "{report:?}");
    assert!(!report.iter().any(|r| r["source_id"] == "p3"), "{report:?}");
}

/// A null that refuses the whole request (400): the batch is sent in
/// halves until the customer refused alone is found; it is named, the
/// others applied, exit 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_refusing_the_request_is_found_by_halves() {
    let sb = sandbox(with(|o| o.nulls = Nulls::RefusedRequest)).await;
    let dir = tempdir();
    let r = clear_a_phone(&sb, dir.path()).await;
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(held(&sb, "p1", "phone"), Some(json!("+48 100 000 001")));
    assert_eq!(held(&sb, "p3", "name"), Some(json!("Cy Cole-Smith")));
    let report = read_csv(&dir.path().join("load-report.csv"));
    let p1: Vec<_> = report.iter().filter(|r| r["source_id"] == "p1").collect();
    assert_eq!(p1.len(), 1, "{report:?}");
    assert_eq!(p1[0]["key"], "refused", "{p1:?}");
    assert!(!report.iter().any(|r| r["source_id"] == "p3"), "{report:?}");
}

/// Export filters whose `$after` Voucherify cuts to the day (the spec
/// says `format: date`): the delta after the load lacks what segsync just
/// confirmed, so it is not trusted (said, with the reading), every later
/// plan of the project exports in full, and another writer's rename is set
/// back. As sent, the delta holds them and later plans use deltas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_that_lacks_what_was_confirmed_is_not_trusted() {
    for (reading, trusted) in [
        (Filters::CutToDay, false),
        (Filters::AsSent, true),
        (Filters::AlwaysAnd, true),
    ] {
        let sb = sandbox(with(|o| o.filters = reading)).await;
        let dir = tempdir();
        let (_, r) = load_csv(dir.path(), &sb, &simple_customers("d", 20), &[]).await;
        assert_eq!(r.code, 0, "{reading:?}: {}", r.all());
        assert_eq!(
            r.stderr.contains("cut the filter's time to the day"),
            !trusted,
            "{reading:?}: {}",
            r.stderr
        );
        sb.another_writer("d0003", &json!({"name": "Renamed elsewhere"}));
        let (_, r) = load_csv(dir.path(), &sb, &simple_customers("d", 20), &[]).await;
        assert_eq!(r.code, 0, "{reading:?}: {}", r.all());
        assert_eq!(
            held(&sb, "d0003", "name"),
            Some(json!("Name 3")),
            "{reading:?}: {}",
            r.all()
        );
        let kind = plan_meta(dir.path())["export_kind"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(kind.contains("delta"), trusted, "{reading:?}: {kind}");
        assert_eq!(plan_meta(dir.path())["counts"]["update"], 1, "{reading:?}");
    }
}

/// A load against project A stops with its export pending; the same data
/// directory then pointed at project B does not poll or apply A's export:
/// B gets every customer it lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_export_is_never_carried_to_another_project() {
    let a = sandbox(with(|o| o.export_ms = Some(4_000))).await;
    let b = sandbox(opts(0)).await;
    let dir = tempdir();
    let (_, r) = load_csv(dir.path(), &a, &simple_customers("x", 10), &[]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let (_, r) = load_csv(
        dir.path(),
        &a,
        &simple_customers("x", 12),
        &["--export-timeout", "1"],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.all());
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("load.export.json")).unwrap())
            .unwrap();
    assert_eq!(record["state"], "pending", "{record}");
    let (_, r) = load_csv(dir.path(), &b, &simple_customers("x", 12), &[]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(b.customers().len(), 12, "{}", r.all());
    assert!(!r.stderr.contains("polled again"), "{}", r.stderr);
}
