//! `load` goes by a plan (`crate::plan`) unless `--from-ledger` or `--full`:
//! it executes the newest plan when it is fresh (not spent, younger than
//! `--plan-max-age`, made with the same flags, and every input the same by
//! content: `customers.csv`, the ledger, the export, the schema), and makes
//! one when it is not. An edited `load.plan.csv` is refused (exit 2): the
//! plan file is an audit record, and what is sent is built again from
//! `customers.csv`. When no plan can be made, the ledger decides (`--plan`
//! stops instead). Creates send the customers file's row (by import file
//! where that saves calls); updates and clears send only what changes.
//! Customers the plan leaves out cost nothing.

use super::import::Method;
use super::import::{self, Existing, Exported};
use super::input;
use super::setup::Setup;
use super::Args;
use crate::api::voucherify::VoucherifyClient;
use crate::plan::compare::Rules;
use crate::plan::file::{Meta, PlanIndex};
use crate::plan::obtain::{obtain, Obtained, Wanted};
use crate::plan::Source;
use crate::ui;
use anyhow::Result;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// The plan's rules from load's flags.
pub fn rules(args: &Args) -> Rules {
    Rules {
        clear_removed: args.clear_removed,
        keep_newer: args.keep_newer,
    }
}

/// Whether this load goes by a plan: by default it does (executing a fresh
/// plan `segsync plan` made, or making one); `--from-ledger` and `--full`
/// decide by the ledger alone (`Args::plans`), and so does a load without a
/// project.
pub fn wanted(setup: &Setup, args: &Args) -> bool {
    setup.target.is_some() && args.plans()
}

/// Find or make the plan, and take it: its index goes to `setup`, who
/// exists goes to `setup.existing` (for the import), rows the project's
/// required keys refuse are refused, and, when `spend`, the plan is marked
/// executed. An error when no plan can be made (the export could not say
/// what Voucherify holds): nothing is sent.
pub async fn prepare(
    setup: &mut Setup,
    args: &Args,
    client: &VoucherifyClient,
    confirmed_ids: HashSet<String>,
    spend: bool,
) -> Result<Option<Meta>> {
    let Some((meta, found, index)) = find_or_make(setup, args, client).await? else {
        return Ok(None);
    };
    let existing = match found {
        // Made just now: its export says who exists.
        Found::Made(exported) => Existing::from_export(exported, meta.export_calls, confirmed_ids)?,
        // Made earlier: a customer it would create may exist by now (another
        // writer), and an import must never reach one; so a new export of
        // the source ids says who exists, as without a plan.
        Found::Saved if meta.counts.create > 0 && args.method != Method::Bulk => {
            import::existing(
                client,
                &setup.files,
                confirmed_ids,
                Duration::from_secs(args.export_timeout),
            )
            .await?
        }
        // The plan's own creates are who is new.
        Found::Saved => Existing::known(confirmed_ids, HashSet::new()),
    };
    // Required metadata keys, for every method: a customer the plan creates
    // must carry them (Voucherify refuses it otherwise).
    if let Some(schema) = &setup.schema {
        let new = |sid: &str| index.creates_customer(sid) && !existing.contains(sid);
        let missing = input::required_problems(&setup.input, schema, new)?;
        setup.refuse(args, missing)?;
    }
    if args.method != Method::Bulk {
        setup.existing = Some(existing);
    }
    setup.plan = Some(Arc::new(index));
    if spend {
        let mut spent = meta.clone();
        spent.executed_at = Some(crate::state::now_ms());
        crate::files::write_atomic(&setup.files.plan_meta, &serde_json::to_vec_pretty(&spent)?)?;
    }
    Ok(Some(meta))
}

/// `load --dry-run` with a plan: its counts, after the plan's own calls.
pub fn say_dry_run(meta: &Meta) {
    let c = &meta.counts;
    ui::info(format!(
        "load --dry-run: the plan sends {} customers ({} to create, {} to update, {} to clear), leaves {} unchanged and skips {}; it took {} Voucherify calls (the export, its polls and download)",
        c.to_send(),
        c.create,
        c.update,
        c.clear,
        c.unchanged,
        c.skipped,
        meta.export_calls
    ));
}

/// Where the plan came from.
enum Found {
    /// Made by this load, with its export.
    Made(Exported),
    /// Made earlier (by `segsync plan` or a dry run).
    Saved,
}

async fn find_or_make(
    setup: &mut Setup,
    args: &Args,
    client: &VoucherifyClient,
) -> Result<Option<(Meta, Found, PlanIndex)>> {
    let target = setup.target.clone().unwrap_or_default();
    let schema = setup.schema.clone().unwrap_or_default();
    let wanted = Wanted {
        files: &setup.files,
        target: &target,
        schema: &schema,
        rules: rules(args),
        max_age: args.plan_max_age,
        invalid_lines: &setup.validated.invalid_lines,
    };
    let source = Source::Export(
        client,
        Duration::from_secs(args.export_timeout),
        crate::plan::Exports {
            created_too: args.method != super::import::Method::Bulk,
            ..args.exports.exports()
        },
    );
    match obtain(&wanted, source).await? {
        Obtained::Saved(meta, index) => Ok(Some((meta, Found::Saved, index))),
        Obtained::Made(made, index) => Ok(Some((made.meta, Found::Made(made.exported), index))),
        // What Voucherify holds cannot be seen: nothing is sent on our
        // own view alone (an update would carry `address` or `metadata`
        // whole, and where Voucherify replaces them whole, keys another
        // writer set would go). `--from-ledger` is that choice, made aloud.
        Obtained::None(why) => anyhow::bail!(
            "no plan can be made: {why}; nothing was sent. Rerun `segsync load` once Voucherify's export gives its file, or decide by the ledger alone with `segsync load --from-ledger` (it cannot see what Voucherify holds: another writer's changes stay, and where Voucherify replaces `address` or `metadata` whole, keys another writer set there are lost)"
        ),
    }
}
