//! `POST /v1/chat/completions`: validation, the answer of each choice (text,
//! structured JSON or tool calls), usage, the completion and its stream chunks.
//!
//! `n > 1` is supported: each choice is answered with its own seed, and in a stream
//! the chunks of choice 0 come first, then those of choice 1, and so on (the live
//! API interleaves them; clients key on `index` either way).

use serde_json::{Map, Value};
use tollgate_wire::chat::{
    ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatContent, ChatMessage, ChatTool,
    Choice, ChunkChoice, ChunkDelta, CompletionTokensDetails, CompletionUsage, FunctionCall,
    FunctionCallDelta, PromptTokensDetails, ResponseFormat, ResponseMessage, ToolCall,
    ToolCallDelta,
};

use super::conversation::Conversation;
use super::rng::{derive, hash_str};
use super::tokens::Encoding;
use super::{reasoning, schema, text, tools, validate, ChatPlan};
use crate::error::ApiError;
use crate::ids::new_id;

/// `CreateChatCompletionRequest` fields the wire type keeps in `extra`: all accepted
/// and ignored, so only truly unknown names get `unknown_parameter`.
const ACCEPTED_EXTRA: &[&str] = &[
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "metadata",
    "modalities",
    "moderation",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "reasoning_effort",
    "safety_identifier",
    "seed",
    "service_tier",
    "store",
    "top_logprobs",
    "verbosity",
    "web_search_options",
];

/// Roles a chat message may have.
const ROLES: &[&str] = &[
    "system",
    "assistant",
    "user",
    "function",
    "tool",
    "developer",
];

/// One choice's answer, already cut to the token limit.
#[derive(Debug, Clone)]
struct Answer {
    content: Option<String>,
    call: Option<ToolCall>,
    /// Visible output tokens.
    tokens: usize,
    /// Hidden reasoning tokens spent before the visible output.
    reasoning: usize,
    finish_reason: &'static str,
}

/// Validates `req` and plans the answer. See [`super::plan_chat`].
pub fn plan(req: &ChatCompletionRequest, now: i64) -> Result<ChatPlan, ApiError> {
    validate_request(req)?;
    let encoding = Encoding::for_model(&req.model);
    let convo = read_conversation(req, encoding);
    let seed = hash_str(&convo.transcript);
    let limit = req
        .max_completion_tokens
        .or(req.max_tokens)
        .map(|l| l as usize);
    let n = req.n.unwrap_or(1).max(1);
    let effort = req.extra.get("reasoning_effort").and_then(Value::as_str);
    let answers = (0..n)
        .map(|i| {
            let seed = derive(seed, &i.to_string());
            let thinking = reasoning::tokens(&req.model, effort, seed);
            let (spent, visible) = reasoning::split(thinking, limit);
            let mut a = answer(req, &convo, seed, encoding, visible)?;
            a.reasoning = spent;
            Ok(a)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let reasoning_tokens: usize = answers.iter().map(|a| a.reasoning).sum();
    let visible_tokens: usize = answers.iter().map(|a| a.tokens).sum();
    let usage = usage(
        convo.input_tokens(),
        (reasoning_tokens + visible_tokens) as u64,
        reasoning_tokens as u64,
    );
    let head = Head {
        id: new_id("chatcmpl-", 29),
        created: now,
        model: req.model.clone(),
        fingerprint: format!("fp_{:010x}", hash_str(&req.model) & 0xff_ffff_ffff),
    };
    let completion = completion(&head, &answers, usage);
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let chunks = chunks(&head, &answers, encoding, include_usage.then_some(usage));
    Ok(ChatPlan { completion, chunks })
}

fn validate_request(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    validate::reject_unknown(&req.extra, ACCEPTED_EXTRA)?;
    if req.model.is_empty() {
        return Err(validate::missing("model"));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an \
             empty array instead.",
            Some("messages"),
            Some("empty_array"),
        ));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ApiError::invalid_request(
                format!(
                    "Invalid value: '{}'. Supported values are: 'system', 'assistant', 'user', \
                     'function', 'tool', and 'developer'.",
                    m.role
                ),
                Some(&format!("messages[{i}].role")),
                Some("invalid_value"),
            ));
        }
    }
    if req.stream_options.is_some() && req.stream != Some(true) {
        return Err(ApiError::invalid_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            Some("stream_options"),
            None,
        ));
    }
    validate_ranges(req)
}

fn validate_ranges(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    validate::decimal_in("temperature", req.temperature, 0.0, 2.0)?;
    validate::decimal_in("top_p", req.top_p, 0.0, 1.0)?;
    validate::extra_decimal_in(&req.extra, "presence_penalty", -2.0, 2.0)?;
    validate::extra_decimal_in(&req.extra, "frequency_penalty", -2.0, 2.0)?;
    validate::int_at_least("n", req.n.map(u64::from), 1)?;
    validate::int_at_most("n", req.n.map(u64::from), 128)?;
    validate::int_at_least("max_completion_tokens", req.max_completion_tokens, 1)?;
    validate::int_at_least("max_tokens", req.max_tokens, 1)?;
    let top_logprobs = req.extra.get("top_logprobs").and_then(Value::as_u64);
    validate::int_at_most("top_logprobs", top_logprobs, 20)
}

/// Reads messages and tool definitions into a [`Conversation`].
fn read_conversation(req: &ChatCompletionRequest, encoding: Encoding) -> Conversation {
    let mut convo = Conversation::new(encoding);
    for m in &req.messages {
        read_message(&mut convo, m);
    }
    for tool in req.tools.iter().flatten() {
        if let ChatTool::Function { function } = tool {
            convo.tool_definition(&serde_json::json!({"name": function.name,
                "description": function.description, "parameters": function.parameters}));
        }
    }
    convo
}

fn read_message(convo: &mut Conversation, m: &ChatMessage) {
    let text = m
        .content
        .as_ref()
        .map(ChatContent::text)
        .unwrap_or_default();
    let images = match &m.content {
        Some(ChatContent::Parts(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("image_url"))
            .count(),
        _ => 0,
    };
    match m.role.as_str() {
        "tool" | "function" => {
            let id = m.tool_call_id.as_deref().unwrap_or_default();
            // A legacy `function` message names the function instead of a call id.
            convo.tool_output(id, &text);
            if let (Some(name), Some(result)) = (&m.name, convo.tool_result.as_mut()) {
                result.name.get_or_insert_with(|| name.clone());
            }
        }
        role => {
            convo.message(role, &text, images);
            if let Some(name) = &m.name {
                convo.name(name);
            }
            for call in m.tool_calls.iter().flatten() {
                convo.function_call(&call.id, &call.function.name, &call.function.arguments);
            }
        }
    }
}

/// One choice: a tool call when a function is offered and no tool result is waiting,
/// else structured output, an answer to the tool result, or plain text.
fn answer(
    req: &ChatCompletionRequest,
    convo: &Conversation,
    seed: u64,
    encoding: Encoding,
    limit: Option<usize>,
) -> Result<Answer, ApiError> {
    let functions: Vec<tools::Function<'_>> = req
        .tools
        .iter()
        .flatten()
        .filter_map(|t| match t {
            ChatTool::Function { function } => Some(tools::Function {
                name: &function.name,
                parameters: function.parameters.as_ref(),
            }),
            ChatTool::Other(_) => None,
        })
        .collect();
    let fit = |s: &str| match limit {
        Some(l) => encoding.truncate(s, l),
        None => (s.to_owned(), encoding.count(s)),
    };
    let chosen = tools::choose(&functions, req.tool_choice.as_ref())?;
    if limit == Some(0) {
        // Reasoning used the whole budget: nothing visible, as on the live API.
        return Ok(Answer {
            content: Some(String::new()),
            call: None,
            tokens: 0,
            reasoning: 0,
            finish_reason: "length",
        });
    }
    if let (Some(f), None) = (chosen, &convo.tool_result) {
        let call = tools::call(f, seed);
        let (arguments, tokens) = fit(&call.arguments);
        let cut = arguments.len() < call.arguments.len();
        return Ok(Answer {
            content: None,
            call: Some(ToolCall {
                id: new_id("call_", 24),
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: call.name,
                    arguments,
                },
            }),
            tokens,
            reasoning: 0,
            finish_reason: if cut { "length" } else { "tool_calls" },
        });
    }
    let full = before_stop(answer_text(req, convo, seed), req.stop.as_ref());
    let (content, tokens) = fit(&full);
    let cut = content.len() < full.len();
    Ok(Answer {
        content: Some(content),
        call: None,
        tokens,
        reasoning: 0,
        finish_reason: if cut { "length" } else { "stop" },
    })
}

fn answer_text(req: &ChatCompletionRequest, convo: &Conversation, seed: u64) -> String {
    match (&req.response_format, &convo.tool_result) {
        (Some(ResponseFormat::JsonSchema { json_schema }), _) => {
            let empty = Value::Object(Map::new());
            let schema = json_schema.schema.as_ref().unwrap_or(&empty);
            schema::instance(schema, derive(seed, &json_schema.name)).to_string()
        }
        (Some(ResponseFormat::JsonObject), _) => {
            text::json_object_answer(convo.topic(), seed).to_string()
        }
        (_, Some(result)) => text::tool_result_answer(result.name.as_deref(), &result.output, seed),
        (_, None) => text::answer(convo.topic(), seed),
    }
}

/// `text` up to the first `stop` sequence (a string or a list of strings); the
/// sequence itself is not returned, as with the API, and the finish reason stays
/// `stop`.
fn before_stop(mut text: String, stop: Option<&Value>) -> String {
    let sequences: Vec<&str> = match stop {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let cut = sequences
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s))
        .min();
    if let Some(at) = cut {
        text.truncate(at);
    }
    text
}

fn usage(prompt_tokens: u64, completion_tokens: u64, reasoning_tokens: u64) -> CompletionUsage {
    CompletionUsage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        prompt_tokens_details: Some(PromptTokensDetails::default()),
        completion_tokens_details: Some(CompletionTokensDetails {
            reasoning_tokens,
            ..CompletionTokensDetails::default()
        }),
    }
}

/// What every chunk and the completion share.
struct Head {
    id: String,
    created: i64,
    model: String,
    fingerprint: String,
}

fn completion(head: &Head, answers: &[Answer], usage: CompletionUsage) -> ChatCompletion {
    let choices = answers
        .iter()
        .zip(0u32..)
        .map(|(a, index)| Choice {
            index,
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content: a.content.clone(),
                refusal: None,
                tool_calls: a.call.clone().map(|c| vec![c]),
                annotations: Some(Vec::new()),
                extra: Map::new(),
            },
            logprobs: None,
            finish_reason: Some(a.finish_reason.to_owned()),
        })
        .collect();
    ChatCompletion {
        id: head.id.clone(),
        object: "chat.completion".to_owned(),
        created: head.created,
        model: head.model.clone(),
        choices,
        usage: Some(usage),
        service_tier: Some("default".to_owned()),
        system_fingerprint: Some(head.fingerprint.clone()),
        extra: Map::new(),
    }
}

/// The stream: per choice a role chunk, content (or tool-call argument) chunks and a
/// finish chunk; then, when `usage` is given (`include_usage`), a chunk with no
/// choices carrying it — and every other chunk carries `"usage": null`.
fn chunks(
    head: &Head,
    answers: &[Answer],
    encoding: Encoding,
    usage: Option<CompletionUsage>,
) -> Vec<ChatCompletionChunk> {
    let mut out = Vec::new();
    for (a, index) in answers.iter().zip(0u32..) {
        for (delta, finish) in choice_deltas(a, encoding) {
            let choice = ChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason: finish.map(str::to_owned),
            };
            out.push(chunk(head, vec![choice], usage.map(|_| None)));
        }
    }
    if let Some(u) = usage {
        out.push(chunk(head, Vec::new(), Some(Some(u))));
    }
    out
}

/// The deltas of one choice, each with its finish reason (only the last has one).
fn choice_deltas(a: &Answer, encoding: Encoding) -> Vec<(ChunkDelta, Option<&'static str>)> {
    let mut out = Vec::new();
    let role = Some("assistant".to_owned());
    if let Some(call) = &a.call {
        let first = ToolCallDelta {
            index: 0,
            id: Some(call.id.clone()),
            kind: Some("function".to_owned()),
            function: Some(FunctionCallDelta {
                name: Some(call.function.name.clone()),
                arguments: Some(String::new()),
            }),
        };
        out.push((
            ChunkDelta {
                role,
                tool_calls: Some(vec![first]),
                ..ChunkDelta::default()
            },
            None,
        ));
        for piece in encoding.pieces(&call.function.arguments) {
            let fragment = ToolCallDelta {
                index: 0,
                function: Some(FunctionCallDelta {
                    name: None,
                    arguments: Some(piece),
                }),
                ..ToolCallDelta::default()
            };
            out.push((
                ChunkDelta {
                    tool_calls: Some(vec![fragment]),
                    ..ChunkDelta::default()
                },
                None,
            ));
        }
    } else {
        let first = ChunkDelta {
            role,
            content: Some(String::new()),
            ..ChunkDelta::default()
        };
        out.push((first, None));
        for piece in encoding.pieces(a.content.as_deref().unwrap_or_default()) {
            out.push((
                ChunkDelta {
                    content: Some(piece),
                    ..ChunkDelta::default()
                },
                None,
            ));
        }
    }
    out.push((ChunkDelta::default(), Some(a.finish_reason)));
    out
}

fn chunk(
    head: &Head,
    choices: Vec<ChunkChoice>,
    usage: Option<Option<CompletionUsage>>,
) -> ChatCompletionChunk {
    ChatCompletionChunk {
        id: head.id.clone(),
        object: "chat.completion.chunk".to_owned(),
        created: head.created,
        model: head.model.clone(),
        system_fingerprint: Some(head.fingerprint.clone()),
        service_tier: Some("default".to_owned()),
        choices,
        usage,
        extra: Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> ChatCompletionRequest {
        serde_json::from_value(body).unwrap()
    }

    fn plan_of(body: Value) -> ChatPlan {
        plan(&request(body), 1_700_000_000).unwrap()
    }

    fn error_of(body: Value) -> ApiError {
        plan(&request(body), 0).unwrap_err()
    }

    fn user(text: &str) -> Value {
        json!([{"role": "user", "content": text}])
    }

    fn weather_tool() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"], "additionalProperties": false}, "strict": true}})
    }

    #[test]
    fn completion_shape_usage_and_determinism() {
        let body = json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]});
        let a = plan_of(body.clone()).completion;
        let b = plan_of(body).completion;
        assert_eq!(a.choices[0].message.content, b.choices[0].message.content);
        assert!(a.id.starts_with("chatcmpl-") && a.id.len() == 38);
        assert_eq!(a.object, "chat.completion");
        assert_eq!(a.created, 1_700_000_000);
        let fp = a.system_fingerprint.clone().unwrap();
        assert!(fp.starts_with("fp_") && fp.len() == 13, "{fp}");
        assert_eq!(a.service_tier.as_deref(), Some("default"));
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["message"]["refusal"], Value::Null);
        assert_eq!(v["choices"][0]["message"]["annotations"], json!([]));
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        assert_eq!(
            v["usage"]["completion_tokens_details"]["rejected_prediction_tokens"],
            0
        );
        let u = a.usage.unwrap();
        // system: 3 + 1 + 3; user: 3 + 1 + 2; priming 3.
        assert_eq!(u.prompt_tokens, 16);
        let content = a.choices[0].message.content.clone().unwrap();
        assert_eq!(
            u.completion_tokens as usize,
            super::super::count_tokens("gpt-4o-mini", &content)
        );
        assert_eq!(u.total_tokens, u.prompt_tokens + u.completion_tokens);
    }

    #[test]
    fn stream_without_include_usage_has_no_usage_key() {
        let p = plan_of(json!({"model": "gpt-4o", "messages": user("hi"), "stream": true}));
        let first = &p.chunks[0];
        assert_eq!(first.choices[0].delta.role.as_deref(), Some("assistant"));
        assert_eq!(first.choices[0].delta.content.as_deref(), Some(""));
        let last = p.chunks.last().unwrap();
        assert_eq!(last.choices[0].delta, ChunkDelta::default());
        assert_eq!(last.choices[0].finish_reason.as_deref(), Some("stop"));
        for c in &p.chunks {
            assert!(c.usage.is_none());
            assert_eq!(
                (c.id.as_str(), c.created),
                (p.completion.id.as_str(), p.completion.created)
            );
            assert_eq!(c.object, "chat.completion.chunk");
            assert!(serde_json::to_value(c).unwrap().get("usage").is_none());
        }
        let text: String = p
            .chunks
            .iter()
            .filter_map(|c| c.choices[0].delta.content.clone())
            .collect();
        assert_eq!(Some(text), p.completion.choices[0].message.content);
    }

    #[test]
    fn stream_with_include_usage_ends_with_a_usage_chunk() {
        let p = plan_of(
            json!({"model": "gpt-4o", "messages": user("hi"), "stream": true,
                               "stream_options": {"include_usage": true}}),
        );
        let (last, rest) = p.chunks.split_last().unwrap();
        assert!(last.choices.is_empty());
        assert_eq!(last.usage, Some(p.completion.usage));
        for c in rest {
            assert_eq!(c.usage, Some(None));
            assert_eq!(serde_json::to_value(c).unwrap()["usage"], Value::Null);
        }
        assert_eq!(
            rest.last().unwrap().choices[0].finish_reason.as_deref(),
            Some("stop")
        );
    }

    #[test]
    fn tool_call_then_tool_message_gives_text() {
        let p = plan_of(
            json!({"model": "gpt-4o", "messages": user("Weather in Paris?"),
                               "tools": [weather_tool()], "stream": true}),
        );
        let choice = &p.completion.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(choice.message.content, None);
        let call = &choice.message.tool_calls.as_ref().unwrap()[0];
        assert!(call.id.starts_with("call_") && call.kind == "function");
        let args: Value = serde_json::from_str(&call.function.arguments).unwrap();
        assert!(jsonschema::is_valid(
            &weather_tool()["function"]["parameters"],
            &args
        ));
        // Stream: first fragment names the call, later ones carry only arguments.
        let frags: Vec<&ToolCallDelta> = p
            .chunks
            .iter()
            .filter_map(|c| c.choices[0].delta.tool_calls.as_ref().map(|t| &t[0]))
            .collect();
        assert_eq!(frags[0].id.as_deref(), Some(call.id.as_str()));
        assert_eq!(
            frags[0].function.as_ref().unwrap().arguments.as_deref(),
            Some("")
        );
        assert!(frags[1..]
            .iter()
            .all(|f| f.id.is_none() && f.kind.is_none()));
        let joined: String = frags
            .iter()
            .filter_map(|f| f.function.as_ref()?.arguments.clone())
            .collect();
        assert_eq!(joined, call.function.arguments);
        assert_eq!(
            p.chunks.last().unwrap().choices[0].finish_reason.as_deref(),
            Some("tool_calls")
        );

        let second = plan_of(
            json!({"model": "gpt-4o", "tools": [weather_tool()], "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [serde_json::to_value(call).unwrap()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]}),
        );
        let choice = &second.completion.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
        assert!(choice
            .message
            .content
            .as_deref()
            .unwrap()
            .contains("18C and sunny"));
    }

    #[test]
    fn length_limit_and_n_choices() {
        let p = plan_of(
            json!({"model": "gpt-4o", "messages": user("Write an essay"),
                               "max_completion_tokens": 5, "n": 3}),
        );
        assert_eq!(p.completion.choices.len(), 3);
        for (i, c) in p.completion.choices.iter().enumerate() {
            assert_eq!(c.index as usize, i);
            assert_eq!(c.finish_reason.as_deref(), Some("length"));
            assert!(
                super::super::count_tokens("gpt-4o", c.message.content.as_deref().unwrap()) <= 5
            );
        }
        assert!(p.completion.usage.unwrap().completion_tokens <= 15);
        let legacy =
            plan_of(json!({"model": "gpt-4", "messages": user("Write an essay"), "max_tokens": 4}));
        assert_eq!(
            legacy.completion.choices[0].finish_reason.as_deref(),
            Some("length")
        );
    }

    #[test]
    fn reasoning_models_spend_reasoning_tokens_first() {
        let p = plan_of(json!({"model": "o3", "messages": user("Prove it")}));
        let u = p.completion.usage.unwrap();
        let r = u.completion_tokens_details.unwrap().reasoning_tokens;
        assert!(r >= 128);
        let content = p.completion.choices[0].message.content.clone().unwrap();
        let visible = super::super::count_tokens("o3", &content) as u64;
        assert_eq!(u.completion_tokens, r + visible);
        let starved = plan_of(json!({"model": "o3", "messages": user("Prove it"),
                                     "max_completion_tokens": 50}));
        let choice = &starved.completion.choices[0];
        assert_eq!(choice.message.content.as_deref(), Some(""));
        assert_eq!(choice.finish_reason.as_deref(), Some("length"));
        assert_eq!(starved.completion.usage.unwrap().completion_tokens, 50);
    }

    #[test]
    fn stop_sequences_end_the_text_early() {
        let full = plan_of(json!({"model": "gpt-4o", "messages": user("Tell me about sailing")}));
        let text = full.completion.choices[0].message.content.clone().unwrap();
        let stop = text.split(' ').nth(3).unwrap().to_owned();
        let cut = plan_of(
            json!({"model": "gpt-4o", "messages": user("Tell me about sailing"),
                                 "stop": ["zzz", stop]}),
        );
        let choice = &cut.completion.choices[0];
        let content = choice.message.content.clone().unwrap();
        assert!(text.starts_with(&content) && content.len() < text.len());
        assert!(!content.contains(&stop));
        assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn structured_output_follows_the_nested_schema() {
        let schema = json!({"type": "object", "properties": {"priority": {"type": "string",
            "enum": ["low", "medium", "high"]}, "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["priority", "tags"], "additionalProperties": false});
        let p = plan_of(
            json!({"model": "gpt-4o", "messages": user("Classify: printer on fire"),
            "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": true}}}),
        );
        let content = p.completion.choices[0].message.content.clone().unwrap();
        let v: Value = serde_json::from_str(&content).unwrap();
        assert!(jsonschema::is_valid(&schema, &v), "{v}");
    }

    #[test]
    fn invalid_requests_get_the_api_errors() {
        let e = error_of(json!({"model": "gpt-4o", "messages": user("x"), "bogus": true}));
        assert_eq!(e.body.error.code.as_deref(), Some("unknown_parameter"));
        let e = error_of(json!({"model": "gpt-4o", "messages": user("x"),
                                "stream_options": {"include_usage": true}}));
        assert_eq!(
            e.body.error.message,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        );
        assert_eq!(e.body.error.param.as_deref(), Some("stream_options"));
        assert_eq!(
            error_of(json!({"model": "gpt-4o", "messages": []}))
                .body
                .error
                .param
                .as_deref(),
            Some("messages")
        );
        assert_eq!(
            error_of(json!({"model": "", "messages": user("x")}))
                .body
                .error
                .param
                .as_deref(),
            Some("model")
        );
        let e =
            error_of(json!({"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}));
        assert_eq!(e.body.error.param.as_deref(), Some("messages[0].role"));
        let e = error_of(json!({"model": "gpt-4o", "messages": user("x"), "temperature": -1}));
        assert_eq!(
            e.body.error.code.as_deref(),
            Some("decimal_below_min_value")
        );
        // Spec fields outside the wire type are accepted.
        assert!(plan(
            &request(json!({"model": "gpt-4o", "messages": user("x"), "seed": 1,
            "logit_bias": {}, "presence_penalty": 0.5, "store": false, "metadata": {},
            "reasoning_effort": "low", "verbosity": "low", "service_tier": "auto"})),
            0
        )
        .is_ok());
    }
}
