//! Typed streams against the simulator: a Responses stream event by event, a Chat
//! stream with `include_usage`, and a stream cut mid-way (never retried).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use futures_util::StreamExt;
use support::*;
use tollgate_client::wire::chat::StreamOptions;
use tollgate_client::wire::responses::{ResponseStatus, StreamEvent};
use tollgate_client::Error;

#[tokio::test]
async fn a_responses_stream_yields_typed_events_in_order() {
    let sim = sim().await;
    let client = client(&sim);
    let mut stream = client
        .responses()
        .stream(&response_request("Tell me about streams"))
        .await
        .unwrap();
    assert_eq!(stream.attempts(), 1);
    assert!(stream.request_id().is_some_and(|id| id.starts_with("req_")));
    assert!(stream.rate_limit().limit_requests.is_some());

    let mut events = Vec::new();
    while let Some(ev) = stream.next().await {
        events.push(ev.unwrap());
    }
    assert!(
        matches!(events.first(), Some(StreamEvent::Created(_))),
        "{:?}",
        events.first()
    );
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev.sequence_number(), Some(i as u64), "{}", ev.event_type());
    }
    let deltas: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::OutputTextDelta(d) => Some(d.delta.as_str()),
            _ => None,
        })
        .collect();
    let Some(StreamEvent::Completed(done)) = events.last() else {
        panic!("last event: {:?}", events.last())
    };
    assert_eq!(done.response.status, ResponseStatus::Completed);
    assert_eq!(done.response.output_text(), deltas);
    let usage = done.response.usage.expect("usage on response.completed");
    assert_eq!(usage.total_tokens, usage.input_tokens + usage.output_tokens);
    assert!(usage.output_tokens > 0);
    assert_eq!(received(&sim).await.len(), 1);
}

#[tokio::test]
async fn a_chat_stream_with_include_usage_ends_with_a_usage_chunk() {
    let sim = sim().await;
    let mut req = chat_request("Say something");
    req.stream_options = Some(StreamOptions {
        include_usage: Some(true),
        ..Default::default()
    });
    let client = client(&sim);
    let stream = client.chat().stream(&req).await.unwrap();
    let chunks: Vec<_> = stream.map(Result::unwrap).collect().await;
    assert!(chunks.len() >= 3, "{}", chunks.len());
    let (last, rest) = chunks.split_last().unwrap();
    assert!(last.choices.is_empty());
    let usage = last.usage.unwrap().expect("usage in the last chunk");
    assert!(usage.completion_tokens > 0);
    assert!(
        rest.iter().all(|c| c.usage == Some(None)),
        "usage: null before the end"
    );
    assert_eq!(
        rest[0].choices[0].delta.role.as_deref(),
        Some("assistant"),
        "first chunk carries the role"
    );
    let finish = rest
        .iter()
        .rev()
        .find_map(|c| c.choices.first()?.finish_reason.clone());
    assert_eq!(finish.as_deref(), Some("stop"));
}

#[tokio::test]
async fn a_chat_stream_without_include_usage_has_no_usage() {
    let sim = sim().await;
    let client = client(&sim);
    let stream = client.chat().stream(&chat_request("hi")).await.unwrap();
    let chunks: Vec<_> = stream.map(Result::unwrap).collect().await;
    assert!(!chunks.is_empty());
    assert!(chunks.iter().all(|c| c.usage.is_none()));
}

#[tokio::test]
async fn a_cut_responses_stream_errors_and_is_not_retried() {
    let sim = sim().await;
    let c = with_headers(&client(&sim), &[("x-sim-stream-cut-after", "3")]);
    let stream = c
        .responses()
        .stream(&response_request("hello there"))
        .await
        .unwrap();
    let items: Vec<_> = stream.collect().await;
    assert_eq!(items.len(), 4, "3 events, then the error: {items:?}");
    assert!(items[..3].iter().all(Result::is_ok));
    assert!(
        matches!(items[3], Err(Error::Stream { .. })),
        "{:?}",
        items[3]
    );
    assert_eq!(received(&sim).await.len(), 1, "never retried");
}

#[tokio::test]
async fn a_cut_chat_stream_errors_and_is_not_retried() {
    let sim = sim().await;
    let c = with_headers(&client(&sim), &[("x-sim-stream-cut-after", "2")]);
    let stream = c.chat().stream(&chat_request("hello there")).await.unwrap();
    let items: Vec<_> = stream.collect().await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(
        matches!(items[2], Err(Error::Stream { .. })),
        "{:?}",
        items[2]
    );
    assert_eq!(received(&sim).await.len(), 1);
}

#[tokio::test]
async fn a_stream_failing_before_it_starts_is_retried() {
    let sim = sim().await;
    let c = with_headers(&client(&sim), &[("x-sim-status", "503")]);
    let err = c
        .responses()
        .stream(&response_request("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server(_)), "{err:?}");
    assert_eq!(received(&sim).await.len(), 3);
}

#[tokio::test]
async fn the_deadline_also_bounds_a_slow_stream() {
    let sim = sim().await;
    let c =
        with_headers(&client(&sim), &[("x-sim-stream-interval-ms", "400")]).with_timeout(ms(500));
    let stream = c
        .responses()
        .stream(&response_request("hello there"))
        .await
        .unwrap();
    let items: Vec<_> = stream.collect().await;
    let last = items.last().unwrap();
    assert!(matches!(last, Err(Error::Timeout { .. })), "{last:?}");
    assert!(items.len() < 6, "{}", items.len());
}
