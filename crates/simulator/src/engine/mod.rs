//! The simulator's content engine: pure functions from a parsed request to the answer
//! OpenAI would give — the full body and, for streams, every event in order. No I/O,
//! no clocks beyond the `now` passed in; the server (`crate::server`) does HTTP,
//! authentication, rate limits, faults and pacing.
//!
//! Determinism: the same request gives the same content (ids and timestamps aside).

use tollgate_wire::chat::{ChatCompletion, ChatCompletionChunk, ChatCompletionRequest};
use tollgate_wire::embeddings::{EmbeddingRequest, EmbeddingResponse};
use tollgate_wire::moderations::{ModerationRequest, ModerationResponse};
use tollgate_wire::responses::{CreateResponse, Response, StreamEvent};

use tollgate_wire::tokens;

use crate::error::ApiError;

mod chat;
mod conversation;
mod embeddings;
mod moderation;
mod reasoning;
mod responses;
mod rng;
mod schema;
mod text;
mod tools;
mod validate;

pub use schema::instance as schema_instance;
pub use tokens::Encoding;

/// The answer to a `POST /v1/responses`.
#[derive(Debug, Clone)]
pub struct ResponsesPlan {
    /// The final response object (what a non-streamed call returns).
    pub response: Response,
    /// Every stream event in order, `sequence_number` from 0, ending with the
    /// terminal event (`response.completed` or `response.incomplete`).
    pub events: Vec<StreamEvent>,
}

/// The answer to a `POST /v1/chat/completions`.
#[derive(Debug, Clone)]
pub struct ChatPlan {
    /// The non-streamed completion.
    pub completion: ChatCompletion,
    /// Every stream chunk in order (the usage chunk last when `include_usage` was
    /// asked); the server appends `data: [DONE]`.
    pub chunks: Vec<ChatCompletionChunk>,
}

/// Validates a Responses request (unknown parameters, value ranges, `response_format`
/// moved to `text.format`) and builds the answer. The model is known to exist.
pub fn plan_response(req: &CreateResponse, now: i64) -> Result<ResponsesPlan, ApiError> {
    responses::plan(req, now)
}

/// Validates a Chat request and builds the answer. The model is known to exist.
pub fn plan_chat(req: &ChatCompletionRequest, now: i64) -> Result<ChatPlan, ApiError> {
    chat::plan(req, now)
}

/// Builds embeddings of the model's real dimension, stable per input.
pub fn embed(req: &EmbeddingRequest) -> Result<EmbeddingResponse, ApiError> {
    embeddings::embed(req)
}

/// Classifies the input with the documented keyword rules.
pub fn moderate(req: &ModerationRequest) -> Result<ModerationResponse, ApiError> {
    moderation::moderate(req)
}

/// Tokens of `text` under the tokenizer of `model`'s family.
pub fn count_tokens(model: &str, text: &str) -> usize {
    tokens::count(model, text)
}
