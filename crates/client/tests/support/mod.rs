//! Shared helpers for the client's integration tests: an in-process simulator per
//! test, a client pointed at it, and the simulator's request log.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde_json::Value;
use tollgate_client::wire::chat::{ChatCompletionRequest, ChatContent, ChatMessage};
use tollgate_client::wire::responses::{CreateResponse, Input};
use tollgate_client::Client;
use tollgate_simulator::{SimConfig, SimHandle};

pub const MODEL: &str = "gpt-4o-mini";

/// A simulator with the default configuration.
pub async fn sim() -> SimHandle {
    sim_with(SimConfig::default()).await
}

pub async fn sim_with(config: SimConfig) -> SimHandle {
    tollgate_simulator::spawn(config)
        .await
        .expect("simulator starts")
}

/// A client for `sim` with the default retry policy.
pub fn client(sim: &SimHandle) -> Client {
    Client::builder()
        .base_url(sim.base_url())
        .api_key("sk-test")
        .no_proxy()
        .build()
        .expect("client builds")
}

/// `client` plus per-request `x-sim-*` headers.
pub fn with_headers(client: &Client, headers: &[(&'static str, &str)]) -> Client {
    headers.iter().fold(client.clone(), |c, (k, v)| {
        c.with_header(
            HeaderName::from_static(k),
            HeaderValue::from_str(v).unwrap(),
        )
    })
}

/// What the simulator received, through `GET /_sim/requests`.
pub async fn received(sim: &SimHandle) -> Vec<Value> {
    let bytes = reqwest::get(format!("{}/_sim/requests", sim.root_url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["data"].as_array().cloned().unwrap_or_default()
}

/// Gaps between consecutive `received_at_ms` of the logged requests.
pub fn gaps_ms(requests: &[Value]) -> Vec<u64> {
    let at: Vec<u64> = requests
        .iter()
        .map(|r| r["received_at_ms"].as_u64().expect("received_at_ms"))
        .collect();
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Queues a fault through `POST /_sim/faults`.
pub async fn queue_fault(sim: &SimHandle, spec: Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/_sim/faults", sim.root_url()))
        .header("content-type", "application/json")
        .body(spec.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "fault queued: {}",
        resp.status()
    );
}

pub fn response_request(prompt: &str) -> CreateResponse {
    CreateResponse {
        model: Some(MODEL.to_owned()),
        input: Some(Input::Text(prompt.to_owned())),
        ..Default::default()
    }
}

pub fn chat_request(prompt: &str) -> ChatCompletionRequest {
    ChatCompletionRequest {
        model: MODEL.to_owned(),
        messages: vec![ChatMessage {
            role: "user".to_owned(),
            content: Some(ChatContent::Text(prompt.to_owned())),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
