//! `load --dry-run`: what a load would send and what it would cost, with
//! nothing sent (the schema read and, for the import, the export are reads).

use super::batch::Batcher;
use super::by_file;
use super::import::Method;
use super::import_files::bulk_calls;
use super::setup::Setup;
use super::Args;
use crate::ui;
use anyhow::Result;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;

/// Show the plan; returns the rows already confirmed.
pub fn report(setup: &mut Setup, args: &Args) -> Result<u64> {
    let confirmed = Arc::new(setup.ledger.confirmed.clone());
    if args.method != Method::Bulk {
        split(setup, args, &confirmed)?;
    }
    let b = setup.batcher(args, confirmed)?;
    let budget = setup.client.as_ref().and_then(|c| c.budget());
    let unchanged = batches(b, setup, budget)?;
    if let Some(r) = &setup.edits {
        ui::info(format!(
            "load --dry-run: edits against what transform would write: {} (`segsync diff` lists them)",
            r.counts()
        ));
    }
    Ok(unchanged)
}

/// The split between import files and bulk, and its cost.
fn split(setup: &mut Setup, args: &Args, confirmed: &Arc<HashSet<u128>>) -> Result<()> {
    let Some(existing) = &setup.existing else {
        ui::info("load --dry-run: without credentials the split between import and bulk is unknown (it needs the project's customer export)");
        return Ok(());
    };
    let (from_export, calls) = (existing.from_export, existing.calls);
    let total = setup.batcher(args, confirmed.clone())?.count_to_send()?;
    let plan = by_file::plan(setup, args, confirmed)?;
    let (by_file, files) = plan
        .as_ref()
        .map_or((0, 0), |p| (p.customers, p.signatures as u64));
    let by_bulk = total - by_file;
    ui::info(format!(
        "load --dry-run --method {}: the project holds {from_export} customers (export: {calls} calls); {by_file} new customers could go by import in {files}+ files (about {} calls: a file and a poll each), {by_bulk} by bulk (about {} calls)",
        if args.method == Method::Import { "import" } else { "auto" },
        2 * (files + by_file / 20_000),
        bulk_calls(by_bulk)
    ));
    Ok(())
}

/// Walk the batches a load would send; returns the rows already confirmed.
fn batches(mut b: Batcher, setup: &Setup, budget: Option<(u64, u64, String)>) -> Result<u64> {
    let (mut batches, mut customers, mut bytes, mut sample) = (0u64, 0u64, 0usize, None);
    for batch in b.by_ref() {
        let batch = batch?;
        batches += 1;
        customers += batch.customers.len() as u64;
        bytes += batch.body().len();
        if sample.is_none() {
            let first: Vec<Value> = batch
                .customers
                .iter()
                .take(2)
                .filter_map(|c| serde_json::from_slice(&c.body).ok())
                .collect();
            sample = Some((serde_json::to_string_pretty(&first)?, batch.customers.len()));
        }
    }
    let validated = &setup.validated;
    let invalid = validated.invalid_lines.len() as u64;
    let (unchanged, why) = match setup.plan {
        Some(_) => (
            (validated.rows - invalid).saturating_sub(customers),
            "the same in Voucherify or skipped by the plan",
        ),
        None => (b.unchanged, "already confirmed with this content"),
    };
    ui::info(format!(
        "load --dry-run: {} rows valid{}; {unchanged} {why} (skipped); would send {} customers in {} batches ({:.1} KB); nothing was sent",
        validated.rows - invalid,
        if invalid > 0 { format!(", {invalid} invalid set aside") } else { String::new() },
        customers,
        batches,
        bytes as f64 / 1024.0
    ));
    // Each batch is one bulk call and, as Voucherify runs bulk jobs one at a
    // time and segsync polls only the oldest, about one poll.
    ui::info(format!(
        "load --dry-run: cost about {} Voucherify API calls ({batches} bulk requests + about {batches} polls); \
         a Business plan allows 100 a minute and 100,000 a month, an Organization plan 2,000 and 300,000",
        batches * 2
    ));
    if let Some((limit, remaining, kind)) = budget {
        ui::info(format!(
            "load --dry-run: the project's headers say {remaining} of {limit} {kind} calls are left in the current window: the load needs {} windows' worth ({:.1}% of one full window)",
            (batches * 2).div_ceil(limit.max(1)),
            100.0 * (batches * 2) as f64 / limit.max(1) as f64
        ));
    }
    if let Some((s, n)) = sample {
        crate::outln!("First request body (first 2 of its {n} customers):\n{s}");
    }
    Ok(unchanged)
}
