//! A faithful OpenAI-compatible server for tests, demos and load: deterministic
//! content counted with real tokenizers, OpenAI's exact error shapes and headers,
//! per-key rate limits, and fault injection. `docs/simulator.md` is the user guide;
//! this is the same contract for the code.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = tollgate_simulator::spawn(tollgate_simulator::SimConfig::default()).await?;
//! let base_url = sim.base_url(); // "http://127.0.0.1:PORT/v1"
//! # Ok(()) }
//! ```
//!
//! # Endpoints
//!
//! `POST /v1/responses`, `POST /v1/chat/completions` (JSON, or SSE with
//! `"stream": true`), `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/embeddings`,
//! `POST /v1/moderations`. Any other method or path answers 404
//! `Invalid URL (METHOD /path)`.
//!
//! Every `/v1` answer (errors and streams included) carries `x-request-id`,
//! `openai-processing-ms`, `openai-version: 2020-10-01` and the six
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers (resets as Go
//! durations). Inference requests (responses, chat, embeddings, moderations) count
//! against the key's window: one request, and an estimate of the tokens (a quarter of
//! the body's bytes plus the output tokens the request allows). Without `rpm`/`tpm`
//! nothing is refused and the headers report nominal limits of
//! [`limits::NOMINAL_RPM`] and [`limits::NOMINAL_TPM`].
//!
//! # Fault injection: `x-sim-*` request headers
//!
//! | header | effect |
//! |---|---|
//! | `x-sim-status: 503` | answer with this status (400–599) and the matching OpenAI error body |
//! | `x-sim-error-code: insufficient_quota` | with status 429: the quota variant instead of `rate_limit_exceeded` |
//! | `x-sim-retry-after: 2` | add `retry-after: 2` to the fault answer |
//! | `x-sim-retry-after-ms: 150` | add `retry-after-ms: 150` to the fault answer |
//! | `x-sim-latency-ms: 200` | wait this long before answering (before the first byte) |
//! | `x-sim-stream-interval-ms: 20` | wait this long between stream events |
//! | `x-sim-stream-cut-after: 3` | send N stream events, then break the connection: no terminal event, no `[DONE]` |
//! | `x-sim-reset: true` | close the connection without any response |
//!
//! An unusable value (e.g. `x-sim-status: abc`) is a 400, so a typo does not silently
//! test nothing. Faults apply before authentication, so they work without a key.
//!
//! Error bodies per simulated status: 400 `invalid_request_error`; 401
//! `invalid_api_key` (+ `www-authenticate`); 403 `request_forbidden`
//! `unsupported_country_region_territory`; 404 `model_not_found`; 408 `timeout`; 409
//! `invalid_request_error` `conflict`; 429 type `requests` `rate_limit_exceeded` (or
//! `insufficient_quota`); 500 `server_error` ("The server had an error while processing
//! your request. Sorry about that!"); 502/504 `server_error`; 503
//! `service_unavailable_error` `server_is_overloaded`; 529 `server_error` `overloaded`.
//!
//! What a client observes:
//! - **cut** (`x-sim-stream-cut-after: N`): a 200 with the stream headers and N events,
//!   then the body ends with an error (hyper aborts the chunked body without its final
//!   chunk and closes the connection). `reqwest` reports a body/decode error; the
//!   Python SDK an incomplete-chunked-read error. For Responses at most all but the
//!   terminal event are sent; for Chat at most all chunks, never `[DONE]`.
//! - **reset** (`x-sim-reset: true`): the connection is closed without a byte of
//!   response; clients see "connection closed before message completed" (hyper) /
//!   "Server disconnected without sending a response" (httpx), a connection error the
//!   SDKs retry.
//!
//! # Control API (no key, not under `/v1`)
//!
//! - `POST /_sim/faults` `{"count": N, "status", "error_code", "retry_after",
//!   "retry_after_ms", "latency_ms", "stream_interval_ms", "stream_cut_after", "reset",
//!   "path"}` (all but `count` optional): the next N `/v1` requests (to `path` only, when
//!   set) get this fault whatever their headers; a queued field wins over the same
//!   `x-sim-*` header. Entries are consumed oldest first. Answers `{"queued": N}`.
//! - `DELETE /_sim/faults`: clears the queue (`{"cleared": uses}`).
//! - `GET /_sim/requests`: `{"data":[{"method","path","headers","body","status",
//!   "received_at_ms"}]}` oldest first, every `/v1` request received (faulted, rejected
//!   and reset ones too; `status` is `null` for a reset). `authorization` reads
//!   `"Bearer <redacted>"`; `body` is the JSON sent, or a string when it was not JSON,
//!   or `null` when empty. The log keeps the newest [`control::LOG_CAPACITY`] requests.
//!   Control requests are not recorded.
//! - `DELETE /_sim/requests`: forgets them (`{"cleared": n}`).
//! - `POST /_sim/reset`: clears faults, the request log and rate-limit windows.

// `ApiError` (status, envelope, headers) is the one error type of every stage; at
// ~128 bytes it trips clippy's size lint, but boxing it would buy nothing on error
// paths of a mock server.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod config;
pub mod control;
pub mod endpoints;
pub mod engine;
pub mod error;
pub mod faults;
pub mod headers;
pub mod ids;
pub mod limits;
pub mod server;
pub mod stream;

pub use config::SimConfig;
pub use error::ApiError;
pub use server::{router, serve, serve_router, spawn, SimHandle, SimState};
