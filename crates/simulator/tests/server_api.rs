//! The simulator's HTTP surface, in-process on 127.0.0.1:0: routing and 404s, auth,
//! the common headers, models, body errors, rate limits, quota and the request log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{json, Value};
use tollgate_simulator::{spawn, SimConfig, SimHandle};
use tollgate_wire::ratelimit::parse_go_duration;

const KEY: &str = "sk-test-server-api";

async fn sim(config: SimConfig) -> SimHandle {
    spawn(config).await.unwrap()
}

async fn call(
    sim: &SimHandle,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Response {
    let mut req = Client::new().request(method, format!("{}{path}", sim.root_url()));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    req.send().await.unwrap()
}

async fn json_of(resp: Response) -> Value {
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// Asserts the four envelope keys and returns the inner error.
fn error_of(body: &Value) -> &Value {
    let err = &body["error"];
    let keys: Vec<&str> = err
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in ["message", "type", "param", "code"] {
        assert!(keys.contains(&k), "missing {k} in {body}");
    }
    err
}

/// Asserts the headers every /v1 answer carries.
fn assert_common_headers(resp: &Response) {
    let h = resp.headers();
    let get = |n: &str| {
        h.get(n)
            .unwrap_or_else(|| panic!("no {n} header"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let id = get("x-request-id");
    assert!(id.starts_with("req_") && id.len() == 36, "{id}");
    get("openai-processing-ms").parse::<u64>().unwrap();
    assert_eq!(get("openai-version"), "2020-10-01");
    for n in [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
    ] {
        get(n)
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{n} not an integer"));
    }
    for n in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        let v = get(n);
        assert!(
            parse_go_duration(&v).is_some(),
            "{n}: {v} is not a Go duration"
        );
    }
}

#[tokio::test]
async fn unknown_routes_are_404_invalid_url() {
    let sim = sim(SimConfig::default()).await;
    for (method, path) in [
        (Method::GET, "/v1/nope"),
        (Method::DELETE, "/v1/models"),
        (Method::GET, "/v1/chat/completions"),
        (Method::POST, "/elsewhere"),
        (Method::GET, "/v1/models/"),
    ] {
        let resp = call(&sim, method.clone(), path, Some(KEY), None).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {path}");
        assert_common_headers(&resp);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = json_of(resp).await;
        let err = error_of(&body);
        assert_eq!(err["message"], format!("Invalid URL ({method} {path})"));
        assert_eq!(err["type"], "invalid_request_error");
        assert!(err["param"].is_null() && err["code"].is_null());
    }
}

#[tokio::test]
async fn a_missing_key_is_401_with_code_null() {
    let sim = sim(SimConfig::default()).await;
    for key in [None, Some("")] {
        let resp = call(
            &sim,
            Method::POST,
            "/v1/chat/completions",
            key,
            Some(chat_body("gpt-4o")),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_common_headers(&resp);
        let body = json_of(resp).await;
        let err = error_of(&body);
        assert!(err["message"]
            .as_str()
            .unwrap()
            .starts_with("You didn't provide an API key."));
        assert_eq!(err["type"], "invalid_request_error");
        assert!(err["code"].is_null());
    }
}

#[tokio::test]
async fn a_key_outside_the_list_is_401_invalid_api_key_masked() {
    let sim = sim(SimConfig {
        api_keys: Some(vec!["sk-good-key-000000".into()]),
        ..SimConfig::default()
    })
    .await;
    let good = call(
        &sim,
        Method::GET,
        "/v1/models/gpt-4o",
        Some("sk-good-key-000000"),
        None,
    )
    .await;
    assert_eq!(good.status(), StatusCode::OK);

    let wrong = "sk-abcdefghijklmnop-wxyz";
    let resp = call(
        &sim,
        Method::POST,
        "/v1/responses",
        Some(wrong),
        Some(json!({"model": "gpt-4o", "input": "hi"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"OpenAI API\""
    );
    assert_common_headers(&resp);
    let body = json_of(resp).await;
    let err = error_of(&body);
    assert_eq!(err["code"], "invalid_api_key");
    assert_eq!(err["type"], "invalid_request_error");
    assert_eq!(
        err["message"],
        "Incorrect API key provided: sk-abc***wxyz. You can find your API key at https://platform.openai.com/account/api-keys."
    );
    assert!(!body.to_string().contains(wrong));
}

#[tokio::test]
async fn models_list_retrieve_and_unknown() {
    let sim = sim(SimConfig::default()).await;
    let resp = call(&sim, Method::GET, "/v1/models", Some(KEY), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_common_headers(&resp);
    let list = json_of(resp).await;
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    assert!(data.iter().any(|m| m["id"] == "gpt-4o-2024-08-06"));
    assert!(data
        .iter()
        .all(|m| m["object"] == "model" && m["created"].is_i64() && m["owned_by"].is_string()));

    let one = json_of(
        call(
            &sim,
            Method::GET,
            "/v1/models/text-embedding-3-small",
            Some(KEY),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(one["id"], "text-embedding-3-small");
    assert_eq!(one["object"], "model");

    let resp = call(&sim, Method::GET, "/v1/models/gpt-nope", Some(KEY), None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body = json_of(resp).await;
    assert_eq!(
        body,
        json!({"error": {"message": "The model 'gpt-nope' does not exist", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
    );
}

#[tokio::test]
async fn a_custom_model_list_replaces_the_builtin_one() {
    let models = tollgate_simulator::config::parse_models(
        r#"{"data":[{"id":"my-model","created":1,"owned_by":"me"}]}"#,
    )
    .unwrap();
    let sim = sim(SimConfig {
        models,
        ..SimConfig::default()
    })
    .await;
    let list = json_of(call(&sim, Method::GET, "/v1/models", Some(KEY), None).await).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let resp = call(
        &sim,
        Method::POST,
        "/v1/chat/completions",
        Some(KEY),
        Some(chat_body("gpt-4o")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_models_on_inference_endpoints_are_model_not_found() {
    let sim = sim(SimConfig::default()).await;
    let cases = [
        ("/v1/responses", json!({"model": "gpt-nope", "input": "hi"})),
        ("/v1/chat/completions", chat_body("gpt-nope")),
        (
            "/v1/embeddings",
            json!({"model": "gpt-nope", "input": "hi"}),
        ),
        (
            "/v1/moderations",
            json!({"model": "gpt-nope", "input": "hi"}),
        ),
    ];
    for (path, body) in cases {
        let resp = call(&sim, Method::POST, path, Some(KEY), Some(body)).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        let body = json_of(resp).await;
        let err = error_of(&body);
        assert_eq!(err["code"], "model_not_found", "{path}");
        assert_eq!(err["param"], "model");
        assert_eq!(
            err["message"],
            "The model `gpt-nope` does not exist or you do not have access to it."
        );
    }
}

#[tokio::test]
async fn malformed_and_misshapen_bodies_are_400() {
    let sim = sim(SimConfig::default()).await;
    let url = format!("{}/v1/chat/completions", sim.root_url());
    for raw in ["{\"model\": ", "not json", ""] {
        let resp = Client::new()
            .post(&url)
            .bearer_auth(KEY)
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{raw:?}");
        assert_common_headers(&resp);
        let body = json_of(resp).await;
        let err = error_of(&body);
        assert!(err["message"].as_str().unwrap().starts_with(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly."
        ));
        assert_eq!(err["type"], "invalid_request_error");
        assert!(err["param"].is_null() && err["code"].is_null());
    }
    let resp = call(
        &sim,
        Method::POST,
        "/v1/chat/completions",
        Some(KEY),
        Some(json!({"model": "gpt-4o", "messages": "x", "n": 1})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = json_of(resp).await;
    assert_eq!(error_of(&body)["param"], "messages");

    let resp = call(
        &sim,
        Method::POST,
        "/v1/embeddings",
        Some(KEY),
        Some(json!({"input": "x"})),
    )
    .await;
    let body = json_of(resp).await;
    assert_eq!(
        error_of(&body)["message"],
        "Missing required parameter: 'model'."
    );
}

#[tokio::test]
async fn common_headers_on_success_and_reset_values_move() {
    let sim = sim(SimConfig {
        rpm: Some(60),
        tpm: Some(100_000),
        ..SimConfig::default()
    })
    .await;
    let resp = call(
        &sim,
        Method::POST,
        "/v1/embeddings",
        Some(KEY),
        Some(json!({"model": "text-embedding-3-small", "input": "hello"})),
    )
    .await;
    assert_common_headers(&resp);
    let h = resp.headers();
    assert_eq!(h["x-ratelimit-limit-requests"], "60");
    assert_eq!(h["x-ratelimit-remaining-requests"], "59");
    assert_eq!(h["x-ratelimit-limit-tokens"], "100000");
    let remaining_tokens: u64 = h["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining_tokens < 100_000);
    // One request of 60 per minute comes back in one second.
    let reset = parse_go_duration(h["x-ratelimit-reset-requests"].to_str().unwrap()).unwrap();
    assert!(
        reset <= Duration::from_secs(1) && reset > Duration::from_millis(900),
        "{reset:?}"
    );
}

#[tokio::test]
async fn rpm_exhaustion_is_429_requests_with_retry_hints() {
    let sim = sim(SimConfig {
        rpm: Some(2),
        ..SimConfig::default()
    })
    .await;
    for _ in 0..2 {
        let resp = call(
            &sim,
            Method::POST,
            "/v1/moderations",
            Some(KEY),
            Some(json!({"input": "hello"})),
        )
        .await;
        assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let resp = call(
        &sim,
        Method::POST,
        "/v1/chat/completions",
        Some(KEY),
        Some(chat_body("gpt-4o")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_common_headers(&resp);
    let h = resp.headers();
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    let secs: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&secs), "{secs}");
    let ms: f64 = h["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!(ms > 0.0 && ms <= 30_000.0, "{ms}");
    let body = json_of(resp).await;
    let err = error_of(&body);
    assert_eq!(err["type"], "requests");
    assert_eq!(err["code"], "rate_limit_exceeded");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Rate limit reached for gpt-4o in organization org-sim on requests per min (RPM): Limit 2, Used 2, Requested 1. Please try again in "),
        "{msg}"
    );
    assert!(msg.ends_with("Visit https://platform.openai.com/account/rate-limits to learn more."));

    // Another key has its own window.
    let other = call(
        &sim,
        Method::POST,
        "/v1/moderations",
        Some("sk-other"),
        Some(json!({"input": "hello"})),
    )
    .await;
    assert_ne!(other.status(), StatusCode::TOO_MANY_REQUESTS);
    // Reset forgets the windows.
    call(&sim, Method::POST, "/_sim/reset", None, None).await;
    let again = call(
        &sim,
        Method::POST,
        "/v1/moderations",
        Some(KEY),
        Some(json!({"input": "hello"})),
    )
    .await;
    assert_ne!(again.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn tpm_exhaustion_is_429_tokens() {
    let sim = sim(SimConfig {
        tpm: Some(300),
        ..SimConfig::default()
    })
    .await;
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 200});
    let first = call(
        &sim,
        Method::POST,
        "/v1/chat/completions",
        Some(KEY),
        Some(body.clone()),
    )
    .await;
    assert_ne!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    let resp = call(
        &sim,
        Method::POST,
        "/v1/chat/completions",
        Some(KEY),
        Some(body),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.headers().contains_key("retry-after-ms"));
    let body = json_of(resp).await;
    let err = error_of(&body);
    assert_eq!(err["type"], "tokens");
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("on tokens per min (TPM): Limit 300"));
}

#[tokio::test]
async fn insufficient_quota_refuses_inference_only() {
    let sim = sim(SimConfig {
        insufficient_quota: true,
        ..SimConfig::default()
    })
    .await;
    let resp = call(
        &sim,
        Method::POST,
        "/v1/responses",
        Some(KEY),
        Some(json!({"model": "gpt-4o", "input": "hi"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_common_headers(&resp);
    assert!(!resp.headers().contains_key("retry-after"));
    let body = json_of(resp).await;
    let err = error_of(&body);
    assert_eq!(err["type"], "insufficient_quota");
    assert_eq!(err["code"], "insufficient_quota");
    assert_eq!(
        err["message"],
        "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
    );
    let models = call(&sim, Method::GET, "/v1/models", Some(KEY), None).await;
    assert_eq!(models.status(), StatusCode::OK);
}

#[tokio::test]
async fn request_log_records_everything_and_redacts_authorization() {
    let sim = sim(SimConfig::default()).await;
    call(
        &sim,
        Method::GET,
        "/v1/models",
        Some("sk-very-secret-key"),
        None,
    )
    .await;
    call(
        &sim,
        Method::POST,
        "/v1/chat/completions",
        None,
        Some(chat_body("gpt-4o")),
    )
    .await;
    Client::new()
        .post(format!("{}/v1/embeddings", sim.root_url()))
        .bearer_auth(KEY)
        .body("not json")
        .send()
        .await
        .unwrap();

    let log = call(&sim, Method::GET, "/_sim/requests", None, None).await;
    assert_eq!(log.status(), StatusCode::OK);
    let log = json_of(log).await;
    assert!(!log.to_string().contains("sk-very-secret-key"));
    let data = log["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "control requests are not recorded: {log}");
    assert_eq!(data[0]["method"], "GET");
    assert_eq!(data[0]["path"], "/v1/models");
    assert_eq!(data[0]["headers"]["authorization"], "Bearer <redacted>");
    assert_eq!(data[0]["status"], 200);
    assert!(data[0]["body"].is_null());
    assert!(data[0]["received_at_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(data[1]["status"], 401);
    assert_eq!(data[1]["body"]["model"], "gpt-4o");
    assert_eq!(data[2]["body"], "not json");
    assert_eq!(data[2]["status"], 400);

    let cleared = call(&sim, Method::DELETE, "/_sim/requests", None, None).await;
    assert_eq!(json_of(cleared).await["cleared"], 3);
    let log = json_of(call(&sim, Method::GET, "/_sim/requests", None, None).await).await;
    assert_eq!(log["data"].as_array().unwrap().len(), 0);
    // The in-process handle sees the same log.
    assert!(sim.state().requests().is_empty());
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sim = sim(SimConfig::default()).await;
    let url = format!("{}/models", sim.base_url());
    assert_eq!(
        Client::new()
            .get(&url)
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    sim.shutdown().await.unwrap();
    assert!(Client::new()
        .get(&url)
        .bearer_auth(KEY)
        .send()
        .await
        .is_err());
}
