//! Embeddings (`POST /v1/embeddings`), float and base64. The official SDKs ask for
//! base64 unless told otherwise: little-endian float32 values, base64-encoded.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::Extra;

/// `POST /v1/embeddings` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    pub input: EmbeddingInput,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `input`: a string, strings, token ids, or arrays of token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenArrays(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// The number of inputs (one embedding is returned per input).
    pub fn len(&self) -> usize {
        match self {
            Self::Text(_) | Self::Tokens(_) => 1,
            Self::Texts(v) => v.len(),
            Self::TokenArrays(v) => v.len(),
        }
    }

    /// True when there is no input at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `encoding_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

/// `{"object":"list","data":[Embedding…],"model","usage"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

/// One embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    pub object: String,
    pub index: u32,
    pub embedding: EmbeddingVector,
}

/// The vector as floats, or as base64 of little-endian float32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

impl EmbeddingVector {
    /// Encodes floats as base64 of little-endian float32, as the API does.
    pub fn base64_from(values: &[f32]) -> Self {
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Self::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// The floats, decoding base64 when needed. `None` if the base64 is malformed or
    /// its length is not a multiple of four bytes.
    pub fn to_floats(&self) -> Option<Vec<f32>> {
        match self {
            Self::Float(v) => Some(v.clone()),
            Self::Base64(s) => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
                if bytes.len() % 4 != 0 {
                    return None;
                }
                Some(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
        }
    }
}

/// Embeddings usage has no completion tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        let v = [0.5f32, -1.25, 3.0e-3];
        let enc = EmbeddingVector::base64_from(&v);
        assert_eq!(enc.to_floats().unwrap(), v.to_vec());
        assert_eq!(EmbeddingVector::Base64("AAA=".into()).to_floats(), None);
    }

    #[test]
    fn input_shapes() {
        let i: EmbeddingInput = serde_json::from_str(r#"["a","b"]"#).unwrap();
        assert_eq!(i.len(), 2);
        let i: EmbeddingInput = serde_json::from_str(r#"[1,2,3]"#).unwrap();
        assert_eq!(i, EmbeddingInput::Tokens(vec![1, 2, 3]));
        let i: EmbeddingInput = serde_json::from_str(r#"[[1],[2]]"#).unwrap();
        assert_eq!(i.len(), 2);
    }
}
