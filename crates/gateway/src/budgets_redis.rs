//! Spend budgets counted in Redis (`[redis] url`, issue 5 section 6), so replicas
//! sharing a Redis enforce one budget exactly rather than each up to the remainder.
//!
//! Keys: `<prefix>budget:<project>:<env|*>:<key|*>:<day|month>:<period start ms>`
//! with `:s` (spent: settled nano-USD) and `:r:<epoch>` (reserved: worst cases of
//! calls in flight that were admitted in that epoch), integers changed with
//! `INCRBY`/`DECRBY` only. Spent expires a day after its period ends.
//!
//! Reserved counters are kept per epoch of [`RESERVED_EPOCH_MS`] (15 minutes, from
//! the call's acceptance time): an admission counts the previous, current and next
//! epoch (the next: another replica's clock may run ahead) and reserves in the
//! current one, which expires at the end of the epoch after it. A reservation nobody
//! settles therefore stops holding budget 15 to 30 minutes after it was made,
//! whatever the traffic: a replica that crashed or was killed with calls in flight, a
//! settlement whose call failed, or an admission that ran in Redis after its caller
//! had given up on it (a timeout; the caller then admitted the call in its fallback).
//! A call still running after that has spent what it spent: its settlement still adds
//! the real cost. A settlement made while Redis is unreachable is held and sent once
//! it is back (`settle_redis`).
//!
//! Admission is one call of the admission script (`admit_redis::ADMIT_LUA`, the same
//! call that takes the rate-limit buckets when a rate limit governs the call too):
//! for every governing (scope, period) it seeds spent with this replica's count (the store's sum plus its own
//! settled spend, less its settlements Redis has not answered yet; `SET NX`, so only a
//! missing key — a new period, a restarted Redis — takes it), checks `spent + reserved + worst case <= limit` for all, and reserves
//! in all or none. Settlement ([`SETTLE_LUA`], sent without waiting): reserved −=
//! worst case, spent += real cost. The re-sync from the store
//! (`budgets.sync_interval_ms`) only raises spent to max(Redis, store) ([`RAISE_LUA`]),
//! the store's sum less this replica's settlements Redis has not answered yet:
//! while Redis is up its spent already holds every settled call and the store's sum
//! lags it by the usage writers' delay, so Redis is the source of truth and the store
//! only restores what Redis missed (settlements lost or made in the fallback).
//! Comparisons in Lua are doubles: exact below 2^53 nano-USD (about $9 million).
//!
//! Fallback while Redis is unreachable (`redis.on_failure`): `local` reserves in this
//! replica's memory counters (which track the store and this replica's settlements
//! all the time), `open` admits without checking (still counted locally), `closed`
//! refuses governed calls with 503 `limiter_unavailable`, as rate limits do. A call is
//! settled where it was reserved.

use std::sync::Arc;
use std::sync::LazyLock;

use redis::Script;
use tollgate_store::BudgetPeriod;

use crate::admit_redis::{self, Answer, BudgetTake};
use crate::budgets::{CounterKey, MemoryBudgetCounters, SpendDemand, SpendDenied, SpendState};
use crate::config::OnFailure;
use crate::redis_link::RedisLink;

/// The span of one reserved counter (ms): a reservation holds budget for one to
/// two of these (see the module docs).
pub const RESERVED_EPOCH_MS: i64 = 15 * 60 * 1000;

/// How long an epoch's reserved counter outlives the epoch after it (ms): replicas'
/// clocks differ by less.
const RESERVED_SKEW_MS: i64 = 60_000;

/// Spent counters live this long after their period ends (ms).
const SPENT_GRACE_MS: i64 = 86_400_000;

/// KEYS[1]: a spent counter, then the reserved counters to release from. ARGV: the
/// spend, the seed and TTL of a missing spent counter, then the amount released from
/// each reserved counter. A reserved counter at or below zero is deleted (it expired
/// while its calls ran: they were no longer held).
pub const SETTLE_LUA: &str = r"
for i = 2, #KEYS do
  if redis.call('DECRBY', KEYS[i], ARGV[i + 2]) <= 0 then
    redis.call('DEL', KEYS[i])
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3])
redis.call('INCRBY', KEYS[1], ARGV[1])
return 1
";

/// KEYS[1]: a spent counter. ARGV: the store's sum, the TTL. Raises, never lowers.
pub const RAISE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or tonumber(v) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
";

static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_LUA));
static RAISE: LazyLock<Script> = LazyLock::new(|| Script::new(RAISE_LUA));

/// The settlement of one budget period's counters (see [`SETTLE_LUA`]): `released`
/// from each of its reserved counters, `spent` added.
pub(crate) fn settle_invocation(
    spent_key: String,
    released: Vec<(String, u64)>,
    spent: u64,
    seed: u64,
    ttl_ms: i64,
) -> redis::ScriptInvocation<'static> {
    let mut call = SETTLE.prepare_invoke();
    call.key(spent_key).arg(spent).arg(seed).arg(ttl_ms);
    for (reserved_key, amount) in released {
        call.key(reserved_key).arg(amount);
    }
    call
}

/// The epoch of a call accepted at `at_ms`.
pub fn epoch(at_ms: i64) -> i64 {
    at_ms.div_euclid(RESERVED_EPOCH_MS)
}

/// The reserved counter of `epoch`, from the period's reserved name of [`key_names`].
pub fn epoch_key(reserved: &str, epoch: i64) -> String {
    format!("{reserved}:{epoch}")
}

/// The reserved counters an admission at `at_ms` counts: the previous, current and
/// next epoch.
fn epoch_keys(reserved: &str, at_ms: i64) -> [String; 3] {
    let e = epoch(at_ms);
    [e - 1, e, e + 1].map(|e| epoch_key(reserved, e))
}

/// How long, from `now_ms`, the reserved counter of a call accepted at `at_ms` lives:
/// to the end of the epoch after its own, plus the clocks' skew.
fn reserved_ttl(at_ms: i64, now_ms: i64) -> i64 {
    ((epoch(at_ms) + 2) * RESERVED_EPOCH_MS + RESERVED_SKEW_MS - now_ms).max(1_000)
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpendRefused {
    /// A budget has no room.
    Denied(SpendDenied),
    /// Redis is unreachable and `redis.on_failure = "closed"`.
    Unavailable,
}

/// The budget part of one admission script call (see [`RedisBudgetCounters::plan`]).
#[derive(Debug, Clone)]
pub(crate) struct ReservePlan {
    /// What the script reserves: the governed demands.
    pub(crate) takes: Vec<BudgetTake>,
    /// The index of each take's demand.
    governed: Vec<usize>,
    /// Whether each demand's counter governs the call.
    governs: Vec<bool>,
}

impl ReservePlan {
    /// Which demands a reservation took (the governed ones).
    pub(crate) fn taken(&self) -> Vec<bool> {
        self.governs.clone()
    }

    /// The refusal of the script's `index`-th take (an index the script answered:
    /// always one of its takes).
    pub(crate) fn denied(
        &self,
        demands: &[SpendDemand],
        index: usize,
        spent: u64,
        reserved: u64,
        at_ms: i64,
    ) -> SpendDenied {
        let index = self.governed.get(index).copied().unwrap_or_default();
        SpendDenied {
            index,
            state: SpendState {
                period_start_ms: demands.get(index).map_or(0, |d| d.key.1.bounds(at_ms).0),
                spent,
                reserved,
            },
        }
    }
}

/// Budget counters in Redis, with this replica's memory counters kept all along as
/// the fallback (and for the soft-threshold notices).
#[derive(Debug)]
pub struct RedisBudgetCounters {
    link: Arc<RedisLink>,
    pub(crate) local: MemoryBudgetCounters,
}

impl RedisBudgetCounters {
    pub fn new(link: Arc<RedisLink>) -> Self {
        Self {
            link,
            local: MemoryBudgetCounters::default(),
        }
    }

    /// The link the counters use.
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// Reserves in Redis (answering `true`), else as `redis.on_failure` says.
    pub(crate) async fn reserve(
        &self,
        demands: &[SpendDemand],
        at_ms: i64,
    ) -> Result<(Vec<bool>, bool), SpendRefused> {
        let plan = self.plan(demands, at_ms);
        if self.link.is_up() {
            if let Some(answer) = self.run_reserve(demands, &plan, at_ms).await {
                return answer.map(|()| (plan.taken(), true));
            }
        }
        self.fallback(demands, at_ms)
    }

    /// What a reservation does while Redis is unreachable (`redis.on_failure`).
    pub(crate) fn fallback(
        &self,
        demands: &[SpendDemand],
        at_ms: i64,
    ) -> Result<(Vec<bool>, bool), SpendRefused> {
        match self.link.on_failure() {
            OnFailure::Local => self
                .local
                .reserve_checked(demands, at_ms, true)
                .map(|t| (t, false))
                .map_err(SpendRefused::Denied),
            OnFailure::Open => self
                .local
                .reserve_checked(demands, at_ms, false)
                .map(|t| (t, false))
                .map_err(SpendRefused::Denied),
            OnFailure::Closed => Err(SpendRefused::Unavailable),
        }
    }

    /// The admission script's budget part for `demands` of a call accepted at
    /// `at_ms`: the governed ones (a counter created after the call was accepted does
    /// not govern it), seeded with this replica's count.
    pub(crate) fn plan(&self, demands: &[SpendDemand], at_ms: i64) -> ReservePlan {
        let seeds = self.local.seeds(demands, at_ms);
        let mut plan = ReservePlan {
            takes: Vec::with_capacity(demands.len()),
            governed: Vec::with_capacity(demands.len()),
            governs: seeds.iter().map(|s| s.0).collect(),
        };
        let reserved_ttl_ms = reserved_ttl(at_ms, crate::accept::now_ms());
        for (i, (d, &(governs, seed))) in demands.iter().zip(&seeds).enumerate() {
            if !governs {
                continue;
            }
            let start = d.key.1.bounds(at_ms).0;
            let (spent_key, reserved) = key_names(self.link.key_prefix(), &d.key, start);
            // Without this replica's settlements still on their way: the local count
            // holds them already, and each adds its spend when it lands, so a counter
            // this admission creates would count them twice (as a re-sync's raise
            // would; see `raise`).
            let seed = seed.saturating_sub(self.link.settlements().unsent_spend(&spent_key));
            plan.takes.push(BudgetTake {
                spent_key,
                reserved_keys: epoch_keys(&reserved, at_ms),
                limit: d.limit,
                amount: d.amount,
                seed,
                spent_ttl_ms: spent_ttl(d.key.1, start, at_ms),
                reserved_ttl_ms,
            });
            plan.governed.push(i);
        }
        plan
    }

    /// One call of the admission script without rate limits; `None` when it failed
    /// (already logged).
    async fn run_reserve(
        &self,
        demands: &[SpendDemand],
        plan: &ReservePlan,
        at_ms: i64,
    ) -> Option<Result<(), SpendRefused>> {
        if plan.takes.is_empty() {
            return Some(Ok(()));
        }
        match admit_redis::run(&self.link, &[], true, &plan.takes).await? {
            Answer::Admitted(_) => Some(Ok(())),
            Answer::BudgetRefused {
                index,
                spent,
                reserved,
                ..
            } => Some(Err(SpendRefused::Denied(
                plan.denied(demands, index, spent, reserved, at_ms),
            ))),
            Answer::RateRefused(_) => None,
        }
    }

    /// Settles a reservation made in Redis, without waiting: merged per period with the
    /// interval's other settlements and sent within milliseconds (`settle_redis`), or
    /// once Redis is back when it is unreachable now (the worst case it releases was
    /// reserved there, and stays reserved until it is).
    /// `at_ms`: when the call was accepted (its reservation's epoch).
    pub fn settle_shared(
        &self,
        demands: &[(SpendDemand, i64)],
        reserved: u64,
        spent: u64,
        at_ms: i64,
        now_ms: i64,
    ) {
        if demands.is_empty() {
            return;
        }
        let prefix = self.link.key_prefix();
        for (d, start) in demands {
            let (s, r) = key_names(prefix, &d.key, *start);
            // The memory counters have counted this call already: a missing key is
            // seeded without the calls being settled, then counts them once.
            let owed = crate::settle_redis::Owed::Budget {
                released: vec![(epoch_key(&r, epoch(at_ms)), reserved)],
                spent,
                local: self.local.seed(&d.key, *start),
                ttl_ms: spent_ttl(d.key.1, *start, now_ms),
            };
            self.link.settlements().add(&self.link, s, owed);
        }
    }

    /// Raises a spent counter in Redis to the store's sum, without waiting. A raise
    /// that fails (Redis lost meanwhile) is not a lost update: the next re-sync makes
    /// the same raise from the same store, and the link has counted the error.
    pub(crate) fn raise(&self, key: &CounterKey, period_start_ms: i64, sum: u64, now_ms: i64) {
        if !self.link.is_up() {
            return;
        }
        let (s, _) = key_names(self.link.key_prefix(), key, period_start_ms);
        // Without this replica's settlements still on their way: the store's sum may
        // hold those calls already, and raising to it would count them twice when the
        // settlements land (a settlement delayed past the writer and a re-sync did).
        let sum = sum.saturating_sub(self.link.settlements().unsent_spend(&s));
        let ttl = spent_ttl(key.1, period_start_ms, now_ms);
        let link = self.link.clone();
        self.link.spawn(async move {
            let mut call = RAISE.key(s);
            call.arg(sum).arg(ttl);
            let _ = link.call::<i64>(&call).await;
        });
    }

    /// The spent and reserved counters of a period in Redis, reserved as an
    /// admission now counts it (tests, diagnostics).
    pub async fn shared_state(&self, key: &CounterKey, period_start_ms: i64) -> Option<(u64, u64)> {
        let (s, r) = key_names(self.link.key_prefix(), key, period_start_ms);
        let mut call = STATE.key(s);
        for r in epoch_keys(&r, crate::accept::now_ms()) {
            call.key(r);
        }
        let v: Vec<u64> = self.link.call(&call).await.ok()?;
        match v.as_slice() {
            [s, r] => Some((*s, *r)),
            _ => None,
        }
    }
}

static STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local r = 0 \
         for i = 2, #KEYS do r = r + math.max(tonumber(redis.call('GET', KEYS[i]) or '0'), 0) end \
         return {tonumber(redis.call('GET', KEYS[1]) or '0'), r}",
    )
});

/// How long a spent counter of the period starting at `start` lives from `now_ms`.
fn spent_ttl(period: BudgetPeriod, start: i64, now_ms: i64) -> i64 {
    (period.bounds(start).1 + SPENT_GRACE_MS - now_ms).max(1_000)
}

/// The Redis keys of a counter in the period starting at `start`: its spent counter
/// and the name its reserved counters' epochs are appended to ([`epoch_key`]; see the
/// module docs; `%`, `:` and `*` in names are `%`-escaped).
pub fn key_names(prefix: &str, key: &CounterKey, start: i64) -> (String, String) {
    let (scope, period) = key;
    let mut out = String::with_capacity(prefix.len() + 64);
    out.push_str(prefix);
    out.push_str("budget");
    for part in [
        Some(&scope.project),
        scope.env.as_ref(),
        scope.key_id.as_ref(),
    ] {
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
    out.push(':');
    out.push_str(period.as_str());
    out.push(':');
    out.push_str(&start.to_string());
    let reserved = format!("{out}:r");
    out.push_str(":s");
    (out, reserved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_store::BudgetScope;

    #[test]
    fn key_names_are_unambiguous() {
        let k = |env: Option<&str>, key: Option<&str>| -> CounterKey {
            (
                Arc::new(BudgetScope {
                    project: "a:b".into(),
                    env: env.map(Into::into),
                    key_id: key.map(Into::into),
                }),
                BudgetPeriod::Day,
            )
        };
        let (s, r) = key_names("tg:", &k(None, Some("*")), 5);
        assert_eq!(s, "tg:budget:a%3Ab:*:%2A:day:5:s");
        assert_eq!(r, "tg:budget:a%3Ab:*:%2A:day:5:r");
        assert_ne!(
            key_names("", &k(Some("*"), None), 5).0,
            key_names("", &k(None, None), 5).0
        );
    }
}
