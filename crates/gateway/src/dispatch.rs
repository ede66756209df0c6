//! Stage 7, dispatch: send the request upstream and relay the answer.
//!
//! The caller's headers go upstream except its credentials and the few that describe
//! the caller's own connection or organisation; the provider key is substituted by
//! the client. Retries happen inside the client, before the first byte reaches the
//! caller. Upstream answers — error statuses included — are relayed with the
//! upstream's status and body, tollgate's `x-request-id`, the upstream's id as
//! `x-upstream-request-id`, and its `x-ratelimit-*` headers.
//!
//! Streams are relayed chunk by chunk as they arrive (nothing is buffered), through
//! the account stage's tap; dropping the relayed body (the caller went away) drops
//! the upstream body, which cancels the upstream request. A plain answer is read
//! whole and then relayed, unless it is larger than [`ANSWER_INLINE_BYTES`]: then it
//! too is relayed as it arrives, and a caller that leaves it does not cancel it (it
//! was generated already); its rest is read for the usage it ends with.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::Stream;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use tollgate_client::{ByteStream, Client, Collected, Error as ClientError, RawResponse};
use tollgate_wire::ratelimit::RateLimitInfo;

use crate::account::{self, StreamTap};
use crate::error::GatewayError;
use crate::keys::Principal;
use crate::preflight::{Endpoint, Preflight};
use crate::record::RecordGuard;
use crate::upstream::Upstream;

/// The upstream's answer, ready to relay.
pub type Reply = RawResponse;

// Header names are `HeaderName`s, not strings: a string is parsed into a name on
// every lookup, and these run on every request.

/// Whether a caller's request header goes upstream. Not: the caller's credentials
/// (the provider key replaces them), the caller's OpenAI organisation/project (the
/// provider key's own apply), cookies, `accept-encoding` (tollgate reads the answer),
/// tollgate's own `x-tollgate-*` control headers, and `content-type` without a body.
/// A match on the name: the caller's headers are walked once, nothing is removed
/// name by name.
fn forwarded(name: &HeaderName, has_body: bool) -> bool {
    match name.as_str() {
        "authorization"
        | "cookie"
        | "openai-organization"
        | "openai-project"
        | "x-api-key"
        | "accept-encoding" => false,
        "content-type" => has_body,
        other => !other.starts_with("x-tollgate-"),
    }
}

/// [`forwarded`] for a request with a body.
fn forwarded_with_body(name: &HeaderName) -> bool {
    forwarded(name, true)
}

/// [`forwarded`] for a request without one.
fn forwarded_without_body(name: &HeaderName) -> bool {
    forwarded(name, false)
}

/// Response headers relayed from the upstream (`x-request-id` is relayed as
/// `x-upstream-request-id`). A match on the name: the answer's headers are walked once
/// rather than looked up name by name (13 hashed lookups cost about 2,900
/// instructions per answer).
fn relayed(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-type"
            | "openai-processing-ms"
            | "openai-version"
            | "x-ratelimit-limit-requests"
            | "x-ratelimit-limit-tokens"
            | "x-ratelimit-remaining-requests"
            | "x-ratelimit-remaining-tokens"
            | "x-ratelimit-reset-requests"
            | "x-ratelimit-reset-tokens"
            | "retry-after"
            | "retry-after-ms"
            | "x-should-retry"
            | "www-authenticate"
    )
}

/// Sends the request upstream (with retries) and returns its answer.
pub async fn run(
    upstream: &Upstream,
    principal: &Principal,
    parts: &Parts,
    preflight: &Preflight,
) -> Result<Reply, GatewayError> {
    let client = primary_client(upstream, principal)?;
    send(&client, parts, preflight).await
}

/// The client of the primary upstream for this caller: its project/environment
/// credential if one was chosen, else the global one.
pub fn primary_client(upstream: &Upstream, principal: &Principal) -> Result<Client, GatewayError> {
    // The caller's project/environment credential, resolved when the key cache
    // loaded; an unreadable one refuses the call before anything goes upstream.
    upstream.client_for(principal).inspect_err(|_| {
        tracing::warn!(
            project = %principal.project,
            env = %principal.env,
            reference = principal
                .upstream_ref
                .as_deref()
                .map_or_else(|| "-".to_owned(), crate::secret::describe),
            "provider credential unavailable for this call"
        );
    })
}

/// Sends the request through `client` (with its retries) and returns the answer.
pub async fn send(
    client: &Client,
    parts: &Parts,
    preflight: &Preflight,
) -> Result<Reply, GatewayError> {
    // The client builds each attempt's headers from the caller's, keeping those
    // forwarded: no filtered copy is made first and cloned per attempt.
    let keep = if preflight.body.is_empty() {
        forwarded_without_body
    } else {
        forwarded_with_body
    };
    let with_query;
    let path = match (&preflight.upstream_path, parts.uri.query()) {
        (Some(p), Some(q)) => {
            with_query = format!("{p}?{q}");
            with_query.as_str()
        }
        (Some(p), None) => p.as_str(),
        (None, _) => parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str()),
    };
    // The upstream base URL already ends in /v1.
    let path = path.strip_prefix("/v1").unwrap_or(path);
    client
        .forward(
            parts.method.clone(),
            path,
            &parts.headers,
            keep,
            preflight.body.clone(),
        )
        .await
        .map_err(|e| match e {
            ClientError::Timeout { attempts, .. } => GatewayError::UpstreamTimeout { attempts },
            ClientError::Connection { attempts, .. } => {
                GatewayError::UpstreamUnreachable { attempts }
            }
            other => {
                tracing::warn!(error = %other, "upstream call failed");
                GatewayError::UpstreamUnreachable { attempts: 1 }
            }
        })
}

/// A plain answer up to this size is read whole before it is relayed (accounted, then
/// written in one piece); a larger one is relayed as it arrives, watched by the
/// account stage's [`account::JsonTap`], so that answers of many megabytes (the
/// embeddings of many inputs) are never held whole.
pub const ANSWER_INLINE_BYTES: usize = 256 * 1024;

/// Relays the answer to the caller, accounting usage and finishing the record.
pub async fn relay(
    endpoint: Endpoint,
    preflight: &Preflight,
    mut reply: Reply,
    mut guard: RecordGuard,
    own_limits: &RateLimitInfo,
) -> Response {
    let status = reply.status();
    let rec = guard.record();
    rec.status = status.as_u16();
    rec.upstream_request_id = reply.meta.request_id.take();
    rec.attempts = reply.attempts();
    // The answer's declared length (not relayed: the caller's is set anew).
    let declared = content_length(&reply.meta.headers);
    // A stream was asked for, but a JSON answer is read as one: an upstream that does
    // not stream this endpoint (`"stream": true` on embeddings) ignores the member.
    let json = preflight.stream && is_json(&reply.meta.headers);
    let mut headers = relay_headers(std::mem::take(&mut reply.meta.headers), own_limits);
    for (name, value) in &preflight.headers {
        headers.insert(name.clone(), value.clone());
    }
    let streaming = status.is_success() && preflight.stream && !json;
    if status.is_success() && json {
        guard.record().streamed = false;
    }
    if streaming {
        let tap = Tap::Events(Box::new(StreamTap::new(
            endpoint,
            preflight.strip_stream_usage,
        )));
        let relay = Relay::new(reply.body, tap, guard);
        return answer(status, headers, Body::from_stream(relay));
    }
    guard.mark_first_byte();
    // A models list is filtered whole (it is small); any other answer over
    // ANSWER_INLINE_BYTES is relayed as it arrives.
    let limit = match preflight.list_filter {
        Some(_) => usize::MAX,
        None => ANSWER_INLINE_BYTES,
    };
    let bytes = match reply.body.collect_within(limit, declared).await {
        Ok(Collected::Whole(b)) => b,
        // A refused credential's answer is never relayed, however long (it may quote
        // the provider key): what came of it is enough for its error code.
        Ok(Collected::Over { head, .. }) if status == http::StatusCode::UNAUTHORIZED => {
            return credential_rejected(guard, &head, &headers).await;
        }
        Ok(Collected::Over { head, rest }) => {
            if let Some(n) = declared {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            let tap = Tap::Json(account::JsonTap::default(), endpoint, status);
            let relay = Relay::new(rest, tap, guard).after(head, declared);
            return answer(status, headers, Body::from_stream(relay));
        }
        Err(e) => {
            let rec = guard.record();
            rec.error_code = Some("upstream_body_failed".into());
            rec.status = 502;
            guard.finish().await;
            tracing::warn!(error = %e, "reading the upstream body failed");
            return GatewayError::UpstreamUnreachable { attempts: 1 }.into_response();
        }
    };
    if status == http::StatusCode::UNAUTHORIZED {
        return credential_rejected(guard, &bytes, &headers).await;
    }
    // A caller with access lists sees only the models it may use.
    let bytes = match &preflight.list_filter {
        Some(filter) if status.is_success() => {
            filter.filter_list(&bytes).map_or(bytes, Bytes::from)
        }
        _ => bytes,
    };
    account::from_json_body(endpoint, &bytes).apply(guard.record());
    if !status.is_success() {
        guard.record().error_code = account::error_code(&bytes);
    }
    guard.finish().await;
    answer(status, headers, Body::from(bytes))
}

/// The caller's answer when the upstream refused the provider credential (a 401: the
/// caller's own key was accepted before the call went out). The upstream's message is
/// not relayed: it quotes part of the provider key, and would have the SDK blame the
/// caller's key. The log gets the upstream's error code and request id.
async fn credential_rejected(
    mut guard: RecordGuard,
    upstream_body: &[u8],
    relayed: &HeaderMap,
) -> Response {
    let upstream_code = account::error_code(upstream_body);
    let rec = guard.record();
    let (project, env) = (
        rec.project.clone().unwrap_or_default(),
        rec.env.clone().unwrap_or_default(),
    );
    tracing::warn!(
        project = %project,
        env = %env,
        upstream_code = upstream_code.as_deref().unwrap_or("-"),
        upstream_request_id = rec.upstream_request_id.as_deref().unwrap_or("-"),
        "the upstream rejected the provider credential (401): fix upstream.api_key or the \
         project's credential"
    );
    let e = GatewayError::CredentialRejected { project, env };
    rec.status = e.status().as_u16();
    rec.error_code = e.code().map(str::to_owned);
    guard.finish().await;
    let mut res = e.into_response();
    if let Some(id) = relayed.get("x-upstream-request-id") {
        res.headers_mut()
            .insert("x-upstream-request-id", id.clone());
    }
    res
}

/// Whether an answer declares a JSON body (`application/json`, any parameters).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The `Content-Length` an answer declares.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get(header::CONTENT_LENGTH)?;
    value.to_str().ok()?.parse().ok()
}

/// The caller's response: the upstream's status, the relayed headers moved in as they
/// are (not re-inserted one by one into a new map) and the body.
fn answer(status: http::StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

/// The headers of the answer relayed to the caller, but for the `x-ratelimit-*` ones
/// `own_limits` (tollgate's rules) will set. The upstream's map is taken apart, so
/// names and values move over instead of being cloned (a parsed custom name's first
/// clone allocates).
fn relay_headers(upstream: HeaderMap, own_limits: &RateLimitInfo) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(16);
    let mut upstream_id = false;
    // Whether the last name seen was relayed: a name's further values come unnamed.
    let mut relaying = false;
    for (name, value) in upstream {
        match name {
            Some(name) => {
                relaying = relayed(&name) && !own_limits.has_header(name.as_str());
                if relaying {
                    out.append(name, value);
                } else if !upstream_id && name.as_str() == "x-request-id" {
                    upstream_id = true;
                    out.insert(HeaderName::from_static("x-upstream-request-id"), value);
                }
            }
            // The last name appended is this value's own.
            None if relaying => {
                if let Some(name) = out.keys().last().cloned() {
                    out.append(name, value);
                }
            }
            None => {}
        }
    }
    if !out.contains_key(header::CONTENT_TYPE) {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    out
}

/// What watches a relayed answer: a stream's events (boxed: the stream tap is several
/// times the JSON one's size, and a stream lives long enough for one allocation), or
/// a large plain answer's JSON.
enum Tap {
    Events(Box<StreamTap>),
    Json(account::JsonTap, Endpoint, http::StatusCode),
}

impl Tap {
    /// Watches a chunk; returns the bytes to forward (see [`StreamTap::pass`]).
    fn pass(&mut self, chunk: Bytes) -> Bytes {
        match self {
            Self::Events(tap) => tap.pass(chunk),
            Self::Json(tap, ..) => {
                tap.pass(&chunk);
                chunk
            }
        }
    }

    /// Whether a stream's event outgrew [`account::MAX_EVENT_BYTES`].
    fn overflowed(&self) -> bool {
        match self {
            Self::Events(tap) => tap.overflowed(),
            Self::Json(..) => false,
        }
    }

    /// Copies what was observed into the record.
    fn apply(&self, rec: &mut tollgate_store::UsageRecord) {
        match self {
            Self::Events(tap) => tap.observed.apply(rec),
            Self::Json(tap, endpoint, status) => {
                tap.observed(*endpoint).apply(rec);
                if !status.is_success() {
                    rec.error_code = tap.error_code();
                }
            }
        }
    }
}

/// A relayed body: upstream chunks through the tap, then the record.
struct Relay {
    /// `None` once it has ended.
    upstream: Option<ByteStream>,
    /// What was read of the answer before it was relayed (a large plain answer's).
    head: Option<Bytes>,
    /// The bytes still to come of an answer of declared length: the caller's side
    /// stops asking once it has them all, so the answer is finished with the last.
    remaining: Option<usize>,
    tap: Tap,
    /// `Some` until the answer ends; dropping it early records a disconnect.
    guard: Option<RecordGuard>,
}

impl Relay {
    fn new(upstream: ByteStream, tap: Tap, guard: RecordGuard) -> Self {
        Self {
            upstream: Some(upstream),
            head: None,
            remaining: None,
            tap,
            guard: Some(guard),
        }
    }

    /// Relays `head` (read already) first; `declared` is the whole answer's length.
    fn after(mut self, head: Bytes, declared: Option<usize>) -> Self {
        self.remaining = declared;
        self.head = Some(head).filter(|h| !h.is_empty());
        self
    }

    /// A chunk of the answer through the tap; the answer finished if it was the last.
    fn pass(&mut self, chunk: Bytes) -> Bytes {
        if let Some(g) = self.guard.as_mut() {
            g.mark_first_byte();
        }
        if let Some(left) = self.remaining.as_mut() {
            *left = left.saturating_sub(chunk.len());
        }
        let out = self.tap.pass(chunk);
        if self.remaining == Some(0) {
            self.finish(None);
        }
        out
    }

    fn finish(&mut self, error: Option<&str>) {
        self.upstream = None;
        if let Some(mut guard) = self.guard.take() {
            self.tap.apply(guard.record());
            if let Some(code) = error {
                guard.record().error_code = Some(code.to_owned());
            }
            guard.finish_now();
        }
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(this.pass(head))));
        }
        loop {
            let Some(upstream) = this.upstream.as_mut() else {
                return Poll::Ready(None);
            };
            return match Pin::new(upstream).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = this.pass(chunk);
                    if this.tap.overflowed() {
                        this.finish(Some("upstream_event_too_large"));
                        tracing::warn!(
                            limit = account::MAX_EVENT_BYTES,
                            "an upstream stream event outgrew its limit; the stream is cut"
                        );
                        return Poll::Ready(Some(Err(ClientError::Stream {
                            message: format!(
                                "an event of the upstream stream outgrew {} MiB",
                                account::MAX_EVENT_BYTES >> 20
                            ),
                            error: None,
                            request_id: None,
                            source: None,
                        })));
                    }
                    // A chunk that completed no event (when re-framing) yields nothing.
                    if out.is_empty() {
                        continue;
                    }
                    Poll::Ready(Some(Ok(out)))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finish(Some("upstream_stream_failed"));
                    // Cut the caller's connection too, so it sees a broken answer
                    // rather than a clean end without its last part.
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    // A stream that closed before its last event is recorded as cut
                    // short (the caller sees the same clean end the upstream gave).
                    let cut = matches!(&this.tap, Tap::Events(tap) if !tap.ended());
                    this.finish(cut.then_some("upstream_stream_incomplete"));
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // A stream whose last event the caller had (`[DONE]`, `response.completed`)
        // was answered in full, even if the caller closed before the upstream did.
        if matches!(&self.tap, Tap::Events(tap) if tap.ended()) {
            self.finish(None);
            return;
        }
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        // The caller went away mid-answer.
        if let (Tap::Json(tap, endpoint, status), Some(upstream)) =
            (&mut self.tap, self.upstream.take())
        {
            // A plain answer was generated, and paid for, in full: read the rest of it
            // (within the call's deadline) for its usage, which comes last.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let tap = Tap::Json(std::mem::take(tap), *endpoint, *status);
                runtime.spawn(drain(upstream, tap, guard));
                return;
            }
        }
        // Keep what was observed; the guard's own Drop marks the disconnect.
        self.tap.apply(guard.record());
    }
}

/// Reads the rest of an answer its caller left, through the tap, then records the
/// call (as a client disconnect, by the guard's Drop).
async fn drain(mut upstream: ByteStream, mut tap: Tap, mut guard: RecordGuard) {
    use futures_util::StreamExt;
    while let Some(chunk) = upstream.next().await {
        match chunk {
            Ok(chunk) => {
                tap.pass(chunk);
            }
            Err(_) => break,
        }
    }
    tap.apply(guard.record());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_the_callers_headers_but_credentials_and_control_headers() {
        let mut caller = HeaderMap::new();
        for (n, v) in [
            ("authorization", "Bearer tg-prod-secret"),
            ("content-type", "application/json"),
            ("x-stainless-lang", "python"),
            ("cookie", "a=b"),
            ("openai-organization", "org-caller"),
            ("openai-project", "proj-caller"),
            ("x-api-key", "secret"),
            ("accept-encoding", "gzip"),
            ("x-tollgate-priority", "batch"),
            ("x-tollgate-cache", "bypass"),
            ("accept", "application/json"),
            ("x-stainless-retry-count", "0"),
            ("x-stainless-retry-count", "1"),
        ] {
            caller.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let filtered = |keep: fn(&HeaderName) -> bool| {
            let mut out = HeaderMap::new();
            for (name, value) in &caller {
                if keep(name) {
                    out.append(name.clone(), value.clone());
                }
            }
            out
        };
        let out = filtered(forwarded_with_body);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "x-stainless-lang",
                "accept",
                "x-stainless-retry-count"
            ]
        );
        assert_eq!(out.get_all("x-stainless-retry-count").iter().count(), 2);
        // Without a body there is no content type to send.
        let bare = filtered(forwarded_without_body);
        assert!(!bare.contains_key(header::CONTENT_TYPE));
        assert_eq!(bare.len(), out.len() - 1);
    }

    #[test]
    fn relays_the_openai_headers_and_the_upstream_id_only() {
        let mut up = HeaderMap::new();
        for (n, v) in [
            ("content-type", "application/json; charset=utf-8"),
            ("openai-version", "2020-10-01"),
            ("openai-processing-ms", "81"),
            ("x-ratelimit-remaining-requests", "29999"),
            ("x-ratelimit-reset-tokens", "0s"),
            ("x-request-id", "req_up_1"),
            ("set-cookie", "__cf_bm=secret"),
            ("server", "cloudflare"),
            ("openai-organization", "org-secret"),
            ("www-authenticate", "Bearer"),
            ("www-authenticate", "Basic"),
        ] {
            up.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let none = RateLimitInfo::default();
        let out = relay_headers(up.clone(), &none);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "openai-version",
                "openai-processing-ms",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-tokens",
                "x-upstream-request-id",
                "www-authenticate",
            ]
        );
        assert_eq!(out["x-upstream-request-id"], "req_up_1");
        assert_eq!(out["content-type"], "application/json; charset=utf-8");
        assert_eq!(out.get_all("www-authenticate").iter().count(), 2);
        assert!(!out.contains_key("x-request-id"));

        // The upstream's x-ratelimit-* that tollgate's own rules set stay behind.
        let own = RateLimitInfo {
            remaining_requests: Some(7),
            ..RateLimitInfo::default()
        };
        let kept = relay_headers(up, &own);
        assert!(!kept.contains_key("x-ratelimit-remaining-requests"));
        assert_eq!(kept["x-ratelimit-reset-tokens"], "0s");
        assert_eq!(kept.len(), out.len() - 1);

        let bare = relay_headers(HeaderMap::new(), &none);
        assert_eq!(bare.len(), 1);
        assert_eq!(bare["content-type"], "application/json");
    }
}
