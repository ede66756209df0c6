//! Model aliases and access lists over the admin API, for the caller's own project:
//!
//! - `GET /admin/v1/models/aliases`: the aliases the project sees (the gateway's, with
//!   the project's own over them; each says where it comes from). Any role.
//! - `PUT /admin/v1/models/aliases` `{"alias", "model"}`: set a project alias. Admin.
//! - `DELETE /admin/v1/models/aliases?alias=NAME`: remove one (404 if none). Admin.
//! - `GET /admin/v1/models/access`: the project's allow- and deny-lists. Any role.
//! - `PUT /admin/v1/models/access` `{"kind": "allow"|"deny", "env"?, "models": […]}`:
//!   replace a list (`env` omitted: every environment; an empty list removes it). Admin.
//!
//! The same rules as `tollgate models alias|allow|deny`; every change is audited by the
//! store in the transaction that makes it, and servers apply it within
//! `keys.refresh_interval_ms`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_store::AccessKind;

use crate::accept::now_ms;
use crate::admin::{self, invalid, reply, store_error, AdminAction};
use crate::error::GatewayError;
use crate::server::Gateway;

/// The model routes, merged into [`admin::routes`].
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route(
            "/admin/v1/models/aliases",
            get(list_aliases).put(set_alias).delete(unset_alias),
        )
        .route("/admin/v1/models/access", get(list_access).put(set_access))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    alias: String,
    model: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasQuery {
    alias: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessBody {
    kind: String,
    env: Option<String>,
    models: Vec<String>,
}

async fn list_aliases(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let result = async {
        let p = admin::caller(&gw, &headers, AdminAction::ReadLimits)?;
        let own = gw
            .store
            .list_model_aliases(Some(&p.project))
            .await
            .map_err(store_error)?;
        let mut data: Vec<Value> = gw
            .config
            .aliases
            .iter()
            .filter(|(a, _)| !own.iter().any(|o| &o.alias == *a))
            .map(|(a, m)| json!({ "alias": a, "model": m, "from": "gateway" }))
            .collect();
        data.extend(
            own.iter()
                .map(|o| json!({ "alias": o.alias, "model": o.model, "from": "project", "updated_at_ms": o.updated_at_ms })),
        );
        Ok(json!({ "object": "list", "data": data }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn set_alias(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    let result = async {
        let p = admin::caller(&gw, req.headers(), AdminAction::ChangeLimits)?;
        let actor = admin::actor(&p, &req);
        let b: AliasBody = admin::read_body(req, false).await?;
        if gw.config.catalog.get(&b.alias).is_some() {
            return Err(invalid(
                format!(
                    "{:?} is a model of the catalog; an alias may not hide it",
                    b.alias
                ),
                "alias",
            ));
        }
        if gw.config.aliases.contains_key(&b.model) {
            return Err(invalid(
                format!(
                    "{:?} is itself an alias; aliases do not chain, name a model id",
                    b.model
                ),
                "model",
            ));
        }
        let a = gw
            .store
            .set_model_alias(&p.project, &b.alias, &b.model, now_ms(), &actor)
            .await
            .map_err(store_error)?;
        serde_json::to_value(a).map_err(|_| GatewayError::Internal)
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn unset_alias(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    // `move`: the request (whose body is not `Sync`) must not be borrowed across awaits.
    let result = async move {
        let p = admin::caller(&gw, req.headers(), AdminAction::ChangeLimits)?;
        let actor = admin::actor(&p, &req);
        let q: AliasQuery = admin::read_query(req.uri())?;
        let Some(alias) = q.alias else {
            return Err(invalid("name the alias: ?alias=NAME", "alias"));
        };
        if !gw
            .store
            .unset_model_alias(&p.project, &alias, now_ms(), &actor)
            .await
            .map_err(store_error)?
        {
            return Err(GatewayError::NotFound {
                what: "model alias",
                id: alias,
            });
        }
        Ok(json!({ "object": "model_alias", "alias": alias, "deleted": true }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn list_access(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let result = async {
        let p = admin::caller(&gw, &headers, AdminAction::ReadLimits)?;
        let lists = gw
            .store
            .list_model_access(Some(&p.project))
            .await
            .map_err(store_error)?;
        Ok(json!({ "object": "list", "data": lists }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn set_access(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    let result = async {
        let p = admin::caller(&gw, req.headers(), AdminAction::ChangeLimits)?;
        let actor = admin::actor(&p, &req);
        let b: AccessBody = admin::read_body(req, false).await?;
        let kind: AccessKind = b.kind.parse().map_err(|e: String| invalid(e, "kind"))?;
        if let Some(env) = &b.env {
            admin::check_env(env)?;
        }
        let changed = gw
            .store
            .set_model_access(
                &p.project,
                b.env.as_deref(),
                kind,
                &b.models,
                now_ms(),
                &actor,
            )
            .await
            .map_err(store_error)?;
        Ok(json!({
            "object": "model_access", "project": p.project, "env": b.env, "kind": kind,
            "models": b.models, "changed": changed
        }))
    }
    .await;
    reply(result, StatusCode::OK)
}
