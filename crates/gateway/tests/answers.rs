//! Structured answers validated for the projects that ask for it (`[answers]`): a
//! matching answer passes, a spoiled one (the simulator's `x-sim-invalid-output`) is
//! asked again once and then refused with 502 `invalid_structured_output` naming the
//! failing path, and a spoiled-then-good pair is served — every answer counted in the
//! call's usage record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use tollgate_gateway::answers::OnInvalid;

fn person_format() -> Value {
    json!({"type": "json_schema", "name": "person", "strict": true, "schema": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": false
    }})
}

/// Chat's `json_schema` member: the format without its `type`.
fn chat_schema() -> Value {
    let mut f = person_format();
    f.as_object_mut().unwrap().remove("type");
    f
}

fn responses_body() -> Value {
    json!({"model": "gpt-4o-mini", "input": "Who wrote the first program?", "text": {"format": person_format()}})
}

fn request_id(res: &reqwest::Response) -> String {
    res.headers()["x-request-id"].to_str().unwrap().to_owned()
}

async fn queue_invalid(h: &support::Harness, count: u64) {
    let res = h
        .http
        .post(format!("{}/_sim/faults", h.sim.root_url()))
        .json(&json!({"count": count, "invalid_output": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn structured_answers_are_validated_retried_once_and_refused_with_the_path() {
    let mut h = support::start_with(|raw| {
        raw.answers.validate_projects = Some(vec!["shop".into()]);
    })
    .await;

    // A matching answer passes, after one upstream call.
    let res = h
        .post("/v1/responses", responses_body())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let valid_id = request_id(&res);
    let v: Value = res.json().await.unwrap();
    let text = v
        .pointer("/output/0/content/0/text")
        .or_else(|| v.pointer("/output/1/content/0/text"));
    assert!(text.is_some(), "{v}");
    assert_eq!(h.sim_requests().await.len(), 1);

    // Spoiled on every call: asked again once, then refused with the path.
    let res = h
        .post("/v1/responses", responses_body())
        .header("x-sim-invalid-output", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()["x-should-retry"], "false");
    let refused_id = request_id(&res);
    let e: Value = res.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_structured_output");
    assert_eq!(e["error"]["type"], "server_error");
    let m = e["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("at /name") && m.contains("2 upstream call"),
        "{m}"
    );
    assert_eq!(h.sim_requests().await.len(), 3, "one retry, no more");

    // Spoiled once, then good: the second answer is served.
    queue_invalid(&h, 1).await;
    let res = h
        .post("/v1/responses", responses_body())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let retried_id = request_id(&res);
    assert_eq!(h.sim_requests().await.len(), 5);

    // Chat's response_format too.
    let res = h
        .post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                   "response_format": {"type": "json_schema", "json_schema": chat_schema()}}),
        )
        .header("x-sim-invalid-output", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    // A stream is relayed as it comes: not validated.
    let mut streamed = responses_body();
    streamed["stream"] = json!(true);
    let res = h
        .post("/v1/responses", streamed)
        .header("x-sim-invalid-output", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();

    let records = h.stop_and_records().await;
    let by_id = |id: &str| records.iter().find(|r| r.request_id == id).unwrap().clone();
    let valid = by_id(&valid_id);
    assert_eq!((valid.status, valid.attempts), (200, 1));
    let refused = by_id(&refused_id);
    assert_eq!(refused.status, 502);
    assert_eq!(refused.attempts, 2);
    assert_eq!(
        refused.error_code.as_deref(),
        Some("invalid_structured_output")
    );
    assert_eq!(
        refused.input_tokens,
        2 * valid.input_tokens,
        "both answers were paid for"
    );
    let retried = by_id(&retried_id);
    assert_eq!((retried.status, retried.attempts), (200, 2));
    assert_eq!(retried.input_tokens, 2 * valid.input_tokens);
    assert!(retried.cost_usd_nanos.unwrap() > valid.cost_usd_nanos.unwrap());
}

#[tokio::test]
async fn with_on_invalid_error_there_is_no_retry_and_other_projects_are_not_checked() {
    let mut h = support::start_with(|raw| {
        raw.answers.validate_projects = Some(vec!["shop".into()]);
        raw.answers.on_invalid = Some(OnInvalid::Error);
    })
    .await;
    let res = h
        .post("/v1/responses", responses_body())
        .header("x-sim-invalid-output", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let e: Value = res.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 upstream call"),
        "{e}"
    );
    assert_eq!(h.sim_requests().await.len(), 1);
    h.stop().await;

    // A project that did not ask gets the answer as it came.
    let mut h = support::start_with(|raw| {
        raw.answers.validate_projects = Some(vec!["blog".into()]);
    })
    .await;
    let res = h
        .post("/v1/responses", responses_body())
        .header("x-sim-invalid-output", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    h.stop().await;
}
