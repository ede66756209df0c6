//! Projects over the admin API: gateway-wide management (`/admin/v1/projects…`) by keys
//! of the reserved `_gateway` project, and a project's own settings
//! (`PATCH /admin/v1/project`) by its admins.
//!
//! Who may do what:
//! - `POST/GET/PATCH/DELETE /admin/v1/projects…`: an `admin` key of `_gateway` (a
//!   `viewer` of `_gateway` may read). Any other key gets 403 (`permission_denied`).
//! - `POST /admin/v1/projects/{name}/keys`: how a gateway admin acts on another
//!   project — it mints that project's keys (its first admin key, typically); every
//!   other per-project route stays scoped to the caller's own project, so a `_gateway`
//!   key reaching for another project's keys there gets 404 like any other key.
//! - `PATCH /admin/v1/project`: an `admin` of the project sets its own settings.
//!
//! Same rules as `tollgate projects`: names starting with `_` are reserved (refused on
//! create and delete), a project with keys that are not revoked cannot be deleted (its
//! revoked keys go with it), and bad input is refused (400, naming the field) before
//! the store is touched. Every change is audited by the store in the same transaction
//! as `key:<caller key id>` from `admin-api <peer ip>`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_store::{NewProject, Role, StoreError, GATEWAY_PROJECT, RESERVED_PROJECT_PREFIX};

use crate::accept::now_ms;
use crate::admin::{self, invalid, reply, store_error, AdminAction, CreateBody};
use crate::error::GatewayError;
use crate::keys::Principal;
use crate::server::Gateway;

/// Longest project name, in characters (as the store).
const MAX_NAME_CHARS: usize = 64;

/// The gateway-wide project routes, merged into [`admin::routes`].
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route(
            "/admin/v1/projects",
            post(create_project).get(list_projects),
        )
        .route(
            "/admin/v1/projects/{name}",
            get(show_project)
                .patch(patch_project)
                .delete(delete_project),
        )
        .route("/admin/v1/projects/{name}/keys", post(create_project_key))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProjectBody {
    name: String,
    /// A secret reference for the project's default provider credential.
    upstream_api_key: Option<String>,
    /// `30d`, `12h`, …: the longest lifetime of the project's new keys.
    max_key_age: Option<String>,
    anomaly_auto_suspend: Option<bool>,
}

/// What a gateway-wide call wants, for the role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GatewayAction {
    Read,
    Change,
}

/// The caller, if it is a `_gateway` key allowed `action`.
fn gateway_caller(
    gw: &Gateway,
    headers: &HeaderMap,
    action: GatewayAction,
) -> Result<Arc<Principal>, GatewayError> {
    let p = crate::authenticate::run(&gw.keys, headers)?;
    let allowed = p.project == GATEWAY_PROJECT
        && match action {
            GatewayAction::Read => matches!(p.role, Role::Admin | Role::Viewer),
            GatewayAction::Change => p.role == Role::Admin,
        };
    if allowed {
        Ok(p)
    } else {
        Err(GatewayError::GatewayAdminOnly {
            action: match action {
                GatewayAction::Read => "list or read projects",
                GatewayAction::Change => "create, change or delete projects or their keys",
            },
        })
    }
}

async fn create_project(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    let result = async {
        let p = gateway_caller(&gw, req.headers(), GatewayAction::Change)?;
        let actor = admin::actor(&p, &req);
        let body: CreateProjectBody = admin::read_body(req, false).await?;
        check_name(&body.name)?;
        if let Some(r) = &body.upstream_api_key {
            admin::api_credential_ref(r, "upstream_api_key")?;
        }
        let max_key_age_ms = body
            .max_key_age
            .as_deref()
            .map(|s| admin::positive_span(s, "max_key_age"))
            .transpose()?;
        let settings = NewProject {
            upstream_api_key: body.upstream_api_key,
            max_key_age_ms,
            anomaly_auto_suspend: body.anomaly_auto_suspend,
        };
        gw.store
            .create_project_with(&body.name, &settings, now_ms(), &actor)
            .await
            .map_err(|e| project_error(e, &body.name))?;
        admin::project_json(&gw, &body.name).await
    }
    .await;
    reply(result, StatusCode::CREATED)
}

async fn list_projects(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let result = async {
        gateway_caller(&gw, &headers, GatewayAction::Read)?;
        let list = gw.store.list_projects().await.map_err(store_error)?;
        let data: Vec<Value> = list
            .iter()
            .map(|s| {
                let p = &s.project;
                json!({
                    "object": "project", "name": p.name, "created_at_ms": p.created_at_ms,
                    "max_key_age_ms": p.effective_max_key_age_ms(),
                    "upstream_api_key": p.upstream_api_key.as_deref()
                        .map(tollgate_store::shown_secret_ref),
                    "anomaly_auto_suspend": p.anomaly_auto_suspend,
                    "anomaly_auto_suspend_effective": p.anomaly_auto_suspend
                        .unwrap_or(gw.config.anomaly.auto_suspend),
                    "active_keys": s.active_keys,
                    "reserved": p.name.starts_with(RESERVED_PROJECT_PREFIX),
                })
            })
            .collect();
        Ok(json!({ "object": "list", "data": data }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn show_project(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        gateway_caller(&gw, &headers, GatewayAction::Read)?;
        admin::project_json(&gw, &name)
            .await
            .map_err(|e| not_found_as_project(e, &name))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn delete_project(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request<Body>,
) -> Response {
    // `move`: the request must not be borrowed across an await (its body is not Sync).
    let result = async move {
        let p = gateway_caller(&gw, req.headers(), GatewayAction::Change)?;
        let actor = admin::actor(&p, &req);
        if name.starts_with(RESERVED_PROJECT_PREFIX) {
            return Err(invalid(
                format!("project {name:?} is reserved and cannot be deleted"),
                "name",
            ));
        }
        gw.store
            .delete_project(&name, now_ms(), &actor)
            .await
            .map_err(|e| project_error(e, &name))?;
        Ok(json!({ "object": "project.deleted", "name": name, "deleted": true }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn patch_project(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request<Body>,
) -> Response {
    let result = async {
        let p = gateway_caller(&gw, req.headers(), GatewayAction::Change)?;
        let actor = admin::actor(&p, &req);
        let auto_suspend = read_settings(req).await?;
        set_auto_suspend(&gw, &name, auto_suspend, &actor).await
    }
    .await;
    reply(result, StatusCode::OK)
}

/// `PATCH /admin/v1/project`: an admin of the project sets its own settings.
pub async fn patch_own_project(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    let result = async {
        let p = admin::caller(&gw, req.headers(), AdminAction::ChangeProject)?;
        let actor = admin::actor(&p, &req);
        let auto_suspend = read_settings(req).await?;
        set_auto_suspend(&gw, &p.project, auto_suspend, &actor).await
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn create_project_key(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    req: Request<Body>,
) -> Response {
    let result = async {
        let p = gateway_caller(&gw, req.headers(), GatewayAction::Change)?;
        let actor = admin::actor(&p, &req);
        let body: CreateBody = admin::read_body(req, false).await?;
        let known = gw.store.project_by_name(&name).await.map_err(store_error)?;
        if known.is_none() {
            return Err(GatewayError::NotFound {
                what: "project",
                id: name,
            });
        }
        admin::create_key_in(&gw, &name, &actor, body).await
    }
    .await;
    reply(result, StatusCode::CREATED)
}

/// The settings body: `{"anomaly_auto_suspend": true | false | null}` (null: follow the
/// gateway's `anomaly.auto_suspend`).
async fn read_settings(req: Request<Body>) -> Result<Option<bool>, GatewayError> {
    let body: serde_json::Map<String, Value> = admin::read_body(req, false).await?;
    let usage = "the body is {\"anomaly_auto_suspend\": true | false | null}";
    admin::only_member(&body, "anomaly_auto_suspend", usage)?;
    match body.get("anomaly_auto_suspend") {
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Null) => Ok(None),
        _ => Err(invalid(
            format!("anomaly_auto_suspend is required: {usage}"),
            "anomaly_auto_suspend",
        )),
    }
}

async fn set_auto_suspend(
    gw: &Gateway,
    name: &str,
    auto_suspend: Option<bool>,
    actor: &tollgate_store::Actor,
) -> Result<Value, GatewayError> {
    gw.store
        .set_project_anomaly_auto_suspend(name, auto_suspend, now_ms(), actor)
        .await
        .map_err(|e| project_error(e, name))?;
    admin::project_json(gw, name)
        .await
        .map_err(|e| not_found_as_project(e, name))
}

/// A name a user may create: checked here first so an oversized one is refused
/// without being echoed.
fn check_name(name: &str) -> Result<(), GatewayError> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            format!("name is longer than {MAX_NAME_CHARS} characters"),
            "name",
        ));
    }
    tollgate_store::validate_project_name(name).map_err(|e| invalid(e.to_string(), "name"))
}

/// Store failures of a project operation: an unknown project is a 404 that names it.
fn project_error(e: StoreError, name: &str) -> GatewayError {
    match e {
        StoreError::NotFound(_) => GatewayError::NotFound {
            what: "project",
            id: name.to_owned(),
        },
        StoreError::Conflict(m) => invalid(m, "name"),
        other => store_error(other),
    }
}

fn not_found_as_project(e: GatewayError, name: &str) -> GatewayError {
    match e {
        GatewayError::NotFound { .. } => GatewayError::NotFound {
            what: "project",
            id: name.to_owned(),
        },
        other => other,
    }
}
