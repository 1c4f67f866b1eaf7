//! Issue 47: a person's hand edits of customers.csv survive every rerun.
//! They are kept as overrides in edits.csv (found against the copy of what
//! transform wrote), applied by every transform and by `run`'s early
//! sending, shown by `status` and the plan, and dropped by
//! `transform --drop-edit` (the real binary against the sandbox).

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The rows of customers.csv by source id.
fn rows(data: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    read_csv(&data.join("customers.csv"))
        .into_iter()
        .map(|r| (r["source_id"].clone(), r))
        .collect()
}

/// Set `column` of the row of `sid` in customers.csv, as a person would.
fn edit(data: &Path, sid: &str, column: &str, value: &str) {
    let path = data.join("customers.csv");
    let mut rdr = csv::Reader::from_path(&path).unwrap();
    let header = rdr.headers().unwrap().clone();
    let col = header.iter().position(|h| h == column).unwrap();
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(&header).unwrap();
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let mut cells: Vec<String> = rec.iter().map(str::to_string).collect();
        if cells[0] == sid {
            cells[col] = value.to_string();
        }
        out.write_record(&cells).unwrap();
    }
    std::fs::write(&path, out.into_inner().unwrap()).unwrap();
}

fn held(sb: &segsync::sandbox::Sandbox, sid: &str, field: &str) -> Option<Value> {
    sb.customers().get(sid).and_then(|c| c.get(field).cloned())
}

/// Three nightly `run`s after a person's edits, Segment changing other
/// profiles, other fields of the edited ones and the very field one edit
/// set: every run exits 0 with no flag, the edits hold in Voucherify, the
/// other changes arrive, and Segment's change of an edited field is said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_survive_three_nightly_runs() {
    let sb = sandbox(opts(60)).await;
    let dir = tempdir();
    let d = data(dir.path());
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // `touch(10)` gives activity (a new description) to profiles 3, 9, 15…
    let ds = sb.dataset();
    let by_segment: BTreeMap<String, String> = (rows(&d).into_values())
        .map(|r| (r["segment_id"].clone(), r["source_id"].clone()))
        .collect();
    let touched: Vec<String> = (0..10u64)
        .filter_map(|k| by_segment.get(&ds.segment_id(k * 6 + 3)).cloned())
        .collect();
    let quiet = (0..ds.n)
        .filter(|i| i % 6 != 3)
        .find_map(|i| by_segment.get(&ds.segment_id(i)).cloned())
        .expect("an untouched customer");
    let (same, other) = (&touched[0], &touched[1]);
    edit(&d, same, "description", "Fixed by hand");
    edit(&d, other, "name", "Name Fixed By Hand");
    edit(&d, &quiet, "phone", "+48 600 111 222");
    for night in 1..=3 {
        sb.touch(10);
        let r = segsync(dir.path(), Some(&sb), &["run"]).await;
        assert_eq!(r.code, 0, "night {night}: {}", r.all());
        if night == 1 {
            assert!(r.stderr.contains("kept 3 hand edits"), "{}", r.stderr);
        }
        assert!(
            r.stderr
                .contains("Segment has changed 1 fields you edited by hand"),
            "night {night}: {}",
            r.stderr
        );
        assert_eq!(held(&sb, same, "description"), Some("Fixed by hand".into()));
        assert_eq!(held(&sb, other, "name"), Some("Name Fixed By Hand".into()));
        assert_eq!(held(&sb, &quiet, "phone"), Some("+48 600 111 222".into()));
        // Segment's other changes arrive: the edited customer's own
        // description (not edited), and every other touched one's.
        let expected = ds.expected_customers(&sb.versions());
        for sid in touched.iter().skip(1) {
            assert_eq!(
                held(&sb, sid, "description"),
                expected[sid].description.clone().map(Value::from),
                "night {night}: {sid}"
            );
        }
        let edits = read_csv(&d.join("edits.csv"));
        assert_eq!(edits.len(), 3, "{edits:?}");
    }
    let r: Run = command(dir.path(), Some(&sb), &["status"])
        .output()
        .await
        .unwrap()
        .into();
    assert!(r.stdout.contains("3 hand edits kept"), "{}", r.all());
    // Dropped, Segment's value comes back.
    let arg = format!("{same}:description");
    let r = segsync(dir.path(), Some(&sb), &["transform", "--drop-edit", &arg]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let expected = ds.expected_customers(&sb.versions());
    assert_eq!(
        held(&sb, same, "description"),
        expected[same].description.clone().map(Value::from)
    );
    assert_eq!(read_csv(&d.join("edits.csv")).len(), 2);
    // A mistyped id drops nothing, and says so.
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["transform", "--drop-edit", "nobody"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("holds no edit of customer nobody"),
        "{}",
        r.stderr
    );
}

/// The stages: transform over an edited file keeps its edits (it no
/// longer refuses), the plan names the fields a hand edit sets, and a
/// change that looks like a spreadsheet's doing (leading zeros lost) is
/// not kept as an edit, said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_keeps_edits_and_the_plan_names_them() {
    let sb = sandbox(opts(40)).await;
    let dir = tempdir();
    let d = data(dir.path());
    let r = stages(dir.path(), &sb, &[]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let all = rows(&d);
    let (sid, row) = all.iter().next().unwrap();
    edit(&d, sid, "name", "A Name By Hand");
    let zeros = all
        .iter()
        .find(|(_, r)| r["address_postal_code"].starts_with('0'))
        .map(|(s, r)| (s.clone(), r["address_postal_code"].clone()));
    if let Some((z, code)) = &zeros {
        edit(&d, z, "address_postal_code", code.trim_start_matches('0'));
    }
    let r = segsync(dir.path(), Some(&sb), &["transform"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("kept 1 hand edits"), "{}", r.stderr);
    if zeros.is_some() {
        assert!(
            r.stderr.contains("look like a spreadsheet's doing"),
            "{}",
            r.stderr
        );
    }
    assert_eq!(rows(&d)[sid]["name"], "A Name By Hand");
    assert_ne!(row["name"], "A Name By Hand");
    let r = segsync(dir.path(), Some(&sb), &["plan"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let plan = read_csv(&d.join("load.plan.csv"));
    let line = plan
        .iter()
        .find(|l| &l["source_id"] == sid)
        .expect("the edited row");
    assert_eq!(line["hand_edit"], "name", "{line:?}");
}
