//! The gateway end to end: a real server on 127.0.0.1:0 in front of the simulator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{eventually, start, start_with};
use tollgate_store::Role;
use tollgate_wire::sse::SseDecoder;

async fn error_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn a_response_goes_through_with_the_provider_key_and_ids() {
    let mut h = start().await;
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "Say hi", "max_output_tokens": 64}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    let own_id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(own_id.starts_with("req_") && own_id.len() == 36, "{own_id}");
    let upstream_id = headers["x-upstream-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(own_id, upstream_id);
    assert!(headers.contains_key("x-ratelimit-remaining-requests"));
    assert!(headers.contains_key("x-ratelimit-reset-tokens"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "response");

    // The simulator only accepts the provider key, so a 200 proves substitution; the
    // tollgate key itself never reached it.
    let seen = h.sim_requests().await;
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].to_string().contains(&h.key));

    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.request_id, own_id);
    assert_eq!(r.upstream_request_id.as_deref(), Some(upstream_id.as_str()));
    assert_eq!(r.response_id.as_deref(), body["id"].as_str());
    assert_eq!(r.key_id.as_deref(), Some(h.key_id.as_str()));
    assert_eq!(
        (r.project.as_deref(), r.env.as_deref()),
        (Some("shop"), Some("dev"))
    );
    assert_eq!(r.model_requested.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(r.model_served.as_deref(), body["model"].as_str());
    assert_eq!(
        r.input_tokens,
        body["usage"]["input_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        r.output_tokens,
        body["usage"]["output_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        r.total_tokens,
        body["usage"]["total_tokens"].as_u64().unwrap()
    );
    assert_eq!((r.status, r.attempts, r.streamed), (200, 1, false));
    assert!(r.ttfb_ms.is_some());
}

#[tokio::test]
async fn bad_keys_get_401_with_advice_and_viewers_403() {
    let mut h = start().await;
    let body = json!({"model": "gpt-4o-mini", "input": "hi"});
    let res = h
        .http
        .post(h.url("/v1/responses"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("x-request-id"));
    assert_eq!(res.headers()["x-should-retry"], "false");
    let (status, e) = error_of(res).await;
    assert_eq!(status, 401);
    assert_eq!(e["error"]["code"], "invalid_api_key");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tollgate keys create"));
    for k in ["message", "type", "param", "code"] {
        assert!(e["error"].get(k).is_some());
    }

    let res = h
        .http
        .post(h.url("/v1/responses"))
        .bearer_auth("tg-dev-0000000000000000000000000000000")
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(status, 401);
    assert!(!e
        .to_string()
        .contains("tg-dev-0000000000000000000000000000000"));

    let (viewer, viewer_id) = h.mint("dev", Role::Viewer).await;
    // The cache refresh picks the new key up.
    let ok = eventually(Duration::from_secs(2), || {
        let req = h
            .http
            .post(h.url("/v1/responses"))
            .bearer_auth(&viewer)
            .json(&body)
            .send();
        async move { req.await.unwrap().status() == 403 }
    })
    .await;
    assert!(ok.is_some(), "viewer key was not refused with 403");
    assert!(
        h.sim_requests().await.is_empty(),
        "nothing refused reached the upstream"
    );
    let records = h.stop_and_records().await;
    let forbidden: Vec<_> = records.iter().filter(|r| r.status == 403).collect();
    assert!(!forbidden.is_empty());
    assert!(forbidden
        .iter()
        .all(|r| r.key_id.as_deref() == Some(viewer_id.as_str())));
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_a_second() {
    let h = start().await;
    let call = || {
        h.post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi"}),
        )
        .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);
    assert!(h
        .store
        .revoke_key(&h.key_id, Some("test"), support::now_ms())
        .await
        .unwrap());
    let took = eventually(Duration::from_secs(1), || async {
        call().await.unwrap().status() == 401
    })
    .await;
    assert!(took.is_some(), "revoked key still accepted after 1 s");
}

#[tokio::test]
async fn unknown_paths_bad_json_and_big_bodies_are_refused_in_openai_shape() {
    let h = start_with(|c| c.server.max_body_bytes = Some(1024)).await;
    let res = h
        .http
        .get(h.url("/v1/files"))
        .bearer_auth(&h.key)
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["message"], "Invalid URL (GET /v1/files)");
    // A base URL set without /v1 is the likely mistake: the answer says so.
    let res = h
        .post(
            "/chat/completions",
            json!({"model": "gpt-4o", "messages": []}),
        )
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(status, 404);
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Invalid URL (POST /chat/completions)") && message.contains("/v1"),
        "{message}"
    );

    let res = h
        .post_raw("/v1/chat/completions", "{\"model\": ")
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");

    let big = "x".repeat(2048);
    let res = h
        .post("/v1/responses", json!({"model": "gpt-4o", "input": big}))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(status, 413);
    assert_eq!(e["error"]["code"], "request_too_large");
    assert!(h.sim_requests().await.is_empty());
}

#[tokio::test]
async fn a_refused_large_upload_still_gets_its_answer() {
    // A body well over the limit, and over what the sockets buffer: the gateway reads
    // and drops the rest before answering, or the caller would see a reset connection
    // instead of the answer (and an SDK would send it all again).
    let h = start_with(|c| c.server.max_body_bytes = Some(1 << 20)).await;
    let big = vec![b'x'; 20 << 20];
    // Declared too large.
    let res = h
        .post_raw("/v1/chat/completions", big.clone())
        .send()
        .await
        .expect("the 413 reached the caller");
    let (status, e) = error_of(res).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    // Of no declared length: found too large while read.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(256 * 1024).map(|c| Ok(c.to_vec())).collect();
    let stream = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
    let res = h
        .post_raw("/v1/chat/completions", stream)
        .send()
        .await
        .expect("the 413 reached the caller");
    assert_eq!(res.status(), 413);
    // Sent to a path tollgate does not serve.
    let res = h
        .http
        .post(h.url("/v1/files"))
        .bearer_auth(&h.key)
        .body(big)
        .send()
        .await
        .expect("the 404 reached the caller");
    let (status, e) = error_of(res).await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["message"], "Invalid URL (POST /v1/files)");
    assert!(h.sim_requests().await.is_empty());
}

#[tokio::test]
async fn a_body_declared_too_large_to_read_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start_with(|c| c.server.max_body_bytes = Some(1 << 20)).await;
    // Waiting for `100 Continue` (curl does, for large bodies), or declaring more than
    // the gateway would read to drop: answered at once, and the body never sent.
    for (length, expect) in [(20u64 << 20, true), (100 << 20, false)] {
        let mut conn = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let expect = if expect {
            "Expect: 100-continue\r\n"
        } else {
            ""
        };
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{expect}\r\n",
            h.key
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before an answer");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(
            answered.is_ok(),
            "no answer before the body ({length} bytes)"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    }
    assert!(h.sim_requests().await.is_empty());
}

#[tokio::test]
async fn unknown_fields_reach_the_upstream_byte_for_byte() {
    let h = start().await;
    let raw = r#"{"model":"gpt-4o-mini","input":"hi","metadata":{"a":"b"},"store":false,  "prompt_cache_key":"k1"}"#;
    let res = h.post_raw("/v1/responses", raw).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = h.sim_requests().await;
    assert_eq!(seen[0]["body"], serde_json::from_str::<Value>(raw).unwrap());
}

#[tokio::test]
async fn upstream_errors_keep_their_status_and_body_after_retries() {
    let mut h = start().await;
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi"}),
        )
        .header("x-sim-status", "429")
        .header("x-sim-retry-after-ms", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("x-upstream-request-id"));
    let e: Value = res.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded");
    // Default policy: 2 retries.
    assert_eq!(h.sim_requests().await.len(), 3);

    let res = h
        .post(
            "/v1/responses",
            json!({"model": "no-such-model", "input": "hi"}),
        )
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["code"], "model_not_found");

    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 2);
    assert_eq!((records[0].status, records[0].attempts), (429, 3));
    assert_eq!(
        records[0].error_code.as_deref(),
        Some("rate_limit_exceeded")
    );
    assert_eq!(records[1].error_code.as_deref(), Some("model_not_found"));
}

/// Collects an SSE body into (event name, JSON data) pairs.
async fn sse_events(res: reqwest::Response) -> Vec<(Option<String>, String)> {
    let mut dec = SseDecoder::new();
    let mut out = Vec::new();
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        for ev in dec.push(&chunk.unwrap()) {
            out.push((ev.event, ev.data));
        }
    }
    out
}

/// Removes what differs between two runs of the same request (ids, timestamps).
fn scrub(data: &str) -> Value {
    let Ok(mut v) = serde_json::from_str::<Value>(data) else {
        return Value::String(data.to_owned());
    };
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, val) in m.iter_mut() {
                    if [
                        "id",
                        "item_id",
                        "created",
                        "created_at",
                        "completed_at",
                        "call_id",
                        "system_fingerprint",
                        "obfuscation",
                    ]
                    .contains(&k.as_str())
                    {
                        *val = Value::Null;
                    } else {
                        walk(val);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

#[tokio::test]
async fn streams_are_relayed_event_for_event_and_accounted() {
    let mut h = start().await;
    let direct = reqwest::Client::new();
    let cases = [
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "Tell me a story", "stream": true}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hello there"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hello there"}]}),
        ),
    ];
    for (path, body) in &cases {
        let via = sse_events(h.post(path, body.clone()).send().await.unwrap()).await;
        let straight = sse_events(
            direct
                .post(format!(
                    "{}{}",
                    h.sim.base_url(),
                    path.trim_start_matches("/v1")
                ))
                .bearer_auth(support::PROVIDER_KEY)
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(via.len() > 3, "{path}: {via:?}");
        let a: Vec<_> = via.iter().map(|(e, d)| (e.clone(), scrub(d))).collect();
        let b: Vec<_> = straight
            .iter()
            .map(|(e, d)| (e.clone(), scrub(d)))
            .collect();
        assert_eq!(a, b, "{path} {body}");
    }
    assert_eq!(h.sim_streams().await, (6, 0));
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 3);
    for r in &records {
        assert!(r.streamed);
        assert!(r.output_tokens > 0 && r.input_tokens > 0, "{r:?}");
        assert_eq!(r.total_tokens, r.input_tokens + r.output_tokens);
        assert!(r.model_served.is_some());
    }
    // The simulator was asked for usage on the plain chat stream.
    let seen = h.sim_requests().await;
    let chat_bodies: Vec<_> = seen
        .iter()
        .filter(|r| r["path"] == "/v1/chat/completions")
        .collect();
    // Order: via tollgate, then direct, per case.
    assert_eq!(
        chat_bodies[0]["body"]["stream_options"]["include_usage"],
        true
    );
    assert!(chat_bodies[1]["body"].get("stream_options").is_none());
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_is_recorded_and_cancels_upstream() {
    let mut h = start().await;
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "Write a long essay", "stream": true}),
        )
        .header("x-sim-stream-interval-ms", "200")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(body);
    // The upstream stream (at least 20 events, 200 ms apart) is dropped long before it
    // could have finished: the gateway cancelled it.
    let cancelled = eventually(Duration::from_secs(2), || async {
        h.sim_streams().await.1 == 1
    })
    .await;
    assert!(cancelled.is_some(), "upstream stream was not cancelled");
    assert_eq!(h.sim_streams().await.0, 0);
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1);
    assert!(records[0].client_disconnected);
    assert_eq!(records[0].status, 499);
}

#[tokio::test]
async fn graceful_shutdown_under_load_loses_no_record() {
    let mut h = start_with(|c| {
        c.usage.queue_capacity = Some(4);
        c.usage.batch_size = Some(3);
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let req = if i % 2 == 0 {
            h.post("/v1/chat/completions", json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("q{i}")}]}))
        } else {
            h.post(
                "/v1/embeddings",
                json!({"model": "text-embedding-3-small", "input": format!("t{i}")}),
            )
        };
        tasks.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().as_u16())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 40);
    let report = h.stop().await;
    assert_eq!(report.usage_records_written, 40);
    let records = h.store.usage_records(0).await.unwrap();
    assert_eq!(records.len(), 40);
    assert!(records.iter().all(|r| r.input_tokens > 0));
}

#[tokio::test]
async fn health_endpoints_answer() {
    let h = start().await;
    let res = h.http.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let res = h.http.get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["store"], "ok");
    // Every answer has its id, the admin API's refusals and a wrong method's too.
    let res = h.http.get(h.url("/admin/v1/keys")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("x-request-id"));
    let res = h.http.post(h.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert!(res.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn readyz_is_503_while_usage_records_cannot_be_written_and_200_once_they_can() {
    let h = start_with(|c| c.usage.batch_size = Some(1)).await;
    // A second connection to the data directory's database makes every usage insert
    // fail, as a full disk or a broken database would.
    let file = h.data_dir().join(tollgate_store::SQLITE_FILE);
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_usage BEFORE INSERT ON usage \
         BEGIN SELECT RAISE(ABORT, 'usage refused by the test'); END",
    )
    .execute(&db)
    .await
    .unwrap();
    let ready = || async {
        let res = h.http.get(h.url("/readyz")).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap())
    };
    assert_eq!(ready().await.0, 200);
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let res = h.post("/v1/chat/completions", body).send().await.unwrap();
    assert_eq!(
        res.status(),
        200,
        "the call itself does not wait on the store"
    );
    let unready = eventually(Duration::from_secs(10), || async { ready().await.0 == 503 }).await;
    assert!(
        unready.is_some(),
        "still ready while records cannot be written"
    );
    let (_, v) = ready().await;
    assert_eq!(v["status"], "not_ready");
    assert_eq!(v["store"], "ok");
    assert_eq!(v["usage"], "failing");
    // The store takes writes again: the held record goes in, and the replica is ready.
    sqlx::query("DROP TRIGGER refuse_usage")
        .execute(&db)
        .await
        .unwrap();
    let ready_again =
        eventually(Duration::from_secs(15), || async { ready().await.0 == 200 }).await;
    assert!(
        ready_again.is_some(),
        "not ready again: {}",
        ready().await.1
    );
    assert_eq!(ready().await.1["usage"], "ok");
    assert_eq!(h.store.usage_records(0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn idle_and_slow_header_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start_with(|c| c.server.header_timeout_ms = Some(200)).await;
    // Silent after connecting: closed once the header timeout passes.
    let mut idle = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection stayed open: {n:?}"
    );
    // Idle after a first request on a kept-alive connection: closed as well.
    let mut kept = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match kept.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert_eq!(closed, Ok(true), "kept-alive idle connection stayed open");
    // Headers started but never finished: closed too.
    let mut slow = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(_)) | Ok(Err(_))),
        "slow-header connection stayed open"
    );
}

#[tokio::test]
async fn at_the_connection_cap_the_oldest_connection_makes_room() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let h = start_with(|c| c.server.max_connections = Some(2)).await;
    // Reads one answer to a GET of /healthz on a kept-alive connection.
    async fn one_answer(conn: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains("\"status\":\"ok\"}") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }
    const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // Two kept-alive connections, each served once and idle now: both slots taken.
    let mut first = TcpStream::connect(h.addr).await.unwrap();
    first.write_all(HEALTH).await.unwrap();
    assert!(one_answer(&mut first).await.starts_with("HTTP/1.1 200"));
    let mut second = TcpStream::connect(h.addr).await.unwrap();
    second.write_all(HEALTH).await.unwrap();
    assert!(one_answer(&mut second).await.starts_with("HTTP/1.1 200"));

    // A third waits in the listen queue while the oldest, idle, is asked to close;
    // then it is served, with no client closing anything.
    let mut third = TcpStream::connect(h.addr).await.unwrap();
    third
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut metrics = String::new();
    tokio::time::timeout(Duration::from_secs(10), third.read_to_string(&mut metrics))
        .await
        .expect("the waiting connection was never served")
        .unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let sample = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(sample("tollgate_connections_max"), 2);
    assert_eq!(
        sample("tollgate_connections_open"),
        2,
        "the second and the third"
    );
    assert!(sample("tollgate_connection_limit_waits_total") >= 1);
    assert_eq!(sample("tollgate_connections_drained_total"), 1);

    // The oldest was the one closed (by the server: it reads the end of the stream);
    // the second is still served.
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{end:?}");
    second.write_all(HEALTH).await.unwrap();
    assert!(one_answer(&mut second).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_call_in_flight_is_answered_before_its_connection_makes_room() {
    let mut h = start_with(|c| c.server.max_connections = Some(1)).await;
    // One call held at the simulator, on the only slot.
    let slow = tokio::spawn(
        h.post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]}),
        )
        .header("x-sim-latency-ms", "700")
        .send(),
    );
    let arrived = || async { h.sim.state().requests().len() == 1 };
    assert!(eventually(Duration::from_secs(10), arrived).await.is_some());
    // A second client waits; the first connection is asked to close, and closes only
    // once its call is answered in full (the only slot is free then: the second is
    // served, well before the idle timeout of 30 s would have closed the first).
    let other = reqwest::Client::new();
    let res = tokio::time::timeout(Duration::from_secs(10), other.get(h.url("/healthz")).send())
        .await
        .expect("the waiting client was never served")
        .unwrap();
    assert_eq!(res.status(), 200);
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    let answer: Value = slow.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, 200);
    assert!(!records[0].client_disconnected);
}

#[tokio::test]
async fn a_mixed_run_leaves_exactly_one_record_per_request_with_its_tokens() {
    let mut h = start().await;
    // Plain.
    let plain: Value = h
        .post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one"}]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Streamed, with the usage the caller asked for.
    let streamed = sse_events(
        h.post(
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "two"}]}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    let usage_chunk: Value = serde_json::from_str(&streamed[streamed.len() - 2].1).unwrap();
    // Failed upstream.
    let failed = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "three"}),
        )
        .header("x-sim-status", "400")
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 400);
    // Client gone mid-stream.
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o", "input": "four", "stream": true}),
        )
        .header("x-sim-stream-interval-ms", "40")
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    // Refused by tollgate.
    let refused = h
        .http
        .post(h.url("/v1/responses"))
        .json(&json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 5, "{records:#?}");
    let by_status = |s: u16| records.iter().filter(|r| r.status == s).collect::<Vec<_>>();
    let ok = by_status(200);
    assert_eq!(ok.len(), 2);
    assert_eq!(
        ok[0].total_tokens,
        plain["usage"]["total_tokens"].as_u64().unwrap()
    );
    assert!(!ok[0].streamed);
    assert!(ok[1].streamed);
    assert_eq!(
        ok[1].input_tokens,
        usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        ok[1].output_tokens,
        usage_chunk["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let bad = by_status(400);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].total_tokens, 0);
    let gone = by_status(499);
    assert_eq!(gone.len(), 1);
    assert!(gone[0].client_disconnected && gone[0].streamed);
    let unauth = by_status(401);
    assert_eq!(unauth.len(), 1);
    assert_eq!(unauth[0].key_id, None);
    assert_eq!(unauth[0].error_code.as_deref(), Some("invalid_api_key"));
}

/// Regression: a connection that never sent a byte (an HTTP client's pool keeps the
/// spare connection it opened for a request that went over another one) used to hold
/// graceful shutdown for the whole grace period. It is closed at once now.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_connection_that_never_spoke() {
    use tokio::io::AsyncReadExt;
    let mut h = start_with(|c| {
        c.server.header_timeout_ms = Some(600_000);
        c.server.shutdown_grace_ms = Some(600_000);
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    // The server has taken the connection over once a request on another one is served.
    let res = h.http.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // Far below both the header timeout and the grace period of ten minutes.
    let stopped = tokio::time::timeout(Duration::from_secs(60), h.stop()).await;
    assert!(stopped.is_ok(), "shutdown waited for a silent connection");
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "still open: {n:?}");
}

/// Sends one HTTP/1.1 request on `conn` and reads its answer: (status, body).
async fn exchange(conn: &mut tokio::net::TcpStream, key: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: tollgate\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before an answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .trim()
        .parse()
        .unwrap();
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (
        status,
        String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned(),
    )
}

#[tokio::test]
async fn a_refused_key_leaves_the_keep_alive_connection_usable() {
    let mut h = start().await;
    // Larger than what the server reads ahead with the headers, so the body is still
    // unread on the socket when the key is refused.
    let text = "hi ".repeat(100_000);
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
        .to_string();
    let mut conn = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (status, answer) = exchange(&mut conn, "tg-dev-not-a-key", &body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("invalid_api_key"), "{answer}");
    // The same connection serves the next request (an SDK's pool reuses it).
    let key = h.key.clone();
    let (status, answer) = exchange(&mut conn, &key, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("chat.completion"), "{answer}");
    h.stop().await;
}

/// The gauge `tollgate_request_body_bytes_in_flight`, scraped over HTTP.
async fn bodies_in_flight(h: &support::Harness) -> u64 {
    h.metric("tollgate_request_body_bytes_in_flight")
        .await
        .unwrap()
}

#[tokio::test]
async fn large_bodies_held_at_once_are_bounded_and_small_ones_pass() {
    let mut h = start_with(|c| {
        c.server.max_body_bytes = Some(64 * 1024);
        c.server.max_body_bytes_in_flight = Some(64 * 1024);
        c.server.body_timeout_ms = Some(500);
    })
    .await;
    // About 40 KB each: two do not fit in 64 KiB at once.
    let big = |tag: &str| json!({"model": "gpt-4o-mini", "input": format!("{tag} {}", "word ".repeat(8_000))});
    let held = tokio::spawn(
        h.post("/v1/responses", big("held"))
            .header("x-sim-latency-ms", "5000")
            .send(),
    );
    let holding = eventually(Duration::from_secs(10), || async {
        bodies_in_flight(&h).await >= 40_000
    })
    .await;
    assert!(holding.is_some(), "the first body never took its room");

    // A second large body waits for room within the body timeout, then gets a 503
    // that official SDKs retry.
    let res = h
        .post("/v1/responses", big("refused"))
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(status, 503);
    assert_eq!(e["error"]["code"], "server_busy");
    assert_eq!(e["error"]["type"], "service_unavailable_error");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("server.max_body_bytes_in_flight"),
        "{message}"
    );

    // A small body needs no room.
    let small = json!({"model": "gpt-4o-mini", "input": "hi"});
    let res = h.post("/v1/responses", small).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // The held request finishes, gives its room back, and the next large body goes.
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    let given_back = || async { bodies_in_flight(&h).await == 0 };
    assert!(eventually(Duration::from_secs(10), given_back)
        .await
        .is_some());
    let res = h.post("/v1/responses", big("after")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(eventually(Duration::from_secs(10), given_back)
        .await
        .is_some());

    let records = h.stop_and_records().await;
    let refused: Vec<_> = records.iter().filter(|r| r.status == 503).collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].error_code.as_deref(), Some("server_busy"));
    assert_eq!(records.iter().filter(|r| r.status == 200).count(), 3);
}

#[tokio::test]
async fn a_large_answer_is_accounted_as_a_small_one_is() {
    let mut h = start().await;
    // 48 inputs at 3,072 dimensions: an answer of megabytes, read for usage off the
    // I/O thread. Then one input: read where it is.
    let inputs: Vec<String> = (0..48).map(|i| format!("document number {i}")).collect();
    let mut seen = Vec::new();
    for input in [json!(inputs), json!("one short document")] {
        let body = json!({"model": "text-embedding-3-large", "input": input});
        let res = h.post("/v1/embeddings", body).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let length = res.content_length().map(|n| n as usize);
        let text = res.text().await.unwrap();
        let answer: Value = serde_json::from_str(&text).unwrap();
        if text.len() > 256 * 1024 {
            // Relayed as it arrived, with the length the upstream declared.
            assert_eq!(length, Some(text.len()));
        }
        seen.push((
            text.len(),
            answer["usage"]["prompt_tokens"].as_u64().unwrap(),
        ));
    }
    assert!(
        seen[0].0 > 1 << 20,
        "the large answer has {} bytes",
        seen[0].0
    );
    assert!(
        seen[1].0 < 256 * 1024,
        "the small answer has {} bytes",
        seen[1].0
    );
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 2);
    for (rec, (_, prompt_tokens)) in records.iter().zip(&seen) {
        assert_eq!((rec.status, rec.client_disconnected), (200, false));
        assert_eq!(rec.input_tokens, *prompt_tokens);
        assert_eq!(rec.total_tokens, *prompt_tokens);
        assert!(rec.input_tokens > 0);
        assert_eq!(rec.model_served.as_deref(), Some("text-embedding-3-large"));
    }
}

#[tokio::test]
async fn a_large_request_is_read_as_a_small_one_is() {
    let mut h = start().await;
    // Over 256 KiB: parsed off the I/O thread. The same checks, the same answers.
    let filler = "lorem ipsum ".repeat(30_000);
    let ok = json!({"model": "gpt-4o-mini", "input": filler});
    let res = h.post("/v1/responses", ok).send().await.unwrap();
    assert_eq!(res.status(), 200);

    let unknown = json!({"model": "gpt-nonexistent", "input": filler});
    let res = h.post("/v1/responses", unknown).send().await.unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["code"], "model_not_found");

    let broken = format!("{{\"model\": \"gpt-4o-mini\", \"input\": \"{filler}\"");
    let res = h.post_raw("/v1/responses", broken).send().await.unwrap();
    let (status, e) = error_of(res).await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("line 1 column"));

    let records = h.stop_and_records().await;
    let models: Vec<_> = records
        .iter()
        .map(|r| (r.status, r.model_requested.as_deref()))
        .collect();
    assert_eq!(
        models,
        [
            (200, Some("gpt-4o-mini")),
            (404, Some("gpt-nonexistent")),
            (400, None)
        ]
    );
}

/// An embeddings answer in two parts of about 600 KB each, the usage (77 prompt tokens)
/// at the end of the second.
fn two_part_answer() -> (Vec<u8>, Vec<u8>) {
    let item = |i: usize| {
        let values: Vec<String> = (0..3072)
            .map(|d| format!("{:.6}", (i * d) as f64 * 1e-6))
            .collect();
        format!(
            r#"{{"object":"embedding","index":{i},"embedding":[{}]}}"#,
            values.join(",")
        )
    };
    let head = format!(
        r#"{{"object":"list","data":[{}"#,
        (0..24).map(item).collect::<Vec<_>>().join(",")
    );
    let tail = format!(
        r#",{}],"model":"text-embedding-3-large","usage":{{"prompt_tokens":77,"total_tokens":77}}}}"#,
        (24..48).map(item).collect::<Vec<_>>().join(",")
    );
    (head.into_bytes(), tail.into_bytes())
}

/// Reads one request from `conn`: its head, then the body its `Content-Length`
/// declares.
async fn read_request(conn: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let body_at = loop {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the gateway closed before sending its request");
        seen.extend_from_slice(&buf[..n]);
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&seen[..body_at]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while seen.len() < body_at + length {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the gateway closed before sending its whole request");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// `part` as one chunk of a chunked HTTP/1.1 body.
fn chunk_of(part: &[u8]) -> Vec<u8> {
    [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"].concat()
}

/// An upstream for one call that answers with an event stream whose second event
/// never ends: it sends megabytes of it until the gateway lets go. Returns its base
/// URL.
async fn endless_event_upstream() -> String {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        read_request(&mut conn).await;
        let first = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[]}\n\ndata: {\"x\":\"";
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&chunk_of(first.as_bytes())).await.unwrap();
        let more = chunk_of(&vec![b'x'; 1 << 20]);
        // 128 MiB at most: the gateway is expected to let go after 64.
        for _ in 0..128 {
            if conn.write_all(&more).await.is_err() {
                return;
            }
        }
        panic!("the gateway read 128 MiB of one event");
    });
    url
}

#[tokio::test]
async fn a_stream_event_that_never_ends_is_cut_at_its_limit() {
    let url = endless_event_upstream().await;
    let mut h = start_with(|raw| raw.upstream.url = Some(url)).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let res = h.post("/v1/chat/completions", body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut chunks = res.bytes_stream();
    let mut got = Vec::new();
    let cut = loop {
        match chunks.next().await {
            Some(Ok(chunk)) => got.extend_from_slice(&chunk),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(cut, "the caller's stream is cut, not ended as if whole");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("data: {\"id\":\"c1\""),
        "{}",
        &text[..80.min(text.len())]
    );
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.error_code.as_deref(), Some("upstream_event_too_large"));
    assert!(r.streamed);
    assert_eq!(r.model_served.as_deref(), Some("gpt-4o-mini"));
}

/// An upstream for one call that answers with `head` and, once `go` fires, with `tail`,
/// in pieces: declared with a `Content-Length`, or chunked. Returns its base URL.
async fn two_part_upstream(
    (head, tail): (Vec<u8>, Vec<u8>),
    declared: bool,
    go: tokio::sync::oneshot::Receiver<()>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        read_request(&mut conn).await;
        let mut buf = [0u8; 4096];
        let framing = if declared {
            format!("content-length: {}", head.len() + tail.len())
        } else {
            "transfer-encoding: chunked".to_owned()
        };
        let status = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req_upstream\r\n{framing}\r\n\r\n"
        );
        let frame = |part: &[u8]| match declared {
            true => part.to_vec(),
            false => chunk_of(part),
        };
        conn.write_all(status.as_bytes()).await.unwrap();
        conn.write_all(&frame(&head)).await.unwrap();
        let _ = go.await;
        for piece in tail.chunks(16 * 1024) {
            conn.write_all(&frame(piece)).await.unwrap();
        }
        if !declared {
            conn.write_all(b"0\r\n\r\n").await.unwrap();
        }
        // Open until the gateway lets the connection go.
        while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    url
}

#[tokio::test]
async fn a_large_plain_answer_is_relayed_as_it_arrives() {
    for declared in [true, false] {
        let answer = two_part_answer();
        let expected = [answer.0.clone(), answer.1.clone()].concat();
        let head_len = answer.0.len();
        let (go, wait) = tokio::sync::oneshot::channel();
        let url = two_part_upstream(answer, declared, wait).await;
        let mut h = start_with(|raw| raw.upstream.url = Some(url)).await;
        let body = json!({"model": "text-embedding-3-large", "input": "a document"});
        let relayed = async {
            let res = h.post("/v1/embeddings", body).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let length = res.headers().get("content-length").cloned();
            let mut chunks = res.bytes_stream();
            let mut got = Vec::new();
            // The upstream sends the rest only once the caller has had the first part,
            // so an answer held whole by the gateway never gets here.
            while got.len() < head_len {
                got.extend_from_slice(&chunks.next().await.unwrap().unwrap());
            }
            go.send(()).unwrap();
            while let Some(chunk) = chunks.next().await {
                got.extend_from_slice(&chunk.unwrap());
            }
            (length, got)
        };
        let (length, got) = tokio::time::timeout(Duration::from_secs(20), relayed)
            .await
            .expect("the first part of the answer reached the caller before the rest was sent");
        assert!(got == expected, "the answer arrives whole, byte for byte");
        match declared {
            true => assert_eq!(length.unwrap(), expected.len().to_string().as_str()),
            false => assert!(length.is_none()),
        }
        let records = h.stop_and_records().await;
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!((r.status, r.client_disconnected), (200, false));
        assert_eq!((r.input_tokens, r.total_tokens), (77, 77));
        assert_eq!(r.model_served.as_deref(), Some("text-embedding-3-large"));
        assert_eq!(r.upstream_request_id.as_deref(), Some("req_upstream"));
    }
}

#[tokio::test]
async fn a_caller_that_leaves_a_large_answer_still_has_its_usage_recorded() {
    let answer = two_part_answer();
    let (go, wait) = tokio::sync::oneshot::channel();
    let url = two_part_upstream(answer, true, wait).await;
    let mut h = start_with(|raw| raw.upstream.url = Some(url)).await;
    let body = json!({"model": "text-embedding-3-large", "input": "a document"});
    let res = h.post("/v1/embeddings", body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut chunks = res.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    // The caller leaves with most of the answer unread; only then does the usage,
    // at the end of the answer, leave the upstream.
    drop(chunks);
    go.send(()).unwrap();
    wait_for_a_record(&h).await;
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r.status, r.client_disconnected), (499, true));
    assert_eq!(
        (r.input_tokens, r.total_tokens),
        (77, 77),
        "the tokens the caller left were paid for, and counted"
    );
    assert_eq!(r.model_served.as_deref(), Some("text-embedding-3-large"));
}

/// Waits (up to 10 s) until the store holds a usage record.
async fn wait_for_a_record(h: &support::Harness) {
    let store = h.store.clone();
    let recorded = eventually(Duration::from_secs(10), || {
        let store = store.clone();
        async move { !store.usage_records(0).await.unwrap().is_empty() }
    })
    .await;
    assert!(recorded.is_some(), "the call was recorded");
}

/// An upstream that answers every request with `answer` (head and body as bytes) and
/// then closes the connection; returns its base URL and a count of requests served.
async fn fixed_upstream(
    answer: &'static [u8],
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                read_request(&mut conn).await;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = conn.write_all(answer).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (url, served)
}

#[tokio::test]
async fn an_error_answer_cut_short_is_not_relayed_as_an_empty_one() {
    // It declares 100 bytes and sends 20.
    let (url, served) = fixed_upstream(
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"error\":{\"message\"",
    )
    .await;
    let mut h = start_with(|raw| raw.upstream.url = Some(url)).await;
    let body = json!({"model": "gpt-4o-mini", "input": "hi"});
    let res = h.post("/v1/responses", body).send().await.unwrap();
    assert_eq!(res.status(), 502);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unreachable", "{v}");
    // Retried as a dropped connection would be (the default two retries).
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, 502);
    assert_eq!(
        records[0].error_code.as_deref(),
        Some("upstream_unreachable")
    );
    assert_eq!(records[0].attempts, 3);
}

#[tokio::test]
async fn a_long_refusal_of_the_provider_credential_is_not_relayed_either() {
    // A 401 longer than the gateway holds whole (256 KiB): still not relayed, as it
    // quotes part of the provider key.
    let body = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: sk-pr****6789.{}","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#,
        " ".repeat(300 * 1024)
    );
    let answer = format!(
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (url, _) = fixed_upstream(Box::leak(answer.into_bytes().into_boxed_slice())).await;
    let mut h = start_with(|raw| raw.upstream.url = Some(url)).await;
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let text = res.text().await.unwrap();
    assert!(!text.contains("6789"), "{}", &text[..text.len().min(300)]);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "provider_credential_rejected");
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].error_code.as_deref(),
        Some("provider_credential_rejected")
    );
}

#[tokio::test]
async fn a_caller_that_closes_after_the_last_event_had_the_whole_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The upstream sends every event, `[DONE]` included, and keeps its connection
    // open a while (as a proxy in front of it may); the caller closes on `[DONE]`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        read_request(&mut conn).await;
        let events = concat!(
            "data: {\"id\":\"c7\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
            "data: {\"id\":\"c7\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n"
        );
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&chunk_of(events.as_bytes())).await.unwrap();
        let _ = held.await;
        let mut buf = [0u8; 1024];
        while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    let mut h = start_with(|raw| raw.upstream.url = Some(url)).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]});
    let res = h.post("/v1/chat/completions", body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut chunks = res.bytes_stream();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("[DONE]") {
        got.extend_from_slice(&chunks.next().await.unwrap().unwrap());
    }
    drop(chunks);
    wait_for_a_record(&h).await;
    let _ = release.send(());
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r.status, r.client_disconnected), (200, false));
    assert_eq!((r.error_code.as_deref(), r.total_tokens), (None, 5));
}

#[tokio::test]
async fn a_json_answer_to_a_stream_request_is_accounted_as_json() {
    // An upstream that does not stream embeddings ignores `"stream": true`.
    const BODY: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":3,"total_tokens":3}}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let (url, _) = fixed_upstream(Box::leak(answer.into_bytes().into_boxed_slice())).await;
    let mut h = start_with(|raw| raw.upstream.url = Some(url)).await;
    let body = json!({"model": "text-embedding-3-small", "input": "abc", "stream": true});
    let res = h.post("/v1/embeddings", body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), BODY, "relayed as it came");
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!((r.status, r.error_code.as_deref()), (200, None));
    assert_eq!((r.input_tokens, r.total_tokens), (3, 3));
    assert_eq!(r.model_served.as_deref(), Some("text-embedding-3-small"));
    assert!(!r.streamed);
}

#[tokio::test]
async fn a_stream_that_closes_before_its_last_event_is_recorded_as_cut_short() {
    let (url, _) = fixed_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
          4d\r\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[]}\n\n\r\n\
          0\r\n\r\n",
    )
    .await;
    let mut h = start_with(|raw| raw.upstream.url = Some(url)).await;
    let body = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let res = h.post("/v1/chat/completions", body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.starts_with("data: {\"id\":\"c1\""), "{text}");
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, 200);
    assert_eq!(
        records[0].error_code.as_deref(),
        Some("upstream_stream_incomplete")
    );
    assert_eq!(records[0].response_id.as_deref(), Some("c1"));
}

#[tokio::test]
async fn a_caller_that_leaves_while_sending_its_body_is_recorded_as_gone() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = start().await;
    let mut conn = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":\"gpt-4o-mini\",",
        h.key
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.shutdown().await.unwrap();
    // The gateway gives up on the body and closes; whatever it wrote is not read.
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest).await;
    let records = h.stop_and_records().await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].client_disconnected, "{records:?}");
    assert_eq!(records[0].status, 499);
    assert_eq!(
        records[0].error_code.as_deref(),
        Some("client_disconnected")
    );
    assert_eq!(h.sim_requests().await.len(), 0, "nothing went upstream");
}
