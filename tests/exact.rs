//! Exact under every edit: the plan's end-to-end guarantees, each from a
//! reproduction a new user found (the real binary against the sandbox over
//! loopback HTTP).

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;

/// A world whose rerun ran with `--clear-removed`.
fn cleared() -> WorldHistory {
    WorldHistory {
        clear_removed: true,
        ..Default::default()
    }
}

fn plan_lines(data: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    read_csv(&data.join("load.plan.csv"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_100_ends_exact_but_for_emptied_fields_which_stay_pending_until_clear_removed() {
    let sb = sandbox(opts(100)).await;
    let dir = tempdir();
    let data = dir.path().join("data");
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_world_end_state(&sb, &sb.versions(), &cleared());
    sb.touch(100);
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // Every field the source has is exact; a field it emptied holds only
    // what one of the customer's own profiles gave it before.
    assert_world_end_state(&sb, &sb.versions(), &WorldHistory::default());
    let expected = sb.dataset().expected_customers(&sb.versions());
    let emptied: Vec<String> = sb
        .customers()
        .iter()
        .filter(|(sid, c)| {
            let e = &expected[*sid];
            let a = |k: &str| c.get("address").and_then(|a| a.get(k)).is_some();
            (a("state") && e.address_state.is_none())
                || (a("country") && e.address_country.is_none())
                || (c.get("phone").is_some() && e.phone.is_none())
        })
        .map(|(sid, _)| sid.clone())
        .collect();
    assert!(
        !emptied.is_empty(),
        "the reproduction must empty some fields (seed 1 did)"
    );
    assert!(emptied.contains(&"usr-1-95".to_string()), "{emptied:?}");
    // Every later plan lists them as pending clears, and sends nothing.
    for _ in 0..2 {
        let r = segsync(dir.path(), Some(&sb), &["plan"]).await;
        assert_eq!(r.code, 0, "{}", r.all());
        let lines = plan_lines(&data);
        for sid in &emptied {
            let l = lines
                .iter()
                .find(|l| &l["source_id"] == sid)
                .unwrap_or_else(|| panic!("{sid} not listed: {lines:?}"));
            assert!(!l["pending_clear"].is_empty(), "{l:?}");
            assert!(l["send"].is_empty(), "a clear alone is not sent: {l:?}");
        }
        assert!(
            r.stderr
                .contains(&format!("{} with fields the source emptied", emptied.len())),
            "{}",
            r.stderr
        );
    }
    let before = stat(&sb, "customers_received");
    let r = segsync(dir.path(), Some(&sb), &["load", "--clear-removed"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        stat(&sb, "customers_received") - before,
        emptied.len() as u64,
        "only the clears are sent: {}",
        r.all()
    );
    assert_world_end_state(&sb, &sb.versions(), &cleared());
    // Nothing is pending any more.
    let r = segsync(dir.path(), Some(&sb), &["plan", "--clear-removed"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(plan_lines(&data).is_empty(), "{}", r.all());
}

const THREE: &str = "source_id,name,email\n\
    a,Ann Able,ann@example.com\n\
    b,Bob Best,bob@example.com\n\
    c,Cy Cole,cy@example.com\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_the_same_size_and_time_after_plan_is_sent() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, THREE).unwrap();
    let path = csv.to_str().unwrap();
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let edited = THREE.replace("Ann Able", "Ann Abel");
    std::fs::write(&csv, THREE.replace("Ann Able", "Ann Ablf")).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // The same size, and the modification time set back to the plan's.
    let mtime = std::fs::metadata(&csv).unwrap().modified().unwrap();
    std::fs::write(&csv, &edited).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&csv)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(&csv).unwrap().modified().unwrap(), mtime);
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("making a new plan"), "{}", r.stderr);
    assert_eq!(sb.customers()["a"]["name"], "Ann Abel", "{}", r.all());
    // And the ledger agrees: nothing left to send.
    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert!(r.stderr.contains("0 to update"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edited_plan_file_is_refused_and_nothing_is_sent() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, THREE).unwrap();
    let path = csv.to_str().unwrap();
    assert_eq!(
        segsync(dir.path(), Some(&sb), &["load", "--in", path])
            .await
            .code,
        0
    );
    std::fs::write(&csv, THREE.replace("Bob Best", "Bob Better")).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let plan = dir.path().join("load.plan.csv");
    let text = std::fs::read_to_string(&plan).unwrap();
    assert!(text.contains("Bob Better"), "{text}");
    let received = stat(&sb, "customers_received");
    // A send cell without source_id, another name, a line deleted, a skip: each refused.
    let edits = [
        text.replace(
            r#"{""source_id"":""b"",""name"":""Bob Better""}"#,
            r#"{""name"":""Bob Better""}"#,
        ),
        text.replace("Bob Better", "Mallory"),
        text.lines().next().unwrap().to_string() + "\n",
    ];
    for edit in &edits {
        assert_ne!(edit, &text, "the edit must change the file");
        std::fs::write(&plan, edit).unwrap();
        let r = segsync(dir.path(), Some(&sb), &["load", "--in", path]).await;
        assert_eq!(r.code, 2, "{}", r.all());
        assert!(
            r.stderr.contains("was edited after `segsync plan`"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("customers.csv"), "{}", r.stderr);
        assert_eq!(stat(&sb, "customers_received"), received, "nothing sent");
    }
    // Planned again, the load sends what customers.csv says.
    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(sb.customers()["b"]["name"], "Bob Better");
    assert_eq!(stat(&sb, "customers_received"), received + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_metadata_key_is_checked_for_new_customers_by_every_method() {
    for method in ["bulk", "import", "auto"] {
        let sb = sandbox(opts(0)).await;
        sb.set_metadata_schema(Some(json!({"properties": {
            "tier": {"type": "string", "optional": false}
        }})));
        // `old` exists already: the key is required of new customers only.
        sb.seed_customers([json!({"source_id": "old", "name": "Old", "metadata": {"tier": "x"}})]);
        let dir = tempdir();
        let content = "source_id,name,metadata\n\
            old,Old Again,\n\
            new-1,New One,\"{\"\"tier\"\":\"\"gold\"\"}\"\n\
            new-2,New Two,\n";
        let (csv, r) = load_csv(dir.path(), &sb, content, &["--method", method]).await;
        assert_eq!(r.code, 2, "{method}: {}", r.all());
        assert!(r.stderr.contains("metadata.tier"), "{method}: {}", r.stderr);
        assert!(
            r.stderr.contains(":4"),
            "{method}: names line 4: {}",
            r.stderr
        );
        assert_eq!(stat(&sb, "customers_received"), 0, "{method}: nothing sent");
        // --skip-invalid sets it aside and sends the others.
        let r = segsync(
            dir.path(),
            Some(&sb),
            &[
                "load",
                "--in",
                csv.to_str().unwrap(),
                "--method",
                method,
                "--skip-invalid",
            ],
        )
        .await;
        assert_eq!(r.code, 0, "{method}: {}", r.all());
        let held = sb.customers();
        assert!(
            held.contains_key("new-1") && !held.contains_key("new-2"),
            "{method}"
        );
        assert_eq!(held["old"]["name"], "Old Again", "{method}");
        let _: Value = held["old"].clone();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_a_killed_run_left_behind_is_polled_again_not_started_anew() {
    // Exports take 4 s here, so the first plan is killed while it polls.
    let sb = sandbox(segsync::sandbox::SandboxOptions {
        processing_ms: 4000,
        ..opts(0)
    })
    .await;
    sb.seed_customers([json!({"source_id": "a", "name": "Ann Able"})]);
    let dir = tempdir();
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, THREE).unwrap();
    let path = csv.to_str().unwrap();
    let mut child = command(dir.path(), Some(&sb), &["plan", "--in", path])
        .spawn()
        .unwrap();
    let meta = dir.path().join("load.export.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&meta).is_ok_and(|m| m.contains("pending")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the export never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap();
    assert_eq!(requests(&sb, "voucherify.exports_created"), 1);
    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("is polled again"), "{}", r.stderr);
    // Not started again; but it is older than whatever was sent since it
    // was made, so it is brought up to date: one export more. A delta
    // would do, but nothing segsync confirmed could check it (no delta of
    // the project is proven yet, issue 43): a full one.
    assert_eq!(
        requests(&sb, "voucherify.exports_created"),
        2,
        "{}",
        r.all()
    );
    assert!(
        r.stderr.contains("could not be checked")
            && r.stderr.contains("compared with a full export"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("2 to create, 1 to update"),
        "{}",
        r.stderr
    );
    // Downloaded: the next plan starts a new export.
    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(requests(&sb, "voucherify.exports_created"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_exports_only_what_changed_and_plans_as_a_full_export_would() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let csv = dir.path().join("customers.csv");
    let mut content = String::from("source_id,name,email\n");
    for i in 0..100 {
        content.push_str(&format!("c{i:03},Name {i},c{i}@example.com\n"));
    }
    std::fs::write(&csv, &content).unwrap();
    let path = csv.to_str().unwrap();
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("compared with a full export"),
        "{}",
        r.stderr
    );
    // Another writer changes 1% of the customers, and Segment another one.
    sb.another_writer("c007", &json!({"name": "Renamed"}))
        .unwrap();
    std::fs::write(&csv, content.replace("Name 42,", "Name Forty-two,")).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // The delta holds the customers updated since the kept export: every
    // one the first load sent (updated after the export was made) and the
    // renamed one, not the whole project.
    assert!(r.stderr.contains("a delta export ("), "{}", r.stderr);
    let delta = read_csv(&dir.path().join("load.export.delta.csv"));
    assert!(delta.len() <= 101, "{}", delta.len());
    let by_delta = std::fs::read_to_string(dir.path().join("load.plan.csv")).unwrap();
    let lines = plan_lines(dir.path());
    let changed: Vec<&str> = lines.iter().map(|l| l["source_id"].as_str()).collect();
    assert_eq!(changed, ["c007", "c042"], "{lines:?}");
    // A full export gives the same plan, line for line.
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["plan", "--in", path, "--full-export"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("compared with a full export"),
        "{}",
        r.stderr
    );
    let by_full = std::fs::read_to_string(dir.path().join("load.plan.csv")).unwrap();
    assert_eq!(by_delta, by_full);
    // The load sends them; the next rerun's delta holds just those two.
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // A rerun a while later (the snapshot's margin, a minute by default, is
    // one second here, and a second passes).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let margin = |args: &[&str]| {
        let mut c = command(dir.path(), Some(&sb), args);
        c.env("SEGSYNC_SNAPSHOT_MARGIN_SECS", "1");
        c.output()
    };
    let r: Run = margin(&["plan", "--in", path, "--full-export"])
        .await
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{}", r.all());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    sb.another_writer("c010", &json!({"email": "changed@example.com"}))
        .unwrap();
    let r: Run = margin(&["plan", "--in", path]).await.unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());
    let delta = read_csv(&dir.path().join("load.export.delta.csv"));
    assert!(
        delta.len() <= 10,
        "at most 10% of the customers: {}",
        delta.len()
    );
    assert_eq!(delta.len(), 1, "only c010 changed since");
    let lines = plan_lines(dir.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["source_id"], "c010");
    let r = segsync(dir.path(), Some(&sb), &["load", "--in", path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let r = segsync(dir.path(), Some(&sb), &["plan", "--in", path]).await;
    assert!(plan_lines(dir.path()).is_empty(), "{}", r.all());
    assert_eq!(sb.customers()["c007"]["name"], "Name 7");
    assert_eq!(sb.customers()["c042"]["name"], "Name Forty-two");
    // Another writer creates a customer (never updated: no updated_at, the
    // pessimistic reading of a nullable field) that the source now has too:
    // the delta must see it, so the import never overwrites it.
    sb.seed_customers([json!({"source_id": "c100", "phone": "+48 600 000 000"})]);
    let grown = content.replace("Name 42,", "Name Forty-two,") + "c100,Name 100,c100@example.com\n";
    std::fs::write(&csv, grown).unwrap();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", path, "--method", "import"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("a delta export ("), "{}", r.stderr);
    // It is seen to exist: an update, never a create (which the import
    // would send as a file that overwrites it whole).
    assert!(
        r.stderr.contains("0 to create, 1 to update"),
        "{}",
        r.stderr
    );
    let c = &sb.customers()["c100"];
    assert_eq!(c["phone"], "+48 600 000 000", "{c}");
    assert_eq!(c["name"], "Name 100", "{c}");
}
