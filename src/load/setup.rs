//! Everything `load` does before it sends: find the input, resolve the
//! project, weigh hand edits, read the project's metadata schema, learn who
//! exists (for the import), validate every row, and read the ledger. A
//! problem found here is reported with nothing sent.

use super::batch::Batcher;
use super::import::{self, Existing, Method};
use super::input::{self, validate, OnInvalid, Validated};
use super::Args;
use crate::api::http::HttpSettings;
use crate::api::voucherify::{VoucherifyClient, MAX_REQUEST_BYTES};
use crate::error::UsageError;
use crate::mapping::metadata_schema::CustomerSchema;
use crate::state::ledger::{self, LedgerState};
use crate::state::{self, manifest};
use crate::ui;
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Problems by CSV line: (column, what is wrong).
pub type Problems = HashMap<u64, Vec<(String, String)>>;

/// What a load knows before it sends.
pub struct Setup {
    pub input: PathBuf,
    /// Every file kept beside the customers file.
    pub files: state::Beside,
    /// The project (API host and application id); None for a dry run without keys.
    pub target: Option<String>,
    pub client: Option<VoucherifyClient>,
    pub validated: Validated,
    pub rejects: PathBuf,
    pub ledger_file: PathBuf,
    pub ledger: LedgerState,
    pub edits: Option<crate::diff::EditReport>,
    /// Who exists, for `--method import` and `auto` (from a new export).
    pub existing: Option<Existing>,
    /// The project's customer metadata schema (None for a dry run without keys).
    pub schema: Option<CustomerSchema>,
    /// The plan being executed (`super::by_plan`); None: the ledger decides.
    pub plan: Option<Arc<crate::plan::file::PlanIndex>>,
    /// Rows refused beyond what the file itself shows (edits, the schema).
    refused: Problems,
}

impl Setup {
    /// The valid rows still to send, in batches, given what is `confirmed`.
    pub fn batcher(&self, args: &Args, confirmed: Arc<HashSet<u128>>) -> Result<Batcher> {
        let b = Batcher::new(
            &self.input,
            self.validated.invalid_lines.clone(),
            confirmed,
            args.full || self.plan.is_some(),
            args.batch_size as usize,
            args.max_batch_bytes.min(MAX_REQUEST_BYTES as u64) as usize,
        )?;
        // A plan's customers only, each with the plan's request.
        Ok(match &self.plan {
            Some(p) => {
                let (keep, body) = (p.clone(), p.clone());
                b.only(move |c| keep.sends(&c.source_id))
                    .rewrite(move |c| Ok(body.body_of(&c.source_id)))
            }
            None => b,
        })
    }

    /// Refuse more rows (found once a plan says who exists): validate
    /// again, so they fail the load (exit 2, nothing sent) or, with
    /// `--skip-invalid`, go to the rejects file.
    pub fn refuse(&mut self, args: &Args, more: Problems) -> Result<()> {
        if more.is_empty() {
            return Ok(());
        }
        merge(&mut self.refused, more);
        self.validated = validate_rows(&self.input, args, &self.rejects, &self.refused)?;
        Ok(())
    }
}

pub fn http_settings(args: &Args) -> HttpSettings {
    HttpSettings {
        concurrency: args.concurrency as usize * 2,
        rate: args.rate_limit.filter(|r| *r > 0),
        rate_period: Duration::from_secs(60),
        burst: Some(1),
        timeout: Duration::from_secs(120),
        policy: crate::api::http::RetryPolicy {
            max_quota_wait: Duration::from_secs(args.max_wait * 60),
            ..Default::default()
        },
        max_file_bytes: args.exports.max_export_bytes,
        ..Default::default()
    }
}

pub async fn setup(args: &Args, data_dir: &Path) -> Result<Setup> {
    let input = args
        .input
        .clone()
        .unwrap_or_else(|| state::customers(data_dir));
    if !input.exists() {
        return Err(UsageError::new(format!("{} not found: `segsync transform` writes it, or write one by hand (source_id column required), or pass --in FILE", input.display())).into());
    }
    let cfg = if args.dry_run {
        args.voucherify.resolve().ok()
    } else {
        Some(args.voucherify.resolve()?)
    };
    let target = cfg
        .as_ref()
        .map(|c| crate::config::project_target(&c.api_url, &c.app_id));
    match manifest::edited_since_transform(&input) {
        Err(e) => ui::warn(format!("load: {e}")),
        Ok(Some(true)) => ui::info(format!("load: {} was edited after transform wrote it (or written by hand); loading it as it is", input.display())),
        Ok(_) => {}
    }
    let edits = check_edits(&input, args)?;
    let mut refused = refused_edits(edits.as_ref(), args.accept_edits);
    let client = match cfg {
        Some(cfg) => Some(VoucherifyClient::new(cfg, http_settings(args))?),
        None => None,
    };
    let files = state::Beside::of(&input);
    let ledger_file = files.ledger.clone();
    if !args.dry_run {
        let dropped = ledger::repair(&ledger_file)?;
        if dropped > 0 {
            ui::warn(format!(
                "{}: discarded a torn last line ({dropped} bytes) left by an interrupted run",
                ledger_file.display()
            ));
        }
    }
    let ledger = ledger::read(&ledger_file, target.as_deref())?;
    say_other_project(&ledger, &ledger_file, target.as_deref());
    let mut existing = None;
    let mut project_schema = None;
    if let Some(client) = &client {
        let schema = read_schema(client, &input, &mut refused).await?;
        project_schema = Some(schema.clone());
        // With a plan, its export says who exists (`super::by_plan`).
        if args.method != Method::Bulk && !args.plans() {
            let ex = import::existing(
                client,
                &files,
                ledger.confirmed_ids.clone(),
                Duration::from_secs(args.export_timeout),
            )
            .await?;
            if ex.unknown.is_none() {
                let missing = input::required_problems(&input, &schema, |sid| !ex.contains(sid))?;
                merge(&mut refused, missing);
            }
            existing = Some(ex);
        }
    }
    let rejects = files.rejects.clone();
    let validated = validate_rows(&input, args, &rejects, &refused)?;
    Ok(Setup {
        input,
        files,
        target,
        client,
        validated,
        rejects,
        ledger_file,
        ledger,
        edits,
        existing,
        schema: project_schema,
        plan: None,
        refused,
    })
}

fn validate_rows(
    input: &Path,
    args: &Args,
    rejects: &Path,
    refused: &Problems,
) -> Result<Validated> {
    if args.skip_invalid {
        validate(input, OnInvalid::SetAside(rejects), refused)
    } else {
        let v = validate(input, OnInvalid::Fail, refused)?;
        // A rejects file from an earlier --skip-invalid run no longer applies.
        let _ = std::fs::remove_file(rejects);
        Ok(v)
    }
}

fn merge(into: &mut Problems, from: Problems) {
    for (line, p) in from {
        into.entry(line).or_default().extend(p);
    }
}

/// What Voucherify would reject one customer at a time after sending, found
/// before anything is sent: every row against the project's metadata schema.
async fn read_schema(
    client: &VoucherifyClient,
    input: &Path,
    refused: &mut Problems,
) -> Result<CustomerSchema> {
    let schema = crate::mapping::metadata_schema::read(client).await.map_err(|e| {
        crate::api::api_error(e).context("cannot read the project's customer metadata schema, which load checks every row against before sending")
    })?;
    let problems = input::schema_problems(input, &schema)?;
    if !schema.properties.is_empty() || schema.allow_defined_only == Some(true) {
        ui::info(format!(
            "load: metadata checked against the project's customer schema ({} keys defined{}): {} rows with problems",
            schema.properties.len(),
            if schema.allow_defined_only == Some(true) { ", defined keys only" } else { "" },
            problems.len()
        ));
    }
    merge(refused, problems);
    Ok(schema)
}

/// Say so when the ledger describes only other Voucherify projects.
fn say_other_project(ledger: &LedgerState, file: &Path, target: Option<&str>) {
    if let Some(t) = target {
        if !ledger.targets.is_empty() && !ledger.targets.contains(t) {
            ui::info(format!(
                "load: {} describes another Voucherify project ({}); nothing is confirmed in this one ({t}), so every row is sent to it",
                file.display(),
                ledger.targets.iter().cloned().collect::<Vec<_>>().join(", "),
            ));
        }
    }
}

/// When `input` was edited after transform wrote it and the profiles it came
/// from are beside it: what the edit changed (`segsync diff`).
fn check_edits(input: &Path, args: &Args) -> Result<Option<crate::diff::EditReport>> {
    if !matches!(manifest::edited_since_transform(input), Ok(Some(true))) {
        return Ok(None);
    }
    let Some(profiles) = crate::diff::profiles_for(input, None) else {
        return Ok(None);
    };
    let report = crate::diff::compare(input, &profiles, &args.mapping.resolve()?)?;
    ui::info(format!(
        "load: {} is {}-separated; edits against what transform would write from {}: {}",
        input.display(),
        crate::spreadsheet::edits::separator_name(report.separator),
        profiles.display(),
        report.counts()
    ));
    for c in report
        .damaged()
        .filter(|c| !c.damage.is_some_and(|d| d.refused_by_default()))
    {
        ui::warn(format!(
            "{}:{}: {}: {:?} (was {:?}) {}",
            input.display(),
            c.line,
            c.column,
            c.new,
            c.old,
            c.damage.map(|d| d.explain()).unwrap_or_default()
        ));
    }
    Ok(Some(report))
}

/// The rows `load` refuses unless `--accept-edits`: values that lost their
/// leading zeros (almost never intended), as validation problems by line.
fn refused_edits(report: Option<&crate::diff::EditReport>, accept: bool) -> Problems {
    let mut out = Problems::default();
    if accept {
        return out;
    }
    for c in report.iter().flat_map(|r| r.damaged()) {
        if let Some(d) = c.damage.filter(|d| d.refused_by_default()) {
            out.entry(c.line).or_default().push((
                c.column.to_string(),
                format!(
                    "{:?} (was {:?} in profiles.ndjson) {}",
                    c.new,
                    c.old,
                    d.explain()
                ),
            ));
        }
    }
    out
}
