//! Store behaviour, one suite run against both backends: each scenario is a function
//! over a [`TestDb`], and `both_backends!` makes a `sqlite::` test (a fresh file) and a
//! `postgres::` test (a fresh schema on the test server) of it. The PostgreSQL tests
//! fail, never skip, when the server cannot be reached.

use super::*;
use crate::testing::PgSchema;

/// An empty database a scenario can open handles on.
enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(PgSchema),
}

impl TestDb {
    fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres() -> Self {
        match PgSchema::create().await {
            Ok(schema) => Self::Postgres(schema),
            Err(e) => panic!("PostgreSQL store tests cannot run: {e}"),
        }
    }

    /// A new handle on this database (a second one models another process).
    async fn open(&self) -> Store {
        match self {
            Self::Sqlite(dir) => Store::open_data_dir(dir.path()).await.unwrap(),
            Self::Postgres(schema) => schema.open().await.unwrap(),
        }
    }

    /// Runs one SQL statement on a plain connection of its own, past the store's
    /// methods (to show what the database itself allows).
    /// Runs a script of several statements on a plain connection of its own.
    async fn raw_script(&self, sql: &str) -> Result<(), sqlx::Error> {
        use sqlx::Connection as _;
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(dir) => {
                let path = dir.path().join("tollgate.db");
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true);
                let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
                sqlx::raw_sql(sql).execute(&mut conn).await?;
            }
            Self::Postgres(schema) => {
                let mut conn = sqlx::PgConnection::connect(&schema.url()).await?;
                sqlx::raw_sql(sql).execute(&mut conn).await?;
            }
        }
        Ok(())
    }

    /// The first migration, as an older tollgate left the database.
    fn first_migration(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => include_str!("sqlite/0001_init.sql"),
            Self::Postgres(_) => include_str!("postgres/0001_init.sql"),
        }
    }

    async fn raw_execute(&self, sql: &'static str) -> Result<u64, sqlx::Error> {
        use sqlx::Connection as _;
        match self {
            Self::Sqlite(dir) => {
                let path = dir.path().join("tollgate.db");
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
                let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
                Ok(sqlx::query(sql).execute(&mut conn).await?.rows_affected())
            }
            Self::Postgres(schema) => {
                let mut conn = sqlx::PgConnection::connect(&schema.url()).await?;
                Ok(sqlx::query(sql).execute(&mut conn).await?.rows_affected())
            }
        }
    }

    async fn cleanup(self) {
        if let Self::Postgres(schema) = self {
            schema.drop_schema().await.unwrap();
        }
    }
}

/// Generates `sqlite::NAME` and `postgres::NAME` tests from `async fn NAME(&TestDb)`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDb::sqlite();
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::TestDb::postgres().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

both_backends!(
    the_spend_roll_up_saturates_and_takes_batches_of_many_keys,
    keys_round_trip_and_revocation_bumps_the_version,
    a_key_needs_an_existing_project_and_a_unique_digest,
    usage_batches_are_written_once_and_totalled,
    usage_text_with_a_nul_is_stored_and_failed_streams_count_as_errors,
    usage_totals_group_by_key_project_and_day,
    usage_costs_are_stored_exactly_and_unknown_costs_stay_null,
    reopening_keeps_data_and_does_not_rerun_migrations,
    processes_opening_at_once_migrate_once,
    concurrent_writers_on_one_database_do_not_fail,
    a_large_batch_spans_several_insert_statements,
    keys_carry_expiry_and_projects_a_max_key_age,
    rotation_issues_a_successor_and_retires_the_old_key,
    rotate_is_atomic,
    suspension_and_resumption_bump_the_version,
    unused_keys_are_found_by_last_use_or_creation,
    audit_rows_are_written_and_never_updated_or_deleted,
    the_database_refuses_to_change_or_remove_audit_rows,
    keys_made_before_expiry_existed_get_created_plus_90_days,
    of_two_concurrent_rotations_of_one_key_exactly_one_wins,
    projects_are_created_listed_shown_and_deleted,
    provider_credentials_are_references_resolved_env_then_project,
    projects_carry_their_own_anomaly_auto_suspend_choice,
    reserved_project_names_are_refused_except_the_gateway_project_on_demand,
    rate_limits_are_set_replaced_listed_cleared_and_audited,
    rate_limits_are_refused_when_invalid_and_leave_nothing_behind,
    output_caps_are_set_per_project_and_key_listed_and_cleared,
    a_successor_inherits_the_keys_own_limits_caps_and_budgets,
    budgets_are_set_replaced_listed_cleared_and_audited,
    budgets_are_refused_when_invalid_and_leave_nothing_behind,
    spend_is_summed_per_project_env_and_key_since_the_day_and_month,
    a_soft_threshold_notice_is_claimed_once_per_period,
    a_keys_lane_is_created_changed_audited_and_inherited,
    usage_records_carry_their_lane_and_the_upstreams_remaining_capacity,
    usage_records_keep_which_fallback_target_served,
    model_aliases_and_access_lists_are_set_listed_cleared_and_audited,
    usage_records_say_what_the_cache_did_and_totals_count_hits,
    catalog_models_are_set_replaced_listed_removed_and_audited,
);

fn new_key(id: &str, project: &str, digest: &str) -> NewKey {
    NewKey {
        id: id.into(),
        project: project.into(),
        env: "dev".into(),
        role: Role::Member,
        name: Some("ci".into()),
        prefix: "tg-dev-abcd".into(),
        digest_hex: digest.into(),
        created_at_ms: 1_000,
        expires_at_ms: 1_000 + DEFAULT_MAX_KEY_AGE_MS,
        lane: Lane::Interactive,
    }
}

fn cli() -> Actor {
    Actor::new("cli:alice", "cli")
}

const DAY: i64 = 86_400_000;

fn usage(
    request_id: &str,
    key: &str,
    model: &str,
    input: u64,
    output: u64,
    at: i64,
) -> UsageRecord {
    UsageRecord {
        request_id: request_id.into(),
        key_id: Some(key.into()),
        project: Some("shop".into()),
        env: Some("dev".into()),
        endpoint: "/v1/responses".into(),
        model_requested: Some(model.into()),
        model_served: Some(format!("{model}-2024-08-06")),
        status: 200,
        input_tokens: input,
        output_tokens: output,
        total_tokens: input + output,
        attempts: 1,
        latency_ms: 12,
        created_at_ms: at,
        ..UsageRecord::default()
    }
}

async fn keys_round_trip_and_revocation_bumps_the_version(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    // Idempotent.
    let p = store.ensure_project("shop").await.unwrap();
    assert_eq!(p.name, "shop");

    let v0 = store.keys_version().await.unwrap();
    let k = store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    assert_eq!(k.state(2_000), KeyState::Active);
    let v1 = store.keys_version().await.unwrap();
    assert!(v1 > v0);
    assert_eq!(store.active_keys().await.unwrap().len(), 1);

    assert!(store
        .revoke_key("key_1", Some("leaked"), 5_000)
        .await
        .unwrap());
    assert!(!store.revoke_key("key_1", None, 6_000).await.unwrap());
    assert!(store.keys_version().await.unwrap() > v1);
    assert!(store.active_keys().await.unwrap().is_empty());
    let k = store.key_by_id("key_1").await.unwrap().unwrap();
    assert_eq!(k.state(6_000), KeyState::Revoked);
    assert_eq!(k.revoke_reason.as_deref(), Some("leaked"));
    assert!(matches!(
        store.revoke_key("key_missing", None, 1).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_key_needs_an_existing_project_and_a_unique_digest(db: &TestDb) {
    let store = db.open().await;
    assert!(matches!(
        store.insert_key(&new_key("key_1", "nope", "aa")).await,
        Err(StoreError::NotFound(_))
    ));
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    assert!(store
        .insert_key(&new_key("key_2", "shop", "aa"))
        .await
        .is_err());
    assert!(matches!(
        store.ensure_project("Bad Name").await,
        Err(StoreError::Invalid(_))
    ));
}

async fn usage_batches_are_written_once_and_totalled(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    let batch = vec![
        usage("req_1", "key_1", "gpt-4o", 10, 5, 86_400_000),
        usage("req_2", "key_1", "gpt-4o-mini", 7, 3, 86_400_500),
    ];
    store.insert_usage(&batch).await.unwrap();
    // A replayed batch does not double count.
    store.insert_usage(&batch).await.unwrap();
    let records = store.usage_records(0).await.unwrap();
    assert_eq!(records, batch);

    let by_model = store
        .usage_totals(&UsageFilter {
            group: UsageGroup::Model,
            since_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(by_model.len(), 2);
    assert_eq!(by_model[0].group, "gpt-4o-2024-08-06");
    assert_eq!(by_model[0].total_tokens, 15);
    let by_day = store
        .usage_totals(&UsageFilter {
            group: UsageGroup::Day,
            since_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(by_day[0].group, "1970-01-02");
    assert_eq!(by_day[0].requests, 2);
    let later = store
        .usage_totals(&UsageFilter {
            group: UsageGroup::Key,
            since_ms: 86_400_100,
        })
        .await
        .unwrap();
    assert_eq!(later[0].requests, 1);

    let k = store.key_by_id("key_1").await.unwrap().unwrap();
    assert_eq!(k.last_used_at_ms, Some(86_400_500));
}

async fn usage_text_with_a_nul_is_stored_and_failed_streams_count_as_errors(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    // A caller can put a NUL in a model name; PostgreSQL's text refuses NUL, which
    // must not fail the batch (the writer would retry it forever).
    let mut odd = usage("req_1", "key_1", "gpt-4o\0x", 1, 1, 86_400_000);
    odd.status = 404;
    // A stream cut after its first byte: status 200, with an error code.
    let mut cut = usage("req_2", "key_1", "gpt-4o", 5, 0, 86_400_001);
    cut.error_code = Some("upstream_stream_failed".into());
    let fine = usage("req_3", "key_1", "gpt-4o", 5, 5, 86_400_002);
    store.insert_usage(&[odd, cut, fine]).await.unwrap();
    let records = store.usage_records(0).await.unwrap();
    assert_eq!(records.len(), 3);
    let model = records[0].model_requested.as_deref().unwrap();
    assert!(
        model.starts_with("gpt-4o") && model.ends_with('x'),
        "{model:?}"
    );
    let totals = store
        .usage_totals(&UsageFilter {
            group: UsageGroup::Key,
            since_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!((totals[0].requests, totals[0].errors), (3, 2));
}

async fn reopening_keeps_data_and_does_not_rerun_migrations(db: &TestDb) {
    {
        let store = db.open().await;
        store.ensure_project("shop").await.unwrap();
    }
    let store = db.open().await;
    assert!(store.project_by_name("shop").await.unwrap().is_some());
    store.ping().await.unwrap();
    // Migrations 13 and 15 dropped the usage indexes no query reads through: their
    // names are free again (creating an index under a taken name fails), and the one
    // reports read through is still there.
    for name in ["usage_served_by", "usage_key"] {
        db.raw_script(&format!("CREATE INDEX {name} ON usage (status)"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(db
        .raw_script("CREATE INDEX usage_created ON usage (status)")
        .await
        .is_err());
}

/// Regression: a deferred SQLite transaction that read before writing failed at once
/// with "database is locked" when another connection wrote in between. Two handles
/// model two processes on one database.
async fn concurrent_writers_on_one_database_do_not_fail(db: &TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    a.ensure_project("shop").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let id = format!("key_{i}");
            store
                .insert_key(&new_key(&id, "shop", &format!("{i:064x}")))
                .await?;
            store
                .insert_usage(&[usage(&format!("req_{i}"), &id, "gpt-4o", 1, 1, 1)])
                .await?;
            store.revoke_key(&id, None, 2).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(a.list_keys().await.unwrap().len(), 40);
    assert!(b.active_keys().await.unwrap().is_empty());
    assert_eq!(a.usage_records(0).await.unwrap().len(), 40);
}

async fn a_large_batch_spans_several_insert_statements(db: &TestDb) {
    let store = db.open().await;
    let batch: Vec<_> = (0..600)
        .map(|i| {
            usage(
                &format!("req_{i}"),
                "key_x",
                "gpt-4o",
                i,
                1,
                i64::from(i as i32),
            )
        })
        .collect();
    store.insert_usage(&batch).await.unwrap();
    let back = store.usage_records(0).await.unwrap();
    assert_eq!(back.len(), 600);
    assert_eq!(back, batch);
}

async fn usage_costs_are_stored_exactly_and_unknown_costs_stay_null(db: &TestDb) {
    let store = db.open().await;
    let mut a = usage("req_1", "key_1", "gpt-4o", 10, 5, 1);
    a.cost_usd_nanos = Some(405_000);
    let mut b = usage("req_2", "key_1", "gpt-4o", 10, 5, 2);
    // Larger than 2^53: a float column or a float sum would round it.
    b.cost_usd_nanos = Some(9_007_199_254_740_993);
    let unknown = usage("req_3", "key_1", "llama3", 10, 5, 3);
    let mut only_unknown = usage("req_4", "key_2", "llama3", 1, 1, 4);
    only_unknown.cost_usd_nanos = None;
    store
        .insert_usage(&[a.clone(), b.clone(), unknown, only_unknown])
        .await
        .unwrap();
    let back = store.usage_records(0).await.unwrap();
    let costs: Vec<_> = back.iter().map(|r| r.cost_usd_nanos).collect();
    assert_eq!(
        costs,
        [Some(405_000), Some(9_007_199_254_740_993), None, None]
    );
    assert_eq!(back[0], a);
    let by_key = store
        .usage_totals(&UsageFilter {
            group: UsageGroup::Key,
            since_ms: 0,
        })
        .await
        .unwrap();
    let got: Vec<_> = by_key
        .iter()
        .map(|t| (t.group.as_str(), t.cost_usd_nanos, t.unpriced))
        .collect();
    assert_eq!(
        got,
        [
            ("key_1", Some(405_000 + 9_007_199_254_740_993), 1),
            ("key_2", None, 1),
        ]
    );
}

async fn usage_totals_group_by_key_project_and_day(db: &TestDb) {
    let store = db.open().await;
    let mut failed = usage("req_3", "key_2", "gpt-4o", 4, 0, 2 * 86_400_000 + 1);
    failed.status = 502;
    let mut gone = usage("req_4", "key_1", "gpt-4o", 1, 1, 2 * 86_400_000 + 2);
    gone.client_disconnected = true;
    gone.env = None;
    let mut anonymous = usage("req_5", "key_1", "gpt-4o", 0, 0, 1);
    anonymous.key_id = None;
    anonymous.project = None;
    anonymous.model_served = None;
    anonymous.model_requested = None;
    anonymous.cached_tokens = 3;
    anonymous.reasoning_tokens = 2;
    let batch = vec![
        usage("req_1", "key_1", "gpt-4o", 10, 5, 86_400_000),
        usage("req_2", "key_2", "gpt-4o", 7, 3, 86_400_500),
        failed,
        gone,
        anonymous,
    ];
    store.insert_usage(&batch).await.unwrap();
    let totals = |group| {
        let store = store.clone();
        async move {
            store
                .usage_totals(&UsageFilter { group, since_ms: 0 })
                .await
                .unwrap()
                .into_iter()
                .map(|t| (t.group, t.requests, t.errors, t.total_tokens))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        totals(UsageGroup::Key).await,
        vec![
            ("-".to_owned(), 1, 0, 0),
            ("key_1".to_owned(), 2, 1, 17),
            ("key_2".to_owned(), 2, 1, 14),
        ]
    );
    assert_eq!(
        totals(UsageGroup::Project).await,
        vec![
            ("-/dev".to_owned(), 1, 0, 0),
            ("shop/-".to_owned(), 1, 1, 2),
            ("shop/dev".to_owned(), 3, 1, 29),
        ]
    );
    assert_eq!(
        totals(UsageGroup::Day).await,
        vec![
            ("1970-01-01".to_owned(), 1, 0, 0),
            ("1970-01-02".to_owned(), 2, 0, 25),
            ("1970-01-03".to_owned(), 2, 2, 6),
        ]
    );
    let by_model = store
        .usage_totals(&UsageFilter {
            group: UsageGroup::Model,
            since_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(by_model[0].group, "-");
    assert_eq!(by_model[0].cached_tokens, 3);
    assert_eq!(by_model[0].reasoning_tokens, 2);
    assert_eq!(by_model[1].group, "gpt-4o-2024-08-06");
    assert_eq!(by_model[1].requests, 4);
    assert_eq!(by_model[1].input_tokens, 22);
    assert_eq!(by_model[1].output_tokens, 9);
}

/// Two processes starting on an empty database at the same moment: one migrates,
/// the other waits for it (PostgreSQL: the advisory lock) and finds the work done.
async fn processes_opening_at_once_migrate_once(db: &TestDb) {
    let (a, b) = tokio::join!(db.open(), db.open());
    a.ensure_project("shop").await.unwrap();
    assert!(b.project_by_name("shop").await.unwrap().is_some());
    assert_eq!(b.keys_version().await.unwrap(), 0);
}

#[tokio::test]
async fn database_urls_choose_the_backend_and_errors_name_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    assert!(matches!(
        Store::open_url(&url).await.unwrap(),
        Store::Sqlite(_)
    ));
    let Err(StoreError::Invalid(e)) = Store::open_url("mysql://root:hunter2@db/x").await else {
        panic!("mysql:// accepted");
    };
    assert!(e.contains("postgres://") && !e.contains("hunter2"), "{e}");

    // Nothing listens on port 1: the real cause comes back at once, not a pool timeout.
    let started = std::time::Instant::now();
    let e = Store::open_url("postgresql://postgres:hunter2@127.0.0.1:1/test")
        .await
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{e}");
    assert!(e.contains("refused"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

async fn keys_carry_expiry_and_projects_a_max_key_age(db: &TestDb) {
    let store = db.open().await;
    let p = store.ensure_project_as("shop", &cli()).await.unwrap();
    assert_eq!(p.max_key_age_ms, None);
    assert_eq!(p.effective_max_key_age_ms(), DEFAULT_MAX_KEY_AGE_MS);
    let p = store
        .set_project_max_key_age("shop", Some(30 * DAY), 2_000, &cli())
        .await
        .unwrap();
    assert_eq!(p.effective_max_key_age_ms(), 30 * DAY);
    assert!(matches!(
        store
            .set_project_max_key_age("nope", Some(DAY), 2_000, &cli())
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .set_project_max_key_age("shop", Some(0), 2_000, &cli())
            .await,
        Err(StoreError::Invalid(_))
    ));
    let mut k = new_key("key_1", "shop", "aa");
    k.expires_at_ms = 1_000 + 30 * DAY;
    let rec = store.insert_key_as(&k, &cli()).await.unwrap();
    assert_eq!(rec.expires_at_ms, 1_000 + 30 * DAY);
    assert_eq!(rec.state(1_000 + 30 * DAY), KeyState::Expired);
    assert!(rec.due_for_rotation(1_000 + 20 * DAY));
    let mut bad = new_key("key_2", "shop", "bb");
    bad.expires_at_ms = bad.created_at_ms;
    assert!(matches!(
        store.insert_key(&bad).await,
        Err(StoreError::Invalid(_))
    ));
    // Expired keys stay in the cache set, so servers can say why they refuse them.
    assert_eq!(store.active_keys().await.unwrap().len(), 1);
}

fn successor_of(old: &str, id: &str, digest: &str, now: i64) -> NewKey {
    let _ = old;
    NewKey {
        created_at_ms: now,
        expires_at_ms: now + DEFAULT_MAX_KEY_AGE_MS,
        ..new_key(id, "shop", digest)
    }
}

async fn rotation_issues_a_successor_and_retires_the_old_key(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    let v0 = store.keys_version().await.unwrap();
    let next = store
        .rotate_key(
            "key_1",
            &successor_of("key_1", "key_2", "bb", 5_000),
            1_000,
            5_000,
            &cli(),
        )
        .await
        .unwrap();
    assert_eq!(next.id, "key_2");
    assert_eq!(next.name.as_deref(), Some("ci"));
    assert_eq!(next.state(5_000), KeyState::Active);
    assert!(store.keys_version().await.unwrap() > v0);
    let old = store.key_by_id("key_1").await.unwrap().unwrap();
    assert_eq!(old.rotated_to.as_deref(), Some("key_2"));
    assert_eq!(old.retire_at_ms, Some(6_000));
    assert_eq!(old.state(5_999), KeyState::Retiring);
    assert_eq!(old.state(6_000), KeyState::Retired);
    // Rotating again, or rotating a revoked key, is refused.
    assert!(matches!(
        store
            .rotate_key(
                "key_1",
                &successor_of("key_1", "key_3", "cc", 7_000),
                0,
                7_000,
                &cli()
            )
            .await,
        Err(StoreError::Conflict(_))
    ));
    store.revoke_key("key_2", None, 8_000).await.unwrap();
    assert!(matches!(
        store
            .rotate_key(
                "key_2",
                &successor_of("key_2", "key_3", "cc", 9_000),
                0,
                9_000,
                &cli()
            )
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .rotate_key(
                "key_missing",
                &successor_of("key_missing", "key_3", "cc", 9_000),
                0,
                9_000,
                &cli()
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
    // A successor in another environment is refused.
    store
        .insert_key(&new_key("key_4", "shop", "dd"))
        .await
        .unwrap();
    let mut other_env = successor_of("key_4", "key_5", "ee", 9_000);
    other_env.env = "prod".into();
    assert!(matches!(
        store
            .rotate_key("key_4", &other_env, 0, 9_000, &cli())
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store.key_by_id("key_3").await.unwrap().is_none());
    assert!(store.key_by_id("key_5").await.unwrap().is_none());
}

/// The successor's insert fails (its digest is taken): the old key must be left
/// exactly as it was, with no version bump and no audit row.
async fn rotate_is_atomic(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    store
        .insert_key(&new_key("key_2", "shop", "bb"))
        .await
        .unwrap();
    let before = store.key_by_id("key_1").await.unwrap().unwrap();
    let v0 = store.keys_version().await.unwrap();
    let audit0 = store.list_audit(0, 1_000).await.unwrap();
    let clash = successor_of("key_1", "key_3", "bb", 5_000);
    assert!(store
        .rotate_key("key_1", &clash, 1_000, 5_000, &cli())
        .await
        .is_err());
    assert_eq!(store.key_by_id("key_1").await.unwrap().unwrap(), before);
    assert!(store.key_by_id("key_3").await.unwrap().is_none());
    assert_eq!(store.keys_version().await.unwrap(), v0);
    assert_eq!(store.list_audit(0, 1_000).await.unwrap(), audit0);
    // And the same rotation with a fresh digest then succeeds.
    store
        .rotate_key(
            "key_1",
            &successor_of("key_1", "key_3", "cc", 5_000),
            0,
            5_000,
            &cli(),
        )
        .await
        .unwrap();
    let old = store.key_by_id("key_1").await.unwrap().unwrap();
    assert_eq!(old.state(5_000), KeyState::Retired);
}

async fn suspension_and_resumption_bump_the_version(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    let v0 = store.keys_version().await.unwrap();
    assert!(store
        .suspend_key("key_1", Some("odd traffic"), 2_000, &cli())
        .await
        .unwrap());
    assert!(!store
        .suspend_key("key_1", None, 2_500, &cli())
        .await
        .unwrap());
    let v1 = store.keys_version().await.unwrap();
    assert!(v1 > v0);
    let k = store.key_by_id("key_1").await.unwrap().unwrap();
    assert_eq!(k.state(3_000), KeyState::Suspended);
    assert_eq!(k.suspend_reason.as_deref(), Some("odd traffic"));
    assert!(store
        .resume_key("key_1", Some("checked"), 4_000, &cli())
        .await
        .unwrap());
    assert!(!store
        .resume_key("key_1", None, 4_500, &cli())
        .await
        .unwrap());
    assert!(store.keys_version().await.unwrap() > v1);
    let k = store.key_by_id("key_1").await.unwrap().unwrap();
    assert_eq!(k.state(5_000), KeyState::Active);
    assert_eq!(k.suspend_reason, None);
    assert!(matches!(
        store.suspend_key("key_missing", None, 1, &cli()).await,
        Err(StoreError::NotFound(_))
    ));
    store.revoke_key("key_1", None, 6_000).await.unwrap();
    assert!(matches!(
        store.suspend_key("key_1", None, 7_000, &cli()).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn unused_keys_are_found_by_last_use_or_creation(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    let at = |id: &str, digest: &str, created: i64| NewKey {
        created_at_ms: created,
        expires_at_ms: created + DEFAULT_MAX_KEY_AGE_MS,
        ..new_key(id, "shop", digest)
    };
    // Never used, old; never used, new; used long ago; used recently; revoked.
    store.insert_key(&at("key_old", "aa", 1_000)).await.unwrap();
    store.insert_key(&at("key_new", "bb", 9_000)).await.unwrap();
    store
        .insert_key(&at("key_stale", "cc", 1_000))
        .await
        .unwrap();
    store
        .insert_key(&at("key_busy", "dd", 1_000))
        .await
        .unwrap();
    store
        .insert_key(&at("key_gone", "ee", 1_000))
        .await
        .unwrap();
    store
        .insert_usage(&[
            usage("req_1", "key_stale", "gpt-4o", 1, 1, 2_000),
            usage("req_2", "key_busy", "gpt-4o", 1, 1, 8_000),
        ])
        .await
        .unwrap();
    store.revoke_key("key_gone", None, 3_000).await.unwrap();
    let ids: Vec<String> = store
        .keys_unused_since(5_000)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, vec!["key_old".to_owned(), "key_stale".to_owned()]);
}

async fn audit_rows_are_written_and_never_updated_or_deleted(db: &TestDb) {
    let store = db.open().await;
    let a = cli();
    store.ensure_project_as("shop", &a).await.unwrap();
    // Creating an existing project changes nothing and writes nothing.
    store.ensure_project_as("shop", &a).await.unwrap();
    let mut snapshots = vec![store.list_audit(0, 1_000).await.unwrap()];
    store
        .insert_key_as(&new_key("key_1", "shop", "aa"), &a)
        .await
        .unwrap();
    snapshots.push(store.list_audit(0, 1_000).await.unwrap());
    store
        .set_project_max_key_age("shop", Some(DAY), 2_000, &a)
        .await
        .unwrap();
    snapshots.push(store.list_audit(0, 1_000).await.unwrap());
    store
        .suspend_key("key_1", Some("why"), 3_000, &a)
        .await
        .unwrap();
    snapshots.push(store.list_audit(0, 1_000).await.unwrap());
    store.resume_key("key_1", None, 4_000, &a).await.unwrap();
    snapshots.push(store.list_audit(0, 1_000).await.unwrap());
    store
        .rotate_key(
            "key_1",
            &successor_of("key_1", "key_2", "bb", 5_000),
            0,
            5_000,
            &a,
        )
        .await
        .unwrap();
    snapshots.push(store.list_audit(0, 1_000).await.unwrap());
    store
        .revoke_key_as("key_2", Some("done"), 6_000, &a)
        .await
        .unwrap();
    snapshots.push(store.list_audit(0, 1_000).await.unwrap());
    store
        .insert_audit(&NewAudit {
            at_ms: 7_000,
            actor: "cli:alice".into(),
            action: "keys.prune".into(),
            target: "shop".into(),
            detail: "{}".into(),
            source: "cli".into(),
        })
        .await
        .unwrap();
    let bad = NewAudit {
        at_ms: 7_000,
        actor: "cli:alice".into(),
        action: "keys.prune".into(),
        target: "shop".into(),
        detail: "not json".into(),
        source: "cli".into(),
    };
    assert!(matches!(
        store.insert_audit(&bad).await,
        Err(StoreError::Invalid(_))
    ));
    store
        .insert_usage(&[usage("req_1", "key_2", "gpt-4o", 1, 1, 7_500)])
        .await
        .unwrap();
    snapshots.push(store.list_audit(0, 1_000).await.unwrap());

    // Each change appended exactly one row and left every earlier row as it was.
    for pair in snapshots.windows(2) {
        assert_eq!(pair[1].len(), pair[0].len() + 1);
        assert_eq!(&pair[1][..pair[0].len()], &pair[0][..]);
    }
    let all = snapshots.last().unwrap();
    let actions: Vec<&str> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "project.create",
            "key.create",
            "project.set_max_key_age",
            "key.suspend",
            "key.resume",
            "key.rotate",
            "key.revoke",
            "keys.prune",
        ]
    );
    assert!(all
        .iter()
        .all(|e| e.actor == "cli:alice" && e.source == "cli"));
    for e in all {
        assert!(serde_json::from_str::<serde_json::Value>(&e.detail)
            .unwrap()
            .is_object());
    }
    assert_eq!(all[5].target, "key_1");
    assert!(all[5].detail.contains("key_2"));
    // `since` and `limit` narrow the listing.
    let since: Vec<AuditEntry> = all.iter().filter(|e| e.at_ms >= 5_000).cloned().collect();
    assert_eq!(store.list_audit(5_000, 1_000).await.unwrap(), since);
    assert_eq!(store.list_audit(0, 2).await.unwrap().len(), 2);
    // A second handle (another process) sees the same log.
    assert_eq!(&db.open().await.list_audit(0, 1_000).await.unwrap(), all);
}

async fn the_database_refuses_to_change_or_remove_audit_rows(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project_as("shop", &cli()).await.unwrap();
    let before = store.list_audit(0, 100).await.unwrap();
    assert_eq!(before.len(), 1);
    assert!(db
        .raw_execute("UPDATE audit SET actor = 'someone else'")
        .await
        .is_err());
    assert!(db.raw_execute("DELETE FROM audit").await.is_err());
    assert_eq!(store.list_audit(0, 100).await.unwrap(), before);
}

async fn keys_made_before_expiry_existed_get_created_plus_90_days(db: &TestDb) {
    // A database as migration 1 left it, with one key.
    db.raw_script(db.first_migration()).await.unwrap();
    db.raw_script(
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL); \
         INSERT INTO schema_migrations (version, applied_at_ms) VALUES (1, 0); \
         INSERT INTO projects (id, name, created_at_ms) VALUES ('proj_shop', 'shop', 0); \
         INSERT INTO keys (id, project, env, role, prefix, digest_hex, created_at_ms) \
         VALUES ('key_old', 'shop', 'dev', 'member', 'tg-dev-x', 'aa', 5000);",
    )
    .await
    .unwrap();
    let store = db.open().await;
    let k = store.key_by_id("key_old").await.unwrap().unwrap();
    assert_eq!(k.expires_at_ms, 5_000 + DEFAULT_MAX_KEY_AGE_MS);
    assert_eq!(k.state(6_000), KeyState::Active);
    let p = store.project_by_name("shop").await.unwrap().unwrap();
    assert_eq!(p.max_key_age_ms, None);
    assert!(store.list_audit(0, 10).await.unwrap().is_empty());
}

async fn of_two_concurrent_rotations_of_one_key_exactly_one_wins(db: &TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    a.ensure_project("shop").await.unwrap();
    a.insert_key(&new_key("key_1", "shop", "aa")).await.unwrap();
    let (next_a, next_b) = (
        successor_of("key_1", "key_a", "bb", 5_000),
        successor_of("key_1", "key_b", "cc", 5_000),
    );
    let actor = cli();
    let (ra, rb) = tokio::join!(
        a.rotate_key("key_1", &next_a, 0, 5_000, &actor),
        b.rotate_key("key_1", &next_b, 0, 5_000, &actor),
    );
    assert!(ra.is_ok() != rb.is_ok(), "{ra:?} / {rb:?}");
    let winner = if ra.is_ok() { "key_a" } else { "key_b" };
    let loser = if ra.is_ok() { "key_b" } else { "key_a" };
    let old = a.key_by_id("key_1").await.unwrap().unwrap();
    assert_eq!(old.rotated_to.as_deref(), Some(winner));
    assert!(a.key_by_id(loser).await.unwrap().is_none());
    let rotations = a
        .list_audit(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "key.rotate")
        .count();
    assert_eq!(rotations, 1);
}

async fn projects_are_created_listed_shown_and_deleted(db: &TestDb) {
    let store = db.open().await;
    let v0 = store.keys_version().await.unwrap();
    let p = store
        .create_project("shop", Some("env:OPENAI_KEY_SHOP"), 1_000, &cli())
        .await
        .unwrap();
    assert_eq!(p.upstream_api_key.as_deref(), Some("env:OPENAI_KEY_SHOP"));
    assert!(store.keys_version().await.unwrap() > v0);
    assert!(matches!(
        store.create_project("shop", None, 1_000, &cli()).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.create_project("Bad Name", None, 1_000, &cli()).await,
        Err(StoreError::Invalid(_))
    ));
    store
        .create_project("blog", None, 1_000, &cli())
        .await
        .unwrap();
    store
        .insert_key(&new_key("k1", "shop", "d1"))
        .await
        .unwrap();
    store
        .insert_key(&new_key("k2", "shop", "d2"))
        .await
        .unwrap();

    let list = store.list_projects().await.unwrap();
    let counts: Vec<(&str, u64)> = list
        .iter()
        .map(|p| (p.project.name.as_str(), p.active_keys))
        .collect();
    assert_eq!(counts, vec![("blog", 0), ("shop", 2)]);

    store
        .set_env_credential(
            "shop",
            "prod",
            Some("file:/run/secrets/prod"),
            2_000,
            &cli(),
        )
        .await
        .unwrap();
    let d = store.project_detail("shop").await.unwrap();
    assert_eq!(d.active_keys, 2);
    let envs: Vec<(&str, Option<&str>, u64)> = d
        .envs
        .iter()
        .map(|e| (e.env.as_str(), e.upstream_api_key.as_deref(), e.active_keys))
        .collect();
    assert_eq!(
        envs,
        vec![
            ("dev", None, 2),
            ("prod", Some("file:/run/secrets/prod"), 0)
        ]
    );
    assert!(matches!(
        store.project_detail("nope").await,
        Err(StoreError::NotFound(_))
    ));

    // Refused while a key is live; nothing changes.
    let err = store
        .delete_project("shop", 3_000, &cli())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("not revoked"), "{err}");
    assert!(store.project_by_name("shop").await.unwrap().is_some());

    store.revoke_key("k1", None, 3_000).await.unwrap();
    store.revoke_key("k2", None, 3_000).await.unwrap();
    let v1 = store.keys_version().await.unwrap();
    store.delete_project("shop", 4_000, &cli()).await.unwrap();
    assert!(store.keys_version().await.unwrap() > v1);
    assert!(store.project_by_name("shop").await.unwrap().is_none());
    assert!(matches!(
        store.delete_project("shop", 4_000, &cli()).await,
        Err(StoreError::NotFound(_))
    ));
    // The name can be used again, with no environments left over.
    store
        .create_project("shop", None, 5_000, &cli())
        .await
        .unwrap();
    assert!(store.project_detail("shop").await.unwrap().envs.is_empty());

    let actions: Vec<(String, String)> = store
        .list_audit(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action.starts_with("project."))
        .map(|a| (a.action, a.target))
        .collect();
    assert!(actions.contains(&("project.delete".into(), "shop".into())));
    assert!(actions.contains(&("project.set_env_credential".into(), "shop/prod".into())));
}

async fn provider_credentials_are_references_resolved_env_then_project(db: &TestDb) {
    let store = db.open().await;
    store
        .create_project("shop", None, 1_000, &cli())
        .await
        .unwrap();
    for bad in [
        "sk-live-1234",
        "env:",
        "env:A B",
        "env:1KEY",
        "env:sk-live-1234",
        "http://x",
        "file:",
    ] {
        let before = store.keys_version().await.unwrap();
        assert!(
            matches!(
                store
                    .set_project_credential("shop", Some(bad), 2_000, &cli())
                    .await,
                Err(StoreError::Invalid(_))
            ),
            "{bad}"
        );
        assert!(matches!(
            store
                .set_env_credential("shop", "dev", Some(bad), 2_000, &cli())
                .await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(store.keys_version().await.unwrap(), before);
    }
    // A refused value never reaches the audit log.
    let audit = store.list_audit(0, 100).await.unwrap();
    assert!(audit.iter().all(|a| !a.detail.contains("sk-live")));
    assert!(matches!(
        store
            .set_env_credential("nope", "dev", Some("env:X"), 2_000, &cli())
            .await,
        Err(StoreError::NotFound(_))
    ));

    assert_eq!(
        store
            .credential_refs()
            .await
            .unwrap()
            .for_key("shop", "dev"),
        None
    );
    let v = store.keys_version().await.unwrap();
    store
        .set_project_credential("shop", Some("env:SHOP_DEFAULT"), 2_000, &cli())
        .await
        .unwrap();
    store
        .set_env_credential("shop", "prod", Some("exec:vault read prod"), 2_000, &cli())
        .await
        .unwrap();
    assert!(store.keys_version().await.unwrap() >= v + 2);
    let refs = store.credential_refs().await.unwrap();
    assert_eq!(refs.for_key("shop", "dev"), Some("env:SHOP_DEFAULT"));
    assert_eq!(refs.for_key("shop", "prod"), Some("exec:vault read prod"));
    assert_eq!(refs.for_key("blog", "prod"), None);

    // Clearing the environment's reference falls back to the project's.
    store
        .set_env_credential("shop", "prod", None, 3_000, &cli())
        .await
        .unwrap();
    store
        .set_project_credential("shop", None, 3_000, &cli())
        .await
        .unwrap();
    let refs = store.credential_refs().await.unwrap();
    assert_eq!(refs.for_key("shop", "prod"), None);
    let d = store.project_detail("shop").await.unwrap();
    assert_eq!(d.envs.len(), 1);
    assert_eq!(d.envs[0].upstream_api_key, None);
}

async fn projects_carry_their_own_anomaly_auto_suspend_choice(db: &TestDb) {
    let store = db.open().await;
    let settings = NewProject {
        upstream_api_key: None,
        max_key_age_ms: Some(7 * DAY),
        anomaly_auto_suspend: Some(true),
    };
    let p = store
        .create_project_with("shop", &settings, 1_000, &cli())
        .await
        .unwrap();
    assert_eq!(p.anomaly_auto_suspend, Some(true));
    assert_eq!(p.max_key_age_ms, Some(7 * DAY));
    let blog = store
        .create_project("blog", None, 1_000, &cli())
        .await
        .unwrap();
    assert_eq!(
        blog.anomaly_auto_suspend, None,
        "unset: the gateway's setting"
    );

    // A change is audited and bumps the keys version (servers reload settings with keys).
    let v0 = store.keys_version().await.unwrap();
    let p = store
        .set_project_anomaly_auto_suspend("blog", Some(false), 2_000, &cli())
        .await
        .unwrap();
    assert_eq!(p.anomaly_auto_suspend, Some(false));
    assert!(store.keys_version().await.unwrap() > v0);
    let p = store
        .set_project_anomaly_auto_suspend("shop", None, 3_000, &cli())
        .await
        .unwrap();
    assert_eq!(p.anomaly_auto_suspend, None);
    let all: Vec<(String, Option<bool>)> = store
        .projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.anomaly_auto_suspend))
        .collect();
    assert_eq!(
        all,
        vec![("blog".into(), Some(false)), ("shop".into(), None)]
    );

    // Unknown project: NotFound, nothing written.
    let v1 = store.keys_version().await.unwrap();
    let audit_before = store.list_audit(0, 1000).await.unwrap().len();
    assert!(matches!(
        store
            .set_project_anomaly_auto_suspend("nope", Some(true), 4_000, &cli())
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.keys_version().await.unwrap(), v1);
    assert_eq!(store.list_audit(0, 1000).await.unwrap().len(), audit_before);

    let audit = store.list_audit(0, 1000).await.unwrap();
    let changes: Vec<(&str, &str)> = audit
        .iter()
        .filter(|a| a.action == "project.set_anomaly_auto_suspend")
        .map(|a| (a.target.as_str(), a.detail.as_str()))
        .collect();
    assert_eq!(
        changes,
        vec![
            ("blog", r#"{"anomaly_auto_suspend":false}"#),
            ("shop", r#"{"anomaly_auto_suspend":null}"#)
        ]
    );
    let created = audit
        .iter()
        .find(|a| a.action == "project.create" && a.target == "shop")
        .unwrap();
    assert!(created.detail.contains(r#""anomaly_auto_suspend":true"#));
}

async fn reserved_project_names_are_refused_except_the_gateway_project_on_demand(db: &TestDb) {
    let store = db.open().await;
    for name in [GATEWAY_PROJECT, "_other"] {
        let err = store
            .create_project(name, None, 1_000, &cli())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("reserved"), "{err}");
    }
    assert!(matches!(
        store.ensure_project_as("_other", &cli()).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(store.projects().await.unwrap().is_empty());
    // The gateway project is made on demand (for its admin keys).
    let p = store
        .ensure_project_as(GATEWAY_PROJECT, &cli())
        .await
        .unwrap();
    assert_eq!(p.name, GATEWAY_PROJECT);
}

fn scope(project: &str, env: Option<&str>, key: Option<&str>, model: Option<&str>) -> LimitScope {
    LimitScope {
        project: project.into(),
        env: env.map(Into::into),
        key_id: key.map(Into::into),
        model: model.map(Into::into),
    }
}

async fn rate_limits_are_set_replaced_listed_cleared_and_audited(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store.ensure_project("blog").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    let v0 = store.limits_version().await.unwrap();
    let keys_v0 = store.keys_version().await.unwrap();

    let whole = scope("shop", None, None, None);
    let narrow = scope("shop", Some("prod"), Some("key_1"), Some("gpt-4o"));
    let r = store
        .set_rate_limit(&whole, Some(500), None, 10, &cli())
        .await
        .unwrap();
    assert_eq!((r.rpm, r.tpm, r.created_at_ms), (Some(500), None, 10));
    store
        .set_rate_limit(&narrow, None, Some(200_000), 11, &cli())
        .await
        .unwrap();
    store
        .set_rate_limit(
            &scope("blog", None, None, Some("gpt-4o-mini")),
            Some(3),
            Some(9),
            12,
            &cli(),
        )
        .await
        .unwrap();
    let v1 = store.limits_version().await.unwrap();
    assert_eq!(v1, v0 + 3, "each change bumps the limits version once");
    assert_eq!(
        store.keys_version().await.unwrap(),
        keys_v0,
        "keys untouched"
    );

    // Setting an existing scope replaces its limits; the creation time stays.
    let r = store
        .set_rate_limit(&whole, Some(60), Some(1_000), 20, &cli())
        .await
        .unwrap();
    assert_eq!((r.rpm, r.tpm), (Some(60), Some(1_000)));
    assert_eq!((r.created_at_ms, r.updated_at_ms), (10, 20));

    let shop = store.list_rate_limits(Some("shop")).await.unwrap();
    assert_eq!(
        shop.iter().map(|r| r.scope.clone()).collect::<Vec<_>>(),
        vec![whole.clone(), narrow.clone()],
        "ordered by scope, '' (any) first"
    );
    assert_eq!(shop[1].tpm, Some(200_000));
    assert_eq!(shop[1].rpm, None);
    assert_eq!(store.list_rate_limits(None).await.unwrap().len(), 3);
    // A second handle (another process) sees the same rules.
    let other = db.open().await;
    assert_eq!(other.list_rate_limits(Some("shop")).await.unwrap(), shop);

    assert!(store.clear_rate_limit(&narrow, 30, &cli()).await.unwrap());
    assert!(!store.clear_rate_limit(&narrow, 31, &cli()).await.unwrap());
    assert_eq!(store.list_rate_limits(Some("shop")).await.unwrap().len(), 1);
    assert_eq!(store.limits_version().await.unwrap(), v1 + 2);

    let audit = store.list_audit(0, 100).await.unwrap();
    let limits: Vec<(&str, &str)> = audit
        .iter()
        .filter(|a| a.action.starts_with("limits."))
        .map(|a| (a.action.as_str(), a.target.as_str()))
        .collect();
    assert_eq!(
        limits,
        vec![
            ("limits.set", "shop/*/*/*"),
            ("limits.set", "shop/prod/key_1/gpt-4o"),
            ("limits.set", "blog/*/*/gpt-4o-mini"),
            ("limits.set", "shop/*/*/*"),
            ("limits.clear", "shop/prod/key_1/gpt-4o"),
        ]
    );
    assert!(audit.iter().any(|a| a.detail.contains("\"tpm\":1000")));

    // Deleting a project takes its rules with it.
    store.delete_project("blog", 40, &cli()).await.unwrap();
    assert!(store
        .list_rate_limits(Some("blog"))
        .await
        .unwrap()
        .is_empty());
}

async fn rate_limits_are_refused_when_invalid_and_leave_nothing_behind(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store.ensure_project("blog").await.unwrap();
    store
        .insert_key(&new_key("key_blog", "blog", "bb"))
        .await
        .unwrap();
    let v0 = store.limits_version().await.unwrap();
    let invalid = |r: Result<RateLimitRule>| matches!(r, Err(StoreError::Invalid(_)));
    let s = scope("shop", None, None, None);
    assert!(invalid(
        store.set_rate_limit(&s, None, None, 1, &cli()).await
    ));
    assert!(invalid(
        store.set_rate_limit(&s, Some(0), None, 1, &cli()).await
    ));
    assert!(invalid(
        store
            .set_rate_limit(&s, None, Some(u64::MAX), 1, &cli())
            .await
    ));
    assert!(invalid(
        store
            .set_rate_limit(
                &scope("shop", Some("Prod!"), None, None),
                Some(1),
                None,
                1,
                &cli()
            )
            .await
    ));
    assert!(invalid(
        store
            .set_rate_limit(
                &scope("shop", None, None, Some("")),
                Some(1),
                None,
                1,
                &cli()
            )
            .await
    ));
    assert!(matches!(
        store
            .set_rate_limit(&scope("nope", None, None, None), Some(1), None, 1, &cli())
            .await,
        Err(StoreError::NotFound(_))
    ));
    // A key of another project cannot be named.
    assert!(matches!(
        store
            .set_rate_limit(
                &scope("shop", None, Some("key_blog"), None),
                Some(1),
                None,
                1,
                &cli()
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.list_rate_limits(None).await.unwrap().is_empty());
    assert_eq!(store.limits_version().await.unwrap(), v0);
    assert!(!store
        .list_audit(0, 100)
        .await
        .unwrap()
        .iter()
        .any(|a| a.action.starts_with("limits.")));
}

async fn output_caps_are_set_per_project_and_key_listed_and_cleared(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store.ensure_project("blog").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    let v0 = store.limits_version().await.unwrap();
    let project_cap = OutputCap {
        max_output_tokens: Some(1_000),
        over: OverCap::Refuse,
        default_output_tokens: Some(200),
        temperature_min: Some(0.0),
        temperature_max: Some(1.2),
    };
    let r = store
        .set_output_cap("shop", None, &project_cap, 10, &cli())
        .await
        .unwrap();
    assert_eq!((r.key_id.clone(), r.cap), (None, project_cap));
    let key_cap = OutputCap {
        max_output_tokens: Some(50),
        ..OutputCap::default()
    };
    store
        .set_output_cap("shop", Some("key_1"), &key_cap, 11, &cli())
        .await
        .unwrap();
    // Replacing keeps the creation time.
    let r = store
        .set_output_cap("shop", Some("key_1"), &key_cap, 12, &cli())
        .await
        .unwrap();
    assert_eq!((r.created_at_ms, r.updated_at_ms), (11, 12));
    let caps = store.list_output_caps(Some("shop")).await.unwrap();
    assert_eq!(caps.len(), 2);
    assert_eq!(caps[0].key_id, None);
    assert_eq!(caps[1].key_id.as_deref(), Some("key_1"));
    assert_eq!(caps[1].cap.over, OverCap::Clamp);
    assert_eq!(store.limits_version().await.unwrap(), v0 + 3);

    let invalid = |r: Result<OutputCapRule>| matches!(r, Err(StoreError::Invalid(_)));
    let bad = [
        OutputCap::default(),
        OutputCap {
            max_output_tokens: Some(0),
            ..OutputCap::default()
        },
        OutputCap {
            max_output_tokens: Some(10),
            default_output_tokens: Some(20),
            ..OutputCap::default()
        },
        OutputCap {
            temperature_min: Some(1.0),
            ..OutputCap::default()
        },
        OutputCap {
            temperature_min: Some(1.5),
            temperature_max: Some(1.0),
            ..OutputCap::default()
        },
        OutputCap {
            temperature_min: Some(0.0),
            temperature_max: Some(3.0),
            ..OutputCap::default()
        },
    ];
    for cap in bad {
        assert!(
            invalid(store.set_output_cap("shop", None, &cap, 20, &cli()).await),
            "{cap:?}"
        );
    }
    assert!(matches!(
        store
            .set_output_cap("blog", Some("key_1"), &key_cap, 20, &cli())
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.limits_version().await.unwrap(),
        v0 + 3,
        "refusals change nothing"
    );

    assert!(store
        .clear_output_cap("shop", Some("key_1"), 30, &cli())
        .await
        .unwrap());
    assert!(!store
        .clear_output_cap("shop", Some("key_1"), 31, &cli())
        .await
        .unwrap());
    assert_eq!(store.list_output_caps(None).await.unwrap().len(), 1);
    let actions: Vec<String> = store
        .list_audit(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action.starts_with("caps."))
        .map(|a| format!("{} {}", a.action, a.target))
        .collect();
    assert_eq!(
        actions,
        vec![
            "caps.set shop/*",
            "caps.set shop/key_1",
            "caps.set shop/key_1",
            "caps.clear shop/key_1"
        ]
    );
}

/// Rotation issues a successor "with the same limits": the old key's own rate-limit
/// rules and output caps are copied to it in the rotation's transaction (and the
/// limits version moves so servers pick them up); project-wide rules are untouched.
async fn a_successor_inherits_the_keys_own_limits_caps_and_budgets(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    let scope = |key: Option<&str>, model: Option<&str>| LimitScope {
        project: "shop".into(),
        env: None,
        key_id: key.map(str::to_owned),
        model: model.map(str::to_owned),
    };
    store
        .set_rate_limit(&scope(Some("key_1"), None), Some(30), None, 10, &cli())
        .await
        .unwrap();
    store
        .set_rate_limit(
            &scope(Some("key_1"), Some("gpt-4o")),
            None,
            Some(9_000),
            11,
            &cli(),
        )
        .await
        .unwrap();
    store
        .set_rate_limit(&scope(None, None), Some(600), None, 12, &cli())
        .await
        .unwrap();
    let cap = OutputCap {
        max_output_tokens: Some(64),
        ..OutputCap::default()
    };
    store
        .set_output_cap("shop", Some("key_1"), &cap, 13, &cli())
        .await
        .unwrap();
    let key_budget = |key: &str| BudgetScope {
        project: "shop".into(),
        env: None,
        key_id: Some(key.into()),
    };
    store
        .set_budget(
            &key_budget("key_1"),
            Some(5_000_000),
            None,
            Some(90),
            14,
            &cli(),
        )
        .await
        .unwrap();
    let v0 = store.limits_version().await.unwrap();

    store
        .rotate_key(
            "key_1",
            &successor_of("key_1", "key_2", "bb", 5_000),
            1_000,
            5_000,
            &cli(),
        )
        .await
        .unwrap();

    assert!(store.limits_version().await.unwrap() > v0);
    let rules = store.list_rate_limits(Some("shop")).await.unwrap();
    let of = |key: &str| -> Vec<(Option<String>, Option<u64>, Option<u64>)> {
        rules
            .iter()
            .filter(|r| r.scope.key_id.as_deref() == Some(key))
            .map(|r| (r.scope.model.clone(), r.rpm, r.tpm))
            .collect()
    };
    assert_eq!(of("key_2"), of("key_1"));
    assert_eq!(of("key_2").len(), 2);
    assert!(rules
        .iter()
        .filter(|r| r.scope.key_id.as_deref() == Some("key_2"))
        .all(|r| r.created_at_ms == 5_000));
    // The project-wide rule is not duplicated.
    assert_eq!(rules.iter().filter(|r| r.scope.key_id.is_none()).count(), 1);
    let caps = store.list_output_caps(Some("shop")).await.unwrap();
    let successor_cap = caps
        .iter()
        .find(|c| c.key_id.as_deref() == Some("key_2"))
        .expect("the successor has the key's cap");
    assert_eq!(successor_cap.cap, cap);
    // And the key's own budget: a rotation does not leave the successor unlimited.
    let budgets = store.list_budgets(Some("shop")).await.unwrap();
    let successor_budget = budgets
        .iter()
        .find(|b| b.scope == key_budget("key_2"))
        .expect("the successor has the key's budget");
    assert_eq!(
        (
            successor_budget.daily_usd_nanos,
            successor_budget.monthly_usd_nanos
        ),
        (Some(5_000_000), None)
    );
    assert_eq!(successor_budget.soft_percent, 90);

    // A key without rules of its own rotates without touching the limits version.
    store
        .insert_key(&new_key("key_3", "shop", "cc"))
        .await
        .unwrap();
    let v1 = store.limits_version().await.unwrap();
    store
        .rotate_key(
            "key_3",
            &successor_of("key_3", "key_4", "dd", 6_000),
            0,
            6_000,
            &cli(),
        )
        .await
        .unwrap();
    assert_eq!(store.limits_version().await.unwrap(), v1);
}

fn budget_scope(env: Option<&str>, key: Option<&str>) -> BudgetScope {
    BudgetScope {
        project: "shop".into(),
        env: env.map(Into::into),
        key_id: key.map(Into::into),
    }
}

async fn budgets_are_set_replaced_listed_cleared_and_audited(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    let v0 = store.limits_version().await.unwrap();
    let env = budget_scope(Some("prod"), None);
    let b = store
        .set_budget(&env, Some(5_000_000_000), None, None, 10, &cli())
        .await
        .unwrap();
    assert_eq!(b.scope, env);
    assert_eq!(
        (b.daily_usd_nanos, b.monthly_usd_nanos, b.soft_percent),
        (Some(5_000_000_000), None, DEFAULT_SOFT_PERCENT)
    );
    // Set again: replaced, creation time kept.
    let b = store
        .set_budget(&env, None, Some(100_000_000_000), Some(90), 20, &cli())
        .await
        .unwrap();
    assert_eq!(
        (b.daily_usd_nanos, b.monthly_usd_nanos, b.soft_percent),
        (None, Some(100_000_000_000), 90)
    );
    assert_eq!((b.created_at_ms, b.updated_at_ms), (10, 20));
    let key = budget_scope(None, Some("key_1"));
    store
        .set_budget(&key, Some(1), Some(2), None, 30, &cli())
        .await
        .unwrap();
    let whole = budget_scope(None, None);
    store
        .set_budget(&whole, Some(7), None, None, 31, &cli())
        .await
        .unwrap();
    let listed = store.list_budgets(Some("shop")).await.unwrap();
    let scopes: Vec<_> = listed.iter().map(|b| b.scope.clone()).collect();
    assert_eq!(scopes, vec![whole.clone(), key.clone(), env.clone()]);
    assert!(store.list_budgets(Some("blog")).await.unwrap().is_empty());
    assert_eq!(store.limits_version().await.unwrap(), v0 + 4);
    // Another handle (another process) sees them.
    assert_eq!(db.open().await.list_budgets(None).await.unwrap(), listed);

    assert!(store.clear_budget(&key, 40, &cli()).await.unwrap());
    assert!(!store.clear_budget(&key, 41, &cli()).await.unwrap());
    assert_eq!(store.limits_version().await.unwrap(), v0 + 5);
    let audit: Vec<_> = store
        .list_audit(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.action.starts_with("budgets."))
        .map(|a| (a.action, a.target))
        .collect();
    assert_eq!(
        audit,
        vec![
            ("budgets.set".to_owned(), "shop/prod/*".to_owned()),
            ("budgets.set".to_owned(), "shop/prod/*".to_owned()),
            ("budgets.set".to_owned(), "shop/*/key_1".to_owned()),
            ("budgets.set".to_owned(), "shop/*/*".to_owned()),
            ("budgets.clear".to_owned(), "shop/*/key_1".to_owned()),
        ]
    );
    // Deleting the project removes its budgets (and bumps the version).
    store.revoke_key("key_1", None, 50).await.unwrap();
    store.delete_project("shop", 51, &cli()).await.unwrap();
    assert!(store.list_budgets(None).await.unwrap().is_empty());
    assert_eq!(store.limits_version().await.unwrap(), v0 + 6);
}

async fn budgets_are_refused_when_invalid_and_leave_nothing_behind(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store.ensure_project("blog").await.unwrap();
    store
        .insert_key(&new_key("key_1", "blog", "aa"))
        .await
        .unwrap();
    let v0 = store.limits_version().await.unwrap();
    let invalid = |r: Result<Budget>| matches!(r, Err(StoreError::Invalid(_)));
    let env = budget_scope(Some("prod"), None);
    assert!(invalid(
        store.set_budget(&env, None, None, None, 1, &cli()).await
    ));
    assert!(invalid(
        store.set_budget(&env, Some(0), None, None, 1, &cli()).await
    ));
    assert!(invalid(
        store
            .set_budget(&env, Some(u64::MAX), None, None, 1, &cli())
            .await
    ));
    for pct in [0, 101] {
        assert!(invalid(
            store
                .set_budget(&env, Some(1), None, Some(pct), 1, &cli())
                .await
        ));
    }
    let both = budget_scope(Some("prod"), Some("key_1"));
    assert!(invalid(
        store
            .set_budget(&both, Some(1), None, None, 1, &cli())
            .await
    ));
    let bad_env = budget_scope(Some("Prod!"), None);
    assert!(invalid(
        store
            .set_budget(&bad_env, Some(1), None, None, 1, &cli())
            .await
    ));
    // A key of another project, an unknown project.
    let other_key = budget_scope(None, Some("key_1"));
    assert!(matches!(
        store
            .set_budget(&other_key, Some(1), None, None, 1, &cli())
            .await,
        Err(StoreError::NotFound(_))
    ));
    let mut nowhere = budget_scope(None, None);
    nowhere.project = "nope".into();
    assert!(matches!(
        store
            .set_budget(&nowhere, Some(1), None, None, 1, &cli())
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store.list_budgets(None).await.unwrap().is_empty());
    assert_eq!(store.limits_version().await.unwrap(), v0);
    assert!(!store
        .list_audit(0, 100)
        .await
        .unwrap()
        .iter()
        .any(|a| a.action.starts_with("budgets.")));
    // The database itself refuses a budget with both an env and a key.
    assert!(db
        .raw_script(
            "INSERT INTO budgets (project, env, key_id, daily_usd_nanos, created_at_ms, \
             updated_at_ms) VALUES ('shop', 'prod', 'key_1', 1, 0, 0)"
        )
        .await
        .is_err());
}

async fn the_spend_roll_up_saturates_and_takes_batches_of_many_keys(db: &TestDb) {
    use crate::model::DAILY_SPEND_CAP_NANOS as CAP;
    let store = db.open().await;
    let now = 1_773_576_000_000;
    let (day, _) = BudgetPeriod::Day.bounds(now);
    let (month, _) = BudgetPeriod::Month.bounds(now);
    let priced = |id: &str, key: &str, at: i64, cost: u64| UsageRecord {
        cost_usd_nanos: Some(cost),
        ..usage(id, key, "gpt-4o", 10, 10, at)
    };
    // An upstream that reports absurd token counts: the day's sum stops at its cap,
    // through the insert and the conflict path, and a month of such days still sums.
    for (id, at) in [("h1", now), ("h2", now + 1), ("h3", day - 1)] {
        store
            .insert_usage(&[priced(id, "key_a", at, u64::MAX)])
            .await
            .unwrap();
    }
    store
        .insert_usage(&[priced("h4", "key_a", now + 2, 7)])
        .await
        .unwrap();
    let spend = store.spend_since(day, month, None).await.unwrap();
    assert_eq!(spend.len(), 1);
    let cap = u64::try_from(CAP).unwrap();
    assert_eq!(
        (spend[0].day_usd_nanos, spend[0].month_usd_nanos),
        (cap, 2 * cap)
    );
    // The usage rows keep at most 2^40 tokens of each count and 2^54 nano-USD, so the
    // totals of such records sum without overflowing; 600 of them in one group would
    // sum past i64, and the totals saturate instead of failing the whole report
    // (SQLite's integer SUM raised an error).
    for id in ["t1", "t2", "t3"] {
        let mut r = priced(id, "key_t", now, u64::MAX);
        (r.input_tokens, r.output_tokens, r.total_tokens) = (u64::MAX, u64::MAX, u64::MAX);
        store.insert_usage(&[r]).await.unwrap();
    }
    let absurd: Vec<UsageRecord> = (0..600)
        .map(|i| {
            let mut r = priced(&format!("x{i}"), "key_x", now, u64::MAX);
            r.total_tokens = u64::MAX;
            r
        })
        .collect();
    store.insert_usage(&absurd).await.unwrap();
    let totals = store
        .usage_totals(&UsageFilter {
            group: UsageGroup::Key,
            since_ms: day,
        })
        .await
        .unwrap();
    let of = |key: &str| totals.iter().find(|t| t.group == key).unwrap();
    assert_eq!(of("key_t").total_tokens, 3 << 40);
    assert_eq!(of("key_t").cost_usd_nanos, Some(3 << 54));
    assert_eq!(of("key_x").requests, 600);
    assert_eq!(of("key_x").total_tokens, 600 << 40);
    assert_eq!(of("key_x").cost_usd_nanos, Some(i64::MAX as u64));
    // A batch spending under many keys: 7,000 roll-up rows of 5 values each would be
    // past SQLite's 32,766 bound values in one statement.
    let many: Vec<UsageRecord> = (0..7_000)
        .map(|i| priced(&format!("m{i}"), &format!("key_{i:05}"), now, 1))
        .collect();
    store.insert_usage(&many).await.unwrap();
    let spend = store.spend_since(day, month, None).await.unwrap();
    // key_a, key_t, key_x and the 7,000.
    assert_eq!(spend.len(), 7_003);
    assert!(spend
        .iter()
        .filter(|s| s.key_id.starts_with("key_0"))
        .all(|s| s.day_usd_nanos == 1));
}

async fn spend_is_summed_per_project_env_and_key_since_the_day_and_month(db: &TestDb) {
    let store = db.open().await;
    // 2026-03-15 12:00 UTC; the month began 14 days before the day.
    let now = 1_773_576_000_000;
    let (day, _) = BudgetPeriod::Day.bounds(now);
    let (month, _) = BudgetPeriod::Month.bounds(now);
    assert_eq!(day - month, 14 * DAY);
    let priced = |id: &str, key: &str, env: &str, at: i64, cost: Option<u64>| UsageRecord {
        env: Some(env.into()),
        cost_usd_nanos: cost,
        ..usage(id, key, "gpt-4o", 10, 10, at)
    };
    store
        .insert_usage(&[
            priced("r1", "key_a", "dev", now, Some(100)),
            priced("r2", "key_a", "dev", day - 1, Some(20)),
            priced("r3", "key_a", "dev", month - 1, Some(1_000)),
            priced("r4", "key_b", "prod", day, Some(3)),
            priced("r5", "key_b", "prod", day, None),
            priced("r6", "key_b", "prod", day, Some(0)),
        ])
        .await
        .unwrap();
    let spend = store.spend_since(day, month, None).await.unwrap();
    let row = |key: &str, env: &str, d: u64, m: u64| Spend {
        project: "shop".into(),
        env: env.into(),
        key_id: key.into(),
        day_usd_nanos: d,
        month_usd_nanos: m,
    };
    assert_eq!(
        spend,
        vec![row("key_a", "dev", 100, 120), row("key_b", "prod", 3, 3)]
    );
    assert!(store
        .spend_since(day, month, Some("blog"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.spend_since(day, month, Some("shop")).await.unwrap(),
        spend
    );
    // A later batch adds to the day's roll-up row (the upsert's conflict path).
    store
        .insert_usage(&[priced("r7", "key_a", "dev", now + 1, Some(5))])
        .await
        .unwrap();
    assert_eq!(
        store.spend_since(day, month, Some("shop")).await.unwrap(),
        vec![row("key_a", "dev", 105, 125), row("key_b", "prod", 3, 3)]
    );
    // A batch written again after a commit whose outcome was lost, with a record it
    // did not hold before: the stored record adds nothing more, the new one its spend.
    store
        .insert_usage(&[
            priced("r7", "key_a", "dev", now + 1, Some(5)),
            priced("r8", "key_a", "dev", now + 2, Some(7)),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.spend_since(day, month, Some("shop")).await.unwrap(),
        vec![row("key_a", "dev", 112, 132), row("key_b", "prod", 3, 3)]
    );
    let ids: Vec<String> = store
        .usage_records(0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(ids.iter().filter(|id| *id == "r7").count(), 1);
    assert_eq!(ids.iter().filter(|id| *id == "r8").count(), 1);
}

async fn a_soft_threshold_notice_is_claimed_once_per_period(db: &TestDb) {
    let store = db.open().await;
    let other = db.open().await;
    store.ensure_project("shop").await.unwrap();
    let env = budget_scope(Some("prod"), None);
    store
        .set_budget(&env, Some(10), Some(100), None, 1, &cli())
        .await
        .unwrap();
    let day1 = 20 * DAY;
    assert!(store
        .claim_budget_notice(&env, BudgetPeriod::Day, day1)
        .await
        .unwrap());
    // Another process, same period: already announced.
    assert!(!other
        .claim_budget_notice(&env, BudgetPeriod::Day, day1)
        .await
        .unwrap());
    // The month is claimed on its own; the next day is a new period.
    assert!(other
        .claim_budget_notice(&env, BudgetPeriod::Month, 0)
        .await
        .unwrap());
    assert!(store
        .claim_budget_notice(&env, BudgetPeriod::Day, day1 + DAY)
        .await
        .unwrap());
    assert!(!store
        .claim_budget_notice(&env, BudgetPeriod::Day, day1)
        .await
        .unwrap());
    // Changing the budget keeps the claims; a scope without a budget claims nothing.
    store
        .set_budget(&env, Some(20), None, None, 2, &cli())
        .await
        .unwrap();
    assert!(!store
        .claim_budget_notice(&env, BudgetPeriod::Day, day1 + DAY)
        .await
        .unwrap());
    assert!(!store
        .claim_budget_notice(&budget_scope(None, None), BudgetPeriod::Day, day1)
        .await
        .unwrap());
}

#[test]
fn budget_periods_are_utc_calendar_days_and_months() {
    // 2024-02-29 23:59:59.999 UTC (a leap day).
    let t = 1_709_251_199_999;
    assert_eq!(
        BudgetPeriod::Day.bounds(t),
        (1_709_164_800_000, 1_709_251_200_000)
    );
    // February 2024 → March 2024.
    assert_eq!(
        BudgetPeriod::Month.bounds(t),
        (1_706_745_600_000, 1_709_251_200_000)
    );
    // December rolls into the next year; the first instant of a month is in it.
    let dec = 1_733_011_200_000; // 2024-12-01 00:00 UTC
    assert_eq!(BudgetPeriod::Month.bounds(dec), (dec, 1_735_689_600_000));
    assert_eq!(BudgetPeriod::Month.bounds(dec - 1).1, dec);
}

async fn a_keys_lane_is_created_changed_audited_and_inherited(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    let k = store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    assert_eq!(k.lane, Lane::Interactive, "the default lane");
    let b = store
        .insert_key(&NewKey {
            lane: Lane::Batch,
            ..new_key("key_2", "shop", "bb")
        })
        .await
        .unwrap();
    assert_eq!(b.lane, Lane::Batch);

    let v0 = store.keys_version().await.unwrap();
    assert!(store
        .set_key_lane("key_1", Lane::Batch, 2_000, &cli())
        .await
        .unwrap());
    let v1 = store.keys_version().await.unwrap();
    assert!(v1 > v0, "servers learn the lane with their key cache");
    // Setting the lane it has changes nothing: no audit row, no bump.
    assert!(!store
        .set_key_lane("key_1", Lane::Batch, 2_500, &cli())
        .await
        .unwrap());
    assert_eq!(store.keys_version().await.unwrap(), v1);
    let k = store.key_by_id("key_1").await.unwrap().unwrap();
    assert_eq!(k.lane, Lane::Batch);
    let audit = store.list_audit(0, 100).await.unwrap();
    let sets: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "key.set_lane")
        .collect();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].target, "key_1");
    assert_eq!(sets[0].actor, "cli:alice");
    assert!(sets[0].detail.contains("\"batch\""), "{}", sets[0].detail);

    // A successor keeps the lane, whatever it was minted with.
    let next = store
        .rotate_key(
            "key_1",
            &successor_of("key_1", "key_3", "cc", 3_000),
            1_000,
            3_000,
            &cli(),
        )
        .await
        .unwrap();
    assert_eq!(next.lane, Lane::Batch);

    assert!(matches!(
        store
            .set_key_lane("key_missing", Lane::Batch, 1, &cli())
            .await,
        Err(StoreError::NotFound(_))
    ));
    store.revoke_key("key_2", None, 4_000).await.unwrap();
    assert!(matches!(
        store
            .set_key_lane("key_2", Lane::Interactive, 5_000, &cli())
            .await,
        Err(StoreError::Invalid(_))
    ));
    // The database itself refuses a lane it does not know.
    assert!(db
        .raw_execute("UPDATE keys SET lane = 'urgent' WHERE id = 'key_3'")
        .await
        .is_err());
}

async fn usage_records_carry_their_lane_and_the_upstreams_remaining_capacity(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    let batch = UsageRecord {
        lane: Some(Lane::Batch),
        upstream_remaining_requests: Some(7),
        upstream_remaining_tokens: Some(u64::from(u32::MAX) + 1),
        ..usage("req_1", "key_1", "gpt-4o", 10, 5, 1_000)
    };
    let interactive = UsageRecord {
        lane: Some(Lane::Interactive),
        ..usage("req_2", "key_1", "gpt-4o", 10, 5, 1_001)
    };
    let refused = usage("req_3", "key_1", "gpt-4o", 0, 0, 1_002);
    store
        .insert_usage(&[batch.clone(), interactive.clone(), refused.clone()])
        .await
        .unwrap();
    let back = store.usage_records(0).await.unwrap();
    let pick = |id: &str| back.iter().find(|r| r.request_id == id).unwrap().clone();
    let strip = |r: UsageRecord| UsageRecord {
        cost_usd_nanos: None,
        ..r
    };
    assert_eq!(strip(pick("req_1")), batch);
    assert_eq!(strip(pick("req_2")), interactive);
    assert_eq!(strip(pick("req_3")), refused);
}

async fn usage_records_keep_which_fallback_target_served(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    let fell_back = UsageRecord {
        served_by: Some("backup/gpt-4o-mini".into()),
        fallbacks: 2,
        ..usage("req_1", "key_1", "gpt-4o", 10, 5, 1_000)
    };
    let offline = UsageRecord {
        served_by: Some("offline".into()),
        fallbacks: 3,
        ..usage("req_2", "key_1", "gpt-4o", 0, 0, 1_001)
    };
    let refused = usage("req_3", "key_1", "gpt-4o", 0, 0, 1_002);
    store
        .insert_usage(&[fell_back.clone(), offline.clone(), refused.clone()])
        .await
        .unwrap();
    let back = store.usage_records(0).await.unwrap();
    let pick = |id: &str| back.iter().find(|r| r.request_id == id).unwrap().clone();
    let strip = |r: UsageRecord| UsageRecord {
        cost_usd_nanos: None,
        ..r
    };
    assert_eq!(strip(pick("req_1")), fell_back);
    assert_eq!(strip(pick("req_2")), offline);
    assert_eq!(strip(pick("req_3")), refused);
    assert_eq!(pick("req_3").served_by, None);
    assert_eq!(pick("req_3").fallbacks, 0);
}

async fn model_aliases_and_access_lists_are_set_listed_cleared_and_audited(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store.ensure_project("blog").await.unwrap();
    let v0 = store.limits_version().await.unwrap();

    // Aliases: set, replace (creation time kept), list per project, unset.
    let a = store
        .set_model_alias("shop", "smart", "gpt-4o", 10, &cli())
        .await
        .unwrap();
    assert_eq!((a.alias.as_str(), a.model.as_str()), ("smart", "gpt-4o"));
    let a = store
        .set_model_alias("shop", "smart", "gpt-4.1", 11, &cli())
        .await
        .unwrap();
    assert_eq!(
        (a.model.as_str(), a.created_at_ms, a.updated_at_ms),
        ("gpt-4.1", 10, 11)
    );
    store
        .set_model_alias("blog", "cheap", "gpt-4o-mini", 12, &cli())
        .await
        .unwrap();
    assert_eq!(
        store.list_model_aliases(Some("shop")).await.unwrap().len(),
        1
    );
    let all = store.list_model_aliases(None).await.unwrap();
    assert_eq!(
        all.iter().map(|a| a.project.as_str()).collect::<Vec<_>>(),
        ["blog", "shop"]
    );
    // Invalid names and unknown projects leave nothing behind.
    assert!(matches!(
        store
            .set_model_alias("shop", "two words", "gpt-4o", 13, &cli())
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .set_model_alias("shop", "same", "same", 13, &cli())
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .set_model_alias("nope", "x", "gpt-4o", 13, &cli())
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(store
        .unset_model_alias("shop", "smart", 14, &cli())
        .await
        .unwrap());
    assert!(!store
        .unset_model_alias("shop", "smart", 15, &cli())
        .await
        .unwrap());
    assert!(store
        .list_model_aliases(Some("shop"))
        .await
        .unwrap()
        .is_empty());

    // Access lists: per environment or for all; sorted, deduplicated; empty removes.
    let models = |v: &[&str]| v.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>();
    assert!(store
        .set_model_access(
            "shop",
            Some("prod"),
            AccessKind::Allow,
            &models(&["gpt-4o-mini", "gpt-4o", "gpt-4o"]),
            20,
            &cli()
        )
        .await
        .unwrap());
    assert!(store
        .set_model_access(
            "shop",
            None,
            AccessKind::Deny,
            &models(&["o3*"]),
            21,
            &cli()
        )
        .await
        .unwrap());
    let lists = store.list_model_access(Some("shop")).await.unwrap();
    assert_eq!(lists.len(), 2);
    assert_eq!(
        (lists[0].env.as_deref(), lists[0].kind),
        (None, AccessKind::Deny)
    );
    assert_eq!(lists[1].env.as_deref(), Some("prod"));
    assert_eq!(lists[1].models, ["gpt-4o", "gpt-4o-mini"]);
    assert!(store
        .set_model_access("shop", Some("prod"), AccessKind::Allow, &[], 22, &cli())
        .await
        .unwrap());
    assert!(!store
        .set_model_access("shop", Some("prod"), AccessKind::Allow, &[], 23, &cli())
        .await
        .unwrap());
    assert!(matches!(
        store
            .set_model_access(
                "shop",
                Some("Prod!"),
                AccessKind::Allow,
                &models(&["x"]),
                24,
                &cli()
            )
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.list_model_access(None).await.unwrap().len(), 1);

    // Every change bumped the version once and left one audit row.
    let v1 = store.limits_version().await.unwrap();
    assert_eq!(v1 - v0, 7);
    let actions: Vec<String> = store
        .list_audit(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .filter(|a| a.starts_with("models."))
        .collect();
    assert_eq!(actions.len(), 7, "{actions:?}");
    assert!(actions.iter().any(|a| a == "models.alias.unset"));
    assert!(actions.iter().any(|a| a == "models.deny"));

    // A deleted project takes its aliases and lists with it.
    store.delete_project("shop", 30, &cli()).await.unwrap();
    assert!(store
        .list_model_access(Some("shop"))
        .await
        .unwrap()
        .is_empty());
}

async fn usage_records_say_what_the_cache_did_and_totals_count_hits(db: &TestDb) {
    let store = db.open().await;
    store.ensure_project("shop").await.unwrap();
    store
        .insert_key(&new_key("key_1", "shop", "aa"))
        .await
        .unwrap();
    let with = |id: &str, cache: Option<CacheOutcome>, tokens: u64| UsageRecord {
        cache,
        ..usage(id, "key_1", "gpt-4o", tokens, tokens, 1_000)
    };
    let batch = [
        with("req_1", Some(CacheOutcome::Miss), 10),
        with("req_2", Some(CacheOutcome::Hit), 0),
        with("req_3", Some(CacheOutcome::Refresh), 10),
        with("req_4", Some(CacheOutcome::Stale), 0),
        with("req_5", None, 10),
    ];
    store.insert_usage(&batch).await.unwrap();
    let back = store.usage_records(0).await.unwrap();
    let outcomes: Vec<_> = back.iter().map(|r| r.cache).collect();
    assert_eq!(
        outcomes,
        batch.iter().map(|r| r.cache).collect::<Vec<_>>(),
        "each outcome round-trips"
    );
    assert!(back[1].served_from_cache() && back[3].served_from_cache());
    assert!(!back[0].served_from_cache() && !back[4].served_from_cache());
    let totals = store
        .usage_totals(&UsageFilter {
            group: UsageGroup::Key,
            since_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!((totals[0].requests, totals[0].cache_hits), (5, 2));
}

async fn catalog_models_are_set_replaced_listed_removed_and_audited(db: &TestDb) {
    let store = db.open().await;
    let v0 = store.limits_version().await.unwrap();
    let llama = crate::CatalogModel {
        id: "llama3.1:8b".into(),
        family: Some("cl100k_base".into()),
        context_window: Some(8192),
        max_output_tokens: Some(2048),
        input_per_1m_milli_usd: 75,
        output_per_1m_milli_usd: Some(300),
        capabilities: vec!["text".into(), "tools".into()],
        prices_checked: Some("2026-11-01".into()),
        ..crate::CatalogModel::default()
    };
    let m = store.set_catalog_model(&llama, 10, &cli()).await.unwrap();
    assert_eq!(
        m,
        crate::CatalogModel {
            created_at_ms: 10,
            updated_at_ms: 10,
            ..llama.clone()
        }
    );
    // Replacing keeps the creation time; cleared optional fields come back as None.
    let cheaper = crate::CatalogModel {
        input_per_1m_milli_usd: 50,
        output_per_1m_milli_usd: None,
        family: None,
        ..llama.clone()
    };
    let m = store.set_catalog_model(&cheaper, 11, &cli()).await.unwrap();
    assert_eq!(
        (
            m.input_per_1m_milli_usd,
            m.output_per_1m_milli_usd,
            m.family
        ),
        (50, None, None)
    );
    assert_eq!((m.created_at_ms, m.updated_at_ms), (10, 11));
    let big = crate::CatalogModel {
        id: "gpt-4o".into(),
        context_window: Some(u64::try_from(i64::MAX).unwrap()),
        input_per_1m_milli_usd: 2_500,
        ..crate::CatalogModel::default()
    };
    store.set_catalog_model(&big, 12, &cli()).await.unwrap();
    let all = store.list_catalog_models().await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["gpt-4o", "llama3.1:8b"]
    );
    assert_eq!(
        all[0].context_window,
        Some(u64::try_from(i64::MAX).unwrap())
    );
    assert!(all[0].capabilities.is_empty());
    // Invalid ids and out-of-range numbers leave nothing behind.
    for bad in [
        crate::CatalogModel {
            id: "two words".into(),
            ..big.clone()
        },
        crate::CatalogModel {
            id: "gpt-*".into(),
            ..big.clone()
        },
        crate::CatalogModel {
            input_per_1m_milli_usd: u64::MAX,
            ..big.clone()
        },
    ] {
        assert!(matches!(
            store.set_catalog_model(&bad, 13, &cli()).await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert!(store
        .remove_catalog_model("gpt-4o", 14, &cli())
        .await
        .unwrap());
    assert!(!store
        .remove_catalog_model("gpt-4o", 15, &cli())
        .await
        .unwrap());
    assert_eq!(store.list_catalog_models().await.unwrap().len(), 1);

    // Each change bumped the version once and left one audit row with the entry.
    assert_eq!(store.limits_version().await.unwrap() - v0, 4);
    let audit: Vec<_> = store
        .list_audit(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action.starts_with("models.catalog."))
        .collect();
    assert_eq!(audit.len(), 4, "{audit:?}");
    assert!(audit
        .iter()
        .any(|e| e.action == "models.catalog.remove" && e.target == "gpt-4o"));
    assert!(audit
        .iter()
        .any(|e| e.action == "models.catalog.set"
            && e.detail.contains("\"input_per_1m_milli_usd\":50")));
}

/// PostgreSQL runs READ COMMITTED: a project's delete must not count its live keys
/// before a key being created in it commits, and then delete that key with the rest.
#[tokio::test]
async fn postgres_a_project_delete_waits_for_a_key_being_created_and_refuses() {
    use sqlx::Connection as _;
    let db = TestDb::postgres().await;
    let TestDb::Postgres(schema) = &db else {
        unreachable!()
    };
    let store = db.open().await;
    store
        .create_project("racy", None, 1_000, &cli())
        .await
        .unwrap();
    // A key's creation, in flight: inserted, not committed.
    let mut creating = sqlx::PgConnection::connect(&schema.url()).await.unwrap();
    sqlx::raw_sql(
        "BEGIN; INSERT INTO keys (id, project, env, role, prefix, digest_hex, created_at_ms, expires_at_ms) \
         VALUES ('key_racy', 'racy', 'dev', 'member', 'tg-dev-r', 'racy-digest', 1000, 9000000000000)",
    )
    .execute(&mut creating)
    .await
    .unwrap();
    let deleting = tokio::spawn({
        let store = store.clone();
        async move { store.delete_project("racy", 2_000, &cli()).await }
    });
    // Commit the key only once the delete waits on a lock.
    let mut watcher = sqlx::PgConnection::connect(&schema.url()).await.unwrap();
    let waiting = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE '%FROM projects WHERE name = $1%'",
            )
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if n > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    });
    assert!(waiting.await.is_ok(), "the delete never waited for the key");
    sqlx::raw_sql("COMMIT")
        .execute(&mut creating)
        .await
        .unwrap();
    let err = deleting.await.unwrap().unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(store.key_by_id("key_racy").await.unwrap().is_some());
    assert!(store.project_by_name("racy").await.unwrap().is_some());
    drop(store);
    db.cleanup().await;
}

/// Lists sort byte-wise on PostgreSQL as on SQLite, whatever the database's collation.
#[tokio::test]
async fn postgres_lists_sort_byte_wise_under_any_collation() {
    let db = TestDb::postgres().await;
    let store = db.open().await;
    db.raw_script(
        "ALTER TABLE projects ALTER COLUMN name TYPE TEXT COLLATE \"en-US-x-icu\"; \
         ALTER TABLE project_envs ALTER COLUMN env TYPE TEXT COLLATE \"en-US-x-icu\"",
    )
    .await
    .unwrap();
    for name in ["ab", "a-c", "a_d"] {
        store.create_project(name, None, 1, &cli()).await.unwrap();
        store
            .set_env_credential("ab", name, Some("env:K"), 1, &cli())
            .await
            .unwrap();
    }
    let names: Vec<String> = store
        .list_projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.project.name)
        .collect();
    assert_eq!(names, ["a-c", "a_d", "ab"]);
    let envs: Vec<String> = store
        .project_detail("ab")
        .await
        .unwrap()
        .envs
        .into_iter()
        .map(|e| e.env)
        .collect();
    assert_eq!(envs, ["a-c", "a_d", "ab"]);
    drop(store);
    db.cleanup().await;
}
