//! The API path's scheduler: the listing runs ahead in a task of its own
//! ([`super::lister`]); listed profiles queue up; as many reads are in
//! flight at once as the adaptive controller allows ([`crate::api::adaptive`]),
//! so the rate limit's budget stays busy whatever the answers take; written
//! profiles are journaled ([`super::journal`]) and a page is committed to the
//! checkpoint once all its profiles are written. At the end of a listing pass
//! the list is walked again (it is sorted by activity) until a pass finds
//! nothing new.
//!
//! A profile is read in two steps, its external ids and then (when they name
//! a `source_id` type) its traits, each from a queue of its own. By default
//! a profile's traits go before the next profile's ids, so profiles are
//! written soon after they are listed. With a [`Census`] (`run`), the ids go
//! first: the census is complete once every listed profile's ids are read,
//! about halfway through, and early sending may start.

use super::census::Census;
use super::fetcher::{self, Fetched, Step, Wanted};
use super::hedge::Hedge;
use super::ids::IdsFile;
use super::journal::{Journal, Seen};
use super::lister::{self, Listed};
use super::previous::PreviousFile;
use super::{Summary, LISTING_LOOKAHEAD, MAX_PASSES};
use crate::api::adaptive::{Controller, Window};
use crate::api::segment::{Lookup, SegmentClient};
use crate::ui::{self, Progress};
use anyhow::Result;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;

/// Listed profiles queued ahead of the fetches at most.
pub const QUEUE_AHEAD: usize = 10_000;

/// Fewer profiles that cannot be read than this never stop an extract.
const MIN_MISSING: usize = 20;

/// How often the controller looks at the answers of the last moments.
const ADAPT_EVERY: Duration = Duration::from_millis(250);

/// A listing page being worked on.
struct PageState {
    /// Cursor that lists the page after this one (None: this was the last).
    next: Option<String>,
    /// Profiles not yet written or found missing.
    remaining: usize,
    /// The listing pass the page belongs to.
    pass: u32,
}

/// Counters of the HTTP layer at the start of the current window.
#[derive(Default, Clone, Copy)]
struct Mark {
    answers: u64,
    micros: u64,
    throttled: u64,
}

/// Where profiles are listed from.
pub enum Listing {
    /// Segment's profile listing, walked again until a pass finds nothing
    /// new (it is sorted by activity).
    Api,
    /// An `--ids` file: one pass.
    Ids(Arc<IdsFile>),
}

/// How many reads the scheduler may keep in flight.
pub struct Pace {
    /// The most at once (`--concurrency`).
    pub ceiling: usize,
    /// Adapt below the ceiling (false: keep the ceiling, for comparison).
    pub adaptive: bool,
    /// Requests a second the rate limit allows, when there is one.
    pub budget: Option<f64>,
}

pub struct Scheduler {
    client: Arc<SegmentClient>,
    wanted: Arc<Wanted>,
    pub journal: Journal,
    seen: Seen,
    prev: Option<PreviousFile>,
    pub summary: Summary,
    pub progress: Progress,
    in_flight: FuturesUnordered<BoxFuture<'static, Step>>,
    /// Listed profiles whose ids are still to be read.
    queue: VecDeque<(u64, Map<String, Value>)>,
    /// Profiles whose ids are read, their traits still to be.
    traits_queue: VecDeque<(u64, Map<String, Value>, Vec<Value>)>,
    /// Reads of ids in flight.
    ids_in_flight: usize,
    /// Which `source_id`s the profiles map to (`run`); ids are read first.
    census: Option<Arc<Census>>,
    pages: BTreeMap<u64, PageState>,
    next_page_index: u64,
    /// The pass the lister is walking, and what it found that was not settled.
    pub listing_pass: u32,
    found: u64,
    listing_done: bool,
    listing: Listing,
    lister: JoinHandle<()>,
    page_rx: Receiver<Listed>,
    control: Controller,
    hedge: Arc<Hedge>,
    /// Adapt (false: keep the ceiling, for comparison).
    adaptive: bool,
    mark: Mark,
    marked_at: Instant,
    last_checkpoint: Instant,
}

impl Scheduler {
    /// Start listing where the journal's checkpoint says.
    pub fn new(
        client: Arc<SegmentClient>,
        wanted: Arc<Wanted>,
        (journal, seen): (Journal, Seen),
        prev: Option<PreviousFile>,
        pace: Pace,
        census: Option<Arc<Census>>,
        listing: Listing,
    ) -> Scheduler {
        let Pace {
            ceiling,
            adaptive,
            budget,
        } = pace;
        // The total: the ids of an --ids file, else the previous extract's
        // size until this listing's first pass is over (it lists far ahead
        // of the reads, so the bar soon shows the whole).
        let total = match &listing {
            Listing::Ids(f) => Some(f.len() as u64),
            Listing::Api => prev.as_ref().map(|p| p.len() as u64),
        };
        let progress = Progress::new("extract", "profiles", total);
        progress.set_position(journal.lines);
        let summary = Summary {
            reused: journal.cp.reused,
            missing: journal.cp.missing.len() as u64,
            ..Default::default()
        };
        let listing_pass = journal.cp.pass.max(1);
        let (lister, page_rx) = spawn_listing(&listing, &client, journal.cp.cursor.clone());
        // Start high enough for a slow API (the bucket paces what is
        // sent; a 429 or rising answer times bring it down).
        let initial = if adaptive { ceiling.min(64) } else { ceiling };
        Scheduler {
            client,
            wanted,
            next_page_index: journal.cp.pages_committed,
            journal,
            seen,
            prev,
            summary,
            progress,
            in_flight: FuturesUnordered::new(),
            queue: VecDeque::new(),
            traits_queue: VecDeque::new(),
            ids_in_flight: 0,
            census,
            pages: BTreeMap::new(),
            listing_pass,
            // Resumed in the middle of a re-list: what it had found is unknown.
            found: u64::from(listing_pass > 1),
            listing_done: false,
            listing,
            lister,
            page_rx,
            control: Controller::new(initial, ceiling).with_budget(budget),
            hedge: Arc::new(Hedge::default()),
            adaptive,
            mark: Mark::default(),
            marked_at: Instant::now(),
            last_checkpoint: Instant::now(),
        }
    }

    /// Profiles listed, each once (settled or queued).
    pub fn listed(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Reads sent a second time at the end of the run.
    pub fn hedged(&self) -> u64 {
        self.hedge.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Profiles in flight the controller allows now.
    pub fn concurrency(&self) -> usize {
        self.control.limit()
    }

    fn requests(&self) -> u64 {
        let s = self.client.stats();
        s.get(&s.requests)
    }

    /// The next read to send: a queued profile's ids, or a profile's traits
    /// (ids first with a census, else traits first).
    fn next_read(&mut self) -> Option<BoxFuture<'static, Step>> {
        let ids_first = self.census.is_some();
        if ids_first {
            self.next_ids().or_else(|| self.next_traits())
        } else {
            self.next_traits().or_else(|| self.next_ids())
        }
    }

    fn next_ids(&mut self) -> Option<BoxFuture<'static, Step>> {
        let (page, entry) = self.queue.pop_front()?;
        self.ids_in_flight += 1;
        Some(fetcher::fetch_ids(
            self.client.clone(),
            self.wanted.clone(),
            self.hedge.clone(),
            page,
            entry,
        ))
    }

    fn next_traits(&mut self) -> Option<BoxFuture<'static, Step>> {
        let next = self.traits_queue.pop_front()?;
        Some(fetcher::fetch_traits(
            self.client.clone(),
            self.wanted.clone(),
            self.hedge.clone(),
            next,
        ))
    }

    /// Nothing is queued: only the reads in flight are left.
    fn queues_empty(&self) -> bool {
        self.queue.is_empty() && self.traits_queue.is_empty()
    }

    /// Fetch, list and write until every pass is done or something fails.
    pub async fn run(&mut self) -> Result<()> {
        loop {
            while self.in_flight.len() < self.control.limit() {
                let Some(read) = self.next_read() else {
                    break;
                };
                self.in_flight.push(read);
            }
            self.census_check();
            if self.listing_done && self.in_flight.is_empty() && self.queues_empty() {
                self.commit_pages();
                return Ok(());
            }
            // Only the last answers are awaited: a slow one holds the run.
            self.hedge
                .set_draining(self.listing_done && self.queues_empty());
            // Keep far more queued than can be in flight (a few hundred
            // bytes an entry): the fetches never wait for the serial
            // listing, and a pass's listing ends early, so the re-list walk
            // overlaps the fetches still queued instead of following them.
            let queued = self.queue.len() + self.traits_queue.len();
            let want_page = !self.listing_done && queued < QUEUE_AHEAD;
            tokio::select! {
                Some(step) = self.in_flight.next(), if !self.in_flight.is_empty() => self.on_step(step)?,
                msg = self.page_rx.recv(), if want_page => self.on_listed(msg)?,
            }
            if self.commit_pages() && self.last_checkpoint.elapsed() >= Duration::from_millis(200) {
                let requests = self.requests();
                self.journal.cp.listed = self.seen.len() as u64;
                self.journal.commit(Vec::new(), requests)?;
                self.last_checkpoint = Instant::now();
            }
            self.adapt();
            self.progress.tick(|| {
                let s = self.client.stats();
                format!(
                    "pass {}, {} in flight, {} requests, {} retried, {} 429s",
                    self.listing_pass,
                    self.in_flight.len(),
                    s.get(&s.requests),
                    s.get(&s.retries),
                    s.get(&s.throttled)
                )
            });
        }
    }

    /// The census is complete once the last pass is listed and every listed
    /// profile's ids are read.
    fn census_check(&self) {
        if let Some(c) = &self.census {
            if self.listing_done && self.queue.is_empty() && self.ids_in_flight == 0 {
                c.set_complete();
            }
        }
    }

    /// Stop the listing task (at the end, or on an error).
    pub fn stop_listing(&self) {
        self.lister.abort();
    }

    /// Hand the controller the answers since the last look.
    fn adapt(&mut self) {
        if !self.adaptive || self.marked_at.elapsed() < ADAPT_EVERY {
            return;
        }
        let s = self.client.stats();
        let now = Mark {
            answers: s.get(&s.answers),
            micros: s.get(&s.answer_micros),
            throttled: s.get(&s.throttled),
        };
        let answers = now.answers - self.mark.answers;
        let window = Window {
            answers,
            mean: Duration::from_micros((now.micros - self.mark.micros) / answers.max(1)),
            throttled: now.throttled - self.mark.throttled,
        };
        if answers >= 10 {
            self.hedge.set_typical(window.mean);
        }
        let before = self.control.limit();
        let after = self.control.observe(window);
        if before != after {
            ui::trace(format!(
                "extract: concurrency {before} -> {after} ({answers} answers, mean {:?}, {} answered 429)",
                window.mean, window.throttled
            ));
        }
        self.mark = now;
        self.marked_at = Instant::now();
    }

    fn on_step(&mut self, step: Step) -> Result<()> {
        match step {
            Step::Ids { page, entry, ids } => {
                self.ids_in_flight -= 1;
                if let Some(c) = &self.census {
                    c.add(&ids);
                }
                self.traits_queue.push_back((page, entry, ids));
                Ok(())
            }
            Step::Done(f) => {
                if f.read_ids.is_none() {
                    self.ids_in_flight -= 1;
                }
                self.on_fetched(*f)
            }
        }
    }

    fn on_fetched(&mut self, f: Fetched) -> Result<()> {
        let Fetched {
            page,
            segment_id,
            outcome,
            read_ids,
        } = f;
        match outcome? {
            Lookup::Found(rec) => {
                if let (Some(c), None) = (&self.census, &read_ids) {
                    c.add(&rec.external_ids);
                }
                self.journal.write_record(&rec)?;
                self.summary.fetched += 1;
                self.progress.inc(1);
            }
            Lookup::Gone(missing) => {
                if let (Some(c), Some(ids)) = (&self.census, &read_ids) {
                    c.remove(ids);
                }
                ui::debug(format!(
                    "extract: profile {segment_id} could not be read: {} answered {}",
                    missing.asked, missing.answered
                ));
                self.journal.note_missing(&segment_id, &missing)?;
                self.journal.cp.missing.push(segment_id);
                self.summary.missing += 1;
                self.progress.inc(1);
                self.too_many_missing(&missing)?;
            }
        }
        if let Some(p) = self.pages.get_mut(&page) {
            p.remaining -= 1;
        }
        Ok(())
    }

    /// More than a small share of the listed profiles could not be read
    /// (2%, and at least 20): Segment refuses the lookups themselves, not
    /// profiles deleted since the listing. Extract stops, saying what it
    /// asked and what Segment answered; nothing downstream runs. Ids from
    /// `--ids FILE` that Segment does not know are no error.
    fn too_many_missing(&self, last: &crate::api::segment::Missing) -> Result<()> {
        let missing = self.journal.cp.missing.len();
        let listed = self.seen.len();
        if self.wanted.by_external_id || missing < MIN_MISSING || missing * 50 <= listed {
            return Ok(());
        }
        Err(crate::error::UsageError::new(format!(
            "extract stopped: {missing} of the {listed} profiles listed so far could not be read: Segment answered 404 to their lookups, in both the `segment_id:` and the bare form (the last: {} answered {}). More than 2% means the lookups are refused, not that profiles were deleted; nothing downstream was run. They are listed in {}. Extract the profiles by the documented routes instead: `segsync extract --ids FILE` (a CSV of user_id or another external id)",
            last.asked,
            last.answered,
            self.journal.missing_path().display()
        ))
        .into())
    }

    fn on_listed(&mut self, msg: Option<Listed>) -> Result<()> {
        let (page, next) = match msg {
            // The listing task hands over every page, the last marked so
            // (no cursor after it), or an error: a channel that closes
            // without either is a task that died, never the listing's end.
            None => anyhow::bail!(
                "the listing stopped before its last page (its task ended unexpectedly); nothing was lost: rerun `segsync extract` to resume"
            ),
            Some(Err(e)) => return Err(super::listing_error(e)),
            Some(Ok(listed)) => listed,
        };
        let index = self.next_page_index;
        self.next_page_index += 1;
        let mut state = PageState {
            next: next.clone(),
            remaining: 0,
            pass: self.listing_pass,
        };
        for entry in page.profiles {
            let id = fetcher::segment_id(&entry).to_string();
            if !self.seen.insert(&id) {
                self.summary.repeated += 1;
                continue;
            }
            self.found += 1;
            let reusable = self
                .prev
                .as_mut()
                .and_then(|p| p.reusable(&id, fetcher::updated_at(&entry)));
            if let Some(line) = reusable {
                if let Some(c) = &self.census {
                    c.add_line(&line);
                }
                self.journal.write_line(line)?;
                self.summary.reused += 1;
                self.journal.cp.reused += 1;
                self.progress.inc(1);
                continue;
            }
            state.remaining += 1;
            self.queue.push_back((index, entry));
        }
        self.pages.insert(index, state);
        if next.is_none() {
            self.end_of_pass();
        }
        Ok(())
    }

    /// The pass's listing is over. The list is sorted by activity and its
    /// cursor works like an offset, so profiles that moved while we listed
    /// were skipped: list again (while this pass's last profiles are still
    /// being fetched) until a pass finds nothing new.
    fn end_of_pass(&mut self) {
        let (pass, found) = (self.listing_pass, self.found);
        self.progress.set_total(self.seen.len() as u64);
        if pass > 1 {
            self.journal.cp.found_by_relisting += found;
        }
        if matches!(self.listing, Listing::Ids(_)) {
            // A file does not move: one pass reads it all.
            self.listing_done = true;
            return;
        }
        if (pass > 1 && found == 0) || pass >= MAX_PASSES {
            if pass >= MAX_PASSES && found > 0 {
                ui::warn(format!("extract: the re-list pass {pass} still found {found} profiles not yet written (the space changes faster than it can be listed); some that moved may be missing: rerun `segsync extract --incremental` later"));
            }
            self.listing_done = true;
            return;
        }
        ui::debug(format!(
            "extract: pass {pass} found {found} profiles; re-listing the space"
        ));
        self.listing_pass += 1;
        self.found = 0;
        self.lister.abort();
        (self.lister, self.page_rx) = spawn_listing(&self.listing, &self.client, None);
    }

    /// Commit every leading page whose profiles are all written; true if any.
    fn commit_pages(&mut self) -> bool {
        let mut advanced = false;
        while let Some(entry) = self.pages.first_entry() {
            if entry.get().remaining > 0 {
                break;
            }
            let state = entry.remove();
            self.journal.cp.cursor = state.next;
            self.journal.cp.pass = state.pass;
            self.journal.cp.pages_committed += 1;
            advanced = true;
        }
        advanced
    }
}

/// Start handing over `listing`'s pages from `cursor`.
fn spawn_listing(
    listing: &Listing,
    client: &Arc<SegmentClient>,
    cursor: Option<String>,
) -> (JoinHandle<()>, Receiver<Listed>) {
    match listing {
        Listing::Api => lister::spawn(client.clone(), cursor, LISTING_LOOKAHEAD),
        Listing::Ids(f) => super::ids::spawn(f.clone(), cursor, LISTING_LOOKAHEAD),
    }
}
