//! Fault injection: what a request asks for through its `x-sim-*` headers, what the
//! control API queued for the next N requests (`POST /_sim/faults`), and the OpenAI
//! error body each simulated status answers with.
//!
//! A queued fault wins over the request's headers field by field; the queue is only
//! locked when it is non-empty.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderMap;
use parking_lot::Mutex;
use serde::Deserialize;

use crate::error::ApiError;

pub const STATUS: &str = "x-sim-status";
pub const ERROR_CODE: &str = "x-sim-error-code";
pub const RETRY_AFTER: &str = "x-sim-retry-after";
pub const RETRY_AFTER_MS: &str = "x-sim-retry-after-ms";
pub const LATENCY_MS: &str = "x-sim-latency-ms";
pub const STREAM_INTERVAL_MS: &str = "x-sim-stream-interval-ms";
pub const STREAM_CUT_AFTER: &str = "x-sim-stream-cut-after";
pub const RESET: &str = "x-sim-reset";
pub const INVALID_OUTPUT: &str = "x-sim-invalid-output";

/// The faults that apply to one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fault {
    /// Answer with this status and the matching error body.
    pub status: Option<u16>,
    /// With 429: `insufficient_quota` picks the quota variant.
    pub error_code: Option<String>,
    /// `retry-after` value to add to the fault answer, as given.
    pub retry_after: Option<String>,
    /// `retry-after-ms` value to add to the fault answer, as given.
    pub retry_after_ms: Option<String>,
    /// Wait before answering.
    pub latency: Option<Duration>,
    /// Wait between stream events.
    pub stream_interval: Option<Duration>,
    /// Send this many stream events, then break the connection.
    pub stream_cut_after: Option<u64>,
    /// Close the connection without answering.
    pub reset: bool,
    /// Spoil a non-streamed structured-output answer so it no longer matches its
    /// schema (see [`spoil_structured`]).
    pub invalid_output: bool,
}

/// A `POST /_sim/faults` body. Every field but `count` is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub count: u64,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub retry_after: Option<serde_json::Number>,
    #[serde(default)]
    pub retry_after_ms: Option<serde_json::Number>,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    #[serde(default)]
    pub stream_interval_ms: Option<u64>,
    #[serde(default)]
    pub stream_cut_after: Option<u64>,
    #[serde(default)]
    pub reset: Option<bool>,
    #[serde(default)]
    pub invalid_output: Option<bool>,
    /// Only requests to this path consume the fault.
    #[serde(default)]
    pub path: Option<String>,
}

/// Faults queued by the control API.
#[derive(Debug, Default)]
pub struct FaultQueue {
    /// Requests still to be faulted, summed over entries: lets the hot path skip the
    /// lock when nothing is queued.
    pending: AtomicU64,
    entries: Mutex<VecDeque<Queued>>,
}

#[derive(Debug)]
struct Queued {
    fault: Fault,
    path: Option<String>,
    remaining: u64,
}

impl Fault {
    /// Reads the `x-sim-*` headers. A header with an unusable value is a 400, so a
    /// typo in a test does not silently test nothing.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let text = |name: &'static str| -> Result<Option<&str>, ApiError> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim()))
                    .map_err(|_| bad_header(name)),
            }
        };
        let number = |name: &'static str| -> Result<Option<u64>, ApiError> {
            text(name)?
                .map(|s| s.parse::<u64>().map_err(|_| bad_header(name)))
                .transpose()
        };
        let decimal = |name: &'static str| -> Result<Option<String>, ApiError> {
            match text(name)? {
                Some(s) if s.parse::<f64>().is_ok_and(|f| f.is_finite() && f >= 0.0) => {
                    Ok(Some(s.to_owned()))
                }
                Some(_) => Err(bad_header(name)),
                None => Ok(None),
            }
        };
        let status = match number(STATUS)? {
            Some(s) if (400..=599).contains(&s) => Some(s as u16),
            Some(_) => return Err(bad_header(STATUS)),
            None => None,
        };
        let flag = |name: &'static str| -> Result<bool, ApiError> {
            match text(name)? {
                None => Ok(false),
                Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
                Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
                Some(_) => Err(bad_header(name)),
            }
        };
        let reset = flag(RESET)?;
        let invalid_output = flag(INVALID_OUTPUT)?;
        Ok(Self {
            status,
            error_code: text(ERROR_CODE)?.map(str::to_owned),
            retry_after: decimal(RETRY_AFTER)?,
            retry_after_ms: decimal(RETRY_AFTER_MS)?,
            latency: number(LATENCY_MS)?.map(Duration::from_millis),
            stream_interval: number(STREAM_INTERVAL_MS)?.map(Duration::from_millis),
            stream_cut_after: number(STREAM_CUT_AFTER)?,
            reset,
            invalid_output,
        })
    }

    /// `self` with every field `queued` sets replaced by the queued value.
    fn overlaid_with(mut self, queued: &Fault) -> Self {
        fn pick<T: Clone>(mine: &mut Option<T>, theirs: &Option<T>) {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        pick(&mut self.status, &queued.status);
        pick(&mut self.error_code, &queued.error_code);
        pick(&mut self.retry_after, &queued.retry_after);
        pick(&mut self.retry_after_ms, &queued.retry_after_ms);
        pick(&mut self.latency, &queued.latency);
        pick(&mut self.stream_interval, &queued.stream_interval);
        pick(&mut self.stream_cut_after, &queued.stream_cut_after);
        self.reset |= queued.reset;
        self.invalid_output |= queued.invalid_output;
        self
    }

    /// The error answer for the simulated status, with any requested retry headers.
    /// `model` names the model in messages that mention one.
    pub fn error(&self, status: u16, model: &str) -> ApiError {
        let quota = self.error_code.as_deref() == Some("insufficient_quota");
        let mut err = status_error(status, quota, model);
        if let Some(v) = &self.retry_after {
            err = err.with_header("retry-after", v.clone());
        }
        if let Some(v) = &self.retry_after_ms {
            err = err.with_header("retry-after-ms", v.clone());
        }
        err
    }
}

impl FaultSpec {
    /// The fault this spec queues (without count and path).
    fn fault(&self) -> Result<Fault, ApiError> {
        if let Some(s) = self.status {
            if !(400..=599).contains(&s) {
                return Err(ApiError::invalid_request(
                    format!("Invalid 'status': expected 400-599, got {s}."),
                    Some("status"),
                    None,
                ));
            }
        }
        Ok(Fault {
            status: self.status,
            error_code: self.error_code.clone(),
            retry_after: self.retry_after.as_ref().map(ToString::to_string),
            retry_after_ms: self.retry_after_ms.as_ref().map(ToString::to_string),
            latency: self.latency_ms.map(Duration::from_millis),
            stream_interval: self.stream_interval_ms.map(Duration::from_millis),
            stream_cut_after: self.stream_cut_after,
            reset: self.reset.unwrap_or(false),
            invalid_output: self.invalid_output.unwrap_or(false),
        })
    }
}

impl FaultQueue {
    /// Queues `spec.count` faulted requests; returns the count.
    pub fn push(&self, spec: &FaultSpec) -> Result<u64, ApiError> {
        let fault = spec.fault()?;
        if spec.count > 0 {
            let mut entries = self.entries.lock();
            entries.push_back(Queued {
                fault,
                path: spec.path.clone(),
                remaining: spec.count,
            });
            self.pending.fetch_add(spec.count, Ordering::Relaxed);
        }
        Ok(spec.count)
    }

    /// Takes one use of the oldest queued fault that applies to `path`.
    pub fn take(&self, path: &str) -> Option<Fault> {
        if self.pending.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut entries = self.entries.lock();
        let i = entries
            .iter()
            .position(|q| q.path.as_deref().is_none_or(|p| p == path))?;
        let entry = entries.get_mut(i)?;
        entry.remaining -= 1;
        let fault = entry.fault.clone();
        if entry.remaining == 0 {
            entries.remove(i);
        }
        self.pending.fetch_sub(1, Ordering::Relaxed);
        Some(fault)
    }

    /// Drops every queued fault; returns how many uses were dropped.
    pub fn clear(&self) -> u64 {
        let mut entries = self.entries.lock();
        entries.clear();
        self.pending.swap(0, Ordering::Relaxed)
    }
}

/// The faults for one request: its headers, overlaid with a queued fault if any.
pub fn resolve(queue: &FaultQueue, headers: &HeaderMap, path: &str) -> Result<Fault, ApiError> {
    let own = Fault::from_headers(headers)?;
    Ok(match queue.take(path) {
        Some(queued) => own.overlaid_with(&queued),
        None => own,
    })
}

/// A non-streamed Responses or Chat answer body with its structured output spoiled:
/// the text of each `output_text` part (Responses) or each choice's message content
/// (Chat) that is a JSON object gets its first member's value replaced by one of
/// another type (a string becomes `12345`, anything else `"not-valid"`); text that is
/// not an object becomes `"not-valid"`. `None` when the body has no such text.
pub fn spoil_structured(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut texts: Vec<&mut serde_json::Value> = Vec::new();
    let responses = v.get("output").is_some_and(serde_json::Value::is_array);
    if responses {
        let output = v.get_mut("output").and_then(|o| o.as_array_mut())?;
        for item in output {
            let parts = item.get_mut("content").and_then(|c| c.as_array_mut());
            for part in parts.into_iter().flatten() {
                if part.get("type").and_then(|t| t.as_str()) == Some("output_text") {
                    if let Some(t) = part.get_mut("text") {
                        texts.push(t);
                    }
                }
            }
        }
    } else if let Some(choices) = v.get_mut("choices").and_then(|c| c.as_array_mut()) {
        for choice in choices {
            if let Some(t) = choice
                .pointer_mut("/message/content")
                .filter(|t| t.is_string())
            {
                texts.push(t);
            }
        }
    }
    if texts.is_empty() {
        return None;
    }
    for t in texts {
        let spoiled = match serde_json::from_str::<serde_json::Value>(t.as_str().unwrap_or("")) {
            Ok(serde_json::Value::Object(mut o)) => {
                if let Some((_, first)) = o.iter_mut().next() {
                    *first = if first.is_string() {
                        serde_json::json!(12345)
                    } else {
                        serde_json::json!("not-valid")
                    };
                }
                serde_json::Value::Object(o).to_string()
            }
            _ => "\"not-valid\"".to_owned(),
        };
        *t = serde_json::Value::String(spoiled);
    }
    serde_json::to_vec(&v).ok()
}

fn bad_header(name: &str) -> ApiError {
    ApiError::invalid_request(
        format!("Invalid value for the '{name}' header."),
        None,
        None,
    )
}

/// OpenAI's error body for a status, as the fault table in `docs/simulator.md` lists.
pub fn status_error(status: u16, quota: bool, model: &str) -> ApiError {
    match status {
        400 => ApiError::invalid_request("Invalid request (simulated by the tollgate simulator).", None, None),
        401 => ApiError::new(
            401,
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )
        .with_header("www-authenticate", "Bearer realm=\"OpenAI API\""),
        403 => ApiError::new(
            403,
            "Country, region, or territory not supported",
            "request_forbidden",
            None,
            Some("unsupported_country_region_territory"),
        ),
        404 => ApiError::model_not_found(model),
        408 => ApiError::new(408, "Request timed out.", "timeout", None, None),
        409 => ApiError::new(
            409,
            "The request conflicted with another request. Please try again.",
            "invalid_request_error",
            None,
            Some("conflict"),
        ),
        429 if quota => insufficient_quota(),
        429 => ApiError::new(
            429,
            format!(
                "Rate limit reached for {model} in organization org-sim on requests per min (RPM): \
                 Limit 3, Used 3, Requested 1. Please try again in 20s. \
                 Visit https://platform.openai.com/account/rate-limits to learn more."
            ),
            "requests",
            None,
            Some("rate_limit_exceeded"),
        ),
        503 => ApiError::new(
            503,
            "The engine is currently overloaded, please try again later.",
            "service_unavailable_error",
            None,
            Some("server_is_overloaded"),
        ),
        529 => ApiError::new(
            529,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            Some("overloaded"),
        ),
        502 => ApiError::new(502, "Bad gateway.", "server_error", None, None),
        504 => ApiError::new(504, "Gateway timeout.", "server_error", None, None),
        s if s >= 500 => ApiError::new(
            s,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        s => ApiError::new(s, "Request refused (simulated by the tollgate simulator).", "invalid_request_error", None, None),
    }
}

/// 429 `insufficient_quota`: not retryable in practice, and sent without `retry-after`.
pub fn insufficient_quota() -> ApiError {
    ApiError::new(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more \
         information on this error, read the docs: \
         https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota",
        None,
        Some("insufficient_quota"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(count: u64, status: u16, path: Option<&str>) -> FaultSpec {
        FaultSpec {
            count,
            status: Some(status),
            error_code: None,
            retry_after: None,
            retry_after_ms: None,
            latency_ms: None,
            stream_interval_ms: None,
            stream_cut_after: None,
            reset: None,
            invalid_output: None,
            path: path.map(str::to_owned),
        }
    }

    #[test]
    fn spoiled_structured_output_no_longer_matches_its_first_member() {
        let responses = serde_json::json!({"output": [{"type": "message", "content": [
            {"type": "output_text", "text": "{\"name\":\"Ada\",\"age\":36}"}]}]});
        let out: serde_json::Value =
            serde_json::from_slice(&spoil_structured(responses.to_string().as_bytes()).unwrap())
                .unwrap();
        assert_eq!(
            out.pointer("/output/0/content/0/text").unwrap(),
            "{\"name\":12345,\"age\":36}"
        );
        let chat = serde_json::json!({"choices": [{"message": {"content": "{\"n\":1}"}}]});
        let out: serde_json::Value =
            serde_json::from_slice(&spoil_structured(chat.to_string().as_bytes()).unwrap())
                .unwrap();
        assert_eq!(
            out.pointer("/choices/0/message/content").unwrap(),
            "{\"n\":\"not-valid\"}"
        );
        assert!(spoil_structured(b"{\"data\":[]}").is_none());
    }

    #[test]
    fn queue_is_consumed_in_order_and_respects_paths() {
        let q = FaultQueue::default();
        q.push(&spec(1, 500, Some("/v1/responses"))).unwrap();
        q.push(&spec(2, 503, None)).unwrap();
        assert_eq!(q.take("/v1/models").unwrap().status, Some(503));
        assert_eq!(q.take("/v1/responses").unwrap().status, Some(500));
        assert_eq!(q.take("/v1/responses").unwrap().status, Some(503));
        assert_eq!(q.take("/v1/responses"), None);
        q.push(&spec(5, 429, None)).unwrap();
        assert_eq!(q.clear(), 5);
        assert_eq!(q.take("/x"), None);
    }

    #[test]
    fn headers_parse_and_queued_fields_win() {
        let mut h = HeaderMap::new();
        h.insert(STATUS, "503".parse().unwrap());
        h.insert(RETRY_AFTER_MS, "150".parse().unwrap());
        h.insert(STREAM_CUT_AFTER, "3".parse().unwrap());
        let own = Fault::from_headers(&h).unwrap();
        assert_eq!(own.status, Some(503));
        assert_eq!(own.stream_cut_after, Some(3));
        let queue = FaultQueue::default();
        queue.push(&spec(1, 429, None)).unwrap();
        let f = resolve(&queue, &h, "/v1/responses").unwrap();
        assert_eq!(f.status, Some(429));
        assert_eq!(f.retry_after_ms.as_deref(), Some("150"));
        let e = f.error(429, "gpt-4o");
        assert_eq!(e.body.error.code.as_deref(), Some("rate_limit_exceeded"));

        h.insert(STATUS, "abc".parse().unwrap());
        assert_eq!(Fault::from_headers(&h).unwrap_err().status, 400);
        h.insert(STATUS, "200".parse().unwrap());
        assert_eq!(Fault::from_headers(&h).unwrap_err().status, 400);
    }

    #[test]
    fn every_documented_status_has_its_type() {
        let cases = [
            (400, "invalid_request_error"),
            (401, "invalid_request_error"),
            (403, "request_forbidden"),
            (404, "invalid_request_error"),
            (408, "timeout"),
            (409, "invalid_request_error"),
            (429, "requests"),
            (500, "server_error"),
            (502, "server_error"),
            (503, "service_unavailable_error"),
            (504, "server_error"),
            (529, "server_error"),
        ];
        for (status, kind) in cases {
            let e = status_error(status, false, "gpt-4o");
            assert_eq!(e.status, status);
            assert_eq!(e.body.error.kind, kind, "{status}");
        }
        assert_eq!(
            status_error(429, true, "m").body.error.kind,
            "insufficient_quota"
        );
    }
}
