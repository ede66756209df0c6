//! The admin HTTP API end to end: key changes made over it are honoured by the running
//! gateway within a second, roles are enforced (403), other projects' keys are
//! invisible (404), bad input is refused (400) without touching the store, and every
//! change is audited with the caller's key id and address, never a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, start, Harness};
use tollgate_gateway::admin::ROUTES;
use tollgate_gateway::keys;
use tollgate_store::Role;

const WITHIN: Duration = Duration::from_secs(1);

/// An admin call with `secret`: status and body.
async fn admin(
    h: &Harness,
    secret: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut req = h.http.request(method, h.url(path)).bearer_auth(secret);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The status of one model call with `secret`.
async fn call(h: &Harness, secret: &str) -> u16 {
    h.http
        .post(h.url("/v1/responses"))
        .bearer_auth(secret)
        .json(&json!({"model": "gpt-4o-mini", "input": "hi"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until a model call with `secret` answers `status`.
async fn honoured(h: &Harness, secret: &str, status: u16) -> bool {
    eventually(WITHIN, || async { call(h, secret).await == status })
        .await
        .is_some()
}

/// Mints a key of `role` in the harness project and waits until the gateway knows it.
async fn key(h: &Harness, role: Role) -> (String, String) {
    let (secret, id) = h.mint("dev", role).await;
    let known = eventually(Duration::from_secs(2), || async {
        admin(h, &secret, "get", "/admin/v1/usage", None).await.0 != 401
    })
    .await;
    assert!(known.is_some(), "the gateway never learnt the new key");
    (secret, id)
}

#[tokio::test]
async fn an_admin_manages_a_key_over_its_whole_life_and_the_gateway_honours_each_step() {
    let h = start().await;
    let (admin_key, admin_id) = key(&h, Role::Admin).await;

    let (s, created) = admin(
        &h,
        &admin_key,
        "post",
        "/admin/v1/keys",
        Some(json!({"env": "prod", "name": "checkout", "expires_in": "30d"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["project"], "shop");
    assert_eq!(created["env"], "prod");
    assert_eq!(created["role"], "member");
    let (id, secret) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    assert!(secret.starts_with("tg-prod-"));
    assert!(honoured(&h, &secret, 200).await, "created key not accepted");

    let (s, listed) = admin(&h, &admin_key, "get", "/admin/v1/keys", None).await;
    assert_eq!(s, 200);
    let text = listed.to_string();
    assert!(text.contains(&id));
    assert!(!text.contains(&secret) && !text.contains("digest"));
    let (s, shown) = admin(&h, &admin_key, "get", &format!("/admin/v1/keys/{id}"), None).await;
    assert_eq!((s, shown["state"].as_str()), (200, Some("active")));

    let path = |op: &str| format!("/admin/v1/keys/{id}/{op}");
    let (s, body) = admin(
        &h,
        &admin_key,
        "post",
        &path("suspend"),
        Some(json!({"reason": "leak?"})),
    )
    .await;
    assert_eq!((s, body["changed"].as_bool()), (200, Some(true)), "{body}");
    assert!(honoured(&h, &secret, 403).await, "suspension not honoured");
    let (s, _) = admin(&h, &admin_key, "post", &path("resume"), None).await;
    assert_eq!(s, 200);
    assert!(honoured(&h, &secret, 200).await, "resumption not honoured");

    let (s, rotated) = admin(
        &h,
        &admin_key,
        "post",
        &path("rotate"),
        Some(json!({"grace": "0s"})),
    )
    .await;
    assert_eq!(s, 200, "{rotated}");
    assert_eq!(rotated["predecessor"], id.as_str());
    let successor = rotated["key"].as_str().unwrap().to_owned();
    let successor_id = rotated["id"].as_str().unwrap().to_owned();
    assert!(
        honoured(&h, &secret, 401).await,
        "rotated key still accepted"
    );
    assert!(
        honoured(&h, &successor, 200).await,
        "successor not accepted"
    );

    let (s, _) = admin(
        &h,
        &admin_key,
        "post",
        &format!("/admin/v1/keys/{successor_id}/revoke"),
        Some(json!({"reason": "done"})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        honoured(&h, &successor, 401).await,
        "revocation not honoured"
    );

    // Audited as the caller's key from its address; no secret anywhere in the log.
    let (s, audit) = admin(
        &h,
        &admin_key,
        "get",
        "/admin/v1/audit?since=1h&limit=1000",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let ours: Vec<&Value> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == format!("key:{admin_id}").as_str())
        .collect();
    let actions: Vec<&str> = ours.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in [
        "key.create",
        "key.suspend",
        "key.resume",
        "key.rotate",
        "key.revoke",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
    assert!(ours.iter().all(|e| e["source"] == "admin-api 127.0.0.1"));
    let rows = format!("{:?}", h.store.list_audit(0, 10_000).await.unwrap());
    for s in [&secret, &successor, &admin_key, &h.key] {
        assert!(!rows.contains(s.as_str()), "a secret is in the audit log");
    }
    // Admin calls are not model calls: usage holds only the model calls above.
    let records = format!("{:?}", h.store.usage_records(0).await.unwrap());
    assert!(!records.contains("/admin/"));
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_change_and_a_member_reads_only_its_own_usage() {
    let h = start().await;
    let (viewer, _) = key(&h, Role::Viewer).await;
    let (member, member_id) = (h.key.clone(), h.key_id.clone());
    let (_, other_id) = key(&h, Role::Member).await;
    assert_eq!(call(&h, &member).await, 200);

    for (method, path) in ROUTES {
        let path = path.replace("{id}", &other_id).replace("{env}", "prod");
        let body = (*method != "get").then(|| json!({"env": "dev"}));
        let (s, v) = admin(&h, &viewer, method, &path, body.clone()).await;
        let (ms, mv) = admin(&h, &member, method, &path, body).await;
        if path.starts_with("/admin/v1/projects") {
            // Gateway-wide: refused to every project's keys (tests/admin_projects.rs).
            assert_eq!((s, ms), (403, 403), "{method} {path}: {v} {mv}");
            continue;
        }
        if *method == "get" {
            assert_eq!(s, 200, "viewer {method} {path}: {v}");
        } else {
            assert_eq!(s, 403, "viewer {method} {path}: {v}");
            assert_eq!(v["error"]["code"], "permission_denied");
        }
        // Members read usage (their own) and the limits, caps, budgets and model rules
        // they are under.
        let member_reads = path.starts_with("/admin/v1/usage")
            || (*method == "get"
                && (["/admin/v1/limits", "/admin/v1/caps", "/admin/v1/budgets"]
                    .contains(&path.as_str())
                    || path.starts_with("/admin/v1/models/")));
        if member_reads {
            assert_eq!(ms, 200, "member {path}: {mv}");
        } else {
            assert_eq!(ms, 403, "member {method} {path}: {mv}");
            assert_eq!(mv["error"]["type"], "permission_error");
        }
    }
    // Usage is written in the background: wait for the member's call to land.
    let landed = eventually(Duration::from_secs(3), || async {
        let (_, u) = admin(&h, &viewer, "get", "/admin/v1/usage?by=key", None).await;
        u["data"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    assert!(landed.is_some(), "usage never recorded");
    let (_, usage) = admin(&h, &member, "get", "/admin/v1/usage?by=key", None).await;
    let groups: Vec<&str> = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(groups, vec![member_id.as_str()]);
    let (_, usage) = admin(&h, &viewer, "get", "/admin/v1/usage?by=model", None).await;
    assert_eq!(usage["data"][0]["requests"], 1, "{usage}");
}

#[tokio::test]
async fn another_projects_keys_are_not_found() {
    let h = start().await;
    let (admin_key, _) = key(&h, Role::Admin).await;
    h.store.ensure_project("rival").await.unwrap();
    let m = keys::mint("rival", "dev", Role::Member, None, support::now_ms());
    h.store.insert_key(&m.record).await.unwrap();
    let id = m.record.id;
    for (method, path) in ROUTES.iter().filter(|(_, p)| p.contains("{id}")) {
        let path = path.replace("{id}", &id);
        let (s, v) = admin(&h, &admin_key, method, &path, None).await;
        assert_eq!(s, 404, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "not_found");
    }
    let (_, listed) = admin(&h, &admin_key, "get", "/admin/v1/keys", None).await;
    assert!(!listed.to_string().contains(&id));
    assert_eq!(
        h.store.key_by_id(&id).await.unwrap().unwrap().revoked_at_ms,
        None
    );
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field_and_changes_nothing() {
    let h = start().await;
    let (admin_key, _) = key(&h, Role::Admin).await;
    let id = h.key_id.clone();
    let long = "x".repeat(201);
    let cases: Vec<(&str, String, Value, Option<&str>)> = vec![
        (
            "post",
            "/admin/v1/keys".into(),
            json!({"env": "Prod!"}),
            Some("env"),
        ),
        (
            "post",
            "/admin/v1/keys".into(),
            json!({"env": "dev", "expires_in": "3 weeks"}),
            Some("expires_in"),
        ),
        (
            "post",
            "/admin/v1/keys".into(),
            json!({"env": "dev", "expires_in": "0d"}),
            Some("expires_in"),
        ),
        (
            "post",
            "/admin/v1/keys".into(),
            json!({"env": "dev", "expires_in": "365d"}),
            Some("expires_in"),
        ),
        (
            "post",
            "/admin/v1/keys".into(),
            json!({"env": "dev", "role": "root"}),
            Some("role"),
        ),
        (
            "post",
            "/admin/v1/keys".into(),
            json!({"env": "dev", "name": long}),
            Some("name"),
        ),
        (
            "post",
            "/admin/v1/keys".into(),
            json!({"env": "dev", "project": "rival"}),
            Some("project"),
        ),
        ("post", "/admin/v1/keys".into(), json!({}), Some("env")),
        (
            "post",
            format!("/admin/v1/keys/{id}/rotate"),
            json!({"grace": "1y"}),
            Some("grace"),
        ),
        (
            "post",
            format!("/admin/v1/keys/{id}/revoke"),
            json!({"reason": long}),
            Some("reason"),
        ),
        (
            "post",
            format!("/admin/v1/keys/{id}/suspend"),
            json!({"why": "x"}),
            Some("why"),
        ),
        (
            "get",
            "/admin/v1/usage?by=week".into(),
            Value::Null,
            Some("by"),
        ),
        (
            "get",
            "/admin/v1/usage?since=soon".into(),
            Value::Null,
            Some("since"),
        ),
        (
            "get",
            "/admin/v1/audit?limit=0".into(),
            Value::Null,
            Some("limit"),
        ),
        (
            "get",
            "/admin/v1/audit?colour=red".into(),
            Value::Null,
            Some("colour"),
        ),
    ];
    let keys_before = h.store.list_keys().await.unwrap();
    let audit_before = h.store.list_audit(0, 10_000).await.unwrap();
    for (method, path, body, param) in cases {
        let body = (method == "post").then_some(body);
        let (s, v) = admin(&h, &admin_key, method, &path, body).await;
        assert_eq!(s, 400, "{method} {path}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"].as_str(), param, "{path}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, _) = admin(
        &h,
        &admin_key,
        "post",
        "/admin/v1/keys/key_nope/revoke",
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(h.store.list_keys().await.unwrap(), keys_before);
    assert_eq!(h.store.list_audit(0, 10_000).await.unwrap(), audit_before);
}

#[tokio::test]
async fn every_admin_route_is_served_and_needs_a_key() {
    let h = start().await;
    for (method, path) in ROUTES {
        let path = path.replace("{id}", "key_x").replace("{env}", "prod");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let req = h.http.request(method.clone(), h.url(&path));
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{method} {path}");
    }
    // A known path with another method, and an unknown admin path: OpenAI's Invalid URL.
    for res in [
        h.http.delete(h.url("/admin/v1/keys")).send().await.unwrap(),
        h.http.get(h.url("/admin/v1/nothing")).send().await.unwrap(),
    ] {
        assert_eq!(res.status().as_u16(), 404);
        let v: Value = res.json().await.unwrap();
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid URL"));
    }
}

#[tokio::test]
async fn admins_set_rate_limits_and_caps_every_role_reads_them_and_the_gateway_honours_them() {
    let h = start().await;
    let (admin_key, admin_id) = key(&h, Role::Admin).await;
    let (viewer, _) = key(&h, Role::Viewer).await;
    let member = h.key.clone();

    // A rule on an alias would never apply (rules match the resolved model): refused.
    let on_alias = json!({"env": "dev", "model": "fast", "rpm": 1});
    let (s, v) = admin(&h, &admin_key, "put", "/admin/v1/limits", Some(on_alias)).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "model");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"gpt-4o-mini\""),
        "{v}"
    );

    let rule = json!({"env": "dev", "model": "gpt-4o-mini", "rpm": 1});
    let (s, v) = admin(
        &h,
        &admin_key,
        "put",
        "/admin/v1/limits",
        Some(rule.clone()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            &v["project"],
            &v["env"],
            &v["model"],
            &v["key_id"],
            &v["rpm"],
            &v["tpm"]
        ),
        (
            &json!("shop"),
            &json!("dev"),
            &json!("gpt-4o-mini"),
            &Value::Null,
            &json!(1),
            &Value::Null
        )
    );
    for k in [&member, &viewer, &admin_key] {
        let (s, v) = admin(&h, k, "get", "/admin/v1/limits", None).await;
        assert_eq!(s, 200);
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
    }
    for k in [&member, &viewer] {
        let (s, v) = admin(&h, k, "put", "/admin/v1/limits", Some(rule.clone())).await;
        assert_eq!(s, 403);
        assert_eq!(v["error"]["code"], "permission_denied");
        let (s, _) = admin(&h, k, "delete", "/admin/v1/limits?env=dev", None).await;
        assert_eq!(s, 403);
    }
    // Bad input is a 400 naming the field, and changes nothing.
    for (body, param) in [
        (json!({"rpm": 0}), Value::from("rpm")),
        (json!({"env": "dev"}), Value::from("rpm")),
        (json!({"env": "Dev!", "rpm": 1}), Value::from("env")),
        (json!({"rpm": 1, "burst": 2}), Value::from("burst")),
        (json!({"rpm": "many"}), Value::from("rpm")),
    ] {
        let (s, v) = admin(
            &h,
            &admin_key,
            "put",
            "/admin/v1/limits",
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], param, "{body}");
    }
    let (s, _) = admin(
        &h,
        &admin_key,
        "put",
        "/admin/v1/limits",
        Some(json!({"key_id": "key_elsewhere", "rpm": 1})),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(h.store.list_rate_limits(None).await.unwrap().len(), 1);

    // The running gateway applies the rule: one request a minute for the mini model.
    assert!(honoured(&h, &member, 429).await);
    let audit = h.store.list_audit(0, 1000).await.unwrap();
    let set = audit.iter().find(|a| a.action == "limits.set").unwrap();
    assert_eq!(set.actor, format!("key:{admin_id}"));
    assert_eq!(set.target, "shop/dev/*/gpt-4o-mini");

    let (s, _) = admin(
        &h,
        &admin_key,
        "delete",
        "/admin/v1/limits?env=dev&model=gpt-4o-mini",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = admin(
        &h,
        &admin_key,
        "delete",
        "/admin/v1/limits?env=dev&model=gpt-4o-mini",
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/admin/v1/limits"));
    assert!(honoured(&h, &member, 200).await);

    // Output caps: the same roles.
    let cap = json!({"max_output_tokens": 64, "over": "refuse", "temperature_min": 0.0, "temperature_max": 1.0});
    let (s, v) = admin(&h, &viewer, "put", "/admin/v1/caps", Some(cap.clone())).await;
    assert_eq!((s, &v["error"]["code"]), (403, &json!("permission_denied")));
    let (s, v) = admin(&h, &admin_key, "put", "/admin/v1/caps", Some(cap)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["over"], &v["max_output_tokens"], &v["key_id"]),
        (&json!("refuse"), &json!(64), &Value::Null)
    );
    let (s, v) = admin(
        &h,
        &admin_key,
        "put",
        "/admin/v1/caps",
        Some(json!({"over": "sometimes", "max_output_tokens": 1})),
    )
    .await;
    assert_eq!((s, &v["error"]["param"]), (400, &json!("over")));
    let (s, v) = admin(&h, &member, "get", "/admin/v1/caps", None).await;
    assert_eq!((s, v["data"].as_array().unwrap().len()), (200, 1));
    let refused = eventually(WITHIN, || async {
        let res = h
            .post(
                "/v1/responses",
                json!({"model": "gpt-4o", "input": "hi", "max_output_tokens": 65}),
            )
            .send()
            .await
            .unwrap();
        res.status() == 400
    })
    .await;
    assert!(refused.is_some(), "the cap was not applied within a second");
    let (s, _) = admin(&h, &admin_key, "delete", "/admin/v1/caps", None).await;
    assert_eq!(s, 200);
    let (s, _) = admin(&h, &admin_key, "delete", "/admin/v1/caps", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_keys_lane_is_set_over_the_admin_api_audited_and_refused_when_unknown() {
    let h = start().await;
    let (admin_key, _) = key(&h, Role::Admin).await;
    let (member_key, member_id) = key(&h, Role::Member).await;

    let (s, created) = admin(
        &h,
        &admin_key,
        "post",
        "/admin/v1/keys",
        Some(json!({"env": "dev", "lane": "batch"})),
    )
    .await;
    assert_eq!(
        (s, created["lane"].as_str()),
        (201, Some("batch")),
        "{created}"
    );
    let (s, bad) = admin(
        &h,
        &admin_key,
        "post",
        "/admin/v1/keys",
        Some(json!({"env": "dev", "lane": "soon"})),
    )
    .await;
    assert_eq!(
        (s, bad["error"]["param"].as_str()),
        (400, Some("lane")),
        "{bad}"
    );

    let path = format!("/admin/v1/keys/{member_id}/lane");
    let (s, shown) = admin(
        &h,
        &admin_key,
        "get",
        &format!("/admin/v1/keys/{member_id}"),
        None,
    )
    .await;
    assert_eq!((s, shown["lane"].as_str()), (200, Some("interactive")));
    // A member may not change keys; an unknown lane changes nothing.
    let (s, _) = admin(
        &h,
        &member_key,
        "post",
        &path,
        Some(json!({"lane": "batch"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, bad) = admin(
        &h,
        &admin_key,
        "post",
        &path,
        Some(json!({"lane": "urgent"})),
    )
    .await;
    assert_eq!(s, 400, "{bad}");
    assert!(bad["error"]["message"]
        .as_str()
        .unwrap()
        .contains("interactive or batch"));
    let (s, set) = admin(
        &h,
        &admin_key,
        "post",
        &path,
        Some(json!({"lane": "batch"})),
    )
    .await;
    assert_eq!((s, set["changed"].as_bool()), (200, Some(true)), "{set}");
    let (_, again) = admin(
        &h,
        &admin_key,
        "post",
        &path,
        Some(json!({"lane": "batch"})),
    )
    .await;
    assert_eq!(again["changed"].as_bool(), Some(false));
    let (_, shown) = admin(
        &h,
        &admin_key,
        "get",
        &format!("/admin/v1/keys/{member_id}"),
        None,
    )
    .await;
    assert_eq!(shown["lane"].as_str(), Some("batch"));

    let audit = h.store.list_audit(0, 1_000).await.unwrap();
    let sets: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "key.set_lane")
        .collect();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].target, member_id);
    assert!(
        sets[0].actor.contains("key_"),
        "the caller's key id: {}",
        sets[0].actor
    );
}

#[tokio::test]
async fn usage_counts_errors_as_tollgate_usage_does() {
    let h = start().await;
    let (viewer, _) = key(&h, tollgate_store::Role::Viewer).await;
    let at = support::now_ms();
    let rec = |id: &str, status: u16, code: Option<&str>, left: bool| tollgate_store::UsageRecord {
        request_id: id.into(),
        key_id: Some(h.key_id.clone()),
        project: Some("shop".into()),
        env: Some("dev".into()),
        endpoint: "/v1/chat/completions".into(),
        status,
        error_code: code.map(str::to_owned),
        client_disconnected: left,
        created_at_ms: at,
        ..tollgate_store::UsageRecord::default()
    };
    h.store
        .insert_usage(&[
            rec("ok", 200, None, false),
            // A stream the upstream broke off: 200 with an error code.
            rec("cut", 200, Some("upstream_stream_failed"), false),
            rec("left", 499, None, true),
            rec("refused", 429, Some("rate_limit_exceeded"), false),
        ])
        .await
        .unwrap();
    let (s, v) = admin(&h, &viewer, "get", "/admin/v1/usage?by=key", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"][0]["requests"], 4, "{v}");
    assert_eq!(v["data"][0]["errors"], 3, "{v}");
    let cli = h
        .store
        .usage_totals(&tollgate_store::UsageFilter {
            group: tollgate_store::UsageGroup::Key,
            since_ms: at - 1,
        })
        .await
        .unwrap();
    assert_eq!(cli[0].errors, 3);
    // A record without a model groups as "-", as in `tollgate usage --by model`.
    let (_, v) = admin(&h, &viewer, "get", "/admin/v1/usage?by=model", None).await;
    assert_eq!(v["data"][0]["group"], "-", "{v}");
}

#[tokio::test]
async fn an_unknown_query_parameter_is_named() {
    let h = start().await;
    let (admin_key, _) = key(&h, Role::Admin).await;
    let (s, v) = admin(
        &h,
        &admin_key,
        "get",
        "/admin/v1/usage?since=1h&foo=1",
        None,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "foo", "{v}");
}
