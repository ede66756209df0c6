//! `GatewayError`: every way tollgate itself refuses or fails a call, and the one place
//! that turns it into an HTTP answer in OpenAI's error shape. Upstream errors are not
//! here: they are passed through with the upstream's own status and body.
//!
//! The table of variants (status, type, code) is documented in `docs/errors.md` and
//! guarded by a unit test below.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tollgate_wire::ratelimit::{self, RateLimitInfo};
use tollgate_wire::ErrorEnvelope;

use tollgate_store::BudgetPeriod;

use crate::budgets::{usd, utc_day};
use crate::limits::Dimension;
use crate::models::ModelFilter;

/// A refusal or failure decided by tollgate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("missing API key")]
    MissingKey,
    #[error("unknown API key")]
    UnknownKey { prefix: String },
    #[error("role {role} may not {action}")]
    Forbidden { role: String, action: &'static str },
    /// Refused by this process after anomaly detection flagged the key (`anomaly`).
    #[error("key suspended for unusual usage")]
    KeySuspended { reason: &'static str },
    /// The key's expiry has passed.
    #[error("API key expired")]
    ExpiredKey { key_id: String },
    /// The key was rotated and its grace period has ended.
    #[error("API key rotated")]
    RotatedKey { key_id: String, successor: String },
    /// The key was suspended in the store (`tollgate keys suspend`).
    #[error("API key suspended")]
    SuspendedKey { key_id: String },
    #[error("invalid URL")]
    InvalidUrl { method: String, path: String },
    #[error("request body too large")]
    BodyTooLarge { limit: usize },
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("invalid JSON body")]
    InvalidJson { detail: String },
    #[error("invalid request")]
    InvalidRequest {
        message: String,
        param: Option<std::borrow::Cow<'static, str>>,
    },
    #[error("upstream unreachable")]
    UpstreamUnreachable { attempts: u32 },
    #[error("upstream timed out")]
    UpstreamTimeout { attempts: u32 },
    #[error("not ready")]
    NotReady { reason: &'static str },
    /// The request bodies held at once reached `server.max_body_bytes_in_flight`, and
    /// no room freed up within the body timeout.
    #[error("too many request bodies in flight")]
    BodiesInFlight { limit: usize },
    #[error("internal error")]
    Internal,
    /// The key's role may not use this part of the admin API.
    #[error("role {role} may not {action} over the admin API")]
    AdminForbidden { role: String, action: &'static str },
    /// A gateway-wide admin operation (projects) asked by a key that is not an admin
    /// (or, to read, a viewer) of the reserved `_gateway` project.
    #[error("gateway admin only")]
    GatewayAdminOnly { action: &'static str },
    /// A project admin asked, over the admin API, for a credential reference that
    /// runs a command or reads a file on the gateway's host (`exec:`, `file:`): only
    /// an operator may, with the CLI on the host.
    #[error("host credential reference over the admin API")]
    HostCredentialRef { scheme: &'static str },
    /// An admin API object that does not exist in the caller's project.
    #[error("{what} not found")]
    NotFound { what: &'static str, id: String },
    /// The provider credential chosen for the key's project and environment is a
    /// secret reference this server could not read. Carries the reference (never a
    /// value) for the log; the caller's message names only the project and env.
    #[error("provider credential unavailable")]
    CredentialUnavailable { project: String, env: String },
    /// The provider credential chosen for the key's project and environment is new to
    /// this server and still being read (an `exec:` command running): retry shortly.
    #[error("provider credential being read")]
    CredentialPending { project: String, env: String },
    /// The upstream refused the gateway's provider credential (an upstream 401). The
    /// caller's own key was accepted: the upstream's answer (which quotes part of the
    /// provider key) is not relayed, and the SDK is told not to retry.
    #[error("provider credential rejected")]
    CredentialRejected { project: String, env: String },
    /// The caller's connection ended before its body did (recorded as a disconnect,
    /// status 499; the answer reaches no one).
    #[error("client went away while sending its body")]
    ClientGone,
    /// A rate-limit rule has no room for the request now (`admit`).
    #[error("rate limit reached")]
    RateLimited(Box<RateRefusal>),
    /// The request's token estimate is above a TPM limit: it can never pass.
    #[error("request too large for a tokens-per-minute limit")]
    RequestExceedsLimit(Box<RateRefusal>),
    /// Redis, where the rate-limit counters live, is unreachable and
    /// `redis.on_failure = "closed"`.
    #[error("rate-limit store unreachable")]
    LimiterUnavailable,
    /// Every target of a fallback chain was skipped without a call: their circuit
    /// breakers are open. `retry_after_ms`: until the first of them probes again.
    #[error("every upstream's circuit is open")]
    UpstreamUnavailable {
        upstreams: Vec<String>,
        retry_after_ms: u64,
    },
    /// A spend budget has no room for the request's worst-case cost (`budgets`).
    #[error("spend budget exhausted")]
    BudgetExceeded(Box<BudgetRefusal>),
    /// A budget governs the call but the catalog has no price for its model.
    #[error("model not priced")]
    UnpricedModel { model: String },
    /// The model (after alias resolution: `served`) is not one the caller's project
    /// and environment may use (`models`).
    #[error("model not allowed")]
    ModelNotFound {
        model: String,
        served: Option<String>,
        filter: Box<ModelFilter>,
    },
    /// Input plus requested output do not fit the model's context window (preflight).
    #[error("context window exceeded")]
    ContextLengthExceeded(Box<ContextRefusal>),
    /// A parameter preflight refuses with a code of its own: an invalid
    /// structured-output schema (`invalid_json_schema`) or function-parameter schema
    /// (`invalid_function_parameters`), or `response_format` on `/v1/responses` when
    /// configured to refuse it (`unsupported_parameter`).
    #[error("invalid parameter")]
    InvalidParameter {
        message: String,
        /// Where, as a path into the request (`text.format.schema/properties/x`).
        param: String,
        code: &'static str,
    },
    /// The upstream's structured-output answer does not match the request's schema
    /// (`answers`), after the retry when configured.
    #[error("invalid structured output")]
    InvalidStructuredOutput {
        /// A JSON pointer into the answer (`/age`; empty: the whole answer).
        path: String,
        detail: String,
        /// Upstream calls made, retries included.
        attempts: u32,
    },
}

/// What a budget refusal says (boxed in [`GatewayError`]). Amounts in nano-USD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefusal {
    /// The budget's scope, as `project shop, env prod`.
    pub scope: String,
    pub period: BudgetPeriod,
    pub limit_usd_nanos: u64,
    pub spent_usd_nanos: u64,
    /// Held by calls in flight.
    pub reserved_usd_nanos: u64,
    /// This request's worst case.
    pub requested_usd_nanos: u64,
    /// When the period ends (Unix ms, UTC).
    pub resets_at_ms: i64,
    /// The rate limits' headers, when a rule governs the call too.
    pub headers: RateLimitInfo,
}

/// What a context-window refusal says (boxed in [`GatewayError`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRefusal {
    pub model: String,
    pub window: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// `input` (Responses) or `messages` (Chat).
    pub param: &'static str,
    /// The field that asked for the output (`max_output_tokens`, …), if any.
    pub output_field: Option<&'static str>,
}

/// What a rate-limit refusal says (boxed in [`GatewayError`]: large, and rare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRefusal {
    pub dimension: Dimension,
    pub model: String,
    /// The rule's scope, as `project shop, env prod, model gpt-4o`.
    pub scope: String,
    pub limit: u64,
    pub used: u64,
    pub requested: u64,
    /// Exact time until the bucket holds what was requested (zero when it never will).
    pub retry_after: std::time::Duration,
    pub headers: RateLimitInfo,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingKey
            | Self::UnknownKey { .. }
            | Self::ExpiredKey { .. }
            | Self::RotatedKey { .. } => StatusCode::UNAUTHORIZED,
            Self::SuspendedKey { .. } => StatusCode::FORBIDDEN,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::KeySuspended { .. } => StatusCode::FORBIDDEN,
            Self::InvalidUrl { .. } => StatusCode::NOT_FOUND,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            // Nginx's "client closed request".
            Self::ClientGone => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::InvalidJson { .. }
            | Self::InvalidRequest { .. }
            | Self::ContextLengthExceeded(_)
            | Self::InvalidParameter { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            Self::UpstreamUnreachable { .. }
            | Self::InvalidStructuredOutput { .. }
            | Self::CredentialRejected { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::NotReady { .. } | Self::BodiesInFlight { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::AdminForbidden { .. }
            | Self::GatewayAdminOnly { .. }
            | Self::HostCredentialRef { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::CredentialUnavailable { .. }
            | Self::CredentialPending { .. }
            | Self::LimiterUnavailable
            | Self::UpstreamUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited(_) | Self::RequestExceedsLimit(_) | Self::BudgetExceeded(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UnpricedModel { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// OpenAI's `type`.
    pub fn openai_type(&self) -> &'static str {
        match self {
            Self::Forbidden { .. }
            | Self::KeySuspended { .. }
            | Self::SuspendedKey { .. }
            | Self::AdminForbidden { .. }
            | Self::GatewayAdminOnly { .. }
            | Self::HostCredentialRef { .. } => "permission_error",
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamTimeout { .. }
            | Self::Internal
            | Self::InvalidStructuredOutput { .. }
            | Self::CredentialRejected { .. } => "server_error",
            Self::NotReady { .. }
            | Self::BodiesInFlight { .. }
            | Self::CredentialUnavailable { .. }
            | Self::CredentialPending { .. }
            | Self::LimiterUnavailable
            | Self::UpstreamUnavailable { .. } => "service_unavailable_error",
            Self::RateLimited(r) => r.dimension.openai_type(),
            Self::RequestExceedsLimit(_) => Dimension::Tokens.openai_type(),
            Self::BudgetExceeded(_) => "insufficient_quota",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI's `code`.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::MissingKey
            | Self::UnknownKey { .. }
            | Self::ExpiredKey { .. }
            | Self::RotatedKey { .. } => Some("invalid_api_key"),
            Self::SuspendedKey { .. } => Some("key_suspended"),
            Self::Forbidden { .. } => Some("permission_denied"),
            Self::KeySuspended { .. } => Some("key_suspended"),
            Self::BodyTooLarge { .. } => Some("request_too_large"),
            Self::BodyTimeout => Some("request_timeout"),
            Self::UpstreamUnreachable { .. } => Some("upstream_unreachable"),
            Self::UpstreamTimeout { .. } => Some("upstream_timeout"),
            Self::NotReady { .. } => Some("not_ready"),
            Self::BodiesInFlight { .. } => Some("server_busy"),
            Self::AdminForbidden { .. }
            | Self::GatewayAdminOnly { .. }
            | Self::HostCredentialRef { .. } => Some("permission_denied"),
            Self::NotFound { .. } => Some("not_found"),
            Self::CredentialUnavailable { .. } => Some("provider_credential_unavailable"),
            Self::CredentialPending { .. } => Some("provider_credential_pending"),
            Self::CredentialRejected { .. } => Some("provider_credential_rejected"),
            Self::RateLimited(_) | Self::RequestExceedsLimit(_) => Some("rate_limit_exceeded"),
            Self::BudgetExceeded(_) => Some("insufficient_quota"),
            Self::UnpricedModel { .. } => Some("model_not_priced"),
            Self::LimiterUnavailable => Some("limiter_unavailable"),
            Self::UpstreamUnavailable { .. } => Some("upstream_unavailable"),
            Self::ModelNotFound { .. } => Some("model_not_found"),
            Self::ContextLengthExceeded(_) => Some("context_length_exceeded"),
            Self::InvalidParameter { code, .. } => Some(code),
            Self::InvalidStructuredOutput { .. } => Some("invalid_structured_output"),
            _ => None,
        }
    }

    /// OpenAI's `param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            Self::UnpricedModel { .. } => Some("model"),
            Self::ModelNotFound { .. } => Some("model"),
            Self::ContextLengthExceeded(r) => Some(r.param),
            Self::InvalidParameter { param, .. } => Some(param),
            _ => None,
        }
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingKey => "missing_key",
            Self::UnknownKey { .. } => "unknown_key",
            Self::Forbidden { .. } => "forbidden",
            Self::ExpiredKey { .. } => "key_expired",
            Self::RotatedKey { .. } => "key_rotated",
            Self::SuspendedKey { .. } => "key_suspended",
            Self::KeySuspended { .. } => "key_suspended",
            Self::InvalidUrl { .. } => "invalid_url",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::InvalidJson { .. } => "invalid_json",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::UpstreamUnreachable { .. } => "upstream_unreachable",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::NotReady { .. } => "not_ready",
            Self::BodiesInFlight { .. } => "bodies_in_flight",
            Self::Internal => "internal",
            Self::AdminForbidden { .. }
            | Self::GatewayAdminOnly { .. }
            | Self::HostCredentialRef { .. } => "admin_forbidden",
            Self::NotFound { .. } => "not_found",
            Self::CredentialUnavailable { .. } => "provider_credential_unavailable",
            Self::CredentialPending { .. } => "provider_credential_pending",
            Self::CredentialRejected { .. } => "provider_credential_rejected",
            Self::ClientGone => "client_disconnected",
            Self::RateLimited(_) => "rate_limited",
            Self::RequestExceedsLimit(_) => "request_exceeds_limit",
            Self::BudgetExceeded(_) => "budget_exceeded",
            Self::UnpricedModel { .. } => "model_not_priced",
            Self::LimiterUnavailable => "limiter_unavailable",
            Self::UpstreamUnavailable { .. } => "upstream_unavailable",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::ContextLengthExceeded(_) => "context_length_exceeded",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::InvalidStructuredOutput { .. } => "invalid_structured_output",
        }
    }

    /// Upstream calls made before the error, when it came from the upstream.
    /// This error with `earlier` more upstream attempts counted (made before it, on
    /// other targets of a fallback chain).
    pub fn with_earlier_attempts(mut self, earlier: u32) -> Self {
        if let Self::UpstreamUnreachable { attempts }
        | Self::UpstreamTimeout { attempts }
        | Self::InvalidStructuredOutput { attempts, .. } = &mut self
        {
            *attempts = attempts.saturating_add(earlier);
        }
        self
    }

    pub fn attempts(&self) -> Option<u32> {
        match self {
            Self::UpstreamUnreachable { attempts }
            | Self::UpstreamTimeout { attempts }
            | Self::InvalidStructuredOutput { attempts, .. } => Some(*attempts),
            _ => None,
        }
    }

    /// Whether the same request may succeed if retried unchanged.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::UpstreamUnreachable { .. }
                | Self::UpstreamTimeout { .. }
                | Self::NotReady { .. }
                | Self::BodiesInFlight { .. }
                | Self::RateLimited(_)
                | Self::LimiterUnavailable
                | Self::UpstreamUnavailable { .. }
                | Self::CredentialPending { .. }
        )
    }

    /// The message a caller sees: what happened and what to do next. Never contains a
    /// secret, a prompt or an internal detail.
    pub fn message(&self) -> String {
        match self {
            Self::MissingKey => "You didn't provide an API key. Send your tollgate key in an \
                Authorization header using Bearer auth (Authorization: Bearer tg-…). Create one with \
                `tollgate keys create --project P --env E`."
                .into(),
            Self::UnknownKey { prefix } => format!(
                "Incorrect API key provided: {prefix}. It is unknown, revoked or expired. Create a new \
                 key with `tollgate keys create --project P --env E` (or rotate it) and send it as \
                 Authorization: Bearer <key>."
            ),
            Self::Forbidden { role, action } => format!(
                "This key's role ({role}) may not {action}. Use a key with the member or admin role."
            ),
            Self::KeySuspended { reason } => format!(
                "This API key was suspended for unusual usage ({reason}) detected by the gateway. \
                 Ask an admin of its project to review the key's recent usage and resume it \
                 (`tollgate keys resume KEY_ID`), or rotate it if it may have leaked."
            ),
            Self::ExpiredKey { key_id } => format!(
                "This API key ({key_id}) has expired. Rotate it with `tollgate keys rotate \
                 {key_id}` and send the new key as Authorization: Bearer <key>."
            ),
            Self::RotatedKey { key_id, successor } => format!(
                "This API key ({key_id}) was rotated and its grace period has ended; use its \
                 successor ({successor}) instead."
            ),
            Self::SuspendedKey { key_id } => format!(
                "This API key ({key_id}) is suspended. An admin of its project can resume it \
                 with `tollgate keys resume {key_id}` (the reason is in `tollgate audit`)."
            ),
            // OpenAI's own words; a path outside /v1 is most often a base URL set
            // without it, so that is said too.
            Self::InvalidUrl { method, path } if path.starts_with("/v1/") => {
                format!("Invalid URL ({method} {path})")
            }
            Self::InvalidUrl { method, path } if path.starts_with("/admin/") => format!(
                "Invalid URL ({method} {path}). The admin API's routes are listed in \
                 docs/admin-api.md."
            ),
            Self::InvalidUrl { method, path } => format!(
                "Invalid URL ({method} {path}). tollgate serves the OpenAI API under /v1: \
                 set your SDK's base URL to this gateway's address followed by /v1 (for \
                 example http://127.0.0.1:8080/v1)."
            ),
            Self::BodyTooLarge { limit } => format!(
                "The request body is larger than this gateway accepts ({limit} bytes). Send a \
                 smaller request, or raise server.max_body_bytes."
            ),
            Self::BodyTimeout => "The request body was not received in time. Check the client's \
                network and retry."
                .into(),
            Self::InvalidJson { detail } => format!(
                "We could not parse the JSON body of your request ({detail}). The API expects a JSON \
                 payload with Content-Type: application/json."
            ),
            Self::InvalidRequest { message, .. } => message.clone(),
            Self::UpstreamUnreachable { attempts } => format!(
                "The upstream API could not be reached after {attempts} attempt(s). This is usually \
                 temporary: retry with backoff."
            ),
            Self::UpstreamTimeout { attempts } => format!(
                "The upstream API did not answer in time after {attempts} attempt(s). Retry, or ask \
                 for fewer output tokens."
            ),
            Self::NotReady { reason } => format!("The gateway is not ready: {reason}. Retry shortly."),
            Self::BodiesInFlight { limit } => format!(
                "The gateway is holding as many large request bodies as it may at once \
                 ({}, server.max_body_bytes_in_flight) and none finished in time. Retry \
                 shortly; if this persists, send fewer large requests at once or raise the limit.",
                bytes_text(*limit)
            ),
            Self::Internal => "The gateway had an internal error. Retry; if it persists, check the \
                gateway's logs for this request id."
                .into(),
            Self::AdminForbidden { role, action } => format!(
                "This key's role ({role}) may not {action} over the admin API. Use a key with \
                 the admin role of this project (see docs/admin-api.md)."
            ),
            Self::GatewayAdminOnly { action } => format!(
                "Only a key of the reserved _gateway project (role admin; viewer to read) may \
                 {action} over the admin API; this key belongs to a project. Create one with \
                 `tollgate keys create --project _gateway --env prod --role admin`."
            ),
            Self::HostCredentialRef { scheme } => format!(
                "A {scheme} reference runs a command or reads a file on the gateway's host, \
                 so the admin API takes only env:NAME references. An operator sets {scheme} \
                 references on the host: `tollgate projects set-credential PROJECT --env ENV \
                 --ref {scheme}...`."
            ),
            Self::NotFound { what: "project", id } => {
                format!("No project {id:?}. List projects with GET /admin/v1/projects.")
            }
            Self::NotFound {
                what: "stored catalog entry",
                id,
            } => format!(
                "No stored catalog entry {id:?}: the built-in and configured entries cannot be \
                 deleted. List the catalog with GET /admin/v1/models/catalog."
            ),
            Self::NotFound { what, id } => {
                let list = match *what {
                    "rate limit" => "limits",
                    "output cap" => "caps",
                    "budget" => "budgets",
                    "model alias" => "models/aliases",
                    _ => "keys",
                };
                format!("No {what} {id:?} in this key's project. List them with GET /admin/v1/{list}.")
            }
            Self::CredentialPending { project, env } => format!(
                "The provider credential of project {project:?} (environment {env:?}) is new \
                 to this gateway and still being read, so the call was not sent. Retry in a \
                 moment."
            ),
            Self::CredentialUnavailable { project, env } => format!(
                "The provider credential of project {project:?} (environment {env:?}) cannot be \
                 read by the gateway, so the call was not sent. Ask an admin to check the \
                 reference with `tollgate projects show {project}` and the gateway's logs."
            ),
            Self::ClientGone => "The connection closed before the request body was complete: \
                send the whole body (its Content-Length, or every chunk)."
                .into(),
            Self::CredentialRejected { project, env } => format!(
                "The upstream API rejected the gateway's provider credential for project \
                 {project:?} (environment {env:?}); your tollgate key was accepted. The call \
                 cannot succeed until an admin fixes that credential (`upstream.api_key`, or \
                 the project's own: `tollgate projects show {project}`); the gateway's log has \
                 the upstream's request id."
            ),
            Self::RateLimited(r) => format!(
                "Rate limit reached for {} on {} by the limit of {}: Limit {}, Used {}, \
                 Requested {}. Please try again in {}. A project admin can review the limits \
                 with `tollgate limits list`.",
                r.model,
                r.dimension.per_min(),
                r.scope,
                r.limit,
                r.used,
                r.requested,
                ratelimit::format_go_duration(crate::admit::round_up_ms(r.retry_after)),
            ),
            Self::RequestExceedsLimit(r) => format!(
                "Request too large for {} on tokens per min (TPM) by the limit of {}: Limit {}, \
                 Requested {} (input plus the output tokens allowed). Retrying will not help: \
                 send less input, set a lower max_output_tokens (max_completion_tokens / \
                 max_tokens on Chat), or ask a project admin to raise the limit.",
                r.model, r.scope, r.limit, r.requested
            ),
            Self::BudgetExceeded(r) => {
                let (period, when) = match r.period {
                    BudgetPeriod::Day => ("daily", "today"),
                    BudgetPeriod::Month => ("monthly", "this month"),
                };
                format!(
                    "You exceeded your current quota: the {period} budget of {} is ${} \
                     (spent ${} {when}, ${} held by calls in flight), and this request may \
                     cost up to ${} (its input plus the output it allows, at the price of the \
                     dearest model that may serve it). Retrying will not \
                     help before the budget resets at {} 00:00 UTC. Ask for fewer output \
                     tokens (max_output_tokens / max_completion_tokens / max_tokens), or ask \
                     a project admin to raise the budget (`tollgate budgets show`, \
                     `tollgate budgets set`).",
                    r.scope,
                    usd(r.limit_usd_nanos),
                    usd(r.spent_usd_nanos),
                    usd(r.reserved_usd_nanos),
                    usd(r.requested_usd_nanos),
                    utc_day(r.resets_at_ms),
                )
            }
            Self::UnpricedModel { model } => format!(
                "A spend budget governs this key, but the gateway has no price for the model \
                 {model:?}, so the call cannot be counted and was not sent. Ask the gateway's \
                 operator to add the model with its prices to the configuration ([[models]] \
                 with id, input_per_1m and output_per_1m; see `tollgate models`), or use a \
                 model the catalog prices."
            ),
            Self::LimiterUnavailable => "The gateway's rate-limit store (Redis) is unreachable, \
                and this gateway refuses rate-limited and budgeted calls meanwhile (redis.on_failure = \
                \"closed\"). Retry shortly; an operator can check Redis or set \
                redis.on_failure to \"local\"."
                .into(),
            Self::UpstreamUnavailable {
                upstreams,
                retry_after_ms,
            } => format!(
                "Every upstream that could serve this request is unavailable: the circuit \
                 breaker is open for {} after repeated failures, so the request was not sent. \
                 The next probe goes through in about {} s; retry then.",
                upstreams.join(", "),
                retry_after_ms.div_ceil(1000).max(1)
            ),
            Self::ModelNotFound {
                model,
                served,
                filter,
            } => {
                let via = served
                    .as_deref()
                    .map(|s| format!(" (the alias of {s})"))
                    .unwrap_or_default();
                format!(
                    "The model `{model}`{via} does not exist or you do not have access to it. {} \
                     A project admin can change the lists with `tollgate models allow` / \
                     `tollgate models deny`.",
                    filter.describe()
                )
            }
            Self::ContextLengthExceeded(r) => {
                let asked = r
                    .output_field
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default();
                format!(
                    "This model's maximum context length is {} tokens. However, you requested \
                     {} tokens ({} in the {}, {} in the completion{asked}). Please reduce the \
                     length of the {} or of the completion. Model: {}.",
                    r.window,
                    r.input_tokens.saturating_add(r.output_tokens),
                    r.input_tokens,
                    r.param,
                    r.output_tokens,
                    r.param,
                    r.model
                )
            }
            Self::InvalidParameter { message, .. } => message.clone(),
            Self::InvalidStructuredOutput {
                path,
                detail,
                attempts,
            } => {
                let at = if path.is_empty() { "the root" } else { path };
                format!(
                    "The model's answer does not match the requested JSON schema at {at}: \
                     {detail}. tollgate withheld it after {attempts} upstream call(s). Retry \
                     the request, or simplify the schema (strict mode helps the model keep to it)."
                )
            }
        }
    }

    /// The OpenAI error envelope.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope::new(
            self.message(),
            self.openai_type(),
            self.param(),
            self.code(),
        )
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.envelope()).unwrap_or_default();
        let mut res = (self.status(), body).into_response();
        let headers = res.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self,
            Self::MissingKey
                | Self::UnknownKey { .. }
                | Self::ExpiredKey { .. }
                | Self::RotatedKey { .. }
        ) {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate\""),
            );
        }
        // A wrong key or a refused role will not fix itself: stop the SDKs retrying.
        let should_retry = if self.retryable() { "true" } else { "false" };
        headers.insert("x-should-retry", HeaderValue::from_static(should_retry));
        rate_limit_headers(&self, headers);
        res.extensions_mut().insert(self);
        res
    }
}

/// A rate-limit refusal's headers: the six `x-ratelimit-*` (also on a budget refusal
/// of a call a rate limit governs), and on a retryable rate-limit refusal
/// `retry-after` (whole seconds, rounded up) and `retry-after-ms` (the exact wait).
fn rate_limit_headers(e: &GatewayError, headers: &mut http::HeaderMap) {
    if let GatewayError::CredentialPending { .. } = e {
        headers.insert(ratelimit::RETRY_AFTER, HeaderValue::from_static("1"));
        return;
    }
    if let GatewayError::UpstreamUnavailable { retry_after_ms, .. } = e {
        let secs = retry_after_ms.div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            headers.insert(ratelimit::RETRY_AFTER, v);
        }
        return;
    }
    let (info, wait) = match e {
        GatewayError::RateLimited(r) => (&r.headers, Some(r.retry_after)),
        GatewayError::RequestExceedsLimit(r) => (&r.headers, None),
        GatewayError::BudgetExceeded(r) => (&r.headers, None),
        _ => return,
    };
    insert_rate_limit_info(headers, info);
    if let Some(wait) = wait {
        let ms = wait.as_micros().div_ceil(1000).max(1);
        let secs = ms.div_ceil(1000).max(1);
        for (name, v) in [
            (ratelimit::RETRY_AFTER, secs.to_string()),
            (ratelimit::RETRY_AFTER_MS, ms.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(name, v);
            }
        }
    }
}

/// Writes the `x-ratelimit-*` headers `info` has, replacing any already there. Sent
/// on every governed call: names are constants and numbers go straight into header
/// values, without an intermediate string.
pub fn insert_rate_limit_info(headers: &mut http::HeaderMap, info: &RateLimitInfo) {
    use http::HeaderName;
    const LIMIT_REQUESTS: HeaderName = HeaderName::from_static(ratelimit::LIMIT_REQUESTS);
    const REMAINING_REQUESTS: HeaderName = HeaderName::from_static(ratelimit::REMAINING_REQUESTS);
    const RESET_REQUESTS: HeaderName = HeaderName::from_static(ratelimit::RESET_REQUESTS);
    const LIMIT_TOKENS: HeaderName = HeaderName::from_static(ratelimit::LIMIT_TOKENS);
    const REMAINING_TOKENS: HeaderName = HeaderName::from_static(ratelimit::REMAINING_TOKENS);
    const RESET_TOKENS: HeaderName = HeaderName::from_static(ratelimit::RESET_TOKENS);
    // All six values are written into one buffer and each header value is a slice of
    // it: one allocation per answer instead of one or two per header.
    let mut text = String::with_capacity(96);
    let mut spans: [Option<(HeaderName, usize, usize)>; 6] = Default::default();
    let counts = [
        (LIMIT_REQUESTS, info.limit_requests),
        (REMAINING_REQUESTS, info.remaining_requests),
        (LIMIT_TOKENS, info.limit_tokens),
        (REMAINING_TOKENS, info.remaining_tokens),
    ];
    for ((name, v), slot) in counts.into_iter().zip(&mut spans) {
        if let Some(v) = v {
            let start = text.len();
            text.push_str(itoa::Buffer::new().format(v));
            *slot = Some((name, start, text.len()));
        }
    }
    let resets = [
        (RESET_REQUESTS, info.reset_requests),
        (RESET_TOKENS, info.reset_tokens),
    ];
    for ((name, d), slot) in resets.into_iter().zip(&mut spans[4..]) {
        if let Some(d) = d {
            let start = text.len();
            ratelimit::write_go_duration(&mut text, d);
            *slot = Some((name, start, text.len()));
        }
    }
    let text = bytes::Bytes::from(text);
    for (name, start, end) in spans.into_iter().flatten() {
        if let Ok(v) = HeaderValue::from_maybe_shared(text.slice(start..end)) {
            headers.insert(name, v);
        }
    }
}

/// A byte count as a person would write it: `128 MiB`, or `65536 bytes` when it is not
/// a whole number of MiB.
fn bytes_text(n: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_replace_the_upstreams_and_only_those_known() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-ratelimit-limit-requests",
            HeaderValue::from_static("10000"),
        );
        h.insert(
            "x-ratelimit-limit-tokens",
            HeaderValue::from_static("2000000"),
        );
        let info = RateLimitInfo {
            limit_requests: Some(500),
            remaining_requests: Some(499),
            reset_requests: Some(std::time::Duration::from_millis(1005)),
            reset_tokens: Some(std::time::Duration::from_micros(250)),
            ..RateLimitInfo::default()
        };
        insert_rate_limit_info(&mut h, &info);
        assert_eq!(h["x-ratelimit-limit-requests"], "500");
        assert_eq!(h["x-ratelimit-remaining-requests"], "499");
        assert_eq!(h["x-ratelimit-reset-requests"], "1.005s");
        assert_eq!(h["x-ratelimit-reset-tokens"], "250µs");
        // A dimension tollgate does not limit keeps the upstream's header.
        assert_eq!(h["x-ratelimit-limit-tokens"], "2000000");
        assert!(h.get("x-ratelimit-remaining-tokens").is_none());
        assert_eq!(h.len(), 5);
    }

    fn refusal(dimension: Dimension) -> RateRefusal {
        RateRefusal {
            dimension,
            model: "gpt-4o".into(),
            scope: "project shop".into(),
            limit: 100,
            used: 90,
            requested: 20,
            retry_after: std::time::Duration::from_millis(1500),
            headers: RateLimitInfo::default(),
        }
    }

    /// The table in docs/errors.md; keep both in step.
    #[test]
    fn error_table() {
        let cases: Vec<(GatewayError, u16, &str, Option<&str>)> = vec![
            (
                GatewayError::MissingKey,
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            (
                GatewayError::UnknownKey {
                    prefix: "tg-dev-abc".into(),
                },
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            (
                GatewayError::Forbidden {
                    role: "viewer".into(),
                    action: "call models",
                },
                403,
                "permission_error",
                Some("permission_denied"),
            ),
            (
                GatewayError::KeySuspended {
                    reason: "request_rate",
                },
                403,
                "permission_error",
                Some("key_suspended"),
            ),
            (
                GatewayError::ExpiredKey {
                    key_id: "key_1".into(),
                },
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            (
                GatewayError::RotatedKey {
                    key_id: "key_1".into(),
                    successor: "key_2".into(),
                },
                401,
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            (
                GatewayError::SuspendedKey {
                    key_id: "key_1".into(),
                },
                403,
                "permission_error",
                Some("key_suspended"),
            ),
            (
                GatewayError::InvalidUrl {
                    method: "GET".into(),
                    path: "/v1/x".into(),
                },
                404,
                "invalid_request_error",
                None,
            ),
            (
                GatewayError::BodyTooLarge { limit: 1 },
                413,
                "invalid_request_error",
                Some("request_too_large"),
            ),
            (
                GatewayError::BodyTimeout,
                408,
                "invalid_request_error",
                Some("request_timeout"),
            ),
            (
                GatewayError::InvalidJson { detail: "x".into() },
                400,
                "invalid_request_error",
                None,
            ),
            (
                GatewayError::InvalidRequest {
                    message: "m".into(),
                    param: Some("model".into()),
                },
                400,
                "invalid_request_error",
                None,
            ),
            (
                GatewayError::UpstreamUnreachable { attempts: 3 },
                502,
                "server_error",
                Some("upstream_unreachable"),
            ),
            (
                GatewayError::UpstreamTimeout { attempts: 1 },
                504,
                "server_error",
                Some("upstream_timeout"),
            ),
            (
                GatewayError::NotReady { reason: "x" },
                503,
                "service_unavailable_error",
                Some("not_ready"),
            ),
            (GatewayError::Internal, 500, "server_error", None),
            (
                GatewayError::AdminForbidden {
                    role: "viewer".into(),
                    action: "create or change keys",
                },
                403,
                "permission_error",
                Some("permission_denied"),
            ),
            (
                GatewayError::GatewayAdminOnly {
                    action: "manage projects",
                },
                403,
                "permission_error",
                Some("permission_denied"),
            ),
            (
                GatewayError::NotFound {
                    what: "key",
                    id: "key_x".into(),
                },
                404,
                "invalid_request_error",
                Some("not_found"),
            ),
            (
                GatewayError::CredentialUnavailable {
                    project: "shop".into(),
                    env: "prod".into(),
                },
                503,
                "service_unavailable_error",
                Some("provider_credential_unavailable"),
            ),
            (
                GatewayError::RateLimited(Box::new(refusal(Dimension::Requests))),
                429,
                "requests",
                Some("rate_limit_exceeded"),
            ),
            (
                GatewayError::RateLimited(Box::new(refusal(Dimension::Tokens))),
                429,
                "tokens",
                Some("rate_limit_exceeded"),
            ),
            (
                GatewayError::RequestExceedsLimit(Box::new(refusal(Dimension::Tokens))),
                429,
                "tokens",
                Some("rate_limit_exceeded"),
            ),
            (
                GatewayError::BudgetExceeded(Box::new(BudgetRefusal {
                    scope: "project shop, env prod".into(),
                    period: BudgetPeriod::Month,
                    limit_usd_nanos: 5_000_000_000,
                    spent_usd_nanos: 4_990_000_000,
                    reserved_usd_nanos: 0,
                    requested_usd_nanos: 20_000_000,
                    resets_at_ms: 1_775_001_600_000,
                    headers: RateLimitInfo::default(),
                })),
                429,
                "insufficient_quota",
                Some("insufficient_quota"),
            ),
            (
                GatewayError::UnpricedModel {
                    model: "llama3".into(),
                },
                400,
                "invalid_request_error",
                Some("model_not_priced"),
            ),
            (
                GatewayError::LimiterUnavailable,
                503,
                "service_unavailable_error",
                Some("limiter_unavailable"),
            ),
            (
                GatewayError::UpstreamUnavailable {
                    upstreams: vec!["primary".into()],
                    retry_after_ms: 1_500,
                },
                503,
                "service_unavailable_error",
                Some("upstream_unavailable"),
            ),
            (
                GatewayError::ModelNotFound {
                    model: "gpt-4o".into(),
                    served: None,
                    filter: Box::new(ModelFilter {
                        allow: Some(vec!["gpt-4o-mini".into()]),
                        deny: vec![],
                    }),
                },
                404,
                "invalid_request_error",
                Some("model_not_found"),
            ),
            (
                GatewayError::ContextLengthExceeded(Box::new(ContextRefusal {
                    model: "gpt-4o".into(),
                    window: 128_000,
                    input_tokens: 100_000,
                    output_tokens: 30_000,
                    param: "input",
                    output_field: Some("max_output_tokens"),
                })),
                400,
                "invalid_request_error",
                Some("context_length_exceeded"),
            ),
            (
                GatewayError::InvalidParameter {
                    message: "m".into(),
                    param: "text.format.schema".into(),
                    code: "invalid_json_schema",
                },
                400,
                "invalid_request_error",
                Some("invalid_json_schema"),
            ),
            (
                GatewayError::InvalidStructuredOutput {
                    path: "/age".into(),
                    detail: "\"x\" is not of type \"integer\"".into(),
                    attempts: 2,
                },
                502,
                "server_error",
                Some("invalid_structured_output"),
            ),
            (
                GatewayError::InvalidParameter {
                    message: "m".into(),
                    param: "tools[0].parameters".into(),
                    code: "invalid_function_parameters",
                },
                400,
                "invalid_request_error",
                Some("invalid_function_parameters"),
            ),
            (
                GatewayError::InvalidParameter {
                    message: "m".into(),
                    param: "response_format".into(),
                    code: "unsupported_parameter",
                },
                400,
                "invalid_request_error",
                Some("unsupported_parameter"),
            ),
        ];
        for (e, status, kind, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.openai_type(), kind, "{e:?}");
            assert_eq!(e.code(), code, "{e:?}");
            let v = serde_json::to_value(e.envelope()).unwrap();
            for k in ["message", "type", "param", "code"] {
                assert!(v["error"].get(k).is_some(), "{e:?} lacks {k}");
            }
        }
    }

    #[test]
    fn auth_errors_say_what_to_do_and_stop_sdk_retries() {
        let res = GatewayError::UnknownKey {
            prefix: "tg-dev-abc…".into(),
        }
        .into_response();
        assert_eq!(res.headers()["x-should-retry"], "false");
        assert!(GatewayError::MissingKey
            .message()
            .contains("tollgate keys create"));
        let expired = GatewayError::ExpiredKey {
            key_id: "key_1".into(),
        };
        assert!(expired.message().contains("tollgate keys rotate key_1"));
        assert_eq!(expired.into_response().headers()["x-should-retry"], "false");
        let rotated = GatewayError::RotatedKey {
            key_id: "key_1".into(),
            successor: "key_2".into(),
        };
        assert!(rotated.message().contains("rotated"));
        assert!(rotated.message().contains("successor (key_2)"));
        let suspended = GatewayError::SuspendedKey {
            key_id: "key_1".into(),
        };
        assert!(suspended.message().contains("tollgate keys resume key_1"));
        let res = GatewayError::UpstreamTimeout { attempts: 2 }.into_response();
        assert_eq!(res.headers()["x-should-retry"], "true");
    }

    #[test]
    fn rate_limit_refusals_carry_the_wait_and_the_six_headers() {
        let info = RateLimitInfo {
            limit_requests: Some(60),
            remaining_requests: Some(0),
            reset_requests: Some(std::time::Duration::from_secs(60)),
            limit_tokens: Some(1000),
            remaining_tokens: Some(400),
            reset_tokens: Some(std::time::Duration::from_millis(36_000)),
        };
        let e = GatewayError::RateLimited(Box::new(RateRefusal {
            limit: 60,
            used: 60,
            retry_after: std::time::Duration::from_micros(1_000_001),
            headers: info,
            ..refusal(Dimension::Requests)
        }));
        assert!(
            e.message().contains("Please try again in 1.001s"),
            "{}",
            e.message()
        );
        let res = e.into_response();
        let h = res.headers();
        assert_eq!(h["retry-after-ms"], "1001");
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["x-should-retry"], "true");
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert_eq!(h["x-ratelimit-reset-requests"], "1m0s");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "400");
        assert_eq!(h["x-ratelimit-reset-tokens"], "36s");
        let never = GatewayError::RequestExceedsLimit(Box::new(RateRefusal {
            limit: 100,
            requested: 200,
            headers: info,
            ..refusal(Dimension::Tokens)
        }));
        assert!(never.message().contains("Retrying will not help"));
        let res = never.into_response();
        assert_eq!(res.headers()["x-should-retry"], "false");
        assert!(res.headers().get("retry-after").is_none());
        assert_eq!(res.headers()["x-ratelimit-limit-tokens"], "1000");
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn not_found_messages_point_where_the_caller_can_look() {
        let admin = GatewayError::InvalidUrl {
            method: "GET".into(),
            path: "/admin/v1/nope".into(),
        }
        .message();
        assert!(
            admin.contains("docs/admin-api.md") && !admin.contains("base URL"),
            "{admin}"
        );
        let root = GatewayError::InvalidUrl {
            method: "POST".into(),
            path: "/chat/completions".into(),
        }
        .message();
        assert!(root.contains("base URL"), "{root}");
        let catalog = GatewayError::NotFound {
            what: "stored catalog entry",
            id: "llama".into(),
        }
        .message();
        assert!(
            catalog.contains("GET /admin/v1/models/catalog") && !catalog.contains("keys"),
            "{catalog}"
        );
    }

    #[test]
    fn a_spent_budget_says_what_and_when_and_stops_sdk_retries() {
        let e = GatewayError::BudgetExceeded(Box::new(BudgetRefusal {
            scope: "project shop, env prod".into(),
            period: BudgetPeriod::Month,
            limit_usd_nanos: 5_000_000_000,
            spent_usd_nanos: 4_990_000_000,
            reserved_usd_nanos: 1_000,
            requested_usd_nanos: 20_000_000,
            // 2026-04-01 00:00 UTC.
            resets_at_ms: 1_775_001_600_000,
            headers: RateLimitInfo::default(),
        }));
        let m = e.message();
        for part in [
            "monthly budget of project shop, env prod is $5.000000",
            "spent $4.990000 this month",
            "$0.000001 held",
            "up to $0.020000",
            "2026-04-01 00:00 UTC",
            "tollgate budgets set",
        ] {
            assert!(m.contains(part), "{part:?} not in {m}");
        }
        let res = e.into_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()["x-should-retry"], "false");
        assert!(res.headers().get("retry-after").is_none());
    }
}
