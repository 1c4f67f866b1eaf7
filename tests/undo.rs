//! Issue 47: `segsync undo` restores what the last load changed, field by
//! field, from what Voucherify held before it; keeps what another writer
//! changed after the load (by Voucherify's clock); lists the customers the
//! load created; reads back what it restored (the real binary against the
//! sandbox).

mod common;
use common::*;
use serde_json::{json, Value};

fn held(sb: &segsync::sandbox::Sandbox, sid: &str, field: &str) -> Option<Value> {
    sb.customers().get(sid).and_then(|c| c.get(field).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_restores_a_load_exactly_and_keeps_a_later_writers_change() {
    // Voucherify's clock a minute behind ours: only its own times compare.
    let sb = sandbox(segsync::sandbox::SandboxOptions {
        action_clock_ms: -60_000,
        ..opts(0)
    })
    .await;
    // Ten customers held before the load: a name and a phone, no email.
    sb.seed_customers((0..10).map(|i| {
        json!({"source_id": format!("u{i:04}"), "name": format!("Old {i}"), "phone": "+48 600 000 000",
               "address": {"city": "Gdynia", "line_1": format!("Old street {i}")}})
    }));
    let dir = tempdir();
    let mut csv = String::from("source_id,name,email,address_city\n");
    for i in 0..15 {
        csv.push_str(&format!("u{i:04},Name {i},u{i}@example.com,Sopot\n"));
    }
    let (path, r) = load_csv(dir.path(), &sb, &csv, &[]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let path = path.to_str().unwrap().to_string();
    assert_eq!(held(&sb, "u0001", "name"), Some(json!("Name 1")));
    // Another writer, a second after the load.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    sb.another_writer("u0003", &json!({"name": "Renamed later"}));

    let received = stat(&sb, "customers_received");
    let r = segsync(dir.path(), Some(&sb), &["undo", "--in", &path, "--dry-run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        stat(&sb, "customers_received"),
        received,
        "a dry run sends nothing"
    );
    let plan = read_csv(&dir.path().join("undo.plan.csv"));
    let action = |sid: &str| {
        plan.iter()
            .find(|l| l["source_id"] == sid)
            .map(|l| l["action"].clone())
    };
    assert_eq!(action("u0001").as_deref(), Some("restore"), "{plan:?}");
    let u3 = plan
        .iter()
        .find(|l| l["source_id"] == "u0003")
        .expect("u0003");
    assert_eq!(u3["kept"], "name", "{u3:?}");
    assert_eq!(action("u0012").as_deref(), Some("created"), "{plan:?}");
    assert!(r.stderr.contains("created by the load"), "{}", r.stderr);

    let r = segsync(dir.path(), Some(&sb), &["undo", "--in", &path]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    for i in [0, 1, 2, 4, 9] {
        let sid = format!("u{i:04}");
        assert_eq!(
            held(&sb, &sid, "name"),
            Some(json!(format!("Old {i}"))),
            "{sid}"
        );
        assert_eq!(
            held(&sb, &sid, "email"),
            None,
            "{sid}: the email the load set is cleared"
        );
        assert_eq!(
            held(&sb, &sid, "phone"),
            Some(json!("+48 600 000 000")),
            "{sid}"
        );
        assert_eq!(
            held(&sb, &sid, "address"),
            Some(json!({"city": "Gdynia", "line_1": format!("Old street {i}")})),
            "{sid}"
        );
    }
    // The later writer's name is kept; what the load alone set on the
    // same customer is undone.
    assert_eq!(held(&sb, "u0003", "name"), Some(json!("Renamed later")));
    assert_eq!(held(&sb, "u0003", "email"), None);
    // Created by the load: listed, not deleted.
    assert_eq!(held(&sb, "u0012", "name"), Some(json!("Name 12")));
    let r = segsync(dir.path(), Some(&sb), &["undo", "--in", &path]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("undone already"), "{}", r.stderr);
}
