//! Model aliases and access lists over the admin API, for the caller's own project:
//!
//! - `GET /admin/v1/models/aliases`: the aliases the project sees (the gateway's, with
//!   the project's own over them; each says where it comes from). Any role.
//! - `PUT /admin/v1/models/aliases` `{"alias", "model"}`: set a project alias. Admin.
//! - `DELETE /admin/v1/models/aliases?alias=NAME`: remove one (404 if none). Admin.
//! - `GET /admin/v1/models/access`: the project's allow- and deny-lists. Any role.
//! - `PUT /admin/v1/models/access` `{"kind": "allow"|"deny", "env"?, "models": […]}`:
//!   replace a list (`env` omitted: every environment; an empty list removes it). Admin.
//! - `GET /admin/v1/models/catalog`: the catalog this server prices and checks with,
//!   each entry saying where it comes from (`builtin`, `config`, `store`). Any role.
//! - `PUT /admin/v1/models/catalog/{model}`: add or replace the store's entry (a
//!   `[[models]]` entry's fields as JSON, prices in USD per 1M tokens). The catalog
//!   is gateway-wide: an `admin` key of the `_gateway` project only.
//! - `DELETE /admin/v1/models/catalog/{model}`: remove the store's entry (404 if none);
//!   the config's or built-in entry of that id applies again. `_gateway` admin.
//!
//! The same rules as `tollgate models alias|allow|deny`; every change is audited by the
//! store in the transaction that makes it, and servers apply it within
//! `keys.refresh_interval_ms`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, put};
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_store::{AccessKind, Role, GATEWAY_PROJECT};

use crate::accept::now_ms;
use crate::admin::{self, invalid, reply, store_error, AdminAction};
use crate::catalog::{self, Catalog, ModelEntry, RawModel};
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
        .route("/admin/v1/models/catalog", get(list_catalog))
        .route(
            "/admin/v1/models/catalog/{model}",
            put(set_catalog_entry).delete(remove_catalog_entry),
        )
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
        if gw.limits.catalog().current().get(&b.alias).is_some() {
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

async fn list_catalog(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let result = async {
        admin::caller(&gw, &headers, AdminAction::ReadLimits)?;
        let stored = gw.store.list_catalog_models().await.map_err(store_error)?;
        let builtin = Catalog::builtin();
        let data: Vec<Value> = gw
            .limits
            .catalog()
            .current()
            .entries()
            .map(|e| {
                let from = if stored.iter().any(|s| s.id == e.id) {
                    "store"
                } else if builtin.get(&e.id) == Some(e) {
                    "builtin"
                } else {
                    "config"
                };
                let mut v = entry_json(e);
                v["from"] = json!(from);
                v
            })
            .collect();
        Ok(json!({ "object": "list", "price_unit": "USD per 1M tokens", "data": data }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn set_catalog_entry(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    let result = async move {
        let p = gateway_admin(&gw, req.headers())?;
        let actor = admin::actor(&p, &req);
        let mut body: Value = admin::read_body(req, false).await?;
        let Some(fields) = body.as_object_mut() else {
            return Err(invalid("the body must be a JSON object", "body"));
        };
        if fields
            .get("id")
            .is_some_and(|v| v.as_str() != Some(id.as_str()))
        {
            return Err(invalid(format!("id must be {id:?}, as in the path"), "id"));
        }
        fields.insert("id".into(), json!(id));
        let raw: RawModel =
            serde_json::from_value(body).map_err(|e| GatewayError::InvalidRequest {
                message: format!("invalid catalog entry: {e}"),
                param: None,
            })?;
        let entry = catalog::validate_entry(&raw).map_err(|e| GatewayError::InvalidRequest {
            message: format!("invalid catalog entry {id:?}: {e}"),
            param: None,
        })?;
        gw.store
            .set_catalog_model(&catalog::stored_from_entry(&entry), now_ms(), &actor)
            .await
            .map_err(store_error)?;
        let mut v = entry_json(&entry);
        v["from"] = json!("store");
        Ok(v)
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn remove_catalog_entry(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    let result = async move {
        let p = gateway_admin(&gw, req.headers())?;
        let actor = admin::actor(&p, &req);
        if !gw
            .store
            .remove_catalog_model(&id, now_ms(), &actor)
            .await
            .map_err(store_error)?
        {
            return Err(GatewayError::NotFound {
                what: "stored catalog entry",
                id,
            });
        }
        Ok(json!({ "object": "model_catalog_entry", "id": id, "deleted": true }))
    }
    .await;
    reply(result, StatusCode::OK)
}

/// The caller, if it is an `admin` key of `_gateway`: the catalog is gateway-wide.
fn gateway_admin(
    gw: &Gateway,
    headers: &HeaderMap,
) -> Result<Arc<crate::keys::Principal>, GatewayError> {
    let p = crate::authenticate::run(&gw.keys, headers)?;
    if p.project == GATEWAY_PROJECT && p.role == Role::Admin {
        Ok(p)
    } else {
        Err(GatewayError::GatewayAdminOnly {
            action: "change the model catalog",
        })
    }
}

/// An entry as the API shows it (prices as decimal strings, USD per 1M tokens).
fn entry_json(m: &ModelEntry) -> Value {
    let price = |p: Option<catalog::Price>| p.map_or(Value::Null, |p| json!(p.usd_per_1m()));
    json!({
        "object": "model_catalog_entry",
        "id": m.id,
        "family": catalog::family_name(m.family),
        "context_window": m.context_window,
        "max_output_tokens": m.max_output_tokens,
        "input_per_1m": m.input.usd_per_1m(),
        "cached_input_per_1m": price(m.cached_input),
        "output_per_1m": price(m.output),
        "latency": m.latency,
        "capabilities": m.capabilities,
        "best_use": m.best_use,
        "prices_checked": m.prices_checked,
    })
}
