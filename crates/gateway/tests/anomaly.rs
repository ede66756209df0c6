//! Anomaly detection end to end: a real gateway in front of the simulator, with a
//! tiny warm-up and minimum, and a webhook receiver on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use support::{eventually, start_with, Harness};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tollgate_store::Role;

/// A webhook receiver: every JSON body POSTed to `/hook` comes out of the receiver.
async fn webhook() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(tx): State<mpsc::UnboundedSender<Value>>, Json(v): Json<Value>| async move {
                    let _ = tx.send(v);
                },
            ),
        )
        .with_state(tx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("webhook within 10 s")
        .unwrap()
}

async fn models(h: &Harness, key: &str) -> (u16, Value) {
    let res = h
        .http
        .get(h.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn start(url: String, auto_suspend: bool) -> Harness {
    start_with(|raw| {
        raw.anomaly.warmup_minutes = Some(0);
        raw.anomaly.min_requests_per_min = Some(20);
        raw.anomaly.rate_factor = Some(5);
        raw.anomaly.auto_suspend = Some(auto_suspend);
        raw.anomaly.webhook_url = Some(url);
    })
    .await
}

#[tokio::test]
async fn steady_traffic_passes_and_a_burst_gets_the_key_suspended_within_seconds() {
    let (url, mut events) = webhook().await;
    let mut h = start(url, true).await;
    let key = h.key.clone();

    // Steady: below the minimum, so never flagged (auto-suspend would refuse it).
    for _ in 0..5 {
        assert_eq!(models(&h, &key).await.0, 200);
    }
    assert!(events.try_recv().is_err());

    // Burst: a minute boundary may fall inside it, so up to 200 requests; the earlier
    // minute holds at most 19, so its baseline keeps the threshold under 100.
    let burst = Instant::now();
    let mut refused = None;
    for i in 0..200 {
        let (status, body) = models(&h, &key).await;
        if status != 200 {
            refused = Some((i, status, body));
            break;
        }
    }
    let (i, status, body) = refused.expect("the burst is refused");
    assert!(
        burst.elapsed() < Duration::from_secs(5),
        "{:?}",
        burst.elapsed()
    );
    assert!(i < 100, "refused after {i} burst requests");
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "key_suspended");
    assert_eq!(body["error"]["type"], "permission_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("unusual usage"), "{message}");
    assert!(message.contains("resume"), "{message}");
    assert!(!message.contains(&key));

    // Still refused; another key of the project is not.
    assert_eq!(models(&h, &key).await.0, 403);
    let (other, _) = h.mint("dev", Role::Member).await;
    // (Once the key cache has picked the new key up.)
    let served = eventually(Duration::from_secs(5), || async {
        models(&h, &other).await.0 == 200
    })
    .await;
    assert!(served.is_some(), "another key of the project is served");

    let event = next_event(&mut events).await;
    assert_eq!(event["event"], "key_anomaly");
    assert_eq!(event["key_id"], h.key_id.as_str());
    assert_eq!(event["project"], "shop");
    assert_eq!(event["env"], "dev");
    assert_eq!(event["kind"], "request_rate");
    assert_eq!(event["action"], "suspend");
    assert!(event["current"].as_u64().unwrap() >= 20);
    assert!(event["baseline"].is_number());
    assert!(event["at"].is_i64());
    assert!(!event.to_string().contains(&key));

    // The suspension is made durable in the store (so every replica and a restart
    // honour it), with an audit entry for the flag; resuming it there brings the key back.
    let durable = eventually(Duration::from_secs(2), || async {
        let k = h.store.key_by_id(&h.key_id).await.unwrap().unwrap();
        k.suspended_at_ms.is_some()
    })
    .await;
    assert!(
        durable.is_some(),
        "the flagged key was not suspended in the store"
    );
    let audit = h.store.list_audit(0, 100).await.unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "key.anomaly_flagged" && a.target == h.key_id));
    assert!(!audit.iter().any(|a| a.detail.contains(&key)));
    let actor = tollgate_store::Actor::new("cli:test", "cli");
    assert!(h
        .store
        .resume_key(&h.key_id, Some("checked"), support::now_ms(), &actor)
        .await
        .unwrap());
    let back = eventually(Duration::from_secs(1), || async {
        models(&h, &key).await.0 == 200
    })
    .await;
    assert!(
        back.is_some(),
        "a resumed key is served again within a second"
    );

    // Refusals are recorded against the key like any other.
    let records = h.stop_and_records().await;
    assert!(records
        .iter()
        .any(|r| r.status == 403 && r.error_code.as_deref() == Some("key_suspended")));
}

#[tokio::test]
async fn without_auto_suspend_a_burst_is_only_reported_once() {
    let (url, mut events) = webhook().await;
    let mut h = start(url, false).await;
    let key = h.key.clone();
    for _ in 0..200 {
        assert_eq!(models(&h, &key).await.0, 200);
    }
    let event = next_event(&mut events).await;
    assert_eq!(event["kind"], "request_rate");
    assert_eq!(event["action"], "notify");
    h.stop().await;
    // Stopping drained the webhook queue: one flag per cooldown, even across a minute
    // boundary inside the burst.
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn a_call_s_tokens_count_towards_the_token_rate() {
    let (url, mut events) = webhook().await;
    let mut h = start_with(|raw| {
        raw.anomaly.warmup_minutes = Some(0);
        raw.anomaly.min_tokens_per_min = Some(1);
        raw.anomaly.webhook_url = Some(url);
    })
    .await;
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "Say hi", "max_output_tokens": 64}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let event = next_event(&mut events).await;
    assert_eq!(event["kind"], "token_rate");
    assert!(event["current"].as_u64().unwrap() > 0);
    h.stop().await;
}

/// Mints a key in `project` and waits until the gateway serves it.
async fn served_key(h: &Harness, project: &str) -> (String, String) {
    let m = tollgate_gateway::keys::mint(project, "prod", Role::Member, None, support::now_ms());
    h.store.insert_key(&m.record).await.unwrap();
    let served = eventually(Duration::from_secs(5), || async {
        models(h, &m.secret).await.0 == 200
    })
    .await;
    assert!(served.is_some(), "the gateway never served the new key");
    (m.secret, m.record.id)
}

/// Up to `n` calls in a row; the index, status and body of the first refusal.
async fn burst(h: &Harness, key: &str, n: usize) -> Option<(usize, u16, Value)> {
    for i in 0..n {
        let (status, body) = models(h, key).await;
        if status != 200 {
            return Some((i, status, body));
        }
    }
    None
}

/// `GET /metrics` over HTTP: the content type and the text.
async fn scrape(h: &Harness) -> (String, String) {
    let res = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    (ct, res.text().await.unwrap())
}

/// The value of the sample `series` (name and labels, as written) in `text`.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn auto_suspend_is_chosen_per_project_and_a_change_applies_without_a_restart() {
    let (url, mut events) = webhook().await;
    // The gateway-wide default is off; project "strict" turns it on for itself.
    let h = start(url, false).await;
    let cli = tollgate_store::Actor::new("cli:test", "cli");
    let on = tollgate_store::NewProject {
        anomaly_auto_suspend: Some(true),
        ..Default::default()
    };
    let now = support::now_ms();
    h.store
        .create_project_with("strict", &on, now, &cli)
        .await
        .unwrap();
    h.store
        .create_project("relaxed", None, now, &cli)
        .await
        .unwrap();
    let (strict, strict_id) = served_key(&h, "strict").await;
    let (relaxed, relaxed_id) = served_key(&h, "relaxed").await;
    let (_, before) = scrape(&h).await;
    let flags = r#"tollgate_anomaly_flags_total{reason="request_rate"}"#;
    assert_eq!(sample(&before, flags), 0);

    let (i, status, body) = burst(&h, &strict, 200)
        .await
        .expect("strict's key is refused");
    assert!(i < 100, "refused after {i} burst requests");
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "key_suspended");
    assert!(
        burst(&h, &relaxed, 200).await.is_none(),
        "relaxed's key is only flagged"
    );

    let mut actions = vec![];
    for _ in 0..2 {
        let e = next_event(&mut events).await;
        actions.push((
            e["key_id"].as_str().unwrap().to_owned(),
            e["action"].as_str().unwrap().to_owned(),
        ));
    }
    actions.sort();
    let mut expected = vec![
        (strict_id.clone(), "suspend".to_owned()),
        (relaxed_id.clone(), "notify".to_owned()),
    ];
    expected.sort();
    assert_eq!(actions, expected);
    let suspended = |id: String| {
        let store = h.store.clone();
        async move {
            let k = store.key_by_id(&id).await.unwrap().unwrap();
            k.suspended_at_ms.is_some()
        }
    };
    let durable = eventually(Duration::from_secs(2), || suspended(strict_id.clone())).await;
    assert!(durable.is_some(), "strict's key is suspended in the store");
    assert!(!suspended(relaxed_id.clone()).await);

    // The flags show on /metrics, scraped over HTTP; no secret is there.
    let (content_type, after) = scrape(&h).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert_eq!(sample(&after, flags), 2);
    // Counted once the store took the suspension.
    let counted = |n: u64| {
        let h = &h;
        async move {
            eventually(Duration::from_secs(2), || async {
                sample(
                    &scrape(h).await.1,
                    "tollgate_keys_suspended_by_anomaly_total",
                ) == n
            })
            .await
            .is_some()
        }
    };
    assert!(counted(1).await, "the suspension was not counted");
    assert_eq!(
        sample(
            &after,
            r#"tollgate_anomaly_flags_total{reason="new_ip_range"}"#
        ),
        0
    );
    assert!(!after.contains(&strict) && !after.contains(&relaxed));
    assert!(!after.contains(&strict_id) && !after.contains("relaxed"));
    assert!(after.contains("# TYPE tollgate_usage_queue_depth gauge"));
    let written = eventually(Duration::from_secs(2), || async {
        sample(&scrape(&h).await.1, "tollgate_usage_records_written_total") >= 200
    })
    .await;
    assert!(written.is_some(), "usage records written are counted");

    // Turning "relaxed" on takes effect with the key cache, no restart: a fresh key
    // (the first one is in its flag cool-down) is now suspended by its burst.
    h.store
        .set_project_anomaly_auto_suspend("relaxed", Some(true), support::now_ms(), &cli)
        .await
        .unwrap();
    let audit = h.store.list_audit(0, 1000).await.unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "project.set_anomaly_auto_suspend"
            && a.target == "relaxed"
            && a.actor == "cli:test"));
    let (fresh, _) = served_key(&h, "relaxed").await;
    let (i, status, _) = burst(&h, &fresh, 200).await.expect("now refused");
    assert!(i < 100, "refused after {i} burst requests");
    assert_eq!(status, 403);
    assert!(counted(2).await, "the second suspension was not counted");
}

#[tokio::test]
async fn a_burst_of_flags_suspends_every_flagged_key_in_the_store() {
    let mut h = start_with(|raw| {
        raw.anomaly.warmup_minutes = Some(0);
        raw.anomaly.min_requests_per_min = Some(1);
        raw.anomaly.auto_suspend = Some(true);
    })
    .await;
    // 100 keys, each flagged by its first call: more flags at once than a lossy
    // hand-over to the store writer kept.
    let mut keys = Vec::new();
    for _ in 0..100 {
        keys.push(h.mint("dev", Role::Member).await);
    }
    let loaded = eventually(Duration::from_secs(5), || async {
        models(&h, &keys[99].0).await.0 != 401
    })
    .await;
    assert!(loaded.is_some(), "the keys were never loaded");
    let calls = keys.iter().take(99).map(|(secret, _)| models(&h, secret));
    let refused = futures_util::future::join_all(calls)
        .await
        .iter()
        .filter(|(status, _)| *status == 403)
        .count();
    assert_eq!(refused, 99, "each key's first call flags it");
    let ids: Vec<String> = keys.iter().map(|(_, id)| id.clone()).collect();
    let all_suspended = eventually(Duration::from_secs(20), || async {
        let stored = h.store.list_keys().await.unwrap();
        ids.iter().all(|id| {
            stored
                .iter()
                .any(|k| &k.id == id && k.suspended_at_ms.is_some())
        })
    })
    .await;
    assert!(
        all_suspended.is_some(),
        "some flagged keys never reached the store"
    );
    h.stop().await;
}
