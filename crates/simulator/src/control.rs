//! The control API (`/_sim/*`, no key, not under `/v1`) and the request log behind
//! `GET /_sim/requests`.
//!
//! The log keeps the newest [`LOG_CAPACITY`] requests (older ones are dropped) so a
//! long load run cannot grow memory without bound. Recording is cheap on the hot
//! path: headers and body are kept as received (the body is a reference-counted
//! `Bytes`) and only turned into JSON when the log is read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderMap, Method};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::faults::FaultSpec;
use crate::headers::{error_response, json_value};
use crate::server::SimState;

/// Requests kept by the log; the oldest is dropped beyond this.
pub const LOG_CAPACITY: usize = 10_000;

/// One request as the simulator received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status answered; `None` when the connection was reset instead.
    pub status: Option<u16>,
    pub received_at_ms: u64,
}

/// The bounded request log.
#[derive(Debug, Default)]
pub struct RequestLog {
    entries: Mutex<VecDeque<Recorded>>,
}

impl RequestLog {
    pub fn push(&self, entry: Recorded) {
        let mut entries = self.entries.lock();
        if entries.len() >= LOG_CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// A copy of the log, oldest first.
    pub fn snapshot(&self) -> Vec<Recorded> {
        self.entries.lock().iter().cloned().collect()
    }

    /// Forgets every entry; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut entries = self.entries.lock();
        let n = entries.len();
        entries.clear();
        n
    }
}

impl Recorded {
    /// The `GET /_sim/requests` shape: `authorization` redacted, the body as JSON when
    /// it parses, else as a string, `null` when empty.
    pub fn to_json(&self) -> Value {
        let mut headers = Map::new();
        for name in self.headers.keys() {
            let value = if name == http::header::AUTHORIZATION {
                "Bearer <redacted>".to_owned()
            } else {
                self.headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            headers.insert(name.as_str().to_owned(), Value::String(value));
        }
        let body = if self.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
        };
        json!({
            "method": self.method.as_str(),
            "path": self.path,
            "headers": headers,
            "body": body,
            "status": self.status,
            "received_at_ms": self.received_at_ms,
        })
    }
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `/_sim` routes.
pub fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/_sim/faults", post(queue_faults).delete(clear_faults))
        .route("/_sim/requests", get(list_requests).delete(clear_requests))
        .route("/_sim/reset", post(reset))
        .route("/_sim/stats", get(stats))
}

/// `GET /_sim/stats`: how streams ended.
async fn stats(State(state): State<Arc<SimState>>) -> Response {
    json_value(&json!({
        "streams_completed": state.streams.completed(),
        "streams_abandoned": state.streams.abandoned(),
    }))
}

async fn queue_faults(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let spec: FaultSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(e) => {
            return error_response(&crate::ApiError::invalid_request(
                format!("Invalid fault: {e}"),
                None,
                None,
            ))
        }
    };
    match state.faults.push(&spec) {
        Ok(n) => json_value(&json!({ "queued": n })),
        Err(e) => error_response(&e),
    }
}

async fn clear_faults(State(state): State<Arc<SimState>>) -> Response {
    json_value(&json!({ "cleared": state.faults.clear() }))
}

async fn list_requests(State(state): State<Arc<SimState>>) -> Response {
    let data: Vec<Value> = state.log.snapshot().iter().map(Recorded::to_json).collect();
    json_value(&json!({ "data": data }))
}

async fn clear_requests(State(state): State<Arc<SimState>>) -> Response {
    json_value(&json!({ "cleared": state.log.clear() }))
}

async fn reset(State(state): State<Arc<SimState>>) -> Response {
    state.faults.clear();
    state.log.clear();
    state.limits.reset();
    json_value(&json!({ "reset": true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_bounded_and_redacts_authorization() {
        let log = RequestLog::default();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer sk-secret".parse().unwrap());
        headers.insert("x-other", "v".parse().unwrap());
        for i in 0..LOG_CAPACITY + 5 {
            log.push(Recorded {
                method: Method::POST,
                path: format!("/p{i}"),
                headers: headers.clone(),
                body: Bytes::from_static(b"{\"a\":1}"),
                status: Some(200),
                received_at_ms: 1,
            });
        }
        let snap = log.snapshot();
        assert_eq!(snap.len(), LOG_CAPACITY);
        assert_eq!(snap[0].path, "/p5");
        let v = snap[0].to_json();
        assert_eq!(v["headers"]["authorization"], "Bearer <redacted>");
        assert_eq!(v["body"]["a"], 1);
        assert!(!v.to_string().contains("sk-secret"));
        assert_eq!(log.clear(), LOG_CAPACITY);
    }
}
