//! Stage 4, admit: requests-per-minute and tokens-per-minute limits (see `limits` for
//! the rules and buckets), taken together with the spend budgets (`budgets`); the
//! priority lanes (`lanes`) decide what a batch request does when it does not fit.
//!
//! Admission is planned, then committed: [`plan`] finds the rules and budgets that
//! govern the request and makes its token estimate once for both (only when a TPM
//! rule or a budget needs it); [`commit`] takes from every bucket and reserves in
//! every budget, all or nothing — a budget refusal leaves the rate limits untouched
//! and a rate refusal the budgets. A batch request that waits commits its plan again.
//!
//! A model call (Responses, Chat, Embeddings, Moderations) is governed by every rule
//! matching its project, environment, key and model, and must fit all of them. Each
//! takes one request from its RPM bucket and, when it has a TPM limit, the request's
//! token estimate from its TPM bucket: the input counted with the model family's real
//! tokenizer plus the output the request allows (`max_output_tokens`,
//! `max_completion_tokens` or `max_tokens`, times `n`; else `limits.default_output_tokens`).
//! Tokens are counted only when a TPM rule applies, so a request no rule governs pays
//! for one map lookup and nothing else.
//!
//! The [`Reservation`] rides with the usage record and is settled when the record is
//! finished — on every path: the real `usage` replaces the estimate (plain and
//! streamed answers); a call that failed without usage gets its tokens back; a call
//! cut short with no usage seen (client gone mid-stream) keeps what it reserved, since
//! the upstream may have spent it. Requests are never given back: the upstream saw
//! them.
//!
//! With the counters in Redis (`[redis] url`) admission is one round trip to Redis
//! (`admit_redis`: one script for the buckets and the budgets) and therefore async;
//! while Redis is unreachable `redis.on_failure` decides: this replica's own counters
//! (`local`), no limits and no headers (`open`), or 503 `limiter_unavailable`
//! (`closed`). In memory, and in the fallback, the buckets are taken first and given
//! back when a budget then refuses.
//!
//! The answer carries OpenAI's six `x-ratelimit-*` headers for the caller's tightest
//! rule of each dimension (least remaining); a dimension no rule limits keeps the
//! upstream's headers.

use std::cell::{Cell, OnceCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_store::UsageRecord;
use tollgate_wire::ratelimit::RateLimitInfo;

use crate::admit_redis::{self, Answer};
use crate::budgets::{self, BudgetCounters, BudgetReservation, Budgets, SpendPlan, SpendRefused};
use crate::budgets_redis::RedisBudgetCounters;
use crate::error::{GatewayError, RateRefusal};
use crate::keys::Principal;
use crate::limits::{
    BucketKey, BucketState, Counters, Demand, Dimension, Limits, RedisCounters, Refused, Rule,
};
use crate::offload;
use crate::preflight::{Endpoint, Preflight};

/// What admission hands on: the tokens and the spend to settle, and the headers to send.
#[derive(Debug, Default)]
pub struct Admission {
    pub reservation: Option<Reservation>,
    /// The worst case reserved from the spend budgets.
    pub budget: Option<BudgetReservation>,
    /// Empty when no rule governs the request.
    pub headers: RateLimitInfo,
}

/// Tokens taken from TPM buckets before the call, to settle once its usage is known.
#[derive(Debug)]
pub struct Reservation {
    limits: Arc<Limits>,
    buckets: Vec<(BucketKey, u64)>,
    reserved: u64,
    /// Taken in Redis (else in this replica's memory): settled where it was taken,
    /// whatever the link's state by then.
    in_redis: bool,
}

/// What a request asks of the counters, computed once before any is touched ([`plan`]):
/// the rate-limit rules governing it with its token estimate, and its spend budgets'
/// demands. A batch request that waits for room commits the same plan again.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    rules: Vec<Rule>,
    tokens: u64,
    /// For refusals: the model asked for.
    model: &'a str,
    spend: Option<SpendPlan>,
}

impl<'a> Plan<'a> {
    /// The rate limits' part of a plan, without budgets.
    pub fn rates(
        limits: &Limits,
        endpoint: Endpoint,
        principal: &Principal,
        preflight: &'a Preflight,
        default_output_tokens: u64,
    ) -> Self {
        Self::rates_with(limits, endpoint, principal, preflight, || {
            estimate_parts(endpoint, preflight, default_output_tokens)
        })
    }

    fn rates_with(
        limits: &Limits,
        endpoint: Endpoint,
        principal: &Principal,
        preflight: &'a Preflight,
        estimate: impl FnOnce() -> (u64, u64),
    ) -> Self {
        if !endpoint.has_body() {
            return Self::default();
        }
        let set = limits.rules();
        if set.is_empty() {
            return Self::default();
        }
        let model = preflight.model.as_deref();
        let rules = set.matching(&principal.project, &principal.env, &principal.key_id, model);
        Self::from_rules(rules, model, estimate)
    }

    /// The plan of `rules` for a call to `model`: the estimate (input, output) is
    /// made only when a rule counts tokens.
    fn from_rules(
        rules: Vec<Rule>,
        model: Option<&'a str>,
        estimate: impl FnOnce() -> (u64, u64),
    ) -> Self {
        let tokens = if rules.iter().any(|r| r.tpm.is_some()) {
            let (input, output) = estimate();
            input.saturating_add(output)
        } else {
            0
        };
        Self {
            rules,
            tokens,
            model: model.unwrap_or("this model"),
            spend: None,
        }
    }
}

/// The `x-ratelimit-*` headers for a call refused before admission (its body, its
/// model, a cap, a schema, the context window): the buckets of the rules governing its
/// caller and `model` as they are, nothing taken. Empty when no rule governs it.
pub async fn current_headers(
    limits: &Limits,
    endpoint: Endpoint,
    principal: &Principal,
    model: Option<&str>,
) -> RateLimitInfo {
    if !endpoint.has_body() {
        return RateLimitInfo::default();
    }
    let set = limits.rules();
    if set.is_empty() {
        return RateLimitInfo::default();
    }
    let rules = set.matching(&principal.project, &principal.env, &principal.key_id, model);
    let demands = demands(&rules, 0, 0.0);
    if demands.is_empty() {
        return RateLimitInfo::default();
    }
    let states = limits.counters.peek(&demands, Instant::now()).await;
    if states.len() != demands.len() {
        return RateLimitInfo::default();
    }
    headers(&demands, &states)
}

/// The plan of a call accepted at `at_ms`: its rate limits and spend budgets, with
/// the token estimate made once for both (and only when one needs it). Refuses a
/// budgeted call to a model without a price (`budgets`). A large body is counted off
/// the I/O thread (`offload`), once a first pass of the plan has shown that a rule
/// or budget needs its count. `alternatives`: the models a fallback may serve the call
/// with (the budgets price the dearest, `budgets::plan`).
#[allow(clippy::too_many_arguments)]
pub async fn plan<'a>(
    limits: &Limits,
    budgets: &Arc<Budgets>,
    endpoint: Endpoint,
    principal: &Principal,
    preflight: &'a Preflight,
    alternatives: &[&str],
    default_output_tokens: u64,
    at_ms: i64,
) -> Result<Plan<'a>, GatewayError> {
    if preflight.body.len() > offload::INLINE_BYTES {
        let needed = Cell::new(false);
        let probe = || {
            needed.set(true);
            (0, 0)
        };
        let first = plan_with(
            limits,
            budgets,
            endpoint,
            principal,
            preflight,
            alternatives,
            probe,
            at_ms,
        )?;
        if !needed.get() {
            return Ok(first);
        }
        let parts = estimate_off_thread(endpoint, preflight, default_output_tokens).await;
        return plan_with(
            limits,
            budgets,
            endpoint,
            principal,
            preflight,
            alternatives,
            || parts,
            at_ms,
        );
    }
    let counted = OnceCell::new();
    let estimate =
        || *counted.get_or_init(|| estimate_parts(endpoint, preflight, default_output_tokens));
    plan_with(
        limits,
        budgets,
        endpoint,
        principal,
        preflight,
        alternatives,
        estimate,
        at_ms,
    )
}

/// [`plan`] with `estimate`, which gives the request's input and output tokens and may
/// be called once by the rate limits and once by the budgets.
#[allow(clippy::too_many_arguments)]
fn plan_with<'a>(
    limits: &Limits,
    budgets: &Arc<Budgets>,
    endpoint: Endpoint,
    principal: &Principal,
    preflight: &'a Preflight,
    alternatives: &[&str],
    estimate: impl Fn() -> (u64, u64),
    at_ms: i64,
) -> Result<Plan<'a>, GatewayError> {
    let mut plan = Plan::rates_with(limits, endpoint, principal, preflight, &estimate);
    plan.spend = budgets::plan(
        budgets,
        endpoint,
        principal,
        preflight,
        alternatives,
        estimate,
        at_ms,
    )?;
    Ok(plan)
}

/// Admits the request against its rate limits only, or refuses it with 429 (see the
/// module docs). `reserve` is the fraction of every limit the take must leave
/// untouched: `lanes.batch_reserve` for a batch request, 0 for an interactive one.
pub async fn run(
    limits: &Arc<Limits>,
    endpoint: Endpoint,
    principal: &Principal,
    preflight: &Preflight,
    default_output_tokens: u64,
    reserve: f64,
) -> Result<Admission, GatewayError> {
    let plan = Plan::rates(
        limits,
        endpoint,
        principal,
        preflight,
        default_output_tokens,
    );
    commit(limits, &plan, reserve).await
}

/// Takes what `plan` asks from every counter — rate-limit buckets and spend budgets —
/// all or nothing, or refuses with what the caller needs to know: which limit, how
/// much was used and asked, and how long to wait. `reserve`: see [`run`].
pub async fn commit(
    limits: &Arc<Limits>,
    plan: &Plan<'_>,
    reserve: f64,
) -> Result<Admission, GatewayError> {
    commit_rules(limits, plan, &plan.rules, reserve).await
}

/// [`commit`] for a call that waited since it was planned (a batch request in its
/// lane): each of its rules counts with its limit as it is now, and a rule removed
/// meanwhile no longer counts. (A limit taken with the limit of the plan would move
/// the bucket back to it: lowered and then taken at the old one, capacity appeared
/// from nothing.) Rules added meanwhile do not apply: the call was planned before them.
pub async fn commit_current(
    limits: &Arc<Limits>,
    plan: &Plan<'_>,
    reserve: f64,
) -> Result<Admission, GatewayError> {
    let set = limits.rules();
    let rules: Vec<Rule> = plan
        .rules
        .iter()
        .filter_map(|r| set.current(&r.scope))
        .collect();
    commit_rules(limits, plan, &rules, reserve).await
}

/// Admits a fallback target's model (`preflight`, retargeted) against the rate limits
/// of that model that the requested model's admission did not take: rules scoped to
/// the target's model (every other rule governing the caller was taken already).
/// Refuses as [`commit`] does when one has no room; `Ok(None)` when no such rule
/// exists. The reservation, if any, settles with the call's real usage when the target
/// serves it, and gives its tokens back when the target fails too
/// ([`Reservation::release`]).
#[allow(clippy::too_many_arguments)]
pub async fn fallback(
    limits: &Arc<Limits>,
    endpoint: Endpoint,
    principal: &Principal,
    requested: Option<&str>,
    preflight: &Preflight,
    default_output_tokens: u64,
    reserve: f64,
) -> Result<Option<Reservation>, GatewayError> {
    if !endpoint.has_body() {
        return Ok(None);
    }
    let set = limits.rules();
    if set.is_empty() {
        return Ok(None);
    }
    let (project, env, key) = (&principal.project, &principal.env, &principal.key_id);
    let model = preflight.model.as_deref();
    let rules: Vec<Rule> = set
        .matching(project, env, key, model)
        .into_iter()
        .filter(|r| r.scope.model.is_some() && !r.scope.matches(project, env, key, requested))
        .collect();
    if rules.is_empty() {
        return Ok(None);
    }
    // A large body is counted off the I/O thread, as `plan` does.
    let parts = if !rules.iter().any(|r| r.tpm.is_some()) {
        (0, 0)
    } else if preflight.body.len() > offload::INLINE_BYTES {
        estimate_off_thread(endpoint, preflight, default_output_tokens).await
    } else {
        estimate_parts(endpoint, preflight, default_output_tokens)
    };
    let plan = Plan::from_rules(rules, model, || parts);
    Ok(commit(limits, &plan, reserve).await?.reservation)
}

/// [`estimate_parts`] with the input counted on the offload pool (a large body).
async fn estimate_off_thread(
    endpoint: Endpoint,
    preflight: &Preflight,
    default_output_tokens: u64,
) -> (u64, u64) {
    let model = preflight.model.clone().unwrap_or_default();
    let body = preflight.body.clone();
    let input = offload::run(body.len(), move || {
        tollgate_wire::tokens::estimate_input_json(&model, &body)
    })
    .await;
    estimate_from(endpoint, preflight, default_output_tokens, input)
}

impl Plan<'_> {
    /// The buckets its rules count in, as a refusal names them (scope, dimension).
    pub fn buckets(&self) -> impl Iterator<Item = (String, Dimension)> + '_ {
        self.rules.iter().flat_map(|r| {
            let requests = r.rpm.map(|_| (r.scope.to_string(), Dimension::Requests));
            let tokens = r.tpm.map(|_| (r.scope.to_string(), Dimension::Tokens));
            requests.into_iter().chain(tokens)
        })
    }
}

async fn commit_rules(
    limits: &Arc<Limits>,
    plan: &Plan<'_>,
    rules: &[Rule],
    reserve: f64,
) -> Result<Admission, GatewayError> {
    if rules.is_empty() && plan.spend.is_none() {
        return Ok(Admission::default());
    }
    let demands = demands(rules, plan.tokens, reserve);
    let refusal = |d: &Demand, used: u64, wait: Duration, states: &[BucketState]| RateRefusal {
        dimension: d.key.1,
        model: plan.model.to_owned(),
        scope: d.key.0.to_string(),
        limit: d.limit,
        used,
        requested: d.amount,
        retry_after: wait,
        headers: headers(&demands, states),
    };
    if let Some(d) = demands
        .iter()
        .find(|d| d.key.1 == Dimension::Tokens && d.amount > d.limit)
    {
        let states = limits.counters.peek(&demands, Instant::now()).await;
        return Err(GatewayError::RequestExceedsLimit(Box::new(refusal(
            d,
            0,
            Duration::ZERO,
            &states,
        ))));
    }
    match take(limits, &demands, plan.spend.as_ref()).await {
        Taken::Admitted {
            states,
            in_redis,
            budget,
        } => {
            let budget = plan
                .spend
                .as_ref()
                .zip(budget)
                .and_then(|(spend, (taken, in_redis))| spend.reservation(taken, in_redis));
            // Nothing counted (Redis unreachable, `redis.on_failure = "open"`).
            if states.is_empty() {
                return Ok(Admission {
                    budget,
                    ..Admission::default()
                });
            }
            let buckets: Vec<(BucketKey, u64)> = demands
                .iter()
                .filter(|d| d.key.1 == Dimension::Tokens)
                .map(|d| (d.key.clone(), d.limit))
                .collect();
            Ok(Admission {
                headers: headers(&demands, &states),
                reservation: (!buckets.is_empty()).then(|| Reservation {
                    limits: limits.clone(),
                    buckets,
                    reserved: plan.tokens,
                    in_redis,
                }),
                budget,
            })
        }
        Taken::Rate(Refused::Unavailable) => Err(GatewayError::LimiterUnavailable),
        Taken::Rate(Refused::Limit(denied)) => {
            let d = &demands[denied.index];
            let used = d
                .limit
                .saturating_sub(denied.states[denied.index].remaining);
            Err(GatewayError::RateLimited(Box::new(refusal(
                d,
                used,
                denied.wait,
                &denied.states,
            ))))
        }
        Taken::Budget { refused, states } => match &plan.spend {
            Some(spend) => Err(spend.refusal(refused, headers(&demands, &states))),
            None => Err(GatewayError::LimiterUnavailable),
        },
    }
}

/// How the counters answered an admission.
enum Taken {
    /// All taken: the buckets' states (empty when nothing was counted) and, with
    /// budgets, which of their demands were reserved and whether in Redis.
    Admitted {
        states: Vec<BucketState>,
        /// Whether the rate limits were taken in Redis.
        in_redis: bool,
        budget: Option<(Vec<bool>, bool)>,
    },
    /// A rate limit refused; nothing taken.
    Rate(Refused),
    /// A budget refused; nothing taken. `states`: the buckets as they are.
    Budget {
        refused: SpendRefused,
        states: Vec<BucketState>,
    },
}

/// Takes the rate-limit demands and reserves the spend, all or nothing: in one
/// script call when both are counted in Redis; else one after the other, giving the
/// rate-limit take back when a budget then refuses.
async fn take(limits: &Limits, demands: &[Demand], spend: Option<&SpendPlan>) -> Taken {
    if let (Some(spend), false, Counters::Redis(rates)) =
        (spend, demands.is_empty(), &limits.counters)
    {
        if let BudgetCounters::Redis(budgets) = &spend.budgets.counters {
            return take_in_one_call(limits, rates, budgets, demands, spend).await;
        }
    }
    let (states, in_redis) = if demands.is_empty() {
        (Vec::new(), false)
    } else {
        match limits.counters.take(demands, Instant::now()).await {
            Ok(taken) => taken,
            Err(refused) => return Taken::Rate(refused),
        }
    };
    let Some(spend) = spend else {
        return Taken::Admitted {
            states,
            in_redis,
            budget: None,
        };
    };
    match spend.reserve().await {
        Ok(budget) => Taken::Admitted {
            states,
            in_redis,
            budget: Some(budget),
        },
        Err(refused) => Taken::Budget {
            refused,
            states: give_back(limits, demands, states, in_redis),
        },
    }
}

/// Both parts in one round trip to Redis ([`admit_redis`]); while Redis is
/// unreachable (or the call failed), both fallbacks (`redis.on_failure`), one after
/// the other.
async fn take_in_one_call(
    limits: &Limits,
    rates: &RedisCounters,
    budgets: &RedisBudgetCounters,
    demands: &[Demand],
    spend: &SpendPlan,
) -> Taken {
    let link = rates.link();
    let part = budgets.plan(&spend.demands, spend.at_ms);
    if link.is_up() {
        let started = Instant::now();
        let answer = admit_redis::run(link, demands, true, &part.takes).await;
        if let Some(answer) = answer {
            link.observe_admission(started.elapsed());
            return match answer {
                Answer::Admitted(states) => Taken::Admitted {
                    states,
                    in_redis: true,
                    budget: Some((part.taken(), true)),
                },
                Answer::RateRefused(denied) => Taken::Rate(Refused::Limit(denied)),
                Answer::BudgetRefused {
                    index,
                    spent,
                    reserved,
                    states,
                } => Taken::Budget {
                    refused: SpendRefused::Denied(part.denied(
                        &spend.demands,
                        index,
                        spent,
                        reserved,
                        spend.at_ms,
                    )),
                    states,
                },
            };
        }
    }
    let states = match rates.fallback(demands, Instant::now()) {
        Ok(states) => states,
        Err(refused) => return Taken::Rate(refused),
    };
    match budgets.fallback(&spend.demands, spend.at_ms) {
        Ok(budget) => Taken::Admitted {
            states,
            in_redis: false,
            budget: Some(budget),
        },
        Err(refused) => Taken::Budget {
            refused,
            states: give_back(limits, demands, states, false),
        },
    }
}

/// Gives back what a take took (a budget refused the call after it) and answers the
/// buckets' states as they are again.
fn give_back(
    limits: &Limits,
    demands: &[Demand],
    states: Vec<BucketState>,
    in_redis: bool,
) -> Vec<BucketState> {
    let now = Instant::now();
    demands
        .iter()
        .zip(states)
        .map(|(d, s)| {
            limits.counters.adjust(
                &d.key,
                d.limit,
                i64::try_from(d.amount).unwrap_or(i64::MAX),
                now,
                in_redis,
            );
            // The refill time of the amount: a minute per limit.
            let refill_us = u128::from(d.amount) * 60_000_000 / u128::from(d.limit.max(1));
            BucketState {
                remaining: s.remaining.saturating_add(d.amount).min(d.limit),
                reset: s.reset.saturating_sub(Duration::from_micros(
                    u64::try_from(refill_us).unwrap_or(u64::MAX),
                )),
                ..s
            }
        })
        .collect()
}

impl Reservation {
    /// Settles against a finished call's record (see the module docs for the rule);
    /// `sent`: whether the call went upstream at all.
    pub fn settle(self, rec: &UsageRecord, sent: bool) {
        self.settle_as(rec, sent, false);
    }

    /// Settles like [`Self::settle`] a call a fallback target served with another
    /// model: the buckets of rules scoped to a model (the requested one's) get every
    /// reserved token back, since that model served none of the usage; the others
    /// settle against it as usual.
    pub fn settle_served_by_another_model(self, rec: &UsageRecord, sent: bool) {
        self.settle_as(rec, sent, true);
    }

    fn settle_as(self, rec: &UsageRecord, sent: bool, another_model: bool) {
        let used = if rec.total_tokens > 0 {
            Some(rec.total_tokens)
        } else if rec.input_tokens + rec.output_tokens > 0 {
            Some(rec.input_tokens + rec.output_tokens)
        } else if !sent || rec.failed_without_cost() {
            Some(0)
        } else {
            None
        };
        let unused = i64::try_from(self.reserved).unwrap_or(i64::MAX);
        let Some(used) = used else {
            // Usage unknown: the reservation stands as the estimate, except on the
            // requested model's own rules when another model served.
            if another_model {
                self.give_back_each(|key| if key.0.model.is_some() { unused } else { 0 });
            }
            return;
        };
        let delta = i128::from(self.reserved) - i128::from(used);
        let delta = i64::try_from(delta).unwrap_or(if delta > 0 { i64::MAX } else { i64::MIN });
        self.give_back_each(|key| {
            if another_model && key.0.model.is_some() {
                unused
            } else {
                delta
            }
        });
    }

    /// Gives `delta` tokens back to every bucket (takes them when negative).
    fn give_back(&self, delta: i64) {
        self.give_back_each(|_| delta);
    }

    /// Gives each bucket back the tokens `delta_of` says (takes them when negative).
    fn give_back_each(&self, delta_of: impl Fn(&BucketKey) -> i64) {
        let now = Instant::now();
        for (key, limit) in &self.buckets {
            let delta = delta_of(key);
            if delta != 0 {
                self.limits
                    .counters
                    .adjust(key, *limit, delta, now, self.in_redis);
            }
        }
    }

    /// The tokens reserved.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Gives every reserved token back: the call this reservation was for was not
    /// served under it (a fallback target that failed too). The request stays counted.
    pub fn release(self) {
        self.give_back(i64::try_from(self.reserved).unwrap_or(i64::MAX));
    }
}

/// One request from each RPM bucket, the estimate from each TPM bucket, each leaving
/// `reserve` of its limit (rounded up; never so much that the request could not fit
/// a full bucket).
fn demands(rules: &[Rule], tokens: u64, reserve: f64) -> Vec<Demand> {
    let keep = |limit: u64, amount: u64| {
        if reserve <= 0.0 {
            return 0;
        }
        // Limits are far below 2^53: the float is exact enough.
        let keep = (limit as f64 * reserve).ceil() as u64;
        keep.min(limit.saturating_sub(amount))
    };
    let mut out = Vec::with_capacity(rules.len() * 2);
    for r in rules {
        if let Some(rpm) = r.rpm {
            out.push(Demand {
                key: (r.scope.clone(), Dimension::Requests),
                limit: rpm,
                amount: 1,
                keep: keep(rpm, 1),
            });
        }
        if let Some(tpm) = r.tpm {
            out.push(Demand {
                key: (r.scope.clone(), Dimension::Tokens),
                limit: tpm,
                amount: tokens,
                keep: keep(tpm, tokens),
            });
        }
    }
    out
}

/// The six headers, each dimension from its bucket with the least remaining.
fn headers(demands: &[Demand], states: &[BucketState]) -> RateLimitInfo {
    let tightest = |dim: Dimension| {
        demands
            .iter()
            .zip(states)
            .filter(|(d, _)| d.key.1 == dim)
            .map(|(_, s)| *s)
            .min_by_key(|s| (s.remaining, std::cmp::Reverse(s.reset)))
    };
    let mut info = RateLimitInfo::default();
    if let Some(s) = tightest(Dimension::Requests) {
        info.limit_requests = Some(s.limit);
        info.remaining_requests = Some(s.remaining);
        info.reset_requests = Some(round_up_ms(s.reset));
    }
    if let Some(s) = tightest(Dimension::Tokens) {
        info.limit_tokens = Some(s.limit);
        info.remaining_tokens = Some(s.remaining);
        info.reset_tokens = Some(round_up_ms(s.reset));
    }
    info
}

/// Reset values are sent to the millisecond (`1.234s`, `12ms`), never shorter than
/// the truth.
pub fn round_up_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
}

/// The tokens a request may cost: its input and the output it allows.
#[cfg(test)]
fn estimate(endpoint: Endpoint, preflight: &Preflight, default_output_tokens: u64) -> u64 {
    let (input, output) = estimate_parts(endpoint, preflight, default_output_tokens);
    input.saturating_add(output)
}

/// The input tokens of a request and the output tokens it allows (also what spend
/// budgets price). The input is read straight from the body's bytes (no JSON tree, no
/// copies of its text); counts of text seen before — a system prompt, a tool list —
/// are remembered per thread. Context carried in from an earlier turn
/// (`Preflight::carried_tokens`) is input too. The output is what preflight found
/// (after the caps).
pub fn estimate_parts(
    endpoint: Endpoint,
    preflight: &Preflight,
    default_output_tokens: u64,
) -> (u64, u64) {
    let model = preflight.model.as_deref().unwrap_or_default();
    let input = tollgate_wire::tokens::estimate_input_json(model, &preflight.body);
    estimate_from(endpoint, preflight, default_output_tokens, input)
}

/// [`estimate_parts`] from the input's count (`None`: the body is not a JSON object).
fn estimate_from(
    endpoint: Endpoint,
    preflight: &Preflight,
    default_output_tokens: u64,
    input: Option<usize>,
) -> (u64, u64) {
    let Some(input) = input else {
        return (preflight.carried_tokens, default_output_tokens);
    };
    let output = match endpoint {
        Endpoint::Responses | Endpoint::ChatCompletions => {
            let each = preflight
                .max_output
                .map_or(default_output_tokens, |(max, _)| max);
            each.saturating_mul(preflight.n.unwrap_or(1).max(1))
        }
        _ => 0,
    };
    (
        (input as u64).saturating_add(preflight.carried_tokens),
        output,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tollgate_store::{LimitScope, RateLimitRule, Role};

    fn principal() -> Principal {
        Principal {
            key_id: "key_1".into(),
            project: "shop".into(),
            env: "prod".into(),
            role: Role::Member,
            upstream_ref: None,
            lane: tollgate_store::Lane::Interactive,
        }
    }

    /// Budgets on the built-in catalog, with a daily budget of `daily_usd_nanos` on
    /// project `shop` when one is given.
    fn daily_budget(daily_usd_nanos: Option<u64>, now: i64) -> Arc<Budgets> {
        let budgets = Arc::new(Budgets::new(Arc::new(crate::catalog::LiveCatalog::new(
            crate::catalog::Catalog::builtin(),
        ))));
        if daily_usd_nanos.is_some() {
            budgets.replace(
                vec![tollgate_store::Budget {
                    scope: tollgate_store::BudgetScope {
                        project: "shop".into(),
                        env: None,
                        key_id: None,
                    },
                    daily_usd_nanos,
                    monthly_usd_nanos: None,
                    soft_percent: 80,
                    created_at_ms: 0,
                    updated_at_ms: 0,
                }],
                &[],
                now - 1_000,
            );
        }
        budgets
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

    fn limits(rules: &[(Option<&str>, Option<u64>, Option<u64>)]) -> Arc<Limits> {
        let l = Arc::new(Limits::default());
        l.replace(
            rules
                .iter()
                .map(|(model, rpm, tpm)| RateLimitRule {
                    scope: LimitScope {
                        project: "shop".into(),
                        env: None,
                        key_id: None,
                        model: model.map(Into::into),
                    },
                    rpm: *rpm,
                    tpm: *tpm,
                    created_at_ms: 0,
                    updated_at_ms: 0,
                })
                .collect(),
            vec![],
        );
        l
    }

    const BODY: &str = r#"{"model":"gpt-4o","input":"hello world","max_output_tokens":10}"#;

    #[tokio::test]
    async fn no_rule_admits_without_counting_or_headers() {
        let l = limits(&[]);
        let a = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        assert!(a.reservation.is_none());
        assert!(a.headers.is_empty());
    }

    #[test]
    fn estimates_input_plus_allowed_output_times_n() {
        let p = pre(BODY);
        let input =
            tollgate_wire::tokens::estimate_input("gpt-4o", &serde_json::from_str(BODY).unwrap())
                as u64;
        assert_eq!(estimate(Endpoint::Responses, &p, 4096), input + 10);
        // Context an earlier turn carries in is input too.
        let continued = Preflight {
            carried_tokens: 1_234,
            ..p.clone()
        };
        let (carried_input, output) = estimate_parts(Endpoint::Responses, &continued, 4096);
        assert_eq!((carried_input, output), (input + 1_234, 10));
        let chat = pre(r#"{"model":"gpt-4o","messages":[],"max_tokens":7,"n":3}"#);
        assert!(estimate(Endpoint::ChatCompletions, &chat, 4096) >= 21);
        let none = pre(r#"{"model":"gpt-4o","messages":[]}"#);
        assert!(estimate(Endpoint::ChatCompletions, &none, 100) >= 100);
        let emb = pre(r#"{"model":"text-embedding-3-small","input":"hello world"}"#);
        assert!(estimate(Endpoint::Embeddings, &emb, 4096) < 100);
    }

    #[tokio::test]
    async fn reserve_then_settle_to_the_real_usage_and_refund_failures() {
        let l = limits(&[(None, Some(100), Some(1_000))]);
        let a = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        let reserved = a.reservation.as_ref().unwrap().reserved();
        assert_eq!(a.headers.remaining_tokens, Some(1_000 - reserved));
        assert_eq!(a.headers.remaining_requests, Some(99));
        a.reservation.unwrap().settle(
            &UsageRecord {
                status: 200,
                total_tokens: 5,
                ..UsageRecord::default()
            },
            true,
        );
        let b = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        assert_eq!(b.headers.remaining_tokens, Some(1_000 - 5 - reserved));
        // A failed call without usage gives its tokens back.
        b.reservation.unwrap().settle(
            &UsageRecord {
                status: 502,
                ..UsageRecord::default()
            },
            true,
        );
        let c = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        assert_eq!(c.headers.remaining_tokens, Some(1_000 - 5 - reserved));
        // A disconnect with nothing observed keeps its reservation.
        c.reservation.unwrap().settle(
            &UsageRecord {
                status: 499,
                client_disconnected: true,
                ..UsageRecord::default()
            },
            true,
        );
        let d = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        assert_eq!(d.headers.remaining_tokens, Some(1_000 - 5 - 2 * reserved));
        // A stream the upstream broke off, without usage, gives its tokens back.
        d.reservation.unwrap().settle(
            &UsageRecord {
                status: 200,
                error_code: Some("upstream_stream_failed".into()),
                ..UsageRecord::default()
            },
            true,
        );
        let e = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        assert_eq!(e.headers.remaining_tokens, Some(1_000 - 5 - 2 * reserved));
        // So does a call whose caller left before it was ever sent upstream.
        e.reservation.unwrap().settle(
            &UsageRecord {
                status: 499,
                client_disconnected: true,
                ..UsageRecord::default()
            },
            false,
        );
        let f = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        assert_eq!(f.headers.remaining_tokens, Some(1_000 - 5 - 2 * reserved));
        // Requests are never given back.
        assert_eq!(f.headers.remaining_requests, Some(94));
    }

    #[tokio::test]
    async fn a_fallback_model_is_admitted_against_its_own_rules_only() {
        async fn now(l: &Arc<Limits>, model: &str) -> Admission {
            let mut p = pre(BODY);
            p.model = Some(model.into());
            run(l, Endpoint::Responses, &principal(), &p, 4096, 0.0)
                .await
                .unwrap()
        }
        // A rule for the whole project, and one for the fallback's model.
        let l = limits(&[
            (None, Some(100), None),
            (Some("gpt-4o-mini"), Some(10), Some(1_000)),
        ]);
        let who = principal();
        let mut fell = pre(BODY);
        fell.model = Some("gpt-4o-mini".into());
        let take = |reserve| {
            let requested = Some("gpt-4o");
            fallback(
                &l,
                Endpoint::Responses,
                &who,
                requested,
                &fell,
                4096,
                reserve,
            )
        };
        let r = take(0.0)
            .await
            .unwrap()
            .expect("gpt-4o-mini's rule governs it");
        let reserved = r.reserved();
        // gpt-4o-mini's own buckets were taken, the project's were not (the requested
        // model's admission took those).
        let a = now(&l, "gpt-4o-mini").await;
        assert_eq!(a.headers.remaining_requests, Some(8));
        assert_eq!(a.headers.remaining_tokens, Some(1_000 - 2 * reserved));
        // Released (the fallback failed too): its tokens come back, its request not.
        r.release();
        a.reservation.unwrap().release();
        let b = now(&l, "gpt-4o-mini").await;
        assert_eq!(b.headers.remaining_requests, Some(7));
        assert_eq!(b.headers.remaining_tokens, Some(1_000 - reserved));
        // A batch call leaves the reserve: with half of 10 kept, 7 left admits 2 more.
        b.reservation.unwrap().release();
        assert!(take(0.5).await.is_ok());
        assert!(take(0.5).await.is_ok());
        assert!(matches!(take(0.5).await, Err(GatewayError::RateLimited(_))));
        // No rule of the target's own: nothing to take.
        let mut other = pre(BODY);
        other.model = Some("gpt-4.1".into());
        let none = fallback(
            &l,
            Endpoint::Responses,
            &who,
            Some("gpt-4o"),
            &other,
            4096,
            0.0,
        );
        assert!(none.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refusals_name_the_limit_and_the_time_to_wait() {
        let l = limits(&[(Some("gpt-4o"), Some(1), None), (None, Some(100), None)]);
        run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        let e = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap_err();
        let GatewayError::RateLimited(r) = &e else {
            panic!("{e:?}");
        };
        assert_eq!(r.dimension, Dimension::Requests);
        assert_eq!((r.limit, r.used, r.requested), (1, 1, 1));
        assert!(
            r.retry_after > Duration::from_secs(59) && r.retry_after <= Duration::from_secs(60)
        );
        assert_eq!(r.headers.remaining_requests, Some(0));
        assert_eq!(r.headers.limit_requests, Some(1));
        let m = e.message();
        assert!(m.contains("requests per min (RPM)"), "{m}");
        assert!(m.contains("model gpt-4o"), "{m}");
        assert!(m.contains("Limit 1, Used 1, Requested 1"), "{m}");
        // Another model is governed by the project rule only.
        let other = pre(r#"{"model":"gpt-4o-mini","input":"x"}"#);
        assert!(
            run(&l, Endpoint::Responses, &principal(), &other, 4096, 0.0)
                .await
                .is_ok()
        );
        // Listing models is not a model call.
        assert!(
            run(&l, Endpoint::Models, &principal(), &pre(BODY), 4096, 0.0)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_request_larger_than_a_tpm_limit_is_refused_for_good() {
        let l = limits(&[(None, None, Some(50))]);
        let big = pre(r#"{"model":"gpt-4o","input":"hello","max_output_tokens":100}"#);
        let e = run(&l, Endpoint::Responses, &principal(), &big, 4096, 0.0)
            .await
            .unwrap_err();
        assert!(matches!(&e, GatewayError::RequestExceedsLimit(r) if r.limit == 50));
        assert!(!e.retryable());
        // Nothing was taken.
        let small = pre(r#"{"model":"gpt-4o","input":"hello","max_output_tokens":1}"#);
        let a = run(&l, Endpoint::Responses, &principal(), &small, 4096, 0.0)
            .await
            .unwrap();
        assert_eq!(
            a.headers.remaining_tokens,
            Some(50 - a.reservation.unwrap().reserved())
        );
    }

    #[tokio::test]
    async fn a_budget_refusal_takes_no_request_in_memory() {
        let l = limits(&[(None, Some(2), None)]);
        let now = crate::accept::now_ms();
        // A budget of one nano-USD: no call fits.
        let budgets = daily_budget(Some(1), now);
        let p = pre(BODY);
        let plan = plan(
            &l,
            &budgets,
            Endpoint::Responses,
            &principal(),
            &p,
            &[],
            4096,
            now,
        )
        .await
        .unwrap();
        let e = commit(&l, &plan, 0.0).await.unwrap_err();
        let GatewayError::BudgetExceeded(r) = &e else {
            panic!("{e:?}");
        };
        assert_eq!(r.headers.remaining_requests, Some(2), "given back");
        let a = run(&l, Endpoint::Responses, &principal(), &p, 4096, 0.0)
            .await
            .unwrap();
        assert_eq!(a.headers.remaining_requests, Some(1));
    }

    /// A body too large to count on the I/O thread is counted elsewhere, to the same
    /// estimate, for a TPM rule and for a budget alike — and not at all when neither
    /// governs the call.
    #[tokio::test]
    async fn a_large_body_is_estimated_as_a_small_one_is() {
        let text = "hello world ".repeat(2_000);
        let p = pre(&format!(
            r#"{{"model":"gpt-4o","input":"{text}","max_output_tokens":7}}"#
        ));
        assert!(p.body.len() > offload::INLINE_BYTES);
        let inline = estimate(Endpoint::Responses, &p, 4096);
        assert!(inline > 4_000, "{inline}");
        let now = crate::accept::now_ms();
        let no_budgets = daily_budget(None, now);
        let plan_of = |l: &Arc<Limits>, b: &Arc<Budgets>| {
            let (l, b, p) = (l.clone(), b.clone(), &p);
            async move {
                plan(&l, &b, Endpoint::Responses, &principal(), p, &[], 4096, now)
                    .await
                    .unwrap()
            }
        };

        let tpm = plan_of(&limits(&[(None, Some(100), Some(1_000_000))]), &no_budgets).await;
        assert_eq!(tpm.tokens, inline);
        let rpm = plan_of(&limits(&[(None, Some(100), None)]), &no_budgets).await;
        assert_eq!(
            (rpm.rules.len(), rpm.tokens),
            (1, 0),
            "nothing needed a count"
        );

        let budgets = daily_budget(Some(1_000_000_000_000), now);
        let spend = plan_of(&limits(&[]), &budgets).await.spend.unwrap();
        let (input, output) = estimate_parts(Endpoint::Responses, &p, 4096);
        let priced = crate::catalog::Catalog::builtin()
            .get("gpt-4o")
            .unwrap()
            .cost(crate::catalog::BilledTokens {
                input,
                cached: 0,
                output,
            });
        assert_eq!(spend.worst, priced.usd_nanos());
    }
}
