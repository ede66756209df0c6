//! Priority lanes and adaptive upstream throttling end to end (issue 5, §4 and §5):
//! a batch flood saturating a project's RPM rule while interactive requests keep
//! succeeding without waiting; batch requests past `lanes.batch_max_wait` refused with
//! 429; the lane from the header or the key's default, recorded; a waiting request
//! dropped when its client goes away; and a batch load that draws upstream 429s from
//! the simulator's per-key limit without adaptive throttling and (almost) none with it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{eventually, Harness};
use tollgate_simulator::SimConfig;
use tollgate_store::{Actor, Lane, LimitScope, UsageRecord};

const PRIORITY: &str = "x-tollgate-priority";

fn body() -> Value {
    json!({"model": "gpt-4o-mini", "input": "hello", "max_output_tokens": 16})
}

async fn set_project_rpm(h: &Harness, rpm: u64) {
    let scope = LimitScope {
        project: "shop".into(),
        env: None,
        key_id: None,
        model: None,
    };
    h.store
        .set_rate_limit(&scope, Some(rpm), None, support::now_ms(), &Actor::system())
        .await
        .unwrap();
    // Applied once an answer carries the rule's limit (that call takes one request).
    let applied = eventually(Duration::from_secs(5), || async {
        let res = h.post("/v1/responses", body()).send().await.unwrap();
        res.headers()
            .get("x-ratelimit-limit-requests")
            .is_some_and(|v| v.to_str().unwrap() == rpm.to_string())
    })
    .await;
    assert!(applied.is_some(), "rule not applied within 5 s");
}

async fn metric(h: &Harness, name: &str) -> u64 {
    h.metric(name)
        .await
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Sends one request in `lane` (None: no header); returns its status and latency.
async fn call(h: &Harness, lane: Option<&str>) -> (u16, Duration, reqwest::header::HeaderMap) {
    let mut req = h.post("/v1/responses", body());
    if let Some(lane) = lane {
        req = req.header(PRIORITY, lane);
    }
    let start = Instant::now();
    let res = req.send().await.unwrap();
    let took = start.elapsed();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    res.bytes().await.unwrap();
    (status, took, headers)
}

#[tokio::test]
async fn a_batch_flood_saturating_the_project_rpm_leaves_interactive_traffic_its_capacity() {
    let h = Arc::new(
        support::start_with(|c| {
            c.lanes.batch_reserve = Some(0.5);
            c.lanes.batch_max_wait_ms = Some(8_000);
        })
        .await,
    );
    // 120 a minute (one every half second). Batch may use half of it; a flood of 80
    // wants more than all of it.
    set_project_rpm(&h, 120).await;
    let flood: Vec<_> = (0..80)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { call(&h, Some("batch")).await })
        })
        .collect();
    let queued = eventually(Duration::from_secs(10), || async {
        metric(&h, "tollgate_batch_queue_depth").await > 0
    })
    .await;
    assert!(queued.is_some(), "the flood never queued");
    // Interactive traffic while the flood waits: every request succeeds at once.
    let mut interactive = Vec::new();
    for i in 0..10 {
        // Half with the header, half by the key's default lane.
        let lane = (i % 2 == 0).then_some("interactive");
        let (status, took, _) = call(&h, lane).await;
        assert_eq!(status, 200, "interactive request {i} was refused");
        interactive.push(took);
    }
    let mut batch_ok = 0;
    let mut batch_refused = Vec::new();
    for t in flood {
        let (status, took, headers) = t.await.unwrap();
        match status {
            200 => batch_ok += 1,
            429 => {
                let retry = headers
                    .get("retry-after")
                    .expect("a 429 says when to retry");
                assert!(retry.to_str().unwrap().parse::<u64>().unwrap() >= 1);
                batch_refused.push(took);
            }
            other => panic!("batch request answered {other}"),
        }
    }
    interactive.sort();
    batch_refused.sort();
    let p99 = interactive[(interactive.len() * 99).div_ceil(100) - 1];
    let batch_median = batch_refused[batch_refused.len() / 2];
    println!(
        "batch: {batch_ok} admitted, {} refused after waiting (median wait {batch_median:?}); \
         interactive: 10 of 10 admitted, p99 wait {p99:?}",
        batch_refused.len()
    );
    // Batch took its half at once (about 59 after the setup call, plus the refill
    // meanwhile) and a few more as the refill made room over 8 s; the rest waited
    // their turn up to the bound before the 429.
    assert!((55..=75).contains(&batch_ok), "{batch_ok} batch admitted");
    assert!(batch_refused.len() >= 5, "{} refused", batch_refused.len());
    assert!(batch_median >= Duration::from_secs(4), "{batch_median:?}");
    assert!(
        p99 * 4 < batch_median,
        "interactive p99 {p99:?} vs batch median wait {batch_median:?}"
    );
    assert!(metric(&h, "tollgate_batch_waits_total").await >= 5);
    assert!(metric(&h, "tollgate_batch_wait_timeouts_total").await >= 5);
    assert_eq!(metric(&h, "tollgate_batch_queue_depth").await, 0);

    let mut h = Arc::into_inner(h).unwrap();
    let records = h.stop_and_records().await;
    let count = |lane: Lane, status: u16| {
        records
            .iter()
            .filter(|r| r.lane == Some(lane) && r.status == status)
            .count()
    };
    assert_eq!(count(Lane::Batch, 200), batch_ok);
    assert_eq!(count(Lane::Batch, 429), 80 - batch_ok);
    // The ten, the setup call and any call made before the rule applied.
    assert!(count(Lane::Interactive, 200) >= 11);
    assert_eq!(count(Lane::Interactive, 429), 0);
}

#[tokio::test]
async fn the_lane_comes_from_the_header_or_the_keys_default_and_is_recorded() {
    let mut h = support::start().await;
    let (status, _, _) = call(&h, Some("urgent")).await;
    assert_eq!(status, 400);
    let res = h
        .post("/v1/responses", body())
        .header(PRIORITY, "soon")
        .send()
        .await
        .unwrap();
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["param"], PRIORITY);
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`batch` or `interactive`"),
        "{err}"
    );
    assert_eq!(call(&h, Some("batch")).await.0, 200);
    assert_eq!(call(&h, None).await.0, 200);

    // The key's default lane changes without a restart.
    h.store
        .set_key_lane(&h.key_id, Lane::Batch, support::now_ms(), &Actor::system())
        .await
        .unwrap();
    // Within a second, a request without the header runs (and is recorded) as batch.
    let applied = eventually(Duration::from_secs(2), || async {
        let res = h.post("/v1/responses", body()).send().await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        res.bytes().await.unwrap();
        let rec = eventually(Duration::from_secs(5), || async {
            h.store
                .usage_records(0)
                .await
                .unwrap()
                .iter()
                .any(|r| r.request_id == id)
        })
        .await;
        assert!(rec.is_some(), "request {id} never recorded");
        let recs = h.store.usage_records(0).await.unwrap();
        recs.iter()
            .any(|r| r.request_id == id && r.lane == Some(Lane::Batch))
    })
    .await;
    assert!(applied.is_some(), "the key's batch lane never applied");
    assert_eq!(call(&h, Some("interactive")).await.0, 200);

    let records = h.stop_and_records().await;
    let lanes: Vec<(u16, Option<Lane>)> = records.iter().map(|r| (r.status, r.lane)).collect();
    assert_eq!(lanes[0], (400, None), "refused before the lane was known");
    assert_eq!(lanes[1], (400, None));
    assert_eq!(lanes[2], (200, Some(Lane::Batch)));
    assert_eq!(lanes[3], (200, Some(Lane::Interactive)));
    assert_eq!(lanes.last(), Some(&(200, Some(Lane::Interactive))));
    // The upstream's remaining capacity is on every answered record.
    let answered: Vec<&UsageRecord> = records.iter().filter(|r| r.status == 200).collect();
    assert!(answered
        .iter()
        .all(|r| r.upstream_remaining_requests.is_some() && r.upstream_remaining_tokens.is_some()));
}

#[tokio::test]
async fn a_waiting_batch_request_leaves_the_queue_when_its_client_goes_away() {
    let mut h = support::start_with(|c| {
        c.lanes.batch_reserve = Some(0.0);
        c.lanes.batch_max_wait_ms = Some(30_000);
    })
    .await;
    // Six a minute: after these, the next room is ten seconds away.
    set_project_rpm(&h, 6).await;
    for _ in 0..5 {
        assert_eq!(call(&h, None).await.0, 200);
    }
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .post(h.url("/v1/responses"))
        .bearer_auth(&h.key)
        .header(PRIORITY, "batch")
        .json(&body())
        .send()
        .await;
    assert!(gone.unwrap_err().is_timeout());
    let left = eventually(Duration::from_secs(3), || async {
        metric(&h, "tollgate_batch_queue_depth").await == 0
    })
    .await;
    assert!(
        left.is_some(),
        "the request is still queued after its client left"
    );
    assert_eq!(metric(&h, "tollgate_batch_waits_total").await, 1);
    let records = h.stop_and_records().await;
    let last = records.last().unwrap();
    assert_eq!(last.lane, Some(Lane::Batch));
    assert!(last.client_disconnected);
    assert_eq!(last.status, 499);
}

/// One run of the adaptive test: `n` batch requests, `concurrency` at a time, against
/// a simulator allowing `rpm` per key; returns (upstream 429s the simulator sent,
/// records that needed a retry, records finally 429).
async fn batch_load(
    threshold: f64,
    rpm: u64,
    n: usize,
    concurrency: usize,
) -> (usize, usize, usize) {
    let sim = SimConfig {
        rpm: Some(rpm),
        ..SimConfig::default()
    };
    let h = Arc::new(
        support::start_with_sim(sim, |c| {
            c.upstream.adaptive_threshold = Some(threshold);
            c.lanes.batch_max_wait_ms = Some(60_000);
        })
        .await,
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (h, next) = (h.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    call(&h, Some("batch")).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let upstream_429 = h
        .sim_requests()
        .await
        .iter()
        .filter(|r| r["status"] == 429)
        .count();
    let metric_429 = metric(&h, "tollgate_upstream_429_total").await;
    let mut h = Arc::into_inner(h).unwrap();
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), n);
    let retried = records.iter().filter(|r| r.attempts > 1).count();
    let refused = records.iter().filter(|r| r.status == 429).count();
    assert_eq!(metric_429 as usize, refused);
    assert!(records
        .iter()
        .all(|r| r.lane == Some(Lane::Batch) && r.upstream_remaining_requests.is_some()));
    (upstream_429, retried, refused)
}

#[tokio::test]
async fn adaptive_throttling_avoids_the_upstream_429s_a_batch_load_draws_without_it() {
    // 120 a minute (two a second) at the simulator, 136 requests 16 at a time: without
    // adaptation the last ones hit the empty bucket; with it (2 % threshold), batch
    // slows to the refill (about 9 s for the last 18).
    let (rpm, n, concurrency) = (120, 136, 16);
    let off = batch_load(0.0, rpm, n, concurrency).await;
    let started = Instant::now();
    let on = batch_load(0.02, rpm, n, concurrency).await;
    println!(
        "adaptive off: {} upstream 429s, {} requests refused-then-retried, {} answered 429; \
         adaptive on: {} upstream 429s, {} refused-then-retried, {} answered 429 ({:?})",
        off.0,
        off.1,
        off.2,
        on.0,
        on.1,
        on.2,
        started.elapsed()
    );
    assert!(
        off.0 >= 5,
        "the load should draw upstream 429s without adaptation"
    );
    assert!(off.1 > 0);
    assert!(on.0 <= 1, "{} upstream 429s with adaptation", on.0);
    assert_eq!(on.2, 0);
}
