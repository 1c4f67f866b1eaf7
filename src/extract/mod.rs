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

pub mod fetcher;
pub mod journal;
pub mod lister;
pub mod previous;
pub mod profiles_sync;

use crate::config::{MappingArgs, SegmentArgs};
use crate::error::{ApiError, UsageError};
use crate::http::HttpSettings;
use crate::segment::SegmentClient;
use crate::state;
use crate::ui::{self, Progress};
use anyhow::Result;
use fetcher::Fetched;
use futures::stream::{FuturesUnordered, StreamExt};
use journal::Journal;
use previous::PreviousFile;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DEFAULT_CONCURRENCY: u32 = 16;
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
    /// Profiles Sync tables unloaded by a warehouse into DIR (user_traits/, user_identifiers/)
    ProfilesSync,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where to read profiles: the Profile API, or Profiles Sync unloads in DIR
    #[arg(long = "from", value_enum, default_value_t = Source::Api)]
    pub from: Source,
    /// The unload folder (with --from profiles-sync)
    #[arg(value_name = "DIR", required_if_eq("from", "profiles-sync"))]
    pub dir: Option<PathBuf>,
    /// How Profiles Sync trait values are read [default: JSON when every value parses as JSON, else text]
    #[arg(long = "trait-values", value_enum)]
    pub trait_values: Option<profiles_sync::TraitValues>,
    /// Output file [default: DATA_DIR/profiles.ndjson]
    #[arg(long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Profiles fetched at once (each has its traits and external ids requests in flight together)
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = concurrency_parser())]
    pub concurrency: u32,
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
}

/// A listing page being worked on.
struct PageState {
    /// Cursor that lists the page after this one (None: this was the last).
    next: Option<String>,
    /// Profiles not yet written or found missing.
    remaining: usize,
    /// The listing pass the page belongs to.
    pass: u32,
}

/// Listing passes at most: the first walk and up to five re-lists.
pub const MAX_PASSES: u32 = 6;

pub async fn run(args: &Args, data_dir: &Path) -> Result<Summary> {
    if args.from == Source::ProfilesSync {
        let mapping = args.mapping.resolve()?;
        let wanted = fetcher::Wanted {
            id_types: mapping.source_id_types.clone(),
            traits: mapping.traits_read().into_iter().collect(),
            everything: args.all_traits,
        };
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| state::profiles(data_dir));
        let dir = args
            .dir
            .clone()
            .ok_or_else(|| UsageError::new("--from profiles-sync needs the unload folder: segsync extract --from profiles-sync DIR"))?;
        let s = profiles_sync::run(&dir, &out, &wanted, args.trait_values)?;
        return Ok(Summary {
            profiles: s.profiles,
            ..Default::default()
        });
    }
    if args.dir.is_some() || args.trait_values.is_some() {
        return Err(
            UsageError::new("a folder and --trait-values go with --from profiles-sync").into(),
        );
    }
    let cfg = args.segment.resolve()?;
    let mapping = args.mapping.resolve()?;
    let wanted = Arc::new(fetcher::Wanted {
        id_types: mapping.source_id_types.clone(),
        traits: mapping.traits_read().into_iter().collect(),
        everything: args.all_traits,
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| state::profiles(data_dir));
    let (mut journal, mut seen) = Journal::open(&out, &cfg, args.fresh, args.incremental)?;
    let incremental = journal.cp.incremental || args.incremental;
    journal.cp.source_id_types = wanted.id_types.clone();
    journal.cp.all_traits = wanted.everything;
    journal.cp.traits = wanted.traits.clone();
    let mut prev = open_previous(&out, incremental)?;

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
    let requests = || client.stats().get(&client.stats().requests);

    let progress = Progress::new("extract", "profiles", prev.as_ref().map(|p| p.len() as u64));
    progress.set_position(journal.lines);
    let started = Instant::now();
    let mut summary = Summary {
        reused: journal.cp.reused,
        missing: journal.cp.missing.len() as u64,
        ..Default::default()
    };
    // The pass the lister is walking, and what it found that was not settled.
    let mut listing_pass = journal.cp.pass.max(1);
    // Resumed in the middle of a re-list: what it had found is unknown.
    let mut found = if listing_pass > 1 { 1 } else { 0 };

    let (mut lister, mut page_rx) =
        lister::spawn(client.clone(), journal.cp.cursor.clone(), LISTING_LOOKAHEAD);
    let mut in_flight = FuturesUnordered::new();
    let mut queue: VecDeque<(u64, Map<String, Value>)> = VecDeque::new();
    let mut pages: BTreeMap<u64, PageState> = BTreeMap::new();
    let mut next_page_index = journal.cp.pages_committed;
    let mut listing_done = false;
    let concurrency = args.concurrency as usize;
    let mut last_checkpoint = Instant::now();

    let outcome: Result<()> = async {
        loop {
            while in_flight.len() < concurrency {
                let Some((page, entry)) = queue.pop_front() else { break };
                in_flight.push(fetcher::fetch(client.clone(), wanted.clone(), page, entry));
            }
            if listing_done && in_flight.is_empty() && queue.is_empty() {
                commit_pages(&mut journal, &mut pages);
                break;
            }
            // Keep a page's worth queued beyond what is in flight, so the
            // fetches never wait for the (serial) listing.
            let want_page = !listing_done
                && queue.len() < concurrency + crate::segment::PROFILES_LIMIT as usize;
            tokio::select! {
                Some(Fetched { page, segment_id, outcome }) = in_flight.next(), if !in_flight.is_empty() => {
                    match outcome? {
                        Some(rec) => {
                            journal.write_record(&rec)?;
                            summary.fetched += 1;
                            progress.inc(1);
                        }
                        None => {
                            ui::debug(format!("extract: profile {segment_id} disappeared before it could be read (404); skipped"));
                            journal.cp.missing.push(segment_id.clone());
                            summary.missing += 1;
                        }
                    }
                    if let Some(p) = pages.get_mut(&page) {
                        p.remaining -= 1;
                    }
                }
                msg = page_rx.recv(), if want_page => {
                    match msg {
                        None => listing_done = true,
                        Some(Err(e)) => return Err(listing_error(e)),
                        Some(Ok((page, next))) => {
                            let index = next_page_index;
                            next_page_index += 1;
                            let mut state = PageState { next: next.clone(), remaining: 0, pass: listing_pass };
                            for entry in page.profiles {
                                let id = fetcher::segment_id(&entry).to_string();
                                if !seen.insert(&id) {
                                    summary.repeated += 1;
                                    continue;
                                }
                                found += 1;
                                if let Some(line) = prev.as_mut().and_then(|p| p.reusable(&id, fetcher::updated_at(&entry))) {
                                    journal.write_line(line)?;
                                    summary.reused += 1;
                                    journal.cp.reused += 1;
                                    progress.inc(1);
                                    continue;
                                }
                                state.remaining += 1;
                                queue.push_back((index, entry));
                            }
                            pages.insert(index, state);
                            if next.is_none() {
                                // The pass's listing is over. The list is sorted by
                                // activity and its cursor works like an offset, so
                                // profiles that moved while we listed were skipped:
                                // list again (while this pass's last profiles are
                                // still being fetched) until a pass finds nothing new.
                                if listing_pass > 1 {
                                    journal.cp.found_by_relisting += found;
                                }
                                if (listing_pass > 1 && found == 0) || listing_pass >= MAX_PASSES {
                                    if listing_pass >= MAX_PASSES && found > 0 {
                                        ui::warn(format!("extract: the re-list pass {listing_pass} still found {found} profiles not yet written (the space changes faster than it can be listed); some that moved may be missing: rerun `segsync extract --incremental` later"));
                                    }
                                    listing_done = true;
                                } else {
                                    ui::debug(format!("extract: pass {listing_pass} found {found} profiles; re-listing the space"));
                                    listing_pass += 1;
                                    found = 0;
                                    lister.abort();
                                    (lister, page_rx) = lister::spawn(client.clone(), None, LISTING_LOOKAHEAD);
                                }
                            }
                        }
                    }
                }
            }
            if commit_pages(&mut journal, &mut pages) && last_checkpoint.elapsed() >= Duration::from_millis(200) {
                journal.commit(Vec::new(), requests())?;
                last_checkpoint = Instant::now();
            }
            progress.tick(|| {
                let s = client.stats();
                format!("pass {}, {} in flight, {} requests, {} retries, {} answered 429", listing_pass, in_flight.len(), s.get(&s.requests), s.get(&s.retries), s.get(&s.throttled))
            });
        }
        Ok(())
    }
    .await;
    lister.abort();

    if let Err(e) = outcome {
        // Keep what is written; the checkpoint already points at a safe resume point.
        let _ = journal.commit(Vec::new(), requests());
        progress.finish();
        return Err(e.context(format!(
            "extract stopped after writing {} profiles; rerun `segsync extract` to resume (checkpoint {})",
            journal.lines,
            journal.checkpoint_path().display()
        )));
    }
    drop(prev);
    summary.profiles = journal.lines;
    summary.passes = listing_pass;
    summary.found_by_relisting = journal.cp.found_by_relisting;
    journal.finish(&out, requests())?;
    progress.finish();
    summary.requests = requests();
    report(&summary, &out, &client, started);
    Ok(summary)
}

/// Commit every leading page whose profiles are all written; true if any.
fn commit_pages(journal: &mut Journal, pages: &mut BTreeMap<u64, PageState>) -> bool {
    let mut advanced = false;
    while let Some(entry) = pages.first_entry() {
        if entry.get().remaining > 0 {
            break;
        }
        let state = entry.remove();
        journal.cp.cursor = state.next;
        journal.cp.pass = state.pass;
        journal.cp.pages_committed += 1;
        advanced = true;
    }
    advanced
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
        "extract: {} profiles in {} ({} fetched, {} reused unchanged, {} gone before they could be read)",
        summary.profiles,
        out.display(),
        summary.fetched,
        summary.reused,
        summary.missing
    ));
    ui::info(format!(
        "extract: {} listing passes ({} profiles found by re-listing, {} repeats skipped): the list is sorted by activity, so it is re-listed until a pass finds nothing new",
        summary.passes, summary.found_by_relisting, summary.repeated
    ));
    ui::info(format!(
        "extract: {}; {:.2} requests per fetched profile; {:.1}s, {:.1} profiles/s",
        s.summary(),
        if summary.fetched > 0 {
            s.get(&s.requests) as f64 / summary.fetched as f64
        } else {
            0.0
        },
        secs,
        (summary.fetched + summary.reused) as f64 / secs.max(0.001)
    ));
}

/// 401/403/404 on the listing mean the token, space or region is wrong:
/// a configuration error (exit 2) that says what to check.
fn listing_error(e: ApiError) -> anyhow::Error {
    match e.status() {
        Some(401) | Some(403) | Some(404) => UsageError::new(format!(
            "{e}\ncheck SEGMENT_ACCESS_TOKEN (a Profile API token of this space), SEGMENT_SPACE_ID, and SEGMENT_API_URL \
             (EU spaces use https://profiles.euw1.segment.com)"
        ))
        .into(),
        _ => e.into(),
    }
}
