//! Stage 3, preflight: what the request is before anything costs money — the
//! endpoint, a syntax check of the JSON body, the model asked for and whether a stream
//! is wanted. The body is forwarded byte for byte, with one exception: a Chat stream
//! gets `stream_options.include_usage` so tollgate can account it (the account stage
//! removes the usage again if the caller did not ask for it).
//!
//! Later issues add model aliases, allow-lists, token estimates, context-window and
//! JSON-schema checks here.

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;

/// The endpoints tollgate proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Responses,
    ChatCompletions,
    Embeddings,
    Moderations,
    Models,
    Model,
}

impl Endpoint {
    /// Routes a method and path; `None` for anything tollgate does not proxy.
    pub fn route(method: &Method, path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/v1/")?;
        match (method, rest) {
            (&Method::POST, "responses") => Some(Self::Responses),
            (&Method::POST, "chat/completions") => Some(Self::ChatCompletions),
            (&Method::POST, "embeddings") => Some(Self::Embeddings),
            (&Method::POST, "moderations") => Some(Self::Moderations),
            (&Method::GET, "models") => Some(Self::Models),
            (&Method::GET, r) if r.starts_with("models/") && r.len() > "models/".len() => {
                Some(Self::Model)
            }
            _ => None,
        }
    }

    /// The path label used in records and metrics (bounded: ids are not included).
    pub fn label(self) -> &'static str {
        match self {
            Self::Responses => "/v1/responses",
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Moderations => "/v1/moderations",
            Self::Models => "/v1/models",
            Self::Model => "/v1/models/{id}",
        }
    }

    /// Whether the endpoint takes a JSON body.
    pub fn has_body(self) -> bool {
        !matches!(self, Self::Models | Self::Model)
    }

    /// Whether the answer's `id` identifies a response worth recording.
    pub fn has_response_id(self) -> bool {
        matches!(
            self,
            Self::Responses | Self::ChatCompletions | Self::Moderations
        )
    }
}

/// What preflight learned, and the body to forward.
#[derive(Debug, Clone)]
pub struct Preflight {
    pub model: Option<String>,
    pub stream: bool,
    /// tollgate added `include_usage`; the caller did not ask for the usage chunk.
    pub strip_stream_usage: bool,
    pub body: Bytes,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    stream_options: Option<serde_json::Value>,
}

/// Checks and prepares a request body for `endpoint`.
pub fn run(
    endpoint: Endpoint,
    body: Bytes,
    model_in_path: Option<&str>,
) -> Result<Preflight, GatewayError> {
    if !endpoint.has_body() {
        return Ok(Preflight {
            model: model_in_path.map(str::to_owned),
            stream: false,
            strip_stream_usage: false,
            body,
        });
    }
    let peek: Peek<'_> = serde_json::from_slice(&body).map_err(|e| GatewayError::InvalidJson {
        detail: format!("line {} column {}", e.line(), e.column()),
    })?;
    // `model` may be any JSON: the upstream judges its type. We record strings only.
    let model = peek
        .model
        .and_then(|m| serde_json::from_str::<String>(m.get()).ok());
    let stream = peek
        .stream
        .as_ref()
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let caller_wants_usage = peek
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let inject = endpoint == Endpoint::ChatCompletions && stream && !caller_wants_usage;
    let body = if inject {
        with_include_usage(&body)?
    } else {
        body
    };
    Ok(Preflight {
        model,
        stream,
        strip_stream_usage: inject,
        body,
    })
}

/// Adds `stream_options.include_usage = true`. Without `stream_options` the member is
/// inserted after the opening brace and the rest stays byte-identical; otherwise the
/// body is re-serialised (key order preserved).
fn with_include_usage(body: &[u8]) -> Result<Bytes, GatewayError> {
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidJson {
            detail: format!("line {} column {}", e.line(), e.column()),
        })?;
    let Some(obj) = v.as_object_mut() else {
        return Err(GatewayError::InvalidRequest {
            message: "The request body must be a JSON object.".into(),
            param: None,
        });
    };
    if !obj.contains_key("stream_options") {
        let start = body.iter().position(|b| *b == b'{').unwrap_or(0);
        let mut out = Vec::with_capacity(body.len() + 40);
        out.extend_from_slice(&body[..=start]);
        out.extend_from_slice(b"\"stream_options\":{\"include_usage\":true}");
        let rest = &body[start + 1..];
        if rest.iter().any(|b| !b.is_ascii_whitespace() && *b != b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        return Ok(Bytes::from(out));
    }
    match obj.get_mut("stream_options") {
        Some(serde_json::Value::Object(o)) => {
            o.insert("include_usage".into(), serde_json::Value::Bool(true));
        }
        _ => {
            // A non-object stream_options is the upstream's to reject; leave it alone.
            return Ok(Bytes::copy_from_slice(body));
        }
    }
    serde_json::to_vec(&v)
        .map(Bytes::from)
        .map_err(|_| GatewayError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_the_proxied_endpoints() {
        assert_eq!(
            Endpoint::route(&Method::POST, "/v1/responses"),
            Some(Endpoint::Responses)
        );
        assert_eq!(
            Endpoint::route(&Method::GET, "/v1/models/gpt-4o"),
            Some(Endpoint::Model)
        );
        assert_eq!(Endpoint::route(&Method::GET, "/v1/models/"), None);
        assert_eq!(Endpoint::route(&Method::GET, "/v1/responses"), None);
        assert_eq!(Endpoint::route(&Method::POST, "/v1/files"), None);
        assert_eq!(Endpoint::route(&Method::POST, "/responses"), None);
    }

    #[test]
    fn bodies_pass_untouched_except_chat_streams_without_include_usage() {
        let body = Bytes::from_static(br#"{"model":"gpt-4o","input":"hi","unknown_field":[1,2]}"#);
        let p = run(Endpoint::Responses, body.clone(), None).unwrap();
        assert_eq!(p.body, body);
        assert_eq!(p.model.as_deref(), Some("gpt-4o"));
        assert!(!p.stream);

        let chat = Bytes::from_static(br#"{ "model":"gpt-4o-mini","stream":true,"messages":[]}"#);
        let p = run(Endpoint::ChatCompletions, chat, None).unwrap();
        assert!(p.stream && p.strip_stream_usage);
        assert_eq!(
            &p.body[..],
            br#"{"stream_options":{"include_usage":true}, "model":"gpt-4o-mini","stream":true,"messages":[]}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);

        let asked = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        );
        let p = run(Endpoint::ChatCompletions, asked.clone(), None).unwrap();
        assert!(!p.strip_stream_usage);
        assert_eq!(p.body, asked);

        let other = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"x":1},"messages":[]}"#,
        );
        let p = run(Endpoint::ChatCompletions, other, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        assert!(p.strip_stream_usage);
    }

    #[test]
    fn malformed_json_is_refused_before_the_upstream() {
        let e = run(
            Endpoint::Responses,
            Bytes::from_static(b"{\"model\": "),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, GatewayError::InvalidJson { .. }));
    }
}
