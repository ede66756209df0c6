//! The simulator's HTTP server: the shared state, the router, the request pipeline
//! every `/v1` request goes through, and the accept loop.
//!
//! Pipeline of one `/v1` request ([`api`]), in order:
//! 1. read the body (kept as `Bytes` for the request log);
//! 2. **faults**: the `x-sim-*` headers, overlaid with a fault queued by
//!    `POST /_sim/faults`; latency is waited out, a reset drops the connection, a
//!    simulated status answers with its OpenAI error body;
//! 3. **route** ([`crate::endpoints`]): unknown routes answer 404 "Invalid URL";
//!    then authenticate, parse, check the model, admit (quota, per-key rate limits),
//!    and ask the engine;
//! 4. **stamp** the common headers (request id, processing time, version, rate limits);
//! 5. **record** the request and the status answered.
//!
//! The accept loop is our own (hyper's HTTP/1.1 connection, one task per connection)
//! rather than `axum::serve` for one reason: `x-sim-reset` must close the connection
//! without writing a byte, and only the task that owns the connection can do that. A
//! per-connection [`ConnKill`] handle travels in each request's extensions; the
//! handler fires it and never completes, and the connection task drops the socket.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use http::request::Parts;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tollgate_wire::models::ModelList;

use crate::config::SimConfig;
use crate::control::{self, Recorded, RequestLog};
use crate::endpoints::{self, Call};
use crate::error::ApiError;
use crate::faults::{self, FaultQueue};
use crate::headers::{error_response, stamp};
use crate::limits::Limits;
use crate::stream::StreamControl;
use crate::{auth, ids};

/// Largest request body accepted (embedding batches can be large).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// How long shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the handlers share: configuration, pre-serialised model bodies, the
/// rate limiter, the fault queue and the request log.
#[derive(Debug)]
pub struct SimState {
    pub(crate) keys: Option<std::collections::HashSet<String>>,
    pub(crate) insufficient_quota: bool,
    /// `GET /v1/models`, serialised once.
    pub(crate) models_json: Bytes,
    /// `GET /v1/models/{id}` per id, serialised once; also the set of known models.
    pub(crate) model_json: HashMap<String, Bytes>,
    pub(crate) limits: Limits,
    pub(crate) faults: FaultQueue,
    pub(crate) log: RequestLog,
    /// How streams ended (`GET /_sim/stats`).
    pub streams: Arc<crate::stream::StreamStats>,
}

impl SimState {
    pub fn new(config: SimConfig) -> Arc<Self> {
        let model_json = config
            .models
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    Bytes::from(serde_json::to_vec(m).unwrap_or_default()),
                )
            })
            .collect();
        let list = ModelList {
            object: "list".to_owned(),
            data: config.models,
        };
        Arc::new(Self {
            keys: endpoints::key_set(config.api_keys.as_deref()),
            insufficient_quota: config.insufficient_quota,
            models_json: Bytes::from(serde_json::to_vec(&list).unwrap_or_default()),
            model_json,
            limits: Limits::new(config.rpm, config.tpm),
            faults: FaultQueue::default(),
            log: RequestLog::default(),
            streams: Arc::default(),
        })
    }

    /// What the simulator has received so far, oldest first (as `GET /_sim/requests`).
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.snapshot()
    }
}

/// Closes the connection a request arrived on, without a response. Inserted into
/// every request's extensions by the accept loop.
#[derive(Debug, Clone)]
pub struct ConnKill(Arc<Notify>);

/// The simulator's routes: the control API under `/_sim`, everything else through the
/// `/v1` pipeline.
pub fn router(state: Arc<SimState>) -> Router {
    control::routes().fallback(api).with_state(state)
}

/// The `/v1` pipeline (see the module docs).
async fn api(State(state): State<Arc<SimState>>, req: Request) -> Response {
    let started = Instant::now();
    let received_at_ms = control::unix_ms();
    let request_id = ids::request_id();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    let (mut resp, rate) = match body {
        Ok(ref body) => match faults::resolve(&state.faults, &parts.headers, &path) {
            Ok(fault) => {
                if let Some(pause) = fault.latency {
                    tokio::time::sleep(pause).await;
                }
                if fault.reset {
                    state
                        .log
                        .push(record(&parts, &path, body.clone(), None, received_at_ms));
                    return reset_connection(&parts).await;
                }
                match fault.status {
                    Some(status) => (
                        error_response(&fault.error(status, &endpoints::model_of(body))),
                        None,
                    ),
                    None => {
                        let mut call = Call {
                            state: &state,
                            headers: &parts.headers,
                            body,
                            stream: StreamControl {
                                interval: fault.stream_interval,
                                cut_after: fault.stream_cut_after,
                            },
                            rate: None,
                        };
                        let resp = endpoints::route(&mut call, &parts.method, &path);
                        let mut resp = resp.unwrap_or_else(|e| error_response(&e));
                        if fault.invalid_output {
                            resp = spoil(resp).await;
                        }
                        (resp, call.rate)
                    }
                }
            }
            Err(e) => (error_response(&e), None),
        },
        Err(_) => (
            error_response(&ApiError::new(
                413,
                "The request body is too large.",
                "invalid_request_error",
                None,
                None,
            )),
            None,
        ),
    };
    let rate = rate.unwrap_or_else(|| state.limits.peek(auth::bearer(&parts.headers)));
    stamp(&mut resp, &request_id, started.elapsed(), &rate);
    let status = resp.status().as_u16();
    tracing::debug!(method = %parts.method, path, status, request_id, "answered");
    let body = body.unwrap_or_default();
    state
        .log
        .push(record(&parts, &path, body, Some(status), received_at_ms));
    resp
}

/// A 200 JSON answer with its structured output spoiled (`x-sim-invalid-output`);
/// any other answer (a stream, an error) as it is.
async fn spoil(resp: Response) -> Response {
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if resp.status() != http::StatusCode::OK || !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let bytes = faults::spoil_structured(&bytes).map_or(bytes, Bytes::from);
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

fn record(
    parts: &Parts,
    path: &str,
    body: Bytes,
    status: Option<u16>,
    received_at_ms: u64,
) -> Recorded {
    Recorded {
        method: parts.method.clone(),
        path: path.to_owned(),
        headers: parts.headers.clone(),
        body,
        status,
        received_at_ms,
    }
}

/// `x-sim-reset`: under our accept loop, asks the connection task to drop the socket
/// and never answers. Under another server (no [`ConnKill`]), answers with a body that
/// fails on its first poll: hyper then aborts the connection before the head is
/// flushed.
async fn reset_connection(parts: &Parts) -> Response {
    if let Some(ConnKill(kill)) = parts.extensions.get::<ConnKill>() {
        kill.notify_one();
        std::future::pending::<()>().await;
    }
    let fail = futures_util::stream::once(async {
        Err::<Bytes, _>(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "x-sim-reset",
        ))
    });
    Response::new(Body::from_stream(fail))
}

/// Serves the simulator on `listener` until `shutdown` completes, then lets open
/// connections finish (up to a few seconds).
pub async fn serve(
    listener: TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    serve_router(listener, router(SimState::new(config)), shutdown).await
}

/// [`serve`] for an already built router (e.g. one sharing a [`SimState`]).
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(connection(stream, app.clone(), stop_rx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::debug!(
            open = connections.len(),
            "connections still open at shutdown; aborting them"
        );
    }
    Ok(())
}

/// One HTTP/1.1 connection, until the peer closes it, a handler kills it
/// (`x-sim-reset`), or shutdown drains it.
async fn connection(stream: TcpStream, app: Router, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let kill = Arc::new(Notify::new());
    let tower = TowerToHyperService::new(app);
    let handle = ConnKill(kill.clone());
    let svc = service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(handle.clone());
        hyper::service::Service::call(&tower, req)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            // Dropping the connection closes the socket with nothing (more) written.
            () = kill.notified() => return,
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A simulator running in this process (see [`spawn`]). Dropping it stops the server.
#[derive(Debug)]
pub struct SimHandle {
    /// The address it listens on.
    pub addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl SimHandle {
    /// `http://ADDR/v1`, what an OpenAI SDK takes as its base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://ADDR`, for the control API.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's shared state (request log, …).
    pub fn state(&self) -> &Arc<SimState> {
        &self.state
    }

    /// Stops accepting, lets open connections finish, and waits for the server.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts a simulator on `127.0.0.1:0` in this process. Requires a Tokio runtime.
pub async fn spawn(config: SimConfig) -> io::Result<SimHandle> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let state = SimState::new(config);
    let (tx, rx) = oneshot::channel::<()>();
    let app = router(state.clone());
    let task = tokio::spawn(serve_router(listener, app, async {
        let _ = rx.await;
    }));
    Ok(SimHandle {
        addr,
        state,
        shutdown: Some(tx),
        task: Some(task),
    })
}
