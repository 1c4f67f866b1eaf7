//! Submitting batches and confirming them: each batch goes to the bulk async
//! endpoint (split in two when Voucherify finds it too large), is recorded in
//! the ledger with its async action id, and is polled until Voucherify says
//! what became of every customer. Only then do its customers count as
//! confirmed; an answer that does not account for all of them leaves the
//! whole batch unconfirmed, to be sent again.

use super::batch::Batch;
use super::pacing::{
    due_at, learn_offset, next_processing_estimate, poll_until_finished, PollTiming,
};
use super::report::ReportRow;
use crate::api::api_error;
use crate::api::voucherify::{is_too_many_customers, AsyncAction, AsyncResult, VoucherifyClient};
use crate::state::ledger::{content_key, LedgerCustomer, LedgerEvent, LedgerWriter};
use crate::state::now;
use crate::ui::{self, Progress};
use anyhow::Result;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What every batch of one load shares: the client, the ledger, the report
/// and the counters the summary and the progress line read.
pub struct Session {
    pub client: VoucherifyClient,
    pub ledger: LedgerWriter,
    pub report: Mutex<Vec<ReportRow>>,
    pub sent: AtomicU64,
    pub confirmed: AtomicU64,
    pub failed: AtomicU64,
    pub batches: AtomicU64,
    /// Customers Voucherify refused each in a request of its own.
    pub refused_alone: AtomicU64,
    pub polls: AtomicU64,
    pub in_flight: AtomicU64,
    /// Set on the first fatal error: no further batch is submitted, and
    /// every task still waiting (a poll, a queue turn, a quota) lets go.
    stop: AtomicBool,
    halt: tokio::sync::watch::Sender<bool>,
    /// Average processing time of finished actions (ms), to time the first poll.
    pub processing_ms: AtomicU64,
    pub poll_timeout: Duration,
    /// The longest an action may stay ENQUEUED (`--queue-timeout`).
    pub queue_timeout: Duration,
    /// Customers sent by import files, and the files.
    pub imported: AtomicU64,
    pub import_files: AtomicU64,
    /// Our unfinished actions in submission order. Voucherify runs a
    /// project's bulk jobs one at a time in that order, so only the oldest
    /// can be finishing: it alone is polled, the others wait their turn.
    queue: Mutex<VecDeque<String>>,
    turn: tokio::sync::Notify,
    /// Voucherify's time of the last finish we saw: a queued job starts
    /// when the one before it finishes.
    last_finished: Mutex<Option<jiff::Timestamp>>,
    /// Voucherify's clock less ours (ms), at most: the largest of each
    /// action's `created_at` less the time its submission's answer reached
    /// us (the action was created before that answer left).
    clock_offset: Mutex<Option<i64>>,
}

/// Holds an action's place in the queue; leaving it lets the next one poll.
struct QueuePlace<'a> {
    s: &'a Session,
    id: String,
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        if let Ok(mut q) = self.s.queue.lock() {
            q.retain(|x| x != &self.id);
        }
        self.s.turn.notify_waiters();
    }
}

impl Session {
    /// A session for `client`'s project, recording in `ledger`; an action
    /// is waited for `poll_timeout` once it runs, `queue_timeout` while it
    /// is ENQUEUED.
    pub fn new(
        client: VoucherifyClient,
        ledger: LedgerWriter,
        (poll_timeout, queue_timeout): (Duration, Duration),
    ) -> Session {
        Session {
            client,
            ledger,
            report: Mutex::new(Vec::new()),
            sent: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            refused_alone: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            halt: tokio::sync::watch::Sender::new(false),
            processing_ms: AtomicU64::new(500),
            poll_timeout,
            queue_timeout,
            imported: AtomicU64::new(0),
            import_files: AtomicU64::new(0),
            queue: Mutex::new(VecDeque::new()),
            turn: tokio::sync::Notify::new(),
            last_finished: Mutex::new(None),
            clock_offset: Mutex::new(None),
        }
    }

    /// When to look first at an action submitted at `submitted` (our
    /// clock), whose turn has come: when it should finish by Voucherify's
    /// clock (it started at the later of its creation and the last finish,
    /// and runs the typical time), on ours. Voucherify runs the queue in
    /// submission order, so the finish of the one before is this one's
    /// start: timing from it keeps one late look from making every later
    /// look late. None until a finish and an offset were seen.
    fn due(&self, submitted: jiff::Timestamp, typical: Duration) -> Option<jiff::Timestamp> {
        let offset = (*self.clock_offset.lock().ok()?)?;
        let last = (*self.last_finished.lock().ok()?)?;
        due_at(last, offset, submitted, typical)
    }

    /// Learn the clocks' offset from an action we submitted at `submitted`.
    fn saw_created(&self, submitted: jiff::Timestamp, action: &AsyncAction) {
        let Some(created) = action
            .created_at
            .as_deref()
            .and_then(crate::dates::parse_timestamp)
        else {
            // Nullable in the spec: the first looks stay timed by the
            // typical time alone.
            ui::debug(format!(
                "load: an async action without a readable created_at ({:?}): Voucherify's clock is not learned from it",
                action.created_at
            ));
            return;
        };
        if let Ok(mut offset) = self.clock_offset.lock() {
            *offset = Some(learn_offset(*offset, created, submitted));
        }
    }

    /// End the load: every task lets go of what it waits for. Actions
    /// already submitted stay pending in the ledger for the next run.
    pub fn halt(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.halt.send_replace(true);
    }

    pub fn is_halted(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Resolves once [`Session::halt`] was called.
    pub async fn halted(&self) {
        let mut rx = self.halt.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// Run `work` to its end; its error halts the load. For work that must
    /// not be cut short: a submission Voucherify may have accepted has to
    /// reach the ledger.
    pub async fn halt_on_error<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let r = work.await;
        if r.is_err() {
            self.halt();
        }
        r
    }

    /// Run a wait of the load (a poll, a queue turn): its error halts every
    /// other task, and a halt ends it where it waits (None).
    pub async fn task<T>(&self, work: impl Future<Output = Result<T>>) -> Option<Result<T>> {
        if self.is_halted() {
            return None;
        }
        tokio::select! {
            biased;
            r = work => {
                if r.is_err() {
                    self.halt();
                }
                Some(r)
            }
            _ = self.halted() => None,
        }
    }

    /// Join the queue of unfinished actions (at submission).
    fn enqueue(&self, id: &str) -> QueuePlace<'_> {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(id.to_string());
        }
        QueuePlace {
            s: self,
            id: id.to_string(),
        }
    }

    /// Wait until every action submitted before `id` has finished.
    async fn wait_turn(&self, id: &str) {
        loop {
            let notified = self.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let first = self
                .queue
                .lock()
                .map(|q| q.front().is_none_or(|f| f == id))
                .unwrap_or(true);
            if first {
                return;
            }
            notified.await;
        }
    }

    /// Whether Voucherify's 400s look like a refusal of every request, not
    /// of some customers: 20 customers refused alone and no batch taken.
    /// Then the 400 ends the load as an error, instead of costing a request
    /// per customer.
    fn refuses_everything(&self) -> bool {
        self.refused_alone.load(Ordering::Relaxed) >= 20
            && self.batches.load(Ordering::Relaxed) == 0
    }

    fn report(&self, rows: impl IntoIterator<Item = ReportRow>) -> Result<()> {
        self.report
            .lock()
            .map_err(|_| anyhow::anyhow!("report lock poisoned"))?
            .extend(rows);
        Ok(())
    }
}

/// Submit a batch (splitting it if Voucherify finds it too large), then wait
/// for its confirmation.
pub async fn send_batch(s: &Session, batch: Batch, progress: &Progress) -> Result<()> {
    s.in_flight.fetch_add(1, Ordering::Relaxed);
    let r = send_batch_inner(s, batch, progress).await;
    s.in_flight.fetch_sub(1, Ordering::Relaxed);
    r
}

fn send_batch_inner<'a>(
    s: &'a Session,
    batch: Batch,
    progress: &'a Progress,
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        if s.is_halted() {
            return Ok(());
        }
        let answer = s.client.bulk_upsert(batch.body()).await;
        let submitted = jiff::Timestamp::now();
        let id = match answer {
            Ok(id) => id,
            Err(e)
                if (e.status() == Some(413) || is_too_many_customers(&e))
                    && batch.customers.len() > 1 =>
            {
                ui::debug(format!(
                    "load: a batch of {} customers was refused as too large ({e}); splitting it",
                    batch.customers.len()
                ));
                let (first, second) = batch.split();
                send_batch_inner(s, first, progress).await?;
                return send_batch_inner(s, second, progress).await;
            }
            // A 400 for the whole request: Voucherify's documents do not
            // say whether one customer it cannot take (a `null` where the
            // spec types a string) refuses the batch or only the customer.
            // Halves are sent until the customers it refuses alone are
            // found and reported; the others go through.
            Err(e) if e.status() == Some(400) && !s.refuses_everything() => {
                if batch.customers.len() > 1 {
                    ui::debug(format!("load: a batch of {} customers was refused whole ({e}); sending it in halves to find who", batch.customers.len()));
                    let (first, second) = batch.split();
                    send_batch_inner(s, first, progress).await?;
                    return send_batch_inner(s, second, progress).await;
                }
                refused_alone(s, &batch, &e)?;
                progress.inc(1);
                return Ok(());
            }
            Err(e) => return Err(api_error(e)),
        };
        let n = batch.customers.len() as u64;
        s.sent.fetch_add(n, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        record_and_confirm(s, id, &batch.customers, None, submitted).await?;
        progress.inc(n);
        Ok(())
    })
}

/// A customer Voucherify refused in a request of its own: reported (exit
/// 3), nothing recorded as sent, the next load sends it again.
fn refused_alone(s: &Session, batch: &Batch, e: &crate::error::ApiError) -> Result<()> {
    s.refused_alone.fetch_add(1, Ordering::Relaxed);
    s.failed.fetch_add(1, Ordering::Relaxed);
    s.report(batch.customers.iter().map(|c| ReportRow {
        source_id: c.source_id.clone(),
        line: Some(c.line),
        content: None,
        key: "refused".into(),
        message: "Voucherify refused the request holding this customer alone".into(),
        details: e.to_string(),
    }))
}

/// After a submission was accepted: record it in the ledger, wait for the
/// jobs submitted before it, and confirm it. `file` names an import file.
async fn record_and_confirm(
    s: &Session,
    id: String,
    sent: &[super::batch::Prepared],
    file: Option<&str>,
    submitted: jiff::Timestamp,
) -> Result<()> {
    let customers: Vec<LedgerCustomer> = sent
        .iter()
        .map(|c| LedgerCustomer {
            source_id: c.source_id.clone(),
            hash: c.hash.clone(),
            line: c.line,
            segment_id: c.segment_id.clone(),
            fields: Some(c.fields.clone()),
            cleared: (!c.cleared.is_empty()).then(|| c.cleared.clone()),
        })
        .collect();
    let place = s.enqueue(&id);
    s.ledger.append(&LedgerEvent::Submitted {
        at: now(),
        target: s.ledger.target.clone(),
        async_action_id: id.clone(),
        method: file.map(|_| "import".to_string()),
        file: file.map(str::to_string),
        customers: customers.clone(),
    })?;
    // Halted, the action stays pending in the ledger for the next run.
    let waited = s
        .task(async {
            s.wait_turn(&id).await;
            confirm(s, &id, customers, Some(submitted)).await
        })
        .await;
    drop(place);
    waited.transpose().map(|_| ())
}

/// Submit an import file, then wait for its confirmation. Rows count from
/// 1 after the header: row N is the file's Nth customer.
pub async fn send_import(
    s: &Session,
    file: super::import_files::ImportFile,
    progress: &Progress,
) -> Result<()> {
    if s.is_halted() {
        return Ok(());
    }
    let bytes = std::fs::read(&file.path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.path.display()))?;
    let id = s
        .client
        .import_csv(&file.name, bytes.into())
        .await
        .map_err(api_error)?;
    let n = file.customers.len() as u64;
    s.imported.fetch_add(n, Ordering::Relaxed);
    s.import_files.fetch_add(1, Ordering::Relaxed);
    s.in_flight.fetch_add(1, Ordering::Relaxed);
    let submitted = jiff::Timestamp::now();
    let r = record_and_confirm(s, id, &file.customers, Some(&file.name), submitted).await;
    s.in_flight.fetch_sub(1, Ordering::Relaxed);
    r?;
    progress.inc(n);
    Ok(())
}

/// Poll an async action until it is DONE or FAILED, record the outcome in
/// the ledger and the report; returns the content keys confirmed. An
/// action submitted at `submitted` (our clock), whose turn has come, is
/// looked at first when it should finish ([`Session::due`]); one an earlier
/// run left (None) at once.
pub async fn confirm(
    s: &Session,
    id: &str,
    customers: Vec<LedgerCustomer>,
    submitted: Option<jiff::Timestamp>,
) -> Result<Vec<u128>> {
    let started = tokio::time::Instant::now();
    let typical = Duration::from_millis(
        (s.processing_ms.load(Ordering::Relaxed) * 11 / 10).clamp(100, 10_000),
    );
    let first = match submitted.map(|at| s.due(at, typical)) {
        None => Duration::ZERO,
        Some(Some(due)) => {
            let left = due.duration_since(jiff::Timestamp::now());
            left.try_into().unwrap_or(Duration::ZERO).min(typical)
        }
        // No finish seen yet: the typical processing time.
        Some(None) => typical,
    };
    let timing = PollTiming {
        first,
        typical,
        timeout: s.poll_timeout,
        queue_timeout: s.queue_timeout,
    };
    let (action, polls) = poll_until_finished(id, timing, || async {
        s.polls.fetch_add(1, Ordering::Relaxed);
        Ok(s.client.async_action(id).await?)
    })
    .await?;
    if let Some(at) = submitted {
        s.saw_created(at, &action);
    }
    // Learn how long actions take, to time the next first poll. Our own wait
    // is no measure (we only see DONE when we look), so prefer Voucherify's
    // figure; without it, look sooner next time when the first look was late.
    let old = s.processing_ms.load(Ordering::Relaxed);
    let next = next_processing_estimate(
        old,
        service_time(s, &action).or(action.processing_time),
        polls,
        timing.first,
        started.elapsed(),
    );
    s.processing_ms.store(next, Ordering::Relaxed);
    settle(s, id, customers, action)
}

/// How long the job itself ran, by Voucherify's own clock: from its start
/// (its creation, or the finish of the job queued before it, whichever is
/// later) to its finish. `processing_time` counts the queue wait too.
fn service_time(s: &Session, action: &AsyncAction) -> Option<u64> {
    let parse = |t: &Option<String>| t.as_deref().and_then(crate::dates::parse_timestamp);
    let (created, finished) = (parse(&action.created_at)?, parse(&action.updated_at)?);
    let mut last = s.last_finished.lock().ok()?;
    let start = match *last {
        Some(prev) if prev > created => prev,
        _ => created,
    };
    if last.is_none_or(|l| finished > l) {
        *last = Some(finished);
    }
    let ms = finished.duration_since(start).as_millis();
    (ms >= 0).then_some(ms as u64)
}

/// Record what a finished action says about its customers.
fn settle(
    s: &Session,
    id: &str,
    customers: Vec<LedgerCustomer>,
    action: AsyncAction,
) -> Result<Vec<u128>> {
    let status = action.status().to_string();
    // Voucherify's own time of the finish, on its clock: what a plan later
    // compares with an export's `updated_at` (never our clock).
    let vf_time = |t: Option<&str>| {
        t.and_then(crate::dates::parse_timestamp)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
    };
    let vf_at = vf_time(action.updated_at.as_deref());
    let vf_from = vf_time(action.created_at.as_deref());
    // `operation_status: FAILED` on a DONE action is also how Voucherify
    // answers a batch it partly refused: when `errors` (or an import's
    // `failed`) names customers, they are read one by one below.
    let names_none = action
        .result
        .as_ref()
        .is_none_or(|r| r.errors().is_empty() && r.import_failures().is_empty());
    if status == "FAILED" || (action.operation_status.as_deref() == Some("FAILED") && names_none) {
        // Voucherify's own words, when it gives them.
        let said = action
            .result
            .as_ref()
            .and_then(|r| r.message.clone())
            .unwrap_or_else(|| "Voucherify gave no message".into());
        let why = format!("async action {id} FAILED as a whole: {said}");
        ui::warn(format!("load: {why}; its customers are listed in load-report.csv and sent again by the next load"));
        return abandon(s, id, &customers, "async_action_failed", &why);
    }
    let result = match action.result {
        Some(r) if accounts_for_all(&r, &customers) => r,
        other => {
            // Voucherify's answer does not say which customers succeeded:
            // none of them counts as confirmed, so the next load sends them again.
            let why = match other {
                None => "the finished async action has no result".to_string(),
                Some(r) => format!(
                    "the result counts {} done and {} failed but names {} failures, for {} customers sent",
                    r.done(),
                    r.failed(),
                    r.errors().len(),
                    customers.len()
                ),
            };
            ui::warn(format!("async action {id}: {why}; its customers stay unconfirmed and the next load sends them again"));
            let why = format!("async action {id}: {why}");
            return abandon(s, id, &customers, "unconfirmed", &why);
        }
    };
    let lines: HashMap<&str, u64> = customers
        .iter()
        .map(|c| (c.source_id.as_str(), c.line))
        .collect();
    let keys: HashMap<&str, u128> = customers
        .iter()
        .filter_map(|c| Some((c.source_id.as_str(), content_key(&c.hash)?)))
        .collect();
    let mut failed_ids: HashSet<String> = HashSet::new();
    s.report(result.errors().iter().map(|e| {
        let sid = e.source_id.clone().unwrap_or_default();
        failed_ids.insert(sid.clone());
        ReportRow {
            line: lines.get(sid.as_str()).copied(),
            content: keys.get(sid.as_str()).copied(),
            source_id: sid,
            key: e.key.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            details: e.details.clone().unwrap_or_default(),
        }
    }))?;
    // An import names failed rows (and maybe their source_id): row N is the
    // Nth customer of the file, mapped back to its line of customers.csv.
    s.report(result.import_failures().iter().filter_map(|f| {
        let c = import_failure_customer(f, &customers)?;
        failed_ids.insert(c.source_id.clone());
        Some(ReportRow {
            line: Some(c.line),
            content: content_key(&c.hash),
            source_id: c.source_id.clone(),
            key: "import_failed".into(),
            message: f.reason.clone().unwrap_or_default(),
            details: f
                .row
                .map(|r| format!("row {r} of the import file"))
                .unwrap_or_default(),
        })
    }))?;
    let (failed, done): (Vec<LedgerCustomer>, Vec<LedgerCustomer>) = customers
        .into_iter()
        .partition(|c| failed_ids.contains(&c.source_id));
    s.failed.fetch_add(failed.len() as u64, Ordering::Relaxed);
    s.confirmed.fetch_add(done.len() as u64, Ordering::Relaxed);
    let keys = done.iter().filter_map(|c| content_key(&c.hash)).collect();
    s.ledger.append(&LedgerEvent::Confirmed {
        at: crate::state::now_ms(),
        target: s.ledger.target.clone(),
        async_action_id: id.to_string(),
        status,
        done,
        failed,
        vf_at,
        vf_from,
    })?;
    Ok(keys)
}

/// Give up on a whole batch: nothing of it counts as confirmed (the next load
/// sends it again), and each customer is reported with `key` and `why`.
pub fn abandon(
    s: &Session,
    id: &str,
    customers: &[LedgerCustomer],
    key: &str,
    why: &str,
) -> Result<Vec<u128>> {
    s.ledger.append(&LedgerEvent::Abandoned {
        at: now(),
        target: s.ledger.target.clone(),
        async_action_id: id.to_string(),
        reason: why.to_string(),
    })?;
    s.report(customers.iter().map(|c| ReportRow {
        source_id: c.source_id.clone(),
        line: Some(c.line),
        content: None,
        key: key.to_string(),
        message: why.to_string(),
        details: String::new(),
    }))?;
    s.failed
        .fetch_add(customers.len() as u64, Ordering::Relaxed);
    Ok(vec![])
}

/// The customer an import failure is about: by its row, else its
/// source_id; None when they disagree or name nobody we sent.
fn import_failure_customer<'a>(
    f: &crate::api::voucherify::ImportFailure,
    sent: &'a [LedgerCustomer],
) -> Option<&'a LedgerCustomer> {
    match (f.row, f.source_id.as_deref().filter(|s| !s.is_empty())) {
        (Some(r), sid) => sent
            .get((r as usize).checked_sub(1)?)
            .filter(|c| sid.is_none_or(|s| s == c.source_id)),
        (None, Some(sid)) => sent.iter().find(|c| c.source_id == sid),
        (None, None) => None,
    }
}

/// Whether a result says what became of every customer sent: the counts
/// cover the batch and every failure is named by a `source_id` we sent (or,
/// for an import, a row of the file).
pub fn accounts_for_all(r: &AsyncResult, sent: &[LedgerCustomer]) -> bool {
    if r.import_failures()
        .iter()
        .any(|f| import_failure_customer(f, sent).is_none())
    {
        return false;
    }
    let named: HashSet<&str> = r
        .errors()
        .iter()
        .filter_map(|e| e.source_id.as_deref())
        .chain(
            r.import_failures()
                .iter()
                .filter_map(|f| import_failure_customer(f, sent).map(|c| c.source_id.as_str())),
        )
        .collect();
    let ours: HashSet<&str> = sent.iter().map(|c| c.source_id.as_str()).collect();
    r.done() + r.failed() == sent.len() as u64
        && named.len() as u64 == r.failed()
        && named.iter().all(|s| ours.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::voucherify::CustomerError;

    #[test]
    fn a_result_must_account_for_every_customer_to_confirm_any() {
        let sent: Vec<LedgerCustomer> = ["a", "b", "c"]
            .iter()
            .map(|s| LedgerCustomer {
                source_id: s.to_string(),
                hash: "h".into(),
                line: 2,
                segment_id: None,
                fields: None,
                cleared: None,
            })
            .collect();
        let err = |s: Option<&str>| CustomerError {
            source_id: s.map(str::to_string),
            ..Default::default()
        };
        let result = |done, failed, errors| AsyncResult {
            done_count: Some(done),
            failed_count: Some(failed),
            errors: Some(errors),
            failed: None,
            message: None,
        };
        assert!(accounts_for_all(&result(2, 1, vec![err(Some("b"))]), &sent));
        assert!(!accounts_for_all(&result(2, 1, vec![err(None)]), &sent));
        assert!(!accounts_for_all(&result(1, 0, vec![]), &sent));
        assert!(!accounts_for_all(
            &result(2, 1, vec![err(Some("zzz"))]),
            &sent
        ));
        // Nullable fields: null means absent.
        let nulls = |done: Option<u64>| AsyncResult {
            done_count: done,
            ..Default::default()
        };
        assert!(
            accounts_for_all(&nulls(Some(3)), &sent),
            "errors: null on a full batch is a clean success"
        );
        assert!(
            !accounts_for_all(&nulls(None), &sent),
            "no counts confirm nothing"
        );
        assert!(!accounts_for_all(&nulls(Some(2)), &sent));
        // An import names failures by row (1 = the first customer after the header).
        let import = |rows: Vec<(Option<u64>, Option<&str>)>| AsyncResult {
            done_count: Some(3 - rows.len() as u64),
            failed_count: Some(rows.len() as u64),
            failed: Some(
                rows.into_iter()
                    .map(|(row, sid)| crate::api::voucherify::ImportFailure {
                        row,
                        source_id: sid.map(str::to_string),
                        reason: Some("bad".into()),
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        assert!(accounts_for_all(&import(vec![(Some(2), None)]), &sent));
        assert!(accounts_for_all(&import(vec![(None, Some("c"))]), &sent));
        assert!(
            !accounts_for_all(&import(vec![(Some(9), None)]), &sent),
            "a row we did not send"
        );
        assert!(
            !accounts_for_all(&import(vec![(Some(1), Some("b"))]), &sent),
            "row and id disagree"
        );
    }
}
