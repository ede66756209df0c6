//! A Rust client for OpenAI-compatible APIs: connection pooling, connect and overall
//! timeouts, a per-call deadline, retries with backoff that honour `retry-after(-ms)`
//! and `x-should-retry`, typed SSE streams, typed errors, and a raw pass-through for
//! gateways. Used by the tollgate gateway upstream; usable on its own.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tollgate_client::Client;
//! use tollgate_client::wire::responses::{CreateResponse, Input, StreamEvent};
//!
//! # async fn demo() -> Result<(), tollgate_client::Error> {
//! // OPENAI_API_KEY (required) and OPENAI_BASE_URL (e.g. http://127.0.0.1:8089/v1).
//! let client = Client::from_env()?;
//! let req = CreateResponse {
//!     model: Some("gpt-4o-mini".into()),
//!     input: Some(Input::Text("Say hello".into())),
//!     ..Default::default()
//! };
//!
//! let resp = client.responses().create(&req).await?;
//! println!("{} (request {:?}, {} attempt(s))", resp.output_text(), resp.request_id(), resp.attempts());
//!
//! let mut events = client.responses().stream(&req).await?;
//! while let Some(event) = events.next().await {
//!     if let StreamEvent::OutputTextDelta(d) = event? {
//!         print!("{}", d.delta);
//!     }
//! }
//!
//! match client.models().retrieve("no-such-model").await {
//!     Err(tollgate_client::Error::NotFound(e)) => println!("{:?}", e.code()),
//!     other => println!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Retries
//!
//! A call is retried on connection errors (no HTTP answer), on 408, 409, 429 (a rate
//! limit, never `insufficient_quota`), 500, 502, 503, 504 and 529; `x-should-retry:
//! true|false` on the answer overrides that. The wait is the server's
//! `retry-after-ms` / `retry-after` when given (up to [`RetryPolicy::max_retry_after`];
//! longer means give up), else exponential backoff (200, 400, 800 ms, … by default)
//! with SDK-style jitter (75–100 % of nominal). One deadline covers every attempt and
//! wait; a retry that would sleep past it is not made, and the last error is
//! returned. Nothing is retried once a streamed body has been handed to the caller.
//! See [`RetryPolicy`].
//!
//! # What every answer carries
//!
//! [`ApiResponse`], the streams and [`RawResponse`] expose a [`ResponseMeta`]: status,
//! headers, upstream request id (`x-request-id`), parsed rate-limit headers and the
//! number of attempts. HTTP errors carry the same, plus the OpenAI error body
//! ([`ApiError`]).

mod api;
mod body;
mod client;
mod error;
mod meta;
mod retry;
mod stream;
mod transport;

/// Checks a base URL as [`ClientBuilder::build`] will parse it: `Err` says what is
/// wrong (a port out of range, say), for a configuration check before any client is
/// built.
pub fn check_base_url(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url.trim().trim_end_matches('/')).map_err(|e| e.to_string())?;
    if matches!(parsed.scheme(), "http" | "https") {
        Ok(())
    } else {
        Err("not http(s)".to_owned())
    }
}

/// Checks a PEM bundle of CA certificates as a client will load them: each must parse
/// and be usable as a trust anchor.
pub fn check_root_certificates(pem: &[u8]) -> Result<(), String> {
    transport::check_roots(pem)
}

pub use api::{Chat, Embeddings, Models, Moderations, Responses};
pub use body::{ByteStream, Collected};
pub use client::{Client, ClientBuilder, RawResponse, DEFAULT_BASE_URL};
pub use error::{ApiError, Error, ErrorPayload};
pub use meta::{ApiResponse, ResponseMeta};
pub use retry::{Jitter, RetryPolicy};
pub use stream::{ChatStream, EventStream, ResponseStream};
pub use tollgate_wire as wire;
pub use tollgate_wire::ratelimit::RateLimitInfo;
