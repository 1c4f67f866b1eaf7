//! extract against the sandbox over loopback: completeness, faults, rate
//! limits, kill -9 and resume, incremental reruns, vanished profiles.

mod common;
use common::*;
use segsync::sandbox::data::Dataset;
use segsync::sandbox::SandboxOptions;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// Check profiles.ndjson holds exactly the sandbox's profiles, each once, with
/// every trait and every external id.
fn assert_exact(file: &Path, ds: &Dataset, versions: &HashMap<u64, u32>, skip: &[u64]) {
    let lines = read_lines(file);
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for l in lines.iter() {
        let id = l["segment_id"].as_str().unwrap().to_string();
        assert!(
            by_id.insert(id.clone(), l.clone()).is_none(),
            "{id} written twice"
        );
    }
    assert_eq!(by_id.len() as u64, ds.n - skip.len() as u64);
    for i in (0..ds.n).filter(|i| !skip.contains(i)) {
        let p = ds.profile(i, versions.get(&i).copied().unwrap_or(0));
        let got = by_id
            .get(&p.segment_id)
            .unwrap_or_else(|| panic!("profile {i} missing"));
        assert_eq!(got["metadata"], p.metadata, "profile {i} metadata");
        let (traits, ids) = expected_extract(&p, &["user_id"]);
        assert_eq!(
            got["traits"].as_object().unwrap(),
            &traits,
            "profile {i} traits"
        );
        assert_eq!(
            got["external_ids"].as_array().unwrap(),
            &ids,
            "profile {i} external ids"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_once_with_the_traits_the_mapping_reads_and_its_source_id_ids() {
    let sb = sandbox(opts(450)).await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_exact(
        &data(dir.path()).join("profiles.ndjson"),
        sb.dataset(),
        &HashMap::new(),
        &[],
    );
    assert!(!data(dir.path()).join("profiles.ndjson.partial").exists());
    let cp: Value = serde_json::from_slice(
        &std::fs::read(data(dir.path()).join("extract.checkpoint.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cp["complete"], true);
    // Listing 5 pages, then one re-list pass of 5 that finds nothing new;
    // one ids page per profile, one traits page per identified profile.
    // A read the sandbox saw before (the same path and query) is a hedge:
    // a slow last answer asked again, which this world's lack of faults
    // leaves as the only cause; it never counts as a first read.
    assert_eq!(requests(&sb, "segment.list_profiles"), 10);
    let again = reads_again(&sb, "segment.traits") + reads_again(&sb, "segment.external_ids");
    assert_eq!(
        requests(&sb, "segment.traits") + requests(&sb, "segment.external_ids") - again,
        minimal_detail_requests(sb.dataset())
    );
    assert!(
        again <= hedged(&r.stderr),
        "{again} read again: {}",
        r.stderr
    );
    assert!(r.stderr.contains("450 profiles"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_a_tight_rate_limit_do_not_change_the_file() {
    let sb = sandbox(SandboxOptions {
        fault_rate: 0.08,
        segment_rps: 40,
        ..opts(160)
    })
    .await;
    let dir = tempdir();
    // Client allowed far more than the server: 429s are provoked and must be retried.
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["extract", "--rate-limit", "0", "--concurrency", "8"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert_exact(
        &data(dir.path()).join("profiles.ndjson"),
        sb.dataset(),
        &HashMap::new(),
        &[],
    );
    assert!(
        stat(&sb, "faults.server_errors") > 0 && stat(&sb, "faults.dropped_connections") > 0,
        "{}",
        sb.stats()
    );
    assert!(stat(&sb, "throttled.segment") > 0, "{}", sb.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_run_at_the_rate_limit_has_at_most_1_percent_of_requests_answered_429() {
    let sb = sandbox(SandboxOptions {
        segment_rps: 100,
        ..opts(120)
    })
    .await;
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    let total: u64 = [
        "segment.list_profiles",
        "segment.traits",
        "segment.external_ids",
    ]
    .iter()
    .map(|e| requests(&sb, e))
    .sum();
    let throttled = stat(&sb, "throttled.segment");
    assert!(
        throttled * 100 <= total,
        "{throttled} of {total} requests answered 429"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_rerun_resumes_with_only_in_flight_work_repeated() {
    let sb = sandbox(SandboxOptions {
        latency_ms: 15,
        ..opts(700)
    })
    .await;
    let ds = sb.dataset();
    let dir = tempdir();
    let partial = data(dir.path()).join("profiles.ndjson.partial");
    let mut child = command(
        dir.path(),
        Some(&sb),
        &["extract", "--concurrency", "4", "--rate-limit", "0"],
    )
    .spawn()
    .unwrap();
    let mut waited = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
        let n = std::fs::read(&partial)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0);
        if n >= 250 || waited > 1500 {
            break;
        }
    }
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed before it finished");
    let before_list = requests(&sb, "segment.list_profiles");
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["extract", "--concurrency", "4", "--rate-limit", "0"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("resuming"), "{}", r.stderr);
    assert_exact(
        &data(dir.path()).join("profiles.ndjson"),
        ds,
        &HashMap::new(),
        &[],
    );

    let minimal = minimal_detail_requests(ds);
    let detail = requests(&sb, "segment.traits") + requests(&sb, "segment.external_ids");
    // At most the 4 profiles in flight (each at most 2+2 pages) are fetched twice.
    assert!(
        detail <= minimal + 16,
        "detail requests {detail}, minimal {minimal}"
    );
    // Listing: 7 pages, and 7 more for the re-list pass that finds nothing
    // new, plus the pages not yet committed at the kill (being fetched, or
    // queued ahead of the fetches: at most QUEUE_AHEAD profiles, here the
    // whole 7-page pass) listed again. List calls only: no profile twice.
    let relisted = requests(&sb, "segment.list_profiles") - 14;
    let queued_pages = (segsync::extract::scheduler::QUEUE_AHEAD / 100).min(7);
    assert!(
        relisted as usize <= queued_pages + segsync::extract::LISTING_LOOKAHEAD + 3,
        "{relisted} listing pages repeated (resume listed {} pages)",
        requests(&sb, "segment.list_profiles") - before_list
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_line_is_discarded_on_resume() {
    let sb = sandbox(opts(230)).await;
    let dir = tempdir();
    let d = data(dir.path());
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 0);
    // Fake an interrupted run: checkpoint at the start, a partial file with two
    // whole profiles and a torn third.
    let full = std::fs::read_to_string(d.join("profiles.ndjson")).unwrap();
    let mut lines = full.lines();
    let torn = format!(
        "{}\n{}\n{}",
        lines.next().unwrap(),
        lines.next().unwrap(),
        &lines.next().unwrap()[..40]
    );
    std::fs::write(d.join("profiles.ndjson.partial"), torn).unwrap();
    let mut cp: Value =
        serde_json::from_slice(&std::fs::read(d.join("extract.checkpoint.json")).unwrap()).unwrap();
    for (k, v) in [
        ("complete", Value::Bool(false)),
        ("cursor", Value::Null),
        ("offset", 0.into()),
        ("lines", 0.into()),
        ("pages_committed", 0.into()),
    ] {
        cp[k] = v;
    }
    std::fs::write(
        d.join("extract.checkpoint.json"),
        serde_json::to_vec(&cp).unwrap(),
    )
    .unwrap();
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("torn last line"), "{}", r.stderr);
    assert_exact(
        &d.join("profiles.ndjson"),
        sb.dataset(),
        &HashMap::new(),
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_rerun_fetches_only_changed_profiles() {
    let sb = sandbox(opts(300)).await;
    let dir = tempdir();
    assert_eq!(segsync(dir.path(), Some(&sb), &["extract"]).await.code, 0);
    let traits_before = requests(&sb, "segment.traits");
    let touched = sb.touch(6);
    assert_eq!(touched.len(), 6);
    let r = segsync(dir.path(), Some(&sb), &["extract", "--incremental"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("6 fetched, 294 reused"), "{}", r.stderr);
    assert_exact(
        &data(dir.path()).join("profiles.ndjson"),
        sb.dataset(),
        &sb.versions(),
        &[],
    );
    let refetched = requests(&sb, "segment.traits") - traits_before;
    assert!(
        (6..=12).contains(&refetched),
        "{refetched} traits requests for 6 changed profiles"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_gone_between_listing_and_fetching_is_recorded_not_fatal() {
    let sb = sandbox(opts(120)).await;
    sb.vanish(17);
    let dir = tempdir();
    let r = segsync(dir.path(), Some(&sb), &["extract"]).await;
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("1 could not be read"), "{}", r.stderr);
    assert_exact(
        &data(dir.path()).join("profiles.ndjson"),
        sb.dataset(),
        &HashMap::new(),
        &[17],
    );
    let cp: Value = serde_json::from_slice(
        &std::fs::read(data(dir.path()).join("extract.checkpoint.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cp["missing"][0], sb.dataset().segment_id(17));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_or_space_stops_at_once_with_what_to_check() {
    let sb = sandbox(opts(10)).await;
    let dir = tempdir();
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["extract", "--segment-token", "wrong-token"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("401") && r.stderr.contains("SEGMENT_ACCESS_TOKEN"),
        "{}",
        r.stderr
    );
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["extract", "--space-id", "spa_other"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stderr.contains("404") && r.stderr.contains("space not found"),
        "{}",
        r.stderr
    );
    assert_eq!(requests(&sb, "segment.traits"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_exit_1_keep_the_checkpoint_and_the_rerun_resumes() {
    let sb = sandbox(opts(50)).await;
    let dir = tempdir();
    // Nothing listens on the port: every attempt fails, whatever the luck
    // (a fault rate of 1.0 lets the sandbox's slow-but-fine answers through).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed}");
    let r = segsync(
        dir.path(),
        Some(&sb),
        &["extract", "--segment-api-url", &url],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains("gave up after")
            && r.stderr.contains("rerun `segsync extract` to resume"),
        "{}",
        r.stderr
    );
    assert!(data(dir.path()).join("extract.checkpoint.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_write_profiles_writes_what_extract_all_traits_would() {
    let sb = sandbox(SandboxOptions {
        seed: 3,
        ..opts(150)
    })
    .await;
    let dir = tempdir();
    assert_eq!(
        segsync(dir.path(), Some(&sb), &["extract", "--all-traits"])
            .await
            .code,
        0
    );
    let written = dir.path().join("written.ndjson");
    let r = segsync(
        dir.path(),
        None,
        &[
            "sandbox",
            "--seed",
            "3",
            "--profiles",
            "150",
            "--write-profiles",
            written.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.all());
    let sorted = |p: &Path| {
        let mut l: Vec<String> = std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        l.sort();
        l
    };
    assert_eq!(
        sorted(&written),
        sorted(&data(dir.path()).join("profiles.ndjson"))
    );
}
