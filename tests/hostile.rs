//! Hostile answers (issue 48): what a misbehaving server, or a proxy in
//! front of one, may answer, played by the sandbox's hostile front one case
//! at a time (`SandboxOptions::hostile`), each against the real binary. No
//! case may end in exit 0 with profiles missing, carry a byte of a secret
//! to another host, read an answer past its bound, loop forever, or leak a
//! secret in any form; state files are never written through a link.

mod common;
use common::unload::children_peak_mb;
use common::*;
use segsync::sandbox::hostile::Hostile;
use segsync::sandbox::{Sandbox, SandboxOptions};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

async fn hostile(case: Hostile, profiles: u64) -> Sandbox {
    sandbox(SandboxOptions {
        hostile: Some(case),
        ..opts(profiles)
    })
    .await
}

/// The last line of `runs.ndjson`: the run's record.
fn last_run(dir: &Path) -> Value {
    let runs = std::fs::read_to_string(data(dir).join("runs.ndjson")).unwrap_or_default();
    serde_json::from_str(runs.lines().last().unwrap_or("null")).unwrap_or(Value::Null)
}

/// A `Retry-After` no wait can honour (`inf`, `1e20`, a date a year ahead)
/// on a listing page stops the command (exit 1) naming the header: never a
/// sleep, a panic, or an exit 0 with half the profiles. An unreadable one
/// (negative, NaN) is ignored: the client's own backoff, and the run ends
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_retry_after_ends_whole_or_stops_saying_so() {
    for (case, value) in [
        (Hostile::RetryAfterInf, "retry-after: inf"),
        (Hostile::RetryAfterHuge, "retry-after: 1e20"),
        (Hostile::RetryAfterDate, "retry-after: "),
    ] {
        let sb = hostile(case, 250).await;
        let dir = tempdir();
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            segsync(dir.path(), Some(&sb), &["run", "--json"]),
        )
        .await
        .expect("no sleep");
        assert_eq!(r.code, 1, "{case:?}: {}", r.all());
        assert!(
            r.stderr.contains(value) && r.stderr.contains("longer than the longest wait"),
            "{case:?}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        let doc: Value = serde_json::from_str(&r.stdout).expect("one JSON document");
        assert_eq!(doc["ok"], false);
        assert_eq!(last_run(dir.path())["exit"], 1, "runs.ndjson has the run");
        assert!(!data(dir.path()).join("profiles.ndjson").exists());
        assert_eq!(stat(&sb, "customers_received"), 0);
    }
    for case in [Hostile::RetryAfterNegative, Hostile::RetryAfterNan] {
        let sb = hostile(case, 250).await;
        let dir = tempdir();
        let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
        assert_eq!(r.code, 0, "{case:?}: {}", r.all());
        assert_eq!(
            read_lines(&data(dir.path()).join("profiles.ndjson")).len(),
            250
        );
    }
}

/// An error body that echoes the request's `Authorization` header (the
/// token in Base64): no form of the token reaches stdout, stderr or
/// `runs.ndjson`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_echoed_in_base64_is_redacted_everywhere() {
    use base64::Engine;
    let sb = hostile(Hostile::EchoAuth, 20).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["extract", "--json"]).await;
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("Authorization: Basic ***"),
        "{}",
        r.stderr
    );
    let token = sb.creds.segment_token.clone();
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{token}:"));
    let runs = std::fs::read_to_string(data(dir.path()).join("runs.ndjson")).unwrap();
    for (what, text) in [
        ("stdout", &r.stdout),
        ("stderr", &r.stderr),
        ("runs.ndjson", &runs),
    ] {
        assert!(!text.contains(&token), "{what} holds the token");
        assert!(!text.contains(&b64), "{what} holds the token in Base64");
        assert!(!text.contains(b64.trim_end_matches('=')), "{what}");
    }
}

/// A redirect of an API call is never followed: the key, and a bulk
/// request's customers, would go wherever it points. Exit 2 naming where
/// it pointed; the other host received nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_of_an_api_call_is_refused_and_nothing_goes_elsewhere() {
    let sb = hostile(Hostile::RedirectListing, 20).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("redirects to http://127.0.0.2:"),
        "{}",
        r.stderr
    );
    assert!(sb.evil_seen().is_empty(), "{:?}", sb.evil_seen());

    let sb = hostile(Hostile::RedirectBulk, 20).await;
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, simple_customers("r", 5)).unwrap();
    let args = ["load", "--in", csv.to_str().unwrap(), "--from-ledger"];
    let r = segsync(dir.path(), Some(&sb), &args).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("HTTP 307 redirects to"), "{}", r.stderr);
    assert!(sb.evil_seen().is_empty(), "{:?}", sb.evil_seen());
}

/// The export's file may be redirected (a storage host), but its keys go
/// no further than its first origin: the other host gets no application
/// id, no secret key, in no header and no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_download_redirected_elsewhere_carries_no_key() {
    let sb = hostile(Hostile::RedirectDownload, 20).await;
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, simple_customers("d", 5)).unwrap();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["plan", "--in", csv.to_str().unwrap()],
    )
    .await;
    let seen = sb.evil_seen();
    assert_eq!(
        seen.len(),
        1,
        "the download followed its redirect once: {seen:?}\n{}",
        r.all()
    );
    let text = seen[0].to_string().to_lowercase();
    assert!(
        !text.contains("x-app-token") && !text.contains("x-app-id"),
        "{text}"
    );
    assert!(
        !text.contains(&sb.creds.secret_key.to_lowercase()),
        "{text}"
    );
    assert!(!text.contains(&sb.creds.app_id.to_lowercase()), "{text}");
}

/// An answer's size never decides memory: a listing page that inflates to
/// 1 GB stops extract (exit 1) with the child's peak under 512 MB; a body
/// of 100 MB stops at the bound; a page of 150 profiles for the 100 asked
/// is a contract error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_read_within_bounds() {
    let sb = hostile(Hostile::GzipBomb, 20).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("larger than"), "{}", r.stderr);
    let peak = children_peak_mb();
    assert!(peak < 512, "a child peaked at {peak} MB");

    let sb = hostile(Hostile::HugeBody, 20).await;
    let r = segsync(tempdir().path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("larger than 67108864 bytes"),
        "{}",
        r.stderr
    );

    let sb = hostile(Hostile::LongPage, 300).await;
    let r = segsync(tempdir().path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("a page of 150 profiles, where at most 100 were asked for"),
        "{}",
        r.stderr
    );
}

/// A listing that gives its first two pages in turn under new cursor
/// strings would never end: stopped as a contract error within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_cycles_under_new_cursors_ends_in_a_clear_error() {
    let sb = hostile(Hostile::AlternatingPages, 300).await;
    let dir = tempdir();
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        segsync(dir.path(), Some(&sb), &["extract"]),
    )
    .await
    .expect("the listing ends within two minutes");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("this pass listed already, under new cursors"),
        "{}",
        r.stderr
    );
    assert!(
        requests(&sb, "segment.list_profiles") < 40,
        "{}",
        sb.stats()
    );
}

/// State files are never written through a symbolic link: a lock file or
/// `runs.ndjson` that is a link is refused by name and its target left as
/// it was; a `customers.csv` that points at another file is read, refused
/// as no customers CSV, and never quoted; a FIFO is refused by name; the
/// data directory segsync creates is its owner's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_never_followed_through_links() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let sb = sandbox(opts(10)).await;
    let dir = tempdir();
    let d = data(dir.path());
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory is {mode:o}");

    let target = dir.path().join("precious.txt");
    std::fs::write(&target, "keep me\n").unwrap();
    let lock = d.join(".segsync.lock");
    std::fs::remove_file(&lock).unwrap();
    symlink(&target, &lock).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["transform"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains(".segsync.lock is a symbolic link"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    std::fs::remove_file(&lock).unwrap();

    let runs = d.join("runs.ndjson");
    std::fs::remove_file(&runs).unwrap();
    symlink(&target, &runs).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["transform"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("runs.ndjson is a symbolic link"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");

    let secret = dir.path().join("not-a-csv.txt");
    std::fs::write(&secret, "root:x:0:0:secret first line\n").unwrap();
    let csv = d.join("customers.csv");
    std::fs::remove_file(&csv).unwrap();
    symlink(&secret, &csv).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["load", "--dry-run"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(!r.all().contains("root:x"), "{}", r.all());
    assert!(r.stderr.contains("does not look like one"), "{}", r.stderr);

    let fifo = dir.path().join("pipe.csv");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        segsync(
            dir.path(),
            Some(&sb),
            &["load", "--dry-run", "--in", fifo.to_str().unwrap()],
        ),
    )
    .await
    .expect("a FIFO is not waited on");
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("is not a regular file"), "{}", r.stderr);
}
