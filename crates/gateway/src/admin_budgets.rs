//! `/admin/v1/budgets`: the spend budgets of the caller's project, mirroring
//! `/admin/v1/limits`. Every role may read them with what was spent this period (a
//! caller should know its budget); only the project's admins set or clear them. Changes
//! are audited by the store (`budgets.set` / `budgets.clear`) and reach every server
//! within a second.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_store::BudgetScope;

use crate::accept::now_ms;
use crate::admin::{self, invalid, reply, store_error, AdminAction};
use crate::error::GatewayError;
use crate::server::Gateway;

/// The budget routes, merged into [`admin::routes`].
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new().route(
        "/admin/v1/budgets",
        get(list_budgets).put(set_budget).delete(clear_budget),
    )
}

/// The body of a PUT: the scope (no env and no key: the whole project) and the
/// limits, as USD strings or numbers (`"5"`, `0.25`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    env: Option<String>,
    key_id: Option<String>,
    daily_usd: Option<Value>,
    monthly_usd: Option<Value>,
    soft_percent: Option<u32>,
}

/// The query of a DELETE: the scope.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeQuery {
    env: Option<String>,
    key_id: Option<String>,
}

fn scope(
    project: &str,
    env: Option<String>,
    key_id: Option<String>,
) -> Result<BudgetScope, GatewayError> {
    if let Some(env) = &env {
        admin::check_env(env)?;
    }
    admin::check_text(key_id.as_deref(), "key_id")?;
    if env.is_some() && key_id.is_some() {
        return Err(invalid(
            "a budget governs the project, one environment or one key: give env or key_id, \
             not both",
            "key_id",
        ));
    }
    Ok(BudgetScope {
        project: project.to_owned(),
        env,
        key_id,
    })
}

/// A USD amount given as a string or a number, in nano-USD.
fn usd(v: Option<Value>, param: &'static str) -> Result<Option<u64>, GatewayError> {
    let text = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        // A float prints as `5e-5` when small; nano-USD is the finest unit kept.
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(whole), _) => whole.to_string(),
            (None, Some(f)) if f.is_finite() && f >= 0.0 => format!("{f:.9}"),
            _ => n.to_string(),
        },
        Some(_) => return Err(invalid(format!("{param} must be an amount of USD"), param)),
    };
    match crate::budgets::parse_usd(&text) {
        Ok(0) => Err(invalid(format!("{param} must be more than 0"), param)),
        Ok(v) => Ok(Some(v)),
        Err(e) => Err(invalid(format!("{param}: {e}"), param)),
    }
}

async fn list_budgets(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let result = async {
        let p = admin::caller(&gw, &headers, AdminAction::ReadLimits)?;
        let data = crate::budgets::report(&gw.store, Some(&p.project), now_ms())
            .await
            .map_err(store_error)?;
        Ok(json!({ "object": "list", "data": data }))
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn set_budget(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    let result = async {
        let p = admin::caller(&gw, req.headers(), AdminAction::ChangeLimits)?;
        let actor = admin::actor(&p, &req);
        let b: BudgetBody = admin::read_body(req, false).await?;
        let daily = usd(b.daily_usd, "daily_usd")?;
        let monthly = usd(b.monthly_usd, "monthly_usd")?;
        if daily.is_none() && monthly.is_none() {
            return Err(invalid(
                "set daily_usd, monthly_usd or both (amounts of USD)",
                "daily_usd",
            ));
        }
        if b.soft_percent.is_some_and(|p| !(1..=100).contains(&p)) {
            return Err(invalid(
                "soft_percent is a percentage from 1 to 100",
                "soft_percent",
            ));
        }
        let scope = scope(&p.project, b.env, b.key_id)?;
        let budget = gw
            .store
            .set_budget(&scope, daily, monthly, b.soft_percent, now_ms(), &actor)
            .await
            .map_err(store_error)?;
        serde_json::to_value(budget).map_err(|_| GatewayError::Internal)
    }
    .await;
    reply(result, StatusCode::OK)
}

async fn clear_budget(State(gw): State<Arc<Gateway>>, req: Request<Body>) -> Response {
    // `move`: the request (whose body is not `Sync`) must not be borrowed across awaits.
    let result = async move {
        let p = admin::caller(&gw, req.headers(), AdminAction::ChangeLimits)?;
        let actor = admin::actor(&p, &req);
        let q: ScopeQuery = admin::read_query(req.uri())?;
        let scope = scope(&p.project, q.env, q.key_id)?;
        let target = scope.target();
        if !gw
            .store
            .clear_budget(&scope, now_ms(), &actor)
            .await
            .map_err(store_error)?
        {
            return Err(GatewayError::NotFound {
                what: "budget",
                id: target,
            });
        }
        Ok(json!({ "object": "budget", "scope": scope, "deleted": true }))
    }
    .await;
    reply(result, StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_read_from_strings_whole_numbers_and_small_floats() {
        let nanos = |v: Value| usd(Some(v), "daily_usd").map_err(|e| e.message());
        assert_eq!(nanos(Value::from("0.5")), Ok(Some(500_000_000)));
        assert_eq!(nanos(Value::from(10)), Ok(Some(10_000_000_000)));
        // serde_json prints this float as 5e-5.
        assert_eq!(nanos(Value::from(0.00005)), Ok(Some(50_000)));
        assert_eq!(nanos(Value::from(2.25)), Ok(Some(2_250_000_000)));
        assert!(nanos(Value::from(-1.5)).is_err());
        assert!(nanos(Value::from(0.0)).is_err());
        assert_eq!(usd(None, "daily_usd").ok(), Some(None));
    }
}
