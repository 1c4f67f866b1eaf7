//! `segsync status`: reads the data directory, the same files a person would,
//! and shows each stage at a glance and the command that comes next.
//!
//! Strictly read-only: it opens files for reading and nothing else. A torn
//! last line in the ledger (a `load` killed mid-write, or one still writing)
//! is reported, never repaired: repair belongs to `load`, on its own start.

use crate::load;
use crate::state::{self, checkpoint, ledger, manifest};
use anyhow::Result;
use std::io::{BufRead, BufReader};
use std::path::Path;

fn count_lines(path: &Path) -> Option<u64> {
    let f = std::fs::File::open(path).ok()?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut n = 0u64;
    loop {
        let buf = r.fill_buf().ok()?;
        if buf.is_empty() {
            break;
        }
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = buf.len();
        r.consume(len);
    }
    Some(n)
}

/// Data rows of a CSV with a header.
fn count_csv_rows(path: &Path) -> Option<u64> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .ok()?;
    Some(rdr.byte_records().filter(|r| r.is_ok()).count() as u64)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(a), m(b)), (Some(x), Some(y)) if x > y)
}

pub fn run(data_dir: &Path, mapping: &crate::config::MappingArgs) -> Result<()> {
    let profiles = state::profiles(data_dir);
    let partial = state::partial(&profiles);
    let checkpoint = state::checkpoint(&profiles);
    let customers = state::customers(data_dir);
    let rejected = state::rejected(&customers);
    let mut next: Option<String> = None;
    println!("data directory: {}", data_dir.display());

    // extract
    let cp = checkpoint::read(&checkpoint).ok().flatten();
    print!("extract:   ");
    match (&cp, profiles.exists()) {
        (Some(cp), _) if !cp.complete && partial.exists() => {
            println!(
                "unfinished: {} profiles written to {} ({} done, last saved {}); rerun `segsync extract` to resume",
                count_lines(&partial).unwrap_or(0),
                partial.display(),
                plural(cp.pages_committed, "listing page", "listing pages"),
                cp.updated_at
            );
            if profiles.exists() {
                println!(
                    "           the previous complete {} ({} profiles) stays until it finishes",
                    profiles.display(),
                    count_lines(&profiles).unwrap_or(0)
                );
            }
            next.get_or_insert_with(|| "segsync extract   (resumes)".into());
        }
        (_, true) => {
            println!(
                "complete: {} profiles in {}, written {}{}",
                count_lines(&profiles).unwrap_or(0),
                profiles.display(),
                crate::files::modified(&profiles).unwrap_or_default(),
                cp.as_ref()
                    .map(|c| format!(
                        " ({} requests, {} reused, {} gone before they could be read)",
                        c.requests,
                        c.reused,
                        c.missing.len()
                    ))
                    .unwrap_or_default()
            );
        }
        _ => {
            println!("not run: no {}", profiles.display());
            next.get_or_insert_with(|| "segsync extract".into());
        }
    }

    // transform
    print!("transform: ");
    if customers.exists() {
        let rows = count_csv_rows(&customers).unwrap_or(0);
        let rej = count_csv_rows(&rejected).unwrap_or(0);
        let manifest = manifest::read(&customers);
        let edited = manifest::edited_since_transform(&customers)?.unwrap_or(false);
        println!(
            "{rows} customers in {}, {rej} rejected in {}, written {}",
            customers.display(),
            rejected.display(),
            crate::files::modified(&customers).unwrap_or_default()
        );
        if let Some(m) = &manifest {
            println!(
                "           from {} profiles, {} values dropped (transform.warnings.csv)",
                m.profiles, m.warnings
            );
        }
        if edited {
            println!("           edited by hand since transform wrote it (transform will not overwrite it without --force)");
        }
        match (&manifest, mapping.resolve()) {
            (Some(m), Ok(now)) if !m.mapping.is_empty() && m.mapping != now.fingerprint() => {
                println!(
                    "           written with another mapping than the current one ({}): rerun `segsync transform` (and `segsync extract --fresh` if it reads other traits)",
                    now.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "the default".into())
                );
                next.get_or_insert_with(|| "segsync transform   (the mapping changed)".into());
            }
            (_, Err(e)) => println!("           the mapping cannot be read: {e}"),
            _ => {}
        }
        if profiles.exists() && newer(&profiles, &customers) && !edited {
            println!("           profiles.ndjson is newer: rerun `segsync transform`");
            next.get_or_insert_with(|| "segsync transform".into());
        }
    } else {
        println!("not run: no {}", customers.display());
        if profiles.exists() {
            next.get_or_insert_with(|| "segsync transform".into());
        }
    }

    // load
    print!("load:      ");
    let ledger = state::ledger(&customers);
    if customers.exists() {
        match load::plan(&customers) {
            Ok(plan) => {
                let state = ledger::read(&ledger, None)?;
                println!(
                    "{} of {} rows confirmed by Voucherify with their current content, {} to send{}",
                    plan.confirmed,
                    plan.rows,
                    plan.to_send,
                    if plan.invalid > 0 { format!(", {} invalid", plan.invalid) } else { String::new() }
                );
                println!(
                    "           ledger {}: {} confirmed, {} recorded, {} submitted but not yet confirmed",
                    ledger.display(),
                    plural(state.batches, "batch", "batches"),
                    plural(state.failed_customers, "customer failure", "customer failures"),
                    plural(state.pending.len() as u64, "batch", "batches")
                );
                if state.torn_tail > 0 {
                    println!(
                        "           its last line is incomplete ({} bytes): a load was interrupted mid-write, or is writing now; the next `segsync load` discards it",
                        state.torn_tail
                    );
                }
                let report = state::report(&customers);
                let failed = count_csv_rows(&report).unwrap_or(0);
                if failed > 0 {
                    println!("           the last load reported {failed} customers Voucherify rejected: see {}", report.display());
                }
                if plan.to_send > 0 || plan.invalid > 0 || !state.pending.is_empty() {
                    next.get_or_insert_with(|| "segsync load".into());
                }
            }
            Err(e) => {
                println!(
                    "{} does not validate: {}",
                    customers.display(),
                    e.to_string().lines().next().unwrap_or("")
                );
                next.get_or_insert_with(|| {
                    format!(
                        "segsync load --dry-run   (shows every problem in {})",
                        customers.display()
                    )
                });
            }
        }
    } else {
        println!("nothing to load yet");
    }
    match next {
        Some(cmd) => println!("next:      {cmd}"),
        None => println!("next:      nothing pending: every stage is complete"),
    }
    Ok(())
}
