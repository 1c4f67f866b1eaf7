//! After a load: read back, from Voucherify's own export, that it holds
//! what the load (and `run`'s early sending) confirmed. A confirmed async
//! action is Voucherify's acknowledgement, not its state, and its documents
//! promise nothing of what a `null` does: so every change confirmed since
//! the load (or the run) began is checked, by the plan's own typed
//! equality (`plan::compare::verify`), against an export made after the last
//! confirmation (a delta of the kept export, which it then becomes: the next
//! plan's delta starts after it).
//!
//! A change Voucherify did not apply is named (customer, field, what was
//! sent, what is held) in `load-report.csv`, counted as failed (exit 3), and
//! recorded in the ledger as `unverified`: its content no longer counts as
//! confirmed and its clears stay pending, so the next plan lists it again. A
//! difference on a customer Voucherify changed after segsync's confirmation
//! (by Voucherify's clock) is another writer's, and said so. What was found
//! goes to `load.verify.json`, which `status` shows.

use super::report::ReportRow;
use super::setup::Setup;
use super::Args;
use crate::api::voucherify::VoucherifyClient;
use crate::export::{self, Exported};
use crate::plan::compare;
use crate::state::ledger::{LedgerCustomer, LedgerEvent, LedgerWriter};
use crate::ui;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::io::{BufRead, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

/// What a verification found (`load.verify.json`).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    pub at: String,
    /// Customers whose confirmed change was read back.
    pub checked: u64,
    /// Of them, changes Voucherify did not apply.
    pub not_applied: u64,
    /// Customers Voucherify changed after segsync's confirmation, with a
    /// difference there (another writer's).
    pub changed_after: u64,
    /// Fields the export cannot show, not read back.
    pub unreadable: u64,
    /// Customers whose row changed since it was sent (not checked).
    pub row_changed: u64,
    /// Voucherify calls the verifying export took.
    pub calls: u64,
    /// A few of the changes not applied: `source_id field: sent … held …`.
    pub examples: Vec<String>,
}

/// One confirmed customer, as the ledger recorded it.
struct Confirmed {
    hash: String,
    line: u64,
    cleared: Vec<String>,
    /// Voucherify's time of the confirmation (ms).
    vf_at: Option<i64>,
}

/// The customers of `target` the ledger confirmed after byte `since`, the
/// last confirmation of each.
fn confirmed_since(ledger: &Path, target: &str, since: u64) -> Result<HashMap<String, Confirmed>> {
    let mut out = HashMap::new();
    let mut f = match std::fs::File::open(ledger) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", ledger.display())),
    };
    f.seek(SeekFrom::Start(since))?;
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        let Ok(LedgerEvent::Confirmed {
            target: t,
            done,
            vf_at,
            ..
        }) = serde_json::from_str::<LedgerEvent>(&line)
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
            out.insert(
                c.source_id,
                Confirmed {
                    hash: c.hash,
                    line: c.line,
                    cleared: c.cleared.unwrap_or_default(),
                    vf_at,
                },
            );
        }
    }
    Ok(out)
}

/// Verify what was confirmed after byte `since` of the ledger. Nothing to
/// verify, nothing asked. An export that cannot say what is held is an
/// error: a load that cannot read back what it did does not end well.
pub async fn verify(
    client: &VoucherifyClient,
    setup: &Setup,
    args: &Args,
    writer: &LedgerWriter,
    since: u64,
) -> Result<(Verified, Vec<ReportRow>)> {
    let target = setup.target.clone().unwrap_or_default();
    let mut confirmed = confirmed_since(&setup.ledger_file, &target, since)?;
    if confirmed.is_empty() {
        return Ok((Verified::default(), Vec::new()));
    }
    ui::info(format!(
        "load: reading back from Voucherify's export what it confirmed ({} customers)",
        confirmed.len()
    ));
    let exports = args.exports.exports();
    let policy = export::Policy {
        ledger: Some(&setup.files.ledger),
        target: &target,
        full_every: exports.full_every,
        force_full: false,
        created_too: false,
        reuse: None,
    };
    let fields = crate::fields::export_fields();
    let deadline = Duration::from_secs(args.export_timeout);
    let before = client.stats().get(&client.stats().requests);
    let (exported, _, _) =
        export::export_held(client, &setup.files, &fields, deadline, &policy).await?;
    let calls = client.stats().get(&client.stats().requests) - before;
    let path = match exported {
        Exported::File(p) => p,
        Exported::Empty => setup.files.export.clone(),
        Exported::Unknown(why) => anyhow::bail!(
            "load: Voucherify confirmed what was sent ({} customers, in the ledger), but what it holds cannot be read back ({why}): not verified. The next plan compares with what Voucherify holds; --no-verify skips the read-back",
            confirmed.len()
        ),
    };
    let schema = setup.schema.clone().unwrap_or_default();
    let held = crate::plan::held::HeldFile::open(&path, &schema)?;
    let mut v = Verified {
        calls,
        at: crate::state::now(),
        ..Default::default()
    };
    let mut rows = Vec::new();
    let mut unverified = Vec::new();
    read_rows(&setup.input, |sid, request, key| {
        let Some(c) = confirmed.remove(sid) else {
            return Ok(());
        };
        if crate::state::ledger::content_key(&c.hash) != Some(key) {
            v.row_changed += 1;
            return Ok(());
        }
        let verdict = compare::verify(
            request,
            &c.cleared,
            held.get(sid)?.as_ref(),
            &schema,
            c.vf_at,
        );
        v.checked += 1;
        v.unreadable += verdict.unreadable as u64;
        if verdict.not_applied.is_empty() {
            return Ok(());
        }
        if verdict.elsewhere {
            v.changed_after += 1;
            return Ok(());
        }
        note(sid, &c, &verdict, &mut v, &mut rows, &mut unverified);
        Ok(())
    })?;
    // Confirmed customers no row of the file gives now (a file edited, or a
    // pilot's): not read back.
    v.row_changed += confirmed.len() as u64;
    if !unverified.is_empty() {
        writer.append(&LedgerEvent::Unverified {
            at: crate::state::now_ms(),
            target,
            customers: unverified,
        })?;
    }
    crate::files::write_atomic(&setup.files.verify, &serde_json::to_vec_pretty(&v)?)?;
    say(&v);
    Ok((v, rows))
}

/// A customer whose confirmed change Voucherify does not hold: its report
/// rows, its `unverified` ledger entry, an example.
fn note(
    sid: &str,
    c: &Confirmed,
    verdict: &compare::Verdict,
    v: &mut Verified,
    rows: &mut Vec<ReportRow>,
    unverified: &mut Vec<LedgerCustomer>,
) {
    v.not_applied += 1;
    let mut fields = Vec::new();
    let mut cleared = Vec::new();
    for (f, sent, held) in &verdict.not_applied {
        if sent.is_null() {
            cleared.push(f.clone());
        } else {
            fields.push(f.clone());
        }
        let sent = if sent.is_null() {
            "null (a clear)".to_string()
        } else {
            sent.to_string()
        };
        if v.examples.len() < 5 {
            v.examples
                .push(format!("{sid} {f}: sent {sent}, held {held:?}"));
        }
        rows.push(ReportRow {
            source_id: sid.to_string(),
            line: (c.line > 0).then_some(c.line),
            key: "not_applied".into(),
            message: format!("Voucherify confirmed the change of {f} but does not hold it"),
            details: format!("sent {sent}; Voucherify holds {held:?}"),
            content: None,
        });
    }
    unverified.push(LedgerCustomer {
        source_id: sid.to_string(),
        hash: c.hash.clone(),
        line: c.line,
        segment_id: None,
        fields: Some(fields),
        cleared: Some(cleared),
    });
}

/// Every valid row of `input`: its source id, request and content key.
pub(crate) fn read_rows(
    input: &Path,
    mut f: impl FnMut(&str, &serde_json::Map<String, serde_json::Value>, u128) -> Result<()>,
) -> Result<()> {
    use crate::spreadsheet::input::{check_row, open_csv, read_layout};
    let mut rdr = open_csv(input)?;
    let layout = read_layout(input, &mut rdr).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let mut rec = csv::ByteRecord::new();
    while rdr.read_byte_record(&mut rec)? {
        let (row, problems) = check_row(&layout, &rec);
        let Some(sid) = row.source_id.as_deref().filter(|_| problems.is_empty()) else {
            continue;
        };
        let Ok(serde_json::Value::Object(request)) = row.to_request() else {
            continue;
        };
        let key = crate::spreadsheet::batch::content_key_of(&serde_json::to_vec(&request)?);
        f(sid, &request, key)?;
    }
    Ok(())
}

fn say(v: &Verified) {
    ui::info(format!(
        "load: read back {} customers from Voucherify's export ({} calls): {} changes not applied, {} changed by another writer after segsync's confirmation, {} fields the export cannot show, {} rows changed since they were sent",
        v.checked, v.calls, v.not_applied, v.changed_after, v.unreadable, v.row_changed
    ));
    for e in &v.examples {
        ui::warn(format!("load: not applied by Voucherify: {e}"));
    }
}

/// The last verification's findings, for `status`.
pub fn last(files: &crate::state::Beside) -> Option<Verified> {
    serde_json::from_slice(&std::fs::read(&files.verify).ok()?).ok()
}
