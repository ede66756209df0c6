//! Stage 7, dispatch, along a fallback chain: which targets a call may go to, in
//! order, and what the caller gets when they all fail.
//!
//! A call's chain starts with its own target — the primary upstream with the model as
//! resolved — followed by the `[fallbacks]` entry of the model **as the caller named
//! it** (an alias), or else of the model it resolved to. Each target is an upstream
//! (by name) and a model; for a target with another model only the value of the
//! body's `model` is replaced, every other byte stays. Targets whose model the caller's
//! access lists refuse are left out.
//!
//! The next target is tried when one answers, after the client's own retries, with
//! 429 or any 5xx, or does not answer in time or at all. Other 4xx answers are the
//! request's fault and are relayed at once. All of this happens before the first
//! byte reaches the caller (`dispatch::send` returns once the answer's head arrived),
//! so a stream is never switched midway.
//!
//! Each upstream has a circuit breaker (`breaker`); a call with an alternative skips a
//! target whose circuit is open. When every target failed:
//! 1. a stored answer from the response cache, for `cache.fallback_projects`
//!    ([`cached_answer`]);
//! 2. the project's offline answer (`offline`), for Responses and Chat;
//! 3. the last target's own answer, as it was (status and body), or when no target
//!    was called at all (every circuit open), 503 `upstream_unavailable`.
//!
//! Every answer that went to an upstream says which target it came from in
//! `x-tollgate-served-by: <upstream>/<model>`, and the usage record keeps it
//! (`served_by`, `fallbacks`); cost and budgets settle from the model that served.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::response::Response;
use http::request::Parts;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;
use tollgate_client::Client;

use crate::breaker::{Admit, Breaker, Breakers};
use crate::config::Config;
use crate::dispatch::{self, Reply};
use crate::error::GatewayError;
use crate::fallback_config::{OfflineConfig, TargetConfig, OFFLINE};
use crate::keys::Principal;
use crate::preflight::{model_header, Endpoint, Preflight, MODEL_HEADER};
use crate::record::RecordGuard;
use crate::server::Gateway;
use crate::throttle::Flight;
use crate::upstream::Upstream;

pub(crate) const SERVED_BY: HeaderName = HeaderName::from_static("x-tollgate-served-by");
/// `served_by` of an answer the response cache gave for a failed call.
pub const CACHE: &str = "cache";

/// The named upstreams, chains, breakers and offline answers of a running gateway.
#[derive(Debug)]
pub struct Fallbacks {
    primary: String,
    /// Clients of the `[[upstreams]]`, by name (the primary's are in `Upstream`).
    clients: HashMap<String, Client>,
    chains: BTreeMap<String, Vec<TargetConfig>>,
    pub breakers: Breakers,
    offline: OfflineConfig,
    /// Answers served by a target other than the call's first.
    fell_back: AtomicU64,
    /// Offline answers given.
    offline_answers: AtomicU64,
}

/// How stage 7 ended.
pub enum Served {
    /// An upstream's answer to relay, with the preflight of the target it came from.
    Upstream(Preflight, Box<Reply>),
    /// An answer made here (offline).
    Answered(Response),
}

/// One target of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    upstream: String,
    model: Option<String>,
}

impl Target {
    fn label(&self) -> String {
        label(&self.upstream, self.model.as_deref())
    }
}

/// How a usage record names a target: `<upstream>/<model>`, or the upstream alone.
fn label(upstream: &str, model: Option<&str>) -> String {
    match model {
        Some(m) => format!("{upstream}/{m}"),
        None => upstream.to_owned(),
    }
}

impl Fallbacks {
    /// Resolves the `[[upstreams]]`' keys (blocking: files, commands; start-up only)
    /// and builds their clients.
    pub fn start(config: &Config) -> Result<Self, crate::StartError> {
        let r = &config.resilience;
        let mut clients = HashMap::new();
        for u in &r.upstreams {
            let key = u.config.api_key.resolve().map_err(|e| {
                // The error names the reference, never the value.
                crate::StartError::Upstream(format!(
                    "cannot read the key of upstream {:?} from {}: {e}",
                    u.name, u.config.api_key
                ))
            })?;
            let up = Upstream::new(&u.config, key)?;
            clients.insert(u.name.clone(), up.client().clone());
        }
        let mut names = vec![config.upstream.name.clone()];
        names.extend(r.upstreams.iter().map(|u| u.name.clone()));
        Ok(Self {
            primary: config.upstream.name.clone(),
            clients,
            chains: r.fallbacks.clone(),
            breakers: Breakers::new(&names, r.breaker),
            offline: r.offline.clone(),
            fell_back: AtomicU64::new(0),
            offline_answers: AtomicU64::new(0),
        })
    }

    /// Answers served by a fallback target.
    pub fn fell_back_total(&self) -> u64 {
        self.fell_back.load(Ordering::Relaxed)
    }

    /// Offline answers given.
    pub fn offline_total(&self) -> u64 {
        self.offline_answers.load(Ordering::Relaxed)
    }

    /// The configured chain of this call: the caller's own name first, then the
    /// resolved model.
    fn chain(&self, preflight: &Preflight) -> Option<&[TargetConfig]> {
        let by = |name: Option<&str>| name.and_then(|n| self.chains.get(n));
        by(preflight.alias.as_deref())
            .or_else(|| by(preflight.model.as_deref()))
            .map(Vec::as_slice)
    }

    /// The models other than its own that a call may be served by: its chain's
    /// targets that name a model the caller's access lists permit (a target without
    /// one serves the call's own model). A budget prices a call at the dearest of
    /// them (`budgets::plan`), so a fallback cannot spend past the budget.
    pub fn alternatives(
        &self,
        endpoint: Endpoint,
        principal: &Principal,
        preflight: &Preflight,
        limits: &crate::limits::Limits,
    ) -> Vec<&str> {
        let Some(chain) = endpoint.has_body().then(|| self.chain(preflight)).flatten() else {
            return Vec::new();
        };
        let rules = limits.models();
        (chain.iter().filter_map(|t| t.model.as_deref()))
            .filter(|m| rules.permits(&principal.project, &principal.env, m))
            .collect()
    }

    /// The call's targets in order, the first being its own.
    fn targets(&self, preflight: &Preflight, chain: &[TargetConfig]) -> Vec<Target> {
        let mut out = vec![Target {
            upstream: self.primary.clone(),
            model: preflight.model.clone(),
        }];
        for t in chain {
            let target = Target {
                upstream: t.upstream.clone().unwrap_or_else(|| self.primary.clone()),
                model: t.model.clone().or_else(|| preflight.model.clone()),
            };
            if !out.contains(&target) {
                out.push(target);
            }
        }
        out
    }

    /// The breaker a call to `upstream` reports to: the primary's calls with a
    /// project's own credential have their own.
    fn breaker(&self, upstream: &str, principal: &Principal) -> Option<Arc<Breaker>> {
        let credential = principal
            .upstream_ref
            .as_deref()
            .filter(|_| upstream == self.primary);
        self.breakers.for_credential(upstream, credential)
    }

    pub fn client(
        &self,
        gw: &Gateway,
        principal: &Principal,
        upstream: &str,
    ) -> Result<Client, GatewayError> {
        if upstream == self.primary {
            return dispatch::primary_client(&gw.upstream, principal);
        }
        self.clients
            .get(upstream)
            .cloned()
            .ok_or(GatewayError::Internal)
    }
}

/// The client of the upstream that served a call, from the record's `served_by`
/// (`<upstream>/<model>`; upstream names have no `/`), else the primary's.
pub fn served_client(
    gw: &Gateway,
    principal: &Principal,
    served_by: Option<&str>,
) -> Result<Client, GatewayError> {
    match served_by.and_then(|label| label.split_once('/')) {
        Some((upstream, _)) => gw.fallbacks.client(gw, principal, upstream),
        None => dispatch::primary_client(&gw.upstream, principal),
    }
}

/// Whether an upstream answer with `status` sends the call to the next target.
fn falls_back(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Whether a failure to get any answer sends the call to the next target.
fn error_falls_back(e: &GatewayError) -> bool {
    matches!(
        e,
        GatewayError::UpstreamTimeout { .. } | GatewayError::UpstreamUnreachable { .. }
    )
}

/// Sends the call to its targets in turn (see the module doc).
pub async fn run(
    gw: &Gateway,
    endpoint: Endpoint,
    principal: &Principal,
    parts: &Parts,
    preflight: Preflight,
    guard: &mut RecordGuard,
    flight: Flight,
) -> Result<Served, GatewayError> {
    let fb = &gw.fallbacks;
    let chain = if endpoint.has_body() {
        fb.chain(&preflight)
    } else {
        None
    };
    let offline = match endpoint {
        Endpoint::Responses | Endpoint::ChatCompletions => fb.offline.template(&principal.project),
        _ => None,
    };
    let Some(chain) = chain.or(offline.map(|_| &[][..])) else {
        return direct(gw, principal, parts, preflight, guard, flight).await;
    };
    // Boxed: the chain's state (its targets, the last failure kept for relay) is
    // large, and held only by calls that have a chain; every other call's future
    // stays the size of `direct`'s.
    let call = Call {
        gw,
        endpoint,
        principal,
        parts,
        offline,
    };
    Box::pin(chained(call, chain, preflight, guard, flight)).await
}

/// What [`chained`] is given of the call.
struct Call<'a> {
    gw: &'a Gateway,
    endpoint: Endpoint,
    principal: &'a Principal,
    parts: &'a Parts,
    offline: Option<&'a str>,
}

/// [`run`] for a call with a fallback chain or an offline answer.
async fn chained(
    call: Call<'_>,
    chain: &[TargetConfig],
    preflight: Preflight,
    guard: &mut RecordGuard,
    flight: Flight,
) -> Result<Served, GatewayError> {
    let Call {
        gw,
        endpoint,
        principal,
        parts,
        offline,
    } = call;
    let fb = &gw.fallbacks;
    let rules = gw.limits.models();
    let mut targets = fb.targets(&preflight, chain);
    // The caller's access lists leave out what it may not call; with nothing left but
    // its own target and no offline answer, the call has no alternative, and the
    // breaker must not refuse it.
    let (project, env) = (&principal.project, &principal.env);
    let mut own = true;
    targets.retain(|t| {
        let keep = own
            || t.model
                .as_deref()
                .is_none_or(|m| rules.permits(project, env, m));
        own = false;
        keep
    });
    if targets.len() == 1 && offline.is_none() {
        return direct(gw, principal, parts, preflight, guard, flight).await;
    }
    let mut flight = Some(flight);
    let mut last: Option<(Preflight, Result<Reply, GatewayError>, String, u32)> = None;
    let mut skipped: Vec<(String, Instant)> = Vec::new();
    let mut before = 0u32;
    // Upstream attempts of the targets that failed: the record counts every one.
    let mut spent = 0u32;
    // Why a target could not be called at all, if one could not.
    let mut unusable: Option<GatewayError> = None;
    for (i, target) in targets.iter().enumerate() {
        let Some(breaker) = fb.breaker(&target.upstream, principal) else {
            continue;
        };
        let permit = match breaker.admit() {
            Admit::Call(p) => p,
            Admit::Skip { until } => {
                tracing::debug!(target = %target.label(), "circuit open: target skipped");
                skipped.push((target.upstream.clone(), until));
                before += 1;
                continue;
            }
        };
        // A target whose credential cannot be had now (the project's own, unreadable
        // or still being read) is passed over: another upstream may serve.
        let client = match fb.client(gw, principal, &target.upstream) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(target = %target.label(), error = %e, "target's credential unavailable: target skipped");
                unusable = Some(e);
                before += 1;
                continue;
            }
        };
        let mut target_pf = if i == 0 {
            preflight.clone()
        } else {
            retarget(&preflight, target.model.as_deref())?
        };
        // Another model is admitted against its own rate limits too.
        let own = if i > 0 && target_pf.model != preflight.model {
            let (limits, requested) = (&gw.limits, preflight.model.as_deref());
            let out = gw.config.default_output_tokens;
            // A batch call leaves the target model's reserve to interactive ones too.
            let lane = guard.record().lane.unwrap_or_default();
            let reserve = gw.lanes.reserve(lane);
            let own = crate::admit::fallback(
                limits, endpoint, principal, requested, &target_pf, out, reserve,
            );
            match own.await {
                Ok(own) => own,
                Err(e) => {
                    tracing::info!(target = %target.label(), error = %e, "a rate limit of the target's model has no room: target skipped");
                    before += 1;
                    continue;
                }
            }
        } else {
            None
        };
        guard.mark_sent();
        let result = dispatch::send(&client, parts, &target_pf).await;
        if i == 0 {
            if let (Some(f), Ok(reply)) = (flight.take(), &result) {
                gw.throttle.land(f, principal, reply, guard.record());
            }
        } else if let Ok(reply) = &result {
            // The record shows the capacity left where the answer came from (the
            // adaptive throttle keeps to the primary's).
            let rec = guard.record();
            rec.upstream_remaining_requests = reply.meta.rate_limit.remaining_requests;
            rec.upstream_remaining_tokens = reply.meta.rate_limit.remaining_tokens;
        }
        let failed = match &result {
            Ok(reply) => falls_back(reply.status()),
            Err(e) => error_falls_back(e),
        };
        if !failed {
            permit.success();
            guard.hold_fallback(own);
            if target_pf.model != preflight.model {
                guard.mark_another_model();
            }
            let label = target.label();
            if i > 0 {
                fb.fell_back.fetch_add(1, Ordering::Relaxed);
                tracing::info!(served_by = %label, fallbacks = before, "served by a fallback target");
            }
            mark(guard, &mut target_pf, label, before);
            return with_earlier(result, spent)
                .map(|reply| Served::Upstream(target_pf, Box::new(reply)));
        }
        let earlier = spent;
        spent = spent.saturating_add(match &result {
            Ok(reply) => reply.attempts(),
            Err(e) => e.attempts().unwrap_or(1),
        });
        permit.failure();
        if let Some(own) = own {
            own.release();
        }
        let label = target.label();
        tracing::warn!(
            target = %label,
            status = result.as_ref().map(|r| r.status().as_u16()).unwrap_or(0),
            "target failed; trying the next one"
        );
        // Kept to relay if nothing else serves: its attempts become the chain's.
        last = Some((target_pf, with_earlier(result, earlier), label, before));
        before += 1;
    }

    guard.record().attempts = spent;
    if let Some(res) = cached_answer(gw, &preflight, guard, before).await {
        return Ok(Served::Answered(res));
    }
    if let Some(template) = offline {
        let rec = guard.record();
        let now_s = rec.created_at_ms / 1000;
        if let Some(res) =
            crate::offline::answer(endpoint, &preflight, template, &rec.request_id, now_s)
        {
            fb.offline_answers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(project = %principal.project, fallbacks = before, "every target failed: offline answer");
            rec.served_by = Some(OFFLINE.into());
            rec.fallbacks = before;
            return Ok(Served::Answered(res));
        }
    }
    match last {
        Some((mut pf, result, label, n)) => {
            mark(guard, &mut pf, label, n);
            result.map(|reply| Served::Upstream(pf, Box::new(reply)))
        }
        None => {
            guard.record().fallbacks = before;
            // Nothing was called: a target whose credential failed says why better
            // than open circuits would (or than none, if none was open).
            if let Some(e) = unusable.filter(|_| skipped.is_empty()) {
                return Err(e);
            }
            let now = Instant::now();
            let retry_after_ms = skipped
                .iter()
                .map(|(_, until)| until.saturating_duration_since(now).as_millis() as u64)
                .min()
                .unwrap_or(1_000);
            let mut upstreams: Vec<String> = Vec::new();
            for (name, _) in skipped {
                if !upstreams.contains(&name) {
                    upstreams.push(name);
                }
            }
            Err(GatewayError::UpstreamUnavailable {
                upstreams,
                retry_after_ms,
            })
        }
    }
}

/// A call without a chain or an offline answer: its own target only, as before
/// fallbacks existed; the breaker hears the outcome but never refuses the call.
async fn direct(
    gw: &Gateway,
    principal: &Principal,
    parts: &Parts,
    mut preflight: Preflight,
    guard: &mut RecordGuard,
    flight: Flight,
) -> Result<Served, GatewayError> {
    let fb = &gw.fallbacks;
    guard.mark_sent();
    let reply = dispatch::run(&gw.upstream, principal, parts, &preflight).await;
    let ok = match &reply {
        Ok(r) => !falls_back(r.status()),
        Err(e) => !error_falls_back(e),
    };
    // Only what the upstream did counts: a call that never went out (its credential
    // unreadable, say) says nothing of the upstream's health.
    let reached = match &reply {
        Ok(_) => true,
        Err(e) => error_falls_back(e),
    };
    if let Some(b) = fb.breaker(&fb.primary, principal).filter(|_| reached) {
        b.observe(ok);
    }
    if let Ok(reply) = &reply {
        gw.throttle.land(flight, principal, reply, guard.record());
    }
    if !ok {
        // Its only target failed: the same place for a cached answer as in `run`.
        guard.record().attempts = match &reply {
            Ok(r) => r.attempts(),
            Err(e) => e.attempts().unwrap_or(1),
        };
        if let Some(res) = cached_answer(gw, &preflight, guard, 1).await {
            return Ok(Served::Answered(res));
        }
    }
    let label = label(&fb.primary, preflight.model.as_deref());
    mark(guard, &mut preflight, label, 0);
    let reply = reply?;
    Ok(Served::Upstream(preflight, Box::new(reply)))
}

/// A target's outcome with `earlier` upstream attempts (of targets tried before it)
/// counted in.
fn with_earlier(result: Result<Reply, GatewayError>, earlier: u32) -> Result<Reply, GatewayError> {
    match result {
        Ok(mut reply) => {
            reply.meta.attempts = reply.meta.attempts.saturating_add(earlier);
            Ok(reply)
        }
        Err(e) => Err(e.with_earlier_attempts(earlier)),
    }
}

/// Notes on the record and the answer which target's answer the caller gets.
fn mark(guard: &mut RecordGuard, preflight: &mut Preflight, label: String, before: u32) {
    if let Ok(v) = HeaderValue::from_str(&label) {
        preflight.headers.push((SERVED_BY, v));
    }
    let rec = guard.record();
    rec.served_by = Some(label);
    rec.fallbacks = before;
}

/// Where the response cache serves a stored answer for the same request when every
/// target failed (`cache.fallback_projects`), before any offline answer; called from
/// both [`run`] and [`direct`]. The record says the cache served (`served_by =
/// "cache"`) after `before` targets failed or were skipped.
async fn cached_answer(
    gw: &Gateway,
    preflight: &Preflight,
    guard: &mut RecordGuard,
    before: u32,
) -> Option<Response> {
    let res = gw
        .cache
        .stale_for_fallback(preflight, guard.record())
        .await?;
    let mut res = res;
    res.headers_mut()
        .insert(SERVED_BY, HeaderValue::from_static(CACHE));
    guard.mark_first_byte();
    let rec = guard.record();
    rec.served_by = Some(CACHE.into());
    rec.fallbacks = before;
    Some(res)
}

/// The preflight for a target with another model: the body's `model` rewritten,
/// `x-tollgate-model` naming it.
fn retarget(preflight: &Preflight, model: Option<&str>) -> Result<Preflight, GatewayError> {
    let mut out = preflight.clone();
    let Some(model) = model.filter(|m| Some(*m) != preflight.model.as_deref()) else {
        return Ok(out);
    };
    out.body = crate::preflight::with_model(&preflight.body, model)?;
    out.model = Some(model.to_owned());
    if let Some(plan) = out.cache.as_mut() {
        plan.not_this_request();
    }
    out.headers.retain(|(n, _)| n != MODEL_HEADER);
    out.headers.extend(model_header(model));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn only_429_and_5xx_fall_back() {
        for s in [429, 500, 502, 503, 504, 529] {
            assert!(falls_back(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 422] {
            assert!(!falls_back(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        assert!(error_falls_back(&GatewayError::UpstreamTimeout {
            attempts: 1
        }));
        assert!(error_falls_back(&GatewayError::UpstreamUnreachable {
            attempts: 1
        }));
        assert!(!error_falls_back(&GatewayError::Internal));
    }

    #[test]
    fn a_target_with_another_model_gets_its_model_in_the_body() {
        let pf = Preflight {
            model: Some("gpt-4o".into()),
            body: Bytes::from_static(br#"{"model":"gpt-4o","input":"hi","stream":true}"#),
            ..Preflight::default()
        };
        let t = retarget(&pf, Some("gpt-4o-mini")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["input"], "hi");
        assert_eq!(v["stream"], true);
        assert_eq!(t.headers[0].1, "gpt-4o-mini");
        let same = retarget(&pf, Some("gpt-4o")).unwrap();
        assert_eq!(same.body, pf.body);
        // Nothing else in the body changes: numbers and spacing stay as sent.
        let pf = Preflight {
            model: Some("gpt-4o".into()),
            body: Bytes::from_static(
                br#"{ "temperature": 1e0, "model": "gpt-4o", "seed": 12345678901234567890 }"#,
            ),
            ..Preflight::default()
        };
        let t = retarget(&pf, Some("gpt-4o-mini")).unwrap();
        assert_eq!(
            &t.body[..],
            br#"{ "temperature": 1e0, "model": "gpt-4o-mini", "seed": 12345678901234567890 }"#
        );
        // A body without a model gets it first.
        let pf = Preflight {
            body: Bytes::from_static(br#"{"input":"hi"}"#),
            ..Preflight::default()
        };
        let t = retarget(&pf, Some("gpt-4o-mini")).unwrap();
        assert_eq!(&t.body[..], br#"{"model":"gpt-4o-mini","input":"hi"}"#);
    }
}
