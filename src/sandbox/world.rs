//! Seeded worlds: one seed draws a whole shape of the world the vendors'
//! documentation allows, so a simulation can run the pipeline in many of
//! them and replay any one from its seed (FoundationDB's simulation testing,
//! Jepsen's generated histories).
//!
//! What a world draws, and what each dimension stands for in the documents
//! (docs/DESIGN.md, "Worlds"):
//! - latency: a median from 5 to 600 ms (log-uniform), a jitter around it
//!   and a slow tail (a share of answers several times the median);
//! - Segment's rate limit (100 req/s per space, *shared with every other
//!   consumer*, so any share of it may be ours) and Voucherify's per-window
//!   limit (per minute in production, compressed to seconds here);
//! - the call at which Voucherify's monthly quota (`api_calls_cycle`) runs
//!   out, on whichever endpoint that call is, and the hourly bulk bucket;
//! - 5xx answers, cut connections and slow answers at random calls;
//! - listing churn (the list is sorted by recent activity);
//! - the space: its size, its generator seed (trait counts and id pages vary
//!   per profile), its anonymous share;
//! - the pessimistic readings: nullable async-action fields as nulls, the
//!   100-customer cap lower than the client's batch, exports `DONE` without
//!   a file, whole-file import failures;
//! - on the client's side: the load method, batch size and concurrency, and
//!   a second command started on the same data directory.
//!
//! A world is healed ([`super::Sandbox::heal`]) to see that a rerun ends
//! exact: faults off, quotas refilled, churn stopped, readings kind again.

use super::{Latency, SandboxOptions};
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// A world: the sandbox's options and the client's flags, from one seed.
#[derive(Debug, Clone)]
pub struct World {
    pub seed: u64,
    pub sandbox: SandboxOptions,
    /// Flags for `segsync run` in this world.
    pub client_args: Vec<String>,
    /// A second `segsync run` on the same data directory this many ms after
    /// the first (a hurried person, or two cron entries): it must wait for
    /// nothing and exit 2 naming the first, or run after it has ended.
    pub concurrent_after_ms: Option<u64>,
    /// Between the first run and the rerun, another writer (the dashboard,
    /// Segment's own destination) renames this many of the customers that
    /// have a name; the rerun's plan must set them back.
    pub renames: usize,
    /// The rerun passes `--clear-removed`: the end state must then equal
    /// the source exactly.
    pub clear_removed: bool,
    /// Between the first run and the rerun, this many profiles get activity
    /// (a new version; where two profiles share a `user_id`, the other may
    /// now win and leave fields empty).
    pub touches: u64,
    /// Before the first run, another writer made this share (percent) of
    /// the customers, and every customer two profiles share, with values
    /// the profiles may not give (a phone, a description, an address line):
    /// nothing segsync never set may be erased.
    pub existing_percent: Option<u32>,
    /// Between the first run and the rerun, a person edits this many rows
    /// of customers.csv by hand: the rerun keeps the edits (edits.csv) and
    /// Voucherify must end holding them.
    pub hand_edits: usize,
}

impl World {
    pub fn from_seed(seed: u64) -> World {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ 0x05EE_D0F3_011D);
        let median_ms = (5f64.ln() + r.gen::<f64>() * (600f64.ln() - 5f64.ln())).exp() as u64;
        let latency = Latency {
            median_ms,
            jitter: r.gen_range(0.0..0.5),
            tail_share: if r.gen_bool(0.5) {
                r.gen_range(0.0..0.02)
            } else {
                0.0
            },
            tail_factor: r.gen_range(3..=10),
        };
        // Keep a world's extract to a few seconds of requests: a slow world
        // gets a smaller space (about two requests a profile, 16 in flight).
        let cap = (8_000 / median_ms.max(1)).clamp(20, 250);
        let profiles = r.gen_range(10..=cap);
        let window_secs = r.gen_range(1..=5u64);
        let batch_size = *pick(&mut r, &[10u32, 25, 50, 100]);
        let batches = profiles.div_ceil(batch_size as u64);
        let method = *pick(&mut r, &["bulk", "import", "auto"]);
        // About a schema read, two calls a batch, and an export's few calls.
        let expected_calls = 1 + 2 * batches + if method == "bulk" { 0 } else { 5 };
        let sandbox = SandboxOptions {
            seed,
            profiles,
            latency_ms: median_ms,
            latency: Some(latency),
            fault_rate: if r.gen_bool(0.5) {
                r.gen_range(0.0..0.08)
            } else {
                0.0
            },
            segment_rps: *pick(&mut r, &[0, 20, 50, 100, 200]),
            voucherify_rpm: r.gen_range(5..=60),
            voucherify_window: Duration::from_secs(window_secs),
            processing_ms: r.gen_range(20..=300),
            max_customers: if r.gen_bool(0.2) {
                r.gen_range(20..100)
            } else {
                super::voucherify::MAX_CUSTOMERS
            },
            null_fields: r.gen_bool(0.3),
            cycle_quota: r.gen_bool(0.35).then(|| r.gen_range(0..=expected_calls)),
            bulk_quota: r.gen_bool(0.2).then(|| r.gen_range(1..=3)),
            bulk_window: Duration::from_secs(r.gen_range(2..=5)),
            churn: if r.gen_bool(0.3) {
                r.gen_range(1..=20)
            } else {
                0
            },
            anonymous_percent: r.gen_range(0..=60),
            export_without_file: r.gen_bool(0.3),
            import_fails_whole: r.gen_bool(0.2),
            ..Default::default()
        };
        let client_args = vec![
            "--method".into(),
            method.into(),
            "--batch-size".into(),
            batch_size.to_string(),
            "--load-concurrency".into(),
            r.gen_range(1..=8u32).to_string(),
        ];
        let concurrent_after_ms = r.gen_bool(0.25).then(|| r.gen_range(0..1_500));
        // Drawn last, so the worlds of earlier seeds keep their other draws.
        let mut sandbox = sandbox;
        sandbox.export_shape = *pick(
            &mut r,
            &[
                super::exports::Shape::Readable,
                super::exports::Shape::FieldNames,
                super::exports::Shape::MetadataJson,
            ],
        );
        let renames = if r.gen_bool(0.4) {
            r.gen_range(1..=5)
        } else {
            0
        };
        // Drawn after those, for the same reason.
        sandbox.replace_nested = r.gen_bool(0.5);
        let mut client_args = client_args;
        let clear_removed = r.gen_bool(0.5);
        if clear_removed {
            client_args.push("--clear-removed".into());
        }
        let touches = if r.gen_bool(0.5) {
            r.gen_range(1..=profiles.min(20))
        } else {
            0
        };
        // The rerun's plan compares with a full export, or a delta applied
        // to the one the first run kept: both must end exact.
        if r.gen_bool(0.5) {
            client_args.push("--full-export".into());
        }
        // Drawn last: Voucherify's clock, as its async actions show it,
        // ahead of or behind ours.
        let mut sandbox = sandbox;
        sandbox.action_clock_ms = *pick(&mut r, &[0i64, 0, 1_500, -1_500, 45_000, -45_000]);
        let (existing_percent, hand_edits) = draw_readings_of_issue_44(&mut r, &mut sandbox);
        draw_readings_of_issue_43(&mut r, &mut sandbox);
        World {
            seed,
            sandbox,
            client_args,
            concurrent_after_ms,
            renames,
            clear_removed,
            touches,
            existing_percent,
            hand_edits,
        }
    }

    /// One line naming what was drawn, for a failing world's report.
    pub fn describe(&self) -> String {
        let o = &self.sandbox;
        format!(
            "world {}: {} profiles ({}% anonymous), latency {:?}, fault rate {:.3}, segment {} req/s, voucherify {} per {}s, processing {} ms, cap {}, cycle quota {:?}, bulk quota {:?} per {}s, churn {}/s, nulls {}, export without file {} (empty {}), import fails whole {}, export shape {:?}, nested objects {}, Voucherify's clock {:+} ms, winners last {}, undeliverable every {}, nulls {:?}, filters {:?}; {:?}% made first by another writer; client {}; a second run after {:?} ms; {} renamed by another writer, {} profiles touched and {} rows edited by hand before the rerun",
            self.seed,
            o.profiles,
            o.anonymous_percent,
            o.latency,
            o.fault_rate,
            o.segment_rps,
            o.voucherify_rpm,
            o.voucherify_window.as_secs(),
            o.processing_ms,
            o.max_customers,
            o.cycle_quota,
            o.bulk_quota,
            o.bulk_window.as_secs(),
            o.churn,
            o.null_fields,
            o.export_without_file,
            o.empty_export_without_file,
            o.import_fails_whole,
            o.export_shape,
            if o.replace_nested { "replaced whole" } else { "merged" },
            o.action_clock_ms,
            o.winners_last,
            o.undeliverable_every,
            o.nulls,
            o.filters,
            self.existing_percent,
            self.client_args.join(" "),
            self.concurrent_after_ms,
            self.renames,
            self.touches,
            self.hand_edits
        )
    }
}

/// Drawn last (issue 44), so earlier seeds keep their other draws:
/// customers another writer made first (the share, percent), the winner of
/// a shared user_id answering last, an empty export without a file, the
/// quota spent on the first calls (the export made beside extract and its
/// polls), customers Voucherify refuses, and hand edits before the rerun
/// (the rows edited).
fn draw_readings_of_issue_44(
    r: &mut impl Rng,
    sandbox: &mut SandboxOptions,
) -> (Option<u32>, usize) {
    let existing_percent = r.gen_bool(0.4).then(|| r.gen_range(5..=30));
    sandbox.winners_last = r.gen_bool(0.3);
    sandbox.empty_export_without_file = r.gen_bool(0.3);
    if sandbox.cycle_quota.is_some() && r.gen_bool(0.5) {
        sandbox.cycle_quota = Some(r.gen_range(1..=5));
    }
    sandbox.undeliverable_every = if r.gen_bool(0.2) {
        r.gen_range(7..=29)
    } else {
        0
    };
    let hand_edits = if r.gen_bool(0.2) {
        r.gen_range(1..=3)
    } else {
        0
    };
    (existing_percent, hand_edits)
}

/// Drawn after issue 44's (issue 43): what a `null` does in an upsert and
/// how an export's filters are read, the readings the docs leave open.
/// Voucherify's clock (`action_clock_ms`, drawn above) now stamps its
/// customers and exports too.
fn draw_readings_of_issue_43(r: &mut impl Rng, sandbox: &mut SandboxOptions) {
    use super::{Filters, Nulls};
    sandbox.nulls = *pick(
        r,
        &[
            Nulls::Applied,
            Nulls::Applied,
            Nulls::Ignored,
            Nulls::RefusedCustomer,
            Nulls::RefusedRequest,
        ],
    );
    sandbox.filters = *pick(r, &[Filters::AsSent, Filters::AlwaysAnd, Filters::CutToDay]);
}

fn pick<'a, T>(r: &mut impl Rng, from: &'a [T]) -> &'a T {
    &from[r.gen_range(0..from.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_world_and_seeds_differ() {
        assert_eq!(
            World::from_seed(7).describe(),
            World::from_seed(7).describe()
        );
        let shapes: std::collections::HashSet<String> =
            (0..50).map(|s| World::from_seed(s).describe()).collect();
        assert_eq!(shapes.len(), 50);
    }

    #[test]
    fn the_worlds_cover_every_dimension() {
        let worlds: Vec<World> = (0..200).map(World::from_seed).collect();
        let any = |f: &dyn Fn(&World) -> bool| worlds.iter().any(f);
        assert!(any(&|w| w.sandbox.latency_ms < 15));
        assert!(any(&|w| w.sandbox.latency_ms > 400));
        assert!(any(&|w| w.sandbox.cycle_quota == Some(0)));
        assert!(any(&|w| w.sandbox.bulk_quota.is_some()));
        assert!(any(&|w| w.sandbox.churn > 0));
        assert!(any(&|w| w.sandbox.export_without_file));
        assert!(any(&|w| w.sandbox.import_fails_whole));
        assert!(any(&|w| w.sandbox.max_customers < 100));
        assert!(any(&|w| w.concurrent_after_ms.is_some()));
        assert!(any(&|w| w.renames > 0));
        assert!(any(&|w| w.existing_percent.is_some()));
        assert!(any(&|w| w.sandbox.winners_last));
        assert!(any(&|w| w.sandbox.empty_export_without_file));
        for n in [
            super::super::Nulls::Ignored,
            super::super::Nulls::RefusedCustomer,
            super::super::Nulls::RefusedRequest,
        ] {
            assert!(any(&|w| w.sandbox.nulls == n), "{n:?}");
        }
        assert!(any(
            &|w| w.sandbox.filters == super::super::Filters::CutToDay
        ));
        assert!(any(&|w| w.sandbox.action_clock_ms == 45_000));
        assert!(any(&|w| w
            .sandbox
            .cycle_quota
            .is_some_and(|q| (1..=5).contains(&q))));
        assert!(any(&|w| w.sandbox.undeliverable_every > 0));
        assert!(any(&|w| w.hand_edits > 0));
        for shape in [
            super::super::exports::Shape::FieldNames,
            super::super::exports::Shape::MetadataJson,
        ] {
            assert!(any(&|w| w.sandbox.export_shape == shape), "{shape:?}");
        }
        for m in ["bulk", "import", "auto"] {
            assert!(any(&|w| w.client_args.iter().any(|a| a == m)), "{m}");
        }
    }
}
