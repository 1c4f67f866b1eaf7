//! The simulation suite: the whole pipeline (`segsync run`, the real binary
//! over loopback HTTP) in many seeded worlds (`segsync::sandbox::world`).
//! In each world the run must end under a watchdog, either exact against the
//! sandbox's own oracle or stopped with a documented exit status (1: rerun
//! resumes, 3: some customers rejected); then the world is healed and a
//! rerun must end exact. No world may hang, apply a customer's content twice
//! (a confirmed customer sent again) or lose a row.
//!
//! CI runs `ci_worlds` (the first 30 seeds and every seed that once failed);
//! `make simulate WORLDS=N` runs `many_worlds` over seeds 1..=N; a failing
//! world prints the one command that replays it (`replay_world`).

mod common;
use common::*;
use segsync::sandbox::world::World;
use std::time::{Duration, Instant};

/// Seeds that once failed, kept as regression tests (each with what it found).
const REGRESSIONS: &[u64] = &[
    // A second run started 0 ms after the first took the lock first; the
    // driver took the refused one for the world's run (a driver race). Then
    // (CI, b1eff2f) the refused run found the brand-new lock file still
    // empty, named no holder, and the driver did not know it for a refusal:
    // a refused command now waits briefly for the holder's name.
    813,
    // The monthly quota stopped the first run with both its export (started
    // beside extract) and an early batch pending; the rerun confirmed the
    // batch, then compared with that older export and sent the batch's
    // customers again. A resumed export is now brought up to date by a delta.
    31,
    // The same defect by another road, found in the same 100-world run (on
    // cacfd2c, before the fix) and only when the machine was loaded: the
    // export started beside extract was DONE without a file after the early
    // batch had landed, so it stayed pending; the rerun (files back) polled
    // it, kept its file, made before the batch, and sent 6 customers again.
    80,
    // Issue 44's draws, first run of 200: the winner of a shared user_id
    // became, after churn, a profile Voucherify refuses (an undeliverable
    // email): the customer rightly keeps the earlier winner's values (the
    // oracle did not allow it; the stages leave the same).
    43,
    // Exports without a file in a project another writer had filled, and
    // address objects Voucherify replaces whole: the load fell back to the
    // ledger and sent every address whole, erasing the other writer's
    // address line. A load that cannot see what Voucherify holds now sends
    // nothing (exit 1); `--from-ledger` is that choice made aloud.
    60, 113,
];

/// No world's run may take longer than this (a hang is a failure).
const WATCHDOG: Duration = Duration::from_secs(150);

/// What a world showed, for the suite's figures.
#[derive(Debug, Default)]
struct Outcome {
    seed: u64,
    first_exit: i32,
    /// The rerun's exit: 3 when it named what Voucherify does not hold.
    second_exit: i32,
    /// From the monthly quota's first 429 to the run's exit.
    quota_to_exit: Option<Duration>,
    total: Duration,
}

async fn run_once(
    dir: &std::path::Path,
    sb: &segsync::sandbox::Sandbox,
    w: &World,
) -> Result<(common::Run, Instant), String> {
    let mut args = vec!["run"];
    args.extend(w.client_args.iter().map(String::as_str));
    let child = command(dir, Some(sb), &args).output();
    match tokio::time::timeout(WATCHDOG, child).await {
        Ok(out) => Ok((out.map_err(|e| e.to_string())?.into(), Instant::now())),
        Err(_) => Err(format!(
            "hang: `segsync run` did not end within {WATCHDOG:?}"
        )),
    }
}

/// Run one world to its end state; Err says what went wrong.
async fn world(seed: u64) -> Result<Outcome, String> {
    let started = Instant::now();
    let w = World::from_seed(seed);
    let sb = sandbox(w.sandbox.clone()).await;
    let existing = made_first(&sb, w.existing_percent);
    sb.seed_customers(existing.values().cloned());
    let dir = tempdir();
    let second = async {
        let after = w.concurrent_after_ms?;
        tokio::time::sleep(Duration::from_millis(after)).await;
        Some(run_once(dir.path(), &sb, &w).await)
    };
    let (first, second) = tokio::join!(run_once(dir.path(), &sb, &w), second);
    let (mut first, mut first_end) = first?;
    // Refused by the lock: naming the other run, or, when it had not yet
    // written its name within the wait, saying so.
    let refused = |r: &common::Run| {
        r.code == 2
            && (r.stderr.contains("in use by `segsync run`")
                || r.stderr.contains(
                    "in use by another segsync command (one that has not yet written its name)",
                ))
    };
    if let Some(r) = second {
        let (r, end) = r?;
        // Started together, either may take the lock: the other is refused,
        // and the one that ran is the world's first run.
        if refused(&first) {
            (first, first_end) = (r, end);
        } else if !refused(&r) && ![0, 1, 3].contains(&r.code) {
            return Err(format!("the concurrent run exited {}: {}", r.code, r.all()));
        }
    }
    if ![0, 1, 3].contains(&first.code) {
        return Err(format!("first run exited {}: {}", first.code, first.all()));
    }
    let quota_to_exit = sb.quota_spent_at().map(|t| first_end.duration_since(t));
    sb.heal();
    rename_elsewhere(&sb, w.renames);
    sb.touch(w.touches);
    let hand = edit_by_hand(dir.path(), &w)?;
    let (second, _) = run_once(dir.path(), &sb, &w).await?;
    if ![0, 3].contains(&second.code) {
        return Err(format!(
            "rerun in the healed world exited {} (first run: {}): {}\n--- first run:\n{}",
            second.code,
            first.code,
            second.all(),
            first.all()
        ));
    }
    let versions = sb.versions();
    let history = WorldHistory {
        clear_removed: w.clear_removed,
        existing,
        churned: w.sandbox.churn > 0,
        hand: (hand.into_iter())
            .map(|(sid, name)| (sid, [("name".to_string(), serde_json::json!(name))].into()))
            .collect(),
        // Exit 0 names nothing: then every difference fails.
        named: if second.code == 3 {
            named_in_report(&dir.path().join("data/load-report.csv"))
        } else {
            Default::default()
        },
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_world_end_state(&sb, &versions, &history)
    }))
    .map_err(|e| {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!(
            "not exact after the rerun: {why}\n--- first run:\n{}\n--- rerun:\n{}",
            first.all(),
            second.all()
        )
    })?;
    let repeated = sb.repeated_applications();
    if repeated > 0 {
        return Err(format!(
            "{repeated} customer contents were applied more than once (a confirmed customer sent again)\n--- first run:\n{}\n--- rerun:\n{}",
            first.all(),
            second.all()
        ));
    }
    Ok(Outcome {
        seed,
        first_exit: first.code,
        second_exit: second.code,
        quota_to_exit,
        total: started.elapsed(),
    })
}

/// The customers another writer made before the first run: every
/// customer two profiles share, and `percent` of the others, each with a
/// phone, a description and an address line the profiles may not give.
fn made_first(
    sb: &segsync::sandbox::Sandbox,
    percent: Option<u32>,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let Some(percent) = percent else {
        return Default::default();
    };
    let d = sb.dataset();
    let mut profiles: std::collections::BTreeMap<String, u32> = Default::default();
    for i in 0..d.n {
        if let Some(u) = d.user_id(i) {
            *profiles.entry(u).or_default() += 1;
        }
    }
    (profiles.into_iter())
        .enumerate()
        .filter(|(k, (_, n))| *n > 1 || (*k as u32 * 37 + 11) % 100 < percent)
        .map(|(_, (sid, _))| {
            let c = serde_json::json!({"source_id": sid, "phone": "+48 111 000 111",
                "description": "kept by another writer",
                "address": {"line_2": "Flat 9 (another writer)"}});
            (sid, c)
        })
        .collect()
}

/// A person edits the name of `w.hand_edits` rows of customers.csv before
/// the rerun (when a transform wrote one): the rerun keeps the edits
/// (edits.csv) and Voucherify must end holding them. The edits made, by
/// source id.
fn edit_by_hand(
    dir: &std::path::Path,
    w: &World,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut made = std::collections::BTreeMap::new();
    let csv = dir.join("data/customers.csv");
    let Ok(mut rdr) = csv::Reader::from_path(&csv) else {
        return Ok(made);
    };
    let header = rdr.byte_headers().map_err(|e| e.to_string())?.clone();
    let name = header
        .iter()
        .position(|h| h == b"name")
        .ok_or("customers.csv has no name column")?;
    let mut rows: Vec<csv::ByteRecord> = rdr.byte_records().filter_map(Result::ok).collect();
    if w.hand_edits == 0 || rows.is_empty() {
        return Ok(made);
    }
    for (n, row) in rows.iter_mut().take(w.hand_edits).enumerate() {
        let mut cells: Vec<Vec<u8>> = row.iter().map(<[u8]>::to_vec).collect();
        let value = format!("Edited by hand {n}");
        made.insert(
            String::from_utf8_lossy(&cells[0]).into_owned(),
            value.clone(),
        );
        cells[name] = value.into_bytes();
        *row = csv::ByteRecord::from(cells);
    }
    let mut out = csv::Writer::from_path(&csv).map_err(|e| e.to_string())?;
    out.write_byte_record(&header).map_err(|e| e.to_string())?;
    for row in &rows {
        out.write_byte_record(row).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(made)
}

/// Another writer renames the first `n` named customers (by source id);
/// the rerun's plan must set the names back (the end state is exact).
fn rename_elsewhere(sb: &segsync::sandbox::Sandbox, n: usize) {
    let mut named: Vec<String> = sb
        .customers()
        .iter()
        .filter(|(_, c)| c.get("name").is_some_and(|v| v.is_string()))
        .map(|(sid, _)| sid.clone())
        .collect();
    named.sort();
    for sid in named.into_iter().take(n) {
        sb.another_writer(
            &sid,
            &serde_json::json!({"name": "Renamed by another writer"}),
        );
    }
}

/// Run `seeds`, a few worlds at a time; panics naming every failing seed.
async fn worlds(seeds: Vec<u64>) {
    use futures::StreamExt;
    let n = seeds.len();
    let results: Vec<(u64, Result<Outcome, String>)> = futures::stream::iter(seeds)
        .map(|seed| async move { (seed, world(seed).await) })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut failures = Vec::new();
    let (mut longest, mut quota) = (Duration::ZERO, Duration::ZERO);
    let (mut stopped, mut named) = (0, 0);
    for (seed, r) in &results {
        match r {
            Ok(o) => {
                longest = longest.max(o.total);
                quota = quota.max(o.quota_to_exit.unwrap_or_default());
                stopped += u32::from(o.first_exit == 1);
                named += u32::from(o.second_exit == 3);
                let _ = o.seed;
            }
            Err(why) => failures.push(format!(
                "{}\n{why}\nreplay: SEGSYNC_WORLD={seed} cargo test --test simulate replay_world -- --ignored --nocapture",
                World::from_seed(*seed).describe()
            )),
        }
    }
    eprintln!(
        "simulation: {n} worlds, {} failed; {stopped} stopped once (exit 1) and ended exact after the rerun; {named} reruns named what Voucherify does not hold (exit 3), exact but for it; longest world {:.1}s; longest spent-quota-to-exit {:.2}s",
        failures.len(),
        longest.as_secs_f64(),
        quota.as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_worlds() {
    let mut seeds: Vec<u64> = (1..=30).collect();
    seeds.extend(REGRESSIONS);
    worlds(seeds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: `make simulate WORLDS=N` runs it"]
async fn many_worlds() {
    let n: u64 = std::env::var("SEGSYNC_WORLDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // SEGSYNC_WORLDS_FROM: the first seed (1), to run other worlds than last time.
    let from: u64 = std::env::var("SEGSYNC_WORLDS_FROM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    worlds((from..from + n).collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "replays one world: SEGSYNC_WORLD=SEED"]
async fn replay_world() {
    let seed: u64 = std::env::var("SEGSYNC_WORLD")
        .expect("SEGSYNC_WORLD=SEED names the world")
        .parse()
        .expect("a seed is a number");
    eprintln!("{}", World::from_seed(seed).describe());
    worlds(vec![seed]).await;
}
