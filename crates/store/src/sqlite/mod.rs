//! The SQLite backend: one file (`tollgate.db`) in WAL mode, embedded migrations.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Arguments as _, AssertSqlSafe, Row};

use crate::model::check_rotation;
use crate::model::CatalogModel;
use crate::model::{
    last_used_by_key, usage_insert_sql, AccessKind, Actor, AuditEntry, CacheOutcome, KeyChange,
    KeyRecord, Lane, LimitScope, ModelAccess, ModelAlias, NewAudit, NewKey, NewProject, OutputCap,
    OutputCapRule, OverCap, Placeholders, Project, ProjectSetting, RateLimitRule, Role,
    UsageFilter, UsageGroup, UsageRecord, UsageTotals, USAGE_COLUMNS,
};
use crate::{detail, now_ms, to_i64, Result, StoreError};

mod budgets;

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// Migrations in order; `version` is the index + 1.
const MIGRATIONS: &[&str] = &[
    include_str!("0001_init.sql"),
    include_str!("0002_lifecycle.sql"),
    include_str!("0003_credentials.sql"),
    include_str!("0004_project_anomaly.sql"),
    include_str!("0005_limits.sql"),
    include_str!("0006_usage_cost.sql"),
    include_str!("0007_budgets.sql"),
    include_str!("0008_lanes.sql"),
    include_str!("0009_model_rules.sql"),
    include_str!("0010_fallbacks.sql"),
    include_str!("0011_usage_cache.sql"),
    include_str!("0012_catalog_models.sql"),
    include_str!("0013_usage_indexes.sql"),
    include_str!("0014_spend_daily.sql"),
    include_str!("0015_usage_key_index.sql"),
];

const KEY_COLUMNS: &str = "id, project, env, role, name, prefix, digest_hex, created_at_ms, \
                           last_used_at_ms, revoked_at_ms, revoke_reason, expires_at_ms, \
                           suspended_at_ms, suspend_reason, rotated_to, retire_at_ms, lane";

const PROJECT_COLUMNS: &str =
    "id, name, created_at_ms, max_key_age_ms, upstream_api_key, anomaly_auto_suspend";

const AUDIT_COLUMNS: &str = "id, at_ms, actor, action, target, detail, source";

#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Connections for reads (WAL readers never wait for the writer).
    pool: SqlitePool,
    /// The one connection every write transaction takes. SQLite lets one writer in at a
    /// time anyway; one connection keeps its page cache across transactions, where a
    /// pool rotating over several connections had each discard its cache at the start
    /// of a transaction because another had written since (the usage table's B-tree
    /// pages read back from the file for nearly every usage batch).
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens `tollgate.db` in `dir`, creating the directory and the file if needed.
    pub async fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        Self::open_file(&dir.join(crate::SQLITE_FILE)).await
    }

    /// Opens a database file, creating it if needed, and runs the migrations.
    pub async fn open_file(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            // Statement journals (a multi-row INSERT … ON CONFLICT has one) in memory,
            // not in a temporary file written for every usage batch.
            .pragma("temp_store", "memory");
        // Processes opening a new file at the same moment can see SQLITE_BUSY from the
        // switch to WAL, which SQLite does not retry with its busy handler: retry the
        // open for as long as the busy timeout would have waited.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let opened = async {
                let writer = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options.clone())
                    .await?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options.clone())
                    .await?;
                let store = Self { pool, writer };
                store.migrate().await?;
                Ok::<_, StoreError>(store)
            }
            .await;
            match opened {
                Err(StoreError::Database(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("5") && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await?;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if version <= current {
                continue;
            }
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?, ?)")
                .bind(version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A write transaction that takes the write lock up front (`BEGIN IMMEDIATE`). A
    /// deferred one that reads first would fail with SQLITE_BUSY, without waiting,
    /// when another connection writes in between; this one waits `busy_timeout`.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn ensure_project(&self, name: &str, actor: &Actor) -> Result<Project> {
        let mut tx = self.write_tx().await?;
        let at = now_ms();
        let created = sqlx::query(
            "INSERT OR IGNORE INTO projects (id, name, created_at_ms) VALUES (?, ?, ?)",
        )
        .bind(format!("proj_{name}"))
        .bind(name)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if created > 0 {
            let d = detail(serde_json::json!({}));
            audit(&mut tx, actor, at, "project.create", name, &d).await?;
        }
        tx.commit().await?;
        self.project_by_name(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("project {name}")))
    }

    pub async fn project_by_name(&self, name: &str) -> Result<Option<Project>> {
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE name = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(project_from_row).transpose()
    }

    pub(crate) async fn set_project_setting(
        &self,
        name: &str,
        setting: ProjectSetting<'_>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<Project> {
        let mut tx = self.write_tx().await?;
        let sql = format!(
            "UPDATE projects SET {} = ? WHERE name = ?",
            setting.column()
        );
        let query = sqlx::query(AssertSqlSafe(sql));
        let query = match setting {
            ProjectSetting::MaxKeyAge(v) => query.bind(v),
            ProjectSetting::Credential(v) => query.bind(v),
            ProjectSetting::AnomalyAutoSuspend(v) => query.bind(v),
        };
        let changed = query.bind(name).execute(&mut *tx).await?.rows_affected();
        if changed == 0 {
            return Err(StoreError::NotFound(format!("project {name:?}")));
        }
        let d = detail(setting.detail());
        audit(&mut tx, actor, now_ms, setting.action(), name, &d).await?;
        bump_keys_version(&mut tx).await?;
        tx.commit().await?;
        self.project_by_name(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("project {name:?}")))
    }

    pub async fn create_project(
        &self,
        name: &str,
        settings: &NewProject,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<Project> {
        let mut tx = self.write_tx().await?;
        let created = sqlx::query(
            "INSERT INTO projects (id, name, created_at_ms, upstream_api_key, max_key_age_ms, \
             anomaly_auto_suspend) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(format!("proj_{name}"))
        .bind(name)
        .bind(now_ms)
        .bind(settings.upstream_api_key.as_deref())
        .bind(settings.max_key_age_ms)
        .bind(settings.anomaly_auto_suspend)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if created == 0 {
            return Err(StoreError::Conflict(format!("project {name:?} exists")));
        }
        let d = detail(serde_json::json!({
            "upstream_api_key": settings.upstream_api_key.as_deref().map(crate::shown_secret_ref),
            "max_key_age_ms": settings.max_key_age_ms,
            "anomaly_auto_suspend": settings.anomaly_auto_suspend,
        }));
        audit(&mut tx, actor, now_ms, "project.create", name, &d).await?;
        bump_keys_version(&mut tx).await?;
        tx.commit().await?;
        self.project_by_name(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("project {name:?}")))
    }

    pub async fn list_projects(&self) -> Result<Vec<Project>> {
        let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY name");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(project_from_row).collect()
    }

    /// The project's environment rows: (env, credential reference, created_at_ms).
    pub async fn project_envs(&self, name: &str) -> Result<Vec<(String, Option<String>, i64)>> {
        let rows = sqlx::query(
            "SELECT env, upstream_api_key, created_at_ms FROM project_envs \
             WHERE project = ? ORDER BY env",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("env")?,
                    r.try_get("upstream_api_key")?,
                    r.try_get("created_at_ms")?,
                ))
            })
            .collect()
    }

    /// Every environment's credential reference: (project, env, reference).
    pub async fn env_credentials(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT project, env, upstream_api_key FROM project_envs \
             WHERE upstream_api_key IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("project")?,
                    r.try_get("env")?,
                    r.try_get("upstream_api_key")?,
                ))
            })
            .collect()
    }

    pub async fn delete_project(&self, name: &str, now_ms: i64, actor: &Actor) -> Result<()> {
        let mut tx = self.write_tx().await?;
        project_in_tx(&mut tx, name).await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM keys WHERE project = ? AND revoked_at_ms IS NULL",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        if live > 0 {
            return Err(StoreError::Conflict(format!(
                "project {name:?} still has {live} key(s) that are not revoked; revoke them first"
            )));
        }
        // Revoked keys go with the project; the audit log keeps their history.
        let revoked = sqlx::query("DELETE FROM keys WHERE project = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let envs = sqlx::query("DELETE FROM project_envs WHERE project = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let limits = sqlx::query("DELETE FROM rate_limits WHERE project = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let caps = sqlx::query("DELETE FROM output_caps WHERE project = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let budgets = sqlx::query("DELETE FROM budgets WHERE project = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let mut model_rules = 0;
        for table in ["model_aliases", "model_access"] {
            model_rules += sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE project = ?"
            )))
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if limits + caps + budgets + model_rules > 0 {
            bump_limits_version(&mut tx).await?;
        }
        sqlx::query("DELETE FROM projects WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let d = detail(
            serde_json::json!({ "revoked_keys_removed": revoked, "envs_removed": envs, "limits_removed": limits }),
        );
        audit(&mut tx, actor, now_ms, "project.delete", name, &d).await?;
        bump_keys_version(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_env_credential(
        &self,
        name: &str,
        env: &str,
        reference: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        project_in_tx(&mut tx, name).await?;
        sqlx::query(
            "INSERT INTO project_envs (project, env, upstream_api_key, created_at_ms) \
             VALUES (?, ?, ?, ?) ON CONFLICT (project, env) \
             DO UPDATE SET upstream_api_key = excluded.upstream_api_key",
        )
        .bind(name)
        .bind(env)
        .bind(reference)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let target = format!("{name}/{env}");
        let shown = reference.map(crate::shown_secret_ref);
        let d = detail(serde_json::json!({ "upstream_api_key": shown }));
        audit(
            &mut tx,
            actor,
            now_ms,
            "project.set_env_credential",
            &target,
            &d,
        )
        .await?;
        bump_keys_version(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn insert_key(&self, key: &NewKey, actor: &Actor) -> Result<KeyRecord> {
        let mut tx = self.write_tx().await?;
        insert_key_row(&mut tx, key).await?;
        let d = detail(serde_json::json!({
            "project": key.project, "env": key.env, "role": key.role,
            "prefix": key.prefix, "expires_at_ms": key.expires_at_ms, "lane": key.lane,
        }));
        audit(&mut tx, actor, key.created_at_ms, "key.create", &key.id, &d).await?;
        bump_keys_version(&mut tx).await?;
        tx.commit().await?;
        self.key_by_id(&key.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key {}", key.id)))
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at_ms DESC, id");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    pub async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Revokes, suspends or resumes a key; false if it was already in that state.
    pub(crate) async fn change_key(
        &self,
        id: &str,
        change: KeyChange,
        reason: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let key = key_in_tx(&mut tx, id).await?;
        if change.refuses_revoked() && key.revoked_at_ms.is_some() {
            return Err(StoreError::Invalid(format!("key {id} is revoked")));
        }
        let sql = match change {
            KeyChange::Revoke => "UPDATE keys SET revoked_at_ms = ?, revoke_reason = ? WHERE id = ? AND revoked_at_ms IS NULL",
            KeyChange::Suspend => "UPDATE keys SET suspended_at_ms = ?, suspend_reason = ? WHERE id = ? AND suspended_at_ms IS NULL",
            KeyChange::Resume => "UPDATE keys SET suspended_at_ms = NULL, suspend_reason = NULL WHERE id = ? AND suspended_at_ms IS NOT NULL",
        };
        let mut query = sqlx::query(sql);
        if change.binds_time_and_reason() {
            query = query.bind(now_ms).bind(reason);
        }
        let changed = query.bind(id).execute(&mut *tx).await?.rows_affected();
        if changed > 0 {
            let d = detail(serde_json::json!({ "reason": reason }));
            audit(&mut tx, actor, now_ms, change.action(), id, &d).await?;
            bump_keys_version(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(changed > 0)
    }

    /// Sets a key's default lane; false if it already had it.
    pub async fn set_key_lane(
        &self,
        id: &str,
        lane: Lane,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let key = key_in_tx(&mut tx, id).await?;
        if key.revoked_at_ms.is_some() {
            return Err(StoreError::Invalid(format!("key {id} is revoked")));
        }
        let changed = sqlx::query("UPDATE keys SET lane = ? WHERE id = ? AND lane <> ?")
            .bind(lane.as_str())
            .bind(id)
            .bind(lane.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed > 0 {
            let d = detail(serde_json::json!({ "lane": lane }));
            audit(&mut tx, actor, now_ms, "key.set_lane", id, &d).await?;
            bump_keys_version(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(changed > 0)
    }

    pub async fn rotate_key(
        &self,
        id: &str,
        successor: &NewKey,
        grace_ms: i64,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<KeyRecord> {
        let mut tx = self.write_tx().await?;
        let old = key_in_tx(&mut tx, id).await?;
        check_rotation(&old, successor)?;
        let retire_at = now_ms.saturating_add(grace_ms);
        let changed = sqlx::query(
            "UPDATE keys SET rotated_to = ?, retire_at_ms = ? \
             WHERE id = ? AND revoked_at_ms IS NULL AND rotated_to IS NULL",
        )
        .bind(&successor.id)
        .bind(retire_at)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(StoreError::Conflict(format!(
                "key {id} was rotated or revoked meanwhile"
            )));
        }
        // The successor keeps the key's lane, as it keeps its limits and caps.
        let successor = &NewKey {
            lane: old.lane,
            ..successor.clone()
        };
        insert_key_row(&mut tx, successor).await?;
        // The successor inherits the key's own rate limits, output caps and budgets (its
        // spend starts at nothing: what the old key spent stays the old key's).
        let mut inherited = 0;
        for sql in [
            "INSERT INTO rate_limits (project, env, key_id, model, rpm, tpm, created_at_ms, updated_at_ms) \
         SELECT project, env, ?, model, rpm, tpm, ?, ? FROM rate_limits WHERE key_id = ?",
            "INSERT INTO output_caps (project, key_id, max_output_tokens, over_cap, default_output_tokens, \
         temperature_min, temperature_max, created_at_ms, updated_at_ms) \
         SELECT project, ?, max_output_tokens, over_cap, default_output_tokens, \
         temperature_min, temperature_max, ?, ? FROM output_caps WHERE key_id = ?",
            "INSERT INTO budgets (project, env, key_id, daily_usd_nanos, monthly_usd_nanos, \
         soft_percent, created_at_ms, updated_at_ms) \
         SELECT project, env, ?, daily_usd_nanos, monthly_usd_nanos, soft_percent, ?, ? \
         FROM budgets WHERE key_id = ?",
        ] {
            inherited += sqlx::query(sql)
                .bind(&successor.id)
                .bind(now_ms)
                .bind(now_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if inherited > 0 {
            bump_limits_version(&mut tx).await?;
        }
        let d = detail(serde_json::json!({
            "successor": successor.id, "grace_ms": grace_ms, "retire_at_ms": retire_at,
            "successor_expires_at_ms": successor.expires_at_ms,
        }));
        audit(&mut tx, actor, now_ms, "key.rotate", id, &d).await?;
        bump_keys_version(&mut tx).await?;
        tx.commit().await?;
        self.key_by_id(&successor.id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key {}", successor.id)))
    }

    pub async fn keys_unused_since(&self, cutoff_ms: i64) -> Result<Vec<KeyRecord>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE revoked_at_ms IS NULL AND \
             ((last_used_at_ms IS NULL AND created_at_ms < ?) OR last_used_at_ms < ?) \
             ORDER BY created_at_ms, id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(cutoff_ms)
            .bind(cutoff_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    pub async fn insert_audit(&self, entry: &NewAudit) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let actor = Actor::new(entry.actor.clone(), entry.source.clone());
        audit(
            &mut tx,
            &actor,
            entry.at_ms,
            &entry.action,
            &entry.target,
            &entry.detail,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_audit(&self, since_ms: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE at_ms >= ? ORDER BY id LIMIT ?");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(since_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: r.try_get("detail")?,
                    source: r.try_get("source")?,
                })
            })
            .collect()
    }

    pub async fn active_keys(&self) -> Result<Vec<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE revoked_at_ms IS NULL");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_from_row).collect()
    }

    pub async fn keys_version(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'keys_version'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn set_rate_limit(
        &self,
        scope: &LimitScope,
        rpm: Option<u64>,
        tpm: Option<u64>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<RateLimitRule> {
        let mut tx = self.write_tx().await?;
        project_in_tx(&mut tx, &scope.project).await?;
        if let Some(key_id) = &scope.key_id {
            let owner: Option<String> = sqlx::query_scalar("SELECT project FROM keys WHERE id = ?")
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
        let (env, key_id, model) = scope_columns(scope);
        sqlx::query(
            "INSERT INTO rate_limits (project, env, key_id, model, rpm, tpm, created_at_ms, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project, env, key_id, model) \
             DO UPDATE SET rpm = excluded.rpm, tpm = excluded.tpm, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&scope.project)
        .bind(env)
        .bind(key_id)
        .bind(model)
        .bind(rpm.map(to_i64))
        .bind(tpm.map(to_i64))
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let d = detail(serde_json::json!({ "rpm": rpm, "tpm": tpm }));
        audit(&mut tx, actor, now_ms, "limits.set", &scope.target(), &d).await?;
        bump_limits_version(&mut tx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {LIMIT_COLUMNS} FROM rate_limits \
             WHERE project = ? AND env = ? AND key_id = ? AND model = ?"
        )))
        .bind(&scope.project)
        .bind(env)
        .bind(key_id)
        .bind(model)
        .fetch_one(&mut *tx)
        .await?;
        let rule = limit_from_row(&row)?;
        tx.commit().await?;
        Ok(rule)
    }

    pub async fn clear_rate_limit(
        &self,
        scope: &LimitScope,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let (env, key_id, model) = scope_columns(scope);
        let removed = sqlx::query(
            "DELETE FROM rate_limits \
             WHERE project = ? AND env = ? AND key_id = ? AND model = ?",
        )
        .bind(&scope.project)
        .bind(env)
        .bind(key_id)
        .bind(model)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if removed == 0 {
            return Ok(false);
        }
        let d = detail(serde_json::json!({}));
        audit(&mut tx, actor, now_ms, "limits.clear", &scope.target(), &d).await?;
        bump_limits_version(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn list_rate_limits(&self, project: Option<&str>) -> Result<Vec<RateLimitRule>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {LIMIT_COLUMNS} FROM rate_limits WHERE (? IS NULL OR project = ?) \
             ORDER BY project, env, key_id, model"
        )))
        .bind(project)
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(limit_from_row).collect()
    }

    pub async fn limits_version(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'limits_version'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn set_output_cap(
        &self,
        project: &str,
        key_id: Option<&str>,
        cap: &OutputCap,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<OutputCapRule> {
        let mut tx = self.write_tx().await?;
        project_in_tx(&mut tx, project).await?;
        if let Some(key_id) = key_id {
            let owner: Option<String> = sqlx::query_scalar("SELECT project FROM keys WHERE id = ?")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await?;
            if owner.as_deref() != Some(project) {
                return Err(StoreError::NotFound(format!(
                    "key {key_id:?} in project {project:?}"
                )));
            }
        }
        sqlx::query(
            "INSERT INTO output_caps (project, key_id, max_output_tokens, over_cap, \
             default_output_tokens, temperature_min, temperature_max, created_at_ms, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (project, key_id) DO UPDATE SET \
             max_output_tokens = excluded.max_output_tokens, over_cap = excluded.over_cap, \
             default_output_tokens = excluded.default_output_tokens, \
             temperature_min = excluded.temperature_min, temperature_max = excluded.temperature_max, \
             updated_at_ms = excluded.updated_at_ms",
        )
        .bind(project)
        .bind(key_id.unwrap_or(""))
        .bind(cap.max_output_tokens.map(to_i64))
        .bind(cap.over.as_str())
        .bind(cap.default_output_tokens.map(to_i64))
        .bind(cap.temperature_min)
        .bind(cap.temperature_max)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let target = format!("{project}/{}", key_id.unwrap_or("*"));
        let d = detail(serde_json::json!(cap));
        audit(&mut tx, actor, now_ms, "caps.set", &target, &d).await?;
        bump_limits_version(&mut tx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CAP_COLUMNS} FROM output_caps WHERE project = ? AND key_id = ?"
        )))
        .bind(project)
        .bind(key_id.unwrap_or(""))
        .fetch_one(&mut *tx)
        .await?;
        let rule = cap_from_row(&row)?;
        tx.commit().await?;
        Ok(rule)
    }

    pub async fn clear_output_cap(
        &self,
        project: &str,
        key_id: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let removed = sqlx::query("DELETE FROM output_caps WHERE project = ? AND key_id = ?")
            .bind(project)
            .bind(key_id.unwrap_or(""))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            return Ok(false);
        }
        let target = format!("{project}/{}", key_id.unwrap_or("*"));
        let d = detail(serde_json::json!({}));
        audit(&mut tx, actor, now_ms, "caps.clear", &target, &d).await?;
        bump_limits_version(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn list_output_caps(&self, project: Option<&str>) -> Result<Vec<OutputCapRule>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CAP_COLUMNS} FROM output_caps WHERE (? IS NULL OR project = ?) \
             ORDER BY project, key_id"
        )))
        .bind(project)
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cap_from_row).collect()
    }

    pub async fn set_model_alias(
        &self,
        project: &str,
        alias: &str,
        model: &str,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<ModelAlias> {
        let mut tx = self.write_tx().await?;
        project_in_tx(&mut tx, project).await?;
        sqlx::query(
            "INSERT INTO model_aliases (project, alias, model, created_at_ms, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (project, alias) DO UPDATE SET \
             model = excluded.model, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(project)
        .bind(alias)
        .bind(model)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let target = format!("{project}/{alias}");
        let d = detail(serde_json::json!({ "model": model }));
        audit(&mut tx, actor, now_ms, "models.alias.set", &target, &d).await?;
        bump_limits_version(&mut tx).await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALIAS_COLUMNS} FROM model_aliases WHERE project = ? AND alias = ?"
        )))
        .bind(project)
        .bind(alias)
        .fetch_one(&mut *tx)
        .await?;
        let out = alias_from_row(&row)?;
        tx.commit().await?;
        Ok(out)
    }

    pub async fn unset_model_alias(
        &self,
        project: &str,
        alias: &str,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let removed = sqlx::query("DELETE FROM model_aliases WHERE project = ? AND alias = ?")
            .bind(project)
            .bind(alias)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            return Ok(false);
        }
        let target = format!("{project}/{alias}");
        let d = detail(serde_json::json!({}));
        audit(&mut tx, actor, now_ms, "models.alias.unset", &target, &d).await?;
        bump_limits_version(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn list_model_aliases(&self, project: Option<&str>) -> Result<Vec<ModelAlias>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALIAS_COLUMNS} FROM model_aliases WHERE (? IS NULL OR project = ?) \
             ORDER BY project, alias"
        )))
        .bind(project)
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alias_from_row).collect()
    }

    pub async fn set_model_access(
        &self,
        project: &str,
        env: Option<&str>,
        kind: AccessKind,
        models: &[String],
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        project_in_tx(&mut tx, project).await?;
        let changed = if models.is_empty() {
            sqlx::query("DELETE FROM model_access WHERE project = ? AND env = ? AND kind = ?")
                .bind(project)
                .bind(env.unwrap_or(""))
                .bind(kind.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            let list =
                serde_json::to_string(models).map_err(|e| StoreError::Invalid(e.to_string()))?;
            sqlx::query(
                "INSERT INTO model_access (project, env, kind, models, created_at_ms, updated_at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (project, env, kind) DO UPDATE SET \
                 models = excluded.models, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(project)
            .bind(env.unwrap_or(""))
            .bind(kind.as_str())
            .bind(list)
            .bind(now_ms)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        if changed == 0 {
            return Ok(false);
        }
        let target = format!("{project}/{}", env.unwrap_or("*"));
        let d = detail(serde_json::json!({ "models": models }));
        let action = match kind {
            AccessKind::Allow => "models.allow",
            AccessKind::Deny => "models.deny",
        };
        audit(&mut tx, actor, now_ms, action, &target, &d).await?;
        bump_limits_version(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn set_catalog_model(
        &self,
        m: &CatalogModel,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<CatalogModel> {
        let mut tx = self.write_tx().await?;
        let capabilities = serde_json::to_string(&m.capabilities)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO catalog_models ({CATALOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET family = excluded.family, \
             context_window = excluded.context_window, \
             max_output_tokens = excluded.max_output_tokens, \
             input_per_1m_milli_usd = excluded.input_per_1m_milli_usd, \
             cached_input_per_1m_milli_usd = excluded.cached_input_per_1m_milli_usd, \
             output_per_1m_milli_usd = excluded.output_per_1m_milli_usd, \
             latency = excluded.latency, capabilities = excluded.capabilities, \
             best_use = excluded.best_use, prices_checked = excluded.prices_checked, \
             updated_at_ms = excluded.updated_at_ms"
        )))
        .bind(&m.id)
        .bind(&m.family)
        .bind(m.context_window.map(to_i64))
        .bind(m.max_output_tokens.map(to_i64))
        .bind(to_i64(m.input_per_1m_milli_usd))
        .bind(m.cached_input_per_1m_milli_usd.map(to_i64))
        .bind(m.output_per_1m_milli_usd.map(to_i64))
        .bind(&m.latency)
        .bind(capabilities)
        .bind(&m.best_use)
        .bind(&m.prices_checked)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CATALOG_COLUMNS} FROM catalog_models WHERE id = ?"
        )))
        .bind(&m.id)
        .fetch_one(&mut *tx)
        .await?;
        let out = catalog_model_from_row(&row)?;
        let d = detail(serde_json::json!({ "entry": out }));
        audit(&mut tx, actor, now_ms, "models.catalog.set", &m.id, &d).await?;
        bump_limits_version(&mut tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub async fn remove_catalog_model(&self, id: &str, now_ms: i64, actor: &Actor) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let removed = sqlx::query("DELETE FROM catalog_models WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            return Ok(false);
        }
        let d = detail(serde_json::json!({}));
        audit(&mut tx, actor, now_ms, "models.catalog.remove", id, &d).await?;
        bump_limits_version(&mut tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn list_catalog_models(&self) -> Result<Vec<CatalogModel>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {CATALOG_COLUMNS} FROM catalog_models ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(catalog_model_from_row).collect()
    }

    pub async fn list_model_access(&self, project: Option<&str>) -> Result<Vec<ModelAccess>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ACCESS_COLUMNS} FROM model_access WHERE (? IS NULL OR project = ?) \
             ORDER BY project, env, kind"
        )))
        .bind(project)
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(access_from_row).collect()
    }

    pub async fn insert_usage(&self, records: &[UsageRecord]) -> Result<()> {
        let mut tx = self.write_tx().await?;
        if insert_usage_rows(&mut tx, records).await? == records.len() {
            return finish_usage(tx, records, records).await;
        }
        // Some of the batch is already stored: a batch written again after a commit
        // whose outcome was lost. Start over and add only the new records' spend.
        tx.rollback().await?;
        let mut tx = self.write_tx().await?;
        let fresh = unstored(&mut tx, records).await?;
        insert_usage_rows(&mut tx, &fresh).await?;
        finish_usage(tx, &fresh, records).await
    }

    pub async fn usage_totals(&self, filter: &UsageFilter) -> Result<Vec<UsageTotals>> {
        let group = match filter.group {
            UsageGroup::Key => "COALESCE(key_id, '-')",
            UsageGroup::Project => "COALESCE(project, '-') || '/' || COALESCE(env, '-')",
            UsageGroup::Model => "COALESCE(model_served, model_requested, '-')",
            UsageGroup::Day => "strftime('%Y-%m-%d', created_at_ms / 1000, 'unixepoch')",
        };
        // SQLite's integer SUM fails the whole query on overflow. Each column is summed
        // in two parts, the bits from 2^20 up and those below, which cannot overflow
        // (a record keeps at most 2^54), and joined exactly in `get_sum`.
        let sums: String = crate::SUMMED_USAGE_COLUMNS
            .iter()
            .map(|c| format!("SUM({c} >> 20) AS {c}_hi, SUM({c} & 1048575) AS {c}_lo, "))
            .collect();
        let sql = format!(
            "SELECT {group} AS grp, COUNT(*) AS requests, \
             SUM(CASE WHEN status >= 400 OR client_disconnected = 1 OR error_code IS NOT NULL \
             THEN 1 ELSE 0 END) AS errors, {sums}\
             SUM(CASE WHEN cost_usd_nanos IS NULL THEN 1 ELSE 0 END) AS unpriced, \
             SUM(CASE WHEN cache IN ('hit', 'stale') THEN 1 ELSE 0 END) AS cache_hits \
             FROM usage WHERE created_at_ms >= ? GROUP BY grp ORDER BY grp"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(filter.since_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageTotals {
                    group: r.try_get("grp")?,
                    requests: get_u64(r, "requests")?,
                    errors: get_u64(r, "errors")?,
                    input_tokens: get_sum(r, "input_tokens")?.unwrap_or(0),
                    output_tokens: get_sum(r, "output_tokens")?.unwrap_or(0),
                    total_tokens: get_sum(r, "total_tokens")?.unwrap_or(0),
                    cached_tokens: get_sum(r, "cached_tokens")?.unwrap_or(0),
                    reasoning_tokens: get_sum(r, "reasoning_tokens")?.unwrap_or(0),
                    cost_usd_nanos: get_sum(r, "cost_usd_nanos")?,
                    unpriced: get_u64(r, "unpriced")?,
                    cache_hits: get_u64(r, "cache_hits")?,
                })
            })
            .collect()
    }

    pub async fn usage_records(&self, since_ms: i64) -> Result<Vec<UsageRecord>> {
        let rows = sqlx::query("SELECT * FROM usage WHERE created_at_ms >= ? ORDER BY id")
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(usage_from_row).collect()
    }
}

/// Inserts a key row after checking its project exists.
async fn insert_key_row(tx: &mut Tx, key: &NewKey) -> Result<()> {
    let project: Option<String> = sqlx::query_scalar("SELECT name FROM projects WHERE name = ?")
        .bind(&key.project)
        .fetch_optional(&mut **tx)
        .await?;
    if project.is_none() {
        return Err(StoreError::NotFound(format!(
            "project {:?} (create it first)",
            key.project
        )));
    }
    sqlx::query(
        "INSERT INTO keys (id, project, env, role, name, prefix, digest_hex, created_at_ms, \
         expires_at_ms, lane) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&key.id)
    .bind(&key.project)
    .bind(&key.env)
    .bind(key.role.as_str())
    .bind(&key.name)
    .bind(&key.prefix)
    .bind(&key.digest_hex)
    .bind(key.created_at_ms)
    .bind(key.expires_at_ms)
    .bind(key.lane.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The key `id` as this transaction sees it, or NotFound.
async fn key_in_tx(tx: &mut Tx, id: &str) -> Result<KeyRecord> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    row.as_ref()
        .map(key_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("key {id}")))
}

/// Fails with NotFound unless the project exists (as this transaction sees it).
async fn project_in_tx(tx: &mut Tx, name: &str) -> Result<()> {
    let found: Option<String> = sqlx::query_scalar("SELECT name FROM projects WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
    found
        .map(|_| ())
        .ok_or_else(|| StoreError::NotFound(format!("project {name:?}")))
}

/// Appends an audit row inside the caller's transaction.
async fn audit(
    tx: &mut Tx,
    actor: &Actor,
    at_ms: i64,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit (at_ms, actor, action, target, detail, source) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(at_ms)
    .bind(&actor.actor)
    .bind(action)
    .bind(target)
    .bind(detail)
    .bind(&actor.source)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn project_from_row(r: &SqliteRow) -> Result<Project> {
    Ok(Project {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at_ms: r.try_get("created_at_ms")?,
        max_key_age_ms: r.try_get("max_key_age_ms")?,
        upstream_api_key: r.try_get("upstream_api_key")?,
        anomaly_auto_suspend: r.try_get("anomaly_auto_suspend")?,
    })
}

async fn bump_keys_version(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<()> {
    sqlx::query("UPDATE meta SET value = value + 1 WHERE name = 'keys_version'")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts records with multi-row INSERT statements in the few shapes
/// [`crate::model::usage_chunks`] gives, so each stays prepared (one round trip each);
/// a record already stored (same `request_id`) is skipped. Returns how many it inserted.
async fn insert_usage_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    records: &[UsageRecord],
) -> Result<usize> {
    let mut inserted = 0;
    let mut rest = records;
    for rows in crate::model::usage_chunks(records.len()) {
        let (chunk, tail) = rest.split_at(rows);
        rest = tail;
        let mut args = SqliteArguments::default();
        sqlx::Arguments::reserve(&mut args, rows * USAGE_COLUMNS, 0);
        for r in chunk {
            bind_usage(&mut args, r).map_err(sqlx::Error::Encode)?;
        }
        let sql = usage_insert_sql(rows, Placeholders::Question);
        inserted += sqlx::query_with(AssertSqlSafe(sql), args)
            .execute(&mut **tx)
            .await?
            .rows_affected();
    }
    Ok(usize::try_from(inserted).unwrap_or(usize::MAX))
}

/// Binds one usage row's values, in the column order of [`usage_insert_sql`].
fn bind_usage(
    args: &mut SqliteArguments,
    r: &UsageRecord,
) -> std::result::Result<(), sqlx::error::BoxDynError> {
    args.add(text(&r.request_id))?;
    args.add(r.upstream_request_id.as_deref().map(text))?;
    args.add(r.response_id.as_deref().map(text))?;
    args.add(r.key_id.as_deref().map(text))?;
    args.add(r.project.as_deref().map(text))?;
    args.add(r.env.as_deref().map(text))?;
    args.add(text(&r.endpoint))?;
    args.add(r.model_requested.as_deref().map(text))?;
    args.add(r.model_served.as_deref().map(text))?;
    args.add(i64::from(r.status))?;
    args.add(r.error_code.as_deref().map(text))?;
    args.add(crate::record_tokens(r.input_tokens))?;
    args.add(crate::record_tokens(r.output_tokens))?;
    args.add(crate::record_tokens(r.total_tokens))?;
    args.add(crate::record_tokens(r.cached_tokens))?;
    args.add(crate::record_tokens(r.reasoning_tokens))?;
    args.add(r.streamed)?;
    args.add(r.client_disconnected)?;
    args.add(i64::from(r.attempts))?;
    args.add(r.ttfb_ms.map(to_i64))?;
    args.add(to_i64(r.latency_ms))?;
    args.add(r.created_at_ms)?;
    args.add(r.cost_usd_nanos.map(crate::record_cost))?;
    args.add(r.lane.map(|l| text(l.as_str())))?;
    args.add(r.upstream_remaining_requests.map(to_i64))?;
    args.add(r.upstream_remaining_tokens.map(to_i64))?;
    args.add(r.served_by.as_deref().map(text))?;
    args.add(i64::from(r.fallbacks))?;
    args.add(r.cache.map(|c| text(c.as_str())))?;
    Ok(())
}

/// A text value to bind. sqlx keeps a bound `String` as an `Arc<String>` (a copy of
/// the string and a second allocation for the `Arc`); an `Arc<str>` is bound as it is,
/// one allocation. SQLite copies the text either way.
fn text(s: &str) -> std::sync::Arc<str> {
    std::sync::Arc::from(s)
}

/// Completes a usage batch's transaction: adds the spend of the records it inserted
/// (`fresh`) to the daily roll-up, the batch's last use to its keys, and commits.
async fn finish_usage(
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    fresh: &[UsageRecord],
    batch: &[UsageRecord],
) -> Result<()> {
    for mut q in crate::model::daily_spend_upserts::<sqlx::Sqlite>(fresh) {
        q.build().execute(&mut *tx).await?;
    }
    // last_used comes from the batch, so the request path never writes to keys.
    for (key_id, at_ms) in last_used_by_key(batch) {
        sqlx::query(
            "UPDATE keys SET last_used_at_ms = MAX(COALESCE(last_used_at_ms, 0), ?) \
             WHERE id = ?",
        )
        .bind(at_ms)
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The records of `records` whose request id is not stored yet.
async fn unstored(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    records: &[UsageRecord],
) -> Result<Vec<UsageRecord>> {
    let mut stored = std::collections::HashSet::new();
    for chunk in records.chunks(crate::model::USAGE_ROWS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT request_id FROM usage WHERE request_id IN (",
        );
        let mut ids = q.separated(", ");
        for r in chunk {
            ids.push_bind(r.request_id.as_str());
        }
        q.push(")");
        let found: Vec<String> = q.build_query_scalar().fetch_all(&mut **tx).await?;
        stored.extend(found);
    }
    Ok(crate::model::without(records, &stored))
}

fn key_from_row(r: &SqliteRow) -> Result<KeyRecord> {
    let role: String = r.try_get("role")?;
    let lane: String = r.try_get("lane")?;
    Ok(KeyRecord {
        id: r.try_get("id")?,
        project: r.try_get("project")?,
        env: r.try_get("env")?,
        role: Role::from_str(&role).map_err(StoreError::Invalid)?,
        name: r.try_get("name")?,
        prefix: r.try_get("prefix")?,
        digest_hex: r.try_get("digest_hex")?,
        created_at_ms: r.try_get("created_at_ms")?,
        last_used_at_ms: r.try_get("last_used_at_ms")?,
        revoked_at_ms: r.try_get("revoked_at_ms")?,
        revoke_reason: r.try_get("revoke_reason")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        suspended_at_ms: r.try_get("suspended_at_ms")?,
        suspend_reason: r.try_get("suspend_reason")?,
        rotated_to: r.try_get("rotated_to")?,
        retire_at_ms: r.try_get("retire_at_ms")?,
        lane: Lane::from_str(&lane).map_err(StoreError::Invalid)?,
    })
}

fn usage_from_row(r: &SqliteRow) -> Result<UsageRecord> {
    let status: i64 = r.try_get("status")?;
    let attempts: i64 = r.try_get("attempts")?;
    let ttfb: Option<i64> = r.try_get("ttfb_ms")?;
    let lane: Option<String> = r.try_get("lane")?;
    let cache: Option<String> = r.try_get("cache")?;
    Ok(UsageRecord {
        request_id: r.try_get("request_id")?,
        upstream_request_id: r.try_get("upstream_request_id")?,
        response_id: r.try_get("response_id")?,
        key_id: r.try_get("key_id")?,
        project: r.try_get("project")?,
        env: r.try_get("env")?,
        endpoint: r.try_get("endpoint")?,
        model_requested: r.try_get("model_requested")?,
        model_served: r.try_get("model_served")?,
        status: u16::try_from(status).unwrap_or(0),
        error_code: r.try_get("error_code")?,
        input_tokens: get_u64(r, "input_tokens")?,
        output_tokens: get_u64(r, "output_tokens")?,
        total_tokens: get_u64(r, "total_tokens")?,
        cached_tokens: get_u64(r, "cached_tokens")?,
        reasoning_tokens: get_u64(r, "reasoning_tokens")?,
        streamed: r.try_get("streamed")?,
        client_disconnected: r.try_get("client_disconnected")?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        ttfb_ms: ttfb.map(|v| u64::try_from(v).unwrap_or(0)),
        latency_ms: get_u64(r, "latency_ms")?,
        created_at_ms: r.try_get("created_at_ms")?,
        cost_usd_nanos: get_opt_u64(r, "cost_usd_nanos")?,
        lane: lane
            .as_deref()
            .map(Lane::from_str)
            .transpose()
            .map_err(StoreError::Invalid)?,
        upstream_remaining_requests: get_opt_u64(r, "upstream_remaining_requests")?,
        upstream_remaining_tokens: get_opt_u64(r, "upstream_remaining_tokens")?,
        served_by: r.try_get("served_by")?,
        fallbacks: u32::try_from(r.try_get::<i64, _>("fallbacks")?).unwrap_or(0),
        cache: cache
            .as_deref()
            .map(CacheOutcome::from_str)
            .transpose()
            .map_err(StoreError::Invalid)?,
    })
}

/// A nullable non-negative column: NULL stays `None`.
fn get_opt_u64(r: &SqliteRow, col: &str) -> Result<Option<u64>> {
    let v: Option<i64> = r.try_get(col)?;
    Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
}

/// A sum taken in two parts (see `usage_totals`), joined: exact, and at most
/// `i64::MAX` as the PostgreSQL store's are. `None` when every value was NULL.
fn get_sum(r: &SqliteRow, col: &str) -> Result<Option<u64>> {
    let hi: Option<i64> = r.try_get(format!("{col}_hi").as_str())?;
    let lo: Option<i64> = r.try_get(format!("{col}_lo").as_str())?;
    Ok(hi.zip(lo).map(|(hi, lo)| {
        let sum = (i128::from(hi) << 20) + i128::from(lo);
        u64::try_from(sum.clamp(0, i128::from(i64::MAX))).unwrap_or(0)
    }))
}

fn get_u64(r: &SqliteRow, col: &str) -> Result<u64> {
    let v: Option<i64> = r.try_get(col)?;
    Ok(u64::try_from(v.unwrap_or(0)).unwrap_or(0))
}

const LIMIT_COLUMNS: &str = "project, env, key_id, model, rpm, tpm, created_at_ms, updated_at_ms";

/// The stored form of a scope: '' for "any".
fn scope_columns(scope: &LimitScope) -> (&str, &str, &str) {
    (
        scope.env.as_deref().unwrap_or(""),
        scope.key_id.as_deref().unwrap_or(""),
        scope.model.as_deref().unwrap_or(""),
    )
}

fn limit_from_row(r: &SqliteRow) -> Result<RateLimitRule> {
    let any = |col: &str| -> Result<Option<String>> {
        let v: String = r.try_get(col)?;
        Ok((!v.is_empty()).then_some(v))
    };
    let per_minute = |col: &str| -> Result<Option<u64>> {
        let v: Option<i64> = r.try_get(col)?;
        Ok(v.and_then(|v| u64::try_from(v).ok()))
    };
    Ok(RateLimitRule {
        scope: LimitScope {
            project: r.try_get("project")?,
            env: any("env")?,
            key_id: any("key_id")?,
            model: any("model")?,
        },
        rpm: per_minute("rpm")?,
        tpm: per_minute("tpm")?,
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

async fn bump_limits_version(tx: &mut Tx) -> Result<()> {
    sqlx::query("UPDATE meta SET value = value + 1 WHERE name = 'limits_version'")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const CAP_COLUMNS: &str = "project, key_id, max_output_tokens, over_cap, default_output_tokens, \
                           temperature_min, temperature_max, created_at_ms, updated_at_ms";

fn cap_from_row(r: &SqliteRow) -> Result<OutputCapRule> {
    let tokens = |col: &str| -> Result<Option<u64>> {
        let v: Option<i64> = r.try_get(col)?;
        Ok(v.and_then(|v| u64::try_from(v).ok()))
    };
    let key_id: String = r.try_get("key_id")?;
    let over: String = r.try_get("over_cap")?;
    Ok(OutputCapRule {
        project: r.try_get("project")?,
        key_id: (!key_id.is_empty()).then_some(key_id),
        cap: OutputCap {
            max_output_tokens: tokens("max_output_tokens")?,
            over: over.parse::<OverCap>().map_err(StoreError::Invalid)?,
            default_output_tokens: tokens("default_output_tokens")?,
            temperature_min: r.try_get("temperature_min")?,
            temperature_max: r.try_get("temperature_max")?,
        },
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

const ALIAS_COLUMNS: &str = "project, alias, model, created_at_ms, updated_at_ms";

fn alias_from_row(r: &SqliteRow) -> Result<ModelAlias> {
    Ok(ModelAlias {
        project: r.try_get("project")?,
        alias: r.try_get("alias")?,
        model: r.try_get("model")?,
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

const ACCESS_COLUMNS: &str = "project, env, kind, models, created_at_ms, updated_at_ms";

fn access_from_row(r: &SqliteRow) -> Result<ModelAccess> {
    let env: String = r.try_get("env")?;
    let kind: String = r.try_get("kind")?;
    let models: String = r.try_get("models")?;
    Ok(ModelAccess {
        project: r.try_get("project")?,
        env: (!env.is_empty()).then_some(env),
        kind: kind.parse::<AccessKind>().map_err(StoreError::Invalid)?,
        models: serde_json::from_str(&models)
            .map_err(|e| StoreError::Invalid(format!("stored model list: {e}")))?,
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

const CATALOG_COLUMNS: &str = "id, family, context_window, max_output_tokens, \
    input_per_1m_milli_usd, cached_input_per_1m_milli_usd, output_per_1m_milli_usd, latency, \
    capabilities, best_use, prices_checked, created_at_ms, updated_at_ms";

fn catalog_model_from_row(r: &SqliteRow) -> Result<CatalogModel> {
    // Written from u64 values no larger than i64::MAX, so never negative.
    let count = |col: &str| -> Result<Option<u64>> {
        let v: Option<i64> = r.try_get(col)?;
        Ok(v.map(|v| u64::try_from(v).unwrap_or(0)))
    };
    let capabilities: String = r.try_get("capabilities")?;
    Ok(CatalogModel {
        id: r.try_get("id")?,
        family: r.try_get("family")?,
        context_window: count("context_window")?,
        max_output_tokens: count("max_output_tokens")?,
        input_per_1m_milli_usd: count("input_per_1m_milli_usd")?.unwrap_or(0),
        cached_input_per_1m_milli_usd: count("cached_input_per_1m_milli_usd")?,
        output_per_1m_milli_usd: count("output_per_1m_milli_usd")?,
        latency: r.try_get("latency")?,
        capabilities: serde_json::from_str(&capabilities)
            .map_err(|e| StoreError::Invalid(format!("stored capabilities: {e}")))?,
        best_use: r.try_get("best_use")?,
        prices_checked: r.try_get("prices_checked")?,
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_usage_row_binds_a_value_per_column() {
        let mut args = SqliteArguments::default();
        bind_usage(&mut args, &UsageRecord::default()).unwrap();
        assert_eq!(sqlx::Arguments::len(&args), USAGE_COLUMNS);
    }
}
