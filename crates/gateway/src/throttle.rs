//! Adaptive upstream throttling, just before stage 7 (dispatch): batch requests slow
//! down before the upstream starts refusing, so its 429s are avoided rather than
//! retried.
//!
//! Every upstream answer's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
//! headers update what tollgate knows of the upstream's capacity for that provider
//! credential (its secret reference, never the secret) and model. Between answers the
//! estimate follows the upstream's own refill — `remaining` grows back to `limit`
//! over `reset`, the way OpenAI's buckets refill — and requests sent but not yet
//! answered count as already spent, so a burst of concurrent requests sees each
//! other before the upstream does.
//!
//! When `upstream.adaptive_threshold` is above 0, a batch request goes upstream only
//! if the estimated remaining requests stay at or above `threshold × limit` after it,
//! and the remaining tokens are at or above `threshold × limit`; otherwise it sleeps
//! until the refill should have restored that much (not until the full reset — a
//! bucket that refills continuously has room again long before it is full), bounded
//! by `lanes.batch_max_wait` from the request's arrival, after which it goes anyway.
//! Interactive requests never wait here; they only count.
//!
//! Upstream 429s that reach the caller are counted (`tollgate_upstream_429_total`) and
//! logged (at most once a second); answers that needed retries are counted too
//! (`tollgate_upstream_retried_total`; the record's `attempts` says how many). Each
//! usage record carries the upstream's remaining requests and tokens seen with its
//! answer.
//!
//! Cost per request with throttling on: one hash of (credential, model), a read lock
//! on the map and a short lock on that pair's state; nothing allocates after the
//! pair's first request. With it off, only the two remaining values are read for the
//! record.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;
use tollgate_store::{Lane, UsageRecord};
use tollgate_wire::ratelimit::RateLimitInfo;

use crate::dispatch::Reply;
use crate::keys::Principal;

/// What tollgate knows of the upstream's capacity, per credential and model.
#[derive(Debug, Default)]
pub struct Throttle {
    threshold: f64,
    hasher: RandomState,
    /// By a hash of (credential reference, model). A collision of two pairs' 64-bit
    /// hashes would only merge their estimates.
    pairs: RwLock<HashMap<u64, Arc<Mutex<Pair>>>>,
    upstream_429: AtomicU64,
    retried: AtomicU64,
    paced: AtomicU64,
    last_429_log_ms: AtomicU64,
    last_pace_log_ms: AtomicU64,
}

/// One credential and model: both buckets and the requests in flight.
#[derive(Debug, Default)]
struct Pair {
    requests: Level,
    tokens: Level,
    in_flight: u64,
}

/// One upstream bucket as last reported, and how fast it refills.
#[derive(Debug, Default, Clone, Copy)]
struct Level {
    limit: f64,
    remaining: f64,
    per_sec: f64,
    /// When it was reported; `None` until the upstream reports this bucket.
    at: Option<Instant>,
}

/// A request on its way upstream (counted in flight until dropped or [`Throttle::land`]ed).
#[derive(Debug)]
pub struct Flight {
    pair: Option<Arc<Mutex<Pair>>>,
}

impl Throttle {
    /// `threshold` is `upstream.adaptive_threshold` (0: off).
    pub fn new(threshold: f64) -> Self {
        Self {
            threshold,
            ..Self::default()
        }
    }

    /// Answers the upstream sent with status 429 (after the client's retries).
    pub fn upstream_429_total(&self) -> u64 {
        self.upstream_429.load(Ordering::Relaxed)
    }

    /// Answers that took more than one attempt (a 429 or 5xx, then a retry).
    pub fn retried_total(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Batch requests held back because the upstream's capacity was low.
    pub fn paced_total(&self) -> u64 {
        self.paced.load(Ordering::Relaxed)
    }

    /// Waits, for a batch request, until the upstream has capacity above the threshold
    /// (or `deadline`), and counts the request in flight.
    pub async fn pace(
        &self,
        principal: &Principal,
        model: Option<&str>,
        lane: Lane,
        deadline: Instant,
    ) -> Flight {
        if self.threshold <= 0.0 {
            return Flight { pair: None };
        }
        let pair = self.pair(principal.upstream_ref.as_deref(), model.unwrap_or(""));
        let mut held = false;
        loop {
            let now = Instant::now();
            let wait = {
                let mut p = pair.lock();
                let wait = match lane {
                    Lane::Batch if now < deadline => p.wait(now, self.threshold),
                    _ => None,
                };
                if wait.is_none() {
                    p.in_flight += 1;
                }
                wait
            };
            let Some(wait) = wait else {
                return Flight { pair: Some(pair) };
            };
            if !held {
                held = true;
                self.paced.fetch_add(1, Ordering::Relaxed);
                if once_a_second(&self.last_pace_log_ms) {
                    tracing::info!(
                        project = %principal.project,
                        model = model.unwrap_or("-"),
                        wait_ms = wait.as_millis() as u64,
                        "upstream capacity below upstream.adaptive_threshold; batch requests wait"
                    );
                }
            }
            let until = now.checked_add(wait).map_or(deadline, |t| t.min(deadline));
            tokio::time::sleep_until(until).await;
        }
    }

    /// Takes in the upstream's answer: its rate-limit headers update the estimate and
    /// go on the usage record; 429s and retries are counted.
    pub fn land(
        &self,
        flight: Flight,
        principal: &Principal,
        reply: &Reply,
        rec: &mut UsageRecord,
    ) {
        // Parsed once, when the client took in the answer.
        let info = reply.meta.rate_limit;
        rec.upstream_remaining_requests = info.remaining_requests;
        rec.upstream_remaining_tokens = info.remaining_tokens;
        if reply.attempts() > 1 {
            self.retried.fetch_add(1, Ordering::Relaxed);
        }
        if reply.status() == http::StatusCode::TOO_MANY_REQUESTS {
            self.upstream_429.fetch_add(1, Ordering::Relaxed);
            if once_a_second(&self.last_429_log_ms) {
                tracing::warn!(
                    project = %principal.project,
                    env = %principal.env,
                    model = rec.model_requested.as_deref().unwrap_or("-"),
                    attempts = reply.attempts(),
                    remaining_requests = ?info.remaining_requests,
                    remaining_tokens = ?info.remaining_tokens,
                    "upstream answered 429 after retries"
                );
            }
        }
        if let Some(pair) = &flight.pair {
            pair.lock().observe(&info, Instant::now());
        }
    }

    fn pair(&self, credential: Option<&str>, model: &str) -> Arc<Mutex<Pair>> {
        let key = self.hasher.hash_one((credential, model));
        if let Some(p) = self.pairs.read().get(&key) {
            return p.clone();
        }
        self.pairs.write().entry(key).or_default().clone()
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(pair) = &self.pair {
            let mut p = pair.lock();
            p.in_flight = p.in_flight.saturating_sub(1);
        }
    }
}

impl Pair {
    /// How long a batch request must wait for the capacity above the threshold, if at
    /// all: requests must stay at `threshold × limit` after this one (those in flight
    /// count as spent), tokens must be at `threshold × limit` now.
    fn wait(&self, now: Instant, threshold: f64) -> Option<Duration> {
        let in_flight = self.in_flight as f64;
        let requests = self.requests.wait(now, threshold, 1.0 + in_flight);
        let tokens = self.tokens.wait(now, threshold, 0.0);
        match (requests, tokens) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    fn observe(&mut self, info: &RateLimitInfo, now: Instant) {
        self.requests.observe(
            info.limit_requests,
            info.remaining_requests,
            info.reset_requests,
            now,
        );
        self.tokens.observe(
            info.limit_tokens,
            info.remaining_tokens,
            info.reset_tokens,
            now,
        );
    }
}

impl Level {
    fn observe(
        &mut self,
        limit: Option<u64>,
        remaining: Option<u64>,
        reset: Option<Duration>,
        now: Instant,
    ) {
        let (Some(limit), Some(remaining)) = (limit, remaining) else {
            return;
        };
        if limit == 0 {
            return;
        }
        let (limit, remaining) = (limit as f64, remaining.min(limit) as f64);
        // Answers to concurrent requests arrive in any order: an older answer's
        // higher count must not undo a newer one's, so the estimate only moves up by
        // the refill. (It can only err low, which delays batch work a little.)
        let estimate = self
            .at
            .filter(|_| self.limit == limit)
            .map_or(remaining, |at| {
                let refilled = self.per_sec * now.saturating_duration_since(at).as_secs_f64();
                (self.remaining + refilled).min(limit)
            });
        // The refill rate the reset implies (the bucket is full after `reset`);
        // without one, a per-minute limit's.
        self.per_sec = match reset {
            Some(r) if remaining < limit && !r.is_zero() => (limit - remaining) / r.as_secs_f64(),
            _ => limit / 60.0,
        };
        self.limit = limit;
        self.remaining = remaining.min(estimate);
        self.at = Some(now);
    }

    /// Time until the estimated level, less `spent`, reaches `threshold × limit`.
    fn wait(&self, now: Instant, threshold: f64, spent: f64) -> Option<Duration> {
        let at = self.at?;
        let refilled = self.per_sec * now.saturating_duration_since(at).as_secs_f64();
        let level = (self.remaining + refilled).min(self.limit) - spent;
        let floor = threshold * self.limit;
        if level >= floor || self.per_sec <= 0.0 {
            return None;
        }
        // At least a millisecond: never a spin. An upstream's absurd reset (years) gives
        // a wait too long for a `Duration`: the longest one, cut by the caller's deadline.
        let wait = Duration::try_from_secs_f64((floor - level) / self.per_sec);
        Some(wait.unwrap_or(Duration::MAX).max(Duration::from_millis(1)))
    }
}

/// True at most once a second per `last` (for rate-limited logs).
fn once_a_second(last: &AtomicU64) -> bool {
    let now = u64::try_from(crate::accept::now_ms()).unwrap_or(0);
    let prev = last.load(Ordering::Relaxed);
    now >= prev + 1_000
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(limit: u64, remaining: u64, reset_ms: u64) -> RateLimitInfo {
        RateLimitInfo {
            limit_requests: Some(limit),
            remaining_requests: Some(remaining),
            reset_requests: Some(Duration::from_millis(reset_ms)),
            ..RateLimitInfo::default()
        }
    }

    #[test]
    fn a_pair_waits_for_the_refill_to_the_threshold_counting_requests_in_flight() {
        let t0 = Instant::now();
        let mut p = Pair::default();
        assert_eq!(p.wait(t0, 0.1), None, "nothing known: no wait");
        // 100 a minute, 50 left, full again in 30 s: refills 100/60 per second.
        p.observe(&info(100, 50, 30_000), t0);
        assert_eq!(p.wait(t0, 0.1), None);
        // 10 left: one more would leave 9 < 10; room for it in 0.6 s.
        p.observe(&info(100, 10, 54_000), t0);
        let w = p.wait(t0, 0.1).unwrap();
        assert!((w.as_secs_f64() - 0.6).abs() < 0.01, "{w:?}");
        assert_eq!(p.wait(t0 + Duration::from_millis(610), 0.1), None);
        // Two in flight count as spent: 1.8 s.
        p.in_flight = 2;
        let w = p.wait(t0, 0.1).unwrap();
        assert!((w.as_secs_f64() - 1.8).abs() < 0.01, "{w:?}");
        // Tokens below the threshold hold requests back too.
        p.in_flight = 0;
        p.observe(
            &RateLimitInfo {
                limit_tokens: Some(60_000),
                remaining_tokens: Some(0),
                reset_tokens: Some(Duration::from_secs(60)),
                ..info(100, 100, 0)
            },
            t0,
        );
        let w = p.wait(t0, 0.1).unwrap();
        assert!((w.as_secs_f64() - 6.0).abs() < 0.01, "{w:?}");
        // An absurd reset (the longest a `Duration` holds) implies a refill too slow
        // to wait for: the longest wait, not a panic; the caller's deadline cuts it.
        let absurd = RateLimitInfo {
            reset_requests: Some(Duration::MAX),
            ..info(100, 0, 0)
        };
        p.observe(&absurd, t0);
        p.in_flight = 1_000_000;
        assert_eq!(p.wait(t0, 0.1), Some(Duration::MAX));
    }

    fn principal() -> Principal {
        Principal {
            key_id: "key_1".into(),
            project: "shop".into(),
            env: "prod".into(),
            role: tollgate_store::Role::Member,
            upstream_ref: Some("env:SHOP_KEY".into()),
            lane: Lane::Interactive,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batch_waits_interactive_does_not_and_the_deadline_bounds_the_wait() {
        let t = Throttle::new(0.1);
        let p = principal();
        let far = Instant::now() + Duration::from_secs(60);
        // Nothing known yet: both go.
        drop(t.pace(&p, Some("gpt-4o"), Lane::Batch, far).await);
        let pair = t.pair(p.upstream_ref.as_deref(), "gpt-4o");
        // 60 a minute, 6 left: a batch request waits a second for the 7th.
        pair.lock().observe(&info(60, 6, 54_000), Instant::now());
        let start = Instant::now();
        let i = t.pace(&p, Some("gpt-4o"), Lane::Interactive, far).await;
        assert_eq!(Instant::now(), start, "interactive never waits");
        assert_eq!(pair.lock().in_flight, 1);
        drop(i);
        let b = t.pace(&p, Some("gpt-4o"), Lane::Batch, far).await;
        let waited = Instant::now() - start;
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        assert!(waited < Duration::from_millis(1_100), "{waited:?}");
        assert_eq!(t.paced_total(), 1);
        // With that one in flight, the next waits another second — unless its
        // deadline comes first.
        let soon = Instant::now() + Duration::from_millis(300);
        let b2 = t.pace(&p, Some("gpt-4o"), Lane::Batch, soon).await;
        assert_eq!(Instant::now(), soon);
        assert_eq!(pair.lock().in_flight, 2);
        drop((b, b2));
        assert_eq!(pair.lock().in_flight, 0);
        // Another model of the same credential knows nothing yet.
        let start = Instant::now();
        drop(t.pace(&p, Some("gpt-4o-mini"), Lane::Batch, far).await);
        assert_eq!(Instant::now(), start);
        // An absurd reset from the upstream: the batch request waits until its
        // deadline (the wait is too long to add to a clock reading).
        let absurd = RateLimitInfo {
            reset_requests: Some(Duration::MAX),
            ..info(100, 0, 0)
        };
        pair.lock().observe(&absurd, Instant::now());
        pair.lock().in_flight = 1_000_000;
        let soon = Instant::now() + Duration::from_millis(300);
        drop(t.pace(&p, Some("gpt-4o"), Lane::Batch, soon).await);
        assert_eq!(Instant::now(), soon);
        pair.lock().in_flight = 0;
        // Off: nothing is tracked.
        let off = Throttle::new(0.0);
        assert!(off.pace(&p, None, Lane::Batch, far).await.pair.is_none());
    }
}
