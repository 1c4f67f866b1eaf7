//! The mapping file: custom traits into fields and typed metadata, only the
//! traits it reads asked of Segment, and the project's metadata schema
//! checked before anything is sent.

mod common;
use common::*;
use segsync::sandbox::SandboxOptions;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

const MAPPING: &str = r#"
[source_id]
types = ["user_id", "email"]        # external-id types, first present wins

[fields]
description = ["bio", "description"]
phone = "mobile"

[metadata]
campaign = "Campaign Name"
big_spender = { trait = "big_spender", type = "boolean" }
lifetime_value = { trait = "ltv", type = "number" }
"#;

/// What the mapping above makes of a profile's traits, written out here
/// rule by rule (not with segsync's mapping code).
fn expected_by_hand(traits: &Map<String, Value>) -> (Option<Value>, Option<Value>, Value) {
    let text = |k: &str| {
        traits
            .get(k)
            .filter(|v| v.as_str() != Some("") && !v.is_null())
            .cloned()
    };
    let description = text("bio").or_else(|| text("description"));
    let phone = text("mobile");
    let mut meta = match traits.get("metadata") {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    if let Some(c) = text("Campaign Name") {
        meta.insert("campaign".into(), c);
    }
    match traits.get("big_spender") {
        Some(Value::Bool(b)) => {
            meta.insert("big_spender".into(), json!(b));
        }
        Some(Value::String(s)) if s == "true" => {
            meta.insert("big_spender".into(), json!(true));
        }
        _ => {}
    }
    match traits.get("ltv") {
        Some(Value::Number(n)) => {
            meta.insert("lifetime_value".into(), json!(n));
        }
        Some(Value::String(s)) if s == "340" => {
            meta.insert("lifetime_value".into(), json!(340));
        }
        _ => {}
    }
    (description, phone, Value::Object(meta))
}

fn schema(defines_big_spender: bool) -> Value {
    let mut props = json!({
        "campaign": {"type": "string"},
        "lifetime_value": {"type": "number", "gte": 0},
        "tier": {"type": "string"},
        "score": {"type": "number"},
        "tags": {"type": "string", "array": true},
        "nested": {"type": "object"},
    });
    if defines_big_spender {
        props["big_spender"] = json!({"type": "boolean"});
    }
    json!({"properties": props, "allow_defined_only": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issue_mapping_lands_exactly_and_only_the_traits_it_reads_are_extracted() {
    let sb = sandbox(SandboxOptions {
        metadata_schema: Some(schema(true)),
        ..opts(240)
    })
    .await;
    let dir = tempdir();
    std::fs::write(dir.path().join("segsync.toml"), MAPPING).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());

    // profiles.ndjson holds no trait the mapping does not read.
    let readable = [
        "name",
        "firstName",
        "first_name",
        "lastName",
        "last_name",
        "email",
        "birthdate",
        "birthday",
        "address",
        "street",
        "line_1",
        "line_2",
        "city",
        "state",
        "postalCode",
        "postal_code",
        "country",
        "metadata",
        "bio",
        "description",
        "mobile",
        "Campaign Name",
        "big_spender",
        "ltv",
    ];
    let lines = read_lines(&data(dir.path()).join("profiles.ndjson"));
    for l in &lines {
        for k in l["traits"].as_object().unwrap().keys() {
            assert!(
                readable.contains(&k.as_str()),
                "{k} was extracted but nothing reads it"
            );
        }
        assert!(
            l["traits"].get("phone").is_none(),
            "phone's default source is replaced by mobile"
        );
    }

    // The customers Voucherify holds are exactly the mapping's, field by field.
    let ds = sb.dataset();
    let mut by_sid: HashMap<String, (String, u64)> = HashMap::new();
    for i in 0..ds.n {
        let p = ds.profile(i, 0);
        let ids = &p.external_ids;
        // The contract's rule: of the first type that has one, the id with
        // the earliest `created_at` (the generator writes them as RFC 3339
        // in UTC with milliseconds, so they compare as text), then by text.
        let sid = ["user_id", "email"].iter().find_map(|t| {
            ids.iter()
                .filter(|e| e["type"] == *t)
                .filter_map(|e| Some((e["created_at"].as_str()?, e["id"].as_str()?)))
                .min()
                .map(|(_, id)| id.to_string())
        });
        let Some(sid) = sid else { continue };
        let updated = p.metadata["updated_at"].as_str().unwrap().to_string();
        match by_sid.get(&sid) {
            Some((u, _)) if *u >= updated => {}
            _ => {
                by_sid.insert(sid, (updated, i));
            }
        }
    }
    let held = sb.customers();
    assert_eq!(held.len(), by_sid.len());
    let mut checked = BTreeMap::new();
    for (sid, (_, i)) in &by_sid {
        let c = &held[sid];
        let (description, phone, meta) = expected_by_hand(&ds.profile(*i, 0).traits);
        assert_eq!(c.get("description").cloned(), description, "{sid}");
        assert_eq!(c.get("phone").cloned(), phone, "{sid}");
        let held_meta = c.get("metadata").cloned().unwrap_or(json!({}));
        assert_eq!(held_meta, meta, "{sid}");
        for k in ["campaign", "big_spender", "lifetime_value"] {
            if meta.get(k).is_some() {
                *checked.entry(k).or_insert(0) += 1;
            }
        }
    }
    assert!(checked.values().all(|n| *n > 10), "{checked:?}");
    assert!(
        held.values()
            .any(|c| c["metadata"]["lifetime_value"] == json!(340)),
        "\"340\" became 340"
    );

    // Values that cannot convert losslessly are left out and listed.
    let warnings = read_csv(&data(dir.path()).join("transform.warnings.csv"));
    assert!(warnings
        .iter()
        .any(|w| w["field"] == "metadata.big_spender" && w["value"] == "\"yes\""));
    assert!(warnings
        .iter()
        .any(|w| w["field"] == "metadata.lifetime_value" && w["value"] == "\"n/a\""));

    // Asked only for the traits it reads: one traits request per identified
    // profile (a slow last read hedged asks the same again: not a first read).
    let identified = lines
        .iter()
        .filter(|l| {
            !l["traits"].as_object().unwrap().is_empty()
                || l["external_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["type"] == "user_id" || e["type"] == "email")
        })
        .count() as u64;
    let again = reads_again(&sb, "segment.traits");
    assert_eq!(requests(&sb, "segment.traits") - again, identified);
    assert!(
        again <= hedged(&r.stderr),
        "{again} asked again: {}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_does_not_define_a_mapped_key_stops_load_before_sending() {
    let sb = sandbox(SandboxOptions {
        metadata_schema: Some(schema(false)),
        ..opts(120)
    })
    .await;
    let dir = tempdir();
    std::fs::write(dir.path().join("segsync.toml"), MAPPING).unwrap();
    for stage in ["extract", "transform"] {
        let r = segsync(dir.path(), Some(&sb), &[stage]).await;
        assert_eq!(r.code, 0, "{}", r.all());
    }
    let r = segsync(dir.path(), Some(&sb), &["load"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(": metadata.big_spender: ")
            && r.stderr.contains("allows defined keys only"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("customers.csv:"),
        "names the file and line: {}",
        r.stderr
    );
    assert_eq!(stat(&sb, "customers_received"), 0, "no customer sent");
    // mapping --check says the same before any load.
    let r = segsync(dir.path(), Some(&sb), &["mapping", "--check"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stdout.contains("big_spender: NOT DEFINED"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("lifetime_value: defined as number"),
        "{}",
        r.stdout
    );

    // Once the project defines it, the same load finishes with 0 rejected.
    sb.set_metadata_schema(Some(schema(true)));
    let r = segsync(dir.path(), Some(&sb), &["mapping", "--check"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let r = segsync(dir.path(), Some(&sb), &["load"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains(" 0 failed"), "{}", r.stderr);
    assert!(read_csv(&data(dir.path()).join("load-report.csv")).is_empty());
}

/// A project whose metadata schema refuses some rows: the stages' load
/// refuses the whole file (exit 2) and sends nothing, so `run` sends nothing
/// early either (docs/DESIGN.md, "What `run` may send early"). With
/// `--skip-invalid`, the load sets the refused rows aside and sends the
/// rest: then `run` sends early, and ends as `load --skip-invalid` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sends_nothing_the_schema_would_stop_and_skips_as_the_load_skips() {
    let world = SandboxOptions {
        metadata_schema: Some(schema(false)),
        segment_rps: 150,
        ..opts(240)
    };
    let sb = sandbox(world.clone()).await;
    let dir = tempdir();
    std::fs::write(dir.path().join("segsync.toml"), MAPPING).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("allows defined keys only"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("run: customers are sent after transform (the project's customer metadata schema could refuse a row"),
        "{}",
        r.stderr
    );
    assert_eq!(
        stat(&sb, "customers_received"),
        0,
        "nothing sent: {}",
        r.stderr
    );

    // --skip-invalid: the same as the stages with `load --skip-invalid`.
    let (ran, staged) = (sandbox(world.clone()).await, sandbox(world).await);
    let (run_dir, stages_dir) = (tempdir(), tempdir());
    for d in [&run_dir, &stages_dir] {
        std::fs::write(d.path().join("segsync.toml"), MAPPING).unwrap();
    }
    let r = segsync(
        run_dir.path(),
        Some(&ran),
        &["run", "--skip-invalid", "--json"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let s = stages(stages_dir.path(), &staged, &["--skip-invalid"]).await;
    assert_eq!(s.code, 0, "{}", s.all());
    assert_eq!(held_fields(&ran), held_fields(&staged), "{}", r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    let early = doc["stages"]["load"]["counts"]["sent_early"]
        .as_u64()
        .unwrap();
    assert!(early > 0, "{}", r.stderr);
    let set_aside = read_csv(&data(run_dir.path()).join("load.rejects.csv"));
    assert!(!set_aside.is_empty(), "{}", r.stderr);
    let received = ran.receipts();
    for row in &set_aside {
        assert!(
            !received.contains_key(&row["source_id"]),
            "{row:?} was sent"
        );
    }
}

/// A key the schema requires: "If you do not include required metadata when
/// sending a request, Voucherify rejects it with a validation error" (the
/// load names such new customers before sending). `run` sends none of them
/// early; with `--skip-invalid` it ends as `load --skip-invalid` does. The
/// sandbox counts every customer a bulk request carries, refused or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sends_early_no_new_customer_without_a_key_the_schema_requires() {
    let mut required = schema(true);
    required["properties"]["campaign"]["optional"] = json!(false);
    let world = SandboxOptions {
        metadata_schema: Some(required),
        segment_rps: 150,
        ..opts(240)
    };
    let (ran, staged) = (sandbox(world.clone()).await, sandbox(world).await);
    let (run_dir, stages_dir) = (tempdir(), tempdir());
    for d in [&run_dir, &stages_dir] {
        std::fs::write(d.path().join("segsync.toml"), MAPPING).unwrap();
    }
    let r = segsync(run_dir.path(), Some(&ran), &["run", "--skip-invalid"]).await;
    let rejects =
        std::fs::read_to_string(data(run_dir.path()).join("load.rejects.csv")).unwrap_or_default();
    assert!(
        rejects.contains("(optional: false)"),
        "{rejects}\n{}",
        r.all()
    );
    let s = stages(stages_dir.path(), &staged, &["--skip-invalid"]).await;
    assert_eq!(r.code, s.code, "{}\n--- stages:\n{}", r.all(), s.all());
    assert_eq!(held_fields(&ran), held_fields(&staged), "{}", r.stderr);
    let rows = read_csv(&data(run_dir.path()).join("customers.csv"));
    let lacking: Vec<&str> = (rows.iter())
        .filter(|row| {
            let meta: Value = serde_json::from_str(&row["metadata"]).unwrap_or(json!({}));
            meta.get("campaign").is_none_or(Value::is_null)
        })
        .map(|row| row["source_id"].as_str())
        .collect();
    assert!(
        !lacking.is_empty() && lacking.len() < rows.len(),
        "{lacking:?}"
    );
    let received = ran.receipts();
    assert!(!received.is_empty(), "nothing was sent: {}", r.stderr);
    for sid in lacking {
        assert!(
            !received.contains_key(sid),
            "{sid} was sent without campaign"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mapping_files_are_usage_errors_that_say_where() {
    let dir = tempdir();
    for (text, says) in [
        ("[fields]\nnickname = \"n\"\n", "unknown field `nickname`"),
        (
            "[metadata]\nx = { trait = \"a\", type = \"money\" }\n",
            "unknown type \"money\"",
        ),
        ("[fields]\nname = []\n", "the trait list is empty"),
        ("[oops]\n", "unknown section [oops]"),
        ("[fields]\nname = \"unterminated\n", "line 2"),
    ] {
        std::fs::write(dir.path().join("segsync.toml"), text).unwrap();
        for cmd in [vec!["mapping"], vec!["transform"]] {
            let r = segsync(dir.path(), None, &cmd).await;
            assert_eq!(r.code, 2, "{text:?} {cmd:?}: {}", r.all());
            assert!(
                r.stderr.contains(says) && r.stderr.contains("segsync.toml"),
                "{text:?}: {}",
                r.stderr
            );
        }
    }
    // --mapping names another file; a missing one is an error too.
    let r = segsync(dir.path(), None, &["mapping", "--mapping", "nope.toml"]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nope.toml"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_prints_the_effective_mapping_and_status_sees_it_change() {
    let sb = sandbox(opts(60)).await;
    let dir = tempdir();
    let r = segsync(dir.path(), None, &["mapping"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("types = \"user_id\"") && r.stdout.contains("# name = default"),
        "{}",
        r.stdout
    );
    assert_eq!(segsync(dir.path(), Some(&sb), &["run"]).await.code, 0);
    let st = segsync(dir.path(), None, &["status"]).await;
    assert!(!st.stdout.contains("another mapping"), "{}", st.stdout);
    // A mapping that only adds a metadata key from a trait already read.
    std::fs::write(
        dir.path().join("segsync.toml"),
        "[metadata]\ncity = \"city\"\n",
    )
    .unwrap();
    let r = segsync(dir.path(), None, &["mapping"]).await;
    assert!(r.stdout.contains("city = \"city\""), "{}", r.stdout);
    let st = segsync(dir.path(), None, &["status"]).await;
    assert!(
        st.stdout.contains("written with another mapping"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout.contains("next:      segsync transform"),
        "{}",
        st.stdout
    );
    // A mapping reading a trait the extract never asked for is refused by transform.
    std::fs::write(
        dir.path().join("segsync.toml"),
        "[fields]\nphone = \"mobile\"\n",
    )
    .unwrap();
    let r = segsync(dir.path(), None, &["transform"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("mobile") && r.stderr.contains("extract --fresh"),
        "{}",
        r.stderr
    );
}
