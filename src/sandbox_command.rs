//! `segsync sandbox`: serve the emulator of both APIs on loopback (or a
//! seeded world of it), or write its synthetic space as files. Built with
//! the default `sandbox` feature.

use crate::sandbox::{Sandbox, SandboxOptions};
use crate::ui;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1 (0 = any free port)
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Profiles in the synthetic space
    #[arg(long, default_value_t = 1000)]
    pub profiles: u64,
    /// Seed of the synthetic data set
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Delay added to every API response
    #[arg(long = "latency-ms", default_value_t = 0)]
    pub latency_ms: u64,
    /// Spread of answer times around --latency-ms, as a share of it (0.3: ±30%)
    #[arg(long = "latency-jitter", default_value_t = 0.0)]
    pub latency_jitter: f64,
    /// Share of answers in a slow tail (0.01: 1%), each --slow-tail-factor times --latency-ms
    #[arg(long = "slow-tail-share", default_value_t = 0.0)]
    pub slow_tail_share: f64,
    /// How much slower the slow tail's answers are
    #[arg(long = "slow-tail-factor", default_value_t = 5)]
    pub slow_tail_factor: u32,
    /// Share of API requests answered 503 or cut mid-response (0.0-1.0)
    #[arg(long = "fault-rate", default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Segment requests per second before 429 (0 = unlimited)
    #[arg(long = "segment-rps", default_value_t = 100)]
    pub segment_rps: u32,
    /// Voucherify requests per minute before 429 (0 = unlimited)
    #[arg(long = "voucherify-rpm", default_value_t = 2000)]
    pub voucherify_rpm: u32,
    /// Time an async action takes from ENQUEUED to DONE
    #[arg(long = "processing-ms", default_value_t = 200)]
    pub processing_ms: u64,
    /// How far Voucherify's clock (its async actions' created_at and updated_at) runs ahead of this machine's, in ms; negative: behind
    #[arg(
        long = "action-clock-ms",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub action_clock_ms: i64,
    /// Time a customer export takes from SCHEDULED to DONE [default: --processing-ms]
    #[arg(long = "export-ms")]
    pub export_ms: Option<u64>,
    /// Largest Voucherify request body in bytes before 413
    #[arg(long = "max-body-bytes", default_value_t = crate::sandbox::MAX_BODY)]
    pub max_body_bytes: usize,
    /// Answer absent async-action fields with explicit nulls (errors: null, result: null while queued)
    #[arg(long = "null-fields")]
    pub null_fields: bool,
    /// A bulk upsert's address and metadata replace the held objects whole (default: merged key by key; the docs do not say which)
    #[arg(long = "replace-nested")]
    pub replace_nested: bool,
    /// Accept bulk-request properties Voucherify's published schema does not name (the original script sends system_metadata); by default they are refused
    #[arg(long = "accept-undocumented")]
    pub accept_undocumented: bool,
    /// Voucherify API calls left in the monthly cycle before 429 api_calls_cycle
    #[arg(long = "cycle-quota", value_name = "CALLS")]
    pub cycle_quota: Option<u64>,
    /// Voucherify bulk calls per hour before 429 bulk_api_calls
    #[arg(long = "bulk-quota", value_name = "CALLS")]
    pub bulk_quota: Option<u32>,
    /// Length of the bulk-call bucket
    #[arg(
        long = "bulk-window-secs",
        default_value_t = 3600,
        value_name = "SECONDS"
    )]
    pub bulk_window_secs: u64,
    /// The project's customer metadata schema, a JSON file: {"properties": {KEY: {"type": ...}}, "allow_defined_only": bool}
    #[arg(long = "metadata-schema", value_name = "FILE")]
    pub metadata_schema: Option<PathBuf>,
    /// Share of profiles (0-100) that are anonymous (no user_id)
    #[arg(long = "anonymous-percent", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub anonymous_percent: u64,
    /// Every trait of the type Voucherify's schema gives its field (metadata an object, phone a string): a space the original script reads to the end (by default some are not, and it sends them as they are, which Voucherify refuses)
    #[arg(long = "plain-traits")]
    pub plain_traits: bool,
    /// Profiles a second that get activity: moved to the head of the activity-sorted listing, updated_at bumped
    #[arg(long, default_value_t = 0)]
    pub churn: u32,
    /// Of two profiles sharing a user_id, the winner (updated later) answers its traits last, so a client writes the loser first
    #[arg(long = "winners-last")]
    pub winners_last: bool,
    /// An export of no customer ends DONE without a file (result null), a reading the docs allow
    #[arg(long = "empty-export-without-file")]
    pub empty_export_without_file: bool,
    /// Answer the profile listing (an undocumented route) with 404, as Segment may without notice
    #[arg(long = "refuse-listing")]
    pub refuse_listing: bool,
    /// Answer lookups by the undocumented segment_id: prefix with 404 (the bare id and external ids still answer)
    #[arg(long = "refuse-prefixed")]
    pub refuse_prefixed: bool,
    /// Share of listed profiles (0-100) whose lookups answer 404, as if deleted after the listing
    #[arg(long = "gone-percent", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub gone_percent: u8,
    /// What a null in a bulk upsert does (the docs do not say): applied (removes the field), ignored, refused-customer, refused-request
    #[arg(long, value_enum, default_value_t = crate::sandbox::Nulls::Applied)]
    pub nulls: crate::sandbox::Nulls,
    /// How an export's filters are read (the docs do not say): as-sent, always-and (junction ignored), cut-to-day ($after a date)
    #[arg(long, value_enum, default_value_t = crate::sandbox::Filters::AsSent)]
    pub filters: crate::sandbox::Filters,
    /// Answer as a hostile server or proxy would, one case (to see segsync refuse it)
    #[arg(long, value_enum)]
    pub hostile: Option<crate::sandbox::hostile::Hostile>,
    /// Break the API contract on purpose (to see how segsync copes)
    #[arg(long, value_enum)]
    pub misbehave: Option<crate::sandbox::Misbehave>,
    /// Serve the seeded world SEED (latency, limits, quotas, faults, churn, the space and the pessimistic readings, all drawn from it); overrides the other shape flags and prints the client flags the world uses
    #[arg(long, value_name = "SEED")]
    pub world: Option<u64>,
    /// Instead of serving, write the synthetic space to FILE as `extract` would
    /// (for benchmarks and experiments with big inputs), then exit
    #[arg(long = "write-profiles", value_name = "FILE")]
    pub write_profiles: Option<PathBuf>,
    /// Instead of serving, write the synthetic space into DIR as a warehouse
    /// unloads Segment's Profiles Sync tables (user_traits/, user_identifiers/), then exit
    #[arg(long = "write-profiles-sync", value_name = "DIR")]
    pub write_profiles_sync: Option<PathBuf>,
    /// Rows per Parquet row group for --write-profiles-sync (a warehouse may write one huge group per part)
    #[arg(long = "sync-row-group", default_value_t = crate::sandbox::profiles_sync::GROUP as u64, value_name = "ROWS", value_parser = clap::value_parser!(u64).range(1..))]
    pub sync_row_group: u64,
    /// Part files per table for --write-profiles-sync
    #[arg(long = "sync-parts", default_value_t = crate::sandbox::profiles_sync::PARTS as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub sync_parts: u64,
    /// Shuffle the rows of each Parquet row group for --write-profiles-sync,
    /// as a warehouse may write them (otherwise a profile's rows are together)
    #[arg(long = "sync-shuffle")]
    pub sync_shuffle: bool,
    /// Part file format for --write-profiles-sync
    #[arg(long = "sync-format", value_enum, default_value_t = crate::sandbox::profiles_sync::Format::Parquet)]
    pub sync_format: crate::sandbox::profiles_sync::Format,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if let Some(dir) = &a.write_profiles_sync {
        let ds = crate::sandbox::data::Dataset {
            seed: a.seed,
            n: a.profiles,
            anonymous_percent: a.anonymous_percent,
            plain_traits: a.plain_traits,
            undeliverable_every: 0,
        };
        let rows = crate::sandbox::profiles_sync::write(
            &ds,
            dir,
            a.sync_format,
            crate::sandbox::profiles_sync::Layout {
                parts: a.sync_parts as usize,
                group: a.sync_row_group as usize,
                shuffle: a.sync_shuffle.then_some(a.seed),
            },
        )?;
        ui::info(format!(
            "sandbox: wrote {} profiles as a Profiles Sync unload ({rows} rows) in {}",
            ds.n,
            dir.display()
        ));
        return Ok(());
    }
    if let Some(path) = &a.write_profiles {
        let ds = crate::sandbox::data::Dataset {
            seed: a.seed,
            n: a.profiles,
            anonymous_percent: a.anonymous_percent,
            plain_traits: a.plain_traits,
            undeliverable_every: 0,
        };
        let mut f = crate::files::AtomicFile::create(path)?;
        let mut line = Vec::with_capacity(64 * 1024);
        for i in 0..ds.n {
            line.clear();
            serde_json::to_writer(&mut line, &ds.profile(i, 0).record())?;
            line.push(b'\n');
            f.write_all(&line)?;
        }
        f.commit()?;
        ui::info(format!(
            "sandbox: wrote {} profiles to {}",
            ds.n,
            path.display()
        ));
        return Ok(());
    }
    if !(0.0..=1.0).contains(&a.fault_rate) {
        return Err(
            crate::error::UsageError::new("--fault-rate must be between 0.0 and 1.0").into(),
        );
    }
    let metadata_schema = match &a.metadata_schema {
        Some(p) => Some(
            serde_json::from_slice(
                &std::fs::read(p)
                    .map_err(|e| crate::error::UsageError::new(format!("{}: {e}", p.display())))?,
            )
            .map_err(|e| {
                crate::error::UsageError::new(format!("{}: not JSON ({e})", p.display()))
            })?,
        ),
        None => None,
    };
    let world = a.world.map(crate::sandbox::world::World::from_seed);
    let options = match &world {
        Some(w) => {
            ui::info(w.describe());
            println!("SEGSYNC_WORLD_ARGS=\"{}\"", w.client_args.join(" "));
            SandboxOptions {
                port: a.port,
                ..w.sandbox.clone()
            }
        }
        None => sandbox_options(&a, metadata_schema),
    };
    let sb = Sandbox::start(options).await?;
    {
        let mut out = std::io::stdout().lock();
        for (k, v) in sb.env() {
            writeln!(out, "{k}={v}")?;
        }
        out.flush()?;
    }
    ui::info(format!(
        "sandbox: serving Segment and Voucherify on {} ({} profiles, seed {}); GET /_sandbox/stats and /_sandbox/customers show what it holds; Ctrl-C stops it",
        sb.url(),
        sb.dataset().n,
        sb.dataset().seed
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sb.stop().await;
    Ok(())
}

fn sandbox_options(a: &Args, metadata_schema: Option<serde_json::Value>) -> SandboxOptions {
    SandboxOptions {
        port: a.port,
        profiles: a.profiles,
        seed: a.seed,
        latency_ms: a.latency_ms,
        fault_rate: a.fault_rate,
        segment_rps: a.segment_rps,
        voucherify_rpm: a.voucherify_rpm,
        processing_ms: a.processing_ms,
        export_ms: a.export_ms,
        max_body_bytes: a.max_body_bytes,
        null_fields: a.null_fields,
        replace_nested: a.replace_nested,
        accept_undocumented: a.accept_undocumented,
        action_clock_ms: a.action_clock_ms,
        cycle_quota: a.cycle_quota,
        bulk_quota: a.bulk_quota,
        bulk_window: std::time::Duration::from_secs(a.bulk_window_secs),
        churn: a.churn,
        anonymous_percent: a.anonymous_percent,
        plain_traits: a.plain_traits,
        metadata_schema,
        misbehave: a.misbehave,
        winners_last: a.winners_last,
        refuse_listing: a.refuse_listing,
        refuse_prefixed: a.refuse_prefixed,
        gone_percent: a.gone_percent,
        hostile: a.hostile,
        nulls: a.nulls,
        filters: a.filters,
        empty_export_without_file: a.empty_export_without_file,
        latency: (a.latency_jitter > 0.0 || a.slow_tail_share > 0.0).then_some(
            crate::sandbox::Latency {
                median_ms: a.latency_ms,
                jitter: a.latency_jitter.clamp(0.0, 1.0),
                tail_share: a.slow_tail_share.clamp(0.0, 1.0),
                tail_factor: a.slow_tail_factor.max(1),
            },
        ),
        ..Default::default()
    }
}
