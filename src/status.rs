//! `segsync status`: reads the data directory, the same files a person would,
//! and shows each stage at a glance and the command that comes next.
//!
//! Strictly read-only: it opens files for reading and nothing else. A torn
//! last line in the ledger (a `load` killed mid-write, or one still writing)
//! is reported, never repaired: repair belongs to `load`, on its own start.

use crate::load;
use crate::state::{self, checkpoint, ledger, manifest};
use anyhow::Result;
use std::io::{BufRead, BufReader};
use std::path::Path;

fn count_lines(path: &Path) -> Option<u64> {
    let f = std::fs::File::open(path).ok()?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut n = 0u64;
    loop {
        let buf = r.fill_buf().ok()?;
        if buf.is_empty() {
            break;
        }
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = buf.len();
        r.consume(len);
    }
    Some(n)
}

/// Data rows of a CSV with a header.
fn count_csv_rows(path: &Path) -> Option<u64> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .ok()?;
    Some(rdr.byte_records().filter(|r| r.is_ok()).count() as u64)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(a), m(b)), (Some(x), Some(y)) if x > y)
}

pub fn run(data_dir: &Path, mapping: &crate::mapping::MappingArgs) -> Result<()> {
    let profiles = state::profiles(data_dir);
    let customers = state::customers(data_dir);
    let rejected = state::rejected(&customers);
    let mut next: Option<String> = None;
    crate::outln!("data directory: {}", data_dir.display());

    // extract
    crate::out!("extract:   ");
    extract_section(&profiles, &mut next);

    // transform
    crate::out!("transform: ");
    if customers.exists() {
        let rows = count_csv_rows(&customers).unwrap_or(0);
        let rej = count_csv_rows(&rejected).unwrap_or(0);
        let manifest = manifest::read(&customers);
        let edited = manifest::edited_since_transform(&customers);
        // When transform wrote it (its manifest), not when a person last
        // saved it.
        let written = (manifest.as_ref().map(|m| m.written_at.clone()))
            .unwrap_or_else(|| crate::files::modified(&customers).unwrap_or_default());
        crate::outln!(
            "{rows} customers in {}, {rej} rejected in {}, written by transform {}",
            customers.display(),
            rejected.display(),
            written
        );
        let edited = match edited {
            Ok(e) => e.unwrap_or(false),
            Err(e) => {
                crate::outln!("           {e}");
                false
            }
        };
        if let Some(m) = &manifest {
            crate::outln!(
                "           from {} profiles, {} values dropped (transform.warnings.csv)",
                m.profiles,
                m.warnings
            );
        }
        if edited {
            crate::outln!(
                "           edited by hand since (last saved {}): the next transform or run keeps the edits in edits.csv",
                crate::files::modified(&customers).unwrap_or_default()
            );
        }
        let kept = crate::spreadsheet::overrides::Overrides::read(&state::edits(&customers));
        match kept {
            Ok(k) if !k.is_empty() => crate::outln!(
                "           {} hand edits kept in {}, applied by every transform (`transform --drop-edit SOURCE_ID[:FIELD]` drops one)",
                k.len(),
                state::edits(&customers).display()
            ),
            Ok(_) => {}
            Err(e) => crate::outln!("           {e:#}"),
        }
        match (&manifest, mapping.resolve()) {
            (Some(m), Ok(now)) if !m.mapping.is_empty() && m.mapping != now.fingerprint() => {
                crate::outln!(
                    "           written with another mapping than the current one ({}): rerun `segsync transform` (and `segsync extract --fresh` if it reads other traits)",
                    now.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "the default".into())
                );
                next.get_or_insert_with(|| "segsync transform   (the mapping changed)".into());
            }
            (_, Err(e)) => crate::outln!("           the mapping cannot be read: {e}"),
            _ => {}
        }
        if profiles.exists() && newer(&profiles, &customers) && !edited {
            crate::outln!("           profiles.ndjson is newer: rerun `segsync transform`");
            next.get_or_insert_with(|| "segsync transform".into());
        }
    } else {
        crate::outln!("not run: no {}", customers.display());
        if profiles.exists() {
            next.get_or_insert_with(|| "segsync transform".into());
        }
    }

    // load
    crate::out!("load:      ");
    load_section(&customers, &mut next)?;
    match next {
        Some(cmd) => crate::outln!("next:      {cmd}"),
        None => crate::outln!("next:      nothing pending: every stage is complete"),
    }
    Ok(())
}

/// The load line: where `customers` stands against the ledger of the
/// configured Voucherify project.
fn load_section(customers: &Path, next: &mut Option<String>) -> Result<()> {
    let ledger = state::ledger(customers);
    let target = crate::config::configured_target();
    let all = match ledger::read(&ledger, None) {
        Ok(all) => all,
        Err(e) => {
            crate::outln!("{e}");
            next.get_or_insert_with(|| format!("repair or move aside {}", ledger.display()));
            return Ok(());
        }
    };
    if !customers.exists() {
        crate::outln!("nothing to load yet");
        return Ok(());
    }
    match &target {
        Some(t) if !all.targets.is_empty() && !all.targets.contains(t) => {
            crate::outln!(
                "the ledger describes another Voucherify project ({}), not the configured one ({t}): nothing is confirmed in this project, and `segsync load` sends every row to it",
                all.targets.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            crate::out!("           ");
        }
        None if !all.targets.is_empty() => {
            crate::outln!("(VOUCHERIFY_APPLICATION_ID is not set: the counts cover every project the ledger describes)");
            crate::out!("           ");
        }
        _ => {}
    }
    let plan = match load::plan(customers, target.as_deref()) {
        Ok(plan) => plan,
        Err(e) => {
            crate::outln!(
                "{} does not validate: {}",
                customers.display(),
                e.to_string().lines().next().unwrap_or("")
            );
            next.get_or_insert_with(|| {
                format!(
                    "segsync load --dry-run   (shows every problem in {})",
                    customers.display()
                )
            });
            return Ok(());
        }
    };
    let state = ledger::read(&ledger, target.as_deref())?;
    crate::outln!(
        "{} of {} rows confirmed by Voucherify with their current content, {} to send{}",
        plan.confirmed,
        plan.rows,
        plan.to_send,
        if plan.invalid > 0 {
            format!(", {} invalid", plan.invalid)
        } else {
            String::new()
        }
    );
    crate::outln!(
        "           ledger {}: {} confirmed, {} recorded, {} submitted but not yet confirmed",
        ledger.display(),
        plural(state.batches, "batch", "batches"),
        plural(
            state.failed_customers,
            "customer failure",
            "customer failures"
        ),
        plural(state.pending.len() as u64, "batch", "batches")
    );
    if let Some(m) = crate::plan::file::Meta::read(&state::Beside::of(customers).plan_meta) {
        crate::outln!("           {}", plan_line(&m));
    }
    if let Some(v) = crate::load::verify::last(&state::Beside::of(customers)) {
        crate::outln!(
            "           read back at {}: {} customers checked against Voucherify's export, {} changes not applied{}, {} changed by another writer since",
            v.at,
            v.checked,
            v.not_applied,
            if v.not_applied > 0 { " (the next plan lists them again)" } else { "" },
            v.changed_after
        );
    }
    if all.torn_tail > 0 {
        crate::outln!(
            "           its last line is incomplete ({} bytes): a load was interrupted mid-write, or is writing now; the next `segsync load` discards it",
            all.torn_tail
        );
    }
    let report = state::report(customers);
    let failed = count_csv_rows(&report).unwrap_or(0);
    if failed > 0 {
        crate::outln!(
            "           the last load reported {failed} customers Voucherify rejected: see {}",
            report.display()
        );
    }
    if plan.to_send > 0 || plan.invalid > 0 || !state.pending.is_empty() {
        next.get_or_insert_with(|| "segsync load".into());
    }
    Ok(())
}

/// The newest plan: its age, counts, and whether a load executed it.
fn plan_line(m: &crate::plan::file::Meta) -> String {
    format!(
        "plan {} ({}s old{}): {}",
        state::Beside::of(&m.customers).plan.display(),
        m.age().as_secs(),
        if m.executed_at.is_some() {
            ", executed"
        } else {
            ""
        },
        m.counts.summary()
    )
}

fn plan_json(customers: &Path) -> serde_json::Value {
    match crate::plan::file::Meta::read(&state::Beside::of(customers).plan_meta) {
        None => serde_json::Value::Null,
        Some(m) => serde_json::json!({"made_at": m.made_at, "age_seconds": m.age().as_secs(),
            "executed": m.executed_at.is_some(), "unchanged": m.counts.unchanged,
            "create": m.counts.create, "update": m.counts.update, "clear": m.counts.clear,
            "changed_elsewhere": m.counts.elsewhere, "skipped": m.counts.skipped,
            "orphans": m.counts.orphans}),
    }
}

/// Bytes after the last newline of `path` (a torn last line), if any.
fn torn_tail(path: &Path) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(1 << 20);
    let mut tail = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut tail).is_err() {
        return 0;
    }
    match tail.iter().rposition(|&b| b == b'\n') {
        Some(p) => (tail.len() - p - 1) as u64,
        None => tail.len() as u64,
    }
}

/// The extract line: complete, unfinished, damaged or not run.
fn extract_section(profiles: &Path, next: &mut Option<String>) {
    let partial = state::partial(profiles);
    let cp = match checkpoint::read(&state::checkpoint(profiles)) {
        Ok(cp) => cp,
        Err(e) => {
            crate::outln!("{e:#}");
            next.get_or_insert_with(|| "segsync extract --fresh".into());
            return;
        }
    };
    match (&cp, profiles.exists()) {
        (Some(cp), _) if !cp.complete && partial.exists() => {
            crate::outln!(
                "unfinished: {} profiles written to {} ({} done, last saved {}); rerun `segsync extract` to resume",
                count_lines(&partial).unwrap_or(0),
                partial.display(),
                plural(cp.pages_committed, "listing page", "listing pages"),
                cp.updated_at
            );
            if profiles.exists() {
                crate::outln!(
                    "           the previous complete {} ({} profiles) stays until it finishes",
                    profiles.display(),
                    count_lines(profiles).unwrap_or(0)
                );
            }
            next.get_or_insert_with(|| "segsync extract   (resumes)".into());
        }
        (_, true) if torn_tail(profiles) > 0 => {
            crate::outln!(
                "damaged: {} has {} complete profiles and an incomplete last line ({} bytes), which transform refuses; extract writes whole lines only, so the file was cut or edited: run `segsync extract --fresh`",
                profiles.display(),
                count_lines(profiles).unwrap_or(0),
                torn_tail(profiles)
            );
            next.get_or_insert_with(|| "segsync extract --fresh".into());
        }
        (_, true) => {
            crate::outln!(
                "complete: {} profiles in {}, written {}{}",
                count_lines(profiles).unwrap_or(0),
                profiles.display(),
                crate::files::modified(profiles).unwrap_or_default(),
                cp.as_ref()
                    .map(|c| format!(
                        " ({} listed, {} requests, {} reused, {} could not be read{})",
                        c.listed,
                        c.requests,
                        c.reused,
                        c.missing.len(),
                        if c.missing.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", state::missing(profiles).display())
                        }
                    ))
                    .unwrap_or_default()
            );
        }
        _ => {
            crate::outln!("not run: no {}", profiles.display());
            next.get_or_insert_with(|| "segsync extract".into());
        }
    }
}

/// Where each stage stands, for `status --json`: `state` is `complete`,
/// `partial` (begun, resumes), `stale` (an earlier stage is newer),
/// `damaged` (a file no rerun fixes) or `absent`; `next` is the command to
/// run. Reads only, like `status`.
pub fn json(
    data_dir: &Path,
    mapping: &crate::mapping::MappingArgs,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    use serde_json::json;
    let _ = mapping;
    let profiles = state::profiles(data_dir);
    let customers = state::customers(data_dir);
    let rel = |p: &Path| crate::report::rel(data_dir, p);
    let cp = checkpoint::read(&state::checkpoint(&profiles));
    let (extract_state, next_extract) = match (&cp, profiles.exists()) {
        (Err(_), _) => ("damaged", Some("segsync extract --fresh")),
        (Ok(Some(c)), _) if !c.complete && state::partial(&profiles).exists() => {
            ("partial", Some("segsync extract"))
        }
        (_, true) if torn_tail(&profiles) > 0 => ("damaged", Some("segsync extract --fresh")),
        (_, true) => ("complete", None),
        _ => ("absent", Some("segsync extract")),
    };
    let cp_counts = cp.as_ref().ok().and_then(|c| c.as_ref());
    let extract = json!({
        "state": extract_state,
        "profiles": count_lines(&profiles).unwrap_or(0),
        "listed": cp_counts.map_or(0, |c| c.listed),
        "missing": cp_counts.map_or(0, |c| c.missing.len() as u64),
        "file": rel(&profiles),
    });
    let edited = manifest::edited_since_transform(&customers);
    let transform_state = if !customers.exists() {
        "absent"
    } else if edited.is_err() {
        "damaged"
    } else if profiles.exists() && newer(&profiles, &customers) && !matches!(edited, Ok(Some(true)))
    {
        "stale"
    } else {
        "complete"
    };
    let transform = json!({
        "state": transform_state,
        "customers": count_csv_rows(&customers).unwrap_or(0),
        "rejected": count_csv_rows(&state::rejected(&customers)).unwrap_or(0),
        "edited": matches!(edited, Ok(Some(true))),
        "file": rel(&customers),
    });
    let target = crate::config::configured_target();
    let ledger_file = state::ledger(&customers);
    let (load, load_state) = match ledger::read(&ledger_file, target.as_deref()) {
        Err(e) => (
            json!({"state": "damaged", "error": e.to_string()}),
            "damaged",
        ),
        Ok(_) if !customers.exists() => (json!({"state": "absent"}), "absent"),
        Ok(l) => match load::plan(&customers, target.as_deref()) {
            Err(e) => (
                json!({"state": "damaged", "error": e.to_string()}),
                "damaged",
            ),
            Ok(p) => {
                let st = if p.to_send == 0 && p.invalid == 0 && l.pending.is_empty() {
                    if l.batches == 0 && p.rows > 0 {
                        "absent"
                    } else {
                        "complete"
                    }
                } else if l.batches > 0 || !l.pending.is_empty() {
                    "partial"
                } else {
                    "absent"
                };
                (
                    json!({"state": st, "rows": p.rows, "confirmed": p.confirmed,
                           "to_send": p.to_send, "invalid": p.invalid,
                           "pending_batches": l.pending.len(), "project": target,
                           "ledger": rel(&ledger_file), "plan": plan_json(&customers)}),
                    st,
                )
            }
        },
    };
    let next = next_extract
        .map(str::to_string)
        .or_else(|| match transform_state {
            "absent" | "stale" if profiles.exists() => Some("segsync transform".into()),
            "damaged" => Some("segsync transform --force".into()),
            _ => None,
        })
        .or_else(|| match load_state {
            "absent" | "partial" if customers.exists() => Some("segsync load".into()),
            "damaged" => Some(format!("repair or move aside {}", rel(&ledger_file))),
            _ => None,
        });
    let mut m = serde_json::Map::new();
    m.insert("data_dir".into(), json!(data_dir.display().to_string()));
    m.insert(
        "stages".into(),
        json!({"extract": extract, "transform": transform, "load": load}),
    );
    m.insert("next".into(), json!(next));
    Ok(m)
}
