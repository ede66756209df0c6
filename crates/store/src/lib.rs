//! tollgate's durable state: projects, gateway keys (SHA-256 digests and display
//! prefixes only, never secrets) and usage records.
//!
//! [`Store`] is the one handle the gateway and the CLI use. SQLite (a file under the
//! data directory, WAL mode) is the default backend; PostgreSQL is chosen by a
//! `postgres://` URL, and several servers may share one such database. The type is an
//! enum over backends, one method per operation. Each backend embeds its own
//! migrations and runs them at open.
//!
//! Key changes bump a `keys_version` counter in the same transaction, so a running
//! server can notice a revocation made by another process (the CLI, another replica)
//! by polling one integer. Rate-limit rules have a sibling counter, `limits_version`,
//! so a rule change reloads only the rules, not the keys and their credentials.

mod model;
mod postgres;
mod sqlite;
pub mod testing;

/// The embedded store's file in a data directory.
pub const SQLITE_FILE: &str = "tollgate.db";

use model::{KeyChange, ProjectSetting};
use std::path::Path;

pub use model::{
    civil_date, AccessKind, Actor, AuditEntry, Budget, BudgetPeriod, BudgetScope, CacheOutcome,
    CatalogModel, CredentialRefs, KeyRecord, KeyState, Lane, LimitScope, ModelAccess, ModelAlias,
    NewAudit, NewKey, NewProject, OutputCap, OutputCapRule, OverCap, Project, ProjectDetail,
    ProjectEnv, ProjectSummary, RateLimitRule, Role, Spend, UsageFilter, UsageGroup, UsageRecord,
    UsageTotals, DEFAULT_MAX_KEY_AGE_MS, DEFAULT_SOFT_PERCENT, GATEWAY_PROJECT,
    RESERVED_PROJECT_PREFIX, ROTATION_WARNING_MS, SERVED_OFFLINE,
};

/// Store failures. Messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on the store; cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

impl Store {
    /// Opens (creating if needed) the SQLite store `tollgate.db` in `data_dir`.
    pub async fn open_data_dir(data_dir: &Path) -> Result<Self> {
        Ok(Self::Sqlite(sqlite::SqliteStore::open(data_dir).await?))
    }

    /// Opens a store from a database URL: `sqlite://PATH`, or
    /// `postgres://USER@HOST:PORT/DB` (also `postgresql://`, with libpq-style
    /// parameters such as `options=-c search_path=SCHEMA`).
    pub async fn open_url(url: &str) -> Result<Self> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            return Ok(Self::Sqlite(
                sqlite::SqliteStore::open_file(Path::new(path)).await?,
            ));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(postgres::PostgresStore::open(url).await?));
        }
        Err(StoreError::Invalid(format!(
            "unsupported database URL scheme in {:?}: use sqlite://PATH or postgres://USER@HOST/DB",
            url.split(':').next().unwrap_or_default()
        )))
    }

    /// Cheap liveness check (`SELECT 1`).
    pub async fn ping(&self) -> Result<()> {
        match self {
            Self::Sqlite(s) => s.ping().await,
            Self::Postgres(s) => s.ping().await,
        }
    }

    /// Creates a project if it does not exist and returns it (audited as `system`).
    pub async fn ensure_project(&self, name: &str) -> Result<Project> {
        self.ensure_project_as(name, &Actor::system()).await
    }

    /// Creates a project if it does not exist and returns it; a creation writes an
    /// audit row in the same transaction.
    pub async fn ensure_project_as(&self, name: &str, actor: &Actor) -> Result<Project> {
        // The one reserved project that may be created: on demand, for gateway admins.
        if name != GATEWAY_PROJECT {
            validate_project_name(name)?;
        }
        match self {
            Self::Sqlite(s) => s.ensure_project(name, actor).await,
            Self::Postgres(s) => s.ensure_project(name, actor).await,
        }
    }

    /// Finds a project by name.
    pub async fn project_by_name(&self, name: &str) -> Result<Option<Project>> {
        match self {
            Self::Sqlite(s) => s.project_by_name(name).await,
            Self::Postgres(s) => s.project_by_name(name).await,
        }
    }

    /// Sets (or, with `None`, clears back to the 90-day default) the longest lifetime
    /// of the project's new keys. Audited; bumps the keys version like every project
    /// setting.
    pub async fn set_project_max_key_age(
        &self,
        name: &str,
        max_key_age_ms: Option<i64>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<Project> {
        if max_key_age_ms.is_some_and(|ms| ms <= 0) {
            return Err(StoreError::Invalid(
                "the maximum key age must be positive".into(),
            ));
        }
        self.set_project_setting(
            name,
            ProjectSetting::MaxKeyAge(max_key_age_ms),
            now_ms,
            actor,
        )
        .await
    }

    /// Creates a project, optionally with a default provider credential (a secret
    /// reference); Conflict if it exists.
    pub async fn create_project(
        &self,
        name: &str,
        upstream_api_key: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<Project> {
        let settings = NewProject {
            upstream_api_key: upstream_api_key.map(str::to_owned),
            ..NewProject::default()
        };
        self.create_project_with(name, &settings, now_ms, actor)
            .await
    }

    /// Creates a project with its settings, audited, in one transaction; Conflict if
    /// it exists, Invalid for a bad or reserved name or setting (nothing is written).
    pub async fn create_project_with(
        &self,
        name: &str,
        settings: &NewProject,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<Project> {
        validate_project_name(name)?;
        if let Some(r) = &settings.upstream_api_key {
            validate_secret_ref(r)?;
        }
        if settings.max_key_age_ms.is_some_and(|ms| ms <= 0) {
            return Err(StoreError::Invalid(
                "the maximum key age must be positive".into(),
            ));
        }
        match self {
            Self::Sqlite(s) => s.create_project(name, settings, now_ms, actor).await,
            Self::Postgres(s) => s.create_project(name, settings, now_ms, actor).await,
        }
    }

    /// Sets (or, with `None`, clears back to the gateway's `anomaly.auto_suspend`)
    /// whether anomaly detection suspends the project's flagged keys. Audited, and
    /// bumps the keys version so running servers pick it up with their key cache.
    pub async fn set_project_anomaly_auto_suspend(
        &self,
        name: &str,
        auto_suspend: Option<bool>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<Project> {
        self.set_project_setting(
            name,
            ProjectSetting::AnomalyAutoSuspend(auto_suspend),
            now_ms,
            actor,
        )
        .await
    }

    async fn set_project_setting(
        &self,
        name: &str,
        setting: ProjectSetting<'_>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<Project> {
        match self {
            Self::Sqlite(s) => s.set_project_setting(name, setting, now_ms, actor).await,
            Self::Postgres(s) => s.set_project_setting(name, setting, now_ms, actor).await,
        }
    }

    /// Every project's own settings, by name (no key counts: for the key cache).
    pub async fn projects(&self) -> Result<Vec<Project>> {
        match self {
            Self::Sqlite(s) => s.list_projects().await,
            Self::Postgres(s) => s.list_projects().await,
        }
    }

    /// Every project by name, with the number of its keys that are not revoked.
    pub async fn list_projects(&self) -> Result<Vec<ProjectSummary>> {
        let projects = match self {
            Self::Sqlite(s) => s.list_projects().await?,
            Self::Postgres(s) => s.list_projects().await?,
        };
        let keys = self.active_keys().await?;
        Ok(projects
            .into_iter()
            .map(|project| {
                let active_keys = keys.iter().filter(|k| k.project == project.name).count();
                ProjectSummary {
                    project,
                    active_keys: active_keys as u64,
                }
            })
            .collect())
    }

    /// A project with its environments: those with a row (a credential set or
    /// cleared) and those known only from keys that are not revoked.
    pub async fn project_detail(&self, name: &str) -> Result<ProjectDetail> {
        let project = self
            .project_by_name(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("project {name:?}")))?;
        let rows = match self {
            Self::Sqlite(s) => s.project_envs(name).await?,
            Self::Postgres(s) => s.project_envs(name).await?,
        };
        let keys: Vec<KeyRecord> = self
            .active_keys()
            .await?
            .into_iter()
            .filter(|k| k.project == name)
            .collect();
        let mut envs: std::collections::BTreeMap<String, ProjectEnv> = rows
            .into_iter()
            .map(|(env, upstream_api_key, created_at_ms)| {
                let e = ProjectEnv {
                    env: env.clone(),
                    upstream_api_key,
                    created_at_ms: Some(created_at_ms),
                    active_keys: 0,
                };
                (env, e)
            })
            .collect();
        for k in &keys {
            envs.entry(k.env.clone())
                .or_insert_with(|| ProjectEnv {
                    env: k.env.clone(),
                    upstream_api_key: None,
                    created_at_ms: None,
                    active_keys: 0,
                })
                .active_keys += 1;
        }
        Ok(ProjectDetail {
            project,
            active_keys: keys.len() as u64,
            envs: envs.into_values().collect(),
        })
    }

    /// Deletes a project and its environments; refused (Conflict) while it has keys
    /// that are not revoked. Its revoked keys go with it; audit rows stay.
    pub async fn delete_project(&self, name: &str, now_ms: i64, actor: &Actor) -> Result<()> {
        match self {
            Self::Sqlite(s) => s.delete_project(name, now_ms, actor).await,
            Self::Postgres(s) => s.delete_project(name, now_ms, actor).await,
        }
    }

    /// Sets (or, with `None`, clears) a project's default provider credential: a secret
    /// reference, never a value. Bumps the keys version so servers reload it.
    pub async fn set_project_credential(
        &self,
        name: &str,
        reference: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<Project> {
        if let Some(r) = reference {
            validate_secret_ref(r)?;
        }
        self.set_project_setting(name, ProjectSetting::Credential(reference), now_ms, actor)
            .await
    }

    /// Sets (or clears) one environment's provider credential, creating the
    /// environment if needed. Bumps the keys version so servers reload it.
    pub async fn set_env_credential(
        &self,
        name: &str,
        env: &str,
        reference: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<()> {
        validate_name("environment", env)?;
        if let Some(r) = reference {
            validate_secret_ref(r)?;
        }
        match self {
            Self::Sqlite(s) => {
                s.set_env_credential(name, env, reference, now_ms, actor)
                    .await
            }
            Self::Postgres(s) => {
                s.set_env_credential(name, env, reference, now_ms, actor)
                    .await
            }
        }
    }

    /// The provider credential reference for calls of `project`/`env`: the
    /// environment's, else the project's default; `None` means the global default.
    pub async fn credential_refs(&self) -> Result<CredentialRefs> {
        let projects = match self {
            Self::Sqlite(s) => s.list_projects().await?,
            Self::Postgres(s) => s.list_projects().await?,
        };
        let envs = match self {
            Self::Sqlite(s) => s.env_credentials().await?,
            Self::Postgres(s) => s.env_credentials().await?,
        };
        Ok(CredentialRefs {
            envs: envs
                .into_iter()
                .map(|(project, env, r)| ((project, env), r))
                .collect(),
            projects: projects
                .into_iter()
                .filter_map(|p| Some((p.name, p.upstream_api_key?)))
                .collect(),
        })
    }

    /// Stores a new key (its digest and prefix) and bumps the keys version (audited
    /// as `system`).
    pub async fn insert_key(&self, key: &NewKey) -> Result<KeyRecord> {
        self.insert_key_as(key, &Actor::system()).await
    }

    /// Stores a new key, bumps the keys version and writes the audit row, in one
    /// transaction.
    pub async fn insert_key_as(&self, key: &NewKey, actor: &Actor) -> Result<KeyRecord> {
        validate_name("environment", &key.env)?;
        if key.expires_at_ms <= key.created_at_ms {
            return Err(StoreError::Invalid(
                "a key must expire after it is created".into(),
            ));
        }
        match self {
            Self::Sqlite(s) => s.insert_key(key, actor).await,
            Self::Postgres(s) => s.insert_key(key, actor).await,
        }
    }

    /// Every key, newest first (all states).
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        match self {
            Self::Sqlite(s) => s.list_keys().await,
            Self::Postgres(s) => s.list_keys().await,
        }
    }

    /// A key by id.
    pub async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>> {
        match self {
            Self::Sqlite(s) => s.key_by_id(id).await,
            Self::Postgres(s) => s.key_by_id(id).await,
        }
    }

    /// Revokes a key at once; returns false if it was already revoked (audited as
    /// `system`).
    pub async fn revoke_key(&self, id: &str, reason: Option<&str>, now_ms: i64) -> Result<bool> {
        self.revoke_key_as(id, reason, now_ms, &Actor::system())
            .await
    }

    /// Revokes a key at once; returns false if it was already revoked. A revocation
    /// bumps the keys version and writes its audit row in the same transaction.
    pub async fn revoke_key_as(
        &self,
        id: &str,
        reason: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        self.change_key(id, KeyChange::Revoke, reason, now_ms, actor)
            .await
    }

    /// Rotates key `id`: inserts `successor` (which must have the same project,
    /// environment and role) and ends the old key's life at `now_ms + grace_ms`, in one
    /// transaction. Refuses revoked and already-rotated keys. Returns the successor.
    pub async fn rotate_key(
        &self,
        id: &str,
        successor: &NewKey,
        grace_ms: i64,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<KeyRecord> {
        if grace_ms < 0 {
            return Err(StoreError::Invalid(
                "the grace period cannot be negative".into(),
            ));
        }
        if successor.expires_at_ms <= successor.created_at_ms {
            return Err(StoreError::Invalid(
                "a key must expire after it is created".into(),
            ));
        }
        match self {
            Self::Sqlite(s) => s.rotate_key(id, successor, grace_ms, now_ms, actor).await,
            Self::Postgres(s) => s.rotate_key(id, successor, grace_ms, now_ms, actor).await,
        }
    }

    /// Suspends a key (refused by servers until resumed); false if it was already
    /// suspended. A revoked key cannot be suspended.
    pub async fn suspend_key(
        &self,
        id: &str,
        reason: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        self.change_key(id, KeyChange::Suspend, reason, now_ms, actor)
            .await
    }

    /// Resumes a suspended key; false if it was not suspended.
    pub async fn resume_key(
        &self,
        id: &str,
        reason: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        self.change_key(id, KeyChange::Resume, reason, now_ms, actor)
            .await
    }

    async fn change_key(
        &self,
        id: &str,
        change: KeyChange,
        reason: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        match self {
            Self::Sqlite(s) => s.change_key(id, change, reason, now_ms, actor).await,
            Self::Postgres(s) => s.change_key(id, change, reason, now_ms, actor).await,
        }
    }

    /// Sets the lane of key `id`'s requests that send no `x-tollgate-priority`; false
    /// if it already had it. A revoked key is refused. The update, its audit row
    /// (`key.set_lane`) and a keys-version bump (servers pick it up with their key
    /// cache) are one transaction.
    pub async fn set_key_lane(
        &self,
        id: &str,
        lane: Lane,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        match self {
            Self::Sqlite(s) => s.set_key_lane(id, lane, now_ms, actor).await,
            Self::Postgres(s) => s.set_key_lane(id, lane, now_ms, actor).await,
        }
    }

    /// Keys not revoked and not used since `cutoff_ms`: never used and created before
    /// it, or last used before it. Oldest first.
    pub async fn keys_unused_since(&self, cutoff_ms: i64) -> Result<Vec<KeyRecord>> {
        match self {
            Self::Sqlite(s) => s.keys_unused_since(cutoff_ms).await,
            Self::Postgres(s) => s.keys_unused_since(cutoff_ms).await,
        }
    }

    /// Appends one audit row on its own (for actions that change nothing else). The
    /// detail must be a JSON object.
    pub async fn insert_audit(&self, entry: &NewAudit) -> Result<()> {
        let is_object =
            serde_json::from_str::<serde_json::Value>(&entry.detail).is_ok_and(|v| v.is_object());
        if !is_object || entry.action.is_empty() || entry.actor.is_empty() {
            return Err(StoreError::Invalid(
                "an audit entry needs an actor, an action and a JSON object as detail".into(),
            ));
        }
        match self {
            Self::Sqlite(s) => s.insert_audit(entry).await,
            Self::Postgres(s) => s.insert_audit(entry).await,
        }
    }

    /// Audit rows at or after `since_ms`, oldest first, at most `limit`.
    pub async fn list_audit(&self, since_ms: i64, limit: i64) -> Result<Vec<AuditEntry>> {
        match self {
            Self::Sqlite(s) => s.list_audit(since_ms, limit).await,
            Self::Postgres(s) => s.list_audit(since_ms, limit).await,
        }
    }

    /// The keys a server may need to recognise (not revoked; expired, suspended and
    /// rotated included, so it can say why it refuses them), for the in-memory cache.
    pub async fn active_keys(&self) -> Result<Vec<KeyRecord>> {
        match self {
            Self::Sqlite(s) => s.active_keys().await,
            Self::Postgres(s) => s.active_keys().await,
        }
    }

    /// The change counter of the keys table; it grows on every key mutation.
    pub async fn keys_version(&self) -> Result<i64> {
        match self {
            Self::Sqlite(s) => s.keys_version().await,
            Self::Postgres(s) => s.keys_version().await,
        }
    }

    /// Sets the rate limits of a scope, replacing the rule's limits if it exists: at
    /// least one of `rpm` / `tpm`, each positive. The project must exist, and a key
    /// named must belong to it. Audited and `limits_version` bumped in the same
    /// transaction.
    pub async fn set_rate_limit(
        &self,
        scope: &LimitScope,
        rpm: Option<u64>,
        tpm: Option<u64>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<RateLimitRule> {
        validate_scope(scope)?;
        if rpm.is_none() && tpm.is_none() {
            return Err(StoreError::Invalid(
                "a rate limit needs --rpm, --tpm or both".into(),
            ));
        }
        for (name, v) in [("rpm", rpm), ("tpm", tpm)] {
            if v.is_some_and(|v| v == 0 || i64::try_from(v).is_err()) {
                return Err(StoreError::Invalid(format!(
                    "{name} must be a positive whole number"
                )));
            }
        }
        match self {
            Self::Sqlite(s) => s.set_rate_limit(scope, rpm, tpm, now_ms, actor).await,
            Self::Postgres(s) => s.set_rate_limit(scope, rpm, tpm, now_ms, actor).await,
        }
    }

    /// Removes the rule of exactly this scope; false if there was none. Audited and
    /// `limits_version` bumped in the same transaction.
    pub async fn clear_rate_limit(
        &self,
        scope: &LimitScope,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        validate_scope(scope)?;
        match self {
            Self::Sqlite(s) => s.clear_rate_limit(scope, now_ms, actor).await,
            Self::Postgres(s) => s.clear_rate_limit(scope, now_ms, actor).await,
        }
    }

    /// The rules of one project, or of every project, ordered by scope.
    pub async fn list_rate_limits(&self, project: Option<&str>) -> Result<Vec<RateLimitRule>> {
        match self {
            Self::Sqlite(s) => s.list_rate_limits(project).await,
            Self::Postgres(s) => s.list_rate_limits(project).await,
        }
    }

    /// The change counter of the rate-limit rules; it grows on every rule change.
    pub async fn limits_version(&self) -> Result<i64> {
        match self {
            Self::Sqlite(s) => s.limits_version().await,
            Self::Postgres(s) => s.limits_version().await,
        }
    }

    /// Sets the output caps of a project (`key_id` `None`) or of one of its keys,
    /// replacing any it had. At least one cap; positive token counts, a default not
    /// above the maximum, temperatures within 0–2 with min ≤ max (both or neither).
    /// Audited and `limits_version` bumped in the same transaction.
    pub async fn set_output_cap(
        &self,
        project: &str,
        key_id: Option<&str>,
        cap: &OutputCap,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<OutputCapRule> {
        validate_name("project", project)?;
        validate_cap(cap)?;
        match self {
            Self::Sqlite(s) => s.set_output_cap(project, key_id, cap, now_ms, actor).await,
            Self::Postgres(s) => s.set_output_cap(project, key_id, cap, now_ms, actor).await,
        }
    }

    /// Removes the output caps of a project or key; false if there were none.
    pub async fn clear_output_cap(
        &self,
        project: &str,
        key_id: Option<&str>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        match self {
            Self::Sqlite(s) => s.clear_output_cap(project, key_id, now_ms, actor).await,
            Self::Postgres(s) => s.clear_output_cap(project, key_id, now_ms, actor).await,
        }
    }

    /// The output caps of one project, or of every project.
    pub async fn list_output_caps(&self, project: Option<&str>) -> Result<Vec<OutputCapRule>> {
        match self {
            Self::Sqlite(s) => s.list_output_caps(project).await,
            Self::Postgres(s) => s.list_output_caps(project).await,
        }
    }

    /// Sets the spend budget of a scope, replacing the scope's budget if it has one: a
    /// daily and/or monthly limit in nano-USD (each positive), and the soft threshold
    /// in percent (1–100; default 80). The project must exist, and a key named must
    /// belong to it. Audited and `limits_version` bumped in the same transaction.
    pub async fn set_budget(
        &self,
        scope: &BudgetScope,
        daily_usd_nanos: Option<u64>,
        monthly_usd_nanos: Option<u64>,
        soft_percent: Option<u32>,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<Budget> {
        validate_budget_scope(scope)?;
        if daily_usd_nanos.is_none() && monthly_usd_nanos.is_none() {
            return Err(StoreError::Invalid(
                "a budget needs a daily limit, a monthly limit or both".into(),
            ));
        }
        if [daily_usd_nanos, monthly_usd_nanos]
            .into_iter()
            .flatten()
            .any(|v| v == 0 || i64::try_from(v).is_err())
        {
            return Err(StoreError::Invalid(
                "a budget limit must be a positive amount of USD".into(),
            ));
        }
        let soft_percent = soft_percent.unwrap_or(DEFAULT_SOFT_PERCENT);
        if !(1..=100).contains(&soft_percent) {
            return Err(StoreError::Invalid(
                "the soft threshold is a percentage from 1 to 100".into(),
            ));
        }
        let budget = Budget {
            scope: scope.clone(),
            daily_usd_nanos,
            monthly_usd_nanos,
            soft_percent,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        };
        match self {
            Self::Sqlite(s) => s.set_budget(&budget, actor).await,
            Self::Postgres(s) => s.set_budget(&budget, actor).await,
        }
    }

    /// Removes the budget of exactly this scope; false if there was none. Audited and
    /// `limits_version` bumped in the same transaction.
    pub async fn clear_budget(
        &self,
        scope: &BudgetScope,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        validate_budget_scope(scope)?;
        match self {
            Self::Sqlite(s) => s.clear_budget(scope, now_ms, actor).await,
            Self::Postgres(s) => s.clear_budget(scope, now_ms, actor).await,
        }
    }

    /// The budgets of one project, or of every project, ordered by scope.
    pub async fn list_budgets(&self, project: Option<&str>) -> Result<Vec<Budget>> {
        match self {
            Self::Sqlite(s) => s.list_budgets(project).await,
            Self::Postgres(s) => s.list_budgets(project).await,
        }
    }

    /// The priced spend of every project, environment and key since `month_start_ms`,
    /// and the part of it since `day_start_ms` (records of one project, or of all).
    /// Both are UTC day starts (as [`BudgetPeriod::bounds`] gives them): the spend is
    /// read from the per-day roll-up the usage writer keeps, not from the usage rows.
    pub async fn spend_since(
        &self,
        day_start_ms: i64,
        month_start_ms: i64,
        project: Option<&str>,
    ) -> Result<Vec<Spend>> {
        match self {
            Self::Sqlite(s) => s.spend_since(day_start_ms, month_start_ms, project).await,
            Self::Postgres(s) => s.spend_since(day_start_ms, month_start_ms, project).await,
        }
    }

    /// Claims the announcement of a scope's soft threshold for the period starting at
    /// `period_start_ms`: true for the first caller of that period (across processes),
    /// false after, or when the budget is gone.
    pub async fn claim_budget_notice(
        &self,
        scope: &BudgetScope,
        period: BudgetPeriod,
        period_start_ms: i64,
    ) -> Result<bool> {
        match self {
            Self::Sqlite(s) => s.claim_budget_notice(scope, period, period_start_ms).await,
            Self::Postgres(s) => s.claim_budget_notice(scope, period, period_start_ms).await,
        }
    }

    /// Sets a project's alias `alias` → `model`, replacing the alias if it exists. The
    /// project must exist. Audited and `limits_version` bumped in the same transaction.
    pub async fn set_model_alias(
        &self,
        project: &str,
        alias: &str,
        model: &str,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<ModelAlias> {
        validate_name("project", project)?;
        validate_model_id("alias", alias)?;
        validate_model_id("model", model)?;
        if alias == model {
            return Err(StoreError::Invalid(format!(
                "alias {alias:?} would name itself; pick another name"
            )));
        }
        match self {
            Self::Sqlite(s) => {
                s.set_model_alias(project, alias, model, now_ms, actor)
                    .await
            }
            Self::Postgres(s) => {
                s.set_model_alias(project, alias, model, now_ms, actor)
                    .await
            }
        }
    }

    /// Removes a project's alias; false if it had none of that name. Audited and
    /// `limits_version` bumped in the same transaction.
    pub async fn unset_model_alias(
        &self,
        project: &str,
        alias: &str,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        match self {
            Self::Sqlite(s) => s.unset_model_alias(project, alias, now_ms, actor).await,
            Self::Postgres(s) => s.unset_model_alias(project, alias, now_ms, actor).await,
        }
    }

    /// The aliases of one project, or of every project, ordered by project and alias.
    pub async fn list_model_aliases(&self, project: Option<&str>) -> Result<Vec<ModelAlias>> {
        match self {
            Self::Sqlite(s) => s.list_model_aliases(project).await,
            Self::Postgres(s) => s.list_model_aliases(project).await,
        }
    }

    /// Replaces a project's allow- or deny-list for one environment (`env` `None`:
    /// every environment). An empty list removes it; returns whether anything changed.
    /// Model ids are kept sorted and without duplicates. Audited and `limits_version`
    /// bumped in the same transaction.
    pub async fn set_model_access(
        &self,
        project: &str,
        env: Option<&str>,
        kind: AccessKind,
        models: &[String],
        now_ms: i64,
        actor: &Actor,
    ) -> Result<bool> {
        validate_name("project", project)?;
        if let Some(env) = env {
            validate_name("environment", env)?;
        }
        let mut list: Vec<String> = models.iter().map(|m| m.trim().to_owned()).collect();
        for m in &list {
            validate_model_id("model", m)?;
        }
        list.sort();
        list.dedup();
        match self {
            Self::Sqlite(s) => {
                s.set_model_access(project, env, kind, &list, now_ms, actor)
                    .await
            }
            Self::Postgres(s) => {
                s.set_model_access(project, env, kind, &list, now_ms, actor)
                    .await
            }
        }
    }

    /// The allow- and deny-lists of one project, or of every project.
    pub async fn list_model_access(&self, project: Option<&str>) -> Result<Vec<ModelAccess>> {
        match self {
            Self::Sqlite(s) => s.list_model_access(project).await,
            Self::Postgres(s) => s.list_model_access(project).await,
        }
    }

    /// Adds or replaces the stored catalog entry `model.id` (its creation time kept;
    /// `created_at_ms`/`updated_at_ms` come from `now_ms`). Audited and
    /// `limits_version` bumped in the same transaction, so servers reload the catalog.
    pub async fn set_catalog_model(
        &self,
        model: &CatalogModel,
        now_ms: i64,
        actor: &Actor,
    ) -> Result<CatalogModel> {
        validate_model_id("model", &model.id)?;
        if model.id.ends_with('*') {
            return Err(StoreError::Invalid(format!(
                "invalid model {:?}: a catalog id is not a pattern",
                model.id
            )));
        }
        for v in [model.context_window, model.max_output_tokens]
            .into_iter()
            .flatten()
            .chain([model.input_per_1m_milli_usd])
            .chain(model.cached_input_per_1m_milli_usd)
            .chain(model.output_per_1m_milli_usd)
        {
            if i64::try_from(v).is_err() {
                return Err(StoreError::Invalid(format!(
                    "model {:?}: {v} is out of range",
                    model.id
                )));
            }
        }
        match self {
            Self::Sqlite(s) => s.set_catalog_model(model, now_ms, actor).await,
            Self::Postgres(s) => s.set_catalog_model(model, now_ms, actor).await,
        }
    }

    /// Removes the stored catalog entry `id`; false if there was none (the config's or
    /// built-in entry of that id, if any, applies again). Audited and `limits_version`
    /// bumped in the same transaction.
    pub async fn remove_catalog_model(&self, id: &str, now_ms: i64, actor: &Actor) -> Result<bool> {
        match self {
            Self::Sqlite(s) => s.remove_catalog_model(id, now_ms, actor).await,
            Self::Postgres(s) => s.remove_catalog_model(id, now_ms, actor).await,
        }
    }

    /// Every stored catalog entry, by id.
    pub async fn list_catalog_models(&self) -> Result<Vec<CatalogModel>> {
        match self {
            Self::Sqlite(s) => s.list_catalog_models().await,
            Self::Postgres(s) => s.list_catalog_models().await,
        }
    }

    /// Writes a batch of usage records in one transaction and updates the keys'
    /// `last_used` from them.
    pub async fn insert_usage(&self, records: &[UsageRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        match self {
            Self::Sqlite(s) => s.insert_usage(records).await,
            Self::Postgres(s) => s.insert_usage(records).await,
        }
    }

    /// Totals grouped as asked, since a point in time.
    pub async fn usage_totals(&self, filter: &UsageFilter) -> Result<Vec<UsageTotals>> {
        match self {
            Self::Sqlite(s) => s.usage_totals(filter).await,
            Self::Postgres(s) => s.usage_totals(filter).await,
        }
    }

    /// Raw usage records, oldest first (for tests and exports).
    pub async fn usage_records(&self, since_ms: i64) -> Result<Vec<UsageRecord>> {
        match self {
            Self::Sqlite(s) => s.usage_records(since_ms).await,
            Self::Postgres(s) => s.usage_records(since_ms).await,
        }
    }
}

/// Names of projects and environments: 1–64 of `[a-z0-9_-]`, starting alphanumeric.
fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid {what} name {name:?}: use 1-64 lowercase letters, digits, '-' or '_'"
        )))
    }
}

/// An environment name a key may be created in: 1–64 of `[a-z0-9_-]`, starting
/// alphanumeric (checked before anything is written for the key).
pub fn validate_env_name(name: &str) -> Result<()> {
    validate_name("environment", name)
}

/// A project name a user may create: a valid name not starting with the reserved
/// prefix `_` (which [`validate_name`] refuses anyway; this says why).
pub fn validate_project_name(name: &str) -> Result<()> {
    if name.starts_with(RESERVED_PROJECT_PREFIX) {
        return Err(StoreError::Invalid(format!(
            "project name {name:?} is reserved: names starting with '_' belong to tollgate"
        )));
    }
    validate_name("project", name)
}

/// A scope's parts: a valid project and environment name, a non-empty key id and
/// model of printable characters.
fn validate_scope(scope: &LimitScope) -> Result<()> {
    validate_name("project", &scope.project)?;
    if let Some(env) = &scope.env {
        validate_name("environment", env)?;
    }
    for (what, part) in [("key id", &scope.key_id), ("model", &scope.model)] {
        if part
            .as_deref()
            .is_some_and(|p| p.is_empty() || p.len() > 200 || p.chars().any(char::is_control))
        {
            return Err(StoreError::Invalid(format!(
                "invalid {what} in a rate limit: 1-200 printable characters"
            )));
        }
    }
    Ok(())
}

/// A budget's scope: a valid project, and an environment name or a key id, not both.
fn validate_budget_scope(scope: &BudgetScope) -> Result<()> {
    validate_name("project", &scope.project)?;
    if let Some(env) = &scope.env {
        validate_name("environment", env)?;
    }
    if scope.env.is_some() && scope.key_id.is_some() {
        return Err(StoreError::Invalid(
            "a budget governs a project, one of its environments or one of its keys: \
             give --env or --key, not both"
                .into(),
        ));
    }
    if scope
        .key_id
        .as_deref()
        .is_some_and(|k| k.is_empty() || k.len() > 200 || k.chars().any(char::is_control))
    {
        return Err(StoreError::Invalid(
            "invalid key id in a budget: 1-200 printable characters".into(),
        ));
    }
    Ok(())
}

/// A model id or alias: 1-200 characters, no whitespace or control characters (a
/// trailing `*` is a prefix pattern in access lists).
fn validate_model_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::Invalid(format!(
            "invalid {what} {id:?}: 1-200 characters without spaces"
        )));
    }
    Ok(())
}

/// Output caps that make sense: something capped, positive counts, a default within
/// the maximum, a temperature range inside OpenAI's 0–2.
fn validate_cap(cap: &OutputCap) -> Result<()> {
    let invalid = |m: &str| Err(StoreError::Invalid(m.to_owned()));
    let any = cap.max_output_tokens.is_some()
        || cap.default_output_tokens.is_some()
        || cap.temperature_min.is_some()
        || cap.temperature_max.is_some();
    if !any {
        return invalid("set a maximum, a default output or a temperature range");
    }
    for v in [cap.max_output_tokens, cap.default_output_tokens]
        .into_iter()
        .flatten()
    {
        if v == 0 || i64::try_from(v).is_err() {
            return invalid("output token counts must be positive whole numbers");
        }
    }
    if let (Some(d), Some(m)) = (cap.default_output_tokens, cap.max_output_tokens) {
        if d > m {
            return invalid("the default output must not exceed the maximum");
        }
    }
    match (cap.temperature_min, cap.temperature_max) {
        (None, None) => Ok(()),
        (Some(lo), Some(hi))
            if (0.0..=2.0).contains(&lo) && (0.0..=2.0).contains(&hi) && lo <= hi =>
        {
            Ok(())
        }
        (Some(_), Some(_)) => invalid("a temperature range is MIN..MAX within 0 to 2"),
        _ => invalid("a temperature range needs both a minimum and a maximum"),
    }
}

/// Whether `name` can be an environment variable's name (what `env:NAME` takes):
/// letters, digits and `_`, not starting with a digit.
pub fn is_env_var_name(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
}

/// Whether the body of a `file:` or `exec:` reference is a provider key pasted where a
/// path or a command belongs (OpenAI's keys start with `sk-`): such text is refused
/// and never echoed.
pub fn is_pasted_key(body: &str) -> bool {
    body.trim_start().starts_with("sk-")
}

/// A provider credential is stored as a secret reference, never as a value:
/// `env:NAME` (an environment variable name), `file:PATH` or `exec:COMMAND`, at most
/// 512 characters without control characters.
pub fn validate_secret_ref(reference: &str) -> Result<()> {
    let body = ["env:", "file:", "exec:"]
        .iter()
        .find_map(|scheme| reference.strip_prefix(scheme));
    let env_name_ok = reference.strip_prefix("env:").is_none_or(is_env_var_name);
    let ok = body.is_some_and(|b| !b.trim().is_empty() && !is_pasted_key(b))
        && env_name_ok
        && reference.len() <= 512
        && !reference.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "a provider credential must be a secret reference: env:NAME, file:PATH or \
             exec:COMMAND (never the key itself)"
                .into(),
        ))
    }
}

/// A stored secret reference as others may see it (the admin API, audit details,
/// logs): an `exec:` command shows its program only, since its arguments (or a
/// leading `NAME=value`) may hold a token; `env:` and `file:` show as they are.
pub fn shown_secret_ref(reference: &str) -> String {
    match reference.strip_prefix("exec:") {
        Some(command) => {
            let program = command
                .split_whitespace()
                .find(|w| !w.contains('='))
                .unwrap_or("");
            format!("exec:{program} …")
        }
        None => reference.to_owned(),
    }
}

/// The audit detail for a change: a JSON object as text.
pub(crate) fn detail(value: serde_json::Value) -> String {
    value.to_string()
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Token counts and durations are u64 in records, BIGINT (i64) in both databases.
/// The most tokens one usage record keeps of each count: far above any real call
/// (2^40 ≈ 1.1 × 10^12), low enough that the store's sums over millions of absurd
/// records (an upstream reporting nonsense) cannot overflow.
pub(crate) const MAX_RECORD_TOKENS: u64 = 1 << 40;

/// The most nano-USD one usage record keeps (2^54 ≈ 18 million USD): above 2^53, so
/// costs stay exact integers. Totals over many such records saturate at `i64::MAX`
/// (`usage_totals`) rather than fail.
pub(crate) const MAX_RECORD_COST: u64 = 1 << 54;

/// The usage columns `usage_totals` sums.
pub(crate) const SUMMED_USAGE_COLUMNS: [&str; 6] = [
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd_nanos",
];

/// A usage record's token count as stored: at most [`MAX_RECORD_TOKENS`].
pub(crate) fn record_tokens(v: u64) -> i64 {
    to_i64(v.min(MAX_RECORD_TOKENS))
}

/// A usage record's cost as stored: at most [`MAX_RECORD_COST`].
pub(crate) fn record_cost(v: u64) -> i64 {
    to_i64(v.min(MAX_RECORD_COST))
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
