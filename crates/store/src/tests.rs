//! Store behaviour, run against a fresh SQLite file per test.

use super::*;

async fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_data_dir(dir.path()).await.unwrap();
    (dir, store)
}

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

#[tokio::test]
async fn keys_round_trip_and_revocation_bumps_the_version() {
    let (_dir, store) = fresh().await;
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

#[tokio::test]
async fn a_key_needs_an_existing_project_and_a_unique_digest() {
    let (_dir, store) = fresh().await;
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

#[tokio::test]
async fn usage_batches_are_written_once_and_totalled() {
    let (_dir, store) = fresh().await;
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

#[tokio::test]
async fn reopening_keeps_data_and_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_data_dir(dir.path()).await.unwrap();
        store.ensure_project("shop").await.unwrap();
    }
    let store = Store::open_data_dir(dir.path()).await.unwrap();
    assert!(store.project_by_name("shop").await.unwrap().is_some());
    store.ping().await.unwrap();
}

/// Regression: a deferred transaction that read before writing failed at once with
/// "database is locked" when another connection wrote in between.
#[tokio::test]
async fn concurrent_writers_on_one_file_do_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open_data_dir(dir.path()).await.unwrap();
    let b = Store::open_data_dir(dir.path()).await.unwrap();
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

#[tokio::test]
async fn a_large_batch_spans_several_insert_statements() {
    let (_dir, store) = fresh().await;
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
