#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Proves the OpenAPI conformance harness (`support/openapi.rs`) works:
//! hand-written bodies of every shape the simulator emits validate against
//! the matching schema of OpenAI's spec, and deliberately broken ones are
//! rejected. The schema name for each shape is listed in the harness's
//! module docs.

#[path = "support/openapi.rs"]
mod openapi;

use std::time::Instant;

use openapi::{assert_invalid, assert_valid, assert_valid_response_event, Spec};
use serde_json::{json, Value};

// ---------------------------------------------------------------- samples

fn usage() -> Value {
    json!({
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15
    })
}

fn message_item(status: &str, content: Value) -> Value {
    json!({"type": "message", "id": "msg_abc", "status": status, "role": "assistant", "content": content})
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// The minimal non-streamed Response body of OPENAI-WIRE.md section a,
/// without its `"user": null` (the spec's `user` is a non-nullable string).
fn response_body() -> Value {
    json!({
        "id": "resp_abc", "object": "response", "created_at": 1_741_476_542,
        "status": "completed", "completed_at": 1_741_476_543,
        "error": null, "incomplete_details": null, "instructions": null,
        "max_output_tokens": null, "model": "gpt-4o-2024-08-06",
        "output": [message_item("completed", json!([output_text("Hello!")]))],
        "parallel_tool_calls": true, "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": true, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": usage(), "metadata": {}
    })
}

/// The same response as seen in `response.created`: in progress, no output, no usage.
fn response_in_progress() -> Value {
    let mut r = response_body();
    r["status"] = json!("in_progress");
    r["completed_at"] = Value::Null;
    r["output"] = json!([]);
    // The spec's `usage` is not nullable: omit it rather than send null.
    r.as_object_mut().unwrap().remove("usage");
    r
}

fn function_call_item(status: &str, arguments: &str) -> Value {
    json!({
        "type": "function_call", "id": "fc_abc", "call_id": "call_abc",
        "name": "get_weather", "arguments": arguments, "status": status
    })
}

fn function_tool() -> Value {
    json!({
        "type": "function", "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false},
        "strict": true
    })
}

/// Every event of a streamed text answer, in order.
fn text_stream_events() -> Vec<Value> {
    let mut completed = response_body();
    completed["output"] = json!([message_item("completed", json!([output_text("Hello!")]))]);
    vec![
        json!({"type": "response.created", "sequence_number": 0, "response": response_in_progress()}),
        json!({"type": "response.in_progress", "sequence_number": 1, "response": response_in_progress()}),
        json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
               "item": message_item("in_progress", json!([]))}),
        json!({"type": "response.content_part.added", "sequence_number": 3, "item_id": "msg_abc",
               "output_index": 0, "content_index": 0, "part": output_text("")}),
        json!({"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_abc",
               "output_index": 0, "content_index": 0, "delta": "Hel", "logprobs": []}),
        json!({"type": "response.output_text.delta", "sequence_number": 5, "item_id": "msg_abc",
               "output_index": 0, "content_index": 0, "delta": "lo!", "logprobs": []}),
        json!({"type": "response.output_text.done", "sequence_number": 6, "item_id": "msg_abc",
               "output_index": 0, "content_index": 0, "text": "Hello!", "logprobs": []}),
        json!({"type": "response.content_part.done", "sequence_number": 7, "item_id": "msg_abc",
               "output_index": 0, "content_index": 0, "part": output_text("Hello!")}),
        json!({"type": "response.output_item.done", "sequence_number": 8, "output_index": 0,
               "item": message_item("completed", json!([output_text("Hello!")]))}),
        json!({"type": "response.completed", "sequence_number": 9, "response": completed}),
    ]
}

/// Every event of a streamed function-call answer, in order.
fn function_call_stream_events() -> Vec<Value> {
    let args = r#"{"city":"Paris"}"#;
    let mut start = response_in_progress();
    start["tools"] = json!([function_tool()]);
    let mut done = response_body();
    done["tools"] = json!([function_tool()]);
    done["output"] = json!([function_call_item("completed", args)]);
    vec![
        json!({"type": "response.created", "sequence_number": 0, "response": start.clone()}),
        json!({"type": "response.in_progress", "sequence_number": 1, "response": start}),
        json!({"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
               "item": function_call_item("in_progress", "")}),
        json!({"type": "response.function_call_arguments.delta", "sequence_number": 3,
               "item_id": "fc_abc", "output_index": 0, "delta": "{\"city\":"}),
        json!({"type": "response.function_call_arguments.delta", "sequence_number": 4,
               "item_id": "fc_abc", "output_index": 0, "delta": "\"Paris\"}"}),
        json!({"type": "response.function_call_arguments.done", "sequence_number": 5,
               "item_id": "fc_abc", "name": "get_weather", "output_index": 0, "arguments": args}),
        json!({"type": "response.output_item.done", "sequence_number": 6, "output_index": 0,
               "item": function_call_item("completed", args)}),
        json!({"type": "response.completed", "sequence_number": 7, "response": done}),
    ]
}

/// The chat completion body of OPENAI-WIRE.md section c.
fn chat_completion() -> Value {
    json!({
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 1_741_569_952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0,
                     "message": {"role": "assistant", "content": "Hi", "refusal": null, "annotations": []},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0,
                                                "rejected_prediction_tokens": 0}},
        "service_tier": "default", "system_fingerprint": "fp_abc"
    })
}

fn chat_tool_call_completion() -> Value {
    let mut c = chat_completion();
    c["choices"] = json!([{"index": 0, "logprobs": null, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": null, "refusal": null, "annotations": [],
                    "tool_calls": [{"id": "call_abc", "type": "function",
                                    "function": {"name": "get_weather",
                                                 "arguments": "{\"city\":\"Paris\"}"}}]}}]);
    c
}

fn chat_chunk(delta: Value, finish_reason: Value) -> Value {
    json!({
        "id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1_741_569_952,
        "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_abc", "service_tier": "default",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]
    })
}

/// A chat stream with `stream_options.include_usage`: role chunk, content,
/// finish chunk (each with `usage: null`), then the usage-only chunk.
fn chat_stream_chunks() -> Vec<Value> {
    let mut chunks = vec![
        chat_chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ),
        chat_chunk(json!({"content": "Hi"}), Value::Null),
        chat_chunk(json!({}), json!("stop")),
    ];
    for c in &mut chunks {
        c["usage"] = Value::Null;
    }
    let mut usage_chunk = chat_chunk(json!({}), Value::Null);
    usage_chunk["choices"] = json!([]);
    usage_chunk["usage"] = chat_completion()["usage"].clone();
    chunks.push(usage_chunk);
    chunks
}

fn chat_tool_call_chunks() -> Vec<Value> {
    vec![
        chat_chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
            "id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
        chat_chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            Value::Null,
        ),
        chat_chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
            Value::Null,
        ),
        chat_chunk(json!({}), json!("tool_calls")),
    ]
}

fn error_body() -> Value {
    json!({"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.",
                     "type": "invalid_request_error", "param": null, "code": "model_not_found"}})
}

fn model() -> Value {
    json!({"id": "gpt-4o-2024-08-06", "object": "model", "created": 1_722_902_400, "owned_by": "system"})
}

fn model_list() -> Value {
    json!({"object": "list", "data": [model(),
        {"id": "text-embedding-3-small", "object": "model", "created": 1_705_948_997, "owned_by": "system"}]})
}

fn embedding_response(embedding: Value) -> Value {
    json!({"object": "list",
           "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
           "model": "text-embedding-3-small",
           "usage": {"prompt_tokens": 5, "total_tokens": 5}})
}

const MODERATION_CATEGORIES: [&str; 13] = [
    "hate",
    "hate/threatening",
    "harassment",
    "harassment/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

fn moderation_response() -> Value {
    let mut categories = serde_json::Map::new();
    let mut scores = serde_json::Map::new();
    let mut applied = serde_json::Map::new();
    for c in MODERATION_CATEGORIES {
        categories.insert(c.to_owned(), json!(c == "violence"));
        scores.insert(
            c.to_owned(),
            json!(if c == "violence" { 0.91 } else { 0.0001 }),
        );
        applied.insert(c.to_owned(), json!(["text"]));
    }
    json!({"id": "modr-abc", "model": "omni-moderation-latest",
           "results": [{"flagged": true, "categories": categories,
                        "category_scores": scores, "category_applied_input_types": applied}]})
}

// ---------------------------------------------------------------- valid samples

#[test]
fn responses_bodies_validate() {
    assert_valid("Response", &response_body());
    assert_valid("Response", &response_in_progress());

    let mut incomplete = response_body();
    incomplete["status"] = json!("incomplete");
    incomplete["incomplete_details"] = json!({"reason": "max_output_tokens"});
    incomplete["max_output_tokens"] = json!(16);
    incomplete["output"] = json!([message_item("incomplete", json!([output_text("Hel")]))]);
    assert_valid("Response", &incomplete);

    let mut structured = response_body();
    structured["text"] = json!({"format": {"type": "json_schema", "name": "ticket", "strict": true,
        "schema": {"type": "object", "properties": {"priority": {"enum": ["low", "high"]}},
                   "required": ["priority"], "additionalProperties": false}}});
    assert_valid("Response", &structured);

    let mut call = response_body();
    call["tools"] = json!([function_tool()]);
    call["output"] = json!([function_call_item("completed", r#"{"city":"Paris"}"#)]);
    assert_valid("Response", &call);
}

#[test]
fn responses_text_stream_events_validate() {
    let names: Vec<&str> = text_stream_events()
        .iter()
        .map(assert_valid_response_event)
        .collect();
    assert_eq!(
        names,
        [
            "ResponseCreatedEvent",
            "ResponseInProgressEvent",
            "ResponseOutputItemAddedEvent",
            "ResponseContentPartAddedEvent",
            "ResponseTextDeltaEvent",
            "ResponseTextDeltaEvent",
            "ResponseTextDoneEvent",
            "ResponseContentPartDoneEvent",
            "ResponseOutputItemDoneEvent",
            "ResponseCompletedEvent",
        ]
    );
}

#[test]
fn responses_function_call_stream_events_validate() {
    let names: Vec<&str> = function_call_stream_events()
        .iter()
        .map(assert_valid_response_event)
        .collect();
    assert_eq!(
        names,
        [
            "ResponseCreatedEvent",
            "ResponseInProgressEvent",
            "ResponseOutputItemAddedEvent",
            "ResponseFunctionCallArgumentsDeltaEvent",
            "ResponseFunctionCallArgumentsDeltaEvent",
            "ResponseFunctionCallArgumentsDoneEvent",
            "ResponseOutputItemDoneEvent",
            "ResponseCompletedEvent",
        ]
    );
}

#[test]
fn responses_terminal_and_error_events_validate() {
    let mut incomplete = response_body();
    incomplete["status"] = json!("incomplete");
    incomplete["incomplete_details"] = json!({"reason": "max_output_tokens"});
    assert_eq!(
        assert_valid_response_event(
            &json!({"type": "response.incomplete", "sequence_number": 9, "response": incomplete})
        ),
        "ResponseIncompleteEvent"
    );
    let mut failed = response_body();
    failed["status"] = json!("failed");
    failed["output"] = json!([]);
    failed.as_object_mut().unwrap().remove("usage");
    failed["error"] = json!({"code": "server_error", "message": "The server had an error."});
    assert_eq!(
        assert_valid_response_event(
            &json!({"type": "response.failed", "sequence_number": 3, "response": failed})
        ),
        "ResponseFailedEvent"
    );
    assert_eq!(
        assert_valid_response_event(&json!({"type": "error", "code": "server_error",
            "message": "The server had an error.", "param": null, "sequence_number": 4})),
        "ResponseErrorEvent"
    );
}

#[test]
fn responses_sse_body_checks_framing_and_events() {
    let body: String = text_stream_events()
        .iter()
        .map(|e| {
            format!(
                "event: {}\r\ndata: {e}\r\n\r\n",
                e["type"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(openapi::assert_valid_responses_sse(&body).len(), 10);
}

#[test]
fn chat_bodies_validate() {
    assert_valid("CreateChatCompletionResponse", &chat_completion());
    assert_valid("CreateChatCompletionResponse", &chat_tool_call_completion());
    let mut structured = chat_completion();
    structured["choices"][0]["message"]["content"] = json!(r#"{"priority":"low"}"#);
    assert_valid("CreateChatCompletionResponse", &structured);

    for chunk in chat_stream_chunks().iter().chain(&chat_tool_call_chunks()) {
        assert_valid("CreateChatCompletionStreamResponse", chunk);
    }
    let body: String = chat_stream_chunks()
        .iter()
        .map(|c| format!("data: {c}\n\n"))
        .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
        .collect();
    assert_eq!(openapi::assert_valid_chat_sse(&body).len(), 4);
}

#[test]
fn models_embeddings_moderations_errors_validate() {
    assert_valid("Model", &model());
    assert_valid("ListModelsResponse", &model_list());
    assert_valid(
        "CreateEmbeddingResponse",
        &embedding_response(json!([0.0123, -0.5, 0.25])),
    );
    // encoding_format: base64 puts a string where the float array goes, which
    // the spec's schema does not allow; the helper decodes it first.
    assert_invalid(
        "CreateEmbeddingResponse",
        &embedding_response(json!("AAAAPwAAAL8AAIA+")),
    );
    assert_eq!(
        openapi::assert_valid_embedding_response(&embedding_response(json!("AAAAPwAAAL8AAIA+"))),
        [vec![0.5, -0.5, 0.25]]
    );
    assert_eq!(
        openapi::assert_valid_embedding_response(&embedding_response(json!([0.5, 0.25]))),
        [vec![0.5, 0.25]]
    );
    assert_valid("CreateModerationResponse", &moderation_response());
    assert_valid("ErrorResponse", &error_body());
    assert_valid(
        "ErrorResponse",
        &json!({"error": {"message": "Incorrect API key provided: sk-x.",
        "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
    );
}

// ---------------------------------------------------------------- broken samples

/// Removes the value at `pointer` (parent must be an object) and returns the result.
fn without(mut v: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    let removed = v
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|o| o.remove(&key));
    assert!(removed.is_some(), "sample has nothing at {pointer}");
    v
}

fn with(mut v: Value, pointer: &str, value: Value) -> Value {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("sample has nothing at {pointer}")) = value;
    v
}

fn assert_rejected_mentioning(schema: &str, instance: &Value, needle: &str) {
    let errors = assert_invalid(schema, instance);
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "{schema}: expected an error mentioning {needle:?}, got:\n{}",
        errors.join("\n")
    );
}

#[test]
fn broken_responses_bodies_are_rejected() {
    assert_rejected_mentioning(
        "Response",
        &without(response_body(), "/usage/input_tokens_details"),
        "input_tokens_details",
    );
    assert_rejected_mentioning(
        "Response",
        &without(response_body(), "/usage/input_tokens_details/cached_tokens"),
        "cached_tokens",
    );
    assert_rejected_mentioning(
        "Response",
        &without(response_body(), "/tool_choice"),
        "tool_choice",
    );
    assert_rejected_mentioning(
        "Response",
        &without(response_body(), "/output/0/content/0/logprobs"),
        "logprobs",
    );
    assert_rejected_mentioning(
        "Response",
        &with(response_body(), "/usage/output_tokens", json!("3")),
        "/usage/output_tokens",
    );
    assert_rejected_mentioning(
        "Response",
        &with(response_body(), "/status", json!("done")),
        "/status",
    );
    assert_rejected_mentioning(
        "Response",
        &with(
            response_body(),
            "/incomplete_details",
            json!({"reason": "too_long"}),
        ),
        "/incomplete_details",
    );
}

#[test]
fn broken_stream_events_are_rejected() {
    let delta = &text_stream_events()[4];
    assert_rejected_mentioning(
        "ResponseTextDeltaEvent",
        &without(delta.clone(), "/logprobs"),
        "logprobs",
    );
    assert_rejected_mentioning(
        "ResponseTextDeltaEvent",
        &without(delta.clone(), "/sequence_number"),
        "sequence_number",
    );
    assert_rejected_mentioning(
        "ResponseStreamEvent",
        &without(delta.clone(), "/logprobs"),
        "logprobs",
    );
    assert_invalid(
        "ResponseStreamEvent",
        &with(delta.clone(), "/type", json!("response.output_text.deltas")),
    );
    let args_done = &function_call_stream_events()[5];
    assert_rejected_mentioning(
        "ResponseFunctionCallArgumentsDoneEvent",
        &without(args_done.clone(), "/name"),
        "name",
    );
    let created = &text_stream_events()[0];
    assert_invalid(
        "ResponseCreatedEvent",
        &without(created.clone(), "/response/tools"),
    );
    assert_rejected_mentioning(
        "CreateChatCompletionStreamResponse",
        &without(chat_stream_chunks()[1].clone(), "/choices/0/finish_reason"),
        "finish_reason",
    );
}

#[test]
fn broken_other_bodies_are_rejected() {
    assert_rejected_mentioning(
        "CreateChatCompletionResponse",
        &without(chat_completion(), "/choices/0/message/refusal"),
        "refusal",
    );
    assert_rejected_mentioning(
        "CreateChatCompletionResponse",
        &with(chat_completion(), "/created", json!(1.5)),
        "/created",
    );
    assert_rejected_mentioning(
        "CreateChatCompletionResponse",
        &without(chat_completion(), "/usage/total_tokens"),
        "total_tokens",
    );
    assert_rejected_mentioning(
        "ErrorResponse",
        &without(error_body(), "/error/param"),
        "param",
    );
    assert_rejected_mentioning(
        "ErrorResponse",
        &without(error_body(), "/error/code"),
        "code",
    );
    assert_rejected_mentioning(
        "ListModelsResponse",
        &without(model_list(), "/data/0/owned_by"),
        "owned_by",
    );
    assert_rejected_mentioning(
        "Model",
        &with(model(), "/object", json!("models")),
        "/object",
    );
    assert_rejected_mentioning(
        "CreateEmbeddingResponse",
        &without(embedding_response(json!([0.5])), "/usage/prompt_tokens"),
        "prompt_tokens",
    );
    assert_rejected_mentioning(
        "CreateModerationResponse",
        &without(
            moderation_response(),
            "/results/0/categories/illicit~1violent",
        ),
        "illicit/violent",
    );
    assert_rejected_mentioning(
        "CreateModerationResponse",
        &with(
            moderation_response(),
            "/results/0/category_applied_input_types/hate",
            json!(["audio"]),
        ),
        "/hate",
    );
}

#[test]
#[should_panic(expected = "does not validate against #/components/schemas/Response")]
fn assert_valid_panics_with_a_report() {
    assert_valid(
        "Response",
        &without(response_body(), "/usage/input_tokens_details"),
    );
}

#[test]
fn unknown_event_types_have_no_schema() {
    let spec = Spec::load();
    assert_eq!(
        spec.response_event_schema("response.output_text.delta"),
        Some("ResponseTextDeltaEvent")
    );
    assert_eq!(
        spec.response_event_schema("error"),
        Some("ResponseErrorEvent")
    );
    assert_eq!(spec.response_event_schema("response.nope"), None);
}

/// Loading the spec and compiling every validator the simulator needs must
/// stay cheap in debug builds (measured at ~0.2 s load, ~10 ms per large schema).
#[test]
fn load_and_compile_time_is_reasonable() {
    let started = Instant::now();
    let spec = Spec::load();
    for name in [
        "Response",
        "ResponseStreamEvent",
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
        "Model",
        "ListModelsResponse",
        "CreateEmbeddingResponse",
        "CreateModerationResponse",
        "ErrorResponse",
    ] {
        spec.validator(name);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "spec load {:?}; load + compile of 9 schemas {elapsed:?}",
        spec.load_time
    );
    assert!(
        elapsed.as_secs() < 30,
        "loading and compiling the spec took {elapsed:?}"
    );
}
