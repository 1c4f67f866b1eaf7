//! What a command leaves for scripts: with `--json`, exactly one JSON
//! document on stdout when it ends (`"schema": 1`, the command, its counts,
//! a failure too), and for every run of a command that writes, one line in
//! the data directory's `runs.ndjson` (the last [`KEEP_RUNS`] runs). The
//! document's shape is `docs/report.schema.json`; a test validates every
//! command's document against it.

use crate::files;
use anyhow::Result;
use serde_json::{json, Map, Value};
use std::io::{BufRead, Write};
use std::path::Path;

pub const SCHEMA: u64 = 1;

/// Runs `runs.ndjson` keeps.
pub const KEEP_RUNS: usize = 100;

/// A document for `command` that ended with exit status `exit`.
pub fn document(command: &str, exit: u8, body: Map<String, Value>) -> Value {
    let mut doc = Map::new();
    doc.insert("schema".into(), json!(SCHEMA));
    doc.insert("command".into(), json!(command));
    doc.insert("ok".into(), json!(exit == 0));
    doc.insert("exit".into(), json!(exit));
    doc.insert("at".into(), json!(crate::state::now()));
    doc.extend(body);
    Value::Object(doc)
}

/// The document of a command that failed: the error, its exit status, and
/// what to run next.
pub fn failure(command: &str, exit: u8, error: &str) -> Value {
    let next = match exit {
        2 => "fix what the error names, then run the same command again",
        _ => "run the same command again: it resumes",
    };
    let mut body = Map::new();
    body.insert("error".into(), json!(error));
    body.insert("next".into(), json!(next));
    document(command, exit, body)
}

/// A path as the document shows it: relative to the data directory when
/// inside it.
pub fn rel(data_dir: &Path, p: &Path) -> String {
    p.strip_prefix(data_dir)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

pub fn extract(s: &crate::extract::Summary, data_dir: &Path, out: &Path) -> Map<String, Value> {
    let mut files = json!({"profiles": rel(data_dir, out)});
    let missing = crate::state::missing(out);
    if s.missing > 0 && missing.exists() {
        files["missing"] = json!(rel(data_dir, &missing));
    }
    obj(json!({
        "counts": {
            "profiles": s.profiles,
            "listed": s.listed,
            "read": s.fetched + s.reused,
            "fetched": s.fetched,
            "reused": s.reused,
            "missing": s.missing,
            "requests": s.requests,
            "answered_429": s.throttled,
            "listing_passes": s.passes,
        },
        "files": files,
    }))
}

pub fn transform(s: &crate::transform::Summary, data_dir: &Path) -> Map<String, Value> {
    let customers = crate::state::customers(data_dir);
    obj(json!({
        "counts": {
            "profiles": s.profiles,
            "customers": s.customers,
            "rejected": s.rejected_total(),
            "warnings": s.warnings,
        },
        "rejected_by_reason": s.rejected,
        "files": {
            "customers": rel(data_dir, &customers),
            "rejected": rel(data_dir, &crate::state::rejected(&customers)),
            "warnings": rel(data_dir, &crate::state::warnings(&customers)),
        },
    }))
}

pub fn load(s: &crate::load::Summary, data_dir: &Path) -> Map<String, Value> {
    let customers = crate::state::customers(data_dir);
    let mut m = obj(json!({
        "counts": {
            "rows": s.rows,
            "invalid": s.invalid,
            "unchanged": s.unchanged,
            "recovered": s.recovered,
            "sent": s.sent,
            "imported": s.imported,
            "confirmed": s.confirmed,
            "failed": s.failed,
            "batches": s.batches,
            "polls": s.polls,
            "calls": s.calls,
            "confirmed_total": s.confirmed_total,
        },
        "files": {
            "ledger": rel(data_dir, &crate::state::ledger(&customers)),
            "report": rel(data_dir, &crate::state::report(&customers)),
        },
    }));
    if let Some(Value::Object(counts)) = m.get_mut("counts") {
        for (name, n) in &s.calls_by {
            counts.insert(format!("calls_{name}"), (*n).into());
        }
    }
    if let (Some(v), Some(Value::Object(counts))) = (&s.verified, m.get_mut("counts")) {
        counts.insert("verified".into(), v.checked.into());
        counts.insert("not_applied".into(), v.not_applied.into());
        counts.insert("changed_after".into(), v.changed_after.into());
        counts.insert("unreadable_fields".into(), v.unreadable.into());
        counts.insert("verify_calls".into(), v.calls.into());
    }
    if let Some((limit, remaining, kind)) = &s.budget {
        m.insert(
            "quota".into(),
            json!({"type": kind, "limit": limit, "remaining": remaining,
                   "share_left": *remaining as f64 / (*limit).max(1) as f64}),
        );
    }
    m
}

pub fn plan(m: &crate::plan::file::Meta, data_dir: &Path) -> Map<String, Value> {
    let c = &m.counts;
    let f = crate::state::Beside::of(&m.customers);
    let (plan, meta, orphans) = (f.plan, f.plan_meta, f.orphans);
    obj(json!({
        "counts": {
            "rows": c.rows,
            "unchanged": c.unchanged,
            "create": c.create,
            "update": c.update,
            "clear": c.clear,
            "changed_elsewhere": c.elsewhere,
            "skipped": c.skipped,
            "pending_clear": c.pending_clear,
            "unknown_updated": c.unknown_updated,
            "orphans": c.orphans,
            "exported": c.exported,
            "calls": m.calls.max(m.export_calls),
        },
        "fields_changed": c.fields,
        "files": {
            "plan": rel(data_dir, &plan),
            "meta": rel(data_dir, &meta),
            "orphans": rel(data_dir, &orphans),
        },
    }))
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Print the document as the one thing on stdout.
pub fn print(doc: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{doc}");
    let _ = out.flush();
}

/// Append the document to `DATA/runs.ndjson`, keeping the last
/// [`KEEP_RUNS`] runs (rewritten aside and renamed when it grows past
/// twice that).
pub fn remember(data_dir: &Path, doc: &Value) -> Result<()> {
    if !data_dir.is_dir() {
        return Ok(());
    }
    let path = crate::state::runs(data_dir);
    let mut f = files::open_append(&path)?;
    f.write_all(format!("{doc}\n").as_bytes())?;
    drop(f);
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(&path)?)
        .lines()
        .collect::<std::io::Result<_>>()?;
    if lines.len() > 2 * KEEP_RUNS {
        let keep = lines[lines.len() - KEEP_RUNS..].join("\n") + "\n";
        files::write_atomic(&path, keep.as_bytes())?;
    }
    Ok(())
}
