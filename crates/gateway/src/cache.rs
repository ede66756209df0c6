//! Stage 5, cache: the exact-match response cache, scoped per project.
//!
//! Whether a call uses it: the `x-tollgate-cache` request header (`on`, `off`,
//! `refresh`; anything else is a 400) over the project's choice (`cache.projects`).
//! Only `POST` Responses, Chat Completions, Embeddings and Moderations calls are cached
//! (not Responses calls with `background: true`, whose answer is a queued job).
//!
//! The key is SHA-256 over the project, the endpoint, whether tollgate strips the
//! usage chunk from a Chat stream, and the body as it goes upstream (the model alias
//! already resolved) in a canonical form: parsed as JSON, object keys sorted at every
//! level, and the members that do not change the answer removed ([`IGNORED`]);
//! `store` counts as its value with the endpoint's default filled in. The
//! stream flag and `stream_options` stay in the key: a streamed answer is stored as
//! the SSE bytes the caller received and replayed as a stream, a plain answer as its
//! JSON. Two projects never share an entry.
//!
//! Only complete successful answers are stored: a 2xx whose body was relayed to the
//! end — for a stream, one that ended with its terminal event (`data: [DONE]`,
//! `response.completed`) and no error event; never one the caller left or the upstream
//! cut — and no larger than `cache.max_entry_bytes`. A plain answer (read whole by
//! dispatch already) is stored as it is handed to the caller; a stream as its last
//! byte goes to the caller. Redis writes are sent without waiting.
//!
//! Storage: this process's memory (bounded by `cache.max_entries` and
//! `cache.max_bytes`, least recently used evicted first), or Redis when `[redis] url`
//! is set, so replicas share answers (`SET key value PX ttl` under the Redis key
//! prefix). A Redis that fails or is down is never the caller's problem: reads and
//! writes then use memory.
//!
//! A hit is answered without the upstream, marked `x-tollgate-cache: hit`; its usage
//! record says `hit` and has no tokens and no cost, so the admit stage's token
//! reservation and the budgets' reservation are released in full (the request itself
//! still counts against requests-per-minute limits).
//!
//! As a fallback source ([`Cache::stale_for_fallback`]): for a project in
//! `cache.fallback_projects`, answers are stored (whether or not the project reads the
//! cache otherwise) and kept `cache.stale_seconds` past their TTL; when the upstream
//! fails (timeout, unreachable, 429 or 5xx after retries), a stored answer for the
//! same request — fresh or stale — is served, marked `x-tollgate-cache: stale`.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use axum::body::{Body, BodyDataStream};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::Stream;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use parking_lot::Mutex;
use redis::Script;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_store::{CacheOutcome, UsageRecord};
use tollgate_wire::sse::SseDecoder;

use crate::account::{self, StreamTap};
use crate::config::CacheConfig;
use crate::dispatch::Reply;
use crate::error::GatewayError;
use crate::keys::Principal;
use crate::preflight::{Endpoint, Preflight};
use crate::redis_link::RedisLink;

/// The request header that chooses, and the response header that tells, what the
/// cache did.
pub const HEADER: &str = "x-tollgate-cache";
pub(crate) const CACHE_HEADER: HeaderName = HeaderName::from_static(HEADER);

/// Body members left out of the key: they label or route the call (end-user ids,
/// metadata and prompt-cache routing) but do not change the answer.
pub const IGNORED: [&str; 4] = ["user", "metadata", "safety_identifier", "prompt_cache_key"];

/// What the caller's `x-tollgate-cache` header asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No header: the project's choice.
    Default,
    /// Read and write, whatever the project chose.
    On,
    /// Neither read nor write (nor serve a stale answer).
    Off,
    /// Skip the lookup, call the upstream, replace the entry.
    Refresh,
}

/// The mode a request asks for; an unknown value is refused.
pub fn mode(headers: &HeaderMap) -> Result<Mode, GatewayError> {
    let Some(v) = headers.get(&CACHE_HEADER) else {
        return Ok(Mode::Default);
    };
    match v.to_str().map(str::trim) {
        Ok(v) if v.eq_ignore_ascii_case("on") => Ok(Mode::On),
        Ok(v) if v.eq_ignore_ascii_case("off") => Ok(Mode::Off),
        Ok(v) if v.eq_ignore_ascii_case("refresh") => Ok(Mode::Refresh),
        _ => Err(GatewayError::InvalidRequest {
            message: format!(
                "The {HEADER} header must be `on`, `off` or `refresh`; leave it out to use \
                 the project's cache setting."
            ),
            param: Some(HEADER.into()),
        }),
    }
}

/// What the cache does for one request (decided in stage 5, used again when the
/// answer has been relayed).
#[derive(Debug, Clone)]
pub struct Plan {
    key: [u8; 32],
    endpoint: Endpoint,
    /// Serve a fresh stored answer.
    read: bool,
    /// Store the upstream's answer.
    write: bool,
    /// Serve a stored answer, fresh or stale, when the upstream fails; keep answers
    /// past their TTL for that.
    fallback: bool,
    /// What the record and the response header say when the upstream answers.
    outcome: Option<CacheOutcome>,
}

impl Plan {
    /// The answer will come from another model than the request named (a fallback
    /// target): it is not the answer to this request, so it is not stored.
    pub fn not_this_request(&mut self) {
        self.write = false;
    }
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    status: u16,
    /// Until when (Unix ms) the answer is served as a hit.
    fresh_until_ms: i64,
    content_type: String,
    body: Bytes,
}

/// Overhead counted per entry besides its body and content type.
const ENTRY_OVERHEAD: usize = 96;

impl Entry {
    fn size(&self) -> usize {
        self.body.len() + self.content_type.len() + ENTRY_OVERHEAD
    }

    fn is_stream(&self) -> bool {
        self.content_type.starts_with("text/event-stream")
    }

    /// `TGC1`, status (u16), fresh-until (i64), content-type length (u16) and bytes,
    /// then the body; integers big-endian.
    fn encode(&self) -> Vec<u8> {
        let ct = self.content_type.as_bytes();
        let ct_len = u16::try_from(ct.len()).unwrap_or(0);
        let ct = &ct[..usize::from(ct_len)];
        let mut out = Vec::with_capacity(16 + ct.len() + self.body.len());
        out.extend_from_slice(b"TGC1");
        out.extend_from_slice(&self.status.to_be_bytes());
        out.extend_from_slice(&self.fresh_until_ms.to_be_bytes());
        out.extend_from_slice(&ct_len.to_be_bytes());
        out.extend_from_slice(ct);
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(b"TGC1")?;
        let status = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
        let fresh_until_ms = i64::from_be_bytes(rest.get(2..10)?.try_into().ok()?);
        let ct_len = usize::from(u16::from_be_bytes(rest.get(10..12)?.try_into().ok()?));
        let content_type = std::str::from_utf8(rest.get(12..12 + ct_len)?).ok()?;
        Some(Self {
            status,
            fresh_until_ms,
            content_type: content_type.to_owned(),
            body: Bytes::copy_from_slice(rest.get(12 + ct_len..)?),
        })
    }
}

/// The memory store: a map and a recency order, evicting least recently used.
#[derive(Debug, Default)]
struct Memory {
    map: HashMap<[u8; 32], Slot>,
    /// Last use (a tick) → key, oldest first.
    order: BTreeMap<u64, [u8; 32]>,
    tick: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    entry: Arc<Entry>,
    /// Until when (Unix ms) it is kept at all (past `fresh_until_ms` for fallbacks).
    keep_until_ms: i64,
    tick: u64,
}

impl Memory {
    /// The entry kept under `key` at `now_ms`, marked as just used.
    fn get(&mut self, key: &[u8; 32], now_ms: i64) -> Option<Arc<Entry>> {
        let slot = self.map.get(key)?;
        if slot.keep_until_ms <= now_ms {
            self.remove(key);
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        let slot = self.map.get_mut(key)?;
        self.order.remove(&slot.tick);
        slot.tick = tick;
        self.order.insert(tick, *key);
        Some(slot.entry.clone())
    }

    /// Stores `entry`, then evicts the least recently used until within bounds;
    /// returns how many were evicted.
    fn insert(&mut self, key: [u8; 32], slot: (Arc<Entry>, i64), bounds: (usize, usize)) -> u64 {
        self.remove(&key);
        self.tick += 1;
        self.bytes += slot.0.size();
        self.order.insert(self.tick, key);
        self.map.insert(
            key,
            Slot {
                entry: slot.0,
                keep_until_ms: slot.1,
                tick: self.tick,
            },
        );
        let (max_entries, max_bytes) = bounds;
        let mut evicted = 0;
        while self.map.len() > max_entries || self.bytes > max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.remove(&oldest);
            evicted += 1;
        }
        evicted
    }

    fn remove(&mut self, key: &[u8; 32]) {
        if let Some(slot) = self.map.remove(key) {
            self.order.remove(&slot.tick);
            self.bytes = self.bytes.saturating_sub(slot.entry.size());
        }
    }
}

static GET: LazyLock<Script> = LazyLock::new(|| Script::new("return redis.call('GET', KEYS[1])"));
static SET: LazyLock<Script> =
    LazyLock::new(|| Script::new("redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1"));

/// The response cache of one server.
#[derive(Debug)]
pub struct Cache {
    config: CacheConfig,
    memory: Mutex<Memory>,
    redis: Option<Arc<RedisLink>>,
    hits: AtomicU64,
    misses: AtomicU64,
    stores: AtomicU64,
    evictions: AtomicU64,
    stale_served: AtomicU64,
}

impl Cache {
    /// A cache in memory, or in Redis through `redis` when given.
    pub fn new(config: CacheConfig, redis: Option<Arc<RedisLink>>) -> Self {
        Self {
            config,
            memory: Mutex::default(),
            redis,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stores: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
        }
    }

    /// What the cache does for this request; `None`: nothing.
    pub fn plan(
        &self,
        principal: &Principal,
        endpoint: Endpoint,
        mode: Mode,
        preflight: &Preflight,
        parts: &http::request::Parts,
    ) -> Option<Plan> {
        let cacheable = matches!(
            endpoint,
            Endpoint::Responses
                | Endpoint::ChatCompletions
                | Endpoint::Embeddings
                | Endpoint::Moderations
        );
        if !cacheable || mode == Mode::Off {
            return None;
        }
        let project = principal.project.as_str();
        let reads = match mode {
            Mode::On => true,
            Mode::Refresh => false,
            _ => self.config.projects.contains(project),
        };
        let fallback = self.config.fallback_projects.contains(project);
        let write = reads || mode == Mode::Refresh || fallback;
        if !write {
            return None;
        }
        let key = key(project, endpoint, preflight, &Varies::of(parts))?;
        let outcome = match mode {
            Mode::Refresh => Some(CacheOutcome::Refresh),
            _ if reads => Some(CacheOutcome::Miss),
            _ => None,
        };
        Some(Plan {
            key,
            endpoint,
            read: reads,
            write,
            fallback,
            outcome,
        })
    }

    /// The stored answer for a request whose plan reads the cache, if one is fresh;
    /// fills in the record either way (`hit` with the served model, or the plan's
    /// outcome).
    pub async fn lookup(&self, preflight: &Preflight, rec: &mut UsageRecord) -> Option<Response> {
        let plan = preflight.cache.as_ref()?;
        rec.cache = plan.outcome;
        if !plan.read {
            return None;
        }
        let now = crate::accept::now_ms();
        let Some(entry) = self
            .get(&plan.key, now)
            .await
            .filter(|e| e.fresh_until_ms > now)
        else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(served(plan, preflight, &entry, CacheOutcome::Hit, rec))
    }

    /// For the fallback path: a stored answer for this request, fresh or up to
    /// `cache.stale_seconds` past its TTL, if the project allows serving one when the
    /// upstream fails (`cache.fallback_projects`) and the caller did not turn the
    /// cache off. Fills in the record (`stale`, no tokens).
    pub async fn stale_for_fallback(
        &self,
        preflight: &Preflight,
        rec: &mut UsageRecord,
    ) -> Option<Response> {
        let plan = preflight.cache.as_ref().filter(|p| p.fallback)?;
        let entry = self.get(&plan.key, crate::accept::now_ms()).await?;
        self.stale_served.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            endpoint = plan.endpoint.label(),
            "the upstream failed; serving a stored answer (cache.fallback_projects)"
        );
        Some(served(plan, preflight, &entry, CacheOutcome::Stale, rec))
    }

    /// The relayed answer, marked with the plan's outcome; when the plan stores it and
    /// it is a success, it is stored: a plain answer (already read whole by dispatch)
    /// at once, a stream captured as it goes to the caller and stored once it has gone
    /// completely.
    pub async fn fill(self: &Arc<Self>, preflight: &Preflight, mut res: Response) -> Response {
        let Some(plan) = preflight.cache.clone() else {
            return res;
        };
        if let Some(outcome) = plan.outcome {
            res.headers_mut()
                .insert(CACHE_HEADER, HeaderValue::from_static(outcome.as_str()));
        }
        if !(plan.write && res.status().is_success()) {
            return res;
        }
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let status = res.status().as_u16();
        let (parts, body) = res.into_parts();
        // A plain answer's body is in memory (its size is known), unless it was too
        // large to hold (see dispatch::ANSWER_INLINE_BYTES): collecting it does not wait.
        if !preflight.stream && hyper::body::Body::size_hint(&body).exact().is_some() {
            let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
                return GatewayError::UpstreamUnreachable { attempts: 1 }.into_response();
            };
            if bytes.len() <= self.config.max_entry_bytes
                && complete(plan.endpoint, &content_type, &bytes)
            {
                self.put(&plan, status, content_type, bytes.clone());
            }
            return Response::from_parts(parts, Body::from(bytes));
        }
        let declared = crate::dispatch::content_length(&parts.headers);
        let capture = Capture {
            inner: body.into_data_stream(),
            buf: Vec::new(),
            limit: self.config.max_entry_bytes,
            declared,
            store: Some((self.clone(), plan, status, content_type)),
        };
        Response::from_parts(parts, Body::from_stream(capture))
    }

    /// Answers served from the cache.
    pub fn hits_total(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that found no fresh answer.
    pub fn misses_total(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Answers stored.
    pub fn stores_total(&self) -> u64 {
        self.stores.load(Ordering::Relaxed)
    }

    /// Answers evicted from memory to stay within its bounds.
    pub fn evictions_total(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Stored answers served because the upstream failed.
    pub fn stale_served_total(&self) -> u64 {
        self.stale_served.load(Ordering::Relaxed)
    }

    /// Answers in this process's memory, and their bytes.
    pub fn memory_usage(&self) -> (u64, u64) {
        let m = self.memory.lock();
        (m.map.len() as u64, m.bytes as u64)
    }

    /// The entry under `key` kept at `now` (fresh or not): from Redis when it is up,
    /// else (or when Redis has none) from memory.
    async fn get(&self, key: &[u8; 32], now: i64) -> Option<Arc<Entry>> {
        if let Some(link) = self.redis.as_ref().filter(|l| l.is_up()) {
            let mut call = GET.prepare_invoke();
            call.key(redis_key(link, key));
            if let Ok(Some(bytes)) = link.call::<Option<Vec<u8>>>(&call).await {
                if let Some(entry) = Entry::decode(&bytes) {
                    return Some(Arc::new(entry));
                }
            }
        }
        self.memory.lock().get(key, now)
    }

    /// Stores a complete answer: in Redis when it is up (sent without waiting), else
    /// in memory.
    fn put(&self, plan: &Plan, status: u16, content_type: String, body: Bytes) {
        let now = crate::accept::now_ms();
        let ttl_ms = millis(self.config.ttl);
        let keep_ms = if plan.fallback {
            ttl_ms.saturating_add(millis(self.config.stale))
        } else {
            ttl_ms
        };
        let entry = Entry {
            status,
            fresh_until_ms: now.saturating_add(ttl_ms),
            content_type,
            body,
        };
        self.stores.fetch_add(1, Ordering::Relaxed);
        if let Some(link) = self.redis.as_ref().filter(|l| l.is_up()) {
            let mut call = SET.prepare_invoke();
            call.key(redis_key(link, &plan.key))
                .arg(entry.encode())
                .arg(keep_ms);
            let owned = link.clone();
            link.spawn(async move {
                if owned.call::<i64>(&call).await.is_err() {
                    owned.update_lost("a response cache entry");
                }
            });
            return;
        }
        let bounds = (self.config.max_entries, self.config.max_bytes);
        let evicted = self.memory.lock().insert(
            plan.key,
            (Arc::new(entry), now.saturating_add(keep_ms)),
            bounds,
        );
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
    }
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `{prefix}cache:{hex key}`.
fn redis_key(link: &RedisLink, key: &[u8; 32]) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{}cache:", link.key_prefix());
    for b in key {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Whether an upstream outcome is a failure a stored answer may stand in for: a
/// timeout, an unreachable upstream, or a 429 or 5xx answer after retries.
pub fn upstream_failed(reply: &Result<Reply, GatewayError>) -> bool {
    match reply {
        Ok(r) => r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error(),
        Err(e) => matches!(
            e,
            GatewayError::UpstreamTimeout { .. } | GatewayError::UpstreamUnreachable { .. }
        ),
    }
}

/// The response for a stored answer, and the record of serving it: no tokens (so no
/// cost, and reservations released in full), the served model and response id of the
/// stored answer.
fn served(
    plan: &Plan,
    preflight: &Preflight,
    entry: &Entry,
    outcome: CacheOutcome,
    rec: &mut UsageRecord,
) -> Response {
    let observed = if entry.is_stream() {
        let mut tap = StreamTap::new(plan.endpoint, false);
        tap.pass(entry.body.clone());
        tap.observed
    } else {
        account::from_json_body(plan.endpoint, &entry.body)
    };
    rec.cache = Some(outcome);
    rec.model_served = observed.model_served;
    rec.response_id = observed.response_id;
    rec.status = entry.status;
    let mut headers = HeaderMap::with_capacity(preflight.headers.len() + 2);
    if let Ok(ct) = HeaderValue::from_str(&entry.content_type) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert(CACHE_HEADER, HeaderValue::from_static(outcome.as_str()));
    for (name, value) in &preflight.headers {
        headers.insert(name.clone(), value.clone());
    }
    let status = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    (status, headers, Body::from(entry.body.clone())).into_response()
}

/// What of the request besides its body goes upstream and may change the answer: the
/// query string (an Azure `api-version`, say) and `OpenAI-Beta` (which API version of
/// a beta feature answers).
#[derive(Debug, Default)]
struct Varies<'a> {
    query: &'a str,
    beta: Vec<&'a [u8]>,
}

impl<'a> Varies<'a> {
    fn of(parts: &'a http::request::Parts) -> Self {
        Self {
            query: parts.uri.query().unwrap_or(""),
            beta: parts
                .headers
                .get_all("openai-beta")
                .iter()
                .map(HeaderValue::as_bytes)
                .collect(),
        }
    }
}

/// The key of a request (see the module docs); `None` when the body is not a JSON
/// object or asks for a background job.
fn key(
    project: &str,
    endpoint: Endpoint,
    preflight: &Preflight,
    varies: &Varies<'_>,
) -> Option<[u8; 32]> {
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&preflight.body) else {
        return None;
    };
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    for name in IGNORED {
        body.remove(name);
    }
    let stored = stored(endpoint, &mut body);
    let mut canonical = Vec::with_capacity(preflight.body.len());
    write_canonical(&Value::Object(body), &mut canonical);
    let mut h = Sha256::new();
    h.update(b"tollgate-cache-v2\0");
    h.update(project.as_bytes());
    h.update(b"\0");
    h.update(endpoint.label().as_bytes());
    h.update(if preflight.strip_stream_usage {
        b"\0strip\0"
    } else {
        b"\0as-is\0"
    });
    h.update(&canonical);
    if let Some(stored) = stored {
        h.update(if stored { b"\0store:1" } else { b"\0store:0" });
    }
    if !varies.query.is_empty() || !varies.beta.is_empty() {
        h.update(b"\0query\0");
        h.update(varies.query.as_bytes());
        for beta in &varies.beta {
            h.update(b"\0beta\0");
            h.update(beta);
        }
    }
    Some(h.finalize().into())
}

/// Whether OpenAI keeps the answer (`store`, with the endpoint's default: `true` for
/// Responses, `false` for Chat), taken out of `body` for the key. A caller that asks
/// for a kept answer must not be given one whose `id` was never kept (retrieval and
/// `previous_response_id` would fail), and a Responses answer echoes the value. `None`
/// for the other endpoints, which have no `store`, and for a value that is not a
/// boolean (left in the body: the upstream refuses it).
fn stored(endpoint: Endpoint, body: &mut serde_json::Map<String, Value>) -> Option<bool> {
    let default = match endpoint {
        Endpoint::Responses => true,
        Endpoint::ChatCompletions => false,
        _ => {
            body.remove("store");
            return None;
        }
    };
    if body
        .get("store")
        .is_some_and(|v| !v.is_null() && !v.is_boolean())
    {
        return None;
    }
    Some(
        body.remove("store")
            .and_then(|v| v.as_bool())
            .unwrap_or(default),
    )
}

/// Compact JSON with every object's keys sorted.
fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar value cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Whether a relayed body is a complete answer worth storing: any 2xx JSON body, or
/// a stream that ended with its terminal event and reported no error.
fn complete(endpoint: Endpoint, content_type: &str, body: &[u8]) -> bool {
    if !content_type.starts_with("text/event-stream") {
        return !body.is_empty();
    }
    let events = SseDecoder::new().push(body);
    let failed = events.iter().any(|e| {
        matches!(
            e.event.as_deref(),
            Some("error" | "response.failed" | "response.incomplete")
        ) || e.data.starts_with("{\"error\"")
    });
    let terminal = match endpoint {
        Endpoint::ChatCompletions => events.last().is_some_and(|e| e.is_done()),
        Endpoint::Responses => events
            .iter()
            .any(|e| e.event.as_deref() == Some("response.completed")),
        _ => false,
    };
    terminal && !failed
}

/// The relayed body of an answer to store: passes every chunk through unchanged and
/// keeps a copy; stores it when the body ends cleanly. A caller that leaves drops it
/// (nothing stored); an upstream cut ends it with an error (nothing stored).
struct Capture {
    inner: BodyDataStream,
    buf: Vec<u8>,
    limit: usize,
    /// The answer's declared length: the caller's side stops asking once it has that
    /// many bytes, so the answer is stored with its last.
    declared: Option<usize>,
    /// `None` once stored, or given up (too large, failed).
    store: Option<(Arc<Cache>, Plan, u16, String)>,
}

impl Stream for Capture {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let next = Pin::new(&mut this.inner).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) if this.store.is_some() => {
                if this.buf.len() + chunk.len() > this.limit {
                    this.store = None;
                    this.buf = Vec::new();
                } else {
                    this.buf.extend_from_slice(chunk);
                    if this.declared == Some(this.buf.len()) {
                        this.store();
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.store = None,
            Poll::Ready(None) => this.store(),
            _ => {}
        }
        next
    }
}

impl Capture {
    /// Stores what passed, if it is a complete answer.
    fn store(&mut self) {
        if let Some((cache, plan, status, content_type)) = self.store.take() {
            let body = std::mem::take(&mut self.buf);
            if complete(plan.endpoint, &content_type, &body) {
                cache.put(&plan, status, content_type, Bytes::from(body));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(body: &str) -> Preflight {
        Preflight {
            body: Bytes::from(body.to_owned()),
            ..Preflight::default()
        }
    }

    #[test]
    fn the_key_ignores_key_order_whitespace_and_labels_but_not_the_output_parameters() {
        let k = |p: &str, e: Endpoint, b: &str| key(p, e, &pre(b), &Varies::default()).unwrap();
        let base = k(
            "shop",
            Endpoint::Responses,
            r#"{"model":"gpt-4o","input":"hi","temperature":0}"#,
        );
        assert_eq!(
            base,
            k(
                "shop",
                Endpoint::Responses,
                r#"{ "temperature":0, "input":"hi","model":"gpt-4o",
                   "user":"u1","metadata":{"a":"b"},"store":true,"safety_identifier":"s",
                   "prompt_cache_key":"k"}"#
            )
        );
        // `store` counts as its value with the endpoint's default filled in: true for
        // Responses, false for Chat; the other endpoints have none.
        let chat = |b: &str| k("shop", Endpoint::ChatCompletions, b);
        let chat_base = chat(r#"{"model":"gpt-4o","messages":[]}"#);
        assert_eq!(
            chat_base,
            chat(r#"{"model":"gpt-4o","messages":[],"store":false}"#)
        );
        assert_eq!(
            chat_base,
            chat(r#"{"model":"gpt-4o","messages":[],"store":null}"#)
        );
        assert_ne!(
            chat_base,
            chat(r#"{"model":"gpt-4o","messages":[],"store":true}"#)
        );
        let resp = |b: &str| k("shop", Endpoint::Responses, b);
        assert_ne!(
            base,
            resp(r#"{"model":"gpt-4o","input":"hi","temperature":0,"store":false}"#)
        );
        assert_ne!(
            base,
            resp(r#"{"model":"gpt-4o","input":"hi","temperature":0,"store":"yes"}"#)
        );
        let embed = |b: &str| k("shop", Endpoint::Embeddings, b);
        assert_eq!(
            embed(r#"{"model":"m","input":"hi"}"#),
            embed(r#"{"model":"m","input":"hi","store":true}"#)
        );
        for other in [
            k(
                "blog",
                Endpoint::Responses,
                r#"{"model":"gpt-4o","input":"hi","temperature":0}"#,
            ),
            k(
                "shop",
                Endpoint::ChatCompletions,
                r#"{"model":"gpt-4o","input":"hi","temperature":0}"#,
            ),
            k(
                "shop",
                Endpoint::Responses,
                r#"{"model":"gpt-4o","input":"hi","temperature":1}"#,
            ),
            k(
                "shop",
                Endpoint::Responses,
                r#"{"model":"gpt-4o","input":"hi","temperature":0,"stream":true}"#,
            ),
            k(
                "shop",
                Endpoint::Responses,
                r#"{"model":"gpt-4o-mini","input":"hi","temperature":0}"#,
            ),
        ] {
            assert_ne!(base, other);
        }
        // Nested keys are sorted too.
        assert_eq!(
            k(
                "p",
                Endpoint::Responses,
                r#"{"text":{"a":1,"b":[{"y":1,"x":2}]}}"#
            ),
            k(
                "p",
                Endpoint::Responses,
                r#"{"text":{"b":[{"x":2,"y":1}],"a":1}}"#
            )
        );
        // Stripped and unstripped chat streams differ (the caller saw different bytes).
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let strip = Preflight {
            strip_stream_usage: true,
            ..pre(body)
        };
        assert_ne!(
            key("p", Endpoint::ChatCompletions, &strip, &Varies::default()),
            key(
                "p",
                Endpoint::ChatCompletions,
                &pre(body),
                &Varies::default()
            )
        );
        let none = Varies::default();
        assert!(key(
            "p",
            Endpoint::Responses,
            &pre(r#"{"background":true}"#),
            &none
        )
        .is_none());
        assert!(key("p", Endpoint::Responses, &pre("[1]"), &none).is_none());
        // The query string and OpenAI-Beta go upstream too: they are in the key.
        let body = pre(r#"{"model":"m","input":"hi"}"#);
        let plain = key("p", Endpoint::Responses, &body, &none);
        let query = Varies {
            query: "api-version=2025-04-01",
            beta: Vec::new(),
        };
        let beta = Varies {
            query: "",
            beta: vec![b"assistants=v2".as_slice()],
        };
        let keyed = [
            plain,
            key("p", Endpoint::Responses, &body, &query),
            key("p", Endpoint::Responses, &body, &beta),
        ];
        assert!(keyed[0] != keyed[1] && keyed[0] != keyed[2] && keyed[1] != keyed[2]);
    }

    #[test]
    fn the_header_takes_on_off_refresh_and_refuses_anything_else() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(CACHE_HEADER, HeaderValue::from_str(v).unwrap());
            mode(&m)
        };
        assert_eq!(mode(&HeaderMap::new()).unwrap(), Mode::Default);
        assert_eq!(h("on").unwrap(), Mode::On);
        assert_eq!(h(" OFF ").unwrap(), Mode::Off);
        assert_eq!(h("refresh").unwrap(), Mode::Refresh);
        let e = h("yes").unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.param(), Some(HEADER));
        assert!(
            e.message().contains("`on`, `off` or `refresh`"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn memory_evicts_the_least_recently_used_within_entries_and_bytes() {
        let entry = |n: usize| {
            Arc::new(Entry {
                status: 200,
                fresh_until_ms: 100,
                content_type: "application/json".into(),
                body: Bytes::from(vec![b'x'; n]),
            })
        };
        let mut m = Memory::default();
        let size = entry(100).size();
        let bounds = (3, 10 * size);
        for i in 0..3u8 {
            assert_eq!(m.insert([i; 32], (entry(100), 1_000), bounds), 0);
        }
        // Using 0 makes 1 the oldest.
        assert!(m.get(&[0; 32], 10).is_some());
        assert_eq!(m.insert([3; 32], (entry(100), 1_000), bounds), 1);
        assert!(m.get(&[1; 32], 10).is_none());
        assert!(m.get(&[0; 32], 10).is_some());
        // A big one pushes out by bytes.
        assert_eq!(m.insert([9; 32], (entry(8 * size), 1_000), bounds), 2);
        assert_eq!(m.map.len(), 2);
        assert!(m.bytes <= bounds.1);
        // Past its keep time an entry is gone.
        assert!(m.get(&[9; 32], 1_000).is_none());
        assert_eq!(m.map.len(), 1);
    }

    #[test]
    fn entries_round_trip_their_encoding_and_streams_must_be_complete() {
        let e = Entry {
            status: 200,
            fresh_until_ms: 1_700_000_000_123,
            content_type: "text/event-stream; charset=utf-8".into(),
            body: Bytes::from_static(b"data: {}\n\ndata: [DONE]\n\n"),
        };
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        assert_eq!(Entry::decode(b"TGC0"), None);
        let sse = "text/event-stream";
        assert!(complete(Endpoint::ChatCompletions, sse, &e.body));
        assert!(!complete(Endpoint::ChatCompletions, sse, b"data: {}\n\n"));
        assert!(!complete(
            Endpoint::ChatCompletions,
            sse,
            b"data: {\"error\":{}}\n\ndata: [DONE]\n\n"
        ));
        let done = b"event: response.completed\ndata: {}\n\n";
        assert!(complete(Endpoint::Responses, sse, done));
        assert!(!complete(
            Endpoint::Responses,
            sse,
            b"event: response.created\ndata: {}\n\n"
        ));
        assert!(complete(Endpoint::Embeddings, "application/json", b"{}"));
    }
}
