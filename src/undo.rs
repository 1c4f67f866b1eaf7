//! `segsync undo`: restore, field by field, what the last load (or `run`)
//! changed in Voucherify, from what Voucherify held before it.
//!
//! Every load that sends keeps, before its first batch, a copy of the
//! export it decided by (`load.undo.before.csv`) and where its ledger lines
//! begin (`load.undo.json`); `run` keeps the export it sends early by. Undo
//! reads the customers that load confirmed (the ledger after that point),
//! exports what Voucherify holds now (a delta of the kept export), and for
//! every field the load sent or cleared:
//! - holds what it held before: nothing to do;
//! - changed after the load's confirmation, by Voucherify's clock, to a
//!   value the load did not send: another writer's, kept and listed;
//! - else restored to the value before (a clear, when there was none).
//!
//! Customers the load created are listed, not deleted. `address` is sent
//! whole (every key, before's value or null), as a plan sends it; metadata
//! is not restored (the export shows only the schema's keys, and a nested
//! object may be replaced whole): listed. `undo.plan.csv` holds what undo
//! does; `--dry-run` stops there. Sent as any load sends (the ledger
//! records it), then read back from a new export: a field Voucherify does
//! not hold as restored is named in `load-report.csv` (exit 3).

use crate::api::voucherify::VoucherifyClient;
use crate::error::UsageError;
use crate::export::{self, Exported};
use crate::files::{self, AtomicFile};
use crate::load::confirm::{send_batch, Session};
use crate::load::kept_before::{before_path, record_path, Record};
use crate::load::report::ReportRow;
use crate::plan::held::{Held, HeldFile};
use crate::spreadsheet::batch::{Batch, Prepared};
use crate::state::ledger::{LedgerEvent, LedgerWriter};
use crate::state::{self, Beside};
use crate::ui;
use anyhow::{Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The customers CSV the load sent [default: DATA_DIR/customers.csv]
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Write undo.plan.csv and say what undo would do; send nothing
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Seconds to wait for each of Voucherify's customer exports
    #[arg(long = "export-timeout", default_value_t = crate::load::DEFAULT_EXPORT_TIMEOUT, value_name = "SECONDS")]
    pub export_timeout: u64,
    #[command(flatten)]
    pub voucherify: crate::config::VoucherifyArgs,
}

/// One confirmed customer of the load.
struct Sent {
    /// The content confirmed (the row's key), to tell its values.
    hash: String,
    fields: Vec<String>,
    cleared: Vec<String>,
    /// Voucherify's time of the confirmation (ms).
    vf_at: Option<i64>,
}

/// The customers `target`'s ledger confirmed after byte `from`, the last
/// confirmation of each.
fn confirmed_after(ledger: &Path, target: &str, from: u64) -> Result<BTreeMap<String, Sent>> {
    let mut f =
        std::fs::File::open(ledger).with_context(|| format!("cannot read {}", ledger.display()))?;
    f.seek(SeekFrom::Start(from))?;
    let mut out = BTreeMap::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        let Ok(LedgerEvent::Confirmed {
            target: t,
            done,
            vf_at,
            ..
        }) = serde_json::from_str(&line)
        else {
            continue;
        };
        if t != target {
            continue;
        }
        let vf_at = vf_at
            .as_deref()
            .and_then(crate::dates::parse_timestamp)
            .map(|t| t.as_millisecond());
        for c in done {
            let sent = Sent {
                hash: c.hash,
                fields: c.fields.unwrap_or_default(),
                cleared: c.cleared.unwrap_or_default(),
                vf_at,
            };
            out.insert(c.source_id, sent);
        }
    }
    Ok(out)
}

/// What undo does for one customer.
#[derive(Default)]
struct Step {
    /// The request that restores it (None: nothing to send).
    body: Option<Map<String, Value>>,
    /// Fields restored: (field, now, before).
    restored: Vec<(String, String, String)>,
    /// Fields another writer changed after the load: kept.
    kept: Vec<String>,
    /// Fields undo cannot restore (metadata).
    unrestorable: Vec<String>,
    /// The load created it (the export before did not show it).
    created: bool,
}

/// The standard field's cell in a held customer ("" when none).
fn cell(h: Option<&Held>, i: usize) -> String {
    h.and_then(|h| h.standard[i].clone()).unwrap_or_default()
}

/// A request's value of `path` (`name`, `address.city`) as text.
fn value_at(request: &Map<String, Value>, path: &str) -> Option<String> {
    let v = match path.split_once('.') {
        Some((outer, inner)) => request.get(outer)?.get(inner)?,
        None => request.get(path)?,
    };
    Some(match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// What to do for `sid`, from what it held before and holds now. `ours`:
/// the request the load sent, when customers.csv still gives it.
fn step(
    sent: &Sent,
    before: Option<&Held>,
    now: Option<&Held>,
    ours: Option<&Map<String, Value>>,
) -> Step {
    let mut s = Step {
        created: before.is_none(),
        ..Default::default()
    };
    if s.created {
        return s;
    }
    let changed_after = match (now.and_then(|h| h.updated_at), sent.vf_at) {
        (Some(u), Some(at)) => u.as_millisecond() > at,
        _ => false,
    };
    let mut body = Map::new();
    let mut address = false;
    for f in sent.fields.iter().chain(&sent.cleared) {
        let Some((i, field)) = crate::fields::by_path(f) else {
            s.unrestorable.push(f.clone());
            continue;
        };
        let (was, is) = (cell(before, i), cell(now, i));
        if was == is {
            continue;
        }
        // Changed since the load: a field that still holds what the load
        // sent is the load's to undo; any other is the later writer's.
        let still_ours = ours.and_then(|o| value_at(o, f)).is_some_and(|v| v == is);
        if changed_after && !still_ours {
            s.kept.push(f.clone());
            continue;
        }
        s.restored.push((f.clone(), is, was.clone()));
        match field.path.strip_prefix("address.") {
            Some(_) => address = true,
            None => {
                body.insert(
                    f.clone(),
                    if was.is_empty() {
                        Value::Null
                    } else {
                        json!(was)
                    },
                );
            }
        }
    }
    if address {
        // Whole, as a plan sends a nested object: every key, before's value
        // or null.
        let mut a = Map::new();
        for (i, field) in crate::fields::STANDARD.iter().enumerate() {
            if let Some(key) = field.path.strip_prefix("address.") {
                let was = cell(before, i);
                a.insert(
                    key.to_string(),
                    if was.is_empty() {
                        Value::Null
                    } else {
                        json!(was)
                    },
                );
            }
        }
        body.insert("address".into(), Value::Object(a));
    }
    if !body.is_empty() {
        s.body = Some(body);
    }
    s
}

pub async fn run(args: &Args, data_dir: &Path) -> Result<u8> {
    let input = args
        .input
        .clone()
        .unwrap_or_else(|| state::customers(data_dir));
    let files = Beside::of(&input);
    let cfg = args.voucherify.resolve()?;
    let target = crate::config::project_target(&cfg.api_url, &cfg.app_id);
    let record: Record = std::fs::read(record_path(&files))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| UsageError::new(format!(
            "{}: no load here kept what Voucherify held before it (a load keeps it before its first batch; one by --from-ledger cannot): nothing to undo",
            record_path(&files).display()
        )))?;
    if record.target != target {
        return Err(UsageError::new(format!("the last load here went to another Voucherify project ({}): undo runs against that one", record.target)).into());
    }
    if let Some(at) = &record.undone_at {
        return Err(UsageError::new(format!(
            "the last load here (at {}) was undone already, at {at}",
            record.at
        ))
        .into());
    }
    let sent = confirmed_after(&files.ledger, &target, record.ledger_from)?;
    ui::info(format!(
        "undo: the load of {} confirmed {} customers",
        record.at,
        sent.len()
    ));
    let client = VoucherifyClient::new(cfg, settings())?;
    let schema = Default::default();
    let before = HeldFile::open(&before_path(&files), &schema)?;
    let now = held_now(&client, &files, &target, args).await?;
    let mut ours: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    crate::load::verify::read_rows(&input, |sid, request, key| {
        let confirmed = sent
            .get(sid)
            .and_then(|s| crate::state::ledger::content_key(&s.hash));
        if confirmed == Some(key) {
            ours.insert(sid.to_string(), request.clone());
        }
        Ok(())
    })?;
    let mut steps = BTreeMap::new();
    for (sid, s) in &sent {
        let (b, n) = (before.get(sid)?, now.get(sid)?);
        steps.insert(sid.clone(), step(s, b.as_ref(), n.as_ref(), ours.get(sid)));
    }
    write_plan(&files.dir.join("undo.plan.csv"), &steps)?;
    say(&steps, &files);
    if args.dry_run {
        ui::info("undo --dry-run: nothing was sent");
        return Ok(0);
    }
    let failed = send(client, &files, &target, &steps, args).await?;
    let r = Record {
        undone_at: Some(state::now()),
        ..record
    };
    files::write_atomic(&record_path(&files), &serde_json::to_vec_pretty(&r)?)?;
    ui::info("undo: the next load sends customers.csv's rows again where they differ: correct the source (or keep hand edits) first");
    Ok(if failed > 0 { 3 } else { 0 })
}

fn settings() -> crate::api::http::HttpSettings {
    crate::api::http::HttpSettings {
        concurrency: 2,
        rate_period: Duration::from_secs(60),
        burst: Some(1),
        timeout: Duration::from_secs(120),
        ..Default::default()
    }
}

/// What Voucherify holds now: a delta of the kept export (or a full one).
async fn held_now(
    client: &VoucherifyClient,
    files: &Beside,
    target: &str,
    args: &Args,
) -> Result<HeldFile> {
    let policy = export::Policy {
        ledger: Some(&files.ledger),
        target,
        full_every: Duration::from_secs(7 * 86_400),
        force_full: false,
        created_too: false,
        reuse: None,
    };
    let fields = crate::fields::export_fields();
    let deadline = Duration::from_secs(args.export_timeout);
    let (out, _, _) = export::export_held(client, files, &fields, deadline, &policy).await?;
    let path = match out {
        Exported::File(p) => p,
        Exported::Empty => files.export.clone(),
        Exported::Unknown(why) => {
            anyhow::bail!("undo: what Voucherify holds cannot be read ({why}); nothing was sent")
        }
    };
    HeldFile::open(&path, &Default::default())
}

fn write_plan(path: &Path, steps: &BTreeMap<String, Step>) -> Result<()> {
    let mut w = csv::Writer::from_writer(AtomicFile::create(path)?);
    w.write_record([
        "source_id",
        "action",
        "fields",
        "now",
        "before",
        "kept",
        "not_restored",
        "send",
    ])?;
    for (sid, s) in steps {
        let action = match (s.created, &s.body, s.kept.is_empty()) {
            (true, _, _) => "created",
            (_, Some(_), _) => "restore",
            (_, None, false) => "keep",
            _ => continue,
        };
        let join = |f: fn(&(String, String, String)) -> &String| {
            s.restored
                .iter()
                .map(f)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        };
        w.write_record([
            crate::records::guard_cell(sid).as_ref(),
            action,
            &join(|r| &r.0),
            &crate::records::guard_cell(&join(|r| &r.1)),
            &crate::records::guard_cell(&join(|r| &r.2)),
            &s.kept.join("; "),
            &s.unrestorable.join("; "),
            &s.body
                .as_ref()
                .map(|b| Value::Object(b.clone()).to_string())
                .unwrap_or_default(),
        ])?;
    }
    w.into_inner()
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error()))?
        .commit()
}

fn say(steps: &BTreeMap<String, Step>, files: &Beside) {
    let n = |f: &dyn Fn(&Step) -> bool| steps.values().filter(|s| f(s)).count();
    let created: Vec<&String> = steps
        .iter()
        .filter(|(_, s)| s.created)
        .map(|(k, _)| k)
        .collect();
    ui::info(format!(
        "undo: {} customers to restore ({} fields), {} with fields another writer changed since (kept), {} created by the load (listed, not deleted), {} with metadata undo does not restore; every line in {}",
        n(&|s| s.body.is_some()),
        steps.values().map(|s| s.restored.len()).sum::<usize>(),
        n(&|s| !s.kept.is_empty()),
        created.len(),
        n(&|s| !s.unrestorable.is_empty()),
        files.dir.join("undo.plan.csv").display()
    ));
    if !created.is_empty() {
        let some: Vec<&str> = created.iter().take(5).map(|s| s.as_str()).collect();
        ui::warn(format!(
            "undo: the load created {} customers (e.g. {}): undo does not delete; delete them in Voucherify if they should go",
            created.len(),
            some.join(", ")
        ));
    }
}

/// Send the restoring requests as a load sends (the ledger records them),
/// then read them back. Returns the fields not held as restored.
async fn send(
    client: VoucherifyClient,
    files: &Beside,
    target: &str,
    steps: &BTreeMap<String, Step>,
    args: &Args,
) -> Result<u64> {
    let session = Session::new(
        client,
        LedgerWriter::open(&files.ledger, target)?,
        (
            Duration::from_secs(crate::load::DEFAULT_POLL_TIMEOUT),
            Duration::from_secs(crate::load::DEFAULT_QUEUE_TIMEOUT),
        ),
    );
    let mut prepared: Vec<Prepared> = Vec::new();
    for (sid, s) in steps {
        let Some(body) = &s.body else { continue };
        let mut b = body.clone();
        b.insert("source_id".into(), json!(sid));
        let bytes = serde_json::to_vec(&Value::Object(b))?;
        let key = crate::spreadsheet::batch::content_key_of(&bytes);
        prepared.push(Prepared {
            source_id: sid.clone(),
            line: 0,
            hash: format!("{key:032x}"),
            body: bytes,
            segment_id: None,
            // segsync sets nothing by undo: no later clear may take a
            // restored value for its own.
            fields: Vec::new(),
            cleared: Vec::new(),
        });
    }
    let progress = ui::Progress::new("undo", "customers", Some(prepared.len() as u64));
    while !prepared.is_empty() {
        let rest = prepared.split_off(prepared.len().min(crate::load::DEFAULT_BATCH_SIZE as usize));
        let batch = Batch {
            customers: std::mem::replace(&mut prepared, rest),
        };
        send_batch(&session, batch, &progress).await?;
    }
    progress.finish();
    let now = held_now(&session.client, files, target, args).await?;
    let mut rows: Vec<ReportRow> = session.report.lock().map(|r| r.clone()).unwrap_or_default();
    let mut failed = rows.len() as u64;
    for (sid, s) in steps {
        let held = now.get(sid)?;
        for (f, _, was) in s.restored.iter().filter(|_| s.body.is_some()) {
            let Some((i, _)) = crate::fields::by_path(f) else {
                continue;
            };
            let is = cell(held.as_ref(), i);
            if &is != was {
                failed += 1;
                rows.push(ReportRow {
                    source_id: sid.clone(),
                    line: None,
                    key: "not_applied".into(),
                    message: format!("Voucherify confirmed the change of {f} but does not hold it"),
                    details: format!("undo sent {was:?}; Voucherify holds {is:?}"),
                    content: None,
                });
            }
        }
    }
    crate::load::report::write(&files.report, &rows)?;
    ui::info(format!("undo: restored and read back; {failed} fields or customers not held as restored (load-report.csv)"));
    Ok(failed)
}
