//! The client's error type: one variant per HTTP status class (each carrying the
//! OpenAI error body and the answer's metadata), plus timeout, connection, decode and
//! stream failures. The API key never appears in any of them.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::Value;
use tollgate_wire::ratelimit::RateLimitInfo;
use tollgate_wire::{ErrorBody, ErrorEnvelope};

use crate::meta::ResponseMeta;
use crate::retry::server_delay;

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 401: missing, wrong or revoked API key.
    #[error("authentication failed: {0}")]
    Authentication(Box<ApiError>),
    /// 403: the key may not do this (model access, region, …).
    #[error("permission denied: {0}")]
    PermissionDenied(Box<ApiError>),
    /// 404: unknown model, object or route.
    #[error("not found: {0}")]
    NotFound(Box<ApiError>),
    /// 400, 422 and every other 4xx not listed here (408 and 409 included, after
    /// their retries).
    #[error("bad request: {0}")]
    BadRequest(Box<ApiError>),
    /// 429 rate limit (`rate_limit_exceeded`, `slow_down`, …), after retries.
    /// `retry_after` is the server-directed wait of the last answer, if any.
    #[error("rate limited: {error}")]
    RateLimited {
        retry_after: Option<Duration>,
        error: Box<ApiError>,
    },
    /// 429 `insufficient_quota`: out of credit. Never retried.
    #[error("quota exhausted: {0}")]
    QuotaExhausted(Box<ApiError>),
    /// 5xx, after retries.
    #[error("server error: {0}")]
    Server(Box<ApiError>),
    /// A non-2xx status outside 4xx/5xx (redirects are not followed).
    #[error("unexpected status: {0}")]
    UnexpectedStatus(Box<ApiError>),
    /// The call's deadline passed (during an attempt, or while streaming the body).
    #[error("timed out after {elapsed:?} ({attempts} attempt(s))")]
    Timeout { attempts: u32, elapsed: Duration },
    /// No HTTP answer: connect failure, connect timeout, reset, … after retries.
    #[error("connection failed after {attempts} attempt(s): {source}")]
    Connection {
        attempts: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A 2xx body (or a stream event) that is not the expected JSON.
    #[error("could not decode the response: {source}")]
    Decode {
        request_id: Option<String>,
        #[source]
        source: serde_json::Error,
    },
    /// A stream failed after it had started: an error event from the server, a cut
    /// connection, or an end before the terminal event. Never retried.
    #[error("stream failed: {message}")]
    Stream {
        message: String,
        /// The error object, when the server sent one in the stream.
        error: Option<Box<ErrorBody>>,
        request_id: Option<String>,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The client could not be built (missing key, bad base URL or header).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

/// An HTTP error answer: status, body and metadata.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub payload: ErrorPayload,
    pub meta: ResponseMeta,
}

/// The body of an error answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorPayload {
    /// OpenAI's `{"error":{"message","type","param","code"}}`.
    Envelope(ErrorEnvelope),
    /// Anything else, verbatim (lossily decoded as UTF-8).
    Raw(String),
}

/// The `type` and `code` of an error body, read leniently (no field is required).
#[derive(Debug, Default)]
pub(crate) struct ErrorProbe {
    kind: Option<String>,
    code: Option<String>,
}

impl Error {
    /// Maps an HTTP error answer to its variant.
    pub(crate) fn from_status(
        status: StatusCode,
        headers: HeaderMap,
        body: &[u8],
        attempts: u32,
    ) -> Self {
        let retry_after = server_delay(&headers);
        let quota = ErrorProbe::parse(body).is_quota();
        let payload = match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(env) => ErrorPayload::Envelope(env),
            Err(_) => ErrorPayload::Raw(String::from_utf8_lossy(body).into_owned()),
        };
        let error = Box::new(ApiError {
            status,
            payload,
            meta: ResponseMeta::new(status, headers, attempts),
        });
        match status.as_u16() {
            401 => Self::Authentication(error),
            403 => Self::PermissionDenied(error),
            404 => Self::NotFound(error),
            429 if quota => Self::QuotaExhausted(error),
            429 => Self::RateLimited { retry_after, error },
            400..=499 => Self::BadRequest(error),
            500..=599 => Self::Server(error),
            _ => Self::UnexpectedStatus(error),
        }
    }

    /// The HTTP error answer, for the status-class variants.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::Authentication(e)
            | Self::PermissionDenied(e)
            | Self::NotFound(e)
            | Self::BadRequest(e)
            | Self::QuotaExhausted(e)
            | Self::Server(e)
            | Self::UnexpectedStatus(e)
            | Self::RateLimited { error: e, .. } => Some(e),
            _ => None,
        }
    }

    /// The HTTP status, for the status-class variants.
    pub fn status(&self) -> Option<StatusCode> {
        self.api_error().map(|e| e.status)
    }

    /// The upstream `x-request-id`, where an answer was received.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Decode { request_id, .. } | Self::Stream { request_id, .. } => {
                request_id.as_deref()
            }
            _ => self.api_error().and_then(|e| e.meta.request_id()),
        }
    }

    /// The rate-limit headers of the last answer, for the status-class variants.
    pub fn rate_limit(&self) -> Option<&RateLimitInfo> {
        self.api_error().map(|e| &e.meta.rate_limit)
    }

    /// Attempts made before giving up, where known.
    pub fn attempts(&self) -> Option<u32> {
        match self {
            Self::Timeout { attempts, .. } | Self::Connection { attempts, .. } => Some(*attempts),
            _ => self.api_error().map(|e| e.meta.attempts),
        }
    }

    /// A short, stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Authentication(_) => "authentication",
            Self::PermissionDenied(_) => "permission_denied",
            Self::NotFound(_) => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExhausted(_) => "quota_exhausted",
            Self::Server(_) => "server",
            Self::UnexpectedStatus(_) => "unexpected_status",
            Self::Timeout { .. } => "timeout",
            Self::Connection { .. } => "connection",
            Self::Decode { .. } => "decode",
            Self::Stream { .. } => "stream",
            Self::Config(_) => "config",
        }
    }
}

impl ApiError {
    /// The OpenAI error envelope, when the body was one.
    pub fn envelope(&self) -> Option<&ErrorEnvelope> {
        match &self.payload {
            ErrorPayload::Envelope(e) => Some(e),
            ErrorPayload::Raw(_) => None,
        }
    }

    /// `error.message`, or the raw body.
    pub fn message(&self) -> &str {
        match &self.payload {
            ErrorPayload::Envelope(e) => &e.error.message,
            ErrorPayload::Raw(s) => s,
        }
    }

    /// `error.type`.
    pub fn error_type(&self) -> Option<&str> {
        self.envelope().map(|e| e.error.kind.as_str())
    }

    /// `error.code`.
    pub fn code(&self) -> Option<&str> {
        self.envelope().and_then(|e| e.error.code.as_deref())
    }

    /// `error.param`.
    pub fn param(&self) -> Option<&str> {
        self.envelope().and_then(|e| e.error.param.as_deref())
    }

    /// The upstream `x-request-id`.
    pub fn request_id(&self) -> Option<&str> {
        self.meta.request_id()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 300;
        let msg = self.message();
        let msg = match msg.char_indices().nth(MAX) {
            Some((i, _)) => &msg[..i],
            None => msg,
        };
        write!(f, "{} {}", self.status.as_u16(), msg.trim())?;
        if let Some(code) = self.code() {
            write!(f, " [{code}]")?;
        }
        if let Some(id) = self.request_id() {
            write!(f, " (request id {id})")?;
        }
        Ok(())
    }
}

impl ErrorProbe {
    pub(crate) fn parse(body: &[u8]) -> Self {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let field = |k: &str| v["error"][k].as_str().map(str::to_owned);
        Self {
            kind: field("type"),
            code: field("code"),
        }
    }

    /// Out of credit: `type` or `code` `insufficient_quota`, or `code`
    /// `credit_balance_exhausted` (ERRDOC says to look at `code`; `type` can stay
    /// `insufficient_quota` while `code` changes).
    pub(crate) fn is_quota(&self) -> bool {
        self.kind.as_deref() == Some("insufficient_quota")
            || matches!(
                self.code.as_deref(),
                Some("insufficient_quota" | "credit_balance_exhausted")
            )
    }
}

/// Builds a [`Error::Stream`] from an in-stream error object.
pub(crate) fn stream_error(error: Option<ErrorBody>, request_id: Option<String>) -> Error {
    let message = error
        .as_ref()
        .map_or_else(|| "error event".to_owned(), |e| e.message.clone());
    Error::Stream {
        message,
        error: error.map(Box::new),
        request_id,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use http::HeaderValue;

    use super::*;

    fn err(code: u16, body: &str) -> Error {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("req_123"));
        h.insert("retry-after", HeaderValue::from_static("7"));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("0"),
        );
        Error::from_status(StatusCode::from_u16(code).unwrap(), h, body.as_bytes(), 3)
    }

    fn envelope(kind: &str, code: Option<&str>) -> String {
        serde_json::to_string(&ErrorEnvelope::new("msg", kind, None, code)).unwrap()
    }

    #[test]
    fn statuses_map_to_their_class() {
        let b = envelope("invalid_request_error", None);
        assert!(matches!(err(400, &b), Error::BadRequest(_)));
        assert!(matches!(err(422, &b), Error::BadRequest(_)));
        assert!(matches!(err(409, &b), Error::BadRequest(_)));
        assert!(matches!(err(401, &b), Error::Authentication(_)));
        assert!(matches!(err(403, &b), Error::PermissionDenied(_)));
        assert!(matches!(err(404, &b), Error::NotFound(_)));
        assert!(matches!(err(500, &b), Error::Server(_)));
        assert!(matches!(err(529, &b), Error::Server(_)));
        assert!(matches!(err(302, &b), Error::UnexpectedStatus(_)));
    }

    #[test]
    fn the_429s_are_told_apart_by_the_body() {
        let rl = err(429, &envelope("requests", Some("rate_limit_exceeded")));
        match &rl {
            Error::RateLimited { retry_after, error } => {
                assert_eq!(*retry_after, Some(Duration::from_secs(7)));
                assert_eq!(error.code(), Some("rate_limit_exceeded"));
            }
            other => panic!("{other:?}"),
        }
        let q = err(
            429,
            &envelope("insufficient_quota", Some("insufficient_quota")),
        );
        assert!(matches!(q, Error::QuotaExhausted(_)));
        let c = err(
            429,
            &envelope("insufficient_quota", Some("credit_balance_exhausted")),
        );
        assert!(matches!(c, Error::QuotaExhausted(_)));
    }

    #[test]
    fn errors_carry_envelope_request_id_rate_limits_and_attempts() {
        let e = err(
            404,
            &envelope("invalid_request_error", Some("model_not_found")),
        );
        assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
        assert_eq!(e.request_id(), Some("req_123"));
        assert_eq!(e.attempts(), Some(3));
        assert_eq!(e.rate_limit().unwrap().remaining_requests, Some(0));
        let api = e.api_error().unwrap();
        assert_eq!(api.error_type(), Some("invalid_request_error"));
        assert_eq!(api.code(), Some("model_not_found"));
        assert_eq!(e.kind(), "not_found");
        let shown = e.to_string();
        assert!(
            shown.contains("404 msg [model_not_found] (request id req_123)"),
            "{shown}"
        );
    }

    #[test]
    fn a_non_json_body_is_kept_raw() {
        let e = err(502, "<html>bad gateway</html>");
        let api = e.api_error().unwrap();
        assert_eq!(
            api.payload,
            ErrorPayload::Raw("<html>bad gateway</html>".into())
        );
        assert_eq!(api.message(), "<html>bad gateway</html>");
        assert_eq!(api.code(), None);
    }
}
