//! Models (`GET /v1/models`, `GET /v1/models/{id}`).

use serde::{Deserialize, Serialize};

use crate::Extra;

/// A model: `{"id","object":"model","created","owned_by"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub object: String,
    pub created: i64,
    pub owned_by: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `{"object":"list","data":[Model, …]}` — not paginated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<Model>,
}
