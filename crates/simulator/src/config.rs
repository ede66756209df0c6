//! `SimConfig`: what a simulator instance accepts (keys, limits, quota) and which
//! models it serves. The default model list is generated from OpenAI's spec into
//! `data/models.json` and embedded at build time.

use serde::Deserialize;
use tollgate_wire::models::Model;

/// The model list every simulator starts with unless told otherwise.
const BUILTIN_MODELS: &str = include_str!("../data/models.json");

/// How a simulator instance behaves. `Default` accepts any non-empty key, has no
/// enforced rate limits, and serves the built-in model list.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Accept only these keys; `None` accepts any non-empty key.
    pub api_keys: Option<Vec<String>>,
    /// Requests per minute allowed per API key; `None` is unlimited.
    pub rpm: Option<u64>,
    /// Tokens per minute allowed per API key; `None` is unlimited.
    pub tpm: Option<u64>,
    /// Every inference request answers 429 `insufficient_quota`.
    pub insufficient_quota: bool,
    /// The models `GET /v1/models` lists and the inference endpoints accept.
    pub models: Vec<Model>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            api_keys: None,
            rpm: None,
            tpm: None,
            insufficient_quota: false,
            models: builtin_models(),
        }
    }
}

/// A model list file: `{"data":[{"id","created","owned_by"}]}` (other keys ignored).
#[derive(Deserialize)]
struct ModelFile {
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
    #[serde(default)]
    created: i64,
    #[serde(default = "default_owner")]
    owned_by: String,
}

fn default_owner() -> String {
    "system".to_owned()
}

/// The embedded model list (every id OpenAI's spec enumerates, plus embedding and
/// moderation models).
pub fn builtin_models() -> Vec<Model> {
    // The file is checked in and guarded by a unit test; an unparseable one would
    // give an empty list rather than a start-up failure.
    parse_models(BUILTIN_MODELS).unwrap_or_default()
}

/// Parses a model list file (`{"data":[{"id","created","owned_by"}]}`).
pub fn parse_models(json: &str) -> Result<Vec<Model>, serde_json::Error> {
    let file: ModelFile = serde_json::from_str(json)?;
    Ok(file
        .data
        .into_iter()
        .map(|m| Model {
            id: m.id,
            object: "model".to_owned(),
            created: m.created,
            owned_by: m.owned_by,
            extra: Default::default(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_list_parses_and_covers_the_families() {
        let models = parse_models(BUILTIN_MODELS).unwrap();
        let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
        for id in [
            "gpt-4o",
            "gpt-4o-2024-08-06",
            "text-embedding-3-small",
            "omni-moderation-latest",
        ] {
            assert!(ids.contains(&id), "missing {id}");
        }
        assert!(models.iter().all(|m| m.object == "model"));
    }

    #[test]
    fn a_custom_file_needs_only_ids() {
        let models =
            parse_models(r#"{"data":[{"id":"m1"},{"id":"m2","created":5,"owned_by":"me"}]}"#)
                .unwrap();
        assert_eq!(models.len(), 2);
        assert_eq!(models[1].owned_by, "me");
        assert!(parse_models(r#"{"models":[]}"#).is_err());
    }
}
