//! Fault injection and streaming, in-process on 127.0.0.1:0: every `x-sim-*` header,
//! the `/_sim/faults` queue, SSE framing of both APIs, and what a client sees when a
//! stream is cut or a connection reset.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tollgate_simulator::{spawn, SimConfig, SimHandle};
use tollgate_wire::sse::SseDecoder;

const KEY: &str = "sk-test-server-faults";

async fn sim() -> SimHandle {
    spawn(SimConfig::default()).await.unwrap()
}

fn post(sim: &SimHandle, path: &str, body: &Value) -> RequestBuilder {
    Client::new()
        .post(format!("{}{path}", sim.root_url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "Say something about toll gates."}]})
}

fn responses(stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream, "input": "Say something about toll gates."})
}

async fn json_of(resp: Response) -> Value {
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

async fn control(
    sim: &SimHandle,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Client::new().request(method, format!("{}{path}", sim.root_url()));
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, json_of(resp).await)
}

async fn recorded(sim: &SimHandle) -> Vec<Value> {
    let (_, log) = control(sim, reqwest::Method::GET, "/_sim/requests", None).await;
    log["data"].as_array().unwrap().clone()
}

/// Reads a whole SSE body; returns the decoded events and whether the body ended
/// with an error (a cut) rather than cleanly.
async fn read_sse(resp: Response) -> (Vec<tollgate_wire::sse::SseEvent>, bool) {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => decoder.push_into(&bytes, &mut events),
            Err(_) => return (events, true),
        }
    }
    (events, false)
}

#[tokio::test]
async fn x_sim_status_answers_each_documented_status() {
    let sim = sim().await;
    let cases = [
        (400, "invalid_request_error", None),
        (401, "invalid_request_error", Some("invalid_api_key")),
        (
            403,
            "request_forbidden",
            Some("unsupported_country_region_territory"),
        ),
        (404, "invalid_request_error", Some("model_not_found")),
        (408, "timeout", None),
        (409, "invalid_request_error", Some("conflict")),
        (429, "requests", Some("rate_limit_exceeded")),
        (500, "server_error", None),
        (502, "server_error", None),
        (
            503,
            "service_unavailable_error",
            Some("server_is_overloaded"),
        ),
        (504, "server_error", None),
        (529, "server_error", Some("overloaded")),
    ];
    for (status, kind, code) in cases {
        let resp = post(&sim, "/v1/chat/completions", &chat(false))
            .header("x-sim-status", status.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
        assert!(resp.headers().contains_key("x-request-id"));
        assert!(resp.headers().contains_key("x-ratelimit-reset-tokens"));
        assert!(
            !resp.headers().contains_key("retry-after"),
            "{status}: retry-after only when asked"
        );
        let body = json_of(resp).await;
        assert_eq!(body["error"]["type"], kind, "{status}");
        assert_eq!(body["error"]["code"].as_str(), code, "{status}");
        assert!(body["error"].as_object().unwrap().contains_key("param"));
    }
    let resp = post(&sim, "/v1/responses", &responses(false))
        .header("x-sim-status", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(resp).await["error"]["message"],
        "The server had an error while processing your request. Sorry about that!"
    );
    let resp = post(&sim, "/v1/responses", &responses(false))
        .header("x-sim-status", "503")
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(resp).await["error"]["message"],
        "The engine is currently overloaded, please try again later."
    );
}

#[tokio::test]
async fn x_sim_quota_code_and_retry_headers() {
    let sim = sim().await;
    let resp = post(&sim, "/v1/chat/completions", &chat(false))
        .header("x-sim-status", "429")
        .header("x-sim-error-code", "insufficient_quota")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = json_of(resp).await;
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(body["error"]["code"], "insufficient_quota");

    let resp = post(&sim, "/v1/chat/completions", &chat(false))
        .header("x-sim-status", "503")
        .header("x-sim-retry-after", "2")
        .header("x-sim-retry-after-ms", "150")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_eq!(resp.headers()["retry-after-ms"], "150");
}

#[tokio::test]
async fn faults_apply_without_a_key_and_bad_values_are_400() {
    let sim = sim().await;
    let resp = Client::new()
        .get(format!("{}/models", sim.base_url()))
        .header("x-sim-status", "502")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    for (name, value) in [
        ("x-sim-status", "abc"),
        ("x-sim-status", "200"),
        ("x-sim-latency-ms", "-1"),
        ("x-sim-reset", "maybe"),
    ] {
        let resp = post(&sim, "/v1/chat/completions", &chat(false))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{name}: {value}");
        assert!(json_of(resp).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains(name));
    }
}

#[tokio::test]
async fn x_sim_latency_delays_the_answer() {
    let sim = sim().await;
    let started = Instant::now();
    let resp = Client::new()
        .get(format!("{}/models", sim.base_url()))
        .bearer_auth(KEY)
        .header("x-sim-latency-ms", "200")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn queued_faults_hit_exactly_n_requests_and_respect_the_path() {
    let sim = sim().await;
    let (status, answer) = control(
        &sim,
        reqwest::Method::POST,
        "/_sim/faults",
        Some(json!({"count": 2, "status": 503, "retry_after_ms": 10, "path": "/v1/chat/completions"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!({"queued": 2}));

    // Another path does not consume the queued faults.
    let other = Client::new()
        .get(format!("{}/models", sim.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = post(&sim, "/v1/chat/completions", &chat(false))
            .send()
            .await
            .unwrap();
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(resp.headers()["retry-after-ms"], "10");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(&statuses[..2], &[503, 503]);
    assert_ne!(statuses[2], 503);
    let log: Vec<Value> = recorded(&sim)
        .await
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(log[0], 200);
    assert_eq!(&log[1..3], &[json!(503), json!(503)]);

    // Without a path, any request consumes it; DELETE clears what is left.
    control(
        &sim,
        reqwest::Method::POST,
        "/_sim/faults",
        Some(json!({"count": 3, "status": 500})),
    )
    .await;
    let resp = Client::new()
        .get(format!("{}/models", sim.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let (_, cleared) = control(&sim, reqwest::Method::DELETE, "/_sim/faults", None).await;
    assert_eq!(cleared["cleared"], 2);
    let resp = Client::new()
        .get(format!("{}/models", sim.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A malformed fault is refused.
    let (status, _) = control(
        &sim,
        reqwest::Method::POST,
        "/_sim/faults",
        Some(json!({"count": 1, "stauts": 500})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn x_sim_reset_closes_the_connection_without_a_response() {
    let sim = sim().await;
    let err = post(&sim, "/v1/chat/completions", &chat(false))
        .header("x-sim-reset", "true")
        .send()
        .await
        .expect_err("a reset connection gives no response");
    assert!(err.status().is_none());
    assert!(err.is_request() || err.is_connect(), "{err:?}");

    // Queued resets too; the server keeps serving afterwards.
    control(
        &sim,
        reqwest::Method::POST,
        "/_sim/faults",
        Some(json!({"count": 1, "reset": true})),
    )
    .await;
    assert!(post(&sim, "/v1/responses", &responses(false))
        .send()
        .await
        .is_err());
    let ok = Client::new()
        .get(format!("{}/models", sim.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    let log = recorded(&sim).await;
    assert_eq!(log.len(), 3);
    assert!(log[0]["status"].is_null() && log[1]["status"].is_null());
    assert_eq!(log[2]["status"], 200);
}

#[tokio::test]
async fn x_sim_reset_also_breaks_the_connection_under_axum_serve() {
    // A router mounted in someone else's server has no connection handle; the reset
    // then fails the body before hyper flushes the head.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tollgate_simulator::router(tollgate_simulator::SimState::new(SimConfig::default()));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let err = Client::new()
        .get(format!("http://{addr}/v1/models"))
        .bearer_auth(KEY)
        .header("x-sim-reset", "1")
        .send()
        .await
        .expect_err("no response expected");
    assert!(err.status().is_none(), "{err:?}");
    server.abort();
}

#[tokio::test]
async fn responses_stream_framing() {
    let sim = sim().await;
    let resp = post(&sim, "/v1/responses", &responses(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert!(resp.headers().contains_key("x-request-id"));
    assert!(resp.headers().contains_key("x-ratelimit-remaining-tokens"));
    let (events, cut) = read_sse(resp).await;
    assert!(!cut);
    assert!(events.len() >= 5, "{events:?}");
    for (i, ev) in events.iter().enumerate() {
        assert!(!ev.is_done(), "Responses streams have no [DONE]");
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(
            ev.event.as_deref(),
            data["type"].as_str(),
            "event: line equals the JSON type"
        );
        assert_eq!(data["sequence_number"], i as u64);
    }
    assert_eq!(events[0].event.as_deref(), Some("response.created"));
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("response.completed")
    );
}

#[tokio::test]
async fn chat_stream_framing_and_usage_chunk() {
    let sim = sim().await;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(&sim, "/v1/chat/completions", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let raw = resp.bytes().await.unwrap();
    let text = std::str::from_utf8(&raw).unwrap();
    assert!(!text.contains("event:"), "chat streams are data-only");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let events = SseDecoder::new().push(&raw);
    let (done, chunks) = events.split_last().unwrap();
    assert!(done.is_done());
    for ev in chunks {
        let chunk: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
    let usage: Value = serde_json::from_str(&chunks.last().unwrap().data).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn cut_after_ends_a_responses_stream_without_its_terminal_event() {
    let sim = sim().await;
    let resp = post(&sim, "/v1/responses", &responses(true))
        .header("x-sim-stream-cut-after", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (events, cut) = read_sse(resp).await;
    assert!(cut, "the body must end with an error, not cleanly");
    assert_eq!(events.len(), 3);
    assert!(events
        .iter()
        .all(|e| e.event.as_deref() != Some("response.completed")));

    // Asking for more events than the stream has still withholds the terminal one.
    let resp = post(&sim, "/v1/responses", &responses(true))
        .header("x-sim-stream-cut-after", "100000")
        .send()
        .await
        .unwrap();
    let (events, cut) = read_sse(resp).await;
    assert!(cut);
    assert_eq!(
        events.last().unwrap().event.as_deref(),
        Some("response.output_item.done")
    );
}

#[tokio::test]
async fn cut_after_ends_a_chat_stream_without_done() {
    let sim = sim().await;
    let resp = post(&sim, "/v1/chat/completions", &chat(true))
        .header("x-sim-stream-cut-after", "2")
        .send()
        .await
        .unwrap();
    let (events, cut) = read_sse(resp).await;
    assert!(cut);
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| !e.is_done()));

    // Queued cut-after works the same way.
    control(
        &sim,
        reqwest::Method::POST,
        "/_sim/faults",
        Some(json!({"count": 1, "stream_cut_after": 1})),
    )
    .await;
    let (events, cut) = read_sse(
        post(&sim, "/v1/chat/completions", &chat(true))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(cut);
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn stream_interval_paces_events() {
    let sim = sim().await;
    let started = Instant::now();
    let resp = post(&sim, "/v1/chat/completions", &chat(true))
        .header("x-sim-stream-interval-ms", "5")
        .send()
        .await
        .unwrap();
    let (events, cut) = read_sse(resp).await;
    assert!(!cut);
    let gaps = events.len() as u32 - 1;
    assert!(gaps >= 2);
    assert!(
        started.elapsed() >= Duration::from_millis(5) * gaps,
        "{:?} for {gaps} gaps",
        started.elapsed()
    );
}
