//! The program's entry and running one command: take the data directory's lock when the command
//! writes, run it, and make its JSON document (`report`), which a run that
//! held the lock also appends to `runs.ndjson`. Errors become the document's
//! error and the exit status (docs/DESIGN.md, "Exit codes").

use crate::cli::{Cli, Command, RunArgs};
use crate::error::exit_code_for;
use crate::{config, extract, load, report, state, status, transform, ui};
use clap::Parser;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// The program: parse the command line, run the command, print its
/// document under `--json`, exit with its status.
pub fn main() -> ExitCode {
    // A panic message goes through the same redaction as every error.
    std::panic::set_hook(Box::new(|info| {
        // A reader that went away (`segsync status | head -1`): stop quietly,
        // as cat and ripgrep do. println! panics on a closed pipe.
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
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
        Err(e) => return parse_failed(e),
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
    let json = cli.json;
    ui::set_json(json);
    let (code, doc) = rt.block_on(execute(cli));
    if json {
        crate::report::print(&doc);
    }
    // A signal ended it: the runtime's tasks are dropped as a kill would
    // drop them, which every stage resumes from.
    rt.shutdown_background();
    ExitCode::from(code)
}

/// Command lines clap refused or answered itself (`--help`, `--version`):
/// under `--json`, one document still (a usage error, exit 2).
fn parse_failed(e: clap::Error) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let code = if e.use_stderr() { 2 } else { 0 };
    if !json {
        let _ = e.print();
        return ExitCode::from(code);
    }
    // Everything human goes to stderr; stdout carries the document alone.
    eprint!("{}", e.render());
    let command = args
        .iter()
        .find_map(|a| crate::cli::COMMANDS.iter().find(|c| **c == a.as_str()))
        .copied()
        .unwrap_or("segsync");
    let doc = match e.kind() {
        clap::error::ErrorKind::DisplayVersion => {
            let mut body = Map::new();
            body.insert("version".into(), json!(crate::cli::VERSION));
            report::document("version", 0, body)
        }
        _ if code == 0 => report::document(command, 0, Map::new()),
        _ => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("usage error").trim();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            report::failure(command, 2, first)
        }
    };
    report::print(&doc);
    ExitCode::from(code)
}

/// The directory whose state a writing command changes (where its files
/// and journals live), or None for a command that only reads.
fn written_dir(command: &Command, data: &Path) -> Option<(PathBuf, &'static str)> {
    let beside = |f: &Option<PathBuf>| {
        f.as_deref()
            .map(crate::files::parent_dir)
            .unwrap_or_else(|| data.to_path_buf())
    };
    match command {
        Command::Extract(a) => Some((beside(&a.out), "extract")),
        Command::Transform(a) => Some((beside(&a.out), "transform")),
        Command::Load(a) if !a.dry_run => Some((beside(&a.input), "load")),
        Command::Plan(a) => Some((beside(&a.input), "plan")),
        Command::Run(_) => Some((data.to_path_buf(), "run")),
        Command::Undo(a) => Some((beside(&a.input), "undo")),
        _ => None,
    }
}

/// Run `cli`'s command; returns its exit status and its document.
pub async fn execute(cli: Cli) -> (u8, Value) {
    let name = cli.command.name();
    let data = cli.data_dir.clone();
    let mut body = Map::new();
    let lock = match written_dir(&cli.command, &data) {
        Some((dir, what)) => match state::lock::acquire(&dir, what) {
            Ok(l) => Some((l, dir)),
            Err(e) => return finish(name, Err(e), body),
        },
        None => match state::lock::check_dir(&data) {
            Ok(()) => None,
            Err(e) => return finish(name, Err(e), body),
        },
    };
    // The sandbox stops on a signal by design (exit 0): it handles them.
    #[cfg(feature = "sandbox")]
    let serves = matches!(cli.command, Command::Sandbox(_));
    #[cfg(not(feature = "sandbox"))]
    let serves = false;
    // A panic anywhere in the command fails the command, with its
    // document and its `runs.ndjson` line, as any error does.
    let running = std::panic::AssertUnwindSafe(dispatch(cli.command, &data, &mut body));
    let r = tokio::select! {
        r = futures::FutureExt::catch_unwind(running) => r.unwrap_or_else(|p| Err(panicked(p))),
        s = interrupted(), if !serves => Err(anyhow::Error::new(s)),
    };
    let (code, doc) = finish(name, r, body);
    if let Some((_held, dir)) = &lock {
        if let Err(e) = report::remember(dir, &doc) {
            ui::warn(format!(
                "cannot append to {}: {e}",
                state::runs(dir).display()
            ));
        }
    }
    (code, doc)
}

/// A panic's payload as an error: a bug, said as one; what the command
/// wrote is as a kill would leave it, and a rerun resumes (exit 1).
fn panicked(payload: Box<dyn std::any::Any + Send>) -> anyhow::Error {
    let what = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("no message");
    anyhow::anyhow!(
        "segsync failed unexpectedly ({}; a bug, please report it); what was written is kept as after a kill: rerun the command to resume",
        config::redact(what)
    )
}

/// SIGINT or SIGTERM arrived: the command stops where it is (every stage
/// resumes from there), and its document and `runs.ndjson` line say so.
async fn interrupted() -> crate::error::Interrupted {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => crate::error::Interrupted::Term,
        _ = int.recv() => crate::error::Interrupted::Int,
    }
}

/// The exit status and document of a command's outcome; an error is also
/// said on stderr.
fn finish(name: &str, r: anyhow::Result<u8>, body: Map<String, Value>) -> (u8, Value) {
    match r {
        Ok(code) => (code, report::document(name, code, body)),
        Err(e) => {
            let text = config::redact(&format!("{e:#}"));
            eprintln!("error: {text}");
            let code = exit_code_for(&e);
            let mut doc = report::failure(name, code, &text);
            if let Value::Object(m) = &mut doc {
                m.extend(body);
            }
            (code, doc)
        }
    }
}

async fn dispatch(
    command: Command,
    data: &Path,
    body: &mut Map<String, Value>,
) -> anyhow::Result<u8> {
    match command {
        Command::Extract(a) => {
            let s = extract::run(&a, data).await?;
            let out = a.out.clone().unwrap_or_else(|| state::profiles(data));
            body.extend(report::extract(&s, data, &out));
            Ok(0)
        }
        Command::Transform(a) => {
            let s = transform::run(&a, data)?;
            body.extend(report::transform(&s, data));
            Ok(0)
        }
        Command::Plan(a) => {
            let m = crate::plan::run(&a, data).await?;
            body.extend(report::plan(&m, data));
            Ok(0)
        }
        Command::Load(a) => {
            let s = load::run(&a, data).await?;
            body.extend(report::load(&s, data));
            Ok(if s.failed > 0 { 3 } else { 0 })
        }
        Command::Run(a) => run_all(&a, data, body).await,
        Command::Status(m) => {
            if ui::json() {
                body.extend(status::json(data, &m)?);
            } else {
                status::run(data, &m)?;
            }
            Ok(0)
        }
        Command::Diff(a) => crate::diff::run(&a, data).map(|_| 0),
        Command::Undo(a) => crate::undo::run(&a, data).await,
        Command::Mapping(a) => crate::mapping::command::run(&a).await,
        #[cfg(feature = "sandbox")]
        Command::Sandbox(a) => crate::sandbox_command::run(a).await.map(|_| 0),
        Command::Completions(a) => {
            let mut out = Vec::new();
            clap_complete::generate(a.shell, &mut cli_command(), "segsync", &mut out);
            emit_text(body, "script", out);
            Ok(0)
        }
        Command::Man(a) => {
            let Some(dir) = a.out else {
                let mut out = Vec::new();
                man_page(cli_command()).render(&mut out)?;
                let out = tidy_roff(&String::from_utf8_lossy(&out)).into_bytes();
                emit_text(body, "man", out);
                return Ok(0);
            };
            let written = write_man_pages(&dir)?;
            ui::info(format!(
                "man: {} pages written to {} (segsync.1 and one per command); `man -l {}` reads one",
                written.len(),
                dir.display(),
                dir.join("segsync-load.1").display()
            ));
            body.insert(
                "files".into(),
                json!(written
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()),
            );
            Ok(0)
        }
    }
}

/// One page, dated by the commit it was built from.
fn man_page(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .date(env!("SEGSYNC_DATE"))
        .source(format!("segsync {}", env!("CARGO_PKG_VERSION")))
        .manual("segsync manual")
}

/// clap_mangen's roff, with what `mandoc -Tlint` warns of mended: a blank
/// line between two `.br` (a paragraph break inside a list of values) is one
/// `.sp`, and no line ends in white space.
fn tidy_roff(roff: &str) -> String {
    let mut out = String::with_capacity(roff.len());
    for line in roff.replace("\n.br\n\n.br\n", "\n.sp\n").lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `segsync.1` and a page per command (`segsync-load.1`), every flag in it.
fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn pages(cmd: clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            pages(sub, dir, out)?;
        }
        let page = man_page(cmd);
        let path = dir.join(page.get_filename());
        let mut bytes = Vec::new();
        page.render(&mut bytes)?;
        crate::files::write_atomic(
            &path,
            tidy_roff(&String::from_utf8_lossy(&bytes)).as_bytes(),
        )?;
        out.push(path);
        Ok(())
    }
    crate::files::ensure_dir(dir)?;
    let mut cmd = cli_command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    pages(cmd, dir, &mut out)?;
    Ok(out)
}

fn cli_command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Generated text: on stdout, or under `--json` in the document.
fn emit_text(body: &mut Map<String, Value>, key: &str, text: Vec<u8>) {
    let text = String::from_utf8_lossy(&text).into_owned();
    if ui::json() {
        body.insert(key.into(), json!(text));
    } else {
        ui::out(&text);
    }
}

/// extract, transform and load in a row; each stage's summary goes under
/// `stages` as soon as it is done, so a failure's document shows them too.
async fn run_all(a: &RunArgs, data: &Path, body: &mut Map<String, Value>) -> anyhow::Result<u8> {
    // Check every credential before doing any work.
    a.segment.resolve()?;
    a.voucherify.resolve()?;
    // A customers.csv edited by hand: its edits are kept (edits.csv) before
    // anything is sent, so early sending applies them as transform will.
    transform::keep_edits(&state::customers(data), a.force, "run")?;
    // A rerun brings Voucherify up to date at the lowest cost: when a
    // complete extract is there, only list calls and changed profiles.
    let profiles = state::profiles(data);
    let complete = state::checkpoint::read(&state::checkpoint(&profiles))
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
    let mut stages = Map::new();
    // Beside extract: the plan's export, and the customers the plan would
    // send that no later profile can change, sent as they come (`pipeline`).
    let since = std::time::SystemTime::now();
    let mut la = load_args(a);
    // The load reads back what this run confirms, early sends included.
    la.verify_since = Some(
        std::fs::metadata(state::Beside::of(&state::customers(data)).ledger).map_or(0, |m| m.len()),
    );
    let export = crate::pipeline::prefetch_export(&la, data);
    let mapping = a.mapping.resolve()?;
    let census = Arc::new(extract::census::Census::new(
        mapping.source_id_types.clone(),
    ));
    let (tx, rx) = tokio::sync::watch::channel(crate::pipeline::Extract::Running);
    let extracting = async {
        let r =
            extract::run_counting(&extract_args(a, incremental), data, Some(census.clone())).await;
        let _ = tx.send(match r {
            Ok(_) => crate::pipeline::Extract::Done,
            Err(_) => crate::pipeline::Extract::Failed,
        });
        r
    };
    let watch = crate::pipeline::Watch {
        extract: rx,
        census: census.clone(),
        export: export.clone(),
    };
    let following = async {
        if !a.send_after_transform {
            crate::pipeline::follow(&la, data, since, watch).await
        } else {
            crate::pipeline::Early::default()
        }
    };
    let (s, early) = tokio::join!(extracting, following);
    let s = s?;
    stages.insert(
        "extract".into(),
        Value::Object(report::extract(&s, data, &profiles)),
    );
    body.insert("stages".into(), Value::Object(stages.clone()));
    let tr = transform::Args {
        input: None,
        out: None,
        rejected: None,
        mapping: a.mapping.clone(),
        force: a.force,
        drop_edit: Vec::new(),
        skip_invalid: false,
    };
    let s = transform::run(&tr, data)?;
    stages.insert(
        "transform".into(),
        Value::Object(report::transform(&s, data)),
    );
    body.insert("stages".into(), Value::Object(stages.clone()));
    // The export shows Voucherify as the run started: the plan uses it as
    // it is only when nothing was sent since; else it brings it up to date
    // by a delta (the customers sent early, and any other writer's).
    if let crate::pipeline::Prefetch::Ready(id) = wait_for(export).await {
        let max_age = std::time::Duration::from_secs(la.plan_max_age);
        la.exports.reuse = (early.sent == 0).then_some((id, max_age));
    }
    la.refused_early = early.refused.clone();
    let s = load::run(&la, data).await?;
    let mut load_stage = report::load(&s, data);
    if let Some(Value::Object(counts)) = load_stage.get_mut("counts") {
        // What went beside extract, before the load's own sends.
        counts.insert("sent_early".into(), early.sent.into());
        counts.insert("confirmed_early".into(), early.confirmed.into());
        counts.insert("batches_early".into(), early.batches.into());
        counts.insert("refused_early".into(), (early.refused.len() as u64).into());
        counts.insert("held_back_early".into(), early.duplicates.into());
    }
    stages.insert("load".into(), Value::Object(load_stage));
    body.insert("stages".into(), Value::Object(stages));
    Ok(if s.failed > 0 { 3 } else { 0 })
}

/// The prefetched export's end (bounded by its own deadline, which the
/// task that makes it holds).
async fn wait_for(
    mut export: tokio::sync::watch::Receiver<crate::pipeline::Prefetch>,
) -> crate::pipeline::Prefetch {
    use crate::pipeline::Prefetch;
    loop {
        let now = export.borrow().clone();
        if now != Prefetch::Waiting {
            return now;
        }
        if export.changed().await.is_err() {
            return Prefetch::Failed;
        }
    }
}

fn extract_args(a: &RunArgs, incremental: bool) -> extract::Args {
    extract::Args {
        from: extract::Source::Api,
        dir: None,
        ids: None,
        id_type: None,
        ignore: Vec::new(),
        trait_values: None,
        out: None,
        concurrency: a.extract_concurrency,
        fixed_concurrency: false,
        rate_limit: a.segment_rate_limit,
        fresh: a.fresh,
        incremental,
        all_traits: false,
        mapping: a.mapping.clone(),
        segment: a.segment.clone(),
    }
}

fn load_args(a: &RunArgs) -> load::Args {
    load::Args {
        input: None,
        batch_size: a.batch_size,
        max_batch_bytes: load::DEFAULT_MAX_BATCH_BYTES,
        concurrency: a.load_concurrency,
        rate_limit: a.voucherify_rate_limit,
        poll_timeout: load::DEFAULT_POLL_TIMEOUT,
        queue_timeout: load::DEFAULT_QUEUE_TIMEOUT,
        max_wait: load::DEFAULT_MAX_WAIT,
        dry_run: false,
        skip_invalid: a.skip_invalid,
        full: a.full,
        plan: false,
        from_ledger: false,
        plan_max_age: crate::plan::DEFAULT_MAX_AGE,
        clear_removed: a.clear_removed,
        keep_newer: false,
        exports: crate::plan::ExportArgs {
            full_export: a.full_export,
            full_export_every: a.full_export_every,
            max_export_bytes: crate::api::http::MAX_FILE_BYTES,
            reuse: None,
        },
        accept_edits: false,
        method: a.method,
        export_timeout: load::DEFAULT_EXPORT_TIMEOUT,
        max_file_bytes: load::DEFAULT_MAX_FILE_BYTES,
        mapping: a.mapping.clone(),
        voucherify: a.voucherify.clone(),
        no_verify: a.no_verify,
        refused_early: Vec::new(),
        verify_since: None,
    }
}
