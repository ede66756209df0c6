//! Keys over their whole life, end to end: expiry, rotation with a grace period,
//! suspension and resumption, each honoured by a running gateway through the store's
//! key change counter; and no secret in audit rows or usage records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{now_ms, start, Harness};
use tollgate_gateway::keys::{self, MintedKey};
use tollgate_store::{Actor, Role};

const DAY_MS: i64 = 86_400_000;

fn cli() -> Actor {
    Actor::new("cli:test", "cli")
}

/// One call with `secret`: status and body.
async fn call(h: &Harness, secret: &str) -> (u16, Value) {
    let res = h
        .http
        .post(h.url("/v1/responses"))
        .bearer_auth(secret)
        .json(&json!({"model": "gpt-4o-mini", "input": "hi"}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Polls until a call with `secret` answers `status` and its body satisfies `want`;
/// returns that body.
async fn until(
    h: &Harness,
    secret: &str,
    status: u16,
    within: Duration,
    want: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let start = Instant::now();
    while start.elapsed() < within {
        let (s, body) = call(h, secret).await;
        if s == status && want(&body) {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Polls until a call with `secret` answers `status`; returns the body.
async fn until_status(h: &Harness, secret: &str, status: u16, within: Duration) -> Option<Value> {
    until(h, secret, status, within, |_| true).await
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// A successor for the harness key: same project, environment, role and name.
fn successor() -> MintedKey {
    keys::mint("shop", "dev", Role::Member, Some("test".into()), now_ms())
}

#[tokio::test]
async fn an_expired_key_is_refused_with_how_to_rotate_it() {
    let h = start().await;
    let mut m = keys::mint("shop", "dev", Role::Member, None, now_ms() - 10 * DAY_MS);
    m.record.expires_at_ms = now_ms() - 1_000;
    h.store.insert_key_as(&m.record, &cli()).await.unwrap();
    // Until the cache reloads the key is unknown; poll for the expired message.
    let body = until(&h, &m.secret, 401, Duration::from_secs(2), |b| {
        message(b).contains("has expired")
    })
    .await
    .expect("expired key not refused as expired");
    let e = &body["error"];
    assert_eq!(e["code"], "invalid_api_key");
    assert_eq!(e["type"], "invalid_request_error");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("expired"), "{msg}");
    assert!(
        msg.contains(&format!("tollgate keys rotate {}", m.record.id)),
        "{msg}"
    );
    assert!(!msg.contains(&m.secret));
}

#[tokio::test]
async fn a_rotated_key_works_through_its_grace_period_then_stops() {
    let h = start().await;
    assert_eq!(call(&h, &h.key).await.0, 200);
    let next = successor();
    h.store
        .rotate_key(&h.key_id, &next.record, 1_000, now_ms(), &cli())
        .await
        .unwrap();
    // The successor is accepted within a second, and the old key still works.
    assert!(until_status(&h, &next.secret, 200, Duration::from_secs(1))
        .await
        .is_some());
    assert_eq!(
        call(&h, &h.key).await.0,
        200,
        "old key refused in its grace"
    );
    // After the grace period the old key is refused, naming its successor.
    let body = until_status(&h, &h.key, 401, Duration::from_secs(3))
        .await
        .expect("rotated key still accepted after its grace period");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("rotated"), "{msg}");
    assert!(msg.contains(&next.record.id), "{msg}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(call(&h, &next.secret).await.0, 200);
}

#[tokio::test]
async fn a_suspended_key_is_refused_within_a_second_and_resumed_within_a_second() {
    let h = start().await;
    assert_eq!(call(&h, &h.key).await.0, 200);
    assert!(h
        .store
        .suspend_key(&h.key_id, Some("investigating"), now_ms(), &cli())
        .await
        .unwrap());
    let body = until_status(&h, &h.key, 403, Duration::from_secs(1))
        .await
        .expect("suspended key still accepted after 1 s");
    assert_eq!(body["error"]["code"], "key_suspended");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("suspended"), "{msg}");
    assert!(msg.contains("tollgate keys resume"), "{msg}");
    assert!(h
        .store
        .resume_key(&h.key_id, None, now_ms(), &cli())
        .await
        .unwrap());
    assert!(
        until_status(&h, &h.key, 200, Duration::from_secs(1))
            .await
            .is_some(),
        "resumed key still refused after 1 s"
    );
}

#[tokio::test]
async fn no_secret_appears_in_audit_rows_or_usage_records() {
    let mut h = start().await;
    let a = cli();
    let other = keys::mint("shop", "dev", Role::Member, None, now_ms());
    h.store.insert_key_as(&other.record, &a).await.unwrap();
    assert_eq!(call(&h, &h.key).await.0, 200);
    let next = successor();
    h.store
        .rotate_key(&h.key_id, &next.record, 0, now_ms(), &a)
        .await
        .unwrap();
    assert!(until_status(&h, &next.secret, 200, Duration::from_secs(1))
        .await
        .is_some());
    h.store
        .suspend_key(&other.record.id, Some("x"), now_ms(), &a)
        .await
        .unwrap();
    until_status(&h, &other.secret, 403, Duration::from_secs(1)).await;
    h.store
        .resume_key(&other.record.id, None, now_ms(), &a)
        .await
        .unwrap();
    h.store
        .revoke_key_as(&other.record.id, Some("done"), now_ms(), &a)
        .await
        .unwrap();
    until_status(&h, &other.secret, 401, Duration::from_secs(1)).await;
    let old = h.key.clone();
    call(&h, &old).await;

    let records = h.stop_and_records().await;
    assert!(!records.is_empty());
    let audit = h.store.list_audit(0, 10_000).await.unwrap();
    assert!(audit.len() >= 5, "{audit:?}");
    let audit_text = format!("{audit:?}");
    let usage_text = format!("{records:?}");
    for secret in [&old, &next.secret, &other.secret] {
        // The random part alone must not appear either.
        let random = &secret["tg-dev-".len()..];
        for (what, text) in [("audit", &audit_text), ("usage", &usage_text)] {
            assert!(!text.contains(random), "a secret appears in {what} rows");
        }
    }
}
