//! OpenAI wire format: serde types for requests, responses, stream events and errors,
//! plus the SSE codec and the rate-limit header format. Serde only, no I/O; with the
//! `tokens` feature, token counting with the real tokenizer of each model family.
//!
//! Request types preserve fields they do not know in an `extra` map (flattened), so a
//! gateway that parses and re-serialises a body never drops a field. Response types do
//! the same, so the typed client hands back everything the server sent.

pub mod chat;
pub mod embeddings;
pub mod error;
pub mod models;
pub mod moderations;
pub mod ratelimit;
pub mod responses;
pub mod sse;
#[cfg(feature = "tokens")]
pub mod tokens;

mod serde_util;

pub use error::{ErrorBody, ErrorEnvelope};

/// Fields a type does not model, kept verbatim so nothing is lost on a round trip.
pub type Extra = serde_json::Map<String, serde_json::Value>;
