#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `data/models.json` (the simulator's default model list, written by
//! `scripts/gen-models.py`) must list exactly the model ids that OpenAI's spec
//! enumerates in `ModelIdsShared` and `ModelIdsResponses`, plus the embedding
//! and moderation models. Re-derives the set from the spec so the file cannot
//! silently drift from it. On failure, run `scripts/gen-models.py`.

#[path = "support/openapi.rs"]
mod openapi;

use std::collections::BTreeSet;

use serde_json::Value;

const ROOT_SCHEMAS: [&str; 2] = ["ModelIdsShared", "ModelIdsResponses"];

/// Not enumerated by those schemas; kept in step with `EXTRA_MODELS` in
/// scripts/gen-models.py.
const EXTRA_MODELS: [&str; 6] = [
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "omni-moderation-latest",
    "omni-moderation-2024-09-26",
    "text-moderation-latest",
];

fn models_file() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/models.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every string in an `enum` reachable from `node`, following
/// `$ref: "#/components/schemas/…"`. Data-valued keys (`example`, `default`,
/// `x-*`, …) are not schemas and are skipped.
fn collect_enum_strings(
    schemas: &Value,
    node: &Value,
    seen: &mut BTreeSet<String>,
    out: &mut BTreeSet<String>,
) {
    match node {
        Value::Array(items) => items
            .iter()
            .for_each(|n| collect_enum_strings(schemas, n, seen, out)),
        Value::Object(map) => {
            if let Some(target) = map.get("$ref").and_then(Value::as_str) {
                let name = target
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("unexpected $ref {target:?}"));
                if seen.insert(name.to_owned()) {
                    let schema = schemas
                        .get(name)
                        .unwrap_or_else(|| panic!("dangling $ref {target:?}"));
                    collect_enum_strings(schemas, schema, seen, out);
                }
            }
            if let Some(values) = map.get("enum").and_then(Value::as_array) {
                out.extend(values.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            for (key, child) in map {
                let is_data = matches!(
                    key.as_str(),
                    "$ref" | "enum" | "example" | "examples" | "default" | "const" | "description"
                ) || key.starts_with("x-");
                if !is_data {
                    collect_enum_strings(schemas, child, seen, out);
                }
            }
        }
        _ => {}
    }
}

fn spec_model_ids() -> BTreeSet<String> {
    let schemas = openapi::spec_document()
        .pointer("/components/schemas")
        .expect("components.schemas in the spec");
    let mut ids = BTreeSet::new();
    for root in ROOT_SCHEMAS {
        let mut seen = BTreeSet::from([root.to_owned()]);
        let schema = schemas
            .get(root)
            .unwrap_or_else(|| panic!("the spec has no schema {root}"));
        let mut found = BTreeSet::new();
        collect_enum_strings(schemas, schema, &mut seen, &mut found);
        assert!(!found.is_empty(), "no model ids found under {root}");
        ids.extend(found);
    }
    ids
}

#[test]
fn models_file_lists_every_model_the_spec_enumerates() {
    let spec_ids = spec_model_ids();
    // A sanity floor, so a broken walk cannot make the test pass vacuously.
    assert!(
        spec_ids.len() >= 50,
        "only {} ids derived from the spec: {spec_ids:?}",
        spec_ids.len()
    );
    for id in [
        "gpt-4o",
        "gpt-4o-2024-08-06",
        "gpt-5.5",
        "o3-pro",
        "gpt-3.5-turbo-0125",
    ] {
        assert!(spec_ids.contains(id), "expected the spec to enumerate {id}");
    }

    let file = models_file();
    let listed: Vec<&str> = file["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|m| m["id"].as_str().expect("string id"))
        .collect();
    let listed_set: BTreeSet<String> = listed.iter().map(|s| (*s).to_owned()).collect();

    let missing: Vec<&String> = spec_ids
        .iter()
        .filter(|id| !listed_set.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "data/models.json lacks {} model(s) the spec enumerates: {missing:?}\nrun scripts/gen-models.py",
        missing.len()
    );
    let extras_missing: Vec<&str> = EXTRA_MODELS
        .iter()
        .copied()
        .filter(|id| !listed_set.contains(*id))
        .collect();
    assert!(
        extras_missing.is_empty(),
        "data/models.json lacks {extras_missing:?}"
    );

    let expected: BTreeSet<String> = spec_ids
        .iter()
        .cloned()
        .chain(EXTRA_MODELS.map(str::to_owned))
        .collect();
    let unexpected: Vec<&String> = listed_set.difference(&expected).collect();
    assert!(
        unexpected.is_empty(),
        "data/models.json lists model(s) that are neither in the spec nor in the extras: {unexpected:?}\n\
         run scripts/gen-models.py"
    );
}

#[test]
fn models_file_is_well_formed() {
    let file = models_file();
    assert_eq!(
        file["generated_from"],
        "openai-openapi f85dbe2 (shared/openai-openapi/openapi.yaml)"
    );
    let data = file["data"].as_array().expect("data array");
    let ids: Vec<&str> = data
        .iter()
        .map(|m| m["id"].as_str().expect("string id"))
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(ids, sorted, "ids must be sorted and unique");
    for m in data {
        let obj = m.as_object().expect("model object");
        assert_eq!(obj.len(), 3, "exactly id, created, owned_by: {m}");
        let created = m["created"]
            .as_i64()
            .unwrap_or_else(|| panic!("integer created: {m}"));
        assert!(
            (1_600_000_000..2_000_000_000).contains(&created),
            "implausible created: {m}"
        );
        assert!(
            matches!(m["owned_by"].as_str(), Some("openai" | "system")),
            "owned_by must be openai or system: {m}"
        );
        // Each entry plus `object: "model"` is a valid `Model`.
        let mut model = m.clone();
        model["object"] = Value::from("model");
        openapi::assert_valid("Model", &model);
    }
    let dated = data
        .iter()
        .find(|m| m["id"] == "gpt-4o-2024-08-06")
        .expect("gpt-4o-2024-08-06");
    assert_eq!(
        dated["created"], 1_722_902_400,
        "created derives from the date in the id"
    );
}
