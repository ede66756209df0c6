//! The raw pass-through's connection pool, against a minimal HTTP/1.1 server on
//! 127.0.0.1:0 that counts the connections it accepts: sequential calls reuse one
//! connection, and a pooled connection the server has closed is noticed before use,
//! so the call succeeds on a fresh connection without spending a retry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tollgate_client::Client;

const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

/// What the test server tells the test.
struct Server {
    base_url: String,
    accepted: Arc<AtomicUsize>,
    /// One message per connection the server has closed.
    closed: mpsc::UnboundedReceiver<()>,
}

/// Serves `ANSWER` to every request; with `close_after_one`, closes each connection
/// after its first answer (as a server ending an idle keep-alive connection would).
async fn server(close_after_one: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, closed) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                serve(stream, close_after_one).await;
                let _ = tx.send(());
            });
        }
    });
    Server {
        base_url: format!("http://{addr}/v1"),
        accepted,
        closed,
    }
}

/// Answers requests (headers, then a `content-length` body) until the peer closes.
async fn serve(mut stream: TcpStream, close_after_one: bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < end + 4 + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + length);
        stream.write_all(ANSWER).await.unwrap();
        if close_after_one {
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn client(base_url: &str) -> Client {
    // No retries: a call that needed one fails the test.
    Client::builder()
        .base_url(base_url)
        .api_key("sk-test")
        .max_retries(0)
        .no_proxy()
        .build()
        .unwrap()
}

async fn call(c: &Client) -> u32 {
    let raw = c
        .raw(
            Method::POST,
            "/chat/completions",
            HeaderMap::new(),
            Bytes::from_static(b"{\"model\":\"m\"}"),
        )
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 200);
    let attempts = raw.attempts();
    assert_eq!(&raw.bytes().await.unwrap()[..], b"{\"ok\":true}");
    attempts
}

#[tokio::test]
async fn sequential_calls_reuse_one_connection() {
    let s = server(false).await;
    let c = client(&s.base_url);
    for _ in 0..5 {
        assert_eq!(call(&c).await, 1);
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced_without_a_retry() {
    let mut s = server(true).await;
    let c = client(&s.base_url);
    for i in 1..=3 {
        assert_eq!(call(&c).await, 1, "call {i}");
        // The server has closed the connection that is now idle in the pool.
        tokio::time::timeout(Duration::from_secs(5), s.closed.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let mut s = server(false).await;
    let c = client(&s.base_url);
    let raw = c
        .raw(Method::GET, "/models", HeaderMap::new(), Bytes::new())
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 200);
    // Not read to the end: the connection cannot be reused and is closed, which is
    // how an abandoned call is cancelled upstream.
    drop(raw);
    tokio::time::timeout(Duration::from_secs(5), s.closed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(call(&c).await, 1);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
}
