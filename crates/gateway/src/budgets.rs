//! Spend budgets, checked in stage 4 (admit) after the rate limits: USD per calendar
//! day and per calendar month (UTC) for a whole project, one of its environments or
//! one of its keys, priced from the model catalog (cached input at its own price).
//!
//! Admission: a model call governed by a budget is priced at its worst case — the
//! input counted with the model family's tokenizer at the input price, plus the
//! output it allows (`max_output_tokens` / `max_completion_tokens` / `max_tokens`
//! times `n`, else `limits.default_output_tokens`) at the output price — and refused
//! up front with 429 `insufficient_quota` (and `x-should-retry: false`) when that
//! would take any governing budget past its limit, counting what is spent and what
//! calls in flight have reserved. A governed model without a catalog price is
//! refused: an uncounted call could run up the bill. A request no budget governs pays
//! for one check of an empty set (one map lookup when some project has budgets).
//!
//! Settlement ([`BudgetReservation::settle`], when the usage record is finished):
//! the real cost replaces the worst case (plain and streamed answers); a call that
//! failed without usage gets its reservation back; a call cut short with no usage
//! seen (client gone mid-stream) keeps it, since the upstream may have spent it, and
//! its usage record carries that worst case as its cost, so the store's sum agrees.
//!
//! Counters ([`BudgetCounters`]): one per budget and period, in memory. Each holds
//! `base` — the store's sum of priced usage of the period (from its per-day roll-up,
//! kept with the usage rows), re-read every
//! `budgets.sync_interval_ms` and at every budget change, plus what this process's
//! writer has written since — `unwritten`, this process's settled spend whose records
//! are not written yet, and `reserved`, its calls in flight. The writer and the
//! re-sync take one lock ([`Budgets::gate`]) so a batch is never counted twice or
//! missed. Replicas sharing a store therefore see each other's spend within a sync
//! interval plus their writers' delay (about 50 ms); within that window each may admit
//! up to the remaining budget. A counter governs calls accepted after it was created,
//! so a budget set mid-flight never settles calls it did not reserve.
//!
//! With `[redis] url` the counters are shared in Redis instead ([`RedisBudgetCounters`],
//! `budgets_redis`): replicas enforce one budget exactly, and the memory counters are
//! kept alongside as the fallback while Redis is unreachable (`redis.on_failure`).
//!
//! Soft threshold: when a period's spend reaches `soft_percent` of its limit, a
//! notice goes to a background task that claims it in the store (a conditional update,
//! so once per scope and period across replicas and restarts), then logs a warning,
//! counts `tollgate_budget_soft_threshold_total{period}` and POSTs the optional
//! `budgets.webhook_url`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tollgate_store::{Budget, BudgetPeriod, BudgetScope, Store, StoreError, UsageRecord};
use tollgate_wire::ratelimit::RateLimitInfo;

pub use crate::budgets_redis::{RedisBudgetCounters, SpendRefused};
use crate::catalog::{BilledTokens, LiveCatalog};
use crate::error::{BudgetRefusal, GatewayError};
use crate::keys::Principal;
use crate::preflight::{Endpoint, Preflight};
use crate::snapshot::Snapshot;

/// Both periods, in the order metrics and messages list them.
pub const PERIODS: [BudgetPeriod; 2] = [BudgetPeriod::Day, BudgetPeriod::Month];

/// Soft-threshold notices waiting for the notifier; more are dropped (and counted).
const NOTICE_QUEUE: usize = 1024;

/// The model a moderation call without one is served by (OpenAI's default).
const DEFAULT_MODERATION_MODEL: &str = "omni-moderation-latest";

/// One counter: a budget's scope and the period it counts.
pub type CounterKey = (Arc<BudgetScope>, BudgetPeriod);

/// `[budgets]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetsConfig {
    /// How often the counters are re-read from the store's usage (default 5 s).
    pub sync_interval: Duration,
    /// Where to POST each soft-threshold notice as JSON (default: nowhere).
    pub webhook_url: Option<String>,
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        Self {
            sync_interval: Duration::from_secs(5),
            webhook_url: None,
        }
    }
}

/// A budget as admission uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub scope: Arc<BudgetScope>,
    pub daily_usd_nanos: Option<u64>,
    pub monthly_usd_nanos: Option<u64>,
    pub soft_percent: u32,
}

impl Rule {
    /// The limit of one period, if the budget has one.
    pub fn limit(&self, period: BudgetPeriod) -> Option<u64> {
        match period {
            BudgetPeriod::Day => self.daily_usd_nanos,
            BudgetPeriod::Month => self.monthly_usd_nanos,
        }
    }

    fn matches(&self, env: &str, key_id: &str) -> bool {
        self.scope.env.as_deref().is_none_or(|e| e == env)
            && self.scope.key_id.as_deref().is_none_or(|k| k == key_id)
    }
}

/// Every budget, by project.
#[derive(Debug, Default, Clone)]
pub struct BudgetSet {
    by_project: HashMap<String, Vec<Rule>>,
}

/// With scopes of its own: admissions clone them, and a thread's clones then count on
/// the thread's own copies.
impl crate::snapshot::ThreadCopy for BudgetSet {
    fn thread_copy(&self) -> Self {
        let mut copy = self.clone();
        copy.by_project
            .values_mut()
            .flatten()
            .for_each(|r| crate::snapshot::own(&mut r.scope));
        copy
    }
}

impl BudgetSet {
    /// Builds the set from the store's budgets.
    pub fn new(budgets: Vec<Budget>) -> Self {
        let mut by_project: HashMap<String, Vec<Rule>> = HashMap::new();
        for b in budgets {
            by_project
                .entry(b.scope.project.clone())
                .or_default()
                .push(Rule {
                    scope: Arc::new(b.scope),
                    daily_usd_nanos: b.daily_usd_nanos,
                    monthly_usd_nanos: b.monthly_usd_nanos,
                    soft_percent: b.soft_percent,
                });
        }
        Self { by_project }
    }

    /// No budget at all.
    pub fn is_empty(&self) -> bool {
        self.by_project.is_empty()
    }

    /// The budgets governing a call of this key (every one must admit it).
    pub fn matching<'a>(
        &'a self,
        project: &str,
        env: &'a str,
        key_id: &'a str,
    ) -> impl Iterator<Item = &'a Rule> + 'a {
        self.by_project
            .get(project)
            .into_iter()
            .flatten()
            .filter(move |r| r.matches(env, key_id))
    }

    /// Every budget.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.by_project.values().flatten()
    }

    /// Every (scope, period) with a limit, with that limit and the soft threshold.
    fn counter_keys(&self) -> impl Iterator<Item = (CounterKey, u64, u32)> + '_ {
        self.rules().flat_map(|r| {
            PERIODS.iter().filter_map(move |&p| {
                r.limit(p)
                    .map(|limit| ((r.scope.clone(), p), limit, r.soft_percent))
            })
        })
    }
}

/// What one governing budget is asked for.
#[derive(Debug, Clone)]
pub struct SpendDemand {
    pub key: CounterKey,
    pub limit: u64,
    pub soft_percent: u32,
    pub amount: u64,
}

/// A counter as a caller may see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendState {
    pub period_start_ms: i64,
    /// Spent in the period: the store's sum plus this process's settled calls.
    pub spent: u64,
    /// Held by this process's calls in flight.
    pub reserved: u64,
}

/// Why [`BudgetCounters::reserve`] refused: the first demand that does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendDenied {
    pub index: usize,
    pub state: SpendState,
}

/// A soft threshold reached, to announce once per scope and period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub scope: Arc<BudgetScope>,
    pub period: BudgetPeriod,
    pub period_start_ms: i64,
    pub limit: u64,
    pub spent: u64,
    pub soft_percent: u32,
}

/// The counting backend. The in-memory one serves each replica with its own counters,
/// re-synced from the store; the Redis one ([`RedisBudgetCounters`], with
/// `[redis] url`) shares them between replicas, one script call per admission, with
/// memory counters kept alongside as its fallback.
#[derive(Debug)]
pub enum BudgetCounters {
    Memory(MemoryBudgetCounters),
    Redis(RedisBudgetCounters),
}

impl Default for BudgetCounters {
    fn default() -> Self {
        Self::Memory(MemoryBudgetCounters::default())
    }
}

impl BudgetCounters {
    /// Reserves every demand's amount for a call accepted at `at_ms`, or nothing if
    /// any budget lacks room. Answers which demands were taken: a counter created after
    /// the call was accepted does not govern it — and whether the reservation is in
    /// Redis (it is then settled there).
    pub async fn reserve(
        &self,
        demands: &[SpendDemand],
        at_ms: i64,
    ) -> Result<(Vec<bool>, bool), SpendRefused> {
        match self {
            Self::Memory(m) => m
                .reserve_checked(demands, at_ms, true)
                .map(|t| (t, false))
                .map_err(SpendRefused::Denied),
            Self::Redis(r) => r.reserve(demands, at_ms).await,
        }
    }

    /// The memory counters (the Redis backend's fallback and local view).
    fn local(&self) -> &MemoryBudgetCounters {
        match self {
            Self::Memory(m) => m,
            Self::Redis(r) => &r.local,
        }
    }

    /// Settles a reservation made at `reserved_at_ms`, in the period starting at
    /// `period_start_ms`: `reserved` is released and `spent` counted (a period gone by,
    /// or a counter created after the reservation, is left alone).
    pub fn settle(
        &self,
        demand: &SpendDemand,
        period_start_ms: i64,
        reserved_at_ms: i64,
        reserved: u64,
        spent: u64,
    ) -> Option<Notice> {
        self.local()
            .settle(demand, period_start_ms, reserved_at_ms, reserved, spent)
    }

    /// A record of cost `cost`, accepted at `created_at_ms`, is now in the store.
    pub fn written(&self, demand: &SpendDemand, created_at_ms: i64, cost: u64) -> Option<Notice> {
        self.local().written(demand, created_at_ms, cost)
    }

    /// Replaces a counter's `base` with the store's sum for the period starting at
    /// `period_start_ms`, creating the counter (governing calls from `since_ms`).
    pub fn sync(
        &self,
        demand: &SpendDemand,
        period_start_ms: i64,
        base: u64,
        since_ms: i64,
    ) -> Option<Notice> {
        if let Self::Redis(r) = self {
            r.raise(&demand.key, period_start_ms, base, crate::accept::now_ms());
        }
        self.local().sync(demand, period_start_ms, base, since_ms)
    }

    /// A counter's state at `now_ms` (`None`: no such counter).
    pub fn state(&self, key: &CounterKey, now_ms: i64) -> Option<SpendState> {
        self.local().state(key, now_ms)
    }

    /// Forgets the counters of budgets (or periods) that no longer exist.
    fn retain(&self, set: &BudgetSet) {
        self.local().retain(set)
    }
}

/// Counters in a map behind one lock, held for a few hundred nanoseconds by calls a
/// budget governs, by settlements and by the background writer and re-sync.
#[derive(Debug, Default)]
pub struct MemoryBudgetCounters {
    counters: Mutex<HashMap<CounterKey, Counter>>,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    period_start_ms: i64,
    /// The store's sum of the period (at the last re-sync) plus this process's
    /// records written since.
    base: u64,
    /// This process's settled spend not yet written (may dip below 0 briefly).
    unwritten: i64,
    reserved: u64,
    /// Calls accepted before this time are not governed by the counter.
    since_ms: i64,
    /// The period's soft threshold was reached (announced once).
    notified: bool,
}

impl Counter {
    fn new(period_start_ms: i64, since_ms: i64) -> Self {
        Self {
            period_start_ms,
            base: 0,
            unwritten: 0,
            reserved: 0,
            since_ms,
            notified: false,
        }
    }

    /// Starts a new period when `period_start_ms` is later than the counter's.
    fn roll(&mut self, period_start_ms: i64) {
        if period_start_ms > self.period_start_ms {
            *self = Self::new(period_start_ms, self.since_ms);
        }
    }

    fn spent(&self) -> u64 {
        u64::try_from((i128::from(self.base) + i128::from(self.unwritten)).max(0))
            .unwrap_or(u64::MAX)
    }

    fn state(&self) -> SpendState {
        SpendState {
            period_start_ms: self.period_start_ms,
            spent: self.spent(),
            reserved: self.reserved,
        }
    }

    /// The notice to send when the spend has just reached the soft threshold.
    fn notice(&mut self, d: &SpendDemand) -> Option<Notice> {
        let spent = self.spent();
        let reached = u128::from(spent) * 100 >= u128::from(d.limit) * u128::from(d.soft_percent);
        if self.notified || !reached {
            return None;
        }
        self.notified = true;
        Some(Notice {
            scope: d.key.0.clone(),
            period: d.key.1,
            period_start_ms: self.period_start_ms,
            limit: d.limit,
            spent,
            soft_percent: d.soft_percent,
        })
    }
}

/// Whether memory counter `c` (rolled to the period starting at `start`, or later)
/// governs a call accepted at `at_ms`: not when the counter was created after the call
/// was accepted (a budget set meanwhile), nor when it has moved on to a later period
/// (the call waited in its lane past midnight while another call rolled it). Such a
/// call reserves nothing here: it could not be settled against the period it belongs
/// to, and its record still counts in that period's total. (In Redis, where each
/// period keeps its own counters, it is held against its own period: `seeds`.)
fn governs(c: &Counter, start: i64, at_ms: i64) -> bool {
    c.since_ms <= at_ms && c.period_start_ms == start
}

impl MemoryBudgetCounters {
    /// Whether each demand's counter governs a call accepted at `at_ms`, and its
    /// spend (the seed of a missing Redis counter); creates missing counters.
    pub(crate) fn seeds(&self, demands: &[SpendDemand], at_ms: i64) -> Vec<(bool, u64)> {
        let mut counters = self.counters.lock();
        demands
            .iter()
            .map(|d| {
                let start = d.key.1.bounds(at_ms).0;
                let c = counters
                    .entry(d.key.clone())
                    .or_insert_with(|| Counter::new(start, at_ms));
                c.roll(start);
                // In Redis the call's own period has counters of its own (settled by
                // that period's start), so a counter here that has moved on to the
                // next period does not stop it governing; it seeds nothing then.
                let seed = if c.period_start_ms == start {
                    c.spent()
                } else {
                    0
                };
                (c.since_ms <= at_ms, seed)
            })
            .collect()
    }

    /// A counter's spend in the period starting at `start` (0 for another period).
    pub(crate) fn seed(&self, key: &CounterKey, start: i64) -> u64 {
        self.counters
            .lock()
            .get(key)
            .filter(|c| c.period_start_ms == start)
            .map_or(0, Counter::spent)
    }

    /// Reserves every governed demand, refusing when one lacks room and `check`.
    pub(crate) fn reserve_checked(
        &self,
        demands: &[SpendDemand],
        at_ms: i64,
        check: bool,
    ) -> Result<Vec<bool>, SpendDenied> {
        let mut counters = self.counters.lock();
        let mut taken = Vec::with_capacity(demands.len());
        for (index, d) in demands.iter().enumerate() {
            let start = d.key.1.bounds(at_ms).0;
            let c = counters
                .entry(d.key.clone())
                .or_insert_with(|| Counter::new(start, at_ms));
            c.roll(start);
            let governs = governs(c, start, at_ms);
            let committed = u128::from(c.spent()) + u128::from(c.reserved);
            if check
                && governs
                && (committed >= u128::from(d.limit)
                    || committed + u128::from(d.amount) > u128::from(d.limit))
            {
                return Err(SpendDenied {
                    index,
                    state: c.state(),
                });
            }
            taken.push(governs);
        }
        for (d, &take) in demands.iter().zip(&taken) {
            if let (true, Some(c)) = (take, counters.get_mut(&d.key)) {
                c.reserved = c.reserved.saturating_add(d.amount);
            }
        }
        Ok(taken)
    }

    fn settle(
        &self,
        d: &SpendDemand,
        period_start_ms: i64,
        reserved_at_ms: i64,
        reserved: u64,
        spent: u64,
    ) -> Option<Notice> {
        let mut counters = self.counters.lock();
        let c = counters.get_mut(&d.key)?;
        // A counter made after the reservation (the budget was cleared and set again)
        // never held it; the call's record reaches it when written (`written`).
        if c.period_start_ms != period_start_ms || reserved_at_ms < c.since_ms {
            return None;
        }
        c.reserved = c.reserved.saturating_sub(reserved);
        c.unwritten = c
            .unwritten
            .saturating_add(i64::try_from(spent).unwrap_or(i64::MAX));
        c.notice(d)
    }

    fn written(&self, d: &SpendDemand, created_at_ms: i64, cost: u64) -> Option<Notice> {
        let mut counters = self.counters.lock();
        let c = counters.get_mut(&d.key)?;
        c.roll(d.key.1.bounds(created_at_ms).0);
        if c.period_start_ms != d.key.1.bounds(created_at_ms).0 {
            return None;
        }
        c.base = c.base.saturating_add(cost);
        if created_at_ms >= c.since_ms {
            // Settled into `unwritten` by this process: it moves to `base`.
            c.unwritten = c
                .unwritten
                .saturating_sub(i64::try_from(cost).unwrap_or(i64::MAX));
        }
        c.notice(d)
    }

    fn sync(
        &self,
        d: &SpendDemand,
        period_start_ms: i64,
        base: u64,
        since_ms: i64,
    ) -> Option<Notice> {
        let mut counters = self.counters.lock();
        let c = counters
            .entry(d.key.clone())
            .or_insert_with(|| Counter::new(period_start_ms, since_ms));
        c.roll(period_start_ms);
        if c.period_start_ms != period_start_ms {
            return None;
        }
        c.base = base;
        c.notice(d)
    }

    fn state(&self, key: &CounterKey, now_ms: i64) -> Option<SpendState> {
        let mut counters = self.counters.lock();
        let c = counters.get_mut(key)?;
        c.roll(key.1.bounds(now_ms).0);
        Some(c.state())
    }

    fn retain(&self, set: &BudgetSet) {
        let keep: std::collections::HashSet<CounterKey> =
            set.counter_keys().map(|(k, _, _)| k).collect();
        self.counters.lock().retain(|k, _| keep.contains(k));
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Default)]
pub struct BudgetMetrics {
    soft: [AtomicU64; 2],
    refused: [AtomicU64; 2],
    dropped: AtomicU64,
}

impl BudgetMetrics {
    fn index(period: BudgetPeriod) -> usize {
        match period {
            BudgetPeriod::Day => 0,
            BudgetPeriod::Month => 1,
        }
    }

    /// Soft thresholds announced by this process, by period.
    pub fn soft_threshold_total(&self, period: BudgetPeriod) -> u64 {
        self.soft[Self::index(period)].load(Ordering::Relaxed)
    }

    /// Calls refused for a budget by this process, by period.
    pub fn refused_total(&self, period: BudgetPeriod) -> u64 {
        self.refused[Self::index(period)].load(Ordering::Relaxed)
    }

    /// Notices dropped because their queue was full.
    pub fn notices_dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The budgets and counters a server admits with.
#[derive(Debug)]
pub struct Budgets {
    set: Snapshot<BudgetSet>,
    pub counters: BudgetCounters,
    catalog: Arc<LiveCatalog>,
    /// Taken by the usage writer around each batch and by every re-sync.
    gate: tokio::sync::Mutex<()>,
    notices: Option<mpsc::Sender<Notice>>,
    pub metrics: Arc<BudgetMetrics>,
}

/// The worst case reserved from the budgets governing a call, to settle once its
/// record is finished.
#[derive(Debug)]
pub struct BudgetReservation {
    budgets: Arc<Budgets>,
    demands: Vec<(SpendDemand, i64)>,
    reserved: u64,
    /// The tokens the worst case was priced on (input counted, output allowed).
    tokens: BilledTokens,
    /// When it was reserved: a counter created later (a budget cleared and set again
    /// meanwhile) never held it, and counts the call from its record instead.
    at_ms: i64,
    /// Reserved in Redis (else in this replica's memory).
    in_redis: bool,
}

impl Budgets {
    /// Budgets without a notifier (tests; notices are only counted as dropped).
    pub fn new(catalog: Arc<LiveCatalog>) -> Self {
        Self {
            set: Snapshot::default(),
            counters: BudgetCounters::default(),
            catalog,
            gate: tokio::sync::Mutex::new(()),
            notices: None,
            metrics: Arc::default(),
        }
    }

    /// Counts in `counters` (before the budgets are loaded).
    pub fn with_counters(mut self, counters: BudgetCounters) -> Self {
        self.counters = counters;
        self
    }

    /// Budgets and their notifier task, which claims each notice in `store`, logs,
    /// counts and POSTs it; the task ends once the budgets are dropped.
    pub fn start(
        catalog: Arc<LiveCatalog>,
        store: Store,
        config: &BudgetsConfig,
    ) -> Result<(Self, JoinHandle<()>), String> {
        let webhook = config
            .webhook_url
            .as_deref()
            .map(crate::webhook::Webhook::new)
            .transpose()?;
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        let mut budgets = Self::new(catalog);
        budgets.notices = Some(tx);
        let task = tokio::spawn(notify(store, webhook, budgets.metrics.clone(), rx));
        Ok((budgets, task))
    }

    /// The current budgets, from this thread's copy (see `snapshot`).
    pub fn set(&self) -> Arc<BudgetSet> {
        self.set.get()
    }

    /// The lock the usage writer holds around a batch (see the module docs).
    pub fn gate(&self) -> &tokio::sync::Mutex<()> {
        &self.gate
    }

    fn announce(&self, notice: Option<Notice>) {
        let Some(notice) = notice else {
            return;
        };
        let sent = self
            .notices
            .as_ref()
            .is_some_and(|tx| tx.try_send(notice).is_ok());
        if !sent {
            self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tells the counters that the writer has written `batch` (with the gate held).
    pub fn written(&self, batch: &[UsageRecord]) {
        let set = self.set();
        if set.is_empty() {
            return;
        }
        for rec in batch {
            let (Some(cost), Some(project), Some(env), Some(key_id)) = (
                rec.cost_usd_nanos.filter(|c| *c > 0),
                rec.project.as_deref(),
                rec.env.as_deref(),
                rec.key_id.as_deref(),
            ) else {
                continue;
            };
            for d in demands(set.matching(project, env, key_id), 0) {
                self.announce(self.counters.written(&d, rec.created_at_ms, cost));
            }
        }
    }

    /// Swaps in `budgets` with the store's `spend` (see [`sync`]).
    pub fn replace(&self, budgets: Vec<Budget>, spend: &[tollgate_store::Spend], now_ms: i64) {
        if !budgets.is_empty() {
            // A budget prices every governed request's input: have the tokenizer ready.
            tollgate_wire::tokens::prepare_in_background();
        }
        let set = BudgetSet::new(budgets);
        self.counters.retain(&set);
        // Counters made now govern only calls accepted after the swap: a call admitted
        // under the old set never settles into them.
        self.sync_counters(&set, spend, now_ms, now_ms + 1);
        self.set.set(set);
    }

    fn sync_counters(
        &self,
        set: &BudgetSet,
        spend: &[tollgate_store::Spend],
        now_ms: i64,
        since_ms: i64,
    ) {
        for rule in set.rules() {
            let s = &rule.scope;
            let (mut day, mut month) = (0u64, 0u64);
            for row in spend.iter().filter(|row| {
                row.project == s.project
                    && s.env.as_deref().is_none_or(|e| e == row.env)
                    && s.key_id.as_deref().is_none_or(|k| k == row.key_id)
            }) {
                day = day.saturating_add(row.day_usd_nanos);
                month = month.saturating_add(row.month_usd_nanos);
            }
            for d in demands(std::iter::once(rule), 0) {
                let base = match d.key.1 {
                    BudgetPeriod::Day => day,
                    BudgetPeriod::Month => month,
                };
                let start = d.key.1.bounds(now_ms).0;
                self.announce(self.counters.sync(&d, start, base, since_ms));
            }
        }
    }
}

/// What the budgets governing a call ask of their counters, computed once per call
/// before any counter is touched ([`plan`]); stage 4 reserves it together with the
/// rate limits (`admit`), in one Redis call when both are in Redis.
#[derive(Debug)]
pub struct SpendPlan {
    pub(crate) budgets: Arc<Budgets>,
    pub(crate) demands: Vec<SpendDemand>,
    /// The call's worst case, in nano-USD.
    pub(crate) worst: u64,
    /// The tokens it was priced on.
    tokens: BilledTokens,
    /// When the call was accepted.
    pub(crate) at_ms: i64,
}

/// The budgets governing a call accepted at `at_ms` and its worst case (`None`: no
/// budget governs it), or a refusal of a governed model without a price (see the
/// module docs). `estimate` gives the call's input and allowed output tokens; it is
/// called only for a governed call. `alternatives`: the other models its fallback
/// chain may serve it with; the worst case is the dearest of them all (one the
/// catalog does not price is charged the worst case if it serves).
pub fn plan(
    budgets: &Arc<Budgets>,
    endpoint: Endpoint,
    principal: &Principal,
    preflight: &Preflight,
    alternatives: &[&str],
    estimate: impl FnOnce() -> (u64, u64),
    at_ms: i64,
) -> Result<Option<SpendPlan>, GatewayError> {
    if !endpoint.has_body() {
        return Ok(None);
    }
    let set = budgets.set();
    if set.is_empty() {
        return Ok(None);
    }
    let mut rules = set
        .matching(&principal.project, &principal.env, &principal.key_id)
        .peekable();
    if rules.peek().is_none() {
        return Ok(None);
    }
    let model = match (preflight.model.as_deref(), endpoint) {
        (Some(m), _) => m,
        (None, Endpoint::Moderations) => DEFAULT_MODERATION_MODEL,
        (None, _) => "",
    };
    let catalog = budgets.catalog.current();
    let Some(entry) = catalog.get(model) else {
        return Err(GatewayError::UnpricedModel {
            model: model.to_owned(),
        });
    };
    let (input, output) = estimate();
    let tokens = BilledTokens {
        input,
        cached: 0,
        output,
    };
    let worst = (alternatives.iter().filter_map(|m| catalog.get(m)))
        .map(|e| e.cost(tokens).usd_nanos())
        .fold(entry.cost(tokens).usd_nanos(), u64::max);
    Ok(Some(SpendPlan {
        budgets: budgets.clone(),
        demands: demands(rules, worst).collect(),
        worst,
        tokens,
        at_ms,
    }))
}

/// Checks the budgets governing a call accepted at `at_ms` and reserves its worst
/// case, or refuses it (see the module docs): on its own, with no rate limit.
pub async fn admit(
    budgets: &Arc<Budgets>,
    endpoint: Endpoint,
    principal: &Principal,
    preflight: &Preflight,
    default_output_tokens: u64,
    at_ms: i64,
) -> Result<Option<BudgetReservation>, GatewayError> {
    let estimate = || crate::admit::estimate_parts(endpoint, preflight, default_output_tokens);
    let Some(plan) = plan(
        budgets,
        endpoint,
        principal,
        preflight,
        &[],
        estimate,
        at_ms,
    )?
    else {
        return Ok(None);
    };
    match plan.reserve().await {
        Ok((taken, in_redis)) => Ok(plan.reservation(taken, in_redis)),
        Err(refused) => Err(plan.refusal(refused, RateLimitInfo::default())),
    }
}

impl SpendPlan {
    /// Reserves on its own (no rate limit in the same call).
    pub(crate) async fn reserve(&self) -> Result<(Vec<bool>, bool), SpendRefused> {
        self.budgets
            .counters
            .reserve(&self.demands, self.at_ms)
            .await
    }

    /// The reservation to hold once the counters took the demands marked in `taken`
    /// (in Redis or in memory); `None` when none governed the call.
    pub(crate) fn reservation(
        &self,
        taken: Vec<bool>,
        in_redis: bool,
    ) -> Option<BudgetReservation> {
        let demands: Vec<(SpendDemand, i64)> = self
            .demands
            .iter()
            .zip(taken)
            .filter(|(_, t)| *t)
            .map(|(d, _)| (d.clone(), d.key.1.bounds(self.at_ms).0))
            .collect();
        (!demands.is_empty()).then(|| BudgetReservation {
            budgets: self.budgets.clone(),
            demands,
            reserved: self.worst,
            tokens: self.tokens,
            at_ms: self.at_ms,
            in_redis,
        })
    }

    /// The error for a refusal, counted; `headers`: the rate limits' (untouched: a
    /// budget refusal takes no rate-limit slot).
    pub(crate) fn refusal(&self, refused: SpendRefused, headers: RateLimitInfo) -> GatewayError {
        let denied = match refused {
            SpendRefused::Unavailable => return GatewayError::LimiterUnavailable,
            SpendRefused::Denied(denied) => denied,
        };
        let Some(d) = self.demands.get(denied.index) else {
            return GatewayError::LimiterUnavailable;
        };
        self.budgets.metrics.refused[BudgetMetrics::index(d.key.1)].fetch_add(1, Ordering::Relaxed);
        GatewayError::BudgetExceeded(Box::new(BudgetRefusal {
            scope: d.key.0.to_string(),
            period: d.key.1,
            limit_usd_nanos: d.limit,
            spent_usd_nanos: denied.state.spent,
            reserved_usd_nanos: denied.state.reserved,
            requested_usd_nanos: self.worst,
            resets_at_ms: d.key.1.bounds(self.at_ms).1,
            headers,
        }))
    }
}

/// One demand per budget and period with a limit.
fn demands<'a>(
    rules: impl Iterator<Item = &'a Rule> + 'a,
    amount: u64,
) -> impl Iterator<Item = SpendDemand> + 'a {
    rules.flat_map(move |r| {
        PERIODS.iter().filter_map(move |&p| {
            r.limit(p).map(|limit| SpendDemand {
                key: (r.scope.clone(), p),
                limit,
                soft_percent: r.soft_percent,
                amount,
            })
        })
    })
}

impl BudgetReservation {
    /// Settles against the finished call's record, pricing it now if the writer has
    /// not (see the module docs for the rule); `sent`: whether the call went upstream.
    pub fn settle(self, rec: &mut UsageRecord, sent: bool) {
        let observed = rec.input_tokens + rec.output_tokens > 0;
        crate::record::price(&self.budgets.catalog.current(), rec);
        let spent = if observed {
            // A served model the catalog does not know (a fallback's, say): the worst
            // case is charged, and recorded so the store's sum agrees.
            *rec.cost_usd_nanos.get_or_insert(self.reserved)
        } else if !sent || rec.failed_without_cost() {
            0
        } else {
            // Cut short before its usage was seen (the caller left mid-stream): the
            // upstream may have spent the worst case — of the model that was serving
            // it, when known (a chain is reserved at its dearest) — so that is what is
            // charged, and recorded, so the store's sum (`budgets show`, the re-syncs)
            // agrees.
            let serving = (rec.served_by.as_deref())
                .and_then(|label| label.split_once('/'))
                .and_then(|(_, model)| self.budgets.catalog.current().cost(model, self.tokens));
            let charged = serving.map_or(self.reserved, |c| c.usd_nanos().min(self.reserved));
            rec.cost_usd_nanos = Some(charged);
            charged
        };
        // This replica's memory counts every settlement (its view of the spend, the
        // fallback and the soft-threshold notices); a reservation in Redis is settled
        // there too, and held there only.
        let held_here = if self.in_redis { 0 } else { self.reserved };
        for (d, start) in &self.demands {
            let notice = self
                .budgets
                .counters
                .settle(d, *start, self.at_ms, held_here, spent);
            self.budgets.announce(notice);
        }
        if let (true, BudgetCounters::Redis(r)) = (self.in_redis, &self.budgets.counters) {
            let now = crate::accept::now_ms();
            r.settle_shared(&self.demands, self.reserved, spent, self.at_ms, now);
        }
    }

    /// The worst case reserved, in nano-USD.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }
}

/// Loads the budgets and their spend now; returns the limits version they reflect.
pub async fn load(budgets: &Budgets, store: &Store) -> Result<i64, StoreError> {
    let version = store.limits_version().await?;
    reload(budgets, store).await?;
    Ok(version)
}

async fn reload(budgets: &Budgets, store: &Store) -> Result<usize, StoreError> {
    let _gate = budgets.gate.lock().await;
    let list = store.list_budgets(None).await?;
    let n = list.len();
    let now = crate::accept::now_ms();
    let spend = spend(store, &BudgetSet::new(list.clone()), now).await?;
    budgets.replace(list, &spend, now);
    Ok(n)
}

/// Re-reads every counter's base from the store's usage.
pub async fn sync(budgets: &Budgets, store: &Store) -> Result<(), StoreError> {
    let set = budgets.set();
    if set.is_empty() {
        return Ok(());
    }
    let _gate = budgets.gate.lock().await;
    let now = crate::accept::now_ms();
    let spend = spend(store, &set, now).await?;
    budgets.sync_counters(&set, &spend, now, now + 1);
    Ok(())
}

/// The store's spend since the current day and month, of the one project with
/// budgets or of all.
async fn spend(
    store: &Store,
    set: &BudgetSet,
    now_ms: i64,
) -> Result<Vec<tollgate_store::Spend>, StoreError> {
    if set.is_empty() {
        return Ok(Vec::new());
    }
    let mut projects = set.by_project.keys();
    let only = match (projects.next(), projects.next()) {
        (Some(p), None) => Some(p.as_str()),
        _ => None,
    };
    store
        .spend_since(
            BudgetPeriod::Day.bounds(now_ms).0,
            BudgetPeriod::Month.bounds(now_ms).0,
            only,
        )
        .await
}

/// Keeps `budgets` in step with the store until `stop` fires: reloads when
/// `limits_version` moves (polled every `every`), and re-syncs the counters every
/// `sync_every`. Store errors are logged and retried; the last good state stays.
pub async fn watch(
    budgets: Arc<Budgets>,
    store: Store,
    mut version: i64,
    every: Duration,
    sync_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync_tick = tokio::time::interval(sync_every);
    sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Each store call has a deadline (see `keys::STORE_CALL_DEADLINE`): a re-sync stuck
    // on a dead connection would also hold the gate the usage writer needs.
    let deadline = crate::keys::STORE_CALL_DEADLINE;
    let timed_out = || StoreError::Invalid("no answer from the store in time".into());
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let current = tokio::time::timeout(deadline, store.limits_version()).await;
                match current.unwrap_or_else(|_| Err(timed_out())) {
                    Ok(v) if v == version => {}
                    Ok(v) => {
                        let loaded = tokio::time::timeout(deadline, reload(&budgets, &store)).await;
                        match loaded.unwrap_or_else(|_| Err(timed_out())) {
                            Ok(items) => {
                                tracing::info!(items, version = v, "budgets reloaded");
                                version = v;
                            }
                            Err(e) => tracing::warn!(error = %e, "budgets reload failed"),
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "budgets version check failed"),
                }
            }
            _ = sync_tick.tick() => {
                let synced = tokio::time::timeout(deadline, sync(&budgets, &store)).await;
                if let Err(e) = synced.unwrap_or_else(|_| Err(timed_out())) {
                    tracing::warn!(error = %e, "budget spend re-sync failed");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// The notifier: claims each notice in the store (once per scope and period across
/// processes), then logs, counts and POSTs it. A failed claim still announces: a
/// duplicate beats silence.
async fn notify(
    store: Store,
    webhook: Option<crate::webhook::Webhook>,
    metrics: Arc<BudgetMetrics>,
    mut rx: mpsc::Receiver<Notice>,
) {
    while let Some(n) = rx.recv().await {
        // With a deadline: a store call stuck on a dead connection must not stop every
        // later notice.
        let claim = store.claim_budget_notice(&n.scope, n.period, n.period_start_ms);
        match tokio::time::timeout(crate::keys::STORE_CALL_DEADLINE, claim).await {
            Ok(Ok(false)) => continue,
            Ok(Ok(true)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "budget notice claim failed; announcing anyway");
            }
            Err(_) => tracing::warn!("budget notice claim timed out; announcing anyway"),
        }
        metrics.soft[BudgetMetrics::index(n.period)].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            project = %n.scope.project,
            env = n.scope.env.as_deref().unwrap_or("*"),
            key_id = n.scope.key_id.as_deref().unwrap_or("*"),
            period = n.period.as_str(),
            limit_usd = %usd(n.limit),
            spent_usd = %usd(n.spent),
            soft_percent = n.soft_percent,
            "budget soft threshold reached"
        );
        if let Some(webhook) = &webhook {
            // Claimed already, so no other replica sends it: the webhook offers it
            // again if the receiver does not take it.
            let body = Bytes::from(notice_json(&n).to_string());
            webhook.send("budget.soft_threshold", body).await;
        }
    }
}

/// A budget with what its scope has spent in each of its periods, as the store's
/// usage records say (calls in flight and records not yet written are not in it):
/// what `tollgate budgets show` and `GET /admin/v1/budgets` print.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BudgetReport {
    #[serde(flatten)]
    pub budget: Budget,
    pub day: Option<PeriodReport>,
    pub month: Option<PeriodReport>,
}

/// One period of a [`BudgetReport`]; amounts in nano-USD and as USD text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeriodReport {
    pub limit_usd_nanos: u64,
    pub spent_usd_nanos: u64,
    pub remaining_usd_nanos: u64,
    pub limit_usd: String,
    pub spent_usd: String,
    pub remaining_usd: String,
    /// Start of the next period (Unix ms, UTC).
    pub resets_at_ms: i64,
}

/// The budgets of one project (or all) with their spend at `now_ms`.
pub async fn report(
    store: &Store,
    project: Option<&str>,
    now_ms: i64,
) -> Result<Vec<BudgetReport>, StoreError> {
    let budgets = store.list_budgets(project).await?;
    if budgets.is_empty() {
        return Ok(Vec::new());
    }
    let spend = store
        .spend_since(
            BudgetPeriod::Day.bounds(now_ms).0,
            BudgetPeriod::Month.bounds(now_ms).0,
            project,
        )
        .await?;
    Ok(budgets
        .into_iter()
        .map(|budget| {
            let s = &budget.scope;
            let (mut day, mut month) = (0u64, 0u64);
            for row in spend.iter().filter(|row| {
                row.project == s.project
                    && s.env.as_deref().is_none_or(|e| e == row.env)
                    && s.key_id.as_deref().is_none_or(|k| k == row.key_id)
            }) {
                day = day.saturating_add(row.day_usd_nanos);
                month = month.saturating_add(row.month_usd_nanos);
            }
            let period = |p: BudgetPeriod, spent: u64| {
                budget.limit(p).map(|limit| {
                    let remaining = limit.saturating_sub(spent);
                    PeriodReport {
                        limit_usd_nanos: limit,
                        spent_usd_nanos: spent,
                        remaining_usd_nanos: remaining,
                        limit_usd: usd(limit),
                        spent_usd: usd(spent),
                        remaining_usd: usd(remaining),
                        resets_at_ms: p.bounds(now_ms).1,
                    }
                })
            };
            BudgetReport {
                day: period(BudgetPeriod::Day, day),
                month: period(BudgetPeriod::Month, month),
                budget,
            }
        })
        .collect())
}

/// Parses a USD amount (`5`, `0.25`, `12.000000001`: at most 9 decimals) into
/// nano-USD, exactly.
pub fn parse_usd(text: &str) -> Result<u64, String> {
    let t = text.trim().trim_start_matches('$');
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if !digits(whole) || !(frac.is_empty() || digits(frac)) || frac.len() > 9 {
        return Err(format!(
            "{text:?} is not an amount of USD like 5, 0.25 or 12.5 (at most 9 decimals)"
        ));
    }
    let frac_nanos: u64 = format!("{frac:0<9}")
        .parse()
        .map_err(|_| format!("{text:?} is not an amount of USD"))?;
    whole
        .parse::<u64>()
        .ok()
        .and_then(|w| w.checked_mul(1_000_000_000))
        .and_then(|w| w.checked_add(frac_nanos))
        .ok_or_else(|| format!("{text:?} is too large an amount of USD"))
}

/// The webhook body of a notice.
pub fn notice_json(n: &Notice) -> serde_json::Value {
    serde_json::json!({
        "event": "budget.soft_threshold",
        "project": n.scope.project,
        "env": n.scope.env,
        "key_id": n.scope.key_id,
        "period": n.period.as_str(),
        "period_start": utc_day(n.period_start_ms),
        "limit_usd": usd(n.limit),
        "spent_usd": usd(n.spent),
        "soft_percent": n.soft_percent,
    })
}

/// Nano-USD as dollars with six decimals at least (`5.000000`).
pub fn usd(nanos: u64) -> String {
    crate::catalog::Cost(nanos).to_string()
}

/// `2026-12-01` (UTC).
pub fn utc_day(ms: i64) -> String {
    let (y, m, d) = tollgate_store::civil_date(ms);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tollgate_store::Role;

    const DAY_MS: i64 = 86_400_000;
    /// 2026-03-15 12:00 UTC.
    const NOW: i64 = 1_773_576_000_000;

    fn principal(env: &str, key: &str) -> Principal {
        Principal {
            key_id: key.into(),
            project: "shop".into(),
            env: env.into(),
            role: Role::Member,
            upstream_ref: None,
            lane: tollgate_store::Lane::Interactive,
        }
    }

    fn pre(body: &str) -> Preflight {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        Preflight {
            model: v["model"].as_str().map(str::to_owned),
            stream: false,
            strip_stream_usage: false,
            body: Bytes::from(body.to_owned()),
            max_output: crate::preflight::output_asked(body.as_bytes()),
            n: v["n"].as_u64(),
            ..Preflight::default()
        }
    }

    fn budget(
        env: Option<&str>,
        key: Option<&str>,
        daily: Option<u64>,
        monthly: Option<u64>,
    ) -> Budget {
        Budget {
            scope: BudgetScope {
                project: "shop".into(),
                env: env.map(Into::into),
                key_id: key.map(Into::into),
            },
            daily_usd_nanos: daily,
            monthly_usd_nanos: monthly,
            soft_percent: 80,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn budgets(list: Vec<Budget>) -> Arc<Budgets> {
        let b = Arc::new(Budgets::new(Arc::default()));
        b.replace(list, &[], NOW - 1_000);
        b
    }

    /// gpt-4o: $2.50 per 1M input, $10 per 1M output: 10 000 nano-USD per output token.
    fn body(max_output: u64) -> String {
        format!(r#"{{"model":"gpt-4o","input":"hi","max_output_tokens":{max_output}}}"#)
    }

    fn worst(max_output: u64) -> u64 {
        let (input, output) =
            crate::admit::estimate_parts(Endpoint::Responses, &pre(&body(max_output)), 4096);
        input * 2_500 + output * 10_000
    }

    fn admit_at(
        b: &Arc<Budgets>,
        p: &Principal,
        max_output: u64,
        at: i64,
    ) -> Result<Option<BudgetReservation>, GatewayError> {
        block_on(admit(
            b,
            Endpoint::Responses,
            p,
            &pre(&body(max_output)),
            4096,
            at,
        ))
    }

    /// Memory counters never wait: a current-thread runtime runs an admission.
    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn record(status: u16, input: u64, output: u64) -> UsageRecord {
        UsageRecord {
            status,
            input_tokens: input,
            output_tokens: output,
            total_tokens: input + output,
            model_requested: Some("gpt-4o".into()),
            project: Some("shop".into()),
            env: Some("prod".into()),
            key_id: Some("key_1".into()),
            created_at_ms: NOW,
            ..UsageRecord::default()
        }
    }

    fn spent(b: &Budgets, period: BudgetPeriod) -> SpendState {
        let rule = b.set().rules().next().unwrap().clone();
        b.counters.state(&(rule.scope, period), NOW).unwrap()
    }

    #[test]
    fn usd_amounts_parse_exactly() {
        assert_eq!(parse_usd("5"), Ok(5_000_000_000));
        assert_eq!(parse_usd("$0.25"), Ok(250_000_000));
        assert_eq!(parse_usd("12.000000001"), Ok(12_000_000_001));
        for bad in [
            "",
            "-1",
            "1.0000000001",
            "abc",
            ".5",
            "1e3",
            "99999999999999",
        ] {
            assert!(parse_usd(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_budget_admits_without_pricing_anything() {
        let b = budgets(vec![]);
        let p = principal("prod", "key_1");
        // Even an unpriced model: nothing governs it.
        let unpriced = pre(r#"{"model":"llama-local","input":"x"}"#);
        assert!(
            block_on(admit(&b, Endpoint::Responses, &p, &unpriced, 4096, NOW))
                .unwrap()
                .is_none()
        );
        let other = budgets(vec![budget(Some("dev"), None, Some(1), None)]);
        assert!(
            block_on(admit(&other, Endpoint::Responses, &p, &unpriced, 4096, NOW))
                .unwrap()
                .is_none()
        );
        // Listing models is not a model call.
        let gov = budgets(vec![budget(None, None, Some(1), None)]);
        assert!(
            block_on(admit(&gov, Endpoint::Models, &p, &unpriced, 4096, NOW))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_governed_model_without_a_price_is_refused() {
        let b = budgets(vec![budget(Some("prod"), None, Some(1_000_000_000), None)]);
        let e = block_on(admit(
            &b,
            Endpoint::Responses,
            &principal("prod", "key_1"),
            &pre(r#"{"model":"llama-local","input":"x"}"#),
            4096,
            NOW,
        ))
        .unwrap_err();
        assert!(matches!(&e, GatewayError::UnpricedModel { model } if model == "llama-local"));
        assert!(e.message().contains("[[models]]"), "{}", e.message());
    }

    #[test]
    fn a_call_admitted_after_its_day_rolled_over_holds_nothing_in_the_next() {
        let b = budgets(vec![budget(Some("prod"), None, Some(1_000_000_000), None)]);
        let p = principal("prod", "key_1");
        let midnight = BudgetPeriod::Day.bounds(NOW).1;
        let rule = b.set().rules().next().unwrap().clone();
        let day = |at: i64| {
            b.counters
                .state(&(rule.scope.clone(), BudgetPeriod::Day), at)
        };
        // A call accepted just after midnight rolls the day's counter over.
        let after = admit_at(&b, &p, 100, midnight + 1).unwrap().unwrap();
        // One accepted a second before midnight (it waited its turn in the batch lane)
        // is admitted now: it reserves nothing in the new day, so nothing leaks there.
        let late = admit_at(&b, &p, 100, midnight - 1_000).unwrap();
        assert_eq!(day(midnight + 2).unwrap().reserved, worst(100));
        if let Some(late) = late {
            let mut rec = record(200, 10, 5);
            rec.created_at_ms = midnight - 1_000;
            late.settle(&mut rec, true);
        }
        let mut rec = record(200, 10, 5);
        rec.created_at_ms = midnight + 1;
        after.settle(&mut rec, true);
        let state = day(midnight + 2).unwrap();
        assert_eq!((state.period_start_ms, state.reserved), (midnight, 0));
        assert_eq!(
            state.spent,
            10 * 2_500 + 5 * 10_000,
            "only the new day's call"
        );
    }

    #[test]
    fn the_worst_case_is_reserved_then_settled_to_the_real_cost() {
        let b = budgets(vec![budget(
            Some("prod"),
            None,
            Some(1_000_000_000),
            Some(5_000_000_000),
        )]);
        let p = principal("prod", "key_1");
        let r = admit_at(&b, &p, 100, NOW).unwrap().unwrap();
        assert_eq!(r.reserved(), worst(100));
        assert_eq!(spent(&b, BudgetPeriod::Day).reserved, worst(100));
        assert_eq!(spent(&b, BudgetPeriod::Month).reserved, worst(100));
        let mut rec = record(200, 10, 5);
        r.settle(&mut rec, true);
        let cost = 10 * 2_500 + 5 * 10_000;
        assert_eq!(rec.cost_usd_nanos, Some(cost), "priced at settlement");
        let s = spent(&b, BudgetPeriod::Day);
        assert_eq!((s.spent, s.reserved), (cost, 0));
        // Written by the writer: moves from unwritten to base, no double count.
        b.written(&[rec]);
        assert_eq!(spent(&b, BudgetPeriod::Day).spent, cost);
        // A failed call without usage gives everything back.
        let r = admit_at(&b, &p, 100, NOW).unwrap().unwrap();
        r.settle(&mut record(502, 0, 0), true);
        let s = spent(&b, BudgetPeriod::Day);
        assert_eq!((s.spent, s.reserved), (cost, 0));
        // So does a stream the upstream broke off before any usage.
        let r = admit_at(&b, &p, 100, NOW).unwrap().unwrap();
        let mut broken = record(200, 0, 0);
        broken.error_code = Some("upstream_stream_failed".into());
        r.settle(&mut broken, true);
        assert_eq!(spent(&b, BudgetPeriod::Day).spent, cost);
        // And a call whose caller left before it was sent upstream.
        let r = admit_at(&b, &p, 100, NOW).unwrap().unwrap();
        let mut gone = record(499, 0, 0);
        gone.client_disconnected = true;
        r.settle(&mut gone, false);
        assert_eq!(spent(&b, BudgetPeriod::Day).spent, cost);
        // A client gone from a call sent upstream, with nothing observed, keeps the
        // worst case (the upstream may have spent it).
        let r = admit_at(&b, &p, 100, NOW).unwrap().unwrap();
        let mut gone = record(499, 0, 0);
        gone.client_disconnected = true;
        r.settle(&mut gone, true);
        let s = spent(&b, BudgetPeriod::Day);
        assert_eq!((s.spent, s.reserved), (cost + worst(100), 0));
        // Its record says so, so the written record moves exactly that to the base
        // (it used to say 0, and the worst case stayed unwritten in memory while the
        // store's sum never had it).
        assert_eq!(gone.cost_usd_nanos, Some(worst(100)));
        b.written(&[gone]);
        let s = spent(&b, BudgetPeriod::Day);
        assert_eq!((s.spent, s.reserved), (cost + worst(100), 0));
        let (c, unwritten) = {
            let counters = b.counters.local().counters.lock();
            let c = counters.values().next().copied().unwrap();
            (c.base, c.unwritten)
        };
        assert_eq!((c, unwritten), (cost + worst(100), 0));
        // Cut short while a cheaper model than the one reserved for was serving it
        // (a chain is reserved at its dearest): charged that model's worst case.
        let r = admit_at(&b, &p, 100, NOW).unwrap().unwrap();
        let mini = b
            .catalog
            .current()
            .cost("gpt-4o-mini", r.tokens)
            .unwrap()
            .usd_nanos();
        assert!(mini < r.reserved());
        let mut gone = record(499, 0, 0);
        gone.client_disconnected = true;
        gone.served_by = Some("primary/gpt-4o-mini".into());
        let before = spent(&b, BudgetPeriod::Day).spent;
        r.settle(&mut gone, true);
        assert_eq!(gone.cost_usd_nanos, Some(mini));
        assert_eq!(spent(&b, BudgetPeriod::Day).spent, before + mini);
        let before = spent(&b, BudgetPeriod::Day).spent;
        // An offline answer (every target failed) costs nothing.
        let r = admit_at(&b, &p, 100, NOW).unwrap().unwrap();
        let mut offline = record(200, 0, 0);
        offline.served_by = Some(tollgate_store::SERVED_OFFLINE.into());
        r.settle(&mut offline, true);
        assert_eq!(offline.cost_usd_nanos, Some(0));
        assert_eq!(spent(&b, BudgetPeriod::Day).spent, before);
        // A model the catalog does not price served the call (a fallback's): the
        // worst case is charged and recorded.
        let r = admit_at(&b, &p, 100, NOW).unwrap().unwrap();
        let mut unpriced = record(200, 10, 5);
        unpriced.model_served = Some("not-in-the-catalog".into());
        r.settle(&mut unpriced, true);
        assert_eq!(unpriced.cost_usd_nanos, Some(worst(100)));
        assert_eq!(spent(&b, BudgetPeriod::Day).spent, before + worst(100));
    }

    #[test]
    fn a_call_that_would_exceed_the_remaining_budget_is_refused_up_front() {
        // Room for one call of 100 output tokens, not two.
        let limit = worst(100) * 3 / 2;
        let b = budgets(vec![budget(None, Some("key_1"), Some(limit), None)]);
        let p = principal("prod", "key_1");
        let big = admit_at(&b, &p, 10_000, NOW).unwrap_err();
        let GatewayError::BudgetExceeded(r) = &big else {
            panic!("{big:?}");
        };
        assert_eq!(
            (r.limit_usd_nanos, r.spent_usd_nanos, r.requested_usd_nanos),
            (limit, 0, worst(10_000))
        );
        assert_eq!(r.period, BudgetPeriod::Day);
        assert_eq!(r.resets_at_ms, BudgetPeriod::Day.bounds(NOW).1);
        assert_eq!(big.code(), Some("insufficient_quota"));
        assert!(!big.retryable());
        let m = big.message();
        assert!(m.contains("daily budget of project shop, key key_1"), "{m}");
        assert!(m.contains("2026-03-16 00:00 UTC"), "{m}");
        let first = admit_at(&b, &p, 100, NOW).unwrap().unwrap();
        // In flight, its worst case counts.
        assert!(matches!(
            admit_at(&b, &p, 100, NOW),
            Err(GatewayError::BudgetExceeded(_))
        ));
        first.settle(&mut record(200, 1, 1), true);
        assert!(admit_at(&b, &p, 100, NOW).is_ok());
        // Another key is not governed.
        assert!(admit_at(&b, &principal("prod", "key_2"), 10_000, NOW)
            .unwrap()
            .is_none());
        // Tomorrow is a new period.
        assert!(admit_at(&b, &p, 100, NOW + DAY_MS).is_ok());
        assert_eq!(b.metrics.refused_total(BudgetPeriod::Day), 2);
    }

    #[test]
    fn context_carried_in_from_an_earlier_turn_is_priced_as_input() {
        let limit = worst(100) + 1_000 * 2_500;
        let b = budgets(vec![budget(None, Some("key_1"), Some(limit), None)]);
        let p = principal("prod", "key_1");
        let continued = Preflight {
            carried_tokens: 1_001,
            ..pre(&body(100))
        };
        let refused = block_on(admit(&b, Endpoint::Responses, &p, &continued, 4096, NOW));
        let Err(GatewayError::BudgetExceeded(r)) = &refused else {
            panic!("{refused:?}");
        };
        assert_eq!(r.requested_usd_nanos, worst(100) + 1_001 * 2_500);
        let fits = Preflight {
            carried_tokens: 1_000,
            ..pre(&body(100))
        };
        let held = block_on(admit(&b, Endpoint::Responses, &p, &fits, 4096, NOW));
        assert!(held.unwrap().is_some());
    }

    #[test]
    fn the_store_spend_seeds_and_resyncs_the_counters() {
        let b = Arc::new(Budgets::new(Arc::default()));
        let spend = |env: &str, key: &str, day: u64, month: u64| tollgate_store::Spend {
            project: "shop".into(),
            env: env.into(),
            key_id: key.into(),
            day_usd_nanos: day,
            month_usd_nanos: month,
        };
        b.replace(
            vec![budget(Some("prod"), None, Some(100), Some(1_000))],
            &[
                spend("prod", "key_1", 10, 300),
                spend("prod", "key_2", 5, 5),
                spend("dev", "key_3", 50, 50),
            ],
            NOW,
        );
        assert_eq!(spent(&b, BudgetPeriod::Day).spent, 15);
        assert_eq!(spent(&b, BudgetPeriod::Month).spent, 305);
        // Calls accepted before the budget existed are not governed by it.
        let p = principal("prod", "key_1");
        assert!(admit_at(&b, &p, 100, NOW).unwrap().is_none());
        let set = b.set();
        b.sync_counters(&set, &[spend("prod", "key_1", 90, 900)], NOW, NOW);
        assert_eq!(spent(&b, BudgetPeriod::Day).spent, 90);
        assert!(matches!(
            admit_at(&b, &p, 1, NOW + 1),
            Err(GatewayError::BudgetExceeded(_))
        ));
    }

    #[test]
    fn a_call_in_flight_while_its_budget_is_set_again_is_counted_once() {
        let rule = budget(Some("prod"), None, Some(100_000_000), None);
        let b = budgets(vec![rule.clone()]);
        let p = principal("prod", "key_1");
        let held = admit_at(&b, &p, 100, NOW).unwrap().unwrap();
        // Cleared, then set again while the call runs: a new counter, from NOW + 10.
        b.replace(vec![], &[], NOW + 5);
        b.replace(vec![rule], &[], NOW + 10);
        let mut rec = UsageRecord {
            created_at_ms: NOW,
            project: Some("shop".into()),
            env: Some("prod".into()),
            key_id: Some("key_1".into()),
            model_served: Some("gpt-4o".into()),
            input_tokens: 10,
            output_tokens: 10,
            total_tokens: 20,
            status: 200,
            ..UsageRecord::default()
        };
        held.settle(&mut rec, true);
        let cost = rec.cost_usd_nanos.unwrap();
        assert!(cost > 0);
        // The new counter never held the reservation: it counts the call once, when
        // its record is written.
        b.written(std::slice::from_ref(&rec));
        let day = spent(&b, BudgetPeriod::Day);
        assert_eq!((day.spent, day.reserved), (cost, 0));
    }

    #[test]
    fn the_soft_threshold_is_noticed_once_per_period() {
        let b = budgets(vec![budget(Some("prod"), None, Some(100_000), None)]);
        let d = demands(b.set().rules(), 0).next().unwrap();
        let start = BudgetPeriod::Day.bounds(NOW).0;
        assert_eq!(b.counters.settle(&d, start, NOW, 0, 79_999), None);
        let n = b.counters.settle(&d, start, NOW, 0, 1).unwrap();
        assert_eq!(
            (n.spent, n.limit, n.soft_percent, n.period),
            (80_000, 100_000, 80, BudgetPeriod::Day)
        );
        assert_eq!(b.counters.settle(&d, start, NOW, 0, 1_000), None, "once");
        // A new period notices again.
        let next = BudgetPeriod::Day.bounds(NOW + DAY_MS).0;
        assert_eq!(b.counters.state(&d.key, NOW + DAY_MS).unwrap().spent, 0);
        assert!(b
            .counters
            .settle(&d, next, NOW + DAY_MS, 0, 90_000)
            .is_some());
        // Without a notifier a notice is counted as dropped.
        b.announce(Some(n.clone()));
        assert_eq!(b.metrics.notices_dropped_total(), 1);
        assert_eq!(utc_day(next), "2026-03-16");
        assert_eq!(notice_json(&n)["period_start"], "2026-03-15");
        assert_eq!(notice_json(&n)["spent_usd"], "0.000080");
    }
}
