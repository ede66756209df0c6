//! Test support for the PostgreSQL backend, shared by this crate's store suite and
//! the gateway's multi-replica tests: a freshly created, uniquely named schema per
//! test, so tests run in parallel on one database without seeing each other.
//!
//! The server comes from `TOLLGATE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). An unreachable server is an error with
//! a message that says so; tests fail on it rather than skip.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};

use crate::{now_ms, Result, Store, StoreError};

/// The variable naming the test server.
pub const POSTGRES_URL_VAR: &str = "TOLLGATE_TEST_POSTGRES_URL";
/// The test server when the variable is unset (what `.ci/run` provides).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Every schema made here starts with this, and only such schemas are ever dropped.
const SCHEMA_PREFIX: &str = "tollgate_test_";
/// Schemas left behind by tests that failed before cleaning up are dropped once they
/// are this old.
const STALE_AFTER_MS: i64 = 3_600_000;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The test server's URL: `TOLLGATE_TEST_POSTGRES_URL`, else the default.
pub fn postgres_url() -> String {
    std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned())
}

/// A schema of its own in the test database.
#[derive(Debug)]
pub struct PgSchema {
    base_url: String,
    name: String,
}

impl PgSchema {
    /// Creates a new schema on the test server ([`postgres_url`]).
    pub async fn create() -> Result<Self> {
        Self::create_at(&postgres_url()).await
    }

    /// Creates a new schema, named `tollgate_test_<ms>_<pid>_<n>`, in the database at
    /// `base_url`, after dropping test schemas older than an hour.
    pub async fn create_at(base_url: &str) -> Result<Self> {
        let name = format!(
            "{SCHEMA_PREFIX}{}_{}_{}",
            now_ms(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = connect(base_url).await?;
        drop_stale(&mut conn).await?;
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(Self {
            base_url: base_url.to_owned(),
            name,
        })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A database URL whose every connection works in this schema.
    pub fn url(&self) -> String {
        let sep = if self.base_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}options=-c%20search_path%3D{}",
            self.base_url, self.name
        )
    }

    /// Opens a store in this schema (migrating it on first open).
    pub async fn open(&self) -> Result<Store> {
        Store::open_url(&self.url()).await
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) -> Result<()> {
        let mut conn = connect(&self.base_url).await?;
        drop_named(&mut conn, &self.name).await?;
        conn.close().await?;
        Ok(())
    }
}

/// One connection, with a short timeout and an error that names the server.
async fn connect(url: &str) -> Result<PgConnection> {
    let options = PgConnectOptions::from_str(url)?;
    let server = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let unreachable = |why: String| {
        StoreError::Invalid(format!(
            "the PostgreSQL test server {server} is not reachable ({why}); start one \
             (.ci/run does) or point {POSTGRES_URL_VAR} at one"
        ))
    };
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable("timed out after 5 s".to_owned())),
    }
}

async fn drop_named(conn: &mut PgConnection, name: &str) -> Result<()> {
    if !name.starts_with(SCHEMA_PREFIX)
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(StoreError::Invalid(format!(
            "refusing to drop schema {name:?}: not a test schema"
        )));
    }
    sqlx::query(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Drops test schemas whose creation time (in the name) is over an hour ago.
async fn drop_stale(conn: &mut PgConnection) -> Result<()> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::TEXT FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(SCHEMA_PREFIX)
            .fetch_all(&mut *conn)
            .await?;
    let cutoff = now_ms() - STALE_AFTER_MS;
    for name in names {
        let created = name
            .strip_prefix(SCHEMA_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|ms| ms.parse::<i64>().ok());
        if created.is_some_and(|ms| ms < cutoff) {
            // Another test process may be dropping it at the same moment; either
            // way it goes, and this test does not depend on it.
            let _ = drop_named(conn, &name).await;
        }
    }
    Ok(())
}
