//! Model routing and preflight through the real server against the simulator: aliases
//! (gateway-wide and per project, applied without a restart), access lists (404
//! `model_not_found` listing the usable models, a filtered `GET /v1/models`), the
//! context window, schema errors with their paths, and `response_format` on
//! `/v1/responses` translated or refused. Every refusal is shown not to reach the
//! upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_gateway::config::{RawPreflight, ResponseFormatMode};
use tollgate_store::{AccessKind, Actor};

fn cli() -> Actor {
    Actor::new("cli:test", "cli")
}

async fn error_of(res: reqwest::Response) -> Value {
    let v: Value = res.json().await.unwrap();
    v["error"].clone()
}

#[tokio::test]
async fn aliases_resolve_to_the_model_that_serves_and_project_aliases_apply_live() {
    let mut h = support::start_with(|raw| {
        raw.aliases.insert("cheap".into(), "gpt-4.1-nano".into());
    })
    .await;
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "smart", "input": "hello", "max_output_tokens": 20}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-tollgate-model"], "gpt-4.1");
    let v: Value = res.json().await.unwrap();
    assert!(v["model"].as_str().unwrap().starts_with("gpt-4.1"), "{v}");
    let sent = h.sim_requests().await;
    assert_eq!(sent.last().unwrap()["body"]["model"], "gpt-4.1");

    // The config's own alias, on Chat.
    let res = h
        .post(
            "/v1/chat/completions",
            json!({"model": "cheap", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert!(
        v["model"].as_str().unwrap().starts_with("gpt-4.1-nano"),
        "{v}"
    );

    // A project alias replaces the gateway's, without a restart.
    h.store
        .set_model_alias("shop", "smart", "gpt-4o-mini", support::now_ms(), &cli())
        .await
        .unwrap();
    let body = json!({"model": "smart", "input": "hello", "max_output_tokens": 20});
    let switched = support::eventually(Duration::from_secs(5), || async {
        let res = h.post("/v1/responses", body.clone()).send().await.unwrap();
        res.headers()
            .get("x-tollgate-model")
            .is_some_and(|m| m == "gpt-4o-mini")
    })
    .await;
    assert!(switched.is_some(), "the project alias never applied");
    // A model that is no alias passes untouched, without the header.
    let res = h
        .post("/v1/responses", json!({"model": "gpt-4o", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-tollgate-model").is_none());

    let records = h.stop_and_records().await;
    let first = &records[0];
    assert_eq!(first.model_requested.as_deref(), Some("smart"));
    assert!(first
        .model_served
        .as_deref()
        .unwrap()
        .starts_with("gpt-4.1"));
    assert!(records
        .iter()
        .any(|r| r.model_requested.as_deref() == Some("smart")
            && r.model_served
                .as_deref()
                .is_some_and(|m| m.starts_with("gpt-4o-mini"))));
}

#[tokio::test]
async fn access_lists_refuse_other_models_with_the_usable_list_and_filter_the_model_list() {
    let mut h = support::start().await;
    let (prod_key, _) = h.mint("prod", tollgate_store::Role::Member).await;
    h.store
        .set_model_access(
            "shop",
            Some("dev"),
            AccessKind::Allow,
            &["gpt-4o-mini".into(), "gpt-4.1*".into()],
            support::now_ms(),
            &cli(),
        )
        .await
        .unwrap();
    h.store
        .set_model_access(
            "shop",
            None,
            AccessKind::Deny,
            &["gpt-4.1-nano".into()],
            support::now_ms(),
            &cli(),
        )
        .await
        .unwrap();
    // Both writes must have reached the server: a reload between them would show the
    // allow list without the deny (gpt-4.1-nano still allowed by gpt-4.1*).
    let refused = support::eventually(Duration::from_secs(5), || async {
        let mut all = true;
        for model in ["gpt-4o", "gpt-4.1-nano"] {
            let res = h
                .post("/v1/responses", json!({"model": model, "input": "hi"}))
                .send()
                .await
                .unwrap();
            all &= res.status() == 404;
        }
        all
    })
    .await;
    assert!(refused.is_some(), "the allow-list never applied");
    let before = h.sim_requests().await.len();
    let res = h
        .post("/v1/responses", json!({"model": "gpt-4o", "input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["x-should-retry"], "false");
    let e = error_of(res).await;
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["param"], "model");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("This key may use: gpt-4.1*, gpt-4o-mini."),
        "{m}"
    );
    // Denied for every environment, though the prefix allows it; and through an alias.
    for model in ["gpt-4.1-nano", "smart"] {
        let res = h
            .post("/v1/responses", json!({"model": model, "input": "hi"}))
            .send()
            .await
            .unwrap();
        let status = res.status();
        if model == "smart" {
            // smart → gpt-4.1: allowed by the prefix.
            assert_eq!(status, 200, "{model}");
        } else {
            assert_eq!(status, 404, "{model}");
        }
    }
    // Allowed models and their snapshots pass.
    for model in ["gpt-4o-mini", "gpt-4o-mini-2024-07-18", "fast"] {
        let res = h
            .post(
                "/v1/chat/completions",
                json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{model}");
    }
    // Only the upstream calls that were allowed went out: the three chats and `smart`.
    let sent = h.sim_requests().await.len() - before;
    assert_eq!(sent, 4, "refusals never reach the upstream");

    // The model list shows what the key may use.
    let list: Value = h
        .http
        .get(h.url("/v1/models"))
        .bearer_auth(&h.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"gpt-4o-mini") && ids.contains(&"gpt-4.1"),
        "{ids:?}"
    );
    assert!(
        !ids.contains(&"gpt-4o") && !ids.contains(&"gpt-4.1-nano"),
        "{ids:?}"
    );
    assert!(ids
        .iter()
        .all(|id| id.starts_with("gpt-4o-mini") || id.starts_with("gpt-4.1")));
    let res = h
        .http
        .get(h.url("/v1/models/gpt-4o"))
        .bearer_auth(&h.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = h
        .http
        .get(h.url("/v1/models/gpt-4o-mini"))
        .bearer_auth(&h.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Another environment of the project has no allow-list: only the deny-list applies.
    let prod = |model: &'static str| {
        h.http
            .post(h.url("/v1/responses"))
            .bearer_auth(&prod_key)
            .json(&json!({"model": model, "input": "hi"}))
            .send()
    };
    let ok = support::eventually(Duration::from_secs(5), || async {
        prod("gpt-4o").await.unwrap().status() == 200
    })
    .await;
    assert!(ok.is_some(), "prod may use gpt-4o");
    assert_eq!(prod("gpt-4.1-nano").await.unwrap().status(), 404);

    let records = h.stop_and_records().await;
    let refused = records
        .iter()
        .find(|r| r.status == 404 && r.model_requested.as_deref() == Some("gpt-4o"))
        .expect("the refusal is recorded");
    assert_eq!(refused.error_code.as_deref(), Some("model_not_found"));
}

#[tokio::test]
async fn a_request_that_cannot_fit_the_context_window_is_refused_with_the_numbers() {
    let mut h = support::start().await;
    let before = h.sim_requests().await.len();
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hello", "max_output_tokens": 200_000}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let e = error_of(res).await;
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(e["param"], "input");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("maximum context length is 128000 tokens"), "{m}");
    assert!(m.contains("200000 in the completion"), "{m}");

    // A long conversation on Chat, counted with the tokenizer.
    let text = "hello ".repeat(135_000);
    let res = h
        .post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let e = error_of(res).await;
    assert_eq!(e["param"], "messages");
    assert!(
        e["message"].as_str().unwrap().contains("in the messages"),
        "{e}"
    );
    assert_eq!(
        h.sim_requests().await.len(),
        before,
        "nothing reached the upstream"
    );

    // What fits passes.
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hello", "max_output_tokens": 100}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    h.stop().await;
}

#[tokio::test]
async fn a_stored_catalog_entry_changes_a_running_servers_context_window_and_cost() {
    let mut h = support::start().await;
    let big = json!({"model": "gpt-4o-mini", "input": "hello", "max_output_tokens": 20_000});
    let res = h.post("/v1/responses", big.clone()).send().await.unwrap();
    assert_eq!(res.status(), 200, "fits the built-in 128000 window");
    let builtin_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();

    // The store's entry replaces the built-in one while the server runs: a window of
    // 10000 tokens and $100 / $200 per 1M tokens.
    let entry = tollgate_store::CatalogModel {
        id: "gpt-4o-mini".into(),
        context_window: Some(10_000),
        max_output_tokens: Some(5_000),
        input_per_1m_milli_usd: 100_000,
        output_per_1m_milli_usd: Some(200_000),
        ..Default::default()
    };
    h.store
        .set_catalog_model(&entry, support::now_ms(), &cli())
        .await
        .unwrap();
    let refused = support::eventually(Duration::from_secs(5), || async {
        let res = h.post("/v1/responses", big.clone()).send().await.unwrap();
        res.status() == 400
    })
    .await;
    assert!(refused.is_some(), "the stored entry never applied");
    let e = error_of(h.post("/v1/responses", big.clone()).send().await.unwrap()).await;
    assert_eq!(e["code"], "context_length_exceeded");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("maximum context length is 10000 tokens"), "{m}");

    // What fits is served and priced at the stored prices.
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hello", "max_output_tokens": 50}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let priced_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();

    // Removed from the store, the built-in entry applies again.
    assert!(h
        .store
        .remove_catalog_model("gpt-4o-mini", support::now_ms(), &cli())
        .await
        .unwrap());
    let back = support::eventually(Duration::from_secs(5), || async {
        let res = h.post("/v1/responses", big.clone()).send().await.unwrap();
        res.status() == 200
    })
    .await;
    assert!(back.is_some(), "the built-in entry never came back");

    let records = h.stop_and_records().await;
    let rec = records
        .iter()
        .find(|r| r.request_id == priced_id)
        .expect("the priced call is recorded");
    assert!(rec.input_tokens > 0 && rec.output_tokens > 0, "{rec:?}");
    assert_eq!(
        rec.cost_usd_nanos,
        Some(rec.input_tokens * 100_000 + rec.output_tokens * 200_000),
        "priced per token at the stored USD-per-1M prices: {rec:?}"
    );
    let first = records.iter().find(|r| r.request_id == builtin_id).unwrap();
    assert_eq!(
        first.cost_usd_nanos,
        Some(
            (first.input_tokens - first.cached_tokens) * 150
                + first.cached_tokens * 75
                + first.output_tokens * 600
        ),
        "the first call at the built-in prices"
    );
}

#[tokio::test]
async fn schema_errors_name_their_path_before_the_upstream() {
    let mut h = support::start().await;
    let before = h.sim_requests().await.len();
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name"],
        "additionalProperties": false
    });
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "x",
                   "text": {"format": {"type": "json_schema", "name": "person", "strict": true, "schema": schema}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let e = error_of(res).await;
    assert_eq!(e["code"], "invalid_json_schema");
    assert_eq!(e["param"], "text.format.schema");
    assert!(
        e["message"].as_str().unwrap().contains("Missing 'age'"),
        "{e}"
    );

    let res = h
        .post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "function", "function": {"name": "f",
                      "parameters": {"type": "object", "properties": {"n": {"type": "numbr"}}}}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let e = error_of(res).await;
    assert_eq!(e["code"], "invalid_function_parameters");
    assert_eq!(e["param"], "tools[0].function.parameters/properties/n/type");
    assert_eq!(
        h.sim_requests().await.len(),
        before,
        "nothing reached the upstream"
    );
    h.stop().await;
}

#[tokio::test]
async fn response_format_on_responses_is_translated_with_a_warning() {
    let mut h = support::start().await;
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "a person",
                   "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": true,
                       "schema": {"type": "object", "properties": {"name": {"type": "string"}},
                                  "required": ["name"], "additionalProperties": false}}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let warning = res.headers()["x-tollgate-warning"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(warning.contains("text.format"), "{warning}");
    let v: Value = res.json().await.unwrap();
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap();
    let answer: Value = serde_json::from_str(text).unwrap();
    assert!(answer["name"].is_string(), "{answer}");
    let sent = h.sim_requests().await;
    let body = &sent.last().unwrap()["body"];
    assert!(body.get("response_format").is_none());
    assert_eq!(body["text"]["format"]["type"], "json_schema");
    assert_eq!(body["text"]["format"]["name"], "person");
    h.stop().await;

    let mut h = support::start_with(|raw| {
        raw.preflight = RawPreflight {
            response_format_on_responses: Some(ResponseFormatMode::Reject),
            ..RawPreflight::default()
        };
    })
    .await;
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "x", "response_format": {"type": "json_object"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let e = error_of(res).await;
    assert_eq!(e["code"], "unsupported_parameter");
    assert_eq!(e["param"], "response_format");
    assert!(h.sim_requests().await.is_empty());
    h.stop().await;
}

#[tokio::test]
async fn gateway_admins_set_and_remove_catalog_entries_over_the_admin_api() {
    let mut h = support::start().await;
    h.store
        .ensure_project_as(tollgate_store::GATEWAY_PROJECT, &Actor::system())
        .await
        .unwrap();
    let m = tollgate_gateway::keys::mint(
        tollgate_store::GATEWAY_PROJECT,
        "prod",
        tollgate_store::Role::Admin,
        None,
        support::now_ms(),
    );
    h.store.insert_key(&m.record).await.unwrap();
    let admin = m.secret;
    let url = h.url("/admin/v1/models/catalog/llama3.1:8b");
    let entry = json!({"context_window": 8192, "max_output_tokens": 2048, "input_per_1m": 0.05,
                       "output_per_1m": 0.1, "latency": "fast", "capabilities": ["text", "tools"]});
    // Wait until the gateway knows the new key.
    let put = || async {
        h.http
            .put(&url)
            .bearer_auth(&admin)
            .json(&entry)
            .send()
            .await
            .unwrap()
    };
    let known = support::eventually(Duration::from_secs(5), || async {
        put().await.status() != 401
    })
    .await;
    assert!(known.is_some());
    let res = put().await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["input_per_1m"], "0.05");
    assert_eq!(v["from"], "store");

    // A project key may read the catalog but not change it.
    let res = h
        .http
        .put(&url)
        .bearer_auth(&h.key)
        .json(&entry)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // Bad fields are refused with their name.
    let res = h
        .http
        .put(&url)
        .bearer_auth(&admin)
        .json(&json!({"input_per_1m": 1, "context_window": 10, "max_output_tokens": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(error_of(res).await["message"]
        .as_str()
        .unwrap()
        .contains("max_output_tokens"));

    let listed = support::eventually(Duration::from_secs(5), || async {
        let v: Value = h
            .http
            .get(h.url("/admin/v1/models/catalog"))
            .bearer_auth(&h.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "llama3.1:8b" && e["from"] == "store")
    })
    .await;
    assert!(
        listed.is_some(),
        "the stored entry never showed in the catalog"
    );

    let res = h
        .http
        .delete(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = h
        .http
        .delete(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let audit: Vec<String> = h
        .store
        .list_audit(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(audit.iter().any(|a| a == "models.catalog.set"));
    assert!(audit.iter().any(|a| a == "models.catalog.remove"));
    h.stop().await;
}
