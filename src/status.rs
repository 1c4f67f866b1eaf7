//! `segsync status`: reads the data directory, the same files a person would,
//! and shows each stage at a glance and the command that comes next.

use crate::extract;
use crate::load;
use crate::transform;
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

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(a), m(b)), (Some(x), Some(y)) if x > y)
}

pub fn run(data_dir: &Path) -> Result<()> {
    let profiles = data_dir.join("profiles.ndjson");
    let partial = extract::partial_path(&profiles);
    let checkpoint = extract::checkpoint_path(&profiles);
    let customers = data_dir.join("customers.csv");
    let rejected = data_dir.join("rejected.csv");
    let mut next: Option<String> = None;
    println!("data directory: {}", data_dir.display());

    // extract
    let cp = extract::read_checkpoint(&checkpoint).ok().flatten();
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
        let rows = load::count_csv_rows(&customers).unwrap_or(0);
        let rej = load::count_csv_rows(&rejected).unwrap_or(0);
        let manifest = transform::read_manifest(&transform::manifest_path(&customers));
        let edited = transform::edited_since_transform(&customers)?.unwrap_or(false);
        println!(
            "{rows} customers in {}, {rej} rejected in {}, written {}",
            customers.display(),
            rejected.display(),
            crate::files::modified(&customers).unwrap_or_default()
        );
        if let Some(m) = &manifest {
            println!(
                "           from {} profiles, {} birthdates dropped (transform.warnings.csv)",
                m.profiles, m.warnings
            );
        }
        if edited {
            println!("           edited by hand since transform wrote it (transform will not overwrite it without --force)");
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
    let ledger = load::ledger_path(&customers);
    if customers.exists() {
        match load::plan(&customers) {
            Ok(plan) => {
                let state = load::read_ledger(&ledger, None)?;
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
                let failed = load::count_csv_rows(&load::report_path(&customers)).unwrap_or(0);
                if failed > 0 {
                    println!("           the last load reported {failed} customers Voucherify rejected: see {}", load::report_path(&customers).display());
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
