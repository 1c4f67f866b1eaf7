//! Hedged reads for the end of an extract. While profiles are queued the
//! rate limit is the bound and a slow answer costs nothing (others use the
//! budget meanwhile); once the listing is over and the queue is empty, the
//! run waits for its last answers, and one answer from the slow tail (Segment
//! promises no answer time) holds the whole run for seconds while the budget
//! sits idle. Then a read that has taken more than a few typical answer
//! times is sent once more, and the first answer wins (Tail at Scale's hedged
//! requests). Reads are idempotent; a hedge goes through the same rate limit
//! and is counted.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A read is hedged once it has taken this many typical answer times.
const AFTER_TYPICAL: u64 = 3;

/// Shared between the scheduler (which knows the phase and the answer
/// times) and the fetches.
#[derive(Debug, Default)]
pub struct Hedge {
    /// The queue is empty and the listing over: the run waits for its last
    /// answers.
    draining: AtomicBool,
    /// A typical answer time (µs), from the controller's windows.
    typical_micros: AtomicU64,
    /// Hedges sent.
    pub sent: AtomicU64,
}

impl Hedge {
    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Relaxed);
    }

    pub fn set_typical(&self, d: Duration) {
        if !d.is_zero() {
            self.typical_micros
                .store(d.as_micros() as u64, Ordering::Relaxed);
        }
    }

    fn after(&self) -> Option<Duration> {
        let t = self.typical_micros.load(Ordering::Relaxed);
        (t > 0).then(|| Duration::from_micros(t * AFTER_TYPICAL))
    }

    /// Run `read`; if it is still unanswered after a few typical answer
    /// times while the run is draining, run it once more and take the first
    /// *success*: a copy that fails while the other is still out waits for
    /// the other, and only when both fail is the first failure returned.
    pub async fn read<T, E, Fut>(&self, read: impl Fn() -> Fut) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let first = read();
        tokio::pin!(first);
        loop {
            let Some(after) = self.after() else {
                return first.await;
            };
            tokio::select! {
                r = &mut first => return r,
                _ = tokio::time::sleep(after) => {}
            }
            if self.draining.load(Ordering::Relaxed) {
                self.sent.fetch_add(1, Ordering::Relaxed);
                let second = read();
                tokio::pin!(second);
                return tokio::select! {
                    r = &mut first => match r {
                        Ok(v) => Ok(v),
                        Err(e) => second.await.or(Err(e)),
                    },
                    r = &mut second => match r {
                        Ok(v) => Ok(v),
                        Err(e) => first.await.or(Err(e)),
                    },
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// The first call answers after 10 s, later ones after 100 ms.
    fn slow_then_fast(calls: &AtomicU32) -> impl Future<Output = Result<u32, u32>> + '_ {
        let n = calls.fetch_add(1, Ordering::Relaxed);
        async move {
            let wait = if n == 0 { 10_000 } else { 100 };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            Ok(n)
        }
    }

    /// The first call succeeds after 1 s, the second fails after 100 ms.
    fn slow_ok_then_fast_error(calls: &AtomicU32) -> impl Future<Output = Result<u32, u32>> + '_ {
        let n = calls.fetch_add(1, Ordering::Relaxed);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(1_000)).await;
                Ok(n)
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(n)
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_that_fails_first_waits_for_the_other() {
        let h = Hedge::default();
        h.set_typical(Duration::from_millis(100));
        h.set_draining(true);
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        assert_eq!(h.read(|| slow_ok_then_fast_error(&calls)).await, Ok(0));
        assert_eq!(started.elapsed(), Duration::from_millis(1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_read_is_sent_again_only_while_draining() {
        let h = Hedge::default();
        h.set_typical(Duration::from_millis(100));
        let calls = AtomicU32::new(0);
        // Not draining: the slow answer is waited for.
        let started = tokio::time::Instant::now();
        assert_eq!(h.read(|| slow_then_fast(&calls)).await, Ok(0));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(h.sent.load(Ordering::Relaxed), 0);
        // Draining: after 3 typical answer times, a second read wins.
        h.set_draining(true);
        calls.store(0, Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        assert_eq!(h.read(|| slow_then_fast(&calls)).await, Ok(1));
        assert_eq!(started.elapsed(), Duration::from_millis(400));
        assert_eq!(h.sent.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_answered_in_time_is_never_sent_twice() {
        let h = Hedge::default();
        h.set_typical(Duration::from_millis(100));
        h.set_draining(true);
        let calls = AtomicU32::new(1); // every call is fast
        assert_eq!(h.read(|| slow_then_fast(&calls)).await, Ok(1));
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(h.sent.load(Ordering::Relaxed), 0);
    }
}
