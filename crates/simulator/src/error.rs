//! `ApiError`: an HTTP status plus OpenAI's error envelope, the one way every part of
//! the simulator reports a refusal. The server turns it into a response.

use tollgate_wire::ErrorEnvelope;

/// An error answer exactly as OpenAI would send it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorEnvelope,
    /// Extra response headers (e.g. `retry-after`).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(
        status: u16,
        message: impl Into<String>,
        kind: &str,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        Self {
            status,
            body: ErrorEnvelope::new(message, kind, param, code),
            headers: Vec::new(),
        }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid_request(
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        Self::new(400, message, "invalid_request_error", param, code)
    }

    /// 400 `unknown_parameter`: "Unknown parameter: 'x'.".
    pub fn unknown_parameter(param: &str) -> Self {
        Self::invalid_request(
            format!("Unknown parameter: '{param}'."),
            Some(param),
            Some("unknown_parameter"),
        )
    }

    /// 404 `model_not_found` as the inference endpoints send it.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        )
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}
