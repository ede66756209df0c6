//! Retries: which failures are retried, how long to wait before the next attempt, and
//! the loop that runs attempts under one deadline covering all of them.
//!
//! The rules follow the official SDKs (see `OPENAI-WIRE.md` §g) with two deliberate
//! differences: `429 insufficient_quota` is never retried (it cannot recover by
//! waiting), and only the statuses listed in [`classify_status`] are retried, not
//! every 5xx (a `501` will not start working on the second try).

use std::future::Future;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;
use tollgate_wire::ratelimit;

use crate::error::ErrorProbe;

/// How a [`crate::Client`] retries failed attempts.
///
/// Between attempts the client waits, in order of preference:
/// 1. the server's `retry-after-ms` (float milliseconds) or `retry-after` (float
///    seconds), when it is positive and at most [`RetryPolicy::max_retry_after`]; a
///    longer server-directed wait ends the retries (the error carries it, so the
///    caller can decide), as openai-python 2.x does;
/// 2. otherwise exponential backoff: `min(base_delay × 2ⁿ, max_delay)` for the n-th
///    retry (0-based), scaled by [`Jitter`].
///
/// No retry is started when it would exceed `max_retries`, push the total time spent
/// waiting past `max_total_wait`, or sleep past the call's deadline.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt: at most `max_retries + 1` attempts. Default 2.
    pub max_retries: u32,
    /// Nominal delay before the first retry; doubles on each retry. Default 200 ms
    /// (200, 400, 800 ms, …).
    pub base_delay: Duration,
    /// Cap on the nominal backoff delay. Default 8 s.
    pub max_delay: Duration,
    /// How the backoff delay is randomised. Default [`Jitter::Sdk`].
    pub jitter: Jitter,
    /// Longest `retry-after(-ms)` honoured. Default 60 s.
    pub max_retry_after: Duration,
    /// Cap on the sum of all waits between attempts of one call. Default 60 s.
    pub max_total_wait: Duration,
}

/// How the backoff delay is randomised (server-directed delays are never jittered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Jitter {
    /// The exact nominal delay. Useful in tests; avoid in production (herds retry
    /// in lock-step).
    None,
    /// 75–100 % of the nominal delay, uniformly: `nominal × (1 − 0.25·U[0,1))`. This is
    /// what the official Python and Node SDKs do. The default.
    Sdk,
    /// "Full jitter": uniformly 0–100 % of the nominal delay.
    Full,
}

/// Whether a failed attempt may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Give up: the failure will not go away by trying again.
    Fatal,
    /// Retry, after the server-directed delay if the server gave one.
    Retry { after: Option<Duration> },
}

/// A failed attempt: what to report if it is the last one, and whether to retry.
#[derive(Debug)]
pub(crate) struct Failure<E> {
    pub error: E,
    pub verdict: Verdict,
}

/// Why the loop stopped without a success.
#[derive(Debug)]
pub(crate) enum Stop<E> {
    /// The last attempt failed and no retry was allowed.
    Failed(E),
    /// The deadline passed while an attempt was in flight.
    Timeout { attempts: u32, elapsed: Duration },
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(8),
            jitter: Jitter::Sdk,
            max_retry_after: Duration::from_secs(60),
            max_total_wait: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn never() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// Sets `max_retries`.
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets `base_delay`.
    pub fn with_base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// Sets `max_delay`.
    pub fn with_max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Sets `jitter`.
    pub fn with_jitter(mut self, j: Jitter) -> Self {
        self.jitter = j;
        self
    }

    /// Sets `max_retry_after`.
    pub fn with_max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    /// Sets `max_total_wait`.
    pub fn with_max_total_wait(mut self, d: Duration) -> Self {
        self.max_total_wait = d;
        self
    }

    /// The backoff delay before retry number `retry` (0-based), given a uniform random
    /// `unit` in `[0, 1)`.
    pub(crate) fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(31));
        let nominal = self.base_delay.saturating_mul(factor).min(self.max_delay);
        let scale = match self.jitter {
            Jitter::None => 1.0,
            Jitter::Sdk => 1.0 - 0.25 * unit,
            Jitter::Full => unit,
        };
        nominal.mul_f64(scale.clamp(0.0, 1.0))
    }

    /// The wait before the next attempt, or `None` to give up. `retries_done` counts
    /// retries already made; `waited` is the total already spent waiting.
    pub(crate) fn next_delay(
        &self,
        max_retries: u32,
        retries_done: u32,
        verdict: Verdict,
        waited: Duration,
        unit: f64,
    ) -> Option<Duration> {
        let Verdict::Retry { after } = verdict else {
            return None;
        };
        if retries_done >= max_retries {
            return None;
        }
        let delay = match after {
            Some(d) if d > self.max_retry_after => return None,
            Some(d) if !d.is_zero() => d,
            _ => self.backoff(retries_done, unit),
        };
        (waited + delay <= self.max_total_wait).then_some(delay)
    }
}

/// Classifies an HTTP error answer. `x-should-retry: true|false` wins (as in the SDKs);
/// otherwise 408, 409, 429 (unless the body says `insufficient_quota`), 500, 502, 503,
/// 504 and 529 are retried.
pub(crate) fn classify_status(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Verdict {
    let retry = Verdict::Retry {
        after: server_delay(headers),
    };
    let should_retry = headers
        .get(ratelimit::SHOULD_RETRY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match should_retry {
        Some(v) if v.eq_ignore_ascii_case("true") => return retry,
        Some(v) if v.eq_ignore_ascii_case("false") => return Verdict::Fatal,
        _ => {}
    }
    match status.as_u16() {
        408 | 409 | 500 | 502 | 503 | 504 | 529 => retry,
        429 if !ErrorProbe::parse(body).is_quota() => retry,
        _ => Verdict::Fatal,
    }
}

/// The server-directed delay: `retry-after-ms`, else `retry-after` (seconds).
pub(crate) fn server_delay(headers: &HeaderMap) -> Option<Duration> {
    ratelimit::retry_after(|name| headers.get(name).and_then(|v| v.to_str().ok()))
}

/// Runs `attempt` until it succeeds, fails fatally, runs out of retries or time.
/// `attempt` gets the attempt number (1-based). `deadline` is the one deadline for
/// every attempt and every wait; `label` names the call in logs.
pub(crate) async fn run<T, E, F, Fut>(
    policy: &RetryPolicy,
    max_retries: u32,
    deadline: Instant,
    label: &str,
    mut attempt: F,
) -> Result<T, Stop<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let started = Instant::now();
    let mut waited = Duration::ZERO;
    let mut n = 1u32;
    loop {
        let failure = match tokio::time::timeout_at(deadline, attempt(n)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(failure)) => failure,
            Err(_) => {
                tracing::debug!(call = %label, attempt = n, "deadline passed during attempt");
                return Err(Stop::Timeout {
                    attempts: n,
                    elapsed: started.elapsed(),
                });
            }
        };
        let unit: f64 = rand::random();
        let Some(delay) = policy.next_delay(max_retries, n - 1, failure.verdict, waited, unit)
        else {
            tracing::debug!(call = %label, attempt = n, verdict = ?failure.verdict, "not retrying");
            return Err(Stop::Failed(failure.error));
        };
        if Instant::now() + delay >= deadline {
            tracing::debug!(
                call = %label,
                attempt = n,
                delay_ms = delay.as_millis() as u64,
                "next retry would pass the deadline; giving up"
            );
            return Err(Stop::Failed(failure.error));
        }
        tracing::debug!(
            call = %label,
            attempt = n,
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        waited += delay;
        tokio::time::sleep(delay).await;
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::{Arc, Mutex};

    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    const RATE_LIMIT: &str = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const CREDIT: &str = r#"{"error":{"message":"no credit","type":"insufficient_quota","param":null,"code":"credit_balance_exhausted"}}"#;

    #[test]
    fn retryable_statuses() {
        let none = HeaderMap::new();
        for code in [408, 409, 500, 502, 503, 504, 529] {
            assert_eq!(
                classify_status(status(code), &none, b""),
                Verdict::Retry { after: None },
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 422, 501, 505] {
            assert_eq!(
                classify_status(status(code), &none, b""),
                Verdict::Fatal,
                "{code}"
            );
        }
    }

    #[test]
    fn rate_limit_429_is_retried_but_quota_429_is_not() {
        let none = HeaderMap::new();
        let s = status(429);
        assert!(matches!(
            classify_status(s, &none, RATE_LIMIT.as_bytes()),
            Verdict::Retry { .. }
        ));
        assert_eq!(classify_status(s, &none, QUOTA.as_bytes()), Verdict::Fatal);
        assert_eq!(classify_status(s, &none, CREDIT.as_bytes()), Verdict::Fatal);
        // A 429 without a JSON body is a rate limit as far as anyone can tell.
        assert!(matches!(
            classify_status(s, &none, b"slow down"),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn x_should_retry_overrides_the_status_rule() {
        let yes = headers(&[("x-should-retry", "true"), ("retry-after-ms", "5")]);
        let no = headers(&[("x-should-retry", "false")]);
        assert_eq!(
            classify_status(status(400), &yes, b""),
            Verdict::Retry {
                after: Some(Duration::from_millis(5))
            }
        );
        assert_eq!(
            classify_status(status(429), &yes, QUOTA.as_bytes()),
            Verdict::Retry {
                after: Some(Duration::from_millis(5))
            }
        );
        assert_eq!(classify_status(status(503), &no, b""), Verdict::Fatal);
        // Garbage values fall back to the status rule.
        let odd = headers(&[("x-should-retry", "maybe")]);
        assert!(matches!(
            classify_status(status(503), &odd, b""),
            Verdict::Retry { .. }
        ));
    }

    #[test]
    fn server_delay_prefers_ms_and_parses_fractions() {
        let h = headers(&[("retry-after", "3"), ("retry-after-ms", "150")]);
        assert_eq!(server_delay(&h), Some(Duration::from_millis(150)));
        let h = headers(&[("retry-after", "1.5")]);
        assert_eq!(server_delay(&h), Some(Duration::from_millis(1500)));
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(server_delay(&h), None);
        let h = headers(&[("retry-after-ms", "junk"), ("retry-after", "2")]);
        assert_eq!(server_delay(&h), Some(Duration::from_secs(2)));
    }

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let p = RetryPolicy::default()
            .with_jitter(Jitter::None)
            .with_max_delay(Duration::from_millis(1000));
        let got: Vec<u128> = (0..5).map(|n| p.backoff(n, 0.5).as_millis()).collect();
        assert_eq!(got, [200, 400, 800, 1000, 1000]);
        // Huge retry numbers do not overflow.
        assert_eq!(p.backoff(u32::MAX, 0.0), Duration::from_millis(1000));
    }

    #[test]
    fn sdk_jitter_stays_within_75_to_100_percent_and_full_within_0_to_100() {
        let sdk = RetryPolicy::default();
        let full = RetryPolicy::default().with_jitter(Jitter::Full);
        for unit in [0.0, 0.25, 0.5, 0.999_999] {
            for n in 0..3 {
                let nominal = Duration::from_millis(200 << n);
                let d = sdk.backoff(n, unit);
                assert!(d <= nominal && d >= nominal.mul_f64(0.75), "{d:?} {unit}");
                assert!(full.backoff(n, unit) <= nominal);
            }
        }
        assert_eq!(sdk.backoff(0, 0.0), Duration::from_millis(200));
        assert_eq!(full.backoff(0, 0.0), Duration::ZERO);
    }

    #[test]
    fn next_delay_honours_counts_caps_and_server_delays() {
        let p = RetryPolicy::default().with_jitter(Jitter::None);
        let retry = Verdict::Retry { after: None };
        let z = Duration::ZERO;
        assert_eq!(
            p.next_delay(2, 0, retry, z, 0.0),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            p.next_delay(2, 1, retry, z, 0.0),
            Some(Duration::from_millis(400))
        );
        assert_eq!(p.next_delay(2, 2, retry, z, 0.0), None, "count cap");
        assert_eq!(p.next_delay(2, 0, Verdict::Fatal, z, 0.0), None);

        let after = |ms| Verdict::Retry {
            after: Some(Duration::from_millis(ms)),
        };
        assert_eq!(
            p.next_delay(2, 0, after(1234), z, 0.0),
            Some(Duration::from_millis(1234))
        );
        assert_eq!(
            p.next_delay(2, 0, after(60_000), z, 0.0),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            p.next_delay(2, 0, after(60_001), z, 0.0),
            None,
            "beyond the cap"
        );
        // Zero means "no opinion": fall back to backoff.
        assert_eq!(
            p.next_delay(2, 1, after(0), z, 0.0),
            Some(Duration::from_millis(400))
        );
        // Total wait cap.
        let p = p.with_max_total_wait(Duration::from_millis(500));
        assert_eq!(
            p.next_delay(5, 0, retry, Duration::from_millis(300), 0.0),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            p.next_delay(5, 1, retry, Duration::from_millis(300), 0.0),
            None
        );
    }

    /// Records the (paused) time of each attempt of a fake call that fails with `verdict`
    /// `fails` times, then succeeds.
    async fn fake_call(
        policy: &RetryPolicy,
        timeout: Duration,
        fails: u32,
        verdict: Verdict,
        attempt_takes: Duration,
    ) -> (Result<u32, Stop<u32>>, Vec<Duration>) {
        let start = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let result = run(policy, policy.max_retries, start + timeout, "test", |n| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(start.elapsed());
                tokio::time::sleep(attempt_takes).await;
                if n <= fails {
                    Err(Failure { error: n, verdict })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        (result, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_is_200_400_800_ms_without_jitter() {
        let p = RetryPolicy::default()
            .with_max_retries(3)
            .with_jitter(Jitter::None);
        let retry = Verdict::Retry { after: None };
        let (res, at) = fake_call(&p, Duration::from_secs(60), 3, retry, Duration::ZERO).await;
        assert_eq!(res.unwrap(), 4);
        let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 200, 600, 1400]);
    }

    #[tokio::test(start_paused = true)]
    async fn sdk_jitter_spacing_is_within_bounds() {
        let p = RetryPolicy::default().with_max_retries(2);
        let retry = Verdict::Retry { after: None };
        let (res, at) = fake_call(&p, Duration::from_secs(60), 5, retry, Duration::ZERO).await;
        assert!(
            matches!(res, Err(Stop::Failed(3))),
            "gives up after 3 attempts"
        );
        let gap1 = at[1] - at[0];
        let gap2 = at[2] - at[1];
        assert!(gap1 >= Duration::from_millis(150) && gap1 <= Duration::from_millis(200));
        assert!(gap2 >= Duration::from_millis(300) && gap2 <= Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn server_delay_is_used_verbatim() {
        let p = RetryPolicy::default();
        let v = Verdict::Retry {
            after: Some(Duration::from_millis(1500)),
        };
        let (res, at) = fake_call(&p, Duration::from_secs(60), 1, v, Duration::ZERO).await;
        assert_eq!(res.unwrap(), 2);
        assert_eq!(at[1] - at[0], Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_failures_are_not_retried() {
        let p = RetryPolicy::default();
        let (res, at) = fake_call(
            &p,
            Duration::from_secs(60),
            1,
            Verdict::Fatal,
            Duration::ZERO,
        )
        .await;
        assert!(matches!(res, Err(Stop::Failed(1))));
        assert_eq!(at.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_beyond_the_deadline_gives_up_at_once() {
        let p = RetryPolicy::default();
        let v = Verdict::Retry {
            after: Some(Duration::from_secs(5)),
        };
        let start = Instant::now();
        let (res, at) = fake_call(&p, Duration::from_secs(2), 1, v, Duration::ZERO).await;
        assert!(matches!(res, Err(Stop::Failed(1))));
        assert_eq!(at.len(), 1);
        assert!(start.elapsed() < Duration::from_millis(10), "did not sleep");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_a_slow_attempt() {
        let p = RetryPolicy::default();
        let retry = Verdict::Retry { after: None };
        let start = Instant::now();
        let (res, _) = fake_call(
            &p,
            Duration::from_millis(300),
            0,
            retry,
            Duration::from_secs(5),
        )
        .await;
        match res {
            Err(Stop::Timeout { attempts, elapsed }) => {
                assert_eq!(attempts, 1);
                assert_eq!(elapsed, Duration::from_millis(300));
            }
            other => panic!("expected timeout, got {other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_covers_all_attempts() {
        // Each attempt takes 100 ms and fails; backoff 200, 400 ms: attempts start at
        // 0, 300 and 800 ms. A deadline at 850 ms cuts the third attempt.
        let p = RetryPolicy::default()
            .with_jitter(Jitter::None)
            .with_max_retries(5);
        let retry = Verdict::Retry { after: None };
        let (res, at) = fake_call(
            &p,
            Duration::from_millis(850),
            9,
            retry,
            Duration::from_millis(100),
        )
        .await;
        assert_eq!(at.len(), 3);
        assert!(matches!(res, Err(Stop::Timeout { attempts: 3, .. })));
    }
}
