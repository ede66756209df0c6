//! Fallback chains, circuit breakers and offline answers (issue 6 §4), against two
//! simulators as two upstreams: `primary` (the harness's own) and `backup` (a second
//! simulator with its own key, read through a `file:` reference).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, sim_calls, sim_clear_faults, sim_fault, spawn_sim};
use tollgate_gateway::config::RawConfig;
use tollgate_gateway::fallback_config::{RawNamedUpstream, RawTarget};
use tollgate_gateway::Config;
use tollgate_simulator::server::SimHandle;

const BACKUP_KEY: &str = "sk-sim-backup-key";

/// A backup simulator and the file holding its key.
struct Backup {
    sim: SimHandle,
    _dir: tempfile::TempDir,
    key_ref: String,
}

async fn backup() -> Backup {
    let sim = spawn_sim(BACKUP_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.key");
    std::fs::write(&path, format!("{BACKUP_KEY}\n")).unwrap();
    Backup {
        sim,
        key_ref: format!("file:{}", path.display()),
        _dir: dir,
    }
}

fn target(model: Option<&str>, upstream: Option<&str>) -> RawTarget {
    RawTarget {
        model: model.map(str::to_owned),
        upstream: upstream.map(str::to_owned),
    }
}

/// Adds `backup` as an upstream and `model = [backup]` as a chain; no retries.
fn with_backup(raw: &mut RawConfig, b: &Backup, model: &str) {
    raw.upstream.max_retries = Some(0);
    raw.upstreams.push(RawNamedUpstream {
        name: Some("backup".into()),
        url: Some(b.sim.base_url()),
        api_key: Some(b.key_ref.clone()),
        ..RawNamedUpstream::default()
    });
    raw.fallbacks
        .insert(model.into(), vec![target(None, Some("backup"))]);
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
}

/// Sets the project's rate limit for one model.
async fn model_rule(h: &support::Harness, model: &str, rpm: Option<u64>, tpm: Option<u64>) {
    let scope = tollgate_store::LimitScope {
        project: "shop".into(),
        env: None,
        key_id: None,
        model: Some(model.into()),
    };
    let actor = tollgate_store::Actor::system();
    h.store
        .set_rate_limit(&scope, rpm, tpm, support::now_ms(), &actor)
        .await
        .unwrap();
}

fn served_by(res: &reqwest::Response) -> String {
    res.headers()
        .get("x-tollgate-served-by")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_503_falls_back_to_the_backup_upstream_which_says_so_and_records_it() {
    let b = backup().await;
    let mut h = support::start_with(|raw| with_backup(raw, &b, "gpt-4o-mini")).await;
    sim_fault(&h.sim, json!({"count": 1, "status": 503})).await;

    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "backup/gpt-4o-mini");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!((sim_calls(&h.sim), sim_calls(&b.sim)), (1, 1));
    // The backup got its own key, not the primary's.
    let got = b.sim.state().requests();
    assert_eq!(got[0].status, Some(200));

    // A healthy primary serves itself, and says so too.
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&res), "primary/gpt-4o-mini");

    let recs = h.stop_and_records().await;
    assert_eq!(recs.len(), 2);
    let fell = &recs[0];
    assert_eq!(fell.status, 200);
    assert_eq!(fell.served_by.as_deref(), Some("backup/gpt-4o-mini"));
    assert_eq!(fell.fallbacks, 1);
    assert_eq!(fell.model_requested.as_deref(), Some("gpt-4o-mini"));
    assert!(fell.total_tokens > 0);
    assert!(fell.cost_usd_nanos.unwrap() > 0);
    assert_eq!(recs[1].served_by.as_deref(), Some("primary/gpt-4o-mini"));
    assert_eq!(recs[1].fallbacks, 0);
}

#[tokio::test]
async fn a_chain_on_an_alias_may_change_the_model_and_cost_follows_the_model_that_served() {
    let mut h = support::start_with(|raw| {
        raw.upstream.max_retries = Some(0);
        // The alias as the caller named it wins over the model it resolves to.
        raw.fallbacks
            .insert("fast".into(), vec![target(Some("gpt-4o"), None)]);
        raw.fallbacks
            .insert("gpt-4o-mini".into(), vec![target(Some("gpt-4.1"), None)]);
    })
    .await;
    sim_fault(&h.sim, json!({"count": 1, "status": 500})).await;
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "fast", "input": "hello there"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "primary/gpt-4o");
    assert_eq!(res.headers()["x-tollgate-model"], "gpt-4o");
    let got = h.sim.state().requests();
    let bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(bodies[0]["model"], "gpt-4o-mini");
    assert_eq!(bodies[1]["model"], "gpt-4o");
    assert_eq!(bodies[1]["input"], "hello there");

    let recs = h.stop_and_records().await;
    let r = &recs[0];
    assert_eq!(r.model_requested.as_deref(), Some("fast"));
    assert!(r.model_served.as_deref().unwrap().starts_with("gpt-4o"));
    assert!(!r
        .model_served
        .as_deref()
        .unwrap()
        .starts_with("gpt-4o-mini"));
    let catalog = tollgate_gateway::catalog::Catalog::builtin();
    let tokens = tollgate_gateway::catalog::BilledTokens {
        input: r.input_tokens,
        cached: r.cached_tokens,
        output: r.output_tokens,
    };
    let gpt4o = catalog.cost("gpt-4o", tokens).unwrap().usd_nanos();
    assert_eq!(
        r.cost_usd_nanos,
        Some(gpt4o),
        "priced as gpt-4o, not gpt-4o-mini"
    );
}

#[tokio::test]
async fn a_fallback_to_another_model_is_admitted_against_that_models_own_limits() {
    let mut h = support::start_with(|raw| {
        raw.upstream.max_retries = Some(0);
        raw.fallbacks
            .insert("gpt-4o".into(), vec![target(Some("gpt-4o-mini"), None)]);
    })
    .await;
    // gpt-4o-mini: 2 requests a minute for the project.
    model_rule(&h, "gpt-4o-mini", Some(2), None).await;
    // Applied once a call to gpt-4o-mini shows it (that call takes one of the two).
    let applied = eventually(Duration::from_secs(5), || async {
        let res = h
            .post("/v1/chat/completions", chat("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        res.headers()
            .get("x-ratelimit-limit-requests")
            .is_some_and(|v| v == "2")
    })
    .await;
    assert!(applied.is_some(), "the rule was never applied");
    let calls = sim_calls(&h.sim);

    // gpt-4o fails; its fallback takes gpt-4o-mini's last request.
    sim_fault(&h.sim, json!({"count": 1, "status": 503})).await;
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "primary/gpt-4o-mini");
    // Again: gpt-4o-mini has no room, so the fallback is skipped and the failure relayed.
    sim_fault(&h.sim, json!({"count": 1, "status": 503})).await;
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        sim_calls(&h.sim),
        calls + 3,
        "gpt-4o-mini was not called again"
    );
    // A direct call to gpt-4o-mini sees the request the fallback took.
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let recs = h.stop_and_records().await;
    let asked: Vec<_> = recs
        .iter()
        .filter(|r| r.model_requested.as_deref() == Some("gpt-4o"))
        .map(|r| (r.status, r.served_by.as_deref()))
        .collect();
    assert_eq!(
        asked,
        [
            (200, Some("primary/gpt-4o-mini")),
            (503, Some("primary/gpt-4o"))
        ]
    );
}

#[tokio::test]
async fn the_requested_models_token_limit_is_not_charged_for_what_another_model_served() {
    let mut h = support::start_with(|raw| {
        raw.upstream.max_retries = Some(0);
        raw.fallbacks
            .insert("gpt-4o".into(), vec![target(Some("gpt-4o-mini"), None)]);
    })
    .await;
    // gpt-4o: 60 tokens a minute, so a minute's refill is one token a second.
    model_rule(&h, "gpt-4o", None, Some(60)).await;
    let body = json!({"model": "gpt-4o", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]});
    let remaining = |res: &reqwest::Response| -> i64 {
        res.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // A: the first call the rule governs, served by gpt-4o itself.
    let first = std::cell::RefCell::new(None);
    let applied = eventually(Duration::from_secs(5), || async {
        let res = h
            .post("/v1/chat/completions", body.clone())
            .send()
            .await
            .unwrap();
        let governed = res
            .headers()
            .get("x-ratelimit-limit-tokens")
            .is_some_and(|v| v == "60");
        if governed {
            let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
            *first.borrow_mut() = Some((id, remaining(&res)));
        }
        governed
    })
    .await;
    assert!(applied.is_some(), "the rule was never applied");
    let (first_id, first_remaining) = first.into_inner().unwrap();
    // B: gpt-4o fails and gpt-4o-mini serves the call.
    sim_fault(&h.sim, json!({"count": 1, "status": 503})).await;
    let res = h
        .post("/v1/chat/completions", body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&res), "primary/gpt-4o-mini");
    let fell_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    drop(res);
    // C: the same call again. gpt-4o's bucket holds A's usage, not B's.
    let res = h
        .post("/v1/chat/completions", body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let third_remaining = remaining(&res);
    let recs = h.stop_and_records().await;
    let used = |id: &str| {
        let r = recs.iter().find(|r| r.request_id == id).unwrap();
        i64::try_from(r.total_tokens).unwrap()
    };
    let (a, b) = (used(&first_id), used(&fell_id));
    assert!(b > 0);
    // A and C reserve the same estimate; the bucket refills at most a token or two
    // meanwhile, which only narrows the gap.
    let gap = first_remaining - third_remaining;
    assert!(
        gap <= a,
        "gpt-4o was charged {gap} tokens; it served {a} (gpt-4o-mini served {b})"
    );
}

#[tokio::test]
async fn a_429_falls_back_after_the_clients_own_retries_and_so_does_insufficient_quota() {
    let b = backup().await;
    let mut h = support::start_with(|raw| {
        with_backup(raw, &b, "gpt-4o-mini");
        raw.upstream.max_retries = Some(1);
    })
    .await;
    sim_fault(
        &h.sim,
        json!({"count": 2, "status": 429, "retry_after_ms": 5}),
    )
    .await;
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "backup/gpt-4o-mini");
    assert_eq!(sim_calls(&h.sim), 2, "the primary was retried first");

    sim_fault(
        &h.sim,
        json!({"count": 2, "status": 429, "error_code": "insufficient_quota"}),
    )
    .await;
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "backup/gpt-4o-mini");
    let recs = h.stop_and_records().await;
    assert!(recs.iter().all(|r| r.fallbacks == 1 && r.status == 200));
}

#[tokio::test]
async fn a_timeout_falls_back() {
    let b = backup().await;
    let mut h = support::start_with(|raw| {
        with_backup(raw, &b, "gpt-4o-mini");
        raw.upstream.timeout_ms = Some(200);
    })
    .await;
    // The backup inherits the primary's 200 ms timeout, and answers in time.
    sim_fault(&h.sim, json!({"count": 1, "latency_ms": 5_000})).await;
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "backup/gpt-4o-mini");
    let recs = h.stop_and_records().await;
    assert_eq!(recs[0].served_by.as_deref(), Some("backup/gpt-4o-mini"));
}

#[tokio::test]
async fn a_refused_connection_falls_back_and_a_streamed_answer_comes_whole_from_the_backup() {
    let b = backup().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut h = support::start_with(|raw| {
        with_backup(raw, &b, "gpt-4o-mini");
        raw.upstream.url = Some(format!("http://{closed}/v1"));
    })
    .await;
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "backup/gpt-4o-mini");

    let mut body = chat("gpt-4o-mini");
    body["stream"] = json!(true);
    let res = h.post("/v1/chat/completions", body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "backup/gpt-4o-mini");
    let text = res.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let recs = h.stop_and_records().await;
    assert_eq!(recs.len(), 2);
    assert!(recs[1].streamed);
    assert!(recs[1].total_tokens > 0);
    assert_eq!(recs[1].served_by.as_deref(), Some("backup/gpt-4o-mini"));
}

#[tokio::test]
async fn a_400_is_the_requests_fault_and_never_falls_back() {
    let b = backup().await;
    let mut h = support::start_with(|raw| with_backup(raw, &b, "gpt-4o-mini")).await;
    sim_fault(&h.sim, json!({"count": 1, "status": 400})).await;
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(served_by(&res), "primary/gpt-4o-mini");
    assert_eq!(sim_calls(&b.sim), 0);
    let recs = h.stop_and_records().await;
    assert_eq!(recs[0].fallbacks, 0);
    assert_eq!(recs[0].status, 400);
}

#[tokio::test]
async fn the_breaker_opens_after_n_failures_skips_the_upstream_and_a_probe_closes_it() {
    let b = backup().await;
    let mut h = support::start_with(|raw| {
        with_backup(raw, &b, "gpt-4o-mini");
        raw.circuit_breaker.failures = Some(2);
        raw.circuit_breaker.cooldown_ms = Some(300);
    })
    .await;
    sim_fault(&h.sim, json!({"count": 1000, "status": 503})).await;
    for _ in 0..2 {
        let res = h
            .post("/v1/chat/completions", chat("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        assert_eq!(served_by(&res), "backup/gpt-4o-mini");
    }
    assert_eq!(sim_calls(&h.sim), 2);
    let open = "tollgate_upstream_breaker_open{upstream=\"primary\"}";
    assert_eq!(h.metric(open).await, Some(1));

    // Open: the primary is skipped without a call.
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "backup/gpt-4o-mini");
    assert_eq!(sim_calls(&h.sim), 2, "no call while the circuit is open");

    // The primary recovers: after the cool-down one probe goes through and closes it.
    sim_clear_faults(&h.sim).await;
    let closed = eventually(Duration::from_secs(10), || async {
        let res = h
            .post("/v1/chat/completions", chat("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        served_by(&res) == "primary/gpt-4o-mini"
    })
    .await;
    assert!(closed.is_some(), "the circuit never closed");
    assert_eq!(h.metric(open).await, Some(0));
    let closes =
        "tollgate_upstream_breaker_transitions_total{upstream=\"primary\",state=\"closed\"}";
    assert_eq!(h.metric(closes).await, Some(1));
    assert_eq!(sim_calls(&h.sim), 3, "exactly one probe");
    let recs = h.stop_and_records().await;
    assert_eq!(recs[2].fallbacks, 1, "a skipped target counts");
}

#[tokio::test]
async fn when_every_target_fails_the_last_error_stands_and_when_all_are_open_a_503() {
    let b = backup().await;
    let mut h = support::start_with(|raw| {
        with_backup(raw, &b, "gpt-4o-mini");
        raw.circuit_breaker.failures = Some(1);
        raw.circuit_breaker.cooldown_ms = Some(60_000);
        raw.cache.projects = Some(vec!["shop".into()]);
    })
    .await;
    sim_fault(&h.sim, json!({"count": 1, "status": 500})).await;
    sim_fault(&b.sim, json!({"count": 1, "status": 503})).await;
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(served_by(&res), "backup/gpt-4o-mini");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "server_is_overloaded", "{body}");

    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    // A refusal after the cache stage says what the cache did, as any answer does.
    assert_eq!(res.headers()["x-tollgate-cache"], "miss");
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert_eq!(body["error"]["type"], "service_unavailable_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("circuit breaker is open"), "{message}");
    assert!(message.contains("primary, backup"), "{message}");
    assert_eq!((sim_calls(&h.sim), sim_calls(&b.sim)), (1, 1));

    let recs = h.stop_and_records().await;
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].served_by.as_deref(), Some("backup/gpt-4o-mini"));
    assert_eq!(recs[0].fallbacks, 1);
    // Every upstream attempt counts, the failed primary's too.
    assert_eq!(recs[0].attempts, 2, "{:?}", recs[0]);
    assert_eq!(recs[1].error_code.as_deref(), Some("upstream_unavailable"));
    assert_eq!(recs[1].served_by, None);
    assert_eq!(recs[1].fallbacks, 2);
}

#[tokio::test]
async fn a_call_whose_fallbacks_its_project_may_not_use_is_never_refused_by_the_breaker() {
    let mut h = support::start_with(|raw| {
        raw.upstream.max_retries = Some(0);
        raw.circuit_breaker.failures = Some(1);
        raw.circuit_breaker.cooldown_ms = Some(60_000);
        raw.fallbacks
            .insert("gpt-4o".into(), vec![target(Some("gpt-4o-mini"), None)]);
    })
    .await;
    // The project may not use the chain's only other model.
    h.store
        .set_model_access(
            "shop",
            None,
            tollgate_store::AccessKind::Deny,
            &["gpt-4o-mini".to_owned()],
            support::now_ms(),
            &tollgate_store::Actor::system(),
        )
        .await
        .unwrap();
    let denied = eventually(Duration::from_secs(5), || async {
        let res = h
            .post("/v1/chat/completions", chat("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        res.status() == 404
    })
    .await;
    assert!(denied.is_some(), "the deny list was never applied");
    // gpt-4o fails once: the circuit opens.
    sim_fault(&h.sim, json!({"count": 1, "status": 500})).await;
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    // With no alternative left, the next call still goes to the upstream.
    let calls = sim_calls(&h.sim);
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(sim_calls(&h.sim), calls + 1);
    h.stop_and_records().await;
}

#[tokio::test]
async fn a_project_credential_that_cannot_be_read_passes_the_call_to_another_upstream() {
    let b = backup().await;
    let mut h = support::start_with(|raw| with_backup(raw, &b, "gpt-4o-mini")).await;
    // The key's environment names a credential this server cannot read.
    h.store
        .set_env_credential(
            "shop",
            "dev",
            Some("env:TOLLGATE_TEST_SURELY_UNSET_CREDENTIAL"),
            support::now_ms(),
            &tollgate_store::Actor::system(),
        )
        .await
        .unwrap();
    let served = eventually(Duration::from_secs(5), || async {
        let res = h
            .post("/v1/chat/completions", chat("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        served_by(&res) == "backup/gpt-4o-mini" && res.status() == 200
    })
    .await;
    assert!(
        served.is_some(),
        "the backup, with its own key, did not serve"
    );
    // Without an alternative the call says why it could not be sent.
    let res = h
        .post("/v1/chat/completions", chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "provider_credential_unavailable", "{v}");
    h.stop_and_records().await;
}

fn sse_data(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn an_offline_answer_when_every_target_failed_plain_and_streamed() {
    let mut h = support::start_with(|raw| {
        raw.upstream.max_retries = Some(0);
        raw.offline
            .projects
            .insert("shop".into(), "Sorry, {model} is offline.".into());
    })
    .await;
    sim_fault(&h.sim, json!({"count": 1000, "status": 503})).await;
    let offline = |res: &reqwest::Response| {
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-tollgate-served-by"], "offline");
        assert_eq!(res.headers()["x-tollgate-offline"], "true");
    };

    let res = h
        .post("/v1/chat/completions", chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    offline(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Sorry, gpt-4o-mini is offline."
    );
    assert_eq!(body["usage"]["total_tokens"], 0);

    let mut streamed = chat("gpt-4o-mini");
    streamed["stream"] = json!(true);
    let res = h
        .post("/v1/chat/completions", streamed)
        .send()
        .await
        .unwrap();
    offline(&res);
    let text = res.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let chunks = sse_data(&text);
    assert_eq!(
        chunks[1]["choices"][0]["delta"]["content"],
        "Sorry, gpt-4o-mini is offline."
    );
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "not asked for"
    );

    let res = h
        .post("/v1/responses", json!({"model": "fast", "input": "hi"}))
        .send()
        .await
        .unwrap();
    offline(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "Sorry, fast is offline."
    );

    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi", "stream": true}),
        )
        .send()
        .await
        .unwrap();
    offline(&res);
    let events = sse_data(&res.text().await.unwrap());
    assert_eq!(events.first().unwrap()["type"], "response.created");
    assert_eq!(events.last().unwrap()["type"], "response.completed");

    // Embeddings have no offline answer: the upstream's error stands.
    let res = h
        .post(
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": "hi"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("x-tollgate-offline").is_none());

    let recs = h.stop_and_records().await;
    assert_eq!(recs.len(), 5);
    for r in &recs[..4] {
        assert_eq!(r.served_by.as_deref(), Some("offline"));
        assert_eq!((r.status, r.total_tokens), (200, 0));
        assert_eq!(r.cost_usd_nanos, Some(0));
    }
    assert!(recs[1].streamed && recs[3].streamed);
    assert_eq!(recs[4].status, 503);
}

#[test]
fn fallback_configuration_is_checked_with_dotted_paths() {
    let ok = Config::from_toml_str(
        r#"
        [upstream]
        name = "openai"
        [[upstreams]]
        name = "azure"
        url = "https://example.test/v1"
        api_key = "env:AZURE_KEY"
        timeout_ms = 5000
        [fallbacks]
        "gpt-4o" = [{ upstream = "azure" }, { model = "gpt-4o-mini" }]
        [circuit_breaker]
        failures = 3
        cooldown_ms = 10000
        [offline]
        answer = "Down for now."
        [offline.projects]
        shop = "Sorry, {model} is offline."
        "#,
    )
    .unwrap();
    let r = &ok.resilience;
    assert_eq!(ok.upstream.name, "openai");
    assert_eq!(r.upstreams[0].config.timeout, Duration::from_millis(5000));
    assert_eq!(r.upstreams[0].config.max_retries, ok.upstream.max_retries);
    assert_eq!(r.fallbacks["gpt-4o"].len(), 2);
    assert_eq!(r.breaker.failures, 3);
    assert_eq!(r.offline.template("blog"), Some("Down for now."));
    let d = Config::from_toml_str("").unwrap().resilience;
    assert_eq!(d.breaker.failures, 5);
    assert_eq!(d.breaker.cooldown, Duration::from_secs(30));

    let e = Config::from_toml_str(
        r#"
        [[upstreams]]
        name = "primary"
        url = "ftp://x"
        api_key = "sk-pasted-literal"
        [[upstreams]]
        name = "offline"
        url = "https://x/v1"
        [fallbacks]
        "gpt-4o" = [{ upstream = "nowhere" }, {}]
        [circuit_breaker]
        failures = 0
        [offline]
        answer = " "
        "#,
    )
    .unwrap_err();
    let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "upstreams[0].name",
            "upstreams[0].url",
            "upstreams[0].api_key",
            "upstreams[1].name",
            "upstreams[1].api_key",
            "fallbacks.gpt-4o[0].upstream",
            "fallbacks.gpt-4o[1]",
            "circuit_breaker.failures",
            "offline.answer",
        ],
        "{e}"
    );
    assert!(!e.to_string().contains("sk-pasted"), "{e}");
    let e = Config::from_toml_str("[fallbacks]\n\"gpt-4o\" = [{ modle = \"x\" }]\n").unwrap_err();
    assert_eq!(e.0[0].path, "fallbacks.gpt-4o[0].modle", "{e}");
}

#[tokio::test]
async fn a_spoiled_structured_answer_from_a_fallback_is_asked_again_of_that_fallback() {
    let b = backup().await;
    let mut h = support::start_with(|raw| {
        with_backup(raw, &b, "gpt-4o-mini");
        raw.answers.validate_projects = Some(vec!["shop".into()]);
    })
    .await;
    sim_fault(&h.sim, json!({"count": 1, "status": 503})).await;
    sim_fault(&b.sim, json!({"count": 1, "invalid_output": true})).await;
    let body = json!({
        "model": "gpt-4o-mini",
        "input": "Who wrote the first program?",
        "text": {"format": {"type": "json_schema", "name": "person", "strict": true, "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
            "additionalProperties": false
        }}}
    });
    let res = h.post("/v1/responses", body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(served_by(&res), "backup/gpt-4o-mini");
    // The primary failed once; the backup gave the spoiled answer and then the good one.
    assert_eq!((sim_calls(&h.sim), sim_calls(&b.sim)), (1, 2));
    let recs = h.stop_and_records().await;
    assert_eq!(recs[0].served_by.as_deref(), Some("backup/gpt-4o-mini"));
    // Every upstream attempt: the primary's, and the backup's two.
    assert_eq!(recs[0].attempts, 3);
}

/// An upstream that answers every request 503 with a JSON body, keeping each
/// connection open for the next request, and counts the connections it accepted.
async fn overloaded_upstream() -> (std::net::SocketAddr, std::sync::Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let body = r#"{"error":{"message":"The server is overloaded.","type":"server_error","param":null,"code":null}}"#;
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One whole request (head and Content-Length body), then the answer.
                    let whole = buf
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .and_then(|end| {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                            (buf.len() >= end + 4 + length).then_some(end + 4 + length)
                        });
                    if let Some(n) = whole {
                        buf.drain(..n);
                        if sock.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_failed_targets_connection_is_kept_for_the_next_call_not_closed() {
    let b = backup().await;
    let (overloaded, accepted) = overloaded_upstream().await;
    let mut h = support::start_with(|raw| {
        with_backup(raw, &b, "gpt-4o-mini");
        raw.upstream.url = Some(format!("http://{overloaded}/v1"));
        raw.circuit_breaker.failures = Some(100);
    })
    .await;
    let calls = 4;
    for _ in 0..calls {
        let res = h
            .post("/v1/chat/completions", chat("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(served_by(&res), "backup/gpt-4o-mini");
    }
    // The client reads an error answer whole (to decide on retries) before the chain
    // moves on, so the primary's connection goes back to the pool while the backup
    // serves: one per I/O thread at most, not one per call (an answer dropped unread
    // would close its connection).
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&opened),
        "{opened} connections for {calls} calls"
    );
    let recs = h.stop_and_records().await;
    assert_eq!(recs.len(), calls);
    assert!(recs.iter().all(|r| r.fallbacks == 1 && r.attempts == 2));
}
