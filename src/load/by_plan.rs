//! `load` executes the newest plan (`crate::plan`) when it is fresh (not
//! spent, younger than `--plan-max-age`, made with the same flags, made after
//! the last change to `customers.csv` and the ledger); `load --plan` makes
//! one when it is not.
//! Creates send the customers file's row (by import file where that saves
//! calls); updates and clears send the plan's request, which carries only
//! what changes. Customers the plan leaves out cost nothing.

use super::import::Existing;
use super::setup::Setup;
use super::Args;
use crate::api::voucherify::VoucherifyClient;
use crate::plan::compare::Rules;
use crate::plan::file::{Meta, PlanIndex};
use crate::plan::{self, Source};
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

/// Whether this load goes by a plan: `--plan`, or a fresh plan `segsync
/// plan` made (never with `--from-ledger` or `--full`).
pub fn wanted(setup: &Setup, args: &Args) -> bool {
    if args.from_ledger || args.full || setup.target.is_none() {
        return false;
    }
    if args.plan {
        return true;
    }
    let (plan_path, meta_path, _) = plan::paths(&setup.input);
    let target = setup.target.clone().unwrap_or_default();
    Meta::read(&meta_path)
        .filter(|_| plan_path.exists())
        .is_some_and(|m| {
            m.stale(
                &setup.input,
                &target,
                rules(args),
                args.plan_max_age,
                setup.ledger_bytes,
            )
            .is_none()
        })
}

/// Find or make the plan, and take it: its index goes to `setup`, and it
/// is marked spent. None when no plan can be made (the export could not say
/// what Voucherify holds): then the ledger decides, as before plans.
pub async fn prepare(
    setup: &mut Setup,
    args: &Args,
    client: &VoucherifyClient,
    confirmed_ids: HashSet<String>,
) -> Result<Option<Meta>> {
    let Some((meta, exported)) = find_or_make(setup, args, client).await? else {
        return Ok(None);
    };
    let (plan_path, meta_path, _) = plan::paths(&setup.input);
    if args.method != super::import::Method::Bulk {
        setup.existing = Some(Existing::from_export(
            exported,
            meta.export_calls,
            confirmed_ids,
        )?);
    }
    let index = Arc::new(PlanIndex::read(&plan_path)?);
    setup.plan = Some(index);
    let mut spent = meta.clone();
    spent.executed_at = Some(crate::state::now_ms());
    crate::files::write_atomic(&meta_path, &serde_json::to_vec_pretty(&spent)?)?;
    Ok(Some(meta))
}

/// `load --dry-run`: the plan's counts and what sending it costs; returns
/// the customers it leaves alone, or None when no plan can be made.
pub async fn dry_run(
    setup: &mut Setup,
    args: &Args,
    client: &VoucherifyClient,
) -> Result<Option<u64>> {
    let Some((meta, _)) = find_or_make(setup, args, client).await? else {
        return Ok(None);
    };
    let c = &meta.counts;
    let sends = c.to_send();
    let calls = sends.div_ceil(args.batch_size.max(1) as u64) * 2;
    ui::info(format!(
        "load --dry-run: the plan sends {sends} customers ({} to create, {} to update, {} to clear, {} skipped): about {calls} calls (a bulk request and a poll per {} customers; creates may go by import file instead), after the plan's own {} calls; nothing was sent",
        c.create, c.update, c.clear, c.skipped, args.batch_size, meta.export_calls
    ));
    Ok(Some(c.unchanged + c.skipped))
}

async fn find_or_make(
    setup: &mut Setup,
    args: &Args,
    client: &VoucherifyClient,
) -> Result<Option<(Meta, crate::load::import::Exported)>> {
    let target = setup.target.clone().unwrap_or_default();
    let (plan_path, meta_path, _) = plan::paths(&setup.input);
    let rules = rules(args);
    let existing = Meta::read(&meta_path)
        .filter(|_| plan_path.exists())
        .map(|m| {
            let why = m.stale(
                &setup.input,
                &target,
                rules,
                args.plan_max_age,
                setup.ledger_bytes,
            );
            (why, m)
        });
    let (meta, exported) = match existing {
        Some((None, m)) => {
            ui::info(format!(
                "load: executing {} (made {}s ago)",
                plan_path.display(),
                m.age().as_secs()
            ));
            let file = crate::load::import::export_paths(&setup.input).0;
            (m, crate::load::import::Exported::File(file))
        }
        other => {
            if let Some((Some(why), _)) = other {
                ui::info(format!(
                    "load: making a new plan: the newest one cannot be executed: {why}"
                ));
            }
            let schema = setup.schema.clone().unwrap_or_default();
            let source = Source::Export(client, Duration::from_secs(args.export_timeout));
            match plan::make(
                &setup.input,
                &target,
                &schema,
                rules,
                &setup.validated.invalid_lines,
                source,
            )
            .await?
            {
                Ok(made) => {
                    plan::say(&made.meta, &setup.input, made.meta.export_calls);
                    (made.meta, made.exported)
                }
                Err(why) => {
                    ui::warn(format!("load: no plan: {why}; the ledger decides what is sent, as with --from-ledger"));
                    return Ok(None);
                }
            }
        }
    };
    Ok(Some((meta, exported)))
}
