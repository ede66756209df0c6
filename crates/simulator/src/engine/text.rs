//! Answer text: short, readable English derived from a hash of the prompt, so the
//! same prompt always reads the same and different prompts read differently. An
//! answer mentions a few words of the prompt (tests and demos can see it is "about"
//! the question) and is 20–80 tokens before any output-token limit cuts it.

use serde_json::{json, Value};

use super::rng::Rng;
use super::tokens::Encoding;

/// The upper end of an answer's length, in o200k tokens.
const MAX_TOKENS: usize = 80;

/// Words too common to be worth echoing back.
const STOPWORDS: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "your", "with", "this", "that", "from",
    "have", "has", "was", "were", "what", "when", "where", "which", "who", "why", "how", "can",
    "could", "would", "should", "will", "just", "about", "into", "than", "then", "them", "they",
    "their", "there", "these", "those", "been", "being", "does", "did", "doing", "some", "any",
    "all", "one", "two", "our", "out", "its", "it's", "also", "very", "please", "tell", "give",
    "say", "make", "let", "get", "use", "using", "like", "want", "need", "know",
];

/// Opening sentences; `{a}`, `{b}` are replaced by words of the prompt.
const OPENINGS: &[&str] = &[
    "Here is a short answer about {a} and {b}.",
    "You asked about {a}, so let me start with {b}.",
    "Good question about {a} and {b}.",
    "Let me walk through {a} with {b} in mind.",
    "The key idea behind {a} is how it relates to {b}.",
];

/// Follow-up sentences, chosen by the prompt's hash.
const FOLLOW_UPS: &[&str] = &[
    "The short version is that {a} depends on the context you give it.",
    "A good first step is to look at {b} more closely.",
    "In practice, most people start with the simplest option and refine it later.",
    "Keep in mind that {a} and {b} often interact in ways that are easy to miss.",
    "If you share more detail, I can give a more specific recommendation.",
    "A small experiment will usually tell you more than a long discussion.",
    "It helps to write down what a good outcome looks like before you begin.",
    "Most of the difficulty comes from edge cases rather than the main path.",
    "When in doubt, prefer the option that is easiest to undo.",
    "This is a simulated reply, so treat it as a placeholder rather than advice.",
];

/// A text answer to `prompt`: an opening that names words of the prompt, then two to
/// four follow-up sentences.
pub fn answer(prompt: &str, seed: u64) -> String {
    let words = keywords(prompt, 3);
    let mut rng = Rng::new(seed);
    let mut sentences = Vec::new();
    if let Some(opening) = rng.pick(OPENINGS) {
        sentences.push(fill(opening, &words));
    }
    let follow_ups = 2 + rng.below(3);
    let start = rng.below(FOLLOW_UPS.len());
    for i in 0..follow_ups {
        let template = FOLLOW_UPS[(start + i * 3) % FOLLOW_UPS.len()];
        sentences.push(fill(template, &words));
    }
    // Long prompt words (e.g. CJK, which costs a token per character) can push the
    // answer past the target length: drop follow-ups until it fits.
    while sentences.len() > 2 && Encoding::O200kBase.count(&sentences.join(" ")) > MAX_TOKENS {
        sentences.pop();
    }
    sentences.join(" ")
}

/// A text answer after a tool ran: it quotes the tool's output so a caller can see
/// the result was used.
pub fn tool_result_answer(tool_name: Option<&str>, output: &str, seed: u64) -> String {
    let quoted = clip_chars(output.trim(), 200);
    let source = match tool_name {
        Some(name) => format!("The {name} tool returned"),
        None => "The tool returned".to_owned(),
    };
    let mut rng = Rng::new(seed);
    let closing = match rng.below(3) {
        0 => "Based on that result, that should answer your question.",
        1 => "Using that result, here is the answer you were looking for.",
        _ => "That result gives us what we need, so I will summarise it for you.",
    };
    format!("{source}: {quoted}. {closing}")
}

/// A JSON object answer for `json_object` mode: a small object about the prompt.
pub fn json_object_answer(prompt: &str, seed: u64) -> Value {
    let words = keywords(prompt, 3);
    json!({
        "answer": answer(prompt, seed),
        "topics": words,
    })
}

/// Up to `max` distinct, lower-cased words of `text` worth echoing, in order of first
/// appearance. Falls back to generic words so templates always read.
pub fn keywords(text: &str, max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-')) {
        let word = raw
            .trim_matches(|c: char| c == '\'' || c == '-')
            .to_lowercase();
        if word.chars().count() < 3 || word.chars().count() > 16 {
            continue;
        }
        if STOPWORDS.contains(&word.as_str()) || word.chars().all(|c| c.is_numeric()) {
            continue;
        }
        if !out.contains(&word) {
            out.push(word);
        }
        if out.len() == max {
            break;
        }
    }
    for fallback in ["your question", "the details", "the goal"] {
        if out.len() >= max.min(2) {
            break;
        }
        out.push(fallback.to_owned());
    }
    out
}

/// Replaces `{a}` and `{b}` with the first and second (or last) keyword.
fn fill(template: &str, words: &[String]) -> String {
    let a = words.first().map_or("your question", String::as_str);
    let b = words
        .get(1)
        .or(words.last())
        .map_or("the details", String::as_str);
    template.replace("{a}", a).replace("{b}", b)
}

/// At most `max` characters of `s`, with an ellipsis when cut.
fn clip_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rng::hash_str;
    use crate::engine::tokens::count;

    #[test]
    fn answers_are_deterministic_and_mention_the_prompt() {
        let p = "How do I tune PostgreSQL vacuum settings?";
        let a = answer(p, hash_str(p));
        assert_eq!(a, answer(p, hash_str(p)));
        assert!(a.contains("postgresql"), "{a}");
        let other = "Explain photosynthesis to a child";
        assert_ne!(a, answer(other, hash_str(other)));
    }

    #[test]
    fn answers_are_20_to_80_tokens() {
        for p in [
            "hi",
            "Write a haiku about autumn leaves",
            "x",
            "日本語で答えてください",
            "",
        ] {
            for s in 0..50u64 {
                let n = count("gpt-4o", &answer(p, s));
                assert!((20..=80).contains(&n), "{p:?} seed {s}: {n}");
            }
        }
    }

    #[test]
    fn keywords_skip_stopwords_and_fall_back() {
        assert_eq!(
            keywords("What is the capital of France?", 3),
            ["capital", "france"]
        );
        assert_eq!(keywords("", 3), ["your question", "the details"]);
    }

    #[test]
    fn tool_answers_quote_the_output() {
        let a = tool_result_answer(Some("get_weather"), "{\"temp_c\":21}", 1);
        assert!(
            a.contains("get_weather") && a.contains("{\"temp_c\":21}"),
            "{a}"
        );
    }
}
