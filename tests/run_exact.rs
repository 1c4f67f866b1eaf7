//! `segsync run` ends exactly as the stages one after another leave
//! Voucherify (issue 44; docs/DESIGN.md, "What `run` may send early"). Each
//! test runs the same world twice, in two sandboxes: `run` in one, `extract`,
//! `transform`, `load` in the other, and holds the two projects equal field
//! by field. The oracle is the stages' own outcome, never segsync's files.

mod common;
use common::*;
use segsync::sandbox::{Sandbox, SandboxOptions};
use serde_json::{json, Value};

/// Segment paced so that extract takes a few seconds: customers go out
/// while it runs.
fn paced(profiles: u64) -> SandboxOptions {
    SandboxOptions {
        segment_rps: 150,
        processing_ms: 20,
        ..opts(profiles)
    }
}

/// Source ids two profiles of the dataset share.
fn shared_user_ids(sb: &Sandbox) -> Vec<String> {
    let d = sb.dataset();
    let mut n: std::collections::BTreeMap<String, u32> = Default::default();
    for i in 0..d.n {
        if let Some(u) = d.user_id(i) {
            *n.entry(u).or_default() += 1;
        }
    }
    n.into_iter()
        .filter(|(_, c)| *c > 1)
        .map(|(u, _)| u)
        .collect()
}

/// The customers another writer made before segsync's first run: those of
/// the shared user ids, and a few others, each with a phone, a description
/// and an address line segsync's profiles may or may not give.
fn existing(sb: &Sandbox) -> Vec<Value> {
    let mut ids = shared_user_ids(sb);
    ids.extend((0..6).filter_map(|i| sb.dataset().user_id(i * 7)));
    ids.into_iter()
        .map(|sid| {
            json!({"source_id": sid, "phone": "+48 111 000 111",
                   "description": "kept by another writer",
                   "address": {"line_2": "Flat 9 (another writer)"}})
        })
        .collect()
}

async fn twins(o: SandboxOptions) -> (Sandbox, Sandbox) {
    let (a, b) = (sandbox(o.clone()).await, sandbox(o).await);
    (a, b)
}

/// Issue 44, defect 1: the profile that wins a shared user_id answers last
/// (`winners_last`), so extract writes the losing profile first. Customers
/// another writer made already hold a phone and a description the winner
/// does not give. `run` must leave them as the stages do: nothing segsync
/// never set is erased, and no losing profile's value is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_over_duplicates_and_existing_customers_ends_as_the_stages_do() {
    let o = SandboxOptions {
        winners_last: true,
        ..paced(400)
    };
    let (run_sb, stages_sb) = twins(o).await;
    assert!(
        shared_user_ids(&run_sb).len() >= 3,
        "the world has duplicates"
    );
    for sb in [&run_sb, &stages_sb] {
        sb.seed_customers(existing(sb));
    }
    let (run_dir, stages_dir) = (tempdir(), tempdir());
    let r = segsync(run_dir.path(), Some(&run_sb), &["run", "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let s = stages(stages_dir.path(), &stages_sb, &[]).await;
    assert_eq!(s.code, 0, "{}", s.all());
    let (ran, staged) = (held_fields(&run_sb), held_fields(&stages_sb));
    assert_eq!(
        ran,
        staged,
        "run and the stages differ: {:#?}\n{}",
        differences(&ran, &staged),
        r.stderr
    );
    // The issue's own check: a shared customer whose winner gives no phone
    // keeps the other writer's.
    let d = run_sb.dataset();
    let mut kept = 0;
    for sid in shared_user_ids(&run_sb) {
        let winner = (0..d.n)
            .find(|i| {
                d.user_id(*i).as_deref() == Some(sid.as_str())
                    && d.wins_shared(*i, &Default::default())
            })
            .expect("a shared user id has a winner");
        if d.profile(winner, 0).traits.get("phone").is_none() {
            assert_eq!(ran[&sid]["phone"], json!("+48 111 000 111"), "{sid}");
            kept += 1;
        }
    }
    assert!(
        kept > 0,
        "no shared customer's winner lacks a phone: the test proves nothing"
    );
    // Something went early, and the shared customers went by the load.
    let doc: Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    let load = &doc["stages"]["load"]["counts"];
    assert!(load["sent_early"].as_u64() > Some(100), "{}", r.stderr);
    assert!(load["held_back_early"].as_u64() >= Some(6), "{}", r.stderr);
}

/// Issue 44, defect 3, as issue 47 settles it: over a hand-edited
/// customers.csv, `run` keeps the edits (edits.csv) before anything is
/// sent, so early sending sends the edited rows once, as edited, never
/// Segment's version first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_over_a_hand_edited_customers_csv_sends_the_edits_once() {
    let sb = sandbox(paced(120)).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let csv = data(dir.path()).join("customers.csv");
    let rows = read_csv(&csv);
    let edited: Vec<String> = rows
        .iter()
        .take(2)
        .map(|r| r["source_id"].clone())
        .collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut rdr = csv::Reader::from_path(&csv).unwrap();
    let header = rdr.headers().unwrap().clone();
    let name = header.iter().position(|h| h == "name").unwrap();
    w.write_record(&header).unwrap();
    for rec in rdr.records() {
        let mut cells: Vec<String> = rec.unwrap().iter().map(str::to_string).collect();
        if edited.contains(&cells[0]) {
            cells[name] = format!("Edited By Hand {}", cells[0]);
        }
        w.write_record(&cells).unwrap();
    }
    std::fs::write(&csv, w.into_inner().unwrap()).unwrap();
    // Segment changes meanwhile: a fresh extract sends its rows early.
    sb.touch(30);
    let before = sb.receipts();
    let r = segsync(dir.path(), Some(&sb), &["run", "--fresh"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let after = sb.receipts();
    for sid in &edited {
        let n = after.get(sid).copied().unwrap_or(0) - before.get(sid).copied().unwrap_or(0);
        assert_eq!(n, 1, "{sid} sent {n} times: {}", r.stderr);
        assert_eq!(sb.customers()[sid]["name"], format!("Edited By Hand {sid}"));
    }
}

/// Issue 44, defect 4: a customer Voucherify refuses (an undeliverable
/// email) is sent once in a run, as the stages send it once, and reported;
/// a rerun with nothing changed sends nothing early, not even rows whose
/// only change is a pending clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_customer_is_sent_once_a_run_and_an_unchanged_rerun_sends_nothing() {
    let o = SandboxOptions {
        undeliverable_every: 17,
        ..paced(200)
    };
    let (run_sb, stages_sb) = twins(o).await;
    let (run_dir, stages_dir) = (tempdir(), tempdir());
    let r = segsync(run_dir.path(), Some(&run_sb), &["run", "--json"]).await;
    assert_eq!(r.code, 3, "Voucherify refused some: {}", r.all());
    let s = stages(stages_dir.path(), &stages_sb, &[]).await;
    assert_eq!(s.code, 3, "{}", s.all());
    assert_eq!(held_fields(&run_sb), held_fields(&stages_sb));
    // Every customer was sent once, as by the stages.
    let (ran, staged) = (run_sb.receipts(), stages_sb.receipts());
    assert_eq!(ran, staged, "{}", r.stderr);
    assert!(ran.values().all(|n| *n == 1), "{ran:?}");
    let report = read_csv(&data(run_dir.path()).join("load-report.csv"));
    let refused: Vec<&str> = report.iter().map(|r| r["source_id"].as_str()).collect();
    let staged_report = read_csv(&data(stages_dir.path()).join("load-report.csv"));
    assert_eq!(refused.len(), staged_report.len(), "{report:?}");
    assert!(!refused.is_empty());
    // A rerun with nothing changed in Segment sends what the plan sends:
    // the refused customers, once each (early), and nothing else.
    let received = stat(&run_sb, "customers_received");
    let r = segsync(run_dir.path(), Some(&run_sb), &["run", "--json"]).await;
    assert_eq!(r.code, 3, "{}", r.all());
    let doc: Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    let counts = &doc["stages"]["load"]["counts"];
    assert_eq!(counts["sent_early"], json!(refused.len()), "{}", r.stderr);
    assert_eq!(counts["sent"], json!(0), "{}", r.stderr);
    assert_eq!(
        stat(&run_sb, "customers_received") - received,
        refused.len() as u64,
        "{}",
        r.stderr
    );
}

/// The customer a generator's expected customer is, as Voucherify holds it.
fn as_held(e: &segsync::sandbox::data::ExpectedCustomer) -> Value {
    let mut c = json!({"source_id": e.source_id});
    let top = [
        ("name", &e.name),
        ("email", &e.email),
        ("phone", &e.phone),
        ("birthdate", &e.birthdate),
        ("description", &e.description),
    ];
    for (k, v) in top {
        if let Some(v) = v {
            c[k] = json!(v);
        }
    }
    let address = [
        ("line_1", &e.address_line_1),
        ("line_2", &e.address_line_2),
        ("city", &e.address_city),
        ("state", &e.address_state),
        ("postal_code", &e.address_postal_code),
        ("country", &e.address_country),
    ];
    for (k, v) in address {
        if let Some(v) = v {
            c["address"][k] = json!(v);
        }
    }
    c
}

/// Issue 44, defect 4: customers Voucherify already holds exactly as the
/// rows say (another writer put them there, so the ledger never confirmed
/// them) are not sent, early or by the load: the plan finds them unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_voucherify_holds_as_they_are_are_not_sent_early() {
    let sb = sandbox(paced(200)).await;
    let same: Vec<Value> = (sb.dataset().expected_customers(&Default::default()))
        .values()
        .filter(|e| e.metadata.is_none())
        .map(as_held)
        .collect();
    assert!(same.len() >= 10, "{}", same.len());
    sb.seed_customers(same.clone());
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let received = sb.receipts();
    for c in &same {
        let sid = c["source_id"].as_str().unwrap();
        assert_eq!(received.get(sid), None, "{sid} was sent: {}", r.stderr);
    }
    assert!(!received.is_empty(), "{}", r.stderr);
}

/// Issue 44, defect 2: the monthly quota runs out at each of the first
/// calls of a run (the export started beside extract, its polls, the
/// schema), in a project whose empty export comes without a file. After the
/// quota is refilled, a rerun ends exact, another writer's rename is set
/// back by the next, and `plan` can still plan: no export is left pending
/// that no rerun can finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_spent_on_runs_export_leaves_a_data_directory_a_rerun_mends() {
    for quota in 0..=5u64 {
        let sb = sandbox(SandboxOptions {
            cycle_quota: Some(quota),
            empty_export_without_file: true,
            ..paced(60)
        })
        .await;
        let dir = tempdir();
        let first = segsync(dir.path(), Some(&sb), &["run"]).await;
        assert!(
            [0, 1].contains(&first.code),
            "quota {quota}: {}",
            first.all()
        );
        // A new cycle (the plan raised): quotas off.
        sb.heal();
        let r = segsync(dir.path(), Some(&sb), &["run"]).await;
        assert_eq!(
            r.code,
            0,
            "quota {quota}: {}\n--- first:\n{}",
            r.all(),
            first.all()
        );
        assert_end_state(&sb, &Default::default());
        let renamed = sb.customers().keys().next().cloned().expect("customers");
        sb.another_writer(&renamed, &json!({"name": "Renamed by another writer"}));
        let r = segsync(dir.path(), Some(&sb), &["run"]).await;
        assert_eq!(r.code, 0, "quota {quota}: {}", r.all());
        assert_ne!(
            sb.customers()[&renamed]["name"],
            json!("Renamed by another writer"),
            "quota {quota}: the rename stays: {}\n--- first:\n{}",
            r.stderr,
            first.all()
        );
        assert_end_state(&sb, &Default::default());
        let r = segsync(dir.path(), Some(&sb), &["plan"]).await;
        assert_eq!(r.code, 0, "quota {quota}: {}", r.all());
    }
}

/// The road by which the world left an export pending for good: a
/// `plan` stopped by the quota while it polled its export (made of the
/// empty project, so it comes without a file), then a load by the ledger
/// alone filled the project. The next `run` finds that export no use (the
/// project holds customers now), gives it up and exports anew, so another
/// writer's rename is set back and `plan` plans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_left_pending_of_an_empty_project_is_given_up_not_polled_forever() {
    let sb = sandbox(SandboxOptions {
        cycle_quota: Some(2),
        empty_export_without_file: true,
        ..paced(60)
    })
    .await;
    let dir = tempdir();
    for stage in ["extract", "transform"] {
        let r = segsync(dir.path(), Some(&sb), &[stage]).await;
        assert_eq!(r.code, 0, "{}", r.all());
    }
    // The schema read, the export's creation, then its poll: 429.
    let r = segsync(dir.path(), Some(&sb), &["plan"]).await;
    assert_eq!(r.code, 1, "{}", r.all());
    let meta: Value =
        serde_json::from_slice(&std::fs::read(data(dir.path()).join("load.export.json")).unwrap())
            .unwrap();
    assert_eq!(meta["state"], json!("pending"), "{meta}");
    sb.heal();
    let r = segsync(dir.path(), Some(&sb), &["load", "--from-ledger"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let renamed = sb.customers().keys().next().cloned().expect("customers");
    sb.another_writer(&renamed, &json!({"name": "Renamed by another writer"}));
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_ne!(
        sb.customers()[&renamed]["name"],
        json!("Renamed by another writer"),
        "the rename stays: {}",
        r.stderr
    );
    assert_end_state(&sb, &Default::default());
    let r = segsync(dir.path(), Some(&sb), &["plan"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
}
