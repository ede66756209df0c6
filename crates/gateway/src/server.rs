//! Serving: the accept loop (hyper, HTTP/1.1 and HTTP/2), `/healthz`, `/readyz` and
//! `/metrics` (see [`crate::metrics`]), and graceful shutdown.
//!
//! Every `/v1/` path goes straight to [`pipeline::handle`]; the router (health, metrics,
//! the admin API, and the pipeline as its fallback) serves the rest. Skipping the
//! router's matching and handler wrapping on model calls saved 2–4 µs of CPU per
//! request (bench/RESULTS.md, session 7).
//!
//! Thread per core: N I/O threads (one per CPU, or `TOKIO_WORKER_THREADS`) each
//! serve connections on a current-thread runtime; the acceptor hands each new
//! connection to the thread with the fewest open (counted at the hand-off, so a burst
//! of new connections is spread evenly). A connection, its requests and
//! their upstream connections stay on that thread, so serving a request involves no
//! hand-off between threads. The acceptor and the background work (key watcher,
//! usage writer, anomaly flags, the Redis probe and settlements) run on the runtime
//! that called [`serve`]. With `[redis] url`, each I/O thread opens its own Redis
//! connection on first use (see `redis_link`).
//!
//! Shutdown order: stop accepting; let in-flight requests and streams finish for up to
//! `server.shutdown_grace_ms`; cut what is still running (their usage guards record
//! them as disconnected); stop the key and rate-limit watchers; drop the last usage senders and wait
//! for the writer to flush every queued record; send the settlements still owed to Redis.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tollgate_store::Store;

use crate::anomaly::Detector;
use crate::budgets::{self, BudgetCounters, Budgets, RedisBudgetCounters};
use crate::config::Config;
use crate::keys::{self, KeyCache};
use crate::lanes::Lanes;
use crate::limits::{self, Counters, Limits, RedisCounters};
use crate::pipeline;
use crate::record::{UsageHealth, UsageSink};
use crate::redis_link::RedisLink;
use crate::secret::Secret;
use crate::throttle::Throttle;
use crate::upstream::Upstream;

/// Everything a request needs, shared by all of them.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub keys: Arc<KeyCache>,
    pub store: Store,
    pub usage: UsageSink,
    pub upstream: Upstream,
    /// Anomaly detection on key usage.
    pub anomaly: Arc<Detector>,
    /// Rate-limit rules and their counters.
    pub limits: Arc<Limits>,
    /// Spend budgets and their counters.
    pub budgets: Arc<Budgets>,
    /// Priority lanes: the batch queues.
    pub lanes: Lanes,
    /// What is known of the upstream's capacity (adaptive throttling).
    pub throttle: Throttle,
    /// Request schemas already checked (preflight's `schema` stage).
    pub schemas: crate::schema::Checked,
    /// Named upstreams, fallback chains, circuit breakers, offline answers.
    pub fallbacks: crate::fallback::Fallbacks,
    /// The response cache (stage 5).
    pub cache: Arc<crate::cache::Cache>,
    /// Room for large request bodies (`server.max_body_bytes_in_flight`).
    pub bodies: crate::accept::BodyGate,
    /// Client connections open, and their cap (`server.max_connections`).
    pub connections: Arc<Connections>,
    /// The context earlier Responses answers carry into calls that continue them.
    pub carried: Arc<crate::carried::Carried>,
}

/// Client connections open at once, bounded by `server.max_connections`: each
/// accepted connection takes a slot, and gives it back when it closes. At the cap, the
/// acceptor holds the connection it accepted and accepts no other (the rest wait in the
/// kernel's listen queue, holding none of tollgate's descriptors or memory), and the
/// oldest open connections are asked to close (as nginx does with its kept-alive ones
/// when it runs short): an idle one closes at once, a busy one once its call in flight
/// is answered, so no call is cut and the waiting ones get in.
#[derive(Debug)]
pub struct Connections {
    slots: Arc<Semaphore>,
    cap: usize,
    /// Connections open on each I/O thread (the acceptor hands a new one to the thread
    /// with the fewest).
    open: Vec<Arc<AtomicUsize>>,
    /// Times the acceptor found every slot taken.
    waits: AtomicU64,
    /// Connections asked to close to make room.
    drained: AtomicU64,
}

impl Connections {
    /// `cap` slots (at least one), counted over `threads` I/O threads.
    pub fn new(cap: usize, threads: usize) -> Self {
        let cap = cap.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            open: (0..threads)
                .map(|_| Arc::new(AtomicUsize::new(0)))
                .collect(),
            waits: AtomicU64::new(0),
            drained: AtomicU64::new(0),
        }
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.iter().map(|o| o.load(Ordering::Relaxed)).sum()
    }

    /// The most that may be open at once.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Times the acceptor found the cap reached and waited for a connection to close.
    pub fn waits_total(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Connections asked to close because the cap was reached.
    pub fn drained_total(&self) -> u64 {
        self.drained.load(Ordering::Relaxed)
    }

    /// How many of the oldest connections to ask to close each time the cap is
    /// reached: an eighth of the cap, at least one and at most 32 (nginx's figures).
    fn drain_batch(&self) -> usize {
        (self.cap / 8).clamp(1, 32)
    }
}

/// Counts of what a finished server did, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeReport {
    /// Usage records written by the writer over the server's life.
    pub usage_records_written: u64,
}

/// Builds the router: health endpoints, and every other path through the pipeline.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::handler))
        .merge(crate::admin::routes())
        .fallback(pipeline::handle)
        .with_state(gateway)
}

async fn healthz() -> impl IntoResponse {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        "{\"status\":\"ok\"}",
    )
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    // A store that does not answer (a partitioned database) is as unready as one that
    // refuses: the check has its own deadline, so a probe never hangs.
    let ping = tokio::time::timeout(READY_PING_TIMEOUT, gw.store.ping()).await;
    let store_ok = matches!(ping, Ok(Ok(())));
    // Usage records that cannot be written, or a full queue that holds finished
    // requests back, make the replica unready too: a balancer then sends its traffic
    // to the others while it catches up.
    let usage = gw.usage.health();
    let ready = store_ok && usage == UsageHealth::Ok;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": if store_ok { "ok" } else { "unreachable" },
        "usage": usage.as_str(),
        "upstream": gw.upstream.base_url(),
        "keys": gw.keys.len(),
    });
    // Redis down does not make the gateway unready: admission has its fallback.
    if let Some(link) = gw.limits.redis() {
        body["redis"] = serde_json::json!(if link.is_up() { "ok" } else { "fallback" });
    }
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// How long `/readyz` waits for the store to answer.
const READY_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a gateway on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    store: Store,
    provider_key: Secret,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<ServeReport, crate::StartError> {
    serve_announced(listener, config, store, provider_key, shutdown, || {}).await
}

/// [`serve`], calling `ready` once everything that can fail at start has succeeded,
/// just before connections are accepted (`tollgate serve` prints its `listening on`
/// line there, so the line never comes before a start that fails).
pub async fn serve_announced(
    listener: TcpListener,
    config: Config,
    store: Store,
    provider_key: Secret,
    shutdown: impl Future<Output = ()> + Send,
    ready: impl FnOnce(),
) -> Result<ServeReport, crate::StartError> {
    let upstream = Upstream::new(&config.upstream, provider_key)?;
    let fallbacks = crate::fallback::Fallbacks::start(&config)?;
    let keys = Arc::new(KeyCache::with_upstream(upstream.clone()));
    let version = keys::load(&keys, &store).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(keys::watch(
        keys.clone(),
        store.clone(),
        version,
        config.keys_refresh_interval,
        stop_rx,
    ));
    let (limits, redis_probe, redis_link) = match &config.redis.url {
        Some(url) => {
            let link = RedisLink::new(url, &config.redis)?;
            link.check().await;
            let probe = tokio::spawn(link.clone().probe(stop_tx.subscribe()));
            let counters = Counters::Redis(RedisCounters::new(link.clone()));
            (
                Arc::new(Limits::with_counters(counters)),
                Some(probe),
                Some(link),
            )
        }
        None => (Arc::new(Limits::default()), None, None),
    };
    limits.set_models(crate::models::ModelRules::with_aliases(&config.aliases));
    limits.catalog().set_base(config.catalog.clone());
    let limits_version = limits::load(&limits, &store).await?;
    let limits_watcher = tokio::spawn(limits::watch(
        limits.clone(),
        store.clone(),
        limits_version,
        config.keys_refresh_interval,
        stop_tx.subscribe(),
    ));
    let cache = Arc::new(crate::cache::Cache::new(
        config.cache.clone(),
        redis_link.clone(),
    ));
    let catalog = limits.catalog().clone();
    let (budgets, notifier) = Budgets::start(catalog.clone(), store.clone(), &config.budgets)
        .map_err(crate::StartError::Upstream)?;
    // Kept to send the settlements still owed to Redis once every request is done.
    let settle_link = redis_link.clone();
    let budgets = Arc::new(match redis_link {
        Some(link) => budgets.with_counters(BudgetCounters::Redis(RedisBudgetCounters::new(link))),
        None => budgets,
    });
    let budgets_version = budgets::load(&budgets, &store).await?;
    let budgets_watcher = tokio::spawn(budgets::watch(
        budgets.clone(),
        store.clone(),
        budgets_version,
        config.keys_refresh_interval,
        config.budgets.sync_interval,
        stop_tx.subscribe(),
    ));
    let (usage, writer) = UsageSink::start_with_budgets(
        store.clone(),
        config.usage_queue_capacity,
        config.usage_batch_size,
        catalog,
        budgets.clone(),
    );
    let (anomaly, webhook) =
        Detector::start(config.anomaly.clone()).map_err(crate::StartError::Upstream)?;
    let anomaly = Arc::new(anomaly.with_project_policy(keys.anomaly_policy()));
    let usage = usage.with_anomaly(anomaly.clone());
    let flag_writer = tokio::spawn(crate::anomaly_store::persist(
        anomaly.clone(),
        keys.clone(),
        store.clone(),
        stop_tx.subscribe(),
    ));
    let grace = config.shutdown_grace;
    let header_timeout = config.header_timeout;
    let (lanes, adaptive_threshold) = (config.lanes, config.upstream.adaptive_threshold);
    let bodies = crate::accept::BodyGate::new(config.max_body_bytes_in_flight);
    let connections = Arc::new(Connections::new(config.max_connections, io_threads()));
    let gateway = Arc::new(Gateway {
        config,
        keys,
        store,
        usage,
        upstream,
        anomaly,
        limits,
        budgets,
        lanes: Lanes::new(lanes),
        throttle: Throttle::new(adaptive_threshold),
        schemas: crate::schema::Checked::default(),
        bodies,
        connections: connections.clone(),
        fallbacks,
        cache,
        carried: Arc::default(),
    });

    let app = router(gateway.clone());
    let threads = (0..connections.open.len())
        .map(|i| spawn_io_thread(i, app.clone(), gateway.clone(), header_timeout, grace))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(crate::StartError::Threads)?;
    // Only the I/O threads hold the gateway now: its usage sink closes with the last.
    drop((app, gateway));
    ready();
    accept(listener, threads, &connections, shutdown).await;

    let _ = stop_tx.send(true);
    let _ = watcher.await;
    let _ = limits_watcher.await;
    let _ = budgets_watcher.await;
    let _ = flag_writer.await;
    if let Some(probe) = redis_probe {
        let _ = probe.await;
    }
    // The router (and with it the last usage sender) is gone: the writer drains and ends.
    let written = writer.await.unwrap_or(0);
    // Every request is finished: what they owe Redis goes now, not an interval later.
    if let Some(link) = settle_link {
        link.settlements().flush(&link).await;
    }
    // The detector went with the router: the webhook task sends what is queued, briefly.
    if let Some(webhook) = webhook {
        let _ = tokio::time::timeout(grace, webhook).await;
    }
    // Likewise the budgets: the notifier announces what is queued, briefly.
    let _ = tokio::time::timeout(grace, notifier).await;
    tracing::info!(usage_records = written, "gateway stopped");
    Ok(ServeReport {
        usage_records_written: written,
    })
}

/// How many I/O threads serve: `TOKIO_WORKER_THREADS` if set, else one per CPU.
fn io_threads() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// A connection handed from the acceptor to an I/O thread, counted on the thread from
/// the hand-off, with its slot among `server.max_connections`.
type Accepted = (
    std::net::TcpStream,
    SocketAddr,
    OpenGuard,
    OwnedSemaphorePermit,
);

/// How often, at most, reaching `server.max_connections` is logged.
const CAP_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How long the acceptor waits at the cap before asking more connections to close
/// (those asked were all busy with long calls).
const DRAIN_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// What the acceptor sends an I/O thread.
enum ToThread {
    /// A new connection to serve.
    Serve(Accepted),
    /// Ask this many of the thread's oldest connections to close.
    Drain(usize),
}

/// The acceptor's handle on one I/O thread.
struct IoThread {
    tx: mpsc::UnboundedSender<ToThread>,
    /// Resolves (with an error) when the thread has shut down.
    done: oneshot::Receiver<()>,
}

/// Accepts on the caller's runtime and hands each connection to the I/O thread with
/// the fewest open ones (the kernel would wake every thread's accept for each
/// connection and give most of them to one thread), each with a slot among
/// `server.max_connections` (at the cap, the connection accepted waits, and the oldest
/// open ones are asked to close, until one does); on `shutdown`, stops accepting and
/// waits for every thread's graceful shutdown.
async fn accept(
    listener: TcpListener,
    threads: Vec<IoThread>,
    connections: &Connections,
    shutdown: impl Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let mut warned: Option<std::time::Instant> = None;
    'accepting: loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Its slot, taken once it is there (so room is made only for a connection
        // that came): while it waits for one, no other is accepted.
        let slot = match connections.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                connections.waits.fetch_add(1, Ordering::Relaxed);
                if warned.is_none_or(|at| at.elapsed() >= CAP_WARN_EVERY) {
                    warned = Some(std::time::Instant::now());
                    tracing::warn!(
                        max_connections = connections.cap,
                        "connection limit reached (server.max_connections): the oldest \
                         connections are asked to close, new ones wait until they do"
                    );
                }
                loop {
                    drain_oldest(&threads, connections, connections.drain_batch());
                    tokio::select! {
                        slot = connections.slots.clone().acquire_owned() => match slot {
                            Ok(slot) => break slot,
                            Err(_) => break 'accepting,
                        },
                        () = tokio::time::sleep(DRAIN_AGAIN) => {}
                        () = &mut shutdown => break 'accepting,
                    }
                }
            }
        };
        let Some((i, counted)) = hand_off(connections.open.iter()) else {
            break;
        };
        match stream.into_std() {
            Ok(stream) => {
                let _ = threads[i]
                    .tx
                    .send(ToThread::Serve((stream, peer, counted, slot)));
            }
            Err(e) => tracing::warn!(error = %e, "cannot hand a connection over"),
        }
    }
    drop(listener);
    // Closing each thread's queue starts its graceful shutdown.
    let done: Vec<_> = threads.into_iter().map(|t| t.done).collect();
    for d in done {
        let _ = d.await;
    }
}

/// Asks `n` connections to close, taken from the threads with the most open (the
/// first of equals), each thread's oldest first.
fn drain_oldest(threads: &[IoThread], connections: &Connections, n: usize) {
    let mut open: Vec<usize> = (connections.open.iter())
        .map(|o| o.load(Ordering::Relaxed))
        .collect();
    let mut asked = vec![0; threads.len()];
    for _ in 0..n {
        let Some(most) = (0..open.len()).rev().max_by_key(|&i| open[i]) else {
            return;
        };
        if open[most] == 0 {
            break;
        }
        open[most] -= 1;
        asked[most] += 1;
    }
    for (thread, n) in threads.iter().zip(asked) {
        if n > 0 {
            let _ = thread.tx.send(ToThread::Drain(n));
        }
    }
}

fn spawn_io_thread(
    i: usize,
    app: Router,
    gateway: Arc<Gateway>,
    header_timeout: std::time::Duration,
    grace: std::time::Duration,
) -> std::io::Result<IoThread> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done) = oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("tollgate-io-{i}"))
        .spawn(move || {
            runtime.block_on(serve_connections(rx, app, gateway, header_timeout, grace));
            // Tasks still spawned on this thread end with its runtime, before the
            // acceptor is told the thread is done.
            drop(runtime);
            drop(done_tx);
        })?;
    Ok(IoThread { tx, done })
}

/// Counts an open connection for as long as it lives.
#[derive(Debug)]
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks the I/O thread with the fewest open connections and counts the new one on it
/// at once, so a burst of connections (a client opening its pool) is spread evenly
/// rather than all handed to whichever thread had not yet counted the previous ones.
fn hand_off<'a>(open: impl Iterator<Item = &'a Arc<AtomicUsize>>) -> Option<(usize, OpenGuard)> {
    let (i, counter) = open
        .enumerate()
        .min_by_key(|(_, o)| o.load(Ordering::Relaxed))?;
    Some((i, OpenGuard::new(counter)))
}

/// A thread's connections in the order they were accepted, each by the sender that
/// asks it to close.
#[derive(Default)]
struct Oldest(VecDeque<oneshot::Sender<()>>);

impl Oldest {
    /// Remembers a new connection; forgets the closed ones when they outnumber the
    /// open ones, so the queue stays within twice what is open.
    fn push(&mut self, close: oneshot::Sender<()>, open: usize) {
        self.0.push_back(close);
        if self.0.len() > 2 * open + 64 {
            self.0.retain(|c| !c.is_closed());
        }
    }

    /// Asks the `n` oldest open connections to close; returns how many were asked.
    fn drain(&mut self, n: usize) -> usize {
        let mut asked = 0;
        while asked < n {
            let Some(close) = self.0.pop_front() else {
                break;
            };
            if close.send(()).is_ok() {
                asked += 1;
            }
        }
        asked
    }
}

/// One I/O thread: serves the connections handed to it until the acceptor closes its
/// queue, then shuts down gracefully within `grace`.
async fn serve_connections(
    mut rx: mpsc::UnboundedReceiver<ToThread>,
    app: Router,
    gateway: Arc<Gateway>,
    header_timeout: std::time::Duration,
    grace: std::time::Duration,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // Tells every connection to close at shutdown: at once if it is idle or has not
    // sent a byte yet (a client's pool may keep such a connection, opened for a request
    // that went over another one, for a long time), else once its call is answered.
    let (stopping_tx, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut oldest = Oldest::default();
    while let Some(message) = rx.recv().await {
        let (stream, peer, counted, slot) = match message {
            ToThread::Serve(accepted) => accepted,
            ToThread::Drain(n) => {
                let asked = oldest.drain(n) as u64;
                let drained = &gateway.connections.drained;
                drained.fetch_add(asked, Ordering::Relaxed);
                continue;
            }
        };
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve a connection on this thread");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let gateway = gateway.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let req = req.map(Body::new);
            // Every `/v1/` path is the router's fallback: calls go to the pipeline
            // without the router's matching and handler wrapping.
            let to = if req.uri().path().starts_with("/v1/") {
                Ok(gateway.clone())
            } else {
                Err(app.clone())
            };
            async move {
                match to {
                    Ok(gw) => {
                        Ok::<_, std::convert::Infallible>(pipeline::handle(State(gw), req).await)
                    }
                    Err(mut app) => {
                        let mut res = tower_service::Service::call(&mut app, req).await?;
                        // Health, metrics and admin answers carry an id too.
                        if let Ok(id) = HeaderValue::from_str(&crate::accept::request_id()) {
                            res.headers_mut().entry("x-request-id").or_insert(id);
                        }
                        Ok(res)
                    }
                }
            }
        });
        let builder = builder.clone();
        let mut stopping = stopping.clone();
        let (close_tx, close_rx) = oneshot::channel();
        oldest.push(close_tx, connections.len() + 1);
        connections.spawn(async move {
            let _counted = (counted, slot);
            // Asked to close: the server stops, or the connection cap needs room.
            let close = async move {
                tokio::select! {
                    _ = close_rx => {}
                    _ = stopping.wait_for(|s| *s) => {}
                }
            };
            tokio::pin!(close);
            // Protocol detection waits for the first bytes without a timer of its own,
            // so a connection that never speaks is closed here (after the header
            // timeout, or at once when asked); after the first request hyper's header
            // timer and graceful shutdown cover idle keep-alive.
            let mut first = [0u8; 1];
            tokio::select! {
                peeked = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => {
                    match peeked {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return Ok(()),
                    }
                }
                () = &mut close => return Ok(()),
            }
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            tokio::pin!(conn);
            tokio::select! {
                served = conn.as_mut() => return served,
                // Closes now if idle, else once the call in flight is answered.
                () = &mut close => conn.as_mut().graceful_shutdown(),
            }
            conn.await
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    drop(app);
    let _ = stopping_tx.send(true);
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, all_closed).await.is_err() {
        let open = connections.len();
        tracing::warn!(
            open,
            "shutdown grace period over; closing remaining connections"
        );
    }
    connections.shutdown().await;
}

/// The peer address of a request, when it came through [`serve`].
pub fn peer_addr(req: &Request<Body>) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_connections_is_spread_evenly_and_uncounted_when_closed() {
        let open = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
        // 32 connections handed off before any thread has run: each is counted at the
        // hand-off, so the next goes to the other thread.
        let guards: Vec<(usize, OpenGuard)> = (0..32)
            .map(|_| hand_off(open.iter()).expect("a thread"))
            .collect();
        let on_first = guards.iter().filter(|(i, _)| *i == 0).count();
        assert_eq!(on_first, 16);
        assert_eq!(open[0].load(Ordering::Relaxed), 16);
        assert_eq!(open[1].load(Ordering::Relaxed), 16);
        // Closing the first thread's connections sends the next ones there.
        let (first, second): (Vec<_>, Vec<_>) = guards.into_iter().partition(|(i, _)| *i == 0);
        drop(first);
        assert_eq!(open[0].load(Ordering::Relaxed), 0);
        let next = hand_off(open.iter()).expect("a thread");
        assert_eq!(next.0, 0);
        drop(second);
        drop(next);
        assert_eq!(open[1].load(Ordering::Relaxed), 0);
        assert!(hand_off(std::iter::empty()).is_none());
    }

    #[test]
    fn the_oldest_open_connections_are_asked_first_and_closed_ones_forgotten() {
        let mut oldest = Oldest::default();
        let (first_tx, mut first) = oneshot::channel();
        oldest.push(first_tx, 1);
        // Two hundred connections come and go: the queue forgets them as it grows.
        for _ in 0..200 {
            let (tx, rx) = oneshot::channel();
            oldest.push(tx, 2);
            drop(rx);
            assert!(oldest.0.len() <= 2 * 2 + 64 + 1, "{}", oldest.0.len());
        }
        let (young_tx, mut young) = oneshot::channel();
        oldest.push(young_tx, 2);
        // One asked: the first, over any closed ones left before the young one.
        assert_eq!(oldest.drain(1), 1);
        assert_eq!(first.try_recv(), Ok(()));
        assert!(young.try_recv().is_err());
        // Asking for more than are open asks those there are.
        assert_eq!(oldest.drain(5), 1);
        assert_eq!(young.try_recv(), Ok(()));
        assert_eq!(oldest.drain(1), 0);
    }
}
