//! What admission costs per request with an RPM and a TPM rule that are never hit:
//! `cargo run --release -p tollgate-gateway --example admit_cost`. Prints the cost of
//! the steps (JSON tree vs one-pass estimate, remembered counts) and of `admit::run`
//! for a repeated body and for bodies whose user text is new every time; then of a
//! plan and commit governed by the same rules and a daily budget (one estimate for
//! both), and of writing the six `x-ratelimit-*` headers.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tollgate_gateway::admit;
use tollgate_gateway::budgets::Budgets;
use tollgate_gateway::catalog::{Catalog, LiveCatalog};
use tollgate_gateway::keys::Principal;
use tollgate_gateway::limits::Limits;
use tollgate_gateway::preflight::{Endpoint, Preflight};
use tollgate_store::{Budget, BudgetScope, LimitScope, RateLimitRule, Role};

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in five words."}],"max_tokens":64}"#;
    let p = Preflight {
        model: Some("gpt-4o-mini".into()),
        stream: false,
        strip_stream_usage: false,
        body: Bytes::from(body),
        max_output: tollgate_gateway::preflight::output_asked(body.as_bytes()),
        ..Preflight::default()
    };
    let principal = Principal {
        key_id: "key_1".into(),
        project: "bench".into(),
        env: "prod".into(),
        role: Role::Member,
        upstream_ref: None,
        lane: tollgate_store::Lane::Interactive,
    };
    let l = Arc::new(Limits::default());
    l.replace(
        vec![RateLimitRule {
            scope: LimitScope {
                project: "bench".into(),
                env: Some("prod".into()),
                key_id: None,
                model: None,
            },
            rpm: Some(1_000_000_000),
            tpm: Some(1_000_000_000_000),
            created_at_ms: 0,
            updated_at_ms: 0,
        }],
        vec![],
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    for _ in 0..1000 {
        tollgate_wire::tokens::estimate_input("gpt-4o-mini", &v);
    }
    let n = 100_000;
    let t = Instant::now();
    for _ in 0..n {
        let _: serde_json::Value = serde_json::from_slice(body.as_bytes()).unwrap();
    }
    println!(
        "parse Value: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(tollgate_wire::tokens::estimate_input("gpt-4o-mini", &v));
    }
    println!(
        "estimate_input: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(tollgate_wire::tokens::count(
            "gpt-4o-mini",
            "Say hello in five words.",
        ));
    }
    println!(
        "count one string: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        let a = admit_once(&rt, &l, &principal, &p);
        drop(a);
    }
    println!(
        "admit::run, same body: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    // Text never seen before: the tokenizer runs on the user message every time.
    let bodies: Vec<Preflight> = (0..n)
        .map(|i| Preflight {
            body: Bytes::from(body.replace("five words.", &format!("{i} words, please."))),
            ..p.clone()
        })
        .collect();
    let t = Instant::now();
    for p in &bodies {
        let a = admit_once(&rt, &l, &principal, p);
        drop(a);
    }
    println!(
        "admit::run, new user text: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    // The same rules and a daily budget far above what the loop reserves.
    let budgets = Arc::new(Budgets::new(Arc::new(LiveCatalog::new(Catalog::builtin()))));
    let now = tollgate_gateway::accept::now_ms();
    budgets.replace(
        vec![Budget {
            scope: BudgetScope {
                project: "bench".into(),
                env: Some("prod".into()),
                key_id: None,
            },
            daily_usd_nanos: Some(u64::MAX / 4),
            monthly_usd_nanos: None,
            soft_percent: 100,
            created_at_ms: 0,
            updated_at_ms: 0,
        }],
        &[],
        now - 1_000,
    );
    let t = Instant::now();
    for _ in 0..n {
        let a = rt.block_on(async {
            let plan = admit::plan(
                &l,
                &budgets,
                Endpoint::ChatCompletions,
                &principal,
                &p,
                &[],
                4096,
                now,
            )
            .await
            .unwrap();
            admit::commit(&l, &plan, 0.0).await.unwrap()
        });
        drop(a);
    }
    println!(
        "admit::plan + commit with a budget, same body: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    // As before plan/commit: the rate limits, then the budgets, each estimating.
    let t = Instant::now();
    for _ in 0..n {
        let a = admit_once(&rt, &l, &principal, &p);
        let b = rt
            .block_on(tollgate_gateway::budgets::admit(
                &budgets,
                Endpoint::ChatCompletions,
                &principal,
                &p,
                4096,
                now,
            ))
            .unwrap();
        drop((a, b));
    }
    println!(
        "admit::run then budgets::admit (two estimates), same body: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let a = admit_once(&rt, &l, &principal, &p);
    let t = Instant::now();
    for _ in 0..n {
        let mut headers = http::HeaderMap::new();
        tollgate_gateway::error::insert_rate_limit_info(&mut headers, &a.headers);
        std::hint::black_box(headers);
    }
    println!(
        "six x-ratelimit headers into a fresh map: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    // As before: a String per header, parsed names.
    let t = Instant::now();
    for _ in 0..n {
        let mut headers = http::HeaderMap::new();
        for (name, v) in a.headers.to_headers() {
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                headers.insert(name, v);
            }
        }
        std::hint::black_box(headers);
    }
    println!(
        "the same through Strings (the former way): {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    // Two threads admitting at once against the same rule (as the two I/O threads do
    // at saturation): what sharing the rule set, the buckets' lock and the scopes'
    // reference counts costs beside the single-thread figure above.
    let per_thread = n / 2;
    let one = |l: Arc<Limits>, p: Preflight, principal: Principal| {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let t = Instant::now();
            for _ in 0..per_thread {
                let a = admit_once(&rt, &l, &principal, &p);
                drop(a);
            }
            t.elapsed()
        })
    };
    let threads: Vec<_> = (0..2)
        .map(|_| one(l.clone(), p.clone(), principal.clone()))
        .collect();
    let took: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, d) in took.iter().enumerate() {
        println!(
            "admit::run on two threads at once, thread {i}: {:.2} us",
            d.as_secs_f64() * 1e6 / per_thread as f64
        );
    }
}

/// One `admit::run` for the bench rule's project, as the gateway makes it.
fn admit_once(
    rt: &tokio::runtime::Runtime,
    l: &Arc<Limits>,
    principal: &Principal,
    p: &Preflight,
) -> admit::Admission {
    rt.block_on(admit::run(
        l,
        Endpoint::ChatCompletions,
        principal,
        p,
        4096,
        0.0,
    ))
    .unwrap()
}
