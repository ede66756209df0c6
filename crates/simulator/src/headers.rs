//! Building answers: JSON and error bodies, and the headers every `/v1` answer carries
//! (`x-request-id`, `openai-processing-ms`, `openai-version`, the six
//! `x-ratelimit-*`).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Serialize;
use tollgate_wire::ratelimit::RateLimitInfo;

use crate::error::ApiError;

pub const JSON: HeaderValue = HeaderValue::from_static("application/json");
pub const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream; charset=utf-8");
pub const OPENAI_VERSION: HeaderValue = HeaderValue::from_static("2020-10-01");

/// A response with `status`, a JSON content type and `body`.
pub fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut resp = Response::new(Body::from(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, JSON);
    resp
}

/// A 200 with `value` serialised as JSON (a 500 in OpenAI's shape if that fails).
pub fn json_ok<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(StatusCode::OK, body),
        Err(_) => error_response(&ApiError::new(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        )),
    }
}

/// [`json_ok`] for a `serde_json::Value`.
pub fn json_value(value: &serde_json::Value) -> Response {
    json_ok(value)
}

/// The error answer: status, `{"error":{…}}` and the error's own headers.
pub fn error_response(err: &ApiError) -> Response {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&err.body).unwrap_or_default();
    let mut resp = json_bytes(status, body);
    for (name, value) in &err.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(*name),
            HeaderValue::try_from(value.as_str()),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// Adds the headers every `/v1` answer carries. Rate-limit headers already present
/// (set by a 429) are kept.
pub fn stamp(resp: &mut Response, request_id: &str, elapsed: Duration, rate: &RateLimitInfo) {
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::try_from(request_id) {
        headers.insert("x-request-id", v);
    }
    headers.insert(
        "openai-processing-ms",
        HeaderValue::from(elapsed.as_millis() as u64),
    );
    headers.insert("openai-version", OPENAI_VERSION);
    for (name, value) in rate.to_headers() {
        if !headers.contains_key(name) {
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(name, v);
            }
        }
    }
}
