//! The records the store keeps, independent of the backend.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A project: the unit that owns keys, environments and (later) limits and budgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    /// The longest lifetime a new key of this project may have; `None` means
    /// [`DEFAULT_MAX_KEY_AGE_MS`].
    pub max_key_age_ms: Option<i64>,
    /// The project's default provider credential: a secret reference (`env:NAME`,
    /// `file:PATH`, `exec:CMD`), never a secret value. `None` means the gateway's
    /// global `upstream.api_key`.
    pub upstream_api_key: Option<String>,
    /// Whether anomaly detection suspends this project's flagged keys; `None` follows
    /// the gateway's `anomaly.auto_suspend`.
    pub anomaly_auto_suspend: Option<bool>,
}

/// The settings a new project starts with; `None` everywhere means the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewProject {
    /// The default provider credential: a secret reference, never a value.
    pub upstream_api_key: Option<String>,
    /// The longest lifetime of the project's new keys (`None`: 90 days).
    pub max_key_age_ms: Option<i64>,
    /// Anomaly auto-suspend for the project (`None`: the gateway's setting).
    pub anomaly_auto_suspend: Option<bool>,
}

/// Project names starting with this are reserved for tollgate itself.
pub const RESERVED_PROJECT_PREFIX: &str = "_";

/// The reserved project whose `admin` keys administer the whole gateway (every
/// project) over the admin API. Created on demand when a key is made for it.
pub const GATEWAY_PROJECT: &str = "_gateway";

/// A project with the number of its keys that are not revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectSummary {
    #[serde(flatten)]
    pub project: Project,
    pub active_keys: u64,
}

/// One environment of a project: its provider credential reference, if set, and how
/// many keys that are not revoked it has. `created_at_ms` is `None` for an
/// environment known only from its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectEnv {
    pub env: String,
    pub upstream_api_key: Option<String>,
    pub created_at_ms: Option<i64>,
    pub active_keys: u64,
}

/// A project with its environments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectDetail {
    #[serde(flatten)]
    pub project: Project,
    pub active_keys: u64,
    pub envs: Vec<ProjectEnv>,
}

/// Which requests a rate-limit rule governs: those of `project`, narrowed to an
/// environment, a key and a model where these are set (`None`: any).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct LimitScope {
    pub project: String,
    pub env: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
}

impl LimitScope {
    /// Whether a request of this key, project, environment and model is governed.
    /// Models match exactly (`gpt-4o` does not cover `gpt-4o-mini`).
    pub fn matches(&self, project: &str, env: &str, key_id: &str, model: Option<&str>) -> bool {
        self.project == project
            && self.env.as_deref().is_none_or(|e| e == env)
            && self.key_id.as_deref().is_none_or(|k| k == key_id)
            && self.model.as_deref().is_none_or(|m| Some(m) == model)
    }

    /// `project/env/key/model`, with `*` for "any": the audit target.
    pub fn target(&self) -> String {
        let part = |p: &Option<String>| p.clone().unwrap_or_else(|| "*".to_owned());
        format!(
            "{}/{}/{}/{}",
            self.project,
            part(&self.env),
            part(&self.key_id),
            part(&self.model)
        )
    }
}

impl fmt::Display for LimitScope {
    /// `project shop, env prod, key key_x, model gpt-4o` (only the parts set).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "project {}", self.project)?;
        for (name, part) in [
            ("env", &self.env),
            ("key", &self.key_id),
            ("model", &self.model),
        ] {
            if let Some(v) = part {
                write!(f, ", {name} {v}")?;
            }
        }
        Ok(())
    }
}

/// A stored rate-limit rule: requests and/or tokens per minute for a scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitRule {
    #[serde(flatten)]
    pub scope: LimitScope,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Who a spend budget governs: a whole project, one of its environments, or one of
/// its keys (never an environment and a key at once).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct BudgetScope {
    pub project: String,
    pub env: Option<String>,
    pub key_id: Option<String>,
}

impl BudgetScope {
    /// `project/env/key`, with `*` for "any": the audit target.
    pub fn target(&self) -> String {
        let part = |p: &Option<String>| p.clone().unwrap_or_else(|| "*".to_owned());
        format!(
            "{}/{}/{}",
            self.project,
            part(&self.env),
            part(&self.key_id)
        )
    }
}

impl fmt::Display for BudgetScope {
    /// `project shop`, `project shop, env prod` or `project shop, key key_x`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "project {}", self.project)?;
        if let Some(env) = &self.env {
            write!(f, ", env {env}")?;
        }
        if let Some(key) = &self.key_id {
            write!(f, ", key {key}")?;
        }
        Ok(())
    }
}

/// The two budget periods, calendar-aligned in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The start of the period holding `at_ms` and the start of the next one (Unix
    /// milliseconds, UTC).
    pub fn bounds(self, at_ms: i64) -> (i64, i64) {
        const DAY_MS: i64 = 86_400_000;
        let day = at_ms.div_euclid(DAY_MS);
        match self {
            Self::Day => (day * DAY_MS, (day + 1) * DAY_MS),
            Self::Month => {
                let (y, m, _) = civil_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) * DAY_MS,
                    days_from_civil(ny, nm, 1) * DAY_MS,
                )
            }
        }
    }
}

/// The UTC calendar date (year, month 1–12, day 1–31) holding `at_ms`.
pub fn civil_date(at_ms: i64) -> (i64, i64, i64) {
    civil_from_days(at_ms.div_euclid(86_400_000))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The soft threshold when none is given: 80 % of a limit.
pub const DEFAULT_SOFT_PERCENT: u32 = 80;

/// A stored spend budget: USD limits per day and/or month, in nano-USD (10⁻⁹ USD).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Budget {
    #[serde(flatten)]
    pub scope: BudgetScope,
    pub daily_usd_nanos: Option<u64>,
    pub monthly_usd_nanos: Option<u64>,
    /// Percent of a limit at which spend is announced once per period (1–100).
    pub soft_percent: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Budget {
    /// The limit of one period, if the budget has one.
    pub fn limit(&self, period: BudgetPeriod) -> Option<u64> {
        match period {
            BudgetPeriod::Day => self.daily_usd_nanos,
            BudgetPeriod::Month => self.monthly_usd_nanos,
        }
    }
}

/// What the priced usage of one project, environment and key sums to since the
/// start of the current day and month (unpriced records count nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Spend {
    pub project: String,
    pub env: String,
    pub key_id: String,
    pub day_usd_nanos: u64,
    pub month_usd_nanos: u64,
}

/// What a request above an output cap gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OverCap {
    /// The request's maximum is lowered to the cap.
    #[default]
    Clamp,
    /// The request is refused with 400.
    Refuse,
}

impl OverCap {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clamp => "clamp",
            Self::Refuse => "refuse",
        }
    }
}

impl FromStr for OverCap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "clamp" => Ok(Self::Clamp),
            "refuse" => Ok(Self::Refuse),
            other => Err(format!("{other:?} is not clamp or refuse")),
        }
    }
}

/// Output caps: the largest output a request may ask for, what happens above it, a
/// default when a request asks for none, and the temperatures allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OutputCap {
    pub max_output_tokens: Option<u64>,
    pub over: OverCap,
    pub default_output_tokens: Option<u64>,
    pub temperature_min: Option<f64>,
    pub temperature_max: Option<f64>,
}

/// Stored output caps of a project (`key_id` `None`) or of one of its keys (which
/// then replace the project's for that key).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputCapRule {
    pub project: String,
    pub key_id: Option<String>,
    #[serde(flatten)]
    pub cap: OutputCap,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A project's alias for a model: a request naming `alias` is sent to `model`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelAlias {
    pub project: String,
    pub alias: String,
    pub model: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Which kind of model list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    /// Only these models may be used.
    Allow,
    /// These models may not be used.
    Deny,
}

impl AccessKind {
    /// The stored name: `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl FromStr for AccessKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            other => Err(format!("{other:?} is not allow or deny")),
        }
    }
}

/// A project's allow- or deny-list of models, for one environment (`env`) or for
/// every environment (`env` `None`). An id ending in `*` matches by prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelAccess {
    pub project: String,
    pub env: Option<String>,
    pub kind: AccessKind,
    pub models: Vec<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A model catalog entry kept in the store (`tollgate models set`): it replaces the
/// config's and the built-in entry of the same id on every server. Prices are USD
/// **per 1M tokens**, held exactly as integer milli-USD per 1M tokens (`$0.075` per 1M
/// is `75`). The gateway checks the fields' meaning (tokenizer family, latency class,
/// capabilities, date) before storing; the store checks only the id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CatalogModel {
    pub id: String,
    /// `o200k_base` or `cl100k_base`; `None`: guessed from the id.
    pub family: Option<String>,
    pub context_window: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub input_per_1m_milli_usd: u64,
    /// `None`: cached input is billed at the input price.
    pub cached_input_per_1m_milli_usd: Option<u64>,
    /// `None`: the model produces no output tokens.
    pub output_per_1m_milli_usd: Option<u64>,
    /// `fast`, `medium` or `slow`; `None`: medium.
    pub latency: Option<String>,
    /// `text`, `vision`, `tools`, …; empty: text.
    pub capabilities: Vec<String>,
    pub best_use: Option<String>,
    /// `YYYY-MM-DD`: when the prices were checked.
    pub prices_checked: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Every stored provider credential reference, for the gateway's resolution chain:
/// an environment's reference, else its project's, else the global default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialRefs {
    /// (project, env) → reference.
    pub envs: BTreeMap<(String, String), String>,
    /// project → default reference.
    pub projects: BTreeMap<String, String>,
}

impl CredentialRefs {
    /// The reference calls of `project`/`env` use; `None` means the global default.
    pub fn for_key(&self, project: &str, env: &str) -> Option<&str> {
        self.envs
            .get(&(project.to_owned(), env.to_owned()))
            .or_else(|| self.projects.get(project))
            .map(String::as_str)
    }
}

/// A key's default (and, unless the project says otherwise, longest) lifetime: 90 days.
pub const DEFAULT_MAX_KEY_AGE_MS: i64 = 90 * DAY_MS;

/// Keys expiring within this window are due for rotation: 14 days.
pub const ROTATION_WARNING_MS: i64 = 14 * DAY_MS;

const DAY_MS: i64 = 86_400_000;

impl Project {
    /// The project's maximum key age, or the default.
    pub fn effective_max_key_age_ms(&self) -> i64 {
        self.max_key_age_ms.unwrap_or(DEFAULT_MAX_KEY_AGE_MS)
    }
}

/// Who made a change and through what, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `cli:alice`, `key:key_…`, `system`.
    pub actor: String,
    /// `cli`, `admin-api`, `gateway`, …
    pub source: String,
}

impl Actor {
    pub fn new(actor: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            source: source.into(),
        }
    }

    /// Changes made by tollgate itself (start-up, the demo key, tests).
    pub fn system() -> Self {
        Self::new("system", "system")
    }
}

/// An audit entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// A JSON object as text; never a secret.
    pub detail: String,
    pub source: String,
}

/// One row of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub source: String,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manage keys and projects, call models.
    Admin,
    /// Call models, read its own usage.
    Member,
    /// Read usage and key metadata of its project; no model calls.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            "viewer" => Ok(Self::Viewer),
            other => Err(format!(
                "unknown role {other:?}: use admin, member or viewer"
            )),
        }
    }
}

/// The priority lane of a request (`x-tollgate-priority`), and a key's default one.
/// Batch requests wait for capacity (and leave a reserve of every rate limit to
/// interactive ones); interactive requests never wait on batch work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    #[default]
    Interactive,
    Batch,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Batch => "batch",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lane {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "interactive" => Ok(Self::Interactive),
            "batch" => Ok(Self::Batch),
            other => Err(format!("unknown lane {other:?}: use interactive or batch")),
        }
    }
}

/// A key to insert: everything but the secret, which never reaches the store.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub project: String,
    pub env: String,
    pub role: Role,
    pub name: Option<String>,
    /// The visible start of the secret, for humans (`tg-dev-AbC1…`).
    pub prefix: String,
    /// Lowercase hex SHA-256 of the full secret.
    pub digest_hex: String,
    pub created_at_ms: i64,
    /// When the key stops working (unix ms).
    pub expires_at_ms: i64,
    /// The lane of the key's requests that send no `x-tollgate-priority`.
    pub lane: Lane,
}

/// Lifecycle state of a key at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    /// Rotated, and still accepted until its grace period ends.
    Retiring,
    /// Rotated, and its grace period has ended.
    Retired,
    Suspended,
    Expired,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
            Self::Suspended => "suspended",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored key (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    pub id: String,
    pub project: String,
    pub env: String,
    pub role: Role,
    pub name: Option<String>,
    pub prefix: String,
    #[serde(skip)]
    pub digest_hex: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub revoke_reason: Option<String>,
    pub expires_at_ms: i64,
    pub suspended_at_ms: Option<i64>,
    pub suspend_reason: Option<String>,
    /// The successor's id, once rotated.
    pub rotated_to: Option<String>,
    /// End of the grace period of a rotated key.
    pub retire_at_ms: Option<i64>,
    /// The lane of the key's requests that send no `x-tollgate-priority`.
    pub lane: Lane,
}

impl KeyRecord {
    /// The key's state at `now_ms`. Revocation wins over everything, then a finished
    /// rotation, expiry, suspension, and a rotation still in its grace period.
    pub fn state(&self, now_ms: i64) -> KeyState {
        if self.revoked_at_ms.is_some() {
            KeyState::Revoked
        } else if self.retire_at_ms.is_some_and(|at| now_ms >= at) {
            KeyState::Retired
        } else if now_ms >= self.expires_at_ms {
            KeyState::Expired
        } else if self.suspended_at_ms.is_some() {
            KeyState::Suspended
        } else if self.rotated_to.is_some() {
            KeyState::Retiring
        } else {
            KeyState::Active
        }
    }

    /// Whether the key should be rotated soon: not yet rotated, revoked or expired,
    /// and expiring within [`ROTATION_WARNING_MS`].
    pub fn due_for_rotation(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none()
            && self.rotated_to.is_none()
            && now_ms < self.expires_at_ms
            && self.expires_at_ms - now_ms <= ROTATION_WARNING_MS
    }
}

/// One proxied request, success or failure or client disconnect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub upstream_request_id: Option<String>,
    pub response_id: Option<String>,
    pub key_id: Option<String>,
    pub project: Option<String>,
    pub env: Option<String>,
    pub endpoint: String,
    pub model_requested: Option<String>,
    /// The `model` the upstream answered with: the version that actually served.
    pub model_served: Option<String>,
    pub status: u16,
    pub error_code: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub streamed: bool,
    /// The client went away before the answer was complete.
    pub client_disconnected: bool,
    pub attempts: u32,
    pub ttfb_ms: Option<u64>,
    pub latency_ms: u64,
    pub created_at_ms: i64,
    /// What the call cost in nano-USD (10⁻⁹ USD), from the model catalog; `None` when
    /// the model is not in the catalog (unknown, not free).
    pub cost_usd_nanos: Option<u64>,
    /// The priority lane the request ran in (`None`: refused before it was known).
    pub lane: Option<Lane>,
    /// The upstream's `x-ratelimit-remaining-requests` on its answer, if it sent one.
    pub upstream_remaining_requests: Option<u64>,
    /// The upstream's `x-ratelimit-remaining-tokens` on its answer, if it sent one.
    pub upstream_remaining_tokens: Option<u64>,
    /// The fallback target whose answer was relayed, as `<upstream>/<model>`, or
    /// `offline` for a configured offline answer (`None`: no target was reached).
    pub served_by: Option<String>,
    /// Targets that failed, or were skipped with their circuit open, before it.
    pub fallbacks: u32,
    /// What the response cache did for the call (`None`: the cache was not used).
    pub cache: Option<CacheOutcome>,
}

/// `served_by` of a call answered with its project's offline answer after every
/// upstream target failed.
pub const SERVED_OFFLINE: &str = "offline";

impl UsageRecord {
    /// Whether usage reports count the call as an error: an error status, a caller
    /// that left, or an error code on a 200 (a stream the upstream broke off). The
    /// store's totals (`tollgate usage`) count errors by the same rule in SQL.
    pub fn is_error(&self) -> bool {
        self.status >= 400 || self.client_disconnected || self.error_code.is_some()
    }

    /// Answered from the response cache (fresh or stale): no upstream tokens used.
    pub fn served_from_cache(&self) -> bool {
        matches!(self.cache, Some(CacheOutcome::Hit | CacheOutcome::Stale))
    }

    /// Whether a call that reported no usage is known to have cost nothing upstream:
    /// served from the cache or offline, refused or failed with an error status, or failed on the
    /// way (an error code on a 200, such as a stream the upstream broke off). A caller
    /// that left (499) is not: the upstream may have worked on regardless.
    pub fn failed_without_cost(&self) -> bool {
        self.served_from_cache()
            || self.served_by.as_deref() == Some(SERVED_OFFLINE)
            || (self.status >= 400 && self.status != 499)
            || (self.error_code.is_some() && !self.client_disconnected)
    }
}

/// What the response cache did for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheOutcome {
    /// Answered from the cache, without the upstream.
    Hit,
    /// Looked up, not found: the upstream answered (and the answer may be stored).
    Miss,
    /// `x-tollgate-cache: refresh`: the upstream answered and replaced the entry.
    Refresh,
    /// The upstream failed and an older cached answer was served instead.
    Stale,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Refresh => "refresh",
            Self::Stale => "stale",
        }
    }
}

impl fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CacheOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hit" => Ok(Self::Hit),
            "miss" => Ok(Self::Miss),
            "refresh" => Ok(Self::Refresh),
            "stale" => Ok(Self::Stale),
            other => Err(format!("unknown cache outcome {other:?}")),
        }
    }
}

/// How `usage` totals are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Key,
    Project,
    Model,
    Day,
}

/// What totals to compute.
#[derive(Debug, Clone)]
pub struct UsageFilter {
    pub group: UsageGroup,
    pub since_ms: i64,
}

/// Totals for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub group: String,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// Sum of the priced records' costs in nano-USD; `None` when none was priced.
    pub cost_usd_nanos: Option<u64>,
    /// Records without a cost (model not in the catalog, or written before costs were
    /// recorded): the cost total leaves them out.
    pub unpriced: u64,
    /// Calls answered from the response cache (`hit` or `stale`), among `requests`.
    pub cache_hits: u64,
}

/// Why `old` cannot be rotated into `successor`, if it cannot.
pub(crate) fn check_rotation(old: &KeyRecord, successor: &NewKey) -> crate::Result<()> {
    if old.revoked_at_ms.is_some() {
        return Err(crate::StoreError::Invalid(format!(
            "key {} is revoked: create a new key instead",
            old.id
        )));
    }
    if let Some(next) = &old.rotated_to {
        return Err(crate::StoreError::Conflict(format!(
            "key {} was already rotated (its successor is {next})",
            old.id
        )));
    }
    if successor.project != old.project || successor.env != old.env || successor.role != old.role {
        return Err(crate::StoreError::Invalid(
            "a successor must have the same project, environment and role".into(),
        ));
    }
    Ok(())
}

/// The newest `created_at_ms` of each key in a usage batch, ordered by key id: the
/// writer issues one `last_used` update per key rather than one per record, and the
/// fixed order means two concurrent batches lock key rows in the same order (no
/// deadlock on PostgreSQL).
pub(crate) fn last_used_by_key(records: &[UsageRecord]) -> Vec<(&str, i64)> {
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for r in records {
        if let Some(key_id) = r.key_id.as_deref() {
            let at = newest.entry(key_id).or_insert(r.created_at_ms);
            *at = (*at).max(r.created_at_ms);
        }
    }
    newest.into_iter().collect()
}

/// The records whose request id is not in `stored`: what a batch written again (after a
/// commit whose outcome was lost) still has to add.
pub(crate) fn without(
    records: &[UsageRecord],
    stored: &std::collections::HashSet<String>,
) -> Vec<UsageRecord> {
    records
        .iter()
        .filter(|r| !stored.contains(&r.request_id))
        .cloned()
        .collect()
}

/// The priced spend of a batch of usage records per project, environment, key and UTC
/// day (start ms): what the batch adds to the `usage_spend_daily` roll-up, from which
/// budgets read a period's spend without scanning its usage rows.
pub(crate) fn spend_by_day(records: &[UsageRecord]) -> Vec<(&str, &str, &str, i64, i64)> {
    let mut sums: BTreeMap<(&str, &str, &str, i64), i64> = BTreeMap::new();
    for r in records {
        let Some(cost) = r.cost_usd_nanos.filter(|c| *c > 0) else {
            continue;
        };
        let day = r.created_at_ms.div_euclid(DAY_MS) * DAY_MS;
        let key = (
            r.project.as_deref().unwrap_or_default(),
            r.env.as_deref().unwrap_or_default(),
            r.key_id.as_deref().unwrap_or_default(),
            day,
        );
        let sum = sums.entry(key).or_insert(0);
        let cost = i64::try_from(cost).unwrap_or(i64::MAX);
        *sum = sum.saturating_add(cost).min(DAILY_SPEND_CAP_NANOS);
    }
    sums.into_iter()
        .map(|((p, e, k, d), s)| (p, e, k, d, s))
        .collect()
}

/// Rows per multi-row usage INSERT, at most: 29 columns each stays well under
/// SQLite's limit of 32 766 bound parameters (and PostgreSQL's 65 535). A power of two,
/// for [`usage_chunks`].
pub(crate) const USAGE_ROWS_PER_INSERT: usize = 256;

/// Splits a batch of `n` usage records into the row counts of its INSERT statements:
/// full statements of [`USAGE_ROWS_PER_INSERT`] rows, then one per set bit of the rest,
/// largest first (`37` → 32, 4, 1). Every statement therefore has one of nine shapes,
/// which the connection's statement cache keeps prepared; one statement of exactly
/// the batch's size would be a new text, prepared anew, for nearly every batch that a
/// gateway below saturation writes (preparing a 40-row INSERT costs more than
/// inserting its rows).
pub(crate) fn usage_chunks(n: usize) -> impl Iterator<Item = usize> {
    let full = std::iter::repeat_n(USAGE_ROWS_PER_INSERT, n / USAGE_ROWS_PER_INSERT);
    let rest = n % USAGE_ROWS_PER_INSERT;
    let bits = (0..USAGE_ROWS_PER_INSERT.trailing_zeros())
        .rev()
        .map(|b| 1usize << b)
        .filter(move |size| rest & size != 0);
    full.chain(bits)
}

/// The columns of a usage row, in the order both stores bind them.
const USAGE_COLUMN_LIST: &str = "request_id, upstream_request_id, response_id, key_id, \
    project, env, endpoint, model_requested, model_served, status, error_code, input_tokens, \
    output_tokens, total_tokens, cached_tokens, reasoning_tokens, streamed, \
    client_disconnected, attempts, ttfb_ms, latency_ms, created_at_ms, cost_usd_nanos, lane, \
    upstream_remaining_requests, upstream_remaining_tokens, served_by, fallbacks, cache";

/// How many columns [`USAGE_COLUMN_LIST`] names.
pub(crate) const USAGE_COLUMNS: usize = 29;

/// How a store writes its placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholders {
    /// `?` (SQLite).
    Question,
    /// `$1`, `$2`, … (PostgreSQL).
    Numbered,
}

/// The INSERT of `rows` usage rows, ignoring a request id already written. Built once
/// per size of [`usage_chunks`] and kept: sqlx's query builder formatted each
/// placeholder of every record anew (about 3,800 instructions per record).
pub(crate) fn usage_insert_sql(rows: usize, style: Placeholders) -> std::borrow::Cow<'static, str> {
    use std::sync::OnceLock;
    const SIZES: usize = USAGE_ROWS_PER_INSERT.trailing_zeros() as usize + 1;
    static QUESTION: [OnceLock<String>; SIZES] = [const { OnceLock::new() }; SIZES];
    static NUMBERED: [OnceLock<String>; SIZES] = [const { OnceLock::new() }; SIZES];
    if !rows.is_power_of_two() || rows > USAGE_ROWS_PER_INSERT {
        return build_usage_insert(rows, style).into();
    }
    let cache = match style {
        Placeholders::Question => &QUESTION,
        Placeholders::Numbered => &NUMBERED,
    };
    let slot = &cache[rows.trailing_zeros() as usize];
    slot.get_or_init(|| build_usage_insert(rows, style))
        .as_str()
        .into()
}

fn build_usage_insert(rows: usize, style: Placeholders) -> String {
    use std::fmt::Write as _;
    let mut sql = format!("INSERT INTO usage ({USAGE_COLUMN_LIST}) VALUES ");
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ",(" });
        for column in 0..USAGE_COLUMNS {
            if column > 0 {
                sql.push(',');
            }
            n += 1;
            match style {
                Placeholders::Question => sql.push('?'),
                Placeholders::Numbered => {
                    let _ = write!(sql, "${n}");
                }
            }
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
    sql
}

/// The most a key's spend roll-up holds for one day, in nano-USD (about 144 million
/// USD): an upstream reporting absurd token counts cannot overflow the day's sum, nor
/// the sum of a month of days that budgets read (31 × this < `i64::MAX`).
pub(crate) const DAILY_SPEND_CAP_NANOS: i64 = i64::MAX / 64;

/// Rows per statement of [`daily_spend_upserts`]: 5 bound values each stays well under
/// SQLite's limit of 32 766 bound parameters (and PostgreSQL's 65 535), whatever the
/// batch size.
pub(crate) const SPEND_ROWS_PER_UPSERT: usize = 1000;

/// The statements that add a batch's priced spend to the `usage_spend_daily` roll-up
/// budgets read (the same upserts on both backends, run in the batch's transaction):
/// none when the batch spent nothing. A day's sum stops at [`DAILY_SPEND_CAP_NANOS`]
/// rather than overflowing (PostgreSQL would refuse the batch for ever, SQLite turn
/// the sum into a float).
pub(crate) fn daily_spend_upserts<DB>(records: &[UsageRecord]) -> Vec<sqlx::QueryBuilder<DB>>
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let sums = spend_by_day(records);
    sums.chunks(SPEND_ROWS_PER_UPSERT)
        .map(|chunk| {
            let mut q = sqlx::QueryBuilder::<DB>::new(
                "INSERT INTO usage_spend_daily \
                 (project, env, key_id, day_start_ms, cost_usd_nanos) ",
            );
            q.push_values(chunk, |mut b, (project, env, key_id, day, cost)| {
                b.push_bind((*project).to_owned())
                    .push_bind((*env).to_owned())
                    .push_bind((*key_id).to_owned())
                    .push_bind(*day)
                    .push_bind(*cost);
            });
            q.push(format_args!(
                " ON CONFLICT (project, env, key_id, day_start_ms) DO UPDATE SET \
                 cost_usd_nanos = CASE \
                 WHEN usage_spend_daily.cost_usd_nanos > {cap} - excluded.cost_usd_nanos \
                 THEN {cap} \
                 ELSE usage_spend_daily.cost_usd_nanos + excluded.cost_usd_nanos END",
                cap = DAILY_SPEND_CAP_NANOS
            ));
            q
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_inserts_come_in_nine_shapes() {
        let chunks = |n| usage_chunks(n).collect::<Vec<_>>();
        assert_eq!(chunks(0), Vec::<usize>::new());
        assert_eq!(chunks(1), [1]);
        assert_eq!(chunks(37), [32, 4, 1]);
        assert_eq!(chunks(256), [256]);
        assert_eq!(chunks(512 + 255), [256, 256, 128, 64, 32, 16, 8, 4, 2, 1]);
        let mut shapes = std::collections::BTreeSet::new();
        for n in 0..2000 {
            let c = chunks(n);
            assert_eq!(c.iter().sum::<usize>(), n);
            shapes.extend(c);
        }
        assert_eq!(shapes.len(), 9);
    }

    #[test]
    fn a_usage_insert_has_a_placeholder_per_column_of_each_row_and_is_built_once() {
        let columns = USAGE_COLUMN_LIST.split(',').count();
        assert_eq!(columns, USAGE_COLUMNS);
        for rows in [1, 4, 256, 3] {
            let q = usage_insert_sql(rows, Placeholders::Question);
            assert_eq!(q.matches('?').count(), rows * USAGE_COLUMNS, "{rows}");
            assert_eq!(q.matches("),(").count(), rows - 1);
            assert!(q.ends_with(") ON CONFLICT (request_id) DO NOTHING"));
            let n = usage_insert_sql(rows, Placeholders::Numbered);
            assert_eq!(n.matches('$').count(), rows * USAGE_COLUMNS);
            let last = format!("${})", rows * USAGE_COLUMNS);
            assert!(n.contains(&last), "{rows}: {last}");
            assert!(n.starts_with("INSERT INTO usage (request_id, upstream_request_id,"));
            assert!(n.contains("VALUES ($1,$2,"));
        }
        // The nine sizes of `usage_chunks` are built once and kept; others are not.
        let a = usage_insert_sql(64, Placeholders::Numbered);
        let b = usage_insert_sql(64, Placeholders::Numbered);
        assert!(matches!(a, std::borrow::Cow::Borrowed(_)));
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert!(matches!(
            usage_insert_sql(3, Placeholders::Question),
            std::borrow::Cow::Owned(_)
        ));
    }

    #[test]
    fn a_batch_adds_its_priced_spend_per_key_and_utc_day() {
        let rec = |key: &str, at: i64, cost: Option<u64>| UsageRecord {
            project: Some("shop".into()),
            env: Some("prod".into()),
            key_id: Some(key.into()),
            created_at_ms: at,
            cost_usd_nanos: cost,
            ..UsageRecord::default()
        };
        let day = 20_000 * DAY_MS;
        let batch = [
            rec("k1", day + 5, Some(10)),
            rec("k1", day + DAY_MS - 1, Some(5)),
            rec("k1", day + DAY_MS, Some(7)),
            rec("k2", day, Some(1)),
            rec("k2", day, None),
            rec("k2", day, Some(0)),
        ];
        assert_eq!(
            spend_by_day(&batch),
            vec![
                ("shop", "prod", "k1", day, 15),
                ("shop", "prod", "k1", day + DAY_MS, 7),
                ("shop", "prod", "k2", day, 1),
            ]
        );
    }

    #[test]
    fn key_states_follow_time_and_lifecycle_fields() {
        let k = KeyRecord {
            id: "key_1".into(),
            project: "p".into(),
            env: "dev".into(),
            role: Role::Member,
            name: None,
            prefix: "tg-dev-x".into(),
            digest_hex: String::new(),
            created_at_ms: 0,
            last_used_at_ms: None,
            revoked_at_ms: None,
            revoke_reason: None,
            expires_at_ms: 30 * DAY_MS,
            suspended_at_ms: None,
            suspend_reason: None,
            rotated_to: None,
            retire_at_ms: None,
            lane: Lane::Interactive,
        };
        assert_eq!(k.state(0), KeyState::Active);
        assert!(!k.due_for_rotation(0));
        assert!(k.due_for_rotation(16 * DAY_MS));
        assert_eq!(k.state(30 * DAY_MS), KeyState::Expired);
        assert!(!k.due_for_rotation(30 * DAY_MS));
        let suspended = KeyRecord {
            suspended_at_ms: Some(1),
            ..k.clone()
        };
        assert_eq!(suspended.state(2), KeyState::Suspended);
        let rotated = KeyRecord {
            rotated_to: Some("key_2".into()),
            retire_at_ms: Some(100),
            ..k.clone()
        };
        assert_eq!(rotated.state(99), KeyState::Retiring);
        assert_eq!(rotated.state(100), KeyState::Retired);
        assert!(!rotated.due_for_rotation(16 * DAY_MS));
        let revoked = KeyRecord {
            revoked_at_ms: Some(1),
            ..rotated
        };
        assert_eq!(revoked.state(2), KeyState::Revoked);
    }

    #[test]
    fn last_used_is_the_newest_record_per_key() {
        let rec = |key: Option<&str>, at: i64| UsageRecord {
            key_id: key.map(str::to_owned),
            created_at_ms: at,
            ..UsageRecord::default()
        };
        let batch = [
            rec(Some("key_b"), 5),
            rec(Some("key_a"), 9),
            rec(None, 100),
            rec(Some("key_b"), 7),
            rec(Some("key_a"), 3),
        ];
        assert_eq!(last_used_by_key(&batch), vec![("key_a", 9), ("key_b", 7)]);
        assert!(last_used_by_key(&[]).is_empty());
    }
}

/// A key change that only sets or clears columns when its condition holds: revoking,
/// suspending and resuming. Both backends run it the same way — the update, its audit
/// row and the keys_version bump in one transaction — with their own SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyChange {
    Revoke,
    Suspend,
    Resume,
}

impl KeyChange {
    /// The audit action.
    pub(crate) fn action(self) -> &'static str {
        match self {
            Self::Revoke => "key.revoke",
            Self::Suspend => "key.suspend",
            Self::Resume => "key.resume",
        }
    }

    /// Whether a revoked key is refused (revoking one again is a no-op instead).
    pub(crate) fn refuses_revoked(self) -> bool {
        !matches!(self, Self::Revoke)
    }

    /// Whether the update binds the time and the reason before the id.
    pub(crate) fn binds_time_and_reason(self) -> bool {
        !matches!(self, Self::Resume)
    }
}

/// One project setting changed on its own: one `UPDATE projects`, its audit row and a
/// keys-version bump (servers learn project settings with their key cache), in one
/// transaction per backend.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ProjectSetting<'a> {
    /// The longest lifetime of the project's new keys (`None`: the 90-day default).
    MaxKeyAge(Option<i64>),
    /// The project's default provider credential, a secret reference.
    Credential(Option<&'a str>),
    /// Whether anomaly detection suspends flagged keys (`None`: the gateway's choice).
    AnomalyAutoSuspend(Option<bool>),
}

impl ProjectSetting<'_> {
    /// The `projects` column it sets.
    pub(crate) fn column(self) -> &'static str {
        match self {
            Self::MaxKeyAge(_) => "max_key_age_ms",
            Self::Credential(_) => "upstream_api_key",
            Self::AnomalyAutoSuspend(_) => "anomaly_auto_suspend",
        }
    }

    /// The audit action.
    pub(crate) fn action(self) -> &'static str {
        match self {
            Self::MaxKeyAge(_) => "project.set_max_key_age",
            Self::Credential(_) => "project.set_credential",
            Self::AnomalyAutoSuspend(_) => "project.set_anomaly_auto_suspend",
        }
    }

    /// The audit detail: the column and its new value (a reference, never a secret).
    pub(crate) fn detail(self) -> serde_json::Value {
        let value = match self {
            Self::MaxKeyAge(v) => serde_json::json!(v),
            // An exec: command's arguments may hold a token: its program only.
            Self::Credential(v) => serde_json::json!(v.map(crate::shown_secret_ref)),
            Self::AnomalyAutoSuspend(v) => serde_json::json!(v),
        };
        serde_json::json!({ self.column(): value })
    }
}
