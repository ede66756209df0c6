//! A response body as a stream of byte chunks, bounded by the call's deadline. Once
//! a chunk has been handed out nothing is retried: failures end the stream with
//! [`Error::Stream`] (cut connection) or [`Error::Timeout`] (deadline).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use crate::error::Error;
use crate::transport::BoxError;

type LiveBody = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// The body of an answer, chunk by chunk, as the server sent it.
pub struct ByteStream {
    source: Source,
    deadline: Option<Pin<Box<Sleep>>>,
    started: Instant,
    attempts: u32,
    request_id: Option<String>,
    done: bool,
}

enum Source {
    Buffered(Option<Bytes>),
    Live(LiveBody),
}

impl ByteStream {
    /// A body still arriving over the network, cut at `deadline`.
    pub(crate) fn live(
        response: reqwest::Response,
        started: Instant,
        deadline: Instant,
        attempts: u32,
        request_id: Option<String>,
    ) -> Self {
        let body = response.bytes_stream().map(|r| r.map_err(BoxError::from));
        Self::from_stream(Box::pin(body), started, deadline, attempts, request_id)
    }

    /// Any live body stream, cut at `deadline`.
    pub(crate) fn from_stream(
        body: LiveBody,
        started: Instant,
        deadline: Instant,
        attempts: u32,
        request_id: Option<String>,
    ) -> Self {
        Self {
            source: Source::Live(body),
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            started,
            attempts,
            request_id,
            done: false,
        }
    }

    /// A body already read in full.
    pub(crate) fn buffered(bytes: Bytes, attempts: u32, request_id: Option<String>) -> Self {
        Self {
            source: Source::Buffered(Some(bytes)),
            deadline: None,
            started: Instant::now(),
            attempts,
            request_id,
            done: false,
        }
    }

    /// Reads the rest of the body into one buffer.
    pub async fn collect(mut self) -> Result<Bytes, Error> {
        let mut out = BytesMut::new();
        while let Some(chunk) = self.next().await {
            let chunk = chunk?;
            if out.is_empty() && self.done {
                return Ok(chunk);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    /// The upstream `x-request-id` of the answer this body belongs to.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    fn finish(&mut self) {
        self.done = true;
        self.source = Source::Buffered(None);
        self.deadline = None;
    }

    fn cut(&mut self, source: BoxError) -> Error {
        self.finish();
        Error::Stream {
            message: "connection failed while reading the body".to_owned(),
            error: None,
            request_id: self.request_id.clone(),
            source: Some(source),
        }
    }

    fn timed_out(&mut self) -> Error {
        self.finish();
        Error::Timeout {
            attempts: self.attempts,
            elapsed: self.started.elapsed(),
        }
    }
}

impl Stream for ByteStream {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match &mut this.source {
            Source::Buffered(chunk) => {
                let chunk = chunk.take();
                this.finish();
                return Poll::Ready(chunk.map(Ok));
            }
            Source::Live(body) => match body.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => return Poll::Ready(Some(Ok(chunk))),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(this.cut(e)))),
                Poll::Ready(None) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            },
        }
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(this.timed_out())));
            }
        }
        Poll::Pending
    }
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteStream")
            .field("buffered", &matches!(self.source, Source::Buffered(_)))
            .field("request_id", &self.request_id)
            .field("attempts", &self.attempts)
            .field("done", &self.done)
            .finish()
    }
}
