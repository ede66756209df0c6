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

/// The most a declared `Content-Length` makes [`ByteStream::collect_within`] set aside
/// before the bytes arrive; a larger body grows its buffer as it comes.
const TRUSTED_LENGTH: usize = 256 * 1024 * 1024;

/// What [`ByteStream::collect_within`] read.
#[derive(Debug)]
pub enum Collected {
    /// The whole body.
    Whole(Bytes),
    /// A body longer than the limit: what was read of it, and the rest.
    Over { head: Bytes, rest: ByteStream },
}

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
    pub async fn collect(self) -> Result<Bytes, Error> {
        match self.collect_within(usize::MAX, None).await? {
            Collected::Whole(bytes) => Ok(bytes),
            // No body is longer than `usize::MAX` bytes.
            Collected::Over { head, .. } => Ok(head),
        }
    }

    /// Reads the rest of the body into one buffer if it is at most `limit` bytes long,
    /// else hands back what was read and the rest still to come. A body that declares
    /// more (`expected`, its `Content-Length`) is handed back before a byte is read.
    ///
    /// The buffer is made `expected` bytes large up front (trusted up to 256 MiB): a
    /// large body is then copied once, where growing the buffer as chunks came would
    /// copy it about twice over and touch twice its size in fresh memory. A body of one
    /// chunk is that chunk, not copied at all.
    pub async fn collect_within(
        mut self,
        limit: usize,
        expected: Option<usize>,
    ) -> Result<Collected, Error> {
        if expected.is_some_and(|n| n > limit) {
            return Ok(Collected::Over {
                head: Bytes::new(),
                rest: self,
            });
        }
        let Some(first) = self.next().await.transpose()? else {
            return Ok(Collected::Whole(Bytes::new()));
        };
        if first.len() > limit {
            return Ok(Collected::Over {
                head: first,
                rest: self,
            });
        }
        let Some(second) = self.next().await.transpose()? else {
            return Ok(Collected::Whole(first));
        };
        let at_least = first.len() + second.len();
        let size = expected.unwrap_or(0).min(TRUSTED_LENGTH).max(at_least);
        let mut out = BytesMut::with_capacity(size);
        out.extend_from_slice(&first);
        out.extend_from_slice(&second);
        while out.len() <= limit {
            match self.next().await {
                Some(chunk) => out.extend_from_slice(&chunk?),
                None => return Ok(Collected::Whole(out.freeze())),
            }
        }
        Ok(Collected::Over {
            head: out.freeze(),
            rest: self,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(chunks: Vec<&'static [u8]>) -> ByteStream {
        let items = chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Bytes::from_static(c)))
            .collect::<Vec<_>>();
        let now = Instant::now();
        let deadline = now + std::time::Duration::from_secs(60);
        ByteStream::from_stream(
            Box::pin(futures_util::stream::iter(items)),
            now,
            deadline,
            1,
            None,
        )
    }

    #[tokio::test]
    async fn a_body_is_collected_whole_and_one_chunk_is_not_copied() {
        let many = stream_of(vec![b"{\"a\":", b"[1,2,", b"3]", b"}"])
            .collect()
            .await;
        assert_eq!(&many.unwrap()[..], b"{\"a\":[1,2,3]}");
        // Sized by its declared length, or by what came when that is wrong.
        for expected in [Some(13), Some(4), Some(1 << 40), None] {
            let chunks = vec![&b"{\"a\":"[..], b"[1,2,", b"3]", b"}"];
            let body = stream_of(chunks).collect_within(usize::MAX, expected);
            let Collected::Whole(body) = body.await.unwrap() else {
                panic!("{expected:?}: not whole");
            };
            assert_eq!(&body[..], b"{\"a\":[1,2,3]}", "{expected:?}");
        }

        static ONE: &[u8] = b"{\"only\":true}";
        let one = stream_of(vec![ONE]).collect().await.unwrap();
        assert_eq!(
            one.as_ptr(),
            ONE.as_ptr(),
            "the one chunk is handed over as it is"
        );

        assert!(stream_of(vec![]).collect().await.unwrap().is_empty());
        let buffered = ByteStream::buffered(Bytes::from_static(ONE), 1, None);
        assert_eq!(buffered.collect().await.unwrap().as_ptr(), ONE.as_ptr());
    }

    /// The chunks of `body`, `collect_within(limit, expected)`: read whole, or what was
    /// read and what was left.
    async fn within(limit: usize, expected: Option<usize>) -> Result<Bytes, (Vec<u8>, Vec<u8>)> {
        let chunks = vec![&b"{\"a\":"[..], b"[1,2,", b"3]", b"}"];
        match stream_of(chunks).collect_within(limit, expected).await {
            Ok(Collected::Whole(bytes)) => Ok(bytes),
            Ok(Collected::Over { head, rest }) => {
                Err((head.to_vec(), rest.collect().await.unwrap().to_vec()))
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_handed_back_with_what_was_read() {
        let whole = b"{\"a\":[1,2,3]}";
        assert_eq!(&within(13, None).await.unwrap()[..], whole);
        assert_eq!(&within(13, Some(13)).await.unwrap()[..], whole);
        // Declared longer than the limit: handed back before a byte is read.
        assert_eq!(
            within(100, Some(101)).await.unwrap_err(),
            (vec![], whole.to_vec())
        );
        // Found longer as it came: the chunks that passed the limit, then the rest.
        for (limit, read) in [(4, 5), (5, 10), (6, 10), (10, 12), (11, 12), (12, 13)] {
            let (head, rest) = within(limit, None).await.unwrap_err();
            assert_eq!(head.len(), read, "limit {limit}");
            assert_eq!([head, rest].concat(), whole, "limit {limit}");
        }
    }

    #[tokio::test]
    async fn a_cut_body_is_an_error_not_a_shorter_body() {
        let items: Vec<Result<Bytes, BoxError>> = vec![
            Ok(Bytes::from_static(b"{\"a\":")),
            Err("connection reset".into()),
        ];
        let now = Instant::now();
        let deadline = now + std::time::Duration::from_secs(60);
        let s = ByteStream::from_stream(
            Box::pin(futures_util::stream::iter(items)),
            now,
            deadline,
            1,
            None,
        );
        assert!(matches!(s.collect().await, Err(Error::Stream { .. })));
    }
}
