//! Projects over the admin API: keys of the reserved `_gateway` project create, list,
//! show, change and delete projects (and mint another project's keys); project keys
//! are refused with 403; bad input is 400/404 and leaves the store unchanged; every
//! change is audited with the caller's key id and address, never a secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{eventually, now_ms, start, Harness};
use tollgate_gateway::keys;
use tollgate_store::{Role, GATEWAY_PROJECT};

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

/// Mints a key of `role` in `project` (created on demand) and waits until the gateway
/// knows it.
async fn key_in(h: &Harness, project: &str, role: Role) -> (String, String) {
    h.store
        .ensure_project_as(project, &tollgate_store::Actor::system())
        .await
        .unwrap();
    let m = keys::mint(project, "prod", role, None, now_ms());
    h.store.insert_key(&m.record).await.unwrap();
    wait_known(h, &m.secret).await;
    (m.secret, m.record.id)
}

async fn wait_known(h: &Harness, secret: &str) {
    let known = eventually(Duration::from_secs(2), || async {
        admin(h, secret, "get", "/admin/v1/usage", None).await.0 != 401
    })
    .await;
    assert!(known.is_some(), "the gateway never learnt the new key");
}

/// Everything a refused call must not have changed.
async fn snapshot(h: &Harness) -> (Vec<String>, usize, i64) {
    let names = h
        .store
        .projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| format!("{}:{:?}", p.name, p.anomaly_auto_suspend))
        .collect();
    let audit = h.store.list_audit(0, 100_000).await.unwrap().len();
    (names, audit, h.store.keys_version().await.unwrap())
}

fn assert_openai_error(body: &Value, kind: &str, code: Option<&str>) {
    let e = &body["error"];
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "{body} lacks {k}");
    }
    assert_eq!(e["type"], kind, "{body}");
    assert_eq!(e["code"].as_str(), code, "{body}");
}

#[tokio::test]
async fn project_keys_are_refused_the_gateway_wide_routes() {
    let h = start().await;
    let (shop_admin, _) = key_in(&h, "shop", Role::Admin).await;
    let (gw_viewer, _) = key_in(&h, GATEWAY_PROJECT, Role::Viewer).await;
    let (gw_member, _) = key_in(&h, GATEWAY_PROJECT, Role::Member).await;
    let before = snapshot(&h).await;

    let create = Some(json!({"name": "blog"}));
    let calls: [(&str, &str, Option<Value>); 6] = [
        ("post", "/admin/v1/projects", create.clone()),
        ("get", "/admin/v1/projects", None),
        ("get", "/admin/v1/projects/shop", None),
        (
            "patch",
            "/admin/v1/projects/shop",
            Some(json!({"anomaly_auto_suspend": true})),
        ),
        ("delete", "/admin/v1/projects/shop", None),
        (
            "post",
            "/admin/v1/projects/shop/keys",
            Some(json!({"env": "prod"})),
        ),
    ];
    for (method, path, body) in calls {
        for secret in [&shop_admin, &gw_member] {
            let (s, b) = admin(&h, secret, method, path, body.clone()).await;
            assert_eq!(s, 403, "{method} {path}: {b}");
            assert_openai_error(&b, "permission_error", Some("permission_denied"));
            assert!(b["error"]["message"].as_str().unwrap().contains("_gateway"));
        }
    }
    // A gateway viewer may read, not change.
    assert_eq!(
        admin(&h, &gw_viewer, "get", "/admin/v1/projects", None)
            .await
            .0,
        200
    );
    assert_eq!(
        admin(&h, &gw_viewer, "get", "/admin/v1/projects/shop", None)
            .await
            .0,
        200
    );
    let (s, b) = admin(&h, &gw_viewer, "post", "/admin/v1/projects", create).await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(snapshot(&h).await, before, "a refusal changes nothing");
}

#[tokio::test]
async fn bad_project_input_is_refused_and_changes_nothing() {
    let h = start().await;
    let (gw, _) = key_in(&h, GATEWAY_PROJECT, Role::Admin).await;
    let (s, _) = admin(
        &h,
        &gw,
        "post",
        "/admin/v1/projects",
        Some(json!({"name": "blog"})),
    )
    .await;
    assert_eq!(s, 201);
    let before = snapshot(&h).await;

    let long = "x".repeat(65);
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"name": "blog"}), "name", "exists"),
        (json!({"name": "_mine"}), "name", "reserved"),
        (json!({"name": GATEWAY_PROJECT}), "name", "reserved"),
        (json!({"name": "Bad Name"}), "name", "invalid project name"),
        (json!({"name": long}), "name", "longer than 64"),
        (
            json!({"name": "ok", "upstream_api_key": "sk-live-abc123"}),
            "upstream_api_key",
            "secret reference",
        ),
        (
            json!({"name": "ok", "max_key_age": "7w"}),
            "max_key_age",
            "duration",
        ),
        (
            json!({"name": "ok", "max_key_age": "0d"}),
            "max_key_age",
            "longer than zero",
        ),
    ];
    for (body, param, says) in cases {
        let (s, b) = admin(&h, &gw, "post", "/admin/v1/projects", Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {b}");
        assert_openai_error(&b, "invalid_request_error", None);
        assert_eq!(b["error"]["param"], param, "{body}: {b}");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
        assert!(
            !message.contains("sk-live-abc123"),
            "a pasted secret is never echoed"
        );
        assert!(!message.contains(&long), "an oversized name is not echoed");
    }
    // A credential that reads a file or runs a command on the host is the CLI's.
    for host_ref in ["exec:id", "file:/etc/passwd"] {
        let body = json!({"name": "ok", "upstream_api_key": host_ref});
        let (s, b) = admin(&h, &gw, "post", "/admin/v1/projects", Some(body)).await;
        assert_eq!(s, 403, "{host_ref}: {b}");
        assert_eq!(b["error"]["code"], "permission_denied", "{b}");
    }
    for body in [
        json!({"name": "ok", "colour": "red"}),
        json!({"name": "ok", "anomaly_auto_suspend": "yes"}),
        json!({}),
    ] {
        let (s, b) = admin(&h, &gw, "post", "/admin/v1/projects", Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {b}");
        assert_openai_error(&b, "invalid_request_error", None);
    }
    for (body, param) in [
        (json!({}), "anomaly_auto_suspend"),
        (
            json!({"anomaly_auto_suspend": "on"}),
            "anomaly_auto_suspend",
        ),
        (json!({"x": true}), "x"),
    ] {
        let (s, b) = admin(
            &h,
            &gw,
            "patch",
            "/admin/v1/projects/blog",
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, 400, "{body}: {b}");
        assert_eq!(b["error"]["param"], param);
    }
    let unknown: [(&str, &str, Option<Value>); 4] = [
        ("get", "/admin/v1/projects/nope", None),
        (
            "patch",
            "/admin/v1/projects/nope",
            Some(json!({"anomaly_auto_suspend": true})),
        ),
        ("delete", "/admin/v1/projects/nope", None),
        (
            "post",
            "/admin/v1/projects/nope/keys",
            Some(json!({"env": "prod"})),
        ),
    ];
    for (method, path, body) in unknown {
        let (s, b) = admin(&h, &gw, method, path, body).await;
        assert_eq!(s, 404, "{method} {path}: {b}");
        assert_openai_error(&b, "invalid_request_error", Some("not_found"));
        assert!(b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No project \"nope\""));
    }
    let (s, b) = admin(
        &h,
        &gw,
        "delete",
        &format!("/admin/v1/projects/{GATEWAY_PROJECT}"),
        None,
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("reserved"));
    assert_eq!(snapshot(&h).await, before, "bad input changes nothing");
}

#[tokio::test]
async fn a_gateway_admin_manages_projects_and_bootstraps_their_keys_all_audited() {
    let h = start().await;
    let (gw, gw_id) = key_in(&h, GATEWAY_PROJECT, Role::Admin).await;

    let (s, p) = admin(
        &h,
        &gw,
        "post",
        "/admin/v1/projects",
        Some(json!({"name": "blog", "upstream_api_key": "env:BLOG_KEY",
                    "max_key_age": "30d", "anomaly_auto_suspend": true})),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["object"], "project");
    assert_eq!(p["name"], "blog");
    assert_eq!(p["upstream_api_key"], "env:BLOG_KEY");
    assert_eq!(p["max_key_age_ms"], 30 * 86_400_000_i64);
    assert_eq!(p["anomaly_auto_suspend"], true);
    assert_eq!(p["anomaly_auto_suspend_effective"], true);
    let stored = h.store.project_by_name("blog").await.unwrap().unwrap();
    assert_eq!(stored.anomaly_auto_suspend, Some(true));

    let (s, list) = admin(&h, &gw, "get", "/admin/v1/projects", None).await;
    assert_eq!(s, 200);
    let rows: Vec<(String, bool)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["reserved"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (GATEWAY_PROJECT.to_owned(), true),
            ("blog".to_owned(), false),
            ("shop".to_owned(), false)
        ]
    );

    // Settings: off, then back to the gateway default.
    let (s, p) = admin(
        &h,
        &gw,
        "patch",
        "/admin/v1/projects/blog",
        Some(json!({"anomaly_auto_suspend": false})),
    )
    .await;
    assert_eq!((s, &p["anomaly_auto_suspend"]), (200, &json!(false)), "{p}");
    let (s, p) = admin(
        &h,
        &gw,
        "patch",
        "/admin/v1/projects/blog",
        Some(json!({"anomaly_auto_suspend": null})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(p["anomaly_auto_suspend"], Value::Null);
    assert_eq!(
        p["anomaly_auto_suspend_effective"], false,
        "the config default"
    );

    // The way into another project: mint its first admin key.
    let (s, created) = admin(
        &h,
        &gw,
        "post",
        "/admin/v1/projects/blog/keys",
        Some(json!({"env": "prod", "role": "admin", "name": "blog-admins"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["project"], "blog");
    let blog_admin = created["key"].as_str().unwrap().to_owned();
    let blog_key_id = created["id"].as_str().unwrap().to_owned();
    wait_known(&h, &blog_admin).await;
    let (s, own) = admin(&h, &blog_admin, "get", "/admin/v1/project", None).await;
    assert_eq!((s, own["name"].as_str()), (200, Some("blog")));
    // Per-project routes stay scoped to the caller's project, for _gateway keys too.
    let (s, _) = admin(
        &h,
        &gw,
        "get",
        &format!("/admin/v1/keys/{blog_key_id}"),
        None,
    )
    .await;
    assert_eq!(s, 404);

    // Delete: refused while a key is live, as the CLI; then allowed, keys and all.
    let (s, b) = admin(&h, &gw, "delete", "/admin/v1/projects/blog", None).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not revoked"));
    assert!(h.store.project_by_name("blog").await.unwrap().is_some());
    let path = format!("/admin/v1/keys/{blog_key_id}/revoke");
    assert_eq!(admin(&h, &blog_admin, "post", &path, None).await.0, 200);
    let (s, b) = admin(&h, &gw, "delete", "/admin/v1/projects/blog", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({"object": "project.deleted", "name": "blog", "deleted": true})
    );
    assert!(h.store.project_by_name("blog").await.unwrap().is_none());
    assert!(h.store.key_by_id(&blog_key_id).await.unwrap().is_none());
    assert_eq!(
        admin(&h, &gw, "get", "/admin/v1/projects/blog", None)
            .await
            .0,
        404
    );

    // Who, what, when, from where — and never a secret.
    let audit = h.store.list_audit(0, 1000).await.unwrap();
    let by_gw: Vec<(&str, &str)> = audit
        .iter()
        .filter(|a| a.actor == format!("key:{gw_id}"))
        .map(|a| (a.action.as_str(), a.target.as_str()))
        .collect();
    assert_eq!(
        by_gw,
        vec![
            ("project.create", "blog"),
            ("project.set_anomaly_auto_suspend", "blog"),
            ("project.set_anomaly_auto_suspend", "blog"),
            ("key.create", blog_key_id.as_str()),
            ("project.delete", "blog"),
        ]
    );
    for a in audit.iter().filter(|a| a.actor == format!("key:{gw_id}")) {
        assert_eq!(a.source, "admin-api 127.0.0.1");
        assert!(a.at_ms > 0);
        assert!(!a.detail.contains(&blog_admin) && !a.detail.contains(&gw));
    }
}

#[tokio::test]
async fn a_project_admin_sets_its_own_anomaly_auto_suspend() {
    let h = start().await;
    let (shop_admin, shop_admin_id) = key_in(&h, "shop", Role::Admin).await;
    let (viewer, _) = key_in(&h, "shop", Role::Viewer).await;
    let body = Some(json!({"anomaly_auto_suspend": true}));
    let (s, b) = admin(&h, &viewer, "patch", "/admin/v1/project", body.clone()).await;
    assert_eq!(s, 403, "{b}");
    assert_openai_error(&b, "permission_error", Some("permission_denied"));
    let (s, p) = admin(&h, &shop_admin, "patch", "/admin/v1/project", body).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["name"], "shop");
    assert_eq!(p["anomaly_auto_suspend"], true);
    assert_eq!(p["anomaly_auto_suspend_effective"], true);
    let (_, shown) = admin(&h, &viewer, "get", "/admin/v1/project", None).await;
    assert_eq!(shown["anomaly_auto_suspend"], true);
    let audit = h.store.list_audit(0, 1000).await.unwrap();
    let change = audit
        .iter()
        .find(|a| a.action == "project.set_anomaly_auto_suspend")
        .unwrap();
    assert_eq!(change.actor, format!("key:{shop_admin_id}"));
    assert_eq!(change.target, "shop");
    assert_eq!(change.detail, r#"{"anomaly_auto_suspend":true}"#);
}
