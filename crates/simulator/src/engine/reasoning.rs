//! Reasoning models (o1, o3, o4-mini, gpt-5 and later, not the `-chat` variants):
//! how many hidden reasoning tokens an answer spends before its visible output.
//!
//! The count depends on the requested effort and a little on the prompt's hash, and
//! it counts against the output-token limit first — as on the live API, where a small
//! `max_output_tokens` can be used up by reasoning and leave no visible text.

use super::rng::Rng;

/// True for models that reason before answering.
pub fn is_reasoning_model(model: &str) -> bool {
    let m = model.trim().to_ascii_lowercase();
    let m = m.strip_prefix("ft:").unwrap_or(&m);
    let o_series = m.starts_with('o') && m.chars().nth(1).is_some_and(|c| c.is_ascii_digit());
    let gpt5 = m.starts_with("gpt-5") && !m.contains("chat");
    o_series || gpt5
}

/// The effort the API reports when the request sets none.
pub const DEFAULT_EFFORT: &str = "medium";

/// Reasoning tokens for `model` at `effort` (0 for other models and for
/// `none`/`minimal`): a base per effort plus up to a quarter more, from `seed`.
pub fn tokens(model: &str, effort: Option<&str>, seed: u64) -> usize {
    if !is_reasoning_model(model) {
        return 0;
    }
    let base = match effort.unwrap_or(DEFAULT_EFFORT) {
        "none" | "minimal" => return 0,
        "low" => 48,
        "high" => 320,
        "xhigh" => 640,
        _ => 128,
    };
    base + Rng::new(seed).below(base / 4 + 1)
}

/// How an output-token `limit` splits: (reasoning tokens spent, budget left for
/// visible output, `None` when unlimited).
pub fn split(reasoning: usize, limit: Option<usize>) -> (usize, Option<usize>) {
    match limit {
        Some(l) => (reasoning.min(l), Some(l.saturating_sub(reasoning))),
        None => (reasoning, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reasoning_models_reason() {
        for m in [
            "o1",
            "o3-mini",
            "o4-mini-2025-04-16",
            "gpt-5",
            "gpt-5.5",
            "gpt-5-mini",
        ] {
            assert!(is_reasoning_model(m), "{m}");
            assert!(tokens(m, None, 1) >= 128);
        }
        for m in [
            "gpt-4o",
            "gpt-4.1",
            "omni-moderation-latest",
            "gpt-5-chat-latest",
            "gpt-3.5-turbo",
        ] {
            assert!(!is_reasoning_model(m), "{m}");
            assert_eq!(tokens(m, Some("high"), 1), 0);
        }
        assert_eq!(tokens("gpt-5", Some("minimal"), 1), 0);
        assert!(tokens("o3", Some("low"), 1) < tokens("o3", Some("high"), 1));
        assert_eq!(tokens("o3", None, 9), tokens("o3", None, 9));
    }

    #[test]
    fn limits_are_spent_on_reasoning_first() {
        assert_eq!(split(100, None), (100, None));
        assert_eq!(split(100, Some(150)), (100, Some(50)));
        assert_eq!(split(100, Some(40)), (40, Some(0)));
    }
}
