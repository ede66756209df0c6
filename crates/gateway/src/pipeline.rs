//! The request lifecycle, in order, as one function per stage (see DESIGN.md):
//!
//! | # | stage        | module           | may end the call with              |
//! |---|--------------|------------------|------------------------------------|
//! | 1 | accept       | `accept`         | 404 invalid URL, 413, 408          |
//! | 2 | authenticate | `authenticate`   | 401 `invalid_api_key`, 403         |
//! |   | (anomaly)    | `anomaly`        | 403 `key_suspended`                |
//! | 3 | preflight    | `preflight`      | 400 invalid JSON                   |
//! |   | (models)     | `models`         | 404 `model_not_found` (access)     |
//! |   | (caps)       | `caps`           | 400 output or temperature cap      |
//! |   | (schema)     | `schema`         | 400 invalid schema, `response_format` |
//! |   | (context)    | `context`        | 400 `context_length_exceeded`      |
//! |   | (carried)    | `carried`        | — (context an earlier turn carries in) |
//! |   | (lane)       | `lanes`          | 400 bad `x-tollgate-priority`      |
//! | 4 | admit        | `admit`, `lanes` | 429 `rate_limit_exceeded` (batch: after waiting its turn), 503 |
//! |   | (budgets)    | `budgets`        | 429 `insufficient_quota`, 400 (taken with the rate limits, all or nothing) |
//! |   | (throttle)   | `throttle`       | — (batch waits for upstream capacity) |
//! | 5 | cache        | `cache`          | answered from cache (`hit`); 400 bad `x-tollgate-cache` |
//! | 6 | moderate     | `moderate`       | (no-op until moderation lands)     |
//! | 7 | dispatch     | `dispatch`       | upstream status, 502, 504          |
//! |   | (fallbacks)  | `fallback`, `breaker`, `offline` | 503 `upstream_unavailable` (every circuit open); a stored answer (`stale`), an offline answer |
//! |   | (answers)    | `answers`        | 502 `invalid_structured_output`    |
//! | 8 | account      | `account`        | —                                  |
//! | 9 | record       | `record`         | —                                  |
//!
//! A [`RecordGuard`] is taken as soon as the request is known to be a proxied one, so
//! every outcome below — refusal, upstream error, success, client disconnect — leaves
//! exactly one usage record. Every response carries tollgate's `x-request-id`, and
//! every response to a call a rate-limit rule governs carries that rule's
//! `x-ratelimit-*` headers (set by admit, whatever happens after; for a call refused
//! before admission, the buckets as they are).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Request};
use tollgate_store::{Lane, UsageRecord};

use crate::carried::Continues;
use crate::error::GatewayError;
use crate::keys::Principal;
use crate::preflight::{Endpoint, Preflight};
use crate::record::RecordGuard;
use crate::server::{self, Gateway};
use crate::{
    accept, admit, authenticate, cache, caps, context, dispatch, fallback, lanes, moderate,
    offload, preflight, schema,
};

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The handler for every path but the health endpoints.
pub async fn handle(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    let request_id = accept::request_id();
    // The header's copy is made first, so the id itself moves into the usage record.
    let id_header = HeaderValue::from_str(&request_id).ok();
    let mut res = match Endpoint::route(req.method(), req.uri().path()) {
        Some(endpoint) => proxy(&gw, endpoint, request_id, req).await,
        None => {
            let refusal = GatewayError::InvalidUrl {
                method: req.method().to_string(),
                path: req.uri().path().to_owned(),
            };
            // Its body is read and dropped, so the answer reaches the caller (an
            // upload to an endpoint tollgate does not serve, say).
            let limit = accept::drain_limit(gw.config.max_body_bytes);
            // Boxed: a rare path, kept out of every request's future.
            let drain = accept::discard_body(req.into_body(), limit, gw.config.body_timeout);
            Box::pin(drain).await;
            refusal.into_response()
        }
    };
    if let Some(v) = id_header {
        res.headers_mut().insert(X_REQUEST_ID, v);
    }
    res
}

/// Runs the stages for a proxied endpoint and records the outcome.
async fn proxy(
    gw: &Gateway,
    endpoint: Endpoint,
    request_id: String,
    req: Request<Body>,
) -> Response {
    let mut guard = RecordGuard::new(
        gw.usage.clone(),
        UsageRecord {
            request_id,
            endpoint: endpoint.label().to_owned(),
            created_at_ms: accept::now_ms(),
            ..UsageRecord::default()
        },
    );
    let mut limit_headers = tollgate_wire::ratelimit::RateLimitInfo::default();
    let mut res = match stages(gw, endpoint, req, &mut guard, &mut limit_headers).await {
        Ok(Outcome::Upstream(preflight, reply)) => {
            // tollgate's own x-ratelimit-* headers (inserted below) replace the
            // upstream's, so those are not relayed first.
            let own = &limit_headers;
            let res = dispatch::relay(endpoint, &preflight, *reply, guard, own).await;
            gw.cache.fill(&preflight, res).await
        }
        Ok(Outcome::Served(mut res)) => {
            let rec = guard.record();
            rec.status = res.status().as_u16();
            // An offline answer says what the cache did too (a stored one says it
            // already).
            if let Some(c) = rec.cache {
                let headers = res.headers_mut();
                if !headers.contains_key(crate::cache::CACHE_HEADER) {
                    headers.insert(
                        crate::cache::CACHE_HEADER,
                        HeaderValue::from_static(c.as_str()),
                    );
                }
            }
            guard.finish().await;
            res
        }
        Err(e) => {
            let rec = guard.record();
            rec.status = e.status().as_u16();
            rec.error_code = Some(e.code().unwrap_or(e.kind()).to_owned());
            if let Some(attempts) = e.attempts() {
                rec.attempts = attempts;
            }
            rec.client_disconnected = matches!(e, GatewayError::ClientGone);
            // An error answer says what the cache did and which target answered, as
            // any other answer does (and as the record does).
            let cache = rec.cache.map(|c| HeaderValue::from_static(c.as_str()));
            let served_by = rec
                .served_by
                .as_deref()
                .and_then(|s| HeaderValue::from_str(s).ok());
            guard.finish().await;
            let mut res = e.into_response();
            if let Some(v) = cache {
                res.headers_mut().insert(crate::cache::CACHE_HEADER, v);
            }
            if let Some(v) = served_by {
                res.headers_mut().insert(crate::fallback::SERVED_BY, v);
            }
            res
        }
    };
    if !limit_headers.is_empty() {
        crate::error::insert_rate_limit_info(res.headers_mut(), &limit_headers);
    }
    res
}

/// How stages 1–7 ended when nothing refused the call.
enum Outcome {
    /// The upstream answered; relay it (stages 8 and 9 run as it is relayed).
    Upstream(Preflight, Box<dispatch::Reply>),
    /// Answered without the upstream: from the cache, or an offline answer.
    Served(Response),
}

/// Stage 2 and the checks on the caller's headers, before its body is read: who it
/// is, whether it may call models, its lane and cache choice, and anomaly suspension.
fn caller(
    gw: &Gateway,
    parts: &http::request::Parts,
    peer: Option<std::net::IpAddr>,
    guard: &mut RecordGuard,
) -> Result<(Arc<Principal>, Lane, cache::Mode), GatewayError> {
    let principal = authenticate::run(&gw.keys, &parts.headers)?;
    let rec = guard.record();
    rec.key_id = Some(principal.key_id.clone());
    rec.project = Some(principal.project.clone());
    rec.env = Some(principal.env.clone());
    authenticate::authorize(&principal, authenticate::Action::CallModels)?;
    let lane = lanes::lane(&parts.headers, principal.lane)?;
    guard.record().lane = Some(lane);
    let cache_mode = cache::mode(&parts.headers)?;
    let (key, project, env) = (&principal.key_id, &principal.project, &principal.env);
    gw.anomaly
        .observe_request(key, project, env, peer, accept::now_ms())?;
    Ok((principal, lane, cache_mode))
}

/// Stage 1's body and stage 3 with its checks: everything that may refuse the call
/// before admission counts it.
async fn checked(
    gw: &Gateway,
    endpoint: Endpoint,
    parts: &http::request::Parts,
    body: Body,
    principal: &Arc<Principal>,
    guard: &mut RecordGuard,
) -> Result<Preflight, GatewayError> {
    let (max, timeout) = (gw.config.max_body_bytes, gw.config.body_timeout);
    let (body, room) = accept::read_body(body, max, timeout, &gw.bodies, &parts.headers).await?;
    guard.hold_body(room);
    let model_in_path =
        (endpoint == Endpoint::Model).then(|| parts.uri.path().trim_start_matches("/v1/models/"));
    let rules = gw.limits.models();
    let preflight = if body.len() <= offload::JSON_INLINE_BYTES {
        preflight::run(endpoint, body, model_in_path, &rules, principal)
    } else {
        // A large body is parsed off the I/O thread (see offload).
        let (len, model_in_path) = (body.len(), model_in_path.map(str::to_owned));
        let principal = principal.clone();
        let parse =
            move || preflight::run(endpoint, body, model_in_path.as_deref(), &rules, &principal);
        offload::run_over(offload::JSON_INLINE_BYTES, len, parse).await
    };
    let preflight = preflight.inspect_err(|e| {
        if let GatewayError::ModelNotFound { model, .. } = e {
            guard.record().model_requested = Some(model.clone());
        }
    })?;
    let rec = guard.record();
    rec.model_requested = preflight.model_requested().map(str::to_owned);
    rec.streamed = preflight.stream;
    let preflight = caps::run(&gw.limits, endpoint, principal, preflight)?;
    let preflight = schema::run(&gw.config.preflight, endpoint, preflight, &gw.schemas).await?;
    if gw.config.preflight.context_window {
        context::run(&gw.limits.catalog().current(), endpoint, &preflight).await?;
    }
    let mut preflight = preflight;
    if endpoint == Endpoint::Responses {
        carry(gw, &mut preflight, guard);
    }
    Ok(preflight)
}

/// A Responses call: counts the context it carries in from an earlier turn (at most
/// its model's context window), and has its own answer remembered for the next turn.
fn carry(gw: &Gateway, preflight: &mut Preflight, guard: &mut RecordGuard) {
    let conversation = match &preflight.continues {
        Some(from) => {
            let known = gw.carried.tokens(from);
            let window = preflight.model.as_deref().and_then(|m| {
                let catalog = gw.limits.catalog().current();
                catalog.get(m).and_then(|entry| entry.context_window)
            });
            preflight.carried_tokens = window.map_or(known, |w| known.min(w));
            match from {
                Continues::Conversation(id) => Some(id.clone()),
                Continues::Response(_) => None,
            }
        }
        None => None,
    };
    guard.carry(gw.carried.clone(), conversation);
}

/// The `x-ratelimit-*` headers of a call refused before admission, for the model it
/// asked for (an alias resolved).
async fn limits_now(
    gw: &Gateway,
    endpoint: Endpoint,
    principal: &Principal,
    guard: &mut RecordGuard,
) -> tollgate_wire::ratelimit::RateLimitInfo {
    let asked = guard.record().model_requested.clone();
    let rules = gw.limits.models();
    let resolved = asked.as_deref().and_then(|name| {
        let target = rules
            .route(&principal.project, &principal.env, name)
            .ok()??;
        Some(target.to_owned())
    });
    let model = resolved.or(asked);
    admit::current_headers(&gw.limits, endpoint, principal, model.as_deref()).await
}

/// Stages 1–7.
async fn stages(
    gw: &Gateway,
    endpoint: Endpoint,
    req: Request<Body>,
    guard: &mut RecordGuard,
    limit_headers: &mut tollgate_wire::ratelimit::RateLimitInfo,
) -> Result<Outcome, GatewayError> {
    let peer = server::peer_addr(&req).map(|a| a.ip());
    let (parts, body) = req.into_parts();

    let (principal, lane, cache_mode) = match caller(gw, &parts, peer, guard) {
        Ok(caller) => caller,
        Err(e) => {
            // Read (and drop) what the caller sent, within the usual limits, so its
            // keep-alive connection stays usable: an SDK's pooled connection would
            // otherwise be closed under its next request.
            let limit = gw.config.max_body_bytes;
            accept::discard_body(body, limit, gw.config.body_timeout).await;
            return Err(e);
        }
    };

    let preflight = match checked(gw, endpoint, &parts, body, &principal, guard).await {
        Ok(preflight) => preflight,
        Err(e) => {
            // Refused before admission: the caller still learns where its limits stand.
            *limit_headers = limits_now(gw, endpoint, &principal, guard).await;
            return Err(e);
        }
    };

    let at_ms = guard.record().created_at_ms;
    let default_output_tokens = gw.config.default_output_tokens;
    let alternatives = (gw.fallbacks).alternatives(endpoint, &principal, &preflight, &gw.limits);
    let plan = admit::plan(
        &gw.limits,
        &gw.budgets,
        endpoint,
        &principal,
        &preflight,
        &alternatives,
        default_output_tokens,
        at_ms,
    )
    .await?;
    let arrived = tokio::time::Instant::from_std(guard.started());
    let admission = gw.lanes.admit(&gw.limits, &plan, lane, arrived).await?;
    drop(plan);
    *limit_headers = admission.headers;
    guard.hold(admission.reservation);
    guard.hold_budget(admission.budget);
    let mut preflight = preflight;
    preflight.cache = gw
        .cache
        .plan(&principal, endpoint, cache_mode, &preflight, &parts);
    if let Some(hit) = gw.cache.lookup(&preflight, guard.record()).await {
        guard.mark_first_byte();
        return Ok(Outcome::Served(hit));
    }
    moderate::run(&principal, &preflight)?;

    let deadline = arrived + gw.lanes.max_wait();
    let model = preflight.model.as_deref();
    let flight = gw.throttle.pace(&principal, model, lane, deadline).await;
    match fallback::run(gw, endpoint, &principal, &parts, preflight, guard, flight).await? {
        fallback::Served::Upstream(preflight, reply) => {
            let reply =
                crate::answers::run(gw, endpoint, &principal, &parts, &preflight, reply, guard)
                    .await?;
            Ok(Outcome::Upstream(preflight, reply))
        }
        fallback::Served::Answered(res) => Ok(Outcome::Served(res)),
    }
}
