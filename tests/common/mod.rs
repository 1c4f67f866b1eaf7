//! Shared helpers for the end-to-end tests: an in-process sandbox on a free
//! loopback port, and the real `segsync` binary run against it.
#![allow(dead_code)]

pub mod unload;

use segsync::sandbox::{Sandbox, SandboxOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

pub const BIN: &str = env!("CARGO_BIN_EXE_segsync");

/// Variables segsync reads, cleared so the developer's environment cannot leak in.
const OUR_VARS: &[&str] = &[
    "SEGMENT_ACCESS_TOKEN",
    "SEGMENT_SPACE_ID",
    "SPACE_ID",
    "VOUCHERIFY_APPLICATION_ID",
    "APPLICATION_ID",
    "VOUCHERIFY_SECRET_KEY",
    "SECRET_KEY",
    "SEGMENT_API_URL",
    "VOUCHERIFY_API_URL",
    "IDENTIFIER_SAVED_AS_SOURCE_ID",
    "SEGSYNC_DATA_DIR",
    "SEGSYNC_MAPPING",
    "SEGSYNC_SLICE_BYTES",
    "SEGSYNC_REDUCE_BYTES",
];

pub fn opts(profiles: u64) -> SandboxOptions {
    SandboxOptions {
        profiles,
        segment_rps: 0,
        voucherify_rpm: 0,
        processing_ms: 50,
        ..Default::default()
    }
}

pub async fn sandbox(o: SandboxOptions) -> Sandbox {
    Sandbox::start(o).await.expect("sandbox starts")
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A command for the real binary in `dir`, pointed at `sb` (if any).
pub fn command(dir: &Path, sb: Option<&Sandbox>, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.current_dir(dir).args(args).kill_on_drop(true);
    for v in OUR_VARS {
        c.env_remove(v);
    }
    // Every plan keeps the ledger's index, however little it read (1 MB
    // otherwise): the next plan reads the index and the lines since, so
    // every test of plans runs that path too.
    c.env("SEGSYNC_LEDGER_INDEX_BYTES", "0");
    if let Some(sb) = sb {
        for (k, v) in sb.env() {
            c.env(k, v);
        }
    }
    c
}

pub async fn segsync(dir: &Path, sb: Option<&Sandbox>, args: &[&str]) -> Run {
    command(dir, sb, args)
        .output()
        .await
        .expect("segsync runs")
        .into()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A copy of `fixtures/KIND/NAME` in a temporary directory, so that what a
/// command writes beside its input (the runs journal, the lock) stays out
/// of the repository.
#[allow(dead_code)]
pub fn fixture_copy(kind: &str, name: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // A directory per copy: tests running at once never share a file.
    let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = DIR.get_or_init(tempdir).path().join(format!("{kind}-{n}"));
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let to = dir.join(name);
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(kind)
        .join(name);
    std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    to
}

pub fn data(dir: &Path) -> PathBuf {
    dir.join("data")
}

pub fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// The `source_id`s a ledger shows confirmed, in ledger order.
pub fn confirmed_in_ledger(ledger: &Path) -> Vec<String> {
    read_lines(ledger)
        .iter()
        .filter(|l| l["event"] == "confirmed")
        .flat_map(|l| {
            l["done"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["source_id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// GET a Voucherify endpoint of `sb` with its application keys, as JSON.
pub async fn voucherify_get(sb: &Sandbox, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", sb.url()))
        .header("X-App-Id", &sb.creds.app_id)
        .header("X-App-Token", &sb.creds.secret_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Rows of a CSV as maps column → cell.
pub fn read_csv(path: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A counter of the sandbox's stats by its dotted path. A counter that does
/// not exist is an error, never a zero: a renamed counter must fail the test.
pub fn stat(sb: &Sandbox, path: &str) -> u64 {
    let s = sb.stats();
    let mut v = &s;
    for part in path.split('.') {
        v = v
            .get(part)
            .unwrap_or_else(|| panic!("the sandbox has no counter {path:?}: {s}"));
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a count: {v}"))
}

/// The sandbox's names of the endpoints it counts requests of.
const ENDPOINTS: &[&str] = &[
    "segment.list_profiles",
    "segment.traits",
    "segment.external_ids",
    "voucherify.customers_bulk_async",
    "voucherify.customers_import_csv",
    "voucherify.customers_list",
    "voucherify.exports",
    "voucherify.exports_created",
    "voucherify.export_download",
    "voucherify.async_action",
    "voucherify.metadata_schemas",
];

/// Requests an endpoint received; an endpoint the sandbox has no name for
/// is an error (none yet is zero, as the sandbox counts only what came).
pub fn requests(sb: &Sandbox, endpoint: &str) -> u64 {
    assert!(
        ENDPOINTS.contains(&endpoint),
        "the sandbox counts no endpoint {endpoint:?}"
    );
    sb.stats()["requests"][endpoint].as_u64().unwrap_or(0)
}

/// The sandbox's timeline of async actions (`GET /_sandbox/actions`): each
/// with when it was created, started and finished and when a client read it.
pub async fn action_timeline(sb: &Sandbox) -> serde_json::Value {
    reqwest::get(format!("{}/_sandbox/actions", sb.url()))
        .await
        .expect("the sandbox answers /_sandbox/actions")
        .json()
        .await
        .expect("the timeline is JSON")
}

/// How many reads extract says it hedged (its summary line).
pub fn hedged(stderr: &str) -> u64 {
    let at = stderr
        .find(" of them hedged")
        .unwrap_or_else(|| panic!("no hedge count in: {stderr}"));
    let n = stderr[..at].rsplit(' ').next().unwrap_or("");
    n.parse()
        .unwrap_or_else(|_| panic!("hedge count {n:?} in: {stderr}"))
}

/// Reads of `endpoint` (`segment.traits` or `segment.external_ids`) that
/// asked what the sandbox had answered before (the same path and query): a
/// retry or a hedge, never a first read.
pub fn reads_again(sb: &Sandbox, endpoint: &str) -> u64 {
    sb.stats()["segment_reads_again"][endpoint]
        .as_u64()
        .unwrap_or_else(|| panic!("the sandbox counts no reads of {endpoint:?} asked again"))
}

/// The sandbox holds exactly the customers the generator meant, field by field.
pub fn assert_end_state(sb: &Sandbox, versions: &std::collections::HashMap<u64, u32>) {
    assert_end_state_with(sb, versions, false)
}

/// As [`assert_end_state`]; with `kept`, a field the generator now leaves
/// empty may hold a value an earlier version sent (an upsert never clears a
/// field: after churn, a duplicate `source_id`'s other profile may win).
pub fn assert_end_state_with(
    sb: &Sandbox,
    versions: &std::collections::HashMap<u64, u32>,
    kept: bool,
) {
    let expected = sb.dataset().expected_customers(versions);
    let held = sb.customers();
    assert_eq!(held.len(), expected.len(), "customer count");
    assert_eq!(sb.stats()["customers_without_source_id"], 0);
    for (sid, e) in &expected {
        let c = held
            .get(sid)
            .unwrap_or_else(|| panic!("customer {sid} missing"));
        let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
        let a = |k: &str| {
            c.get("address")
                .and_then(|a| a.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let same = |held: Option<String>, want: &Option<String>, what: &str| {
            if !(kept && want.is_none()) {
                assert_eq!(&held, want, "{sid}: {what}");
            }
        };
        same(s("name"), &e.name, "name");
        same(s("email"), &e.email, "email");
        same(s("phone"), &e.phone, "phone");
        same(s("birthdate"), &e.birthdate, "birthdate");
        same(s("description"), &e.description, "description");
        same(a("line_1"), &e.address_line_1, "address.line_1");
        same(a("line_2"), &e.address_line_2, "address.line_2");
        same(a("city"), &e.address_city, "address.city");
        same(a("state"), &e.address_state, "address.state");
        same(
            a("postal_code"),
            &e.address_postal_code,
            "address.postal_code",
        );
        same(a("country"), &e.address_country, "address.country");
        match (kept, c.get("metadata"), &e.metadata) {
            (true, Some(Value::Object(held)), Some(Value::Object(want))) => {
                for (k, v) in want {
                    assert_eq!(held.get(k), Some(v), "{sid}: metadata.{k}");
                }
            }
            (true, _, None) => {}
            (_, held, want) => assert_eq!(held.cloned(), want.clone(), "{sid}: metadata"),
        }
        // nothing sent empty or null
        for (k, v) in c.as_object().unwrap() {
            assert!(
                !v.is_null() && v != &serde_json::json!(""),
                "{sid}: {k} sent empty"
            );
        }
    }
}

/// A customer as flat fields (`name`, `address.city`, `metadata.tier`).
fn flat_expected(
    e: &segsync::sandbox::data::ExpectedCustomer,
) -> std::collections::BTreeMap<String, Value> {
    let mut out = std::collections::BTreeMap::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            out.insert(k.to_string(), Value::String(v.clone()));
        }
    };
    put("name", &e.name);
    put("email", &e.email);
    put("phone", &e.phone);
    put("birthdate", &e.birthdate);
    put("description", &e.description);
    put("address.line_1", &e.address_line_1);
    put("address.line_2", &e.address_line_2);
    put("address.city", &e.address_city);
    put("address.state", &e.address_state);
    put("address.postal_code", &e.address_postal_code);
    put("address.country", &e.address_country);
    if let Some(Value::Object(m)) = &e.metadata {
        for (k, v) in m {
            out.insert(format!("metadata.{k}"), v.clone());
        }
    }
    out
}

fn flat_held(c: &Value) -> std::collections::BTreeMap<String, Value> {
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in c.as_object().into_iter().flatten() {
        match (k.as_str(), v) {
            ("source_id" | "created_at" | "updated_at" | "id" | "object", _) => {}
            ("address" | "metadata", Value::Object(inner)) => {
                for (ik, iv) in inner {
                    out.insert(format!("{k}.{ik}"), iv.clone());
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// The strict oracle of a world's end state, from the world's own history
/// (the generator's profiles at every version they passed through), never
/// from segsync's files:
/// - every field the source has equals the source's value;
/// - with `--clear-removed`, nothing else is held: the customer equals the
///   source exactly;
/// - without it, a field the source emptied may hold only a value that one
///   of the customer's own profiles gave that field at an earlier version
///   (an upsert never clears, and segsync clears only when told); a value
///   from nowhere, or from another customer's profile, fails.
pub fn assert_world_end_state(
    sb: &Sandbox,
    versions: &std::collections::HashMap<u64, u32>,
    clear_removed: bool,
) {
    let data = sb.dataset();
    let expected = data.expected_customers(versions);
    let held = sb.customers();
    assert_eq!(held.len(), expected.len(), "customer count");
    assert_eq!(sb.stats()["customers_without_source_id"], 0);
    // Every value each field of each customer ever had in the source.
    let mut history: std::collections::HashMap<
        String,
        std::collections::HashMap<String, Vec<Value>>,
    > = std::collections::HashMap::new();
    for i in 0..data.n {
        for v in 0..=versions.get(&i).copied().unwrap_or(0) {
            let Some(e) = data.profile(i, v).expected else {
                continue;
            };
            let h = history.entry(e.source_id.clone()).or_default();
            for (f, val) in flat_expected(&e) {
                h.entry(f).or_default().push(val);
            }
        }
    }
    for (sid, e) in &expected {
        let c = held
            .get(sid)
            .unwrap_or_else(|| panic!("customer {sid} missing"));
        let (want, got) = (flat_expected(e), flat_held(c));
        for (f, v) in &want {
            assert_eq!(got.get(f), Some(v), "{sid}: {f}");
        }
        for (f, v) in got.iter().filter(|(f, _)| !want.contains_key(*f)) {
            assert!(
                !v.is_null() && v != &Value::String(String::new()),
                "{sid}: {f} sent empty"
            );
            assert!(
                !clear_removed,
                "{sid}: {f} holds {v}, which the source emptied, after a run with --clear-removed"
            );
            let had = history.get(sid).and_then(|h| h.get(f));
            assert!(
                had.is_some_and(|vals| vals.contains(v)),
                "{sid}: {f} holds {v}, which none of its profiles ever gave it (history: {had:?})"
            );
        }
    }
}

/// The traits the contract's default mapping reads (docs/DESIGN.md, "The
/// mapping"), written out here so the oracle does not reuse the crate's list.
pub const DEFAULT_MAPPING_TRAITS: &[&str] = &[
    "name",
    "firstName",
    "first_name",
    "lastName",
    "last_name",
    "email",
    "phone",
    "description",
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
];

/// What a default extract (`include=`, ids first) keeps of a generated
/// profile: the external ids of the `source_id` types, and, only when there
/// is one, the traits the mapping reads.
pub fn expected_extract(
    p: &segsync::sandbox::data::GeneratedProfile,
    types: &[&str],
) -> (serde_json::Map<String, Value>, Vec<Value>) {
    let ids: Vec<Value> = p
        .external_ids
        .iter()
        .filter(|e| types.iter().any(|t| e["type"] == *t))
        .cloned()
        .collect();
    let traits = if ids.is_empty() {
        serde_json::Map::new()
    } else {
        p.traits
            .iter()
            .filter(|(k, _)| DEFAULT_MAPPING_TRAITS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    (traits, ids)
}

/// Detail requests a clean default extract of the whole space needs: one
/// page of `user_id` ids per profile, and one page of mapped traits per
/// profile that has a `user_id`.
pub fn minimal_detail_requests(ds: &segsync::sandbox::data::Dataset) -> u64 {
    (0..ds.n)
        .map(|i| {
            let (_, ids) = expected_extract(&ds.profile(i, 0), &["user_id"]);
            1 + u64::from(!ids.is_empty())
        })
        .sum()
}

/// Write `content` as a customers CSV in `dir` and `segsync load --in` it.
pub async fn load_csv(dir: &Path, sb: &Sandbox, content: &str, extra: &[&str]) -> (PathBuf, Run) {
    let csv = dir.join("customers-by-hand.csv");
    std::fs::write(&csv, content).expect("write csv");
    let mut args = vec!["load", "--in", csv.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let r = segsync(dir, Some(sb), &args).await;
    (csv, r)
}

/// A hand-written customers CSV of `n` customers `{prefix}0000`…: a
/// `source_id`, a name and an email each.
pub fn simple_customers(prefix: &str, n: usize) -> String {
    let mut s = String::from("source_id,name,email\n");
    for i in 0..n {
        s.push_str(&format!(
            "{prefix}{i:04},Name {i},{prefix}{i}@example.com\n"
        ));
    }
    s
}

/// docs/report.schema.json, compiled by an independent implementation.
pub fn report_schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.schema.json"),
    )
    .expect("docs/report.schema.json");
    let v: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&v).expect("a valid JSON Schema")
}

/// stdout is exactly one JSON document, and the schema accepts it.
pub fn one_document(r: &Run, schema: &jsonschema::Validator) -> Value {
    let lines: Vec<&str> = r.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "one document on stdout, nothing else: {}",
        r.all()
    );
    let doc: Value = serde_json::from_str(lines[0]).expect("stdout is JSON");
    let errors: Vec<String> = schema.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{doc:#}");
    assert_eq!(doc["exit"], r.code, "the document's exit is the process's");
    doc
}
