//! `POST /v1/moderations`: a small keyword rule set (docs/simulator.md), matched
//! case-insensitively as substrings, so tests can make an input flagged at will.
//!
//! A string or each string of a list is one input with its own result. A list of
//! multi-modal parts (`text` / `image_url`) is one input, as on the live API: one
//! result whose `category_applied_input_types` says which part types each category
//! looked at.

use std::collections::BTreeMap;

use serde_json::Value;
use tollgate_wire::moderations::{
    ModerationInput, ModerationRequest, ModerationResponse, ModerationResult, CATEGORIES,
};

use super::rng::{derive, hash_str, Rng};
use super::validate;
use crate::error::ApiError;
use crate::ids::new_id;

/// The model used when the request names none.
pub const DEFAULT_MODEL: &str = "omni-moderation-latest";

/// Category → phrases that flag it (lower case).
const RULES: &[(&str, &[&str])] = &[
    ("violence", &["kill", "murder", "stab"]),
    ("violence/graphic", &["gore"]),
    ("harassment", &["idiot", "loser"]),
    ("harassment/threatening", &["i will hurt you"]),
    ("hate", &["hateful"]),
    ("self-harm", &["suicide"]),
    ("self-harm/intent", &["i want to hurt myself"]),
    ("sexual", &["explicit sex"]),
    ("illicit", &["steal", "counterfeit"]),
    ("illicit/violent", &["build a bomb"]),
];

/// Categories the omni models also judge on images.
const IMAGE_CATEGORIES: &[&str] = &[
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "violence",
    "violence/graphic",
];

/// One input as the rules see it.
struct Item {
    text: String,
    has_text: bool,
    has_image: bool,
}

/// Classifies every input. See [`super::moderate`].
pub fn moderate(req: &ModerationRequest) -> Result<ModerationResponse, ApiError> {
    validate::reject_unknown(&req.extra, &[])?;
    let items = match &req.input {
        ModerationInput::Text(t) => vec![text_item(t)],
        ModerationInput::Texts(ts) => ts.iter().map(|t| text_item(t)).collect(),
        ModerationInput::Parts(parts) => vec![parts_item(parts)?],
    };
    Ok(ModerationResponse {
        id: new_id("modr-", 32),
        model: req
            .model
            .clone()
            .unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
        results: items.iter().map(classify).collect(),
    })
}

fn text_item(text: &str) -> Item {
    Item {
        text: text.to_owned(),
        has_text: true,
        has_image: false,
    }
}

/// Multi-modal parts: text parts are read, image parts only noted (no keyword can
/// match an image, so images alone are never flagged).
fn parts_item(parts: &[Value]) -> Result<Item, ApiError> {
    let mut item = Item {
        text: String::new(),
        has_text: false,
        has_image: false,
    };
    for (i, part) in parts.iter().enumerate() {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                item.has_text = true;
                item.text
                    .push_str(part.get("text").and_then(Value::as_str).unwrap_or_default());
                item.text.push('\n');
            }
            Some("image_url") => item.has_image = true,
            other => {
                return Err(ApiError::invalid_request(
                    format!(
                        "Invalid value: '{}'. Supported values are: 'text' and 'image_url'.",
                        other.unwrap_or("null")
                    ),
                    Some(&format!("input[{i}].type")),
                    Some("invalid_value"),
                ))
            }
        }
    }
    Ok(item)
}

fn classify(item: &Item) -> ModerationResult {
    let lower = item.text.to_lowercase();
    let seed = hash_str(&lower);
    let mut categories = BTreeMap::new();
    let mut scores = BTreeMap::new();
    let mut applied = BTreeMap::new();
    for category in CATEGORIES {
        let hit = RULES
            .iter()
            .any(|(c, words)| *c == category && words.iter().any(|w| lower.contains(w)));
        let mut rng = Rng::new(derive(seed, category));
        // Matched: 0.90–0.99. Otherwise a tiny score, 1e-5 to 1e-3, like a clean input.
        let score = if hit {
            0.9 + rng.unit() * 0.09
        } else {
            1e-5 + rng.unit() * (1e-3 - 1e-5)
        };
        let mut types = Vec::new();
        if item.has_text {
            types.push("text".to_owned());
        }
        if item.has_image && IMAGE_CATEGORIES.contains(&category) {
            types.push("image".to_owned());
        }
        categories.insert(category.to_owned(), hit);
        scores.insert(category.to_owned(), score);
        applied.insert(category.to_owned(), types);
    }
    ModerationResult {
        flagged: categories.values().any(|flag| *flag),
        categories,
        category_scores: scores,
        category_applied_input_types: applied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn moderate_json(body: Value) -> ModerationResponse {
        moderate(&serde_json::from_value(body).unwrap()).unwrap()
    }

    #[test]
    fn threats_are_violence_and_greetings_are_clean() {
        let r = moderate_json(json!({"input": ["I will KILL you", "hello"]}));
        assert!(r.id.starts_with("modr-"));
        assert_eq!(r.model, DEFAULT_MODEL);
        assert_eq!(r.results.len(), 2);
        let (bad, good) = (&r.results[0], &r.results[1]);
        assert!(bad.flagged && bad.categories["violence"]);
        assert!(bad.category_scores["violence"] >= 0.9);
        assert!(!bad.categories["hate"] && bad.category_scores["hate"] < 1e-3);
        assert!(!good.flagged);
        for result in &r.results {
            assert_eq!(result.categories.len(), 13);
            assert_eq!(result.category_scores.len(), 13);
            assert!(result
                .category_scores
                .values()
                .all(|s| (0.0..=1.0).contains(s)));
            assert!(result
                .category_applied_input_types
                .values()
                .all(|t| t == &["text"]));
        }
        assert_eq!(
            r.results,
            moderate_json(json!({"input": ["I will KILL you", "hello"]})).results
        );
    }

    #[test]
    fn every_rule_flags_its_category() {
        for (category, words) in RULES {
            for word in *words {
                let r = moderate_json(json!({"input": format!("well, {word}!"), "model": "m"}));
                assert!(r.results[0].categories[*category], "{word} → {category}");
                assert_eq!(r.model, "m");
            }
        }
    }

    #[test]
    fn parts_are_one_input_with_image_types() {
        let r = moderate_json(json!({"input": [
            {"type": "text", "text": "a gore scene"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}));
        assert_eq!(r.results.len(), 1);
        let res = &r.results[0];
        assert!(res.categories["violence/graphic"]);
        assert_eq!(
            res.category_applied_input_types["violence"],
            ["text", "image"]
        );
        assert_eq!(res.category_applied_input_types["hate"], ["text"]);
        let e = moderate(&serde_json::from_value(json!({"input": [{"type": "audio"}]})).unwrap())
            .unwrap_err();
        assert_eq!(e.status, 400);
        let e = moderate(&serde_json::from_value(json!({"input": "x", "bogus": 1})).unwrap())
            .unwrap_err();
        assert_eq!(e.body.error.code.as_deref(), Some("unknown_parameter"));
    }
}
