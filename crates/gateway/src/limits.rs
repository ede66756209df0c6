//! Rate limits' and output caps' state, read by stages 3 (caps) and 4 (admit): the
//! rules and caps from the store, held in memory, and the token buckets that count
//! against the rules.
//!
//! Rules and caps: every one of the store, indexed by project. A background task polls
//! the store's `limits_version` counter (a sibling of `keys_version`, at the key
//! cache's `keys.refresh_interval_ms`) and swaps in the new set when it moves, so a
//! change made with the CLI or the admin API takes effect within that interval,
//! without a restart. With none stored, a request costs one check of an empty set.
//! The model rules (aliases and access lists, see `models`) and the store's catalog
//! entries (see `catalog`) change with the same counter and are reloaded with them.
//!
//! Buckets: one per rule and dimension (requests, tokens), with capacity the
//! per-minute limit, refilled continuously at limit/60 s. A bucket's level may go
//! below zero when a call used more tokens than it reserved (the debt is paid back by
//! the refill), so token accounting is exact over time. When a rule's limit changes,
//! what was used stays used: a raised limit is available at once, a lowered one
//! leaves what is left of it (see `rebase`). Levels are kept in units of
//! 1/60 000 000 of a token, so a refill of `limit` units per microsecond is exact
//! integer arithmetic and a wait time is exact to the microsecond.
//!
//! [`Counters`] is the counting backend: every admission is one all-or-nothing call
//! over the buckets a request touches ([`Counters::take`]) and every settlement one
//! [`Counters::adjust`]. The in-memory backend serves a single replica. The Redis one
//! ([`RedisCounters`], with `[redis] url`) runs the same arithmetic in a Lua script on
//! the Redis server's clock (`admit_redis`, which also reserves the spend budgets in
//! the same call), one round trip per admission, so every replica counts
//! into the same buckets; a settlement is sent without waiting. Its buckets are hashes
//! `<prefix>rl:<r|t>:<project>:<env>:<key>:<model>` (`*` for a rule's unset field,
//! `%`-escaped `:`), which expire once they would be full again. While Redis is
//! unreachable it falls back as `redis.on_failure` says (see `redis_link`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crate::catalog::LiveCatalog;
use crate::models::ModelRules;
use parking_lot::Mutex;
use redis::Script;
use tokio::sync::watch;
use tollgate_store::{LimitScope, OutputCap, OutputCapRule, RateLimitRule, Store, StoreError};

use crate::admit_redis::{self, Answer};
use crate::config::OnFailure;
use crate::redis_link::RedisLink;
use crate::snapshot::{Snapshot, ThreadCopy};

/// Bucket units per token (per request): a minute in microseconds.
const UNITS: i128 = 60_000_000;

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Requests,
    Tokens,
}

impl Dimension {
    /// OpenAI's error `type` for a refusal on this dimension.
    pub fn openai_type(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
        }
    }

    /// `requests per min (RPM)` / `tokens per min (TPM)`, as OpenAI's messages say.
    pub fn per_min(self) -> &'static str {
        match self {
            Self::Requests => "requests per min (RPM)",
            Self::Tokens => "tokens per min (TPM)",
        }
    }
}

/// One bucket: a rule's scope and the dimension it counts.
pub type BucketKey = (Arc<LimitScope>, Dimension);

/// One bucket an admission asks for: which, its per-minute limit, how much to take,
/// and how much the take must leave in the bucket.
#[derive(Debug, Clone)]
pub struct Demand {
    pub key: BucketKey,
    pub limit: u64,
    pub amount: u64,
    /// Units that must remain after the take: a batch request's reserve for
    /// interactive ones (`lanes`); 0 for an interactive request.
    pub keep: u64,
}

/// A bucket's state as a caller may see it (after the admission, when it passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    pub limit: u64,
    /// Whole units left now (0 when in debt).
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// Why [`Counters::take`] refused: the demand that must wait longest, and how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Index into the demands.
    pub index: usize,
    /// Time until that bucket holds the amount asked for.
    pub wait: Duration,
    /// Every demanded bucket's state, untouched.
    pub states: Vec<BucketState>,
}

/// Why [`Counters::take`] admitted nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A bucket lacks the amount.
    Limit(Denied),
    /// Redis is unreachable and `redis.on_failure = "closed"`.
    Unavailable,
}

/// The counting backend.
#[derive(Debug)]
pub enum Counters {
    /// In this process (a single replica).
    Memory(MemoryCounters),
    /// In Redis, shared by every replica.
    Redis(RedisCounters),
}

impl Default for Counters {
    fn default() -> Self {
        Self::Memory(MemoryCounters::default())
    }
}

impl Counters {
    /// Takes every demand's amount, or none if any bucket lacks it; answers the
    /// buckets' states and whether they were taken in Redis (a settlement goes where
    /// its take went). The states are empty when nothing was counted (Redis
    /// unreachable, `redis.on_failure = "open"`).
    pub async fn take(
        &self,
        demands: &[Demand],
        now: Instant,
    ) -> Result<(Vec<BucketState>, bool), Refused> {
        match self {
            Self::Memory(m) => m
                .take(demands, now)
                .map(|states| (states, false))
                .map_err(Refused::Limit),
            Self::Redis(r) => r.take(demands, now).await,
        }
    }

    /// The buckets' states now, taking nothing.
    pub async fn peek(&self, demands: &[Demand], now: Instant) -> Vec<BucketState> {
        match self {
            Self::Memory(m) => m.peek(demands, now),
            Self::Redis(r) => r.peek(demands, now).await,
        }
    }

    /// Gives back (`delta > 0`) or charges more (`delta < 0`) on one bucket: a
    /// settlement, applied where the take was (`in_redis`). A bucket never holds more
    /// than its limit.
    pub fn adjust(&self, key: &BucketKey, limit: u64, delta: i64, now: Instant, in_redis: bool) {
        match self {
            Self::Memory(m) => m.adjust(key, limit, delta, now),
            Self::Redis(r) if in_redis => r.adjust_shared(key, limit, delta),
            Self::Redis(r) => r.local.adjust(key, limit, delta, now),
        }
    }

    /// Forgets the buckets of rules that no longer exist (Redis's expire by themselves).
    fn retain(&self, rules: &RuleSet) {
        match self {
            Self::Memory(m) => m.retain(rules),
            Self::Redis(r) => r.local.retain(rules),
        }
    }
}

/// Settles one bucket: `ARGV` = a limit and the whole units to give back (> 0) or
/// charge (< 0). The bucket keeps the limit it holds (`m`, set by admissions; the
/// settled call's limit may be older); the one given serves a missing bucket or one
/// written before buckets kept theirs. A bucket full again is deleted (a missing
/// bucket is a full one).
const ADJUST_LUA: &str = r"
local U = 60000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
local level, at = limit * U, now
local v = redis.call('HMGET', KEYS[1], 'l', 't', 'm')
if v[1] then
  level, at = tonumber(v[1]), tonumber(v[2])
  limit = tonumber(v[3]) or limit
  if now > at then
    level = level + (now - at) * limit
    at = now
  end
end
local cap = limit * U
level = math.min(level, cap) + delta * U
if level >= cap then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('HSET', KEYS[1], 'l', string.format('%.0f', level), 't', string.format('%.0f', at), 'm', limit)
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - level) / math.max(limit, 1) / 1000) + 1000)
return 1
";

static ADJUST: LazyLock<Script> = LazyLock::new(|| Script::new(ADJUST_LUA));

/// The settlement of bucket `name` (see [`ADJUST_LUA`]).
pub(crate) fn adjust_invocation(
    name: String,
    limit: u64,
    delta: i64,
) -> redis::ScriptInvocation<'static> {
    let mut call = ADJUST.key(name);
    call.arg(limit).arg(delta);
    call
}

/// Buckets in Redis, with this replica's memory as the fallback.
#[derive(Debug)]
pub struct RedisCounters {
    link: Arc<RedisLink>,
    /// Used while Redis is unreachable and `redis.on_failure = "local"`.
    local: MemoryCounters,
}

impl RedisCounters {
    pub fn new(link: Arc<RedisLink>) -> Self {
        Self {
            link,
            local: MemoryCounters::default(),
        }
    }

    /// The link the counters use.
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    async fn take(
        &self,
        demands: &[Demand],
        now: Instant,
    ) -> Result<(Vec<BucketState>, bool), Refused> {
        if self.link.is_up() {
            let started = Instant::now();
            if let Some(answer) = self.run(demands, true).await {
                self.link.observe_admission(started.elapsed());
                return answer.map(|states| (states, true));
            }
        }
        self.fallback(demands, now).map(|states| (states, false))
    }

    /// What a take does while Redis is unreachable (`redis.on_failure`).
    pub(crate) fn fallback(
        &self,
        demands: &[Demand],
        now: Instant,
    ) -> Result<Vec<BucketState>, Refused> {
        match self.link.on_failure() {
            OnFailure::Local => self.local.take(demands, now).map_err(Refused::Limit),
            OnFailure::Open => Ok(Vec::new()),
            OnFailure::Closed => Err(Refused::Unavailable),
        }
    }

    async fn peek(&self, demands: &[Demand], now: Instant) -> Vec<BucketState> {
        if self.link.is_up() {
            if let Some(Ok(states) | Err(Refused::Limit(Denied { states, .. }))) =
                self.run(demands, false).await
            {
                return states;
            }
        }
        self.local.peek(demands, now)
    }

    /// One call of the admission script without budgets; None when it failed
    /// (already logged).
    async fn run(
        &self,
        demands: &[Demand],
        take: bool,
    ) -> Option<Result<Vec<BucketState>, Refused>> {
        match admit_redis::run(&self.link, demands, take, &[]).await? {
            Answer::Admitted(states) => Some(Ok(states)),
            Answer::RateRefused(denied) => Some(Err(Refused::Limit(denied))),
            Answer::BudgetRefused { .. } => None,
        }
    }

    /// Owed to a bucket taken in Redis, merged with the interval's other settlements
    /// of it and sent within milliseconds (`settle_redis`), or once Redis is back if it
    /// is unreachable now; a settlement whose call fails is logged and counted
    /// (`tollgate_redis_updates_lost_total`).
    fn adjust_shared(&self, key: &BucketKey, limit: u64, delta: i64) {
        let name = bucket_name(self.link.key_prefix(), key);
        let owed = crate::settle_redis::Owed::Bucket { limit, delta };
        self.link.settlements().add(&self.link, name, owed);
    }
}

/// The Redis key of a bucket (see the module docs).
pub fn bucket_name(prefix: &str, key: &BucketKey) -> String {
    let (scope, dim) = key;
    let mut out = String::with_capacity(prefix.len() + 48);
    out.push_str(prefix);
    out.push_str(match dim {
        Dimension::Requests => "rl:r",
        Dimension::Tokens => "rl:t",
    });
    let parts = [
        Some(&scope.project),
        scope.env.as_ref(),
        scope.key_id.as_ref(),
        scope.model.as_ref(),
    ];
    for part in parts {
        out.push(':');
        match part {
            None => out.push('*'),
            Some(p) => {
                for c in p.chars() {
                    match c {
                        '%' => out.push_str("%25"),
                        ':' => out.push_str("%3A"),
                        '*' => out.push_str("%2A"),
                        c => out.push(c),
                    }
                }
            }
        }
    }
    out
}

/// Buckets in a map behind one lock: an admission holds it for a few hundred
/// nanoseconds, and only requests that some rule governs take it.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    buckets: Mutex<HashMap<BucketKey, Bucket, ScopeHash>>,
}

/// The buckets' hasher: each admission hashes its scopes (four short strings) a few
/// times, and SipHash's resistance to chosen keys buys nothing for scopes that come
/// from the operator's own rules, not from callers. Multiply-rotate over 8-byte words
/// (rustc's FxHash).
type ScopeHash = std::hash::BuildHasherDefault<WordHasher>;

#[derive(Debug, Default, Clone, Copy)]
struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Units available at `at` (may be negative: a debt).
    level: i128,
    at: Instant,
    /// The per-minute limit the level was counted against.
    limit: u64,
}

impl Bucket {
    fn full(limit: u64, now: Instant) -> Self {
        Self {
            level: i128::from(limit) * UNITS,
            at: now,
            limit,
        }
    }

    /// Refills up to `now` at its limit.
    fn refill(&mut self, now: Instant) {
        let us = i128::try_from(now.saturating_duration_since(self.at).as_micros()).unwrap_or(0);
        let cap = i128::from(self.limit) * UNITS;
        self.level = (self.level + us * i128::from(self.limit)).min(cap);
        self.at = self.at.max(now);
    }

    /// Refills up to `now`, then moves to the rule's current `limit` (see [`rebase`]).
    /// Only admissions move a bucket: a settlement carries the limit its call was
    /// admitted under, which may be older.
    fn refill_to(&mut self, limit: u64, now: Instant) {
        self.refill(now);
        if self.limit != limit {
            self.level = rebase(self.level, self.limit, limit);
            self.limit = limit;
        }
    }

    /// Time until the level reaches `amount` whole units.
    fn wait_for(&self, limit: u64, amount: u64) -> Duration {
        let deficit = i128::from(amount) * UNITS - self.level;
        if deficit <= 0 || limit == 0 {
            return Duration::ZERO;
        }
        let us = (deficit + i128::from(limit) - 1) / i128::from(limit);
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    fn state(&self, limit: u64) -> BucketState {
        BucketState {
            limit,
            remaining: u64::try_from(self.level.max(0) / UNITS).unwrap_or(0),
            reset: self.wait_for(limit, limit),
        }
    }
}

impl MemoryCounters {
    /// Takes every demand or none. Each bucket is looked up twice (read and refill a
    /// copy; write it back taken) and its key cloned only when it is new: the scopes'
    /// reference counts are shared by every I/O thread. The demands name distinct
    /// buckets (one rule per scope, one bucket per dimension of it).
    pub fn take(&self, demands: &[Demand], now: Instant) -> Result<Vec<BucketState>, Denied> {
        let mut buckets = self.buckets.lock();
        let mut worst: Option<(usize, Duration)> = None;
        let mut refilled = Vec::with_capacity(demands.len());
        for (i, d) in demands.iter().enumerate() {
            let mut b = buckets
                .get(&d.key)
                .copied()
                .unwrap_or_else(|| Bucket::full(d.limit, now));
            b.refill_to(d.limit, now);
            let wait = b.wait_for(d.limit, d.amount.saturating_add(d.keep));
            if !wait.is_zero() && worst.is_none_or(|(_, w)| wait > w) {
                worst = Some((i, wait));
            }
            refilled.push(b);
        }
        if let Some((index, wait)) = worst {
            // Nothing taken (a refill changes no state a caller sees).
            let states = demands
                .iter()
                .zip(&refilled)
                .map(|(d, b)| b.state(d.limit))
                .collect();
            return Err(Denied {
                index,
                wait,
                states,
            });
        }
        Ok(demands
            .iter()
            .zip(refilled)
            .map(|(d, mut b)| {
                b.level -= i128::from(d.amount) * UNITS;
                put(&mut buckets, &d.key, b);
                b.state(d.limit)
            })
            .collect())
    }

    pub fn peek(&self, demands: &[Demand], now: Instant) -> Vec<BucketState> {
        let buckets = self.buckets.lock();
        demands
            .iter()
            .map(|d| match buckets.get(&d.key) {
                Some(b) => {
                    let mut b = *b;
                    b.refill_to(d.limit, now);
                    b.state(d.limit)
                }
                None => Bucket::full(d.limit, now).state(d.limit),
            })
            .collect()
    }

    pub fn adjust(&self, key: &BucketKey, limit: u64, delta: i64, now: Instant) {
        let mut buckets = self.buckets.lock();
        let mut b = buckets
            .get(key)
            .copied()
            .unwrap_or_else(|| Bucket::full(limit, now));
        b.refill(now);
        let cap = i128::from(b.limit) * UNITS;
        b.level = (b.level + i128::from(delta) * UNITS).min(cap);
        put(&mut buckets, key, b);
    }

    fn retain(&self, rules: &RuleSet) {
        self.buckets
            .lock()
            .retain(|(scope, _), _| rules.contains(scope));
    }
}

/// A bucket's level when its rule's limit changes from `from` to `to` per minute:
/// what was used stays used, so a raised limit is available at once (a caller
/// throttled at 10 RPM gets 90 more requests the moment the limit becomes 100) and a
/// lowered one leaves what is left of the new limit, never below zero — a debt (a
/// call that used more than it reserved) is kept as it was, not deepened.
fn rebase(level: i128, from: u64, to: u64) -> i128 {
    let moved = level + (i128::from(to) - i128::from(from)) * UNITS;
    moved.max(level.min(0))
}

/// Stores `b` as `key`'s bucket, cloning the key only for a bucket not yet in the map.
fn put(buckets: &mut HashMap<BucketKey, Bucket, ScopeHash>, key: &BucketKey, b: Bucket) {
    match buckets.get_mut(key) {
        Some(slot) => *slot = b,
        None => {
            buckets.insert(key.clone(), b);
        }
    }
}

/// A rule as the limiter uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub scope: Arc<LimitScope>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// Every rule and output cap, by project.
#[derive(Debug, Default, Clone)]
pub struct RuleSet {
    // Keyed by the operator's project names and key ids (not by anything a caller
    // chooses), hashed with the buckets' cheap hasher.
    by_project: HashMap<String, Vec<Rule>, ScopeHash>,
    caps: HashMap<String, ProjectCaps, ScopeHash>,
}

/// A project's output caps: its own, and its keys' (which replace it for them).
#[derive(Debug, Default, Clone)]
struct ProjectCaps {
    project: Option<OutputCap>,
    keys: HashMap<String, OutputCap, ScopeHash>,
}

impl ThreadCopy for RuleSet {
    /// With scopes of its own: admissions clone them, and a thread's clones then
    /// count on the thread's own copies.
    fn thread_copy(&self) -> Self {
        let mut copy = self.clone();
        copy.by_project
            .values_mut()
            .flatten()
            .for_each(|r| crate::snapshot::own(&mut r.scope));
        copy
    }
}

impl RuleSet {
    /// Builds the set from the store's rules and caps.
    pub fn new(rules: Vec<RateLimitRule>, caps: Vec<OutputCapRule>) -> Self {
        let mut by_cap_project: HashMap<String, ProjectCaps, ScopeHash> = HashMap::default();
        for c in caps {
            let entry = by_cap_project.entry(c.project).or_default();
            match c.key_id {
                Some(k) => {
                    entry.keys.insert(k, c.cap);
                }
                None => entry.project = Some(c.cap),
            }
        }
        let mut by_project: HashMap<String, Vec<Rule>, ScopeHash> = HashMap::default();
        for r in rules {
            by_project
                .entry(r.scope.project.clone())
                .or_default()
                .push(Rule {
                    scope: Arc::new(r.scope),
                    rpm: r.rpm,
                    tpm: r.tpm,
                });
        }
        Self {
            by_project,
            caps: by_cap_project,
        }
    }

    /// The output caps of a key: its own, else its project's.
    pub fn cap_for(&self, project: &str, key_id: &str) -> Option<OutputCap> {
        let p = self.caps.get(project)?;
        p.keys.get(key_id).copied().or(p.project)
    }

    /// The rules governing a request (every one must admit it).
    pub fn matching(
        &self,
        project: &str,
        env: &str,
        key_id: &str,
        model: Option<&str>,
    ) -> Vec<Rule> {
        self.by_project.get(project).map_or_else(Vec::new, |rules| {
            rules
                .iter()
                .filter(|r| r.scope.matches(project, env, key_id, model))
                .cloned()
                .collect()
        })
    }

    /// The rule of `scope` as it is in this set, if it still is.
    pub fn current(&self, scope: &LimitScope) -> Option<Rule> {
        self.by_project
            .get(&scope.project)?
            .iter()
            .find(|r| *r.scope == *scope)
            .cloned()
    }

    fn contains(&self, scope: &LimitScope) -> bool {
        self.by_project
            .get(&scope.project)
            .is_some_and(|rules| rules.iter().any(|r| *r.scope == *scope))
    }

    /// No rule and no cap at all.
    pub fn is_empty(&self) -> bool {
        self.by_project.is_empty() && self.caps.is_empty()
    }
}

/// The rules and counters a server admits with, and the model rules (aliases and
/// access lists, see `models`), which change with the same counter.
#[derive(Debug, Default)]
pub struct Limits {
    rules: Snapshot<RuleSet>,
    pub counters: Counters,
    models: Snapshot<ModelRules>,
    catalog: Arc<LiveCatalog>,
}

impl Limits {
    /// No rules yet, counting with `counters`.
    pub fn with_counters(counters: Counters) -> Self {
        Self {
            rules: Snapshot::default(),
            counters,
            models: Snapshot::default(),
            catalog: Arc::default(),
        }
    }

    /// The model catalog (config with the store's entries over it), shared with the
    /// budgets and the usage writer.
    pub fn catalog(&self) -> &Arc<LiveCatalog> {
        &self.catalog
    }

    /// The Redis link, when the counters are in Redis.
    pub fn redis(&self) -> Option<&Arc<RedisLink>> {
        match &self.counters {
            Counters::Redis(r) => Some(r.link()),
            Counters::Memory(_) => None,
        }
    }

    /// The current rules, from this thread's copy (see `snapshot`).
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.get()
    }

    /// The current model rules, from this thread's copy (see `snapshot`).
    pub fn models(&self) -> Arc<ModelRules> {
        self.models.get()
    }

    /// Swaps in new model rules.
    pub fn set_models(&self, rules: ModelRules) {
        self.models.set(rules);
    }

    /// Swaps in new rules and caps and forgets the buckets of removed rules. A rule
    /// whose limit changed keeps its bucket, moved by as much as the limit (`rebase`).
    pub fn replace(&self, rules: Vec<RateLimitRule>, caps: Vec<OutputCapRule>) {
        if rules.iter().any(|r| r.tpm.is_some()) {
            // A TPM rule counts every request's input: have the tokenizer ready.
            tollgate_wire::tokens::prepare_in_background();
        }
        let set = RuleSet::new(rules, caps);
        self.counters.retain(&set);
        self.rules.set(set);
    }
}

/// Loads the rules and caps now and returns the version they reflect.
pub async fn load(limits: &Limits, store: &Store) -> Result<i64, StoreError> {
    let version = store.limits_version().await?;
    reload(limits, store).await?;
    Ok(version)
}

async fn reload(limits: &Limits, store: &Store) -> Result<usize, StoreError> {
    let rules = store.list_rate_limits(None).await?;
    let caps = store.list_output_caps(None).await?;
    let aliases = store.list_model_aliases(None).await?;
    let access = store.list_model_access(None).await?;
    let catalog = store.list_catalog_models().await?;
    let n = rules.len() + caps.len() + aliases.len() + access.len() + catalog.len();
    limits
        .catalog
        .set_stored(crate::catalog::entries_from_store(&catalog));
    limits.replace(rules, caps);
    let models = limits.models().with_store_rules(aliases, access);
    limits.set_models(models);
    Ok(n)
}

/// Keeps `limits` in step with the store until `stop` fires: polls `limits_version`
/// every `every` and reloads on change. Store errors are logged and retried on the
/// next tick; the last good rules stay in force meanwhile.
pub async fn watch(
    limits: Arc<Limits>,
    store: Store,
    version: i64,
    every: Duration,
    stop: watch::Receiver<bool>,
) {
    crate::keys::poll_version(
        "rate limits",
        version,
        every,
        stop,
        || {
            let store = store.clone();
            async move { store.limits_version().await }
        },
        || {
            let (limits, store) = (limits.clone(), store.clone());
            async move { reload(&limits, &store).await }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(model: Option<&str>) -> Arc<LimitScope> {
        Arc::new(LimitScope {
            project: "shop".into(),
            env: None,
            key_id: None,
            model: model.map(Into::into),
        })
    }

    fn demand(s: &Arc<LimitScope>, dim: Dimension, limit: u64, amount: u64) -> Demand {
        Demand {
            key: (s.clone(), dim),
            limit,
            amount,
            keep: 0,
        }
    }

    #[test]
    fn a_take_that_must_keep_a_reserve_waits_for_it_and_takes_only_its_amount() {
        let c = MemoryCounters::default();
        let s = scope(None);
        let t0 = Instant::now();
        let batch = Demand {
            keep: 12,
            ..demand(&s, Dimension::Requests, 60, 1)
        };
        for _ in 0..48 {
            c.take(std::slice::from_ref(&batch), t0).unwrap();
        }
        // 12 left: a batch take must leave 12, so it waits for one more.
        let denied = c.take(std::slice::from_ref(&batch), t0).unwrap_err();
        assert_eq!(denied.wait, Duration::from_secs(1));
        assert_eq!(denied.states[0].remaining, 12, "nothing taken");
        // An interactive take may use the reserve down to the last request.
        for i in 0..12 {
            let st = c
                .take(&[demand(&s, Dimension::Requests, 60, 1)], t0)
                .unwrap();
            assert_eq!(st[0].remaining, 11 - i);
        }
        let denied = c.take(std::slice::from_ref(&batch), t0).unwrap_err();
        assert_eq!(denied.wait, Duration::from_secs(13));
    }

    #[test]
    fn a_bucket_holds_its_limit_and_refills_continuously() {
        let c = MemoryCounters::default();
        let s = scope(None);
        let t0 = Instant::now();
        // 60 per minute: one per second.
        for i in 0..60 {
            let st = c
                .take(&[demand(&s, Dimension::Requests, 60, 1)], t0)
                .unwrap();
            assert_eq!(st[0].remaining, 59 - i);
        }
        let denied = c
            .take(&[demand(&s, Dimension::Requests, 60, 1)], t0)
            .unwrap_err();
        assert_eq!(
            denied.wait,
            Duration::from_secs(1),
            "exact time to one request"
        );
        assert_eq!(denied.states[0].remaining, 0);
        assert_eq!(denied.states[0].reset, Duration::from_secs(60));
        // Half a second later: half a request, still refused, half a second to go.
        let t = t0 + Duration::from_millis(500);
        let denied = c
            .take(&[demand(&s, Dimension::Requests, 60, 1)], t)
            .unwrap_err();
        assert_eq!(denied.wait, Duration::from_millis(500));
        let t = t0 + Duration::from_secs(1);
        let st = c
            .take(&[demand(&s, Dimension::Requests, 60, 1)], t)
            .unwrap();
        assert_eq!(st[0].remaining, 0);
        // Never above capacity, however long idle.
        let t = t0 + Duration::from_secs(3600);
        let st = c
            .take(&[demand(&s, Dimension::Requests, 60, 1)], t)
            .unwrap();
        assert_eq!(st[0].remaining, 59);
    }

    #[test]
    fn a_changed_limit_moves_what_is_available_by_as_much() {
        let c = MemoryCounters::default();
        let s = scope(None);
        let t0 = Instant::now();
        let take = |limit: u64, n: u64| c.take(&[demand(&s, Dimension::Requests, limit, n)], t0);
        // 10 RPM, all used: refused.
        take(10, 10).unwrap();
        assert!(take(10, 1).is_err());
        // Raised to 100: 90 more at once, not one every 0.6 s.
        assert_eq!(take(100, 90).unwrap()[0].remaining, 0);
        assert!(take(100, 1).is_err());
        // 100 used; lowered to 50: nothing left, and the wait is one request at the
        // new rate (never a debt of 50).
        let denied = take(50, 1).unwrap_err();
        assert_eq!(denied.wait, Duration::from_millis(1_200));
        // Raised to 130 with 100 used: 30 left.
        assert_eq!(take(130, 0).unwrap()[0].remaining, 30);
        // A debt is kept as it is when the limit falls.
        let key = (s.clone(), Dimension::Requests);
        c.adjust(&key, 130, -50, t0);
        let denied = take(20, 1).unwrap_err();
        // 20 in debt, then one request, at 20 a minute: 63 s.
        assert_eq!(denied.wait, Duration::from_secs(63));
    }

    #[test]
    fn a_settlement_under_an_older_limit_leaves_the_bucket_at_the_new_one() {
        let c = MemoryCounters::default();
        let s = scope(None);
        let key = (s.clone(), Dimension::Tokens);
        let t0 = Instant::now();
        let take = |limit: u64, n: u64| c.take(&[demand(&s, Dimension::Tokens, limit, n)], t0);
        take(10, 10).unwrap();
        // Raised to 1000, then nearly used up: 5 left.
        assert_eq!(take(1_000, 985).unwrap()[0].remaining, 5);
        // A call admitted under the old limit of 10 settles, giving back 1: the bucket
        // stays at 1000 (moved down to 10 and up again it would hold 990).
        c.adjust(&key, 10, 1, t0);
        assert_eq!(take(1_000, 0).unwrap()[0].remaining, 6);
    }

    #[test]
    fn admission_is_all_or_nothing_and_the_longest_wait_wins() {
        let c = MemoryCounters::default();
        let (a, b) = (scope(None), scope(Some("gpt-4o")));
        let t0 = Instant::now();
        let both = |n: u64| {
            vec![
                demand(&a, Dimension::Tokens, 600, n),
                demand(&b, Dimension::Tokens, 6_000, n),
            ]
        };
        c.take(&both(500), t0).unwrap();
        // `a` has 100 left: 200 is refused and `b` keeps what it had.
        let denied = c.take(&both(200), t0).unwrap_err();
        assert_eq!(denied.index, 0);
        // 100 missing at 10 tokens/s.
        assert_eq!(denied.wait, Duration::from_secs(10));
        assert_eq!(denied.states[1].remaining, 5_500);
        let st = c.take(&both(100), t0).unwrap();
        assert_eq!((st[0].remaining, st[1].remaining), (0, 5_400));
    }

    #[test]
    fn settlements_refund_or_charge_and_debt_delays_the_next_call() {
        let c = MemoryCounters::default();
        let s = scope(None);
        let key = (s.clone(), Dimension::Tokens);
        let t0 = Instant::now();
        c.take(&[demand(&s, Dimension::Tokens, 6_000, 1_000)], t0)
            .unwrap();
        // Used 400 of the 1000 reserved: 600 come back.
        c.adjust(&key, 6_000, 600, t0);
        let st = c
            .take(&[demand(&s, Dimension::Tokens, 6_000, 0)], t0)
            .unwrap();
        assert_eq!(st[0].remaining, 5_600);
        // A call that used 7000 more than it reserved leaves a debt of 1400.
        c.adjust(&key, 6_000, -7_000, t0);
        let denied = c
            .take(&[demand(&s, Dimension::Tokens, 6_000, 100)], t0)
            .unwrap_err();
        // 1500 tokens at 100 tokens/s.
        assert_eq!(denied.wait, Duration::from_secs(15));
        // Refunds never lift a bucket over its limit.
        c.adjust(&key, 6_000, 1_000_000, t0);
        let st = c
            .take(&[demand(&s, Dimension::Tokens, 6_000, 0)], t0)
            .unwrap();
        assert_eq!(st[0].remaining, 6_000);
    }

    #[tokio::test]
    async fn rules_match_by_scope_and_removed_rules_lose_their_buckets() {
        let rule = |env: Option<&str>, key: Option<&str>, model: Option<&str>| RateLimitRule {
            scope: LimitScope {
                project: "shop".into(),
                env: env.map(Into::into),
                key_id: key.map(Into::into),
                model: model.map(Into::into),
            },
            rpm: Some(10),
            tpm: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let limits = Limits::default();
        limits.replace(
            vec![
                rule(None, None, None),
                rule(Some("prod"), None, None),
                rule(None, Some("key_1"), Some("gpt-4o")),
            ],
            vec![],
        );
        let rules = limits.rules();
        let n = |env, key, model| rules.matching("shop", env, key, model).len();
        assert_eq!(n("prod", "key_1", Some("gpt-4o")), 3);
        assert_eq!(n("dev", "key_1", Some("gpt-4o")), 2);
        assert_eq!(n("dev", "key_1", Some("gpt-4o-mini")), 1);
        assert_eq!(n("dev", "key_2", None), 1);
        assert!(rules.matching("blog", "prod", "key_1", None).is_empty());

        let t0 = Instant::now();
        let whole = rules.matching("shop", "dev", "key_2", None)[0]
            .scope
            .clone();
        limits
            .counters
            .take(&[demand(&whole, Dimension::Requests, 10, 10)], t0)
            .await
            .unwrap();
        // Same rule reloaded with a new limit: the bucket stays, the 10 used stay used.
        limits.replace(vec![rule(None, None, None)], vec![]);
        assert!(limits
            .counters
            .take(&[demand(&whole, Dimension::Requests, 20, 11)], t0)
            .await
            .is_err());
        assert!(limits
            .counters
            .take(&[demand(&whole, Dimension::Requests, 20, 10)], t0)
            .await
            .is_ok());
        // Rule gone and back: a fresh, full bucket.
        limits.replace(vec![], vec![]);
        assert!(limits.rules().is_empty());
        limits.replace(vec![rule(None, None, None)], vec![]);
        assert!(limits
            .counters
            .take(&[demand(&whole, Dimension::Requests, 10, 10)], t0)
            .await
            .is_ok());
    }

    #[test]
    fn bucket_names_are_unambiguous() {
        let s = Arc::new(LimitScope {
            project: "shop".into(),
            env: None,
            key_id: Some("key_1".into()),
            model: Some("llama3.1:8b*%".into()),
        });
        assert_eq!(
            bucket_name("t:", &(s.clone(), Dimension::Tokens)),
            "t:rl:t:shop:*:key_1:llama3.1%3A8b%2A%25"
        );
        assert_eq!(
            bucket_name("t:", &(scope(None), Dimension::Requests)),
            "t:rl:r:shop:*:*:*"
        );
    }

    #[test]
    fn a_keys_caps_replace_its_projects() {
        let cap = |max: u64| OutputCap {
            max_output_tokens: Some(max),
            ..OutputCap::default()
        };
        let rule = |key: Option<&str>, max: u64| OutputCapRule {
            project: "shop".into(),
            key_id: key.map(Into::into),
            cap: cap(max),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let set = RuleSet::new(vec![], vec![rule(None, 100), rule(Some("key_1"), 10)]);
        assert!(!set.is_empty());
        assert_eq!(set.cap_for("shop", "key_1"), Some(cap(10)));
        assert_eq!(set.cap_for("shop", "key_2"), Some(cap(100)));
        assert_eq!(set.cap_for("blog", "key_1"), None);
    }
}
