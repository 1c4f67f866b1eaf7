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

/// A rate as a person reads it: `0.42/s`, `51.9/s`, `519/s`, `5.9k/s`,
/// `59k/s`, `1.2M/s`.
pub fn human_rate(per_sec: f64) -> String {
    let r = if per_sec.is_finite() {
        per_sec.max(0.0)
    } else {
        0.0
    };
    match r {
        r if r < 10.0 => format!("{r:.2}/s"),
        r if r < 100.0 => format!("{r:.1}/s"),
        r if r < 1_000.0 => format!("{r:.0}/s"),
        r if r < 10_000.0 => format!("{:.1}k/s", r / 1_000.0),
        r if r < 1_000_000.0 => format!("{:.0}k/s", r / 1_000.0),
        r => format!("{:.1}M/s", r / 1_000_000.0),
    }
}

/// `rate` of `unit` a second as a person reads it: `51.9 profiles/s`,
/// `59k profiles/s`.
pub fn rate_of(rate: f64, unit: &str) -> String {
    let r = human_rate(rate);
    format!("{} {unit}/s", r.trim_end_matches("/s"))
}

/// A duration as a person reads it: `42s`, `3m05s`, `2h14m`.
pub fn human_secs(secs: f64) -> String {
    let s = if secs.is_finite() {
        secs.max(0.0) as u64
    } else {
        0
    };
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3_600, (s % 3_600) / 60),
    }
}

/// Lines a person reads fit this many columns.
pub const COLUMNS: usize = 80;

/// `line` cut to [`COLUMNS`] characters (an ellipsis where it was cut).
pub fn fit(line: &str) -> String {
    if line.chars().count() <= COLUMNS {
        return line.to_string();
    }
    let mut out: String = line.chars().take(COLUMNS - 1).collect();
    out.push('…');
    out
}

/// Progress of a long stage. On a terminal an indicatif bar; otherwise a plain
/// line to stderr every few seconds, so logs of unattended runs show life.
/// Either way: done of the total once it is known, the percent, a rate and
/// the time left as a person reads them, within 80 columns.
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
            let bar = bars().add(ProgressBar::new(total.unwrap_or(0)));
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        } else {
            None
        };
        let p = Progress {
            bar,
            label,
            unit,
            started: Instant::now(),
            last_line: std::sync::Mutex::new(Instant::now()),
            total: std::sync::atomic::AtomicU64::new(total.unwrap_or(0)),
            pos: std::sync::atomic::AtomicU64::new(0),
            every: Duration::from_secs(5),
        };
        p.style();
        p
    }

    /// The bar's layout, with or without a total.
    fn style(&self) {
        let Some(bar) = &self.bar else {
            return;
        };
        let template = if self.total.load(Ordering::Relaxed) > 0 {
            "{prefix:>9} {wide_bar:.dim} {pos}/{len} {percent}% {rate} {left} {msg}"
        } else {
            "{prefix:>9} {spinner} {pos} {rate} {elapsed} {msg}"
        };
        let style = ProgressStyle::with_template(template).map(|s| {
            s.with_key(
                "rate",
                |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&human_rate(st.per_sec()));
                },
            )
            .with_key(
                "left",
                |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{} left", human_secs(st.eta().as_secs_f64()));
                },
            )
        });
        if let Ok(style) = style {
            bar.set_style(style);
        }
    }

    /// The total became known (or grew): a listing's size.
    pub fn set_total(&self, total: u64) {
        let before = self.total.swap(total, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            if before == 0 {
                self.style();
            }
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
        eprintln!("{}", self.line(&msg()));
    }

    /// The plain line: `extract: 1234/2000 profiles 62% 51.9/s 12s left;
    /// pass 1, 30 in flight`, cut to 80 columns.
    fn line(&self, msg: &str) -> String {
        let pos = self.position();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = pos as f64 / secs;
        let total = self.total.load(Ordering::Relaxed);
        let done = if total > 0 {
            let left = if rate > 0.0 {
                human_secs(total.saturating_sub(pos) as f64 / rate)
            } else {
                "?".into()
            };
            format!(
                "{pos}/{total} {} {:.0}% {} {left} left",
                self.unit,
                pos as f64 * 100.0 / total as f64,
                human_rate(rate)
            )
        } else {
            format!(
                "{pos} {} {} {} in",
                self.unit,
                human_rate(rate),
                human_secs(secs)
            )
        };
        let tail = if msg.is_empty() {
            String::new()
        } else {
            format!("; {msg}")
        };
        fit(&format!("{}: {done}{tail}", self.label))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_times_read_as_a_person_reads_them() {
        assert_eq!(human_rate(0.4213), "0.42/s");
        assert_eq!(human_rate(51.94), "51.9/s");
        assert_eq!(human_rate(519.4), "519/s");
        assert_eq!(human_rate(5_920.6), "5.9k/s");
        assert_eq!(human_rate(59_200.673_2), "59k/s");
        assert_eq!(human_rate(1_234_567.0), "1.2M/s");
        assert_eq!(human_rate(f64::NAN), "0.00/s");
        assert_eq!(human_secs(42.9), "42s");
        assert_eq!(human_secs(185.0), "3m05s");
        assert_eq!(human_secs(8_040.0), "2h14m");
    }

    #[test]
    fn a_progress_line_fits_80_columns() {
        let p = Progress::new("run: sent early", "customers", Some(1_000_000));
        p.set_position(123_456);
        let line = p.line("pass 2, 64 in flight (concurrency 64 of 128), 1234567 requests, 12 retries, 3 answered 429");
        assert!(line.chars().count() <= 80, "{line}");
        assert!(
            line.starts_with("run: sent early: 123456/1000000 customers 12% "),
            "{line}"
        );
        let p = Progress::new("extract", "profiles", None);
        p.set_position(5);
        assert!(p.line("").chars().count() <= 80);
    }
}
