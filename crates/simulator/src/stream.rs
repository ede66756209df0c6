//! SSE answers: Responses streams (`event: <type>` + `data: <json>`, no `[DONE]`) and
//! Chat streams (`data: <json>` per chunk, then `data: [DONE]`). Events are serialised
//! lazily as hyper polls the body; `x-sim-stream-interval-ms` paces them and
//! `x-sim-stream-cut-after` ends the body with an error after N events, so hyper
//! aborts the connection without the terminal event (a chunked body without its
//! final chunk: the client sees an incomplete body, not a clean end).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures_util::stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::HeaderValue;
use serde::Serialize;
use tollgate_wire::chat::ChatCompletionChunk;
use tollgate_wire::responses::StreamEvent;
use tollgate_wire::sse::{encode_event, DONE};

use crate::headers::EVENT_STREAM;

/// Pacing and faults for one stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamControl {
    /// Wait between events.
    pub interval: Option<Duration>,
    /// Send at most this many events, then break the connection. The terminal event
    /// (`response.completed`/`incomplete`, or Chat's `[DONE]`) is never sent.
    pub cut_after: Option<u64>,
}

/// How streams ended: sent to the end, or dropped before (the client went away, or a
/// cut). `GET /_sim/stats` reports them, so tests can see that a gateway cancelled an
/// upstream stream when its own client left.
#[derive(Debug, Default)]
pub struct StreamStats {
    completed: AtomicU64,
    abandoned: AtomicU64,
}

impl StreamStats {
    /// Streams sent to the end.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Streams whose body was dropped before the end.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }
}

/// Counts one stream's outcome when the body is dropped.
struct Outcome {
    stats: Arc<StreamStats>,
    finished: bool,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let counter = if self.finished {
            &self.stats.completed
        } else {
            &self.stats.abandoned
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A Responses stream: every event with its `event:` line; the last event is the
/// terminal one.
pub fn responses(
    events: Vec<StreamEvent>,
    ctl: StreamControl,
    stats: Arc<StreamStats>,
) -> Response {
    let terminal_index = events.len().saturating_sub(1) as u64;
    let encode = |e: &StreamEvent| json_event(Some(e.event_type()), e);
    sse(
        events,
        encode,
        None,
        ctl.limit(terminal_index),
        ctl.interval,
        stats,
    )
}

/// A Chat stream: data-only chunks, then `data: [DONE]`.
pub fn chat(
    chunks: Vec<ChatCompletionChunk>,
    ctl: StreamControl,
    stats: Arc<StreamStats>,
) -> Response {
    let n = chunks.len() as u64;
    let encode = |c: &ChatCompletionChunk| json_event(None, c);
    sse(
        chunks,
        encode,
        Some(DONE),
        ctl.limit(n),
        ctl.interval,
        stats,
    )
}

impl StreamControl {
    /// How many of the non-terminal `available` events to send before cutting, if a
    /// cut was asked for.
    fn limit(&self, available: u64) -> Option<u64> {
        self.cut_after.map(|n| n.min(available))
    }
}

/// One SSE event, serialised straight into its frame. Compact JSON never contains a
/// raw newline, so a single `data:` line is always right (what `write_event` would
/// produce, without the intermediate string).
fn json_event<T: Serialize>(event: Option<&str>, value: &T) -> Result<Bytes, io::Error> {
    let mut out = Vec::with_capacity(512);
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut out, value).map_err(io::Error::other)?;
    out.extend_from_slice(b"\n\n");
    Ok(Bytes::from(out))
}

/// The streaming body: `items` encoded one by one, then `trailer` as a data line,
/// unless `cut` stops it early with an error.
fn sse<T, F>(
    items: Vec<T>,
    encode: F,
    trailer: Option<&'static str>,
    cut: Option<u64>,
    interval: Option<Duration>,
    stats: Arc<StreamStats>,
) -> Response
where
    T: Send + 'static,
    F: Fn(&T) -> Result<Bytes, io::Error> + Send + 'static,
{
    struct St<T, F> {
        items: std::vec::IntoIter<T>,
        encode: F,
        sent: u64,
        trailer: Option<&'static str>,
        cut: Option<u64>,
        interval: Option<Duration>,
        done: bool,
        outcome: Outcome,
    }
    let state = St {
        items: items.into_iter(),
        encode,
        sent: 0,
        trailer,
        cut,
        interval,
        done: false,
        outcome: Outcome {
            stats,
            finished: false,
        },
    };
    let body = stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.cut.is_some_and(|n| st.sent >= n) {
            st.done = true;
            // hyper writes body frames that are ready at once in one go and flushes
            // when the body is pending; an error before that flush would discard the
            // head and the events already produced. Yield once so they reach the
            // client, then fail.
            tokio::task::yield_now().await;
            let cut = io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "stream cut by x-sim-stream-cut-after",
            );
            return Some((Err(cut), st));
        }
        if st.sent > 0 {
            if let Some(pause) = st.interval {
                tokio::time::sleep(pause).await;
            }
        }
        let next = match st.items.next() {
            Some(item) => (st.encode)(&item),
            None => match st.trailer.take() {
                Some(data) => Ok(Bytes::from(encode_event(None, data))),
                None => {
                    st.outcome.finished = true;
                    // Dropping the state now counts the stream as completed.
                    drop(st);
                    return None;
                }
            },
        };
        st.sent += 1;
        if next.is_err() {
            st.done = true;
        }
        Some((next, st))
    });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(CONTENT_TYPE, EVENT_STREAM);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_event_matches_the_wire_encoder() {
        let value =
            serde_json::json!({"type": "response.output_text.delta", "delta": "two\nlines"});
        let ours = json_event(Some("response.output_text.delta"), &value).unwrap();
        let reference = encode_event(Some("response.output_text.delta"), &value.to_string());
        assert_eq!(ours.as_ref(), reference.as_slice());
        let data_only = json_event(None, &value).unwrap();
        assert!(data_only.starts_with(b"data: {") && data_only.ends_with(b"}\n\n"));
    }
}
