//! Structured-output and function-tool schemas, checked in stage 3 (preflight) so a
//! mistake is refused before it reaches (and is billed by) the upstream.
//!
//! Where schemas are: Responses `text.format` (json_schema: `schema`, `strict`) and
//! function tools' `parameters` (`strict` beside them); Chat `response_format`
//! (json_schema: `json_schema.schema`, `json_schema.strict`) and
//! `tools[i].function.parameters` (`strict` beside them). Each is checked as a JSON
//! Schema (draft 2020-12, as OpenAI reads them) with the `jsonschema` crate — against
//! the meta-schema, then compiled (unresolvable `$ref`s, bad patterns) — and, when
//! `strict` is `true`, against OpenAI's strict-mode rules: the root is an object, and
//! every object schema lists all of its properties in `required` and sets
//! `additionalProperties: false`. An error is a 400 whose `param` is the path of the
//! offending part (`text.format.schema/properties/address`).
//!
//! `response_format` on `/v1/responses` is not a Responses parameter (the upstream
//! answers 400); by default it is moved into `text.format` — Chat's nested
//! `{type, json_schema: {name, schema, strict}}` flattened to Responses'
//! `{type: "json_schema", name, schema, strict}` — and the answer carries an
//! `x-tollgate-warning` header saying so (`preflight.response_format_on_responses`).
//!
//! Only requests that have `text`, `response_format` or `tools` (preflight notes it in
//! its single parse) are parsed again here, and only once per distinct set of them: the
//! digests of sets found valid are kept ([`Checked`], bounded), so a client sending the
//! same tools with every request pays for one check.

use std::borrow::Cow;
use std::collections::HashSet;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::caps;
use crate::config::{PreflightConfig, ResponseFormatMode};
use crate::error::GatewayError;
use crate::preflight::{Endpoint, Preflight};

/// The warning sent with a translated `response_format`.
const TRANSLATED: &str = "response_format is not a Responses API parameter; tollgate moved it \
                          to text.format. Send text.format instead.";

/// Errors reported per schema, at most (the first few say enough).
const MAX_ERRORS: usize = 3;

/// Digests kept at most; the set is emptied when full (a cache, not a record).
const CHECKED_MAX: usize = 4096;

/// Digests of request schema parts already checked and found valid.
#[derive(Debug, Default)]
pub struct Checked {
    seen: Mutex<HashSet<u64>>,
}

impl Checked {
    fn contains(&self, digest: u64) -> bool {
        self.seen.lock().contains(&digest)
    }

    fn insert(&self, digest: u64) {
        let mut seen = self.seen.lock();
        if seen.len() >= CHECKED_MAX {
            seen.clear();
        }
        seen.insert(digest);
    }
}

/// Translates `response_format` on Responses and checks every schema of the request.
pub fn run(
    config: &PreflightConfig,
    endpoint: Endpoint,
    mut preflight: Preflight,
    checked: &Checked,
) -> Result<Preflight, GatewayError> {
    if endpoint == Endpoint::Responses && preflight.has_response_format {
        match config.response_format_on_responses {
            ResponseFormatMode::Reject => {
                return Err(GatewayError::InvalidParameter {
                    message: "Unsupported parameter: 'response_format'. In the Responses API, \
                              this parameter has moved to 'text.format'. Send text.format \
                              (flat: {\"type\": \"json_schema\", \"name\", \"schema\", \
                              \"strict\"})."
                        .into(),
                    param: "response_format".into(),
                    code: "unsupported_parameter",
                });
            }
            ResponseFormatMode::Translate => {
                preflight.body = translate_response_format(&preflight.body)?;
                // The digest was of the body as sent.
                preflight.schema_digest = None;
                preflight.headers.push((
                    HeaderName::from_static("x-tollgate-warning"),
                    HeaderValue::from_static(TRANSLATED),
                ));
            }
        }
    }
    if config.schemas && preflight.has_schemas {
        match preflight.schema_digest {
            Some(d) if checked.contains(d) => {}
            digest => {
                check(endpoint, &preflight.body)?;
                if let Some(d) = digest {
                    checked.insert(d);
                }
            }
        }
    }
    Ok(preflight)
}

/// Moves a Responses body's `response_format` into `text.format` (see the module docs).
/// Every other member keeps its bytes.
pub fn translate_response_format(body: &[u8]) -> Result<Bytes, GatewayError> {
    let mut members = caps::split(body)?;
    let Some(at) = members.iter().position(|(k, _)| k == "response_format") else {
        return Ok(Bytes::copy_from_slice(body));
    };
    let (_, raw) = members.remove(at);
    let format = to_text_format(serde_json::from_str(raw.get()).unwrap_or(Value::Null));
    let refuse_both = || GatewayError::InvalidParameter {
        message: "Both response_format and text.format were sent. Send only text.format (the \
                  Responses API's place for it)."
            .into(),
        param: "response_format".into(),
        code: "unsupported_parameter",
    };
    let text = match members.iter().position(|(k, _)| k == "text") {
        Some(i) => {
            let (_, raw) = members.remove(i);
            let mut text: Map<String, Value> =
                serde_json::from_str(raw.get()).map_err(|_| GatewayError::InvalidRequest {
                    message: "text must be an object.".into(),
                    param: Some("text"),
                })?;
            if text.get("format").is_some_and(|f| !f.is_null()) {
                return Err(refuse_both());
            }
            text.insert("format".into(), format);
            Value::Object(text)
        }
        None => serde_json::json!({ "format": format }),
    };
    let raw = serde_json::to_string(&text)
        .ok()
        .and_then(|t| RawValue::from_string(t).ok())
        .ok_or(GatewayError::Internal)?;
    members.push((Cow::Borrowed("text"), raw));
    Ok(caps::join(&members))
}

/// Chat's `response_format` as Responses' `text.format`: a json_schema's nested
/// `json_schema` members move up one level; other shapes stay as they are.
fn to_text_format(rf: Value) -> Value {
    let Value::Object(mut rf) = rf else {
        return rf;
    };
    if rf.get("type").and_then(Value::as_str) == Some("json_schema") {
        if let Some(Value::Object(inner)) = rf.remove("json_schema") {
            for (k, v) in inner {
                rf.entry(k).or_insert(v);
            }
        }
    }
    Value::Object(rf)
}

/// One schema found in a request.
struct Found<'a> {
    schema: &'a Value,
    /// The path of the schema in the request, e.g. `text.format.schema`.
    at: String,
    strict: bool,
    /// How OpenAI names it in messages: `response_format 'x'` or `function 'f'`.
    what: String,
    code: &'static str,
}

/// Checks every schema of a Responses or Chat body.
pub fn check(endpoint: Endpoint, body: &[u8]) -> Result<(), GatewayError> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    for f in find(endpoint, &v) {
        check_one(&f)?;
    }
    Ok(())
}

fn find(endpoint: Endpoint, v: &Value) -> Vec<Found<'_>> {
    let mut out = Vec::new();
    let is_true = |v: Option<&Value>| v.and_then(Value::as_bool) == Some(true);
    let name_of = |o: &Value| {
        o.get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let format = match endpoint {
        Endpoint::Responses => v
            .pointer("/text/format")
            .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
            .map(|f| (f, "text.format")),
        Endpoint::ChatCompletions => v
            .get("response_format")
            .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
            .and_then(|f| f.get("json_schema"))
            .map(|f| (f, "response_format.json_schema")),
        _ => None,
    };
    if let Some((f, at)) = format {
        if let Some(schema) = f.get("schema") {
            out.push(Found {
                schema,
                at: format!("{at}.schema"),
                strict: is_true(f.get("strict")),
                what: format!("response_format '{}'", name_of(f)),
                code: "invalid_json_schema",
            });
        }
    }
    let tools = v.get("tools").and_then(Value::as_array);
    for (i, tool) in tools.into_iter().flatten().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            continue;
        }
        let (f, at) = match endpoint {
            Endpoint::ChatCompletions => match tool.get("function") {
                Some(f) => (f, format!("tools[{i}].function")),
                None => continue,
            },
            _ => (tool, format!("tools[{i}]")),
        };
        if let Some(schema) = f.get("parameters").filter(|p| !p.is_null()) {
            out.push(Found {
                schema,
                at: format!("{at}.parameters"),
                strict: is_true(f.get("strict")),
                what: format!("function '{}'", name_of(f)),
                code: "invalid_function_parameters",
            });
        }
    }
    out
}

fn check_one(f: &Found<'_>) -> Result<(), GatewayError> {
    let refuse = |pointer: &str, detail: String| GatewayError::InvalidParameter {
        message: format!(
            "Invalid schema for {}: {detail} (at {}{pointer}). Fix the schema and retry.",
            f.what, f.at
        ),
        param: format!("{}{pointer}", f.at),
        code: f.code,
    };
    let meta = jsonschema::draft202012::meta::validator();
    let errors: Vec<(String, String)> = meta
        .iter_errors(f.schema)
        .take(MAX_ERRORS)
        .map(|e| (e.instance_path().as_str().to_owned(), e.to_string()))
        .collect();
    if let Some((pointer, _)) = errors.first() {
        let detail = errors
            .iter()
            .map(|(p, m)| {
                if p.is_empty() {
                    m.clone()
                } else {
                    format!("{p}: {m}")
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(refuse(
            pointer,
            format!("not a valid JSON Schema: {detail}"),
        ));
    }
    if let Err(e) = jsonschema::draft202012::new(f.schema) {
        let pointer = e.instance_path().as_str().to_owned();
        return Err(refuse(&pointer, format!("the schema cannot be used: {e}")));
    }
    if f.strict {
        if f.schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(refuse(
                "",
                "in strict mode the root schema must be of 'type: \"object\"'".into(),
            ));
        }
        strict_rules(f.schema, &mut String::new()).map_err(|(p, m)| refuse(&p, m))?;
    }
    Ok(())
}

/// OpenAI's strict-mode rules on every object schema below `schema` (at `pointer`).
fn strict_rules(schema: &Value, pointer: &mut String) -> Result<(), (String, String)> {
    let Value::Object(o) = schema else {
        return Ok(());
    };
    let is_object = o.get("type").is_some_and(|t| match t {
        Value::String(s) => s == "object",
        Value::Array(a) => a.iter().any(|t| t == "object"),
        _ => false,
    }) || o.contains_key("properties");
    if is_object {
        if o.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Err((
                pointer.clone(),
                "in strict mode 'additionalProperties' is required to be supplied and to be \
                 false"
                    .into(),
            ));
        }
        let required: Vec<&str> = o
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(Value::Object(props)) = o.get("properties") {
            let missing: Vec<&str> = props
                .keys()
                .map(String::as_str)
                .filter(|k| !required.contains(k))
                .collect();
            if !missing.is_empty() {
                return Err((
                    pointer.clone(),
                    format!(
                        "in strict mode 'required' is required to be supplied and to be an \
                         array including every key in properties. Missing '{}' (make a \
                         property optional with a \"null\" type instead)",
                        missing.join("', '")
                    ),
                ));
            }
        }
    }
    // Every place a subschema may sit.
    for key in ["properties", "$defs", "definitions"] {
        if let Some(Value::Object(subs)) = o.get(key) {
            for (name, sub) in subs {
                descend(sub, pointer, &[key, name])?;
            }
        }
    }
    for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(subs)) = o.get(key) {
            for (i, sub) in subs.iter().enumerate() {
                descend(sub, pointer, &[key, &i.to_string()])?;
            }
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub @ Value::Object(_)) = o.get(key) {
            descend(sub, pointer, &[key])?;
        }
    }
    Ok(())
}

fn descend(sub: &Value, pointer: &mut String, parts: &[&str]) -> Result<(), (String, String)> {
    let len = pointer.len();
    for p in parts {
        pointer.push('/');
        pointer.push_str(&p.replace('~', "~0").replace('/', "~1"));
    }
    let r = strict_rules(sub, pointer);
    pointer.truncate(len);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(endpoint: Endpoint, body: Value) -> GatewayError {
        check(endpoint, &serde_json::to_vec(&body).unwrap()).unwrap_err()
    }

    fn ok(endpoint: Endpoint, body: Value) {
        check(endpoint, &serde_json::to_vec(&body).unwrap()).unwrap();
    }

    fn strict_person() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
                    "required": ["city", "zip"],
                    "additionalProperties": false
                }
            },
            "required": ["name", "address"],
            "additionalProperties": false
        })
    }

    #[test]
    fn valid_strict_schemas_pass_in_both_apis() {
        ok(
            Endpoint::Responses,
            json!({"text": {"format": {"type": "json_schema", "name": "p", "strict": true, "schema": strict_person()}}}),
        );
        ok(
            Endpoint::ChatCompletions,
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": true, "schema": strict_person()}},
                   "tools": [{"type": "function", "function": {"name": "f", "strict": true, "parameters": strict_person()}}]}),
        );
        // Not strict: optional properties and open objects are fine.
        ok(
            Endpoint::Responses,
            json!({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}]}),
        );
    }

    #[test]
    fn strict_rules_name_the_offending_path() {
        let mut s = strict_person();
        s["properties"]["address"]["required"] = json!(["city"]);
        let e = err(
            Endpoint::Responses,
            json!({"text": {"format": {"type": "json_schema", "name": "p", "strict": true, "schema": s}}}),
        );
        assert_eq!(e.param(), Some("text.format.schema/properties/address"));
        assert_eq!(e.code(), Some("invalid_json_schema"));
        assert!(e.message().contains("Missing 'zip'"), "{}", e.message());
        assert!(
            e.message().contains("response_format 'p'"),
            "{}",
            e.message()
        );

        let mut s = strict_person();
        s.as_object_mut().unwrap().remove("additionalProperties");
        let e = err(
            Endpoint::ChatCompletions,
            json!({"tools": [{"type": "function", "function": {"name": "get", "strict": true, "parameters": s}}]}),
        );
        assert_eq!(e.param(), Some("tools[0].function.parameters"));
        assert_eq!(e.code(), Some("invalid_function_parameters"));
        assert!(
            e.message().contains("additionalProperties"),
            "{}",
            e.message()
        );

        let e = err(
            Endpoint::ChatCompletions,
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {"type": "array"}}}}),
        );
        assert_eq!(e.param(), Some("response_format.json_schema.schema"));
    }

    #[test]
    fn schemas_that_are_not_json_schema_are_refused_with_their_path() {
        let e = err(
            Endpoint::Responses,
            json!({"text": {"format": {"type": "json_schema", "name": "p",
                   "schema": {"type": "object", "properties": {"age": {"type": "integr"}}}}}}),
        );
        assert_eq!(e.param(), Some("text.format.schema/properties/age/type"));
        assert!(
            e.message().contains("not a valid JSON Schema"),
            "{}",
            e.message()
        );
        let e = err(
            Endpoint::Responses,
            json!({"tools": [{"type": "web_search"}, {"type": "function", "name": "f",
                   "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}]}),
        );
        assert!(
            e.param().unwrap().starts_with("tools[1].parameters"),
            "{:?}",
            e.param()
        );
        // Bodies without schemas, or with other formats, pass.
        ok(
            Endpoint::Responses,
            json!({"text": {"format": {"type": "text"}}, "input": "x"}),
        );
        ok(
            Endpoint::ChatCompletions,
            json!({"response_format": {"type": "json_object"}}),
        );
    }

    #[test]
    fn response_format_moves_to_text_format_flattened() {
        let body = br#"{"model":"gpt-4o","input":"h\u00e9","response_format":{"type":"json_schema","json_schema":{"name":"p","schema":{"type":"object"},"strict":false}},"text":{"verbosity":"low"}}"#;
        let out = translate_response_format(body).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("response_format").is_none());
        assert_eq!(
            v["text"],
            json!({"verbosity": "low", "format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}, "strict": false}})
        );
        // Other members keep their bytes.
        assert!(out.starts_with(br#"{"model":"gpt-4o","input":"h\u00e9","#));
        let out =
            translate_response_format(br#"{"response_format":{"type":"json_object"}}"#).unwrap();
        assert_eq!(&out[..], br#"{"text":{"format":{"type":"json_object"}}}"#);
        let e = translate_response_format(
            br#"{"response_format":{"type":"json_object"},"text":{"format":{"type":"text"}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.param(), Some("response_format"));
    }

    #[test]
    fn the_stage_translates_or_refuses_as_configured() {
        let pre = |body: &'static [u8]| Preflight {
            body: Bytes::from_static(body),
            has_response_format: true,
            has_schemas: true,
            ..Preflight::default()
        };
        let body = br#"{"response_format":{"type":"json_object"}}"#;
        let p = run(
            &PreflightConfig::default(),
            Endpoint::Responses,
            pre(body),
            &Checked::default(),
        )
        .unwrap();
        assert_eq!(p.headers[0].0, "x-tollgate-warning");
        assert!(p.body.starts_with(br#"{"text""#));
        // Chat keeps its response_format.
        let p = run(
            &PreflightConfig::default(),
            Endpoint::ChatCompletions,
            pre(body),
            &Checked::default(),
        )
        .unwrap();
        assert_eq!(&p.body[..], body);
        let reject = PreflightConfig {
            response_format_on_responses: ResponseFormatMode::Reject,
            ..PreflightConfig::default()
        };
        let e = run(&reject, Endpoint::Responses, pre(body), &Checked::default()).unwrap_err();
        assert_eq!(e.code(), Some("unsupported_parameter"));
    }

    #[test]
    fn a_set_of_schemas_found_valid_is_not_checked_again() {
        let checked = Checked::default();
        let valid = Preflight {
            body: Bytes::from_static(
                br#"{"tools":[{"type":"function","name":"f","parameters":{"type":"object"}}]}"#,
            ),
            has_schemas: true,
            schema_digest: Some(7),
            ..Preflight::default()
        };
        run(
            &PreflightConfig::default(),
            Endpoint::Responses,
            valid,
            &checked,
        )
        .unwrap();
        // The same digest is taken as checked (the body here would fail a check)...
        let invalid = |digest| Preflight {
            body: Bytes::from_static(
                br#"{"tools":[{"type":"function","name":"f","parameters":{"type":"objekt"}}]}"#,
            ),
            has_schemas: true,
            schema_digest: Some(digest),
            ..Preflight::default()
        };
        assert!(run(
            &PreflightConfig::default(),
            Endpoint::Responses,
            invalid(7),
            &checked
        )
        .is_ok());
        // ... another is checked, and an invalid one is not remembered.
        assert!(run(
            &PreflightConfig::default(),
            Endpoint::Responses,
            invalid(8),
            &checked
        )
        .is_err());
        assert!(run(
            &PreflightConfig::default(),
            Endpoint::Responses,
            invalid(8),
            &checked
        )
        .is_err());
    }
}
