//! stub
use crate::error::ApiError;
use tollgate_wire::embeddings::{EmbeddingRequest, EmbeddingResponse};
pub fn embed(_req: &EmbeddingRequest) -> Result<EmbeddingResponse, ApiError> {
    Err(ApiError::invalid_request("not implemented", None, None))
}
