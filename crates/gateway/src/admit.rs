//! Stage 4, admit: requests-per-minute and tokens-per-minute limits (see `limits` for
//! the rules and buckets). Spend budgets and priority lanes come later, in this stage.
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
//! With the counters in Redis (`[redis] url`) admission is one round trip to Redis and
//! therefore async; while Redis is unreachable `redis.on_failure` decides: this
//! replica's own counters (`local`), no limits and no headers (`open`), or 503
//! `limiter_unavailable` (`closed`).
//!
//! The answer carries OpenAI's six `x-ratelimit-*` headers for the caller's tightest
//! rule of each dimension (least remaining); a dimension no rule limits keeps the
//! upstream's headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tollgate_store::UsageRecord;
use tollgate_wire::ratelimit::RateLimitInfo;

use crate::error::{GatewayError, RateRefusal};
use crate::keys::Principal;
use crate::limits::{BucketKey, BucketState, Demand, Dimension, Limits, Refused, Rule};
use crate::preflight::{Endpoint, Preflight};

/// What admission hands on: the tokens to settle, and the headers to send.
#[derive(Debug, Default)]
pub struct Admission {
    pub reservation: Option<Reservation>,
    /// Empty when no rule governs the request.
    pub headers: RateLimitInfo,
}

/// Tokens taken from TPM buckets before the call, to settle once its usage is known.
#[derive(Debug)]
pub struct Reservation {
    limits: Arc<Limits>,
    buckets: Vec<(BucketKey, u64)>,
    reserved: u64,
}

/// Admits the request or refuses it with 429 (see the module docs). `reserve` is the
/// fraction of every limit the take must leave untouched: `lanes.batch_reserve` for a
/// batch request, 0 for an interactive one.
pub async fn run(
    limits: &Arc<Limits>,
    endpoint: Endpoint,
    principal: &Principal,
    preflight: &Preflight,
    default_output_tokens: u64,
    reserve: f64,
) -> Result<Admission, GatewayError> {
    if !endpoint.has_body() {
        return Ok(Admission::default());
    }
    let set = limits.rules();
    if set.is_empty() {
        return Ok(Admission::default());
    }
    let model = preflight.model.as_deref();
    let rules = set.matching(&principal.project, &principal.env, &principal.key_id, model);
    if rules.is_empty() {
        return Ok(Admission::default());
    }
    let tokens = if rules.iter().any(|r| r.tpm.is_some()) {
        estimate(endpoint, preflight, default_output_tokens)
    } else {
        0
    };
    let model = model.unwrap_or("this model");
    take(limits, &demands(&rules, tokens, reserve), tokens, model).await
}

/// Takes every demand from the counters, or refuses with what the caller needs to
/// know: which limit, how much was used and asked, and how long to wait.
async fn take(
    limits: &Arc<Limits>,
    demands: &[Demand],
    tokens: u64,
    model: &str,
) -> Result<Admission, GatewayError> {
    let refusal = |d: &Demand, used: u64, wait: Duration, states: &[BucketState]| RateRefusal {
        dimension: d.key.1,
        model: model.to_owned(),
        scope: d.key.0.to_string(),
        limit: d.limit,
        used,
        requested: d.amount,
        retry_after: wait,
        headers: headers(demands, states),
    };
    if let Some(d) = demands
        .iter()
        .find(|d| d.key.1 == Dimension::Tokens && d.amount > d.limit)
    {
        let states = limits.counters.peek(demands, Instant::now()).await;
        return Err(GatewayError::RequestExceedsLimit(Box::new(refusal(
            d,
            0,
            Duration::ZERO,
            &states,
        ))));
    }
    match limits.counters.take(demands, Instant::now()).await {
        // Nothing counted (Redis unreachable, `redis.on_failure = "open"`).
        Ok(states) if states.is_empty() => Ok(Admission::default()),
        Ok(states) => {
            let buckets: Vec<(BucketKey, u64)> = demands
                .iter()
                .filter(|d| d.key.1 == Dimension::Tokens)
                .map(|d| (d.key.clone(), d.limit))
                .collect();
            Ok(Admission {
                headers: headers(demands, &states),
                reservation: (!buckets.is_empty()).then(|| Reservation {
                    limits: limits.clone(),
                    buckets,
                    reserved: tokens,
                }),
            })
        }
        Err(Refused::Unavailable) => Err(GatewayError::LimiterUnavailable),
        Err(Refused::Limit(denied)) => {
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
    }
}

impl Reservation {
    /// Settles against a finished call's record (see the module docs for the rule).
    pub fn settle(self, rec: &UsageRecord) {
        let used = if rec.total_tokens > 0 {
            Some(rec.total_tokens)
        } else if rec.input_tokens + rec.output_tokens > 0 {
            Some(rec.input_tokens + rec.output_tokens)
        } else if rec.served_from_cache() || (rec.status >= 400 && rec.status != 499) {
            Some(0)
        } else {
            None
        };
        let Some(used) = used else {
            return;
        };
        let delta = i128::from(self.reserved) - i128::from(used);
        let delta = i64::try_from(delta).unwrap_or(if delta > 0 { i64::MAX } else { i64::MIN });
        if delta == 0 {
            return;
        }
        let now = Instant::now();
        for (key, limit) in &self.buckets {
            self.limits.counters.adjust(key, *limit, delta, now);
        }
    }

    /// The tokens reserved.
    pub fn reserved(&self) -> u64 {
        self.reserved
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

#[derive(Default, Deserialize)]
struct OutputPeek {
    max_output_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_tokens: Option<u64>,
    n: Option<u64>,
}

/// The tokens a request may cost: its input and the output it allows.
fn estimate(endpoint: Endpoint, preflight: &Preflight, default_output_tokens: u64) -> u64 {
    let (input, output) = estimate_parts(endpoint, preflight, default_output_tokens);
    input.saturating_add(output)
}

/// The input tokens of a request and the output tokens it allows (also what spend
/// budgets price). Read straight from the body's bytes (no JSON tree, no copies of
/// its text); counts of text seen before — a system prompt, a tool list — are
/// remembered per thread.
pub fn estimate_parts(
    endpoint: Endpoint,
    preflight: &Preflight,
    default_output_tokens: u64,
) -> (u64, u64) {
    let model = preflight.model.as_deref().unwrap_or_default();
    let Some(input) = tollgate_wire::tokens::estimate_input_json(model, &preflight.body) else {
        return (0, default_output_tokens);
    };
    let output = match endpoint {
        Endpoint::Responses | Endpoint::ChatCompletions => {
            let p = serde_json::from_slice::<OutputPeek>(&preflight.body).unwrap_or_default();
            let each = p
                .max_output_tokens
                .or(p.max_completion_tokens)
                .or(p.max_tokens)
                .unwrap_or(default_output_tokens);
            each.saturating_mul(p.n.unwrap_or(1).max(1))
        }
        _ => 0,
    };
    (input as u64, output)
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

    fn pre(body: &str) -> Preflight {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        Preflight {
            model: v["model"].as_str().map(str::to_owned),
            stream: false,
            strip_stream_usage: false,
            body: Bytes::from(body.to_owned()),
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
        a.reservation.unwrap().settle(&UsageRecord {
            status: 200,
            total_tokens: 5,
            ..UsageRecord::default()
        });
        let b = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        assert_eq!(b.headers.remaining_tokens, Some(1_000 - 5 - reserved));
        // A failed call without usage gives its tokens back.
        b.reservation.unwrap().settle(&UsageRecord {
            status: 502,
            ..UsageRecord::default()
        });
        let c = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        assert_eq!(c.headers.remaining_tokens, Some(1_000 - 5 - reserved));
        // A disconnect with nothing observed keeps its reservation.
        c.reservation.unwrap().settle(&UsageRecord {
            status: 200,
            ..UsageRecord::default()
        });
        let d = run(&l, Endpoint::Responses, &principal(), &pre(BODY), 4096, 0.0)
            .await
            .unwrap();
        assert_eq!(d.headers.remaining_tokens, Some(1_000 - 5 - 2 * reserved));
        // Requests are never given back.
        assert_eq!(d.headers.remaining_requests, Some(96));
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
}
