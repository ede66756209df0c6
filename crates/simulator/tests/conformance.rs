#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Conformance of the live simulator: every JSON body and every stream event it
//! emits for the `/v1` endpoints validates against the matching schema of OpenAI's
//! own spec (`../shared/openai-openapi/openapi.yaml`, loaded by
//! `support/openapi.rs`; no schema is copied here).
//!
//! Each test starts a simulator in this process, sends real HTTP requests and checks
//! the answer's status, `content-type`, `x-request-id` (`req_` + 32 hex) and body.
//! Besides schema validity, each test also checks the property that makes its
//! request interesting (cut by `max_output_tokens`, a function call, a reasoning
//! item, …), so a simulator that stops producing that shape fails the test instead
//! of silently validating something simpler.

#[path = "support/openapi.rs"]
mod openapi;

use openapi::{
    assert_valid, assert_valid_chat_sse, assert_valid_embedding_response,
    assert_valid_response_event, assert_valid_responses_sse,
};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tollgate_simulator::{spawn, SimConfig, SimHandle};

const KEY: &str = "sk-test-conformance";
const JSON_CT: &str = "application/json";
const SSE_CT: &str = "text/event-stream";

// ---------------------------------------------------------------- plumbing

/// One HTTP answer, read whole.
struct Answer {
    status: StatusCode,
    content_type: String,
    request_id: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}):\n{}", self.body))
    }
}

async fn sim() -> SimHandle {
    spawn(SimConfig::default()).await.unwrap()
}

/// Sends `body` (raw text, sent as `application/json`) to `root_url + path`.
async fn send(
    sim: &SimHandle,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Client::new().request(method, format!("{}{path}", sim.root_url()));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req.send().await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let status = resp.status();
    let content_type = header("content-type");
    let request_id = header("x-request-id");
    let body = resp.text().await.unwrap();
    let answer = Answer {
        status,
        content_type,
        request_id,
        body,
    };
    assert_request_id(&answer);
    answer
}

/// `x-request-id` is `req_` followed by 32 lowercase hex digits.
fn assert_request_id(answer: &Answer) {
    let id = &answer.request_id;
    let hex = id.strip_prefix("req_").unwrap_or_else(|| {
        panic!(
            "x-request-id {id:?} does not start with req_ (status {})",
            answer.status
        )
    });
    assert!(
        hex.len() == 32
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "x-request-id {id:?} is not req_ + 32 hex"
    );
}

/// The media type of `content-type`, without parameters such as `charset`.
fn assert_content_type(answer: &Answer, expected: &str) {
    let media = answer
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    assert_eq!(
        media, expected,
        "content-type {:?} (status {})",
        answer.content_type, answer.status
    );
}

/// A 200 JSON answer to `POST path`, parsed.
async fn post_ok(sim: &SimHandle, path: &str, body: &Value) -> Value {
    let answer = send(
        sim,
        Method::POST,
        path,
        Some(KEY),
        Some(body.to_string()),
        &[],
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "POST {path} {body}\n{}",
        answer.body
    );
    assert_content_type(&answer, JSON_CT);
    answer.json()
}

/// A 200 event-stream answer to `POST path` with `stream: true` added, as text.
async fn post_stream(sim: &SimHandle, path: &str, body: &Value) -> String {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let answer = send(
        sim,
        Method::POST,
        path,
        Some(KEY),
        Some(body.to_string()),
        &[],
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "POST {path} {body}\n{}",
        answer.body
    );
    assert_content_type(&answer, SSE_CT);
    answer.body
}

async fn get_ok(sim: &SimHandle, path: &str) -> Value {
    let answer = send(sim, Method::GET, path, Some(KEY), None, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "GET {path}\n{}", answer.body);
    assert_content_type(&answer, JSON_CT);
    answer.json()
}

/// Asserts an error answer: its status, JSON content type, `ErrorResponse` shape,
/// and (when given) its `code`. Returns the inner `error` object.
fn assert_error(answer: &Answer, status: StatusCode, code: Option<&str>) -> Value {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_content_type(answer, JSON_CT);
    let body = answer.json();
    assert_valid("ErrorResponse", &body);
    let error = body["error"].clone();
    for key in ["message", "type", "param", "code"] {
        assert!(
            error.get(key).is_some(),
            "error envelope lacks {key}: {body}"
        );
    }
    if let Some(code) = code {
        assert_eq!(error["code"], json!(code), "{body}");
    }
    error
}

// ---------------------------------------------------------------- requests

fn weather_parameters() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
        },
        "required": ["city", "unit"],
        "additionalProperties": false
    })
}

/// A strict schema with a nested object, an array of objects and enums.
fn ticket_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": ["billing", "bug", "other"]},
            "priority": {"type": "string", "enum": ["low", "medium", "high"]},
            "needs_human": {"type": "boolean"},
            "customer": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "tier": {"type": "string", "enum": ["free", "pro"]}
                },
                "required": ["name", "tier"],
                "additionalProperties": false
            },
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "order": {"type": "integer"},
                        "action": {"type": "string"}
                    },
                    "required": ["order", "action"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["category", "priority", "needs_human", "customer", "steps"],
        "additionalProperties": false
    })
}

fn resp_text() -> Value {
    json!({"model": "gpt-4o", "input": "Say hello to the conformance test."})
}

fn resp_cut() -> Value {
    json!({
        "model": "gpt-4o",
        "input": "Write a long, detailed story about a lighthouse keeper who finds a \
                  message in a bottle, with many chapters and vivid descriptions.",
        "max_output_tokens": 16
    })
}

fn resp_json_schema() -> Value {
    json!({
        "model": "gpt-4o-2024-08-06",
        "input": "Classify this ticket: my invoice is wrong and the app crashes.",
        "text": {"format": {
            "type": "json_schema", "name": "ticket", "strict": true,
            "schema": ticket_schema()
        }}
    })
}

fn resp_json_object() -> Value {
    json!({
        "model": "gpt-4o",
        "input": "Reply in JSON with a greeting.",
        "text": {"format": {"type": "json_object"}}
    })
}

fn resp_tools() -> Value {
    json!({"type": "function", "name": "get_weather",
           "description": "Current weather in a city",
           "parameters": weather_parameters(), "strict": true})
}

fn resp_tool_call() -> Value {
    json!({
        "model": "gpt-4o",
        "input": "What is the weather in Paris?",
        "tools": [resp_tools()],
        "tool_choice": "auto"
    })
}

fn resp_reasoning() -> Value {
    json!({
        "model": "o3-mini",
        "input": "How many prime numbers are there below 30?",
        "reasoning": {"effort": "low"}
    })
}

/// The single `function_call` item of a Responses output.
fn function_call_item(response: &Value) -> Value {
    let calls: Vec<&Value> = response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "function_call")
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "expected one function_call item: {response}"
    );
    calls[0].clone()
}

fn output_types(response: &Value) -> Vec<String> {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["type"].as_str().unwrap().to_owned())
        .collect()
}

/// The concatenated `output_text` of a Responses output.
fn response_text(response: &Value) -> String {
    let mut text = String::new();
    for item in response["output"].as_array().unwrap() {
        if item["type"] == "message" {
            for part in item["content"].as_array().unwrap() {
                if part["type"] == "output_text" {
                    text.push_str(part["text"].as_str().unwrap());
                }
            }
        }
    }
    text
}

// ---------------------------------------------------------------- responses, plain

async fn valid_response(sim: &SimHandle, body: &Value) -> Value {
    let response = post_ok(sim, "/v1/responses", body).await;
    assert_valid("Response", &response);
    assert_eq!(response["object"], "response");
    response
}

#[tokio::test]
async fn responses_plain_text() {
    let sim = sim().await;
    let r = valid_response(&sim, &resp_text()).await;
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(output_types(&r), ["message"], "{r}");
    assert!(!response_text(&r).is_empty(), "{r}");
}

#[tokio::test]
async fn responses_cut_by_max_output_tokens() {
    let sim = sim().await;
    let r = valid_response(&sim, &resp_cut()).await;
    assert_eq!(r["status"], "incomplete", "{r}");
    assert_eq!(
        r["incomplete_details"]["reason"], "max_output_tokens",
        "{r}"
    );
    assert_eq!(r["max_output_tokens"], 16, "{r}");
}

#[tokio::test]
async fn responses_json_schema() {
    let sim = sim().await;
    let r = valid_response(&sim, &resp_json_schema()).await;
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["text"]["format"]["type"], "json_schema", "{r}");
    let parsed: Value = serde_json::from_str(&response_text(&r)).unwrap();
    assert!(
        ["billing", "bug", "other"].contains(&parsed["category"].as_str().unwrap()),
        "{parsed}"
    );
    assert!(
        parsed["customer"].is_object() && parsed["steps"].is_array(),
        "{parsed}"
    );
}

#[tokio::test]
async fn responses_json_object() {
    let sim = sim().await;
    let r = valid_response(&sim, &resp_json_object()).await;
    assert_eq!(r["text"]["format"]["type"], "json_object", "{r}");
    let parsed: Value = serde_json::from_str(&response_text(&r)).unwrap();
    assert!(parsed.is_object(), "{parsed}");
}

#[tokio::test]
async fn responses_function_call_and_follow_up() {
    let sim = sim().await;
    let first = valid_response(&sim, &resp_tool_call()).await;
    let call = function_call_item(&first);
    assert_valid("FunctionToolCall", &call);
    assert_eq!(call["name"], "get_weather", "{call}");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");

    // The follow-up carries the call and its output: the answer is text.
    let follow_up = json!({
        "model": "gpt-4o",
        "tools": [resp_tools()],
        "input": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": call["call_id"], "name": "get_weather",
             "arguments": call["arguments"]},
            {"type": "function_call_output", "call_id": call["call_id"],
             "output": "{\"temperature\": 21, \"unit\": \"celsius\"}"}
        ]
    });
    let second = valid_response(&sim, &follow_up).await;
    assert_eq!(second["status"], "completed", "{second}");
    assert_eq!(output_types(&second), ["message"], "{second}");
    assert!(!response_text(&second).is_empty(), "{second}");
}

#[tokio::test]
async fn responses_reasoning_model() {
    let sim = sim().await;
    let r = valid_response(&sim, &resp_reasoning()).await;
    let types = output_types(&r);
    assert!(types.contains(&"reasoning".to_owned()), "{r}");
    assert!(types.contains(&"message".to_owned()), "{r}");
    for item in r["output"].as_array().unwrap() {
        if item["type"] == "reasoning" {
            assert_valid("ReasoningItem", item);
        }
    }
    assert!(
        r["usage"]["output_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{r}"
    );
}

#[tokio::test]
async fn responses_instructions_metadata_item_list() {
    let sim = sim().await;
    let body = json!({
        "model": "gpt-4.1",
        "instructions": "You are a concise assistant.",
        "metadata": {"ticket": "T-42", "team": "support"},
        "temperature": 0.2,
        "input": [
            {"role": "developer", "content": "Answer in one sentence."},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "What is a lighthouse?"}]},
            {"role": "assistant", "content": "A tower with a light."},
            {"role": "user", "content": "And who keeps it?"}
        ]
    });
    let r = valid_response(&sim, &body).await;
    assert_eq!(r["instructions"], "You are a concise assistant.", "{r}");
    assert_eq!(
        r["metadata"],
        json!({"ticket": "T-42", "team": "support"}),
        "{r}"
    );
    assert_eq!(r["status"], "completed", "{r}");
}

// ---------------------------------------------------------------- responses, streamed

/// Validates a Responses stream through the harness (every event against its
/// schema and the union, `event:` = `type`, sequence numbers 0.., no `[DONE]`),
/// then checks the lifecycle: `response.created` first, one terminal event last
/// whose `response` validates as `Response`. Returns the events and the final
/// response.
async fn valid_response_stream(sim: &SimHandle, body: &Value) -> (Vec<Value>, Value) {
    let text = post_stream(sim, "/v1/responses", body).await;
    let events = assert_valid_responses_sse(&text);
    assert!(events.len() >= 3, "too few events:\n{text}");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types[0], "response.created", "{types:?}");
    for (event, ty) in events.iter().zip(&types) {
        // The harness already did this; repeated so a change there cannot hide it.
        assert_valid_response_event(event);
        if ty.starts_with("response.") && event.get("response").is_some() {
            assert_valid("Response", &event["response"]);
        }
    }
    let terminal = [
        "response.completed",
        "response.incomplete",
        "response.failed",
    ];
    let last = *types.last().unwrap();
    assert!(terminal.contains(&last), "last event is {last}: {types:?}");
    assert_eq!(
        types.iter().filter(|t| terminal.contains(t)).count(),
        1,
        "{types:?}"
    );
    let response = events.last().unwrap()["response"].clone();
    assert_valid("Response", &response);
    (events, response)
}

fn has_event(events: &[Value], ty: &str) -> bool {
    events.iter().any(|e| e["type"] == ty)
}

#[tokio::test]
async fn responses_stream_text() {
    let sim = sim().await;
    let (events, r) = valid_response_stream(&sim, &resp_text()).await;
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert_eq!(r["status"], "completed", "{r}");
    for ty in [
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ] {
        assert!(has_event(&events, ty), "no {ty}");
    }
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, response_text(&r));
}

#[tokio::test]
async fn responses_stream_cut_by_max_output_tokens() {
    let sim = sim().await;
    let (events, r) = valid_response_stream(&sim, &resp_cut()).await;
    assert_eq!(events.last().unwrap()["type"], "response.incomplete");
    assert_eq!(r["status"], "incomplete", "{r}");
    assert_eq!(
        r["incomplete_details"]["reason"], "max_output_tokens",
        "{r}"
    );
}

#[tokio::test]
async fn responses_stream_function_call() {
    let sim = sim().await;
    let (events, r) = valid_response_stream(&sim, &resp_tool_call()).await;
    assert_eq!(r["status"], "completed", "{r}");
    assert!(has_event(&events, "response.function_call_arguments.delta"));
    assert!(has_event(&events, "response.function_call_arguments.done"));
    let call = function_call_item(&r);
    let done = events
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(done["arguments"], call["arguments"], "{done}");
}

#[tokio::test]
async fn responses_stream_reasoning_model() {
    let sim = sim().await;
    let (events, r) = valid_response_stream(&sim, &resp_reasoning()).await;
    assert_eq!(r["status"], "completed", "{r}");
    assert!(output_types(&r).contains(&"reasoning".to_owned()), "{r}");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "response.output_item.added" && e["item"]["type"] == "reasoning"),
        "no output_item.added for the reasoning item"
    );
}

// ---------------------------------------------------------------- chat, plain

fn chat_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": weather_parameters(), "strict": true
    }}])
}

fn chat_text() -> Value {
    json!({"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Say hello to the conformance test."}
    ]})
}

fn chat_tool_call() -> Value {
    json!({"model": "gpt-4o", "tools": chat_tools(), "tool_choice": "auto",
           "messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
}

async fn valid_chat(sim: &SimHandle, body: &Value) -> Value {
    let c = post_ok(sim, "/v1/chat/completions", body).await;
    assert_valid("CreateChatCompletionResponse", &c);
    assert_eq!(c["object"], "chat.completion");
    c
}

#[tokio::test]
async fn chat_plain_text() {
    let sim = sim().await;
    let c = valid_chat(&sim, &chat_text()).await;
    assert_eq!(c["choices"][0]["finish_reason"], "stop", "{c}");
    assert!(c["choices"][0]["message"]["content"].is_string(), "{c}");
}

#[tokio::test]
async fn chat_cut_by_length() {
    let sim = sim().await;
    let mut body = chat_text();
    body["messages"][1]["content"] =
        json!("Write a long, detailed story about a lighthouse keeper, with many chapters.");
    body["max_completion_tokens"] = json!(5);
    let c = valid_chat(&sim, &body).await;
    assert_eq!(c["choices"][0]["finish_reason"], "length", "{c}");
    assert_eq!(c["usage"]["completion_tokens"], 5, "{c}");
}

#[tokio::test]
async fn chat_json_schema() {
    let sim = sim().await;
    let body = json!({"model": "gpt-4o-2024-08-06",
        "messages": [{"role": "user", "content": "Classify: the app crashes."}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "ticket", "strict": true, "schema": ticket_schema()}}});
    let c = valid_chat(&sim, &body).await;
    let content: Value =
        serde_json::from_str(c["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(
        ["low", "medium", "high"].contains(&content["priority"].as_str().unwrap()),
        "{content}"
    );
}

#[tokio::test]
async fn chat_tool_call_and_follow_up() {
    let sim = sim().await;
    let c = valid_chat(&sim, &chat_tool_call()).await;
    let choice = &c["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{c}");
    let call = choice["message"]["tool_calls"][0].clone();
    assert_eq!(call["type"], "function", "{c}");
    assert_eq!(call["function"]["name"], "get_weather", "{c}");

    let mut follow_up = chat_tool_call();
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(choice["message"].clone());
    messages.push(json!({"role": "tool", "tool_call_id": call["id"],
                         "content": "{\"temperature\": 21}"}));
    let answer = valid_chat(&sim, &follow_up).await;
    assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{answer}");
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "{answer}"
    );
}

#[tokio::test]
async fn chat_two_choices() {
    let sim = sim().await;
    let mut body = chat_text();
    body["n"] = json!(2);
    let c = valid_chat(&sim, &body).await;
    let choices = c["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{c}");
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
}

// ---------------------------------------------------------------- chat, streamed

#[tokio::test]
async fn chat_stream_without_usage() {
    let sim = sim().await;
    let text = post_stream(&sim, "/v1/chat/completions", &chat_text()).await;
    let chunks = assert_valid_chat_sse(&text);
    assert!(chunks.len() >= 2, "{text}");
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(
            chunk.get("usage").is_none_or(Value::is_null),
            "usage without include_usage: {chunk}"
        );
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1, "{chunk}");
    }
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let sim = sim().await;
    let mut body = chat_text();
    body["stream_options"] = json!({"include_usage": true});
    let text = post_stream(&sim, "/v1/chat/completions", &body).await;
    let chunks = assert_valid_chat_sse(&text);
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert!(
        last["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "{last}"
    );
    for chunk in rest {
        assert!(
            chunk["usage"].is_null(),
            "usage before the last chunk: {chunk}"
        );
    }
}

#[tokio::test]
async fn chat_stream_tool_call() {
    let sim = sim().await;
    let text = post_stream(&sim, "/v1/chat/completions", &chat_tool_call()).await;
    let chunks = assert_valid_chat_sse(&text);
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    let args: Value = serde_json::from_str(&arguments)
        .unwrap_or_else(|e| panic!("streamed arguments {arguments:?}: {e}"));
    assert!(args["city"].is_string(), "{args}");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

// ---------------------------------------------------------------- models

#[tokio::test]
async fn models_list_and_retrieve() {
    let sim = sim().await;
    let list = get_ok(&sim, "/v1/models").await;
    assert_valid("ListModelsResponse", &list);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"gpt-4o"), "{ids:?}");
    for model in list["data"].as_array().unwrap() {
        assert_valid("Model", model);
    }

    let model = get_ok(&sim, "/v1/models/gpt-4o").await;
    assert_valid("Model", &model);
    assert_eq!(model["id"], "gpt-4o");
}

// ---------------------------------------------------------------- embeddings

#[tokio::test]
async fn embeddings_float() {
    let sim = sim().await;
    let body = json!({"model": "text-embedding-3-small",
                      "input": ["first text", "second text"],
                      "encoding_format": "float"});
    let e = post_ok(&sim, "/v1/embeddings", &body).await;
    assert_valid("CreateEmbeddingResponse", &e);
    let vectors = assert_valid_embedding_response(&e);
    assert_eq!(vectors.len(), 2, "{}", e["data"].as_array().unwrap().len());
    assert!(vectors.iter().all(|v| v.len() == 1536));
    assert!(e["data"][0]["embedding"].is_array());
}

#[tokio::test]
async fn embeddings_base64() {
    let sim = sim().await;
    let body = json!({"model": "text-embedding-3-small",
                      "input": ["first text", "second text"],
                      "encoding_format": "base64"});
    let e = post_ok(&sim, "/v1/embeddings", &body).await;
    assert!(e["data"][0]["embedding"].is_string(), "not base64");
    let vectors = assert_valid_embedding_response(&e);
    assert_eq!(vectors.len(), 2);
    assert!(vectors.iter().all(|v| v.len() == 1536));
}

// ---------------------------------------------------------------- moderations

#[tokio::test]
async fn moderations() {
    let sim = sim().await;
    let single = post_ok(
        &sim,
        "/v1/moderations",
        &json!({"input": "What a lovely day."}),
    )
    .await;
    assert_valid("CreateModerationResponse", &single);
    assert_eq!(single["results"].as_array().unwrap().len(), 1);
    assert_eq!(single["results"][0]["flagged"], false, "{single}");

    let list = post_ok(
        &sim,
        "/v1/moderations",
        &json!({"model": "omni-moderation-latest",
                "input": ["Hello there.", "Have a nice day."]}),
    )
    .await;
    assert_valid("CreateModerationResponse", &list);
    assert_eq!(list["results"].as_array().unwrap().len(), 2);

    let flagged = post_ok(
        &sim,
        "/v1/moderations",
        &json!({"input": "I will kill you, you idiot."}),
    )
    .await;
    assert_valid("CreateModerationResponse", &flagged);
    let result = &flagged["results"][0];
    assert_eq!(result["flagged"], true, "{flagged}");
    assert_eq!(result["categories"]["violence"], true, "{flagged}");
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn error_missing_key() {
    let sim = sim().await;
    let a = send(
        &sim,
        Method::POST,
        "/v1/responses",
        None,
        Some(resp_text().to_string()),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, None);
}

#[tokio::test]
async fn error_wrong_key() {
    let sim = spawn(SimConfig {
        api_keys: Some(vec!["sk-the-only-key".to_owned()]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let a = send(
        &sim,
        Method::POST,
        "/v1/chat/completions",
        Some("sk-some-other-key"),
        Some(chat_text().to_string()),
        &[],
    )
    .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, Some("invalid_api_key"));
}

#[tokio::test]
async fn error_model_not_found() {
    let sim = sim().await;
    for (path, body) in [
        ("/v1/responses", json!({"model": "gpt-nope", "input": "hi"})),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-nope", "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        let a = send(
            &sim,
            Method::POST,
            path,
            Some(KEY),
            Some(body.to_string()),
            &[],
        )
        .await;
        assert_error(&a, StatusCode::NOT_FOUND, Some("model_not_found"));
    }
    let a = send(
        &sim,
        Method::GET,
        "/v1/models/gpt-nope",
        Some(KEY),
        None,
        &[],
    )
    .await;
    assert_error(&a, StatusCode::NOT_FOUND, Some("model_not_found"));
}

#[tokio::test]
async fn error_invalid_url() {
    let sim = sim().await;
    let a = send(&sim, Method::GET, "/v1/nowhere", Some(KEY), None, &[]).await;
    let error = assert_error(&a, StatusCode::NOT_FOUND, None);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Invalid URL (GET /v1/nowhere)"),
        "{error}"
    );
}

#[tokio::test]
async fn error_unknown_parameter() {
    let sim = sim().await;
    let mut body = resp_text();
    body["frobnicate"] = json!(true);
    let a = send(
        &sim,
        Method::POST,
        "/v1/responses",
        Some(KEY),
        Some(body.to_string()),
        &[],
    )
    .await;
    let error = assert_error(&a, StatusCode::BAD_REQUEST, Some("unknown_parameter"));
    assert_eq!(error["param"], "frobnicate", "{error}");
}

#[tokio::test]
async fn error_response_format_on_responses() {
    let sim = sim().await;
    let mut body = resp_text();
    body["response_format"] = json!({"type": "json_object"});
    let a = send(
        &sim,
        Method::POST,
        "/v1/responses",
        Some(KEY),
        Some(body.to_string()),
        &[],
    )
    .await;
    let error = assert_error(&a, StatusCode::BAD_REQUEST, None);
    assert!(
        error["message"].as_str().unwrap().contains("text.format"),
        "{error}"
    );
}

#[tokio::test]
async fn error_malformed_json() {
    let sim = sim().await;
    for path in ["/v1/responses", "/v1/chat/completions", "/v1/embeddings"] {
        let a = send(
            &sim,
            Method::POST,
            path,
            Some(KEY),
            Some("{\"model\": \"gpt-4o\", ".to_owned()),
            &[],
        )
        .await;
        assert_error(&a, StatusCode::BAD_REQUEST, None);
    }
}

#[tokio::test]
async fn error_faults_by_header() {
    let sim = sim().await;
    for (status, code) in [
        (429, Some("rate_limit_exceeded")),
        (500, None),
        (503, Some("server_is_overloaded")),
    ] {
        let status_text = status.to_string();
        let a = send(
            &sim,
            Method::POST,
            "/v1/responses",
            Some(KEY),
            Some(resp_text().to_string()),
            &[("x-sim-status", &status_text)],
        )
        .await;
        assert_error(&a, StatusCode::from_u16(status).unwrap(), code);
    }
    let a = send(
        &sim,
        Method::POST,
        "/v1/chat/completions",
        Some(KEY),
        Some(chat_text().to_string()),
        &[
            ("x-sim-status", "429"),
            ("x-sim-error-code", "insufficient_quota"),
        ],
    )
    .await;
    assert_error(
        &a,
        StatusCode::TOO_MANY_REQUESTS,
        Some("insufficient_quota"),
    );
}

#[tokio::test]
async fn error_faults_by_control_api() {
    let sim = sim().await;
    for status in [429_u16, 500, 503] {
        let queued = Client::new()
            .post(format!("{}/_sim/faults", sim.root_url()))
            .header("content-type", "application/json")
            .body(json!({"count": 1, "status": status}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(queued.status(), StatusCode::OK);
        let a = send(
            &sim,
            Method::POST,
            "/v1/embeddings",
            Some(KEY),
            Some(json!({"model": "text-embedding-3-small", "input": "x"}).to_string()),
            &[],
        )
        .await;
        assert_error(&a, StatusCode::from_u16(status).unwrap(), None);
    }
}

// ---------------------------------------------------------------- negative controls

/// The checks above can fail: live bodies, each broken in one field, are
/// rejected by the same schemas that accept them intact.
#[tokio::test]
async fn broken_live_bodies_are_rejected() {
    let sim = sim().await;
    let mut r = valid_response(&sim, &resp_text()).await;
    r["status"] = json!("finished");
    openapi::assert_invalid("Response", &r);

    let mut c = valid_chat(&sim, &chat_text()).await;
    c["choices"][0]["finish_reason"] = json!("done");
    openapi::assert_invalid("CreateChatCompletionResponse", &c);

    let text = post_stream(&sim, "/v1/responses", &resp_text()).await;
    let mut event = assert_valid_responses_sse(&text)[1].clone();
    event["sequence_number"] = json!("one");
    openapi::assert_invalid("ResponseStreamEvent", &event);

    let a = send(&sim, Method::GET, "/v1/nowhere", Some(KEY), None, &[]).await;
    let mut e = a.json();
    e["error"]["message"] = json!(42);
    openapi::assert_invalid("ErrorResponse", &e);
}
