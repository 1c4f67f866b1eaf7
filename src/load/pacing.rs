//! When to look at an async action, and how long actions take: pure timing,
//! on tokio's clock where it waits, so tests can pause it.

use crate::api::voucherify::AsyncAction;
use anyhow::Result;
use std::future::Future;
use std::time::Duration;

/// How an async action's polls are timed.
#[derive(Debug, Clone, Copy)]
pub struct PollTiming {
    /// Before the first look.
    pub first: Duration,
    /// How long an action typically takes; later looks back off from it.
    pub typical: Duration,
    /// Give up (the action stays pending in the ledger) after this long,
    /// counted from when the action leaves ENQUEUED: time spent waiting in
    /// Voucherify's queue behind other jobs is not the action's fault.
    pub timeout: Duration,
    /// Give up after this long with the action still ENQUEUED.
    pub queue_timeout: Duration,
}

/// Look at an action until it is DONE or FAILED: first after `first`, then
/// backing off from `typical` up to 10 s. Runs on tokio's clock, so tests can
/// pause it. Returns the finished action and how many looks it took.
pub async fn poll_until_finished<F, Fut>(
    id: &str,
    timing: PollTiming,
    mut look: F,
) -> Result<(AsyncAction, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<AsyncAction>>,
{
    let submitted = tokio::time::Instant::now();
    let mut running_since = None;
    let mut wait = timing.first;
    let mut polls = 0u32;
    loop {
        tokio::time::sleep(wait).await;
        polls += 1;
        let a = look().await?;
        if a.is_finished() {
            return Ok((a, polls));
        }
        let (since, limit) = if a.status() == "ENQUEUED" {
            (submitted, timing.queue_timeout)
        } else {
            (
                *running_since.get_or_insert_with(tokio::time::Instant::now),
                timing.timeout,
            )
        };
        if since.elapsed() >= limit {
            anyhow::bail!("async action {id} is still {} after {limit:?}; it stays in the ledger and the next `segsync load` checks it again", if a.status().is_empty() { "unfinished (no status)" } else { a.status() });
        }
        wait = (wait * 2).clamp(timing.typical / 2, Duration::from_secs(10));
    }
}

/// `Session::due` (confirm.rs): an action submitted at `submitted` (our clock) starts
/// at the later of that and `last_finished` (Voucherify's clock, less
/// `offset` ms to make it ours), and is due `typical` after its start.
pub fn due_at(
    last_finished: jiff::Timestamp,
    offset: i64,
    submitted: jiff::Timestamp,
    typical: Duration,
) -> Option<jiff::Timestamp> {
    let last = (last_finished.checked_sub(jiff::SignedDuration::from_millis(offset))).ok()?;
    last.max(submitted).checked_add(typical).ok()
}

/// The clocks' offset (Voucherify's less ours, ms) after one more action:
/// its `created_at` less `submitted`, the time its submission's answer
/// reached us. The action was created before that answer left, so each
/// sample is at most the true offset (less the answer's way back), and the
/// largest one seen is the closest: a due time read through it is never
/// earlier than the true one.
pub fn learn_offset(was: Option<i64>, created: jiff::Timestamp, submitted: jiff::Timestamp) -> i64 {
    let sample = created.duration_since(submitted).as_millis() as i64;
    was.map_or(sample, |o| o.max(sample))
}

/// The next estimate (ms) of how long an async action takes, from the last
/// one: Voucherify's own `processing_time` when given; otherwise, when the
/// first look already found it finished, something shorter than that look;
/// otherwise the time it took us to see it finish.
pub fn next_processing_estimate(
    old: u64,
    reported: Option<u64>,
    polls: u32,
    first_wait: Duration,
    took: Duration,
) -> u64 {
    let observed = match reported {
        Some(ms) => ms,
        None if polls == 1 => first_wait.as_millis() as u64 / 2,
        None => took.as_millis() as u64,
    };
    (old * 3 + observed) / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An action is due the typical time after it starts: after the finish
    /// before it when the queue was busy, after its submission when not,
    /// Voucherify's clock read on ours through the offset.
    #[test]
    fn an_action_is_due_the_typical_time_after_the_finish_before_it() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let typical = Duration::from_millis(220);
        // Busy: the last finish (12:00:01.000 theirs, 12:00:00.900 ours
        // with their clock 100 ms ahead) is after the submission.
        let due = due_at(
            t("2026-12-04T12:00:01Z"),
            100,
            t("2026-12-04T12:00:00.500Z"),
            typical,
        );
        assert_eq!(due, Some(t("2026-12-04T12:00:01.120Z")));
        // Their clock behind ours.
        let due = due_at(
            t("2026-12-04T12:00:01Z"),
            -50,
            t("2026-12-04T12:00:00.500Z"),
            typical,
        );
        assert_eq!(due, Some(t("2026-12-04T12:00:01.270Z")));
        // Idle: submitted after the last finish.
        let due = due_at(
            t("2026-12-04T12:00:01Z"),
            0,
            t("2026-12-04T12:00:05Z"),
            typical,
        );
        assert_eq!(due, Some(t("2026-12-04T12:00:05.220Z")));
    }

    /// Their clock 2 s ahead of ours; each answer takes its time to come
    /// back, so each sample reads the offset low: the largest wins, and
    /// never passes the true one.
    #[test]
    fn the_clocks_offset_is_the_largest_sample() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        // Created at 12:00:02.000 theirs (12:00:00.000 ours); the answer
        // reached us 30 ms later.
        let o = learn_offset(
            None,
            t("2026-12-04T12:00:02Z"),
            t("2026-12-04T12:00:00.030Z"),
        );
        assert_eq!(o, 1970);
        // A quicker answer: closer to the true 2000.
        let o = learn_offset(
            Some(o),
            t("2026-12-04T12:00:05Z"),
            t("2026-12-04T12:00:03.005Z"),
        );
        assert_eq!(o, 1995);
        // A slow one does not undo it.
        let o = learn_offset(
            Some(o),
            t("2026-12-04T12:00:09Z"),
            t("2026-12-04T12:00:07.400Z"),
        );
        assert_eq!(o, 1995);
        // Their clock behind ours.
        let o = learn_offset(
            None,
            t("2026-12-04T12:00:00Z"),
            t("2026-12-04T12:00:03.010Z"),
        );
        assert_eq!(o, -3010);
    }

    #[test]
    fn processing_estimate_follows_the_server_and_never_feeds_on_its_own_wait() {
        // The server says 200 ms: the estimate converges there, whatever we waited.
        let mut est = 500;
        for _ in 0..30 {
            est = next_processing_estimate(
                est,
                Some(200),
                1,
                Duration::from_millis(est * 11 / 10),
                Duration::from_millis(est * 11 / 10),
            );
        }
        assert!((195..=205).contains(&est), "{est}");
        // No figure, and done at the first look: look sooner next time.
        let mut est = 5_000;
        for _ in 0..30 {
            est = next_processing_estimate(
                est,
                None,
                1,
                Duration::from_millis(est * 11 / 10),
                Duration::from_millis(est * 11 / 10),
            );
        }
        assert!(est < 500, "{est}");
        // Needed several looks: wait longer next time.
        assert!(
            next_processing_estimate(
                100,
                None,
                3,
                Duration::from_millis(110),
                Duration::from_millis(900)
            ) > 100
        );
    }

    fn action(status: &str) -> AsyncAction {
        serde_json::from_value(serde_json::json!({ "status": status })).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn polls_back_off_and_give_up_at_the_timeout_on_tokios_clock() {
        let start = tokio::time::Instant::now();
        let mut seen = Vec::new();
        let timing = PollTiming {
            first: Duration::from_millis(100),
            typical: Duration::from_millis(400),
            timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(3600),
        };
        let err = poll_until_finished("aa_1", timing, || {
            seen.push(start.elapsed());
            async { Ok(action("IN_PROGRESS")) }
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("still IN_PROGRESS"), "{err}");
        let ms: Vec<u128> = seen.iter().map(|d| d.as_millis()).collect();
        // 100, then doubling from the floor of typical/2 (200) up to 10 s;
        // the timeout counts from the first look that saw it running (100 ms).
        assert_eq!(ms, [100, 300, 700, 1500, 3100, 6300, 12700, 22700, 32700]);
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_enqueued_behind_other_jobs_does_not_count_toward_the_timeout() {
        let start = tokio::time::Instant::now();
        let timing = PollTiming {
            first: Duration::from_millis(100),
            typical: Duration::from_millis(400),
            timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(3600),
        };
        // Queued for 100 s, then running for 20 s, then done.
        let (a, _) = poll_until_finished("aa_1", timing, || {
            let t = start.elapsed().as_secs();
            let status = match t {
                0..100 => "ENQUEUED",
                100..120 => "IN_PROGRESS",
                _ => "DONE",
            };
            async move { Ok(action(status)) }
        })
        .await
        .unwrap();
        assert_eq!(a.status(), "DONE");
        // Still queued after the queue timeout: give up, saying so.
        let timing = PollTiming {
            queue_timeout: Duration::from_secs(60),
            ..timing
        };
        let e = poll_until_finished("aa_2", timing, || async { Ok(action("ENQUEUED")) })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("still ENQUEUED"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_action_ends_the_polling_with_the_count_of_looks() {
        let mut n = 0;
        let timing = PollTiming {
            first: Duration::ZERO,
            typical: Duration::from_millis(100),
            timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(3600),
        };
        let (a, polls) = poll_until_finished("aa_1", timing, || {
            n += 1;
            let status = if n < 3 { "ENQUEUED" } else { "DONE" };
            async move { Ok(action(status)) }
        })
        .await
        .unwrap();
        assert_eq!((a.status(), polls), ("DONE", 3));
    }
}
