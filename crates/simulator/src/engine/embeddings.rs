//! `POST /v1/embeddings`: vectors of the model's real dimension, unit length and
//! stable per input, derived from a SHA-256 of the input seeding a SplitMix64 stream.
//!
//! `dimensions` shortens the way the text-embedding-3 models do: the first N
//! components of the full vector, renormalised — so a short embedding is a prefix
//! (up to scale) of the long one, as with the real models.

use sha2::{Digest, Sha256};
use tollgate_wire::embeddings::{
    Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage,
    EmbeddingVector, EncodingFormat,
};

use super::rng::Rng;
use super::tokens::Encoding;
use super::validate;
use crate::error::ApiError;

/// The most inputs one request may carry.
const MAX_INPUTS: usize = 2048;

/// One input: text, or token ids (embedded by their values).
enum Item<'a> {
    Text(&'a str),
    Tokens(&'a [u32]),
}

/// Builds the embeddings answer. See [`super::embed`].
pub fn embed(req: &EmbeddingRequest) -> Result<EmbeddingResponse, ApiError> {
    validate::reject_unknown(&req.extra, &[])?;
    if req.model.is_empty() {
        return Err(validate::missing("model"));
    }
    let items = items(&req.input)?;
    let dimensions = dimensions(&req.model, req.dimensions)?;
    let encoding = Encoding::for_model(&req.model);
    let mut prompt_tokens = 0u64;
    let mut data = Vec::with_capacity(items.len());
    for (item, index) in items.iter().zip(0u32..) {
        let (digest, tokens) = match item {
            Item::Text(t) => (Sha256::digest(t.as_bytes()), encoding.count(t)),
            Item::Tokens(ids) => {
                let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
                (Sha256::digest(&bytes), ids.len())
            }
        };
        prompt_tokens += tokens as u64;
        let full = vector(&digest, native_dimension(&req.model));
        let values = normalized(&full[..dimensions]);
        let embedding = match req.encoding_format {
            Some(EncodingFormat::Base64) => EmbeddingVector::base64_from(&values),
            _ => EmbeddingVector::Float(values),
        };
        data.push(Embedding {
            object: "embedding".to_owned(),
            index,
            embedding,
        });
    }
    Ok(EmbeddingResponse {
        object: "list".to_owned(),
        data,
        model: req.model.clone(),
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
}

/// The inputs, refusing what the API refuses: nothing at all, an empty string or
/// token list, more than 2048 inputs.
fn items(input: &EmbeddingInput) -> Result<Vec<Item<'_>>, ApiError> {
    let items: Vec<Item<'_>> = match input {
        EmbeddingInput::Text(t) => vec![Item::Text(t)],
        EmbeddingInput::Texts(ts) => ts.iter().map(|t| Item::Text(t)).collect(),
        EmbeddingInput::Tokens(ids) => vec![Item::Tokens(ids)],
        EmbeddingInput::TokenArrays(arrays) => arrays.iter().map(|a| Item::Tokens(a)).collect(),
    };
    let empty = |i: &Item<'_>| match i {
        Item::Text(t) => t.is_empty(),
        Item::Tokens(ids) => ids.is_empty(),
    };
    if items.is_empty() || items.iter().any(empty) {
        return Err(ApiError::invalid_request(
            "'$.input' is invalid. Please check the API reference: \
             https://platform.openai.com/docs/api-reference.",
            Some("input"),
            None,
        ));
    }
    if items.len() > MAX_INPUTS {
        return Err(ApiError::invalid_request(
            format!(
                "Invalid 'input': array too long. Expected an array with maximum length \
                 {MAX_INPUTS}, but got an array with length {} instead.",
                items.len()
            ),
            Some("input"),
            Some("array_above_max_length"),
        ));
    }
    Ok(items)
}

/// The model's own dimension: 3072 for text-embedding-3-large, 1536 otherwise.
pub fn native_dimension(model: &str) -> usize {
    if model.starts_with("text-embedding-3-large") {
        3072
    } else {
        1536
    }
}

/// The dimension to answer with: `dimensions` when the model supports shortening
/// (ada-002 does not), within `1..=native`.
fn dimensions(model: &str, requested: Option<u32>) -> Result<usize, ApiError> {
    let native = native_dimension(model);
    let Some(requested) = requested else {
        return Ok(native);
    };
    if model.starts_with("text-embedding-ada") {
        return Err(ApiError::invalid_request(
            "This model does not support specifying dimensions.",
            Some("dimensions"),
            None,
        ));
    }
    validate::int_at_least("dimensions", Some(u64::from(requested)), 1)?;
    validate::int_at_most("dimensions", Some(u64::from(requested)), native as u64)?;
    Ok(requested as usize)
}

/// `n` components in `[-1, 1)` drawn from a stream seeded by `digest`.
fn vector(digest: &[u8], n: usize) -> Vec<f32> {
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&digest[..8]);
    let mut rng = Rng::new(u64::from_le_bytes(seed));
    (0..n).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect()
}

/// `v` scaled to unit length (computed in f64 so the f32 result is unit to ~1e-7).
fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn request(body: Value) -> EmbeddingRequest {
        serde_json::from_value(body).unwrap()
    }

    fn floats(r: &EmbeddingResponse, i: usize) -> Vec<f32> {
        r.data[i].embedding.to_floats().unwrap()
    }

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn dimensions_unit_norm_and_stability() {
        for (model, dim) in [
            ("text-embedding-3-small", 1536),
            ("text-embedding-3-large", 3072),
            ("text-embedding-ada-002", 1536),
            ("my-embedder", 1536),
        ] {
            let r = embed(&request(json!({"model": model, "input": "hello"}))).unwrap();
            let v = floats(&r, 0);
            assert_eq!(v.len(), dim, "{model}");
            assert!((norm(&v) - 1.0).abs() < 1e-5);
            assert!(matches!(r.data[0].embedding, EmbeddingVector::Float(_)));
        }
        let a = embed(&request(
            json!({"model": "text-embedding-3-small", "input": ["a", "b", "a"]}),
        ))
        .unwrap();
        assert_eq!(a.data.len(), 3);
        assert_eq!(floats(&a, 0), floats(&a, 2));
        assert_ne!(floats(&a, 0), floats(&a, 1));
        assert_eq!(
            a.data.iter().map(|d| d.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(
            (a.object.as_str(), a.data[0].object.as_str()),
            ("list", "embedding")
        );
    }

    #[test]
    fn dimensions_shorten_to_a_renormalised_prefix() {
        let full = embed(&request(
            json!({"model": "text-embedding-3-small", "input": "x"}),
        ))
        .unwrap();
        let short = embed(&request(
            json!({"model": "text-embedding-3-small", "input": "x",
                                          "dimensions": 256}),
        ))
        .unwrap();
        let (full, short) = (floats(&full, 0), floats(&short, 0));
        assert_eq!(short.len(), 256);
        assert!((norm(&short) - 1.0).abs() < 1e-5);
        let ratio = short[0] / full[0];
        assert!((short[10] / full[10] - ratio).abs() < 1e-3);
        let e = embed(&request(
            json!({"model": "text-embedding-ada-002", "input": "x", "dimensions": 256}),
        ))
        .unwrap_err();
        assert_eq!(
            (e.status, e.body.error.param.as_deref()),
            (400, Some("dimensions"))
        );
        assert!(embed(&request(
            json!({"model": "text-embedding-3-small", "input": "x", "dimensions": 5000})
        ))
        .is_err());
    }

    #[test]
    fn base64_decodes_to_the_float_vector() {
        let f = embed(&request(
            json!({"model": "text-embedding-3-small", "input": "hi",
                                      "encoding_format": "float"}),
        ))
        .unwrap();
        let b = embed(&request(
            json!({"model": "text-embedding-3-small", "input": "hi",
                                      "encoding_format": "base64"}),
        ))
        .unwrap();
        assert!(matches!(b.data[0].embedding, EmbeddingVector::Base64(_)));
        assert_eq!(floats(&b, 0), floats(&f, 0));
    }

    #[test]
    fn usage_counts_tokens_with_cl100k_and_token_arrays_by_length() {
        let r = embed(&request(json!({"model": "text-embedding-3-small",
                                      "input": ["hello world", "The quick brown fox"]})))
        .unwrap();
        assert_eq!(r.usage.prompt_tokens, 2 + 4);
        assert_eq!(r.usage.total_tokens, r.usage.prompt_tokens);
        let r = embed(&request(
            json!({"model": "text-embedding-3-small", "input": [[1, 2, 3], [4]]}),
        ))
        .unwrap();
        assert_eq!(r.usage.prompt_tokens, 4);
        assert_eq!(r.data.len(), 2);
    }

    #[test]
    fn invalid_inputs_are_refused() {
        for input in [json!(""), json!([]), json!(["ok", ""]), json!([[]])] {
            let e = embed(&request(
                json!({"model": "text-embedding-3-small", "input": input}),
            ))
            .unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.body.error.param.as_deref(), Some("input"));
        }
        let e = embed(&request(
            json!({"model": "text-embedding-3-small", "input": "x", "bogus": 1}),
        ))
        .unwrap_err();
        assert_eq!(e.body.error.code.as_deref(), Some("unknown_parameter"));
    }
}
