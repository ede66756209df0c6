//! Output caps, applied in stage 3 (preflight) after the body is known to be JSON: a
//! key's or project's maximum output tokens (requests above it are clamped or
//! refused), a default when a request sets none, and an allowed temperature range.
//!
//! Responses carry the maximum in `max_output_tokens`; Chat in
//! `max_completion_tokens` or the older `max_tokens` (both are capped when both are
//! sent; a default is added as `max_completion_tokens`). Embeddings and moderations
//! have no output to cap.
//!
//! A changed body keeps every other member byte for byte, in its place: the top-level
//! object is split into its members' raw JSON text, the members concerned are replaced
//! or appended, and the object is joined again.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use tollgate_store::{OutputCap, OverCap};

use crate::error::GatewayError;
use crate::keys::Principal;
use crate::limits::Limits;
use crate::preflight::{Endpoint, Preflight};

/// Applies the caller's output caps (its key's, else its project's) to the request.
pub fn run(
    limits: &Limits,
    endpoint: Endpoint,
    principal: &Principal,
    mut preflight: Preflight,
) -> Result<Preflight, GatewayError> {
    let set = limits.rules();
    if set.is_empty() {
        return Ok(preflight);
    }
    let Some(cap) = set.cap_for(&principal.project, &principal.key_id) else {
        return Ok(preflight);
    };
    if let Some(body) = apply(endpoint, &cap, &preflight.body)? {
        preflight.max_output = crate::preflight::output_asked(&body);
        preflight.body = body;
    }
    Ok(preflight)
}

/// Applies `cap` to a request body; `Ok(None)` when the body stays as it is.
pub fn apply(
    endpoint: Endpoint,
    cap: &OutputCap,
    body: &[u8],
) -> Result<Option<Bytes>, GatewayError> {
    let fields: &[&str] = match endpoint {
        Endpoint::Responses => &["max_output_tokens"],
        Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        _ => return Ok(None),
    };
    let mut members = split(body)?;
    check_temperature(cap, &members)?;
    let mut changed = false;
    let mut present = false;
    // A `null` limit means none was set: the default applies to it as to a missing one.
    let mut null_slot = None;
    for name in fields {
        let Some(at) = members.iter().position(|(k, _)| k == name) else {
            continue;
        };
        let slot = &mut members[at];
        if slot.1.get() == "null" {
            null_slot.get_or_insert(at);
            continue;
        }
        present = true;
        // A value that is not a whole number is the upstream's to judge.
        let Ok(asked) = serde_json::from_str::<u64>(slot.1.get()) else {
            continue;
        };
        let Some(max) = cap.max_output_tokens else {
            continue;
        };
        if asked <= max {
            continue;
        }
        match cap.over {
            OverCap::Refuse => {
                return Err(GatewayError::InvalidRequest {
                    message: format!(
                        "{name} is {asked}, above this key's limit of {max} output tokens. \
                         Ask for at most {max}, or ask a project admin to raise the cap \
                         (`tollgate caps set`)."
                    ),
                    param: Some(static_name(name).into()),
                });
            }
            OverCap::Clamp => {
                slot.1 = raw_number(max)?;
                changed = true;
            }
        }
    }
    if !present {
        if let Some(default) = cap.default_output_tokens.or(cap.max_output_tokens) {
            let value = raw_number(default)?;
            match null_slot {
                // The member the caller named keeps its place.
                Some(at) => members[at].1 = value,
                None => members.push((Cow::Borrowed(fields[0]), value)),
            }
            changed = true;
        }
    }
    if !changed {
        return Ok(None);
    }
    Ok(Some(join(&members)))
}

fn static_name(name: &str) -> &'static str {
    match name {
        "max_output_tokens" => "max_output_tokens",
        "max_completion_tokens" => "max_completion_tokens",
        _ => "max_tokens",
    }
}

/// Refuses a `temperature` outside the allowed range (a missing or null one passes:
/// the model's default applies).
fn check_temperature(
    cap: &OutputCap,
    members: &[(Cow<'_, str>, Box<RawValue>)],
) -> Result<(), GatewayError> {
    let (Some(min), Some(max)) = (cap.temperature_min, cap.temperature_max) else {
        return Ok(());
    };
    // Every `temperature` member, when the caller sent it twice: parsers differ on
    // which one counts (most keep the last), so each must be within the range.
    for (_, raw) in members.iter().filter(|(k, _)| k == "temperature") {
        let Ok(t) = serde_json::from_str::<f64>(raw.get()) else {
            continue;
        };
        if t < min || t > max {
            return Err(GatewayError::InvalidRequest {
                message: format!(
                    "temperature {t} is outside the range this key allows ({min} to {max}). \
                     Send a temperature within it, or none."
                ),
                param: Some("temperature".into()),
            });
        }
    }
    Ok(())
}

fn raw_number(n: u64) -> Result<Box<RawValue>, GatewayError> {
    RawValue::from_string(n.to_string()).map_err(|_| GatewayError::Internal)
}

pub(crate) type Members<'a> = Vec<(Cow<'a, str>, Box<RawValue>)>;

/// The top-level object's members, in order, each value as its raw JSON text.
pub(crate) fn split(body: &[u8]) -> Result<Members<'_>, GatewayError> {
    struct ObjectVisitor;
    impl<'de> Visitor<'de> for ObjectVisitor {
        type Value = Members<'de>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<Cow<'de, str>, Box<RawValue>>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let members = de
        .deserialize_map(ObjectVisitor)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|_| GatewayError::InvalidRequest {
            message: "The request body must be a JSON object.".into(),
            param: None,
        })?;
    Ok(members)
}

/// The object again: each member's key re-encoded, its value exactly as it came.
pub(crate) fn join(members: &Members<'_>) -> Bytes {
    let mut out = Vec::with_capacity(
        members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + 2,
    );
    out.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Serialising a string cannot fail.
        out.extend_from_slice(serde_json::to_string(k).unwrap_or_default().as_bytes());
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(max: Option<u64>, over: OverCap, default: Option<u64>) -> OutputCap {
        OutputCap {
            max_output_tokens: max,
            over,
            default_output_tokens: default,
            temperature_min: None,
            temperature_max: None,
        }
    }

    fn text(b: Option<Bytes>) -> String {
        String::from_utf8(b.unwrap().to_vec()).unwrap()
    }

    #[test]
    fn clamping_keeps_every_other_member_byte_for_byte() {
        let body = br#"{"model":"gpt-4o","input":[{"role":"user","content":"h\u00e9 1.50e2"}],"max_output_tokens":5000,"metadata":{"a":1.0}}"#;
        let out = apply(
            Endpoint::Responses,
            &cap(Some(100), OverCap::Clamp, None),
            body,
        )
        .unwrap();
        assert_eq!(
            text(out),
            r#"{"model":"gpt-4o","input":[{"role":"user","content":"h\u00e9 1.50e2"}],"max_output_tokens":100,"metadata":{"a":1.0}}"#
        );
        // Within the cap: untouched.
        let ok = br#"{"model":"gpt-4o","max_output_tokens":50}"#;
        assert!(apply(
            Endpoint::Responses,
            &cap(Some(100), OverCap::Clamp, None),
            ok
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn refusing_names_the_field_and_the_cap() {
        let body = br#"{"model":"gpt-4o","messages":[],"max_tokens":500}"#;
        let e = apply(
            Endpoint::ChatCompletions,
            &cap(Some(100), OverCap::Refuse, None),
            body,
        )
        .unwrap_err();
        assert_eq!(e.param(), Some("max_tokens"));
        assert!(e.message().contains("limit of 100"), "{}", e.message());
    }

    #[test]
    fn a_default_is_added_when_the_request_sets_none() {
        let body = br#"{"model":"gpt-4o","messages":[]}"#;
        let out = apply(
            Endpoint::ChatCompletions,
            &cap(Some(100), OverCap::Clamp, Some(40)),
            body,
        );
        assert_eq!(
            text(out.unwrap()),
            r#"{"model":"gpt-4o","messages":[],"max_completion_tokens":40}"#
        );
        // Without a default, the cap itself bounds the output.
        let out = apply(
            Endpoint::Responses,
            &cap(Some(100), OverCap::Clamp, None),
            br#"{"input":"x"}"#,
        );
        assert_eq!(
            text(out.unwrap()),
            r#"{"input":"x","max_output_tokens":100}"#
        );
        // Both chat fields are capped.
        let both = br#"{"max_tokens":900,"max_completion_tokens":800}"#;
        let out = apply(
            Endpoint::ChatCompletions,
            &cap(Some(100), OverCap::Clamp, None),
            both,
        );
        assert_eq!(
            text(out.unwrap()),
            r#"{"max_tokens":100,"max_completion_tokens":100}"#
        );
        // A null limit is no limit: the default takes its place, in place.
        let out = apply(
            Endpoint::Responses,
            &cap(Some(30), OverCap::Refuse, Some(20)),
            br#"{"input":"x","max_output_tokens":null,"n":1}"#,
        );
        assert_eq!(
            text(out.unwrap()),
            r#"{"input":"x","max_output_tokens":20,"n":1}"#
        );
        let out = apply(
            Endpoint::ChatCompletions,
            &cap(Some(30), OverCap::Clamp, None),
            br#"{"max_tokens":null,"messages":[]}"#,
        );
        assert_eq!(text(out.unwrap()), r#"{"max_tokens":30,"messages":[]}"#);
        // Embeddings have no output.
        assert!(apply(
            Endpoint::Embeddings,
            &cap(Some(1), OverCap::Refuse, None),
            br#"{"input":"x"}"#
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn temperatures_outside_the_range_are_refused() {
        let mut c = cap(None, OverCap::Clamp, None);
        c.temperature_min = Some(0.0);
        c.temperature_max = Some(1.0);
        let e = apply(Endpoint::Responses, &c, br#"{"temperature":1.5}"#).unwrap_err();
        assert_eq!(e.param(), Some("temperature"));
        assert!(apply(Endpoint::Responses, &c, br#"{"temperature":0.7}"#)
            .unwrap()
            .is_none());
        assert!(apply(Endpoint::Responses, &c, br#"{"temperature":null}"#)
            .unwrap()
            .is_none());
        // Sent twice, the one out of range is refused whichever comes first (most
        // parsers, the upstream's among them, keep the last).
        for body in [
            &br#"{"temperature":0.5,"temperature":1.9}"#[..],
            br#"{"temperature":1.9,"temperature":0.5}"#,
        ] {
            let e = apply(Endpoint::Responses, &c, body).unwrap_err();
            assert_eq!(e.param(), Some("temperature"));
        }
    }
}
