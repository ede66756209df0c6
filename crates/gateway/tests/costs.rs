//! Usage records carry what each call cost, priced by the usage writer from the model
//! catalog (the built-in one with the config's `[[models]]` applied): plain and
//! streamed calls, a dated snapshot priced as its base, an overridden price, and a
//! model the catalog does not know (unpriced, not free) — against the simulator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use tollgate_gateway::RawConfig;
use tollgate_store::{UsageFilter, UsageGroup, UsageRecord};

/// Nano-USD per token (= milli-USD per 1M): input, cached input, output.
fn expected(r: &UsageRecord, (input, cached, output): (u64, u64, u64)) -> u64 {
    (r.input_tokens - r.cached_tokens) * input + r.cached_tokens * cached + r.output_tokens * output
}

#[tokio::test]
async fn each_record_is_priced_from_the_catalog_and_its_overrides() {
    let mut h = support::start_with(|raw| {
        raw.models = RawConfig::from_toml_str(
            "[[models]]\nid = \"gpt-4.1-nano\"\ninput_per_1m = 1\ncached_input_per_1m = 0.5\n\
             output_per_1m = 2\n",
        )
        .unwrap()
        .models;
    })
    .await;
    let calls = [
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "Say hi", "max_output_tokens": 64}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hello"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-2024-08-06", "stream": true,
                   "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "tell me a story"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ];
    for (path, body) in &calls {
        let res = h.post(path, body.clone()).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path} {body}");
        res.bytes().await.unwrap();
    }
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 4);
    let by_model = |m: &str| {
        records
            .iter()
            .find(|r| r.model_requested.as_deref() == Some(m))
            .unwrap()
    };
    let mini = by_model("gpt-4o-mini");
    assert!(mini.input_tokens > 0 && mini.output_tokens > 0);
    assert_eq!(mini.cost_usd_nanos, Some(expected(mini, (150, 75, 600))));
    let nano = by_model("gpt-4.1-nano");
    assert_eq!(nano.cost_usd_nanos, Some(expected(nano, (1000, 500, 2000))));
    let streamed = by_model("gpt-4o-2024-08-06");
    assert!(streamed.streamed && streamed.output_tokens > 0);
    assert_eq!(
        streamed.cost_usd_nanos,
        Some(expected(streamed, (2500, 1250, 10_000)))
    );
    let unknown = by_model("gpt-3.5-turbo");
    assert!(unknown.total_tokens > 0);
    assert_eq!(unknown.cost_usd_nanos, None, "unknown is not free");

    let all = h
        .store
        .usage_totals(&UsageFilter {
            group: UsageGroup::Project,
            since_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    let priced: u64 = [mini, nano, streamed]
        .iter()
        .map(|r| r.cost_usd_nanos.unwrap())
        .sum();
    assert_eq!((all[0].cost_usd_nanos, all[0].unpriced), (Some(priced), 1));
}
