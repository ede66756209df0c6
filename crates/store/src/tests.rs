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
    keys_round_trip_and_revocation_bumps_the_version,
    a_key_needs_an_existing_project_and_a_unique_digest,
    usage_batches_are_written_once_and_totalled,
    usage_totals_group_by_key_project_and_day,
    reopening_keeps_data_and_does_not_rerun_migrations,
    processes_opening_at_once_migrate_once,
    concurrent_writers_on_one_database_do_not_fail,
    a_large_batch_spans_several_insert_statements,
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
    }
}

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
    assert_eq!(k.state(), KeyState::Active);
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
    assert_eq!(k.state(), KeyState::Revoked);
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

async fn reopening_keeps_data_and_does_not_rerun_migrations(db: &TestDb) {
    {
        let store = db.open().await;
        store.ensure_project("shop").await.unwrap();
    }
    let store = db.open().await;
    assert!(store.project_by_name("shop").await.unwrap().is_some());
    store.ping().await.unwrap();
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
