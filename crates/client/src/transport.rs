//! The raw pass-through's HTTP/1.1 transport: hyper's low-level client connection,
//! driven inside the calling task, with a small pool of idle connections.
//!
//! A general-purpose client runs each connection as a task of its own and hands every
//! request and answer across tasks (and, on a multi-threaded runtime, threads). A
//! gateway relaying one request per task does not need that: here the task that sends
//! a request also polls its connection until the answer's head arrives, and the
//! returned body keeps polling it until the last byte, then gives the connection back
//! to the pool. Nothing else ever touches a connection while it is in use.
//!
//! Idle connections are kept per thread (a current-thread runtime's sockets belong to
//! the reactor of the thread that opened them). A pooled connection is polled once
//! before reuse, so one the server closed is dropped instead of used; a request that a
//! pooled connection refused before writing anything is sent again on a fresh one.
//! HTTPS uses rustls with the webpki roots, ALPN `http/1.1`.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::noop_waker_ref;
use futures_util::Stream;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Any transport error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A plain or TLS byte stream.
trait Socket: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Socket for T {}

type Io = TokioIo<Box<dyn Socket>>;
type Conn = Connection<Io, Full<Bytes>>;

/// Where the base URL points, parsed once.
struct Target {
    host: String,
    port: u16,
    /// The `Host` header: the host, with the port when it is not the scheme's default.
    authority: HeaderValue,
    /// The base URL's path without a trailing slash, e.g. `/v1`.
    base_path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// Connection settings and the idle pool.
pub(crate) struct Transport {
    target: Target,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_idle: usize,
    user_agent: HeaderValue,
    idle: Mutex<HashMap<ThreadId, Vec<Idle>>>,
}

/// A connection waiting in the pool.
struct Idle {
    conn: Live,
    since: Instant,
}

/// An open connection: the handle to send on and the connection to drive.
struct Live {
    sender: SendRequest<Full<Bytes>>,
    conn: Conn,
    /// The connection finished (closed or failed); it is never polled again.
    closed: bool,
}

impl Live {
    /// Drives the connection; false once it has finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed {
            self.closed = self.conn.poll_without_shutdown(cx).is_ready();
        }
        !self.closed
    }
}

/// Why an exchange failed; `unsent` is set when nothing reached the server.
pub(crate) struct SendError {
    pub error: BoxError,
    pub unsent: Option<Request<Full<Bytes>>>,
}

impl Transport {
    /// A transport for `base_url` (already checked to be http or https).
    pub(crate) fn new(
        base_url: &str,
        connect_timeout: Duration,
        idle_timeout: Option<Duration>,
        max_idle: usize,
        user_agent: &str,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, String> {
        let uri: Uri = base_url.parse().map_err(|e| format!("{e}"))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("the base URL has no host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = match uri.port_u16() {
            Some(p) => format!("{}:{p}", uri.host().unwrap_or_default()),
            None => uri.host().unwrap_or_default().to_owned(),
        };
        let authority = HeaderValue::from_str(&authority).map_err(|e| format!("{e}"))?;
        let tls = if https {
            let name = ServerName::try_from(host.clone()).map_err(|e| format!("{e}"))?;
            Some((TlsConnector::from(tls_config(extra_roots)?), name))
        } else {
            None
        };
        Ok(Self {
            target: Target {
                host,
                port,
                authority,
                base_path: uri.path().trim_end_matches('/').to_owned(),
                tls,
            },
            connect_timeout,
            idle_timeout,
            max_idle,
            user_agent: HeaderValue::from_str(user_agent).map_err(|e| format!("{e}"))?,
            idle: Mutex::default(),
        })
    }

    /// A request for `path` (relative to the base URL, may carry a query) with its
    /// `Host`, and `User-Agent` / `Accept` when the caller sent none.
    pub(crate) fn request(
        &self,
        method: http::Method,
        path: &str,
        mut headers: http::HeaderMap,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, BoxError> {
        let uri = format!("{}/{}", self.target.base_path, path.trim_start_matches('/'));
        headers.insert(header::HOST, self.target.authority.clone());
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, self.user_agent.clone());
        }
        if !headers.contains_key(header::ACCEPT) {
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = Uri::try_from(uri)?;
        *req.headers_mut() = headers;
        Ok(req)
    }

    /// Sends `req` and waits for the answer's head, on a pooled connection if one is
    /// usable, else on a new one. The body drives the connection from then on.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, SendError> {
        while let Some(live) = self.checkout() {
            match exchange(live, req).await {
                Ok((res, live)) => return Ok(self.wrap(res, live)),
                Err(SendError {
                    unsent: Some(back), ..
                }) => req = back,
                Err(e) => return Err(e),
            }
        }
        let live = match self.connect().await {
            Ok(live) => live,
            Err(error) => {
                return Err(SendError {
                    error,
                    unsent: Some(req),
                })
            }
        };
        let (res, live) = exchange(live, req).await?;
        Ok(self.wrap(res, live))
    }

    fn wrap(self: &Arc<Self>, res: Response<Incoming>, live: Live) -> Response<PooledBody> {
        res.map(|body| PooledBody {
            body,
            live: Some(live),
            pool: Arc::clone(self),
        })
    }

    /// An idle connection of this thread that is still open and ready.
    fn checkout(&self) -> Option<Live> {
        let thread = std::thread::current().id();
        let mut cx = Context::from_waker(noop_waker_ref());
        loop {
            let idle = self.idle.lock().ok()?.get_mut(&thread)?.pop()?;
            let mut live = idle.conn;
            if self.idle_timeout.is_some_and(|t| idle.since.elapsed() > t) {
                continue;
            }
            // Polled once: a connection the server closed finishes here.
            if !live.drive(&mut cx) {
                continue;
            }
            if let Poll::Ready(Ok(())) = live.sender.poll_ready(&mut cx) {
                return Some(live);
            }
        }
    }

    fn checkin(&self, live: Live) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let list = idle.entry(std::thread::current().id()).or_default();
        if list.len() < self.max_idle {
            list.push(Idle {
                conn: live,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection (TCP, TLS when https, the HTTP/1.1 handshake) within the
    /// connect timeout.
    async fn connect(&self) -> Result<Live, BoxError> {
        let t = &self.target;
        let open = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port)).await?;
            tcp.set_nodelay(true)?;
            let io: Box<dyn Socket> = match &t.tls {
                Some((tls, name)) => Box::new(tls.connect(name.clone(), tcp).await?),
                None => Box::new(tcp),
            };
            let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await?;
            Ok::<_, BoxError>(Live {
                sender,
                conn,
                closed: false,
            })
        };
        match tokio::time::timeout(self.connect_timeout, open).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "connecting to {}:{} timed out after {:?}",
                t.host, t.port, self.connect_timeout
            )
            .into()),
        }
    }
}

/// Sends one request on `live` and drives the connection until the answer's head.
async fn exchange(
    mut live: Live,
    req: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, Live), SendError> {
    let mut answer = std::pin::pin!(live.sender.try_send_request(req));
    let result = poll_fn(|cx| {
        let open = live.drive(cx);
        match answer.as_mut().poll(cx) {
            Poll::Pending if !open => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => Poll::Ready(Some(r)),
        }
    })
    .await;
    match result {
        Some(Ok(res)) => Ok((res, live)),
        Some(Err(mut e)) => Err(SendError {
            unsent: e.take_message(),
            error: Box::new(e.into_error()),
        }),
        None => Err(SendError {
            error: "the connection closed before an answer".into(),
            unsent: None,
        }),
    }
}

/// A response body that drives its connection and returns it to the pool once the
/// body has been read to the end. Dropping it early closes the connection, which is
/// how an abandoned request is cancelled upstream.
pub(crate) struct PooledBody {
    body: Incoming,
    live: Option<Live>,
    pool: Arc<Transport>,
}

impl Stream for PooledBody {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(live) = &mut this.live {
                // A closed connection is kept until the body ends: what it read is
                // still in the body.
                live.drive(cx);
            }
            return match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => Poll::Ready(Some(Ok(data))),
                    // Empty chunks and trailers carry nothing to relay.
                    _ => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    this.live = None;
                    Poll::Ready(Some(Err(Box::new(e))))
                }
                Poll::Ready(None) => {
                    if let Some(mut live) = this.live.take() {
                        // Lets the connection settle into idle before it is pooled.
                        if live.drive(cx) {
                            this.pool.checkin(live);
                        }
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// The certificates of PEM bundles, each bundle holding at least one.
pub(crate) fn parse_roots(bundles: &[Vec<u8>]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for pem in bundles {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("no PEM certificate found".to_owned());
        }
        out.extend(certs);
    }
    Ok(out)
}

/// Whether a PEM bundle holds certificates a TLS configuration accepts as roots.
pub(crate) fn check_roots(pem: &[u8]) -> Result<(), String> {
    let certs = parse_roots(&[pem.to_vec()])?;
    tls_config(&certs).map(|_| ())
}

/// rustls with the ring provider and the webpki roots (plus `extra` CA
/// certificates), speaking HTTP/1.1 only.
fn tls_config(extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, String> {
    let mut roots: RootCertStore = webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("TLS: an extra root certificate is unusable: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn targets_parse_host_port_and_path() {
        let t = Transport::new(
            "http://127.0.0.1:8089/v1",
            Duration::from_secs(1),
            None,
            8,
            "t",
            &[],
        )
        .unwrap();
        assert_eq!(t.target.host, "127.0.0.1");
        assert_eq!(t.target.port, 8089);
        assert_eq!(t.target.authority, "127.0.0.1:8089");
        assert_eq!(t.target.base_path, "/v1");
        assert!(t.target.tls.is_none());
        let req = t
            .request(
                http::Method::POST,
                "/chat/completions?x=1",
                http::HeaderMap::new(),
                Bytes::new(),
            )
            .unwrap();
        assert_eq!(req.uri(), "/v1/chat/completions?x=1");
        assert_eq!(req.headers()["host"], "127.0.0.1:8089");
        assert_eq!(req.headers()["user-agent"], "t");

        let t = Transport::new(
            "https://api.openai.com/v1/",
            Duration::from_secs(1),
            None,
            8,
            "t",
            &[],
        )
        .unwrap();
        assert_eq!(t.target.port, 443);
        assert_eq!(t.target.authority, "api.openai.com");
        assert_eq!(t.target.base_path, "/v1");
        assert!(t.target.tls.is_some());
    }
}
