//! Typed server-sent-event streams: Responses events (ending at a terminal event) and
//! Chat Completions chunks (ending at `data: [DONE]`), decoded incrementally with
//! [`SseDecoder`] from the body as it arrives.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tollgate_wire::chat::ChatCompletionChunk;
use tollgate_wire::responses::StreamEvent;
use tollgate_wire::sse::{SseDecoder, SseEvent};
use tollgate_wire::ErrorBody;

use crate::body::ByteStream;
use crate::error::{stream_error, Error};
use crate::meta::ResponseMeta;

/// A Responses API stream: typed [`StreamEvent`]s, ending after `response.completed`,
/// `response.incomplete`, `response.failed` or `error`.
pub type ResponseStream = EventStream<StreamEvent>;

/// A Chat Completions stream: [`ChatCompletionChunk`]s, ending at `data: [DONE]`.
pub type ChatStream = EventStream<ChatCompletionChunk>;

/// A stream of typed events. It yields `Err` at most once, and then ends:
/// - [`Error::Stream`] for an error object sent in the stream, a connection cut, or a
///   body that ends before the stream's proper end (terminal event or `[DONE]`);
/// - [`Error::Decode`] for an event that is not the expected JSON;
/// - [`Error::Timeout`] when the call's deadline passes.
///
/// Nothing is retried once the stream has been returned.
pub struct EventStream<T> {
    meta: ResponseMeta,
    body: ByteStream,
    decoder: SseDecoder,
    pending: VecDeque<SseEvent>,
    state: State,
    end: End,
    is_terminal: fn(&T) -> bool,
}

/// How a stream ends properly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// At the first event for which `is_terminal` holds (Responses).
    TerminalEvent,
    /// At `data: [DONE]` (Chat Completions).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The proper end was seen; read what is already there, then stop.
    Draining,
    Finished,
}

impl<T: DeserializeOwned> EventStream<T> {
    pub(crate) fn new(
        meta: ResponseMeta,
        body: ByteStream,
        end: End,
        is_terminal: fn(&T) -> bool,
    ) -> Self {
        Self {
            meta,
            body,
            decoder: SseDecoder::new(),
            pending: VecDeque::new(),
            state: State::Open,
            end,
            is_terminal,
        }
    }

    /// Status, headers, request id, rate limits and attempts of the answer.
    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    /// The upstream `x-request-id`.
    pub fn request_id(&self) -> Option<&str> {
        self.meta.request_id()
    }

    /// The parsed `x-ratelimit-*` headers.
    pub fn rate_limit(&self) -> &tollgate_wire::ratelimit::RateLimitInfo {
        &self.meta.rate_limit
    }

    /// Attempts made before the stream started.
    pub fn attempts(&self) -> u32 {
        self.meta.attempts
    }

    /// Turns one SSE event into an item; `None` for events that yield nothing.
    fn on_event(&mut self, ev: SseEvent) -> Option<Result<T, Error>> {
        if ev.is_done() {
            self.state = State::Draining;
            return None;
        }
        if ev.data.trim().is_empty() {
            return None;
        }
        let request_id = || self.meta.request_id.clone();
        let value: Value = match serde_json::from_str(&ev.data) {
            Ok(v) => v,
            Err(source) => {
                return Some(Err(self.fail(Error::Decode {
                    request_id: request_id(),
                    source,
                })))
            }
        };
        if let Some(err) = value.get("error").filter(|e| e.is_object()) {
            let body = serde_json::from_value::<ErrorBody>(err.clone())
                .ok()
                .or_else(|| {
                    err.get("message")
                        .and_then(Value::as_str)
                        .map(|m| ErrorBody {
                            message: m.to_owned(),
                            kind: String::new(),
                            param: None,
                            code: None,
                        })
                });
            let e = stream_error(body, request_id());
            return Some(Err(self.fail(e)));
        }
        match serde_json::from_value::<T>(value) {
            Ok(item) => {
                if self.end == End::TerminalEvent && (self.is_terminal)(&item) {
                    self.state = State::Draining;
                }
                Some(Ok(item))
            }
            Err(source) => Some(Err(self.fail(Error::Decode {
                request_id: request_id(),
                source,
            }))),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.state = State::Finished;
        e
    }

    fn premature_end(&mut self) -> Error {
        let what = match self.end {
            End::TerminalEvent => "a terminal event",
            End::Done => "[DONE]",
        };
        let e = Error::Stream {
            message: format!("the stream ended before {what}"),
            error: None,
            request_id: self.meta.request_id.clone(),
            source: None,
        };
        self.fail(e)
    }

    /// After the proper end: consume what is already buffered so the connection can
    /// go back to the pool, without waiting for more.
    fn drain(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(Ok(_))) = Pin::new(&mut self.body).poll_next(cx) {}
        self.state = State::Finished;
    }
}

impl<T: DeserializeOwned> Stream for EventStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match this.state {
                State::Finished => return Poll::Ready(None),
                State::Draining => {
                    this.drain(cx);
                    return Poll::Ready(None);
                }
                State::Open => {}
            }
            if let Some(ev) = this.pending.pop_front() {
                if let Some(item) = this.on_event(ev) {
                    return Poll::Ready(Some(item));
                }
                continue;
            }
            match Pin::new(&mut this.body).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.pending.extend(this.decoder.push(&chunk)),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(this.fail(e)))),
                Poll::Ready(None) => return Poll::Ready(Some(Err(this.premature_end()))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("meta", &self.meta)
            .field("state", &self.state)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// `is_terminal` for Responses streams.
pub(crate) fn response_event_is_terminal(ev: &StreamEvent) -> bool {
    ev.is_terminal()
}

/// `is_terminal` for Chat streams: the end is `[DONE]`, never a chunk.
pub(crate) fn chunk_is_terminal(_: &ChatCompletionChunk) -> bool {
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::{HeaderMap, StatusCode};

    use super::*;

    fn stream_of<T: DeserializeOwned>(
        body: &str,
        end: End,
        term: fn(&T) -> bool,
    ) -> EventStream<T> {
        let meta = ResponseMeta::new(StatusCode::OK, HeaderMap::new(), 1);
        let body = ByteStream::buffered(Bytes::from(body.to_owned()), 1, None);
        EventStream::new(meta, body, end, term)
    }

    async fn collect<T: DeserializeOwned>(mut s: EventStream<T>) -> Vec<Result<T, Error>> {
        let mut out = Vec::new();
        while let Some(item) = s.next().await {
            out.push(item);
        }
        out
    }

    const CHUNK: &str = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;

    #[tokio::test]
    async fn chat_stream_stops_at_done() {
        let body = format!("data: {CHUNK}\r\n\r\ndata: {CHUNK}\n\ndata: [DONE]\n\n");
        let items = collect(stream_of(&body, End::Done, chunk_is_terminal)).await;
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn chat_stream_without_done_ends_in_an_error() {
        let body = format!("data: {CHUNK}\n\n");
        let items = collect(stream_of(&body, End::Done, chunk_is_terminal)).await;
        assert_eq!(items.len(), 2);
        assert!(
            matches!(&items[1], Err(Error::Stream { message, .. }) if message.contains("[DONE]"))
        );
    }

    #[tokio::test]
    async fn an_error_object_in_the_stream_is_an_error() {
        let body = format!(
            "data: {CHUNK}\n\ndata: {{\"error\":{{\"message\":\"boom\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}\n\ndata: {CHUNK}\n\n"
        );
        let items = collect(stream_of(&body, End::Done, chunk_is_terminal)).await;
        assert_eq!(items.len(), 2);
        match &items[1] {
            Err(Error::Stream { message, error, .. }) => {
                assert_eq!(message, "boom");
                assert_eq!(error.as_ref().unwrap().kind, "server_error");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_json_is_a_decode_error() {
        let items = collect(stream_of("data: {nope\n\n", End::Done, chunk_is_terminal)).await;
        assert!(matches!(items.as_slice(), [Err(Error::Decode { .. })]));
    }

    #[tokio::test]
    async fn responses_stream_ends_at_the_terminal_event_and_keeps_unknown_events() {
        let body = concat!(
            "event: response.reasoning_summary_text.delta\n",
            "data: {\"type\":\"response.reasoning_summary_text.delta\",\"sequence_number\":0,\"delta\":\"x\"}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"sequence_number\":1,\"code\":\"server_error\",\"message\":\"m\",\"param\":null}\n\n",
            "event: response.reasoning_summary_text.delta\n",
            "data: {\"type\":\"response.reasoning_summary_text.delta\",\"sequence_number\":2,\"delta\":\"x\"}\n\n",
        );
        let items = collect(stream_of(
            body,
            End::TerminalEvent,
            response_event_is_terminal,
        ))
        .await;
        assert_eq!(items.len(), 2);
        assert!(matches!(items[0], Ok(StreamEvent::Other(_))));
        assert!(matches!(items[1], Ok(StreamEvent::Error(_))));
    }

    #[tokio::test]
    async fn responses_stream_cut_before_terminal_is_an_error() {
        let body = "event: x\ndata: {\"type\":\"x\",\"sequence_number\":0}\n\n";
        let items = collect(stream_of(
            body,
            End::TerminalEvent,
            response_event_is_terminal,
        ))
        .await;
        assert_eq!(items.len(), 2);
        assert!(
            matches!(&items[1], Err(Error::Stream { message, .. }) if message.contains("terminal"))
        );
    }
}
