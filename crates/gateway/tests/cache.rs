//! The response cache (issue 6, section 5) through the real gateway against the
//! simulator, whose request log counts the upstream calls:
//!
//! - a miss then a hit (one upstream call, the same answer), per request
//!   (`x-tollgate-cache: on`) and per project (`cache.projects`); `off`; `refresh`;
//!   a bad header value is a 400 that never reaches the upstream;
//! - TTL expiry, the entry bound (least recently used evicted) and the size bound of
//!   one answer; a large plain answer relayed as it arrives is stored as it passes;
//! - a streamed hit replays the same events as a valid stream; a stream the upstream
//!   cut is not stored;
//! - two projects never share an entry;
//! - usage records say `miss` / `hit`, a hit has no tokens and no cost; a hit's TPM
//!   and budget reservations are given back (calls that would not fit otherwise pass);
//! - a stored answer stands in for a failing upstream (`cache.fallback_projects`);
//! - two replicas share entries through Redis (`TOLLGATE_TEST_REDIS_URL`, default
//!   `redis://127.0.0.1:6379`; the test fails, never skips, without one); with Redis
//!   unreachable the cache works in memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, Harness};
use tollgate_gateway::keys;
use tollgate_gateway::RawConfig;
use tollgate_store::{Actor, BudgetScope, CacheOutcome, LimitScope, Role};

const CACHE: &str = "x-tollgate-cache";

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A request body no other test sends.
fn unique(tag: &str) -> Value {
    static N: AtomicU64 = AtomicU64::new(0);
    json!({
        "model": "gpt-4o-mini",
        "input": format!("{tag} {}", N.fetch_add(1, Ordering::Relaxed)),
    })
}

/// POSTs `body` to `path` with an optional `x-tollgate-cache`; returns the cache
/// header, the status and the body bytes.
async fn call(
    h: &Harness,
    key: &str,
    path: &str,
    body: &Value,
    mode: Option<&str>,
) -> (Option<String>, u16, bytes::Bytes) {
    let mut req = h.http.post(h.url(path)).bearer_auth(key).json(body);
    if let Some(m) = mode {
        req = req.header(CACHE, m);
    }
    let res = req.send().await.unwrap();
    let cache = header(&res, CACHE);
    let status = res.status().as_u16();
    (cache, status, res.bytes().await.unwrap())
}

async fn upstream_calls(h: &Harness, path: &str) -> usize {
    h.sim_requests()
        .await
        .iter()
        .filter(|r| r["path"] == path)
        .count()
}

/// A key of another project, once the gateway accepts it.
async fn key_in(h: &Harness, project: &str) -> String {
    h.store.ensure_project(project).await.unwrap();
    let m = keys::mint(project, "dev", Role::Member, None, support::now_ms());
    h.store.insert_key(&m.record).await.unwrap();
    let known = eventually(Duration::from_secs(5), || async {
        let res = h
            .http
            .get(h.url("/v1/models"))
            .bearer_auth(&m.secret)
            .send()
            .await
            .unwrap();
        res.status() != 401
    })
    .await;
    assert!(known.is_some(), "the new key was never accepted");
    m.secret
}

#[tokio::test]
async fn a_miss_then_a_hit_calls_the_upstream_once_and_answers_the_same() {
    let h = support::start().await;
    for (path, body) in [
        ("/v1/responses", unique("responses")),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "chat hit"}]}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "embed hit"}),
        ),
    ] {
        let first = call(&h, &h.key, path, &body, Some("on")).await;
        assert_eq!((first.0.as_deref(), first.1), (Some("miss"), 200), "{path}");
        // Key order, whitespace and labelling members do not change the key.
        let mut relabelled = body.clone();
        relabelled["user"] = json!("someone-else");
        relabelled["metadata"] = json!({"trace": "x"});
        let second = call(&h, &h.key, path, &relabelled, Some("on")).await;
        assert_eq!(
            (second.0.as_deref(), second.1),
            (Some("hit"), 200),
            "{path}"
        );
        assert_eq!(first.2, second.2, "{path}: the hit is the stored answer");
        assert_eq!(upstream_calls(&h, path).await, 1, "{path}");
    }
    // A parameter that changes the answer is another entry.
    let mut warmer = unique("temperature");
    let first = call(&h, &h.key, "/v1/responses", &warmer, Some("on")).await;
    warmer["temperature"] = json!(1.5);
    let other = call(&h, &h.key, "/v1/responses", &warmer, Some("on")).await;
    assert_eq!(
        (first.0.as_deref(), other.0.as_deref()),
        (Some("miss"), Some("miss"))
    );
    // Without the header or the project's opt-in the cache is not used at all.
    let body = unique("not cached");
    for _ in 0..2 {
        let (cache, status, _) = call(&h, &h.key, "/v1/responses", &body, None).await;
        assert_eq!((cache, status), (None, 200));
    }
    assert_eq!(upstream_calls(&h, "/v1/responses").await, 5);
}

#[tokio::test]
async fn a_project_opts_in_and_off_and_refresh_override_it() {
    let h = support::start_with(|raw: &mut RawConfig| {
        raw.cache.projects = Some(vec!["shop".into()]);
    })
    .await;
    let body = unique("project");
    let path = "/v1/responses";
    let miss = call(&h, &h.key, path, &body, None).await;
    let hit = call(&h, &h.key, path, &body, None).await;
    assert_eq!(
        (miss.0.as_deref(), hit.0.as_deref()),
        (Some("miss"), Some("hit"))
    );
    assert_eq!(miss.2, hit.2);
    assert_eq!(upstream_calls(&h, path).await, 1);

    // off: neither read nor written.
    let off = call(&h, &h.key, path, &body, Some("off")).await;
    assert_eq!((off.0, off.1), (None, 200));
    assert_ne!(off.2, hit.2, "off went upstream (a new response id)");
    assert_eq!(upstream_calls(&h, path).await, 2);
    let fresh = unique("off is not stored");
    call(&h, &h.key, path, &fresh, Some("off")).await;
    let after = call(&h, &h.key, path, &fresh, None).await;
    assert_eq!(after.0.as_deref(), Some("miss"));

    // refresh: the upstream answers and replaces the entry.
    let refresh = call(&h, &h.key, path, &body, Some("refresh")).await;
    assert_eq!((refresh.0.as_deref(), refresh.1), (Some("refresh"), 200));
    assert_ne!(refresh.2, hit.2);
    let hit = call(&h, &h.key, path, &body, Some("on")).await;
    assert_eq!(hit.0.as_deref(), Some("hit"));
    assert_eq!(
        hit.2, refresh.2,
        "the refreshed answer replaced the old one"
    );
    assert_eq!(upstream_calls(&h, path).await, 5);
}

#[tokio::test]
async fn a_bad_header_value_is_a_400_naming_the_header_before_the_upstream() {
    let h = support::start().await;
    let (cache, status, body) =
        call(&h, &h.key, "/v1/responses", &unique("bad"), Some("maybe")).await;
    assert_eq!((cache, status), (None, 400));
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert_eq!(err["error"]["param"], CACHE);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("x-tollgate-cache") && msg.contains("`refresh`"),
        "{msg}"
    );
    assert_eq!(upstream_calls(&h, "/v1/responses").await, 0);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let h = support::start_with(|raw: &mut RawConfig| {
        raw.cache.ttl_seconds = Some(1);
    })
    .await;
    let body = unique("ttl");
    let path = "/v1/responses";
    assert_eq!(
        call(&h, &h.key, path, &body, Some("on")).await.0.as_deref(),
        Some("miss")
    );
    // Hits until the second is over, then one miss that stores it again.
    let expired = eventually(Duration::from_secs(10), || async {
        call(&h, &h.key, path, &body, Some("on")).await.0.as_deref() == Some("miss")
    })
    .await;
    assert!(expired.is_some(), "the entry never expired");
    assert_eq!(upstream_calls(&h, path).await, 2);
    assert_eq!(
        call(&h, &h.key, path, &body, Some("on")).await.0.as_deref(),
        Some("hit")
    );
}

#[tokio::test]
async fn the_bounds_evict_the_least_recently_used_and_skip_large_answers() {
    let h = support::start_with(|raw: &mut RawConfig| {
        raw.cache.max_entries = Some(2);
    })
    .await;
    let path = "/v1/responses";
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    for body in [&a, &b] {
        call(&h, &h.key, path, body, Some("on")).await;
    }
    // Using a makes b the least recently used: c evicts b.
    assert_eq!(
        call(&h, &h.key, path, &a, Some("on")).await.0.as_deref(),
        Some("hit")
    );
    call(&h, &h.key, path, &c, Some("on")).await;
    assert_eq!(
        call(&h, &h.key, path, &a, Some("on")).await.0.as_deref(),
        Some("hit")
    );
    assert_eq!(
        call(&h, &h.key, path, &b, Some("on")).await.0.as_deref(),
        Some("miss")
    );
    assert_eq!(upstream_calls(&h, path).await, 4);
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("tollgate_cache_evictions_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_cache_hits_total 2"), "{metrics}");
    assert!(
        metrics.contains("tollgate_cache_memory_entries 2"),
        "{metrics}"
    );

    // An answer above max_entry_bytes is relayed, not stored.
    let small = support::start_with(|raw: &mut RawConfig| {
        raw.cache.max_entry_bytes = Some(64);
    })
    .await;
    let body = unique("large");
    for _ in 0..2 {
        let (cache, status, bytes) = call(&small, &small.key, path, &body, Some("on")).await;
        assert_eq!((cache.as_deref(), status), (Some("miss"), 200));
        assert!(bytes.len() > 64);
    }
    assert_eq!(upstream_calls(&small, path).await, 2);
}

#[tokio::test]
async fn a_large_plain_answer_relayed_as_it_arrives_is_stored_as_it_passes() {
    let h = support::start_with(|raw: &mut RawConfig| {
        raw.cache.max_entry_bytes = Some(8 << 20);
    })
    .await;
    // 48 inputs at 3,072 dimensions: an answer of megabytes, over the 256 KiB a plain
    // answer is read whole up to.
    let inputs: Vec<String> = (0..48).map(|i| format!("stored document {i}")).collect();
    let body = json!({"model": "text-embedding-3-large", "input": inputs});
    let path = "/v1/embeddings";
    let first = call(&h, &h.key, path, &body, Some("on")).await;
    assert_eq!((first.0.as_deref(), first.1), (Some("miss"), 200));
    assert!(first.2.len() > 1 << 20, "{} bytes", first.2.len());
    let second = call(&h, &h.key, path, &body, Some("on")).await;
    assert_eq!((second.0.as_deref(), second.1), (Some("hit"), 200));
    assert!(first.2 == second.2, "the hit is the stored answer");
    assert_eq!(upstream_calls(&h, path).await, 1);
}

/// The `data:` payloads of an SSE body, checking its framing.
fn events(body: &[u8]) -> Vec<(Option<String>, String)> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(
        text.ends_with("\n\n"),
        "the stream ends with a complete event"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                } else {
                    panic!("not an SSE line: {line:?}");
                }
            }
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn a_streamed_hit_replays_the_same_events_as_a_valid_stream() {
    let h = support::start().await;
    let chat = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "stream me"}]});
    let mut responses = unique("stream");
    responses["stream"] = json!(true);
    for (path, body) in [("/v1/chat/completions", chat), ("/v1/responses", responses)] {
        let res = h
            .post(path, body.clone())
            .header(CACHE, "on")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&res, CACHE).as_deref(), Some("miss"));
        let first = res.bytes().await.unwrap();
        let res = h
            .post(path, body.clone())
            .header(CACHE, "on")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&res, CACHE).as_deref(), Some("hit"), "{path}");
        assert!(header(&res, "content-type")
            .unwrap()
            .starts_with("text/event-stream"));
        let replay = res.bytes().await.unwrap();
        assert_eq!(first, replay, "{path}: the same bytes");
        let evs = events(&replay);
        assert!(evs.len() > 2, "{path}");
        for (_, data) in &evs {
            if data != "[DONE]" {
                serde_json::from_str::<Value>(data).unwrap();
            }
        }
        match path {
            "/v1/chat/completions" => assert_eq!(evs.last().unwrap().1, "[DONE]"),
            _ => assert_eq!(evs.last().unwrap().0.as_deref(), Some("response.completed")),
        }
        assert_eq!(upstream_calls(&h, path).await, 1, "{path}");
        // The plain request is another entry.
        let mut plain = body.clone();
        plain["stream"] = json!(false);
        let (cache, _, _) = call(&h, &h.key, path, &plain, Some("on")).await;
        assert_eq!(cache.as_deref(), Some("miss"));
    }

    // A stream the upstream cuts is not stored: the caller sees an error (before the
    // headers or mid-body), and the same request, uncut, is still a miss.
    let cut = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "cut me"}]});
    for _ in 0..2 {
        // A connection of its own: the cut closes it.
        let sent = reqwest::Client::new()
            .post(h.url("/v1/chat/completions"))
            .bearer_auth(&h.key)
            .json(&cut)
            .header(CACHE, "on")
            .header("x-sim-stream-cut-after", "2")
            .send()
            .await;
        if let Ok(res) = sent {
            assert!(res.bytes().await.is_err(), "the caller sees the cut");
        }
    }
    let res = h
        .post("/v1/chat/completions", cut)
        .header(CACHE, "on")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, CACHE).as_deref(), Some("miss"));
    assert!(res.bytes().await.unwrap().ends_with(b"data: [DONE]\n\n"));
    assert_eq!(upstream_calls(&h, "/v1/chat/completions").await, 5);
}

#[tokio::test]
async fn two_projects_never_share_an_entry() {
    let h = support::start().await;
    let other = key_in(&h, "blog").await;
    let body = unique("shared?");
    let path = "/v1/responses";
    let shop = call(&h, &h.key, path, &body, Some("on")).await;
    let blog = call(&h, &other, path, &body, Some("on")).await;
    assert_eq!(
        (shop.0.as_deref(), blog.0.as_deref()),
        (Some("miss"), Some("miss"))
    );
    assert_ne!(shop.2, blog.2);
    let blog_hit = call(&h, &other, path, &body, Some("on")).await;
    let shop_hit = call(&h, &h.key, path, &body, Some("on")).await;
    assert_eq!((blog_hit.2, shop_hit.2), (blog.2, shop.2));
    assert_eq!(upstream_calls(&h, path).await, 2);
}

#[tokio::test]
async fn usage_records_say_miss_and_hit_and_a_hit_has_no_tokens_or_cost() {
    let mut h = support::start().await;
    let body = unique("records");
    let path = "/v1/responses";
    let (_, _, answer) = call(&h, &h.key, path, &body, Some("on")).await;
    call(&h, &h.key, path, &body, Some("on")).await;
    call(&h, &h.key, path, &unique("plain"), None).await;
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 3);
    let (miss, hit, plain) = (&records[0], &records[1], &records[2]);
    assert_eq!(miss.cache, Some(CacheOutcome::Miss));
    assert!(miss.total_tokens > 0 && miss.cost_usd_nanos.unwrap() > 0);
    assert_eq!(hit.cache, Some(CacheOutcome::Hit));
    assert_eq!(hit.status, 200);
    assert_eq!(
        (hit.input_tokens, hit.output_tokens, hit.total_tokens),
        (0, 0, 0)
    );
    assert_eq!(hit.cost_usd_nanos, Some(0));
    assert_eq!(hit.attempts, 0);
    assert_eq!(hit.response_id.as_deref(), answer["id"].as_str());
    assert_eq!(hit.model_served.as_deref(), answer["model"].as_str());
    assert_eq!(plain.cache, None);
}

#[tokio::test]
async fn a_hit_gives_back_its_token_and_budget_reservations() {
    let h = support::start_with(|raw: &mut RawConfig| {
        raw.models = RawConfig::from_toml_str(
            "[[models]]\nid = \"gpt-4o-mini\"\ninput_per_1m = 1\noutput_per_1m = 4\n",
        )
        .unwrap()
        .models;
    })
    .await;
    // Each call reserves about 2 000 tokens and $0.008 of output: the TPM limit
    // and the budget hold the miss and about two more, unless hits give theirs back.
    let limit = 5_000;
    h.store
        .set_rate_limit(
            &LimitScope {
                project: "shop".into(),
                env: None,
                key_id: None,
                model: None,
            },
            None,
            Some(limit),
            support::now_ms(),
            &Actor::system(),
        )
        .await
        .unwrap();
    h.store
        .set_budget(
            &BudgetScope {
                project: "shop".into(),
                env: None,
                key_id: None,
            },
            Some(20_000_000),
            None,
            None,
            support::now_ms(),
            &Actor::system(),
        )
        .await
        .unwrap();
    let mut body = unique("reservations");
    body["max_output_tokens"] = json!(2_000);
    let applied = eventually(Duration::from_secs(5), || async {
        let res = h
            .post(
                "/v1/embeddings",
                json!({"model": "text-embedding-3-small", "input": "x"}),
            )
            .send()
            .await
            .unwrap();
        header(&res, "x-ratelimit-limit-tokens").as_deref() == Some("5000")
    })
    .await;
    assert!(applied.is_some(), "the TPM rule was not applied");
    let budget_applied = eventually(Duration::from_secs(5), || async {
        let res = h
            .post(
                "/v1/responses",
                json!({"model": "unpriced-model", "input": "x"}),
            )
            .send()
            .await
            .unwrap();
        res.status() == 400
    })
    .await;
    assert!(budget_applied.is_some(), "the budget was not applied");

    let (cache, status, _) = call(&h, &h.key, "/v1/responses", &body, Some("on")).await;
    assert_eq!((cache.as_deref(), status), (Some("miss"), 200));
    let mut remaining = Vec::new();
    for i in 0..6 {
        let res = h
            .post("/v1/responses", body.clone())
            .header(CACHE, "on")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "hit {i}: {:?}", res.text().await);
        assert_eq!(header(&res, CACHE).as_deref(), Some("hit"));
        remaining.push(
            header(&res, "x-ratelimit-remaining-tokens")
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    assert!(
        remaining.windows(2).all(|w| w[1] >= w[0]),
        "hits keep nothing reserved: {remaining:?}"
    );
}

#[tokio::test]
async fn a_stored_answer_stands_in_for_a_failing_upstream_in_a_fallback_project() {
    let h = support::start_with(|raw: &mut RawConfig| {
        raw.cache.fallback_projects = Some(vec!["shop".into()]);
    })
    .await;
    let body = unique("fallback");
    let path = "/v1/responses";
    // Stored (the project does not read the cache otherwise: no header).
    let (cache, status, answer) = call(&h, &h.key, path, &body, None).await;
    assert_eq!((cache, status), (None, 200));
    let (cache, status, _) = call(&h, &h.key, path, &body, None).await;
    assert_eq!(
        (cache, status),
        (None, 200),
        "not read while the upstream answers"
    );

    let failing = |mode: Option<&'static str>| {
        let mut req = h.post(path, body.clone()).header("x-sim-status", "503");
        if let Some(m) = mode {
            req = req.header(CACHE, m);
        }
        req.send()
    };
    let res = failing(None).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, CACHE).as_deref(), Some("stale"));
    let stale = res.bytes().await.unwrap();
    // The newest stored answer: the second call's, stored over the first's.
    assert_eq!(
        serde_json::from_slice::<Value>(&stale).unwrap()["object"],
        "response"
    );
    assert_ne!(stale, answer, "the second call replaced the entry");
    // Off: the caller gets the upstream's error.
    let res = failing(Some("off")).await.unwrap();
    assert_eq!(res.status(), 503);
    // Another request has nothing stored: the error.
    let res = h
        .post(path, unique("nothing stored"))
        .header("x-sim-status", "503")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
}

/// The test Redis: `TOLLGATE_TEST_REDIS_URL`, else the local default.
fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

#[tokio::test]
async fn two_replicas_share_entries_through_redis() {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_else(|| {
        panic!(
            "the Redis test cannot run: no Redis answers at TOLLGATE_TEST_REDIS_URL \
             (or redis://127.0.0.1:6379); start one (.ci/run does)"
        )
    });
    let prefix = format!(
        "tollgate-test:cache:{}:{}:",
        support::now_ms(),
        std::process::id()
    );
    let config = |raw: &mut RawConfig| {
        raw.redis.url = Some(url.clone());
        raw.redis.key_prefix = Some(prefix.clone());
        raw.redis.timeout_ms = Some(1_000);
    };
    let a = support::start_with(config).await;
    let b = support::start_with(config).await;
    let body = unique("replicas");
    let path = "/v1/responses";
    let (cache, _, stored) = call(&a, &a.key, path, &body, Some("on")).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    // The entry reaches Redis after the answer (sent without waiting).
    let pattern = format!("{prefix}cache:*");
    let written = eventually(Duration::from_secs(5), || {
        let mut conn = conn.clone();
        let pattern = pattern.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.len() == 1
        }
    })
    .await;
    assert!(written.is_some(), "no cache entry in Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 300_000, "{ttl}");
    // b's store and key are its own, the project name is the same: b serves a's answer.
    let (cache, status, served) = call(&b, &b.key, path, &body, Some("on")).await;
    assert_eq!((cache.as_deref(), status), (Some("hit"), 200));
    assert_eq!(served, stored);
    assert_eq!(upstream_calls(&a, path).await, 1);
    assert_eq!(
        upstream_calls(&b, path).await,
        0,
        "b never called its upstream"
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_redis_leaves_the_cache_in_memory() {
    // A port nothing listens on: the gateway starts with Redis in fallback.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", closed.local_addr().unwrap());
    drop(closed);
    let h = support::start_with(|raw: &mut RawConfig| {
        raw.redis.url = Some(url);
    })
    .await;
    let body = unique("redis down");
    let path = "/v1/responses";
    let miss = call(&h, &h.key, path, &body, Some("on")).await;
    let hit = call(&h, &h.key, path, &body, Some("on")).await;
    assert_eq!(
        (miss.0.as_deref(), miss.1, hit.0.as_deref(), hit.1),
        (Some("miss"), 200, Some("hit"), 200)
    );
    assert_eq!(miss.2, hit.2);
    assert_eq!(upstream_calls(&h, path).await, 1);
}
