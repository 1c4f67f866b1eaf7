//! Issue 47: a pilot is a documented path. `load --in FILE` with a subset
//! plans that subset alone (no orphans for the rows it does not hold), and
//! `--dry-run` changes nothing in the data directory, byte for byte (the
//! real binary against the sandbox).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Every file under `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    out
}

fn changed(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_no_byte_and_a_pilot_reports_no_orphans() {
    let sb = sandbox(opts(80)).await;
    let dir = tempdir();
    let d = data(dir.path());
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // Segment changes, and a person writes a 10-row pilot beside the data.
    sb.touch(20);
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let r = segsync(dir.path(), Some(&sb), &["transform"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // The header and the first 10 records (a cell may hold a quoted newline).
    let mut reader = csv::Reader::from_path(d.join("customers.csv")).unwrap();
    let mut pilot = csv::Writer::from_path(d.join("pilot.csv")).unwrap();
    pilot.write_record(reader.headers().unwrap()).unwrap();
    for record in reader.records().take(10) {
        pilot.write_record(&record.unwrap()).unwrap();
    }
    pilot.flush().unwrap();
    drop(pilot);
    let before = snapshot(&d);
    let received = stat(&sb, "customers_received");
    for args in [
        vec!["load", "--dry-run"],
        vec!["load", "--dry-run", "--method", "import"],
        vec!["load", "--in", "data/pilot.csv", "--dry-run"],
    ] {
        let r = segsync(dir.path(), Some(&sb), &args).await;
        assert_eq!(r.code, 0, "{args:?}: {}", r.all());
        assert_eq!(
            changed(&before, &snapshot(&d)),
            Vec::<String>::new(),
            "{args:?}: {}",
            r.stderr
        );
        assert_eq!(stat(&sb, "customers_received"), received);
        if args.contains(&"data/pilot.csv") {
            assert!(r.stderr.contains(" 0 orphans"), "{}", r.stderr);
            assert!(
                r.stderr.contains("not the data directory's customers.csv"),
                "{}",
                r.stderr
            );
        }
    }
    // The pilot loaded for real: its rows alone, no orphans.
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", "data/pilot.csv"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("load.plan.json")).unwrap()).unwrap();
    assert_eq!(meta["counts"]["orphans"], 0, "{meta}");
    let rows = read_csv(&d.join("pilot.csv")).len();
    assert_eq!(meta["counts"]["rows"], rows, "{meta}");
}

/// Every Voucherify request the sandbox received, whatever its endpoint.
fn voucherify_requests(sb: &segsync::sandbox::Sandbox) -> u64 {
    let stats = sb.stats();
    (stats["requests"]
        .as_object()
        .expect("requests by endpoint")
        .iter())
    .filter(|(k, _)| k.starts_with("voucherify.") && *k != "voucherify.exports_created")
    .map(|(_, v)| v.as_u64().expect("a count"))
    .sum()
}

/// The numbers add up: a load's calls, by phase, sum to its total in the
/// JSON report and in the text, and the total is what the sandbox
/// received; by bulk, by import, and executing a plan made before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loads_calls_add_up_in_text_and_json() {
    let schema = report_schema();
    for (method, planned) in [("bulk", false), ("import", false), ("bulk", true)] {
        let sb = sandbox(opts(0)).await;
        let dir = tempdir();
        let csv = dir.path().join("c.csv");
        std::fs::write(&csv, simple_customers("n", 150)).unwrap();
        let path = csv.to_str().unwrap();
        if planned {
            let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
            assert_eq!(r.code, 0, "{}", r.all());
        }
        let before = voucherify_requests(&sb);
        let r = segsync(
            dir.path(),
            Some(&sb),
            &["load", "--in", path, "--method", method, "--json"],
        )
        .await;
        assert_eq!(r.code, 0, "{method}: {}", r.all());
        let doc = one_document(&r, &schema);
        let counts = &doc["counts"];
        let total = counts["calls"].as_u64().expect("calls");
        let parts: u64 = ["start", "recover", "plan", "send", "verify"]
            .iter()
            .map(|p| {
                counts[format!("calls_{p}")]
                    .as_u64()
                    .unwrap_or_else(|| panic!("calls_{p} in {counts}"))
            })
            .sum();
        assert_eq!(parts, total, "{method} planned {planned}: {counts}");
        assert_eq!(
            voucherify_requests(&sb) - before,
            total,
            "{method}: the sandbox's count: {}",
            sb.stats()
        );
        assert!(
            r.stderr
                .contains(&format!("load: {total} Voucherify calls: ")),
            "{}",
            r.stderr
        );
        if planned {
            assert!(r.stderr.contains("load: executing"), "{}", r.stderr);
            assert_eq!(
                counts["calls_plan"], 0,
                "a plan made before costs this load nothing: {counts}"
            );
        }
    }
}
