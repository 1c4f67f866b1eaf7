//! Exact under every edit: the plan's end-to-end guarantees, each from a
//! reproduction a new user found (the real binary against the sandbox over
//! loopback HTTP).

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;

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
    assert_world_end_state(&sb, &sb.versions(), true);
    sb.touch(100);
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // Every field the source has is exact; a field it emptied holds only
    // what one of the customer's own profiles gave it before.
    assert_world_end_state(&sb, &sb.versions(), false);
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
    assert_world_end_state(&sb, &sb.versions(), true);
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
