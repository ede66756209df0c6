//! Reading a conversation the way the model would: the text it sees, the last thing
//! the user asked, whether a tool result is waiting to be answered, and how many
//! input tokens it all costs.
//!
//! Token accounting follows OpenAI's published chat recipe, applied to both APIs:
//! every message costs its content tokens plus [`PER_MESSAGE`] (the chat-format
//! wrapper) plus the tokens of its role; every request costs [`REPLY_PRIMING`] for
//! the assistant turn it primes. Function-call items cost their name and arguments,
//! tool results their output, images a flat [`IMAGE_TOKENS`], each plus
//! [`PER_MESSAGE`]. Offered function tools cost the tokens of their JSON definition.

use serde_json::Value;

use super::tokens::Encoding;

/// Tokens the chat format adds around every message.
pub const PER_MESSAGE: usize = 3;
/// Tokens that prime the assistant's reply (`<|start|>assistant<|message|>`).
pub const REPLY_PRIMING: usize = 3;
/// Tokens charged per image part (the base cost of a low-detail image).
pub const IMAGE_TOKENS: usize = 85;

/// A conversation as the simulated model reads it.
#[derive(Debug, Clone)]
pub struct Conversation {
    encoding: Encoding,
    /// Every piece of text in order: the seed of the answer, so different
    /// conversations answer differently.
    pub transcript: String,
    /// The text of the last user message (what the answer talks about).
    pub last_user: String,
    /// A tool result that arrived after the last user message, with the name of the
    /// function that produced it when known.
    pub tool_result: Option<ToolResult>,
    /// `call_id`s of the function calls seen, with their names.
    calls: Vec<(String, String)>,
    /// Input tokens so far, before [`REPLY_PRIMING`].
    tokens: usize,
}

/// A tool's output waiting to be turned into an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub name: Option<String>,
    pub output: String,
}

impl Conversation {
    pub fn new(encoding: Encoding) -> Self {
        Self {
            encoding,
            transcript: String::new(),
            last_user: String::new(),
            tool_result: None,
            calls: Vec::new(),
            tokens: 0,
        }
    }

    /// A message with its text and the number of image parts it carries.
    pub fn message(&mut self, role: &str, text: &str, images: usize) {
        self.tokens += PER_MESSAGE
            + self.encoding.count(role)
            + self.encoding.count(text)
            + images * IMAGE_TOKENS;
        self.note(text);
        if role == "user" {
            self.last_user = text.to_owned();
            self.tool_result = None;
        }
    }

    /// A message's optional `name` field costs one token plus the name.
    pub fn name(&mut self, name: &str) {
        self.tokens += 1 + self.encoding.count(name);
    }

    /// A function call the model made earlier.
    pub fn function_call(&mut self, call_id: &str, name: &str, arguments: &str) {
        self.tokens += PER_MESSAGE + self.encoding.count(name) + self.encoding.count(arguments);
        self.calls.push((call_id.to_owned(), name.to_owned()));
        self.note(name);
        self.note(arguments);
    }

    /// A tool's result for `call_id`. Returns false when no call with that id was
    /// seen (the caller decides whether that is an error).
    pub fn tool_output(&mut self, call_id: &str, output: &str) -> bool {
        self.tokens += PER_MESSAGE + self.encoding.count(output);
        self.note(output);
        let name = self
            .calls
            .iter()
            .find(|(id, _)| id == call_id)
            .map(|(_, n)| n.clone());
        let known = name.is_some();
        self.tool_result = Some(ToolResult {
            name,
            output: output.to_owned(),
        });
        known
    }

    /// An item we do not read (reasoning, built-in tool calls, references): only the
    /// per-message wrapper is charged.
    pub fn opaque_item(&mut self) {
        self.tokens += PER_MESSAGE;
    }

    /// Offered tools cost the tokens of their JSON definition.
    pub fn tool_definition(&mut self, definition: &Value) {
        self.tokens += self.encoding.count(&definition.to_string());
    }

    /// Total input tokens of the request.
    pub fn input_tokens(&self) -> u64 {
        (self.tokens + REPLY_PRIMING) as u64
    }

    /// What the answer should be about: the last user message, or the whole
    /// transcript when there is none (e.g. instructions only).
    pub fn topic(&self) -> &str {
        if self.last_user.trim().is_empty() {
            &self.transcript
        } else {
            &self.last_user
        }
    }

    fn note(&mut self, text: &str) {
        self.transcript.push_str(text);
        self.transcript.push('\n');
    }
}

/// The text of a tool output given as a string, as content parts, or as any JSON.
pub fn output_text(output: &Value) -> String {
    match output {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_chat_recipe() {
        let mut c = Conversation::new(Encoding::O200kBase);
        c.message("user", "hello world", 0);
        // 3 wrapper + 1 ("user") + 2 ("hello world") + 3 priming.
        assert_eq!(c.input_tokens(), 9);
        c.message("user", "", 1);
        assert_eq!(c.input_tokens(), 9 + 3 + 1 + IMAGE_TOKENS as u64);
    }

    #[test]
    fn a_tool_result_counts_only_after_the_last_user_message() {
        let mut c = Conversation::new(Encoding::O200kBase);
        c.message("user", "weather in Paris?", 0);
        c.function_call("call_1", "get_weather", "{\"city\":\"Paris\"}");
        assert!(c.tool_output("call_1", "18C and sunny"));
        assert_eq!(
            c.tool_result.as_ref().and_then(|t| t.name.as_deref()),
            Some("get_weather")
        );
        assert!(!c.tool_output("call_2", "x"));
        c.message("user", "and tomorrow?", 0);
        assert!(c.tool_result.is_none());
        assert_eq!(c.topic(), "and tomorrow?");
    }
}
