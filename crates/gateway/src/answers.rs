//! Structured answers, checked right after stage 7 (dispatch) for the projects that
//! ask for it (`[answers] validate_projects`): a non-streamed 200 answer to a request
//! with a structured-output schema — Chat `response_format` json_schema, Responses
//! `text.format` json_schema — is parsed as JSON and validated against that schema
//! (the `jsonschema` crate, draft 2020-12, as preflight checks the schema itself).
//!
//! The text validated: every `output_text` part of the Responses answer's messages
//! (joined, as the SDKs' `output_text` is), or each Chat choice's `message.content`.
//! A refusal (a `refusal` part, or `message.refusal`) or an answer without text (tool
//! calls only) is passed as it is.
//!
//! When the answer does not match: with `on_invalid = "retry"` (the default) the
//! request goes upstream once more, and the second answer is relayed if it matches;
//! otherwise (or with `on_invalid = "error"`) the caller gets 502
//! `invalid_structured_output` naming the failing path in the answer. 502, not 422:
//! the caller's request was valid (preflight checked its schema); it is the upstream's
//! answer that broke the contract, as with any bad upstream answer. Its
//! `x-should-retry: false` stops the SDKs from retrying on their own, since tollgate
//! already did as configured.
//!
//! Every upstream answer received counts in the call's usage record: its `attempts`
//! add up, and so do the tokens (a discarded answer was paid for). Streams are relayed
//! as they arrive, so they are not validated.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::request::Parts;
use serde::Deserialize;
use serde_json::Value;

use crate::account;
use crate::config::ConfigError;
use crate::dispatch::{self, Reply};
use crate::error::GatewayError;
use crate::keys::Principal;
use crate::preflight::{Endpoint, Preflight};
use crate::record::RecordGuard;
use crate::server::Gateway;

/// Longest validation detail put in an error message, in characters.
const MAX_DETAIL_CHARS: usize = 300;

/// `[answers]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnswers {
    /// Projects whose structured-output answers are validated (default: none).
    pub validate_projects: Option<Vec<String>>,
    /// What to do with an answer that does not match its schema.
    pub on_invalid: Option<OnInvalid>,
}

/// See [`RawAnswers::on_invalid`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// Ask the upstream once more; answer 502 if the second answer fails too.
    #[default]
    Retry,
    /// Answer 502 at once.
    Error,
}

/// The checked `[answers]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswersConfig {
    pub validate_projects: BTreeSet<String>,
    pub on_invalid: OnInvalid,
}

impl AnswersConfig {
    /// Checks `[answers]`; problems are reported with their dotted path.
    pub fn from_raw(raw: &RawAnswers, errors: &mut Vec<ConfigError>) -> Self {
        let mut validate_projects = BTreeSet::new();
        for (i, p) in raw.validate_projects.iter().flatten().enumerate() {
            let p = p.trim();
            if p.is_empty() || p.chars().any(char::is_whitespace) {
                errors.push(ConfigError {
                    path: format!("answers.validate_projects[{i}]"),
                    message: "must be a project name".into(),
                });
            } else {
                validate_projects.insert(p.to_owned());
            }
        }
        Self {
            validate_projects,
            on_invalid: raw.on_invalid.unwrap_or_default(),
        }
    }
}

/// Validates `reply` when the caller's project asks for it (see the module docs);
/// returns the answer to relay, or 502 `invalid_structured_output`.
pub async fn run(
    gw: &Gateway,
    endpoint: Endpoint,
    principal: &Principal,
    parts: &Parts,
    preflight: &Preflight,
    reply: Box<Reply>,
    guard: &mut RecordGuard,
) -> Result<Box<Reply>, GatewayError> {
    let config = &gw.config.answers;
    if !config.validate_projects.contains(&principal.project)
        || preflight.stream
        || reply.status() != http::StatusCode::OK
    {
        return Ok(reply);
    }
    // Boxed: validation (and its retry) is for the projects that ask for it; every
    // other call's future stays small.
    let call = (gw, endpoint, principal, parts, preflight);
    Box::pin(validate(call, *reply, guard)).await.map(Box::new)
}

/// [`run`] for a call whose answer is validated.
async fn validate(
    (gw, endpoint, principal, parts, preflight): (
        &Gateway,
        Endpoint,
        &Principal,
        &Parts,
        &Preflight,
    ),
    reply: Reply,
    guard: &mut RecordGuard,
) -> Result<Reply, GatewayError> {
    let config = &gw.config.answers;
    let Some(validator) = answer_schema(endpoint, &preflight.body) else {
        return Ok(reply);
    };
    let (reply, bytes) = buffer(reply).await?;
    let Err(failure) = check(endpoint, &validator, &bytes) else {
        return Ok(reply);
    };
    let mut attempts = reply.attempts();
    discard(endpoint, &bytes, guard);
    let failure = match config.on_invalid {
        OnInvalid::Error => failure,
        OnInvalid::Retry => {
            // Asked again of the target that gave the answer (a fallback's, if one served).
            let served_by = guard.record().served_by.clone();
            let client = crate::fallback::served_client(gw, principal, served_by.as_deref())?;
            let again = dispatch::send(&client, parts, preflight).await?;
            attempts += again.attempts();
            if again.status() != http::StatusCode::OK {
                return Ok(with_attempts(again, attempts));
            }
            let (again, bytes) = buffer(again).await?;
            match check(endpoint, &validator, &bytes) {
                Ok(()) => return Ok(with_attempts(again, attempts)),
                Err(failure) => {
                    discard(endpoint, &bytes, guard);
                    failure
                }
            }
        }
    };
    guard.record().attempts = attempts;
    Err(GatewayError::InvalidStructuredOutput {
        path: failure.path,
        detail: failure.detail,
        attempts,
    })
}

/// Where and why an answer does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    /// A JSON pointer into the answer (`/age`; empty: the whole answer).
    path: String,
    detail: String,
}

/// The compiled schema of the request's structured output, if it asks for one.
fn answer_schema(endpoint: Endpoint, body: &[u8]) -> Option<jsonschema::Validator> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let format = match endpoint {
        Endpoint::Responses => v.pointer("/text/format")?,
        Endpoint::ChatCompletions => v.get("response_format")?,
        _ => return None,
    };
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return None;
    }
    let schema = match endpoint {
        Endpoint::ChatCompletions => format.pointer("/json_schema/schema")?,
        _ => format.get("schema")?,
    };
    // Preflight refused a schema that does not compile; none reaches here.
    jsonschema::draft202012::new(schema).ok()
}

/// Reads the whole answer, and gives it back as a reply that can still be relayed.
async fn buffer(reply: Reply) -> Result<(Reply, Bytes), GatewayError> {
    let attempts = reply.attempts();
    let meta = reply.meta;
    let bytes = reply.body.collect().await.map_err(|e| {
        tracing::warn!(error = %e, "reading the upstream body failed");
        GatewayError::UpstreamUnreachable { attempts }
    })?;
    Ok((Reply::buffered(meta, bytes.clone()), bytes))
}

fn with_attempts(mut reply: Reply, attempts: u32) -> Reply {
    reply.meta.attempts = attempts;
    reply
}

/// Counts a discarded answer's tokens in the call's record (they were paid for).
fn discard(endpoint: Endpoint, bytes: &[u8], guard: &mut RecordGuard) {
    account::from_json_body(endpoint, bytes).apply(guard.record());
}

/// Checks every structured text of an answer body.
fn check(
    endpoint: Endpoint,
    validator: &jsonschema::Validator,
    body: &[u8],
) -> Result<(), Failure> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure {
            path: String::new(),
            detail: "the upstream's answer is not JSON".into(),
        });
    };
    for text in texts(endpoint, &v) {
        let instance: Value = serde_json::from_str(&text).map_err(|e| Failure {
            path: String::new(),
            detail: format!("the answer is not JSON ({e})"),
        })?;
        let first = validator
            .iter_errors(&instance)
            .next()
            .map(|e| (e.instance_path().as_str().to_owned(), e.to_string()));
        if let Some((path, mut detail)) = first {
            if detail.chars().count() > MAX_DETAIL_CHARS {
                detail = detail.chars().take(MAX_DETAIL_CHARS).collect::<String>() + "…";
            }
            return Err(Failure { path, detail });
        }
    }
    Ok(())
}

/// The structured texts of an answer: none when it is a refusal or has no text.
fn texts(endpoint: Endpoint, v: &Value) -> Vec<String> {
    let array = |v: Option<&Value>| v.and_then(Value::as_array).cloned().unwrap_or_default();
    match endpoint {
        Endpoint::Responses => {
            let mut joined = String::new();
            let mut any = false;
            for item in array(v.get("output")) {
                if item.get("type").and_then(Value::as_str) != Some("message") {
                    continue;
                }
                for part in array(item.get("content")) {
                    match part.get("type").and_then(Value::as_str) {
                        Some("refusal") => return Vec::new(),
                        Some("output_text") => {
                            any = true;
                            joined.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""));
                        }
                        _ => {}
                    }
                }
            }
            if any {
                vec![joined]
            } else {
                Vec::new()
            }
        }
        _ => array(v.get("choices"))
            .iter()
            .filter_map(|c| c.get("message"))
            .filter(|m| m.get("refusal").is_none_or(Value::is_null))
            .filter_map(|m| m.get("content").and_then(Value::as_str).map(str::to_owned))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn person() -> Value {
        json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
               "required": ["name", "age"], "additionalProperties": false})
    }

    fn validator(endpoint: Endpoint) -> jsonschema::Validator {
        let body = match endpoint {
            Endpoint::Responses => json!({"model": "m", "input": "x",
                "text": {"format": {"type": "json_schema", "name": "p", "schema": person()}}}),
            _ => json!({"model": "m", "messages": [],
                "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": person()}}}),
        };
        answer_schema(endpoint, body.to_string().as_bytes()).unwrap()
    }

    fn responses(text: &str) -> Vec<u8> {
        json!({"output": [{"type": "reasoning"}, {"type": "message", "content": [{"type": "output_text", "text": text}]}]})
            .to_string()
            .into_bytes()
    }

    fn chat(content: &str) -> Vec<u8> {
        json!({"choices": [{"message": {"role": "assistant", "content": content, "refusal": null}}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn matching_answers_pass_and_failures_name_the_path() {
        let r = validator(Endpoint::Responses);
        assert_eq!(
            check(
                Endpoint::Responses,
                &r,
                &responses(r#"{"name":"Ada","age":36}"#)
            ),
            Ok(())
        );
        let f = check(
            Endpoint::Responses,
            &r,
            &responses(r#"{"name":12345,"age":36}"#),
        )
        .unwrap_err();
        assert_eq!(f.path, "/name");
        assert!(f.detail.contains("string"), "{f:?}");
        let c = validator(Endpoint::ChatCompletions);
        assert_eq!(
            check(
                Endpoint::ChatCompletions,
                &c,
                &chat(r#"{"name":"Ada","age":36}"#)
            ),
            Ok(())
        );
        let f = check(Endpoint::ChatCompletions, &c, &chat(r#"{"name":"Ada"}"#)).unwrap_err();
        assert_eq!(f.path, "");
        assert!(f.detail.contains("age"), "{f:?}");
        let f = check(Endpoint::ChatCompletions, &c, &chat("not json")).unwrap_err();
        assert!(f.detail.contains("not JSON"), "{f:?}");
    }

    #[test]
    fn refusals_tool_calls_and_requests_without_a_schema_are_not_checked() {
        let c = validator(Endpoint::ChatCompletions);
        let refusal = json!({"choices": [{"message": {"content": null, "refusal": "I can't."}}]});
        assert_eq!(
            check(
                Endpoint::ChatCompletions,
                &c,
                refusal.to_string().as_bytes()
            ),
            Ok(())
        );
        let r = validator(Endpoint::Responses);
        let refusal = json!({"output": [{"type": "message", "content": [{"type": "refusal", "refusal": "no"}]}]});
        assert_eq!(
            check(Endpoint::Responses, &r, refusal.to_string().as_bytes()),
            Ok(())
        );
        let tools = json!({"output": [{"type": "function_call", "arguments": "{}"}]});
        assert_eq!(
            check(Endpoint::Responses, &r, tools.to_string().as_bytes()),
            Ok(())
        );
        let plain = json!({"model": "m", "input": "x", "text": {"format": {"type": "text"}}});
        assert!(answer_schema(Endpoint::Responses, plain.to_string().as_bytes()).is_none());
        assert!(answer_schema(Endpoint::Embeddings, b"{}").is_none());
    }

    #[test]
    fn the_config_names_projects_and_defaults_to_retry() {
        let mut errors = Vec::new();
        let c = AnswersConfig::from_raw(
            &RawAnswers {
                validate_projects: Some(vec!["shop".into(), " ".into()]),
                on_invalid: None,
            },
            &mut errors,
        );
        assert_eq!(c.on_invalid, OnInvalid::Retry);
        assert!(c.validate_projects.contains("shop"));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "answers.validate_projects[1]");
    }
}
