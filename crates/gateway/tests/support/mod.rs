//! A gateway started in-process on 127.0.0.1:0 against an in-process simulator on
//! another ephemeral port, with a fresh SQLite store and one member key.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate_gateway::config::RawConfig;
use tollgate_gateway::keys;
use tollgate_gateway::secret::Secret;
use tollgate_gateway::{Config, ServeReport, StartError};
use tollgate_simulator::server::{spawn, SimHandle};
use tollgate_simulator::SimConfig;
use tollgate_store::{Role, Store, UsageRecord};

/// The provider key the simulator accepts; the gateway must substitute it.
pub const PROVIDER_KEY: &str = "sk-sim-provider-key";

pub struct Harness {
    pub sim: SimHandle,
    pub addr: SocketAddr,
    pub key: String,
    pub key_id: String,
    pub store: Store,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<ServeReport, StartError>>>,
    dir: tempfile::TempDir,
}

pub async fn start() -> Harness {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut RawConfig)) -> Harness {
    start_with_sim(SimConfig::default(), tweak).await
}

/// As [`start_with`], against a simulator configured by `sim` (its keys are set here).
pub async fn start_with_sim(sim: SimConfig, tweak: impl FnOnce(&mut RawConfig)) -> Harness {
    let sim = spawn(SimConfig {
        api_keys: Some(vec![PROVIDER_KEY.to_owned()]),
        ..sim
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_data_dir(dir.path()).await.unwrap();
    store.ensure_project("shop").await.unwrap();
    let minted = keys::mint("shop", "dev", Role::Member, Some("test".into()), now_ms());
    store.insert_key(&minted.record).await.unwrap();

    let mut raw = RawConfig::default();
    raw.upstream.url = Some(sim.base_url());
    raw.upstream.retry_base_ms = Some(10);
    raw.keys.refresh_interval_ms = Some(50);
    tweak(&mut raw);
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
    Harness {
        sim,
        addr,
        key: minted.secret,
        key_id: minted.record.id,
        store,
        http: reqwest::Client::new(),
        stop: Some(tx),
        join: Some(join),
        dir,
    }
}

impl Harness {
    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        let res = self.http.get(self.url("/metrics")).send().await.unwrap();
        res.text().await.unwrap()
    }

    /// The value of the sample named `sample` (its labels included) on `/metrics`.
    pub async fn metric(&self, sample: &str) -> Option<u64> {
        let text = self.metrics().await;
        text.lines().find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The gateway's data directory (its SQLite file is there).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn post(&self, path: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.key)
            .json(&body)
    }

    /// A POST of `body` exactly as given (not re-serialised), as JSON, with the key.
    pub fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body)
    }

    /// Mints another key in the harness's project.
    pub async fn mint(&self, env: &str, role: Role) -> (String, String) {
        let m = keys::mint("shop", env, role, None, now_ms());
        self.store.insert_key(&m.record).await.unwrap();
        (m.secret, m.record.id)
    }

    /// A control-API answer of the simulator (`/_sim/...`), as JSON.
    pub async fn sim_get(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}{path}", self.sim.root_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Requests the simulator received, as JSON.
    pub async fn sim_requests(&self) -> Vec<serde_json::Value> {
        let v = self.sim_get("/_sim/requests").await;
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// How the simulator's streams ended: (completed, abandoned).
    pub async fn sim_streams(&self) -> (u64, u64) {
        let v = self.sim_get("/_sim/stats").await;
        (
            v["streams_completed"].as_u64().unwrap(),
            v["streams_abandoned"].as_u64().unwrap(),
        )
    }

    /// Stops the gateway gracefully and returns its report.
    pub async fn stop(&mut self) -> ServeReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.join.take().unwrap().await.unwrap().unwrap()
    }

    /// Stops the gateway, then returns every usage record it wrote.
    pub async fn stop_and_records(&mut self) -> Vec<UsageRecord> {
        self.stop().await;
        self.store.usage_records(0).await.unwrap()
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Polls `check` until it is true or `within` has passed; returns the time it took.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Another simulator (a second upstream) that accepts only `key`.
pub async fn spawn_sim(key: &str) -> SimHandle {
    spawn(SimConfig {
        api_keys: Some(vec![key.to_owned()]),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// Queues a fault on `sim` (the body of `POST /_sim/faults`).
pub async fn sim_fault(sim: &SimHandle, fault: serde_json::Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/_sim/faults", sim.root_url()))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{fault}");
}

/// Clears the faults queued on `sim`.
pub async fn sim_clear_faults(sim: &SimHandle) {
    reqwest::Client::new()
        .delete(format!("{}/_sim/faults", sim.root_url()))
        .send()
        .await
        .unwrap();
}

/// How many `/v1` requests `sim` has received.
pub fn sim_calls(sim: &SimHandle) -> usize {
    sim.state().requests().len()
}
