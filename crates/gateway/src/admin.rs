//! The admin HTTP API under `/admin/v1/...`: gateway keys over their whole life, usage
//! totals and the audit log, in JSON, authenticated with tollgate keys. It sits beside
//! the proxy pipeline, not in it: admin calls are not model calls, so they leave no
//! usage record; every change they make is audited by the store, in the same
//! transaction, as `key:<caller key id>` from `admin-api <peer ip>`.
//!
//! Every operation is scoped to the caller's own project: a key of another project is
//! answered like an unknown one (404), so ids cannot be probed across projects. Roles
//! (see `docs/admin-api.md`): `admin` may do everything; `viewer` may read key
//! metadata and usage; `member` may only read its own key's usage. Bad input is
//! refused (400, naming the field) before the store is touched.
//!
//! Rate-limit rules and output caps of the caller's project can be read by every role
//! and set or cleared by its admins (`/admin/v1/limits`, `/admin/v1/caps`); servers
//! pick changes up within a second.
//!
//! The project itself can be read (`GET /admin/v1/project`: its environments and the
//! provider credential REFERENCE each uses, never a secret), and an admin can set an
//! environment's credential reference and the project's anomaly auto-suspend.
//!
//! Projects themselves (`/admin/v1/projects…`) are managed gateway-wide by keys of the
//! reserved `_gateway` project: see [`crate::admin_projects`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use http::{HeaderMap, Request, StatusCode, Uri};
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_store::{
    Actor, KeyRecord, Lane, Role, StoreError, UsageTotals, DEFAULT_MAX_KEY_AGE_MS,
};

use crate::accept::now_ms;
use crate::error::GatewayError;
use crate::keys::{self, Principal};
use crate::server::{self, Gateway};

/// Every (method, path) the admin API serves; `docs/admin-openapi.yaml` lists the same.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/admin/v1/keys"),
    ("get", "/admin/v1/keys"),
    ("get", "/admin/v1/keys/{id}"),
    ("post", "/admin/v1/keys/{id}/rotate"),
    ("post", "/admin/v1/keys/{id}/revoke"),
    ("post", "/admin/v1/keys/{id}/suspend"),
    ("post", "/admin/v1/keys/{id}/resume"),
    ("post", "/admin/v1/keys/{id}/lane"),
    ("get", "/admin/v1/usage"),
    ("get", "/admin/v1/audit"),
    ("get", "/admin/v1/project"),
    ("put", "/admin/v1/project/envs/{env}/credential"),
    // Project settings and gateway-wide project management (admin_projects.rs).
    ("patch", "/admin/v1/project"),
    ("post", "/admin/v1/projects"),
    ("get", "/admin/v1/projects"),
    ("get", "/admin/v1/projects/{name}"),
    ("patch", "/admin/v1/projects/{name}"),
    ("delete", "/admin/v1/projects/{name}"),
    ("post", "/admin/v1/projects/{name}/keys"),
    ("get", "/admin/v1/limits"),
    ("put", "/admin/v1/limits"),
    ("delete", "/admin/v1/limits"),
    ("get", "/admin/v1/caps"),
    ("put", "/admin/v1/caps"),
    ("delete", "/admin/v1/caps"),
    // Spend budgets (admin_budgets.rs).
    ("get", "/admin/v1/budgets"),
    ("put", "/admin/v1/budgets"),
    ("delete", "/admin/v1/budgets"),
    // Model aliases and access lists (admin_models.rs).
    ("get", "/admin/v1/models/aliases"),
    ("put", "/admin/v1/models/aliases"),
    ("delete", "/admin/v1/models/aliases"),
    ("get", "/admin/v1/models/access"),
    ("put", "/admin/v1/models/access"),
    ("get", "/admin/v1/models/catalog"),
    ("put", "/admin/v1/models/catalog/{model}"),
    ("delete", "/admin/v1/models/catalog/{model}"),
];

/// Longest `name` or `reason` accepted, in characters.
const MAX_TEXT_CHARS: usize = 200;
/// Largest admin request body.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most audit entries one call returns.
const MAX_AUDIT_LIMIT: i64 = 1000;

/// The admin routes, to merge into the server's router.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/admin/v1/keys", post(create_key).get(list_keys))
        .route("/admin/v1/keys/{id}", get(show_key))
        .route("/admin/v1/keys/{id}/rotate", post(rotate_key))
        .route("/admin/v1/keys/{id}/revoke", post(revoke_key))
        .route("/admin/v1/keys/{id}/suspend", post(suspend_key))
        .route("/admin/v1/keys/{id}/resume", post(resume_key))
        .route("/admin/v1/keys/{id}/lane", post(set_key_lane))
        .route("/admin/v1/usage", get(usage))
        .route("/admin/v1/audit", get(audit))
        .route(
            "/admin/v1/project",
            get(show_project).patch(crate::admin_projects::patch_own_project),
        )
        .route(
            "/admin/v1/project/envs/{env}/credential",
            put(set_env_credential),
        )
        .merge(crate::admin_projects::routes())
        .merge(crate::admin_budgets::routes())
        .merge(crate::admin_models::routes())
        .route(
            "/admin/v1/limits",
            get(list_limits).put(set_limit).delete(clear_limit),
        )
        .route(
            "/admin/v1/caps",
            get(list_caps).put(set_cap).delete(clear_cap),
        )
        .method_not_allowed_fallback(wrong_method)
}

/// A known admin path with another method: OpenAI's `Invalid URL` answer, not axum's
/// bare 405.
async fn wrong_method(method: http::Method, uri: Uri) -> Response {
    GatewayError::InvalidUrl {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
    .into_response()
}

/// The body of a key creation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    env: String,
    role: Option<String>,
    name: Option<String>,
    expires_in: Option<String>,
    lane: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LaneBody {
    lane: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    by: Option<String>,
    since: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    since: Option<String>,
    limit: Option<String>,
}

/// What an admin call wants to do, for the role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminAction {
    /// Read usage (a member: only its own key's).
    ReadUsage,
    /// Read key metadata and the audit log of the project.
    ReadKeys,
    /// Create, rotate, revoke, suspend or resume keys.
    ChangeKeys,
    /// Change the project's settings (provider credentials, anomaly auto-suspend).
    ChangeProject,
    /// Read the project's rate limits (every role: callers should know their limits).
    ReadLimits,
    /// Set or clear the project's rate limits.
    ChangeLimits,
}

impl AdminAction {
    fn describe(self) -> &'static str {
        match self {
            Self::ReadUsage => "read usage",
            Self::ReadKeys => "read key metadata or the audit log",
            Self::ChangeKeys => "create or change keys",
            Self::ChangeProject => "change the project's settings",
            Self::ReadLimits => "read the project's rate limits, output caps and budgets",
            Self::ChangeLimits => "set or clear the project's rate limits, output caps or budgets",
        }
    }
}

/// The caller, authenticated and allowed `action`.
pub(crate) fn caller(
    gw: &Gateway,
    headers: &HeaderMap,
    action: AdminAction,
) -> Result<Arc<Principal>, GatewayError> {
    let p = crate::authenticate::run(&gw.keys, headers)?;
    let allowed = matches!(
        (p.role, action),
        (Role::Admin, _)
            | (Role::Viewer, AdminAction::ReadUsage | AdminAction::ReadKeys)
            | (Role::Member, AdminAction::ReadUsage)
            | (_, AdminAction::ReadLimits)
    );
    if allowed {
        Ok(p)
    } else {
        Err(GatewayError::AdminForbidden {
            role: p.role.to_string(),
            action: action.describe(),
        })
    }
}

/// The audit actor for a change made by `p` from the request's peer.
pub(crate) fn actor(p: &Principal, req: &Request<Body>) -> Actor {
    let ip = server::peer_addr(req).map_or_else(|| "unknown".into(), |a| a.ip().to_string());
    Actor::new(format!("key:{}", p.key_id), format!("admin-api {ip}"))
}

/// The key `id` if it belongs to the caller's project; 404 otherwise.
async fn own_key(gw: &Gateway, p: &Principal, id: &str) -> Result<KeyRecord, GatewayError> {
    match gw.store.key_by_id(id).await.map_err(store_error)? {
        Some(k) if k.project == p.project => Ok(k),
        _ => Err(GatewayError::NotFound {
            what: "key",
            id: id.to_owned(),
        }),
    }
}

async fn create_key(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    reply(create_key_inner(&gw, req).await, StatusCode::CREATED)
}

async fn create_key_inner(gw: &Gateway, req: Request<Body>) -> Result<Value, GatewayError> {
    let p = caller(gw, req.headers(), AdminAction::ChangeKeys)?;
    let actor = actor(&p, &req);
    let body: CreateBody = read_body(req, false).await?;
    create_key_in(gw, &p.project, &actor, body).await
}

/// Mints a key in `project` as `body` asks (within the project's maximum key age)
/// and returns it with its secret, shown this once.
pub(crate) async fn create_key_in(
    gw: &Gateway,
    project: &str,
    actor: &Actor,
    body: CreateBody,
) -> Result<Value, GatewayError> {
    check_env(&body.env)?;
    let role = match body.role.as_deref() {
        None => Role::Member,
        Some(r) => r.parse::<Role>().map_err(|e| invalid(e, "role"))?,
    };
    check_text(body.name.as_deref(), "name")?;
    let lane = parse_lane(body.lane.as_deref().unwrap_or("interactive"))?;
    let expires_in = body
        .expires_in
        .as_deref()
        .map(|s| positive_span(s, "expires_in"))
        .transpose()?;
    let max_age = gw
        .store
        .project_by_name(project)
        .await
        .map_err(store_error)?
        .map_or(DEFAULT_MAX_KEY_AGE_MS, |pr| pr.effective_max_key_age_ms());
    let lifetime = expires_in.unwrap_or(max_age);
    if lifetime > max_age {
        return Err(invalid(
            format!(
                "expires_in is beyond project {project:?}'s maximum key age ({max_age} ms): \
                 ask for less"
            ),
            "expires_in",
        ));
    }
    let now = now_ms();
    let mut minted = keys::mint(project, &body.env, role, body.name, now);
    minted.record.expires_at_ms = now.saturating_add(lifetime);
    minted.record.lane = lane;
    let rec = gw
        .store
        .insert_key_as(&minted.record, actor)
        .await
        .map_err(store_error)?;
    Ok(json!({
        "id": rec.id, "key": minted.secret, "prefix": rec.prefix,
        "project": rec.project, "env": rec.env, "role": rec.role,
        "name": rec.name, "expires_at_ms": rec.expires_at_ms, "lane": rec.lane,
    }))
}

async fn list_keys(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let result = async {
        let p = caller(&gw, &headers, AdminAction::ReadKeys)?;
        let now = now_ms();
        let keys = gw.store.list_keys().await.map_err(store_error)?;
        let data: Vec<Value> = keys
            .iter()
            .filter(|k| k.project == p.project)
            .map(|k| key_json(k, now))
            .collect();
        Ok(json!({ "object": "list", "data": data }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn show_key(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let p = caller(&gw, &headers, AdminAction::ReadKeys)?;
        Ok(key_json(&own_key(&gw, &p, &id).await?, now_ms()))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn rotate_key(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    reply(rotate_key_inner(&gw, &id, req).await, StatusCode::OK)
}

async fn rotate_key_inner(
    gw: &Gateway,
    id: &str,
    req: Request<Body>,
) -> Result<Value, GatewayError> {
    let p = caller(gw, req.headers(), AdminAction::ChangeKeys)?;
    let actor = actor(&p, &req);
    let body: RotateBody = read_body(req, true).await?;
    let grace_ms = span_ms(body.grace.as_deref().unwrap_or("24h"), "grace")?;
    let old = own_key(gw, &p, id).await?;
    let max_age = gw
        .store
        .project_by_name(&old.project)
        .await
        .map_err(store_error)?
        .map_or(DEFAULT_MAX_KEY_AGE_MS, |pr| pr.effective_max_key_age_ms());
    let now = now_ms();
    let minted = keys::successor(&old, max_age, now);
    let next = gw
        .store
        .rotate_key(id, &minted.record, grace_ms, now, &actor)
        .await
        .map_err(store_error)?;
    Ok(json!({
        "id": next.id, "key": minted.secret, "prefix": next.prefix,
        "project": next.project, "env": next.env, "role": next.role,
        "name": next.name, "expires_at_ms": next.expires_at_ms, "lane": next.lane,
        "predecessor": id,
        "predecessor_retires_at_ms": keys::stops_at(&old, grace_ms, now),
        "predecessor_refused": keys::refused_now(&old, now),
    }))
}

/// A change of state that needs only the key id and a reason.
#[derive(Debug, Clone, Copy)]
enum Change {
    Revoke,
    Suspend,
    Resume,
}

async fn revoke_key(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    reply(change(&gw, &id, Change::Revoke, req).await, StatusCode::OK)
}

async fn suspend_key(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    reply(change(&gw, &id, Change::Suspend, req).await, StatusCode::OK)
}

async fn resume_key(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    reply(change(&gw, &id, Change::Resume, req).await, StatusCode::OK)
}

async fn change(
    gw: &Gateway,
    id: &str,
    change: Change,
    req: Request<Body>,
) -> Result<Value, GatewayError> {
    let p = caller(gw, req.headers(), AdminAction::ChangeKeys)?;
    let actor = actor(&p, &req);
    let body: ReasonBody = read_body(req, true).await?;
    check_text(body.reason.as_deref(), "reason")?;
    own_key(gw, &p, id).await?;
    let (now, reason) = (now_ms(), body.reason.as_deref());
    let (action, changed) = match change {
        Change::Revoke => (
            "revoke",
            gw.store.revoke_key_as(id, reason, now, &actor).await,
        ),
        Change::Suspend => (
            "suspend",
            gw.store.suspend_key(id, reason, now, &actor).await,
        ),
        Change::Resume => ("resume", gw.store.resume_key(id, reason, now, &actor).await),
    };
    let changed = changed.map_err(store_error)?;
    let key = own_key(gw, &p, id).await?;
    Ok(json!({
        "id": id, "action": action, "changed": changed, "state": key.state(now_ms()),
    }))
}

async fn set_key_lane(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    let result = async {
        let p = caller(&gw, req.headers(), AdminAction::ChangeKeys)?;
        let actor = actor(&p, &req);
        // Another project's key is not found, whatever the body.
        own_key(&gw, &p, &id).await?;
        let body: LaneBody = read_body(req, false).await?;
        let lane = parse_lane(&body.lane)?;
        let changed = gw
            .store
            .set_key_lane(&id, lane, now_ms(), &actor)
            .await
            .map_err(store_error)?;
        Ok(json!({ "id": id, "action": "lane", "changed": changed, "lane": lane }))
    }
    .await;
    reply(result, StatusCode::OK)
}

fn parse_lane(lane: &str) -> Result<Lane, GatewayError> {
    lane.parse::<Lane>().map_err(|e| invalid(e, "lane"))
}

async fn usage(State(gw): State<Arc<Gateway>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let p = caller(&gw, &headers, AdminAction::ReadUsage)?;
        let q: UsageQuery = read_query(&uri)?;
        let by = q.by.as_deref().unwrap_or("key");
        if !matches!(by, "key" | "model" | "day") {
            return Err(invalid(
                format!("unknown grouping {by:?}: use key, model or day"),
                "by",
            ));
        }
        let since_ms = now_ms() - positive_span(q.since.as_deref().unwrap_or("24h"), "since")?;
        let records = gw
            .store
            .usage_records(since_ms)
            .await
            .map_err(store_error)?;
        // The store's totals have no project filter: group the project's records here.
        let own_only = p.role == Role::Member;
        let mut groups: BTreeMap<String, UsageTotals> = BTreeMap::new();
        for r in records.iter().filter(|r| {
            r.project.as_deref() == Some(p.project.as_str())
                && (!own_only || r.key_id.as_deref() == Some(p.key_id.as_str()))
        }) {
            // Missing values group as "-", as in `tollgate usage`.
            let group = match by {
                "key" => r.key_id.clone().unwrap_or_else(|| "-".into()),
                "model" => r
                    .model_served
                    .clone()
                    .or_else(|| r.model_requested.clone())
                    .unwrap_or_else(|| "-".into()),
                _ => day_of(r.created_at_ms),
            };
            let t = groups.entry(group.clone()).or_insert_with(|| UsageTotals {
                group,
                requests: 0,
                errors: 0,
                input_tokens: 0,
                output_tokens: 0,
                total_tokens: 0,
                cached_tokens: 0,
                reasoning_tokens: 0,
                cost_usd_nanos: None,
                unpriced: 0,
                cache_hits: 0,
            });
            t.requests += 1;
            t.errors += u64::from(r.is_error());
            t.input_tokens = t.input_tokens.saturating_add(r.input_tokens);
            t.output_tokens = t.output_tokens.saturating_add(r.output_tokens);
            t.total_tokens = t.total_tokens.saturating_add(r.total_tokens);
            t.cached_tokens = t.cached_tokens.saturating_add(r.cached_tokens);
            t.reasoning_tokens = t.reasoning_tokens.saturating_add(r.reasoning_tokens);
            t.cache_hits += u64::from(r.served_from_cache());
            match r.cost_usd_nanos {
                Some(c) => t.cost_usd_nanos = Some(t.cost_usd_nanos.unwrap_or(0).saturating_add(c)),
                None => t.unpriced += 1,
            }
        }
        let data: Vec<UsageTotals> = groups.into_values().collect();
        Ok(json!({
            "object": "list", "project": p.project, "by": by, "since_ms": since_ms,
            "data": data,
        }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn show_project(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let result = async {
        let p = caller(&gw, &headers, AdminAction::ReadKeys)?;
        project_json(&gw, &p.project).await
    }
    .await;
    reply(result, StatusCode::OK)
}

/// A project: its default credential reference and its environments, each with the
/// reference its calls use and where that comes from (references only), and its
/// anomaly auto-suspend (its own choice, and the one in effect).
pub(crate) async fn project_json(gw: &Gateway, project: &str) -> Result<Value, GatewayError> {
    let d = gw
        .store
        .project_detail(project)
        .await
        .map_err(store_error)?;
    // References as others may see them: an exec: command's arguments stay hidden.
    let shown = |r: &Option<String>| r.as_deref().map(tollgate_store::shown_secret_ref);
    let default = shown(&d.project.upstream_api_key);
    let envs: Vec<Value> = d
        .envs
        .iter()
        .map(|e| {
            let own = shown(&e.upstream_api_key);
            let (used, from) = match (&own, &default) {
                (Some(r), _) => (Some(r.clone()), "environment"),
                (None, Some(r)) => (Some(r.clone()), "project"),
                (None, None) => (None, "global"),
            };
            json!({
                "env": e.env, "upstream_api_key": own,
                "credential_used": used, "credential_source": from,
                "active_keys": e.active_keys,
            })
        })
        .collect();
    Ok(json!({
        "object": "project", "name": d.project.name,
        "created_at_ms": d.project.created_at_ms,
        "max_key_age_ms": d.project.effective_max_key_age_ms(),
        "anomaly_auto_suspend": d.project.anomaly_auto_suspend,
        "anomaly_auto_suspend_effective": d.project.anomaly_auto_suspend
            .unwrap_or(gw.config.anomaly.auto_suspend),
        "upstream_api_key": default, "active_keys": d.active_keys, "envs": envs,
    }))
}

async fn set_env_credential(
    State(gw): State<Arc<Gateway>>,
    Path(env): Path<String>,
    req: Request<Body>,
) -> Response {
    let result = async {
        let p = caller(&gw, req.headers(), AdminAction::ChangeProject)?;
        let actor = actor(&p, &req);
        check_env(&env)?;
        let body: serde_json::Map<String, Value> = read_body(req, false).await?;
        only_member(&body, "ref", "the body is {\"ref\": \"env:NAME\" | null}")?;
        let reference = match body.get("ref") {
            Some(Value::String(r)) => Some(r.as_str()),
            Some(Value::Null) => None,
            _ => {
                return Err(invalid(
                    "ref is required: a secret reference (env:NAME, file:PATH, exec:COMMAND) \
                     or null to clear it",
                    "ref",
                ))
            }
        };
        if let Some(r) = reference {
            api_credential_ref(r, "ref")?;
        }
        gw.store
            .set_env_credential(&p.project, &env, reference, now_ms(), &actor)
            .await
            .map_err(store_error)?;
        project_json(&gw, &p.project).await
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn audit(State(gw): State<Arc<Gateway>>, uri: Uri, headers: HeaderMap) -> Response {
    let result = async {
        let p = caller(&gw, &headers, AdminAction::ReadKeys)?;
        let q: AuditQuery = read_query(&uri)?;
        let since_ms = now_ms() - positive_span(q.since.as_deref().unwrap_or("24h"), "since")?;
        let limit = match q.limit.as_deref() {
            None => 100,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=MAX_AUDIT_LIMIT).contains(&n) => n,
                _ => {
                    return Err(invalid(
                        format!("limit must be a whole number from 1 to {MAX_AUDIT_LIMIT}"),
                        "limit",
                    ))
                }
            },
        };
        // The audit log has no project column: keep the rows about the project itself
        // or one of its keys.
        let ours: HashSet<String> = gw
            .store
            .list_keys()
            .await
            .map_err(store_error)?
            .into_iter()
            .filter(|k| k.project == p.project)
            .map(|k| k.id)
            .collect();
        let entries = gw
            .store
            .list_audit(since_ms, i64::MAX)
            .await
            .map_err(store_error)?;
        let data: Vec<Value> = entries
            .iter()
            .filter(|e| {
                e.target == p.project
                    || ours.contains(&e.target)
                    || e.target
                        .strip_prefix(p.project.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .take(usize::try_from(limit).unwrap_or(100))
            .map(|e| {
                json!({
                    "id": e.id, "at_ms": e.at_ms, "actor": e.actor, "action": e.action,
                    "target": e.target,
                    "detail": shown_detail(&e.detail),
                    "source": e.source,
                })
            })
            .collect();
        Ok(json!({ "object": "list", "data": data }))
    }
    .await;
    reply(result, StatusCode::OK)
}

/// A rate-limit rule's scope within the caller's project (body of PUT, query of
/// DELETE): absent parts mean "any".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitBody {
    env: Option<String>,
    key_id: Option<String>,
    model: Option<String>,
    rpm: Option<u64>,
    tpm: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    env: Option<String>,
    key_id: Option<String>,
    model: Option<String>,
}

fn limit_scope(
    project: &str,
    env: Option<String>,
    key_id: Option<String>,
    model: Option<String>,
) -> Result<tollgate_store::LimitScope, GatewayError> {
    if let Some(env) = &env {
        check_env(env)?;
    }
    check_text(key_id.as_deref(), "key_id")?;
    check_text(model.as_deref(), "model")?;
    Ok(tollgate_store::LimitScope {
        project: project.to_owned(),
        env,
        key_id,
        model,
    })
}

async fn list_limits(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let result = async {
        let p = caller(&gw, &headers, AdminAction::ReadLimits)?;
        let rules = gw
            .store
            .list_rate_limits(Some(&p.project))
            .await
            .map_err(store_error)?;
        Ok(json!({ "object": "list", "data": rules }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn set_limit(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    let result = async {
        let p = caller(&gw, req.headers(), AdminAction::ChangeLimits)?;
        let actor = actor(&p, &req);
        let b: LimitBody = read_body(req, false).await?;
        if b.rpm.is_none() && b.tpm.is_none() {
            return Err(invalid("set rpm, tpm or both (positive integers)", "rpm"));
        }
        for (name, v) in [("rpm", b.rpm), ("tpm", b.tpm)] {
            if v == Some(0) {
                return Err(invalid(format!("{name} must be a positive integer"), name));
            }
        }
        let scope = limit_scope(&p.project, b.env, b.key_id, b.model)?;
        // Rules match the model a call resolves to: one on an alias would never apply.
        if let Some(model) = &scope.model {
            if let Some(target) = gw.limits.models().resolve(&p.project, model) {
                return Err(invalid(
                    format!(
                        "{model:?} is an alias of {target:?} in this project: rate-limit \
                         rules match the model a call resolves to; set the rule on {target:?}"
                    ),
                    "model",
                ));
            }
        }
        let rule = gw
            .store
            .set_rate_limit(&scope, b.rpm, b.tpm, now_ms(), &actor)
            .await
            .map_err(store_error)?;
        serde_json::to_value(rule).map_err(|_| GatewayError::Internal)
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn clear_limit(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    // `move`: the request (whose body is not `Sync`) must not be borrowed across awaits.
    let result = async move {
        let p = caller(&gw, req.headers(), AdminAction::ChangeLimits)?;
        let actor = actor(&p, &req);
        let q: LimitQuery = read_query(req.uri())?;
        let scope = limit_scope(&p.project, q.env, q.key_id, q.model)?;
        let target = scope.target();
        if !gw
            .store
            .clear_rate_limit(&scope, now_ms(), &actor)
            .await
            .map_err(store_error)?
        {
            return Err(GatewayError::NotFound {
                what: "rate limit",
                id: target,
            });
        }
        Ok(json!({ "object": "rate_limit", "scope": scope, "deleted": true }))
    }
    .await;
    reply(result, StatusCode::OK)
}

/// Output caps of the caller's project (no `key_id`) or of one of its keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapBody {
    key_id: Option<String>,
    max_output_tokens: Option<u64>,
    over: Option<String>,
    default_output_tokens: Option<u64>,
    temperature_min: Option<f64>,
    temperature_max: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapQuery {
    key_id: Option<String>,
}

async fn list_caps(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let result = async {
        let p = caller(&gw, &headers, AdminAction::ReadLimits)?;
        let caps = gw
            .store
            .list_output_caps(Some(&p.project))
            .await
            .map_err(store_error)?;
        Ok(json!({ "object": "list", "data": caps }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn set_cap(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    let result = async {
        let p = caller(&gw, req.headers(), AdminAction::ChangeLimits)?;
        let actor = actor(&p, &req);
        let b: CapBody = read_body(req, false).await?;
        check_text(b.key_id.as_deref(), "key_id")?;
        let over = match b.over.as_deref() {
            None => tollgate_store::OverCap::Clamp,
            Some(o) => o.parse().map_err(|e: String| invalid(e, "over"))?,
        };
        let cap = tollgate_store::OutputCap {
            max_output_tokens: b.max_output_tokens,
            over,
            default_output_tokens: b.default_output_tokens,
            temperature_min: b.temperature_min,
            temperature_max: b.temperature_max,
        };
        let rule = gw
            .store
            .set_output_cap(&p.project, b.key_id.as_deref(), &cap, now_ms(), &actor)
            .await
            .map_err(store_error)?;
        serde_json::to_value(rule).map_err(|_| GatewayError::Internal)
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn clear_cap(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    // `move`: the request (whose body is not `Sync`) must not be borrowed across awaits.
    let result = async move {
        let p = caller(&gw, req.headers(), AdminAction::ChangeLimits)?;
        let actor = actor(&p, &req);
        let q: CapQuery = read_query(req.uri())?;
        check_text(q.key_id.as_deref(), "key_id")?;
        let cleared = gw
            .store
            .clear_output_cap(&p.project, q.key_id.as_deref(), now_ms(), &actor)
            .await
            .map_err(store_error)?;
        if !cleared {
            return Err(GatewayError::NotFound {
                what: "output cap",
                id: format!("{}/{}", p.project, q.key_id.as_deref().unwrap_or("*")),
            });
        }
        Ok(json!({ "object": "output_cap", "project": p.project, "key_id": q.key_id, "deleted": true }))
    }
    .await;
    reply(result, StatusCode::OK)
}

pub(crate) fn reply(result: Result<Value, GatewayError>, ok: StatusCode) -> Response {
    match result {
        Ok(v) => (ok, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Key metadata: never the digest, never a secret.
fn key_json(k: &KeyRecord, now: i64) -> Value {
    json!({
        "id": k.id, "prefix": k.prefix, "project": k.project, "env": k.env, "role": k.role,
        "name": k.name, "created_at_ms": k.created_at_ms, "last_used_at_ms": k.last_used_at_ms,
        "expires_at_ms": k.expires_at_ms, "state": k.state(now),
        "due_for_rotation": k.due_for_rotation(now),
        "revoked_at_ms": k.revoked_at_ms, "revoke_reason": k.revoke_reason,
        "suspended_at_ms": k.suspended_at_ms, "suspend_reason": k.suspend_reason,
        "rotated_to": k.rotated_to, "retire_at_ms": k.retire_at_ms, "lane": k.lane,
    })
}

/// Reads a JSON body into `T`; an empty body counts as `{}` when `empty_ok`.
pub(crate) async fn read_body<T: serde::de::DeserializeOwned>(
    req: Request<Body>,
    empty_ok: bool,
) -> Result<T, GatewayError> {
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| GatewayError::BodyTooLarge {
            limit: MAX_BODY_BYTES,
        })?;
    let text: &[u8] = if empty_ok && bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let param = offending_param(&e.path().to_string(), &e.inner().to_string()).map(Into::into);
        GatewayError::InvalidRequest {
            message: format!("invalid request body: {}", e.inner()),
            param,
        }
    })
}

/// Checks a credential reference given over the admin API: a reference (the message
/// never echoes the value: it may be a pasted secret), and not one that reads a file
/// or runs a command on the gateway's host (an operator's, with the CLI there).
pub(crate) fn api_credential_ref(r: &str, param: &'static str) -> Result<(), GatewayError> {
    tollgate_store::validate_secret_ref(r).map_err(|e| invalid(e.to_string(), param))?;
    match ["exec:", "file:"].into_iter().find(|s| r.starts_with(s)) {
        Some(scheme) => Err(GatewayError::HostCredentialRef { scheme }),
        None => Ok(()),
    }
}

/// Refuses a body member other than `only`, naming it in `param` (at most 64
/// characters of it); `usage` says what the body is.
pub(crate) fn only_member(
    body: &serde_json::Map<String, Value>,
    only: &str,
    usage: &str,
) -> Result<(), GatewayError> {
    match body.keys().find(|k| k.as_str() != only) {
        Some(other) => {
            let other: String = other.chars().take(64).collect();
            Err(GatewayError::InvalidRequest {
                message: format!("unknown field {other:?}: {usage}"),
                param: Some(other.into()),
            })
        }
        None => Ok(()),
    }
}

/// An audit detail as the admin API shows it: an `exec:` credential reference (in
/// entries written before they were stored that way) shows its program only.
fn shown_detail(detail: &str) -> Value {
    let mut v = serde_json::from_str::<Value>(detail).unwrap_or(Value::Null);
    if let Some(Value::String(r)) = v.get_mut("upstream_api_key") {
        *r = tollgate_store::shown_secret_ref(r);
    }
    v
}

/// The field a body or query error is about, for `param`: an unknown or missing
/// field's name, or the path of a field whose value is wrong; `None` for the body as a
/// whole (not JSON, say).
fn offending_param(path: &str, message: &str) -> Option<String> {
    for lead in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.strip_prefix(lead) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    (path != "." && !path.is_empty()).then(|| path.to_owned())
}

pub(crate) fn read_query<T: serde::de::DeserializeOwned + Default>(
    uri: &Uri,
) -> Result<T, GatewayError> {
    let Some(q) = uri.query() else {
        return Ok(T::default());
    };
    serde_urlencoded_like(q)
}

/// Parses a query string into `T` through a JSON object of strings.
fn serde_urlencoded_like<T: serde::de::DeserializeOwned>(q: &str) -> Result<T, GatewayError> {
    let mut map = serde_json::Map::new();
    for pair in q.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let param = offending_param(&e.path().to_string(), &e.inner().to_string()).map(Into::into);
        GatewayError::InvalidRequest {
            message: format!("invalid query: {}", e.inner()),
            param,
        }
    })
}

pub(crate) fn invalid(message: impl Into<String>, param: &'static str) -> GatewayError {
    GatewayError::InvalidRequest {
        message: message.into(),
        param: Some(param.into()),
    }
}

/// Environment names: 1–64 of `[a-z0-9_-]`, starting alphanumeric (as the store).
pub(crate) fn check_env(env: &str) -> Result<(), GatewayError> {
    let ok = !env.is_empty()
        && env.len() <= 64
        && env.starts_with(|c: char| c.is_ascii_alphanumeric())
        && env
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("invalid env name {env:?}: use 1-64 lowercase letters, digits, '-' or '_'"),
            "env",
        ))
    }
}

pub(crate) fn check_text(text: Option<&str>, param: &'static str) -> Result<(), GatewayError> {
    match text {
        Some(t) if t.chars().count() > MAX_TEXT_CHARS => Err(invalid(
            format!("{param} is longer than {MAX_TEXT_CHARS} characters"),
            param,
        )),
        _ => Ok(()),
    }
}

/// A duration like `30s`, `15m`, `24h` or `7d`, in milliseconds (zero allowed).
fn span_ms(s: &str, param: &'static str) -> Result<i64, GatewayError> {
    let bad = || {
        invalid(
            format!("{param} {s:?} is not a duration like 30m, 24h or 7d"),
            param,
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(n.saturating_mul(unit_ms))
}

/// A duration that must be longer than zero.
pub(crate) fn positive_span(s: &str, param: &'static str) -> Result<i64, GatewayError> {
    let ms = span_ms(s, param)?;
    if ms > 0 {
        Ok(ms)
    } else {
        Err(invalid(format!("{param} must be longer than zero"), param))
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix millisecond time.
fn day_of(ms: i64) -> String {
    // Howard Hinnant's civil-from-days.
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Store failures as answers: a refused change is bad input, a lost row is 404.
pub(crate) fn store_error(e: StoreError) -> GatewayError {
    match e {
        StoreError::Invalid(m) | StoreError::Conflict(m) => GatewayError::InvalidRequest {
            message: m,
            param: None,
        },
        StoreError::NotFound(m) => GatewayError::NotFound {
            what: "resource",
            id: m,
        },
        other => {
            tracing::error!(error = %other, "admin API store failure");
            GatewayError::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_days_and_text_limits() {
        assert_eq!(span_ms("24h", "grace"), Ok(86_400_000));
        assert_eq!(span_ms("0s", "grace"), Ok(0));
        assert!(span_ms("7w", "grace").is_err());
        assert!(span_ms("-3d", "grace").is_err());
        assert!(span_ms("", "grace").is_err());
        assert!(span_ms("30", "grace").is_err());
        assert!(positive_span("0s", "since").is_err());
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_709_251_200_000), "2024-03-01");
        assert!(check_env("prod").is_ok());
        assert!(check_env("Prod!").is_err());
        assert!(check_text(Some(&"x".repeat(201)), "name").is_err());
        assert!(check_text(Some(&"x".repeat(200)), "name").is_ok());
    }

    /// `docs/admin-openapi.yaml` describes exactly the routes served.
    #[test]
    fn openapi_lists_every_route() {
        let text = include_str!("../../../docs/admin-openapi.yaml");
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
        assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_mapping().unwrap() {
            for (method, _) in item.as_mapping().unwrap() {
                documented.push((
                    method.as_str().unwrap().to_owned(),
                    path.as_str().unwrap().to_owned(),
                ));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }
}
