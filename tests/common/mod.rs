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

/// What a world's customers went through before and between the runs,
/// for its oracle.
#[derive(Debug, Default)]
pub struct WorldHistory {
    /// The rerun ran with `--clear-removed`.
    pub clear_removed: bool,
    /// Customers another writer made before the first run, by source id.
    pub existing: std::collections::BTreeMap<String, Value>,
    /// Profiles moved during the first run (churn): any of a customer's
    /// profiles may have won then.
    pub churned: bool,
    /// What the last command named, in its load-report.csv, as not held
    /// by Voucherify (it exited 3): a customer refused whole (None), or
    /// fields it confirmed but does not hold. Only these may differ, and
    /// only to a value another writer or segsync set.
    pub named: std::collections::BTreeMap<String, Option<std::collections::BTreeSet<String>>>,
    /// Fields a person set by hand in customers.csv before the rerun (kept
    /// in edits.csv): they win over the source.
    pub hand: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Value>>,
}

/// What a load-report.csv names (see [`WorldHistory::named`]): every
/// customer it lists, whole, or by the fields of its `not_applied` rows
/// ("Voucherify confirmed the change of FIELD but does not hold it").
pub fn named_in_report(
    path: &std::path::Path,
) -> std::collections::BTreeMap<String, Option<std::collections::BTreeSet<String>>> {
    let mut out: std::collections::BTreeMap<String, Option<std::collections::BTreeSet<String>>> =
        Default::default();
    let Ok(mut rdr) = csv::Reader::from_path(path) else {
        return out;
    };
    let header = rdr.headers().expect("load-report.csv's header").clone();
    let col = |n: &str| {
        header
            .iter()
            .position(|h| h == n)
            .unwrap_or_else(|| panic!("load-report.csv has no {n} column"))
    };
    let (sid, key, message) = (col("source_id"), col("key"), col("message"));
    for rec in rdr.records() {
        let rec = rec.expect("a load-report.csv row");
        let field = (rec[key] == *"not_applied")
            .then(|| {
                rec[message]
                    .strip_prefix("Voucherify confirmed the change of ")?
                    .split(' ')
                    .next()
                    .map(str::to_string)
            })
            .flatten();
        let e = out
            .entry(rec[sid].to_string())
            .or_insert_with(|| Some(Default::default()));
        match (field, e.as_mut()) {
            (Some(f), Some(fields)) => {
                fields.insert(f);
            }
            _ => *e = None,
        }
    }
    out
}

/// The values segsync may have set for a customer's fields: the fields of
/// the profile that won its source id when the first run listed the space
/// (at version 0; any profile of it at any version when churn moved them),
/// and of the one that wins now.
fn set_by_segsync(
    data: &segsync::sandbox::data::Dataset,
    versions: &std::collections::HashMap<u64, u32>,
    churned: bool,
) -> std::collections::HashMap<String, std::collections::HashMap<String, Vec<Value>>> {
    let none = std::collections::HashMap::new();
    let mut out: std::collections::HashMap<String, std::collections::HashMap<String, Vec<Value>>> =
        Default::default();
    let mut add = |e: &segsync::sandbox::data::ExpectedCustomer| {
        let h = out.entry(e.source_id.clone()).or_default();
        for (f, val) in flat_expected(e) {
            h.entry(f).or_default().push(val);
        }
    };
    for i in 0..data.n {
        let last = versions.get(&i).copied().unwrap_or(0);
        let alone = data.user_id(i).is_some()
            && ![i.checked_sub(1), i.checked_add(1)]
                .into_iter()
                .flatten()
                .any(|o| o < data.n && data.user_id(o) == data.user_id(i));
        if churned {
            for v in 0..=last {
                if let Some(e) = data.profile(i, v).expected {
                    add(&e);
                }
            }
            continue;
        }
        if alone || data.wins_shared(i, &none) {
            if let Some(e) = data.profile(i, 0).expected {
                add(&e);
            }
        }
        if alone || data.wins_shared(i, versions) {
            if let Some(e) = data.profile(i, last).expected {
                add(&e);
            }
        }
    }
    out
}

/// The strict oracle of a world's end state, from the world's own history
/// (the generator's profiles at the versions they passed through, and what
/// another writer made), never from segsync's files:
/// - every field the source has equals the source's value;
/// - a field the source does not give holds another writer's value, or,
///   when segsync set it (from the profile that won its source id then),
///   segsync's value (without `--clear-removed`) or nothing (with it); a
///   value from nowhere, from a beaten profile, or another writer's value
///   erased without `--clear-removed`, fails;
/// - a customer Voucherify refuses (an undeliverable email) holds what
///   another writer made, or is not there.
pub fn assert_world_end_state(
    sb: &Sandbox,
    versions: &std::collections::HashMap<u64, u32>,
    world: &WorldHistory,
) {
    let data = sb.dataset();
    let mut expected = data.expected_customers(versions);
    let refused: std::collections::BTreeSet<String> = (expected.iter())
        .filter(|(_, e)| e.email.as_deref().is_some_and(|m| m.ends_with(".invalid")))
        .map(|(sid, _)| sid.clone())
        .collect();
    expected.retain(|sid, _| !refused.contains(sid));
    let held = sb.customers();
    assert_eq!(sb.stats()["customers_without_source_id"], 0);
    let set = set_by_segsync(data, versions, world.churned);
    for (sid, c) in &held {
        if !expected.contains_key(sid) && !refused.contains(sid) {
            let made = world.existing.get(sid).map(flat_held);
            assert_eq!(
                Some(flat_held(c)),
                made,
                "{sid}: held, but no profile should make it"
            );
        }
    }
    for sid in &refused {
        // Voucherify refuses the row that wins now as a whole: the customer
        // holds what another writer made, or what an earlier winning row
        // set, field by field (a refused request clears nothing).
        let got = held.get(sid).map(flat_held).unwrap_or_default();
        let made = world.existing.get(sid).map(flat_held).unwrap_or_default();
        let ours = set.get(sid);
        others_held(sid, &Default::default(), &got, &made, ours, false);
    }
    for (sid, e) in &expected {
        let mut made = world.existing.get(sid).map(flat_held).unwrap_or_default();
        let (mut want, mut got) = (flat_expected(e), held.get(sid).map(flat_held));
        want.extend(
            world
                .hand
                .get(sid)
                .into_iter()
                .flatten()
                .map(|(f, v)| (f.clone(), v.clone())),
        );
        match world.named.get(sid) {
            // Refused whole, and said so: like an undeliverable email's.
            Some(None) => {
                let got = got.unwrap_or_default();
                others_held(sid, &Default::default(), &got, &made, set.get(sid), false);
                continue;
            }
            // Fields confirmed but not held, and said so: each holds what
            // another writer or segsync set, or nothing.
            Some(Some(fields)) => {
                let g = got.get_or_insert_with(Default::default);
                let (mut h, mut theirs) = (
                    std::collections::BTreeMap::new(),
                    std::collections::BTreeMap::new(),
                );
                for f in fields {
                    want.remove(f);
                    h.extend(g.remove(f).map(|v| (f.clone(), v)));
                    theirs.extend(made.remove(f).map(|v| (f.clone(), v)));
                }
                others_held(sid, &Default::default(), &h, &theirs, set.get(sid), false);
            }
            None => {}
        }
        let got = got.unwrap_or_else(|| panic!("customer {sid} missing"));
        for (f, v) in &want {
            assert_eq!(got.get(f), Some(v), "{sid}: {f}");
        }
        others_held(sid, &want, &got, &made, set.get(sid), world.clear_removed);
    }
}

/// The fields of one customer the source does not give (`want` lacks):
/// each holds another writer's value (`made`), or, where segsync set it
/// (`ours`, by field), segsync's value (without `clear_removed`) or
/// nothing (with it).
fn others_held(
    sid: &str,
    want: &std::collections::BTreeMap<String, Value>,
    got: &std::collections::BTreeMap<String, Value>,
    made: &std::collections::BTreeMap<String, Value>,
    ours: Option<&std::collections::HashMap<String, Vec<Value>>>,
    clear_removed: bool,
) {
    let others: std::collections::BTreeSet<&String> = (got.keys().chain(made.keys()))
        .filter(|f| !want.contains_key(*f))
        .collect();
    for f in others {
        let theirs = made.get(f);
        let ours = ours.and_then(|h| h.get(f));
        let by_us = ours.is_some_and(|v| !v.is_empty());
        match got.get(f) {
            Some(v) => {
                assert!(
                    !v.is_null() && v != &Value::String(String::new()),
                    "{sid}: {f} sent empty"
                );
                let ok =
                    Some(v) == theirs || (!clear_removed && ours.is_some_and(|o| o.contains(v)));
                assert!(
                    ok,
                    "{sid}: {f} holds {v}, which the source no longer gives: not another writer's ({theirs:?}) nor, {}, a value segsync set ({ours:?})",
                    if clear_removed { "after --clear-removed" } else { "without --clear-removed" }
                );
            }
            None => assert!(
                theirs.is_none() || (clear_removed && by_us),
                "{sid}: {f}: another writer's {theirs:?} was erased, though {}",
                if by_us {
                    "--clear-removed was not given"
                } else {
                    "segsync never set it"
                }
            ),
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

/// What Voucherify holds, field by field, without what it stamps itself
/// (`id`, `object`, `created_at`, `updated_at`): two projects that were sent
/// the same changes hold the same.
pub fn held_fields(sb: &Sandbox) -> std::collections::BTreeMap<String, Value> {
    sb.customers()
        .into_iter()
        .map(|(sid, mut c)| {
            if let Some(o) = c.as_object_mut() {
                for k in ["id", "object", "created_at", "updated_at"] {
                    o.remove(k);
                }
            }
            (sid, c)
        })
        .collect()
}

/// Where two projects differ: the first few source ids and their fields.
pub fn differences(
    a: &std::collections::BTreeMap<String, Value>,
    b: &std::collections::BTreeMap<String, Value>,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .take(8)
        .map(|k| format!("{k}: {:?} / {:?}", a.get(k), b.get(k)))
        .collect()
}

/// The stages one after another in `dir` (extract, transform, then load
/// with `load_flags`), as a person runs them; extract and transform must
/// succeed. The load's run.
pub async fn stages(dir: &Path, sb: &Sandbox, load_flags: &[&str]) -> Run {
    for stage in ["extract", "transform"] {
        let r = segsync(dir, Some(sb), &[stage]).await;
        assert_eq!(r.code, 0, "{stage}: {}", r.all());
    }
    let mut args = vec!["load"];
    args.extend_from_slice(load_flags);
    segsync(dir, Some(sb), &args).await
}
