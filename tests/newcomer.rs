//! What a hurried or careless newcomer does: two commands on one data
//! directory, another Voucherify project, a closed pipe, a server hint of
//! 4 ms, a field mapped twice, damaged files, and resumed summaries.

mod common;
use common::*;
use segsync::sandbox::SandboxOptions;
use std::process::Stdio;
use std::time::Duration;

fn csv_of(n: usize) -> String {
    simple_customers("n", n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_loads_on_one_data_directory_send_each_customer_once() {
    let sb = sandbox(SandboxOptions {
        processing_ms: 300,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, csv_of(400)).unwrap();
    let args = ["load", "--in", csv.to_str().unwrap(), "--concurrency", "1"];
    let first = command(dir.path(), Some(&sb), &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first holds the lock once it has named itself in the lock file.
    let lock = dir.path().join(".segsync.lock");
    for _ in 0..200 {
        if std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("\"pid\"")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = segsync(dir.path(), Some(&sb), &args).await;
    assert_eq!(second.code, 2, "{}", second.all());
    assert!(
        second.stderr.contains("in use by `segsync load` (pid ")
            && second.stderr.contains(&first.id().unwrap().to_string()),
        "{}",
        second.stderr
    );
    let out = first.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stat(&sb, "customers_received"), 400, "each customer once");
    // Released at the end: the next command runs.
    let r = segsync(dir.path(), Some(&sb), &args).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(stat(&sb, "customers_received"), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_of_another_project_is_said_plainly_and_everything_is_sent_to_the_new_one() {
    let a = sandbox(opts(60)).await;
    let b = sandbox(opts(60)).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&a), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let held = a.customers().len();
    // The same data directory, pointed at project B.
    let r = segsync(dir.path(), Some(&b), &["status"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("describes another Voucherify project")
            && r.stdout.contains(&b.creds.app_id)
            && r.stdout.contains(&format!("0 of {held} rows confirmed")),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(&b.creds.secret_key));
    let r = segsync(dir.path(), Some(&b), &["load"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("describes another Voucherify project"),
        "{}",
        r.stderr
    );
    assert_eq!(b.customers().len(), held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_status_and_diff_quietly() {
    let sb = sandbox(opts(40)).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    for cmd in ["status", "diff"] {
        let mut child = command(dir.path(), Some(&sb), &[cmd])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the first line is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{cmd}: {err}");
        assert!(!err.contains("crashed"), "{cmd}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_a_few_milliseconds_still_completes_an_unthrottled_extract() {
    // 20 requests a second: the sandbox's Retry-After is a few ms at most.
    let sb = sandbox(SandboxOptions {
        segment_rps: 20,
        ..opts(120)
    })
    .await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["extract", "--rate-limit", "0"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(stat(&sb, "throttled.segment") > 0, "{}", sb.stats());
    assert_eq!(
        read_lines(&data(dir.path()).join("profiles.ndjson")).len(),
        120
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_mapped_twice_and_an_empty_metadata_key_are_exit_2_naming_the_line() {
    let dir = tempdir();
    for (toml, want) in [
        (
            "[fields]\n\"address.city\" = \"a\"\naddress.city = \"b\"\n",
            "line 3: [fields]: `address.city` is mapped twice",
        ),
        (
            "[metadata]\n\"\" = \"x\"\n",
            "line 2: [metadata]: a metadata key is empty",
        ),
    ] {
        std::fs::write(dir.path().join("segsync.toml"), toml).unwrap();
        let r = segsync(dir.path(), None, &["mapping"]).await;
        assert_eq!(r.code, 2, "{}", r.all());
        assert!(r.stderr.contains(want), "{}", r.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_no_rerun_can_fix_are_exit_2() {
    let dir = tempdir();
    // --data-dir names a regular file.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    for cmd in ["extract", "status", "load"] {
        let r = segsync(
            dir.path(),
            None,
            &["--data-dir", file.to_str().unwrap(), cmd],
        )
        .await;
        assert_eq!(r.code, 2, "{cmd}: {}", r.all());
        assert!(
            r.stderr.contains("is not a directory"),
            "{cmd}: {}",
            r.stderr
        );
    }
    // A truncated checkpoint.
    let sb = sandbox(opts(20)).await;
    let d = data(dir.path());
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("extract.checkpoint.json"), "{\"version\": 1, \"pas").unwrap();
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("not a segsync checkpoint"),
        "{}",
        r.stderr
    );
    std::fs::remove_file(d.join("extract.checkpoint.json")).unwrap();
    // A ledger line that is not JSON.
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let ledger = d.join("load.ledger.ndjson");
    let mut text = std::fs::read_to_string(&ledger).unwrap();
    text.insert_str(0, "garbage\n");
    std::fs::write(&ledger, text).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["load"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("load.ledger.ndjson:1: not a ledger line"),
        "{}",
        r.stderr
    );
    // status blames the ledger, not customers.csv.
    let r = segsync(dir.path(), Some(&sb), &["status"]).await;
    assert!(r.stdout.contains("not a ledger line"), "{}", r.stdout);
    assert!(!r.stdout.contains("does not validate"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misnamed_gzip_parts_and_an_empty_profile_id_are_exit_2_naming_file_and_row() {
    let dir = tempdir();
    let unload = dir.path().join("unload");
    for t in ["user_traits", "user_identifiers"] {
        std::fs::create_dir_all(unload.join(t)).unwrap();
    }
    let ids = "canonical_segment_id,type,value,seq\nuse_1,user_id,u1,1\n";
    std::fs::write(unload.join("user_identifiers/part-0.csv"), ids).unwrap();
    let traits = "canonical_segment_id,name,value,seq\nuse_1,email,\"\"\"a@b.co\"\"\",1\n,email,\"\"\"z@b.co\"\"\",2\n";
    std::fs::write(unload.join("user_traits/part-0.csv"), traits).unwrap();
    let extract = [
        "extract",
        "--from",
        "profiles-sync",
        unload.to_str().unwrap(),
    ];
    let r = segsync(dir.path(), None, &extract).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("part-0.csv: row 2: canonical_segment_id is empty"),
        "{}",
        r.stderr
    );
    // Plain text named .csv.gz, then gzip named .csv.
    let good = "canonical_segment_id,name,value,seq\nuse_1,email,\"\"\"a@b.co\"\"\",1\n";
    std::fs::remove_file(unload.join("user_traits/part-0.csv")).unwrap();
    std::fs::write(unload.join("user_traits/part-0.csv.gz"), good).unwrap();
    let r = segsync(dir.path(), None, &extract).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("part-0.csv.gz: named as gzip-compressed but its bytes are plain text"),
        "{}",
        r.stderr
    );
    std::fs::remove_file(unload.join("user_traits/part-0.csv.gz")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, good.as_bytes()).unwrap();
    std::fs::write(unload.join("user_traits/part-0.csv"), gz.finish().unwrap()).unwrap();
    let r = segsync(dir.path(), None, &extract).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr
            .contains("part-0.csv: named as plain text but its bytes are gzip-compressed"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_load_says_figures_that_add_up() {
    let sb = sandbox(SandboxOptions {
        cycle_quota: Some(5),
        processing_ms: 300,
        ..opts(0)
    })
    .await;
    let dir = tempdir();
    let csv = dir.path().join("c.csv");
    std::fs::write(&csv, csv_of(914)).unwrap();
    let args = ["load", "--in", csv.to_str().unwrap()];
    let r = segsync(dir.path(), Some(&sb), &args).await;
    assert_eq!(r.code, 1, "{}", r.all());
    sb.heal();
    let r = segsync(dir.path(), Some(&sb), &args).await;
    assert_eq!(r.code, 0, "{}", r.all());
    // "914 rows: U unchanged since confirmed (skipped), R confirmed by
    // checking ..., S sent in B batches, C confirmed, 0 failed"
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("load: 914 rows: "))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (unchanged, recovered, sent, confirmed) = if line.contains("by checking") {
        (numbers[1], numbers[2], numbers[4], numbers[6])
    } else {
        (numbers[1], 0, numbers[2], numbers[4])
    };
    assert_eq!(unchanged + recovered + sent, 914, "{line}");
    assert_eq!(confirmed, sent, "{line}");
    assert_eq!(sb.customers().len(), 914);
    assert_eq!(sb.repeated_applications(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_name_the_real_problem() {
    let dir = tempdir();
    // An unterminated quote.
    let csv = dir.path().join("q.csv");
    std::fs::write(&csv, "source_id,name,email\na,\"Ann,a@b.co\nb,Bo,b@b.co\n").unwrap();
    let r = segsync(
        dir.path(),
        None,
        &["load", "--in", csv.to_str().unwrap(), "--dry-run"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("q.csv:2: a quoted cell is never closed"),
        "{}",
        r.stderr
    );
    // Invalid UTF-8 in source_id is that, not also "empty".
    std::fs::write(&csv, b"source_id,name\n\xff\xfe,Ann\n").unwrap();
    let r = segsync(
        dir.path(),
        None,
        &["load", "--in", csv.to_str().unwrap(), "--dry-run"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("source_id: not"), "{}", r.stderr);
    assert!(!r.stderr.contains("empty"), "{}", r.stderr);
    // A damaged manifest and a torn profiles.ndjson, as status tells them.
    let sb = sandbox(opts(30)).await;
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let d = data(dir.path());
    std::fs::write(d.join("transform.manifest.json"), "{garbage").unwrap();
    let profiles = d.join("profiles.ndjson");
    let mut text = std::fs::read(&profiles).unwrap();
    text.truncate(text.len() - 10);
    std::fs::write(&profiles, text).unwrap();
    let r = segsync(dir.path(), Some(&sb), &["status"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout.contains("transform.manifest.json is damaged"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("edited by hand since"), "{}", r.stdout);
    assert!(
        r.stdout.contains("damaged:") && r.stdout.contains("incomplete last line"),
        "{}",
        r.stdout
    );
    // The usage line names each value once.
    let r = segsync(dir.path(), None, &["extract", "--from", "profiles-sync"]).await;
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("<UNLOAD_DIR>") && r.stderr.matches("<DIR>").count() <= 1,
        "{}",
        r.stderr
    );
}
