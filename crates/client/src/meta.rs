//! What every answer carries besides its body: status, headers, the upstream request
//! id, the parsed rate-limit headers and how many attempts the call took.

use std::ops::Deref;

use http::{HeaderMap, StatusCode};
use tollgate_wire::ratelimit::RateLimitInfo;

/// Facts about the HTTP answer that ended a call (the last attempt's).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResponseMeta {
    /// HTTP status of the last attempt.
    pub status: StatusCode,
    /// Response headers of the last attempt.
    pub headers: HeaderMap,
    /// The upstream `x-request-id`, if it sent one.
    pub request_id: Option<String>,
    /// The `x-ratelimit-*` headers, parsed.
    pub rate_limit: RateLimitInfo,
    /// Attempts made, the successful one included (1 = no retry).
    pub attempts: u32,
}

/// A decoded body plus its [`ResponseMeta`]. Derefs to the body, so `resp.usage` or
/// `resp.data` reach the body's own fields (the fields here are private so that they
/// never shadow the body's).
#[derive(Debug, Clone)]
pub struct ApiResponse<T> {
    body: T,
    meta: ResponseMeta,
}

impl ResponseMeta {
    pub(crate) fn new(status: StatusCode, headers: HeaderMap, attempts: u32) -> Self {
        // One walk over the headers: a lookup by name per header would parse and hash
        // each of the seven names (about 3,000 instructions per answer).
        let mut request_id = None;
        let mut rate_limit = RateLimitInfo::default();
        for (name, value) in &headers {
            let name = name.as_str();
            if !name.starts_with("x-") {
                continue;
            }
            let Ok(value) = value.to_str() else { continue };
            if name == "x-request-id" {
                request_id.get_or_insert_with(|| value.to_owned());
            } else {
                rate_limit.read_header(name, value);
            }
        }
        Self {
            status,
            headers,
            request_id,
            rate_limit,
            attempts,
        }
    }

    /// The upstream `x-request-id`.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
}

impl<T> ApiResponse<T> {
    pub(crate) fn new(body: T, meta: ResponseMeta) -> Self {
        Self { body, meta }
    }

    /// Status, headers, request id, rate limits and attempts.
    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    /// The upstream `x-request-id`.
    pub fn request_id(&self) -> Option<&str> {
        self.meta.request_id()
    }

    /// The parsed `x-ratelimit-*` headers.
    pub fn rate_limit(&self) -> &RateLimitInfo {
        &self.meta.rate_limit
    }

    /// Attempts made, the successful one included.
    pub fn attempts(&self) -> u32 {
        self.meta.attempts
    }

    /// The body, dropping the metadata.
    pub fn into_inner(self) -> T {
        self.body
    }

    /// The body and the metadata.
    pub fn into_parts(self) -> (T, ResponseMeta) {
        (self.body, self.meta)
    }
}

impl<T> Deref for ApiResponse<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.body
    }
}
