//! Stage 1, accept: the request id, and reading the body within the size and time
//! limits (413 / 408 in OpenAI's shape).

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use crate::error::GatewayError;

/// A new tollgate request id: `req_` + 32 hex, the shape OpenAI uses: 12 hex of the
/// Unix time in milliseconds, then 80 random bits.
pub fn request_id() -> String {
    // Time first, so ids grow with time and each usage batch adds to the end of the
    // usage table's unique request_id index instead of dirtying a random page of it
    // per record (which made every batch rewrite hundreds of pages).
    let ms = u64::try_from(now_ms()).unwrap_or(0) & 0xffff_ffff_ffff;
    let random: u128 = rand::random::<u128>() >> 48;
    // 32 hex digits of (ms << 80 | random), written directly: `format!` with two
    // padded hex arguments cost about 1,400 instructions per request.
    let id = (u128::from(ms) << 80) | random;
    let mut out = String::with_capacity(36);
    out.push_str("req_");
    for shift in (0..32).rev() {
        let digit = ((id >> (shift * 4)) & 0xf) as u8;
        out.push(char::from(b"0123456789abcdef"[usize::from(digit)]));
    }
    out
}

/// Bodies of up to this many bytes are not counted against
/// `server.max_body_bytes_in_flight`: they are in the same class as the buffers every
/// connection has anyway.
pub const UNCOUNTED_BYTES: usize = crate::offload::INLINE_BYTES;

/// Bounds the bytes of request bodies held at once, across all connections
/// (`server.max_body_bytes_in_flight`). Each body over [`UNCOUNTED_BYTES`] takes room
/// for its declared length (`Content-Length`) before a byte of it is read, or for the
/// largest body accepted when it declares none (then the room is trimmed to what came),
/// and keeps it until its request is finished. Taking the whole room at once, never a
/// part, means two bodies can never each hold half of what both need.
#[derive(Debug, Clone)]
pub struct BodyGate {
    /// One permit per KiB.
    room: std::sync::Arc<tokio::sync::Semaphore>,
    limit_bytes: usize,
}

/// Room a body holds in the [`BodyGate`]; dropping it gives the room back.
#[derive(Debug)]
pub struct BodyRoom(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl BodyGate {
    pub fn new(limit_bytes: usize) -> Self {
        let kib = limit_bytes
            .div_ceil(1024)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            room: std::sync::Arc::new(tokio::sync::Semaphore::new(kib)),
            limit_bytes,
        }
    }

    /// Bytes of request bodies held now, in whole KiB.
    pub fn held_bytes(&self) -> u64 {
        let total = self.limit_bytes.div_ceil(1024);
        (total.saturating_sub(self.room.available_permits()) as u64) * 1024
    }

    /// Waits until `bytes` of room are free, until `deadline` at most.
    async fn take(
        &self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, GatewayError> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let busy = GatewayError::BodiesInFlight {
            limit: self.limit_bytes,
        };
        match tokio::time::timeout_at(deadline, self.room.clone().acquire_many_owned(kib)).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout means no room freed up in time.
            Ok(Err(_)) | Err(_) => Err(busy),
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes or a body that takes longer
/// than `timeout` to arrive (waiting for room in `gate` included). A body over
/// [`UNCOUNTED_BYTES`] comes with the room it holds in `gate`. `headers`: the request's
/// (`Expect: 100-continue`: its body comes only if it is read).
pub async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
    gate: &BodyGate,
    headers: &http::HeaderMap,
) -> Result<(Bytes, Option<BodyRoom>), GatewayError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let declared = axum::body::HttpBody::size_hint(&body)
        .exact()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    // (The drains below are boxed: rare paths, kept out of every request's future.)
    // Declared too large: refused without taking room. Its body is read and dropped
    // first (so the answer reaches the caller), unless it is larger than that is worth,
    // or the caller waits for a `100 Continue` before sending it (then it never does).
    if let Some(n) = declared.filter(|&n| n > limit) {
        let expects_continue = headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if n <= drain_limit(limit) && !expects_continue {
            Box::pin(discard_body(body, drain_limit(limit), timeout)).await;
        }
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let wanted = declared.unwrap_or(limit).min(limit);
    let mut room = None;
    if wanted > UNCOUNTED_BYTES {
        match gate.take(wanted, deadline).await {
            Ok(taken) => room = Some(taken),
            Err(busy) => {
                // Read what was sent without keeping it, so the answer reaches the
                // caller: closing a socket with unread data resets the connection.
                Box::pin(discard_body(body, drain_limit(limit), timeout)).await;
                return Err(busy);
            }
        }
    }
    let mut body = body;
    let collect = Limited::new(&mut body, limit).collect();
    let bytes = match tokio::time::timeout_at(deadline, collect).await {
        Err(_) => return Err(GatewayError::BodyTimeout),
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            // The rest is read and dropped too (see above).
            drop(room);
            Box::pin(discard_body(body, drain_limit(limit), timeout)).await;
            return Err(GatewayError::BodyTooLarge { limit });
        }
        // The client went away, or sent a malformed body.
        Ok(Err(e)) if cut_short(&*e) => return Err(GatewayError::ClientGone),
        Ok(Err(_)) => {
            return Err(GatewayError::InvalidJson {
                detail: "the body could not be read".into(),
            })
        }
    };
    // A body that declared no length took room for the largest: keep what it needs.
    if declared.is_none() {
        room = match (room, bytes.len() > UNCOUNTED_BYTES) {
            (Some(mut all), true) => all.split(bytes.len().div_ceil(1024)),
            _ => None,
        };
    }
    Ok((bytes, room.map(BodyRoom)))
}

/// Whether a body's read failed because the connection ended before the body did
/// (hyper reports an early end of a body as an I/O error of kind `UnexpectedEof`).
fn cut_short(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut cause = Some(e);
    while let Some(e) = cause {
        let gone = e
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
            || e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::UnexpectedEof
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                )
            });
        if gone {
            return true;
        }
        cause = e.source();
    }
    false
}

/// How much of a refused body is read and dropped before its connection is closed
/// (unread, the answer would not reach the caller: see [`discard_body`]): a body
/// larger than this is cut off, and its caller sees the connection reset.
const DRAIN_BYTES: usize = 64 << 20;

/// The most of a refused body read for a gateway accepting `limit` bytes.
pub fn drain_limit(limit: usize) -> usize {
    limit.max(DRAIN_BYTES)
}

/// Reads and drops a body the gateway will not use (a caller it refused before reading
/// it), within the same limits, so the caller's keep-alive connection stays usable.
/// Nothing is kept: each chunk is dropped as it arrives.
pub async fn discard_body(body: Body, limit: usize, timeout: Duration) {
    let drain = async {
        let mut body = body;
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen = seen.saturating_add(data.len());
                if seen > limit {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`read_body`] of a request without an `Expect` header.
    async fn read(
        body: Body,
        limit: usize,
        timeout: Duration,
        gate: &BodyGate,
    ) -> Result<(Bytes, Option<BodyRoom>), GatewayError> {
        read_body(body, limit, timeout, gate, &http::HeaderMap::new()).await
    }

    #[test]
    fn request_ids_look_like_openai_ones() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert!(id.starts_with("req_"));
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        // The first 12 digits are the time in milliseconds.
        let ms = i64::from_str_radix(&id[4..16], 16).unwrap();
        assert!((now_ms() - ms).abs() < 5_000, "{id}");
        assert_ne!(id, request_id());
        // Time-ordered: a later id sorts after an earlier one (different milliseconds).
        std::thread::sleep(Duration::from_millis(2));
        assert!(request_id() > id);
    }

    #[tokio::test]
    async fn body_limit_gives_413() {
        let gate = BodyGate::new(1 << 20);
        let (ok, room) = read(Body::from("12345"), 5, Duration::from_secs(1), &gate)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"12345");
        assert!(room.is_none());
        let e = read(Body::from("123456"), 5, Duration::from_secs(1), &gate)
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::BodyTooLarge { limit: 5 });
        assert_eq!(gate.held_bytes(), 0);
    }

    /// A body whose length is not declared, as chunked transfer sends it.
    fn undeclared(bytes: Vec<u8>) -> Body {
        let chunks = bytes
            .chunks(4096)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn large_bodies_hold_room_until_dropped_and_wait_for_it() {
        let gate = BodyGate::new(64 * 1024);
        let timeout = Duration::from_secs(5);
        // Declared: the room is the declared length, taken before reading.
        let (a, room_a) = read(Body::from(vec![b'a'; 40_000]), 64 * 1024, timeout, &gate)
            .await
            .unwrap();
        assert_eq!(a.len(), 40_000);
        assert!(room_a.is_some());
        assert_eq!(gate.held_bytes(), 40 * 1024);
        // Undeclared: room for the largest body while reading, trimmed to what came.
        let (b, room_b) = read(undeclared(vec![b'b'; 10_000]), 24 * 1024, timeout, &gate)
            .await
            .unwrap();
        assert_eq!(b.len(), 10_000);
        assert_eq!(gate.held_bytes(), (40 + 10) * 1024);
        // Small bodies take no room, even when none is left.
        let (c, room_c) = read(Body::from(vec![b'c'; 8 * 1024]), 64 * 1024, timeout, &gate)
            .await
            .unwrap();
        assert_eq!(c.len(), 8 * 1024);
        assert!(room_c.is_none());

        // No room for another 20,000 bytes: it waits, and is refused at its deadline.
        let short = Duration::from_millis(50);
        let e = read(Body::from(vec![b'd'; 20_000]), 64 * 1024, short, &gate)
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::BodiesInFlight { limit: 64 * 1024 });
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code(), Some("server_busy"));
        assert!(e.retryable());

        // It goes ahead as soon as enough room is given back.
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { read(Body::from(vec![b'e'; 20_000]), 64 * 1024, timeout, &gate).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(room_b);
        // The room is handed straight to the waiting body.
        assert_eq!(gate.held_bytes(), (40 + 20) * 1024);
        let (e, room_e) = waiting.await.unwrap().unwrap();
        assert_eq!(e.len(), 20_000);
        assert_eq!(gate.held_bytes(), (40 + 20) * 1024);
        drop((room_a, room_e));
        assert_eq!(gate.held_bytes(), 0);
    }

    /// A body fed chunk by chunk through a channel of one slot, so a send returns only
    /// once the body's reader has taken the chunk before it.
    fn fed() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, std::io::Error>(chunk), rx))
        });
        (tx, Body::from_stream(chunks))
    }

    /// Sends a 1,000-byte chunk, failing (not hanging) when nobody reads it.
    async fn feed(tx: &tokio::sync::mpsc::Sender<Bytes>) {
        let send = tx.send(Bytes::from(vec![0u8; 1000]));
        tokio::time::timeout(Duration::from_secs(10), send)
            .await
            .expect("the body was not read")
            .unwrap();
    }

    #[tokio::test]
    async fn a_discarded_body_is_read_to_its_end_or_its_limit() {
        let within = Duration::from_secs(10);
        // Read to its end: every chunk is taken, and the drain ends with the body.
        let (tx, body) = fed();
        let drained = tokio::spawn(discard_body(body, 10_000, Duration::from_secs(60)));
        for _ in 0..5 {
            feed(&tx).await;
        }
        drop(tx);
        tokio::time::timeout(within, drained)
            .await
            .unwrap()
            .unwrap();

        // Past its limit it stops and lets the body go while the sender still has more.
        let (tx, body) = fed();
        let drained = tokio::spawn(discard_body(body, 1500, Duration::from_secs(60)));
        feed(&tx).await;
        feed(&tx).await;
        tokio::time::timeout(within, drained)
            .await
            .unwrap()
            .unwrap();
        assert!(tx.is_closed(), "the body was dropped once past the limit");
    }
}
