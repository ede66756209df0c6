//! Typed endpoints and the raw pass-through against the simulator: bodies decode,
//! request ids and rate-limit headers come through, raw bytes are untouched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde::Deserialize;
use serde_json::json;
use support::*;
use tollgate_client::wire::embeddings::{EmbeddingInput, EmbeddingRequest, EncodingFormat};
use tollgate_client::wire::moderations::{ModerationInput, ModerationRequest};
use tollgate_client::wire::responses::{JsonSchemaFormat, ResponseStatus, TextFormat, TextParam};
use tollgate_client::{Client, Error};
use tollgate_simulator::SimConfig;

#[tokio::test]
async fn a_response_exposes_request_id_rate_limits_and_usage() {
    let sim = sim_with(SimConfig {
        rpm: Some(100),
        tpm: Some(1_000_000),
        ..SimConfig::default()
    })
    .await;
    let mut req = response_request("Draft a reply");
    req.instructions = Some("Be concise.".to_owned());
    req.max_output_tokens = Some(64);
    let resp = client(&sim).responses().create(&req).await.unwrap();
    let id = resp.request_id().unwrap();
    assert!(id.starts_with("req_") && id.len() == 36, "{id}");
    assert_eq!(resp.meta().headers["x-request-id"], id);
    let rl = resp.rate_limit();
    assert_eq!(rl.limit_requests, Some(100));
    assert_eq!(rl.remaining_requests, Some(99));
    assert_eq!(rl.limit_tokens, Some(1_000_000));
    assert!(rl.remaining_tokens.is_some_and(|t| t < 1_000_000));
    assert!(
        rl.reset_requests.is_some() && rl.reset_tokens.is_some(),
        "{rl:?}"
    );
    assert_eq!(resp.attempts(), 1);
    assert_eq!(resp.model, MODEL);
    assert!(matches!(
        resp.status,
        ResponseStatus::Completed | ResponseStatus::Incomplete
    ));
    let usage = resp.usage.unwrap();
    assert_eq!(usage.total_tokens, usage.input_tokens + usage.output_tokens);
}

#[tokio::test]
async fn structured_output_parses_into_a_struct() {
    #[derive(Debug, Deserialize)]
    struct Ticket {
        category: String,
        priority: String,
        needs_human: bool,
    }
    let sim = sim().await;
    let mut req = response_request("My invoice is wrong");
    req.text = Some(TextParam {
        format: Some(TextFormat::JsonSchema(JsonSchemaFormat {
            name: "ticket".to_owned(),
            schema: json!({
                "type": "object",
                "properties": {
                    "category": {"type": "string"},
                    "priority": {"type": "string", "enum": ["low", "medium", "high"]},
                    "needs_human": {"type": "boolean"}
                },
                "required": ["category", "priority", "needs_human"],
                "additionalProperties": false
            }),
            strict: Some(true),
            description: None,
            extra: Default::default(),
        })),
        extra: Default::default(),
    });
    let resp = client(&sim).responses().create(&req).await.unwrap();
    let t: Ticket = serde_json::from_str(&resp.output_text()).unwrap();
    assert!(
        ["low", "medium", "high"].contains(&t.priority.as_str()),
        "{t:?}"
    );
    let _ = (t.category, t.needs_human);
}

#[tokio::test]
async fn chat_models_and_moderations() {
    let sim = sim().await;
    let c = client(&sim);
    let chat = c.chat().create(&chat_request("hi")).await.unwrap();
    assert_eq!(chat.object, "chat.completion");
    assert!(chat.choices[0]
        .message
        .content
        .as_deref()
        .is_some_and(|s| !s.is_empty()));

    let list = c.models().list().await.unwrap();
    assert!(list.data.iter().any(|m| m.id == MODEL));
    let one = c.models().retrieve(MODEL).await.unwrap();
    assert_eq!(one.id, MODEL);
    let err = c.models().retrieve("no-such-model").await.unwrap_err();
    let Error::NotFound(api) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(api.code(), Some("model_not_found"));

    let req = ModerationRequest {
        input: ModerationInput::Texts(vec!["have a nice day".into(), "I will kill it".into()]),
        model: None,
        extra: Default::default(),
    };
    let m = c.moderations().create(&req).await.unwrap();
    assert_eq!(m.results.len(), 2);
    assert!(!m.results[0].flagged);
    assert!(m.results[1].flagged && m.results[1].categories["violence"]);
}

#[tokio::test]
async fn embeddings_decode_from_base64_like_floats() {
    let sim = sim().await;
    let c = client(&sim);
    let mut req = EmbeddingRequest {
        input: EmbeddingInput::Texts(vec!["alpha".into(), "beta".into()]),
        model: "text-embedding-3-small".into(),
        encoding_format: Some(EncodingFormat::Base64),
        dimensions: None,
        user: None,
        extra: Default::default(),
    };
    let b64 = c.embeddings().create(&req).await.unwrap();
    req.encoding_format = Some(EncodingFormat::Float);
    let floats = c.embeddings().create(&req).await.unwrap();
    assert_eq!(b64.data.len(), 2);
    assert!(b64.usage.prompt_tokens > 0);
    for (a, b) in b64.data.iter().zip(&floats.data) {
        assert!(matches!(
            a.embedding,
            tollgate_client::wire::embeddings::EmbeddingVector::Base64(_)
        ));
        let va = a.embedding.to_floats().unwrap();
        let vb = b.embedding.to_floats().unwrap();
        assert_eq!(va.len(), 1536);
        let norm: f32 = va.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
        for (x, y) in va.iter().zip(&vb) {
            assert!((x - y).abs() < 1e-6);
        }
    }
}

#[tokio::test]
async fn raw_passes_bytes_and_headers_through() {
    let sim = sim_with(SimConfig {
        api_keys: Some(vec!["sk-upstream".to_owned()]),
        ..SimConfig::default()
    })
    .await;
    let c = Client::builder()
        .base_url(sim.base_url())
        .api_key("sk-upstream")
        .build()
        .unwrap();
    let mut headers = HeaderMap::new();
    // The caller's own key must not reach the upstream: the client's replaces it.
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer sk-gateway-key"),
    );
    headers.insert("x-trace", HeaderValue::from_static("abc"));
    headers.insert("connection", HeaderValue::from_static("keep-alive"));
    let raw = c
        .raw(Method::GET, "/models", headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 200);
    assert_eq!(raw.attempts(), 1);
    assert!(raw.request_id().is_some());
    let got = raw.bytes().await.unwrap();
    let direct = reqwest::Client::new()
        .get(format!("{}/models", sim.base_url()))
        .bearer_auth("sk-upstream")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got, direct, "the upstream bytes, unchanged");

    let log = received(&sim).await;
    assert_eq!(log[0]["headers"]["x-trace"], "abc");
    assert_eq!(log[0]["status"], 200);
}

#[tokio::test]
async fn raw_forwards_the_request_body_verbatim_and_streams_the_answer() {
    let sim = sim().await;
    let c = client(&sim);
    let body =
        format!(r#"{{"model":"{MODEL}","input":"hi","stream":true,"metadata":{{"k":"v"}}}}"#);
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let raw = c
        .raw(
            Method::POST,
            "responses",
            headers,
            Bytes::from(body.clone()),
        )
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 200);
    assert!(raw.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let bytes = raw.bytes().await.unwrap();
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.starts_with("event: response.created\n"), "{text}");
    assert!(text.contains("event: response.completed\n"));
    let log = received(&sim).await;
    assert_eq!(
        log[0]["body"],
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    );
}

#[tokio::test]
async fn raw_returns_upstream_errors_after_retries() {
    let sim = sim().await;
    let c = client(&sim);
    let mut headers = HeaderMap::new();
    headers.insert("x-sim-status", HeaderValue::from_static("400"));
    let raw = c
        .raw(Method::GET, "models", headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    assert_eq!(raw.attempts(), 1);
    let body: serde_json::Value = serde_json::from_slice(&raw.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let mut headers = HeaderMap::new();
    headers.insert("x-sim-status", HeaderValue::from_static("503"));
    let raw = c
        .raw(Method::GET, "models", headers, Bytes::new())
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 503);
    assert_eq!(raw.attempts(), 3);
    assert_eq!(received(&sim).await.len(), 4);
}

#[tokio::test]
async fn raw_reports_a_timeout_when_nothing_arrives_in_time() {
    let sim = sim().await;
    let c = client(&sim).with_timeout(ms(200));
    let mut headers = HeaderMap::new();
    headers.insert("x-sim-latency-ms", HeaderValue::from_static("2000"));
    let err = c
        .raw(Method::GET, "models", headers, Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}
