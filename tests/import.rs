//! load --method import: new customers by Voucherify's CSV import, existing
//! ones by the bulk upsert, with the same guarantees.

mod common;
use common::*;
use segsync::sandbox::{Sandbox, SandboxOptions};
use serde_json::{json, Value};

/// Every Voucherify call the sandbox saw (the export's download included).
fn voucherify_calls(sb: &Sandbox) -> u64 {
    sb.stats()["requests"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("voucherify."))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum()
}

fn customers_csv(n: usize, typed_every: usize) -> String {
    let mut s = String::from("source_id,name,email,metadata\n");
    for i in 0..n {
        let meta = if typed_every > 0 && i % typed_every == 0 {
            format!(r#"{{"plan":"gold","score":{i},"vip":true}}"#)
        } else {
            format!(r#"{{"plan":"p{}","region":"r{}"}}"#, i % 3, i % 5)
        };
        s.push_str(&format!(
            "c{i:05},Name {i},c{i}@example.com,\"{}\"\n",
            meta.replace('"', "\"\"")
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_customers_with_text_metadata_load_exactly_in_a_dozen_calls() {
    let sb = sandbox(SandboxOptions {
        processing_ms: 40,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let (_, r) = load_csv(
        dir.path(),
        &sb,
        &customers_csv(2700, 0),
        &["--method", "import"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let held = sb.customers();
    assert_eq!(held.len(), 2700);
    assert_eq!(held["c00042"]["name"], "Name 42");
    assert_eq!(held["c00042"]["email"], "c42@example.com");
    assert_eq!(
        held["c00042"]["metadata"],
        json!({"plan": "p0", "region": "r2"})
    );
    let calls = voucherify_calls(&sb);
    eprintln!("{calls} Voucherify calls; {}", sb.stats()["requests"]);
    assert!(calls <= 12, "{calls} calls: {}", sb.stats()["requests"]);
    assert_eq!(requests(&sb, "voucherify.customers_bulk_async"), 0);
    // The file sent is kept, and the export that said who existed.
    let sent = std::fs::read_to_string(dir.path().join("load.import.001.csv")).unwrap();
    // Only the columns these customers fill: never an empty cell.
    assert!(
        sent.starts_with("Source_id,Name,Email,plan,region\n"),
        "{}",
        &sent[..200]
    );
    assert!(dir.path().join("load.export.csv").exists());
    assert!(
        r.stderr.contains("2700 customers by import in 1 files"),
        "{}",
        r.stderr
    );
    // A rerun has nothing to send.
    let (_, r) = load_csv(
        dir.path(),
        &sb,
        &customers_csv(2700, 0),
        &["--method", "import"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("0 sent"), "{}", r.stderr);

    // The same customers by bulk, for the figure: 27 requests and 27 polls.
    let sb2 = sandbox(SandboxOptions {
        processing_ms: 40,
        ..opts(0)
    })
    .await;
    let dir2 = tempdir();
    let (_, r) = load_csv(dir2.path(), &sb2, &customers_csv(2700, 0), &[]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(voucherify_calls(&sb2) >= 54, "{}", sb2.stats()["requests"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_customers_go_by_bulk_and_keep_the_fields_the_file_leaves_empty() {
    let sb = sandbox(SandboxOptions {
        processing_ms: 40,
        ..opts(0)
    })
    .await;
    // A quarter already in the project, with fields the new data does not fill.
    sb.seed_customers((0..2700).filter(|i| i % 4 == 0).map(|i| {
        json!({"source_id": format!("c{i:05}"), "phone": "+47 555", "name": "Old", "metadata": {"legacy": "keep"}})
    }));
    let dir = tempdir();
    let (_, r) = load_csv(
        dir.path(),
        &sb,
        &customers_csv(2700, 0),
        &["--method", "import"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let held = sb.customers();
    assert_eq!(held.len(), 2700);
    let old = &held["c00040"];
    assert_eq!(
        old["phone"], "+47 555",
        "a field the load does not fill survives"
    );
    assert_eq!(old["metadata"]["legacy"], "keep");
    assert_eq!(old["name"], "Name 40", "and the new values land");
    assert_eq!(held["c00041"].get("phone"), None);
    let calls = voucherify_calls(&sb);
    let existing: u64 = 675;
    assert!(
        calls <= 12 + 2 * existing.div_ceil(100),
        "{calls}: {}",
        sb.stats()["requests"]
    );
    assert_eq!(
        requests(&sb, "voucherify.customers_bulk_async"),
        7,
        "the 675 existing, by bulk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_metadata_goes_by_bulk_and_stays_typed_and_failures_map_to_lines() {
    let sb = sandbox(SandboxOptions {
        processing_ms: 40,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let mut csv = customers_csv(300, 10);
    // Fills the same columns as the text rows, so it travels in their file.
    csv.push_str(
        "bad01,Bad,bad@mail.invalid,\"{\"\"plan\"\":\"\"p0\"\",\"\"region\"\":\"\"r0\"\"}\"\n",
    );
    let (path, r) = load_csv(dir.path(), &sb, &csv, &["--method", "import"]).await;
    assert_eq!(r.code, 3, "{}", r.all());
    let held = sb.customers();
    assert_eq!(held.len(), 300);
    assert_eq!(
        held["c00010"]["metadata"],
        json!({"plan": "gold", "score": 10, "vip": true}),
        "typed stays typed"
    );
    assert_eq!(held["c00011"]["metadata"]["plan"], "p2");
    assert_eq!(
        requests(&sb, "voucherify.customers_bulk_async"),
        1,
        "the 30 typed rows"
    );
    let report = read_csv(&dir.path().join("load-report.csv"));
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0]["source_id"], "bad01");
    assert_eq!(
        report[0]["line"], "302",
        "the import's row mapped back to the CSV line"
    );
    assert_eq!(report[0]["key"], "import_failed");
    // The dry run shows the split and what it would cost.
    let r = segsync(
        dir.path(),
        Some(&sb),
        &[
            "load",
            "--dry-run",
            "--method",
            "import",
            "--in",
            path.to_str().unwrap(),
        ],
    )
    .await;
    // The one failed customer is alone in its columns: too few for a file.
    assert!(
        r.stderr.contains("0 new customers could go by import") && r.stderr.contains("1 by bulk"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_import_follows_the_documented_format() {
    let sb = sandbox(opts(0)).await;
    sb.seed_customers([
        json!({"source_id": "x1", "phone": "+1", "name": "Old", "metadata": {"a": "1"}}),
    ]);
    let http = reqwest::Client::new();
    let url = sb.url();
    let post = |body: &'static str| {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(body.as_bytes().to_vec()).file_name("c.csv"),
        );
        http.post(format!("{url}/v1/customers/importCSV"))
            .header("X-App-Id", &sb.creds.app_id)
            .header("X-App-Token", &sb.creds.secret_key)
            .multipart(form)
    };
    // Headers match case-insensitively; other columns are metadata as text;
    // an existing customer is fully overwritten; an empty metadata cell is
    // stored as "" (unknown metadata "treated as a string"); `Id` and `City`
    // are no metadata.
    let r = post("SOURCE_ID,name,Phone,a,Plan,Id,City\nx1,New,,,7,cust_x,Oslo\n,Nobody,,,,,\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["async_action_id"]
        .as_str()
        .unwrap()
        .to_string();
    let action = loop {
        let a = voucherify_get(&sb, &format!("/v1/async-actions/{id}")).await;
        if a["status"] == "DONE" {
            break a;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(action["type"], "CUSTOMERS.IMPORT_CSV");
    assert_eq!(action["result"]["done_count"], 1);
    assert_eq!(action["result"]["failed"][0]["row"], 2);
    let c = &sb.customers()["x1"];
    assert_eq!(c["name"], "New");
    assert_eq!(c.get("phone"), None, "fully overwritten: the phone is gone");
    assert_eq!(
        c["metadata"],
        json!({"Plan": "7", "a": ""}),
        "text, and the empty `a` stored as an empty string"
    );
    assert_eq!(c["address"], json!({"city": "Oslo"}));
    let e: Value = http
        .post(format!("{url}/v1/exports"))
        .header("X-App-Id", &sb.creds.app_id)
        .header("X-App-Token", &sb.creds.secret_key)
        .json(&json!({"exported_object": "customer", "parameters": {"fields": ["source_id"]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(e["status"], "SCHEDULED");
    let eid = e["id"].as_str().unwrap();
    let file_url = loop {
        let s = voucherify_get(&sb, &format!("/v1/exports/{eid}")).await;
        if s["status"] == "DONE" {
            break s["result"]["url"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // "use the provided URL together with authentication headers"
    let keyed = |url: &str| {
        http.get(url)
            .header("X-App-Id", &sb.creds.app_id)
            .header("X-App-Token", &sb.creds.secret_key)
    };
    let body = keyed(&file_url).send().await.unwrap().text().await.unwrap();
    assert_eq!(body, "Source ID\nx1\n");
    assert_eq!(http.get(&file_url).send().await.unwrap().status(), 401);
    let no_token = file_url.split('?').next().unwrap();
    assert_eq!(keyed(no_token).send().await.unwrap().status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_the_import_is_submitted_and_a_rerun_sends_nothing_twice() {
    let sb = sandbox(SandboxOptions {
        processing_ms: 1500,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, customers_csv(500, 0)).unwrap();
    let args = ["load", "--in", csv.to_str().unwrap(), "--method", "import"];
    let mut child = command(dir.path(), Some(&sb), &args).spawn().unwrap();
    let ledger = dir.path().join("load.ledger.ndjson");
    for _ in 0..300 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if std::fs::read_to_string(&ledger).is_ok_and(|l| l.contains("\"submitted\"")) {
            break;
        }
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let pending = read_lines(&ledger);
    assert!(
        pending.iter().any(|l| l["event"] == "submitted"
            && l["method"] == "import"
            && l["file"] == "load.import.001.csv"),
        "{pending:?}"
    );
    let r = segsync(dir.path(), Some(&sb), &args).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("checking 1 batches"), "{}", r.stderr);
    assert_eq!(sb.customers().len(), 500);
    assert!(
        sb.receipts().values().all(|n| *n == 1),
        "a customer was imported twice"
    );
    assert_eq!(requests(&sb, "voucherify.customers_import_csv"), 1);
}
