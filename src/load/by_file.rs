//! The import pass of `load --method import` and `auto`: which new customers
//! go by file (those whose columns enough others share; see
//! [`super::import_files`]), then the files, written and sent, each recorded
//! in the ledger before it is confirmed.

use super::confirm::{self, Session};
use super::import::{Existing, Method};
use super::import_files::{bulk_calls, candidate, choose, importable, write_files};
use super::setup::Setup;
use super::Args;
use crate::ui::{self, Progress};
use anyhow::Result;
use futures::stream::{self, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What goes by file: who exists (with the chosen signatures) and how many.
pub struct FilePlan {
    pub existing: Arc<Existing>,
    pub customers: u64,
    pub signatures: usize,
}

/// Decide which customers go by file; None when every customer goes by
/// bulk (the bulk method, an export that did not say who exists, or a
/// `--method auto` import that failed twice the same way).
pub fn plan(
    setup: &mut Setup,
    args: &Args,
    confirmed: &Arc<HashSet<u128>>,
) -> Result<Option<FilePlan>> {
    let Some(existing) = setup.existing.take() else {
        return Ok(None);
    };
    if existing.unknown.is_some() {
        return Ok(None);
    }
    if let Some(why) = setup.ledger.repeated_import_failure() {
        if args.method == Method::Import {
            anyhow::bail!(
                "Voucherify's import failed twice in a row with the same message: {why}; segsync does not send the file again: fix the cause, or load with --method bulk"
            );
        }
        ui::warn(format!("load: Voucherify's import failed twice in a row with the same message ({why}); --method auto sends everyone by bulk"));
        return Ok(None);
    }
    let ex = Arc::new(existing);
    let mut counts = HashMap::new();
    let keep = ex.clone();
    let candidates = setup
        .batcher(args, confirmed.clone())?
        .only(move |c| candidate(c, &keep).is_some())
        .customers();
    for c in candidates {
        if let Some(sig) = candidate(&c?, &ex) {
            *counts.entry(sig).or_insert(0u64) += 1;
        }
    }
    let mut existing =
        Arc::try_unwrap(ex).map_err(|_| anyhow::anyhow!("the export is still in use"))?;
    existing.by_file = choose(counts.clone());
    let customers: u64 = counts
        .iter()
        .filter(|(s, _)| existing.by_file.contains(s))
        .map(|(_, n)| n)
        .sum();
    let signatures = existing.by_file.len();
    // auto: the import when its calls (a file and a poll each) are fewer
    // than the bulk upserts of the same customers.
    let file_calls = 2 * (signatures as u64 + customers / 20_000);
    if args.method == Method::Auto && bulk_calls(customers) <= file_calls {
        existing.by_file.clear();
        return Ok(Some(FilePlan {
            existing: Arc::new(existing),
            customers: 0,
            signatures: 0,
        }));
    }
    Ok(Some(FilePlan {
        existing: Arc::new(existing),
        customers,
        signatures,
    }))
}

/// Write the files of `plan` and send them, `args.concurrency` at a time;
/// the first error halts the load.
pub async fn send(
    session: &Arc<Session>,
    setup: &Setup,
    args: &Args,
    confirmed: &Arc<HashSet<u128>>,
    plan: &FilePlan,
    progress: &Arc<Progress>,
) -> Result<Vec<Result<()>>> {
    if plan.customers == 0 {
        return Ok(vec![]);
    }
    let ex = plan.existing.clone();
    let rows = setup
        .batcher(args, confirmed.clone())?
        .only(move |c| importable(c, &ex))
        .customers();
    let files = write_files(&setup.files.dir, rows, args.max_file_bytes as usize)?;
    ui::info(format!(
        "load: {} new customers go by import in {} files ({}), one set of filled columns a file; customers the project holds ({} exported), typed or sparse metadata and keys a header cannot carry go by bulk",
        plan.customers,
        files.len(),
        files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", "),
        plan.existing.from_export
    ));
    Ok(stream::iter(files)
        .map(|f| {
            let session = session.clone();
            let progress = progress.clone();
            async move {
                session
                    .halt_on_error(confirm::send_import(&session, f, &progress))
                    .await
            }
        })
        .buffer_unordered(args.concurrency as usize)
        .collect::<Vec<_>>()
        .await)
}
