//! Two gateways on one PostgreSQL database behave as one for keys: each replica runs
//! in-process on 127.0.0.1:0 with its own store handle (its own connection pool, as a
//! separate `tollgate serve` would have), both in front of one simulator, both on one
//! fresh schema of the test server (`TOLLGATE_TEST_POSTGRES_URL`). The test fails,
//! never skips, when that server cannot be reached. A key created, revoked, suspended,
//! resumed or rotated through any handle is honoured by both within a second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::{eventually, now_ms, PROVIDER_KEY};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate_gateway::config::RawConfig;
use tollgate_gateway::keys;
use tollgate_gateway::secret::Secret;
use tollgate_gateway::{Config, ServeReport, StartError};
use tollgate_simulator::server::spawn;
use tollgate_simulator::SimConfig;
use tollgate_store::testing::PgSchema;
use tollgate_store::{Actor, Role, Store};

/// The bound every replica must honour a key change within.
const WITHIN: Duration = Duration::from_secs(1);

/// One `tollgate serve`, in-process.
struct Replica {
    addr: SocketAddr,
    store: Store,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<ServeReport, StartError>>>,
}

impl Replica {
    /// Starts a gateway on its own handle on `database_url`, with the default
    /// `keys.refresh_interval_ms`.
    async fn start(database_url: &str, upstream_url: String) -> Self {
        let store = Store::open_url(database_url).await.unwrap();
        let mut raw = RawConfig::default();
        raw.upstream.url = Some(upstream_url);
        raw.database_url = Some(database_url.to_owned());
        let config = Config::try_from(raw).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(tollgate_gateway::serve(
            listener,
            config,
            store.clone(),
            Secret::new(PROVIDER_KEY),
            async {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            store,
            stop: Some(tx),
            join: Some(join),
        }
    }

    /// One chat completion with `key`; returns the status and tollgate's request id.
    async fn call(&self, http: &reqwest::Client, key: &str) -> (u16, String) {
        let res = http
            .post(format!("http://{}/v1/chat/completions", self.addr))
            .bearer_auth(key)
            .json(&json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "Say hi"}],
            }))
            .send()
            .await
            .unwrap();
        let id = res
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (res.status().as_u16(), id)
    }

    /// Stops gracefully (the usage writer drains) and returns the report.
    async fn stop(&mut self) -> ServeReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.join.take().unwrap().await.unwrap().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_database_agree_on_keys_within_a_second() {
    let schema = match PgSchema::create().await {
        Ok(schema) => schema,
        Err(e) => panic!("the PostgreSQL replica test cannot run: {e}"),
    };
    let sim = spawn(SimConfig {
        api_keys: Some(vec![PROVIDER_KEY.to_owned()]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let admin = schema.open().await.unwrap();
    admin.ensure_project("shop").await.unwrap();
    let mut a = Replica::start(&schema.url(), sim.base_url()).await;
    let mut b = Replica::start(&schema.url(), sim.base_url()).await;
    let http = reqwest::Client::new();

    // Created after both started, through a third handle (the CLI, say): both pick
    // it up from the keys_version counter.
    let minted = keys::mint("shop", "dev", Role::Member, None, now_ms());
    admin.insert_key(&minted.record).await.unwrap();
    let key = minted.secret.as_str();
    let served = std::sync::Mutex::new(Vec::new());
    let accepted = eventually(WITHIN, || async {
        let (sa, ida) = a.call(&http, key).await;
        let (sb, idb) = b.call(&http, key).await;
        if sa == 200 && sb == 200 {
            *served.lock().unwrap() = vec![ida, idb];
        }
        sa == 200 && sb == 200
    })
    .await;
    assert!(
        accepted.is_some(),
        "a new key not accepted by both within 1 s"
    );
    assert_eq!(a.call(&http, key).await.0, 200);
    assert_eq!(b.call(&http, key).await.0, 200);

    // Revoked through replica A's own handle: B refuses it as fast as A.
    assert!(a
        .store
        .revoke_key(&minted.record.id, Some("leaked"), now_ms())
        .await
        .unwrap());
    let refused = eventually(WITHIN, || async {
        a.call(&http, key).await.0 == 401 && b.call(&http, key).await.0 == 401
    })
    .await;
    assert!(refused.is_some(), "a revoked key still accepted after 1 s");
    assert_eq!(a.call(&http, key).await.0, 401);
    assert_eq!(b.call(&http, key).await.0, 401);

    // Both replicas' usage lands in the one database.
    a.stop().await;
    b.stop().await;
    let records = admin.usage_records(0).await.unwrap();
    let served = served.into_inner().unwrap();
    assert_eq!(served.len(), 2);
    for id in &served {
        let r = records
            .iter()
            .find(|r| &r.request_id == id)
            .unwrap_or_else(|| panic!("no usage record for {id}"));
        assert_eq!(r.key_id.as_deref(), Some(minted.record.id.as_str()));
        assert_eq!(r.status, 200);
    }
    let key_row = admin.key_by_id(&minted.record.id).await.unwrap().unwrap();
    assert!(key_row.last_used_at_ms.is_some());
    schema.drop_schema().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_honour_a_suspension_and_a_rotation_within_a_second() {
    let schema = match PgSchema::create().await {
        Ok(schema) => schema,
        Err(e) => panic!("the PostgreSQL replica test cannot run: {e}"),
    };
    let sim = spawn(SimConfig {
        api_keys: Some(vec![PROVIDER_KEY.to_owned()]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let admin = schema.open().await.unwrap();
    admin.ensure_project("shop").await.unwrap();
    let minted = keys::mint("shop", "dev", Role::Member, Some("app".into()), now_ms());
    admin.insert_key(&minted.record).await.unwrap();
    let mut a = Replica::start(&schema.url(), sim.base_url()).await;
    let mut b = Replica::start(&schema.url(), sim.base_url()).await;
    let http = reqwest::Client::new();
    let key = minted.secret.as_str();
    assert_eq!(a.call(&http, key).await.0, 200);
    assert_eq!(b.call(&http, key).await.0, 200);
    let actor = Actor::new("cli:test", "cli");

    // Suspended through A's handle: both refuse it, then both accept it once resumed.
    a.store
        .suspend_key(&minted.record.id, Some("check"), now_ms(), &actor)
        .await
        .unwrap();
    assert!(
        both_answer(&a, &b, &http, key, 403).await,
        "suspension not honoured by both"
    );
    b.store
        .resume_key(&minted.record.id, None, now_ms(), &actor)
        .await
        .unwrap();
    assert!(
        both_answer(&a, &b, &http, key, 200).await,
        "resumption not honoured by both"
    );

    // Rotated through B's handle with no grace: both accept the successor and refuse
    // the old key.
    let next = keys::mint("shop", "dev", Role::Member, Some("app".into()), now_ms());
    b.store
        .rotate_key(&minted.record.id, &next.record, 0, now_ms(), &actor)
        .await
        .unwrap();
    assert!(
        both_answer(&a, &b, &http, &next.secret, 200).await,
        "successor not accepted by both"
    );
    assert!(
        both_answer(&a, &b, &http, key, 401).await,
        "rotated key still accepted"
    );

    a.stop().await;
    b.stop().await;
    schema.drop_schema().await.unwrap();
}

/// Whether both replicas answer `status` to `key` within [`WITHIN`].
async fn both_answer(
    a: &Replica,
    b: &Replica,
    http: &reqwest::Client,
    key: &str,
    status: u16,
) -> bool {
    eventually(WITHIN, || async {
        a.call(http, key).await.0 == status && b.call(http, key).await.0 == status
    })
    .await
    .is_some()
}
