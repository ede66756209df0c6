//! Responses API (`POST /v1/responses`): the request, the response object, its output
//! items and usage, and every streaming event of a text or function-call answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Extra;

/// `POST /v1/responses` request body. Every field is optional on the wire; fields not
/// modelled here are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Input>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextParam>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `input`: a plain string (one user message) or a list of input items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<InputItem>),
}

/// One input item. Messages may omit `type` ("easy" messages), so the typed variants
/// are tried first and anything else is kept verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputItem {
    Typed(TypedInputItem),
    Message(InputMessage),
    Other(Value),
}

/// Input items that carry their `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TypedInputItem {
    #[serde(rename = "message")]
    Message(InputMessage),
    #[serde(rename = "function_call")]
    FunctionCall(FunctionCall),
    #[serde(rename = "function_call_output")]
    FunctionCallOutput(FunctionCallOutput),
}

/// A message in the input: `{"role", "content"}` where content is a string or parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputMessage {
    pub role: String,
    pub content: MessageContent,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Message content: a string or a list of content parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// A content part (`input_text`, `input_image`, `input_file`, `output_text`, `refusal`,
/// …). Only `type` and `text` are modelled; everything else is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The result of a function call, sent back by the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallOutput {
    pub call_id: String,
    /// A string, or a list of content parts.
    pub output: Value,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `text`: output format and verbosity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextParam {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TextFormat>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `text.format`. The json_schema variant is flat: `name`, `schema`, `strict` sit on
/// the format object itself (unlike Chat's nested `response_format.json_schema`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TextFormat {
    #[serde(rename = "text")]
    Text,
    #[serde(rename = "json_object")]
    JsonObject,
    #[serde(rename = "json_schema")]
    JsonSchema(JsonSchemaFormat),
    #[serde(untagged)]
    Other(Value),
}

/// A named JSON Schema for structured output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub schema: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A tool offered to the model. Function tools are flat in the Responses API;
/// built-in tools are kept verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Tool {
    #[serde(rename = "function")]
    Function(FunctionTool),
    #[serde(untagged)]
    Other(Value),
}

/// `{"type":"function","name","description","parameters","strict"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionTool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The response object (`"object": "response"`). Keys the spec requires are always
/// serialised, as `null` where they are empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: String,
    pub object: String,
    pub created_at: i64,
    pub status: ResponseStatus,
    #[serde(default)]
    pub completed_at: Option<i64>,
    #[serde(default)]
    pub error: Option<ResponseError>,
    #[serde(default)]
    pub incomplete_details: Option<IncompleteDetails>,
    #[serde(default)]
    pub instructions: Option<Value>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    pub model: String,
    #[serde(default)]
    pub output: Vec<OutputItem>,
    #[serde(default)]
    pub parallel_tool_calls: bool,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub tool_choice: Value,
    #[serde(default)]
    pub tools: Vec<Value>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub truncation: Option<String>,
    /// Absent (not `null`) while in progress: the spec does not allow `null` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResponseUsage>,
    /// Absent when unset: the spec types it as a string, without `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Response {
    /// The concatenated text of every `output_text` part of every message item — what
    /// the official SDKs expose as `output_text`.
    pub fn output_text(&self) -> String {
        let mut out = String::new();
        for item in &self.output {
            if let OutputItem::Message(m) = item {
                for part in &m.content {
                    if let OutputContent::OutputText(t) = part {
                        out.push_str(&t.text);
                    }
                }
            }
        }
        out
    }
}

/// `status` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    Completed,
    Failed,
    InProgress,
    Cancelled,
    Queued,
    Incomplete,
}

/// `error` of a failed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseError {
    pub code: String,
    pub message: String,
}

/// `incomplete_details`: why the answer stopped early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncompleteDetails {
    pub reason: String,
}

/// An output item. Unknown item types (built-in tool calls, …) are kept verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OutputItem {
    #[serde(rename = "message")]
    Message(OutputMessage),
    #[serde(rename = "function_call")]
    FunctionCall(FunctionCall),
    #[serde(untagged)]
    Other(Value),
}

/// An assistant message in `output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputMessage {
    pub id: String,
    pub status: ItemStatus,
    pub role: String,
    pub content: Vec<OutputContent>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `status` of an output item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    InProgress,
    Completed,
    Incomplete,
}

/// A content part of an output message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OutputContent {
    #[serde(rename = "output_text")]
    OutputText(OutputText),
    #[serde(rename = "refusal")]
    Refusal { refusal: String },
    #[serde(untagged)]
    Other(Value),
}

/// `{"type":"output_text","text","annotations","logprobs"}` — all four required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputText {
    pub text: String,
    #[serde(default)]
    pub annotations: Vec<Value>,
    #[serde(default)]
    pub logprobs: Vec<Value>,
}

/// A function call: in `output` (from the model) or in `input` (history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub call_id: String,
    pub name: String,
    /// The arguments as a JSON-encoded string.
    pub arguments: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ItemStatus>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `usage` of a response. Both detail objects are required by the spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseUsage {
    pub input_tokens: u64,
    #[serde(default)]
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u64,
    #[serde(default)]
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u64,
}

/// `usage.input_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTokensDetails {
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
}

/// `usage.output_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: u64,
}

/// A streaming event (`stream: true`). Each is sent as `event: <type>` plus
/// `data: <json>`; `sequence_number` starts at 0 and grows by one per event. Event
/// types not modelled here are kept verbatim in `Other`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum StreamEvent {
    #[serde(rename = "response.created")]
    Created(ResponseSnapshot),
    #[serde(rename = "response.in_progress")]
    InProgress(ResponseSnapshot),
    #[serde(rename = "response.queued")]
    Queued(ResponseSnapshot),
    #[serde(rename = "response.completed")]
    Completed(ResponseSnapshot),
    #[serde(rename = "response.incomplete")]
    Incomplete(ResponseSnapshot),
    #[serde(rename = "response.failed")]
    Failed(ResponseSnapshot),
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded(OutputItemEvent),
    #[serde(rename = "response.output_item.done")]
    OutputItemDone(OutputItemEvent),
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded(ContentPartEvent),
    #[serde(rename = "response.content_part.done")]
    ContentPartDone(ContentPartEvent),
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta(TextDeltaEvent),
    #[serde(rename = "response.output_text.done")]
    OutputTextDone(TextDoneEvent),
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta(ArgumentsDeltaEvent),
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone(ArgumentsDoneEvent),
    #[serde(rename = "error")]
    Error(StreamErrorEvent),
    #[serde(untagged)]
    Other(Value),
}

impl StreamEvent {
    /// The event's `type`, which is also its SSE `event:` name.
    pub fn event_type(&self) -> &str {
        match self {
            Self::Created(_) => "response.created",
            Self::InProgress(_) => "response.in_progress",
            Self::Queued(_) => "response.queued",
            Self::Completed(_) => "response.completed",
            Self::Incomplete(_) => "response.incomplete",
            Self::Failed(_) => "response.failed",
            Self::OutputItemAdded(_) => "response.output_item.added",
            Self::OutputItemDone(_) => "response.output_item.done",
            Self::ContentPartAdded(_) => "response.content_part.added",
            Self::ContentPartDone(_) => "response.content_part.done",
            Self::OutputTextDelta(_) => "response.output_text.delta",
            Self::OutputTextDone(_) => "response.output_text.done",
            Self::FunctionCallArgumentsDelta(_) => "response.function_call_arguments.delta",
            Self::FunctionCallArgumentsDone(_) => "response.function_call_arguments.done",
            Self::Error(_) => "error",
            Self::Other(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }

    /// The event's `sequence_number`, where it has one.
    pub fn sequence_number(&self) -> Option<u64> {
        match self {
            Self::Created(e)
            | Self::InProgress(e)
            | Self::Queued(e)
            | Self::Completed(e)
            | Self::Incomplete(e)
            | Self::Failed(e) => Some(e.sequence_number),
            Self::OutputItemAdded(e) | Self::OutputItemDone(e) => Some(e.sequence_number),
            Self::ContentPartAdded(e) | Self::ContentPartDone(e) => Some(e.sequence_number),
            Self::OutputTextDelta(e) => Some(e.sequence_number),
            Self::OutputTextDone(e) => Some(e.sequence_number),
            Self::FunctionCallArgumentsDelta(e) => Some(e.sequence_number),
            Self::FunctionCallArgumentsDone(e) => Some(e.sequence_number),
            Self::Error(e) => Some(e.sequence_number),
            Self::Other(v) => v.get("sequence_number").and_then(Value::as_u64),
        }
    }

    /// True for the events that end a stream.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed(_) | Self::Incomplete(_) | Self::Failed(_) | Self::Error(_)
        )
    }
}

/// Lifecycle events carry a snapshot of the whole response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseSnapshot {
    pub sequence_number: u64,
    pub response: Box<Response>,
}

/// `response.output_item.added` / `.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputItemEvent {
    pub sequence_number: u64,
    pub output_index: u32,
    pub item: OutputItem,
}

/// `response.content_part.added` / `.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPartEvent {
    pub sequence_number: u64,
    pub item_id: String,
    pub output_index: u32,
    pub content_index: u32,
    pub part: OutputContent,
}

/// `response.output_text.delta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextDeltaEvent {
    pub sequence_number: u64,
    pub item_id: String,
    pub output_index: u32,
    pub content_index: u32,
    pub delta: String,
    #[serde(default)]
    pub logprobs: Vec<Value>,
}

/// `response.output_text.done`: the full text of the part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextDoneEvent {
    pub sequence_number: u64,
    pub item_id: String,
    pub output_index: u32,
    pub content_index: u32,
    pub text: String,
    #[serde(default)]
    pub logprobs: Vec<Value>,
}

/// `response.function_call_arguments.delta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArgumentsDeltaEvent {
    pub sequence_number: u64,
    pub item_id: String,
    pub output_index: u32,
    pub delta: String,
}

/// `response.function_call_arguments.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArgumentsDoneEvent {
    pub sequence_number: u64,
    pub item_id: String,
    pub output_index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

/// The flat `error` stream event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamErrorEvent {
    pub sequence_number: u64,
    #[serde(default)]
    pub code: Option<String>,
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_accepts_string_and_items_and_keeps_unknown_fields() {
        let raw = json!({
            "model": "gpt-4o",
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
                {"type": "function_call_output", "call_id": "call_1", "output": "{\"t\":3}"},
                {"type": "reasoning", "id": "rs_1", "summary": []}
            ],
            "service_tier": "flex",
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": true}, "verbosity": "low"}
        });
        let req: CreateResponse = serde_json::from_value(raw.clone()).unwrap();
        let Some(Input::Items(items)) = &req.input else {
            panic!("items")
        };
        assert!(matches!(items[0], InputItem::Message(_)));
        assert!(matches!(
            items[1],
            InputItem::Typed(TypedInputItem::Message(_))
        ));
        assert!(matches!(
            items[2],
            InputItem::Typed(TypedInputItem::FunctionCallOutput(_))
        ));
        assert!(matches!(items[3], InputItem::Other(_)));
        assert_eq!(req.extra["service_tier"], "flex");
        let Some(TextFormat::JsonSchema(f)) = req.text.as_ref().and_then(|t| t.format.as_ref())
        else {
            panic!("json_schema")
        };
        assert_eq!(f.strict, Some(true));
        // Round trip is lossless.
        assert_eq!(serde_json::to_value(&req).unwrap(), raw);

        let req: CreateResponse = serde_json::from_value(json!({"input": "hello"})).unwrap();
        assert_eq!(req.input, Some(Input::Text("hello".into())));
    }

    #[test]
    fn tools_keep_builtins_verbatim() {
        let raw = json!([{"type": "function", "name": "f", "parameters": {"type": "object"}},
                         {"type": "web_search", "search_context_size": "low"}]);
        let tools: Vec<Tool> = serde_json::from_value(raw.clone()).unwrap();
        assert!(matches!(&tools[0], Tool::Function(f) if f.name == "f"));
        assert!(matches!(&tools[1], Tool::Other(_)));
        assert_eq!(serde_json::to_value(&tools).unwrap(), raw);
    }

    #[test]
    fn stream_events_round_trip_and_unknown_events_are_kept() {
        let delta = json!({"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_1",
                           "output_index": 0, "content_index": 0, "delta": "Hi", "logprobs": []});
        let ev: StreamEvent = serde_json::from_value(delta.clone()).unwrap();
        assert_eq!(ev.event_type(), "response.output_text.delta");
        assert_eq!(ev.sequence_number(), Some(4));
        assert_eq!(serde_json::to_value(&ev).unwrap(), delta);

        let other = json!({"type": "response.reasoning_summary_text.delta", "sequence_number": 2, "delta": "x"});
        let ev: StreamEvent = serde_json::from_value(other.clone()).unwrap();
        assert!(matches!(ev, StreamEvent::Other(_)));
        assert_eq!(ev.event_type(), "response.reasoning_summary_text.delta");
        assert_eq!(serde_json::to_value(&ev).unwrap(), other);
    }

    #[test]
    fn response_parses_and_output_text_concatenates() {
        let raw = json!({"id":"resp_1","object":"response","created_at":1,"status":"completed",
            "error":null,"incomplete_details":null,"instructions":null,"model":"gpt-4o",
            "output":[{"type":"reasoning","id":"rs_1","summary":[]},
                      {"type":"message","id":"msg_1","status":"completed","role":"assistant",
                       "content":[{"type":"output_text","text":"Hello ","annotations":[],"logprobs":[]},
                                  {"type":"output_text","text":"world","annotations":[],"logprobs":[]}]}],
            "parallel_tool_calls":true,"tool_choice":"auto","tools":[],"temperature":1.0,"top_p":1.0,
            "metadata":{},"usage":{"input_tokens":3,"input_tokens_details":{"cached_tokens":1,"cache_write_tokens":0},
            "output_tokens":2,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":5}});
        let r: Response = serde_json::from_value(raw).unwrap();
        assert_eq!(r.output_text(), "Hello world");
        assert_eq!(r.usage.unwrap().input_tokens_details.cached_tokens, 1);
        assert!(matches!(r.output[0], OutputItem::Other(_)));
    }
}
