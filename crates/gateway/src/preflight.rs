//! Stage 3, preflight: what the request is before anything costs money — the
//! endpoint, a syntax check of the JSON body, the model asked for (an alias resolved,
//! the caller's access lists checked: see `models`) and whether a stream is wanted.
//! The body is forwarded byte for byte, with two exceptions: a resolved alias replaces
//! the `model` value (nothing else moves), and a Chat stream gets
//! `stream_options.include_usage` so tollgate can account it (the account stage
//! removes the usage again if the caller did not ask for it).
//!
//! The same single parse notes what the later preflight checks need — the output
//! asked for (`context`), whether schemas or `response_format` are present
//! (`schema`) — so a request with none of them pays for nothing more.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::carried::Continues;
use crate::error::GatewayError;
use crate::keys::Principal;
use crate::models::{ModelFilter, ModelRules};

/// The endpoints tollgate proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Responses,
    ChatCompletions,
    Embeddings,
    Moderations,
    Models,
    Model,
}

/// Whether a model id taken from the path is forwarded as it is: not empty, and
/// without a segment that a server or proxy on the way could read as a step up
/// (`..`, `.`, also percent-encoded) or an encoded separator, which would send the
/// provider key to another path (`/v1/models/../files`).
fn plain_model_id(id: &str) -> bool {
    let lower = id.to_ascii_lowercase();
    !id.is_empty()
        && !lower.contains("%2f")
        && !lower.contains("%5c")
        && !id.contains('\\')
        && lower.split('/').all(|segment| {
            let decoded = segment.replace("%2e", ".");
            !segment.is_empty() && decoded != "." && decoded != ".."
        })
}

impl Endpoint {
    /// Routes a method and path; `None` for anything tollgate does not proxy.
    pub fn route(method: &Method, path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/v1/")?;
        match (method, rest) {
            (&Method::POST, "responses") => Some(Self::Responses),
            (&Method::POST, "chat/completions") => Some(Self::ChatCompletions),
            (&Method::POST, "embeddings") => Some(Self::Embeddings),
            (&Method::POST, "moderations") => Some(Self::Moderations),
            (&Method::GET, "models") => Some(Self::Models),
            (&Method::GET, r) => r
                .strip_prefix("models/")
                .filter(|id| plain_model_id(id))
                .map(|_| Self::Model),
            _ => None,
        }
    }

    /// The path label used in records and metrics (bounded: ids are not included).
    pub fn label(self) -> &'static str {
        match self {
            Self::Responses => "/v1/responses",
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Moderations => "/v1/moderations",
            Self::Models => "/v1/models",
            Self::Model => "/v1/models/{id}",
        }
    }

    /// Whether the endpoint takes a JSON body.
    pub fn has_body(self) -> bool {
        !matches!(self, Self::Models | Self::Model)
    }

    /// Whether the answer's `id` identifies a response worth recording.
    pub fn has_response_id(self) -> bool {
        matches!(
            self,
            Self::Responses | Self::ChatCompletions | Self::Moderations
        )
    }
}

/// What preflight learned, and the body to forward.
#[derive(Debug, Clone, Default)]
pub struct Preflight {
    /// The model the request goes to (an alias already resolved).
    pub model: Option<String>,
    /// The alias the caller named, when `model` is its resolution.
    pub alias: Option<String>,
    pub stream: bool,
    /// tollgate added `include_usage`; the caller did not ask for the usage chunk.
    pub strip_stream_usage: bool,
    pub body: Bytes,
    /// The output asked for, and in which field (`max_output_tokens`, …).
    pub max_output: Option<(u64, &'static str)>,
    /// Chat's `n` (choices to generate), when a whole number.
    pub n: Option<u64>,
    /// The body has `text`, `response_format` or `tools`: the schema stage looks.
    pub has_schemas: bool,
    /// The body has a top-level `response_format`.
    pub has_response_format: bool,
    /// A digest of the endpoint and the raw `text`, `response_format` and `tools`
    /// members, when `has_schemas`: the schema stage skips parts it already checked.
    pub schema_digest: Option<u64>,
    /// Headers tollgate adds to the answer (`x-tollgate-model`, `x-tollgate-warning`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// For `GET /v1/models`: the caller's access lists, to filter the upstream's list.
    pub list_filter: Option<ModelFilter>,
    /// What the response cache does for this call (set by the cache stage).
    pub cache: Option<crate::cache::Plan>,
    /// The path to call upstream instead of the caller's (`GET /v1/models/{alias}`
    /// goes to the alias's target).
    pub upstream_path: Option<String>,
    /// The earlier turn a Responses call continues from (`previous_response_id`,
    /// `conversation`).
    pub continues: Option<Continues>,
    /// The tokens that turn carries in as input, as far as this replica knows (set
    /// after preflight; see `carried`). Estimates add them to the body's input.
    pub carried_tokens: u64,
}

impl Preflight {
    /// The model as the caller named it (the alias, when one was resolved).
    pub fn model_requested(&self) -> Option<&str> {
        self.alias.as_deref().or(self.model.as_deref())
    }
}

/// The header naming the model an alias (or a fallback) sent the call to.
pub(crate) const MODEL_HEADER: HeaderName = HeaderName::from_static("x-tollgate-model");

/// [`MODEL_HEADER`] for `model` (none for a name that is not a header value).
pub(crate) fn model_header(model: &str) -> Option<(HeaderName, HeaderValue)> {
    HeaderValue::from_str(model).ok().map(|v| (MODEL_HEADER, v))
}

/// `text` with its percent-encoding undone; `None` when an escape is malformed or the
/// bytes are not UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `text` as a path: every byte but letters, digits, `/` (an id such as
/// `meta-llama/Llama-3.1-8B` keeps its segments) and `-._~:@` escaped.
fn percent_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The refusal of a body that is not JSON, with what is wrong and where its parse
/// stopped. serde_json's words are given for malformed JSON and for a member sent
/// twice (fixed texts); any other data error could quote the caller's values, so
/// only its place is.
fn invalid_json(e: serde_json::Error) -> GatewayError {
    use serde_json::error::Category;
    let said = e.to_string();
    let detail = match e.classify() {
        Category::Syntax | Category::Eof => said,
        Category::Data if said.starts_with("duplicate field") => said,
        _ => format!("line {} column {}", e.line(), e.column()),
    };
    GatewayError::InvalidJson { detail }
}

/// The refusal of a body that is JSON but not an object (an array, a string, …).
fn not_an_object() -> GatewayError {
    GatewayError::InvalidRequest {
        message: "The request body must be a JSON object, such as {\"model\": \"gpt-4o-mini\", \
                  \"input\": \"Hello\"}; this one is valid JSON of another type."
            .into(),
        param: None,
    }
}

/// The members preflight reads; the others are skipped (and stay as they are).
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    stream_options: Option<serde_json::Value>,
    #[serde(default, borrow)]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(default, borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(default, borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(default, borrow)]
    n: Option<&'a RawValue>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    response_format: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tools: Option<&'a RawValue>,
    #[serde(default, borrow)]
    previous_response_id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    conversation: Option<&'a RawValue>,
}

/// What a Responses body continues from: its `previous_response_id`, else its
/// `conversation` (an id, or an object with one). Values of another shape are the
/// upstream's to refuse; they continue from nothing here.
fn continues(peek: &Peek<'_>) -> Option<Continues> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Conversation {
        Id(String),
        Object { id: String },
    }
    let nonempty = |id: String| (!id.is_empty()).then_some(id);
    let previous = peek
        .previous_response_id
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .and_then(nonempty);
    if let Some(id) = previous {
        return Some(Continues::Response(id));
    }
    let conversation = peek
        .conversation
        .and_then(|raw| serde_json::from_str::<Conversation>(raw.get()).ok())?;
    let (Conversation::Id(id) | Conversation::Object { id }) = conversation;
    nonempty(id).map(Continues::Conversation)
}

/// Checks and prepares a request body for `endpoint`, resolving its model with the
/// caller's `rules`.
pub fn run(
    endpoint: Endpoint,
    body: Bytes,
    model_in_path: Option<&str>,
    rules: &ModelRules,
    principal: &Principal,
) -> Result<Preflight, GatewayError> {
    let (project, env) = (principal.project.as_str(), principal.env.as_str());
    if !endpoint.has_body() {
        let (mut model, mut alias, mut upstream_path, mut headers) = (None, None, None, Vec::new());
        if let Some(raw) = model_in_path {
            // The id as the upstream will read it (percent-encoding undone), so the
            // access lists judge that one; an alias goes to its target.
            let id = percent_decoded(raw).unwrap_or_else(|| raw.to_owned());
            match rules.route(project, env, &id)? {
                // An alias whose target could step out of /v1/models is not followed
                // in a path (`..` segments).
                Some(target)
                    if target
                        .split('/')
                        .any(|seg| seg.is_empty() || seg == "." || seg == "..") =>
                {
                    model = Some(id);
                }
                Some(target) => {
                    upstream_path = Some(format!("/v1/models/{}", percent_encoded(target)));
                    headers.extend(model_header(target));
                    model = Some(target.to_owned());
                    alias = Some(id);
                }
                None => model = Some(id),
            }
        }
        return Ok(Preflight {
            model,
            alias,
            upstream_path,
            headers,
            list_filter: (endpoint == Endpoint::Models)
                .then(|| rules.filter(project, env))
                .flatten(),
            body,
            ..Preflight::default()
        });
    }
    // serde reads a struct from an array too (members by position): the top level
    // must be an object. Anything else is told apart from malformed JSON.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                Ok(_) => not_an_object(),
                Err(e) => invalid_json(e),
            },
        );
    }
    // JSON is UTF-8 (RFC 8259). Checked once for the whole body, so serde_json does
    // not check each string it reads again (a call per member name) — and a string
    // it skips unread is checked too: serde_json does not look inside those, and a
    // body whose text the gateway cannot read would be counted as no tokens at all.
    let text = std::str::from_utf8(&body).map_err(|e| GatewayError::InvalidJson {
        detail: format!(
            "it is not UTF-8 text: the byte at offset {} is not valid UTF-8",
            e.valid_up_to()
        ),
    })?;
    let peek = serde_json::from_str::<Peek<'_>>(text).map_err(invalid_json)?;
    // `model` may be any JSON: the upstream judges its type. We route strings only.
    let mut model = peek
        .model
        .and_then(|m| serde_json::from_str::<String>(m.get()).ok());
    let mut alias = None;
    let mut resolved_body = None;
    let target = match model.as_deref() {
        Some(name) => rules.route(project, env, name)?,
        None => None,
    };
    if let (Some(target), Some(raw)) = (target, peek.model) {
        resolved_body = Some(replace_raw(&body, raw, target)?);
        alias = model.replace(target.to_owned());
    }
    let max_output = first_output(
        peek.max_output_tokens,
        peek.max_completion_tokens,
        peek.max_tokens,
    );
    let n = peek
        .n
        .and_then(|n| serde_json::from_str::<u64>(n.get()).ok());
    let has_response_format = peek.response_format.is_some_and(|v| v.get() != "null");
    let has_schemas = peek.text.is_some() || peek.tools.is_some() || has_response_format;
    let schema_digest = has_schemas.then(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        endpoint.label().hash(&mut h);
        for part in [peek.text, peek.response_format, peek.tools] {
            part.map(RawValue::get).hash(&mut h);
        }
        h.finish()
    });
    let stream = peek
        .stream
        .as_ref()
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let caller_wants_usage = peek
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let inject = endpoint == Endpoint::ChatCompletions && stream && !caller_wants_usage;
    let continues = (endpoint == Endpoint::Responses)
        .then(|| continues(&peek))
        .flatten();
    let body = resolved_body.unwrap_or(body);
    let body = if inject {
        with_include_usage(&body)?
    } else {
        body
    };
    let headers = match (&alias, &model) {
        (Some(_), Some(m)) => model_header(m).into_iter().collect(),
        _ => Vec::new(),
    };
    Ok(Preflight {
        model,
        alias,
        stream,
        strip_stream_usage: inject,
        body,
        max_output,
        n,
        has_schemas,
        has_response_format,
        schema_digest,
        headers,
        list_filter: None,
        cache: None,
        upstream_path: None,
        continues,
        carried_tokens: 0,
    })
}

/// The output a body asks for, and in which field (the first of
/// `max_output_tokens`, `max_completion_tokens`, `max_tokens` holding a whole number).
pub fn output_asked(body: &[u8]) -> Option<(u64, &'static str)> {
    #[derive(Deserialize)]
    struct Output<'a> {
        #[serde(default, borrow)]
        max_output_tokens: Option<&'a RawValue>,
        #[serde(default, borrow)]
        max_completion_tokens: Option<&'a RawValue>,
        #[serde(default, borrow)]
        max_tokens: Option<&'a RawValue>,
    }
    let o: Output<'_> = serde_json::from_slice(body).ok()?;
    first_output(o.max_output_tokens, o.max_completion_tokens, o.max_tokens)
}

fn first_output(
    max_output_tokens: Option<&RawValue>,
    max_completion_tokens: Option<&RawValue>,
    max_tokens: Option<&RawValue>,
) -> Option<(u64, &'static str)> {
    [
        ("max_output_tokens", max_output_tokens),
        ("max_completion_tokens", max_completion_tokens),
        ("max_tokens", max_tokens),
    ]
    .into_iter()
    .find_map(|(name, v)| Some((serde_json::from_str::<u64>(v?.get()).ok()?, name)))
}

/// `body` with the JSON value `raw` (a slice of it) replaced by the string `with`.
fn replace_raw(body: &Bytes, raw: &RawValue, with: &str) -> Result<Bytes, GatewayError> {
    let value = serde_json::to_string(with).map_err(|_| GatewayError::Internal)?;
    Ok(splice(body, span(body, raw)?, &value, ""))
}

/// Adds `stream_options.include_usage = true`, changing nothing else in the body: the
/// member is inserted after the opening brace when there is no `stream_options` (or it
/// is `null`, which replaces it), inserted into an object without it, or its `false`
/// (or `null`) replaced. Numbers, escapes and spacing elsewhere stay byte-identical.
fn with_include_usage(body: &Bytes) -> Result<Bytes, GatewayError> {
    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(default, borrow, deserialize_with = "present")]
        stream_options: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Options<'a> {
        #[serde(default, borrow, deserialize_with = "present")]
        include_usage: Option<&'a RawValue>,
    }
    let text = std::str::from_utf8(body).map_err(|_| not_an_object())?;
    let open = text.len() - text.trim_start().len();
    if !text[open..].starts_with('{') {
        return Err(not_an_object());
    }
    let top: Top<'_> = serde_json::from_str(text).map_err(invalid_json)?;
    const MEMBER: &str = r#""stream_options":{"include_usage":true}"#;
    let Some(options) = top.stream_options.filter(|o| o.get() != "null") else {
        return Ok(match top.stream_options {
            Some(null) => splice(body, span(body, null)?, "", r#"{"include_usage":true}"#),
            None => insert_first(body, open, MEMBER),
        });
    };
    if !options.get().starts_with('{') {
        // A stream_options that is not an object is the upstream's to reject.
        return Ok(body.clone());
    }
    let o: Options<'_> =
        serde_json::from_str(options.get()).map_err(|_| GatewayError::InvalidRequest {
            message: "stream_options must be an object, such as {\"include_usage\": true}.".into(),
            param: Some("stream_options".into()),
        })?;
    Ok(match o.include_usage {
        Some(flag) => splice(body, span(body, flag)?, "true", ""),
        None => insert_first(body, span(body, options)?.0, r#""include_usage":true"#),
    })
}

/// `body` (a JSON object, checked by [`run`]) with its `model` set to `model`, changing
/// nothing else: the member's value replaced, or the member inserted first.
pub(crate) fn with_model(body: &Bytes, model: &str) -> Result<Bytes, GatewayError> {
    #[derive(Deserialize)]
    struct Top<'a> {
        #[serde(default, borrow, deserialize_with = "present")]
        model: Option<&'a RawValue>,
    }
    let top: Top<'_> = serde_json::from_slice(body).map_err(invalid_json)?;
    if let Some(raw) = top.model {
        return replace_raw(body, raw, model);
    }
    let member = format!(
        r#""model":{}"#,
        serde_json::to_string(model).map_err(|_| GatewayError::Internal)?
    );
    let brace = body
        .iter()
        .position(|b| *b == b'{')
        .ok_or_else(not_an_object)?;
    Ok(insert_first(body, brace, &member))
}

/// Deserialises a member raw even when it is `null` (an `Option` would take `null`
/// for absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// `body` with `member` (`"name":value`) inserted first in the object whose `{` is at
/// `brace`, followed by a comma unless the object was empty.
fn insert_first(body: &[u8], brace: usize, member: &str) -> Bytes {
    let empty = body[brace + 1..].trim_ascii_start().first() == Some(&b'}');
    let at = brace + 1;
    splice(body, (at, at), member, if empty { "" } else { "," })
}

/// Where `raw`, a slice of `body`, lies in it.
fn span(body: &[u8], raw: &RawValue) -> Result<(usize, usize), GatewayError> {
    let text = raw.get().as_bytes();
    let start = (text.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    let end = start.wrapping_add(text.len());
    if end > body.len() || start > end || body.get(start..end) != Some(text) {
        return Err(GatewayError::Internal);
    }
    Ok((start, end))
}

/// `body` with the bytes in `range` replaced by `insert` followed by `then`.
fn splice(body: &[u8], (start, end): (usize, usize), insert: &str, then: &str) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + insert.len() + then.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(then.as_bytes());
    out.extend_from_slice(&body[end..]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tollgate_store::{AccessKind, ModelAccess, Role};

    fn principal() -> Principal {
        Principal {
            key_id: "key_1".into(),
            project: "shop".into(),
            env: "prod".into(),
            role: Role::Member,
            upstream_ref: None,
            lane: tollgate_store::Lane::Interactive,
        }
    }

    fn plain(
        endpoint: Endpoint,
        body: Bytes,
        model_in_path: Option<&str>,
    ) -> Result<Preflight, GatewayError> {
        run(
            endpoint,
            body,
            model_in_path,
            &ModelRules::default(),
            &principal(),
        )
    }

    fn routed(
        rules: &ModelRules,
        endpoint: Endpoint,
        body: &'static [u8],
    ) -> Result<Preflight, GatewayError> {
        run(
            endpoint,
            Bytes::from_static(body),
            None,
            rules,
            &principal(),
        )
    }

    #[test]
    fn an_alias_replaces_only_the_model_value_and_is_remembered() {
        let rules = ModelRules::with_aliases(&crate::models::global_aliases(&BTreeMap::new()));
        let p = routed(
            &rules,
            Endpoint::Responses,
            br#"{"input":"h\u00e9", "model" : "smart","max_output_tokens":5,"text":{"format":{"type":"text"}}}"#,
        )
        .unwrap();
        assert_eq!(
            &p.body[..],
            br#"{"input":"h\u00e9", "model" : "gpt-4.1","max_output_tokens":5,"text":{"format":{"type":"text"}}}"#
        );
        assert_eq!(p.model.as_deref(), Some("gpt-4.1"));
        assert_eq!(p.model_requested(), Some("smart"));
        assert_eq!(p.headers[0].1, "gpt-4.1");
        assert_eq!(p.max_output, Some((5, "max_output_tokens")));
        assert!(p.has_schemas && !p.has_response_format);
        // A chat stream gets both the resolution and include_usage.
        let p = routed(
            &rules,
            Endpoint::ChatCompletions,
            br#"{"model":"fast","stream":true,"messages":[]}"#,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["stream_options"]["include_usage"], true);
        // Not an alias: untouched, no header.
        let p = routed(&rules, Endpoint::Responses, br#"{"model":"gpt-4o"}"#).unwrap();
        assert!(p.alias.is_none() && p.headers.is_empty());
        assert!(p.max_output.is_none() && !p.has_schemas);
    }

    #[test]
    fn access_lists_refuse_models_and_filter_the_model_list() {
        let rules = ModelRules::with_aliases(&crate::models::global_aliases(&BTreeMap::new()))
            .with_store_rules(
                vec![],
                vec![ModelAccess {
                    project: "shop".into(),
                    env: None,
                    kind: AccessKind::Allow,
                    models: vec!["gpt-4o-mini".into()],
                    created_at_ms: 0,
                    updated_at_ms: 0,
                }],
            );
        let e = routed(&rules, Endpoint::Responses, br#"{"model":"smart"}"#).unwrap_err();
        assert_eq!(e.code(), Some("model_not_found"));
        assert!(routed(&rules, Endpoint::Responses, br#"{"model":"fast"}"#).is_ok());
        let e = run(
            Endpoint::Model,
            Bytes::new(),
            Some("gpt-4o"),
            &rules,
            &principal(),
        )
        .unwrap_err();
        assert_eq!(e.status(), http::StatusCode::NOT_FOUND);
        // Percent-encoded, the id is judged as the upstream will read it: a deny-list
        // entry is not passed by encoding one of its letters.
        let denied = ModelRules::default().with_store_rules(
            vec![],
            vec![ModelAccess {
                project: "shop".into(),
                env: None,
                kind: AccessKind::Deny,
                models: vec!["gpt-4o".into()],
                created_at_ms: 0,
                updated_at_ms: 0,
            }],
        );
        for id in ["gpt-4o", "gpt%2D4o", "gpt-4%6F"] {
            let e = run(
                Endpoint::Model,
                Bytes::new(),
                Some(id),
                &denied,
                &principal(),
            );
            assert_eq!(e.unwrap_err().status(), http::StatusCode::NOT_FOUND, "{id}");
        }
        assert!(run(
            Endpoint::Model,
            Bytes::new(),
            Some("o3"),
            &denied,
            &principal()
        )
        .is_ok());
        // An alias in the path goes to its target.
        let p = run(
            Endpoint::Model,
            Bytes::new(),
            Some("fast"),
            &rules,
            &principal(),
        )
        .unwrap();
        assert_eq!(p.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(p.upstream_path.as_deref(), Some("/v1/models/gpt-4o-mini"));
        assert_eq!(p.model_requested(), Some("fast"));
        let p = run(Endpoint::Models, Bytes::new(), None, &rules, &principal()).unwrap();
        assert!(p.list_filter.unwrap().permits("gpt-4o-mini"));
    }

    #[test]
    fn path_segments_decode_and_encode() {
        assert_eq!(percent_decoded("gpt%2D4o").as_deref(), Some("gpt-4o"));
        assert_eq!(
            percent_decoded("ft%3Agpt-4o-mini%3Aorg%3Ax").as_deref(),
            Some("ft:gpt-4o-mini:org:x")
        );
        assert_eq!(percent_decoded("plain").as_deref(), Some("plain"));
        for bad in ["a%2", "a%zz", "%ff%fe"] {
            assert_eq!(percent_decoded(bad), None, "{bad}");
        }
        assert_eq!(
            percent_encoded("ft:gpt-4o:org:x_1.2~"),
            "ft:gpt-4o:org:x_1.2~"
        );
        assert_eq!(percent_encoded("a b/c%"), "a%20b/c%25");
        assert_eq!(
            percent_encoded("meta-llama/Llama-3.1-8B"),
            "meta-llama/Llama-3.1-8B"
        );
    }

    #[test]
    fn routes_only_the_proxied_endpoints() {
        assert_eq!(
            Endpoint::route(&Method::POST, "/v1/responses"),
            Some(Endpoint::Responses)
        );
        assert_eq!(
            Endpoint::route(&Method::GET, "/v1/models/gpt-4o"),
            Some(Endpoint::Model)
        );
        assert_eq!(Endpoint::route(&Method::GET, "/v1/models/"), None);
        // Ids with a namespace pass; steps up and encoded separators do not.
        assert_eq!(
            Endpoint::route(&Method::GET, "/v1/models/meta-llama/Llama-3-8b"),
            Some(Endpoint::Model)
        );
        for path in [
            "/v1/models/../files",
            "/v1/models/gpt-4o/../../embeddings",
            "/v1/models/%2e%2E/files",
            "/v1/models/./x",
            "/v1/models/a%2Ffiles",
            "/v1/models/a%5cb",
            "/v1/models/a//b",
        ] {
            assert_eq!(Endpoint::route(&Method::GET, path), None, "{path}");
        }
        assert_eq!(Endpoint::route(&Method::GET, "/v1/responses"), None);
        assert_eq!(Endpoint::route(&Method::POST, "/v1/files"), None);
        assert_eq!(Endpoint::route(&Method::POST, "/responses"), None);
    }

    #[test]
    fn bodies_pass_untouched_except_chat_streams_without_include_usage() {
        let body = Bytes::from_static(br#"{"model":"gpt-4o","input":"hi","unknown_field":[1,2]}"#);
        let p = plain(Endpoint::Responses, body.clone(), None).unwrap();
        assert_eq!(p.body, body);
        assert_eq!(p.model.as_deref(), Some("gpt-4o"));
        assert!(!p.stream);

        let chat = Bytes::from_static(br#"{ "model":"gpt-4o-mini","stream":true,"messages":[]}"#);
        let p = plain(Endpoint::ChatCompletions, chat, None).unwrap();
        assert!(p.stream && p.strip_stream_usage);
        assert_eq!(
            &p.body[..],
            br#"{"stream_options":{"include_usage":true}, "model":"gpt-4o-mini","stream":true,"messages":[]}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);

        let asked = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        );
        let p = plain(Endpoint::ChatCompletions, asked.clone(), None).unwrap();
        assert!(!p.strip_stream_usage);
        assert_eq!(p.body, asked);

        // Whatever stream_options holds, only include_usage changes: numbers, escapes
        // and spacing elsewhere reach the upstream as the caller wrote them.
        let rest = r#""top_p":1e0,"seed":123456789012345678901234567890,"messages":[{"role":"user","content":"h\u00e9"}] }"#;
        for (options, sent) in [
            (r#"{"x":1}"#, r#"{"include_usage":true,"x":1}"#),
            (r#"{ }"#, r#"{"include_usage":true }"#),
            (r#"null"#, r#"{"include_usage":true}"#),
            (
                r#"{"include_usage": false, "x":1}"#,
                r#"{"include_usage": true, "x":1}"#,
            ),
            (r#"{"include_usage":null}"#, r#"{"include_usage":true}"#),
        ] {
            let body =
                format!(r#"{{"model":"m", "stream":true, "stream_options":{options}, {rest}"#);
            let p = plain(Endpoint::ChatCompletions, Bytes::from(body), None).unwrap();
            let expected =
                format!(r#"{{"model":"m", "stream":true, "stream_options":{sent}, {rest}"#);
            assert_eq!(std::str::from_utf8(&p.body).unwrap(), expected);
            assert!(p.strip_stream_usage);
        }
        // A stream_options that is not an object is left for the upstream to judge.
        let odd = Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":7}"#);
        let p = plain(Endpoint::ChatCompletions, odd.clone(), None).unwrap();
        assert_eq!(p.body, odd);
        // A number beyond f64 elsewhere does not stop the injection.
        let big = Bytes::from_static(br#"{"model":"m","stream":true,"temperature":1e400}"#);
        let p = plain(Endpoint::ChatCompletions, big, None).unwrap();
        assert_eq!(
            &p.body[..],
            br#"{"stream_options":{"include_usage":true},"model":"m","stream":true,"temperature":1e400}"#
        );
    }

    #[test]
    fn malformed_json_is_refused_before_the_upstream() {
        let e = plain(
            Endpoint::Responses,
            Bytes::from_static(b"{\"model\": "),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, GatewayError::InvalidJson { .. }));
        assert!(
            e.message().contains("EOF while parsing") && e.message().contains("line 1 column 10"),
            "{}",
            e.message()
        );
        // A member preflight reads, sent twice: valid JSON, refused with the reason.
        let e = plain(
            Endpoint::Responses,
            Bytes::from_static(br#"{"model":"a","input":"x","model":"b"}"#),
            None,
        )
        .unwrap_err();
        assert!(
            e.message().contains("duplicate field `model`"),
            "{}",
            e.message()
        );
        // Bytes that are not UTF-8, even in a member preflight skips unread (whose
        // text the token estimate would then count as nothing), are refused too.
        let e = plain(
            Endpoint::Responses,
            Bytes::from_static(b"{\"model\":\"gpt-4o\",\"input\":\"ab\xff\"}"),
            None,
        )
        .unwrap_err();
        assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        assert!(
            e.message().contains("not UTF-8") && e.message().contains("offset 29"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn a_responses_call_notes_the_turn_it_continues() {
        let continues = |endpoint, body: &'static [u8]| {
            plain(endpoint, Bytes::from_static(body), None)
                .unwrap()
                .continues
        };
        let r = |id: &str| Some(Continues::Response(id.into()));
        let c = |id: &str| Some(Continues::Conversation(id.into()));
        let responses = Endpoint::Responses;
        assert_eq!(
            continues(
                responses,
                br#"{"model":"m","previous_response_id":"resp_1"}"#
            ),
            r("resp_1")
        );
        assert_eq!(
            continues(responses, br#"{"model":"m","conversation":"conv_1"}"#),
            c("conv_1")
        );
        assert_eq!(
            continues(
                responses,
                br#"{"conversation":{"id":"conv_2"},"input":"x"}"#
            ),
            c("conv_2")
        );
        // The upstream refuses both at once; the response id is the narrower.
        assert_eq!(
            continues(
                responses,
                br#"{"conversation":"conv_3","previous_response_id":"resp_3"}"#
            ),
            r("resp_3")
        );
        for nothing in [
            &br#"{"model":"m","input":"x"}"#[..],
            br#"{"previous_response_id":null,"conversation":null}"#,
            br#"{"previous_response_id":"","conversation":{"id":""}}"#,
            br#"{"previous_response_id":7,"conversation":[1]}"#,
        ] {
            let p = plain(responses, Bytes::from(nothing), None).unwrap();
            assert_eq!(p.continues, None, "{}", String::from_utf8_lossy(nothing));
        }
        // Chat has no such members: a body that names them continues nothing.
        let chat = br#"{"model":"m","messages":[],"previous_response_id":"resp_1"}"#;
        assert_eq!(continues(Endpoint::ChatCompletions, chat), None);
    }

    #[test]
    fn json_that_is_not_an_object_is_refused_as_such() {
        for body in [&b"[1, 2]"[..], b"\"hello\"", b"42", b"null"] {
            let e = plain(Endpoint::ChatCompletions, Bytes::from(body), None).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
            assert!(
                e.message().contains("must be a JSON object"),
                "{}",
                e.message()
            );
        }
    }
}
