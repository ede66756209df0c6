//! The link to Redis through which replicas share state (issue 5, section 6): the
//! connections, one script call under one deadline, health (on Redis or in fallback),
//! the background probe that returns to Redis, and the metrics of all of it. Rate
//! limits (`limits::RedisCounters`) run their scripts through it; anything else that
//! replicas must count together (spend budgets) can do the same with a script of its
//! own and [`RedisLink::call`] (`budgets_redis`).
//!
//! Connections: each thread that calls Redis (each I/O thread, and the background
//! runtime's threads for settlements) keeps its own multiplexed connection, opened on
//! first use and driven by that thread's runtime, so a request's round trip never
//! hops threads; a thread's concurrent requests are pipelined on its connection.
//! Scripts go as `EVALSHA`; a server that does not know one yet (first use, or a
//! restarted Redis) answers `NOSCRIPT` and the script is loaded and run again.
//!
//! Failure: a call that cannot connect, loses its connection or passes
//! `redis.timeout_ms` marks the link down — one warning, `tollgate_redis_fallbacks_total`
//! +1 — and from then on no request waits on Redis: callers use their fallback
//! (`redis.on_failure`) at once. The probe tries a fresh connection and a `PING` every
//! second and marks the link up again (one info line). Connections opened before a
//! failure are never reused (a generation number): a cut connection may hang rather
//! than fail. The URL is logged only redacted: it may hold a password.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError, ScriptInvocation};
use tokio::sync::{watch, Notify};

use crate::config::{OnFailure, RedisConfig, RedisUrl};
use crate::metrics::Histogram;
use crate::settle_redis::Settlements;

/// How often the probe tries Redis while the link is down.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bounds of the admission round-trip histogram, in microseconds.
const ADMISSION_BUCKETS_US: &[u64] = &[
    50, 100, 150, 200, 300, 400, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000, 25_000,
    50_000, 100_000,
];

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's connection of each link: (link id, generation, connection).
    static CONNECTIONS: RefCell<Vec<(u64, u64, MultiplexedConnection)>> =
        const { RefCell::new(Vec::new()) };
}

/// One Redis server, shared by every request of a gateway.
#[derive(Debug)]
pub struct RedisLink {
    /// Tells this link's connections apart in the thread-local slots.
    id: u64,
    client: redis::Client,
    /// For logs: without user or password.
    redacted: String,
    key_prefix: String,
    timeout: Duration,
    on_failure: OnFailure,
    up: AtomicBool,
    /// Bumped on every failure: connections of an older generation are not reused.
    generation: AtomicU64,
    down_since: Mutex<Option<Instant>>,
    wake_probe: Notify,
    /// Where fire-and-forget calls (settlements) run: it outlives the I/O threads.
    background: tokio::runtime::Handle,
    fallbacks: AtomicU64,
    errors: AtomicU64,
    lost: AtomicU64,
    calls: AtomicU64,
    admission: Histogram,
    /// Settlements owed, sent every few milliseconds (`settle_redis`).
    settlements: Settlements,
}

/// Why a call did not return a value (already logged and counted by the link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallFailed;

impl RedisLink {
    /// A link to `url` (checked by the config); call [`RedisLink::check`] before
    /// serving. Must be called on the runtime that runs background work.
    pub fn new(url: &RedisUrl, config: &RedisConfig) -> Result<Arc<Self>, crate::StartError> {
        let client = redis::Client::open(url.expose()).map_err(|_| {
            crate::StartError::Redis(format!("invalid Redis URL {}", url.redacted()))
        })?;
        Ok(Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client,
            redacted: url.redacted(),
            key_prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            on_failure: config.on_failure,
            up: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            down_since: Mutex::new(None),
            wake_probe: Notify::new(),
            background: tokio::runtime::Handle::current(),
            fallbacks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            admission: Histogram::new(ADMISSION_BUCKETS_US),
            settlements: Settlements::default(),
        }))
    }

    /// Pings once: a server unreachable at start is not an error — the gateway
    /// starts in fallback and the probe returns to Redis when it answers.
    pub async fn check(&self) {
        if let Err(reason) = self.ping().await {
            self.mark_down(&reason);
        }
    }

    /// The prefix of every key written through this link.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// What callers do while the link is down.
    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    /// Whether calls go to Redis now (false: in fallback until the probe succeeds).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Runs a script on this thread's connection within `redis.timeout_ms`. A failure
    /// is logged and counted here; a connection failure or a timeout also marks the
    /// link down.
    pub async fn call<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, CallFailed> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let work = async {
            let mut conn = self.connection().await.map_err(|e| (e, true))?;
            invocation.invoke_async(&mut conn).await.map_err(|e| {
                let broken = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error();
                (e, broken)
            })
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err((e, broken))) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if broken {
                    self.mark_down(&e.to_string());
                } else {
                    tracing::warn!(redis = %self.redacted, error = %e, "a Redis script failed; this call used the fallback");
                }
                Err(CallFailed)
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.mark_down(&format!(
                    "no answer within redis.timeout_ms ({} ms)",
                    self.timeout.as_millis()
                ));
                Err(CallFailed)
            }
        }
    }

    /// Settlements owed to Redis, merged per counter and sent every
    /// [`crate::settle_redis::SETTLE_INTERVAL`].
    pub fn settlements(&self) -> &Settlements {
        &self.settlements
    }

    /// Runs `fut` on the background runtime (fire-and-forget work, e.g. a re-sync).
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.background.spawn(fut);
    }

    /// Counts and logs an update that could not be applied (e.g. a settlement made
    /// while Redis was unreachable): never lost silently.
    pub fn update_lost(&self, what: &str) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(redis = %self.redacted, what, "a Redis update was not applied");
    }

    /// Records one admission's round trip (for `tollgate_redis_admission_seconds`).
    pub fn observe_admission(&self, took: Duration) {
        self.admission.observe(took);
    }

    /// Times the link went from Redis to the fallback.
    pub fn fallbacks_total(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Calls that failed (each also used the fallback).
    pub fn errors_total(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Script calls made (admissions, settlements, re-syncs), each one round trip
    /// (two more when Redis must load the script first).
    pub fn calls_total(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Updates not applied (see [`RedisLink::update_lost`]).
    pub fn lost_total(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Admission round trips to Redis.
    pub fn admission(&self) -> &Histogram {
        &self.admission
    }

    /// Until `stop`: while the link is down, pings every [`PROBE_INTERVAL`] and marks
    /// it up when Redis answers.
    pub async fn probe(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            while self.is_up() {
                tokio::select! {
                    () = self.wake_probe.notified() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            tokio::select! {
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if self.ping().await.is_ok() {
                self.mark_up();
            }
        }
    }

    /// A fresh connection and a PING, within twice the call timeout (a handshake and
    /// a round trip).
    async fn ping(&self) -> Result<(), String> {
        let work = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&self.connection_config())
                .await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout * 2, work).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no answer to PING within {} ms",
                (self.timeout * 2).as_millis()
            )),
        }
    }

    fn connection_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
    }

    /// This thread's connection of the current generation, opened if needed.
    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let generation = self.generation.load(Ordering::Acquire);
        let cached = CONNECTIONS.with_borrow(|slots| {
            slots
                .iter()
                .find(|(id, g, _)| *id == self.id && *g == generation)
                .map(|(_, _, c)| c.clone())
        });
        if let Some(conn) = cached {
            return Ok(conn);
        }
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection_config())
            .await?;
        CONNECTIONS.with_borrow_mut(|slots| {
            slots.retain(|(id, _, _)| *id != self.id);
            slots.push((self.id, generation, conn.clone()));
        });
        Ok(conn)
    }

    fn mark_down(&self, reason: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if self.up.swap(false, Ordering::AcqRel) {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            *self.down_since.lock() = Some(Instant::now());
            let fallback = match self.on_failure {
                OnFailure::Local => "counting in this replica's memory",
                OnFailure::Open => "admitting without limits",
                OnFailure::Closed => "refusing rate-limited and budgeted calls with 503",
            };
            tracing::warn!(
                redis = %self.redacted,
                reason,
                "Redis unreachable: {fallback} (redis.on_failure) until it answers again"
            );
            self.wake_probe.notify_one();
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            let down_ms = self.down_since.lock().take().map_or(0, |t| {
                u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
            });
            tracing::info!(redis = %self.redacted, down_ms, "Redis reachable again: counting in Redis");
        }
    }
}
