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
//! by polling one integer.

mod model;
mod postgres;
mod sqlite;
pub mod testing;

use std::path::Path;

pub use model::{
    KeyRecord, KeyState, NewKey, Project, Role, UsageFilter, UsageGroup, UsageRecord, UsageTotals,
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

    /// Creates a project if it does not exist and returns it.
    pub async fn ensure_project(&self, name: &str) -> Result<Project> {
        validate_name("project", name)?;
        match self {
            Self::Sqlite(s) => s.ensure_project(name).await,
            Self::Postgres(s) => s.ensure_project(name).await,
        }
    }

    /// Finds a project by name.
    pub async fn project_by_name(&self, name: &str) -> Result<Option<Project>> {
        match self {
            Self::Sqlite(s) => s.project_by_name(name).await,
            Self::Postgres(s) => s.project_by_name(name).await,
        }
    }

    /// Stores a new key (its digest and prefix) and bumps the keys version.
    pub async fn insert_key(&self, key: &NewKey) -> Result<KeyRecord> {
        validate_name("environment", &key.env)?;
        match self {
            Self::Sqlite(s) => s.insert_key(key).await,
            Self::Postgres(s) => s.insert_key(key).await,
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

    /// Revokes a key at once; returns false if it was already revoked.
    pub async fn revoke_key(&self, id: &str, reason: Option<&str>, now_ms: i64) -> Result<bool> {
        match self {
            Self::Sqlite(s) => s.revoke_key(id, reason, now_ms).await,
            Self::Postgres(s) => s.revoke_key(id, reason, now_ms).await,
        }
    }

    /// The keys a server may accept (not revoked), for the in-memory cache.
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

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Token counts and durations are u64 in records, BIGINT (i64) in both databases.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
