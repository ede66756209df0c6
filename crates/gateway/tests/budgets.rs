//! Spend budgets end to end against the simulator: a budget that admits calls until it
//! is spent and then refuses with 429 `insufficient_quota` and `x-should-retry: false`;
//! the worst case refused up front while a smaller request passes; reservations settled
//! to the real cost; a governed model without a price refused; the soft threshold
//! announced once (log, metric, webhook) and claimed in the store; the admin API; two
//! replicas on one PostgreSQL store seeing each other's spend within the sync interval.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use support::{eventually, Harness};
use tollgate_gateway::RawConfig;
use tollgate_store::{Actor, BudgetPeriod, BudgetScope, Role};

/// gpt-4o-mini pinned at $1 / $4 per 1M tokens: 1 000 and 4 000 nano-USD per token.
const IN: u64 = 1_000;
const OUT: u64 = 4_000;

fn pinned_prices(raw: &mut RawConfig) {
    raw.models = RawConfig::from_toml_str(
        "[[models]]\nid = \"gpt-4o-mini\"\ninput_per_1m = 1\noutput_per_1m = 4\n",
    )
    .unwrap()
    .models;
}

fn body(max_output: u64) -> Value {
    json!({"model": "gpt-4o-mini", "input": "Say hello to the budget", "max_output_tokens": max_output})
}

/// The worst case the gateway prices a call of [`body`] at.
fn worst(max_output: u64) -> u64 {
    let input = tollgate_wire::tokens::estimate_input("gpt-4o-mini", &body(max_output)) as u64;
    input * IN + max_output * OUT
}

fn env_scope(env: &str) -> BudgetScope {
    BudgetScope {
        project: "shop".into(),
        env: Some(env.into()),
        key_id: None,
    }
}

async fn set(h: &Harness, scope: &BudgetScope, daily: Option<u64>, monthly: Option<u64>) {
    h.store
        .set_budget(
            scope,
            daily,
            monthly,
            None,
            support::now_ms(),
            &Actor::system(),
        )
        .await
        .unwrap();
}

/// Waits until the server governs the harness key's calls by a budget: an unpriced
/// model is refused (nothing is sent upstream, nothing spent).
async fn until_applied(h: &Harness) {
    let applied = eventually(Duration::from_secs(5), || async {
        let res = h
            .post(
                "/v1/responses",
                json!({"model": "unpriced-model", "input": "x"}),
            )
            .send()
            .await
            .unwrap();
        res.status() == 400
    })
    .await;
    assert!(applied.is_some(), "budget not applied within 5 s");
}

/// What one call of [`body`] really costs (the simulator answers the same body alike),
/// once its record is written: a call made before a budget existed counts against it
/// from then on.
async fn real_cost(h: &Harness, max_output: u64) -> u64 {
    let recorded = || async { h.store.usage_records(0).await.unwrap().len() };
    let before = recorded().await;
    let res = h
        .post("/v1/responses", body(max_output))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    let written = eventually(Duration::from_secs(5), || async {
        recorded().await > before
    })
    .await;
    assert!(written.is_some(), "the call's record was not written");
    v["usage"]["input_tokens"].as_u64().unwrap() * IN
        + v["usage"]["output_tokens"].as_u64().unwrap() * OUT
}

/// Mints a key in the harness's project and waits until the server's key cache has it.
async fn known_key(h: &Harness, env: &str, role: Role) -> String {
    let (key, _) = h.mint(env, role).await;
    let known = eventually(Duration::from_secs(5), || async {
        let res = h
            .http
            .get(h.url("/v1/models"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        res.status() != 401
    })
    .await;
    assert!(known.is_some(), "the new key was never accepted");
    key
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_budget_admits_calls_until_spent_then_refuses_without_retry() {
    let mut h = support::start_with(pinned_prices).await;
    let cost = real_cost(&h, 16).await;
    assert!(cost > 0 && cost <= worst(16), "{cost} {}", worst(16));
    // Room for the call already made, two more, and the worst case of a third.
    let limit = 3 * cost + worst(16);
    set(&h, &env_scope("dev"), Some(limit), None).await;
    until_applied(&h).await;
    let upstream_before = h.sim_requests().await.len();
    for i in 0..3 {
        let res = h.post("/v1/responses", body(16)).send().await.unwrap();
        assert_eq!(res.status(), 200, "call {i}");
        res.bytes().await.unwrap();
    }
    let res = h.post("/v1/responses", body(16)).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "x-should-retry").as_deref(), Some("false"));
    assert!(header(&res, "retry-after").is_none());
    assert!(header(&res, "retry-after-ms").is_none());
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "insufficient_quota");
    assert_eq!(err["error"]["code"], "insufficient_quota");
    assert!(err["error"]["param"].is_null());
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("daily budget of project shop, env dev"),
        "{msg}"
    );
    let (_, next_day) = BudgetPeriod::Day.bounds(support::now_ms());
    let (y, m, d) = tollgate_store::civil_date(next_day);
    assert!(
        msg.contains(&format!("{y:04}-{m:02}-{d:02} 00:00 UTC")),
        "{msg}"
    );
    assert!(msg.contains("tollgate budgets set"), "{msg}");
    assert_eq!(
        h.sim_requests().await.len(),
        upstream_before + 3,
        "the refused call never reached the upstream"
    );
    // Another environment is not governed.
    let other = known_key(&h, "prod", Role::Member).await;
    let res = h
        .http
        .post(h.url("/v1/responses"))
        .bearer_auth(&other)
        .json(&body(16))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let records = h.stop_and_records().await;
    let refused: Vec<_> = records.iter().filter(|r| r.status == 429).collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].error_code.as_deref(), Some("insufficient_quota"));
    assert_eq!(refused[0].cost_usd_nanos, Some(0));
}

#[tokio::test]
async fn the_worst_case_is_refused_up_front_and_reservations_settle_to_the_real_cost() {
    let mut h = support::start_with(pinned_prices).await;
    // A big max_output_tokens: its worst case alone fits, twice does not.
    let big = 50_000;
    let cost = real_cost(&h, big).await;
    let limit = cost + worst(big) + 2 * cost;
    set(&h, &env_scope("dev"), None, Some(limit)).await;
    until_applied(&h).await;
    let res = h.post("/v1/responses", body(big * 2)).send().await.unwrap();
    assert_eq!(res.status(), 429, "a worst case above what is left");
    let err: Value = res.json().await.unwrap();
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("monthly budget"), "{msg}");
    assert!(msg.contains("max_output_tokens"), "{msg}");
    // Each big call reserves its worst case, then settles to its real cost, so the
    // next big call fits again (without settlement the second would be refused).
    for i in 0..3 {
        let res = h.post("/v1/responses", body(big)).send().await.unwrap();
        assert_eq!(res.status(), 200, "big call {i}");
        res.bytes().await.unwrap();
    }
    // Spent: 4 calls. A big call no longer fits, a small one still does.
    let res = h.post("/v1/responses", body(big)).send().await.unwrap();
    assert_eq!(res.status(), 429);
    res.bytes().await.unwrap();
    let res = h.post("/v1/responses", body(16)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();

    let records = h.stop_and_records().await;
    let ok: Vec<_> = records.iter().filter(|r| r.status == 200).collect();
    assert_eq!(ok.len(), 5);
    for r in &ok {
        assert_eq!(
            r.cost_usd_nanos,
            Some(r.input_tokens * IN + r.output_tokens * OUT),
            "priced exactly"
        );
    }
    // `budgets show`'s numbers: what the records cost.
    let report = tollgate_gateway::budgets::report(&h.store, Some("shop"), support::now_ms())
        .await
        .unwrap();
    let month = report[0].month.clone().unwrap();
    let spent: u64 = ok.iter().map(|r| r.cost_usd_nanos.unwrap()).sum();
    assert_eq!(month.spent_usd_nanos, spent);
    assert_eq!(month.remaining_usd_nanos, limit - spent);
    assert!(report[0].day.is_none());
}

/// A call whose fallback chain may serve it with a dearer model is priced at that
/// model: a budget cannot be overrun by the fallback. gpt-4o is pinned at ten times
/// gpt-4o-mini's prices, so its worst case is ten times the same call's.
#[tokio::test]
async fn a_call_is_priced_at_the_dearest_model_its_fallbacks_may_serve_it_with() {
    let mut h = support::start_with(|raw| {
        raw.models = RawConfig::from_toml_str(
            "[[models]]\nid = \"gpt-4o-mini\"\ninput_per_1m = 1\noutput_per_1m = 4\n\
             [[models]]\nid = \"gpt-4o\"\ninput_per_1m = 10\noutput_per_1m = 40\n",
        )
        .unwrap()
        .models;
        raw.upstream.max_retries = Some(0);
        raw.fallbacks.insert(
            "gpt-4o-mini".into(),
            vec![tollgate_gateway::fallback_config::RawTarget {
                model: Some("gpt-4o".into()),
                upstream: None,
            }],
        );
    })
    .await;
    let big = 20_000;
    // Room for gpt-4o-mini's worst case five times over, not once for gpt-4o's.
    let limit = 5 * worst(big);
    set(&h, &env_scope("dev"), Some(limit), None).await;
    until_applied(&h).await;
    let res = h.post("/v1/responses", body(big)).send().await.unwrap();
    assert_eq!(res.status(), 429, "priced at gpt-4o, the chain's dearest");
    let err: Value = res.json().await.unwrap();
    let msg = err["error"]["message"].as_str().unwrap();
    let dearest = tollgate_gateway::budgets::usd(10 * worst(big));
    assert!(msg.contains(&format!("may cost up to ${dearest}")), "{msg}");
    assert!(msg.contains("dearest model that may serve it"), "{msg}");

    // A call whose dearest worst case fits is admitted; when the primary fails and
    // gpt-4o serves it, it settles at gpt-4o's price, within what was reserved.
    let small = 1_000;
    assert!(10 * worst(small) < limit);
    support::sim_fault(&h.sim, json!({"count": 1, "status": 503})).await;
    let res = h.post("/v1/responses", body(small)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "x-tollgate-served-by").as_deref(),
        Some("primary/gpt-4o")
    );
    let v: Value = res.json().await.unwrap();
    let cost = v["usage"]["input_tokens"].as_u64().unwrap() * 10 * IN
        + v["usage"]["output_tokens"].as_u64().unwrap() * 10 * OUT;
    assert!(cost <= 10 * worst(small));

    let records = h.stop_and_records().await;
    let served: Vec<_> = records.iter().filter(|r| r.status == 200).collect();
    assert_eq!(served.len(), 1);
    assert_eq!(
        served[0]
            .model_served
            .as_deref()
            .map(|m| m.starts_with("gpt-4o")),
        Some(true)
    );
    assert_eq!(served[0].cost_usd_nanos, Some(cost), "priced as gpt-4o");
}

#[tokio::test]
async fn a_governed_model_without_a_price_is_refused_and_others_are_not() {
    let h = support::start().await;
    let unpriced = json!({"model": "my-local-llama", "input": "hi"});
    let upstream = h.sim_requests().await.len();
    let res = h
        .post("/v1/responses", unpriced.clone())
        .send()
        .await
        .unwrap();
    res.bytes().await.unwrap();
    assert_eq!(
        h.sim_requests().await.len(),
        upstream + 1,
        "no budget: an unpriced model goes upstream (the simulator knows no such model)"
    );
    set(&h, &env_scope("dev"), Some(1_000_000_000), None).await;
    until_applied(&h).await;
    let upstream = h.sim_requests().await.len();
    let res = h.post("/v1/responses", unpriced).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        h.sim_requests().await.len(),
        upstream,
        "refused before the upstream"
    );
    assert_eq!(header(&res, "x-should-retry").as_deref(), Some("false"));
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "model_not_priced");
    assert_eq!(err["error"]["param"], "model");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("[[models]]") && msg.contains("my-local-llama"),
        "{msg}"
    );
    // A priced model passes; listing models is not a model call.
    let res = h
        .post(
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = h
        .http
        .get(h.url("/v1/models"))
        .bearer_auth(&h.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// A webhook receiver on 127.0.0.1:0 that keeps every JSON body it is sent.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let (url, got, _) = webhook_refusing(0).await;
    (url, got)
}

/// How many POSTs a webhook receiver got.
type Posts = Arc<Mutex<usize>>;

/// A webhook receiver that answers 503 to its first `refusals` POSTs, then keeps every
/// JSON body it is sent; it also counts the POSTs.
async fn webhook_refusing(refusals: usize) -> (String, Arc<Mutex<Vec<Value>>>, Posts) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let posts: Arc<Mutex<usize>> = Arc::default();
    let (sink, count) = (got.clone(), posts.clone());
    let app = axum::Router::new().route(
        "/hooks/budgets",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let (sink, count) = (sink.clone(), count.clone());
            async move {
                let n = {
                    let mut c = count.lock();
                    *c += 1;
                    *c
                };
                if n <= refusals {
                    return http::StatusCode::SERVICE_UNAVAILABLE;
                }
                sink.lock().push(v);
                http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/budgets", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got, posts)
}

/// Calls until the dev environment's day budget passes its soft threshold (80 %);
/// returns the budget's scope.
async fn reach_the_soft_threshold(h: &Harness) -> BudgetScope {
    let cost = real_cost(h, 16).await;
    // The soft threshold (80 %) is reached well before the limit.
    let day_limit = 20 * cost + 2 * worst(16);
    let scope = env_scope("dev");
    set(h, &scope, Some(day_limit), Some(1_000 * day_limit)).await;
    until_applied(h).await;
    let soft = |n: u64| n * cost * 100 >= day_limit * 80;
    let mut calls = 1;
    while !soft(calls) {
        let res = h.post("/v1/responses", body(16)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
        calls += 1;
    }
    scope
}

#[tokio::test]
async fn a_notice_the_webhook_refused_is_offered_again_until_taken() {
    // Three refusals: the first POST and both of the client's own retries.
    let (url, hooks, posts) = webhook_refusing(3).await;
    let h = support::start_with(|raw| {
        pinned_prices(raw);
        raw.budgets.webhook_url = Some(url);
    })
    .await;
    reach_the_soft_threshold(&h).await;
    let taken = eventually(Duration::from_secs(30), || async {
        !hooks.lock().is_empty()
    })
    .await;
    assert!(taken.is_some(), "the notice was not offered again");
    assert_eq!(*posts.lock(), 4, "three refused, the fourth taken");
    let hooks = hooks.lock().clone();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["event"], "budget.soft_threshold");
}

#[tokio::test]
async fn the_soft_threshold_is_announced_once_per_period() {
    let (url, hooks) = webhook().await;
    let h = support::start_with(|raw| {
        pinned_prices(raw);
        raw.budgets.webhook_url = Some(url);
    })
    .await;
    let scope = reach_the_soft_threshold(&h).await;
    let announced = eventually(Duration::from_secs(10), || async {
        h.metric("tollgate_budget_soft_threshold_total{period=\"day\"}")
            .await
            == Some(1)
    })
    .await;
    assert!(announced.is_some(), "no soft-threshold notice within 10 s");
    assert!(
        eventually(Duration::from_secs(5), || async {
            !hooks.lock().is_empty()
        })
        .await
        .is_some(),
        "the webhook got nothing"
    );
    // More calls in the same day: no second notice (the store holds the claim too).
    for _ in 0..2 {
        let res = h.post("/v1/responses", body(1)).send().await.unwrap();
        res.bytes().await.unwrap();
    }
    let (day_start, _) = BudgetPeriod::Day.bounds(support::now_ms());
    assert!(!h
        .store
        .claim_budget_notice(&scope, BudgetPeriod::Day, day_start)
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.metric("tollgate_budget_soft_threshold_total{period=\"day\"}")
            .await,
        Some(1)
    );
    assert_eq!(
        h.metric("tollgate_budget_soft_threshold_total{period=\"month\"}")
            .await,
        Some(0)
    );
    let hooks = hooks.lock().clone();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let n = &hooks[0];
    assert_eq!(n["event"], "budget.soft_threshold");
    assert_eq!(
        (n["project"].as_str(), n["env"].as_str()),
        (Some("shop"), Some("dev"))
    );
    assert!(n["key_id"].is_null());
    assert_eq!(n["period"], "day");
    assert_eq!(n["soft_percent"], 80);
}

#[tokio::test]
async fn admins_set_show_and_clear_budgets_over_the_admin_api() {
    let h = support::start_with(pinned_prices).await;
    let admin = known_key(&h, "ops", Role::Admin).await;
    let call = |method: reqwest::Method, path: &str, key: &str| {
        h.http
            .request(method, h.url(path))
            .bearer_auth(key.to_owned())
    };
    let res = call(reqwest::Method::PUT, "/admin/v1/budgets", &admin)
        .json(&json!({"env": "dev", "daily_usd": "0.5", "monthly_usd": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let b: Value = res.json().await.unwrap();
    assert_eq!(b["daily_usd_nanos"], 500_000_000);
    assert_eq!(b["monthly_usd_nanos"], 10_000_000_000u64);
    assert_eq!(b["soft_percent"], 80);
    // A member may read it, not change it.
    let res = call(reqwest::Method::PUT, "/admin/v1/budgets", &h.key)
        .json(&json!({"daily_usd": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    until_applied(&h).await;
    let spent = real_cost(&h, 16).await;
    let listed = eventually(Duration::from_secs(5), || async {
        let v: Value = call(reqwest::Method::GET, "/admin/v1/budgets", &h.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["data"][0]["day"]["spent_usd_nanos"].as_u64() == Some(spent)
            && v["data"][0]["day"]["remaining_usd_nanos"].as_u64() == Some(500_000_000 - spent)
    })
    .await;
    assert!(listed.is_some(), "the spend never showed");
    for (body, param) in [
        (json!({"env": "dev"}), "daily_usd"),
        (json!({"daily_usd": "-1"}), "daily_usd"),
        (json!({"daily_usd": 0}), "daily_usd"),
        (json!({"daily_usd": 1, "soft_percent": 0}), "soft_percent"),
        (
            json!({"env": "dev", "key_id": "key_x", "daily_usd": 1}),
            "key_id",
        ),
    ] {
        let res = call(reqwest::Method::PUT, "/admin/v1/budgets", &admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["param"], param, "{body}");
    }
    let res = call(reqwest::Method::DELETE, "/admin/v1/budgets?env=dev", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = call(reqwest::Method::DELETE, "/admin/v1/budgets?env=dev", &admin)
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
        .filter(|a| a.action.starts_with("budgets."))
        .map(|a| {
            format!(
                "{} {} {}",
                a.action,
                a.target,
                a.source.starts_with("admin-api")
            )
        })
        .collect();
    assert_eq!(
        audit,
        [
            "budgets.set shop/dev/* true",
            "budgets.clear shop/dev/* true"
        ]
    );
}

/// One `tollgate serve` in-process on a shared PostgreSQL schema, re-reading budget
/// spend every 100 ms.
async fn replica(
    database_url: &str,
    upstream_url: String,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<tollgate_gateway::ServeReport, tollgate_gateway::StartError>>,
) {
    let store = tollgate_store::Store::open_url(database_url).await.unwrap();
    let mut raw = RawConfig::default();
    raw.upstream.url = Some(upstream_url);
    raw.database_url = Some(database_url.to_owned());
    raw.keys.refresh_interval_ms = Some(50);
    raw.budgets.sync_interval_ms = Some(100);
    pinned_prices(&mut raw);
    let config = tollgate_gateway::Config::try_from(raw).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let join = tokio::spawn(tollgate_gateway::serve(
        listener,
        config,
        store,
        tollgate_gateway::secret::Secret::new(support::PROVIDER_KEY),
        async {
            let _ = rx.await;
        },
    ));
    (addr, tx, join)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_postgres_store_see_each_others_spend() {
    let schema = match tollgate_store::testing::PgSchema::create().await {
        Ok(schema) => schema,
        Err(e) => panic!("the PostgreSQL budget test cannot run: {e}"),
    };
    let sim = tollgate_simulator::server::spawn(tollgate_simulator::SimConfig {
        api_keys: Some(vec![support::PROVIDER_KEY.to_owned()]),
        ..tollgate_simulator::SimConfig::default()
    })
    .await
    .unwrap();
    let store = schema.open().await.unwrap();
    store.ensure_project("shop").await.unwrap();
    let minted = tollgate_gateway::keys::mint("shop", "dev", Role::Member, None, support::now_ms());
    store.insert_key(&minted.record).await.unwrap();
    let key = minted.secret;
    let (a, stop_a, join_a) = replica(&schema.url(), sim.base_url()).await;
    let (b, stop_b, join_b) = replica(&schema.url(), sim.base_url()).await;
    let http = reqwest::Client::new();
    let call = |addr: std::net::SocketAddr, body: Value, fault: Option<&'static str>| {
        let mut req = http
            .post(format!("http://{addr}/v1/responses"))
            .bearer_auth(&key)
            .json(&body);
        if let Some(status) = fault {
            req = req.header("x-sim-status", status);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let records = || async { store.usage_records(0).await.unwrap() };
    // One call's real cost, then a budget with room for about ten more.
    assert_eq!(call(a, body(16), None).await, 200);
    let first = eventually(Duration::from_secs(5), || async {
        !records().await.is_empty()
    })
    .await;
    assert!(first.is_some());
    let r = &records().await[0];
    let cost = r.input_tokens * IN + r.output_tokens * OUT;
    let limit = 11 * cost + worst(16);
    set_in(&store, &env_scope("dev"), Some(limit)).await;
    for addr in [a, b] {
        let applied = eventually(Duration::from_secs(5), || async {
            call(addr, json!({"model": "unpriced-model", "input": "x"}), None).await == 400
        })
        .await;
        assert!(applied.is_some(), "budget not applied on {addr}");
    }
    // A spends the budget until it refuses.
    let mut spent_by_a = 0;
    while call(a, body(16), None).await == 200 {
        spent_by_a += 1;
        assert!(spent_by_a < 100, "A never refused");
    }
    assert!(spent_by_a >= 10, "{spent_by_a}");
    // B saw none of it itself: alone it would admit a call (worst case + 1 call spent
    // fits). Probes that fail upstream without usage spend nothing (refunded), so B's
    // answer turns to insufficient_quota only once it has read A's spend from the store.
    let converged = eventually(Duration::from_secs(5), || async {
        call(b, body(16), Some("400")).await == 429
    })
    .await;
    assert!(converged.is_some(), "B never saw A's spend");
    // A call that would really spend is refused too.
    assert_eq!(call(b, body(16), None).await, 429);
    for (stop, join) in [(stop_a, join_a), (stop_b, join_b)] {
        let _ = stop.send(());
        join.await.unwrap().unwrap();
    }
    schema.drop_schema().await.unwrap();
}

async fn set_in(store: &tollgate_store::Store, scope: &BudgetScope, daily: Option<u64>) {
    store
        .set_budget(
            scope,
            daily,
            None,
            None,
            support::now_ms(),
            &Actor::system(),
        )
        .await
        .unwrap();
}
