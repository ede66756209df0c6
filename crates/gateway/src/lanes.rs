//! Priority lanes, part of stage 4 (admit): a request is `interactive` (the default) or
//! `batch`, by its `x-tollgate-priority` header or else its key's default lane.
//!
//! - An interactive request is admitted exactly as before: it may take every last unit
//!   of a rate limit, and it never waits.
//! - A batch request must leave `lanes.batch_reserve` of every limit that governs it
//!   untouched (its take keeps `ceil(reserve × limit)` units in each bucket), so a
//!   batch flood cannot use up the capacity interactive traffic needs. When it does
//!   not fit, it waits in a queue instead of being refused at once: one FIFO queue per
//!   refused bucket (rule and dimension), whose head sleeps exactly until the bucket's
//!   refill makes room (the wait the counters compute; no polling) and then tries
//!   again; the others wait their turn behind it. A head that another bucket refuses
//!   (a request governed by several rules) gives up its turn and queues for that
//!   bucket, so those behind it, who may need only the first bucket's room, are not
//!   held up by a bucket that does not govern them; it rejoins a queue at its tail, so
//!   under steady pressure on both of its rules it may wait longer than the requests
//!   it arrived before. A request whose wait would end past
//!   `lanes.batch_max_wait` (measured from its arrival) gets the usual 429 with
//!   `retry-after` — at once when no queue holds it yet and the bucket's own wait is
//!   already longer than that, else when its time is up.
//!
//! Fairness is FIFO per bucket: requests of every key that share a rule wait in
//! arrival order, so a key that floods the queue delays the keys behind it, but no
//! batch request overtakes an older one waiting in the same queue: a newcomer for
//! whose buckets a queue exists joins it without trying first (room given back by a
//! settlement would otherwise go to it before the head wakes). Each try after a wait
//! counts with the rules as they are by then (`admit::commit_current`).
//!
//! A waiting request is a future like any other: when the client disconnects, the
//! server drops it, which leaves the queue (the depth gauge's guard is released by
//! `Drop`) and records the request as a client disconnect.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use parking_lot::Mutex;
use tokio::time::Instant;
use tollgate_store::Lane;

use crate::admit::{self, Admission, Plan};
use crate::config::LanesConfig;
use crate::error::GatewayError;
use crate::limits::{Dimension, Limits};

/// The request header that chooses a lane.
pub const PRIORITY_HEADER: &str = "x-tollgate-priority";
const PRIORITY: HeaderName = HeaderName::from_static(PRIORITY_HEADER);

/// The lanes' queues and counters. One per server.
#[derive(Debug, Default)]
pub struct Lanes {
    config: LanesConfig,
    /// The queue of each bucket that currently has waiters (a bucket's scope, as
    /// refusals name it, and its dimension).
    queues: Mutex<HashMap<(String, Dimension), Arc<Queue>>>,
    depth: AtomicU64,
    waits: AtomicU64,
    timeouts: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    /// Held by the head of the queue; tokio's mutex hands it over in FIFO order.
    turn: tokio::sync::Mutex<()>,
}

/// The lane of a request: its header when present, else its key's default.
pub fn lane(headers: &HeaderMap, default: Lane) -> Result<Lane, GatewayError> {
    let Some(v) = headers.get(&PRIORITY) else {
        return Ok(default);
    };
    match v.to_str().map(str::trim) {
        Ok(v) if v.eq_ignore_ascii_case("batch") => Ok(Lane::Batch),
        Ok(v) if v.eq_ignore_ascii_case("interactive") => Ok(Lane::Interactive),
        _ => Err(GatewayError::InvalidRequest {
            message: format!(
                "The {PRIORITY_HEADER} header must be `batch` or `interactive`; leave it out \
                 to use the key's default lane."
            ),
            param: Some(PRIORITY_HEADER.into()),
        }),
    }
}

impl Lanes {
    pub fn new(config: LanesConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The share of every limit a request of `lane` must leave untouched.
    pub fn reserve(&self, lane: Lane) -> f64 {
        match lane {
            Lane::Interactive => 0.0,
            Lane::Batch => self.config.batch_reserve,
        }
    }

    /// The longest a batch request waits for capacity.
    pub fn max_wait(&self) -> std::time::Duration {
        self.config.batch_max_wait
    }

    /// Batch requests waiting now.
    pub fn queue_depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Batch requests that had to wait (whatever the outcome).
    pub fn waits_total(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Batch requests refused after waiting, or because their wait would be too long.
    pub fn timeouts_total(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Admits the request in its lane (see the module docs): interactive at once or a
    /// 429; batch keeping the reserve, waiting its turn when it does not fit, until
    /// `batch_max_wait` after it `arrived`.
    pub async fn admit(
        &self,
        limits: &Arc<Limits>,
        plan: &Plan<'_>,
        lane: Lane,
        arrived: Instant,
    ) -> Result<Admission, GatewayError> {
        let reserve = self.reserve(lane);
        let deadline = arrived + self.config.batch_max_wait;
        // A batch request that finds others waiting for one of its buckets queues
        // behind them: room given back (a settlement) would otherwise go to it, the
        // newcomer, while they sleep until the refill they were told of.
        let mut next = match self.queued(plan, lane) {
            Some(key) => (key, None),
            None => {
                let refusal = match admit::commit(limits, plan, reserve).await {
                    Err(GatewayError::RateLimited(r)) if lane == Lane::Batch => r,
                    other => return other,
                };
                if Instant::now() + refusal.retry_after > deadline {
                    self.timeouts.fetch_add(1, Ordering::Relaxed);
                    return Err(GatewayError::RateLimited(refusal));
                }
                ((refusal.scope.clone(), refusal.dimension), None)
            }
        };
        self.waits.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting::new(&self.depth);
        // A future per try (admission is asynchronous once counters live in Redis),
        // with the rules as they are by then (see `admit::commit_current`).
        let attempt = || admit::commit_current(limits, plan, reserve);
        loop {
            let joined = Joined::new(self, next.0);
            match self.wait_turn(&joined, deadline, next.1, &attempt).await {
                Turn::Done(result) => return result,
                Turn::Elsewhere(r, wake) => next = ((r.scope.clone(), r.dimension), Some(wake)),
            }
        }
    }

    /// The queue of one of `plan`'s buckets that batch requests wait in, if any (never
    /// for an interactive request).
    fn queued(&self, plan: &Plan<'_>, lane: Lane) -> Option<(String, Dimension)> {
        if lane != Lane::Batch {
            return None;
        }
        let queues = self.queues.lock();
        if queues.is_empty() {
            return None;
        }
        plan.buckets().find(|key| queues.contains_key(key))
    }

    /// Waits to be the head of `queue` (bucket `key`'s), then tries whenever the
    /// bucket's refill should have made room, until admitted or past `deadline` — or
    /// until another bucket refuses it: then it gives up its turn here (those behind
    /// it need only this bucket's room) and queues for that one.
    async fn wait_turn<F, Fut>(
        &self,
        joined: &Joined<'_>,
        deadline: Instant,
        not_before: Option<Instant>,
        attempt: &F,
    ) -> Turn
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Admission, GatewayError>>,
    {
        let key = &joined.key;
        let turn = tokio::time::timeout_at(deadline, joined.queue.turn.lock()).await;
        if let (Ok(_), Some(wake)) = (&turn, not_before) {
            // Refused by this bucket a moment ago: no room before then.
            tokio::time::sleep_until(wake).await;
        }
        loop {
            let r = match attempt().await {
                Err(GatewayError::RateLimited(r)) => r,
                other => return Turn::Done(other),
            };
            // Out of time behind others, or room only after the deadline: refused.
            let wake = Instant::now() + r.retry_after;
            if turn.is_err() || wake > deadline {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                return Turn::Done(Err(GatewayError::RateLimited(r)));
            }
            if r.scope != key.0 || r.dimension != key.1 {
                return Turn::Elsewhere(r, wake);
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// How a turn at the head of one bucket's queue ended.
enum Turn {
    /// Admitted, or refused for good.
    Done(Result<Admission, GatewayError>),
    /// Refused by another bucket, which has room at the instant given (before the
    /// deadline).
    Elsewhere(Box<crate::error::RateRefusal>, Instant),
}

/// A request's place in one bucket's queue. Dropped — the request admitted, refused,
/// moved to another queue or its client gone — it forgets the queue once nobody else
/// waits in it.
struct Joined<'a> {
    lanes: &'a Lanes,
    key: (String, Dimension),
    queue: Arc<Queue>,
}

impl<'a> Joined<'a> {
    fn new(lanes: &'a Lanes, key: (String, Dimension)) -> Self {
        let queue = lanes.queues.lock().entry(key.clone()).or_default().clone();
        Self { lanes, key, queue }
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        let mut queues = self.lanes.queues.lock();
        // Released here, under the lock (every reference is made and released under
        // it), so the count below is exact even when two threads leave at once.
        let ours = std::mem::take(&mut self.queue);
        let same = queues.get(&self.key).is_some_and(|q| Arc::ptr_eq(q, &ours));
        drop(ours);
        // Only the map's reference left: nobody else waits here.
        if same
            && queues
                .get(&self.key)
                .is_some_and(|q| Arc::strong_count(q) == 1)
        {
            queues.remove(&self.key);
        }
    }
}

/// Counts a waiting request in the depth gauge until dropped (which a disconnect does).
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(depth: &'a AtomicU64) -> Self {
        depth.fetch_add(1, Ordering::Relaxed);
        Self(depth)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::keys::Principal;
    use crate::preflight::{Endpoint, Preflight};
    use bytes::Bytes;
    use tollgate_store::{LimitScope, RateLimitRule, Role};

    #[test]
    fn the_header_chooses_the_lane_and_anything_else_is_refused_by_name() {
        let mut h = HeaderMap::new();
        assert_eq!(lane(&h, Lane::Batch), Ok(Lane::Batch));
        assert_eq!(lane(&h, Lane::Interactive), Ok(Lane::Interactive));
        h.insert(PRIORITY_HEADER, "batch".parse().unwrap());
        assert_eq!(lane(&h, Lane::Interactive), Ok(Lane::Batch));
        h.insert(PRIORITY_HEADER, "Interactive".parse().unwrap());
        assert_eq!(lane(&h, Lane::Batch), Ok(Lane::Interactive));
        h.insert(PRIORITY_HEADER, "urgent".parse().unwrap());
        let e = lane(&h, Lane::Interactive).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        assert_eq!(e.param(), Some(PRIORITY_HEADER));
        assert!(
            e.message().contains("x-tollgate-priority"),
            "{}",
            e.message()
        );
    }

    fn principal() -> Principal {
        Principal {
            key_id: "key_1".into(),
            project: "shop".into(),
            env: "prod".into(),
            role: Role::Member,
            upstream_ref: None,
            lane: Lane::Interactive,
        }
    }

    fn pre() -> Preflight {
        Preflight {
            model: Some("gpt-4o".into()),
            stream: false,
            strip_stream_usage: false,
            body: Bytes::from_static(br#"{"model":"gpt-4o","input":"hi"}"#),
            ..Preflight::default()
        }
    }

    /// An RPM rule on project shop, or on one of its keys.
    fn rule(key_id: Option<&str>, rpm: u64) -> RateLimitRule {
        RateLimitRule {
            scope: LimitScope {
                project: "shop".into(),
                env: None,
                key_id: key_id.map(Into::into),
                model: None,
            },
            rpm: Some(rpm),
            tpm: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn limits(rpm: u64) -> Arc<Limits> {
        let l = Arc::new(Limits::default());
        l.replace(vec![rule(None, rpm)], vec![]);
        l
    }

    async fn admit(lanes: &Lanes, l: &Arc<Limits>, lane: Lane) -> Result<Admission, GatewayError> {
        let pre = pre();
        let plan = Plan::rates(l, Endpoint::Responses, &principal(), &pre, 16);
        lanes.admit(l, &plan, lane, Instant::now()).await
    }

    // These run in real time: the counters read the real clock, so paused tokio time
    // would never see a bucket refill.

    #[tokio::test]
    async fn batch_keeps_the_reserve_and_a_hopeless_wait_is_refused_at_once() {
        let lanes = Arc::new(Lanes::new(LanesConfig {
            batch_reserve: 0.5,
            batch_max_wait: Duration::from_secs(3),
        }));
        // Batch may use 5 of the 10 at once.
        let l = limits(10);
        for _ in 0..5 {
            admit(&lanes, &l, Lane::Batch).await.unwrap();
        }
        let start = Instant::now();
        // 10 a minute refill one every 6 s, past the 3 s bound: refused at once.
        let e = admit(&lanes, &l, Lane::Batch).await.unwrap_err();
        assert!(matches!(e, GatewayError::RateLimited(_)));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "no pointless wait"
        );
        assert_eq!(lanes.timeouts_total(), 1);
        assert_eq!(lanes.waits_total(), 0);
        // The bound counts from arrival: a request that arrived 2.5 s ago (its body
        // was slow) may wait 0.5 s more, so a 1 s wait is refused too.
        let roomy = Arc::new(Lanes::new(LanesConfig {
            batch_reserve: 0.5,
            batch_max_wait: Duration::from_secs(3),
        }));
        let l60 = limits(60);
        for _ in 0..30 {
            admit(&roomy, &l60, Lane::Batch).await.unwrap();
        }
        let pre = pre();
        let plan = Plan::rates(&l60, Endpoint::Responses, &principal(), &pre, 16);
        let late = Instant::now() - Duration::from_millis(2_500);
        let e = roomy
            .admit(&l60, &plan, Lane::Batch, late)
            .await
            .unwrap_err();
        assert!(matches!(e, GatewayError::RateLimited(_)));
        assert_eq!(roomy.timeouts_total(), 1);
        // Interactive takes the reserve without waiting.
        for _ in 0..5 {
            admit(&lanes, &l, Lane::Interactive).await.unwrap();
        }
        assert!(admit(&lanes, &l, Lane::Interactive).await.is_err());
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn waiting_batch_requests_are_admitted_in_arrival_order_as_room_appears() {
        let lanes = Arc::new(Lanes::new(LanesConfig {
            batch_reserve: 0.5,
            batch_max_wait: Duration::from_secs(10),
        }));
        // 120 a minute: one every 0.5 s; batch stops at 60 left.
        let l = limits(120);
        for _ in 0..60 {
            admit(&lanes, &l, Lane::Batch).await.unwrap();
        }
        let start = Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (lanes, l, order) = (lanes.clone(), l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let r = admit(&lanes, &l, Lane::Batch).await;
                order.lock().push((i, Instant::now() - start));
                r.is_ok()
            }));
            // Arrive in a known order.
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        assert_eq!(lanes.queue_depth(), 4);
        for t in tasks {
            assert!(t.await.unwrap());
        }
        let order = order.lock().clone();
        let ids: Vec<_> = order.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, [0, 1, 2, 3], "FIFO");
        // One every half second, none before its room.
        for (n, (_, at)) in order.iter().enumerate() {
            assert!(
                *at >= Duration::from_millis(500 * (n as u64 + 1)),
                "{order:?}"
            );
            assert!(
                *at < Duration::from_millis(500 * (n as u64 + 1) + 50),
                "{order:?}"
            );
        }
        assert_eq!(lanes.queue_depth(), 0);
        assert_eq!(lanes.waits_total(), 4);
        assert!(lanes.queues.lock().is_empty(), "empty queues are forgotten");
    }

    /// A batch request at the head of one bucket's queue that another bucket refuses
    /// moves to that bucket's queue, so the requests behind it get the first bucket's
    /// room as it appears instead of waiting on a limit that does not govern them.
    #[tokio::test]
    async fn a_head_refused_by_another_bucket_queues_there_and_lets_the_others_by() {
        let lanes = Arc::new(Lanes::new(LanesConfig {
            batch_reserve: 0.0,
            batch_max_wait: Duration::from_secs(15),
        }));
        // The project: 120 a minute (one every 0.5 s). key_1 alone: 6 (one every 10 s).
        let l = Arc::new(Limits::default());
        l.replace(vec![rule(None, 120), rule(Some("key_1"), 6)], vec![]);
        let who = |key: &str| Principal {
            key_id: key.into(),
            ..principal()
        };
        let pre = pre();
        let call = |key: &str, lane| {
            let (lanes, l, p, pre) = (lanes.clone(), l.clone(), who(key), pre.clone());
            async move {
                let plan = Plan::rates(&l, Endpoint::Responses, &p, &pre, 16);
                lanes.admit(&l, &plan, lane, Instant::now()).await
            }
        };
        // key_1 has one request left; the project none.
        for _ in 0..5 {
            call("key_1", Lane::Interactive).await.unwrap();
        }
        for _ in 0..115 {
            call("key_2", Lane::Interactive).await.unwrap();
        }
        let start = Instant::now();
        // key_1's batch request, then key_2's: both wait for the project's room.
        let first = tokio::spawn(call("key_1", Lane::Batch));
        tokio::task::yield_now().await;
        let second = tokio::spawn(call("key_2", Lane::Batch));
        tokio::task::yield_now().await;
        assert_eq!(lanes.queue_depth(), 2);
        // Meanwhile key_1's own last request goes (a call settled elsewhere, say).
        let rules = l.rules();
        let key_1 = rules.matching("shop", "prod", "key_1", Some("gpt-4o"));
        let own = key_1.iter().find(|r| r.scope.key_id.is_some()).unwrap();
        l.counters.adjust(
            &(own.scope.clone(), Dimension::Requests),
            6,
            -1,
            std::time::Instant::now(),
            false,
        );
        // The project's room at 0.5 s goes to key_1's request, which key_1's rule
        // refuses for 10 s: it queues there, and key_2's takes the project's room.
        second.await.unwrap().unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(lanes.queue_depth(), 1);
        assert!(!first.is_finished());
        let queued: Vec<_> = lanes.queues.lock().keys().cloned().collect();
        assert_eq!(queued.len(), 1);
        assert!(queued[0].0.contains("key_1"), "{queued:?}");
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        assert_eq!(lanes.queue_depth(), 0);
        assert!(
            lanes.queues.lock().is_empty(),
            "a client gone leaves no queue behind"
        );
    }

    #[tokio::test]
    async fn a_newcomer_queues_behind_a_waiting_batch_request_for_room_given_back() {
        let lanes = Arc::new(Lanes::new(LanesConfig {
            batch_reserve: 0.0,
            batch_max_wait: Duration::from_secs(10),
        }));
        // One a second, none left: a batch request waits for the next.
        let l = limits(60);
        for _ in 0..60 {
            admit(&lanes, &l, Lane::Interactive).await.unwrap();
        }
        let first = {
            let (lanes, l) = (lanes.clone(), l.clone());
            tokio::spawn(async move { admit(&lanes, &l, Lane::Batch).await.is_ok() })
        };
        tokio::task::yield_now().await;
        assert_eq!(lanes.queue_depth(), 1);
        // One request's room comes back (as a settlement gives tokens back) before
        // the refill the waiter sleeps until; then a newcomer arrives.
        let rules = l.rules();
        let rule = &rules.matching("shop", "prod", "key_1", Some("gpt-4o"))[0];
        l.counters.adjust(
            &(rule.scope.clone(), Dimension::Requests),
            60,
            1,
            std::time::Instant::now(),
            false,
        );
        assert!(admit(&lanes, &l, Lane::Batch).await.is_ok());
        assert!(
            first.is_finished(),
            "the newcomer took the room before the request waiting for it"
        );
        assert!(first.await.unwrap());
    }

    #[tokio::test]
    async fn a_waiting_request_counts_with_the_limits_as_they_are_now() {
        let l = limits(6_000);
        let pre = pre();
        let stale = Plan::rates(&l, Endpoint::Responses, &principal(), &pre, 16);
        // The limit is lowered to 60 a minute while the request waits, and used up.
        l.replace(vec![rule(None, 60)], vec![]);
        let lanes = Lanes::new(LanesConfig::default());
        for _ in 0..60 {
            admit(&lanes, &l, Lane::Interactive).await.unwrap();
        }
        // Its next try counts with 60 (with 6 000 it fit, and moved the bucket back).
        let e = admit::commit_current(&l, &stale, 0.0).await.unwrap_err();
        assert!(matches!(e, GatewayError::RateLimited(_)), "{e:?}");
        assert!(admit(&lanes, &l, Lane::Interactive).await.is_err());
        // A rule removed meanwhile no longer holds it.
        l.replace(vec![], vec![]);
        assert!(admit::commit_current(&l, &stale, 0.0).await.is_ok());
    }

    #[tokio::test]
    async fn a_waiter_past_its_max_wait_gets_a_429_and_a_dropped_one_leaves_the_queue() {
        let lanes = Arc::new(Lanes::new(LanesConfig {
            batch_reserve: 0.0,
            batch_max_wait: Duration::from_millis(2_500),
        }));
        // One a second, none left.
        let l = limits(60);
        for _ in 0..60 {
            admit(&lanes, &l, Lane::Batch).await.unwrap();
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (lanes, l) = (lanes.clone(), l.clone());
            tasks.push(tokio::spawn(async move {
                admit(&lanes, &l, Lane::Batch).await.is_ok()
            }));
            tokio::task::yield_now().await;
        }
        let results: Vec<bool> = futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // Rooms at 1 s and 2 s; the next is at 3 s, past the others' 2.5 s bound.
        assert_eq!(results, [true, true, false, false]);
        assert!(start.elapsed() < Duration::from_secs(3));
        assert_eq!(lanes.timeouts_total(), 2);

        // A waiter whose future is dropped (the client went away) leaves the queue.
        let waiter = {
            let (lanes, l) = (lanes.clone(), l.clone());
            tokio::spawn(async move { admit(&lanes, &l, Lane::Batch).await.is_ok() })
        };
        tokio::task::yield_now().await;
        assert_eq!(lanes.queue_depth(), 1);
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(lanes.queue_depth(), 0);
        assert!(lanes.queues.lock().is_empty(), "its queue is forgotten");
    }
}
