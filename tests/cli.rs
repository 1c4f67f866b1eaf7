//! The command line: configuration precedence and aliases, usage errors,
//! and that no secret ever reaches output or files.

mod common;
use common::*;
use segsync::sandbox::SandboxOptions;
use std::io::Write;
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_credential_is_exit_2_naming_the_variable_and_where_to_get_it() {
    let dir = tempdir();
    let r = segsync(dir.path(), None, &["extract"]).await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("SEGMENT_ACCESS_TOKEN") && r.stderr.contains("API access"),
        "{}",
        r.stderr
    );
    let r = command(dir.path(), None, &["extract"])
        .env("SEGMENT_ACCESS_TOKEN", "t0k3n-value")
        .env("SEGMENT_SPACE_ID", "")
        .output()
        .await
        .unwrap();
    let r: Run = r.into();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("SEGMENT_SPACE_ID"), "{}", r.stderr);
    std::fs::create_dir_all(data(dir.path())).unwrap();
    std::fs::write(data(dir.path()).join("customers.csv"), "source_id\nx\n").unwrap();
    let r = segsync(dir.path(), None, &["load"]).await;
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("VOUCHERIFY_APPLICATION_ID") && r.stderr.contains("Application Keys"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_refused_for_hosts_that_are_not_loopback() {
    let dir = tempdir();
    let r: Run = command(dir.path(), None, &["extract"])
        .env("SEGMENT_ACCESS_TOKEN", "tok")
        .env("SEGMENT_SPACE_ID", "spa")
        .env("SEGMENT_API_URL", "http://profiles.segment.com")
        .output()
        .await
        .unwrap()
        .into();
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("loopback") && r.stderr.contains("https://"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotenv_with_the_seed_scripts_aliases_works_and_flags_and_env_override_it() {
    let sb = sandbox(opts(30)).await;
    let dir = tempdir();
    let env: std::collections::HashMap<_, _> = sb.env().into_iter().collect();
    // The seed script's .env: SPACE_ID, APPLICATION_ID, SECRET_KEY.
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "SEGMENT_ACCESS_TOKEN={}\nSPACE_ID={}\nAPPLICATION_ID={}\nSECRET_KEY={}\nSEGMENT_API_URL={}\nVOUCHERIFY_API_URL={}\n",
            env["SEGMENT_ACCESS_TOKEN"], env["SEGMENT_SPACE_ID"], env["VOUCHERIFY_APPLICATION_ID"], env["VOUCHERIFY_SECRET_KEY"], env["SEGMENT_API_URL"], env["VOUCHERIFY_API_URL"]
        ),
    )
    .unwrap();
    for stage in ["extract", "transform", "load"] {
        let r = segsync(dir.path(), None, &[stage]).await;
        assert_eq!(r.code, 0, "{stage} from .env: {}", r.all());
    }
    assert_eq!(
        sb.customers().len(),
        sb.dataset().expected_customers(&Default::default()).len()
    );
    // The environment beats .env ...
    let r: Run = command(dir.path(), None, &["extract", "--fresh"])
        .env("SEGMENT_SPACE_ID", "spa_from_env")
        .output()
        .await
        .unwrap()
        .into();
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("spa_from_env"), "{}", r.stderr);
    // ... and a flag beats both.
    let r: Run = command(
        dir.path(),
        None,
        &["extract", "--fresh", "--space-id", &env["SEGMENT_SPACE_ID"]],
    )
    .env("SEGMENT_SPACE_ID", "spa_from_env")
    .output()
    .await
    .unwrap()
    .into();
    assert_eq!(r.code, 0, "{}", r.all());
}

fn scan_files(dir: &Path, secrets: &[&str]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            scan_files(&p, secrets);
        } else if p.file_name().is_some_and(|n| n != ".env") {
            let bytes = std::fs::read(&p).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            for s in secrets {
                assert!(!text.contains(s), "secret found in {}", p.display());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_output_or_files_at_any_verbosity() {
    let sb = sandbox(SandboxOptions {
        fault_rate: 0.1,
        ..opts(80)
    })
    .await;
    let secrets = [sb.creds.segment_token.clone(), sb.creds.secret_key.clone()];
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let dir = tempdir();
    let mut outputs = Vec::new();
    for args in [
        vec!["-vv", "extract"],
        vec!["-vv", "transform"],
        vec!["-vv", "load"],
        vec!["-v", "status"],
        vec!["-vv", "load", "--dry-run"],
    ] {
        let r = segsync(dir.path(), Some(&sb), &args).await;
        assert_eq!(r.code, 0, "{args:?}: {}", r.all());
        outputs.push(r.all());
    }
    // Errors that echo endpoints: a refused connection and a rejected token.
    let r: Run = command(dir.path(), Some(&sb), &["-vv", "extract", "--fresh"])
        .env("SEGMENT_API_URL", "http://127.0.0.1:9")
        .output()
        .await
        .unwrap()
        .into();
    assert_eq!(r.code, 1);
    outputs.push(r.all());
    let r: Run = command(dir.path(), Some(&sb), &["-vv", "load", "--full"])
        .env("VOUCHERIFY_APPLICATION_ID", "wrong-app")
        .output()
        .await
        .unwrap()
        .into();
    assert_eq!(r.code, 2, "{}", r.all());
    outputs.push(r.all());
    let r = segsync(dir.path(), Some(&sb), &["extract", "--help"]).await;
    outputs.push(r.all());
    let joined = outputs.join("\n");
    assert!(joined.contains("GET /v1/spaces/"), "-vv shows requests");
    for s in &secrets {
        assert!(!joined.contains(s), "a secret was printed");
    }
    scan_files(dir.path(), &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_holding_personal_data_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let sb = sandbox(opts(20)).await;
    let dir = tempdir();
    for stage in ["extract", "transform", "load"] {
        assert_eq!(segsync(dir.path(), Some(&sb), &[stage]).await.code, 0);
    }
    for f in [
        "profiles.ndjson",
        "customers.csv",
        "rejected.csv",
        "transform.warnings.csv",
        "load.ledger.ndjson",
        "load-report.csv",
        "extract.checkpoint.json",
    ] {
        let mode = std::fs::metadata(data(dir.path()).join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_does_all_three_stages_and_status_reports_them() {
    let sb = sandbox(opts(120)).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        sb.customers().len(),
        sb.dataset().expected_customers(&Default::default()).len()
    );
    let st = segsync(dir.path(), None, &["status"]).await;
    assert_eq!(st.code, 0);
    assert!(
        st.stdout.contains("complete: 120 profiles"),
        "{}",
        st.stdout
    );
    assert!(st.stdout.contains("nothing pending"), "{}", st.stdout);
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot(
    dir: &Path,
) -> std::collections::BTreeMap<std::path::PathBuf, (Vec<u8>, std::time::SystemTime)> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let m = std::fs::metadata(&p).unwrap().modified().unwrap();
                out.insert(p.clone(), (std::fs::read(&p).unwrap(), m));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_leaves_the_data_directory_byte_for_byte_torn_ledger_tail_included() {
    let sb = sandbox(opts(60)).await;
    let dir = tempdir();
    assert_eq!(segsync(dir.path(), Some(&sb), &["run"]).await.code, 0);
    let d = data(dir.path());
    // A load killed mid-write (or still writing) leaves a torn last line, and
    // a --skip-invalid run a rejects file; an invalid row makes status validate.
    let mut ledger = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("load.ledger.ndjson"))
        .unwrap();
    ledger
        .write_all(b"{\"event\":\"submitted\",\"at\":\"x")
        .unwrap();
    drop(ledger);
    let mut customers = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("customers.csv"))
        .unwrap();
    customers.write_all(b",bad row\n").unwrap();
    drop(customers);
    let before = snapshot(dir.path());
    let st = segsync(dir.path(), None, &["status"]).await;
    assert_eq!(st.code, 0, "{}", st.all());
    assert!(
        st.stdout.contains("last line is incomplete"),
        "{}",
        st.stdout
    );
    assert_eq!(
        snapshot(dir.path()),
        before,
        "status changed the data directory"
    );
    assert!(!st.all().contains("segsync-status"), "{}", st.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_out_of_range_stage_flags_as_usage_errors() {
    let dir = tempdir();
    for args in [
        ["run", "--extract-concurrency", "0"],
        ["run", "--extract-concurrency", "513"],
        ["run", "--load-concurrency", "0"],
        ["run", "--load-concurrency", "65"],
        ["run", "--batch-size", "0"],
        ["extract", "--concurrency", "0"],
        ["load", "--concurrency", "0"],
        ["load", "--batch-size", "0"],
        ["load", "--batch-size", "101"],
        ["run", "--batch-size", "101"],
        ["load", "--poll-timeout", "0"],
    ] {
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            segsync(dir.path(), None, &args),
        )
        .await
        .unwrap_or_else(|_| panic!("{args:?} hangs"));
        assert_eq!(r.code, 2, "{args:?}: {}", r.all());
        assert!(r.stderr.contains(args[1]), "{args:?}: {}", r.stderr);
    }
}

/// `run` starts the plan's export as it starts, beside extract and
/// transform (issue 33). The first run sends its customers while extract
/// runs, so the plan brings that export up to date by a delta (two exports
/// made). A rerun sets back another writer's rename early (the plan's rule,
/// against the export made beside its extract), so its plan needs a delta
/// too; a rerun that sends nothing early compares with the export made
/// beside its extract as it is (one export made). A run that sent
/// something reads it back by one more export (issue 43). The export is
/// slow (2 s) and Segment paced, so the export and extract overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_the_plans_export_beside_extract_and_the_plan_uses_it() {
    let mut o = opts(150);
    o.segment_rps = 200;
    o.export_ms = Some(2000);
    let sb = sandbox(o).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        sb.customers().len(),
        sb.dataset().expected_customers(&Default::default()).len()
    );
    assert!(
        r.stderr.contains("customers sent during extract"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("compared with a delta export"),
        "{}",
        r.stderr
    );
    assert_eq!(
        requests(&sb, "voucherify.exports_created"),
        3,
        "{}",
        sb.stats()
    );
    let (sid, before) = (sb.customers().into_iter())
        .find_map(|(sid, c)| c["name"].is_string().then(|| (sid, c["name"].clone())))
        .expect("a customer with a name");
    sb.another_writer(&sid, &serde_json::json!({"name": "Renamed elsewhere"}))
        .unwrap();
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stderr.contains("run: 1 customers sent during extract"),
        "{}",
        r.stderr
    );
    assert_eq!(sb.customers()[&sid]["name"], before, "{}", r.all());
    assert_eq!(
        requests(&sb, "voucherify.exports_created"),
        6,
        "{}\n{}",
        sb.stats(),
        r.stderr
    );
    let r = segsync(dir.path(), Some(&sb), &["run"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(
        requests(&sb, "voucherify.exports_created"),
        7,
        "{}\n{}",
        sb.stats(),
        r.stderr
    );
    assert!(
        r.stderr.contains("made beside extract as the run started"),
        "{}",
        r.stderr
    );
}
