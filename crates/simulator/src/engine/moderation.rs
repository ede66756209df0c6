//! stub
use crate::error::ApiError;
use tollgate_wire::moderations::{ModerationRequest, ModerationResponse};
pub fn moderate(_req: &ModerationRequest) -> Result<ModerationResponse, ApiError> {
    Err(ApiError::invalid_request("not implemented", None, None))
}
