//! The `/v1` endpoints after faults: route, authenticate, parse, check the model,
//! admit (quota and rate limits), then ask the engine. Everything here is synchronous:
//! the engine is pure and streams are lazy bodies, so no handler awaits.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use tollgate_wire::chat::ChatCompletionRequest;
use tollgate_wire::embeddings::EmbeddingRequest;
use tollgate_wire::moderations::ModerationRequest;
use tollgate_wire::ratelimit::RateLimitInfo;
use tollgate_wire::responses::CreateResponse;

use crate::error::ApiError;
use crate::headers::{json_bytes, json_ok};
use crate::server::SimState;
use crate::stream::{self, StreamControl};
use crate::{auth, engine, faults, ids};

/// One request on its way through the endpoints.
pub struct Call<'a> {
    pub state: &'a SimState,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
    pub stream: StreamControl,
    /// The rate-limit state after admission, for the headers.
    pub rate: Option<RateLimitInfo>,
}

/// Dispatches by method and path; anything unknown is OpenAI's 404 "Invalid URL".
pub fn route(call: &mut Call<'_>, method: &Method, path: &str) -> Result<Response, ApiError> {
    match (method, path) {
        (&Method::POST, "/v1/responses") => responses(call),
        (&Method::POST, "/v1/chat/completions") => chat(call),
        (&Method::POST, "/v1/embeddings") => embeddings(call),
        (&Method::POST, "/v1/moderations") => moderations(call),
        (&Method::GET, "/v1/models") => {
            call.key()?;
            Ok(json_bytes(StatusCode::OK, call.state.models_json.clone()))
        }
        (&Method::GET, p) if p.len() > "/v1/models/".len() && p.starts_with("/v1/models/") => {
            call.key()?;
            retrieve_model(call.state, &p["/v1/models/".len()..])
        }
        _ => Err(invalid_url(method, path)),
    }
}

impl<'a> Call<'a> {
    fn key(&self) -> Result<&'a str, ApiError> {
        auth::authenticate(self.headers, self.state.keys.as_ref())
    }

    /// The model must be one the simulator serves.
    fn known_model(&self, model: &str) -> Result<(), ApiError> {
        if self.state.model_json.contains_key(model) {
            Ok(())
        } else {
            Err(ApiError::model_not_found(model))
        }
    }

    /// Quota, then the key's rate limits. Tokens are estimated before the call, as
    /// OpenAI does: about four bytes of body per input token plus the output tokens
    /// the request allows.
    fn admit(&mut self, key: &str, model: &str, max_output: u64) -> Result<(), ApiError> {
        if self.state.insufficient_quota {
            return Err(faults::insufficient_quota());
        }
        let tokens = (self.body.len() as u64).div_ceil(4) + max_output;
        self.rate = Some(self.state.limits.admit(key, model, tokens)?);
        Ok(())
    }
}

fn responses(call: &mut Call<'_>) -> Result<Response, ApiError> {
    let key = call.key()?;
    let req: CreateResponse = parse(call.body)?;
    let model = req
        .model
        .as_deref()
        .ok_or_else(|| missing_parameter("model"))?;
    call.known_model(model)?;
    call.admit(key, model, req.max_output_tokens.unwrap_or(0))?;
    let plan = engine::plan_response(&req, ids::unix_now())?;
    if req.stream == Some(true) {
        Ok(stream::responses(
            plan.events,
            call.stream,
            call.state.streams.clone(),
        ))
    } else {
        Ok(json_ok(&plan.response))
    }
}

fn chat(call: &mut Call<'_>) -> Result<Response, ApiError> {
    let key = call.key()?;
    let req: ChatCompletionRequest = parse(call.body)?;
    call.known_model(&req.model)?;
    let max_output = req.max_completion_tokens.or(req.max_tokens).unwrap_or(0);
    call.admit(key, &req.model, max_output)?;
    let plan = engine::plan_chat(&req, ids::unix_now())?;
    if req.stream == Some(true) {
        Ok(stream::chat(
            plan.chunks,
            call.stream,
            call.state.streams.clone(),
        ))
    } else {
        Ok(json_ok(&plan.completion))
    }
}

fn embeddings(call: &mut Call<'_>) -> Result<Response, ApiError> {
    let key = call.key()?;
    let req: EmbeddingRequest = parse(call.body)?;
    call.known_model(&req.model)?;
    call.admit(key, &req.model, 0)?;
    Ok(json_ok(&engine::embed(&req)?))
}

fn moderations(call: &mut Call<'_>) -> Result<Response, ApiError> {
    let key = call.key()?;
    let req: ModerationRequest = parse(call.body)?;
    let model = req.model.as_deref().unwrap_or("omni-moderation-latest");
    if req.model.is_some() {
        call.known_model(model)?;
    }
    call.admit(key, model, 0)?;
    Ok(json_ok(&engine::moderate(&req)?))
}

fn retrieve_model(state: &SimState, id: &str) -> Result<Response, ApiError> {
    match state.model_json.get(id) {
        Some(body) => Ok(json_bytes(StatusCode::OK, body.clone())),
        None => Err(ApiError::new(
            404,
            format!("The model '{id}' does not exist"),
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        )),
    }
}

/// 404 for any route the simulator does not serve.
pub fn invalid_url(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        404,
        format!("Invalid URL ({method} {path})"),
        "invalid_request_error",
        None,
        None,
    )
}

/// 400 for a body that is not JSON at all.
pub fn malformed_json() -> ApiError {
    ApiError::invalid_request(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
         using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
         sent was not valid JSON. If you have trouble figuring out how to fix this, please \
         contact us through our help center at help.openai.com.)",
        None,
        None,
    )
}

fn missing_parameter(param: &str) -> ApiError {
    ApiError::invalid_request(
        format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// Parses a request body: malformed JSON and JSON of the wrong shape are both 400s,
/// the latter naming the offending field.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) if e.classify() == Category::Data => Err(shape_error::<T>(body)),
        Err(_) => Err(malformed_json()),
    }
}

/// Re-parses a body that did not fit `T`, this time tracking the path, to say where.
/// Only runs on the error path, so the common case pays nothing for it.
fn shape_error<T: DeserializeOwned>(body: &[u8]) -> ApiError {
    let mut de = serde_json::Deserializer::from_slice(body);
    let err = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(_) => return ApiError::invalid_request("The request body is invalid.", None, None),
        Err(err) => err,
    };
    let path = err.path().to_string();
    let path = (path != ".").then_some(path);
    let inner = err.inner().to_string();
    let message = inner
        .rfind(" at line ")
        .map_or(inner.as_str(), |i| &inner[..i]);
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        let param = match &path {
            Some(p) => format!("{p}.{field}"),
            None => field.to_owned(),
        };
        return missing_parameter(&param);
    }
    match path {
        Some(p) => ApiError::invalid_request(
            format!("Invalid value for '{p}': {message}."),
            Some(&p),
            Some("invalid_value"),
        ),
        None => ApiError::invalid_request(format!("Invalid request body: {message}."), None, None),
    }
}

/// The set of accepted keys, if the configuration restricts them.
pub fn key_set(keys: Option<&[String]>) -> Option<HashSet<String>> {
    keys.map(|k| k.iter().cloned().collect())
}

/// The `model` of a JSON body, for messages of simulated faults.
pub fn model_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct M {
        model: Option<String>,
    }
    serde_json::from_slice::<M>(body)
        .ok()
        .and_then(|m| m.model)
        .unwrap_or_else(|| "gpt-4o".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_problem() {
        let e = parse::<ChatCompletionRequest>(b"{not json").unwrap_err();
        assert!(e
            .body
            .error
            .message
            .starts_with("We could not parse the JSON body"));
        assert_eq!(
            parse::<ChatCompletionRequest>(b"")
                .unwrap_err()
                .body
                .error
                .param,
            None
        );

        let e = parse::<ChatCompletionRequest>(br#"{"messages":[]}"#).unwrap_err();
        assert_eq!(e.body.error.message, "Missing required parameter: 'model'.");
        assert_eq!(
            e.body.error.code.as_deref(),
            Some("missing_required_parameter")
        );

        let e = parse::<ChatCompletionRequest>(br#"{"model":"m","messages":[{"content":"x"}]}"#)
            .unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("messages[0].role"));

        let e = parse::<ChatCompletionRequest>(br#"{"model":"m","messages":[],"max_tokens":"x"}"#)
            .unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("max_tokens"));
        assert!(
            !e.body.error.message.contains("line"),
            "{}",
            e.body.error.message
        );

        let e = parse::<ChatCompletionRequest>(b"[1]").unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.body.error.param, None);
    }

    #[test]
    fn model_of_falls_back() {
        assert_eq!(model_of(br#"{"model":"o3"}"#), "o3");
        assert_eq!(model_of(b"nope"), "gpt-4o");
    }
}
