//! The command line (docs/DESIGN.md): global options, subcommands, exit statuses.

use crate::config::{SegmentArgs, VoucherifyArgs};
use crate::{extract, load, transform};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The version, with the commit it was built from (`build.rs`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SEGSYNC_COMMIT"), ")");

/// Copy customer profiles from Segment (Unify Profile API) into Voucherify customers.
///
/// A staged pipeline of plain files: `extract` writes profiles.ndjson,
/// `transform` writes customers.csv (review or edit it), `load` upserts it and
/// records what Voucherify confirmed. Each stage can be rerun and resumes.
/// Configuration: flags, then environment variables, then a .env file.
#[derive(Debug, Parser)]
#[command(
    name = "segsync",
    version = VERSION,
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
    /// Print one JSON document on stdout when the command ends (its counts, files, or its error); every human line goes to stderr
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read every profile of the Segment space into profiles.ndjson (resumable)
    Extract(extract::Args),
    /// Map profiles.ndjson to customers.csv and rejected.csv
    Transform(transform::Args),
    /// Compare customers.csv with what Voucherify holds now: load.plan.csv lists what load would change, field by field
    Plan(crate::plan::Args),
    /// Validate customers.csv and upsert it into Voucherify (by a fresh plan, or by the ledger), confirming every batch
    Load(load::Args),
    /// Run extract, transform and load in a row, stopping at the first failure
    Run(RunArgs),
    /// Show each stage's files, counts, resume points and what comes next
    Status(crate::mapping::MappingArgs),
    /// Show what a hand edit of customers.csv changed against what transform would write
    Diff(crate::diff::Args),
    /// Restore, field by field, what the last load changed in Voucherify (--dry-run shows it first)
    Undo(crate::undo::Args),
    /// Print the effective mapping (default plus segsync.toml); --check compares it with the project's metadata schema
    Mapping(crate::mapping::command::Args),
    /// Serve a local emulator of both APIs (prints the variables that point segsync at it)
    #[cfg(feature = "sandbox")]
    Sandbox(crate::sandbox_command::Args),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish)
    Completions(CompletionsArgs),
    /// Print the man page (roff), generated from the same definition as --help
    Man(ManArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

impl Command {
    /// The command's name, as documents and `runs.ndjson` give it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Extract(_) => "extract",
            Command::Transform(_) => "transform",
            Command::Plan(_) => "plan",
            Command::Load(_) => "load",
            Command::Run(_) => "run",
            Command::Status(_) => "status",
            Command::Diff(_) => "diff",
            Command::Undo(_) => "undo",
            Command::Mapping(_) => "mapping",
            #[cfg(feature = "sandbox")]
            Command::Sandbox(_) => "sandbox",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
        }
    }
}

/// `segsync man`: the pages, from the same definition as `--help`.
#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// Write one page per command (segsync.1, segsync-extract.1, …) into DIR instead of printing segsync.1
    #[arg(long = "out", value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
}

/// Every subcommand's name, as a usage error's document names it.
pub const COMMANDS: [&str; 11] = [
    "extract",
    "transform",
    "plan",
    "load",
    "run",
    "status",
    "diff",
    "mapping",
    "sandbox",
    "completions",
    "man",
];

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
    pub mapping: crate::mapping::MappingArgs,
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
    /// Send null for mapped fields the source no longer has and segsync itself set before (as `load --clear-removed`)
    #[arg(long = "clear-removed")]
    pub clear_removed: bool,
    /// Export every customer again for the plan, not only those updated since the kept export
    #[arg(long = "full-export")]
    pub full_export: bool,
    /// Days after which the plan's export is full again instead of a delta
    #[arg(long = "full-export-every", default_value_t = 7, value_name = "DAYS")]
    pub full_export_every: u64,
    /// Load the rows the project's metadata schema accepts and set the others aside in load.rejects.csv (as `load --skip-invalid`); with a schema, customers are then sent early too
    #[arg(long = "skip-invalid")]
    pub skip_invalid: bool,
    /// Do not read back from Voucherify's export what the run confirmed (as `load --no-verify`)
    #[arg(long = "no-verify")]
    pub no_verify: bool,
    /// Send no customer before transform ends (by default, with --method bulk, customers go out in full batches while extract still runs)
    #[arg(long = "send-after-transform")]
    pub send_after_transform: bool,
    /// How load sends: bulk, import (new customers by CSV import), auto
    #[arg(long, value_enum, default_value_t = load::import::Method::Bulk)]
    pub method: load::import::Method,
    #[command(flatten)]
    pub segment: SegmentArgs,
    #[command(flatten)]
    pub voucherify: VoucherifyArgs,
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
