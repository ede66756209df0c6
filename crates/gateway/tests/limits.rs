//! Rate limits end to end against the simulator: rule matching, refusals in OpenAI's
//! shape with the exact wait, the six headers on plain, streamed and refused answers,
//! and TPM reservations settled to the real usage (plain, streamed, failed); output
//! caps clamping, refusing, defaulting and bounding the temperature.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{eventually, Harness};
use tollgate_store::{Actor, LimitScope};

fn scope(env: Option<&str>, key: Option<&str>, model: Option<&str>) -> LimitScope {
    LimitScope {
        project: "shop".into(),
        env: env.map(Into::into),
        key_id: key.map(Into::into),
        model: model.map(Into::into),
    }
}

async fn set(h: &Harness, s: &LimitScope, rpm: Option<u64>, tpm: Option<u64>) {
    h.store
        .set_rate_limit(s, rpm, tpm, support::now_ms(), &Actor::system())
        .await
        .unwrap();
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn num(res: &reqwest::Response, name: &str) -> u64 {
    header(res, name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

/// A cheap call, to read the headers the rules give.
async fn embed(h: &Harness) -> reqwest::Response {
    h.post(
        "/v1/embeddings",
        json!({"model": "text-embedding-3-small", "input": "x"}),
    )
    .send()
    .await
    .unwrap()
}

/// Waits until the server applies a rule: a cheap model call shows its limit.
async fn until_applied(h: &Harness, model: &str, header_name: &str, limit: u64) {
    let applied = eventually(Duration::from_secs(5), || async {
        let res = h
            .post("/v1/embeddings", json!({"model": model, "input": "x"}))
            .send()
            .await
            .unwrap();
        header(&res, header_name).as_deref() == Some(limit.to_string().as_str())
    })
    .await;
    assert!(applied.is_some(), "rule not applied within 5 s");
}

#[tokio::test]
async fn rpm_rules_match_by_scope_and_refuse_in_openai_shape() {
    let h = support::start().await;
    set(&h, &scope(None, None, None), Some(1_000), None).await;
    until_applied(
        &h,
        "text-embedding-3-small",
        "x-ratelimit-limit-requests",
        1_000,
    )
    .await;
    // A narrower rule: the mini model on the dev env, one request a minute.
    set(
        &h,
        &scope(Some("dev"), None, Some("gpt-4o-mini")),
        Some(1),
        None,
    )
    .await;
    until_applied(&h, "gpt-4o-mini", "x-ratelimit-limit-requests", 1).await;
    let upstream_before = h.sim_requests().await.len();

    let body = json!({"model": "gpt-4o-mini", "input": "hello"});
    let res = h.post("/v1/responses", body.clone()).send().await.unwrap();
    assert_eq!(res.status(), 429, "the probe took the only request");
    assert_eq!(header(&res, "x-should-retry").as_deref(), Some("true"));
    let wait_ms: f64 = header(&res, "retry-after-ms").unwrap().parse().unwrap();
    assert!(wait_ms > 55_000.0 && wait_ms <= 60_000.0, "{wait_ms}");
    let secs: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
    assert_eq!(secs, (wait_ms / 1000.0).ceil() as u64);
    assert_eq!(
        num(&res, "x-ratelimit-limit-requests"),
        1,
        "the tightest rule"
    );
    assert_eq!(num(&res, "x-ratelimit-remaining-requests"), 0);
    let reset = header(&res, "x-ratelimit-reset-requests").unwrap();
    let reset = tollgate_wire::ratelimit::parse_go_duration(&reset).unwrap();
    assert!(reset > Duration::from_secs(55) && reset <= Duration::from_secs(60));
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "requests");
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    assert!(err["error"]["param"].is_null());
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("requests per min (RPM)"), "{msg}");
    assert!(
        msg.contains("project shop, env dev, model gpt-4o-mini"),
        "{msg}"
    );
    assert!(msg.contains("Limit 1, Used 1, Requested 1"), "{msg}");
    assert!(msg.contains("Please try again in"), "{msg}");
    assert_eq!(
        h.sim_requests().await.len(),
        upstream_before,
        "a refused call never reaches the upstream"
    );

    // Another model is governed by the project rule only.
    let started = std::time::Instant::now();
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "hello"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(num(&res, "x-ratelimit-limit-requests"), 1_000);
    let left = num(&res, "x-ratelimit-remaining-requests");
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "hello"}),
        )
        .send()
        .await
        .unwrap();
    // The second call took one request; the bucket (1000 a minute) refilled one per
    // 60 ms between the two admissions, which both fall inside `started.elapsed()`.
    let refilled = started.elapsed().as_millis().div_ceil(60) as u64;
    let left2 = num(&res, "x-ratelimit-remaining-requests");
    assert!(
        left2 < left + refilled,
        "the second call took a request: {left} then {left2}, {refilled} refilled"
    );

    // Clearing the narrow rule frees the mini model without a restart.
    assert!(h
        .store
        .clear_rate_limit(
            &scope(Some("dev"), None, Some("gpt-4o-mini")),
            support::now_ms(),
            &Actor::system()
        )
        .await
        .unwrap());
    let freed = eventually(Duration::from_secs(5), || async {
        h.post("/v1/responses", body.clone())
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    assert!(freed.is_some());

    // Refusals are recorded like every call (the writer is asynchronous: poll).
    let recorded = eventually(Duration::from_secs(5), || async {
        let records = h.store.usage_records(0).await.unwrap();
        let refused: Vec<_> = records.iter().filter(|r| r.status == 429).collect();
        !refused.is_empty()
            && refused
                .iter()
                .all(|r| r.error_code.as_deref() == Some("rate_limit_exceeded"))
    })
    .await;
    assert!(recorded.is_some(), "the refusal was not recorded");
}

/// One call and its view of the TPM bucket: remaining after its reservation and the
/// real usage it reported.
struct Seen {
    remaining: u64,
    used: u64,
    at: Instant,
}

async fn plain(h: &Harness, body: &Value) -> Seen {
    let res = h.post("/v1/responses", body.clone()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let remaining = num(&res, "x-ratelimit-remaining-tokens");
    let v: Value = res.json().await.unwrap();
    Seen {
        remaining,
        used: v["usage"]["total_tokens"].as_u64().unwrap(),
        at: Instant::now(),
    }
}

async fn streamed(h: &Harness, body: &Value) -> Seen {
    let res = h
        .post("/v1/chat/completions", body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        num(&res, "x-ratelimit-limit-tokens"),
        TPM,
        "headers on streams"
    );
    let remaining = num(&res, "x-ratelimit-remaining-tokens");
    let text = res.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    // The caller asked for the usage chunk: the real usage, as the caller sees it.
    let usage: Value = text
        .split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("a usage chunk");
    Seen {
        remaining,
        used: usage["usage"]["total_tokens"].as_u64().unwrap(),
        at: Instant::now(),
    }
}

/// The TPM limit of these tests: it refills two tokens a second, so over the short gap
/// between two calls the bucket is exact to the refill of the time elapsed.
const TPM: u64 = 120;

/// The second call sees the first's reservation replaced by its real usage.
fn assert_settled(first: &Seen, second: &Seen, estimate: u64, started: Instant) {
    let expected = TPM - first.used - estimate;
    let slack = 2 * (second.at.duration_since(started).as_secs() + 1);
    assert!(
        second.remaining >= expected && second.remaining <= expected + slack,
        "remaining {} expected {expected} (+{slack} refill); used {} estimate {estimate}",
        second.remaining,
        first.used
    );
}

#[tokio::test]
async fn tpm_reservations_settle_to_the_real_usage_of_plain_calls() {
    let h = support::start().await;
    set(&h, &scope(None, None, Some("gpt-4o")), None, Some(TPM)).await;
    // The probe uses another model, so the gpt-4o bucket starts full.
    set(
        &h,
        &scope(None, None, Some("text-embedding-3-small")),
        None,
        Some(10_000),
    )
    .await;
    until_applied(
        &h,
        "text-embedding-3-small",
        "x-ratelimit-limit-tokens",
        10_000,
    )
    .await;

    let body = json!({"model": "gpt-4o", "input": "Say hi", "max_output_tokens": 40});
    let started = Instant::now();
    let first = plain(&h, &body).await;
    let estimate = TPM - first.remaining;
    assert!(estimate > 40, "input plus max_output_tokens: {estimate}");
    let second = plain(&h, &body).await;
    assert_settled(&first, &second, estimate, started);

    // A failed call gives its reservation back: the next one sees only its own.
    let fresh = support::start().await;
    set(&fresh, &scope(None, None, Some("gpt-4o")), None, Some(TPM)).await;
    set(
        &fresh,
        &scope(None, None, Some("text-embedding-3-small")),
        None,
        Some(10_000),
    )
    .await;
    until_applied(
        &fresh,
        "text-embedding-3-small",
        "x-ratelimit-limit-tokens",
        10_000,
    )
    .await;
    let res = fresh
        .post("/v1/responses", body.clone())
        .header("x-sim-status", "400")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), TPM - estimate);
    let err: Value = res.json().await.unwrap();
    assert_eq!(
        err["error"]["type"], "invalid_request_error",
        "the upstream's error"
    );
    let after = plain(&fresh, &body).await;
    assert_eq!(
        after.remaining,
        TPM - estimate,
        "the failed call's tokens came back"
    );
}

#[tokio::test]
async fn tpm_reservations_settle_to_the_real_usage_of_streams() {
    let h = support::start().await;
    set(&h, &scope(None, None, Some("gpt-4o-mini")), None, Some(TPM)).await;
    set(
        &h,
        &scope(None, None, Some("text-embedding-3-small")),
        None,
        Some(10_000),
    )
    .await;
    until_applied(
        &h,
        "text-embedding-3-small",
        "x-ratelimit-limit-tokens",
        10_000,
    )
    .await;

    let body = json!({
        "model": "gpt-4o-mini", "stream": true, "max_completion_tokens": 40,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Say hi"}]
    });
    let started = Instant::now();
    let first = streamed(&h, &body).await;
    let estimate = TPM - first.remaining;
    assert!(
        estimate > 40,
        "input plus max_completion_tokens: {estimate}"
    );
    let second = streamed(&h, &body).await;
    assert_settled(&first, &second, estimate, started);
}

#[tokio::test]
async fn a_request_larger_than_a_tpm_limit_is_refused_for_good() {
    let h = support::start().await;
    set(&h, &scope(None, None, None), None, Some(100)).await;
    until_applied(
        &h,
        "text-embedding-3-small",
        "x-ratelimit-limit-tokens",
        100,
    )
    .await;
    let before = h.sim_requests().await.len();
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "hello", "max_output_tokens": 500}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "x-should-retry").as_deref(), Some("false"));
    assert!(header(&res, "retry-after").is_none());
    assert!(header(&res, "retry-after-ms").is_none());
    assert_eq!(num(&res, "x-ratelimit-limit-tokens"), 100);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "tokens");
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("Request too large"), "{msg}");
    assert!(msg.contains("Limit 100"), "{msg}");
    assert!(msg.contains("Retrying will not help"), "{msg}");
    assert_eq!(h.sim_requests().await.len(), before);
    // Without a rule, the upstream's headers are relayed untouched.
    assert!(h
        .store
        .clear_rate_limit(
            &scope(None, None, None),
            support::now_ms(),
            &Actor::system()
        )
        .await
        .unwrap());
    let gone = eventually(Duration::from_secs(5), || async {
        let res = embed(&h).await;
        header(&res, "x-ratelimit-limit-tokens").as_deref() != Some("100")
    })
    .await;
    assert!(gone.is_some());
}

/// What the simulator received for the last request on `path`.
async fn last_body(h: &Harness, path: &str) -> String {
    let reqs = h.sim_requests().await;
    let r = reqs.iter().rev().find(|r| r["path"] == path).unwrap();
    r["raw_body"]
        .as_str()
        .map_or_else(|| r["body"].to_string(), str::to_owned)
}

#[tokio::test]
async fn output_caps_clamp_refuse_default_and_bound_the_temperature() {
    use tollgate_store::{OutputCap, OverCap};
    let h = support::start().await;
    let clamp = OutputCap {
        max_output_tokens: Some(20),
        over: OverCap::Clamp,
        default_output_tokens: Some(8),
        temperature_min: Some(0.0),
        temperature_max: Some(1.0),
    };
    h.store
        .set_output_cap("shop", None, &clamp, support::now_ms(), &Actor::system())
        .await
        .unwrap();
    let applied = eventually(Duration::from_secs(5), || async {
        let res = h
            .post(
                "/v1/responses",
                json!({"model": "gpt-4o", "input": "hi", "temperature": 1.5}),
            )
            .send()
            .await
            .unwrap();
        res.status() == 400
    })
    .await;
    assert!(applied.is_some(), "caps not applied");
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "hi", "temperature": 1.5}),
        )
        .send()
        .await
        .unwrap();
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["param"], "temperature");

    // Above the cap: clamped, every other member as sent.
    let sent = r#"{"model":"gpt-4o","input":"Tell me a story","max_output_tokens":500,"metadata":{"a":"1.50"}}"#;
    let res = h.post_raw("/v1/responses", sent).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() <= 20);
    let got: Value = serde_json::from_str(&last_body(&h, "/v1/responses").await).unwrap();
    assert_eq!(got["max_output_tokens"], 20);
    assert_eq!(got["metadata"], json!({"a": "1.50"}));
    assert_eq!(got["input"], "Tell me a story");

    // None set: the default is added (Chat: max_completion_tokens).
    let res = h
        .post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got: Value = serde_json::from_str(&last_body(&h, "/v1/chat/completions").await).unwrap();
    assert_eq!(got["max_completion_tokens"], 8);

    // A key's caps replace the project's: this one refuses above 5.
    let refuse = OutputCap {
        max_output_tokens: Some(5),
        over: OverCap::Refuse,
        ..OutputCap::default()
    };
    h.store
        .set_output_cap(
            "shop",
            Some(&h.key_id),
            &refuse,
            support::now_ms(),
            &Actor::system(),
        )
        .await
        .unwrap();
    let body = json!({
        "model": "gpt-4o", "max_tokens": 6,
        "messages": [{"role": "user", "content": "hi"}]
    });
    let refused = eventually(Duration::from_secs(5), || async {
        h.post("/v1/chat/completions", body.clone())
            .send()
            .await
            .unwrap()
            .status()
            == 400
    })
    .await;
    assert!(refused.is_some());
    let res = h.post("/v1/chat/completions", body).send().await.unwrap();
    assert_eq!(header(&res, "x-should-retry").as_deref(), Some("false"));
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["param"], "max_tokens");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit of 5"));
}

/// A call a rule governs that is refused before admission (malformed JSON, a cap, a
/// temperature out of range) still carries the rule's six headers, and takes nothing
/// from its buckets.
#[tokio::test]
async fn refusals_before_admission_carry_the_headers_and_take_nothing() {
    use tollgate_store::{OutputCap, OverCap};
    let h = support::start().await;
    set(&h, &scope(None, None, None), Some(50), Some(100_000)).await;
    let cap = OutputCap {
        max_output_tokens: Some(20),
        over: OverCap::Refuse,
        temperature_min: Some(0.0),
        temperature_max: Some(1.0),
        ..OutputCap::default()
    };
    h.store
        .set_output_cap("shop", None, &cap, support::now_ms(), &Actor::system())
        .await
        .unwrap();
    until_applied(
        &h,
        "text-embedding-3-small",
        "x-ratelimit-limit-requests",
        50,
    )
    .await;
    let taken_before = {
        let res = embed(&h).await;
        num(&res, "x-ratelimit-remaining-requests")
    };
    let refused = [
        h.post_raw("/v1/responses", "{\"model\": ")
            .send()
            .await
            .unwrap(),
        h.post(
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "hi", "max_output_tokens": 500}),
        )
        .send()
        .await
        .unwrap(),
        h.post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "temperature": 3, "messages": []}),
        )
        .send()
        .await
        .unwrap(),
    ];
    for res in &refused {
        assert_eq!(res.status(), 400);
        assert_eq!(num(res, "x-ratelimit-limit-requests"), 50);
        assert_eq!(num(res, "x-ratelimit-limit-tokens"), 100_000);
        // Nothing taken: the one request counted is the embeddings call before.
        assert!(num(res, "x-ratelimit-remaining-requests") >= taken_before);
        for name in ["x-ratelimit-reset-requests", "x-ratelimit-remaining-tokens"] {
            assert!(header(res, name).is_some(), "{name} missing");
        }
    }
}

/// The tokens a refused Responses call asked for: "Requested N" of a call larger than
/// the limit.
async fn requested(h: &Harness, body: Value) -> u64 {
    let res = h.post("/v1/responses", body).send().await.unwrap();
    assert_eq!(res.status(), 429);
    let err: Value = res.json().await.unwrap();
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("Request too large"), "{msg}");
    let n = msg.split("Requested ").nth(1).unwrap();
    n[..n.find(|c: char| !c.is_ascii_digit()).unwrap()]
        .parse()
        .unwrap()
}

/// A call that continues an earlier turn (`previous_response_id`, `conversation`) is
/// estimated with the context that turn carries in: the earlier answer's input plus
/// output, which OpenAI bills again as input.
#[tokio::test]
async fn a_continued_conversation_is_estimated_with_the_context_it_carries() {
    let h = support::start().await;
    // Every gpt-4o call is larger than this limit: its refusal tells what it asked for.
    set(&h, &scope(None, None, Some("gpt-4o")), None, Some(5)).await;
    until_applied(&h, "gpt-4o", "x-ratelimit-limit-tokens", 5).await;
    let turn = |extra: Value| {
        let mut body = json!({"model": "gpt-4o", "input": "Go on", "max_output_tokens": 16});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let alone = requested(&h, turn(json!({}))).await;

    // A first turn on another model (no rule), plain.
    let first = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "max_output_tokens": 64,
                   "input": "Tell me about the lighthouse keepers of the northern coast."}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    let carried = first["usage"]["input_tokens"].as_u64().unwrap()
        + first["usage"]["output_tokens"].as_u64().unwrap();
    assert!(carried > 10, "{first}");
    let next = turn(json!({"previous_response_id": id}));
    let seen = eventually(Duration::from_secs(5), || async {
        requested(&h, next.clone()).await == alone + carried
    })
    .await;
    assert!(
        seen.is_some(),
        "previous_response_id: {} vs {alone} + {carried}",
        requested(&h, next).await
    );
    // An id this gateway never saw answer counts the body alone.
    let unknown = turn(json!({"previous_response_id": "resp_never_seen"}));
    assert_eq!(requested(&h, unknown).await, alone);

    // A streamed turn of a conversation: its completed usage is remembered under the
    // conversation's id (either form) and the response's.
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "stream": true, "conversation": "conv_lighthouse",
                   "input": "And what did they eat through the winter?"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let done: Value = text
        .split("\n\n")
        .filter_map(|ev| ev.split("data: ").nth(1))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["type"] == "response.completed")
        .expect("a response.completed event");
    let usage = &done["response"]["usage"];
    let carried =
        usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap();
    let stream_id = done["response"]["id"].as_str().unwrap().to_owned();
    let in_conversation = turn(json!({"conversation": {"id": "conv_lighthouse"}}));
    let seen = eventually(Duration::from_secs(5), || async {
        requested(&h, in_conversation.clone()).await == alone + carried
    })
    .await;
    assert!(seen.is_some(), "conversation");
    assert_eq!(
        requested(&h, turn(json!({"conversation": "conv_lighthouse"}))).await,
        alone + carried
    );
    assert_eq!(
        requested(&h, turn(json!({"previous_response_id": stream_id}))).await,
        alone + carried
    );
}
