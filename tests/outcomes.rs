//! Every outcome reported as documented: one `--json` document whatever
//! ends a command (success, failure, a usage error, a signal), validated by
//! an independent JSON Schema implementation against docs/report.schema.json;
//! exit statuses by cause; file modes.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_version_plan_and_status_on_a_file_each_print_one_valid_document() {
    let schema = report_schema();
    let sb = sandbox(opts(30)).await;
    let dir = tempdir();
    for (args, code, command) in [
        (&["--json", "load", "--batch-size", "101"][..], 2, "load"),
        (&["--json", "extract", "--no-such-flag"], 2, "extract"),
        (&["--json"], 2, "segsync"),
        (&["--json", "frobnicate"], 2, "segsync"),
        (&["--json", "--version"], 0, "version"),
    ] {
        let r = segsync(dir.path(), None, args).await;
        assert_eq!(r.code, code, "{args:?}: {}", r.all());
        let doc = one_document(&r, &schema);
        assert_eq!(doc["command"], command, "{args:?}");
        if code == 2 {
            assert!(!doc["error"].as_str().unwrap().is_empty());
            assert!(!r.stderr.is_empty(), "the human message goes to stderr");
        }
    }
    let r = segsync(dir.path(), None, &["--json", "--version"]).await;
    assert!(one_document(&r, &schema)["version"]
        .as_str()
        .unwrap()
        .contains('('));

    // plan, on success: counts, fields, files relative to the data directory.
    let r = segsync(dir.path(), Some(&sb), &["--json", "run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    sb.touch(5);
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let r = segsync(dir.path(), Some(&sb), &["transform", "--force"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let r = segsync(dir.path(), Some(&sb), &["--json", "plan"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let doc = one_document(&r, &schema);
    assert_eq!(doc["files"]["plan"], "load.plan.csv", "{doc}");
    assert!(doc["counts"]["update"].as_u64().unwrap() > 0, "{doc}");
    // The text and the document count the same calls.
    let calls = doc["counts"]["calls"].as_u64().unwrap();
    assert!(
        r.stderr.contains(&format!("{calls} Voucherify calls")),
        "{calls}: {}",
        r.stderr
    );
    // plan, failing: an --export-file that is a directory, then one without
    // a source id column: exit 2, naming the file.
    let d = dir.path().join("a-directory");
    std::fs::create_dir(&d).unwrap();
    let nosid = dir.path().join("no-sid.csv");
    std::fs::write(&nosid, "name,email\nAnn,a@x.io\n").unwrap();
    for f in [&d, &nosid] {
        let r = segsync(
            dir.path(),
            Some(&sb),
            &["--json", "plan", "--export-file", f.to_str().unwrap()],
        )
        .await;
        assert_eq!(r.code, 2, "{}", r.all());
        let doc = one_document(&r, &schema);
        assert!(
            doc["error"].as_str().unwrap().contains(f.to_str().unwrap()),
            "{doc}"
        );
    }
    // status on a path that is a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let r = segsync(
        dir.path(),
        None,
        &["--json", "--data-dir", file.to_str().unwrap(), "status"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    one_document(&r, &schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_ends_with_one_document_and_a_line_in_runs_ndjson_and_files_are_owner_only() {
    let schema = report_schema();
    // Slow answers, so the run is still going when the signal comes.
    let sb = sandbox(segsync::sandbox::SandboxOptions {
        latency_ms: 150,
        ..opts(300)
    })
    .await;
    let dir = tempdir();
    let child = command(dir.path(), Some(&sb), &["--json", "run"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let pid = child.id().unwrap() as i32;
    // SAFETY: kill(2) on a child we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("ends after SIGTERM")
        .unwrap();
    let r: Run = out.into();
    assert_eq!(r.code, 143, "{}", r.all());
    let doc = one_document(&r, &schema);
    assert_eq!(doc["ok"], false);
    assert!(doc["error"].as_str().unwrap().contains("SIGTERM"), "{doc}");
    let runs = read_lines(&data(dir.path()).join("runs.ndjson"));
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["exit"], 143);
    // Rerun: it resumes and ends exact.
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_end_state(&sb, &sb.versions());
    // Every file segsync wrote in the data directory is its owner's alone.
    for e in std::fs::read_dir(data(dir.path())).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_for_any_request_is_an_input_error_and_can_be_set_aside() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let big = "x".repeat(10 * 1024 * 1024);
    let content =
        format!("source_id,name,description\nok-1,Ann,short\nbig-1,Bob,{big}\nok-2,Cy,short\n");
    let (csv, r) = load_csv(dir.path(), &sb, &content, &[]).await;
    assert_eq!(r.code, 2, "{}", &r.all()[..2000.min(r.all().len())]);
    assert!(r.stderr.contains("customers-by-hand.csv:3"), "{}", r.stderr);
    assert!(!r.stderr.contains("again: it resumes"), "{}", r.stderr);
    assert_eq!(stat(&sb, "customers_received"), 0);
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["load", "--in", csv.to_str().unwrap(), "--skip-invalid"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let held = sb.customers();
    assert!(held.contains_key("ok-1") && held.contains_key("ok-2") && !held.contains_key("big-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_permission_error_is_never_retried_as_the_network() {
    let sb = sandbox(opts(0)).await;
    sb.seed_customers([serde_json::json!({"source_id": "a", "name": "A"})]);
    let dir = tempdir();
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, "source_id,name\na,Ann\n").unwrap();
    // load.export.csv cannot be written: a directory stands in its place
    // (a file mode would not stop root, who runs CI). `plan` keeps the
    // export in the data directory (a dry run keeps it in a scratch one).
    std::fs::create_dir(dir.path().join("load.export.csv")).unwrap();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["plan", "--in", csv.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("load.export.csv"), "{}", r.stderr);
    assert!(!r.stderr.contains("gave up after"), "{}", r.stderr);
    let downloads = requests(&sb, "voucherify.export_download");
    assert_eq!(downloads, 1, "one download, not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_ledger_line_stops_plan_as_it_stops_load() {
    let sb = sandbox(opts(0)).await;
    let dir = tempdir();
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, "source_id,name\na,Ann\n").unwrap();
    let path = csv.to_str().unwrap();
    assert_eq!(
        segsync(dir.path(), Some(&sb), &["load", "--in", path])
            .await
            .code,
        0
    );
    let ledger = dir.path().join("load.ledger.ndjson");
    let sound = std::fs::read_to_string(&ledger).unwrap();
    let first: serde_json::Value = serde_json::from_str(sound.lines().next().unwrap()).unwrap();
    let head = format!(
        r#""at":"2026-01-01T00:00:00Z","target":{}"#,
        first["target"]
    );
    let who = r#"{"source_id":"a","hash":"00"}"#;
    // Torn JSON; JSON that is no event; events without what they require
    // (a plan reads the ledger through a lighter view than load: both refuse).
    let damages = [
        r#"{"event": "confirmed", garbage"#.to_string(),
        format!(r#"{{"event":"retried",{head}}}"#),
        format!(
            r#"{{"event":"confirmed",{head},"async_action_id":"a","status":"DONE","done":[{who}],"failed":[]}}"#
        ),
        format!(r#"{{"event":"confirmed",{head},"async_action_id":"a","done":[],"failed":[]}}"#),
        format!(r#"{{"event":"submitted",{head},"async_action_id":"a"}}"#),
    ];
    for damage in &damages {
        std::fs::write(&ledger, format!("{damage}\n{sound}")).unwrap();
        for cmd in ["plan", "load"] {
            let r = segsync(dir.path(), Some(&sb), &[cmd, "--in", path]).await;
            assert_eq!(r.code, 2, "{cmd} on {damage}: {}", r.all());
            assert!(
                r.stderr.contains("load.ledger.ndjson:1"),
                "{cmd} on {damage}: {}",
                r.stderr
            );
        }
    }
}
