//! The error envelope every non-2xx OpenAI answer carries:
//! `{"error":{"message","type","param","code"}}`, all four keys always present.

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// The inner error object. `param` and `code` serialise as `null` when absent, never
/// omitted: the spec requires all four keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

impl ErrorEnvelope {
    /// Builds an envelope from its parts.
    pub fn new(
        message: impl Into<String>,
        kind: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        Self {
            error: ErrorBody {
                message: message.into(),
                kind: kind.into(),
                param: param.map(str::to_owned),
                code: code.map(str::to_owned),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_four_keys_are_serialised_even_when_null() {
        let e = ErrorEnvelope::new("nope", "invalid_request_error", None, None);
        let v = serde_json::to_value(&e).unwrap();
        let obj = v["error"].as_object().unwrap();
        for k in ["message", "type", "param", "code"] {
            assert!(obj.contains_key(k), "missing {k}");
        }
        assert!(obj["param"].is_null() && obj["code"].is_null());
    }

    #[test]
    fn parses_an_openai_error_body() {
        let raw = r#"{"error":{"message":"m","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let e: ErrorEnvelope = serde_json::from_str(raw).unwrap();
        assert_eq!(e.error.kind, "requests");
        assert_eq!(e.error.code.as_deref(), Some("rate_limit_exceeded"));
    }
}
