//! OpenAPI conformance harness: validate JSON values against the component
//! schemas of OpenAI's spec (`../shared/openai-openapi/openapi.yaml`).
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "support/openapi.rs"]
//! mod openapi;
//!
//! openapi::assert_valid("Response", &body);
//! openapi::assert_valid_response_event(&event); // picks the schema from `type`
//! ```
//!
//! How it works: the YAML spec is parsed once into a `serde_json::Value` and
//! registered as one JSON Schema 2020-12 resource. A schema name `X` is checked
//! with a validator compiled from `{"$ref": "<spec>#/components/schemas/X"}`,
//! so every `$ref` inside the spec resolves within the same document. OpenAPI
//! keywords (`discriminator`, `example`, `x-*`, …) are unknown keywords that
//! JSON Schema ignores; `format` is an annotation (not asserted), as 2020-12
//! specifies. The one exception is OpenAPI 3.0's `nullable: true`, which this
//! 3.1 spec still uses ~110 times and which is translated to
//! `anyOf: [schema, {type: "null"}]` at load time (see `translate_nullable`).
//! Validators are compiled lazily and cached per schema name.
//!
//! # Where the spec is stricter than the live API
//!
//! The harness checks the spec as written, so the simulator must avoid a few
//! things the live API does:
//! - `Response.user` is a non-nullable string: omit `user` rather than send
//!   `"user": null`.
//! - `Response.usage` is not nullable: omit `usage` in the `response.created` /
//!   `response.in_progress` snapshots rather than send `"usage": null`.
//! - `Embedding.embedding` is only an array of numbers: a base64 answer
//!   (`encoding_format: "base64"`) does not match it. Check those with
//!   [`assert_valid_embedding_response`], which decodes the base64 (little-endian
//!   f32) back into numbers before validating.
//!
//! The spec is found at `$TOLLGATE_OPENAPI_SPEC` if set, else at
//! `<repository>/../shared/openai-openapi/openapi.yaml`.
//!
//! # Which schema each simulator shape must satisfy
//!
//! | Endpoint / shape | Schema |
//! |---|---|
//! | `POST /v1/responses` body (and `response` inside lifecycle events) | `Response` |
//! | stream event `response.created` | `ResponseCreatedEvent` |
//! | `response.in_progress` | `ResponseInProgressEvent` |
//! | `response.output_item.added` / `.done` | `ResponseOutputItemAddedEvent` / `ResponseOutputItemDoneEvent` (item: `OutputItem` → `OutputMessage` or `FunctionToolCall`) |
//! | `response.content_part.added` / `.done` | `ResponseContentPartAddedEvent` / `ResponseContentPartDoneEvent` |
//! | `response.output_text.delta` / `.done` | `ResponseTextDeltaEvent` / `ResponseTextDoneEvent` |
//! | `response.function_call_arguments.delta` / `.done` | `ResponseFunctionCallArgumentsDeltaEvent` / `ResponseFunctionCallArgumentsDoneEvent` |
//! | `response.completed` / `.incomplete` / `.failed` | `ResponseCompletedEvent` / `ResponseIncompleteEvent` / `ResponseFailedEvent` |
//! | `error` (in-stream) | `ResponseErrorEvent` |
//! | any of the above | also `ResponseStreamEvent` (the union) |
//! | `POST /v1/chat/completions` body | `CreateChatCompletionResponse` |
//! | chat stream chunk (incl. the usage-only chunk with `choices: []`) | `CreateChatCompletionStreamResponse` |
//! | `GET /v1/models` | `ListModelsResponse` |
//! | `GET /v1/models/{id}` | `Model` |
//! | `POST /v1/embeddings` (float and base64) | `CreateEmbeddingResponse` |
//! | `POST /v1/moderations` | `CreateModerationResponse` |
//! | every non-2xx JSON body | `ErrorResponse` |
//!
//! [`response_event_schema`](Spec::response_event_schema) derives the event
//! type → schema name mapping from the spec's `ResponseStreamEvent` union.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, Registry, ValidationError, Validator};
use serde_json::Value;

/// Environment variable that overrides where the spec is read from.
pub const SPEC_ENV: &str = "TOLLGATE_OPENAPI_SPEC";

/// The base URI under which the spec document is registered. Never fetched.
const SPEC_URI: &str = "https://tollgate.invalid/openai-openapi/openapi.yaml";

/// Path of OpenAI's OpenAPI spec: `$TOLLGATE_OPENAPI_SPEC`, else
/// `<repo>/../shared/openai-openapi/openapi.yaml` (the `shared/` folder sits
/// beside the clone). Panics with a clear message if the file is missing.
pub fn spec_path() -> PathBuf {
    let path = match std::env::var_os(SPEC_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/openai-openapi/openapi.yaml"),
    };
    assert!(
        path.is_file(),
        "OpenAI OpenAPI spec not found at {}.\n\
         Expected the `shared/` folder beside the repository clone \
         (<clone>/../shared/openai-openapi/openapi.yaml), \
         or set {SPEC_ENV} to the path of openapi.yaml.",
        path.display()
    );
    path
}

/// The whole spec as JSON, parsed once per test binary.
pub fn spec_document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = spec_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let JsonFromYaml(mut doc) = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {} as YAML: {e}", path.display()));
        translate_nullable(&mut doc);
        doc
    })
}

/// The spec is OpenAPI 3.1 but still says `nullable: true` (OpenAPI 3.0) in
/// about a hundred places, e.g. chat chunks' `finish_reason` and `usage`. JSON
/// Schema ignores that keyword, so it would reject the nulls the spec means to
/// allow. Rewrite each `{…, nullable: true}` schema as
/// `{anyOf: [{…}, {type: "null"}]}` (and drop `nullable: false`). Values that
/// are data rather than schemas (`example`, `default`, `enum`, `x-*`, …) are
/// left alone.
fn translate_nullable(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(translate_nullable),
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let is_data = matches!(
                    key.as_str(),
                    "example" | "examples" | "default" | "const" | "enum"
                ) || key.starts_with("x-");
                if !is_data {
                    translate_nullable(child);
                }
            }
            if let Some(Value::Bool(nullable)) = map.get("nullable") {
                let nullable = *nullable;
                map.remove("nullable");
                if nullable {
                    let inner = Value::Object(std::mem::take(map));
                    map.insert(
                        "anyOf".to_owned(),
                        Value::Array(vec![inner, serde_json::json!({"type": "null"})]),
                    );
                }
            }
        }
        _ => {}
    }
}

/// A YAML document read straight into a `serde_json::Value`. Neither
/// `serde_yaml_ng::Value` nor `serde_json::Value` can hold the spec as is: it
/// has integers beyond 64 bits (`minimum: -9223372036854776000` on chat
/// `seed`), kept here as the nearest `f64`, and non-string map keys (HTTP
/// status codes), turned into strings as JSON requires.
struct JsonFromYaml(Value);

impl<'de> serde::Deserialize<'de> for JsonFromYaml {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonFromYamlVisitor).map(JsonFromYaml)
    }
}

struct JsonFromYamlVisitor;

impl<'de> serde::de::Visitor<'de> for JsonFromYamlVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    #[allow(clippy::cast_precision_loss)]
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or_else(|_| Value::from(v as f64), Value::from))
    }
    #[allow(clippy::cast_precision_loss)]
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(u64::try_from(v).map_or_else(|_| Value::from(v as f64), Value::from))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // NaN/inf have no JSON form; the spec has none, map them to null.
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(JsonFromYaml(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some((JsonFromYaml(key), JsonFromYaml(value))) = map.next_entry()? {
            let key = match key {
                Value::String(s) => s,
                other => other.to_string(),
            };
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The spec and a cache of compiled validators, one per schema name.
pub struct Spec {
    document: &'static Value,
    registry: Registry<'static>,
    validators: Mutex<HashMap<String, Arc<Validator>>>,
    /// How long parsing the YAML and preparing the registry took.
    pub load_time: Duration,
}

impl Spec {
    /// The process-wide spec, loaded on first use.
    pub fn load() -> &'static Spec {
        static SPEC: OnceLock<Spec> = OnceLock::new();
        SPEC.get_or_init(|| {
            let started = Instant::now();
            let document = spec_document();
            let registry = Registry::new()
                .draft(Draft::Draft202012)
                .add(SPEC_URI, document)
                .and_then(|builder| builder.prepare())
                .unwrap_or_else(|e| panic!("registering the OpenAPI spec: {e}"));
            Spec {
                document,
                registry,
                validators: Mutex::new(HashMap::new()),
                load_time: started.elapsed(),
            }
        })
    }

    /// The whole spec document.
    pub fn document(&self) -> &'static Value {
        self.document
    }

    /// `#/components/schemas/<name>`, if the spec has it.
    pub fn schema(&self, name: &str) -> Option<&'static Value> {
        self.document
            .pointer(&format!("/components/schemas/{}", escape_pointer(name)))
    }

    /// The compiled validator for `#/components/schemas/<name>`.
    /// Panics if the spec has no such schema or it does not compile.
    pub fn validator(&self, name: &str) -> Arc<Validator> {
        if let Some(v) = self.validators.lock().unwrap().get(name) {
            return Arc::clone(v);
        }
        assert!(
            self.schema(name).is_some(),
            "the OpenAPI spec has no component schema {name:?}"
        );
        // Compiled outside the lock; a concurrent duplicate compile is harmless.
        let wrapper = serde_json::json!({
            "$ref": format!("{SPEC_URI}#/components/schemas/{}", escape_pointer(name))
        });
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .with_registry(&self.registry)
            .build(&wrapper)
            .unwrap_or_else(|e| panic!("compiling schema {name:?} from the OpenAPI spec: {e}"));
        let validator = Arc::new(validator);
        self.validators
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_insert(validator)
            .clone()
    }

    /// Validate `instance` against `#/components/schemas/<schema_name>`.
    /// On failure, returns one human-readable line per error (with the
    /// JSON pointer into the instance and the failing schema location); for
    /// `anyOf`/`oneOf` failures the errors of the relevant branches follow,
    /// indented.
    pub fn validate(&self, schema_name: &str, instance: &Value) -> Result<(), Vec<String>> {
        let validator = self.validator(schema_name);
        if validator.is_valid(instance) {
            return Ok(());
        }
        let mut lines = Vec::new();
        for error in validator.iter_errors(instance) {
            describe(&error, 0, &mut lines);
        }
        if lines.is_empty() {
            lines.push("invalid (the validator reported no details)".to_owned());
        }
        Err(lines)
    }

    /// Whether `instance` is valid against `schema_name`.
    pub fn is_valid(&self, schema_name: &str, instance: &Value) -> bool {
        self.validator(schema_name).is_valid(instance)
    }

    /// The schema name for a Responses stream event `type` (e.g.
    /// `"response.output_text.delta"` → `"ResponseTextDeltaEvent"`), read from
    /// the spec's `ResponseStreamEvent` union.
    pub fn response_event_schema(&self, event_type: &str) -> Option<&'static str> {
        static MAP: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
        let map = MAP.get_or_init(|| {
            let doc = spec_document();
            let union = doc
                .pointer("/components/schemas/ResponseStreamEvent/anyOf")
                .and_then(Value::as_array)
                .expect("ResponseStreamEvent.anyOf in the spec");
            let mut map = HashMap::new();
            for branch in union {
                let Some(name) = branch
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                else {
                    continue;
                };
                let types = doc
                    .pointer(&format!("/components/schemas/{name}/properties/type/enum"))
                    .and_then(Value::as_array);
                for t in types.into_iter().flatten().filter_map(Value::as_str) {
                    map.insert(t.to_owned(), name);
                }
            }
            map
        });
        map.get(event_type).copied()
    }
}

/// Validate against `schema_name`, or panic listing every error and the
/// instance, pretty-printed.
#[track_caller]
pub fn assert_valid(schema_name: &str, instance: &Value) {
    if let Err(errors) = Spec::load().validate(schema_name, instance) {
        panic!(
            "{}",
            report(schema_name, instance, &errors, "does not validate against")
        );
    }
}

/// Assert that `instance` is rejected by `schema_name` (for negative tests);
/// returns the errors so a test can check they mention what it broke.
#[track_caller]
pub fn assert_invalid(schema_name: &str, instance: &Value) -> Vec<String> {
    match Spec::load().validate(schema_name, instance) {
        Ok(()) => panic!(
            "expected the instance to be rejected by #/components/schemas/{schema_name}, \
             but it validates:\n{}",
            pretty(instance)
        ),
        Err(errors) => errors,
    }
}

/// Validate a `/v1/embeddings` body against `CreateEmbeddingResponse`. The
/// spec types `embedding` as an array of numbers only; a base64 `embedding`
/// (what the SDKs ask for by default) is first decoded as little-endian f32
/// values, so this also checks the base64 is well formed. Returns the
/// embeddings as float vectors.
#[track_caller]
pub fn assert_valid_embedding_response(body: &Value) -> Vec<Vec<f32>> {
    use base64::Engine as _;
    let mut decoded = body.clone();
    let mut vectors = Vec::new();
    if let Some(items) = decoded.get_mut("data").and_then(Value::as_array_mut) {
        for (i, item) in items.iter_mut().enumerate() {
            let Some(embedding) = item.get_mut("embedding") else {
                continue;
            };
            let floats: Vec<f32> = match &*embedding {
                Value::String(b64) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_else(|e| panic!("data[{i}].embedding is not valid base64: {e}"));
                    assert!(
                        bytes.len() % 4 == 0,
                        "data[{i}].embedding: {} bytes of base64 is not a whole number of f32s",
                        bytes.len()
                    );
                    let floats: Vec<f32> = bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    *embedding =
                        Value::Array(floats.iter().map(|&f| Value::from(f64::from(f))).collect());
                    floats
                }
                #[allow(clippy::cast_possible_truncation)]
                Value::Array(numbers) => numbers
                    .iter()
                    .filter_map(Value::as_f64)
                    .map(|f| f as f32)
                    .collect(),
                _ => Vec::new(),
            };
            vectors.push(floats);
        }
    }
    assert_valid("CreateEmbeddingResponse", &decoded);
    vectors
}

/// Validate one Responses stream event: against the specific schema for its
/// `type` (clear errors) and against the `ResponseStreamEvent` union. Returns
/// the specific schema's name.
#[track_caller]
pub fn assert_valid_response_event(event: &Value) -> &'static str {
    let spec = Spec::load();
    let event_type = event
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("stream event without a string `type`:\n{}", pretty(event)));
    let name = spec.response_event_schema(event_type).unwrap_or_else(|| {
        panic!(
            "event type {event_type:?} is not in the spec's ResponseStreamEvent union:\n{}",
            pretty(event)
        )
    });
    assert_valid(name, event);
    assert_valid("ResponseStreamEvent", event);
    name
}

/// Check a whole Responses SSE body (`event:` + `data:` frames): every event
/// validates, `event:` equals the JSON `type`, `sequence_number` runs 0, 1, 2…,
/// and there is no `[DONE]`. Returns the parsed events.
#[track_caller]
pub fn assert_valid_responses_sse(body: &str) -> Vec<Value> {
    let mut events = Vec::new();
    for (i, frame) in sse_frames(body).into_iter().enumerate() {
        let data = frame
            .data
            .unwrap_or_else(|| panic!("SSE frame {i} has no data: line"));
        assert_ne!(data, "[DONE]", "Responses streams do not end with [DONE]");
        let event: Value = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("SSE frame {i}: data is not JSON ({e}): {data}"));
        let event_type = event.get("type").and_then(Value::as_str);
        assert_eq!(
            frame.event.as_deref(),
            event_type,
            "SSE frame {i}: `event:` must equal the JSON `type`"
        );
        assert_valid_response_event(&event);
        assert_eq!(
            event.get("sequence_number").and_then(Value::as_u64),
            Some(i as u64),
            "SSE frame {i}: sequence_number must count from 0 without gaps:\n{}",
            pretty(&event)
        );
        events.push(event);
    }
    events
}

/// Check a whole Chat Completions SSE body (`data:`-only frames ending in
/// `data: [DONE]`): every chunk validates against
/// `CreateChatCompletionStreamResponse`. Returns the parsed chunks (without
/// the `[DONE]`).
#[track_caller]
pub fn assert_valid_chat_sse(body: &str) -> Vec<Value> {
    let frames = sse_frames(body);
    let (last, chunks) = frames.split_last().expect("empty chat stream");
    assert_eq!(
        last.data.as_deref(),
        Some("[DONE]"),
        "chat streams end with data: [DONE]"
    );
    chunks
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            assert_eq!(
                frame.event, None,
                "chat SSE frame {i} must not have an event: line"
            );
            let data = frame
                .data
                .as_deref()
                .unwrap_or_else(|| panic!("chat SSE frame {i}: no data"));
            let chunk: Value = serde_json::from_str(data)
                .unwrap_or_else(|e| panic!("chat SSE frame {i}: data is not JSON ({e}): {data}"));
            assert_valid("CreateChatCompletionStreamResponse", &chunk);
            chunk
        })
        .collect()
}

/// One SSE frame: its `event:` and (joined) `data:` fields.
#[derive(Debug, Default)]
pub struct SseFrame {
    pub event: Option<String>,
    pub data: Option<String>,
}

/// Minimal SSE splitter for tests (LF or CRLF; comments and other fields ignored).
pub fn sse_frames(body: &str) -> Vec<SseFrame> {
    let mut frames = Vec::new();
    let mut current = SseFrame::default();
    let mut has_fields = false;
    for line in body.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.is_empty() {
            if has_fields {
                frames.push(std::mem::take(&mut current));
                has_fields = false;
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => current.event = Some(value.to_owned()),
            "data" => {
                current.data = Some(match current.data.take() {
                    Some(prev) => format!("{prev}\n{value}"),
                    None => value.to_owned(),
                });
            }
            _ => {}
        }
        has_fields = true;
    }
    if has_fields {
        frames.push(current);
    }
    frames
}

fn report(schema_name: &str, instance: &Value, errors: &[String], verb: &str) -> String {
    let mut out = format!(
        "instance {verb} #/components/schemas/{schema_name} ({} error(s)):\n",
        errors.len()
    );
    for e in errors {
        let _ = writeln!(out, "  - {e}");
    }
    let _ = write!(out, "instance:\n{}", pretty(instance));
    out
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

const MAX_DEPTH: usize = 4;

/// One line for `error`, then (for anyOf/oneOf) the errors of each branch that
/// is plausibly the intended one: a branch that fails only on the instance's
/// `type` discriminator is skipped unless every branch does.
fn describe(error: &ValidationError<'_>, depth: usize, lines: &mut Vec<String>) {
    let indent = "    ".repeat(depth);
    let at = match error.instance_path().as_str() {
        "" => "/".to_owned(),
        p => p.to_owned(),
    };
    let message = if error.instance().to_string().len() <= 120 {
        error.to_string()
    } else {
        error.masked().to_string()
    };
    lines.push(format!(
        "{indent}at {at}: {message} [schema: {}]",
        error.evaluation_path().as_str()
    ));
    let context = match error.kind() {
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            context
        }
        _ => return,
    };
    if depth >= MAX_DEPTH {
        return;
    }
    let type_path = format!("{}/type", error.instance_path().as_str());
    let wrong_discriminator = |branch: &Vec<ValidationError<'static>>| {
        branch.iter().any(|e| {
            e.instance_path().as_str() == type_path
                && matches!(
                    e.kind(),
                    ValidationErrorKind::Enum { .. } | ValidationErrorKind::Constant { .. }
                )
        })
    };
    let relevant: Vec<(usize, &Vec<ValidationError<'static>>)> = context
        .iter()
        .enumerate()
        .filter(|(_, branch)| !wrong_discriminator(branch))
        .collect();
    let shown: Vec<(usize, &Vec<ValidationError<'static>>)> = if relevant.is_empty() {
        let _ = lines.last_mut().map(|l| {
            l.push_str(" (no branch accepts this `type`)");
        });
        context.iter().enumerate().take(3).collect()
    } else {
        relevant
    };
    for (i, branch) in shown {
        lines.push(format!("{indent}  branch {i}:"));
        for e in branch {
            describe(e, depth + 1, lines);
        }
    }
}
