//! The import read against every line of Voucherify's documents, each case
//! against a sandbox that reads them pessimistically: a file never carries an
//! empty cell its customer's data does not mean, keys a header cannot carry go
//! by bulk, required metadata is checked before anything is sent, the export
//! is made anew on every run, and a file failing twice the same way is not
//! sent again.

mod common;
use common::*;
use segsync::sandbox::{Sandbox, SandboxOptions};
use serde_json::{json, Value};

const METHODS: [&str; 2] = ["import", "auto"];

/// A customers CSV of `n` new customers; `meta(i)` gives row i's metadata.
fn csv_with(n: usize, meta: impl Fn(usize) -> Option<Value>) -> String {
    let mut s = String::from("source_id,name,email,metadata\n");
    for i in 0..n {
        let m = meta(i)
            .map(|m| format!("\"{}\"", m.to_string().replace('"', "\"\"")))
            .unwrap_or_default();
        s.push_str(&format!("d{i:05},Name {i},d{i}@example.com,{m}\n"));
    }
    s
}

async fn load(dir: &std::path::Path, sb: &Sandbox, csv: &str, extra: &[&str]) -> Run {
    let file = dir.join("customers.csv");
    std::fs::write(&file, csv).unwrap();
    let mut args = vec!["load", "--in", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    segsync(dir, Some(sb), &args).await
}

/// No customer the sandbox holds has an empty metadata value.
fn no_empty_metadata(sb: &Sandbox) {
    for (sid, c) in sb.customers() {
        if let Some(m) = c.get("metadata").and_then(Value::as_object) {
            assert!(m.values().all(|v| v != ""), "{sid}: {m:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_metadata_never_becomes_empty_keys() {
    for method in METHODS {
        let sb = sandbox(opts(0)).await;
        let dir = tempdir();
        // Half the customers have metadata, half none; a few have two keys.
        let csv = csv_with(600, |i| match i % 4 {
            0 | 1 => None,
            2 => Some(json!({"plan": "gold"})),
            _ => Some(json!({"plan": "free", "region": "eu"})),
        });
        let r = load(dir.path(), &sb, &csv, &["--method", method]).await;
        assert_eq!(r.code, 0, "{method}: {}", r.all());
        assert_eq!(sb.customers().len(), 600);
        assert!(
            requests(&sb, "voucherify.customers_import_csv") >= 1,
            "{method}"
        );
        no_empty_metadata(&sb);
        assert_eq!(sb.customers()["d00000"].get("metadata"), None);
        assert_eq!(
            sb.customers()["d00003"]["metadata"],
            json!({"plan": "free", "region": "eu"})
        );
        // Every cell of every file sent is filled.
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let p = f.unwrap().path();
            if p.to_string_lossy().contains("load.import.") {
                for rec in csv::Reader::from_path(&p).unwrap().records() {
                    assert!(
                        rec.unwrap().iter().all(|c| !c.is_empty()),
                        "{}",
                        p.display()
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_a_header_cannot_carry_go_by_bulk() {
    for method in METHODS {
        let sb = sandbox(opts(0)).await;
        let dir = tempdir();
        let csv = csv_with(450, |i| match i % 3 {
            0 => Some(json!({"Campaign Name": "spring"})),
            1 => Some(json!({"id": "ext-1", "city": "Oslo"})),
            _ => Some(json!({"plan": "gold"})),
        });
        let r = load(dir.path(), &sb, &csv, &["--method", method]).await;
        assert_eq!(r.code, 0, "{method}: {}", r.all());
        let held = sb.customers();
        assert_eq!(held.len(), 450);
        assert_eq!(
            held["d00000"]["metadata"],
            json!({"Campaign Name": "spring"})
        );
        assert_eq!(
            held["d00001"]["metadata"],
            json!({"id": "ext-1", "city": "Oslo"})
        );
        assert_eq!(held["d00001"].get("address"), None, "city stayed metadata");
        assert_eq!(held["d00002"]["metadata"], json!({"plan": "gold"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_required_key_is_exit_2_with_nothing_sent_or_set_aside() {
    let schema = json!({"properties": {
        "plan": {"type": "string", "optional": false},
        "where": {"type": "geopoint"},
        "since": {"type": "date"}
    }});
    for method in METHODS {
        let sb = sandbox(SandboxOptions {
            metadata_schema: Some(schema.clone()),
            ..opts(0)
        })
        .await;
        let dir = tempdir();
        // Rows 2 and 5 (lines 4 and 7) lack `plan`; geopoint text and a
        // date-time date are fine.
        let csv = csv_with(200, |i| {
            if i == 2 || i == 5 {
                Some(json!({"where": "37.786971, -122.399677"}))
            } else {
                Some(
                    json!({"plan": "p", "where": "37.786971, -122.399677", "since": "2020-03-11T09:00:00.000Z"}),
                )
            }
        });
        let r = load(dir.path(), &sb, &csv, &["--method", method]).await;
        assert_eq!(r.code, 2, "{method}: {}", r.all());
        assert!(
            r.stderr.contains("customers.csv:4: metadata.plan: missing")
                && r.stderr.contains("customers.csv:7: metadata.plan: missing"),
            "{}",
            r.stderr
        );
        assert_eq!(stat(&sb, "customers_received"), 0, "nothing sent");
        assert_eq!(requests(&sb, "voucherify.customers_import_csv"), 0);
        let r = load(
            dir.path(),
            &sb,
            &csv,
            &["--method", method, "--skip-invalid"],
        )
        .await;
        assert_eq!(r.code, 0, "{method}: {}", r.all());
        assert_eq!(sb.customers().len(), 198);
        assert_eq!(read_csv(&dir.path().join("load.rejects.csv")).len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_another_writer_created_between_runs_keeps_its_other_fields() {
    for method in METHODS {
        let sb = sandbox(opts(0)).await;
        let dir = tempdir();
        let csv = csv_with(300, |_| Some(json!({"plan": "gold"})));
        // A dry run makes (and saves) an export; then another writer, such as
        // Segment's own Voucherify destination, creates one of our customers.
        let r = load(dir.path(), &sb, &csv, &["--method", method, "--dry-run"]).await;
        assert_eq!(r.code, 0, "{}", r.all());
        sb.seed_customers([json!({"source_id": "d00007", "phone": "+48 600 000 000"})]);
        let r = load(dir.path(), &sb, &csv, &["--method", method]).await;
        assert_eq!(r.code, 0, "{method}: {}", r.all());
        let c = &sb.customers()["d00007"];
        assert_eq!(
            c["phone"], "+48 600 000 000",
            "{method}: the import wiped it"
        );
        assert_eq!(c["name"], "Name 7");
        assert_eq!(sb.customers().len(), 300);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_failing_twice_the_same_way_is_not_sent_again() {
    let sb = sandbox(SandboxOptions {
        import_fails_whole: true,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let csv = csv_with(250, |_| None);
    for _ in 0..2 {
        let r = load(dir.path(), &sb, &csv, &["--method", "import"]).await;
        assert_eq!(r.code, 3, "{}", r.all());
        assert!(
            r.stderr
                .contains("Import failed: the file could not be processed"),
            "Voucherify's own message: {}",
            r.stderr
        );
    }
    let imports = requests(&sb, "voucherify.customers_import_csv");
    assert_eq!(imports, 2);
    let r = load(dir.path(), &sb, &csv, &["--method", "import"]).await;
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("failed twice"), "{}", r.stderr);
    assert_eq!(requests(&sb, "voucherify.customers_import_csv"), imports);
    // auto takes the bulk upsert instead.
    let r = load(dir.path(), &sb, &csv, &["--method", "auto"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(requests(&sb, "voucherify.customers_import_csv"), imports);
    assert_eq!(sb.customers().len(), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_migration_into_an_empty_project_ends_exact_by_both_methods() {
    for method in METHODS {
        let sb = sandbox(SandboxOptions {
            export_without_file: true,
            ..opts(0)
        })
        .await;
        let dir = tempdir();
        let csv = csv_with(500, |i| (i % 2 == 0).then(|| json!({"plan": "gold"})));
        // Every export ends without a file: the read-back cannot be made
        // (hangs.rs holds that it says so), so it is skipped here.
        let r = load(dir.path(), &sb, &csv, &["--method", method, "--no-verify"]).await;
        assert_eq!(r.code, 0, "{method}: {}", r.all());
        assert_eq!(sb.customers().len(), 500);
        assert!(
            requests(&sb, "voucherify.customers_import_csv") >= 1,
            "{method}"
        );
        no_empty_metadata(&sb);
        assert_eq!(sb.repeated_applications(), 0);
    }
}
