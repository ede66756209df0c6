//! Retries against the simulator: which failures are retried, how many times, how far
//! apart, and the deadline that covers them all. Attempt counts come from the
//! simulator's request log; spacing from its `received_at_ms` (lower bounds only).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tollgate_client::{Error, RetryPolicy};
use tollgate_simulator::SimConfig;

/// SDK-style jitter keeps at least 75 % of the nominal 200/400 ms; the log has
/// millisecond resolution, hence the 1 ms slack.
const MIN_GAP_1: u64 = 150 - 1;
const MIN_GAP_2: u64 = 300 - 1;

#[tokio::test]
async fn rate_limit_429_is_retried_twice_with_backoff() {
    let sim = sim().await;
    let c = with_headers(&client(&sim), &[("x-sim-status", "429")]);
    let err = c
        .responses()
        .create(&response_request("hi"))
        .await
        .unwrap_err();
    let Error::RateLimited { error, .. } = &err else {
        panic!("expected RateLimited, got {err:?}")
    };
    assert_eq!(error.code(), Some("rate_limit_exceeded"));
    assert_eq!(err.attempts(), Some(3));
    let log = received(&sim).await;
    assert_eq!(log.len(), 3);
    let gaps = gaps_ms(&log);
    assert!(gaps[0] >= MIN_GAP_1, "{gaps:?}");
    assert!(gaps[1] >= MIN_GAP_2, "{gaps:?}");
}

#[tokio::test]
async fn rate_limit_429_honours_retry_after_ms() {
    let sim = sim().await;
    let c = with_headers(
        &client(&sim),
        &[("x-sim-status", "429"), ("x-sim-retry-after-ms", "700")],
    );
    let err = c.chat().create(&chat_request("hi")).await.unwrap_err();
    match &err {
        Error::RateLimited { retry_after, .. } => assert_eq!(*retry_after, Some(ms(700))),
        other => panic!("{other:?}"),
    }
    let log = received(&sim).await;
    assert_eq!(log.len(), 3);
    // The server's 700 ms, not the 200/400 ms backoff.
    for gap in gaps_ms(&log) {
        assert!(gap >= 699, "{gap}");
    }
}

#[tokio::test]
async fn overloaded_503_is_retried_with_backoff() {
    let sim = sim().await;
    let c = with_headers(&client(&sim), &[("x-sim-status", "503")]);
    let err = c
        .responses()
        .create(&response_request("hi"))
        .await
        .unwrap_err();
    let Error::Server(api) = &err else {
        panic!("expected Server, got {err:?}")
    };
    assert_eq!(api.status.as_u16(), 503);
    assert_eq!(api.meta.attempts, 3);
    assert!(api.request_id().is_some_and(|id| id.starts_with("req_")));
    let log = received(&sim).await;
    assert_eq!(log.len(), 3);
    let gaps = gaps_ms(&log);
    assert!(gaps[0] >= MIN_GAP_1 && gaps[1] >= MIN_GAP_2, "{gaps:?}");
}

#[tokio::test]
async fn overloaded_503_honours_retry_after_seconds() {
    let sim = sim().await;
    let c = with_headers(
        &client(&sim),
        &[("x-sim-status", "503"), ("x-sim-retry-after", "1")],
    );
    let started = Instant::now();
    let err = c.models().list().await.unwrap_err();
    assert!(matches!(err, Error::Server(_)), "{err:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let log = received(&sim).await;
    assert_eq!(log.len(), 3);
    for gap in gaps_ms(&log) {
        assert!(gap >= 999, "{gap}");
    }
}

#[tokio::test]
async fn a_transient_failure_then_success_reports_two_attempts() {
    let sim = sim().await;
    queue_fault(&sim, json!({"count": 1, "status": 500})).await;
    let resp = client(&sim)
        .responses()
        .create(&response_request("hi"))
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 2);
    assert!(!resp.output_text().is_empty());
    let statuses: Vec<_> = received(&sim)
        .await
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [json!(500), json!(200)]);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let sim = sim().await;
    let base = client(&sim);
    for (status, check) in [
        (
            "400",
            (|e: &Error| matches!(e, Error::BadRequest(_))) as fn(&Error) -> bool,
        ),
        ("401", |e| matches!(e, Error::Authentication(_))),
        ("403", |e| matches!(e, Error::PermissionDenied(_))),
        ("404", |e| matches!(e, Error::NotFound(_))),
    ] {
        let c = with_headers(&base, &[("x-sim-status", status)]);
        let err = c
            .responses()
            .create(&response_request("hi"))
            .await
            .unwrap_err();
        assert!(check(&err), "{status}: {err:?}");
        assert_eq!(err.attempts(), Some(1), "{status}");
        let api = err.api_error().unwrap();
        assert!(
            api.envelope().is_some(),
            "{status}: OpenAI error body parsed"
        );
    }
    assert_eq!(received(&sim).await.len(), 4, "one request per status");
}

#[tokio::test]
async fn insufficient_quota_is_not_retried() {
    let sim = sim().await;
    let c = with_headers(
        &client(&sim),
        &[
            ("x-sim-status", "429"),
            ("x-sim-error-code", "insufficient_quota"),
        ],
    );
    let err = c
        .responses()
        .create(&response_request("hi"))
        .await
        .unwrap_err();
    let Error::QuotaExhausted(api) = &err else {
        panic!("expected QuotaExhausted, got {err:?}")
    };
    assert_eq!(api.code(), Some("insufficient_quota"));
    assert_eq!(received(&sim).await.len(), 1);
}

#[tokio::test]
async fn configured_insufficient_quota_is_not_retried() {
    let sim = sim_with(SimConfig {
        insufficient_quota: true,
        ..SimConfig::default()
    })
    .await;
    let err = client(&sim)
        .chat()
        .create(&chat_request("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::QuotaExhausted(_)), "{err:?}");
    assert_eq!(received(&sim).await.len(), 1);
}

#[tokio::test]
async fn a_wrong_key_is_an_authentication_error_without_retry() {
    let sim = sim_with(SimConfig {
        api_keys: Some(vec!["sk-good".to_owned()]),
        ..SimConfig::default()
    })
    .await;
    let err = client(&sim).models().list().await.unwrap_err();
    let Error::Authentication(api) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(api.code(), Some("invalid_api_key"));
    assert!(
        !err.to_string().contains("sk-test"),
        "the key is not echoed: {err}"
    );
    assert_eq!(received(&sim).await.len(), 1);
}

#[tokio::test]
async fn connection_resets_are_retried_then_reported() {
    let sim = sim().await;
    let c = with_headers(&client(&sim), &[("x-sim-reset", "true")]);
    let err = c.models().list().await.unwrap_err();
    assert!(
        matches!(err, Error::Connection { attempts: 3, .. }),
        "{err:?}"
    );
    let log = received(&sim).await;
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|r| r["status"].is_null()));
}

#[tokio::test]
async fn the_deadline_cuts_a_slow_answer() {
    let sim = sim().await;
    let c = with_headers(&client(&sim), &[("x-sim-latency-ms", "3000")]).with_timeout(ms(300));
    let started = Instant::now();
    let err = c.models().list().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::Timeout { attempts: 1, .. }), "{err:?}");
    assert!(elapsed >= ms(300), "{elapsed:?}");
    assert!(elapsed < ms(3000), "gave up before the answer: {elapsed:?}");
}

#[tokio::test]
async fn the_deadline_covers_all_attempts() {
    // Each attempt waits 250 ms then fails with 503; backoff ~200 ms. A 600 ms deadline
    // ends the call during the second attempt.
    let sim = sim().await;
    let c = with_headers(
        &client(&sim),
        &[("x-sim-latency-ms", "250"), ("x-sim-status", "503")],
    )
    .with_timeout(ms(600));
    let started = Instant::now();
    let err = c.models().list().await.unwrap_err();
    let elapsed = started.elapsed();
    // Normally the deadline cuts attempt 2; on a very slow machine the client may
    // instead decline to start it (it would not fit) and return the 503.
    assert!(
        matches!(err, Error::Timeout { attempts: 2, .. } | Error::Server(_)),
        "{err:?}"
    );
    assert!(err.attempts().unwrap() <= 2);
    assert!(elapsed < ms(1500), "{elapsed:?}");
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_returns_the_error_at_once() {
    let sim = sim().await;
    let c = with_headers(
        &client(&sim),
        &[("x-sim-status", "429"), ("x-sim-retry-after", "5")],
    )
    .with_timeout(ms(2000));
    let started = Instant::now();
    let err = c
        .responses()
        .create(&response_request("hi"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < ms(2000),
        "did not sleep past the deadline"
    );
    match &err {
        Error::RateLimited { retry_after, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(5)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(received(&sim).await.len(), 1);
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_is_not_waited_for() {
    let sim = sim().await;
    let c = tollgate_client::Client::builder()
        .base_url(sim.base_url())
        .api_key("sk-test")
        .retry_policy(RetryPolicy::default().with_max_retry_after(Duration::from_secs(1)))
        .build()
        .unwrap();
    let c = with_headers(&c, &[("x-sim-status", "503"), ("x-sim-retry-after", "3")]);
    let started = Instant::now();
    let err = c.models().list().await.unwrap_err();
    assert!(matches!(err, Error::Server(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(received(&sim).await.len(), 1);
}

#[tokio::test]
async fn the_real_rate_limiter_is_reported_with_its_retry_after() {
    let sim = sim_with(SimConfig {
        rpm: Some(1),
        ..SimConfig::default()
    })
    .await;
    let c = client(&sim).with_max_retries(0);
    let first = c.chat().create(&chat_request("hi")).await.unwrap();
    assert_eq!(first.rate_limit().limit_requests, Some(1));
    assert_eq!(first.rate_limit().remaining_requests, Some(0));
    let err = c.chat().create(&chat_request("hi")).await.unwrap_err();
    let Error::RateLimited { retry_after, error } = &err else {
        panic!("{err:?}")
    };
    assert!(
        retry_after.is_some_and(|d| d > Duration::ZERO),
        "{retry_after:?}"
    );
    assert_eq!(error.code(), Some("rate_limit_exceeded"));
    assert_eq!(error.meta.rate_limit.remaining_requests, Some(0));
}
