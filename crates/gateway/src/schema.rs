//! Structured-output and function-tool schemas, checked in stage 3 (preflight) so a
//! mistake is refused before it reaches (and is billed by) the upstream.
//!
//! Where schemas are: Responses `text.format` (json_schema: `schema`, `strict`) and
//! function tools' `parameters` (`strict` beside them); Chat `response_format`
//! (json_schema: `json_schema.schema`, `json_schema.strict`) and
//! `tools[i].function.parameters` (`strict` beside them). Each is checked as a JSON
//! Schema (draft 2020-12, as OpenAI reads them) with the `jsonschema` crate — against
//! the meta-schema, then compiled (unresolvable `$ref`s) — and, when `strict` is
//! `true`, against OpenAI's strict-mode rules: the root is an object, and every object
//! schema lists all of its properties in `required` and sets
//! `additionalProperties: false`. An error is a 400 whose `param` is the path of the
//! offending part (`text.format.schema/properties/address`).
//!
//! Regular expressions (`pattern`, the names of `patternProperties`) are checked for
//! ECMA-262 syntax, the dialect JSON Schema names, and never compiled: the schema is
//! compiled without them. A compiled regex grows with the product of its repetition
//! counts (`((a{30}){30}){30}` takes 9 ms and 1.3 MB), so compiling what a caller
//! sends let one request of a few hundred kilobytes hold an I/O thread for tens of
//! seconds and the process's memory past 4 GB. Whether the upstream's engine accepts a
//! well-formed pattern is the upstream's to say.
//!
//! A set of schemas in a body over `offload::INLINE_BYTES` is checked off the I/O
//! thread.
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
use crate::offload;
use crate::preflight::{Endpoint, Preflight};

/// The warning sent with a translated `response_format`.
const TRANSLATED: &str = "response_format is not a Responses API parameter; tollgate moved it \
                          to text.format. Send text.format instead.";

/// Errors reported per schema, at most (the first few say enough).
const MAX_ERRORS: usize = 3;

/// Digests kept at most; the set is emptied when full (a cache, not a record).
const CHECKED_MAX: usize = 4096;

/// What a rule on schemas finds: nothing, or the pointer and message of the first
/// violation.
type Verdict = Result<(), (String, String)>;

/// Characters of an offending pattern quoted in an error, at most.
const QUOTED_MAX: usize = 80;

/// Missing property names listed in an error, at most.
const MISSING_LISTED: usize = 10;

/// Keywords whose value is a map of names to subschemas.
const NAMED_SUBSCHEMAS: [&str; 6] = [
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
    "dependencies",
];

/// Keywords whose value is a subschema or an array of subschemas.
const SUBSCHEMAS: [&str; 15] = [
    "items",
    "prefixItems",
    "additionalItems",
    "additionalProperties",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contains",
    "propertyNames",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
];

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
pub async fn run(
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
                let body = preflight.body.clone();
                offload::run(body.len(), move || check(endpoint, &body)).await?;
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
                    param: Some("text".into()),
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
    patterns(f.schema, &mut String::new()).map_err(|(p, m)| refuse(&p, m))?;
    if let Err(e) = jsonschema::draft202012::new(&to_compile(f.schema, false)) {
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
fn strict_rules(schema: &Value, pointer: &mut String) -> Verdict {
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
        let required: HashSet<&str> = o
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
                let listed = missing[..missing.len().min(MISSING_LISTED)].join("', '");
                let more = match missing.len().checked_sub(MISSING_LISTED) {
                    Some(more) if more > 0 => format!(" and {more} more"),
                    _ => String::new(),
                };
                return Err((
                    pointer.clone(),
                    format!(
                        "in strict mode 'required' is required to be supplied and to be an \
                         array including every key in properties. Missing '{listed}'{more} \
                         (make a property optional with a \"null\" type instead)"
                    ),
                ));
            }
        }
    }
    // Every place a subschema may sit.
    for key in ["properties", "$defs", "definitions"] {
        if let Some(Value::Object(subs)) = o.get(key) {
            for (name, sub) in subs {
                descend(sub, pointer, &[key, name], strict_rules)?;
            }
        }
    }
    for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(subs)) = o.get(key) {
            for (i, sub) in subs.iter().enumerate() {
                descend(sub, pointer, &[key, &i.to_string()], strict_rules)?;
            }
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(sub @ Value::Object(_)) = o.get(key) {
            descend(sub, pointer, &[key], strict_rules)?;
        }
    }
    Ok(())
}

/// Runs `rules` on the subschema `sub`, at `pointer` followed by `parts`.
fn descend(
    sub: &Value,
    pointer: &mut String,
    parts: &[&str],
    rules: fn(&Value, &mut String) -> Verdict,
) -> Verdict {
    let len = pointer.len();
    push_parts(pointer, parts);
    let r = rules(sub, pointer);
    pointer.truncate(len);
    r
}

/// Appends `parts` to a JSON Pointer, each escaped.
fn push_parts(pointer: &mut String, parts: &[&str]) {
    for p in parts {
        pointer.push('/');
        pointer.push_str(&p.replace('~', "~0").replace('/', "~1"));
    }
}

/// Checks the syntax of every regular expression of `schema` (at `pointer`) and of
/// its subschemas, without compiling any (see the module docs).
fn patterns(schema: &Value, pointer: &mut String) -> Verdict {
    let Value::Object(o) = schema else {
        return Ok(());
    };
    if let Some(Value::String(p)) = o.get("pattern") {
        if !jsonschema_regex::is_valid_ecma_regex(p) {
            return Err(not_a_regex(pointer, &["pattern"], p));
        }
    }
    if let Some(Value::Object(named)) = o.get("patternProperties") {
        if let Some(p) = named
            .keys()
            .find(|p| !jsonschema_regex::is_valid_ecma_regex(p))
        {
            return Err(not_a_regex(pointer, &["patternProperties", p], p));
        }
    }
    for key in NAMED_SUBSCHEMAS {
        if let Some(Value::Object(subs)) = o.get(key) {
            for (name, sub) in subs {
                descend(sub, pointer, &[key, name], patterns)?;
            }
        }
    }
    for key in SUBSCHEMAS {
        match o.get(key) {
            Some(sub @ Value::Object(_)) => descend(sub, pointer, &[key], patterns)?,
            Some(Value::Array(subs)) => {
                for (i, sub) in subs.iter().enumerate() {
                    descend(sub, pointer, &[key, &i.to_string()], patterns)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The error for the malformed pattern `p`, at `pointer` followed by `parts`.
fn not_a_regex(pointer: &str, parts: &[&str], p: &str) -> (String, String) {
    let mut at = pointer.to_owned();
    push_parts(&mut at, parts);
    let mut quoted: String = p.chars().take(QUOTED_MAX).collect();
    if quoted.len() < p.len() {
        quoted.push('…');
    }
    (
        at,
        format!("the pattern \"{quoted}\" is not a valid regular expression (ECMA-262)"),
    )
}

/// A copy of `v` to compile: every `pattern` emptied and every `patternProperties`
/// left out, wherever they sit, since a `$ref` may point anywhere in the document
/// (even into a `default`) and jsonschema compiles what it points to; and every
/// `required` left out: the meta-schema has checked it, and jsonschema's compile of
/// one that names every property (as strict mode has it) compares each name with
/// each, which for 70,000 properties took seconds. `names`: `v` is a map of names to
/// subschemas (`properties`, …), whose members are not keywords.
fn to_compile(v: &Value, names: bool) -> Value {
    match v {
        Value::Object(o) if names => Value::Object(
            o.iter()
                .map(|(k, sub)| (k.clone(), to_compile(sub, false)))
                .collect(),
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, sub)| match k.as_str() {
                    "patternProperties" => !sub.is_object(),
                    "required" => !sub.is_array(),
                    _ => true,
                })
                .map(|(k, sub)| {
                    let sub = match sub {
                        Value::String(_) if k == "pattern" => Value::String(String::new()),
                        _ => to_compile(sub, NAMED_SUBSCHEMAS.contains(&k.as_str())),
                    };
                    (k.clone(), sub)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| to_compile(x, false)).collect()),
        other => other.clone(),
    }
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

        // Many missing names: the first ten, and how many more.
        let props: Map<String, Value> = (0..25)
            .map(|i| (format!("p{i:02}"), json!({"type": "string"})))
            .collect();
        let e = err(
            Endpoint::Responses,
            json!({"text": {"format": {"type": "json_schema", "name": "p", "strict": true,
                   "schema": {"type": "object", "properties": props, "required": ["p00"],
                              "additionalProperties": false}}}}),
        );
        let m = e.message();
        assert!(m.contains("Missing 'p01', 'p02'"), "{m}");
        assert!(m.contains("'p10' and 14 more (make"), "{m}");
        assert!(!m.contains("p11"), "{m}");
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

    /// A regular expression is checked for its syntax where a schema has one, and
    /// never compiled: one that compiles past the regex engine's size limit (so
    /// compiling it was an error) passes, where it sits and where a `$ref` leads.
    #[test]
    fn patterns_are_checked_for_syntax_not_compiled() {
        let tool = |parameters: Value| json!({"tools": [{"type": "function", "name": "f", "parameters": parameters}]});
        let e = err(
            Endpoint::Responses,
            tool(json!({"type": "object", "properties": {"a": {"anyOf": [
                {"type": "integer"}, {"type": "string", "pattern": "^(ab$"}]}}})),
        );
        assert_eq!(
            e.param(),
            Some("tools[0].parameters/properties/a/anyOf/1/pattern")
        );
        assert!(
            e.message()
                .contains(r#"the pattern "^(ab$" is not a valid regular expression"#),
            "{}",
            e.message()
        );
        let e = err(
            Endpoint::ChatCompletions,
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "p",
                   "schema": {"type": "object", "patternProperties": {"^x/[": {"type": "string"}}}}}}),
        );
        assert_eq!(
            e.param(),
            Some("response_format.json_schema.schema/patternProperties/^x~1[")
        );
        // A long pattern is quoted in part.
        let long = format!("({}", "a".repeat(500));
        let e = err(
            Endpoint::Responses,
            tool(
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": long}}}),
            ),
        );
        assert!(
            e.message().contains(&format!("\"({}…\"", "a".repeat(79))),
            "{}",
            e.message()
        );
        assert!(e.message().len() < 300, "{}", e.message());

        let huge = "((a{100}){100}){100}";
        ok(
            Endpoint::Responses,
            tool(json!({"type": "object",
                "properties": {"a": {"type": "string", "pattern": huge}, "b": {"$ref": "#/$defs/b"},
                               "c": {"$ref": "#/default/c"}},
                "patternProperties": {huge: {"type": "string"}},
                "$defs": {"b": {"type": "string", "pattern": huge}},
                "default": {"c": {"type": "string", "pattern": huge}}})),
        );
        // Data that looks like a pattern is not one: a property named `pattern`, and
        // values in `default`, `enum` and `const`.
        ok(
            Endpoint::Responses,
            tool(json!({"type": "object",
                "properties": {"pattern": {"type": "string"}, "patternProperties": {"type": "object"}},
                "default": {"pattern": "(("},
                "enum": [{"pattern": "(("}],
                "const": {"patternProperties": {"((": 1}}})),
        );
        // What the compile finds is still found with the patterns left out.
        let e = err(
            Endpoint::Responses,
            tool(
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "^a$"},
                        "b": {"$ref": "#/$defs/missing"}}}),
            ),
        );
        assert!(e.message().contains("cannot be used"), "{}", e.message());
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

    #[tokio::test]
    async fn the_stage_translates_or_refuses_as_configured() {
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
        .await
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
        .await
        .unwrap();
        assert_eq!(&p.body[..], body);
        let reject = PreflightConfig {
            response_format_on_responses: ResponseFormatMode::Reject,
            ..PreflightConfig::default()
        };
        let e = run(&reject, Endpoint::Responses, pre(body), &Checked::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("unsupported_parameter"));
    }

    #[tokio::test]
    async fn a_set_of_schemas_found_valid_is_not_checked_again() {
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
        .await
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
        .await
        .is_ok());
        // ... another is checked, and an invalid one is not remembered.
        assert!(run(
            &PreflightConfig::default(),
            Endpoint::Responses,
            invalid(8),
            &checked
        )
        .await
        .is_err());
        assert!(run(
            &PreflightConfig::default(),
            Endpoint::Responses,
            invalid(8),
            &checked
        )
        .await
        .is_err());
    }
}
