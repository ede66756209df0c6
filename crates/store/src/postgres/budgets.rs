//! Spend budgets on PostgreSQL (migration 7): set, clear, list, the spend sums that seed
//! and re-sync the servers' counters, and the once-per-period soft-threshold claim.

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use super::{audit, bump_limits_version, get_u64, project_in_tx, PostgresStore};
use crate::model::{Actor, Budget, BudgetPeriod, BudgetScope, Spend};
use crate::{detail, to_i64, Result, StoreError};

const BUDGET_COLUMNS: &str = "project, env, key_id, daily_usd_nanos, monthly_usd_nanos, \
                              soft_percent, created_at_ms, updated_at_ms";

impl PostgresStore {
    pub async fn set_budget(&self, b: &Budget, actor: &Actor) -> Result<Budget> {
        let scope = &b.scope;
        let mut tx = self.pool.begin().await?;
        project_in_tx(&mut tx, &scope.project).await?;
        if let Some(key_id) = &scope.key_id {
            let owner: Option<String> =
                sqlx::query_scalar("SELECT project FROM keys WHERE id = $1")
                    .bind(key_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if owner.as_deref() != Some(scope.project.as_str()) {
                return Err(StoreError::NotFound(format!(
                    "key {key_id:?} in project {:?}",
                    scope.project
                )));
            }
        }
        let (env, key_id) = scope_columns(scope);
        sqlx::query(
            "INSERT INTO budgets (project, env, key_id, daily_usd_nanos, monthly_usd_nanos, \
             soft_percent, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (project, env, key_id) DO UPDATE SET \
             daily_usd_nanos = excluded.daily_usd_nanos, \
             monthly_usd_nanos = excluded.monthly_usd_nanos, \
             soft_percent = excluded.soft_percent, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&scope.project)
        .bind(env)
        .bind(key_id)
        .bind(b.daily_usd_nanos.map(to_i64))
        .bind(b.monthly_usd_nanos.map(to_i64))
        .bind(i64::from(b.soft_percent))
        .bind(b.created_at_ms)
        .bind(b.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        let d = detail(serde_json::json!({
            "daily_usd_nanos": b.daily_usd_nanos,
            "monthly_usd_nanos": b.monthly_usd_nanos,
            "soft_percent": b.soft_percent,
        }));
        audit(
            &mut tx,
            actor,
            b.updated_at_ms,
            "budgets.set",
            &scope.target(),
            &d,
        )
        .await?;
        bump_limits_version(&mut tx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {BUDGET_COLUMNS} FROM budgets WHERE project = $1 AND env = $2 AND key_id = $3"
        )))
        .bind(&scope.project)
        .bind(env)
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await?;
        let budget = budget_from_row(&row)?;
        tx.commit().await?;
        Ok(budget)
    }

    pub async fn clear_budget(
        &self,
        scope: &BudgetScope,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let (env, key_id) = scope_columns(scope);
        let removed =
            sqlx::query("DELETE FROM budgets WHERE project = $1 AND env = $2 AND key_id = $3")
                .bind(&scope.project)
                .bind(env)
                .bind(key_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if removed == 0 {
            return Ok(false);
        }
        let d = detail(serde_json::json!({}));
        audit(&mut tx, actor, now_ms, "budgets.clear", &scope.target(), &d).await?;
        bump_limits_version(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn list_budgets(&self, project: Option<&str>) -> Result<Vec<Budget>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {BUDGET_COLUMNS} FROM budgets WHERE ($1::TEXT IS NULL OR project = $1) \
             ORDER BY project COLLATE \"C\", env COLLATE \"C\", key_id COLLATE \"C\""
        )))
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(budget_from_row).collect()
    }

    pub async fn spend_since(
        &self,
        day_start_ms: i64,
        month_start_ms: i64,
        project: Option<&str>,
    ) -> Result<Vec<Spend>> {
        let rows = sqlx::query(
            "SELECT project, env, key_id, \
             SUM(CASE WHEN day_start_ms >= $1 THEN cost_usd_nanos ELSE 0 END)::BIGINT AS day_usd_nanos, \
             SUM(cost_usd_nanos)::BIGINT AS month_usd_nanos \
             FROM usage_spend_daily WHERE day_start_ms >= $2 \
             AND ($3::TEXT IS NULL OR project = $3) \
             GROUP BY project, env, key_id \
             ORDER BY project COLLATE \"C\", env COLLATE \"C\", key_id COLLATE \"C\"",
        )
        .bind(day_start_ms)
        .bind(month_start_ms)
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Spend {
                    project: r.try_get("project")?,
                    env: r.try_get("env")?,
                    key_id: r.try_get("key_id")?,
                    day_usd_nanos: get_u64(r, "day_usd_nanos")?,
                    month_usd_nanos: get_u64(r, "month_usd_nanos")?,
                })
            })
            .collect()
    }

    pub async fn claim_budget_notice(
        &self,
        scope: &BudgetScope,
        period: BudgetPeriod,
        period_start_ms: i64,
    ) -> Result<bool> {
        let column = notified_column(period);
        let (env, key_id) = scope_columns(scope);
        let claimed = sqlx::query(AssertSqlSafe(format!(
            "UPDATE budgets SET {column} = $1 WHERE project = $2 AND env = $3 AND key_id = $4 \
             AND ({column} IS NULL OR {column} < $1)"
        )))
        .bind(period_start_ms)
        .bind(&scope.project)
        .bind(env)
        .bind(key_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }
}

/// The column holding the start of the last announced period.
pub(crate) fn notified_column(period: BudgetPeriod) -> &'static str {
    match period {
        BudgetPeriod::Day => "day_notified_ms",
        BudgetPeriod::Month => "month_notified_ms",
    }
}

/// The stored form of a scope: '' for "any".
fn scope_columns(scope: &BudgetScope) -> (&str, &str) {
    (
        scope.env.as_deref().unwrap_or(""),
        scope.key_id.as_deref().unwrap_or(""),
    )
}

fn budget_from_row(r: &PgRow) -> Result<Budget> {
    let any = |col: &str| -> Result<Option<String>> {
        let v: String = r.try_get(col)?;
        Ok((!v.is_empty()).then_some(v))
    };
    let usd = |col: &str| -> Result<Option<u64>> {
        let v: Option<i64> = r.try_get(col)?;
        Ok(v.and_then(|v| u64::try_from(v).ok()))
    };
    let soft: i64 = r.try_get("soft_percent")?;
    Ok(Budget {
        scope: BudgetScope {
            project: r.try_get("project")?,
            env: any("env")?,
            key_id: any("key_id")?,
        },
        daily_usd_nanos: usd("daily_usd_nanos")?,
        monthly_usd_nanos: usd("monthly_usd_nanos")?,
        soft_percent: u32::try_from(soft).unwrap_or(crate::DEFAULT_SOFT_PERCENT),
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}
