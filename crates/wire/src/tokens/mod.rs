//! Tokenizers (the `tokens` feature): which BPE a model family uses, token counts,
//! cutting text to a token budget, splitting text into per-token pieces for stream
//! deltas, and an estimate of a request body's input tokens. The simulator counts its
//! usage with it; the gateway estimates what a request will cost before sending it.
//!
//! The vocabularies are tables compiled into the binary (`build.rs`, `bpe`): counting
//! needs no map built at run time, only each encoding's split pattern compiled once
//! per process. Text is encoded as ordinary text, so a prompt that contains
//! `<|endoftext|>` counts as the characters it is, never as a special token.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

mod bpe;

use bpe::Vocabulary;

static O200K: OnceLock<Option<Vocabulary>> = OnceLock::new();
static CL100K: OnceLock<Option<Vocabulary>> = OnceLock::new();

/// The BPE vocabularies tollgate counts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
        // Case-insensitive prefixes, without a lowercased copy (admission calls this
        // for every request a TPM rule or a budget governs).
        let starts = |m: &str, p: &str| m.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
        let m = model.trim();
        let m = if starts(m, "ft:") { &m[3..] } else { m };
        let is_gpt4_classic =
            m.eq_ignore_ascii_case("gpt-4") || starts(m, "gpt-4-") || starts(m, "gpt-4:");
        if is_gpt4_classic
            || starts(m, "gpt-3.5")
            || starts(m, "gpt-35")
            || starts(m, "text-embedding-")
            || starts(m, "davinci")
            || starts(m, "babbage")
        {
            Self::Cl100kBase
        } else {
            Self::O200kBase
        }
    }

    /// The shared vocabulary, or `None` if its pattern did not compile (then counts
    /// fall back to an estimate rather than failing the request).
    fn bpe(self) -> Option<&'static Vocabulary> {
        match self {
            Self::O200kBase => {
                O200K.get_or_init(|| Vocabulary::new(&bpe::O200K_BASE, bpe::O200K_BASE_PATTERN))
            }
            Self::Cl100kBase => {
                CL100K.get_or_init(|| Vocabulary::new(&bpe::CL100K_BASE, bpe::CL100K_BASE_PATTERN))
            }
        }
        .as_ref()
    }

    /// Whether this encoding is ready to count (or failed to be: counts then estimate).
    pub fn is_prepared(self) -> bool {
        match self {
            Self::O200kBase => O200K.get().is_some(),
            Self::Cl100kBase => CL100K.get().is_some(),
        }
    }

    /// Makes this encoding ready now if it is not yet: compiles its split pattern
    /// (o200k: about 6 ms of CPU; the vocabulary itself is compiled in). Whoever
    /// counts first otherwise does it, and a gateway I/O thread that does stalls every
    /// connection it serves for that long.
    pub fn prepare(self) {
        let _ = self.bpe();
    }

    /// Number of tokens in `text`. Counts are remembered per thread (see
    /// [`CountCache`]): the same system prompt, role or tool list comes with request
    /// after request, and hashing it costs a fraction of encoding it.
    pub fn count(self, text: &str) -> usize {
        COUNTS.with(|cache| {
            let mut cache = cache.borrow_mut();
            let key = cache.key(self, text);
            if let Some(n) = cache.get(key, text.len()) {
                return n;
            }
            let n = match self.bpe() {
                Some(bpe) => bpe.count(text),
                None => estimate(text),
            };
            cache.put(key, text.len(), n);
            n
        })
    }

    /// The longest prefix of `text` that is at most `max_tokens` tokens, and its
    /// token count. Returns `text` itself when it already fits.
    pub fn truncate(self, text: &str, max_tokens: usize) -> (String, usize) {
        let Some(bpe) = self.bpe() else {
            let cut: String = text.chars().take(max_tokens.saturating_mul(4)).collect();
            let n = estimate(&cut);
            return (cut, n);
        };
        let tokens = bpe.token_ranges(text);
        if tokens.len() <= max_tokens {
            return (text.to_owned(), tokens.len());
        }
        // A cut can fall inside a multi-byte character, and encoding a prefix on its
        // own can (rarely) merge differently: back off until both are fine.
        for keep in (1..=max_tokens).rev() {
            if let Some(prefix) = text.get(..tokens[keep - 1].end) {
                let n = bpe.count(prefix);
                if n <= max_tokens {
                    return (prefix.to_owned(), n);
                }
            }
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
        let mut start = 0;
        for token in bpe.token_ranges(text) {
            if let Some(piece) = text.get(start..token.end) {
                out.push(piece.to_owned());
                start = token.end;
            }
        }
        if start < text.len() {
            out.push(text[start..].to_owned());
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
/// Members whose string values are structure, not text the model reads (a reasoning
/// item's `encrypted_content` too: opaque, not text to count; and `file_id`, which
/// also names files cited in replayed output, not only input files).
const NOT_TEXT: [&str; 8] = [
    "type",
    "role",
    "id",
    "call_id",
    "status",
    "detail",
    "encrypted_content",
    "file_id",
];

/// Members that carry an image, a file or audio (a URL, or the bytes as base64): each
/// counts [`MEDIA_TOKENS`], whatever its size. Counting base64 as text would make a
/// 1 MB PDF look like hundreds of thousands of tokens and refuse it under any TPM
/// limit; the call's real usage settles the difference either way.
const MEDIA: [&str; 3] = ["image_url", "file_data", "data"];

/// What one image or file counts in an estimate: a 1024×1024 image in high detail
/// (OpenAI's published 85 + 4 × 170 tokens).
const MEDIA_TOKENS: usize = 765;

/// An estimate of the input tokens of a request body for `model`: the text of
/// `instructions`, `input` (Responses and Embeddings: a string, strings, or items) and
/// `messages` (Chat), each item costing its text plus the chat format's few tokens,
/// and the offered `tools` (their names, keys and text, a token per value for the
/// JSON around them). Pre-tokenised embedding inputs count one per id.
/// An estimate, not the upstream's count: callers reserve with it and settle with the
/// real usage.
pub fn estimate_input(model: &str, body: &serde_json::Value) -> usize {
    let enc = Encoding::for_model(model);
    Body { enc }.deserialize(body).unwrap_or(REPLY_PRIMING)
}

/// Prepares the default family's encoding (o200k: gpt-4o, gpt-4.1, gpt-5, o-series,
/// unknown models) on a thread of its own, once per process: the gateway calls it when
/// a rule or budget that counts tokens appears, so the first request it governs finds
/// the pattern compiled instead of compiling it on an I/O thread. cl100k (gpt-4,
/// gpt-3.5, embeddings) is still prepared on first use. Returns the thread when this
/// call started it.
pub fn prepare_in_background() -> Option<std::thread::JoinHandle<()>> {
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if STARTED.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return None;
    }
    std::thread::Builder::new()
        .name("tollgate-bpe".into())
        .spawn(|| Encoding::O200kBase.prepare())
        .ok()
}

/// [`estimate_input`] straight from a request's JSON bytes, in one pass that builds no
/// tree and copies no text (the gateway's admission path). `None` when the body is
/// not a JSON object.
pub fn estimate_input_json(model: &str, body: &[u8]) -> Option<usize> {
    let enc = Encoding::for_model(model);
    // UTF-8 checked once for the whole body rather than by serde_json for each string.
    let text = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    Body { enc }.deserialize(&mut de).ok()
}

/// Remembered token counts, per thread: keyed by a seeded hash of the text (the
/// seed differs per thread and per process) and checked against its length.
/// Bounded: emptied when full.
///
/// The hash is foldhash's "quality" variant over the encoding and the text,
/// and the map takes it as its key as it is: SipHash on the text and again on the
/// map's key cost about 900 instructions per short text, a quarter of the whole
/// estimate of a two-message chat. A caller cannot see the seed or the memo, and a
/// collision it still found would only change one request's estimate, which the
/// call's real usage settles.
struct CountCache {
    hasher: foldhash::quality::RandomState,
    counts: HashMap<u64, (usize, usize), BuildHasherDefault<Prehashed>>,
}

thread_local! {
    static COUNTS: RefCell<CountCache> = RefCell::new(CountCache {
        hasher: foldhash::quality::RandomState::default(),
        counts: HashMap::default(),
    });
}

impl CountCache {
    const CAPACITY: usize = 4096;

    fn key(&self, enc: Encoding, text: &str) -> u64 {
        self.hasher.hash_one((enc, text))
    }

    fn get(&self, key: u64, len: usize) -> Option<usize> {
        self.counts
            .get(&key)
            .and_then(|&(l, n)| (l == len).then_some(n))
    }

    fn put(&mut self, key: u64, len: usize, n: usize) {
        if self.counts.len() >= Self::CAPACITY {
            self.counts.clear();
        }
        self.counts.insert(key, (len, n));
    }
}

/// The memo's map hasher: its keys are hashes already, used as they are.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is called (the key is a `u64`); any other input still
        // hashes to something.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A visitor's answers for JSON's scalars: `null`, a boolean, a number.
macro_rules! scalars {
    (null: $null:expr, bool: $bool:expr, number: $number:expr) => {
        fn visit_unit<E>(self) -> Result<usize, E> {
            Ok($null)
        }

        fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
            Ok($bool)
        }

        fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
            Ok($number)
        }

        fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
            Ok($number)
        }

        fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
            Ok($number)
        }
    };
}

/// A visitor that is also its own seed, taking any JSON value.
macro_rules! seed_any {
    ($visitor:ty) => {
        impl<'de> DeserializeSeed<'de> for $visitor {
            type Value = usize;

            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
                d.deserialize_any(self)
            }
        }
    };
}

/// The request body: the members that carry input, every other one skipped unread.
struct Body {
    enc: Encoding,
}

impl<'de> DeserializeSeed<'de> for Body {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Body {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a request body object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let enc = self.enc;
        let mut n = REPLY_PRIMING;
        while let Some(key) = map.next_key::<Key>()? {
            n += match key {
                Key::Instructions => map.next_value_seed(Text {
                    enc,
                    mode: Mode::Instructions,
                })?,
                Key::Input | Key::Messages => map.next_value_seed(Items { enc })?,
                Key::Tools | Key::Functions => map.next_value_seed(Json { enc })?,
                Key::Other => map.next_value::<IgnoredAny>().map(|_| 0)?,
            };
        }
        Ok(n)
    }
}

/// The top-level members the estimate reads.
enum Key {
    Instructions,
    Input,
    Messages,
    Tools,
    /// Chat's older form of `tools`.
    Functions,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    "instructions" => Key::Instructions,
                    "input" => Key::Input,
                    "messages" => Key::Messages,
                    "tools" => Key::Tools,
                    "functions" => Key::Functions,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// `input` or `messages`: a bare string is one user message ("user" is one token);
/// in an array, a string counts its text, a number one token, an array of ids one
/// per id, and an item its text plus the chat format's tokens.
struct Items {
    enc: Encoding,
}

seed_any!(Items);

impl<'de> Visitor<'de> for Items {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<usize, E> {
        Ok(PER_MESSAGE + 1 + self.enc.count(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while let Some(t) = seq.next_element_seed(Item { enc: self.enc })? {
            n += t;
        }
        Ok(n)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<usize, A::Error> {
        Ignore.visit_map(map)
    }

    scalars!(null: 0, bool: 0, number: 0);
}

/// One element of an `input` or `messages` array.
struct Item {
    enc: Encoding,
}

seed_any!(Item);

impl<'de> Visitor<'de> for Item {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an input item")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<usize, E> {
        Ok(self.enc.count(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut ids: A) -> Result<usize, A::Error> {
        let mut n = 0;
        while ids.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<usize, A::Error> {
        let text = Text {
            enc: self.enc,
            mode: Mode::Any,
        };
        Ok(PER_MESSAGE + text.visit_map(map)?)
    }

    scalars!(null: PER_MESSAGE, bool: PER_MESSAGE, number: 1);
}

/// Tokens of every text string inside a value (and of a message's role), skipping
/// the members that are structure.
struct Text {
    enc: Encoding,
    mode: Mode,
}

/// What [`Text`] counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every string inside the value.
    Any,
    /// The value if it is a string (a role).
    Role,
    /// The value if it is a string, as a message of its own (`instructions`).
    Instructions,
}

seed_any!(Text);

impl<'de> Visitor<'de> for Text {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<usize, E> {
        let n = self.enc.count(s);
        Ok(match self.mode {
            Mode::Instructions => PER_MESSAGE + n,
            Mode::Any | Mode::Role => n,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        if self.mode != Mode::Any {
            return Ignore.visit_seq(seq);
        }
        let mut n = 0;
        while let Some(t) = seq.next_element_seed(Text { ..self })? {
            n += t;
        }
        Ok(n)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        if self.mode != Mode::Any {
            return Ignore.visit_map(map);
        }
        let (enc, mut n) = (self.enc, 0);
        while let Some(key) = map.next_key::<MemberKind>()? {
            n += match key {
                MemberKind::Role => map.next_value_seed(Text {
                    enc,
                    mode: Mode::Role,
                })?,
                MemberKind::Structure => map.next_value::<IgnoredAny>().map(|_| 0)?,
                MemberKind::Media => map.next_value::<Option<IgnoredAny>>().map(|v| {
                    if v.is_some() {
                        MEDIA_TOKENS
                    } else {
                        0
                    }
                })?,
                MemberKind::Text => map.next_value_seed(Text {
                    enc,
                    mode: Mode::Any,
                })?,
            };
        }
        Ok(n)
    }

    scalars!(null: 0, bool: 0, number: 0);
}

/// What a member of an input item is to the estimate.
enum MemberKind {
    Role,
    Structure,
    Media,
    Text,
}

impl<'de> de::Deserialize<'de> for MemberKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MemberKind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, k: &str) -> Result<MemberKind, E> {
                Ok(match k {
                    "role" => MemberKind::Role,
                    k if NOT_TEXT.contains(&k) => MemberKind::Structure,
                    k if MEDIA.contains(&k) => MemberKind::Media,
                    _ => MemberKind::Text,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// `tools`: the tokens of its names, keys and strings, and one for each value's
/// JSON punctuation — close to counting the serialised list, without serialising it.
struct Json {
    enc: Encoding,
}

seed_any!(Json);

impl<'de> Visitor<'de> for Json {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<usize, E> {
        Ok(1 + self.enc.count(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 1;
        while let Some(t) = seq.next_element_seed(Json { enc: self.enc })? {
            n += t;
        }
        Ok(n)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut n = 1;
        while let Some(k) = map.next_key_seed(Json { enc: self.enc })? {
            n += k + map.next_value_seed(Json { enc: self.enc })?;
        }
        Ok(n)
    }

    scalars!(null: 0, bool: 1, number: 1);
}

/// Consumes a value and counts nothing.
struct Ignore;

impl<'de> Visitor<'de> for Ignore {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(0)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(0)
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
            "GPT-4O",
            "gpt-4é",
            "é",
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
            "GPT-4",
            " Gpt-3.5-Turbo ",
            "FT:gpt-3.5-turbo:acme::x",
        ] {
            assert_eq!(Encoding::for_model(m), Encoding::Cl100kBase, "{m}");
        }
    }

    #[test]
    fn the_default_vocabulary_is_built_on_a_thread_of_its_own_once() {
        // No other test of this crate starts it.
        let thread = prepare_in_background().expect("started");
        assert_eq!(thread.thread().name(), Some("tollgate-bpe"));
        assert!(prepare_in_background().is_none(), "started twice");
        thread.join().unwrap();
        assert!(Encoding::O200kBase.is_prepared());
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
    fn the_one_pass_estimate_from_bytes_equals_the_one_from_a_tree() {
        let bodies = [
            r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":[{"type":"text","text":"hi \u00e9 there"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}],"max_tokens":5}"#,
            r#"{"model":"gpt-4o","instructions":"","input":[{"role":"user","content":"a"},"b",7,[1,2,3],null,true,{"type":"function_call_output","call_id":"c1","output":"{\"ok\":1}"}]}"#,
            r#"{"input":{"not":"an array"},"instructions":{"not":"text"},"messages":null}"#,
            r#"{"model":"gpt-4o","input":"x","tools":[{"type":"function","name":"get_weather","description":"Weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"strict":true,"n":1.5}}]}"#,
            r#"{}"#,
        ];
        for b in bodies {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            let tree = estimate_input("gpt-4o", &v);
            assert_eq!(
                estimate_input_json("gpt-4o", b.as_bytes()),
                Some(tree),
                "{b}"
            );
        }
        // Empty instructions still cost their message's tokens.
        let v = serde_json::json!({"instructions": ""});
        assert_eq!(estimate_input("gpt-4o", &v), PER_MESSAGE + REPLY_PRIMING);
        // Not a JSON object: no estimate from bytes, the bare minimum from a tree.
        assert_eq!(estimate_input_json("gpt-4o", b"[1,2]"), None);
        assert_eq!(estimate_input_json("gpt-4o", b"{\"input\":"), None);
        assert_eq!(
            estimate_input("gpt-4o", &serde_json::json!([1])),
            REPLY_PRIMING
        );
    }

    #[test]
    fn images_files_and_audio_count_a_fixed_amount_not_their_bytes() {
        let base = |content: serde_json::Value| {
            estimate_input(
                "gpt-4o",
                &serde_json::json!({"messages": [{"role": "user", "content": content}]}),
            )
        };
        let text_only = base(serde_json::json!([{"type": "text", "text": "what is this?"}]));
        let b64 = "QUJD".repeat(256 * 1024); // 1 MiB of base64
        for media in [
            serde_json::json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}"), "detail": "high"}}),
            serde_json::json!({"type": "file", "file": {"file_data": format!("data:application/pdf;base64,{b64}")}}),
            serde_json::json!({"type": "input_audio", "input_audio": {"data": b64}}),
        ] {
            let with = base(serde_json::json!([
                {"type": "text", "text": "what is this?"},
                media
            ]));
            assert_eq!(
                with,
                text_only + MEDIA_TOKENS,
                "{}",
                &media.to_string()[..60]
            );
        }
        // A file by id, or a file cited by id in replayed output, counts nothing.
        let by_id = base(serde_json::json!([
            {"type": "text", "text": "what is this?"},
            {"type": "input_file", "file_id": "file-abc"}
        ]));
        assert_eq!(by_id, text_only);
        // Chat's older `functions` count as `tools` do.
        let f = serde_json::json!([{"name": "lookup", "description": "Find an order by its id", "parameters": {"type": "object"}}]);
        let tools = estimate_input("gpt-4o", &serde_json::json!({ "tools": f }));
        let functions = estimate_input("gpt-4o", &serde_json::json!({ "functions": f }));
        assert!(functions > REPLY_PRIMING + 5);
        assert_eq!(functions, tools);
    }

    #[test]
    fn tools_cost_about_what_their_json_does() {
        let tools = serde_json::json!([{"type":"function","name":"lookup_order","description":"Find an order by its id and return its status and items","parameters":{"type":"object","properties":{"order_id":{"type":"string","description":"The order id"}},"required":["order_id"],"additionalProperties":false}}]);
        let serialised = count("gpt-4o", &tools.to_string());
        let estimated =
            estimate_input("gpt-4o", &serde_json::json!({ "tools": tools })) - REPLY_PRIMING;
        assert!(
            estimated * 10 >= serialised * 7 && estimated * 10 <= serialised * 13,
            "{estimated} vs {serialised}"
        );
    }

    #[test]
    fn remembered_counts_are_the_counts() {
        let texts = [
            "You are a helpful assistant.",
            "ab",
            "ba",
            "",
            "naïve café 日本",
        ];
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let bpe = enc.bpe().unwrap();
            for t in texts {
                let fresh = bpe.count(t);
                assert_eq!(enc.count(t), fresh, "{t}");
                assert_eq!(enc.count(t), fresh, "{t} (remembered)");
            }
        }
        // Past its capacity the cache starts over and keeps answering right.
        let bpe = Encoding::O200kBase.bpe().unwrap();
        for i in 0..CountCache::CAPACITY + 10 {
            let t = format!("word{i} ");
            assert_eq!(count("gpt-4o", &t), bpe.count(&t), "{t}");
        }
        assert_eq!(count("gpt-4o", "hello world"), 2);
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
