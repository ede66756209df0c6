//! Anomaly detection on key usage, consulted right after stage 2 (authenticate) and
//! fed again by stage 9 (record) once a call's tokens are known.
//!
//! Per key, in memory, this process keeps a rolling baseline of requests/min and
//! tokens/min: an exponentially weighted moving average (EWMA) of each closed
//! minute's count, with an EWMA of the variance. A key is flagged when
//! - the current minute's count — checked on every observation, so a burst is caught
//!   within seconds rather than when the minute ends — is at least the configured
//!   minimum, more than `rate_factor` × the baseline mean, and more than the mean plus
//!   [`SIGMAS`] standard deviations (so a key whose traffic is naturally spiky is not
//!   flagged for its usual spikes); or
//! - it is used from a client IP range (IPv4 /24, IPv6 /48) it has not been used from,
//!   once it has been seen for `new_range_after_minutes`.
//!
//! Warm-up: no rate flag until `warmup_minutes` minutes of the key have closed, no
//! range flag until `new_range_after_minutes`; each kind of flag fires at most once per
//! key per `cooldown_minutes`.
//!
//! A flag is logged (`tracing::warn!`, never a secret or a prompt), counted per kind
//! ([`Detector::flagged_total`], [`Detector::flagged_by_kind`], exported by
//! `crate::metrics`), published to [`Detector::flags`] subscribers (where a later step
//! writes the audit entry and suspends the key in the store), optionally POSTed to a
//! webhook from a background task, and — when auto-suspend applies to the key's
//! project — the key is refused by this process at once ([`GatewayError::KeySuspended`]).
//!
//! Auto-suspend is decided per project: a project's own choice (stored with the
//! project, loaded by the key cache into a [`ProjectPolicy`]) wins; a project without
//! one follows `anomaly.auto_suspend`. It is looked up only when a flag is raised.
//!
//! Cost: one observation is O(1) — a hash into one of [`SHARDS`] mutex-guarded maps,
//! held for a few arithmetic steps and never across an await. Memory is bounded: at
//! most [`MAX_RANGES`] IP ranges per key and [`MAX_KEYS_PER_SHARD`] keys per shard.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::error::GatewayError;
use crate::webhook::Webhook;

/// The EWMA smoothing factor: each closed minute moves the baseline 20 % of the way
/// towards that minute's count, so the baseline remembers roughly the last 10 minutes
/// (`2/α − 1 = 9`) and a single busy minute cannot double it.
pub const ALPHA: f64 = 0.2;
/// Standard deviations above the mean a count must also exceed to be flagged.
pub const SIGMAS: f64 = 3.0;
/// Shards of the per-key map; a key's shard is chosen by hashing its id.
pub const SHARDS: usize = 16;
/// Keys remembered per shard (65 536 in all). When a shard is full, keys idle for
/// [`IDLE_EVICT_MINUTES`] are forgotten; if none is, a new key is not tracked.
pub const MAX_KEYS_PER_SHARD: usize = 4096;
/// Client IP ranges remembered per key; the least recently seen is forgotten first.
pub const MAX_RANGES: usize = 32;
/// A key unseen for this long may be forgotten when its shard is full.
pub const IDLE_EVICT_MINUTES: i64 = 60;
/// Webhook deliveries waiting to be sent; beyond this, flags are logged but not sent.
pub const WEBHOOK_QUEUE: usize = 256;
/// Idle minutes folded into a baseline as zeros: a short pause lowers it, a long one
/// no more than this (0.8³ ≈ half), so a key back to its usual traffic after an idle
/// hour is not flagged against a baseline decayed to nothing.
const MAX_IDLE_ZEROS: i64 = 3;
const MINUTE_MS: i64 = 60_000;

/// The checked `[anomaly]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalyConfig {
    pub enabled: bool,
    /// A minute's count must exceed this many times the baseline.
    pub rate_factor: u32,
    pub min_requests_per_min: u64,
    pub min_tokens_per_min: u64,
    /// Closed minutes before any rate flag.
    pub warmup_minutes: u32,
    /// Minutes a key must have been seen before a new IP range is flagged.
    pub new_range_after_minutes: u32,
    /// One flag per key per kind within this many minutes.
    pub cooldown_minutes: u32,
    /// Where to POST each flag as JSON, if anywhere.
    pub webhook_url: Option<String>,
    /// Refuse a flagged key in this process at once.
    pub auto_suspend: bool,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rate_factor: 5,
            min_requests_per_min: 100,
            min_tokens_per_min: 100_000,
            warmup_minutes: 5,
            new_range_after_minutes: 10,
            cooldown_minutes: 10,
            webhook_url: None,
            auto_suspend: false,
        }
    }
}

/// Each project's own auto-suspend choice, as last loaded from the store by the key
/// cache; a project not in it follows the gateway's `anomaly.auto_suspend`.
#[derive(Debug, Default)]
pub struct ProjectPolicy {
    auto_suspend: RwLock<HashMap<String, bool>>,
}

impl ProjectPolicy {
    /// Replaces every project's choice (projects without one are left out).
    pub fn replace(&self, choices: HashMap<String, bool>) {
        *self.auto_suspend.write() = choices;
    }

    /// The project's own choice, if it made one.
    pub fn auto_suspend(&self, project: &str) -> Option<bool> {
        self.auto_suspend.read().get(project).copied()
    }
}

/// What was unusual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnomalyKind {
    RequestRate,
    TokenRate,
    NewIpRange,
}

impl AnomalyKind {
    /// Every kind, in [`AnomalyKind::index`] order.
    pub const ALL: [Self; 3] = [Self::RequestRate, Self::TokenRate, Self::NewIpRange];

    /// A short label for logs, metrics and the webhook.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestRate => "request_rate",
            Self::TokenRate => "token_rate",
            Self::NewIpRange => "new_ip_range",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::RequestRate => 0,
            Self::TokenRate => 1,
            Self::NewIpRange => 2,
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller should do about a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyAction {
    /// Notify only.
    Notify,
    /// Suspend the key (already refused by this process; the store should follow).
    Suspend,
}

/// One flag, as published to [`Detector::flags`] subscribers and the webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyFlag {
    pub key_id: String,
    pub project: String,
    pub env: String,
    pub kind: AnomalyKind,
    /// This minute's count so far (for a new range: 1).
    pub current: u64,
    /// The baseline mean per minute (for a new range: ranges known before it).
    pub baseline: f64,
    /// The new range, for [`AnomalyKind::NewIpRange`].
    pub ip_range: Option<String>,
    pub at_ms: i64,
    pub action: AnomalyAction,
}

impl AnomalyFlag {
    /// The webhook body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "event": "key_anomaly",
            "key_id": self.key_id,
            "project": self.project,
            "env": self.env,
            "kind": self.kind.as_str(),
            "current": self.current,
            "baseline": self.baseline,
            "ip_range": self.ip_range,
            "action": match self.action {
                AnomalyAction::Notify => "notify",
                AnomalyAction::Suspend => "suspend",
            },
            "at": self.at_ms,
        })
    }
}

/// The detector: shared by every request of one gateway process.
pub struct Detector {
    config: AnomalyConfig,
    /// Per-project auto-suspend choices (shared with the key cache, which fills it).
    policy: Arc<ProjectPolicy>,
    shards: Vec<Mutex<Shard>>,
    /// Flags raised, per [`AnomalyKind::index`].
    flagged: [AtomicU64; 3],
    /// Keys suspended (one per suspension, whatever the flags that caused it).
    suspended: AtomicU64,
    webhook_dropped: AtomicU64,
    flags_tx: broadcast::Sender<AnomalyFlag>,
    /// The store writer's queue ([`Detector::store_queue`]): unlike the broadcast, it
    /// loses no flag, so every suspension reaches the store. Bounded in practice by
    /// the cooldown: at most one flag of each kind per key per `cooldown_minutes`.
    store_tx: std::sync::OnceLock<mpsc::UnboundedSender<AnomalyFlag>>,
    webhook_tx: Option<mpsc::Sender<AnomalyFlag>>,
}

/// A client IP range: an IPv4 /24 or an IPv6 /48.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpRange {
    V4(u32),
    V6(u64),
}

/// A rolling per-minute baseline of one quantity.
#[derive(Debug, Clone, Copy, Default)]
struct Series {
    /// Count so far in the current minute.
    current: u64,
    mean: f64,
    var: f64,
    seeded: bool,
}

/// One shard of the per-key map.
#[derive(Debug, Default)]
struct Shard {
    /// By key id. Key ids are tollgate's own (a caller reaches this with a valid key
    /// only), so a fast seeded hash serves, not SipHash.
    keys: HashMap<String, KeyState, foldhash::fast::RandomState>,
    /// The minute idle keys were last swept out, so a full shard is scanned at most
    /// once a minute.
    swept_minute: Option<i64>,
}

#[derive(Debug)]
struct KeyState {
    project: String,
    env: String,
    first_minute: i64,
    minute: i64,
    last_seen_minute: i64,
    requests: Series,
    tokens: Series,
    /// Known ranges with the minute each was last seen.
    ranges: Vec<(IpRange, i64)>,
    last_flag_ms: [Option<i64>; 3],
    /// When a flag of any kind last suspended the key: within the cooldown after it,
    /// flags only notify, so the calls still in flight when an operator resumed the
    /// key (their tokens counted as they finish) cannot suspend it again at once.
    last_suspend_ms: Option<i64>,
    suspended: Option<AnomalyKind>,
}

impl fmt::Debug for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Detector")
            .field("config", &self.config)
            .field("flagged", &self.flagged_total())
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// A detector without a webhook task (for tests and for `webhook_url = None`).
    pub fn new(config: AnomalyConfig) -> Self {
        let (flags_tx, _) = broadcast::channel(64);
        Self {
            config,
            policy: Arc::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            flagged: Default::default(),
            suspended: AtomicU64::new(0),
            webhook_dropped: AtomicU64::new(0),
            flags_tx,
            store_tx: std::sync::OnceLock::new(),
            webhook_tx: None,
        }
    }

    /// A detector and, when a webhook is configured, its delivery task, which ends once
    /// the detector is dropped and its queue is sent.
    pub fn start(config: AnomalyConfig) -> Result<(Self, Option<JoinHandle<()>>), String> {
        let url = config.webhook_url.clone();
        let mut detector = Self::new(config);
        let Some(url) = url.filter(|_| detector.config.enabled) else {
            return Ok((detector, None));
        };
        let webhook = Webhook::new(&url)?;
        let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
        detector.webhook_tx = Some(tx);
        let task = tokio::spawn(deliver(webhook, rx));
        Ok((detector, Some(task)))
    }

    /// Decides auto-suspend per project from `policy` (see [`ProjectPolicy`]).
    pub fn with_project_policy(mut self, policy: Arc<ProjectPolicy>) -> Self {
        self.policy = policy;
        self
    }

    /// The settings.
    pub fn config(&self) -> &AnomalyConfig {
        &self.config
    }

    /// Whether a flag of a key of `project` suspends the key: the project's own
    /// choice, else `anomaly.auto_suspend`.
    pub fn auto_suspends(&self, project: &str) -> bool {
        self.policy
            .auto_suspend(project)
            .unwrap_or(self.config.auto_suspend)
    }

    /// Flags raised since start.
    pub fn flagged_total(&self) -> u64 {
        self.flagged.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Flags of one kind raised since start.
    pub fn flagged_by_kind(&self, kind: AnomalyKind) -> u64 {
        self.flagged[kind.index()].load(Ordering::Relaxed)
    }

    /// Keys suspended since start (auto-suspend): counted by the store writer when
    /// the store took a suspension that was not there yet, so once per suspension
    /// whatever the flags that caused it.
    pub fn suspended_total(&self) -> u64 {
        self.suspended.load(Ordering::Relaxed)
    }

    /// Counts a key this process's flags suspended in the store.
    pub fn note_suspended(&self) {
        self.suspended.fetch_add(1, Ordering::Relaxed);
    }

    /// Webhook deliveries dropped because the queue was full.
    pub fn webhook_dropped_total(&self) -> u64 {
        self.webhook_dropped.load(Ordering::Relaxed)
    }

    /// Every flag from now on; a slow subscriber misses the oldest (`Lagged`).
    pub fn flags(&self) -> broadcast::Receiver<AnomalyFlag> {
        self.flags_tx.subscribe()
    }

    /// Every flag from now on, none lost however far behind the reader falls: the
    /// store writer's queue. `None` if it was taken already (there is one).
    pub fn store_queue(&self) -> Option<mpsc::UnboundedReceiver<AnomalyFlag>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.store_tx.set(tx).ok().map(|()| rx)
    }

    /// Whether this process refuses the key after an anomaly.
    pub fn is_suspended(&self, key_id: &str) -> bool {
        self.shard(key_id)
            .lock()
            .keys
            .get(key_id)
            .is_some_and(|s| s.suspended.is_some())
    }

    /// Lifts this process's suspension of a key; true if it was suspended.
    pub fn resume(&self, key_id: &str) -> bool {
        self.shard(key_id)
            .lock()
            .keys
            .get_mut(key_id)
            .and_then(|s| s.suspended.take())
            .is_some()
    }

    /// Counts one request of a key from `peer` at `now_ms` (Unix ms). Refuses the key
    /// if it is suspended, or if this very request got it flagged with auto-suspend on.
    pub fn observe_request(
        &self,
        key_id: &str,
        project: &str,
        env: &str,
        peer: Option<IpAddr>,
        now_ms: i64,
    ) -> Result<(), GatewayError> {
        if !self.config.enabled {
            return Ok(());
        }
        let minute = now_ms.div_euclid(MINUTE_MS);
        let mut raised: Vec<AnomalyFlag> = Vec::new();
        {
            let mut shard = self.shard(key_id).lock();
            let Some(state) = entry(&mut shard, key_id, project, env, minute) else {
                return Ok(());
            };
            if let Some(kind) = state.suspended {
                return Err(GatewayError::KeySuspended {
                    reason: kind.as_str(),
                });
            }
            state.advance(minute);
            state.requests.current += 1;
            let min = self.config.min_requests_per_min;
            if let Some(f) = self.check_rate(state, key_id, AnomalyKind::RequestRate, min, now_ms) {
                raised.push(f);
            }
            if let Some(range) = peer.map(IpRange::of) {
                if let Some(f) = self.check_range(state, key_id, range, now_ms) {
                    raised.push(f);
                }
            }
        }
        let mut suspend = None;
        for f in raised {
            if f.action == AnomalyAction::Suspend {
                suspend = Some(f.kind);
            }
            self.raise(f);
        }
        match suspend {
            Some(kind) => Err(GatewayError::KeySuspended {
                reason: kind.as_str(),
            }),
            None => Ok(()),
        }
    }

    /// Counts the tokens of a finished call of a key already seen by
    /// [`Detector::observe_request`]; returns the flag raised, if any.
    pub fn observe_tokens(&self, key_id: &str, tokens: u64, now_ms: i64) -> Option<AnomalyFlag> {
        if !self.config.enabled || tokens == 0 {
            return None;
        }
        let minute = now_ms.div_euclid(MINUTE_MS);
        let flag = {
            let mut shard = self.shard(key_id).lock();
            let state = shard.keys.get_mut(key_id)?;
            state.advance(minute);
            state.tokens.current = state.tokens.current.saturating_add(tokens);
            let min = self.config.min_tokens_per_min;
            self.check_rate(state, key_id, AnomalyKind::TokenRate, min, now_ms)?
        };
        self.raise(flag.clone());
        Some(flag)
    }

    fn shard(&self, key_id: &str) -> &Mutex<Shard> {
        let h = foldhash::fast::FixedState::default().hash_one(key_id);
        let i = usize::try_from(h % SHARDS as u64).unwrap_or(0);
        &self.shards[i]
    }

    fn check_rate(
        &self,
        state: &mut KeyState,
        key_id: &str,
        kind: AnomalyKind,
        min: u64,
        now_ms: i64,
    ) -> Option<AnomalyFlag> {
        if state.minute - state.first_minute < i64::from(self.config.warmup_minutes) {
            return None;
        }
        let series = match kind {
            AnomalyKind::TokenRate => state.tokens,
            _ => state.requests,
        };
        if !series.exceeds(f64::from(self.config.rate_factor), min) {
            return None;
        }
        self.flag(
            state,
            key_id,
            kind,
            series.current,
            series.mean,
            None,
            now_ms,
        )
    }

    fn check_range(
        &self,
        state: &mut KeyState,
        key_id: &str,
        range: IpRange,
        now_ms: i64,
    ) -> Option<AnomalyFlag> {
        let minute = state.minute;
        if let Some(known) = state.ranges.iter_mut().find(|(r, _)| *r == range) {
            known.1 = minute;
            return None;
        }
        let established = !state.ranges.is_empty()
            && minute - state.first_minute >= i64::from(self.config.new_range_after_minutes);
        let known = state.ranges.len();
        if state.ranges.len() >= MAX_RANGES {
            if let Some(oldest) = (0..state.ranges.len()).min_by_key(|&i| state.ranges[i].1) {
                state.ranges.swap_remove(oldest);
            }
        }
        state.ranges.push((range, minute));
        if !established {
            return None;
        }
        let baseline = known as f64;
        let label = Some(range.to_string());
        self.flag(
            state,
            key_id,
            AnomalyKind::NewIpRange,
            1,
            baseline,
            label,
            now_ms,
        )
    }

    /// Applies the cooldown and auto-suspend; the flag is raised after the shard lock
    /// is released.
    #[allow(clippy::too_many_arguments)]
    fn flag(
        &self,
        state: &mut KeyState,
        key_id: &str,
        kind: AnomalyKind,
        current: u64,
        baseline: f64,
        ip_range: Option<String>,
        now_ms: i64,
    ) -> Option<AnomalyFlag> {
        let cooldown_ms = i64::from(self.config.cooldown_minutes) * MINUTE_MS;
        let last = &mut state.last_flag_ms[kind.index()];
        if last.is_some_and(|t| now_ms - t < cooldown_ms) {
            return None;
        }
        *last = Some(now_ms);
        let suspended_lately = state
            .last_suspend_ms
            .is_some_and(|t| now_ms - t < cooldown_ms);
        let action = if self.auto_suspends(&state.project) && !suspended_lately {
            state.suspended = Some(kind);
            state.last_suspend_ms = Some(now_ms);
            AnomalyAction::Suspend
        } else {
            AnomalyAction::Notify
        };
        Some(AnomalyFlag {
            key_id: key_id.to_owned(),
            project: state.project.clone(),
            env: state.env.clone(),
            kind,
            current,
            baseline,
            ip_range,
            at_ms: now_ms,
            action,
        })
    }

    /// Logs, counts, publishes and queues the webhook; never waits.
    fn raise(&self, flag: AnomalyFlag) {
        self.flagged[flag.kind.index()].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            key_id = %flag.key_id,
            project = %flag.project,
            env = %flag.env,
            kind = flag.kind.as_str(),
            current = flag.current,
            baseline = flag.baseline,
            ip_range = flag.ip_range.as_deref().unwrap_or(""),
            suspended = flag.action == AnomalyAction::Suspend,
            "key usage anomaly"
        );
        if let Some(tx) = &self.webhook_tx {
            if tx.try_send(flag.clone()).is_err() {
                self.webhook_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key_id = %flag.key_id, "anomaly webhook queue full; not sent");
            }
        }
        if let Some(tx) = self.store_tx.get() {
            let _ = tx.send(flag.clone());
        }
        // No subscriber is fine: the flag has been logged and counted.
        let _ = self.flags_tx.send(flag);
    }
}

/// The key's state, created on first sight unless its shard is full of active keys.
fn entry<'a>(
    shard: &'a mut Shard,
    key_id: &str,
    project: &str,
    env: &str,
    minute: i64,
) -> Option<&'a mut KeyState> {
    if !shard.keys.contains_key(key_id) {
        if shard.keys.len() >= MAX_KEYS_PER_SHARD {
            if shard.swept_minute == Some(minute) {
                return None;
            }
            // At most once a minute per full shard: forget every idle key.
            shard.swept_minute = Some(minute);
            shard.keys.retain(|_, s| {
                s.suspended.is_some() || minute - s.last_seen_minute < IDLE_EVICT_MINUTES
            });
            if shard.keys.len() >= MAX_KEYS_PER_SHARD {
                return None;
            }
        }
        shard.keys.insert(
            key_id.to_owned(),
            KeyState {
                project: project.to_owned(),
                env: env.to_owned(),
                first_minute: minute,
                minute,
                last_seen_minute: minute,
                requests: Series::default(),
                tokens: Series::default(),
                ranges: Vec::new(),
                last_flag_ms: [None; 3],
                last_suspend_ms: None,
                suspended: None,
            },
        );
    }
    shard.keys.get_mut(key_id)
}

impl KeyState {
    /// Closes the minutes that ended before `minute`.
    fn advance(&mut self, minute: i64) {
        self.last_seen_minute = self.last_seen_minute.max(minute);
        if minute <= self.minute {
            return;
        }
        let gap = minute - self.minute;
        self.requests.close(gap);
        self.tokens.close(gap);
        self.minute = minute;
    }
}

impl Series {
    /// Folds the current minute, then `gap - 1` idle minutes (at most
    /// [`MAX_IDLE_ZEROS`] of them), into the baseline.
    fn close(&mut self, gap: i64) {
        self.push(self.current as f64);
        for _ in 0..(gap - 1).min(MAX_IDLE_ZEROS) {
            self.push(0.0);
        }
        self.current = 0;
    }

    /// One EWMA step of mean and variance (the first minute seeds the mean).
    fn push(&mut self, x: f64) {
        if !self.seeded {
            self.mean = x;
            self.var = 0.0;
            self.seeded = true;
            return;
        }
        let diff = x - self.mean;
        let incr = ALPHA * diff;
        self.mean += incr;
        self.var = (1.0 - ALPHA) * (self.var + diff * incr);
    }

    fn exceeds(&self, factor: f64, min: u64) -> bool {
        let now = self.current as f64;
        self.current >= min
            && now > factor * self.mean
            && now > self.mean + SIGMAS * self.var.sqrt()
    }
}

impl IpRange {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4) >> 8),
            IpAddr::V6(v6) => Self::V6(u64::try_from(u128::from(v6) >> 80).unwrap_or(0)),
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4(p) => {
                let [_, a, b, c] = p.to_be_bytes();
                write!(f, "{a}.{b}.{c}.0/24")
            }
            Self::V6(p) => {
                let (a, b, c) = ((p >> 32) & 0xffff, (p >> 16) & 0xffff, p & 0xffff);
                write!(f, "{a:x}:{b:x}:{c:x}::/48")
            }
        }
    }
}

/// The webhook task: one POST per flag, in order; a flag the receiver does not take is
/// offered again meanwhile (`webhook`).
async fn deliver(webhook: Webhook, mut rx: mpsc::Receiver<AnomalyFlag>) {
    while let Some(flag) = rx.recv().await {
        let body = Bytes::from(flag.to_json().to_string());
        webhook.send("key_anomaly", body).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "key_a";
    const T0: i64 = 1_800_000_000_000 - 1_800_000_000_000 % MINUTE_MS;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn at(minute: i64, second: i64) -> i64 {
        T0 + minute * MINUTE_MS + second * 1000
    }

    fn detector(tweak: impl FnOnce(&mut AnomalyConfig)) -> Detector {
        let mut c = AnomalyConfig::default();
        tweak(&mut c);
        Detector::new(c)
    }

    fn request(d: &Detector, now: i64) -> Result<(), GatewayError> {
        d.observe_request(KEY, "shop", "prod", ip("10.0.0.1"), now)
    }

    /// `n` requests spread over one minute.
    fn minute_of(d: &Detector, minute: i64, n: i64) {
        for i in 0..n {
            request(d, at(minute, i * 59 / n.max(1))).unwrap();
        }
    }

    #[test]
    fn steady_traffic_over_many_minutes_is_never_flagged() {
        let d = detector(|_| {});
        for m in 0..120 {
            // 150–190 requests a minute: above the minimum, well within 5× baseline.
            minute_of(&d, m, 150 + (m * 7) % 41);
            assert!(d
                .observe_tokens(KEY, 40_000 + (m as u64 % 5) * 1000, at(m, 59))
                .is_none());
        }
        assert_eq!(d.flagged_total(), 0);
    }

    #[test]
    fn a_tenfold_burst_is_flagged_within_the_same_minute_once() {
        let d = detector(|_| {});
        let mut flags = d.flags();
        for m in 0..10 {
            minute_of(&d, m, 30);
        }
        // 300 requests in the first 10 seconds of minute 10.
        for i in 0..300 {
            request(&d, at(10, i / 30)).unwrap();
        }
        assert_eq!(d.flagged_total(), 1, "one flag per cooldown");
        let f = flags.try_recv().unwrap();
        assert_eq!(f.kind, AnomalyKind::RequestRate);
        assert!(f.at_ms < at(10, 10), "caught within seconds");
        assert_eq!(f.current, 151, "the first count over 5 × 30");
        assert!((f.baseline - 30.0).abs() < 1e-9);
        assert_eq!(f.action, AnomalyAction::Notify);
        assert_eq!(f.to_json()["event"], "key_anomaly");
    }

    #[test]
    fn token_bursts_are_flagged_too() {
        let d = detector(|_| {});
        for m in 0..10 {
            minute_of(&d, m, 10);
            assert!(d.observe_tokens(KEY, 30_000, at(m, 59)).is_none());
        }
        request(&d, at(10, 1)).unwrap();
        let f = d.observe_tokens(KEY, 400_000, at(10, 2)).unwrap();
        assert_eq!(f.kind, AnomalyKind::TokenRate);
        assert_eq!(f.current, 400_000);
        // Unknown keys (never seen by observe_request) are ignored.
        assert!(d
            .observe_tokens("key_other", 1_000_000, at(10, 3))
            .is_none());
    }

    #[test]
    fn a_new_key_is_never_flagged_in_its_first_minutes_even_with_a_burst() {
        let d = detector(|_| {});
        for m in 0..5 {
            minute_of(&d, m, 1000);
            request(&d, at(m, 59)).unwrap();
            d.observe_request(KEY, "shop", "prod", ip("192.0.2.7"), at(m, 59))
                .unwrap();
            assert!(d.observe_tokens(KEY, 10_000_000, at(m, 59)).is_none());
        }
        assert_eq!(d.flagged_total(), 0);
    }

    #[test]
    fn a_burst_below_the_minimum_is_not_flagged() {
        let d = detector(|_| {});
        for m in 0..10 {
            minute_of(&d, m, 2);
        }
        minute_of(&d, 10, 99);
        assert_eq!(d.flagged_total(), 0);
    }

    #[test]
    fn a_new_ip_range_is_flagged_only_after_warm_up() {
        let d = detector(|_| {});
        let mut flags = d.flags();
        let obs = |addr: &str, now| d.observe_request(KEY, "shop", "prod", ip(addr), now);
        obs("10.0.0.1", at(0, 0)).unwrap();
        // Still learning: a second range in minute 3 is not flagged.
        obs("198.51.100.9", at(3, 0)).unwrap();
        obs("10.0.0.200", at(10, 0)).unwrap(); // same /24
        obs("198.51.100.1", at(10, 1)).unwrap();
        assert_eq!(d.flagged_total(), 0);
        obs("203.0.113.5", at(10, 2)).unwrap();
        let f = flags.try_recv().unwrap();
        assert_eq!(f.kind, AnomalyKind::NewIpRange);
        assert_eq!(f.ip_range.as_deref(), Some("203.0.113.0/24"));
        assert_eq!(f.baseline, 2.0);
        // IPv6 ranges are /48s; an IPv4-mapped address counts as IPv4.
        obs("2001:db8:1:2::1", at(30, 0)).unwrap();
        let f = flags.try_recv().unwrap();
        assert_eq!(f.ip_range.as_deref(), Some("2001:db8:1::/48"));
        obs("2001:db8:1:ffff::1", at(50, 0)).unwrap();
        obs("::ffff:10.0.0.9", at(50, 1)).unwrap();
        assert_eq!(d.flagged_total(), 2);
    }

    #[test]
    fn cooldown_allows_one_flag_per_kind_per_period() {
        let d = detector(|c| c.cooldown_minutes = 10);
        let obs = |addr: &str, now| d.observe_request(KEY, "shop", "prod", ip(addr), now);
        obs("10.0.0.1", at(0, 0)).unwrap();
        for (i, m) in [11, 12, 20, 21, 22].into_iter().enumerate() {
            obs(&format!("10.0.{}.1", i + 1), at(m, 0)).unwrap();
        }
        // Minute 11 flags; 12 and 20 are within 10 minutes of it; 21 flags again.
        assert_eq!(d.flagged_total(), 2);
    }

    #[test]
    fn auto_suspend_refuses_the_key_at_once_until_resumed() {
        let d = detector(|c| {
            c.auto_suspend = true;
            c.warmup_minutes = 0;
            c.min_requests_per_min = 20;
        });
        for i in 0..19 {
            request(&d, at(0, i)).unwrap();
        }
        let e = request(&d, at(0, 20)).unwrap_err();
        assert_eq!(e.status().as_u16(), 403);
        assert_eq!(e.code(), Some("key_suspended"));
        assert!(d.is_suspended(KEY));
        assert!(request(&d, at(30, 0)).is_err());
        assert!(d.resume(KEY));
        assert!(request(&d, at(30, 1)).is_ok());
    }

    #[test]
    fn a_key_resumed_within_the_cooldown_is_not_suspended_again_by_another_kind() {
        let d = detector(|c| {
            c.auto_suspend = true;
            c.warmup_minutes = 0;
            c.cooldown_minutes = 10;
            c.min_requests_per_min = 20;
            c.min_tokens_per_min = 1_000;
        });
        let mut flags = d.flags();
        for i in 0..19 {
            request(&d, at(0, i)).unwrap();
        }
        assert!(request(&d, at(0, 20)).is_err());
        assert_eq!(flags.try_recv().unwrap().action, AnomalyAction::Suspend);
        // The operator resumes it; a call that was in flight reports its tokens.
        assert!(d.resume(KEY));
        let late = d.observe_tokens(KEY, 1_000_000, at(0, 40)).unwrap();
        assert_eq!(late.kind, AnomalyKind::TokenRate);
        assert_eq!(late.action, AnomalyAction::Notify);
        assert!(!d.is_suspended(KEY));
        assert!(request(&d, at(0, 41)).is_ok());
        // Past the cooldown a flag suspends again.
        for i in 0..200 {
            let _ = request(&d, at(12, i / 4));
        }
        assert!(d.is_suspended(KEY));
    }

    #[test]
    fn a_project_s_own_choice_overrides_the_global_auto_suspend() {
        let policy = Arc::new(ProjectPolicy::default());
        let d = detector(|c| {
            c.auto_suspend = false;
            c.warmup_minutes = 0;
            c.min_requests_per_min = 5;
        })
        .with_project_policy(policy.clone());
        policy.replace(HashMap::from([("strict".to_owned(), true)]));
        assert!(d.auto_suspends("strict"));
        assert!(!d.auto_suspends("relaxed"), "no choice: the global setting");
        let burst = |key: &str, project: &str| {
            (0..5)
                .map(|i| d.observe_request(key, project, "prod", None, at(0, i)))
                .filter(Result::is_err)
                .count()
        };
        assert_eq!(
            burst("key_strict", "strict"),
            1,
            "the 5th request is refused"
        );
        assert!(d.is_suspended("key_strict"));
        assert_eq!(burst("key_relaxed", "relaxed"), 0);
        assert!(!d.is_suspended("key_relaxed"));
        assert_eq!(d.flagged_by_kind(AnomalyKind::RequestRate), 2);
        assert_eq!(d.flagged_by_kind(AnomalyKind::NewIpRange), 0);
        // A project may also opt out of a global auto-suspend.
        let d = detector(|c| c.auto_suspend = true).with_project_policy(policy.clone());
        policy.replace(HashMap::from([("relaxed".to_owned(), false)]));
        assert!(!d.auto_suspends("relaxed"));
        assert!(d.auto_suspends("other"));
    }

    #[test]
    fn the_store_queue_loses_no_flag_of_a_burst() {
        let d = detector(|c| {
            c.auto_suspend = true;
            c.warmup_minutes = 0;
            c.min_requests_per_min = 1;
        });
        let mut queue = d.store_queue().unwrap();
        assert!(d.store_queue().is_none(), "one store writer");
        // 200 keys flagged at once: past the broadcast's 64 a slow reader would miss.
        for k in 0..200 {
            let key = format!("key_{k}");
            assert!(d
                .observe_request(&key, "shop", "prod", None, at(0, 0))
                .is_err());
        }
        let mut got = 0;
        while queue.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 200);
    }

    #[test]
    fn a_key_back_to_its_usual_traffic_after_an_idle_hour_is_not_flagged() {
        let d = detector(|_| {});
        for m in 0..15 {
            minute_of(&d, m, 200);
        }
        // An hour of silence, then the same 200 a minute.
        minute_of(&d, 75, 200);
        minute_of(&d, 76, 200);
        assert_eq!(d.flagged_total(), 0);
        // A real burst after the pause still is.
        minute_of(&d, 77, 2000);
        assert_eq!(d.flagged_total(), 1);
    }

    #[test]
    fn memory_is_bounded_per_key_and_per_shard() {
        let d = detector(|_| {});
        for i in 0..1000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(i << 8));
            d.observe_request(KEY, "shop", "prod", Some(addr), at(0, 0))
                .unwrap();
        }
        let ranges = d.shard(KEY).lock().keys[KEY].ranges.len();
        assert_eq!(ranges, MAX_RANGES);

        for i in 0..(SHARDS * MAX_KEYS_PER_SHARD + 5000) {
            let k = format!("key_{i}");
            d.observe_request(&k, "shop", "prod", None, at(0, 0))
                .unwrap();
        }
        let total: usize = d.shards.iter().map(|s| s.lock().keys.len()).sum();
        assert!(total <= SHARDS * MAX_KEYS_PER_SHARD);
        // An hour later idle keys make room for new ones.
        d.observe_request("key_late", "shop", "prod", None, at(120, 0))
            .unwrap();
        assert!(d.shard("key_late").lock().keys.contains_key("key_late"));
    }

    #[test]
    fn a_disabled_detector_does_nothing() {
        let d = detector(|c| {
            c.enabled = false;
            c.warmup_minutes = 0;
            c.min_requests_per_min = 1;
        });
        minute_of(&d, 0, 500);
        assert_eq!(d.flagged_total(), 0);
    }
}
