//! The configuration of fallbacks (see `fallback`): named upstreams beside the primary
//! (`[[upstreams]]`), fallback chains per model or alias (`[fallbacks]`), the circuit
//! breaker (`[circuit_breaker]`) and offline answers (`[offline]`). Raw shapes as
//! `tollgate.toml` writes them, and their checked forms; `config` calls
//! [`resilience_config`] so every problem is reported with the others, by dotted path.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, UpstreamConfig};
use crate::secret::SecretRef;

/// The name of the `[upstream]` unless `upstream.name` says otherwise.
pub const DEFAULT_PRIMARY: &str = "primary";

/// `served_by` of an offline answer; no upstream may take this name.
pub const OFFLINE: &str = tollgate_store::SERVED_OFFLINE;

/// `[[upstreams]]`: another OpenAI-compatible upstream a fallback chain may name.
/// Unset timeouts and retries are the primary's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamedUpstream {
    pub name: Option<String>,
    /// Base URL including `/v1`.
    pub url: Option<String>,
    /// Secret reference of its provider key (`env:`, `file:`, `exec:`).
    pub api_key: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_retries: Option<u32>,
    pub retry_base_ms: Option<u64>,
}

/// One entry of a chain: `{ model = "…", upstream = "…" }`, either may be left out
/// (the model as resolved / the primary upstream).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub model: Option<String>,
    pub upstream: Option<String>,
}

/// `[circuit_breaker]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Consecutive failures that open an upstream's circuit (default 5).
    pub failures: Option<u32>,
    /// How long an open circuit stays open before one probe goes through (default
    /// 30 000 ms).
    pub cooldown_ms: Option<u64>,
}

/// `[offline]`: the answer given when every target of a call failed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOffline {
    /// For projects without one of their own (unset: none).
    pub answer: Option<String>,
    /// Project name → its answer. `{model}` in an answer becomes the model asked for.
    #[serde(default)]
    pub projects: BTreeMap<String, String>,
}

/// An upstream of a chain, by name.
#[derive(Debug, Clone)]
pub struct NamedUpstream {
    pub name: String,
    pub config: UpstreamConfig,
}

/// A checked chain entry; `None` keeps the model / takes the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    pub model: Option<String>,
    pub upstream: Option<String>,
}

/// The checked `[circuit_breaker]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures: u32,
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// The checked `[offline]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfflineConfig {
    pub answer: Option<String>,
    pub projects: BTreeMap<String, String>,
}

impl OfflineConfig {
    /// The answer template of `project`, if it has one.
    pub fn template(&self, project: &str) -> Option<&str> {
        self.projects
            .get(project)
            .or(self.answer.as_ref())
            .map(String::as_str)
    }
}

/// Everything fallbacks need, checked.
#[derive(Debug, Clone, Default)]
pub struct ResilienceConfig {
    /// Upstreams besides the primary, in file order.
    pub upstreams: Vec<NamedUpstream>,
    /// Model or alias → the targets after the first (the primary with the model as
    /// resolved).
    pub fallbacks: BTreeMap<String, Vec<TargetConfig>>,
    pub breaker: BreakerConfig,
    pub offline: OfflineConfig,
}

/// What `tollgate.toml` says about fallbacks, as [`crate::config::RawConfig`] holds it.
pub struct RawResilience<'a> {
    pub upstreams: &'a [RawNamedUpstream],
    pub fallbacks: &'a BTreeMap<String, Vec<RawTarget>>,
    pub breaker: &'a RawBreaker,
    pub offline: &'a RawOffline,
}

/// Checks the fallback sections against the primary upstream (already checked),
/// pushing every problem onto `errors`.
pub fn resilience_config(
    raw: RawResilience<'_>,
    primary: &UpstreamConfig,
    errors: &mut Vec<ConfigError>,
) -> ResilienceConfig {
    let mut err = |path: String, message: String| errors.push(ConfigError { path, message });
    let mut names = vec![primary.name.clone()];
    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (i, u) in raw.upstreams.iter().enumerate() {
        let at = |field: &str| format!("upstreams[{i}].{field}");
        let name = u.name.clone().unwrap_or_default();
        if let Some(problem) = name_problem(&name) {
            err(at("name"), problem);
        } else if names.contains(&name) {
            err(
                at("name"),
                format!("{name:?} names another upstream already"),
            );
        }
        names.push(name.clone());
        let url_text = u.url.as_deref().unwrap_or("");
        let url = url_text.trim_end_matches('/').to_owned();
        if url_text.is_empty() {
            err(
                at("url"),
                "must be a base URL starting with http:// or https:// (including /v1)".into(),
            );
        } else if let Some(problem) = crate::config::base_url_problem(url_text) {
            err(at("url"), problem);
        }
        let api_key = match u.api_key.as_deref().map(SecretRef::parse) {
            Some(Ok(r)) => r,
            // Never echo the value: it may be a pasted secret.
            Some(Err(e)) => {
                err(at("api_key"), e.to_string());
                SecretRef::Env("OPENAI_API_KEY".into())
            }
            None => {
                err(
                    at("api_key"),
                    "is required: a secret reference (env:NAME, file:/path or exec:command)".into(),
                );
                SecretRef::Env("OPENAI_API_KEY".into())
            }
        };
        let mut positive = |field: &str, v: Option<u64>, inherited: Duration| match v {
            Some(0) => {
                err(at(field), "must be greater than 0".into());
                inherited
            }
            Some(ms) => Duration::from_millis(ms),
            None => inherited,
        };
        let connect_timeout = positive(
            "connect_timeout_ms",
            u.connect_timeout_ms,
            primary.connect_timeout,
        );
        let timeout = positive("timeout_ms", u.timeout_ms, primary.timeout);
        let retry_base = positive("retry_base_ms", u.retry_base_ms, primary.retry_base);
        let max_retries = u.max_retries.unwrap_or(primary.max_retries);
        if max_retries > 10 {
            err(at("max_retries"), "must be at most 10".into());
        }
        upstreams.push(NamedUpstream {
            name: name.clone(),
            config: UpstreamConfig {
                name,
                url,
                api_key,
                connect_timeout,
                timeout,
                max_retries,
                retry_base,
                ..primary.clone()
            },
        });
    }

    let mut fallbacks = BTreeMap::new();
    for (model, chain) in raw.fallbacks {
        if model.is_empty() || model.chars().any(char::is_whitespace) {
            err(
                format!("fallbacks.{model}"),
                "a model or alias is 1-200 characters without spaces".into(),
            );
        }
        if chain.is_empty() {
            err(
                format!("fallbacks.{model}"),
                "an empty chain: list at least one { model = \"…\", upstream = \"…\" }".into(),
            );
        }
        let mut targets = Vec::with_capacity(chain.len());
        for (i, t) in chain.iter().enumerate() {
            let at = |field: &str| format!("fallbacks.{model}[{i}]{field}");
            if t.model.is_none() && t.upstream.is_none() {
                err(
                    at(""),
                    "names neither a model nor an upstream: give one or both".into(),
                );
            }
            if let Some(m) = &t.model {
                if m.is_empty() || m.len() > 200 || m.chars().any(char::is_whitespace) {
                    err(
                        at(".model"),
                        format!("{m:?} is not a model id (1-200 characters without spaces)"),
                    );
                }
            }
            if let Some(u) = &t.upstream {
                if !names.contains(u) {
                    err(
                        at(".upstream"),
                        format!(
                            "no upstream is named {u:?}: use {} or add an [[upstreams]] entry",
                            names
                                .iter()
                                .map(|n| format!("{n:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
            }
            targets.push(TargetConfig {
                model: t.model.clone(),
                upstream: t.upstream.clone(),
            });
        }
        fallbacks.insert(model.clone(), targets);
    }

    let d = BreakerConfig::default();
    let failures = match raw.breaker.failures {
        Some(0) => {
            err(
                "circuit_breaker.failures".into(),
                "must be at least 1".into(),
            );
            d.failures
        }
        Some(n) => n,
        None => d.failures,
    };
    let cooldown = match raw.breaker.cooldown_ms {
        Some(0) => {
            err(
                "circuit_breaker.cooldown_ms".into(),
                "must be greater than 0".into(),
            );
            d.cooldown
        }
        Some(ms) => Duration::from_millis(ms),
        None => d.cooldown,
    };

    let mut offline_problem = |path: String, text: &str| {
        if text.trim().is_empty() {
            err(path, "an offline answer must not be empty".into());
        } else if text.len() > 16_384 {
            err(path, "an offline answer is at most 16384 bytes".into());
        }
    };
    if let Some(text) = &raw.offline.answer {
        offline_problem("offline.answer".into(), text);
    }
    for (project, text) in &raw.offline.projects {
        offline_problem(format!("offline.projects.{project}"), text);
    }

    ResilienceConfig {
        upstreams,
        fallbacks,
        breaker: BreakerConfig { failures, cooldown },
        offline: OfflineConfig {
            answer: raw.offline.answer.clone(),
            projects: raw.offline.projects.clone(),
        },
    }
}

/// Why `name` cannot name an upstream, if it cannot. Names appear in headers and
/// metric labels, so they are short and plain.
pub fn name_problem(name: &str) -> Option<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        Some("an upstream name is 1-64 letters, digits, '-', '_' or '.'".into())
    } else if name == OFFLINE || name == crate::fallback::CACHE {
        Some(format!(
            "{name:?} is reserved (offline answers, cached answers)"
        ))
    } else {
        None
    }
}
