//! JSON Schema → a JSON instance that validates against it, for structured output
//! (`text.format` / `response_format` json_schema) and function-call arguments.
//!
//! Covers what OpenAI's strict mode allows and a bit more: `type` (also as an
//! array), `enum`, `const`, `properties` + `required` (every declared property is
//! filled, which satisfies strict mode), `additionalProperties`, `minProperties`,
//! `items` / `prefixItems`, `minItems` / `maxItems` / `uniqueItems`, numeric bounds
//! and `multipleOf`, `minLength` / `maxLength`, `format` (date-time, date, time,
//! email, uuid, uri, hostname, ipv4, ipv6, duration), `anyOf` / `oneOf` (first
//! non-null branch), `allOf` (merged) and `$ref` into the same document
//! (`#/$defs/…`, `#/definitions/…`, any JSON pointer). `pattern` is not solved.
//!
//! Values are derived from property names and a seed, so the same schema and seed
//! always give the same instance. Recursive schemas terminate: past a depth, only
//! required properties and `minItems` elements are generated and `anyOf` prefers a
//! `null` branch.

use serde_json::{Map, Number, Value};

use super::rng::{derive, Rng};

/// Beyond this depth a recursive schema is filled minimally.
const SHALLOW_DEPTH: usize = 6;
/// Beyond this depth generation stops with `null` (only reachable by schemas whose
/// every branch recurses, which no instance can satisfy anyway).
const MAX_DEPTH: usize = 32;

/// An instance of `schema`. `$ref`s resolve against `schema` itself.
pub fn instance(schema: &Value, seed: u64) -> Value {
    Generator { root: schema }.value(schema, "", seed, 0)
}

struct Generator<'a> {
    root: &'a Value,
}

impl Generator<'_> {
    fn value(&self, schema: &Value, hint: &str, seed: u64, depth: usize) -> Value {
        let obj = match schema {
            Value::Object(o) => o,
            Value::Bool(true) => return Value::String(sample_string(hint, seed)),
            _ => return Value::Null,
        };
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        if let Some(target) = obj.get("$ref").and_then(Value::as_str) {
            if let Some(resolved) = self.resolve(target) {
                let merged = overlay(resolved, obj, "$ref");
                return self.value(&merged, hint, seed, depth + 1);
            }
        }
        if let Some(c) = obj.get("const") {
            return c.clone();
        }
        if let Some(Value::Array(options)) = obj.get("enum") {
            let mut rng = Rng::new(seed);
            return rng.pick(options).cloned().unwrap_or(Value::Null);
        }
        if let Some(Value::Array(parts)) = obj.get("allOf") {
            let merged = self.merge_all_of(obj, parts);
            return self.value(&merged, hint, seed, depth + 1);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = obj.get(key) {
                let Some(branch) = self.choose_branch(branches, depth) else {
                    return Value::Null;
                };
                let merged = overlay(branch, obj, key);
                return self.value(&merged, hint, seed, depth + 1);
            }
        }
        match type_of(obj, depth) {
            "object" => self.object(obj, hint, seed, depth),
            "array" => self.array(obj, hint, seed, depth),
            "integer" => number(obj, seed, true),
            "number" => number(obj, seed, false),
            "boolean" => Value::Bool(seed & 1 == 0),
            "null" => Value::Null,
            _ => Value::String(string(obj, hint, seed)),
        }
    }

    /// The schema a local `$ref` points at (`#`, `#/$defs/X`, any JSON pointer).
    fn resolve(&self, reference: &str) -> Option<&Value> {
        let pointer = reference.strip_prefix('#')?;
        if pointer.is_empty() {
            return Some(self.root);
        }
        self.root.pointer(pointer)
    }

    /// Follows `$ref`s (a few hops) so a branch's `type` can be inspected.
    fn deref<'v>(&'v self, mut schema: &'v Value) -> &'v Value {
        for _ in 0..8 {
            match schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| self.resolve(r))
            {
                Some(next) => schema = next,
                None => break,
            }
        }
        schema
    }

    /// The first branch that is not `null` (Optional fields read better filled); past
    /// the shallow depth, the `null` branch when there is one, to end recursion.
    fn choose_branch<'v>(&'v self, branches: &'v [Value], depth: usize) -> Option<&'v Value> {
        let is_null = |b: &Value| self.deref(b).get("type").and_then(Value::as_str) == Some("null");
        let preferred = if depth >= SHALLOW_DEPTH {
            branches.iter().find(|b| is_null(b))
        } else {
            branches.iter().find(|b| !is_null(b))
        };
        preferred.or(branches.first())
    }

    /// `allOf` as one schema: properties and `required` united, other keywords taken
    /// from the first part that has them.
    fn merge_all_of(&self, obj: &Map<String, Value>, parts: &[Value]) -> Value {
        let mut merged = obj.clone();
        merged.remove("allOf");
        for part in parts {
            let Value::Object(part) = self.deref(part) else {
                continue;
            };
            for (key, value) in part {
                match (key.as_str(), merged.get_mut(key)) {
                    ("properties", Some(Value::Object(props))) => {
                        if let Value::Object(more) = value {
                            for (name, sub) in more {
                                props.entry(name.clone()).or_insert_with(|| sub.clone());
                            }
                        }
                    }
                    ("required", Some(Value::Array(names))) => {
                        for name in value.as_array().into_iter().flatten() {
                            if !names.contains(name) {
                                names.push(name.clone());
                            }
                        }
                    }
                    (_, Some(_)) => {}
                    (_, None) => {
                        merged.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        Value::Object(merged)
    }

    fn object(&self, obj: &Map<String, Value>, hint: &str, seed: u64, depth: usize) -> Value {
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let shallow = depth >= SHALLOW_DEPTH;
        let mut out = Map::new();
        if let Some(Value::Object(props)) = obj.get("properties") {
            for (name, sub) in props {
                if shallow && !required.contains(&name.as_str()) {
                    continue;
                }
                out.insert(
                    name.clone(),
                    self.value(sub, name, derive(seed, name), depth + 1),
                );
            }
        }
        let extra_schema = match obj.get("additionalProperties") {
            Some(Value::Bool(false)) => None,
            Some(s @ Value::Object(_)) => Some(s.clone()),
            _ => Some(Value::Object(Map::new())),
        };
        let Some(extra_schema) = extra_schema else {
            return Value::Object(out);
        };
        for name in required {
            if !out.contains_key(name) {
                let v = self.value(&extra_schema, name, derive(seed, name), depth + 1);
                out.insert(name.to_owned(), v);
            }
        }
        let min_props = obj
            .get("minProperties")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let stem = if hint.is_empty() { "key" } else { hint };
        let mut i = 1;
        while (out.len() as u64) < min_props {
            let name = format!("{stem}_{i}");
            let v = self.value(&extra_schema, &name, derive(seed, &name), depth + 1);
            out.insert(name, v);
            i += 1;
        }
        Value::Object(out)
    }

    fn array(&self, obj: &Map<String, Value>, hint: &str, seed: u64, depth: usize) -> Value {
        let min = obj.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = obj
            .get("maxItems")
            .and_then(Value::as_u64)
            .map_or(usize::MAX, |m| m as usize);
        let prefix = obj.get("prefixItems").and_then(Value::as_array);
        let items = obj.get("items");
        // Without `prefixItems`, draft-04 style `items: [..]` is a tuple.
        let tuple = prefix.or_else(|| items.and_then(Value::as_array));
        let rest = match (prefix, items) {
            (Some(_), items) => items.filter(|i| !i.is_array()),
            (None, Some(Value::Array(_))) => obj.get("additionalItems"),
            (None, items) => items,
        };
        let tuple_len = tuple.map_or(0, Vec::len);
        let wanted = if depth >= SHALLOW_DEPTH {
            min
        } else {
            min.max(2).max(tuple_len)
        };
        let rest_allowed = !matches!(rest, Some(Value::Bool(false)));
        let count = wanted
            .min(max)
            .min(if rest_allowed { usize::MAX } else { tuple_len });
        let unique = obj
            .get("uniqueItems")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let element_hint = singular(hint);
        let any = Value::Object(Map::new());
        let mut out: Vec<Value> = Vec::with_capacity(count);
        for i in 0..count {
            let schema = tuple.and_then(|t| t.get(i)).or(rest).unwrap_or(&any);
            let mut v = Value::Null;
            // A few reseeded attempts to keep `uniqueItems` arrays unique.
            for attempt in 0..8 {
                let s = derive(seed, &format!("{i}/{attempt}"));
                v = self.value(schema, element_hint, s, depth + 1);
                if !unique || !out.contains(&v) {
                    break;
                }
            }
            if unique && out.contains(&v) {
                break;
            }
            out.push(v);
        }
        Value::Array(out)
    }
}

/// `base` with the keywords of `over` laid on top, minus `skip` (the keyword that led
/// to `base`, so it is not followed again).
fn overlay(base: &Value, over: &Map<String, Value>, skip: &str) -> Value {
    let mut merged = match base {
        Value::Object(b) => b.clone(),
        Value::Bool(true) => Map::new(),
        other => return other.clone(),
    };
    for (key, value) in over {
        if key != skip && !matches!(key.as_str(), "title" | "description" | "default") {
            merged.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    Value::Object(merged)
}

/// The JSON type to generate: `type` (first non-null entry of a list, unless past the
/// shallow depth), else inferred from the keywords present.
fn type_of(obj: &Map<String, Value>, depth: usize) -> &str {
    match obj.get("type") {
        Some(Value::String(t)) => return t,
        Some(Value::Array(types)) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            if depth >= SHALLOW_DEPTH && names.contains(&"null") {
                return "null";
            }
            if let Some(t) = names.iter().find(|t| **t != "null").or(names.first()) {
                return t;
            }
        }
        _ => {}
    }
    let has = |keys: &[&str]| keys.iter().any(|k| obj.contains_key(*k));
    if has(&[
        "properties",
        "required",
        "additionalProperties",
        "minProperties",
    ]) {
        "object"
    } else if has(&["items", "prefixItems", "minItems", "maxItems"]) {
        "array"
    } else if has(&[
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
    ]) {
        "number"
    } else {
        "string"
    }
}

/// A number within the schema's bounds, honouring `multipleOf`.
fn number(obj: &Map<String, Value>, seed: u64, integer: bool) -> Value {
    let (lo, lo_excl) = bound(obj, "minimum", "exclusiveMinimum");
    let (hi, hi_excl) = bound(obj, "maximum", "exclusiveMaximum");
    let step = obj
        .get("multipleOf")
        .and_then(Value::as_f64)
        .filter(|m| *m > 0.0);
    let mut rng = Rng::new(seed);
    if integer || step.is_some_and(|m| m.fract() == 0.0) {
        let step = step.map_or(1, |m| m as i64).max(1);
        let lo = lo.map(|l| {
            if lo_excl {
                l.floor() as i64 + 1
            } else {
                l.ceil() as i64
            }
        });
        let hi = hi.map(|h| {
            if hi_excl {
                h.ceil() as i64 - 1
            } else {
                h.floor() as i64
            }
        });
        let (lo, hi) = match (lo, hi) {
            (Some(l), Some(h)) => (l, h.max(l)),
            (Some(l), None) => (l, l.saturating_add(100)),
            (None, Some(h)) if h >= 1 => (h.saturating_sub(100).max(1), h),
            (None, Some(h)) => (h.saturating_sub(100), h),
            (None, None) => (1, 100),
        };
        let first = lo.div_euclid(step) * step + if lo.rem_euclid(step) == 0 { 0 } else { step };
        let slots = if first > hi { 0 } else { (hi - first) / step };
        let v = first + step * (rng.below(slots as usize + 1) as i64);
        return Value::Number(v.into());
    }
    let lo_f = lo.unwrap_or_else(|| hi.map_or(0.0, |h| (h - 100.0).min(0.0)));
    let hi_f = hi.unwrap_or(lo_f + 100.0).max(lo_f);
    // Two decimals read naturally; the midpoint fallback covers tight or exclusive
    // ranges where the rounded draw lands on an excluded bound.
    let mut v = ((lo_f + (hi_f - lo_f) * rng.unit()) * 100.0).round() / 100.0;
    if let Some(m) = step {
        v = (v / m).round() * m;
    }
    let below = if lo_excl { v <= lo_f } else { v < lo_f };
    let above = if hi_excl { v >= hi_f } else { v > hi_f };
    if below || above {
        v = (lo_f + hi_f) / 2.0;
    }
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// A lower or upper bound and whether it is exclusive, in both the draft-04 form
/// (`exclusiveMinimum: true` next to `minimum`) and the 2019+ form (a number).
fn bound(obj: &Map<String, Value>, inclusive: &str, exclusive: &str) -> (Option<f64>, bool) {
    let incl = obj.get(inclusive).and_then(Value::as_f64);
    match obj.get(exclusive) {
        Some(Value::Number(n)) => {
            let e = n.as_f64();
            match (incl, e) {
                // Both given: the tighter one wins.
                (Some(i), Some(e)) if (inclusive == "minimum") == (i > e) => (Some(i), false),
                (_, Some(e)) => (Some(e), true),
                (i, None) => (i, false),
            }
        }
        Some(Value::Bool(true)) => (incl, incl.is_some()),
        _ => (incl, false),
    }
}

/// A string for `hint`, shaped by `format` and cut or padded to the length bounds.
fn string(obj: &Map<String, Value>, hint: &str, seed: u64) -> String {
    let formatted = obj
        .get("format")
        .and_then(Value::as_str)
        .and_then(|f| format_value(f, hint, seed));
    let mut s = formatted.unwrap_or_else(|| sample_string(hint, seed));
    let min = obj.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
    let max = obj
        .get("maxLength")
        .and_then(Value::as_u64)
        .map_or(usize::MAX, |m| m as usize);
    let len = s.chars().count();
    if len > max {
        s = s.chars().take(max).collect();
    }
    let filler = ['x', 'y', 'z'];
    let mut i = 0;
    while s.chars().count() < min {
        s.push(filler[i % filler.len()]);
        i += 1;
    }
    s
}

/// A value in the shape of a `format`, or `None` for formats we leave free.
fn format_value(format: &str, hint: &str, seed: u64) -> Option<String> {
    let mut rng = Rng::new(seed);
    let (month, day) = (1 + rng.below(12), 1 + rng.below(28));
    let (hour, minute, second) = (rng.below(24), rng.below(60), rng.below(60));
    let slug = slug(hint);
    let s = match format {
        "date-time" => format!("2024-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z"),
        "date" => format!("2024-{month:02}-{day:02}"),
        "time" => format!("{hour:02}:{minute:02}:{second:02}Z"),
        "email" | "idn-email" => format!("{slug}@example.com"),
        "uuid" => uuid(rng.next_u64(), rng.next_u64()),
        "uri" | "url" | "iri" => format!("https://example.com/{slug}"),
        "uri-reference" | "iri-reference" => format!("/{slug}"),
        "hostname" | "idn-hostname" => format!("{slug}.example.com"),
        "ipv4" => format!("192.0.2.{}", 1 + rng.below(254)),
        "ipv6" => format!("2001:db8::{:x}", 1 + rng.below(0xfffe)),
        "duration" => format!("PT{}M", 1 + rng.below(90)),
        _ => return None,
    };
    Some(s)
}

/// An RFC 4122 version-4 UUID built from two words.
fn uuid(a: u64, b: u64) -> String {
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Readable sample text for a property called `hint`.
fn sample_string(hint: &str, seed: u64) -> String {
    const NAMES: &[&str] = &[
        "Ada Lovelace",
        "Alan Turing",
        "Grace Hopper",
        "Katherine Johnson",
    ];
    const CITIES: &[&str] = &["Paris", "Tokyo", "Nairobi", "Lima", "Oslo"];
    const WORDS: &[&str] = &[
        "amber", "cedar", "delta", "harbor", "maple", "nova", "quartz", "willow",
    ];
    let mut rng = Rng::new(seed);
    let key = hint.to_ascii_lowercase();
    let pick =
        |rng: &mut Rng, list: &[&str]| rng.pick(list).copied().unwrap_or("sample").to_owned();
    if key.contains("name") && !key.contains("file") {
        return pick(&mut rng, NAMES);
    }
    if key.contains("city") || key.contains("location") {
        return pick(&mut rng, CITIES);
    }
    if key == "id" || key.ends_with("_id") {
        return format!("{}_{:08x}", slug(hint), rng.next_u64() as u32);
    }
    let word = pick(&mut rng, WORDS);
    if key.is_empty() {
        return word;
    }
    if key.contains("description") || key.contains("summary") || key.contains("reason") {
        return format!("A short {} about {word}.", key.replace('_', " "));
    }
    format!("{} {word}", key.replace('_', " "))
}

/// `hint` reduced to lower-case letters, digits and dots; `user` when empty.
fn slug(hint: &str) -> String {
    let s: String = hint
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            '_' | '-' | '.' | ' ' => Some('.'),
            _ => None,
        })
        .collect();
    let s = s.trim_matches('.').to_owned();
    if s.is_empty() {
        "user".to_owned()
    } else {
        s
    }
}

/// `tags` → `tag`: element hints read better singular.
fn singular(hint: &str) -> &str {
    hint.strip_suffix('s')
        .filter(|s| !s.is_empty())
        .unwrap_or(hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Asserts the instances for several seeds validate, formats asserted too.
    fn assert_instances_valid(schema: &Value) -> Value {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .unwrap();
        for seed in 0..40 {
            let v = instance(schema, seed);
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "seed {seed}: {v}\n{errors:?}");
        }
        instance(schema, 0)
    }

    #[test]
    fn strict_schema_with_defs_nested_objects_arrays_enums_and_any_of() {
        let schema = json!({
            "type": "object",
            "$defs": {
                "address": {"type": "object", "properties": {
                    "street": {"type": "string"}, "city": {"type": "string"},
                    "zip": {"type": ["string", "null"], "pattern": "^.*$"}},
                    "required": ["street", "city", "zip"], "additionalProperties": false},
                "priority": {"type": "string", "enum": ["low", "medium", "high"]}
            },
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 18, "maximum": 99},
                "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "priority": {"$ref": "#/$defs/priority"},
                "home": {"$ref": "#/$defs/address"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
                "contact": {"anyOf": [
                    {"type": "object", "properties": {"email": {"type": "string", "format": "email"}},
                     "required": ["email"], "additionalProperties": false},
                    {"type": "null"}]},
                "kind": {"const": "ticket"},
                "created": {"type": "string", "format": "date-time"},
                "due": {"type": "string", "format": "date"},
                "id": {"type": "string", "format": "uuid"},
                "done": {"type": "boolean"},
                "nothing": {"type": "null"}
            },
            "required": ["name", "age", "score", "priority", "home", "tags", "contact", "kind",
                         "created", "due", "id", "done", "nothing"],
            "additionalProperties": false
        });
        let v = assert_instances_valid(&schema);
        assert_eq!(v["kind"], "ticket");
        assert!(v["contact"]["email"]
            .as_str()
            .is_some_and(|e| e.contains('@')));
        assert!(
            v["home"]["zip"].is_string(),
            "Optional fields are filled: {v}"
        );
        assert_eq!(instance(&schema, 5), instance(&schema, 5));
        assert_ne!(instance(&schema, 5), instance(&schema, 6));
    }

    #[test]
    fn pydantic_style_and_draft_07_definitions() {
        // What Pydantic emits for a model with an Optional and a nested list of models.
        let schema = json!({
            "$defs": {"Item": {"properties": {"sku": {"title": "Sku", "type": "string"},
                                              "qty": {"title": "Qty", "type": "integer"}},
                               "required": ["sku", "qty"], "title": "Item", "type": "object",
                               "additionalProperties": false}},
            "properties": {"items": {"items": {"$ref": "#/$defs/Item"}, "title": "Items", "type": "array"},
                           "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Note"}},
            "required": ["items", "note"], "title": "Order", "type": "object",
            "additionalProperties": false
        });
        let v = assert_instances_valid(&schema);
        assert_eq!(v["items"].as_array().map(Vec::len), Some(2));
        let draft7 = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": {"color": {"enum": ["red", "green"]}},
            "type": "object",
            "properties": {"c": {"$ref": "#/definitions/color"},
                           "n": {"type": "number", "minimum": 5, "exclusiveMaximum": 6, "multipleOf": 0.5}},
            "required": ["c", "n"]
        });
        let v = assert_instances_valid(&draft7);
        assert!(v["n"] == 5.0 || v["n"] == 5.5, "{v}");
    }

    #[test]
    fn all_of_one_of_lengths_counts_and_uniqueness() {
        let schema = json!({
            "type": "object",
            "properties": {
                "merged": {"allOf": [
                    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "integer", "multipleOf": 7}}, "required": ["b"]}]},
                "either": {"oneOf": [{"type": "integer", "minimum": 1000}, {"type": "string", "maxLength": 2}]},
                "code": {"type": "string", "minLength": 12, "maxLength": 12},
                "short": {"type": "string", "maxLength": 3},
                "set": {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 3, "uniqueItems": true},
                "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}],
                         "items": false},
                "bag": {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2},
                "neg": {"type": "integer", "maximum": -10},
                "ip": {"type": "string", "format": "ipv4"},
                "when": {"type": "string", "format": "time"},
                "site": {"type": "string", "format": "uri"}
            },
            "required": ["merged", "either", "code", "short", "set", "pair", "bag", "neg", "ip",
                         "when", "site"]
        });
        let v = assert_instances_valid(&schema);
        assert_eq!(v["pair"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["set"].as_array().map(Vec::len), Some(3));
        assert!(v["merged"]["a"].is_string() && v["merged"]["b"].is_i64());
    }

    #[test]
    fn recursive_schemas_terminate() {
        let schema = json!({
            "$defs": {"node": {"type": "object", "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                "parent": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
                "required": ["value", "children", "parent"], "additionalProperties": false}},
            "$ref": "#/$defs/node"
        });
        let v = assert_instances_valid(&schema);
        assert!(v["children"].is_array());
        let self_ref = json!({"type": "object", "properties": {"next": {"$ref": "#"}}});
        assert_instances_valid(&self_ref);
    }

    #[test]
    fn odd_schemas_still_give_something_valid() {
        for schema in [
            json!({}),
            json!(true),
            json!({"type": "string"}),
            json!({"enum": [null]}),
            json!({"type": ["integer", "null"]}),
            json!({"minimum": 3}),
            json!({"type": "array"}),
            json!({"type": "object"}),
        ] {
            assert_instances_valid(&schema);
        }
    }
}
