//! The sandbox over real loopback HTTP: paging, auth, limits, rate limiting,
//! async-action lifecycle, upsert merge, 413.

mod common;
use common::*;
use segsync::sandbox::SandboxOptions;
use serde_json::{json, Value};
use std::time::Duration;

struct Api {
    http: reqwest::Client,
    sb: segsync::sandbox::Sandbox,
}

impl Api {
    async fn new(o: segsync::sandbox::SandboxOptions) -> Api {
        Api {
            http: reqwest::Client::new(),
            sb: sandbox(o).await,
        }
    }
    fn base(&self) -> String {
        format!(
            "{}/v1/spaces/{}/collections/users/profiles",
            self.sb.url(),
            self.sb.creds.space_id
        )
    }
    async fn seg(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .get(format!("{}{}", self.base(), path))
            .query(query)
            .basic_auth(&self.sb.creds.segment_token, Some(""))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let h = r.headers().clone();
        (status, h, r.json().await.unwrap_or(Value::Null))
    }
    fn vf(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        rb.header("X-App-Id", &self.sb.creds.app_id)
            .header("X-App-Token", &self.sb.creds.secret_key)
    }
    async fn bulk(&self, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .vf(self
                .http
                .post(format!("{}/v1/customers/bulk/async", self.sb.url())))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let h = r.headers().clone();
        (status, h, r.json().await.unwrap_or(Value::Null))
    }
    async fn action(&self, id: &str) -> Value {
        self.vf(self
            .http
            .get(format!("{}/v1/async-actions/{id}", self.sb.url())))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_listing_pages_to_the_end_with_opaque_cursors() {
    let api = Api::new(opts(250)).await;
    let mut next: Option<String> = None;
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let mut q = vec![("limit", "100")];
        if let Some(n) = &next {
            q.push(("next", n));
        }
        let (status, headers, v) = api.seg("", &q).await;
        assert_eq!(status, 200);
        assert!(headers.contains_key("request-id"));
        pages += 1;
        for p in v["data"].as_array().unwrap() {
            assert!(p["metadata"]["updated_at"].is_string());
            ids.push(p["segment_id"].as_str().unwrap().to_string());
        }
        if !v["cursor"]["has_more"].as_bool().unwrap() {
            break;
        }
        next = Some(v["cursor"]["next"].as_str().unwrap().to_string());
    }
    assert_eq!(pages, 3);
    assert_eq!(ids.len(), 250);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 250, "no profile listed twice");
    // `next=0` is the first page, as the original script asks for it (its
    // default start is "0", and it ran against Segment so).
    let (status, _, first) = api.seg("", &[("limit", "100"), ("next", "0")]).await;
    assert_eq!(status, 200, "{first}");
    let (_, _, plain) = api.seg("", &[("limit", "100")]).await;
    assert_eq!(first["data"], plain["data"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traits_and_external_ids_page_at_their_limits() {
    let api = Api::new(opts(50)).await;
    let ds = api.sb.dataset();
    // profile 3 has > 200 traits; profile 7 has > 100 external ids
    let big = ds.profile(3, 0);
    let (s, _, v) = api
        .seg(
            &format!("/segment_id:{}/traits", big.segment_id),
            &[("limit", "200")],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["traits"].as_object().unwrap().len(), 200);
    assert!(v["cursor"]["has_more"].as_bool().unwrap());
    let next = v["cursor"]["next"].as_str().unwrap().to_string();
    let (_, _, v2) = api
        .seg(
            &format!("/segment_id:{}/traits", big.segment_id),
            &[("limit", "200"), ("next", &next)],
        )
        .await;
    assert_eq!(
        v2["traits"].as_object().unwrap().len(),
        big.traits.len() - 200
    );
    assert!(!v2["cursor"]["has_more"].as_bool().unwrap());
    // The traits cursor is a trait name (Segment's docs: `next: "browser"`):
    // the first trait of the next page.
    assert_eq!(
        v2["traits"].as_object().unwrap().keys().next().unwrap(),
        &next
    );
    assert!(big.traits.contains_key(&next));
    // include= names the traits wanted, and pages only those.
    let (_, _, inc) = api
        .seg(
            &format!("/segment_id:{}/traits", big.segment_id),
            &[("limit", "200"), ("include", "email,name,nosuchtrait")],
        )
        .await;
    let keys: Vec<&String> = inc["traits"].as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(|k| *k == "email" || *k == "name"),
        "{keys:?}"
    );
    assert!(!inc["cursor"]["has_more"].as_bool().unwrap());
    // default page is only 10 traits
    let (_, _, d) = api
        .seg(&format!("/segment_id:{}/traits", big.segment_id), &[])
        .await;
    assert_eq!(d["traits"].as_object().unwrap().len(), 10);

    let many = ds.profile(7, 0);
    let (_, _, e) = api
        .seg(
            &format!("/segment_id:{}/external_ids", many.segment_id),
            &[("limit", "100")],
        )
        .await;
    assert_eq!(e["data"].as_array().unwrap().len(), 100);
    assert!(e["cursor"]["has_more"].as_bool().unwrap());
    assert!(
        !e["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["type"] == "user_id"),
        "user_id is on a later page"
    );
    let (_, _, only) = api
        .seg(
            &format!("/segment_id:{}/external_ids", many.segment_id),
            &[("limit", "100"), ("include", "user_id")],
        )
        .await;
    let ids = only["data"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.iter().all(|x| x["type"] == "user_id"));
    // Every read so far asked another page or selection: none counts as
    // asked again. The default traits page asked once more does.
    assert_eq!(reads_again(&api.sb, "segment.traits"), 0);
    assert_eq!(reads_again(&api.sb, "segment.external_ids"), 0);
    api.seg(&format!("/segment_id:{}/traits", big.segment_id), &[])
        .await;
    assert_eq!(reads_again(&api.sb, "segment.traits"), 1);
    assert_eq!(reads_again(&api.sb, "segment.external_ids"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_requests_over_100_customers_are_refused_too_many_customers() {
    let api = Api::new(opts(0)).await;
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"source_id": format!("c{i}")}))
        .collect();
    let (s, _, v) = api.bulk(Value::Array(many.clone())).await;
    assert_eq!(s, 400);
    assert_eq!(v["key"], "too_many_customers");
    let (s, _, _) = api.bulk(Value::Array(many[..100].to_vec())).await;
    assert_eq!(s, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_jobs_run_one_at_a_time_in_submission_order() {
    let api = Api::new(SandboxOptions {
        processing_ms: 300,
        ..opts(0)
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, _, v) = api.bulk(json!([{"source_id": format!("q{i}")}])).await;
        assert_eq!(s, 202);
        ids.push(v["async_action_id"].as_str().unwrap().to_string());
    }
    // Sample the three until all are done: never two IN_PROGRESS at once, and
    // a later job never finishes before an earlier one. Each round reads the
    // latest job first: a status only moves forward (QUEUED, IN_PROGRESS,
    // DONE), and the reads are not one instant, so only in this order does
    // seeing two jobs running (or a later one done before an earlier one)
    // prove they overlapped. Read oldest first, a job that finished between
    // two reads and the next that started would look like two at once.
    let mut all_done = false;
    let mut reads = vec![0usize; ids.len()];
    for _ in 0..100 {
        // A later job started (running or done) seen: every earlier one
        // read after it must be done.
        let mut later_started: Option<(String, String)> = None;
        let mut done = 0;
        for (i, id) in ids.iter().enumerate().rev() {
            reads[i] += 1;
            let a = api.action(id).await;
            let status = a["status"].as_str().unwrap().to_string();
            if let Some((later, was)) = &later_started {
                assert_eq!(
                    status, "DONE",
                    "{id} is {status} though {later}, submitted after it, was seen {was}: two jobs at once, or out of order"
                );
            }
            if status == "IN_PROGRESS" || status == "DONE" {
                later_started.get_or_insert((id.clone(), status.clone()));
            }
            done += usize::from(status == "DONE");
        }
        if done == ids.len() {
            all_done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(all_done, "the three jobs did not finish");
    // processing_time counts from creation, queue wait included (the vendor's example).
    let last = api.action(&ids[2]).await;
    assert!(last["processing_time"].as_u64().unwrap() >= 800, "{last}");
    reads[2] += 1;
    // The bench's timeline (`/_sandbox/actions`) tells the same story: in
    // submission order, each started after the one before finished, and
    // every read of ours counted.
    let timeline = action_timeline(&api.sb).await;
    let actions = timeline["actions"].as_array().unwrap();
    let listed: Vec<&str> = actions.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let mut previous_finish = 0.0;
    for (a, reads) in actions.iter().zip(&reads) {
        let ms = |k: &str| a[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {a}"));
        let (created, started, finished) = (ms("created_ms"), ms("started_ms"), ms("finished_ms"));
        assert!(created <= started && started < finished, "{a}");
        assert!(
            started >= previous_finish,
            "started before the job ahead finished: {a}"
        );
        previous_finish = finished;
        assert_eq!(a["looks_ms"].as_array().unwrap().len(), *reads, "{a}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_fields_mode_answers_absent_fields_with_null() {
    let api = Api::new(SandboxOptions {
        null_fields: true,
        processing_ms: 100,
        ..opts(0)
    })
    .await;
    let (_, _, v) = api.bulk(json!([{"source_id": "n1"}])).await;
    let id = v["async_action_id"].as_str().unwrap().to_string();
    let a = api.action(&id).await;
    assert!(a["result"].is_null(), "{a}");
    wait_done(&api, &id).await;
    let a = api.action(&id).await;
    assert_eq!(a["result"]["done_count"], 1);
    assert!(
        a["result"]["errors"].is_null() && a["result"]["failed_count"].is_null(),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_quotas_answer_429_with_their_type_and_reset() {
    let api = Api::new(SandboxOptions {
        cycle_quota: Some(2),
        ..opts(0)
    })
    .await;
    for _ in 0..2 {
        assert_eq!(api.bulk(json!([{"source_id": "x"}])).await.0, 202);
    }
    let (s, h, _) = api.bulk(json!([{"source_id": "x"}])).await;
    assert_eq!(s, 429);
    assert_eq!(h["x-rate-limit-type"], "api_calls_cycle");
    let reset: u64 = h["x-rate-limit-retry"].to_str().unwrap().parse().unwrap();
    assert!(
        reset > segsync::sandbox::epoch_now() + 60,
        "the cycle resets next month"
    );

    let api = Api::new(SandboxOptions {
        bulk_quota: Some(1),
        ..opts(0)
    })
    .await;
    assert_eq!(api.bulk(json!([{"source_id": "y"}])).await.0, 202);
    let (s, h, _) = api.bulk(json!([{"source_id": "y"}])).await;
    assert_eq!(s, 429);
    assert_eq!(h["x-rate-limit-type"], "bulk_api_calls");
    assert!(h.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_moves_a_profile_to_the_head_of_the_listing() {
    let api = Api::new(opts(250)).await;
    let (_, _, first) = api.seg("", &[("limit", "100")]).await;
    let ids: Vec<String> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["segment_id"].as_str().unwrap().to_string())
        .collect();
    let touched = api.sb.touch(1);
    let (_, _, again) = api.seg("", &[("limit", "100")]).await;
    assert_eq!(
        again["data"][0]["segment_id"], touched[0],
        "the profile with activity leads"
    );
    assert_ne!(
        again["data"][0]["metadata"]["updated_at"],
        first["data"][0]["metadata"]["updated_at"]
    );
    assert_eq!(again["data"][1]["segment_id"], ids[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_out_of_range_are_400_with_the_documented_error_body() {
    let api = Api::new(opts(10)).await;
    let id = api.sb.dataset().segment_id(1);
    for (path, bad) in [
        ("".to_string(), "101"),
        ("".to_string(), "0"),
        (format!("/segment_id:{id}/traits"), "201"),
        (format!("/segment_id:{id}/external_ids"), "101"),
        ("".to_string(), "x"),
    ] {
        let (s, _, v) = api.seg(&path, &[("limit", bad)]).await;
        assert_eq!(s, 400, "{path} limit={bad}");
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{v}"
        );
    }
    let (s, _, v) = api.seg("/segment_id:use_nope/traits", &[]).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_apis_refuse_bad_credentials_with_401() {
    let api = Api::new(opts(10)).await;
    let r = api
        .http
        .get(api.base())
        .basic_auth("wrong", Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "authentication_error");
    let r = api.http.get(api.base()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = api
        .http
        .post(format!("{}/v1/customers/bulk/async", api.sb.url()))
        .header("X-App-Id", &api.sb.creds.app_id)
        .header("X-App-Token", "wrong")
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["message"].is_string() && v["code"] == 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_rate_limit_answers_429_rate_limit_error() {
    let api = Api::new(segsync::sandbox::SandboxOptions {
        segment_rps: 5,
        ..opts(10)
    })
    .await;
    let mut throttled = 0;
    for _ in 0..20 {
        let (s, h, v) = api.seg("", &[("limit", "1")]).await;
        if s == 429 {
            throttled += 1;
            assert_eq!(v["error"]["code"], "rate_limit_error");
            assert!(h.contains_key("retry-after"));
        }
    }
    assert!(
        throttled >= 10,
        "only {throttled} of 20 burst requests throttled at 5/s"
    );
    assert_eq!(stat(&api.sb, "throttled.segment"), throttled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voucherify_rate_limit_sends_headers_and_429_with_retry_after() {
    let api = Api::new(segsync::sandbox::SandboxOptions {
        voucherify_rpm: 3,
        ..opts(10)
    })
    .await;
    let mut last = None;
    for i in 0..3 {
        let (s, h, _) = api.bulk(json!([{"source_id": format!("r{i}")}])).await;
        assert_eq!(s, 202);
        assert_eq!(h["x-rate-limit-limit"], "3");
        assert_eq!(
            h["x-rate-limit-remaining"].to_str().unwrap(),
            (2 - i).to_string()
        );
        last = Some(
            h["x-rate-limit-retry"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    let (s, h, v) = api.bulk(json!([{"source_id": "r4"}])).await;
    assert_eq!(s, 429);
    assert_eq!(v["code"], 429);
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(h["x-rate-limit-remaining"], "0");
    assert_eq!(
        h["x-rate-limit-retry"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        last.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_action_goes_enqueued_in_progress_done_and_reports_customer_errors() {
    let api = Api::new(segsync::sandbox::SandboxOptions {
        processing_ms: 600,
        ..opts(10)
    })
    .await;
    let (s, _, v) = api
        .bulk(json!([
            {"source_id": "a", "name": "Ann", "birthdate": "1990-02-30"},
            {"source_id": "b", "email": "b@example.com"}
        ]))
        .await;
    assert_eq!(s, 202);
    let id = v["async_action_id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    let done = loop {
        let a = api.action(&id).await;
        let st = a["status"].as_str().unwrap().to_string();
        if seen.last() != Some(&st) {
            seen.push(st.clone());
        }
        if st == "DONE" {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen, vec!["ENQUEUED", "IN_PROGRESS", "DONE"]);
    assert_eq!(done["object"], "async_action");
    assert_eq!(done["result"]["done_count"], 1);
    assert_eq!(done["result"]["failed_count"], 1);
    let err = &done["result"]["errors"][0];
    assert_eq!(err["source_id"], "a");
    assert!(err["message"].as_str().unwrap().contains("birthdate"));
    let held = api.sb.customers();
    assert!(held.contains_key("b") && !held.contains_key("a"));
    let r = api
        .vf(api
            .http
            .get(format!("{}/v1/async-actions/aa_missing", api.sb.url())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

async fn wait_done(api: &Api, id: &str) {
    for _ in 0..200 {
        if api.action(id).await["status"] == "DONE" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("action {id} never finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_by_source_id_merges_fields() {
    let api = Api::new(opts(10)).await;
    let (_, _, v) = api.bulk(json!([{"source_id": "m", "name": "Old", "email": "m@example.com", "address": {"city": "Oslo"}, "metadata": {"a": 1}}])).await;
    wait_done(&api, v["async_action_id"].as_str().unwrap()).await;
    let (_, _, v) = api.bulk(json!([{"source_id": "m", "name": "New", "address": {"country": "NO"}, "metadata": {"b": 2}}])).await;
    wait_done(&api, v["async_action_id"].as_str().unwrap()).await;
    let c = &api.sb.customers()["m"];
    assert_eq!(c["name"], "New");
    assert_eq!(c["email"], "m@example.com", "a field not sent is kept");
    assert_eq!(c["address"], json!({"city": "Oslo", "country": "NO"}));
    assert_eq!(c["metadata"], json!({"a": 1, "b": 2}));
    assert_eq!(api.sb.customers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_requests_over_10_mb_get_413_and_unknown_properties_400() {
    let api = Api::new(opts(10)).await;
    let big = "x".repeat(1024 * 1024);
    let body: Vec<Value> = (0..11)
        .map(|i| json!({"source_id": format!("s{i}"), "description": big}))
        .collect();
    let (s, _, v) = api.bulk(Value::Array(body)).await;
    assert_eq!(s, 413);
    assert_eq!(v["statusCode"], 413);
    let (s, _, v) = api
        .bulk(json!([{"source_id": "x", "segment_id": "use_1"}]))
        .await;
    assert_eq!(s, 400);
    assert!(v["details"].as_str().unwrap().contains("segment_id"));
    assert!(api.sb.customers().is_empty());
}
