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

/// Reads usage from a complete JSON answer (non-streamed). Unparseable bodies give
/// nothing: accounting never fails a call.
pub fn from_json_body(endpoint: Endpoint, body: &[u8]) -> Observed {
    // UTF-8 checked once for the whole body rather than by serde_json for each string.
    let Ok(text) = std::str::from_utf8(body) else {
        return Observed::default();
    };
    let Ok(b) = serde_json::from_str::<BodyJson>(text) else {
        return Observed::default();
    };
    let error = b.error.map(|e| e.code.unwrap_or_else(|| "error".into()));
    Observed {
        response_id: b.id.filter(|_| endpoint.has_response_id()),
        model_served: b.model,
        usage: b.usage.map(Tokens::from),
        stream_error: error,
    }
}

/// Watches a stream as it passes; optionally rewrites it (see the module docs).
#[derive(Debug)]
pub struct StreamTap {
    endpoint: Endpoint,
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    strip_usage: bool,
    pub observed: Observed,
}

/// `"usage":null` as compact JSON writes it; inside a JSON string the quotes would be
/// escaped, so this sequence can only be the member itself.
const USAGE_NULL: &str = ",\"usage\":null";

impl StreamTap {
    pub fn new(endpoint: Endpoint, strip_usage: bool) -> Self {
        Self {
            endpoint,
            decoder: SseDecoder::new(),
            events: Vec::new(),
            strip_usage,
            observed: Observed::default(),
        }
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
            for ev in &events {
                if let Some(data) = strip_usage(&ev.data) {
                    tollgate_wire::sse::write_event(&mut buf, ev.event.as_deref(), &data);
                }
            }
            Bytes::from(buf)
        } else {
            chunk
        };
        self.events = events;
        out
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
        if !(first || has_usage || has_error) || ev.is_done() {
            return;
        }
        let Ok(b) = serde_json::from_str::<BodyJson>(&ev.data) else {
            return;
        };
        if first {
            self.observed.model_served = b.model;
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
    obj.remove("usage");
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
        }
    }
}
