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

/// Reads the whole body, refusing more than `limit` bytes or a body that takes longer
/// than `timeout` to arrive.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, GatewayError> {
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(GatewayError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        // The client went away or sent a malformed body.
        Ok(Err(_)) => Err(GatewayError::InvalidJson {
            detail: "the body could not be read".into(),
        }),
    }
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
        let ok = read_body(Body::from("12345"), 5, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(&ok[..], b"12345");
        let e = read_body(Body::from("123456"), 5, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e, GatewayError::BodyTooLarge { limit: 5 });
    }
}
