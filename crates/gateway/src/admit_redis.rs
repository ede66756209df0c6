//! Stage 4 (admit) with Redis (`[redis] url`, issue 5 section 6): the one script that
//! admits a request — one round trip, whatever governs it. It checks the rate-limit
//! buckets the request touches (`limits`) and the spend budgets that govern it
//! (`budgets_redis`) and, only when every one has room, takes from all the buckets
//! and reserves in all the budgets; otherwise it takes and reserves nothing, so a
//! budget refusal costs no rate-limit slot and a rate refusal touches no budget.
//!
//! Rate limits are checked first (a rate refusal is answered before any budget is
//! looked at, as without Redis); the budget part runs only on a take, never on a
//! peek. Both parts keep the arithmetic of their own scripts before they were
//! merged: refill on the Redis server's clock, batch reserve, expiry; budgets seeded
//! with `SET NX` from this replica's count. Callers with only one part send the
//! other empty.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::limits::{bucket_name, BucketState, Demand, Denied};
use crate::redis_link::RedisLink;

/// `KEYS`: the `n` rate-limit buckets, then per budget demand its spent counter and
/// its reserved counters of the previous, current and next epoch (`budgets_redis`).
/// `ARGV`: take (1) or peek (0), `n`, then per bucket its limit, amount and keep (what
/// the take must leave: a batch request's reserve; only the amount is taken), then
/// per budget demand its limit, amount, seed, spent TTL and reserved TTL. A budget's
/// reserved is the sum of its three epochs; a reservation goes to the current one.
///
/// Answers `{status, a, b, c, then per bucket remaining and µs until full}`:
/// status 1 admitted (all taken); 0 a bucket lacks room (`a` its 0-based index, `b`
/// the wait in µs); 2 a budget lacks room (`a` its 0-based index, `b` its spent, `c`
/// its reserved). Refused, nothing is taken or reserved (a budget's missing spent
/// counter is still seeded). Lua numbers are doubles: bucket levels are exact to
/// 2^53 units (a limit of about 150 million a minute) and off by far less than one
/// token beyond; budget amounts are exact below 2^53 nano-USD (about $9 million).
pub const ADMIT_LUA: &str = r"
local U = 60000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local take = ARGV[1] == '1'
local n = tonumber(ARGV[2])
local function wait_for(level, limit, amount)
  local deficit = amount * U - level
  if deficit <= 0 or limit == 0 then return 0 end
  return math.ceil(deficit / limit)
end
local levels, ats, limits, amounts = {}, {}, {}, {}
local worst, worst_wait = 0, 0
for i = 1, n do
  local limit, amount = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local keep = tonumber(ARGV[3 * i + 2])
  local cap = limit * U
  local level, at = cap, now
  local v = redis.call('HMGET', KEYS[i], 'l', 't', 'm')
  if v[1] then
    level, at = tonumber(v[1]), tonumber(v[2])
    local was = tonumber(v[3]) or limit
    if now > at then
      level = level + (now - at) * was
      at = now
    end
    if level > was * U then level = was * U end
    if was ~= limit then level = math.max(level + (limit - was) * U, math.min(level, 0)) end
  end
  levels[i], ats[i], limits[i], amounts[i] = level, at, limit, amount
  local w = wait_for(level, limit, amount + keep)
  if w > worst_wait then worst, worst_wait = i, w end
end
local out = {1, 0, 0, 0}
if worst > 0 then
  out = {0, worst - 1, worst_wait, 0}
elseif take then
  local m, base = (#KEYS - n) / 4, 3 * n + 2
  for j = 1, m do
    local s, k, a = KEYS[n + 4 * j - 3], n + 4 * j - 3, base + 5 * (j - 1)
    redis.call('SET', s, ARGV[a + 3], 'NX', 'PX', ARGV[a + 4])
    local sv = tonumber(redis.call('GET', s))
    local rv = 0
    for e = 1, 3 do
      rv = rv + math.max(tonumber(redis.call('GET', KEYS[k + e]) or '0'), 0)
    end
    local limit, amount = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local committed = sv + rv
    if committed >= limit or committed + amount > limit then
      out = {2, j - 1, sv, rv}
      break
    end
  end
  if out[1] == 1 then
    for j = 1, m do
      local r, a = KEYS[n + 4 * j - 1], base + 5 * (j - 1)
      redis.call('INCRBY', r, ARGV[a + 2])
      redis.call('PEXPIRE', r, ARGV[a + 5])
    end
    for i = 1, n do
      local level = levels[i] - amounts[i] * U
      levels[i] = level
      local ttl = math.ceil((limits[i] * U - level) / math.max(limits[i], 1) / 1000) + 1000
      redis.call('HSET', KEYS[i], 'l', string.format('%.0f', level), 't', string.format('%.0f', ats[i]), 'm', limits[i])
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
end
for i = 1, n do
  local rem = 0
  if levels[i] > 0 then rem = math.floor(levels[i] / U) end
  out[#out + 1] = rem
  out[#out + 1] = wait_for(levels[i], limits[i], limits[i])
end
return out
";

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(ADMIT_LUA));

/// One budget reservation to make in the admission script (built by `budgets_redis`).
#[derive(Debug, Clone)]
pub struct BudgetTake {
    pub spent_key: String,
    /// The reserved counters of the previous, current and next epoch; the
    /// reservation goes to the current one.
    pub reserved_keys: [String; 3],
    pub limit: u64,
    pub amount: u64,
    /// This replica's count of the period, for a spent counter Redis lacks.
    pub seed: u64,
    pub spent_ttl_ms: i64,
    /// How long the current epoch's reserved counter lives from now.
    pub reserved_ttl_ms: i64,
}

/// What the admission script answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Every bucket taken and every budget reserved: the buckets' states after.
    Admitted(Vec<BucketState>),
    /// A bucket lacks room; nothing taken or reserved.
    RateRefused(Denied),
    /// A budget lacks room (`index` into the budget takes); nothing taken or
    /// reserved. `states`: the buckets, untouched.
    BudgetRefused {
        index: usize,
        spent: u64,
        reserved: u64,
        states: Vec<BucketState>,
    },
}

/// One call of the admission script: takes (or with `take` false, only reads) the
/// buckets of `demands` and reserves `budget`, all or nothing; `None` when the call
/// failed (already logged and counted by the link).
pub async fn run(
    link: &RedisLink,
    demands: &[Demand],
    take: bool,
    budget: &[BudgetTake],
) -> Option<Answer> {
    let mut call = ADMIT.prepare_invoke();
    call.arg(u8::from(take)).arg(demands.len());
    for d in demands {
        call.key(bucket_name(link.key_prefix(), &d.key))
            .arg(d.limit)
            .arg(d.amount)
            .arg(d.keep);
    }
    for b in budget {
        call.key(&b.spent_key);
        for r in &b.reserved_keys {
            call.key(r);
        }
        call.arg(b.limit)
            .arg(b.amount)
            .arg(b.seed)
            .arg(b.spent_ttl_ms)
            .arg(b.reserved_ttl_ms);
    }
    let reply: Vec<i64> = link.call(&call).await.ok()?;
    let answer = parse(&reply, demands, budget.len());
    if answer.is_none() {
        link.update_lost("a malformed answer of the admission script");
    }
    answer
}

/// The script's answer, checked against what was asked.
fn parse(reply: &[i64], demands: &[Demand], budgets: usize) -> Option<Answer> {
    let (&[status, a, b, c], tail) = reply.split_first_chunk::<4>()?;
    if tail.len() != demands.len() * 2 {
        return None;
    }
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    let states: Vec<BucketState> = demands
        .iter()
        .zip(tail.chunks_exact(2))
        .map(|(d, s)| BucketState {
            limit: d.limit,
            remaining: unsigned(s[0]),
            reset: Duration::from_micros(unsigned(s[1])),
        })
        .collect();
    let index = |i: i64, len: usize| usize::try_from(i).ok().filter(|i| *i < len);
    match status {
        1 => Some(Answer::Admitted(states)),
        0 => Some(Answer::RateRefused(Denied {
            index: index(a, demands.len())?,
            wait: Duration::from_micros(unsigned(b)),
            states,
        })),
        2 => Some(Answer::BudgetRefused {
            index: index(a, budgets)?,
            spent: unsigned(b),
            reserved: unsigned(c),
            states,
        }),
        _ => None,
    }
}
