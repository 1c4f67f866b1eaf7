//! transform: sandbox → extract → transform, each row checked against what the
//! generator meant; counts; hand-edit protection; bad input.

mod common;
use common::*;
use segsync::sandbox::data::ExpectedCustomer;
use std::collections::{BTreeMap, HashMap};

/// The documented formula guard, undone: a value that starts with `= + - @`,
/// tab or CR (after any apostrophes) was written with one more apostrophe.
/// The test's own reading of the contract, not the crate's function.
fn unguard_cell(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(after)
            if after
                .trim_start_matches('\'')
                .starts_with(['=', '+', '-', '@', '\t', '\r']) =>
        {
            after
        }
        _ => cell,
    }
}

fn cell(row: &BTreeMap<String, String>, col: &str) -> Option<String> {
    row.get(col)
        .map(|v| unguard_cell(v).to_string())
        .filter(|v| !v.is_empty())
}

fn assert_row_matches(row: &BTreeMap<String, String>, e: &ExpectedCustomer) {
    let sid = &e.source_id;
    assert_eq!(cell(row, "name"), e.name, "{sid} name");
    assert_eq!(cell(row, "email"), e.email, "{sid} email");
    assert_eq!(cell(row, "phone"), e.phone, "{sid} phone");
    assert_eq!(cell(row, "birthdate"), e.birthdate, "{sid} birthdate");
    assert_eq!(cell(row, "description"), e.description, "{sid} description");
    assert_eq!(
        cell(row, "address_line_1"),
        e.address_line_1,
        "{sid} line_1"
    );
    assert_eq!(
        cell(row, "address_line_2"),
        e.address_line_2,
        "{sid} line_2"
    );
    assert_eq!(cell(row, "address_city"), e.address_city, "{sid} city");
    assert_eq!(cell(row, "address_state"), e.address_state, "{sid} state");
    assert_eq!(
        cell(row, "address_postal_code"),
        e.address_postal_code,
        "{sid} postal"
    );
    assert_eq!(
        cell(row, "address_country"),
        e.address_country,
        "{sid} country"
    );
    let meta =
        cell(row, "metadata").map(|m| serde_json::from_str::<serde_json::Value>(&m).unwrap());
    assert_eq!(meta, e.metadata, "{sid} metadata");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_is_what_the_profile_implies_and_every_profile_is_accounted_for() {
    let sb = sandbox(opts(400)).await;
    let dir = tempdir();
    assert_eq!(segsync(dir.path(), Some(&sb), &["extract"]).await.code, 0);
    let r = segsync(dir.path(), None, &["transform"]).await; // no credentials needed
    assert_eq!(r.code, 0, "{}", r.all());
    let d = data(dir.path());
    let rows = read_csv(&d.join("customers.csv"));
    let rejected = read_csv(&d.join("rejected.csv"));
    let expected = sb.dataset().expected_customers(&HashMap::new());
    assert_eq!(rows.len(), expected.len());
    assert_eq!(
        rows.len() + rejected.len(),
        400,
        "profiles in = customers out + rejected"
    );
    for row in &rows {
        let sid = cell(row, "source_id").expect("every row has a source_id");
        let e = expected
            .get(&sid)
            .unwrap_or_else(|| panic!("unexpected customer {sid}"));
        assert_row_matches(row, e);
        assert!(row["segment_id"].starts_with("use_"));
    }
    // Header in the contract's order.
    let header = std::fs::read_to_string(d.join("customers.csv"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    // The contract's column list, written out (not the crate's constant).
    assert_eq!(
        header,
        "source_id,name,email,phone,birthdate,description,address_line_1,address_line_2,address_city,address_state,address_postal_code,address_country,metadata,segment_id"
    );
    // Reasons: every profile without user_id, and the losing duplicates.
    let ds = sb.dataset();
    let no_id: Vec<_> = (0..400)
        .filter(|i| ds.user_id(*i).is_none())
        .map(|i| ds.segment_id(i))
        .collect();
    for id in &no_id {
        assert!(
            rejected
                .iter()
                .any(|r| &r["segment_id"] == id && r["reason"] == "no_source_id"),
            "{id}"
        );
    }
    let dups = rejected
        .iter()
        .filter(|r| r["reason"] == "duplicate_source_id")
        .count();
    assert_eq!(dups + no_id.len(), rejected.len());
    assert!(dups > 0);
    // Invalid birthdates are warnings, listed with their values.
    let warnings = read_csv(&d.join("transform.warnings.csv"));
    let bad: usize = (0..400)
        .filter(|i| ds.profile(*i, 0).bad_birthdate && ds.user_id(*i).is_some())
        .count();
    assert!(
        warnings.len() >= bad - dups && warnings.len() <= bad,
        "{} warnings, {bad} bad birthdates",
        warnings.len()
    );
    assert!(warnings.iter().any(|w| w["value"].contains("-02-30")));
    assert!(
        r.stderr
            .contains(&format!("400 profiles in = {} customers", rows.len())),
        "{}",
        r.stderr
    );
    // Formula-like cells are guarded in the file.
    let raw = std::fs::read_to_string(d.join("customers.csv")).unwrap();
    assert!(
        raw.contains("'=HYPERLINK")
            && raw.contains(",'@twitter_handle")
            && raw.contains("'-5 points")
    );
    assert!(
        !raw.contains(",''quoted") && raw.contains(",'quoted"),
        "values starting with an apostrophe but no formula are untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_identifier_types_rescue_profiles_without_user_id() {
    let sb = sandbox(opts(120)).await;
    let dir = tempdir();
    // Extract fetches only the id types transform will use: asking transform
    // for more is refused, naming the fix.
    assert_eq!(segsync(dir.path(), Some(&sb), &["extract"]).await.code, 0);
    let r = segsync(
        dir.path(),
        None,
        &["transform", "--source-id-type", "user_id,email"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("no email ids"), "{}", r.stderr);
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["extract", "--fresh", "--source-id-type", "user_id,email"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let r = segsync(
        dir.path(),
        None,
        &["transform", "--source-id-type", "user_id,email"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let rows = read_csv(&data(dir.path()).join("customers.csv"));
    let ds = sb.dataset();
    let rescued = (0..120)
        .find(|i| ds.user_id(*i).is_none() && i % 9 != 8)
        .unwrap();
    let row = rows
        .iter()
        .find(|r| r["segment_id"] == ds.segment_id(rescued))
        .expect("rescued profile is a customer");
    assert_eq!(row["source_id"], format!("id{rescued}@example.com"));
    // the environment variable works the same
    let r = command(dir.path(), None, &["transform", "--force"])
        .env("IDENTIFIER_SAVED_AS_SOURCE_ID", "email")
        .output()
        .await
        .unwrap();
    assert!(r.status.success());
    let rows = read_csv(&data(dir.path()).join("customers.csv"));
    assert!(rows.iter().all(|r| r["source_id"].starts_with("id")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_is_kept_by_transform_and_only_force_overwrites_an_unrecorded_one() {
    let sb = sandbox(opts(50)).await;
    let dir = tempdir();
    assert_eq!(segsync(dir.path(), Some(&sb), &["extract"]).await.code, 0);
    assert_eq!(segsync(dir.path(), None, &["transform"]).await.code, 0);
    // an untouched file may be rewritten
    assert_eq!(segsync(dir.path(), None, &["transform"]).await.code, 0);
    let d = data(dir.path());
    let csv = d.join("customers.csv");
    let edited = std::fs::read_to_string(&csv)
        .unwrap()
        .replacen("example.com", "example.org", 1);
    std::fs::write(&csv, &edited).unwrap();
    // Issue 47: transform records the edit and applies it, no flag needed.
    let r = segsync(dir.path(), None, &["transform"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        edited,
        "the edit is kept"
    );
    let edits = read_csv(&d.join("edits.csv"));
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert!(edits[0]["value"].ends_with("example.org"), "{edits:?}");
    let st = segsync(dir.path(), None, &["status"]).await;
    assert!(st.stdout.contains("1 hand edits kept"), "{}", st.stdout);
    // Without transform's own copy, an edit cannot be told from Segment's
    // changes: transform refuses, and only --force overwrites it.
    std::fs::remove_file(d.join("transform.written.csv")).unwrap();
    let again = edited.replacen("example.com", "example.net", 1);
    std::fs::write(&csv, &again).unwrap();
    let r = segsync(dir.path(), None, &["transform"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("changed after transform wrote it") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        again,
        "the file is kept"
    );
    let r = segsync(dir.path(), None, &["transform", "--force"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        edited,
        "the unrecorded edit overwritten, the recorded one still applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_name_file_and_line_and_can_be_skipped() {
    let dir = tempdir();
    let d = data(dir.path());
    std::fs::create_dir_all(&d).unwrap();
    let good = r#"{"segment_id":"use_a","metadata":{"updated_at":"2024-01-01T00:00:00Z"},"traits":{"name":"A"},"external_ids":[{"type":"user_id","id":"a"}]}"#;
    std::fs::write(
        d.join("profiles.ndjson"),
        format!(
            "{good}\n{{\"segment_id\": broken\n{}\n",
            good.replace("use_a", "use_b").replace("\"a\"", "\"b\"")
        ),
    )
    .unwrap();
    let r = segsync(dir.path(), None, &["transform"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("profiles.ndjson:2:"), "{}", r.stderr);
    assert!(!d.join("customers.csv").exists(), "nothing half-written");
    let r = segsync(dir.path(), None, &["transform", "--skip-invalid"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(read_csv(&d.join("customers.csv")).len(), 2);
    let rej = read_csv(&d.join("rejected.csv"));
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0]["reason"], "invalid_json");
    assert!(rej[0]["detail"].contains(":2:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_input_says_which_command_writes_it() {
    let dir = tempdir();
    let r = segsync(dir.path(), None, &["transform"]).await;
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("profiles.ndjson") && r.stderr.contains("segsync extract"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_keep_the_most_recently_updated_profile() {
    let dir = tempdir();
    let d = data(dir.path());
    std::fs::create_dir_all(&d).unwrap();
    let p = |seg: &str, updated: &str, name: &str| {
        format!(
            r#"{{"segment_id":"{seg}","metadata":{{"updated_at":"{updated}"}},"traits":{{"name":"{name}"}},"external_ids":[{{"type":"user_id","id":"same"}}]}}"#
        )
    };
    let lines = [
        p("use_old", "2024-01-01T00:00:00Z", "Old"),
        p("use_new", "2025-01-01T00:00:00Z", "New"),
        p("use_mid", "2024-06-01T00:00:00Z", "Mid"),
    ];
    std::fs::write(d.join("profiles.ndjson"), lines.join("\n") + "\n").unwrap();
    let r = segsync(dir.path(), None, &["transform"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let rows = read_csv(&d.join("customers.csv"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "New");
    let rej = read_csv(&d.join("rejected.csv"));
    assert_eq!(rej.len(), 2);
    assert!(rej
        .iter()
        .all(|r| r["reason"] == "duplicate_source_id" && r["detail"].contains("use_new")));
}
