//! `Client` and its builder: configuration, request assembly, the attempt that the
//! retry loop repeats, and the raw pass-through call.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::body::ByteStream;
use crate::error::Error;
use crate::meta::{ApiResponse, ResponseMeta};
use crate::retry::{self, classify_status, Failure, RetryPolicy, Stop, Verdict};
use crate::stream::{End, EventStream};
use crate::transport::{BoxError, PooledBody, SendError, Transport};

/// The default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Headers that describe one connection, not the message: never forwarded by
/// [`Client::raw`] in either direction (RFC 9110 §7.6.1). On the request side `host`
/// and `content-length` are dropped too: the client sets them for the upstream.
const HOP_BY_HOP: [HeaderName; 9] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
];

/// A client for an OpenAI-compatible API. Cheap to clone (the connection pool and
/// configuration are shared); the `with_*` methods return a handle with per-call
/// overrides and leave the original untouched.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    call: CallOptions,
}

/// Builds a [`Client`]. Every setting has a default; only the API key usually
/// needs setting.
pub struct ClientBuilder {
    base_url: String,
    api_key: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    retry: RetryPolicy,
    headers: HeaderMap,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: usize,
    user_agent: String,
    use_system_proxy: bool,
    /// PEM bundles of CA certificates trusted beside the web PKI roots.
    extra_roots_pem: Vec<Vec<u8>>,
}

/// An upstream answer passed through untouched: status, headers (minus hop-by-hop
/// ones) and the body as a byte stream. Returned by [`Client::raw`] for every HTTP
/// status, after retries.
#[derive(Debug)]
pub struct RawResponse {
    pub meta: ResponseMeta,
    pub body: ByteStream,
}

struct Inner {
    http: reqwest::Client,
    /// The raw pass-through's own transport; `None` when a system proxy applies
    /// (then raw calls go through `http`, which honours it).
    direct: Option<Arc<Transport>>,
    base_url: String,
    /// `Bearer <key>`, marked sensitive so `Debug` never shows it.
    auth: Option<HeaderValue>,
    headers: HeaderMap,
    timeout: Duration,
    retry: RetryPolicy,
}

#[derive(Clone, Default)]
struct CallOptions {
    deadline: Option<Deadline>,
    max_retries: Option<u32>,
    headers: HeaderMap,
}

#[derive(Clone, Copy, Debug)]
enum Deadline {
    After(Duration),
    At(Instant),
}

/// One request, ready to be sent as many times as the retry policy allows.
struct Call {
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Option<Bytes>,
    label: String,
}

/// Why an attempt failed, kept for the error if it is the last one.
#[derive(Debug)]
enum Failed {
    Transport {
        error: BoxError,
        attempt: u32,
    },
    Status {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        attempt: u32,
    },
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            headers: HeaderMap::new(),
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: usize::MAX,
            user_agent: concat!("tollgate-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            use_system_proxy: true,
            extra_roots_pem: Vec::new(),
        }
    }
}

impl ClientBuilder {
    /// A builder with every default and no API key.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder configured from the environment: `OPENAI_API_KEY` (required),
    /// `OPENAI_BASE_URL`, `OPENAI_ORG_ID` and `OPENAI_PROJECT_ID` (optional).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_source(|name| std::env::var(name).ok())
    }

    /// [`ClientBuilder::from_env`] over any variable source, so tests need not touch
    /// the process environment.
    fn from_source(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let key = get("OPENAI_API_KEY")
            .ok_or_else(|| Error::Config("OPENAI_API_KEY is not set".to_owned()))?;
        let mut b = Self::new().api_key(key);
        if let Some(url) = get("OPENAI_BASE_URL") {
            b = b.base_url(url);
        }
        for (var, header) in [
            ("OPENAI_ORG_ID", "openai-organization"),
            ("OPENAI_PROJECT_ID", "openai-project"),
        ] {
            if let Some(v) = get(var) {
                let value = HeaderValue::from_str(v.trim())
                    .map_err(|_| Error::Config(format!("{var} is not a valid header value")))?;
                b.headers.insert(HeaderName::from_static(header), value);
            }
        }
        Ok(b)
    }

    /// The API root, including its version path (default `https://api.openai.com/v1`).
    /// Request paths such as `responses` are appended to it.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The key sent as `Authorization: Bearer <key>`. Never logged or displayed.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Time allowed to open a connection (TCP and TLS), per attempt. Default 5 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The overall deadline of a call, counted from its start: every attempt, every
    /// wait between attempts and reading the body (streams included). Default 600 s,
    /// like the official SDKs. Override per call with [`Client::with_timeout`].
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The retry policy (see [`RetryPolicy`] for the rules).
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Shorthand for changing only `max_retries` of the retry policy.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.retry.max_retries = n;
        self
    }

    /// A header sent with every request (replacing an earlier value of the same name).
    pub fn default_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// How long an idle pooled connection is kept. Default 90 s; `None` keeps it.
    pub fn pool_idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.pool_idle_timeout = d;
        self
    }

    /// Most idle connections kept per host. Default unlimited.
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// The `User-Agent` header. Default `tollgate-client/<version>`.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// Also trusts the CA certificates in `pem` (one or more PEM certificates) for
    /// HTTPS upstreams, beside the built-in web PKI roots — for an upstream behind a
    /// private CA. Checked when the client is built.
    pub fn add_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.extra_roots_pem.push(pem.into());
        self
    }

    /// Ignore `HTTP(S)_PROXY` environment variables (they are honoured by default).
    pub fn no_proxy(mut self) -> Self {
        self.use_system_proxy = false;
        self
    }

    /// Builds the client. Fails on an invalid base URL or an API key that cannot be a
    /// header value (the error never repeats the key).
    pub fn build(self) -> Result<Client, Error> {
        let base_url = self.base_url.trim().trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|e| Error::Config(format!("invalid base URL {base_url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "base URL {base_url:?} is not http(s)"
            )));
        }
        let auth = match self.api_key {
            Some(key) => {
                let mut v =
                    HeaderValue::from_str(&format!("Bearer {}", key.trim())).map_err(|_| {
                        Error::Config(
                            "the API key contains characters not allowed in a header".to_owned(),
                        )
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let extra_roots = crate::transport::parse_roots(&self.extra_roots_pem)
            .map_err(|e| Error::Config(format!("extra root certificates: {e}")))?;
        // A URL reqwest takes but `http::Uri` does not (an IDNA host, say) keeps raw
        // calls on reqwest too.
        let direct = if self.use_system_proxy && system_proxy_set(parsed.scheme() == "https") {
            None
        } else {
            Transport::new(
                &base_url,
                self.connect_timeout,
                self.pool_idle_timeout,
                self.pool_max_idle_per_host,
                &self.user_agent,
                &extra_roots,
            )
            .inspect_err(|e| tracing::debug!(error = %e, "raw calls go through reqwest"))
            .ok()
            .map(Arc::new)
        };
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(self.user_agent);
        if !self.use_system_proxy {
            http = http.no_proxy();
        }
        for pem in &self.extra_roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("extra root certificates: {e}")))?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| Error::Config(format!("could not build the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                direct,
                base_url,
                auth,
                headers: self.headers,
                timeout: self.timeout,
                retry: self.retry,
            }),
            call: CallOptions::default(),
        })
    }
}

impl Client {
    /// A builder with every default.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// A client for `https://api.openai.com/v1` with this key and every default.
    pub fn new(api_key: impl Into<String>) -> Result<Self, Error> {
        ClientBuilder::new().api_key(api_key).build()
    }

    /// A client configured from `OPENAI_API_KEY` (required), `OPENAI_BASE_URL`,
    /// `OPENAI_ORG_ID` and `OPENAI_PROJECT_ID`.
    pub fn from_env() -> Result<Self, Error> {
        ClientBuilder::from_env()?.build()
    }

    /// The base URL requests go to (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// A handle whose calls must finish within `d` of their start (all attempts,
    /// waits and the body included). Replaces the client's timeout.
    pub fn with_timeout(&self, d: Duration) -> Self {
        let mut c = self.clone();
        c.call.deadline = Some(Deadline::After(d));
        c
    }

    /// A handle whose calls must finish by `at` — for a gateway, the deadline of the
    /// request it is serving.
    pub fn with_deadline(&self, at: std::time::Instant) -> Self {
        let mut c = self.clone();
        c.call.deadline = Some(Deadline::At(Instant::from_std(at)));
        c
    }

    /// A handle with a different `max_retries`.
    pub fn with_max_retries(&self, n: u32) -> Self {
        let mut c = self.clone();
        c.call.max_retries = Some(n);
        c
    }

    /// A handle that adds (or replaces) one header on its typed calls.
    pub fn with_header(&self, name: HeaderName, value: HeaderValue) -> Self {
        let mut c = self.clone();
        c.call.headers.insert(name, value);
        c
    }

    /// Pass-through: sends `body` and `headers` untouched to `base_url + path` (path
    /// may carry a query string), except that `Authorization` is replaced by the
    /// client's key (or removed when it has none) and hop-by-hop headers are dropped.
    /// Client default headers fill in names the caller did not send.
    ///
    /// Retries follow the same rules as typed calls, and happen before anything is
    /// returned. After them, *every* HTTP answer — error statuses included — comes
    /// back as a [`RawResponse`] with the upstream status, headers and bytes, so a
    /// gateway can relay it as is. A 2xx body is streamed and never retried.
    /// `Err` means there was no HTTP answer at all ([`Error::Timeout`],
    /// [`Error::Connection`]).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<RawResponse, Error> {
        self.relay(method, path, Caller::All(&headers), body).await
    }

    /// [`Client::raw`] with the caller's headers borrowed and filtered by `keep`: the
    /// headers of each attempt are built from them directly, with no intermediate
    /// copy to clone per attempt (what a gateway relaying a request needs).
    pub async fn forward(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        keep: fn(&HeaderName) -> bool,
        body: Bytes,
    ) -> Result<RawResponse, Error> {
        self.relay(method, path, Caller::Filtered(headers, keep), body)
            .await
    }

    async fn relay(
        &self,
        method: Method,
        path: &str,
        caller: Caller<'_>,
        body: Bytes,
    ) -> Result<RawResponse, Error> {
        if let Some(direct) = &self.inner.direct {
            return self.raw_direct(direct, method, path, caller, body).await;
        }
        // Boxed: only a client behind a system proxy goes this way, and reqwest's
        // future is large; the direct path's future stays small.
        let out = self.outgoing(caller);
        Box::pin(self.raw_proxied(method, path, out, body)).await
    }

    /// The headers sent upstream for `caller`'s: its own but for hop-by-hop ones (and
    /// any its `Connection` names), `Authorization`, `Host` and `Content-Length`;
    /// then the client's default headers for names it did not send, and the client's
    /// key. Built in one pass, once per attempt.
    fn outgoing(&self, caller: Caller<'_>) -> HeaderMap {
        let (src, keep) = match caller {
            Caller::All(h) => (h, None),
            Caller::Filtered(h, keep) => (h, Some(keep)),
        };
        let listed = listed_in_connection(src);
        let (inner, call) = (&self.inner.headers, &self.call.headers);
        let mut out = HeaderMap::with_capacity(src.keys_len() + inner.len() + call.len() + 4);
        for (name, value) in src {
            let dropped = HOP_BY_HOP.contains(name)
                || name == header::AUTHORIZATION
                || name == header::HOST
                || name == header::CONTENT_LENGTH
                || listed.contains(name)
                || keep.is_some_and(|keep| !keep(name));
            if !dropped {
                out.append(name.clone(), value.clone());
            }
        }
        for (name, value) in inner.iter().chain(call.iter()) {
            if !out.contains_key(name) {
                out.insert(name.clone(), value.clone());
            }
        }
        if let Some(auth) = &self.inner.auth {
            out.insert(header::AUTHORIZATION, auth.clone());
        }
        out
    }

    /// [`Client::raw`] through reqwest (a system proxy applies).
    async fn raw_proxied(
        &self,
        method: Method,
        path: &str,
        out: HeaderMap,
        body: Bytes,
    ) -> Result<RawResponse, Error> {
        let call = Call {
            label: format!("{method} /{}", path_only(path)),
            url: self.url(path),
            method,
            headers: out,
            body: (!body.is_empty()).then_some(body),
        };
        let (started, deadline) = self.deadline();
        let sent = retry::run(
            &self.inner.retry,
            self.max_retries(),
            deadline,
            &call.label,
            |n| self.send(&call, n),
        )
        .await;
        match sent {
            Ok((response, attempts)) => {
                let mut meta =
                    ResponseMeta::new(response.status(), response.headers().clone(), attempts);
                strip_hop_by_hop(&mut meta.headers);
                let id = meta.request_id.clone();
                let body = ByteStream::live(response, started, deadline, attempts, id);
                Ok(RawResponse { meta, body })
            }
            Err(Stop::Failed(Failed::Status {
                status,
                headers,
                body,
                attempt,
            })) => Ok(RawResponse::answered(status, headers, body, attempt)),
            Err(stop) => Err(stop_to_error(stop)),
        }
    }

    /// [`Client::raw`] over the in-task transport: same retries, same answers.
    async fn raw_direct(
        &self,
        direct: &Arc<Transport>,
        method: Method,
        path: &str,
        caller: Caller<'_>,
        body: Bytes,
    ) -> Result<RawResponse, Error> {
        let label = path_only(path);
        let (started, deadline) = self.deadline();
        let sent = retry::run(
            &self.inner.retry,
            self.max_retries(),
            deadline,
            label,
            |n| self.send_direct(direct, &method, path, caller, &body, n),
        )
        .await;
        match sent {
            Ok((response, attempts)) => {
                let (parts, live) = response.into_parts();
                let mut meta = ResponseMeta::new(parts.status, parts.headers, attempts);
                strip_hop_by_hop(&mut meta.headers);
                let id = meta.request_id.clone();
                let body = ByteStream::from_stream(Box::pin(live), started, deadline, attempts, id);
                Ok(RawResponse { meta, body })
            }
            Err(Stop::Failed(Failed::Status {
                status,
                headers,
                body,
                attempt,
            })) => Ok(RawResponse::answered(status, headers, body, attempt)),
            Err(stop) => Err(stop_to_error(stop)),
        }
    }

    /// One raw attempt over the in-task transport; an error status is read in full
    /// and classified.
    async fn send_direct(
        &self,
        direct: &Arc<Transport>,
        method: &Method,
        path: &str,
        caller: Caller<'_>,
        body: &Bytes,
        attempt: u32,
    ) -> Result<(http::Response<PooledBody>, u32), Failure<Failed>> {
        let transport = |error| Failure {
            error: Failed::Transport { error, attempt },
            verdict: Verdict::Retry { after: None },
        };
        let request = direct
            .request(method.clone(), path, self.outgoing(caller), body.clone())
            .map_err(|error| Failure {
                error: Failed::Transport { error, attempt },
                verdict: Verdict::Fatal,
            })?;
        let response = direct
            .send(request)
            .await
            .map_err(|SendError { error, .. }| {
                tracing::debug!(call = %path_only(path), attempt, error = %error, "no answer");
                transport(error)
            })?;
        let status = response.status();
        tracing::debug!(
            call = %path_only(path),
            attempt,
            status = status.as_u16(),
            "answer"
        );
        if status.is_success() {
            return Ok((response, attempt));
        }
        let (parts, live) = response.into_parts();
        // An error answer cut short (or absurdly large) is no answer: it is not relayed
        // as an empty or partial one, and is retried like a dropped connection.
        let body = read_all(live).await.map_err(transport)?;
        let verdict = classify_status(status, &parts.headers, &body);
        Err(Failure {
            error: Failed::Status {
                status,
                headers: parts.headers,
                body,
                attempt,
            },
            verdict,
        })
    }

    /// A typed call with a JSON answer read in full (read failures are retried too:
    /// nothing has reached the caller yet).
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<ApiResponse<T>, Error> {
        let call = self.typed_call(method, path, body, "application/json");
        let (_, deadline) = self.deadline();
        let (status, headers, bytes, attempts) = retry::run(
            &self.inner.retry,
            self.max_retries(),
            deadline,
            &call.label,
            |n| self.send_buffered(&call, n),
        )
        .await
        .map_err(stop_to_error)?;
        let meta = ResponseMeta::new(status, headers, attempts);
        match serde_json::from_slice(&bytes) {
            Ok(body) => Ok(ApiResponse::new(body, meta)),
            Err(source) => Err(Error::Decode {
                request_id: meta.request_id,
                source,
            }),
        }
    }

    /// A typed streaming call: retried until the answer's head arrives, then handed
    /// over as an event stream and never retried.
    pub(crate) async fn event_stream<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Bytes,
        end: End,
        is_terminal: fn(&T) -> bool,
    ) -> Result<EventStream<T>, Error> {
        let call = self.typed_call(Method::POST, path, Some(body), "text/event-stream");
        let (started, deadline) = self.deadline();
        let (response, attempts) = retry::run(
            &self.inner.retry,
            self.max_retries(),
            deadline,
            &call.label,
            |n| self.send(&call, n),
        )
        .await
        .map_err(stop_to_error)?;
        let meta = ResponseMeta::new(response.status(), response.headers().clone(), attempts);
        let body = ByteStream::live(
            response,
            started,
            deadline,
            attempts,
            meta.request_id.clone(),
        );
        Ok(EventStream::new(meta, body, end, is_terminal))
    }

    /// One attempt: sends the request; an error status is read in full and classified.
    async fn send(
        &self,
        call: &Call,
        attempt: u32,
    ) -> Result<(reqwest::Response, u32), Failure<Failed>> {
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), &call.url)
            .headers(call.headers.clone());
        if let Some(body) = &call.body {
            request = request.body(body.clone());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(call = %call.label, attempt, error = %error, "no answer");
                let verdict = if error.is_builder() {
                    Verdict::Fatal
                } else {
                    Verdict::Retry { after: None }
                };
                return Err(Failure {
                    error: Failed::Transport {
                        error: Box::new(error),
                        attempt,
                    },
                    verdict,
                });
            }
        };
        let status = response.status();
        tracing::debug!(
            call = %call.label,
            attempt,
            status = status.as_u16(),
            request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
            "answer"
        );
        if status.is_success() {
            return Ok((response, attempt));
        }
        let headers = response.headers().clone();
        let body = read_all(response.bytes_stream())
            .await
            .map_err(|error| Failure {
                error: Failed::Transport { error, attempt },
                verdict: Verdict::Retry { after: None },
            })?;
        let verdict = classify_status(status, &headers, &body);
        Err(Failure {
            error: Failed::Status {
                status,
                headers,
                body,
                attempt,
            },
            verdict,
        })
    }

    /// One attempt that also reads a successful body in full.
    async fn send_buffered(
        &self,
        call: &Call,
        attempt: u32,
    ) -> Result<(StatusCode, HeaderMap, Bytes, u32), Failure<Failed>> {
        let (response, attempt) = self.send(call, attempt).await?;
        let status = response.status();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => Ok((status, headers, body, attempt)),
            Err(error) => {
                tracing::debug!(call = %call.label, attempt, error = %error, "body read failed");
                Err(Failure {
                    error: Failed::Transport {
                        error: Box::new(error),
                        attempt,
                    },
                    verdict: Verdict::Retry { after: None },
                })
            }
        }
    }

    fn typed_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        accept: &'static str,
    ) -> Call {
        let mut headers = self.inner.headers.clone();
        for (name, value) in &self.call.headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        if body.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(auth) = &self.inner.auth {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        Call {
            label: format!("{method} /{}", path_only(path)),
            url: self.url(path),
            method,
            headers,
            body,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.inner.base_url, path.trim_start_matches('/'))
    }

    /// The call's start and deadline.
    fn deadline(&self) -> (Instant, Instant) {
        let now = Instant::now();
        let deadline = match self.call.deadline {
            Some(Deadline::At(at)) => at,
            Some(Deadline::After(d)) => now + d,
            None => now + self.inner.timeout,
        };
        (now, deadline)
    }

    fn max_retries(&self) -> u32 {
        self.call
            .max_retries
            .unwrap_or(self.inner.retry.max_retries)
    }
}

impl RawResponse {
    /// An error answer read in full, after retries, to pass through.
    fn answered(status: StatusCode, headers: HeaderMap, body: Bytes, attempts: u32) -> Self {
        let mut meta = ResponseMeta::new(status, headers, attempts);
        strip_hop_by_hop(&mut meta.headers);
        let id = meta.request_id.clone();
        Self {
            meta,
            body: ByteStream::buffered(body, attempts, id),
        }
    }

    /// An answer already read in full (`meta` as received), to relay after looking
    /// at its body.
    pub fn buffered(meta: ResponseMeta, body: Bytes) -> Self {
        let (attempts, id) = (meta.attempts, meta.request_id.clone());
        Self {
            meta,
            body: ByteStream::buffered(body, attempts, id),
        }
    }

    /// The upstream status.
    pub fn status(&self) -> StatusCode {
        self.meta.status
    }

    /// The upstream headers, minus hop-by-hop ones.
    pub fn headers(&self) -> &HeaderMap {
        &self.meta.headers
    }

    /// The upstream `x-request-id`.
    pub fn request_id(&self) -> Option<&str> {
        self.meta.request_id()
    }

    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        self.meta.attempts
    }

    /// Reads the whole body.
    pub async fn bytes(self) -> Result<Bytes, Error> {
        self.body.collect().await
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base_url)
            .field("api_key", &self.inner.auth.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.inner.timeout)
            .field("retry", &self.inner.retry)
            .field("deadline_override", &self.call.deadline)
            .field("max_retries_override", &self.call.max_retries)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

fn stop_to_error(stop: Stop<Failed>) -> Error {
    match stop {
        Stop::Timeout { attempts, elapsed } => Error::Timeout { attempts, elapsed },
        Stop::Failed(Failed::Transport { error, attempt }) => Error::Connection {
            attempts: attempt,
            source: error,
        },
        Stop::Failed(Failed::Status {
            status,
            headers,
            body,
            attempt,
        }) => Error::from_status(status, headers, &body, attempt),
    }
}

/// Whether `HTTP(S)_PROXY` / `ALL_PROXY` (either case) would apply to the base URL.
fn system_proxy_set(https: bool) -> bool {
    let names: [&str; 4] = if https {
        ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    names
        .iter()
        .any(|n| std::env::var_os(n).is_some_and(|v| !v.is_empty()))
}

/// Reads a whole body from the in-task transport.
/// The most of an error answer read: OpenAI's are well under a kilobyte.
const ERROR_BODY_LIMIT: usize = 4 << 20;

fn error_body_too_large() -> BoxError {
    format!(
        "the upstream's error answer is larger than {} MiB",
        ERROR_BODY_LIMIT >> 20
    )
    .into()
}

/// An error answer, whole: up to [`ERROR_BODY_LIMIT`], and only if it arrives whole
/// (an answer cut short, or longer, is no answer).
async fn read_all<E: Into<BoxError>>(
    body: impl futures_util::Stream<Item = Result<Bytes, E>>,
) -> Result<Bytes, BoxError> {
    use futures_util::StreamExt;
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Into::into)?;
        if out.len() + chunk.len() > ERROR_BODY_LIMIT {
            return Err(error_body_too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// The caller's headers a relayed request starts from.
#[derive(Clone, Copy)]
enum Caller<'a> {
    /// All of them.
    All(&'a HeaderMap),
    /// Those `keep` accepts.
    Filtered(&'a HeaderMap, fn(&HeaderName) -> bool),
}

/// The names a message's `Connection` header lists (hop-by-hop for that message)
/// that it carries, beyond the standard hop-by-hop names: usually none, and then
/// nothing is allocated (`Connection: keep-alive` names only a standard one).
fn listed_in_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(t))
        })
        .filter(|t| headers.contains_key(*t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// Drops hop-by-hop headers, including any named in `Connection`. One walk over the
/// names finds them: most messages carry none or only `connection`, and removing the
/// nine names one by one hashed each of them (about 1,500 instructions a call).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut found: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n))
        .cloned()
        .collect();
    if found.is_empty() {
        return;
    }
    found.extend(listed_in_connection(headers));
    for name in found {
        headers.remove(name);
    }
}

/// The path without its query string, for logs (queries may carry anything).
fn path_only(path: &str) -> &str {
    let p = path.trim_start_matches('/');
    p.split_once('?').map_or(p, |(p, _)| p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn from_env_requires_a_key_and_reads_the_base_url() {
        let err = ClientBuilder::from_source(env(&[])).unwrap_err();
        assert!(matches!(err, Error::Config(ref m) if m.contains("OPENAI_API_KEY")));
        let err = ClientBuilder::from_source(env(&[("OPENAI_API_KEY", "  ")])).unwrap_err();
        assert!(matches!(err, Error::Config(_)));

        let c = ClientBuilder::from_source(env(&[
            ("OPENAI_API_KEY", "sk-secret-123"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
            ("OPENAI_PROJECT_ID", "proj_1"),
        ]))
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:9/v1");
        assert_eq!(c.url("/responses"), "http://127.0.0.1:9/v1/responses");
        assert_eq!(c.inner.headers["openai-project"], "proj_1");

        let c = ClientBuilder::from_source(env(&[("OPENAI_API_KEY", "k")]))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(c.base_url(), DEFAULT_BASE_URL);
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let b = Client::builder().api_key("sk-secret-123");
        assert!(!format!("{b:?}").contains("sk-secret"));
        let c = b.build().unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("sk-secret"), "{shown}");
        assert!(shown.contains("<redacted>"));
        let call = c.typed_call(Method::GET, "models", None, "application/json");
        assert!(!format!("{:?}", call.headers).contains("sk-secret"));
        let err = Client::builder()
            .api_key("sk-bad\nkey")
            .build()
            .unwrap_err();
        assert!(!err.to_string().contains("sk-bad"));
    }

    #[test]
    fn bad_base_urls_are_rejected() {
        assert!(Client::builder().base_url("not a url").build().is_err());
        assert!(Client::builder().base_url("ftp://x/v1").build().is_err());
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-stainless-lang", HeaderValue::from_static("python"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-stainless-lang"]);

        // Nothing hop-by-hop: nothing changes, duplicates included.
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("content-type", HeaderValue::from_static("application/json"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn relayed_requests_carry_the_callers_headers_but_hop_by_hop_and_credentials() {
        let c = Client::builder()
            .base_url("http://127.0.0.1:9/v1")
            .api_key("sk-upstream")
            .default_header(
                HeaderName::from_static("x-default"),
                HeaderValue::from_static("client"),
            )
            .default_header(
                HeaderName::from_static("x-trace"),
                HeaderValue::from_static("client"),
            )
            .build()
            .unwrap();
        let mut caller = HeaderMap::new();
        for (n, v) in [
            ("authorization", "Bearer tg-prod-secret"),
            ("host", "gateway.example"),
            ("content-length", "12"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("content-type", "application/json"),
            ("x-trace", "caller"),
            ("x-drop", "by the filter"),
            ("x-a", "1"),
            ("x-a", "2"),
        ] {
            caller.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let names = |h: &HeaderMap| {
            let mut n: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
            n.sort();
            n
        };
        let all = c.outgoing(Caller::All(&caller));
        assert_eq!(
            names(&all),
            [
                "authorization",
                "content-type",
                "x-a",
                "x-default",
                "x-drop",
                "x-trace"
            ]
        );
        assert_eq!(all["authorization"], "Bearer sk-upstream");
        assert_eq!(
            all["x-trace"], "caller",
            "the caller's value wins over a default"
        );
        assert_eq!(all["x-default"], "client");
        assert_eq!(all.get_all("x-a").iter().count(), 2);

        fn keep(name: &HeaderName) -> bool {
            name.as_str() != "x-drop"
        }
        let filtered = c.outgoing(Caller::Filtered(&caller, keep));
        let mut expected = all.clone();
        expected.remove("x-drop");
        assert_eq!(filtered, expected);

        // The same headers as editing a copy of the caller's in place (what `raw` did
        // before it built each attempt's headers): strip, fill in, set the key.
        let mut edited = caller.clone();
        strip_hop_by_hop(&mut edited);
        for name in [header::AUTHORIZATION, header::HOST, header::CONTENT_LENGTH] {
            edited.remove(name);
        }
        edited.insert("x-default", HeaderValue::from_static("client"));
        edited.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-upstream"),
        );
        assert_eq!(edited, all);
    }

    #[test]
    fn handles_and_streams_can_cross_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Client>();
        send_sync::<Error>();
        send::<RawResponse>();
        send::<crate::ResponseStream>();
        send::<crate::ChatStream>();
    }

    #[test]
    fn call_overrides_do_not_touch_the_original() {
        let c = Client::new("k").unwrap();
        let short = c.with_timeout(Duration::from_millis(5)).with_max_retries(0);
        assert_eq!(short.max_retries(), 0);
        assert_eq!(c.max_retries(), 2);
        let (start, deadline) = short.deadline();
        assert_eq!(deadline - start, Duration::from_millis(5));
        let (start, deadline) = c.deadline();
        assert_eq!(deadline - start, Duration::from_secs(600));
        assert_eq!(path_only("/models?limit=2"), "models");
    }
}
