//! An ordered parallel map: items from a reader go to a pool of worker
//! threads and come back, transformed, in the order they were read. Bounded
//! channels keep at most a few items per worker in memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

/// Worker threads for CPU-bound passes: every core, at most 8.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8)
}

/// Read items from `input` on a thread of its own, apply `work` on `workers`
/// threads, and hand the results to `output` on the calling thread in input
/// order. Stops reading at the first error of `input` and returns it once the
/// items already read have been delivered; stops everything at the first
/// error of `output` and returns that.
pub fn ordered_map<T, R, E>(
    input: impl Iterator<Item = Result<T, E>> + Send,
    workers: usize,
    work: impl Fn(T) -> R + Sync,
    mut output: impl FnMut(R) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
    R: Send,
    E: Send,
{
    let workers = workers.max(1);
    let stop = AtomicBool::new(false);
    let (work_tx, work_rx) = sync_channel::<(u64, T)>(workers * 2);
    let work_rx = Mutex::new(work_rx);
    let (done_tx, done_rx) = sync_channel::<(u64, R)>(workers * 2);
    std::thread::scope(|s| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (work_rx, work) = (&work_rx, &work);
            s.spawn(move || loop {
                let job = match work_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((idx, item)) = job else { return };
                if done_tx.send((idx, work(item))).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let stop = &stop;
        let reader = s.spawn(move || -> Result<(), E> {
            for (idx, item) in (0u64..).zip(input) {
                if stop.load(Ordering::Relaxed) || work_tx.send((idx, item?)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut pending: BTreeMap<u64, R> = BTreeMap::new();
        let mut next = 0u64;
        let mut failed = None;
        let done_rx = done_rx;
        'results: for (idx, result) in done_rx.iter() {
            pending.insert(idx, result);
            while let Some(r) = pending.remove(&next) {
                next += 1;
                if let Err(e) = output(r) {
                    failed = Some(e);
                    break 'results;
                }
            }
        }
        // Unblock the workers (their sends now fail) and the reader (told to
        // stop, its one blocked send drained).
        drop(done_rx);
        drop(pending);
        if failed.is_some() {
            stop.store(true, Ordering::Relaxed);
            while !reader.is_finished() {
                if let Ok(rx) = work_rx.lock() {
                    while rx.try_recv().is_ok() {}
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let read = match reader.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match failed {
            Some(e) => Err(e),
            None => read,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_input_order_whatever_the_work_takes() {
        let input = (0..500u64).map(Ok::<u64, ()>);
        let mut out = Vec::new();
        ordered_map(
            input,
            4,
            |i| {
                // Later items finish first often: reordering must undo it.
                std::thread::sleep(std::time::Duration::from_micros((500 - i) % 7 * 50));
                i * 2
            },
            |r| {
                out.push(r);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(out, (0..500u64).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_reader_error_is_returned_after_what_was_read_is_delivered() {
        let input = (0..10u32).map(|i| if i == 6 { Err("torn") } else { Ok(i) });
        let mut out = Vec::new();
        let r = ordered_map(
            input,
            3,
            |i| i,
            |r| {
                out.push(r);
                Ok(())
            },
        );
        assert_eq!(r, Err("torn"));
        assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn an_output_error_stops_everything_and_is_returned() {
        let input = (0..100_000u32).map(Ok::<u32, &str>);
        let mut out = Vec::new();
        let r = ordered_map(
            input,
            3,
            |i| i,
            |r| {
                if r == 10 {
                    return Err("disk full");
                }
                out.push(r);
                Ok(())
            },
        );
        assert_eq!(r, Err("disk full"));
        assert_eq!(out.len(), 10);
    }
}
