//! The typed endpoints, grouped as the official SDKs group them:
//! `client.responses()`, `.chat()`, `.models()`, `.embeddings()`, `.moderations()`.

use bytes::Bytes;
use http::Method;
use serde::Serialize;
use tollgate_wire::chat::{ChatCompletion, ChatCompletionRequest};
use tollgate_wire::embeddings::{EmbeddingRequest, EmbeddingResponse};
use tollgate_wire::models::{Model, ModelList};
use tollgate_wire::moderations::{ModerationRequest, ModerationResponse};
use tollgate_wire::responses::{CreateResponse, Response};

use crate::client::Client;
use crate::error::Error;
use crate::meta::ApiResponse;
use crate::stream::{
    chunk_is_terminal, response_event_is_terminal, ChatStream, End, ResponseStream,
};

/// `POST /responses`.
#[derive(Debug, Clone, Copy)]
pub struct Responses<'a>(&'a Client);

/// `POST /chat/completions`.
#[derive(Debug, Clone, Copy)]
pub struct Chat<'a>(&'a Client);

/// `GET /models`, `GET /models/{id}`.
#[derive(Debug, Clone, Copy)]
pub struct Models<'a>(&'a Client);

/// `POST /embeddings`.
#[derive(Debug, Clone, Copy)]
pub struct Embeddings<'a>(&'a Client);

/// `POST /moderations`.
#[derive(Debug, Clone, Copy)]
pub struct Moderations<'a>(&'a Client);

impl Client {
    /// The Responses API.
    pub fn responses(&self) -> Responses<'_> {
        Responses(self)
    }

    /// The Chat Completions API.
    pub fn chat(&self) -> Chat<'_> {
        Chat(self)
    }

    /// The Models API.
    pub fn models(&self) -> Models<'_> {
        Models(self)
    }

    /// The Embeddings API.
    pub fn embeddings(&self) -> Embeddings<'_> {
        Embeddings(self)
    }

    /// The Moderations API.
    pub fn moderations(&self) -> Moderations<'_> {
        Moderations(self)
    }
}

impl Responses<'_> {
    /// Creates a response and waits for all of it (`stream` is forced off).
    pub async fn create(&self, req: &CreateResponse) -> Result<ApiResponse<Response>, Error> {
        let body = if req.stream == Some(true) {
            let mut req = req.clone();
            req.stream = None;
            to_body(&req)?
        } else {
            to_body(req)?
        };
        self.0.json(Method::POST, "responses", Some(body)).await
    }

    /// Creates a response as a stream of typed events (`stream` is forced on). HTTP
    /// errors come back here, after retries, before any event.
    pub async fn stream(&self, req: &CreateResponse) -> Result<ResponseStream, Error> {
        let mut req = req.clone();
        req.stream = Some(true);
        let body = to_body(&req)?;
        self.0
            .event_stream(
                "responses",
                body,
                End::TerminalEvent,
                response_event_is_terminal,
            )
            .await
    }
}

impl Chat<'_> {
    /// Creates a chat completion (`stream` is forced off).
    pub async fn create(
        &self,
        req: &ChatCompletionRequest,
    ) -> Result<ApiResponse<ChatCompletion>, Error> {
        let body = if req.stream == Some(true) {
            let mut req = req.clone();
            req.stream = None;
            to_body(&req)?
        } else {
            to_body(req)?
        };
        self.0
            .json(Method::POST, "chat/completions", Some(body))
            .await
    }

    /// Streams a chat completion as chunks, ending at `data: [DONE]` (`stream` is
    /// forced on; set `stream_options.include_usage` for the final usage chunk).
    pub async fn stream(&self, req: &ChatCompletionRequest) -> Result<ChatStream, Error> {
        let mut req = req.clone();
        req.stream = Some(true);
        let body = to_body(&req)?;
        self.0
            .event_stream("chat/completions", body, End::Done, chunk_is_terminal)
            .await
    }
}

impl Models<'_> {
    /// Lists the models.
    pub async fn list(&self) -> Result<ApiResponse<ModelList>, Error> {
        self.0.json(Method::GET, "models", None).await
    }

    /// Retrieves one model.
    pub async fn retrieve(&self, id: &str) -> Result<ApiResponse<Model>, Error> {
        let path = format!("models/{}", encode_segment(id));
        self.0.json(Method::GET, &path, None).await
    }
}

impl Embeddings<'_> {
    /// Creates embeddings. With `encoding_format: base64`, decode each vector with
    /// [`tollgate_wire::embeddings::EmbeddingVector::to_floats`].
    pub async fn create(
        &self,
        req: &EmbeddingRequest,
    ) -> Result<ApiResponse<EmbeddingResponse>, Error> {
        self.0
            .json(Method::POST, "embeddings", Some(to_body(req)?))
            .await
    }
}

impl Moderations<'_> {
    /// Classifies the input.
    pub async fn create(
        &self,
        req: &ModerationRequest,
    ) -> Result<ApiResponse<ModerationResponse>, Error> {
        self.0
            .json(Method::POST, "moderations", Some(to_body(req)?))
            .await
    }
}

fn to_body<T: Serialize>(value: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|source| Error::Decode {
            request_id: None,
            source,
        })
}

/// Percent-encodes a path segment (RFC 3986 `pchar` kept as is).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("gpt-4o-2024-08-06"), "gpt-4o-2024-08-06");
        assert_eq!(encode_segment("ft:gpt-4o:org:x:1"), "ft:gpt-4o:org:x:1");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
