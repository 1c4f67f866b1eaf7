//! How `load` gets the plan it executes: the newest saved plan when it may
//! be executed (not spent, fresh, every input the same by content; an
//! edited plan file is refused), built again from its inputs; otherwise a
//! new one, made and built the same way. One entry, so `load` asks once.

use super::file::{Meta, PlanIndex};
use super::{make, replay, say, Made, Rules, Source};
use crate::mapping::metadata_schema::CustomerSchema;
use crate::state::Beside;
use crate::ui;
use anyhow::Result;
use std::collections::HashSet;

/// What `load` asks of a plan.
pub struct Wanted<'a> {
    pub files: &'a Beside,
    pub target: &'a str,
    pub schema: &'a CustomerSchema,
    pub rules: Rules,
    /// `--plan-max-age` (seconds).
    pub max_age: u64,
    /// Rows validation refused: never compared, never sent.
    pub invalid_lines: &'a HashSet<u64>,
}

/// The plan `load` executes, and where it came from.
pub enum Obtained {
    /// A saved plan, still fresh.
    Saved(Meta, PlanIndex),
    /// Made just now, with its export.
    Made(Made, PlanIndex),
    /// No plan can be made (the export cannot say what is held), and why.
    None(String),
}

/// Execute the newest plan if it may be, else make one.
pub async fn obtain(w: &Wanted<'_>, source: Source<'_>) -> Result<Obtained> {
    let files = w.files;
    if let Some(saved) = Meta::read(&files.plan_meta).filter(|_| files.plan.exists()) {
        match saved_index(w, &saved)? {
            Ok(index) => {
                ui::info(format!(
                    "load: executing {} (made {}s ago; its inputs are unchanged, and what it sends is built again from {})",
                    files.plan.display(),
                    saved.age().as_secs(),
                    files.customers.display()
                ));
                return Ok(Obtained::Saved(saved, index));
            }
            Err(why) => ui::info(format!("load: making a new plan (the newest: {why})")),
        }
    }
    let made = match make(
        files,
        w.target,
        w.schema,
        w.rules,
        super::Invalid::Known(w.invalid_lines),
        source,
    )
    .await?
    {
        Ok(made) => made,
        Err(why) => return Ok(Obtained::None(why)),
    };
    say(&made.meta, files, made.meta.export_calls);
    let index = replay(&made.meta, w.schema, w.invalid_lines)?.map_err(|why| {
        anyhow::anyhow!("the plan just made does not compare the same twice: {why}")
    })?;
    Ok(Obtained::Made(made, index))
}

/// A saved plan, built again from its inputs when it may be executed; Err
/// inside says why a new one is needed. An edited plan file is refused.
fn saved_index(w: &Wanted<'_>, saved: &Meta) -> Result<std::result::Result<PlanIndex, String>> {
    let files = w.files;
    if saved.executed_at.is_none() && saved.edited(&files.plan)? {
        return Err(crate::error::UsageError::new(format!(
            "{} was edited after `segsync plan` wrote it; the plan file is a record of what load would send, never an input, so nothing was sent. Edit {} instead and run `segsync plan` again (or delete the plan file)",
            files.plan.display(),
            files.customers.display()
        ))
        .into());
    }
    let now = super::inputs(files, &saved.hashes.export_file, w.schema)?;
    if let Some(why) = saved.stale(&now, w.target, w.rules, w.max_age) {
        return Ok(Err(why));
    }
    replay(saved, w.schema, w.invalid_lines)
}
