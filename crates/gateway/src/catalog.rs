//! The model catalog: what each model is (tokenizer family, context window, maximum
//! output, latency class, capabilities, best use) and what it costs, in USD **per 1M
//! tokens**. A default catalog ships in the binary (`data/models.toml`);
//! `[[models]]` entries in tollgate.toml replace or add entries in the same format, and
//! entries kept in the store (`tollgate models set`, `PUT /admin/v1/models/catalog/{model}`)
//! replace or add over both: **store > config > built-in**, whole entries by id. A
//! running server holds a [`LiveCatalog`], which swaps in the store's entries when the
//! store's `limits_version` moves (see `limits`), within `keys.refresh_interval_ms`.
//!
//! Prices are held as integers — nano-USD per token, which is the same number as
//! milli-USD per 1M tokens — so a [`Cost`] is exact: no float sums that drift, and a
//! total of many calls equals the sum of their costs to the last nano-dollar.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tollgate_store::CatalogModel;
use tollgate_wire::tokens::Encoding;

use crate::config::ConfigError;
use crate::snapshot::{Snapshot, ThreadCopy};

/// The built-in catalog, compiled in.
const BUILTIN: &str = include_str!("../data/models.toml");

/// Largest accepted price, USD per 1M tokens (keeps every product far from overflow).
const MAX_PRICE_PER_1M: f64 = 1_000_000.0;

/// A price in USD per 1M tokens, held exactly as milli-USD per 1M tokens
/// (equivalently nano-USD per token). `Price(150)` is $0.15 per 1M.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Price(pub u64);

impl Price {
    /// The price as a decimal USD amount per 1M tokens, e.g. `"0.075"`.
    pub fn usd_per_1m(self) -> String {
        let s = format!("{}.{:03}", self.0 / 1000, self.0 % 1000);
        let s = s.trim_end_matches('0');
        // Keep two decimals at least: "2.50", "0.075".
        match s.split_once('.') {
            Some((_, frac)) if frac.len() < 2 => format!("{s}{}", "0".repeat(2 - frac.len())),
            _ => s.to_owned(),
        }
    }

    /// Parses a USD-per-1M figure with at most three decimals (`0.075`), so the
    /// conversion to integers is exact.
    fn from_usd_per_1m(v: f64) -> Result<Self, String> {
        if !v.is_finite() || v < 0.0 {
            return Err("must be a non-negative number of USD per 1M tokens".into());
        }
        if v > MAX_PRICE_PER_1M {
            return Err(format!(
                "must be at most {MAX_PRICE_PER_1M} USD per 1M tokens"
            ));
        }
        let milli = (v * 1000.0).round();
        if (v * 1000.0 - milli).abs() > 1e-6 {
            return Err("at most 3 decimals (USD per 1M tokens, e.g. 0.075)".into());
        }
        // Bounded by MAX_PRICE_PER_1M above, so the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(Self(milli as u64))
    }
}

/// How long a typical call takes, relative to the other models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Latency {
    Fast,
    Medium,
    Slow,
}

impl Latency {
    /// The name used in the data file and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::Medium => "medium",
            Self::Slow => "slow",
        }
    }
}

/// What a model can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Text,
    Vision,
    Audio,
    Tools,
    JsonSchema,
    Reasoning,
    Embeddings,
    Moderation,
}

impl Capability {
    /// The name used in the data file and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Vision => "vision",
            Self::Audio => "audio",
            Self::Tools => "tools",
            Self::JsonSchema => "json_schema",
            Self::Reasoning => "reasoning",
            Self::Embeddings => "embeddings",
            Self::Moderation => "moderation",
        }
    }
}

/// One model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub id: String,
    /// The tokenizer of the family (tollgate-wire's `tokens` feature).
    pub family: Encoding,
    /// Input plus output tokens; `None` when not published.
    pub context_window: Option<u64>,
    /// `None` for models that produce no tokens (embeddings, moderation).
    pub max_output_tokens: Option<u64>,
    pub input: Price,
    /// `None`: cached input tokens are billed at the input price.
    pub cached_input: Option<Price>,
    /// `None`: the model produces no output tokens (billed at 0 if any are reported).
    pub output: Option<Price>,
    pub latency: Latency,
    pub capabilities: Vec<Capability>,
    /// One line: what to use it for.
    pub best_use: String,
    /// The date the prices were checked, `YYYY-MM-DD` (`None` for a config entry that
    /// does not say).
    pub prices_checked: Option<String>,
}

/// The token counts a call is billed on, as OpenAI reports them: `input` includes
/// `cached` input tokens, `output` includes reasoning tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BilledTokens {
    pub input: u64,
    pub cached: u64,
    pub output: u64,
}

/// An exact amount in nano-USD (10⁻⁹ USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cost(pub u64);

impl Cost {
    /// The amount in nano-USD.
    pub fn usd_nanos(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Cost {
    /// Dollars with every significant decimal and at least six: `0.000420`,
    /// `12.500000`, `0.000000075`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frac = format!("{:09}", self.0 % 1_000_000_000);
        let trimmed = frac.trim_end_matches('0');
        let frac = if trimmed.len() < 6 {
            &frac[..6]
        } else {
            trimmed
        };
        write!(f, "{}.{frac}", self.0 / 1_000_000_000)
    }
}

impl ModelEntry {
    /// What `tokens` cost on this model. Uncached input at the input price, cached
    /// input at the cached price (the input price if there is none), output —
    /// reasoning tokens included — at the output price.
    pub fn cost(&self, tokens: BilledTokens) -> Cost {
        let cached = tokens.cached.min(tokens.input);
        let uncached = tokens.input - cached;
        let cached_price = self.cached_input.unwrap_or(self.input);
        let output_price = self.output.unwrap_or(Price(0));
        // Prices are nano-USD per token; u128 so no token count can overflow.
        let nano = u128::from(uncached) * u128::from(self.input.0)
            + u128::from(cached) * u128::from(cached_price.0)
            + u128::from(tokens.output) * u128::from(output_price.0);
        Cost(u64::try_from(nano).unwrap_or(u64::MAX))
    }
}

/// The models tollgate knows, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    models: BTreeMap<String, ModelEntry>,
}

impl Catalog {
    /// The catalog compiled into the binary. Its data is checked by the tests; were it
    /// ever invalid, the catalog is empty (every cost unknown) and the error logged,
    /// rather than the server refusing to start.
    pub fn builtin() -> Self {
        let mut c = Self {
            models: BTreeMap::new(),
        };
        match parse_builtin() {
            Ok(models) => c.apply(models),
            Err(e) => tracing::error!(error = %e, "the built-in model catalog is invalid"),
        }
        c
    }

    /// Replaces entries with the same id and adds the others.
    pub fn apply(&mut self, entries: Vec<ModelEntry>) {
        for e in entries {
            self.models.insert(e.id.clone(), e);
        }
    }

    /// The entry for `model`: its own, or for a dated snapshot id
    /// (`gpt-4o-2024-08-06`) its base entry's.
    pub fn get(&self, model: &str) -> Option<&ModelEntry> {
        let model = model.trim();
        self.models
            .get(model)
            .or_else(|| self.models.get(strip_snapshot_date(model)?))
    }

    /// What a call of `model` with `tokens` costs; `None` for a model the catalog
    /// does not know (unknown is not free).
    pub fn cost(&self, model: &str, tokens: BilledTokens) -> Option<Cost> {
        self.get(model).map(|m| m.cost(tokens))
    }

    /// Every entry, by id.
    pub fn entries(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.values()
    }

    /// Every id, sorted.
    pub fn ids(&self) -> Vec<&str> {
        self.models.keys().map(String::as_str).collect()
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

/// The catalog a running server reads: the config's (built-in with `[[models]]`) with
/// the store's entries over it. Swapped whole when either changes, so a reader holds
/// one consistent catalog for as long as it keeps the `Arc`; each thread reads its own
/// copy (see `snapshot`: every request prices its record from it).
#[derive(Debug)]
pub struct LiveCatalog {
    /// The config's catalog and the store's entries, for writers.
    sources: Mutex<(Catalog, Vec<ModelEntry>)>,
    current: Snapshot<Catalog>,
}

/// Nothing inside is shared: a clone is a copy of the thread's own.
impl ThreadCopy for Catalog {
    fn thread_copy(&self) -> Self {
        self.clone()
    }
}

impl LiveCatalog {
    /// `base` alone, until the store's entries are set.
    pub fn new(base: Catalog) -> Self {
        Self {
            current: Snapshot::new(base.clone()),
            sources: Mutex::new((base, Vec::new())),
        }
    }

    /// The catalog now, from this thread's copy.
    pub fn current(&self) -> Arc<Catalog> {
        self.current.get()
    }

    /// Replaces the config's catalog (the store's entries stay over it).
    pub fn set_base(&self, base: Catalog) {
        let mut sources = self.sources.lock();
        self.current.set(merged(&base, &sources.1));
        sources.0 = base;
    }

    /// Replaces the store's entries.
    pub fn set_stored(&self, stored: Vec<ModelEntry>) {
        let mut sources = self.sources.lock();
        self.current.set(merged(&sources.0, &stored));
        sources.1 = stored;
    }
}

impl Default for LiveCatalog {
    fn default() -> Self {
        Self::new(Catalog::builtin())
    }
}

fn merged(base: &Catalog, stored: &[ModelEntry]) -> Catalog {
    let mut c = base.clone();
    c.apply(stored.to_vec());
    c
}

/// The valid entries of `stored`; an invalid one (written by a newer tollgate, or by
/// hand) is skipped with a warning and the config's entry of that id stays.
pub fn entries_from_store(stored: &[CatalogModel]) -> Vec<ModelEntry> {
    stored
        .iter()
        .filter_map(|m| match entry_from_stored(m) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(model = %m.id, error = %e, "skipping an invalid stored catalog entry");
                None
            }
        })
        .collect()
}

/// Checks a stored entry as a `[[models]]` entry is checked.
pub fn entry_from_stored(m: &CatalogModel) -> Result<ModelEntry, String> {
    let latency = m.latency.as_deref().map(by_name::<Latency>).transpose()?;
    let capabilities = if m.capabilities.is_empty() {
        None
    } else {
        Some(
            m.capabilities
                .iter()
                .map(|c| by_name::<Capability>(c))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    // Milli-USD to USD: exact for the at most 3 decimals a price has.
    #[allow(clippy::cast_precision_loss)]
    let usd = |milli: u64| milli as f64 / 1000.0;
    validate_entry(&RawModel {
        id: m.id.clone(),
        family: m.family.clone(),
        context_window: m.context_window,
        max_output_tokens: m.max_output_tokens,
        input_per_1m: usd(m.input_per_1m_milli_usd),
        cached_input_per_1m: m.cached_input_per_1m_milli_usd.map(usd),
        output_per_1m: m.output_per_1m_milli_usd.map(usd),
        latency,
        capabilities,
        best_use: m.best_use.clone(),
        prices_checked: m.prices_checked.clone(),
    })
}

/// A checked entry as the store keeps it (prices as milli-USD per 1M tokens).
pub fn stored_from_entry(e: &ModelEntry) -> CatalogModel {
    CatalogModel {
        id: e.id.clone(),
        family: Some(family_name(e.family).to_owned()),
        context_window: e.context_window,
        max_output_tokens: e.max_output_tokens,
        input_per_1m_milli_usd: e.input.0,
        cached_input_per_1m_milli_usd: e.cached_input.map(|p| p.0),
        output_per_1m_milli_usd: e.output.map(|p| p.0),
        latency: Some(e.latency.as_str().to_owned()),
        capabilities: e
            .capabilities
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect(),
        best_use: (!e.best_use.is_empty()).then(|| e.best_use.clone()),
        prices_checked: e.prices_checked.clone(),
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

/// One `[[models]]`-shaped entry checked alone; the error lists every problem as
/// `field: message`.
pub fn validate_entry(raw: &RawModel) -> Result<ModelEntry, String> {
    validate_models(std::slice::from_ref(raw), "")
        .map_err(|errors| {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| {
                    let field = e.path.split_once('.').map_or(e.path.as_str(), |(_, f)| f);
                    format!("{field}: {}", e.message)
                })
                .collect();
            lines.join("; ")
        })
        .and_then(|mut v| v.pop().ok_or_else(|| "invalid entry".to_owned()))
}

/// A latency class or capability by its snake_case name.
pub fn by_name<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(name.trim().to_owned()))
        .map_err(|_| format!("{name:?} is not a known name"))
}

/// Parses and checks `data/models.toml`.
fn parse_builtin() -> Result<Vec<ModelEntry>, String> {
    let raw: RawModels = toml::from_str(BUILTIN).map_err(|e| e.to_string())?;
    validate_models(&raw.models, "models").map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        lines.join("; ")
    })
}

/// `gpt-4o-2024-08-06` → `gpt-4o`: the id without a trailing `-YYYY-MM-DD`.
fn strip_snapshot_date(id: &str) -> Option<&str> {
    let (base, date) = id.split_at_checked(id.len().checked_sub(11)?)?;
    let date = date.strip_prefix('-')?;
    is_date(date).then_some(base).filter(|b| !b.is_empty())
}

/// `YYYY-MM-DD` with a plausible month and day.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..4) && digits(5..7) && digits(8..10)) {
        return false;
    }
    let month: u32 = s[5..7].parse().unwrap_or(0);
    let day: u32 = s[8..10].parse().unwrap_or(0);
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// The data file: a list of `[[models]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModels {
    models: Vec<RawModel>,
}

/// One `[[models]]` entry as written (the data file and tollgate.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub id: String,
    /// `o200k_base` or `cl100k_base` (default: from the id, as the tokenizer guesses).
    pub family: Option<String>,
    pub context_window: Option<u64>,
    pub max_output_tokens: Option<u64>,
    /// USD per 1M tokens.
    pub input_per_1m: f64,
    /// USD per 1M tokens (default: the input price).
    pub cached_input_per_1m: Option<f64>,
    /// USD per 1M tokens (omit for models with no output).
    pub output_per_1m: Option<f64>,
    /// `fast`, `medium` (default) or `slow`.
    pub latency: Option<Latency>,
    /// Default `["text"]`.
    pub capabilities: Option<Vec<Capability>>,
    pub best_use: Option<String>,
    /// `YYYY-MM-DD`.
    pub prices_checked: Option<String>,
}

/// Checks `[[models]]` entries; errors carry `{prefix}[i].field` paths.
pub fn validate_models(
    raw: &[RawModel],
    prefix: &str,
) -> Result<Vec<ModelEntry>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut seen = BTreeMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let at = |field: &str| format!("{prefix}[{i}].{field}");
        let mut err = |field: &str, message: String| {
            errors.push(ConfigError {
                path: at(field),
                message,
            })
        };
        let id = m.id.trim().to_owned();
        if id.is_empty() || id.chars().any(char::is_whitespace) {
            err("id", "must be a model id without spaces".into());
        } else if let Some(first) = seen.insert(id.clone(), i) {
            err(
                "id",
                format!("{id:?} is already defined by {prefix}[{first}]"),
            );
        }
        if let Some(entry) = validate_model(m, id, &mut err) {
            out.push(entry);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Checks one entry's fields other than the id.
fn validate_model(
    m: &RawModel,
    id: String,
    err: &mut impl FnMut(&str, String),
) -> Option<ModelEntry> {
    let family = check_family(m.family.as_deref(), &id, err);
    let mut ok = family.is_some();
    let input = check_price("input_per_1m", m.input_per_1m, err);
    let cached_input = m
        .cached_input_per_1m
        .map(|v| check_price("cached_input_per_1m", v, err));
    let output = m
        .output_per_1m
        .map(|v| check_price("output_per_1m", v, err));
    if m.context_window == Some(0) {
        err("context_window", "must be greater than 0".into());
        ok = false;
    }
    if let (Some(out), Some(ctx)) = (m.max_output_tokens, m.context_window) {
        if out > ctx {
            err(
                "max_output_tokens",
                format!("must not exceed context_window ({ctx})"),
            );
            ok = false;
        }
    }
    if let Some(d) = m.prices_checked.as_deref().filter(|d| !is_date(d)) {
        err(
            "prices_checked",
            format!("{d:?} is not a date like 2025-06-10"),
        );
        ok = false;
    }
    let mut capabilities = m
        .capabilities
        .clone()
        .unwrap_or_else(|| vec![Capability::Text]);
    capabilities.sort();
    capabilities.dedup();
    // An optional price that was given but invalid (already reported) ends here.
    let optional = |p: Option<Option<Price>>| p.map_or(Some(None), |p| p.map(Some));
    let (Some(family), Some(input), Some(cached_input), Some(output)) =
        (family, input, optional(cached_input), optional(output))
    else {
        return None;
    };
    ok.then(|| ModelEntry {
        id,
        family,
        context_window: m.context_window,
        max_output_tokens: m.max_output_tokens,
        input,
        cached_input,
        output,
        latency: m.latency.unwrap_or(Latency::Medium),
        capabilities,
        best_use: m.best_use.clone().unwrap_or_default(),
        prices_checked: m.prices_checked.clone(),
    })
}

/// The tokenizer family named, or the one the id implies; `None` after reporting an
/// unknown name.
fn check_family(
    name: Option<&str>,
    id: &str,
    err: &mut impl FnMut(&str, String),
) -> Option<Encoding> {
    match name {
        None => Some(Encoding::for_model(id)),
        Some("o200k_base") => Some(Encoding::O200kBase),
        Some("cl100k_base") => Some(Encoding::Cl100kBase),
        Some(other) => {
            err(
                "family",
                format!("{other:?} is not o200k_base or cl100k_base"),
            );
            None
        }
    }
}

/// A price field, or `None` after reporting why not.
fn check_price(field: &str, v: f64, err: &mut impl FnMut(&str, String)) -> Option<Price> {
    Price::from_usd_per_1m(v).map_err(|e| err(field, e)).ok()
}

/// The encoding's name as the data file writes it.
pub fn family_name(e: Encoding) -> &'static str {
    match e {
        Encoding::O200kBase => "o200k_base",
        Encoding::Cl100kBase => "cl100k_base",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(input: u64, cached: u64, output: u64) -> BilledTokens {
        BilledTokens {
            input,
            cached,
            output,
        }
    }

    #[test]
    fn the_builtin_catalog_covers_the_required_models_with_dated_prices() {
        assert_eq!(parse_builtin().map(|m| m.len()), Ok(16));
        let c = Catalog::builtin();
        for id in [
            "gpt-4o-mini",
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "o3-mini",
            "o3",
            "o4-mini",
            "text-embedding-3-small",
            "text-embedding-3-large",
            "omni-moderation-latest",
        ] {
            let m = c.get(id).unwrap_or_else(|| panic!("{id} missing"));
            assert_eq!(m.id, id);
            assert!(m.prices_checked.as_deref().is_some_and(is_date), "{id}");
            assert!(!m.best_use.is_empty(), "{id}");
            assert_eq!(m.family, Encoding::for_model(id), "{id}: tokenizer family");
        }
        let mini = c.get("gpt-4o-mini").unwrap();
        assert_eq!(mini.input, Price(150));
        assert_eq!(mini.cached_input, Some(Price(75)));
        assert_eq!(mini.output, Some(Price(600)));
        assert_eq!(mini.context_window, Some(128_000));
        assert!(c
            .get("o3")
            .unwrap()
            .capabilities
            .contains(&Capability::Reasoning));
        assert!(c
            .get("text-embedding-3-small")
            .unwrap()
            .capabilities
            .contains(&Capability::Embeddings));
    }

    #[test]
    fn cost_bills_cached_input_and_reasoning_output_at_their_own_prices() {
        let c = Catalog::builtin();
        // gpt-4o-mini: 1000 uncached × 150 + 200 cached × 75 + 400 out × 600 nano-USD.
        let cost = c.cost("gpt-4o-mini", tokens(1200, 200, 400)).unwrap();
        assert_eq!(cost, Cost(1000 * 150 + 200 * 75 + 400 * 600));
        assert_eq!(cost.to_string(), "0.000405");
        // No cached tokens: everything at the input price.
        assert_eq!(
            c.cost("gpt-4o", tokens(1_000_000, 0, 1_000_000))
                .unwrap()
                .to_string(),
            "12.500000"
        );
        // A model without a cached price bills cached tokens as input.
        let legacy = c.cost("gpt-4o-2024-05-13", tokens(100, 100, 0)).unwrap();
        assert_eq!(legacy, Cost(100 * 5000));
        // More cached than input (a malformed usage) never underflows.
        assert_eq!(c.cost("o3", tokens(10, 50, 0)).unwrap(), Cost(10 * 500));
        assert_eq!(Cost(75).to_string(), "0.000000075");
    }

    #[test]
    fn sums_of_costs_are_exact_where_floats_drift() {
        let c = Catalog::builtin();
        let one = c.cost("gpt-4.1-nano", tokens(1, 1, 0)).unwrap();
        assert_eq!(one, Cost(25));
        let total: u64 = (0..1_000_000).map(|_| one.usd_nanos()).sum();
        assert_eq!(Cost(total).to_string(), "0.025000");
        let float: f64 = (0..1_000_000).map(|_| 0.025 / 1e6).sum();
        assert_ne!(
            float, 0.025,
            "the float sum drifts; the integer one does not"
        );
    }

    #[test]
    fn snapshot_ids_resolve_to_their_base_unless_listed_and_unknown_models_cost_none() {
        let c = Catalog::builtin();
        assert_eq!(c.get("gpt-4o-2024-08-06").unwrap().id, "gpt-4o");
        assert_eq!(c.get("o3-mini-2025-01-31").unwrap().id, "o3-mini");
        assert_eq!(c.get("gpt-4.1-nano-2025-04-14").unwrap().id, "gpt-4.1-nano");
        assert_eq!(c.get("gpt-4o-2024-05-13").unwrap().input, Price(5000));
        assert!(c.get("gpt-4o-2024-13-06").is_none(), "not a date");
        assert!(c.get("-2024-08-06").is_none());
        assert!(c.get("llama3").is_none());
        assert_eq!(c.cost("llama3", tokens(10, 0, 10)), None);
    }

    #[test]
    fn store_entries_round_trip_and_override_the_config_until_removed() {
        let raw = RawModel {
            id: "gpt-4o-mini".into(),
            family: None,
            context_window: Some(1000),
            max_output_tokens: Some(100),
            input_per_1m: 1.5,
            cached_input_per_1m: Some(0.075),
            output_per_1m: Some(6.0),
            latency: Some(Latency::Slow),
            capabilities: Some(vec![Capability::Tools, Capability::Text]),
            best_use: None,
            prices_checked: Some("2026-11-01".into()),
        };
        let entry = validate_entry(&raw).unwrap();
        let stored = stored_from_entry(&entry);
        assert_eq!(stored.input_per_1m_milli_usd, 1500);
        assert_eq!(stored.capabilities, ["text", "tools"]);
        assert_eq!(entry_from_stored(&stored).unwrap(), entry);

        let live = LiveCatalog::default();
        let before = live.current();
        live.set_stored(vec![entry]);
        assert_eq!(
            live.current().get("gpt-4o-mini").unwrap().context_window,
            Some(1000)
        );
        assert_eq!(
            before.get("gpt-4o-mini").unwrap().context_window,
            Some(128_000),
            "a reader keeps the catalog it took"
        );
        live.set_stored(Vec::new());
        assert_eq!(live.current().get("gpt-4o-mini").unwrap().input, Price(150));

        let bad = CatalogModel {
            latency: Some("warp".into()),
            ..stored.clone()
        };
        assert!(entry_from_stored(&bad).unwrap_err().contains("warp"));
        let bad = RawModel {
            max_output_tokens: Some(5000),
            prices_checked: Some("yesterday".into()),
            ..raw
        };
        let e = validate_entry(&bad).unwrap_err();
        assert!(
            e.contains("max_output_tokens: must not exceed context_window (1000)"),
            "{e}"
        );
        assert!(e.contains("prices_checked:"), "{e}");
        assert!(entries_from_store(&[CatalogModel {
            capabilities: vec!["telepathy".into()],
            ..stored
        }])
        .is_empty());
    }

    #[test]
    fn prices_print_per_1m_with_at_least_two_decimals() {
        assert_eq!(Price(150).usd_per_1m(), "0.15");
        assert_eq!(Price(75).usd_per_1m(), "0.075");
        assert_eq!(Price(2500).usd_per_1m(), "2.50");
        assert_eq!(Price(0).usd_per_1m(), "0.00");
        assert_eq!(Price::from_usd_per_1m(0.275), Ok(Price(275)));
        assert!(Price::from_usd_per_1m(0.0001).is_err());
        assert!(Price::from_usd_per_1m(-1.0).is_err());
    }
}
