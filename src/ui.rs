//! Messages and progress for a person watching: verbosity levels, a progress
//! bar on a terminal and a plain periodic line otherwise.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicI8, Ordering};
use std::time::{Duration, Instant};

static VERBOSITY: AtomicI8 = AtomicI8::new(0);
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--json`: stdout carries one JSON document; every human line goes to stderr.
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A command's own output (status, diff, mapping): stdout, or stderr under
/// `--json`, where stdout is the document's alone.
pub fn out(text: &str) {
    use std::io::Write;
    if json() {
        eprint!("{text}");
    } else {
        print!("{text}");
        let _ = std::io::stdout().flush();
    }
}

/// [`out`] with a line end.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::ui::out(&format!("{}\n", format_args!($($arg)*))) };
}

/// [`out`] without a line end.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::ui::out(&format!($($arg)*)) };
}

pub fn set_verbosity(v: i8) {
    VERBOSITY.store(v, Ordering::Relaxed);
}

pub fn verbosity() -> i8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// Normal messages (summaries); silenced by `-q`.
pub fn info(msg: impl AsRef<str>) {
    if verbosity() >= 0 {
        emit(msg.as_ref());
    }
}

/// Details shown with `-v`.
pub fn debug(msg: impl AsRef<str>) {
    if verbosity() >= 1 {
        emit(msg.as_ref());
    }
}

/// Request-level tracing shown with `-vv`.
pub fn trace(msg: impl AsRef<str>) {
    if verbosity() >= 2 {
        emit(msg.as_ref());
    }
}

/// Warnings always show unless `-qq`.
pub fn warn(msg: impl AsRef<str>) {
    if verbosity() >= -1 {
        emit(&format!("warning: {}", msg.as_ref()));
    }
}

fn emit(msg: &str) {
    // Through the bars, so lines do not tear them.
    bars().suspend(|| eprintln!("{msg}"));
}

/// Every progress bar on the terminal, one line each: the stages `run`
/// overlaps show at once (extract, and the customers sent beside it).
fn bars() -> &'static MultiProgress {
    static BARS: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Progress of a long stage. On a terminal an indicatif bar; otherwise a plain
/// line to stderr every few seconds, so logs of unattended runs show life.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    unit: &'static str,
    started: Instant,
    last_line: std::sync::Mutex<Instant>,
    total: std::sync::atomic::AtomicU64,
    pos: std::sync::atomic::AtomicU64,
    every: Duration,
}

impl Progress {
    pub fn new(label: &'static str, unit: &'static str, total: Option<u64>) -> Progress {
        let bar = if std::io::stderr().is_terminal() && verbosity() >= 0 {
            let bar = bars().add(match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            });
            let template = if total.is_some() {
                "{prefix:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta} {msg}"
            } else {
                "{prefix:>9} [{elapsed_precise}] {spinner} {pos} {per_sec} {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        } else {
            None
        };
        Progress {
            bar,
            label,
            unit,
            started: Instant::now(),
            last_line: std::sync::Mutex::new(Instant::now()),
            total: std::sync::atomic::AtomicU64::new(total.unwrap_or(0)),
            pos: std::sync::atomic::AtomicU64::new(0),
            every: Duration::from_secs(5),
        }
    }

    pub fn set_position(&self, pos: u64) {
        self.pos.store(pos, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    pub fn inc(&self, n: u64) {
        let pos = self.pos.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    pub fn position(&self) -> u64 {
        self.pos.load(Ordering::Relaxed)
    }

    /// Update the trailing message (retries, 429s, in flight) and, without a
    /// terminal, print a plain line if enough time has passed.
    pub fn tick(&self, msg: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg());
            return;
        }
        if verbosity() < 0 {
            return;
        }
        let Ok(mut last) = self.last_line.lock() else {
            return;
        };
        if last.elapsed() < self.every {
            return;
        }
        *last = Instant::now();
        let pos = self.position();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = pos as f64 / secs;
        let total = self.total.load(Ordering::Relaxed);
        let of_total = if total > 0 {
            let eta = if rate > 0.0 {
                (total.saturating_sub(pos)) as f64 / rate
            } else {
                0.0
            };
            format!(
                "/{total} ({:.0}%, ETA {:.0}s)",
                pos as f64 * 100.0 / total as f64,
                eta
            )
        } else {
            String::new()
        };
        eprintln!(
            "{}: {pos}{of_total} {} at {rate:.1}/s, {:.0}s elapsed; {}",
            self.label,
            self.unit,
            secs,
            msg()
        );
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            bars().remove(bar);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
