//! Function tools: which offered function the simulated model calls (from
//! `tool_choice`), and its arguments (an instance of the parameter schema). Shared by
//! the Responses API (flat tools, `{"type":"function","name"}` choices) and Chat
//! (nested tools, `{"type":"function","function":{"name"}}` choices).

use serde_json::{json, Value};

use super::rng::derive;
use super::schema;
use crate::error::ApiError;

/// A function the request offers.
#[derive(Debug, Clone, Copy)]
pub struct Function<'a> {
    pub name: &'a str,
    pub parameters: Option<&'a Value>,
}

/// The call the simulated model makes.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCall {
    pub name: String,
    /// Compact JSON text of the arguments.
    pub arguments: String,
}

/// The function to call, or `None` for a text answer: `tool_choice` `"none"`, a
/// built-in tool choice, or no function offered. `"auto"`, `"required"` and an absent
/// choice call the first function; a named choice calls that one (400 if it is not
/// offered); `allowed_tools` calls the first offered function it allows.
pub fn choose<'a>(
    functions: &[Function<'a>],
    tool_choice: Option<&Value>,
) -> Result<Option<Function<'a>>, ApiError> {
    let first = functions.first().copied();
    let Some(choice) = tool_choice else {
        return Ok(first);
    };
    match choice {
        Value::String(mode) if mode == "none" => Ok(None),
        Value::String(_) => Ok(first),
        Value::Object(obj) => match obj.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = obj
                    .get("name")
                    .or_else(|| obj.get("function").and_then(|f| f.get("name")))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match functions.iter().find(|f| f.name == name) {
                    Some(f) => Ok(Some(*f)),
                    None => Err(ApiError::invalid_request(
                        format!("Tool choice '{name}' not found in 'tools' parameter."),
                        Some("tool_choice"),
                        Some("invalid_value"),
                    )),
                }
            }
            Some("allowed_tools") => Ok(first_allowed(functions, obj)),
            _ => Ok(None),
        },
        _ => Ok(first),
    }
}

/// The first offered function named in an `allowed_tools` choice (Responses puts
/// `tools` on the choice, Chat nests them under `allowed_tools`).
fn first_allowed<'a>(
    functions: &[Function<'a>],
    choice: &serde_json::Map<String, Value>,
) -> Option<Function<'a>> {
    let list = choice
        .get("tools")
        .or_else(|| choice.get("allowed_tools").and_then(|a| a.get("tools")))
        .and_then(Value::as_array)?;
    let allowed: Vec<&str> = list
        .iter()
        .filter_map(|t| {
            t.get("name")
                .or_else(|| t.get("function").and_then(|f| f.get("name")))
                .and_then(Value::as_str)
        })
        .collect();
    functions
        .iter()
        .find(|f| allowed.contains(&f.name))
        .copied()
}

/// Arguments for `function`: an instance of its parameter schema (an empty object
/// when it declares none), seeded by the conversation and the function name.
pub fn call(function: Function<'_>, seed: u64) -> PlannedCall {
    let empty = json!({"type": "object", "properties": {}});
    let params = function
        .parameters
        .filter(|p| p.is_object())
        .unwrap_or(&empty);
    let args = schema::instance(params, derive(seed, function.name));
    // An object is what every SDK parses arguments into; a schema that yields
    // something else is wrapped rather than sent as a bare value.
    let args = if args.is_object() {
        args
    } else {
        json!({"value": args})
    };
    PlannedCall {
        name: function.name.to_owned(),
        arguments: args.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(params: &Value) -> Vec<Function<'_>> {
        vec![
            Function {
                name: "get_weather",
                parameters: Some(params),
            },
            Function {
                name: "get_time",
                parameters: None,
            },
        ]
    }

    #[test]
    fn tool_choice_selects_the_function() {
        let p = json!({"type": "object"});
        let f = offered(&p);
        let name = |c: Option<Value>| choose(&f, c.as_ref()).unwrap().map(|f| f.name);
        assert_eq!(name(None), Some("get_weather"));
        assert_eq!(name(Some(json!("auto"))), Some("get_weather"));
        assert_eq!(name(Some(json!("required"))), Some("get_weather"));
        assert_eq!(name(Some(json!("none"))), None);
        assert_eq!(
            name(Some(json!({"type": "function", "name": "get_time"}))),
            Some("get_time")
        );
        assert_eq!(
            name(Some(
                json!({"type": "function", "function": {"name": "get_time"}})
            )),
            Some("get_time")
        );
        assert_eq!(
            name(Some(json!({"type": "allowed_tools", "mode": "auto",
                              "tools": [{"type": "function", "name": "get_time"}]}))),
            Some("get_time")
        );
        assert_eq!(name(Some(json!({"type": "web_search_preview"}))), None);
        let e = choose(&f, Some(&json!({"type": "function", "name": "nope"}))).unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("tool_choice"));
        assert!(choose(&[], None).unwrap().is_none());
    }

    #[test]
    fn arguments_follow_the_schema_and_are_stable() {
        let p = json!({"type": "object", "properties": {"city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city", "unit"],
            "additionalProperties": false});
        let f = Function {
            name: "get_weather",
            parameters: Some(&p),
        };
        let a = call(f, 7);
        assert_eq!(a, call(f, 7));
        let v: Value = serde_json::from_str(&a.arguments).unwrap();
        assert!(v["city"].is_string());
        assert!(v["unit"] == "c" || v["unit"] == "f");
        let none = call(
            Function {
                name: "get_time",
                parameters: None,
            },
            7,
        );
        assert_eq!(none.arguments, "{}");
    }
}
