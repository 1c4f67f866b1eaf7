//! The command line (docs/DESIGN.md): global options, subcommands, exit statuses.

use crate::config::{self, SegmentArgs, VoucherifyArgs};
use crate::error::exit_code_for;
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::{extract, load, status, transform, ui};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Copy customer profiles from Segment (Unify Profile API) into Voucherify customers.
///
/// A staged pipeline of plain files: `extract` writes profiles.ndjson,
/// `transform` writes customers.csv (review or edit it), `load` upserts it and
/// records what Voucherify confirmed. Each stage can be rerun and resumes.
/// Configuration: flags, then environment variables, then a .env file.
#[derive(Debug, Parser)]
#[command(
    name = "segsync",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Directory of the pipeline's files
    #[arg(
        long,
        global = true,
        env = "SEGSYNC_DATA_DIR",
        default_value = "data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// More output (-v details, -vv every request)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less output (-q no summaries, -qq no warnings)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read every profile of the Segment space into profiles.ndjson (resumable)
    Extract(extract::Args),
    /// Map profiles.ndjson to customers.csv and rejected.csv
    Transform(transform::Args),
    /// Validate customers.csv and upsert it into Voucherify, confirming every batch
    Load(load::Args),
    /// Run extract, transform and load in a row, stopping at the first failure
    Run(RunArgs),
    /// Show each stage's files, counts, resume points and what comes next
    Status(crate::config::MappingArgs),
    /// Show what a hand edit of customers.csv changed against what transform would write
    Diff(crate::diff::Args),
    /// Print the effective mapping (default plus segsync.toml); --check compares it with the project's metadata schema
    Mapping(crate::mapping_command::Args),
    /// Serve a local emulator of both APIs (prints the variables that point segsync at it)
    Sandbox(SandboxArgs),
}

/// `run`'s own flags. Each stage flag it repeats under a prefixed name takes
/// its default and its range check from the stage module, so they live in
/// one place (`extract::concurrency_parser`, `load::DEFAULT_BATCH_SIZE`, …).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Reuse unchanged profiles from the previous extract (the default when a complete one exists)
    #[arg(long)]
    pub incremental: bool,
    /// Extract everything again, ignoring the previous extract and any unfinished one
    #[arg(long, conflicts_with = "incremental")]
    pub fresh: bool,
    /// Profiles fetched at once during extract
    #[arg(long = "extract-concurrency", default_value_t = extract::DEFAULT_CONCURRENCY, value_parser = extract::concurrency_parser())]
    pub extract_concurrency: u32,
    /// Segment requests per second (0 = no limit)
    #[arg(long = "segment-rate-limit", default_value_t = extract::DEFAULT_RATE_LIMIT)]
    pub segment_rate_limit: u32,
    #[command(flatten)]
    pub mapping: config::MappingArgs,
    /// Overwrite a hand-edited customers.csv
    #[arg(long)]
    pub force: bool,
    /// Customers per bulk request
    #[arg(long = "batch-size", default_value_t = load::DEFAULT_BATCH_SIZE, value_parser = load::batch_size_parser())]
    pub batch_size: u32,
    /// Batches in flight during load
    #[arg(long = "load-concurrency", default_value_t = load::DEFAULT_CONCURRENCY, value_parser = load::concurrency_parser())]
    pub load_concurrency: u32,
    /// Voucherify requests per minute
    #[arg(long = "voucherify-rate-limit")]
    pub voucherify_rate_limit: Option<u32>,
    /// Resend every customer
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub segment: SegmentArgs,
    #[command(flatten)]
    pub voucherify: VoucherifyArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
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
    /// Largest Voucherify request body in bytes before 413
    #[arg(long = "max-body-bytes", default_value_t = crate::sandbox::MAX_BODY)]
    pub max_body_bytes: usize,
    /// Answer absent async-action fields with explicit nulls (errors: null, result: null while queued)
    #[arg(long = "null-fields")]
    pub null_fields: bool,
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
    /// Profiles a second that get activity: moved to the head of the activity-sorted listing, updated_at bumped
    #[arg(long, default_value_t = 0)]
    pub churn: u32,
    /// Break the API contract on purpose (to see how segsync copes)
    #[arg(long, value_enum)]
    pub misbehave: Option<crate::sandbox::Misbehave>,
    /// Instead of serving, write the synthetic space to FILE as `extract` would
    /// (for benchmarks and experiments with big inputs), then exit
    #[arg(long = "write-profiles", value_name = "FILE")]
    pub write_profiles: Option<PathBuf>,
    /// Instead of serving, write the synthetic space into DIR as a warehouse
    /// unloads Segment's Profiles Sync tables (user_traits/, user_identifiers/), then exit
    #[arg(long = "write-profiles-sync", value_name = "DIR")]
    pub write_profiles_sync: Option<PathBuf>,
    /// Part file format for --write-profiles-sync
    #[arg(long = "sync-format", value_enum, default_value_t = crate::sandbox::profiles_sync::Format::Parquet)]
    pub sync_format: crate::sandbox::profiles_sync::Format,
}

pub fn main() -> ExitCode {
    // A panic message goes through the same redaction as every error.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "segsync crashed (a bug; please report it): {}",
            config::redact(&info.to_string())
        );
    }));
    if let Err(e) = config::prepare_environment() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    ui::set_verbosity(cli.verbose as i8 - cli.quiet as i8);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let text = config::redact(&format!("{e:#}"));
            eprintln!("error: {text}");
            ExitCode::from(exit_code_for(&e))
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let data = cli.data_dir.clone();
    match cli.command {
        Command::Extract(a) => extract::run(&a, &data).await.map(|_| 0),
        Command::Transform(a) => transform::run(&a, &data).map(|_| 0),
        Command::Load(a) => load::run(&a, &data)
            .await
            .map(|s| if s.failed > 0 { 3 } else { 0 }),
        Command::Run(a) => run_all(&a, &data).await,
        Command::Status(m) => status::run(&data, &m).map(|_| 0),
        Command::Diff(a) => crate::diff::run(&a, &data).map(|_| 0),
        Command::Mapping(a) => crate::mapping_command::run(&a).await,
        Command::Sandbox(a) => sandbox(a).await.map(|_| 0),
    }
}

async fn run_all(a: &RunArgs, data: &std::path::Path) -> anyhow::Result<u8> {
    // Check every credential before doing any work.
    a.segment.resolve()?;
    a.voucherify.resolve()?;
    // A rerun brings Voucherify up to date at the lowest cost: when a
    // complete extract is there, only list calls and changed profiles.
    let profiles = crate::state::profiles(data);
    let complete = crate::state::checkpoint::read(&crate::state::checkpoint(&profiles))
        .ok()
        .flatten()
        .is_some_and(|cp| cp.complete)
        && profiles.exists();
    let incremental = a.incremental || (complete && !a.fresh);
    ui::info(if incremental {
        "run: incremental extract (list calls plus the profiles that changed since the last extract; --fresh for a full one)"
    } else {
        "run: full extract"
    });
    let ex = extract::Args {
        from: extract::Source::Api,
        dir: None,
        trait_values: None,
        out: None,
        concurrency: a.extract_concurrency,
        rate_limit: a.segment_rate_limit,
        fresh: a.fresh,
        incremental,
        all_traits: false,
        mapping: a.mapping.clone(),
        segment: a.segment.clone(),
    };
    extract::run(&ex, data).await?;
    let tr = transform::Args {
        input: None,
        out: None,
        rejected: None,
        mapping: a.mapping.clone(),
        force: a.force,
        skip_invalid: false,
    };
    transform::run(&tr, data)?;
    let ld = load::Args {
        input: None,
        batch_size: a.batch_size,
        max_batch_bytes: load::DEFAULT_MAX_BATCH_BYTES,
        concurrency: a.load_concurrency,
        rate_limit: a.voucherify_rate_limit,
        poll_timeout: load::DEFAULT_POLL_TIMEOUT,
        max_wait: load::DEFAULT_MAX_WAIT,
        dry_run: false,
        skip_invalid: false,
        full: a.full,
        accept_edits: false,
        method: load::import::Method::Bulk,
        max_file_bytes: 9_000_000,
        mapping: a.mapping.clone(),
        voucherify: a.voucherify.clone(),
    };
    let s = load::run(&ld, data).await?;
    Ok(if s.failed > 0 { 3 } else { 0 })
}

async fn sandbox(a: SandboxArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.write_profiles_sync {
        let ds = crate::sandbox::data::Dataset {
            seed: a.seed,
            n: a.profiles,
            anonymous_percent: a.anonymous_percent,
        };
        let rows = crate::sandbox::profiles_sync::write(&ds, dir, a.sync_format)?;
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
    let sb = Sandbox::start(SandboxOptions {
        port: a.port,
        profiles: a.profiles,
        seed: a.seed,
        latency_ms: a.latency_ms,
        fault_rate: a.fault_rate,
        segment_rps: a.segment_rps,
        voucherify_rpm: a.voucherify_rpm,
        processing_ms: a.processing_ms,
        max_body_bytes: a.max_body_bytes,
        null_fields: a.null_fields,
        cycle_quota: a.cycle_quota,
        bulk_quota: a.bulk_quota,
        bulk_window: std::time::Duration::from_secs(a.bulk_window_secs),
        churn: a.churn,
        anonymous_percent: a.anonymous_percent,
        metadata_schema,
        misbehave: a.misbehave,
        ..Default::default()
    })
    .await?;
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
        a.profiles,
        a.seed
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sb.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
