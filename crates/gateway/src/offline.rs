//! Offline answers (the end of stage 7, dispatch, when every target failed): a
//! project's configured text returned as a valid OpenAI object for the endpoint — a
//! `chat.completion` or a `response`, or for `stream: true` their event streams ending
//! as OpenAI's do — with zero usage, marked `x-tollgate-served-by: offline` and
//! `x-tollgate-offline: true`. Embeddings and moderations have no offline answer.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;
use serde_json::{json, Value};

use crate::fallback_config::OFFLINE;
use crate::preflight::{Endpoint, Preflight};

/// The offline answer for `endpoint`, if it has one: `template` with `{model}`
/// replaced by the model the caller asked for. `request_id` makes the object's id.
pub fn answer(
    endpoint: Endpoint,
    preflight: &Preflight,
    template: &str,
    request_id: &str,
    now_s: i64,
) -> Option<Response> {
    let asked = preflight.model_requested().unwrap_or("");
    let model = preflight.model.as_deref().unwrap_or(asked);
    let text = template.replace("{model}", asked);
    let suffix = request_id.trim_start_matches("req_");
    let (content_type, body) = match (endpoint, preflight.stream) {
        (Endpoint::ChatCompletions, false) => (
            "application/json",
            chat(&format!("chatcmpl-offline{suffix}"), model, &text, now_s).to_string(),
        ),
        (Endpoint::ChatCompletions, true) => (
            "text/event-stream; charset=utf-8",
            chat_stream(
                &format!("chatcmpl-offline{suffix}"),
                model,
                &text,
                now_s,
                !preflight.strip_stream_usage,
            ),
        ),
        (Endpoint::Responses, false) => (
            "application/json",
            response(&format!("resp_offline{suffix}"), model, &text, now_s, true).to_string(),
        ),
        (Endpoint::Responses, true) => (
            "text/event-stream; charset=utf-8",
            response_stream(&format!("resp_offline{suffix}"), model, &text, now_s),
        ),
        _ => return None,
    };
    let mut res = (StatusCode::OK, Body::from(body)).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in &preflight.headers {
        headers.insert(name.clone(), value.clone());
    }
    headers.insert(
        HeaderName::from_static("x-tollgate-served-by"),
        HeaderValue::from_static(OFFLINE),
    );
    headers.insert(
        HeaderName::from_static("x-tollgate-offline"),
        HeaderValue::from_static("true"),
    );
    Some(res)
}

fn chat_usage() -> Value {
    json!({
        "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0
        }
    })
}

fn chat(id: &str, model: &str, text: &str, now_s: i64) -> Value {
    json!({
        "id": id, "object": "chat.completion", "created": now_s, "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []},
            "logprobs": null, "finish_reason": "stop"
        }],
        "usage": chat_usage(),
        "service_tier": null, "system_fingerprint": null
    })
}

/// Data-only SSE: the role, the text, the finish, the usage chunk when the caller
/// asked for it, then `[DONE]`.
fn chat_stream(id: &str, model: &str, text: &str, now_s: i64, with_usage: bool) -> String {
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": now_s, "model": model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut events = vec![
        chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ),
        chunk(json!({"content": text}), Value::Null),
        chunk(json!({}), json!("stop")),
    ];
    if with_usage {
        events.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": now_s, "model": model,
            "system_fingerprint": null, "choices": [], "usage": chat_usage()
        }));
    }
    let mut out = String::new();
    for e in events {
        out.push_str("data: ");
        out.push_str(&e.to_string());
        out.push_str("\n\n");
    }
    out.push_str("data: [DONE]\n\n");
    out
}

fn message(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "completed" {
        json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
    } else {
        json!([])
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

/// The `response` object, completed (with output and usage) or as `response.created`
/// shows it (in progress, empty).
fn response(id: &str, model: &str, text: &str, now_s: i64, completed: bool) -> Value {
    let msg_id = format!("msg_{}", id.trim_start_matches("resp_"));
    json!({
        "id": id, "object": "response", "created_at": now_s,
        "status": if completed { "completed" } else { "in_progress" },
        "completed_at": if completed { json!(now_s) } else { Value::Null },
        "background": false, "error": null, "incomplete_details": null, "instructions": null,
        "max_output_tokens": null, "model": model,
        "output": if completed { json!([message(&msg_id, text, "completed")]) } else { json!([]) },
        "parallel_tool_calls": true, "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null}, "service_tier": "default", "store": false,
        "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
        "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": if completed {
            json!({
                "input_tokens": 0, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0
            })
        } else {
            Value::Null
        },
        "user": null, "metadata": {}
    })
}

/// The Responses event sequence of a plain text answer, `sequence_number` from 0,
/// ending with `response.completed` (no `[DONE]`).
fn response_stream(id: &str, model: &str, text: &str, now_s: i64) -> String {
    let msg_id = format!("msg_{}", id.trim_start_matches("resp_"));
    let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    let empty_part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
    let start = response(id, model, text, now_s, false);
    let at = |extra: Value| {
        let mut v = json!({"item_id": msg_id, "output_index": 0, "content_index": 0});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    };
    let events: Vec<(&str, Value)> = vec![
        ("response.created", json!({"response": start.clone()})),
        ("response.in_progress", json!({"response": start})),
        (
            "response.output_item.added",
            json!({"output_index": 0, "item": message(&msg_id, "", "in_progress")}),
        ),
        (
            "response.content_part.added",
            at(json!({"part": empty_part})),
        ),
        (
            "response.output_text.delta",
            at(json!({"delta": text, "logprobs": []})),
        ),
        (
            "response.output_text.done",
            at(json!({"text": text, "logprobs": []})),
        ),
        ("response.content_part.done", at(json!({"part": part}))),
        (
            "response.output_item.done",
            json!({"output_index": 0, "item": message(&msg_id, text, "completed")}),
        ),
        (
            "response.completed",
            json!({"response": response(id, model, text, now_s, true)}),
        ),
    ];
    let mut out = String::new();
    for (seq, (kind, mut data)) in events.into_iter().enumerate() {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        out.push_str("event: ");
        out.push_str(kind);
        out.push_str("\ndata: ");
        out.push_str(&data.to_string());
        out.push_str("\n\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(sse: &str) -> Vec<Value> {
        sse.split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn a_chat_stream_has_role_text_finish_and_done_and_usage_only_when_asked() {
        let s = chat_stream("chatcmpl-x", "gpt-4o", "Sorry", 1, false);
        assert!(s.ends_with("data: [DONE]\n\n"));
        let ev = events(&s);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[1]["choices"][0]["delta"]["content"], "Sorry");
        assert_eq!(ev[2]["choices"][0]["finish_reason"], "stop");
        assert!(ev[0].get("usage").is_none());
        let ev = events(&chat_stream("chatcmpl-x", "gpt-4o", "Sorry", 1, true));
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[3]["usage"]["total_tokens"], 0);
        assert_eq!(ev[3]["choices"], json!([]));
    }

    #[test]
    fn a_responses_stream_counts_its_events_and_ends_completed() {
        let s = response_stream("resp_x", "gpt-4o", "Sorry", 1);
        let ev = events(&s);
        assert_eq!(ev.len(), 9);
        for (i, e) in ev.iter().enumerate() {
            assert_eq!(e["sequence_number"], i);
        }
        assert_eq!(ev[0]["type"], "response.created");
        assert_eq!(ev[0]["response"]["usage"], Value::Null);
        let last = &ev[8];
        assert_eq!(last["type"], "response.completed");
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "Sorry");
        assert_eq!(last["response"]["usage"]["total_tokens"], 0);
        assert!(!s.contains("[DONE]"));
    }
}
