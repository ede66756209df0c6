//! `POST /v1/responses`: validation, the answer (text, structured JSON or a function
//! call), usage, the final response object and every stream event in order.

use serde_json::{json, Map, Value};
use tollgate_wire::responses::{
    ArgumentsDeltaEvent, ArgumentsDoneEvent, ContentPart, ContentPartEvent, CreateResponse,
    FunctionCall, IncompleteDetails, Input, InputItem, InputTokensDetails, ItemStatus,
    MessageContent, OutputContent, OutputItem, OutputItemEvent, OutputMessage, OutputText,
    OutputTokensDetails, Response, ResponseSnapshot, ResponseStatus, ResponseUsage, StreamEvent,
    TextDeltaEvent, TextDoneEvent, TextFormat, Tool, TypedInputItem,
};

use super::conversation::{output_text, Conversation};
use super::rng::{derive, hash_str};
use super::tokens::Encoding;
use super::{reasoning, schema, text, tools, validate, ResponsesPlan};
use crate::error::ApiError;
use crate::ids::new_id;

/// `CreateResponse` fields the wire type keeps in `extra`: all accepted (and ignored,
/// apart from echoes), so only truly unknown names get `unknown_parameter`.
const ACCEPTED_EXTRA: &[&str] = &[
    "background",
    "context_management",
    "conversation",
    "include",
    "max_tool_calls",
    "moderation",
    "prompt",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "safety_identifier",
    "service_tier",
    "top_logprobs",
    "truncation",
];

/// What the simulated model produces.
enum Answer {
    Text(String),
    Call(tools::PlannedCall),
}

/// Validates `req` and plans the answer. See [`super::plan_response`].
pub fn plan(req: &CreateResponse, now: i64) -> Result<ResponsesPlan, ApiError> {
    validate_request(req)?;
    let model = req.model.as_deref().unwrap_or_default();
    let encoding = Encoding::for_model(model);
    let convo = read_conversation(req, encoding)?;
    let answer = decide(req, &convo)?;
    let effort = req
        .reasoning
        .as_ref()
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str);
    let thinking = reasoning::tokens(model, effort, hash_str(&convo.transcript));
    let limit = req.max_output_tokens.map(|l| l as usize);
    let (reasoning_tokens, visible_limit) = reasoning::split(thinking, limit);

    let mut output = Vec::new();
    if reasoning::is_reasoning_model(model) {
        output.push(reasoning_item());
    }
    let (item, visible_tokens, cut) = build_item(answer, encoding, visible_limit);
    // A limit used up by reasoning leaves no message at all, as on the live API.
    let cut = cut || visible_limit == Some(0);
    if visible_limit != Some(0) {
        output.push(item);
    }

    let shell = shell(req, model, now);
    let mut response = shell.clone();
    response.output = output;
    response.usage = Some(usage(
        convo.input_tokens(),
        (reasoning_tokens + visible_tokens) as u64,
        reasoning_tokens as u64,
    ));
    if cut {
        response.status = ResponseStatus::Incomplete;
        response.incomplete_details = Some(IncompleteDetails {
            reason: "max_output_tokens".to_owned(),
        });
    } else {
        response.status = ResponseStatus::Completed;
        response.completed_at = Some(now);
    }
    let events = stream_events(shell, &response, encoding);
    Ok(ResponsesPlan { response, events })
}

/// The (empty-summary) reasoning item a reasoning model puts first.
fn reasoning_item() -> OutputItem {
    OutputItem::Other(json!({"type": "reasoning", "id": new_id("rs_", 48), "summary": []}))
}

fn validate_request(req: &CreateResponse) -> Result<(), ApiError> {
    // These two are known Chat parameters: the API points to their new home rather
    // than calling them unknown.
    if req.extra.contains_key("response_format") {
        return Err(validate::moved("response_format", "text.format"));
    }
    if req.extra.contains_key("reasoning_effort") {
        return Err(validate::moved("reasoning_effort", "reasoning.effort"));
    }
    validate::reject_unknown(&req.extra, ACCEPTED_EXTRA)?;
    if req.model.as_deref().is_none_or(str::is_empty) {
        return Err(validate::missing("model"));
    }
    let continues = req.previous_response_id.is_some()
        || req.extra.contains_key("prompt")
        || req.extra.contains_key("conversation");
    if req.input.is_none() && !continues {
        return Err(validate::missing("input"));
    }
    validate::int_at_least("max_output_tokens", req.max_output_tokens, 16)?;
    validate::decimal_in("temperature", req.temperature, 0.0, 2.0)?;
    validate::decimal_in("top_p", req.top_p, 0.0, 1.0)?;
    validate::int_at_most(
        "top_logprobs",
        req.extra.get("top_logprobs").and_then(Value::as_u64),
        20,
    )?;
    if let Some(metadata) = &req.metadata {
        validate::metadata(metadata.iter())?;
    }
    validate_format(req)
}

/// A json_schema format needs an object schema.
fn validate_format(req: &CreateResponse) -> Result<(), ApiError> {
    let Some(TextFormat::JsonSchema(f)) = req.text.as_ref().and_then(|t| t.format.as_ref()) else {
        return Ok(());
    };
    match f.schema.get("type").and_then(Value::as_str) {
        _ if f.schema.is_null() => Err(validate::missing("text.format.schema")),
        Some("object") | None if f.schema.is_object() => Ok(()),
        other => Err(ApiError::invalid_request(
            format!(
                "Invalid schema for response_format '{}': schema must be a JSON Schema of 'type: \
                 \"object\"', got 'type: \"{}\"'.",
                f.name,
                other.unwrap_or("None")
            ),
            Some("text.format.schema"),
            Some("invalid_json_schema"),
        )),
    }
}

/// Reads instructions, input items and tool definitions into a [`Conversation`]. A
/// tool result whose call is not in the input is refused unless the call may live in
/// the previous response.
fn read_conversation(req: &CreateResponse, encoding: Encoding) -> Result<Conversation, ApiError> {
    let mut convo = Conversation::new(encoding);
    if let Some(instructions) = &req.instructions {
        convo.message("developer", instructions, 0);
    }
    match &req.input {
        Some(Input::Text(s)) => convo.message("user", s, 0),
        Some(Input::Items(items)) => {
            for item in items {
                read_item(&mut convo, item, req.previous_response_id.is_some())?;
            }
        }
        None => {}
    }
    for tool in req.tools.iter().flatten() {
        if let Tool::Function(f) = tool {
            convo.tool_definition(&json!({"name": f.name, "description": f.description,
                                          "parameters": f.parameters}));
        }
    }
    Ok(convo)
}

fn read_item(convo: &mut Conversation, item: &InputItem, chained: bool) -> Result<(), ApiError> {
    match item {
        InputItem::Message(m) | InputItem::Typed(TypedInputItem::Message(m)) => {
            let (text, images) = message_text(&m.content);
            convo.message(&m.role, &text, images);
        }
        InputItem::Typed(TypedInputItem::FunctionCall(c)) => {
            convo.function_call(&c.call_id, &c.name, &c.arguments);
        }
        InputItem::Typed(TypedInputItem::FunctionCallOutput(o)) => {
            let known = convo.tool_output(&o.call_id, &output_text(&o.output));
            if !known && !chained {
                return Err(ApiError::invalid_request(
                    format!(
                        "No tool call found for function call output with call_id {}.",
                        o.call_id
                    ),
                    Some("input"),
                    None,
                ));
            }
        }
        InputItem::Other(_) => convo.opaque_item(),
    }
    Ok(())
}

/// The text of a message and how many image parts it has.
fn message_text(content: &MessageContent) -> (String, usize) {
    match content {
        MessageContent::Text(s) => (s.clone(), 0),
        MessageContent::Parts(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p: &ContentPart| p.text.as_deref())
                .collect();
            let images = parts.iter().filter(|p| p.kind == "input_image").count();
            (texts.join("\n"), images)
        }
    }
}

/// Function call first (when a function is offered and no tool result is waiting),
/// else structured output, else an answer to the tool result, else plain text.
fn decide(req: &CreateResponse, convo: &Conversation) -> Result<Answer, ApiError> {
    let seed = hash_str(&convo.transcript);
    let functions: Vec<tools::Function<'_>> = req
        .tools
        .iter()
        .flatten()
        .filter_map(|t| match t {
            Tool::Function(f) => Some(tools::Function {
                name: &f.name,
                parameters: f.parameters.as_ref(),
            }),
            Tool::Other(_) => None,
        })
        .collect();
    let chosen = tools::choose(&functions, req.tool_choice.as_ref())?;
    if let (Some(f), None) = (chosen, &convo.tool_result) {
        return Ok(Answer::Call(tools::call(f, seed)));
    }
    let format = req.text.as_ref().and_then(|t| t.format.as_ref());
    let text = match (format, &convo.tool_result) {
        (Some(TextFormat::JsonSchema(f)), _) => {
            schema::instance(&f.schema, derive(seed, &f.name)).to_string()
        }
        (Some(TextFormat::JsonObject), _) => {
            text::json_object_answer(convo.topic(), seed).to_string()
        }
        (_, Some(result)) => text::tool_result_answer(result.name.as_deref(), &result.output, seed),
        (_, None) => text::answer(convo.topic(), seed),
    };
    Ok(Answer::Text(text))
}

/// The output item, its output tokens, and whether `limit` cut it.
fn build_item(
    answer: Answer,
    encoding: Encoding,
    limit: Option<usize>,
) -> (OutputItem, usize, bool) {
    let fit = |s: &str| match limit {
        Some(l) => encoding.truncate(s, l),
        None => (s.to_owned(), encoding.count(s)),
    };
    match answer {
        Answer::Text(full) => {
            let (text, tokens) = fit(&full);
            let cut = text.len() < full.len();
            let item = OutputItem::Message(OutputMessage {
                id: new_id("msg_", 48),
                status: if cut {
                    ItemStatus::Incomplete
                } else {
                    ItemStatus::Completed
                },
                role: "assistant".to_owned(),
                content: vec![OutputContent::OutputText(OutputText {
                    text,
                    annotations: Vec::new(),
                    logprobs: Vec::new(),
                })],
                extra: Map::new(),
            });
            (item, tokens, cut)
        }
        Answer::Call(call) => {
            let (arguments, tokens) = fit(&call.arguments);
            let cut = arguments.len() < call.arguments.len();
            let item = OutputItem::FunctionCall(FunctionCall {
                id: Some(new_id("fc_", 48)),
                call_id: new_id("call_", 24),
                name: call.name,
                arguments,
                status: Some(if cut {
                    ItemStatus::Incomplete
                } else {
                    ItemStatus::Completed
                }),
                extra: Map::new(),
            });
            (item, tokens, cut)
        }
    }
}

fn usage(input_tokens: u64, output_tokens: u64, reasoning_tokens: u64) -> ResponseUsage {
    ResponseUsage {
        input_tokens,
        input_tokens_details: InputTokensDetails::default(),
        output_tokens,
        output_tokens_details: OutputTokensDetails { reasoning_tokens },
        total_tokens: input_tokens + output_tokens,
    }
}

/// The response as `response.created` shows it: in progress, no output, no usage,
/// every request setting echoed with the API's defaults filled in.
fn shell(req: &CreateResponse, model: &str, now: i64) -> Response {
    let mut extra = Map::new();
    extra.insert(
        "background".into(),
        json!(req
            .extra
            .get("background")
            .and_then(Value::as_bool)
            .unwrap_or(false)),
    );
    extra.insert("service_tier".into(), json!("default"));
    extra.insert(
        "top_logprobs".into(),
        json!(req
            .extra
            .get("top_logprobs")
            .and_then(Value::as_u64)
            .unwrap_or(0)),
    );
    let truncation = req
        .extra
        .get("truncation")
        .and_then(Value::as_str)
        .unwrap_or("disabled");
    Response {
        id: new_id("resp_", 48),
        object: "response".to_owned(),
        created_at: now,
        status: ResponseStatus::InProgress,
        completed_at: None,
        error: None,
        incomplete_details: None,
        instructions: req.instructions.clone().map(Value::String),
        max_output_tokens: req.max_output_tokens,
        model: model.to_owned(),
        output: Vec::new(),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        previous_response_id: req.previous_response_id.clone(),
        reasoning: Some(reasoning_echo(req.reasoning.as_ref(), model)),
        store: Some(req.store.unwrap_or(true)),
        temperature: Some(req.temperature.unwrap_or(1.0)),
        text: Some(text_echo(req)),
        tool_choice: req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        tools: tools_echo(req),
        top_p: Some(req.top_p.unwrap_or(1.0)),
        truncation: Some(truncation.to_owned()),
        usage: None,
        user: req.user.clone(),
        metadata: Some(req.metadata.clone().unwrap_or_default()),
        extra,
    }
}

/// `{"effort": null, "summary": null}` (effort `medium` for reasoning models) with
/// whatever the request set laid over it.
fn reasoning_echo(requested: Option<&Value>, model: &str) -> Value {
    let effort = reasoning::is_reasoning_model(model).then_some(reasoning::DEFAULT_EFFORT);
    let mut echo = json!({"effort": effort, "summary": null});
    if let (Some(Value::Object(set)), Value::Object(out)) = (requested, &mut echo) {
        for (k, v) in set {
            out.insert(k.clone(), v.clone());
        }
    }
    echo
}

/// `text` as requested, with the default `{"format":{"type":"text"}}` and
/// `"verbosity":"medium"` filled in.
fn text_echo(req: &CreateResponse) -> Value {
    let mut echo = req
        .text
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or_else(|| json!({}));
    if let Value::Object(o) = &mut echo {
        o.entry("format").or_insert_with(|| json!({"type": "text"}));
        o.entry("verbosity").or_insert_with(|| json!("medium"));
    }
    echo
}

/// Tools as the API echoes them: function tools with every key present (`strict`
/// defaults to true in the Responses API), built-in tools verbatim.
fn tools_echo(req: &CreateResponse) -> Vec<Value> {
    req.tools
        .iter()
        .flatten()
        .map(|tool| match tool {
            Tool::Function(f) => json!({
                "type": "function",
                "name": f.name,
                "description": f.description,
                "parameters": f.parameters,
                "strict": f.strict.unwrap_or(true),
            }),
            Tool::Other(v) => v.clone(),
        })
        .collect()
}

/// Stream events in the order of OPENAI-WIRE.md section b, numbered from 0.
fn stream_events(shell: Response, done: &Response, encoding: Encoding) -> Vec<StreamEvent> {
    let mut ev = Events::default();
    ev.push(|seq| StreamEvent::Created(snapshot(seq, shell.clone())));
    ev.push(|seq| StreamEvent::InProgress(snapshot(seq, shell)));
    for (item, index) in done.output.iter().zip(0u32..) {
        match item {
            OutputItem::Message(m) => message_events(&mut ev, m, index, encoding),
            OutputItem::FunctionCall(c) => call_events(&mut ev, c, index, encoding),
            OutputItem::Other(_) => {
                ev.push(|seq| StreamEvent::OutputItemAdded(item_event(seq, index, item.clone())));
                ev.push(|seq| StreamEvent::OutputItemDone(item_event(seq, index, item.clone())));
            }
        }
    }
    let done = done.clone();
    if done.status == ResponseStatus::Incomplete {
        ev.push(|seq| StreamEvent::Incomplete(snapshot(seq, done)));
    } else {
        ev.push(|seq| StreamEvent::Completed(snapshot(seq, done)));
    }
    ev.list
}

/// Accumulates events, handing each its `sequence_number`.
#[derive(Default)]
struct Events {
    list: Vec<StreamEvent>,
}

impl Events {
    fn push(&mut self, make: impl FnOnce(u64) -> StreamEvent) {
        let seq = self.list.len() as u64;
        self.list.push(make(seq));
    }
}

fn snapshot(sequence_number: u64, response: Response) -> ResponseSnapshot {
    ResponseSnapshot {
        sequence_number,
        response: Box::new(response),
    }
}

fn message_events(ev: &mut Events, done: &OutputMessage, index: u32, encoding: Encoding) {
    let text = match done.content.first() {
        Some(OutputContent::OutputText(t)) => t.text.clone(),
        _ => String::new(),
    };
    let id = done.id.clone();
    let mut started = done.clone();
    started.status = ItemStatus::InProgress;
    started.content = Vec::new();
    let part = |text: &str| {
        OutputContent::OutputText(OutputText {
            text: text.to_owned(),
            annotations: Vec::new(),
            logprobs: Vec::new(),
        })
    };
    let part_event = |seq: u64, text: &str| ContentPartEvent {
        sequence_number: seq,
        item_id: id.clone(),
        output_index: index,
        content_index: 0,
        part: part(text),
    };
    ev.push(|seq| {
        StreamEvent::OutputItemAdded(item_event(seq, index, OutputItem::Message(started)))
    });
    ev.push(|seq| StreamEvent::ContentPartAdded(part_event(seq, "")));
    for delta in encoding.pieces(&text) {
        ev.push(|seq| {
            StreamEvent::OutputTextDelta(TextDeltaEvent {
                sequence_number: seq,
                item_id: id.clone(),
                output_index: index,
                content_index: 0,
                delta,
                logprobs: Vec::new(),
            })
        });
    }
    ev.push(|seq| {
        StreamEvent::OutputTextDone(TextDoneEvent {
            sequence_number: seq,
            item_id: id.clone(),
            output_index: index,
            content_index: 0,
            text: text.clone(),
            logprobs: Vec::new(),
        })
    });
    ev.push(|seq| StreamEvent::ContentPartDone(part_event(seq, &text)));
    ev.push(|seq| {
        StreamEvent::OutputItemDone(item_event(seq, index, OutputItem::Message(done.clone())))
    });
}

fn call_events(ev: &mut Events, done: &FunctionCall, index: u32, encoding: Encoding) {
    let id = done.id.clone().unwrap_or_default();
    let mut started = done.clone();
    started.status = Some(ItemStatus::InProgress);
    started.arguments = String::new();
    ev.push(|seq| {
        StreamEvent::OutputItemAdded(item_event(seq, index, OutputItem::FunctionCall(started)))
    });
    for delta in encoding.pieces(&done.arguments) {
        ev.push(|seq| {
            StreamEvent::FunctionCallArgumentsDelta(ArgumentsDeltaEvent {
                sequence_number: seq,
                item_id: id.clone(),
                output_index: index,
                delta,
            })
        });
    }
    ev.push(|seq| {
        StreamEvent::FunctionCallArgumentsDone(ArgumentsDoneEvent {
            sequence_number: seq,
            item_id: id.clone(),
            output_index: index,
            name: Some(done.name.clone()),
            arguments: done.arguments.clone(),
        })
    });
    ev.push(|seq| {
        StreamEvent::OutputItemDone(item_event(
            seq,
            index,
            OutputItem::FunctionCall(done.clone()),
        ))
    });
}

fn item_event(sequence_number: u64, output_index: u32, item: OutputItem) -> OutputItemEvent {
    OutputItemEvent {
        sequence_number,
        output_index,
        item,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> CreateResponse {
        serde_json::from_value(body).unwrap()
    }

    fn plan_of(body: Value) -> ResponsesPlan {
        plan(&request(body), 1_700_000_000).unwrap()
    }

    fn error_of(body: Value) -> ApiError {
        plan(&request(body), 0).unwrap_err()
    }

    fn event_types(p: &ResponsesPlan) -> Vec<String> {
        p.events.iter().map(|e| e.event_type().to_owned()).collect()
    }

    fn weather_tool() -> Value {
        json!({"type": "function", "name": "get_weather", "description": "Weather for a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": false},
               "strict": true})
    }

    #[test]
    fn same_request_same_answer() {
        let body = json!({"model": "gpt-4o", "input": "Tell me about Rust lifetimes"});
        let a = plan_of(body.clone()).response;
        let b = plan_of(body).response;
        assert_eq!(a.output_text(), b.output_text());
        assert_ne!(a.id, b.id);
        assert!(a.output_text().contains("rust"), "{}", a.output_text());
        let other = plan_of(json!({"model": "gpt-4o", "input": "Explain tides"})).response;
        assert_ne!(a.output_text(), other.output_text());
    }

    #[test]
    fn plain_answer_has_every_echoed_key_and_real_usage() {
        let p = plan_of(json!({"model": "gpt-4o-mini", "input": "hello world",
                               "instructions": "Be brief.", "metadata": {"k": "v"}}));
        let r = &p.response;
        assert_eq!(r.status, ResponseStatus::Completed);
        assert_eq!(r.completed_at, Some(1_700_000_000));
        assert!(r.id.starts_with("resp_") && r.id.len() == 53);
        let v = serde_json::to_value(r).unwrap();
        for key in [
            "id",
            "object",
            "created_at",
            "status",
            "completed_at",
            "error",
            "incomplete_details",
            "instructions",
            "max_output_tokens",
            "model",
            "output",
            "parallel_tool_calls",
            "previous_response_id",
            "reasoning",
            "store",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_p",
            "truncation",
            "usage",
            "metadata",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["text"]["format"], json!({"type": "text"}));
        assert_eq!(v["instructions"], "Be brief.");
        assert_eq!(v["metadata"], json!({"k": "v"}));
        assert_eq!(v["tool_choice"], "auto");
        assert_eq!(v["reasoning"], json!({"effort": null, "summary": null}));
        let usage = r.usage.unwrap();
        // developer: 3 + 1 + 3 ("Be brief."); user: 3 + 1 + 2; priming 3.
        assert_eq!(usage.input_tokens, 7 + 6 + 3);
        assert_eq!(
            usage.output_tokens as usize,
            super::super::count_tokens("gpt-4o-mini", &r.output_text())
        );
        assert_eq!(usage.total_tokens, usage.input_tokens + usage.output_tokens);
    }

    #[test]
    fn text_stream_events_are_in_order_and_numbered() {
        let p = plan_of(json!({"model": "gpt-4o", "input": "hi", "stream": true}));
        let types = event_types(&p);
        let n = types.len();
        assert_eq!(
            types[..4],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added"
            ]
        );
        assert_eq!(
            types[n - 4..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        assert!(types[4..n - 4]
            .iter()
            .all(|t| t == "response.output_text.delta"));
        assert!(n - 8 > 5, "deltas are about one token each");
        for (i, e) in p.events.iter().enumerate() {
            assert_eq!(e.sequence_number(), Some(i as u64));
        }
        let deltas: String = p
            .events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::OutputTextDelta(d) => Some(d.delta.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deltas, p.response.output_text());
        let StreamEvent::Created(created) = &p.events[0] else {
            panic!("created")
        };
        assert_eq!(created.response.status, ResponseStatus::InProgress);
        assert!(created.response.output.is_empty() && created.response.usage.is_none());
        let StreamEvent::Completed(done) = &p.events[n - 1] else {
            panic!("completed")
        };
        assert_eq!(*done.response, p.response);
        // The message id is the same everywhere.
        let OutputItem::Message(m) = &p.response.output[0] else {
            panic!("message")
        };
        let StreamEvent::OutputItemAdded(added) = &p.events[2] else {
            panic!("added")
        };
        let OutputItem::Message(am) = &added.item else {
            panic!("added message")
        };
        assert_eq!(am.id, m.id);
        assert!(am.content.is_empty() && am.status == ItemStatus::InProgress);
    }

    #[test]
    fn max_output_tokens_cuts_and_marks_incomplete() {
        let p = plan_of(
            json!({"model": "gpt-4o", "input": "Write a long essay about the sea",
                               "max_output_tokens": 16}),
        );
        let r = &p.response;
        assert_eq!(r.status, ResponseStatus::Incomplete);
        assert_eq!(r.completed_at, None);
        assert_eq!(
            r.incomplete_details.as_ref().map(|d| d.reason.as_str()),
            Some("max_output_tokens")
        );
        let usage = r.usage.unwrap();
        assert!(usage.output_tokens <= 16 && usage.output_tokens > 10);
        assert!(super::super::count_tokens("gpt-4o", &r.output_text()) <= 16);
        let OutputItem::Message(m) = &r.output[0] else {
            panic!("message")
        };
        assert_eq!(m.status, ItemStatus::Incomplete);
        assert_eq!(
            event_types(&p).last().map(String::as_str),
            Some("response.incomplete")
        );
        assert_eq!(r.max_output_tokens, Some(16));
    }

    #[test]
    fn reasoning_models_put_a_reasoning_item_first() {
        let p =
            plan_of(json!({"model": "o4-mini", "input": "Why is the sky blue?", "stream": true}));
        let r = &p.response;
        assert_eq!(r.output.len(), 2);
        assert!(matches!(&r.output[0], OutputItem::Other(v) if v["type"] == "reasoning"));
        assert!(matches!(r.output[1], OutputItem::Message(_)));
        let usage = r.usage.unwrap();
        let reasoning = usage.output_tokens_details.reasoning_tokens;
        assert!(reasoning >= 128);
        let visible = super::super::count_tokens("o4-mini", &r.output_text()) as u64;
        assert_eq!(usage.output_tokens, reasoning + visible);
        assert_eq!(
            serde_json::to_value(r).unwrap()["reasoning"]["effort"],
            "medium"
        );
        assert_eq!(
            event_types(&p)[2..4],
            ["response.output_item.added", "response.output_item.done"]
        );
        let StreamEvent::OutputItemAdded(added) = &p.events[4] else {
            panic!("message added")
        };
        assert_eq!(added.output_index, 1);
        for (i, e) in p.events.iter().enumerate() {
            assert_eq!(e.sequence_number(), Some(i as u64));
        }

        // A limit smaller than the reasoning leaves no message.
        let starved =
            plan_of(json!({"model": "o4-mini", "input": "Why?", "max_output_tokens": 16}));
        assert_eq!(starved.response.status, ResponseStatus::Incomplete);
        assert_eq!(starved.response.output.len(), 1);
        let usage = starved.response.usage.unwrap();
        assert_eq!(
            (
                usage.output_tokens,
                usage.output_tokens_details.reasoning_tokens
            ),
            (16, 16)
        );
    }

    #[test]
    fn structured_output_validates_against_the_schema() {
        let schema = json!({"type": "object", "properties": {
            "category": {"type": "string", "enum": ["billing", "bug", "other"]},
            "priority": {"type": "string", "enum": ["low", "medium", "high"]},
            "needs_human": {"type": "boolean"}},
            "required": ["category", "priority", "needs_human"], "additionalProperties": false});
        let p = plan_of(json!({"model": "gpt-4o", "input": "My invoice is wrong",
            "text": {"format": {"type": "json_schema", "name": "ticket", "schema": schema, "strict": true}}}));
        let out: Value = serde_json::from_str(&p.response.output_text()).unwrap();
        assert!(jsonschema::is_valid(&schema, &out), "{out}");
        let v = serde_json::to_value(&p.response).unwrap();
        assert_eq!(v["text"]["format"]["name"], "ticket");

        let p = plan_of(json!({"model": "gpt-4o", "input": "list fruit",
            "text": {"format": {"type": "json_object"}}}));
        let out: Value = serde_json::from_str(&p.response.output_text()).unwrap();
        assert!(out.is_object());
    }

    #[test]
    fn function_call_then_tool_result_gives_text() {
        let p = plan_of(
            json!({"model": "gpt-4o", "input": "Weather in Paris?", "tools": [weather_tool()]}),
        );
        let OutputItem::FunctionCall(call) = &p.response.output[0] else {
            panic!("call")
        };
        assert_eq!(call.name, "get_weather");
        assert!(call.call_id.starts_with("call_") && call.call_id.len() == 29);
        assert!(call.id.as_deref().is_some_and(|id| id.starts_with("fc_")));
        let args: Value = serde_json::from_str(&call.arguments).unwrap();
        assert!(jsonschema::is_valid(&weather_tool()["parameters"], &args));
        assert_eq!(
            event_types(&p),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added"
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(std::iter::repeat_n(
                "response.function_call_arguments.delta".to_owned(),
                p.events.len() - 6
            ))
            .chain(
                [
                    "response.function_call_arguments.done",
                    "response.output_item.done",
                    "response.completed"
                ]
                .iter()
                .map(|s| s.to_string())
            )
            .collect::<Vec<_>>()
        );
        let StreamEvent::OutputItemAdded(added) = &p.events[2] else {
            panic!("added")
        };
        let OutputItem::FunctionCall(started) = &added.item else {
            panic!("fc")
        };
        assert_eq!(started.arguments, "");
        assert_eq!(started.status, Some(ItemStatus::InProgress));

        let call_item = serde_json::to_value(&p.response.output[0]).unwrap();
        let second = plan_of(
            json!({"model": "gpt-4o", "tools": [weather_tool()], "input": [
            {"role": "user", "content": "Weather in Paris?"}, call_item,
            {"type": "function_call_output", "call_id": call.call_id, "output": "{\"temp_c\":18}"}]}),
        );
        let text = second.response.output_text();
        assert!(
            text.contains("{\"temp_c\":18}") && text.contains("get_weather"),
            "{text}"
        );

        // Chained through previous_response_id the call is not in the input.
        let chained = plan_of(json!({"model": "gpt-4o", "previous_response_id": "resp_x",
            "tools": [weather_tool()],
            "input": [{"type": "function_call_output", "call_id": "call_1", "output": "18C"}]}));
        assert!(chained.response.output_text().contains("18C"));
    }

    #[test]
    fn tool_choice_none_and_named() {
        let none = plan_of(
            json!({"model": "gpt-4o", "input": "hi", "tools": [weather_tool()],
                                  "tool_choice": "none"}),
        );
        assert!(matches!(none.response.output[0], OutputItem::Message(_)));
        let time = json!({"type": "function", "name": "get_time", "parameters": {"type": "object",
                          "properties": {}, "required": [], "additionalProperties": false}});
        let named = plan_of(
            json!({"model": "gpt-4o", "input": "hi", "tools": [weather_tool(), time],
            "tool_choice": {"type": "function", "name": "get_time"}}),
        );
        let OutputItem::FunctionCall(call) = &named.response.output[0] else {
            panic!("call")
        };
        assert_eq!(
            (call.name.as_str(), call.arguments.as_str()),
            ("get_time", "{}")
        );
    }

    #[test]
    fn invalid_requests_get_the_api_errors() {
        let e = error_of(json!({"model": "gpt-4o", "input": "x", "bogus": 1}));
        assert_eq!(e.body.error.code.as_deref(), Some("unknown_parameter"));
        assert_eq!(e.body.error.param.as_deref(), Some("bogus"));
        let e = error_of(json!({"model": "gpt-4o", "input": "x", "max_tokens": 5}));
        assert_eq!(e.body.error.message, "Unknown parameter: 'max_tokens'.");

        let e = error_of(
            json!({"model": "gpt-4o", "input": "x", "response_format": {"type": "json_object"}}),
        );
        assert_eq!(e.status, 400);
        assert_eq!(e.body.error.code.as_deref(), Some("unsupported_parameter"));
        assert_eq!(e.body.error.param.as_deref(), Some("response_format"));
        assert_eq!(e.body.error.message, "Unsupported parameter: 'response_format'. In the Responses \
            API, this parameter has moved to 'text.format'. Try again with the new parameter. See the \
            API documentation for more information.");

        let e = error_of(json!({"model": "gpt-4o", "input": "x", "max_output_tokens": 8}));
        assert_eq!(
            e.body.error.message,
            "Invalid 'max_output_tokens': integer below minimum value. \
            Expected a value >= 16, but got 8 instead."
        );
        assert_eq!(
            e.body.error.code.as_deref(),
            Some("integer_below_min_value")
        );

        assert_eq!(
            error_of(json!({"input": "x"})).body.error.param.as_deref(),
            Some("model")
        );
        assert_eq!(
            error_of(json!({"model": "gpt-4o"}))
                .body
                .error
                .param
                .as_deref(),
            Some("input")
        );
        assert!(plan(
            &request(json!({"model": "gpt-4o", "previous_response_id": "resp_1"})),
            0
        )
        .is_ok());
        let e = error_of(json!({"model": "gpt-4o", "input": "x", "temperature": 2.5}));
        assert_eq!(e.body.error.param.as_deref(), Some("temperature"));
        let e = error_of(json!({"model": "gpt-4o", "input": [
            {"type": "function_call_output", "call_id": "call_zz", "output": "x"}]}));
        assert_eq!(e.body.error.param.as_deref(), Some("input"));

        // Every CreateResponse field of the spec is accepted.
        assert!(plan(&request(json!({"model": "gpt-4o", "input": "x", "background": false,
            "include": [], "service_tier": "auto", "prompt_cache_key": "k", "safety_identifier": "s",
            "truncation": "auto", "top_logprobs": 0, "max_tool_calls": 3, "user": "u",
            "reasoning": {"effort": "low"}, "stream_options": {"include_obfuscation": false},
            "prompt_cache_retention": "24h", "context_management": null, "moderation": null})), 0).is_ok());
    }
}
