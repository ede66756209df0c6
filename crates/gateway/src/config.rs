//! Configuration in two steps: [`RawConfig`] is what `tollgate.toml` says (serde,
//! unknown fields refused), [`Config`] is the checked result with every default
//! filled in. `Config::try_from(raw)` reports every problem at once, each with its
//! dotted path; parse errors carry the path too. Environment variables and flags are
//! applied by the CLI onto the raw config before validation, so the precedence is
//! flags > `TOLLGATE_*` variables > file > defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::anomaly::AnomalyConfig;
use crate::budgets::BudgetsConfig;
use crate::catalog::{self, Catalog, RawModel};
use crate::fallback_config::{
    RawBreaker, RawNamedUpstream, RawOffline, RawResilience, RawTarget, ResilienceConfig,
};
use crate::secret::SecretRef;

/// The `database_url` schemes the store opens: SQLite, or a PostgreSQL database that
/// several servers may share.
const DATABASE_SCHEMES: &[&str] = &["sqlite:", "postgres://", "postgresql://"];

/// `server.max_connections` when unset: a few hundred megabytes of connection buffers
/// at most, and far below the open-file limit `tollgate serve` raises itself to.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;

/// `tollgate.toml` as written. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on (default `127.0.0.1:8080`).
    pub listen: Option<String>,
    /// Directory of the embedded SQLite store (default `./tollgate-data`).
    pub data_dir: Option<String>,
    /// A database URL; overrides `data_dir` (`sqlite://PATH` or
    /// `postgres://USER@HOST:PORT/DB`).
    pub database_url: Option<String>,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub usage: RawUsage,
    #[serde(default)]
    pub keys: RawKeys,
    #[serde(default)]
    pub anomaly: RawAnomaly,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub budgets: RawBudgets,
    #[serde(default)]
    pub lanes: RawLanes,
    #[serde(default)]
    pub redis: RawRedis,
    /// `[[models]]`: catalog entries that replace or add to the built-in ones.
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// `[aliases]`: `alias = "model id"`, over the built-in `default`, `fast`, `smart`
    /// and `reasoning`.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub preflight: RawPreflight,
    /// `[[upstreams]]`: upstreams besides `[upstream]` that fallback chains may name.
    #[serde(default)]
    pub upstreams: Vec<RawNamedUpstream>,
    /// `[fallbacks]`: `model-or-alias = [{ model = "…", upstream = "…" }, …]`.
    #[serde(default)]
    pub fallbacks: BTreeMap<String, Vec<RawTarget>>,
    #[serde(default)]
    pub circuit_breaker: RawBreaker,
    #[serde(default)]
    pub offline: RawOffline,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub answers: crate::answers::RawAnswers,
}

/// `[cache]`: the response cache (see `cache`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// How long a stored answer is served (default 300 s).
    pub ttl_seconds: Option<u64>,
    /// Most answers kept in this process's memory (default 10 000).
    pub max_entries: Option<u64>,
    /// Most bytes of answers kept in this process's memory (default 64 MiB).
    pub max_bytes: Option<u64>,
    /// Largest answer stored (default 1 MiB); a larger one is relayed, not stored.
    pub max_entry_bytes: Option<u64>,
    /// Projects whose calls use the cache without asking (`x-tollgate-cache: on` turns
    /// it on for one call of any project).
    pub projects: Option<Vec<String>>,
    /// Projects served a stored answer when the upstream fails (and whose answers are
    /// stored for that, whether or not they read the cache otherwise).
    pub fallback_projects: Option<Vec<String>>,
    /// How long after its TTL a stored answer may still serve as a fallback (default
    /// 86 400 s).
    pub stale_seconds: Option<u64>,
}

/// `[preflight]`: checks made before a request costs anything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPreflight {
    /// What to do with `response_format` sent to `/v1/responses`: `translate` (move it
    /// to `text.format`, with an `x-tollgate-warning` header; the default) or `reject`.
    pub response_format_on_responses: Option<ResponseFormatMode>,
    /// Refuse requests whose input plus requested output exceed the model's context
    /// window (default true).
    pub context_window: Option<bool>,
    /// Check structured-output and function-parameter schemas (default true).
    pub schemas: Option<bool>,
}

/// See [`RawPreflight::response_format_on_responses`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormatMode {
    #[default]
    Translate,
    Reject,
}

/// The checked `[preflight]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreflightConfig {
    pub response_format_on_responses: ResponseFormatMode,
    pub context_window: bool,
    pub schemas: bool,
}

impl Default for PreflightConfig {
    fn default() -> Self {
        Self {
            response_format_on_responses: ResponseFormatMode::Translate,
            context_window: true,
            schemas: true,
        }
    }
}

/// `[upstream]`: the OpenAI-compatible API tollgate forwards to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Its name in fallback chains, `x-tollgate-served-by` and metrics (default
    /// `primary`).
    pub name: Option<String>,
    /// Base URL including `/v1` (default `https://api.openai.com/v1`).
    pub url: Option<String>,
    /// Secret reference of the provider key (default `env:OPENAI_API_KEY`).
    pub api_key: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    /// Deadline for one proxied call, all attempts included.
    pub timeout_ms: Option<u64>,
    pub max_retries: Option<u32>,
    pub retry_base_ms: Option<u64>,
    /// PEM file of CA certificates trusted for an HTTPS upstream beside the web PKI
    /// roots (an upstream behind a private CA). Unset: the web PKI roots only.
    pub ca_file: Option<PathBuf>,
    /// When the upstream's remaining requests or tokens (its `x-ratelimit-*`
    /// headers, per credential and model) fall below this fraction of its limit,
    /// batch requests wait for its reset before going upstream (default 0.1; 0 turns
    /// adaptive throttling off).
    pub adaptive_threshold: Option<f64>,
}

/// `[server]`: HTTP limits and shutdown.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Largest request body accepted (default 8 MiB).
    pub max_body_bytes: Option<u64>,
    /// Most bytes of request bodies over 8 KiB held at once, across all connections
    /// (default 128 MiB); a body that does not fit waits for room within the body
    /// timeout, then gets a 503.
    pub max_body_bytes_in_flight: Option<u64>,
    /// Most client connections open at once (default 10,000); at the cap, the oldest
    /// are asked to close (each once its call in flight is answered) and new ones wait
    /// until they do.
    pub max_connections: Option<u64>,
    /// Time allowed for a client to send request headers, also the keep-alive idle
    /// limit between requests (default 30 s).
    pub header_timeout_ms: Option<u64>,
    /// Time allowed to receive the request body (default 60 s).
    pub body_timeout_ms: Option<u64>,
    /// How long in-flight requests and streams may run after a shutdown signal.
    pub shutdown_grace_ms: Option<u64>,
}

/// `[usage]`: the usage-record queue and batch writer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    pub queue_capacity: Option<usize>,
    pub batch_size: Option<usize>,
}

/// `[keys]`: the in-memory key cache.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// How often the server checks the store's key change counter (default 250 ms).
    pub refresh_interval_ms: Option<u64>,
}

/// `[limits]`: rate limits (the rules themselves live in the store).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Output tokens reserved for a request that sets no `max_output_tokens` /
    /// `max_completion_tokens` / `max_tokens`, when a tokens-per-minute rule governs
    /// it (default 4096). Settled against the real usage afterwards.
    pub default_output_tokens: Option<u64>,
}

/// `[budgets]`: spend budgets (the budgets themselves live in the store).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    /// How often the spend counters are re-read from the store's usage records, so
    /// replicas sharing a store see each other's spend (default 5000 ms).
    pub sync_interval_ms: Option<u64>,
    /// Where to POST each soft-threshold notice as JSON (default: nowhere).
    pub webhook_url: Option<String>,
}

/// `[lanes]`: priority lanes (see `lanes`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLanes {
    /// The fraction of every rate limit batch requests leave to interactive ones
    /// (default 0.2).
    pub batch_reserve: Option<f64>,
    /// The longest a batch request waits for capacity before its 429 (default 10 s).
    pub batch_max_wait_ms: Option<u64>,
}

/// `[redis]`: where replicas share their rate-limit counters (see `redis_link`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[:PASSWORD@]HOST[:PORT][/DB]`. Unset: counters live in this process.
    pub url: Option<String>,
    /// Prefix of every key tollgate writes (default `tollgate:`).
    pub key_prefix: Option<String>,
    /// Deadline of one admission's round trip, connecting included (default 50 ms).
    pub timeout_ms: Option<u64>,
    /// While Redis is unreachable: `local` (per-replica counters, the default),
    /// `open` (admit without limits) or `closed` (refuse with 503).
    pub on_failure: Option<String>,
}

/// `[anomaly]`: anomaly detection on key usage (see `anomaly`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnomaly {
    /// Default true.
    pub enabled: Option<bool>,
    /// A minute's count must exceed this many times the key's baseline (default 5).
    pub rate_factor: Option<u32>,
    /// ... and be at least this many requests (default 100).
    pub min_requests_per_min: Option<u64>,
    /// ... or tokens (default 100 000).
    pub min_tokens_per_min: Option<u64>,
    /// Closed minutes of a key before any rate flag (default 5; 0 only for tests).
    pub warmup_minutes: Option<u32>,
    /// Minutes a key must have been seen before a new client IP range is flagged
    /// (default 10).
    pub new_range_after_minutes: Option<u32>,
    /// One flag per key per kind within this many minutes (default 10).
    pub cooldown_minutes: Option<u32>,
    /// Where to POST each flag as JSON (default: nowhere).
    pub webhook_url: Option<String>,
    /// Refuse a flagged key in this process at once (default false).
    pub auto_suspend: Option<bool>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub upstream: UpstreamConfig,
    pub max_body_bytes: usize,
    /// See [`RawServer::max_body_bytes_in_flight`]; at least `max_body_bytes`.
    pub max_body_bytes_in_flight: usize,
    /// See [`RawServer::max_connections`].
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub shutdown_grace: Duration,
    pub usage_queue_capacity: usize,
    pub usage_batch_size: usize,
    /// Also how often the rate-limit rules' change counter is polled.
    pub keys_refresh_interval: Duration,
    pub anomaly: AnomalyConfig,
    /// Output tokens reserved when a request sets no maximum (`[limits]`).
    pub default_output_tokens: u64,
    /// Priority lanes (`[lanes]`).
    pub lanes: LanesConfig,
    /// The built-in model catalog with the `[[models]]` entries applied.
    pub catalog: Catalog,
    pub budgets: BudgetsConfig,
    /// `[redis]`.
    pub redis: RedisConfig,
    /// Gateway-wide aliases: the built-in ones with `[aliases]` over them.
    pub aliases: BTreeMap<String, String>,
    pub preflight: PreflightConfig,
    /// `[[upstreams]]`, `[fallbacks]`, `[circuit_breaker]`, `[offline]`.
    pub resilience: ResilienceConfig,
    /// `[cache]`.
    pub cache: CacheConfig,
    /// `[answers]`: structured answers validated for these projects.
    pub answers: crate::answers::AnswersConfig,
}

/// The checked `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_entries: usize,
    pub max_bytes: usize,
    pub max_entry_bytes: usize,
    /// Projects that cache by default.
    pub projects: std::collections::BTreeSet<String>,
    /// Projects served a stored answer when the upstream fails.
    pub fallback_projects: std::collections::BTreeSet<String>,
    /// How long past its TTL an answer may serve as a fallback.
    pub stale: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            max_entries: 10_000,
            max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            projects: Default::default(),
            fallback_projects: Default::default(),
            stale: Duration::from_secs(86_400),
        }
    }
}

/// Where rate-limit counters live, and what to do while that is unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// None: in this process (one replica).
    pub url: Option<RedisUrl>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub on_failure: OnFailure,
}

/// A Redis URL, which may hold a password: `Debug` and [`RedisUrl::redacted`] never
/// show it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as given (to connect with; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any user and password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// What is wrong with an upstream's base URL, if anything. The URL is quoted only when
/// it carries no user or password (which would be a credential in logs, `/readyz` and
/// errors, and cannot work: the provider key replaces `Authorization`).
pub(crate) fn base_url_problem(url: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!("{url:?} must start with http:// or https://"));
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return Some(format!(
            "{:?} carries a user name or password: remove it (the provider key goes in \
             api_key, as a secret reference)",
            redact_url(url)
        ));
    }
    if scheme != "http" && scheme != "https" {
        return Some(format!("{url:?} must start with http:// or https://"));
    }
    if authority.is_empty() {
        return Some(format!("{url:?} names no host"));
    }
    // What the client will refuse when it is built (a port out of range, say).
    tollgate_client::check_base_url(url)
        .err()
        .map(|e| format!("{url:?} is not a valid URL: {e}"))
}

/// What is wrong with a webhook URL, if anything: not http(s), or a user name or
/// password in it (the notices are sent without them, so a receiver that wants them
/// would refuse every one; the URL is not echoed, it may hold a password).
fn webhook_url_problem(url: &str) -> Option<String> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Some("must start with http:// or https://".into());
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return Some(
            "carries a user name or password, which notices are not sent with: use a URL \
             with a token in its path instead"
                .into(),
        );
    }
    tollgate_client::check_base_url(url)
        .err()
        .map(|e| format!("is not a valid URL: {e}"))
}

/// `scheme://user:password@host…` → `scheme://***@host…`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// What admission does while Redis is unreachable (`redis.on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Count in this replica's memory (each replica enforces the whole limit alone).
    Local,
    /// Admit without counting.
    Open,
    /// Refuse with 503 `limiter_unavailable`.
    Closed,
}

/// Where and how to call the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Its name in fallback chains (`upstream.name`, default `primary`).
    pub name: String,
    /// Base URL without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub url: String,
    pub api_key: SecretRef,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_base: Duration,
    /// The contents of `upstream.ca_file`, read when the configuration is validated.
    pub ca_pem: Option<Vec<u8>>,
    /// Fraction of the upstream's limit below which batch requests wait for its reset
    /// (0: off).
    pub adaptive_threshold: f64,
}

/// How batch requests share rate limits with interactive ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LanesConfig {
    /// Fraction of every limit a batch take must leave untouched, in `[0, 1)`.
    pub batch_reserve: f64,
    /// Longest wait of a batch request for capacity (rate limits and the upstream's).
    pub batch_max_wait: Duration,
}

impl Default for LanesConfig {
    fn default() -> Self {
        Self {
            batch_reserve: 0.2,
            batch_max_wait: Duration::from_secs(10),
        }
    }
}

/// One configuration problem at a dotted path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl RawConfig {
    /// Parses TOML; an error names the dotted path of the offending key.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigErrors> {
        let de = toml::Deserializer::parse(s).map_err(|e| {
            let at = e.span().map_or_else(String::new, |span| {
                let (line, column) = line_and_column(s, span.start);
                format!(" (line {line}, column {column})")
            });
            one("(file)", &format!("{}{at}", e.message().trim()))
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "(root)".to_owned()
            } else {
                path
            };
            one(&path, e.inner().message())
        })
    }
}

impl Config {
    /// Parses and validates a `tollgate.toml`.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigErrors> {
        Self::try_from(RawConfig::from_toml_str(s)?)
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

fn one(path: &str, message: &str) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        path: path.to_owned(),
        message: message.trim().to_owned(),
    }])
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigErrors;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |path: &str, message: String| {
            errors.push(ConfigError {
                path: path.to_owned(),
                message,
            })
        };

        let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            err(
                "listen",
                format!("{listen_text:?} is not an address like 127.0.0.1:8080"),
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });

        let url_text = raw
            .upstream
            .url
            .as_deref()
            .unwrap_or("https://api.openai.com/v1");
        let url = url_text.trim_end_matches('/').to_owned();
        if let Some(problem) = base_url_problem(url_text) {
            err("upstream.url", problem);
        }
        let key_text = raw
            .upstream
            .api_key
            .as_deref()
            .unwrap_or("env:OPENAI_API_KEY");
        let api_key = SecretRef::parse(key_text).unwrap_or_else(|e| {
            // The value may be a pasted secret: never echo it.
            err("upstream.api_key", e.to_string());
            SecretRef::Env("OPENAI_API_KEY".into())
        });
        if let Some(db) = &raw.database_url {
            // The URL itself is not echoed: a PostgreSQL one may carry a password.
            let sqlite_path = db
                .strip_prefix("sqlite://")
                .or_else(|| db.strip_prefix("sqlite:"));
            if !DATABASE_SCHEMES.iter().any(|s| db.starts_with(s)) {
                err(
                    "database_url",
                    "unsupported database: use sqlite://PATH or postgres://USER@HOST:PORT/DB"
                        .into(),
                );
            } else if sqlite_path.is_some_and(|p| p.trim().is_empty() || p.starts_with(":memory:"))
            {
                // Each pooled connection would get an empty database of its own.
                err(
                    "database_url",
                    "a SQLite database needs a file: sqlite://PATH (not empty, not :memory:)"
                        .into(),
                );
            }
        }

        let mut positive = |path: &str, v: Option<u64>, default: u64| -> u64 {
            match v {
                Some(0) => {
                    err(path, "must be greater than 0".into());
                    default
                }
                Some(v) => v,
                None => default,
            }
        };
        let connect_timeout_ms = positive(
            "upstream.connect_timeout_ms",
            raw.upstream.connect_timeout_ms,
            10_000,
        );
        let timeout_ms = positive("upstream.timeout_ms", raw.upstream.timeout_ms, 600_000);
        let retry_base_ms = positive("upstream.retry_base_ms", raw.upstream.retry_base_ms, 200);
        let max_body = positive(
            "server.max_body_bytes",
            raw.server.max_body_bytes,
            8 * 1024 * 1024,
        );
        let in_flight = positive(
            "server.max_body_bytes_in_flight",
            raw.server.max_body_bytes_in_flight,
            128 * 1024 * 1024,
        );
        let max_connections = positive(
            "server.max_connections",
            raw.server.max_connections,
            DEFAULT_MAX_CONNECTIONS,
        );
        let header_ms = positive(
            "server.header_timeout_ms",
            raw.server.header_timeout_ms,
            30_000,
        );
        let body_ms = positive("server.body_timeout_ms", raw.server.body_timeout_ms, 60_000);
        let grace_ms = positive(
            "server.shutdown_grace_ms",
            raw.server.shutdown_grace_ms,
            30_000,
        );
        let queue = positive(
            "usage.queue_capacity",
            raw.usage.queue_capacity.map(|v| v as u64),
            10_000,
        );
        let batch = positive(
            "usage.batch_size",
            raw.usage.batch_size.map(|v| v as u64),
            512,
        );
        let refresh_ms = positive(
            "keys.refresh_interval_ms",
            raw.keys.refresh_interval_ms,
            250,
        );
        let default_output_tokens = positive(
            "limits.default_output_tokens",
            raw.limits.default_output_tokens,
            4096,
        );
        let budget_sync_ms = positive(
            "budgets.sync_interval_ms",
            raw.budgets.sync_interval_ms,
            5_000,
        );
        if let Some(problem) = raw
            .budgets
            .webhook_url
            .as_deref()
            .and_then(webhook_url_problem)
        {
            err("budgets.webhook_url", problem);
        }
        if default_output_tokens > 1_000_000 {
            // No model answers with more; a typo here would make every request that
            // sets no maximum reserve (and be refused for) millions of tokens.
            err(
                "limits.default_output_tokens",
                "must be at most 1000000".into(),
            );
        }
        if refresh_ms > 900 {
            err(
                "keys.refresh_interval_ms",
                "must be at most 900: revocations must take effect within a second, the \
                 reload included"
                    .into(),
            );
        }
        let ca_pem = raw
            .upstream
            .ca_file
            .as_deref()
            .and_then(|path| match std::fs::read(path) {
                Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                    match tollgate_client::check_root_certificates(&pem) {
                        Ok(()) => Some(pem),
                        Err(e) => {
                            err("upstream.ca_file", format!("{}: {e}", path.display()));
                            None
                        }
                    }
                }
                Ok(_) => {
                    err(
                        "upstream.ca_file",
                        format!("{} holds no PEM certificate", path.display()),
                    );
                    None
                }
                Err(e) => {
                    err(
                        "upstream.ca_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            });
        let anomaly = anomaly_config(&raw.anomaly, &mut err);
        let lanes = lanes_config(&raw.lanes, &mut err);
        // Both are allocated up front (records of a few hundred bytes each): a typo
        // of a few zeros must not abort the process after it started.
        for (path, value, most) in [
            ("usage.queue_capacity", queue, MAX_USAGE_QUEUE),
            ("usage.batch_size", batch, MAX_USAGE_BATCH),
        ] {
            if value > most {
                err(path, format!("must be at most {most}"));
            }
        }
        let adaptive_threshold = raw.upstream.adaptive_threshold.unwrap_or(0.1);
        if !(0.0..=1.0).contains(&adaptive_threshold) {
            err(
                "upstream.adaptive_threshold",
                "must be between 0 (off) and 1".into(),
            );
        }
        let redis = redis_config(&raw.redis, &mut err);
        let cache = cache_config(&raw.cache, &mut err);
        let max_retries = raw.upstream.max_retries.unwrap_or(2);
        if max_retries > 10 {
            err("upstream.max_retries", "must be at most 10".into());
        }

        let mut catalog = Catalog::builtin();
        if in_flight < max_body {
            errors.push(ConfigError {
                path: "server.max_body_bytes_in_flight".into(),
                message: format!(
                    "{in_flight} is less than server.max_body_bytes ({max_body}): \
                     a body of the largest size accepted could never be read"
                ),
            });
        }
        match catalog::validate_models(&raw.models, "models") {
            Ok(entries) => catalog.apply(entries),
            Err(model_errors) => errors.extend(model_errors),
        }

        check_aliases(&raw.aliases, &catalog, &mut errors);
        let primary_name = raw
            .upstream
            .name
            .clone()
            .unwrap_or_else(|| crate::fallback_config::DEFAULT_PRIMARY.into());
        if let Some(problem) = crate::fallback_config::name_problem(&primary_name) {
            errors.push(ConfigError {
                path: "upstream.name".into(),
                message: problem,
            });
        }
        let upstream = UpstreamConfig {
            name: primary_name,
            url,
            api_key,
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            timeout: Duration::from_millis(timeout_ms),
            max_retries,
            retry_base: Duration::from_millis(retry_base_ms),
            ca_pem,
            adaptive_threshold,
        };
        let resilience = crate::fallback_config::resilience_config(
            RawResilience {
                upstreams: &raw.upstreams,
                fallbacks: &raw.fallbacks,
                breaker: &raw.circuit_breaker,
                offline: &raw.offline,
            },
            &upstream,
            &mut errors,
        );
        let answers = crate::answers::AnswersConfig::from_raw(&raw.answers, &mut errors);
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let aliases = crate::models::global_aliases(&raw.aliases);
        let preflight = PreflightConfig {
            response_format_on_responses: raw
                .preflight
                .response_format_on_responses
                .unwrap_or_default(),
            context_window: raw.preflight.context_window.unwrap_or(true),
            schemas: raw.preflight.schemas.unwrap_or(true),
        };
        Ok(Config {
            listen,
            data_dir: PathBuf::from(raw.data_dir.as_deref().unwrap_or("./tollgate-data")),
            database_url: raw.database_url,
            upstream,
            max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
            max_body_bytes_in_flight: usize::try_from(in_flight).unwrap_or(usize::MAX),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            header_timeout: Duration::from_millis(header_ms),
            body_timeout: Duration::from_millis(body_ms),
            shutdown_grace: Duration::from_millis(grace_ms),
            usage_queue_capacity: usize::try_from(queue).unwrap_or(10_000),
            usage_batch_size: usize::try_from(batch).unwrap_or(512),
            keys_refresh_interval: Duration::from_millis(refresh_ms),
            anomaly,
            default_output_tokens,
            lanes,
            catalog,
            budgets: BudgetsConfig {
                sync_interval: Duration::from_millis(budget_sync_ms),
                webhook_url: raw.budgets.webhook_url,
            },
            redis,
            aliases,
            preflight,
            resilience,
            cache,
            answers,
        })
    }
}

/// Checks `[lanes]`, filling in defaults.
fn lanes_config(raw: &RawLanes, err: &mut impl FnMut(&str, String)) -> LanesConfig {
    let d = LanesConfig::default();
    let batch_reserve = raw.batch_reserve.unwrap_or(d.batch_reserve);
    if !(0.0..1.0).contains(&batch_reserve) {
        err(
            "lanes.batch_reserve",
            "must be at least 0 and below 1 (a fraction of each limit)".into(),
        );
    }
    let batch_max_wait = raw
        .batch_max_wait_ms
        .map_or(d.batch_max_wait, Duration::from_millis);
    if batch_max_wait > MAX_BATCH_WAIT {
        err(
            "lanes.batch_max_wait_ms",
            format!(
                "must be at most {} (10 minutes): a call holds its budget reservation in \
                 Redis for at least 15 minutes from its arrival, and the SDKs' own request \
                 timeout is 10 minutes",
                MAX_BATCH_WAIT.as_millis()
            ),
        );
    }
    LanesConfig {
        batch_reserve,
        batch_max_wait,
    }
}

/// The largest `usage.queue_capacity` (records held in memory at once).
const MAX_USAGE_QUEUE: u64 = 1_000_000;

/// The largest `usage.batch_size` (records written in one transaction).
const MAX_USAGE_BATCH: u64 = 100_000;

/// The longest `lanes.batch_max_wait_ms`: a budget reservation made in Redis is held
/// for 15 to 30 minutes from the call's arrival (`budgets_redis::RESERVED_EPOCH_MS`),
/// so it must be made well within the first 15; and no official SDK waits longer for
/// an answer (their default timeout is 10 minutes).
const MAX_BATCH_WAIT: Duration = Duration::from_secs(600);

/// Checks `[redis]`, filling in defaults. The URL is never echoed: it may hold a
/// password.
fn redis_config(raw: &RawRedis, err: &mut impl FnMut(&str, String)) -> RedisConfig {
    let url = raw.url.as_deref().map(str::trim).filter(|u| !u.is_empty());
    let url = url.and_then(|u| {
        if u.starts_with("rediss://") {
            err(
                "redis.url",
                "TLS to Redis (rediss://) is not supported: use redis:// on a private network"
                    .into(),
            );
            return None;
        }
        if !u.starts_with("redis://") {
            err(
                "redis.url",
                "must look like redis://[:PASSWORD@]HOST[:PORT][/DB]".into(),
            );
            return None;
        }
        match redis::Client::open(u) {
            Ok(_) => Some(RedisUrl(u.to_owned())),
            Err(_) => {
                err(
                    "redis.url",
                    format!(
                        "{} is not a valid Redis URL: use redis://[:PASSWORD@]HOST[:PORT][/DB]",
                        redact_url(u)
                    ),
                );
                None
            }
        }
    });
    let key_prefix = raw.key_prefix.clone().unwrap_or_else(|| "tollgate:".into());
    if key_prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        err(
            "redis.key_prefix",
            "must not contain spaces or control characters".into(),
        );
    }
    let timeout_ms = match raw.timeout_ms {
        Some(0) => {
            err("redis.timeout_ms", "must be greater than 0".into());
            50
        }
        Some(v) => v,
        None => 50,
    };
    let on_failure = match raw.on_failure.as_deref().unwrap_or("local") {
        "local" => OnFailure::Local,
        "open" => OnFailure::Open,
        "closed" => OnFailure::Closed,
        other => {
            err(
                "redis.on_failure",
                format!("{other:?} is not one of \"local\", \"open\", \"closed\""),
            );
            OnFailure::Local
        }
    };
    RedisConfig {
        url,
        key_prefix,
        timeout: Duration::from_millis(timeout_ms),
        on_failure,
    }
}

/// Checks `[cache]`, filling in defaults.
fn cache_config(raw: &RawCache, err: &mut impl FnMut(&str, String)) -> CacheConfig {
    let d = CacheConfig::default();
    let mut positive = |path: &str, v: Option<u64>, default: u64| match v {
        Some(0) => {
            err(path, "must be greater than 0".into());
            default
        }
        Some(v) => v,
        None => default,
    };
    let ttl = positive("cache.ttl_seconds", raw.ttl_seconds, d.ttl.as_secs());
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let max_entries = positive("cache.max_entries", raw.max_entries, d.max_entries as u64);
    let max_bytes = positive("cache.max_bytes", raw.max_bytes, d.max_bytes as u64);
    let max_entry = positive(
        "cache.max_entry_bytes",
        raw.max_entry_bytes,
        d.max_entry_bytes as u64,
    );
    if max_entry > max_bytes {
        err(
            "cache.max_entry_bytes",
            format!("must be at most cache.max_bytes ({max_bytes})"),
        );
    }
    // A year at most: Redis refuses an expiry past its range, which would leave the
    // shared cache storing nothing.
    for (path, v) in [
        ("cache.ttl_seconds", raw.ttl_seconds),
        ("cache.stale_seconds", raw.stale_seconds),
    ] {
        if v.is_some_and(|v| v > MAX_CACHE_SECONDS) {
            err(
                path,
                format!("must be at most {MAX_CACHE_SECONDS} (a year)"),
            );
        }
    }
    let mut projects = |path: &str, list: &Option<Vec<String>>| {
        let list = list.clone().unwrap_or_default();
        for (i, p) in list.iter().enumerate() {
            if p.trim().is_empty() || p.chars().any(char::is_whitespace) {
                err(
                    &format!("{path}[{i}]"),
                    format!("{p:?} is not a project name (no spaces)"),
                );
            }
        }
        list.into_iter().collect()
    };
    let cached = projects("cache.projects", &raw.projects);
    let fallback = projects("cache.fallback_projects", &raw.fallback_projects);
    CacheConfig {
        ttl: Duration::from_secs(ttl),
        max_entries: size(max_entries),
        max_bytes: size(max_bytes),
        max_entry_bytes: size(max_entry),
        projects: cached,
        fallback_projects: fallback,
        stale: Duration::from_secs(raw.stale_seconds.unwrap_or(d.stale.as_secs())),
    }
}

/// Checks `[aliases]`: ids without spaces, no alias of an alias (they do not chain),
/// and no alias hiding a catalog model.
fn check_aliases(
    aliases: &BTreeMap<String, String>,
    catalog: &Catalog,
    errors: &mut Vec<ConfigError>,
) {
    let bad = |s: &str| s.is_empty() || s.len() > 200 || s.chars().any(char::is_whitespace);
    for (alias, model) in aliases {
        let path = format!("aliases.{alias}");
        let message = if bad(alias) {
            Some("an alias is 1-200 characters without spaces".to_owned())
        } else if bad(model) {
            Some(format!(
                "{model:?} is not a model id (1-200 characters without spaces)"
            ))
        } else if catalog.get(alias).is_some() {
            Some(format!(
                "{alias:?} is a model of the catalog; an alias may not hide it"
            ))
        } else if aliases.contains_key(model)
            || crate::models::BUILTIN_ALIASES
                .iter()
                .any(|(a, _)| a == model)
        {
            Some(format!(
                "{model:?} is itself an alias; aliases do not chain, name a model id"
            ))
        } else {
            None
        };
        if let Some(message) = message {
            errors.push(ConfigError { path, message });
        }
    }
}

/// Checks `[anomaly]`, filling in defaults.
fn anomaly_config(raw: &RawAnomaly, err: &mut impl FnMut(&str, String)) -> AnomalyConfig {
    let d = AnomalyConfig::default();
    let rate_factor = raw.rate_factor.unwrap_or(d.rate_factor);
    if rate_factor < 2 {
        err("anomaly.rate_factor", "must be at least 2".into());
    }
    let mut at_least_one = |path: &str, v: Option<u64>, default: u64| match v {
        Some(0) => {
            err(path, "must be greater than 0".into());
            default
        }
        Some(v) => v,
        None => default,
    };
    let min_requests = at_least_one(
        "anomaly.min_requests_per_min",
        raw.min_requests_per_min,
        d.min_requests_per_min,
    );
    let min_tokens = at_least_one(
        "anomaly.min_tokens_per_min",
        raw.min_tokens_per_min,
        d.min_tokens_per_min,
    );
    let cooldown = at_least_one(
        "anomaly.cooldown_minutes",
        raw.cooldown_minutes.map(u64::from),
        u64::from(d.cooldown_minutes),
    );
    if let Some(problem) = raw.webhook_url.as_deref().and_then(webhook_url_problem) {
        err("anomaly.webhook_url", problem);
    }
    AnomalyConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        rate_factor,
        min_requests_per_min: min_requests,
        min_tokens_per_min: min_tokens,
        warmup_minutes: raw.warmup_minutes.unwrap_or(d.warmup_minutes),
        new_range_after_minutes: raw
            .new_range_after_minutes
            .unwrap_or(d.new_range_after_minutes),
        cooldown_minutes: u32::try_from(cooldown).unwrap_or(d.cooldown_minutes),
        webhook_url: raw.webhook_url.clone(),
        auto_suspend: raw.auto_suspend.unwrap_or(d.auto_suspend),
    }
}

/// The longest `cache.ttl_seconds` and `cache.stale_seconds`: a year.
const MAX_CACHE_SECONDS: u64 = 365 * 24 * 3600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_output_reservation_is_at_most_a_million_tokens() {
        let e = Config::from_toml_str("[limits]\ndefault_output_tokens = 1000001\n").unwrap_err();
        assert_eq!(e.0[0].path, "limits.default_output_tokens");
        let c = Config::from_toml_str("[limits]\ndefault_output_tokens = 1000000\n").unwrap();
        assert_eq!(c.default_output_tokens, 1_000_000);
    }

    #[test]
    fn webhook_urls_are_http_without_credentials_and_not_echoed() {
        for section in ["anomaly", "budgets"] {
            let e = Config::from_toml_str(&format!(
                "[{section}]\nwebhook_url = \"https://ops:hunter2@hooks.example/x\"\n"
            ))
            .unwrap_err();
            assert_eq!(e.0[0].path, format!("{section}.webhook_url"));
            assert!(!e.to_string().contains("hunter2"), "{e}");
            let e = Config::from_toml_str(&format!("[{section}]\nwebhook_url = \"ftp://x\"\n"))
                .unwrap_err();
            assert_eq!(e.0[0].path, format!("{section}.webhook_url"));
        }
    }

    #[test]
    fn cache_times_are_at_most_a_year() {
        let e = Config::from_toml_str(
            "[cache]\nttl_seconds = 31536001\nstale_seconds = 18446744073709551615\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["cache.ttl_seconds", "cache.stale_seconds"]);
        assert!(
            e.0[0].message.contains("at most 31536000"),
            "{}",
            e.0[0].message
        );
        let c =
            Config::from_toml_str("[cache]\nttl_seconds = 31536000\nstale_seconds = 31536000\n")
                .unwrap();
        assert_eq!(c.cache.ttl.as_secs(), 31_536_000);
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.upstream.url, "https://api.openai.com/v1");
        assert_eq!(c.upstream.api_key, SecretRef::Env("OPENAI_API_KEY".into()));
        assert_eq!(c.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(c.data_dir, PathBuf::from("./tollgate-data"));
    }

    #[test]
    fn connections_are_capped_at_a_positive_number() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.max_connections, 10_000);
        let c = Config::from_toml_str("[server]\nmax_connections = 64\n").unwrap();
        assert_eq!(c.max_connections, 64);
        let e = Config::from_toml_str("[server]\nmax_connections = 0\n").unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].path, "server.max_connections");
        assert!(
            e.0[0].message.contains("greater than 0"),
            "{}",
            e.0[0].message
        );
    }

    #[test]
    fn bodies_in_flight_must_hold_the_largest_body() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.max_body_bytes_in_flight, 128 * 1024 * 1024);
        let e = Config::from_toml_str(
            "[server]\nmax_body_bytes = 1048576\nmax_body_bytes_in_flight = 1048575\n",
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].path, "server.max_body_bytes_in_flight");
        assert!(e.0[0].message.contains("less than server.max_body_bytes"));
        let c = Config::from_toml_str(
            "[server]\nmax_body_bytes = 1048576\nmax_body_bytes_in_flight = 1048576\n",
        )
        .unwrap();
        assert_eq!(c.max_body_bytes_in_flight, 1 << 20);
    }

    #[test]
    fn the_documented_example_is_valid_and_matches_the_defaults() {
        let example = include_str!("../../../docs/tollgate.example.toml");
        let c = Config::from_toml_str(example).unwrap();
        let d = Config::from_toml_str("").unwrap();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn unknown_keys_are_reported_with_their_dotted_path() {
        let e = Config::from_toml_str("[upstream]\nurll = \"x\"\n").unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].path, "upstream.urll");
        assert!(e.0[0].message.contains("unknown field `urll`"), "{e}");

        let e = Config::from_toml_str("[server]\nmax_body_bytes = \"big\"\n").unwrap_err();
        assert_eq!(e.0[0].path, "server.max_body_bytes");
    }

    #[test]
    fn a_syntax_error_says_where_it_is() {
        let e = Config::from_toml_str(
            "listen = \"127.0.0.1:1\"\n[upstream]\nurl = \"a\"\nurl = \"b\"\n",
        )
        .unwrap_err();
        assert_eq!(e.0[0].path, "(file)");
        assert!(e.0[0].message.contains("line 4, column 1"), "{e}");
        let e = Config::from_toml_str("[upstream\n").unwrap_err();
        assert!(e.0[0].message.contains("line 1, column 10"), "{e}");
    }

    #[test]
    fn an_upstream_url_with_a_password_is_refused_without_echoing_it() {
        for url in [
            "http://proxyuser:hunter2@127.0.0.1:9/v1",
            "https://hunter2@example.com/v1",
        ] {
            let toml = format!("[upstream]\nurl = \"{url}\"\n");
            let e = Config::from_toml_str(&toml).unwrap_err();
            assert_eq!(e.0[0].path, "upstream.url", "{e}");
            assert!(e.0[0].message.contains("user name or password"), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let e = Config::from_toml_str("[upstream]\nurl = \"https://\"\n").unwrap_err();
        assert!(e.0[0].message.contains("names no host"), "{e}");
        let ok = Config::from_toml_str("[upstream]\nurl = \"http://127.0.0.1:9/v1?a=b@c\"\n");
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    #[test]
    fn every_validation_problem_is_reported_at_once_without_echoing_secrets() {
        let toml = r#"
            listen = "nowhere"
            [upstream]
            url = "ftp://x"
            api_key = "sk-pasted-literal"
            timeout_ms = 0
            [keys]
            refresh_interval_ms = 5000
        "#;
        let e = Config::from_toml_str(toml).unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listen",
                "upstream.url",
                "upstream.api_key",
                "upstream.timeout_ms",
                "keys.refresh_interval_ms"
            ]
        );
        assert!(!e.to_string().contains("sk-pasted"));
    }

    #[test]
    fn an_upstream_url_the_client_would_refuse_is_refused_when_validated() {
        let e =
            Config::from_toml_str("[upstream]\nurl = \"http://127.0.0.1:99999/v1\"\n").unwrap_err();
        assert_eq!(e.0[0].path, "upstream.url");
        assert!(e.0[0].message.contains("not a valid URL"), "{e}");
    }

    #[test]
    fn an_upstream_ca_file_is_read_and_checked_when_validated() {
        let dir = tempfile::tempdir().unwrap();
        let toml = |path: &std::path::Path| {
            format!("[upstream]\nca_file = {:?}\n", path.display().to_string())
        };
        let missing = dir.path().join("missing.pem");
        let e = Config::from_toml_str(&toml(&missing)).unwrap_err();
        assert_eq!(e.0[0].path, "upstream.ca_file");
        assert!(e.0[0].message.contains("cannot read"), "{e}");

        let not_pem = dir.path().join("key.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = Config::from_toml_str(&toml(&not_pem)).unwrap_err();
        assert!(e.0[0].message.contains("no PEM certificate"), "{e}");

        // PEM armour around what is no certificate is refused now, not when serving.
        let garbage = dir.path().join("garbage.pem");
        let body = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        std::fs::write(&garbage, body).unwrap();
        let e = Config::from_toml_str(&toml(&garbage)).unwrap_err();
        assert_eq!(e.0[0].path, "upstream.ca_file");

        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=tollgate test CA",
            ])
            .args([
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ])
            .args(["-keyout", "ca.key", "-out", "ca.pem"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let pem = dir.path().join("ca.pem");
        let c = Config::from_toml_str(&toml(&pem)).unwrap();
        assert_eq!(c.upstream.ca_pem, Some(std::fs::read(&pem).unwrap()));
        assert_eq!(Config::from_toml_str("").unwrap().upstream.ca_pem, None);
    }

    #[test]
    fn anomaly_settings_default_and_are_checked() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.anomaly, AnomalyConfig::default());
        let c = Config::from_toml_str(
            "[anomaly]\nwarmup_minutes = 0\nmin_requests_per_min = 20\nauto_suspend = true\n\
             webhook_url = \"http://127.0.0.1:9/hook\"\n",
        )
        .unwrap();
        assert_eq!(c.anomaly.warmup_minutes, 0);
        assert_eq!(c.anomaly.min_requests_per_min, 20);
        assert!(c.anomaly.auto_suspend);
        let e = Config::from_toml_str(
            "[anomaly]\nrate_factor = 1\ncooldown_minutes = 0\nwebhook_url = \"x\"\n",
        )
        .unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "anomaly.rate_factor",
                "anomaly.cooldown_minutes",
                "anomaly.webhook_url"
            ]
        );
        let e = Config::from_toml_str("[anomaly]\nfactor = 5\n").unwrap_err();
        assert_eq!(e.0[0].path, "anomaly.factor");
    }

    #[test]
    fn models_entries_replace_or_add_catalog_entries_and_errors_name_their_path() {
        let c = Config::from_toml_str(
            "[[models]]\nid = \"gpt-4o-mini\"\ninput_per_1m = 0.2\noutput_per_1m = 0.8\n\
             [[models]]\nid = \"llama3.1:8b\"\ninput_per_1m = 0\noutput_per_1m = 0\n\
             context_window = 131072\nlatency = \"fast\"\n",
        )
        .unwrap();
        let mini = c.catalog.get("gpt-4o-mini").unwrap();
        assert_eq!(mini.input, crate::catalog::Price(200));
        assert_eq!(mini.cached_input, None, "replaced whole, not merged");
        let llama = c.catalog.get("llama3.1:8b").unwrap();
        assert_eq!(llama.context_window, Some(131_072));
        assert!(c.catalog.get("gpt-4.1").is_some(), "the others stay");

        let e = Config::from_toml_str(
            "[[models]]\nid = \"a\"\ninput_per_1m = 0.0001\n\
             [[models]]\nid = \"a\"\ninput_per_1m = 1\nfamily = \"p50k\"\n\
             prices_checked = \"June\"\ncontext_window = 10\nmax_output_tokens = 20\n",
        )
        .unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "models[0].input_per_1m",
                "models[1].id",
                "models[1].family",
                "models[1].max_output_tokens",
                "models[1].prices_checked",
            ],
            "{e}"
        );
        assert!(e.to_string().contains("USD per 1M"), "{e}");

        let e = Config::from_toml_str("[[models]]\nid = \"a\"\ninput = 1\n").unwrap_err();
        assert_eq!(e.0[0].path, "models[0].input", "{e}");
        let e = Config::from_toml_str("[[models]]\nid = \"a\"\n").unwrap_err();
        assert!(e.0[0].path.starts_with("models[0]"), "{e}");
    }

    #[test]
    fn lane_and_adaptive_settings_default_and_are_checked() {
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.lanes, LanesConfig::default());
        assert!((c.upstream.adaptive_threshold - 0.1).abs() < f64::EPSILON);
        let c = Config::from_toml_str(
            "[lanes]\nbatch_reserve = 0\nbatch_max_wait_ms = 0\n[upstream]\nadaptive_threshold = 0\n",
        )
        .unwrap();
        assert_eq!(c.lanes.batch_reserve, 0.0);
        assert_eq!(c.lanes.batch_max_wait, Duration::ZERO);
        assert_eq!(c.upstream.adaptive_threshold, 0.0);
        let e = Config::from_toml_str(
            "[upstream]\nadaptive_threshold = 1.5\n[lanes]\nbatch_reserve = 1\n",
        )
        .unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["lanes.batch_reserve", "upstream.adaptive_threshold"]
        );
        let e = Config::from_toml_str("[lanes]\nreserve = 0.1\n").unwrap_err();
        assert_eq!(e.0[0].path, "lanes.reserve");
        let ok = Config::from_toml_str("[lanes]\nbatch_max_wait_ms = 600000\n").unwrap();
        assert_eq!(ok.lanes.batch_max_wait, Duration::from_secs(600));
        let e = Config::from_toml_str("[lanes]\nbatch_max_wait_ms = 600001\n").unwrap_err();
        assert_eq!(e.0[0].path, "lanes.batch_max_wait_ms");
        let e =
            Config::from_toml_str("[usage]\nbatch_size = 100000000\nqueue_capacity = 2000000\n")
                .unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["usage.queue_capacity", "usage.batch_size"]);
    }

    #[test]
    fn database_urls_are_sqlite_or_postgres_and_never_echoed() {
        for url in [
            "sqlite:///var/lib/tollgate/tollgate.db",
            "postgres://tollgate@127.0.0.1:5432/tollgate",
            "postgresql://tollgate:pw@db.internal/tollgate",
        ] {
            let c = Config::from_toml_str(&format!("database_url = {url:?}")).unwrap();
            assert_eq!(c.database_url.as_deref(), Some(url));
        }
        for memory in ["sqlite://", "sqlite::memory:", "sqlite://:memory:"] {
            let e = Config::from_toml_str(&format!("database_url = {memory:?}")).unwrap_err();
            assert_eq!(e.0[0].path, "database_url", "{memory}");
            assert!(e.0[0].message.contains("needs a file"), "{e}");
        }
        let e = Config::from_toml_str("database_url = \"mysql://root:hunter2@db/x\"").unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].path, "database_url");
        assert!(e.0[0].message.contains("postgres://"), "{e}");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn redis_settings_default_are_checked_and_never_echo_a_password() {
        let d = Config::from_toml_str("").unwrap().redis;
        assert_eq!(d.url, None);
        assert_eq!(d.key_prefix, "tollgate:");
        assert_eq!(d.timeout, Duration::from_millis(50));
        assert_eq!(d.on_failure, OnFailure::Local);
        let c = Config::from_toml_str(
            "[redis]\nurl = \"redis://:hunter2@10.0.0.5:6380/2\"\non_failure = \"closed\"\n\
             timeout_ms = 20\nkey_prefix = \"t1:\"\n",
        )
        .unwrap();
        let url = c.redis.url.clone().unwrap();
        assert_eq!(url.expose(), "redis://:hunter2@10.0.0.5:6380/2");
        assert_eq!(url.redacted(), "redis://***@10.0.0.5:6380/2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.redis.on_failure, OnFailure::Closed);
        assert_eq!(c.redis.timeout, Duration::from_millis(20));
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );

        let e = Config::from_toml_str(
            "[redis]\nurl = \"http://u:hunter2@x\"\ntimeout_ms = 0\non_failure = \"maybe\"\n",
        )
        .unwrap_err();
        let paths: Vec<_> = e.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["redis.url", "redis.timeout_ms", "redis.on_failure"],
            "{e}"
        );
        assert!(e.to_string().contains("redis://"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Config::from_toml_str("[redis]\nurl = \"rediss://:hunter2@x:6379\"\n").unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e =
            Config::from_toml_str("[redis]\nurl = \"redis://:hunter2@x:notaport\"\n").unwrap_err();
        assert_eq!(e.0[0].path, "redis.url");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Config::from_toml_str("[redis]\nprefix = \"x\"\n").unwrap_err();
        assert_eq!(e.0[0].path, "redis.prefix");
    }
}
