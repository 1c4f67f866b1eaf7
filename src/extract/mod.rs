//! `segsync extract`: Segment Profile API → `profiles.ndjson`.
//!
//! Reads every profile of the space: the [`lister`] walks the listing (pages
//! of 100) in a task of its own, running ahead of the fetches; the
//! [`fetcher`] reads every page of each profile's traits (200 a page) and
//! external ids (100 a page), up to `--concurrency` profiles in flight. One
//! token bucket (`--rate-limit`) paces every Segment request.
//!
//! Writes and resumes through the [`journal`]: a line per profile in
//! `profiles.ndjson.partial`, a checkpoint after every fully written listing
//! page, and a rename when the listing is exhausted. `--incremental` copies
//! unchanged profiles from the [`previous`] file instead of fetching them.
//! Memory stays flat: only in-flight pages are held.

pub mod census;
pub mod fetcher;
pub mod hedge;
pub mod ids;
pub mod journal;
pub mod lister;
pub mod previous;
pub mod profiles_sync;
pub mod scheduler;

use crate::api::http::HttpSettings;
use crate::api::segment::SegmentClient;
use crate::config::SegmentArgs;
use crate::error::{ApiError, UsageError};
use crate::mapping::MappingArgs;
use crate::state;
use crate::ui;
use anyhow::Result;
use journal::Journal;
use previous::PreviousFile;
use scheduler::Scheduler;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The ceiling of profiles in flight; the adaptive controller keeps fewer
/// when answers are fast (100 req/s × 600 ms answers needs about 60).
pub const DEFAULT_CONCURRENCY: u32 = 128;
pub const DEFAULT_RATE_LIMIT: u32 = 100;

/// `--concurrency`: 1 to 512 profiles in flight.
pub fn concurrency_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=512)
}

/// Listing pages read ahead of the detail fetches. Listing is serial (each
/// page needs the previous cursor), so at high rate limits it must run ahead.
pub const LISTING_LOOKAHEAD: usize = 4;

/// Where profiles come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// Segment's Profile API (100 requests a second per space)
    Api,
    /// Profiles Sync tables unloaded by a warehouse into UNLOAD_DIR (user_traits/, user_identifiers/)
    ProfilesSync,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where to read profiles: the Profile API, or Profiles Sync unloads in UNLOAD_DIR
    #[arg(long = "from", value_enum, default_value_t = Source::Api)]
    pub from: Source,
    /// The unload folder (with --from profiles-sync)
    #[arg(value_name = "UNLOAD_DIR", required_if_eq("from", "profiles-sync"))]
    pub dir: Option<PathBuf>,
    /// With --from profiles-sync: leave out files of the unload whose path (below UNLOAD_DIR) or name matches this glob; every other file is read, skipped as a marker, or refused by name (repeatable)
    #[arg(long = "ignore", value_name = "GLOB")]
    pub ignore: Vec<String>,
    /// How Profiles Sync trait values are read [default: JSON when every value parses as JSON, else text]
    #[arg(long = "trait-values", value_enum)]
    pub trait_values: Option<profiles_sync::TraitValues>,
    /// Read the profiles of these external ids instead of listing the space: a CSV whose header names the id type (user_id, email, …) in its first column, optionally with updated_at; only Segment's documented per-profile routes are used
    #[arg(long = "ids", value_name = "FILE", conflicts_with_all = ["dir", "all_traits"])]
    pub ids: Option<PathBuf>,
    /// With --ids: the file is one bare column of ids of this type, without a header
    #[arg(long = "id-type", value_name = "TYPE", requires = "ids")]
    pub id_type: Option<String>,
    /// Output file [default: DATA_DIR/profiles.ndjson]
    #[arg(long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Most profiles fetched at once: the ceiling of the adaptive concurrency, which keeps just enough in flight to use the rate limit whatever the answers take
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = concurrency_parser())]
    pub concurrency: u32,
    /// Keep exactly --concurrency profiles in flight instead of adapting (for comparison)
    #[arg(long = "fixed-concurrency")]
    pub fixed_concurrency: bool,
    /// Segment requests per second, all endpoints together (Segment allows 100 per space); 0 = no limit
    #[arg(long = "rate-limit", default_value_t = DEFAULT_RATE_LIMIT, value_name = "PER_SECOND")]
    pub rate_limit: u32,
    /// Ignore any checkpoint and unfinished file: start the extraction over
    #[arg(long)]
    pub fresh: bool,
    /// Reuse profiles from the previous complete file whose metadata.updated_at is unchanged
    #[arg(long)]
    pub incremental: bool,
    /// Copy every trait and every external id of every profile (default: only
    /// what the mapping reads, and traits only of profiles with a source_id type)
    #[arg(long = "all-traits")]
    pub all_traits: bool,
    #[command(flatten)]
    pub mapping: MappingArgs,
    #[command(flatten)]
    pub segment: SegmentArgs,
}

/// Summary of a run, for the caller and tests.
#[derive(Debug, Default)]
pub struct Summary {
    pub profiles: u64,
    /// Profiles listed (or ids in the `--ids` file), each once.
    pub listed: u64,
    pub fetched: u64,
    pub reused: u64,
    pub missing: u64,
    pub requests: u64,
    /// Listing passes made (1 + re-lists).
    pub passes: u32,
    /// Profiles the first pass missed that a re-list found.
    pub found_by_relisting: u64,
    /// Listing entries skipped because the profile was already settled.
    pub repeated: u64,
    /// Requests Segment answered 429.
    pub throttled: u64,
    /// Reads sent a second time at the end of the run (`hedge`), of `requests`.
    pub hedged: u64,
}

/// Listing passes at most: the first walk and up to five re-lists.
pub const MAX_PASSES: u32 = 6;

pub async fn run(args: &Args, data_dir: &Path) -> Result<Summary> {
    run_counting(args, data_dir, None).await
}

/// [`run`], counting in `census` which `source_id` each profile maps to
/// (`run`'s early sending): the ids of every profile are then read before
/// the traits of most.
pub async fn run_counting(
    args: &Args,
    data_dir: &Path,
    census: Option<Arc<census::Census>>,
) -> Result<Summary> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| state::profiles(data_dir));
    if args.from == Source::ProfilesSync {
        return from_profiles_sync(args, &out);
    }
    if args.dir.is_some() || args.trait_values.is_some() {
        return Err(
            UsageError::new("a folder and --trait-values go with --from profiles-sync").into(),
        );
    }
    let cfg = args.segment.resolve()?;
    let mapping = args.mapping.resolve()?;
    let listed_by = match &args.ids {
        Some(path) => Some(Arc::new(ids::IdsFile::open(path, args.id_type.as_deref())?)),
        None => None,
    };
    let wanted = Arc::new(fetcher::Wanted {
        id_types: mapping.source_id_types.clone(),
        traits: mapping.traits_read().into_iter().collect(),
        everything: args.all_traits,
        by_external_id: listed_by.is_some(),
    });
    let source = listed_by
        .as_ref()
        .map(|f| f.source.clone())
        .unwrap_or_default();
    if let (Some(f), Some(path)) = (&listed_by, &args.ids) {
        ui::info(format!(
            "extract: {} ids of type {} from {}, read by the documented routes ({}:ID/external_ids, then traits)",
            f.len(),
            f.id_type,
            path.display(),
            f.id_type
        ));
    }
    let (mut journal, seen) = Journal::open(
        &out,
        &cfg,
        args.fresh,
        args.incremental,
        census.as_deref(),
        &source,
    )?;
    let incremental = journal.cp.incremental || args.incremental;
    journal.cp.source_id_types = wanted.id_types.clone();
    journal.cp.all_traits = wanted.everything;
    journal.cp.traits = wanted.traits.clone();
    let prev = open_previous(&out, incremental)?;
    let settings = HttpSettings {
        concurrency: args.concurrency as usize * 2 + 2,
        rate: (args.rate_limit > 0).then_some(args.rate_limit),
        rate_period: Duration::from_secs(1),
        // A small burst (1/20 s of requests) lets a request that woke late be
        // made up for; Segment's own bucket holds a whole second.
        burst: Some((args.rate_limit / 20).max(1)),
        ..Default::default()
    };
    let client = Arc::new(SegmentClient::new(cfg.clone(), settings)?);
    let started = Instant::now();
    let mut sched = Scheduler::new(
        client.clone(),
        wanted,
        (journal, seen),
        prev,
        scheduler::Pace {
            ceiling: args.concurrency as usize,
            adaptive: !args.fixed_concurrency,
            budget: (args.rate_limit > 0).then_some(f64::from(args.rate_limit)),
        },
        census,
        match listed_by {
            Some(f) => scheduler::Listing::Ids(f),
            None => scheduler::Listing::Api,
        },
    );
    let outcome = sched.run().await;
    sched.stop_listing();
    let listed = sched.listed();
    let requests = client.stats().get(&client.stats().requests);
    let hedged = sched.hedged();
    let Scheduler {
        mut journal,
        mut summary,
        progress,
        listing_pass,
        ..
    } = sched;
    summary.hedged = hedged;
    journal.cp.listed = listed;
    if let Err(e) = outcome {
        // Keep what is written; the checkpoint already points at a safe resume point.
        let _ = journal.commit(Vec::new(), requests);
        progress.finish();
        return Err(e.context(format!(
            "extract stopped after writing {} profiles; rerun `segsync extract` to resume (checkpoint {})",
            journal.lines,
            journal.checkpoint_path().display()
        )));
    }
    summary.profiles = journal.lines;
    summary.listed = listed;
    summary.passes = listing_pass;
    summary.found_by_relisting = journal.cp.found_by_relisting;
    journal.finish(&out, requests)?;
    progress.finish();
    summary.requests = requests;
    summary.throttled = client.stats().get(&client.stats().throttled);
    report(&summary, &out, &client, started);
    Ok(summary)
}

/// `extract --from profiles-sync DIR`: the warehouse unload instead of the API.
fn from_profiles_sync(args: &Args, out: &Path) -> Result<Summary> {
    let mapping = args.mapping.resolve()?;
    let wanted = fetcher::Wanted {
        id_types: mapping.source_id_types.clone(),
        traits: mapping.traits_read().into_iter().collect(),
        everything: args.all_traits,
        by_external_id: false,
    };
    let dir = args.dir.clone().ok_or_else(|| {
        UsageError::new(
            "--from profiles-sync needs the unload folder: segsync extract --from profiles-sync DIR",
        )
    })?;
    let ignore = args
        .ignore
        .iter()
        .map(|g| {
            glob::Pattern::new(g)
                .map_err(|e| UsageError::new(format!("--ignore {g:?}: not a glob ({e})")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let s = profiles_sync::run(&dir, &ignore, out, &wanted, args.trait_values)?;
    Ok(Summary {
        profiles: s.profiles,
        ..Default::default()
    })
}

fn open_previous(out: &Path, incremental: bool) -> Result<Option<PreviousFile>> {
    if !incremental {
        return Ok(None);
    }
    if !out.exists() {
        ui::warn(format!(
            "--incremental: no previous {} to reuse; extracting everything",
            out.display()
        ));
        return Ok(None);
    }
    let p = PreviousFile::open(out)?;
    ui::info(format!(
        "extract: incremental: {} profiles in the previous {}",
        p.len(),
        out.display()
    ));
    Ok(Some(p))
}

fn report(summary: &Summary, out: &Path, client: &SegmentClient, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let s = client.stats();
    ui::info(format!(
        "extract: {} profiles in {} of {} listed ({} fetched, {} reused unchanged, {} could not be read{})",
        summary.profiles,
        out.display(),
        summary.listed,
        summary.fetched,
        summary.reused,
        summary.missing,
        if summary.missing > 0 {
            format!(
                ": Segment answered 404, named in {}",
                crate::state::missing(out).display()
            )
        } else {
            String::new()
        }
    ));
    ui::info(format!(
        "extract: {} listing passes ({} profiles found by re-listing, {} repeats skipped): the list is sorted by activity, so it is re-listed until a pass finds nothing new",
        summary.passes, summary.found_by_relisting, summary.repeated
    ));
    ui::info(format!(
        "extract: {}; {} of them hedged (a slow last answer asked again); {:.2} requests per fetched profile; {:.1}s, {}",
        s.summary(),
        summary.hedged,
        if summary.fetched > 0 {
            s.get(&s.requests) as f64 / summary.fetched as f64
        } else {
            0.0
        },
        secs,
        ui::rate_of(
            (summary.fetched + summary.reused) as f64 / secs.max(0.001),
            "profiles"
        )
    ));
}

/// 401/403/404 on the listing: the token, space or region is wrong, or
/// Segment refuses the listing itself (it is not among the Profile API's
/// documented routes): a configuration error (exit 2) that says what to
/// check and the documented way around.
pub(crate) fn listing_error(e: ApiError) -> anyhow::Error {
    match e.status() {
        Some(401) | Some(403) | Some(404) => UsageError::new(format!(
            "{e}\nSegment refused the profile listing. Check SEGMENT_ACCESS_TOKEN (a Profile API token of this space), SEGMENT_SPACE_ID, and SEGMENT_API_URL \
             (EU spaces use https://profiles.euw1.segment.com). If they are right: the listing is not among the Profile API's documented routes \
             (Segment removed it from its docs as \"not a production grade API endpoint\") and may be refused; extract by the documented routes instead, \
             from a list of ids: `segsync extract --ids FILE` (a CSV whose header is user_id, or another external id type)"
        ))
        .into(),
        _ => e.into(),
    }
}
