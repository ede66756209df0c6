//! Stage 8, account: what the upstream's answer says about usage — the response id,
//! the model version that actually served, and the token counts — read from a JSON
//! body or tapped from a stream as it passes through.
//!
//! For Chat streams where tollgate asked the upstream for usage on the caller's behalf
//! (`stream_options.include_usage` injected by preflight), the tap also removes what
//! the caller did not ask for: the final usage chunk and the `"usage":null` member of
//! every other chunk, so the caller sees exactly the stream it would have seen.

use bytes::Bytes;
use serde::Deserialize;
use tollgate_store::UsageRecord;
use tollgate_wire::sse::{SseDecoder, SseEvent};

use crate::preflight::Endpoint;

/// Usage facts observed in an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub response_id: Option<String>,
    pub model_served: Option<String>,
    pub usage: Option<Tokens>,
    /// An error reported inside a 200 stream (`error` event, failed response).
    pub stream_error: Option<String>,
}

/// Token counts, normalised across the Responses, Chat and Embeddings names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub total: u64,
    pub cached: u64,
    pub reasoning: u64,
}

impl Observed {
    /// Copies what was observed into a usage record. Tokens add to those already
    /// there: a call that received several answers (a structured answer discarded and
    /// asked again, see `answers`) paid for all of them.
    pub fn apply(&self, rec: &mut UsageRecord) {
        if self.response_id.is_some() {
            rec.response_id.clone_from(&self.response_id);
        }
        if self.model_served.is_some() {
            rec.model_served.clone_from(&self.model_served);
        }
        if let Some(t) = self.usage {
            rec.input_tokens = rec.input_tokens.saturating_add(t.input);
            rec.output_tokens = rec.output_tokens.saturating_add(t.output);
            rec.total_tokens = rec.total_tokens.saturating_add(t.total);
            rec.cached_tokens = rec.cached_tokens.saturating_add(t.cached);
            rec.reasoning_tokens = rec.reasoning_tokens.saturating_add(t.reasoning);
        }
        if rec.error_code.is_none() {
            rec.error_code.clone_from(&self.stream_error);
        }
    }
}

#[derive(Deserialize)]
struct UsageJson {
    #[serde(alias = "prompt_tokens")]
    input_tokens: Option<u64>,
    #[serde(alias = "completion_tokens")]
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
    #[serde(alias = "prompt_tokens_details")]
    input_tokens_details: Option<Details>,
    #[serde(alias = "completion_tokens_details")]
    output_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl From<UsageJson> for Tokens {
    fn from(u: UsageJson) -> Self {
        let input = u.input_tokens.unwrap_or(0);
        let output = u.output_tokens.unwrap_or(0);
        Self {
            input,
            output,
            total: u.total_tokens.unwrap_or(input + output),
            cached: u
                .input_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning: u
                .output_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// The parts of a response object or chat chunk accounting reads.
#[derive(Deserialize)]
struct BodyJson {
    id: Option<String>,
    model: Option<String>,
    usage: Option<UsageJson>,
    error: Option<ErrorJson>,
}

#[derive(Deserialize)]
struct ErrorJson {
    code: Option<String>,
}

impl BodyJson {
    /// What a whole answer says (a plain answer's; a stream's events are read apart).
    fn observed(self, endpoint: Endpoint) -> Observed {
        Observed {
            response_id: self.id.filter(|_| endpoint.has_response_id()),
            model_served: self.model,
            usage: self.usage.map(Tokens::from),
            stream_error: self.error.map(|e| e.code.unwrap_or_else(|| "error".into())),
        }
    }
}

/// Reads usage from a complete JSON answer (non-streamed). Unparseable bodies give
/// nothing: accounting never fails a call.
pub fn from_json_body(endpoint: Endpoint, body: &[u8]) -> Observed {
    // UTF-8 checked once for the whole body rather than by serde_json for each string.
    let Ok(text) = std::str::from_utf8(body) else {
        return Observed::default();
    };
    serde_json::from_str::<BodyJson>(text)
        .map_or_else(|_| Observed::default(), |b| b.observed(endpoint))
}

/// The top-level members of a JSON answer that accounting reads, in [`JsonTap`]'s
/// order.
const MEMBERS: [&[u8]; 4] = [b"id", b"model", b"usage", b"error"];
/// The most of one member's value [`JsonTap`] keeps; a longer one is dropped (the
/// usage object of an answer is a few hundred bytes).
const MEMBER_LIMIT: usize = 64 * 1024;

/// Where the first byte `wanted` is in `bytes`, or their length. Blocks of 32 bytes
/// are tested at once (the test compiles to vector compares), so the run of numbers in
/// an array of embeddings or the text of a long answer is passed over quickly.
#[inline]
fn first_of(bytes: &[u8], wanted: impl Fn(u8) -> bool) -> usize {
    let mut at = 0;
    for block in bytes.chunks_exact(32) {
        if block.iter().fold(false, |hit, &b| hit | wanted(b)) {
            break;
        }
        at += 32;
    }
    let rest = &bytes[at..];
    at + rest.iter().position(|&b| wanted(b)).unwrap_or(rest.len())
}

/// Where [`JsonTap`] is among the members of the top-level object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before the first `{`.
    Start,
    /// Where a member's name may begin.
    Name,
    /// Inside a member's name.
    InName,
    /// After a name, before its `:`.
    Colon,
    /// Inside a member's value.
    Value,
    /// After the closing `}`.
    End,
    /// The answer is not one JSON object.
    Invalid,
}

/// Watches a plain JSON answer as it passes, chunk by chunk, for what
/// [`from_json_body`] reads from a whole one: the values of the top-level `id`,
/// `model`, `usage` and `error` members are kept (up to 64 KiB each) and parsed at the
/// end; the rest is only followed for where strings, objects and arrays begin and end.
/// A large answer (the embeddings of many inputs) is then relayed as it arrives
/// instead of being held whole. An answer that is not one complete JSON object gives
/// nothing, as an unparseable body does.
#[derive(Debug)]
pub struct JsonTap {
    at: At,
    depth: usize,
    in_string: bool,
    escaped: bool,
    name: [u8; 8],
    name_len: usize,
    /// The member whose value is being kept, by its index in [`MEMBERS`].
    keeping: Option<usize>,
    /// The members' values as kept; empty when absent or longer than
    /// [`MEMBER_LIMIT`].
    values: [Vec<u8>; 4],
}

impl Default for JsonTap {
    fn default() -> Self {
        Self {
            at: At::Start,
            depth: 0,
            in_string: false,
            escaped: false,
            name: [0; 8],
            name_len: 0,
            keeping: None,
            values: Default::default(),
        }
    }
}

impl JsonTap {
    /// Follows one more chunk of the answer.
    pub fn pass(&mut self, chunk: &[u8]) {
        // Where the kept member's value began in this chunk.
        let mut kept_from = self.keeping.map(|_| 0);
        let mut i = 0;
        while i < chunk.len() {
            if matches!(self.at, At::End | At::Invalid) {
                self.trailing(&chunk[i..]);
                return;
            }
            if self.escaped {
                self.escaped = false;
                self.name_bytes(&chunk[i..=i]);
                i += 1;
                continue;
            }
            let rest = &chunk[i..];
            let skip = match (self.in_string, self.depth) {
                (true, _) => first_of(rest, |b| b == b'"' || b == b'\\'),
                // In the top-level object: where strings, objects, arrays and members
                // begin and end. Numbers, literals and whitespace are stepped over.
                (false, 0 | 1) => first_of(rest, |b| {
                    matches!(b, b'"' | b'{' | b'}' | b'[' | b']' | b',' | b':')
                }),
                // Deeper down only strings, objects and arrays matter; `{` and `[`,
                // `}` and `]` differ by one bit.
                (false, _) => first_of(rest, |b| b == b'"' || matches!(b | 0x20, b'{' | b'}')),
            };
            if self.in_string {
                self.name_bytes(&rest[..skip]);
            } else if matches!(self.at, At::Start | At::Name | At::Colon)
                && rest[..skip].iter().any(|b| !b.is_ascii_whitespace())
            {
                self.at = At::Invalid;
                continue;
            }
            i += skip;
            let Some(&b) = chunk.get(i) else { break };
            i += 1;
            if self.in_string {
                if b == b'\\' {
                    self.escaped = true;
                } else {
                    self.in_string = false;
                    if self.at == At::InName {
                        self.at = At::Colon;
                    }
                }
                continue;
            }
            match (b, self.at) {
                (b'{', At::Start) => {
                    self.depth = 1;
                    self.at = At::Name;
                }
                (b'"', At::Name) => {
                    self.in_string = true;
                    self.at = At::InName;
                    self.name_len = 0;
                }
                (b':', At::Colon) => {
                    self.at = At::Value;
                    let name = self.name.get(..self.name_len).unwrap_or_default();
                    self.keeping = MEMBERS.iter().position(|m| *m == name);
                    if let Some(m) = self.keeping {
                        self.values[m].clear();
                        kept_from = Some(i);
                    }
                }
                (b'"', At::Value) => self.in_string = true,
                (b'{' | b'[', At::Value) => self.depth += 1,
                (b'}' | b']', At::Value) if self.depth > 1 => self.depth -= 1,
                (b',', At::Value) if self.depth == 1 => {
                    self.keep(chunk, kept_from.take(), i - 1);
                    self.at = At::Name;
                }
                (b'}', At::Value | At::Name) if self.depth == 1 => {
                    self.keep(chunk, kept_from.take(), i - 1);
                    self.depth = 0;
                    self.at = At::End;
                }
                (_, At::Value) => {}
                _ => self.at = At::Invalid,
            }
        }
        if self.at == At::Value {
            self.keep(chunk, kept_from, chunk.len());
        }
    }

    /// Bytes of a string: kept when they are part of a member's name (up to one byte
    /// more than the longest name read, so that a longer name matches none).
    fn name_bytes(&mut self, bytes: &[u8]) {
        if self.at != At::InName {
            return;
        }
        for &b in bytes {
            if let Some(slot) = self.name.get_mut(self.name_len) {
                *slot = b;
                self.name_len += 1;
            } else {
                self.name_len = self.name.len() + 1;
                return;
            }
        }
    }

    /// Keeps `chunk[from..to]` as part of the value being kept; `to` short of the
    /// chunk's end is where the value ended. A value that outgrows [`MEMBER_LIMIT`] is
    /// let go, and no more of it kept.
    fn keep(&mut self, chunk: &[u8], from: Option<usize>, to: usize) {
        let (Some(m), Some(from)) = (self.keeping, from) else {
            return;
        };
        let value = &mut self.values[m];
        if value.len() + (to - from) > MEMBER_LIMIT {
            *value = Vec::new();
            self.keeping = None;
        } else {
            value.extend_from_slice(&chunk[from..to]);
            if to < chunk.len() {
                self.keeping = None;
            }
        }
    }

    /// After the object: only whitespace may follow.
    fn trailing(&mut self, rest: &[u8]) {
        if rest.iter().any(|b| !b.is_ascii_whitespace()) {
            self.at = At::Invalid;
        }
    }

    /// The value kept of member `m`, parsed.
    fn value<T: serde::de::DeserializeOwned>(&self, m: usize) -> Option<T> {
        serde_json::from_slice(&self.values[m]).ok()
    }

    /// What the whole answer said, as [`from_json_body`] reads it.
    pub fn observed(&self, endpoint: Endpoint) -> Observed {
        if self.at != At::End {
            return Observed::default();
        }
        let body = BodyJson {
            id: self.value(0),
            model: self.value(1),
            usage: self.value(2),
            error: self.value(3),
        };
        body.observed(endpoint)
    }

    /// The `error.code` (or `error.type`) of an error answer, as
    /// [`error_code`] reads it from a whole one.
    pub fn error_code(&self) -> Option<String> {
        if self.at != At::End {
            return None;
        }
        code_or_type(&self.value(3)?)
    }
}

/// The `error.code` (or `error.type`) of an upstream error body.
pub fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    code_or_type(v.get("error")?)
}

fn code_or_type(error: &serde_json::Value) -> Option<String> {
    error
        .get("code")
        .and_then(|c| c.as_str())
        .or_else(|| error.get("type").and_then(|t| t.as_str()))
        .map(str::to_owned)
}

/// Watches a stream as it passes; optionally rewrites it (see the module docs).
#[derive(Debug)]
pub struct StreamTap {
    endpoint: Endpoint,
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    strip_usage: bool,
    /// When stripping (events re-framed): the `id:` and `retry:` last written, so
    /// they go out where the upstream's changed, as the upstream sent them.
    written_id: Option<String>,
    written_retry: Option<u64>,
    /// The most one event may hold (see [`MAX_EVENT_BYTES`]).
    max_event_bytes: usize,
    /// Whether the stream's last event came: Chat's `[DONE]`, a Responses stream's
    /// `response.completed` / `.incomplete` / `.failed`, or an error event.
    ended: bool,
    pub observed: Observed,
}

/// The most one event of a stream may hold before it ends: an upstream that sends
/// more without ending it is broken, and its stream is cut rather than held. OpenAI's
/// largest events (a finished response with its whole output, an image as base64)
/// are a few megabytes.
pub const MAX_EVENT_BYTES: usize = 64 << 20;

/// `"usage":null` as compact JSON writes it; inside a JSON string the quotes would be
/// escaped, so this sequence can only be the member itself.
const USAGE_NULL: &str = ",\"usage\":null";

impl StreamTap {
    pub fn new(endpoint: Endpoint, strip_usage: bool) -> Self {
        Self {
            endpoint,
            decoder: if strip_usage {
                SseDecoder::keeping_comments()
            } else {
                SseDecoder::new()
            },
            events: Vec::new(),
            strip_usage,
            written_id: None,
            written_retry: None,
            max_event_bytes: MAX_EVENT_BYTES,
            ended: false,
            observed: Observed::default(),
        }
    }

    /// Whether the stream's last event came (an upstream stream that stops before it
    /// was cut short, however cleanly it closed).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Observes a chunk and returns the bytes to forward: the chunk itself, or when
    /// stripping, the re-framed complete events it finished (possibly none).
    pub fn pass(&mut self, chunk: Bytes) -> Bytes {
        self.events.clear();
        let mut events = std::mem::take(&mut self.events);
        self.decoder.push_into(&chunk, &mut events);
        for ev in &events {
            self.observe(ev);
        }
        let out = if self.strip_usage {
            let mut buf = Vec::with_capacity(chunk.len() + 16);
            // An upstream's comments (keep-alives) go out where they came.
            let comments = self.decoder.take_comments();
            let mut comments = comments.iter().peekable();
            let mut comments_before = |n: usize, buf: &mut Vec<u8>| {
                while let Some((_, line)) = comments.next_if(|(at, _)| *at <= n) {
                    buf.extend_from_slice(line.as_bytes());
                    buf.extend_from_slice(b"\n\n");
                }
            };
            for (n, ev) in events.iter().enumerate() {
                comments_before(n, &mut buf);
                if let Some(data) = strip_usage(&ev.data) {
                    // An OpenAI stream has neither; another upstream's are kept.
                    if ev.id.is_some() && ev.id != self.written_id {
                        buf.extend_from_slice(b"id: ");
                        buf.extend_from_slice(ev.id.as_deref().unwrap_or_default().as_bytes());
                        buf.push(b'\n');
                        self.written_id.clone_from(&ev.id);
                    }
                    if let Some(retry) = ev.retry.filter(|r| Some(*r) != self.written_retry) {
                        buf.extend_from_slice(format!("retry: {retry}\n").as_bytes());
                        self.written_retry = Some(retry);
                    }
                    tollgate_wire::sse::write_event(&mut buf, ev.event.as_deref(), &data);
                }
            }
            comments_before(usize::MAX, &mut buf);
            Bytes::from(buf)
        } else {
            chunk
        };
        self.events = events;
        out
    }

    /// Whether the event the stream is in the middle of holds more than
    /// [`MAX_EVENT_BYTES`].
    pub fn overflowed(&self) -> bool {
        self.decoder.pending_bytes() > self.max_event_bytes
    }

    fn observe(&mut self, ev: &SseEvent) {
        match self.endpoint {
            Endpoint::Responses => self.observe_responses(ev),
            Endpoint::ChatCompletions => self.observe_chat(ev),
            _ => {}
        }
    }

    fn observe_responses(&mut self, ev: &SseEvent) {
        let name = ev.event.as_deref().unwrap_or_default();
        let interesting = matches!(
            name,
            "response.created"
                | "response.completed"
                | "response.incomplete"
                | "response.failed"
                | "error"
        ) || (name.is_empty() && ev.data.contains("\"response\""));
        if !interesting {
            return;
        }
        #[derive(Deserialize)]
        struct Wrapper {
            #[serde(rename = "type")]
            kind: Option<String>,
            response: Option<BodyJson>,
            code: Option<String>,
        }
        let Ok(w) = serde_json::from_str::<Wrapper>(&ev.data) else {
            return;
        };
        let kind = w.kind.as_deref().unwrap_or(name);
        if matches!(
            kind,
            "response.completed" | "response.incomplete" | "response.failed" | "error"
        ) {
            self.ended = true;
        }
        if w.kind.as_deref() == Some("error") {
            self.observed.stream_error = Some(w.code.unwrap_or_else(|| "stream_error".into()));
            return;
        }
        if let Some(r) = w.response {
            if r.id.is_some() {
                self.observed.response_id = r.id;
            }
            if r.model.is_some() {
                self.observed.model_served = r.model;
            }
            if let Some(u) = r.usage {
                self.observed.usage = Some(u.into());
            }
            if let Some(e) = r.error {
                self.observed.stream_error = Some(e.code.unwrap_or_else(|| "failed".into()));
            }
        }
    }

    fn observe_chat(&mut self, ev: &SseEvent) {
        let first = self.observed.model_served.is_none();
        let has_usage = ev.data.contains("\"usage\"") && !ev.data.contains(USAGE_NULL);
        let has_error = ev.data.starts_with("{\"error\"");
        if ev.is_done() || has_error {
            self.ended = true;
        }
        if !(first || has_usage || has_error) || ev.is_done() {
            return;
        }
        let Ok(b) = serde_json::from_str::<BodyJson>(&ev.data) else {
            return;
        };
        if first {
            // Every chunk carries the completion's id; the first one's is kept. An
            // empty one is none (Azure opens a stream with a content-filter chunk
            // whose `model` and `id` are ""): a later chunk's are then taken.
            self.observed.model_served = b.model.filter(|m| !m.is_empty());
            self.observed.response_id = b.id.filter(|i| !i.is_empty());
        }
        if let Some(u) = b.usage {
            self.observed.usage = Some(u.into());
        }
        if let Some(e) = b.error {
            self.observed.stream_error = Some(e.code.unwrap_or_else(|| "stream_error".into()));
        }
    }
}

/// Removes the usage tollgate asked for: `None` for the usage-only chunk, the chunk
/// without its `"usage":null` member otherwise.
fn strip_usage(data: &str) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    if data.contains(USAGE_NULL) {
        return Some(Cow::Owned(data.replacen(USAGE_NULL, "", 1)));
    }
    if !data.contains("\"usage\"") {
        return Some(Cow::Borrowed(data));
    }
    // Non-compact JSON or the usage chunk: decide on the parsed value.
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(data) else {
        return Some(Cow::Borrowed(data));
    };
    let Some(obj) = v.as_object_mut() else {
        return Some(Cow::Borrowed(data));
    };
    let is_usage_chunk = obj
        .get("choices")
        .and_then(|c| c.as_array())
        .is_some_and(|c| c.is_empty())
        && obj.get("usage").is_some_and(|u| !u.is_null());
    if is_usage_chunk {
        return None;
    }
    // Shifted out, not swapped: the other members keep their order.
    obj.shift_remove("usage");
    Some(Cow::Owned(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_usage_from_responses_and_chat_bodies() {
        let r = br#"{"id":"resp_1","object":"response","model":"gpt-4o-2024-08-06","usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":2},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":15}}"#;
        let o = from_json_body(Endpoint::Responses, r);
        assert_eq!(o.response_id.as_deref(), Some("resp_1"));
        assert_eq!(o.model_served.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!(
            o.usage,
            Some(Tokens {
                input: 12,
                output: 3,
                total: 15,
                cached: 2,
                reasoning: 1
            })
        );

        let c = br#"{"id":"chatcmpl-1","model":"gpt-4o-mini","usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}"#;
        let o = from_json_body(Endpoint::ChatCompletions, c);
        assert_eq!(o.usage.unwrap().input, 7);
        assert_eq!(o.response_id.as_deref(), Some("chatcmpl-1"));
        let e = br#"{"object":"list","model":"text-embedding-3-small","usage":{"prompt_tokens":4,"total_tokens":4}}"#;
        let o = from_json_body(Endpoint::Embeddings, e);
        assert_eq!(o.usage.unwrap().total, 4);
        assert_eq!(
            from_json_body(Endpoint::Responses, b"not json"),
            Observed::default()
        );
    }

    #[test]
    fn responses_stream_tap_finds_final_usage_in_any_split() {
        let stream = concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_9\",\"model\":\"gpt-4o\"}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"hi\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{\"id\":\"resp_9\",\"model\":\"gpt-4o-2024-08-06\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1,\"total_tokens\":6}}}\n\n"
        );
        for piece in [1, 7, stream.len()] {
            let mut tap = StreamTap::new(Endpoint::Responses, false);
            let mut out = Vec::new();
            for c in stream.as_bytes().chunks(piece) {
                out.extend_from_slice(&tap.pass(Bytes::copy_from_slice(c)));
            }
            assert_eq!(out, stream.as_bytes(), "pass-through is byte-exact");
            assert_eq!(tap.observed.response_id.as_deref(), Some("resp_9"));
            assert_eq!(
                tap.observed.model_served.as_deref(),
                Some("gpt-4o-2024-08-06")
            );
            assert_eq!(tap.observed.usage.unwrap().total, 6);
        }
    }

    #[test]
    fn a_stream_has_ended_only_once_its_last_event_came() {
        let responses = [
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\"}}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\"}}\n\n",
        ];
        let chat = [
            "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[]}\n\n",
            "data: [DONE]\n\n",
        ];
        for (endpoint, events) in [
            (Endpoint::Responses, responses),
            (Endpoint::ChatCompletions, chat),
        ] {
            let mut tap = StreamTap::new(endpoint, false);
            tap.pass(Bytes::from_static(events[0].as_bytes()));
            assert!(!tap.ended(), "{endpoint:?}");
            tap.pass(Bytes::from_static(events[1].as_bytes()));
            assert!(tap.ended(), "{endpoint:?}");
        }
        // An error event ends a stream too.
        let mut tap = StreamTap::new(Endpoint::Responses, false);
        tap.pass(Bytes::from_static(
            b"event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\"}\n\n",
        ));
        assert!(tap.ended());
    }

    #[test]
    fn chat_tap_strips_injected_usage_and_keeps_everything_else() {
        let upstream = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a \\\"usage\\\":null\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n"
        );
        let expected = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a \\\"usage\\\":null\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        for piece in [1, 13, upstream.len()] {
            let mut tap = StreamTap::new(Endpoint::ChatCompletions, true);
            let mut out = Vec::new();
            for c in upstream.as_bytes().chunks(piece) {
                out.extend_from_slice(&tap.pass(Bytes::copy_from_slice(c)));
            }
            assert_eq!(String::from_utf8(out).unwrap(), expected);
            assert_eq!(tap.observed.usage.unwrap().total, 5);
            assert_eq!(tap.observed.model_served.as_deref(), Some("gpt-4o-mini"));
            assert_eq!(tap.observed.response_id.as_deref(), Some("c1"));
        }
    }

    #[test]
    fn stripping_keeps_an_upstreams_comments_event_ids_and_retry() {
        let upstream = concat!(
            ": keep-alive\n\n",
            "retry: 3000\nid: 1\ndata: {\"id\":\"c1\",\"choices\":[],\"usage\":null}\n\n",
            "id: 2\ndata: {\"id\":\"c1\",\"choices\":[],\"usage\":null}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        let mut tap = StreamTap::new(Endpoint::ChatCompletions, true);
        let out = tap.pass(Bytes::from_static(upstream.as_bytes()));
        let events = tollgate_wire::sse::SseDecoder::new().push(&out);
        let ids: Vec<_> = events.iter().map(|e| e.id.as_deref()).collect();
        assert_eq!(ids, [Some("1"), Some("2"), Some("2")]);
        assert!(events.iter().all(|e| e.retry == Some(3000)));
        assert_eq!(events.len(), 3, "the usage chunk is gone, the rest kept");
        assert!(
            out.starts_with(b": keep-alive\n\n"),
            "the comment is passed on first"
        );
    }

    #[test]
    fn a_chat_stream_opened_by_a_chunk_without_model_or_id_takes_them_from_the_next() {
        // Azure's first chunk: the prompt's content-filter results, `model` and `id` "".
        let upstream = concat!(
            "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[]}\n\n",
            "data: {\"id\":\"c9\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-11-20\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"id\":\"c9\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-11-20\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
            "data: [DONE]\n\n"
        );
        let mut tap = StreamTap::new(Endpoint::ChatCompletions, false);
        tap.pass(Bytes::from_static(upstream.as_bytes()));
        assert!(tap.ended());
        let o = &tap.observed;
        assert_eq!(o.model_served.as_deref(), Some("gpt-4o-2024-11-20"));
        assert_eq!(o.response_id.as_deref(), Some("c9"));
        assert_eq!(o.usage.as_ref().unwrap().total, 4);
    }

    #[test]
    fn a_stream_tap_tells_of_an_event_that_never_ends() {
        for strip in [false, true] {
            let mut tap = StreamTap::new(Endpoint::ChatCompletions, strip);
            tap.max_event_bytes = 1000;
            tap.pass(Bytes::from_static(
                b"data: {\"id\":\"c1\"}\n\ndata: {\"a\":\"",
            ));
            assert!(!tap.overflowed());
            for _ in 0..9 {
                tap.pass(Bytes::from(vec![b'x'; 100]));
            }
            assert!(!tap.overflowed(), "{strip}: 900 bytes and the line's start");
            tap.pass(Bytes::from(vec![b'x'; 100]));
            assert!(tap.overflowed(), "{strip}: over 1,000 bytes");
        }
    }

    /// `body` through a [`JsonTap`] in pieces, cut at each offset of `cuts`.
    fn tapped(body: &[u8], cuts: &[usize]) -> JsonTap {
        let mut tap = JsonTap::default();
        let mut from = 0;
        for &cut in cuts.iter().chain([&body.len()]) {
            tap.pass(&body[from..cut]);
            from = cut;
        }
        tap
    }

    #[test]
    fn the_json_tap_reads_what_a_whole_answer_gives_however_it_is_cut() {
        let bodies: &[&str] = &[
            r#"{"id":"resp_1","object":"response","model":"gpt-4o-2024-08-06","usage":{"input_tokens":12,"input_tokens_details":{"cached_tokens":2},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":15}}"#,
            // Member names and braces inside strings, escaped quotes and backslashes.
            r#"{"id":"chatcmpl-1","choices":[{"message":{"content":"say \"usage\":{\"total_tokens\":9} \\ \\\"} and {\"id\":\"x\"}"}}],"model":"gpt-4o-mini","usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}"#,
            // The same names nested; a longer name that begins as one; a short one.
            r#"{"metadata":{"usage":"nested","id":"inner"},"usage_details":{"x":1},"i":2,"id":"resp_2","output":[{"id":"msg_1","usage":{"input_tokens":99}}],"usage":{"input_tokens":1,"output_tokens":2},"model":"m"}"#,
            r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-2.5e-3,3]},{"object":"embedding","index":1,"embedding":[]}],"model":"text-embedding-3-large","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
            "{\n  \"id\" : \"resp_3\" ,\n  \"model\"\t:\"gpt-4o\",\r\n  \"usage\" : { \"input_tokens\" : 7 , \"output_tokens\" : 1 }\n}\n",
            r#"{"id":"caf\u00e9 \u2603 é","model":"m","usage":null}"#,
            r#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
            r#"{"error":{"message":"slow down","type":"requests","param":null,"code":null}}"#,
            r#"{}"#,
            // Not one complete JSON object: nothing, as from a whole one.
            r#"{"id":"resp_4","model":"m","usage":{"input_tokens":1}"#,
            r#"{"id":"resp_4","model":"m"} trailing"#,
            r#"[{"id":"resp_4"}]"#,
            r#"not json"#,
            "",
        ];
        // Long runs of numbers and text, passed over in blocks, with the bytes that
        // matter at every offset within a block.
        let numbers: Vec<String> = (0..300)
            .map(|i| format!("{}.{i}e-{}", i % 7, i % 3))
            .collect();
        let text: String = (0..40)
            .map(|i| format!("{}\\\"{{", "ab".repeat(i)))
            .collect();
        let long = format!(
            r#"{{"data":[{{"embedding":[{}],"text":"{text}"}}],"usage":{{"prompt_tokens":{}}},"model":"m"}}"#,
            numbers.join(","),
            numbers.len()
        );
        assert_eq!(
            from_json_body(Endpoint::Embeddings, long.as_bytes())
                .usage
                .unwrap()
                .input,
            300
        );
        for body in bodies.iter().copied().chain([long.as_str()]) {
            let bytes = body.as_bytes();
            let endpoint = Endpoint::Responses;
            let whole = from_json_body(endpoint, bytes);
            let code = error_code(bytes);
            let mut cuts: Vec<Vec<usize>> = (0..=bytes.len()).map(|c| vec![c]).collect();
            cuts.push((1..bytes.len()).collect());
            for cut in &cuts {
                let tap = tapped(bytes, cut);
                assert_eq!(tap.observed(endpoint), whole, "{body} cut at {cut:?}");
                assert_eq!(tap.error_code(), code, "{body} cut at {cut:?}");
            }
        }
        // The cases above say something: usage, ids, models and codes were found.
        let found = |body: &str| from_json_body(Endpoint::Responses, body.as_bytes());
        assert_eq!(found(bodies[2]).usage.unwrap().input, 1);
        assert_eq!(found(bodies[2]).response_id.as_deref(), Some("resp_2"));
        assert_eq!(found(bodies[3]).usage.unwrap().total, 8);
        assert_eq!(found(bodies[5]).response_id.as_deref(), Some("café ☃ é"));
        assert_eq!(
            error_code(bodies[6].as_bytes()).as_deref(),
            Some("model_not_found")
        );
        assert_eq!(
            error_code(bodies[7].as_bytes()).as_deref(),
            Some("requests")
        );
    }

    #[test]
    fn the_json_tap_keeps_only_short_values() {
        // Outgrown where the value ends, and in a piece the value goes on after.
        for (len, cuts) in [
            (MEMBER_LIMIT, [10, MEMBER_LIMIT / 2]),
            (2 * MEMBER_LIMIT, [10, MEMBER_LIMIT + 100]),
        ] {
            let long = "x".repeat(len);
            let body = format!(r#"{{"model":"{long}","usage":{{"input_tokens":3}}}}"#);
            let seen = tapped(body.as_bytes(), &cuts).observed(Endpoint::Embeddings);
            assert_eq!(
                seen.model_served, None,
                "{len}: a value over 64 KiB is not kept"
            );
            assert_eq!(seen.usage.unwrap().input, 3, "{len}");
            assert_eq!(seen.response_id, None);
        }
        let short = r#"{"model":"m","usage":{"input_tokens":3}}"#;
        let seen = tapped(short.as_bytes(), &[10]).observed(Endpoint::Embeddings);
        assert_eq!(seen.model_served.as_deref(), Some("m"));
    }
}
