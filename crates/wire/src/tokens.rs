//! Tokenizers (the `tokens` feature): which BPE a model family uses, token counts,
//! cutting text to a token budget, splitting text into per-token pieces for stream
//! deltas, and an estimate of a request body's input tokens. The simulator counts its
//! usage with it; the gateway estimates what a request will cost before sending it.
//!
//! Each BPE is built once per process (building one parses a ~4 MB vocabulary) and
//! shared. Text is encoded as ordinary text, so a prompt that contains
//! `<|endoftext|>` counts as the characters it is, never as a special token.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

/// The BPE vocabularies tollgate counts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o-series, chatgpt-4o, omni-moderation, and
    /// the default for any model we do not recognise.
    O200kBase,
    /// gpt-4 (not 4o/4.1), gpt-3.5, text-embedding-*.
    Cl100kBase,
}

impl Encoding {
    /// The encoding of `model`'s family. Fine-tuned ids (`ft:gpt-4o-mini:org::id`)
    /// count as their base model.
    pub fn for_model(model: &str) -> Self {
        let m = model.trim().to_ascii_lowercase();
        let m = m.strip_prefix("ft:").unwrap_or(&m);
        let is_gpt4_classic = m == "gpt-4" || m.starts_with("gpt-4-") || m.starts_with("gpt-4:");
        if is_gpt4_classic
            || m.starts_with("gpt-3.5")
            || m.starts_with("gpt-35")
            || m.starts_with("text-embedding-")
            || m.starts_with("davinci")
            || m.starts_with("babbage")
        {
            Self::Cl100kBase
        } else {
            Self::O200kBase
        }
    }

    /// The shared BPE, or `None` if it could not be built (then counts fall back to
    /// an estimate rather than failing the request).
    fn bpe(self) -> Option<&'static CoreBPE> {
        static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
        static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
        match self {
            Self::O200kBase => O200K.get_or_init(|| tiktoken_rs::o200k_base().ok()),
            Self::Cl100kBase => CL100K.get_or_init(|| tiktoken_rs::cl100k_base().ok()),
        }
        .as_ref()
    }

    /// Number of tokens in `text`.
    pub fn count(self, text: &str) -> usize {
        match self.bpe() {
            Some(bpe) => bpe.encode_ordinary(text).len(),
            None => estimate(text),
        }
    }

    /// The longest prefix of `text` that is at most `max_tokens` tokens, and its
    /// token count. Returns `text` itself when it already fits.
    pub fn truncate(self, text: &str, max_tokens: usize) -> (String, usize) {
        let Some(bpe) = self.bpe() else {
            let cut: String = text.chars().take(max_tokens.saturating_mul(4)).collect();
            let n = estimate(&cut);
            return (cut, n);
        };
        let tokens = bpe.encode_ordinary(text);
        if tokens.len() <= max_tokens {
            return (text.to_owned(), tokens.len());
        }
        // A cut can fall inside a multi-byte character, and re-encoding a decoded
        // prefix can (rarely) merge differently: back off until both are fine.
        let mut keep = max_tokens;
        while keep > 0 {
            if let Ok(prefix) = bpe.decode(&tokens[..keep]) {
                let n = bpe.encode_ordinary(&prefix).len();
                if n <= max_tokens {
                    return (prefix, n);
                }
            }
            keep -= 1;
        }
        (String::new(), 0)
    }

    /// `text` split into consecutive pieces of about one token each, for stream
    /// deltas. The pieces concatenate to `text` exactly; a token that ends inside a
    /// multi-byte character is joined with the next one.
    pub fn pieces(self, text: &str) -> Vec<String> {
        let Some(bpe) = self.bpe() else {
            return text.chars().map(String::from).collect();
        };
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for token in bpe.encode_ordinary(text) {
            if let Ok(bytes) = bpe.decode_bytes(&[token]) {
                pending.extend_from_slice(&bytes);
            }
            if let Ok(piece) = std::str::from_utf8(&pending) {
                out.push(piece.to_owned());
                pending.clear();
            }
        }
        if !pending.is_empty() {
            out.push(String::from_utf8_lossy(&pending).into_owned());
        }
        out
    }
}

/// Tokens of `text` under `model`'s tokenizer.
pub fn count(model: &str, text: &str) -> usize {
    Encoding::for_model(model).count(text)
}

/// Tokens the chat format adds around every message (OpenAI's published recipe).
const PER_MESSAGE: usize = 3;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: usize = 3;
/// Members whose string values are structure, not text the model reads.
const NOT_TEXT: [&str; 8] = [
    "type",
    "role",
    "id",
    "call_id",
    "status",
    "detail",
    "image_url",
    "file_id",
];

/// An estimate of the input tokens of a request body for `model`: the text of
/// `instructions`, `input` (Responses and Embeddings: a string, strings, or items) and
/// `messages` (Chat), each item costing its text plus the chat format's few tokens,
/// and the JSON of offered `tools`. Pre-tokenised embedding inputs count one per id.
/// An estimate, not the upstream's count: callers reserve with it and settle with the
/// real usage.
pub fn estimate_input(model: &str, body: &serde_json::Value) -> usize {
    let enc = Encoding::for_model(model);
    let mut n = 0;
    if let Some(s) = body.get("instructions").and_then(|v| v.as_str()) {
        n += PER_MESSAGE + enc.count(s);
    }
    for member in ["input", "messages"] {
        match body.get(member) {
            // A bare string is one user message ("user" is one token).
            Some(serde_json::Value::String(s)) => n += PER_MESSAGE + 1 + enc.count(s),
            Some(serde_json::Value::Array(items)) => {
                for item in items {
                    n += match item {
                        serde_json::Value::Number(_) => 1,
                        serde_json::Value::String(s) => enc.count(s),
                        serde_json::Value::Array(ids) => ids.len(),
                        other => PER_MESSAGE + text_tokens(enc, other),
                    };
                }
            }
            _ => {}
        }
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        n += enc.count(&tools.to_string());
    }
    n + REPLY_PRIMING
}

/// Tokens of every text string inside `v` (and of a message's role).
fn text_tokens(enc: Encoding, v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::String(s) => enc.count(s),
        serde_json::Value::Array(a) => a.iter().map(|x| text_tokens(enc, x)).sum(),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, x)| match (k.as_str(), x) {
                ("role", serde_json::Value::String(r)) => enc.count(r),
                (k, _) if NOT_TEXT.contains(&k) => 0,
                _ => text_tokens(enc, x),
            })
            .sum(),
        _ => 0,
    }
}

/// About four characters per token: used only if a vocabulary failed to load.
fn estimate(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_families_pick_their_encoding() {
        for m in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "gpt-4.1",
            "gpt-5",
            "o3",
            "o4-mini",
            "chatgpt-4o-latest",
            "omni-moderation-latest",
            "unknown-model",
            "ft:gpt-4o-mini:acme::x",
        ] {
            assert_eq!(Encoding::for_model(m), Encoding::O200kBase, "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-4-0613",
            "gpt-3.5-turbo",
            "text-embedding-3-small",
            "text-embedding-ada-002",
        ] {
            assert_eq!(Encoding::for_model(m), Encoding::Cl100kBase, "{m}");
        }
    }

    #[test]
    fn counts_with_the_real_vocabularies() {
        // Known counts: "hello world" is 2 tokens in both; the encodings differ on
        // longer text.
        assert_eq!(count("gpt-4o", "hello world"), 2);
        assert_eq!(count("gpt-4", "hello world"), 2);
        assert_eq!(count("gpt-4o", ""), 0);
        let text = "Tokenizers differ: antidisestablishmentarianism, 12345678, naïve café.";
        assert!(count("gpt-4o", text) > 5);
    }

    #[test]
    fn truncate_respects_the_budget_and_keeps_a_prefix() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(10);
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let (cut, n) = enc.truncate(&text, 16);
            assert!(n <= 16 && n > 10, "{n}");
            assert_eq!(enc.count(&cut), n);
            assert!(text.starts_with(&cut));
            assert_eq!(enc.truncate("short", 16), ("short".to_owned(), 1));
        }
    }

    #[test]
    fn request_estimates_count_the_text_the_model_reads() {
        let chat = serde_json::json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "hello world"},
                {"role": "user", "content": [{"type": "text", "text": "hello world"}]}
            ]
        });
        let per = PER_MESSAGE + count("gpt-4o", "system") + 2;
        let user = PER_MESSAGE + count("gpt-4o", "user") + 2;
        assert_eq!(estimate_input("gpt-4o", &chat), per + user + REPLY_PRIMING);
        let resp = serde_json::json!({"model": "gpt-4o", "input": "hello world", "instructions": "hello world"});
        assert_eq!(
            estimate_input("gpt-4o", &resp),
            (PER_MESSAGE + 2) + (PER_MESSAGE + 1 + 2) + REPLY_PRIMING
        );
        let emb = serde_json::json!({"input": [[1, 2, 3], "hello world"]});
        assert_eq!(
            estimate_input("text-embedding-3-small", &emb),
            3 + 2 + REPLY_PRIMING
        );
        let long = serde_json::json!({"input": "word ".repeat(500)});
        assert!(estimate_input("gpt-4o", &long) >= 500);
    }

    #[test]
    fn pieces_concatenate_to_the_text_even_with_multibyte_characters() {
        let text = "Héllo wörld — 日本語のテキスト 🎉 done.";
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let pieces = enc.pieces(text);
            assert!(pieces.len() > 5);
            assert_eq!(pieces.concat(), text);
        }
    }
}
