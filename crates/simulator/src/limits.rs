//! Per-key rate limits (requests and tokens per minute) as two continuously refilling
//! buckets, the way OpenAI describes its limits: a bucket of `rpm` requests refills at
//! `rpm` per minute, likewise for tokens. `reset` is the time until the bucket is full
//! again, `remaining` what is in it now.
//!
//! Without a configured limit nothing is refused, but the window is still kept so the
//! `x-ratelimit-*` headers report honest numbers against large nominal limits
//! ([`NOMINAL_RPM`], [`NOMINAL_TPM`]; large enough that a load benchmark never sees a
//! gateway throttle itself on them).
//!
//! One `HashMap` behind a `parking_lot::Mutex`, held for a few arithmetic operations per
//! request.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use tollgate_wire::ratelimit::{format_go_duration, RateLimitInfo};

use crate::error::ApiError;

/// Requests per minute reported when no `rpm` is configured.
pub const NOMINAL_RPM: u64 = 10_000_000;
/// Tokens per minute reported when no `tpm` is configured.
pub const NOMINAL_TPM: u64 = 10_000_000_000;

/// Windows kept before idle (full) ones are forgotten, to bound memory when clients
/// use many distinct keys.
const MAX_KEYS: usize = 10_000;

/// The per-key rate limiter.
#[derive(Debug)]
pub struct Limits {
    rpm: Option<u64>,
    tpm: Option<u64>,
    windows: Mutex<HashMap<String, Window>>,
}

/// One key's buckets at time `at`.
#[derive(Debug, Clone, Copy)]
struct Window {
    requests: f64,
    tokens: f64,
    at: Instant,
}

impl Limits {
    pub fn new(rpm: Option<u64>, tpm: Option<u64>) -> Self {
        Self {
            rpm,
            tpm,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn caps(&self) -> (f64, f64) {
        (
            self.rpm.unwrap_or(NOMINAL_RPM) as f64,
            self.tpm.unwrap_or(NOMINAL_TPM) as f64,
        )
    }

    /// Admits one request of `tokens` estimated tokens for `key`, or answers the 429
    /// OpenAI would send. Either way returns the state to report in the headers.
    pub fn admit(&self, key: &str, model: &str, tokens: u64) -> Result<RateLimitInfo, ApiError> {
        self.admit_at(Instant::now(), key, model, tokens)
    }

    /// [`Limits::admit`] at a given instant (for tests).
    pub fn admit_at(
        &self,
        now: Instant,
        key: &str,
        model: &str,
        tokens: u64,
    ) -> Result<RateLimitInfo, ApiError> {
        let (rcap, tcap) = self.caps();
        let mut windows = self.windows.lock();
        let w = match windows.get_mut(key) {
            Some(w) => w,
            None => {
                if windows.len() >= MAX_KEYS {
                    windows.retain(|_, w| !w.refilled(now, rcap, tcap).is_full(rcap, tcap));
                }
                windows
                    .entry(key.to_owned())
                    .or_insert(Window::full(now, rcap, tcap))
            }
        };
        *w = w.refilled(now, rcap, tcap);
        let tokens = tokens as f64;
        if let Some(rpm) = self.rpm {
            if w.requests < 1.0 {
                let wait = wait_for(1.0 - w.requests, rcap);
                let info = w.info(rcap, tcap);
                return Err(limited(
                    "requests",
                    "RPM",
                    model,
                    rpm,
                    rcap - w.requests,
                    1,
                    wait,
                    info,
                ));
            }
        }
        if let Some(tpm) = self.tpm {
            if tokens > tcap {
                return Err(too_large(model, tpm, tokens as u64, w.info(rcap, tcap)));
            }
            if w.tokens < tokens {
                let wait = wait_for(tokens - w.tokens, tcap);
                let info = w.info(rcap, tcap);
                let used = tcap - w.tokens;
                return Err(limited(
                    "tokens",
                    "TPM",
                    model,
                    tpm,
                    used,
                    tokens as u64,
                    wait,
                    info,
                ));
            }
        }
        w.requests = (w.requests - 1.0).max(0.0);
        w.tokens = (w.tokens - tokens).max(0.0);
        Ok(w.info(rcap, tcap))
    }

    /// The state of `key`'s window without consuming anything (a full window for an
    /// unknown or missing key).
    pub fn peek(&self, key: Option<&str>) -> RateLimitInfo {
        let (rcap, tcap) = self.caps();
        let now = Instant::now();
        let window = key.and_then(|k| self.windows.lock().get(k).copied());
        window
            .unwrap_or(Window::full(now, rcap, tcap))
            .refilled(now, rcap, tcap)
            .info(rcap, tcap)
    }

    /// Forgets every window.
    pub fn reset(&self) {
        self.windows.lock().clear();
    }
}

impl Window {
    fn full(at: Instant, rcap: f64, tcap: f64) -> Self {
        Self {
            requests: rcap,
            tokens: tcap,
            at,
        }
    }

    fn refilled(self, now: Instant, rcap: f64, tcap: f64) -> Self {
        let minutes = now.saturating_duration_since(self.at).as_secs_f64() / 60.0;
        Self {
            requests: (self.requests + rcap * minutes).min(rcap),
            tokens: (self.tokens + tcap * minutes).min(tcap),
            at: now.max(self.at),
        }
    }

    fn is_full(&self, rcap: f64, tcap: f64) -> bool {
        self.requests >= rcap && self.tokens >= tcap
    }

    fn info(&self, rcap: f64, tcap: f64) -> RateLimitInfo {
        RateLimitInfo {
            limit_requests: Some(rcap as u64),
            remaining_requests: Some(self.requests.floor() as u64),
            reset_requests: Some(wait_for(rcap - self.requests, rcap)),
            limit_tokens: Some(tcap as u64),
            remaining_tokens: Some(self.tokens.floor() as u64),
            reset_tokens: Some(wait_for(tcap - self.tokens, tcap)),
        }
    }
}

/// Time for a bucket of capacity `cap` (per minute) to gain `missing`, rounded up to
/// the millisecond.
fn wait_for(missing: f64, cap: f64) -> Duration {
    if missing <= 0.0 || cap <= 0.0 {
        return Duration::ZERO;
    }
    let ms = (missing / cap * 60_000.0).ceil();
    Duration::from_millis(ms as u64)
}

/// The 429 for an exhausted bucket, with `retry-after` (whole seconds, at least 1)
/// and `retry-after-ms` (the precise wait).
#[allow(clippy::too_many_arguments)]
fn limited(
    kind: &str,
    unit: &str,
    model: &str,
    limit: u64,
    used: f64,
    requested: u64,
    wait: Duration,
    info: RateLimitInfo,
) -> ApiError {
    let per = if kind == "requests" {
        "requests"
    } else {
        "tokens"
    };
    let message = format!(
        "Rate limit reached for {model} in organization org-sim on {per} per min ({unit}): \
         Limit {limit}, Used {used}, Requested {requested}. Please try again in {wait}. \
         Visit https://platform.openai.com/account/rate-limits to learn more.",
        used = used.ceil() as u64,
        wait = format_go_duration(wait),
    );
    let secs = wait.as_millis().div_ceil(1000).max(1);
    with_info(
        ApiError::new(429, message, kind, None, Some("rate_limit_exceeded"))
            .with_header("retry-after", secs.to_string())
            .with_header("retry-after-ms", wait.as_millis().max(1).to_string()),
        info,
    )
}

/// The 429 for a request that could never fit the token limit. No retry hint: waiting
/// does not help.
fn too_large(model: &str, tpm: u64, requested: u64, info: RateLimitInfo) -> ApiError {
    let message = format!(
        "Request too large for {model} in organization org-sim on tokens per min (TPM): \
         Limit {tpm}, Requested {requested}. The input or output tokens must be reduced in \
         order to run successfully. Visit https://platform.openai.com/account/rate-limits to \
         learn more."
    );
    with_info(
        ApiError::new(429, message, "tokens", None, Some("rate_limit_exceeded")),
        info,
    )
}

/// Carries the rate-limit state on the error so the server reports it in headers.
fn with_info(mut err: ApiError, info: RateLimitInfo) -> ApiError {
    err.headers.extend(info.to_headers());
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_refuses_then_refills() {
        let limits = Limits::new(Some(2), None);
        let t0 = Instant::now();
        assert!(limits.admit_at(t0, "k", "gpt-4o", 10).is_ok());
        let info = limits.admit_at(t0, "k", "gpt-4o", 10).unwrap();
        assert_eq!(info.remaining_requests, Some(0));
        assert_eq!(info.reset_requests, Some(Duration::from_secs(60)));
        let err = limits.admit_at(t0, "k", "gpt-4o", 10).unwrap_err();
        assert_eq!(err.status, 429);
        assert_eq!(err.body.error.kind, "requests");
        assert!(
            err.body
                .error
                .message
                .contains("Limit 2, Used 2, Requested 1"),
            "{}",
            err.body.error.message
        );
        let header = |n: &str| {
            err.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("retry-after").as_deref(), Some("30"));
        assert_eq!(header("retry-after-ms").as_deref(), Some("30000"));
        // Other keys are independent.
        assert!(limits.admit_at(t0, "other", "gpt-4o", 10).is_ok());
        // Half a minute later one request has come back.
        assert!(limits
            .admit_at(t0 + Duration::from_secs(30), "k", "gpt-4o", 10)
            .is_ok());
    }

    #[test]
    fn tpm_refuses_by_tokens_and_too_large_has_no_retry_hint() {
        let limits = Limits::new(None, Some(100));
        let t0 = Instant::now();
        assert!(limits.admit_at(t0, "k", "m", 80).is_ok());
        let err = limits.admit_at(t0, "k", "m", 40).unwrap_err();
        assert_eq!(err.body.error.kind, "tokens");
        assert_eq!(err.body.error.code.as_deref(), Some("rate_limit_exceeded"));
        assert!(err
            .headers
            .iter()
            .any(|(k, v)| *k == "retry-after-ms" && v == "12000"));
        let big = limits.admit_at(t0, "k", "m", 101).unwrap_err();
        assert!(big.body.error.message.starts_with("Request too large"));
        assert!(!big.headers.iter().any(|(k, _)| *k == "retry-after"));
    }

    #[test]
    fn unlimited_never_refuses_but_reports_usage() {
        let limits = Limits::new(None, None);
        let t0 = Instant::now();
        let info = limits.admit_at(t0, "k", "m", 1000).unwrap();
        assert_eq!(info.limit_requests, Some(NOMINAL_RPM));
        assert_eq!(info.remaining_requests, Some(NOMINAL_RPM - 1));
        assert_eq!(info.remaining_tokens, Some(NOMINAL_TPM - 1000));
        assert_eq!(info.reset_requests, Some(Duration::from_millis(1)));
        let fresh = limits.peek(None);
        assert_eq!(fresh.reset_tokens, Some(Duration::ZERO));
    }
}
