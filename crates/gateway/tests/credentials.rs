//! Provider credentials per project and environment: a call uses its environment's
//! credential, else its project's, else the global one; a change made in the store
//! reaches the running gateway within a second; an unreadable reference answers 503
//! `provider_credential_unavailable`; no credential value shows in bodies, usage
//! records or the audit log.
//!
//! The simulator accepts only the right provider key, so which credential a call used
//! shows as a 200 (the right one) or, for a wrong one, the upstream's 401 turned into a
//! 502 `provider_credential_rejected` that neither blames the caller's key nor quotes
//! the upstream's message (which shows part of the provider key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{eventually, Harness, PROVIDER_KEY};
use tollgate_store::{Actor, Role};

const WRONG_KEY: &str = "sk-wrong-prod-credential-0123456789";

async fn status(h: &Harness, secret: &str) -> (u16, String) {
    let res = h
        .http
        .post(h.url("/v1/responses"))
        .bearer_auth(secret)
        .json(&json!({"model": "gpt-4o-mini", "input": "hi"}))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn admin() -> Actor {
    Actor::new("cli:test", "cli")
}

#[tokio::test]
async fn each_environment_uses_its_own_provider_credential() {
    let mut h = support::start().await;
    let dir = tempfile::tempdir().unwrap();
    let right = dir.path().join("right");
    let wrong = dir.path().join("wrong");
    std::fs::write(&right, PROVIDER_KEY).unwrap();
    std::fs::write(&wrong, WRONG_KEY).unwrap();
    let right_ref = format!("file:{}", right.display());
    let wrong_ref = format!("file:{}", wrong.display());
    let (prod, _) = h.mint("prod", Role::Member).await;
    let dev = h.key.clone();
    // The new key reaches the cache on the next poll; until then it is unknown.
    let took = eventually(Duration::from_secs(1), || async {
        status(&h, &prod).await.0 == 200
    })
    .await;
    assert!(took.is_some(), "the global credential");

    // Project default: the wrong key; dev's own: the right one.
    let now = support::now_ms();
    h.store
        .set_project_credential("shop", Some(&wrong_ref), now, &admin())
        .await
        .unwrap();
    h.store
        .set_env_credential("shop", "dev", Some(&right_ref), now, &admin())
        .await
        .unwrap();
    // Two changes, two versions: a reload may fall between them, so wait for both.
    let took = eventually(Duration::from_secs(1), || async {
        status(&h, &prod).await.0 == 502 && status(&h, &dev).await.0 == 200
    })
    .await;
    assert!(took.is_some(), "prod did not switch to the project default");
    assert_eq!(status(&h, &dev).await.0, 200, "dev uses its own credential");
    let (code, body) = status(&h, &prod).await;
    assert_eq!(code, 502, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "provider_credential_rejected", "{body}");
    assert_eq!(v["error"]["type"], "server_error", "{body}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("shop") && message.contains("your tollgate key was accepted"));
    // The upstream's own message quotes the key's first and last characters.
    assert!(
        !body.contains("Incorrect API key") && !body.contains("6789"),
        "{body}"
    );

    // prod gets the right credential: it works within a second.
    h.store
        .set_env_credential(
            "shop",
            "prod",
            Some(&right_ref),
            support::now_ms(),
            &admin(),
        )
        .await
        .unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        status(&h, &prod).await.0 == 200
    })
    .await;
    assert!(took.is_some(), "prod's new credential was not picked up");

    // An unreadable reference: 503, naming the project, never a value.
    let missing = format!("file:{}", dir.path().join("missing").display());
    h.store
        .set_env_credential("shop", "prod", Some(&missing), support::now_ms(), &admin())
        .await
        .unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        status(&h, &prod).await.0 == 503
    })
    .await;
    assert!(took.is_some(), "an unreadable credential did not give 503");
    let (_, body) = status(&h, &prod).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "provider_credential_unavailable");
    assert_eq!(v["error"]["type"], "service_unavailable_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("shop"));
    assert_eq!(status(&h, &dev).await.0, 200, "dev is unaffected");

    // Cleared: prod falls back to the project default (the wrong key) again.
    h.store
        .set_env_credential("shop", "prod", None, support::now_ms(), &admin())
        .await
        .unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        status(&h, &prod).await.0 == 502
    })
    .await;
    assert!(took.is_some());

    let audit = h.store.list_audit(0, 1000).await.unwrap();
    let records = h.stop_and_records().await;
    assert!(records
        .iter()
        .any(|r| r.status == 503
            && r.error_code.as_deref() == Some("provider_credential_unavailable")));
    assert!(records.iter().any(|r| r.status == 502
        && r.error_code.as_deref() == Some("provider_credential_rejected")
        && r.upstream_request_id.is_some()));
    let everything = format!("{records:?} {audit:?} {body}");
    for secret in [PROVIDER_KEY, WRONG_KEY] {
        assert!(!everything.contains(secret), "a provider key leaked");
    }
}

#[tokio::test]
async fn the_admin_api_shows_and_sets_environment_credentials_by_reference() {
    let mut h = support::start().await;
    let (admin_key, _) = h.mint("ops", Role::Admin).await;
    let (viewer_key, _) = h.mint("ops", Role::Viewer).await;
    let get = |key: String| {
        let h = &h;
        async move {
            let res = h
                .http
                .get(h.url("/admin/v1/project"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let put = |key: String, body: serde_json::Value| {
        let h = &h;
        async move {
            let res = h
                .http
                .put(h.url("/admin/v1/project/envs/prod/credential"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let took = eventually(Duration::from_secs(1), || async {
        get(viewer_key.clone()).await.0 == 200
    })
    .await;
    assert!(took.is_some());
    assert_eq!(get(h.key.clone()).await.0, 403, "a member may not read it");

    let (code, body) = put(viewer_key.clone(), json!({"ref": "env:OPENAI_KEY_PROD"})).await;
    assert_eq!(code, 403, "{body}");
    let version = h.store.keys_version().await.unwrap();
    let oversized = format!("env:{}", "A".repeat(600));
    let audit_before = h.store.list_audit(0, 10_000).await.unwrap();
    for (bad, param) in [
        (json!({"ref": WRONG_KEY}), "ref"),
        (json!({}), "ref"),
        (json!({"ref": "env:X", "extra": 1}), "extra"),
        (json!({"ref": 5}), "ref"),
        (json!({"ref": oversized}), "ref"),
    ] {
        let (code, body) = put(admin_key.clone(), bad.clone()).await;
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(!body.contains(WRONG_KEY), "the value was echoed: {body}");
        assert!(!body.contains(&oversized), "the value was echoed: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["param"], param, "{bad}: {body}");
    }
    // A project's admin may not run a command or read a file on the gateway's host.
    for host_ref in ["exec:id > /tmp/owned; echo sk-x", "file:/etc/passwd"] {
        let (code, body) = put(admin_key.clone(), json!({ "ref": host_ref })).await;
        assert_eq!(code, 403, "{host_ref}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "permission_denied", "{body}");
        assert!(body.contains("tollgate projects set-credential"), "{body}");
        assert!(!body.contains(host_ref), "the value was echoed: {body}");
    }
    // A bad environment name in the path.
    let res = h
        .http
        .put(h.url("/admin/v1/project/envs/Prod!/credential"))
        .bearer_auth(&admin_key)
        .json(&json!({"ref": "env:OPENAI_KEY_PROD"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["param"], "env");
    assert_eq!(h.store.list_audit(0, 10_000).await.unwrap(), audit_before);
    assert_eq!(
        h.store.keys_version().await.unwrap(),
        version,
        "store changed"
    );

    let (code, body) = put(admin_key.clone(), json!({"ref": "env:OPENAI_KEY_PROD"})).await;
    assert_eq!(code, 200, "{body}");
    let (_, body) = get(viewer_key.clone()).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["name"], "shop");
    let prod = v["envs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["env"] == "prod")
        .unwrap();
    assert_eq!(prod["credential_used"], "env:OPENAI_KEY_PROD");
    assert_eq!(prod["credential_source"], "environment");
    let dev = v["envs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["env"] == "dev")
        .unwrap();
    assert_eq!(dev["credential_source"], "global");

    let (code, _) = put(admin_key.clone(), json!({"ref": null})).await;
    assert_eq!(code, 200);
    let audit = h.store.list_audit(0, 1000).await.unwrap();
    let changes: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "project.set_env_credential")
        .collect();
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|a| a.target == "shop/prod"
        && a.source.starts_with("admin-api")
        && a.actor.starts_with("key:")));

    // An operator's exec: reference may carry a token in its command line: readers of
    // the project and of the audit log see its program only.
    let command = "exec:VAULT_TOKEN=hvs.s3cr3t vault read -field=key secret/openai";
    h.store
        .set_env_credential(
            "shop",
            "staging",
            Some(command),
            support::now_ms(),
            &admin(),
        )
        .await
        .unwrap();
    let (_, body) = get(viewer_key.clone()).await;
    assert!(
        !body.contains("s3cr3t") && !body.contains("secret/openai"),
        "{body}"
    );
    assert!(body.contains("exec:vault …"), "{body}");
    let audit = h.store.list_audit(0, 1000).await.unwrap();
    let last = audit.last().unwrap();
    assert_eq!(last.action, "project.set_env_credential");
    assert!(!last.detail.contains("s3cr3t"), "{}", last.detail);
    // The project's default credential likewise, in the store and over the API.
    h.store
        .set_project_credential("shop", Some(command), support::now_ms(), &admin())
        .await
        .unwrap();
    let audit = h.store.list_audit(0, 1000).await.unwrap();
    let last = audit.last().unwrap();
    assert_eq!(last.action, "project.set_credential");
    assert!(!last.detail.contains("s3cr3t"), "{}", last.detail);
    let res = h
        .http
        .get(h.url("/admin/v1/audit"))
        .bearer_auth(&viewer_key)
        .send()
        .await
        .unwrap();
    let body = res.text().await.unwrap();
    assert!(
        body.contains("exec:vault …") && !body.contains("s3cr3t"),
        "{body}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_slow_new_credential_does_not_hold_up_a_revocation() {
    let mut h = support::start().await;
    assert_eq!(status(&h, &h.key).await.0, 200);
    // A new environment whose credential takes two seconds to read, its first key, and
    // in the same moment a revocation: the revoked key is refused within the second
    // all the same.
    h.store
        .set_env_credential(
            "shop",
            "staging",
            Some(&format!("exec:sleep 2; printf {PROVIDER_KEY}")),
            support::now_ms(),
            &admin(),
        )
        .await
        .unwrap();
    let (staging_key, _) = h.mint("staging", Role::Member).await;
    h.store
        .revoke_key(&h.key_id, Some("leaked"), support::now_ms())
        .await
        .unwrap();
    let refused = eventually(Duration::from_secs(1), || async {
        status(&h, &h.key).await.0 == 401
    })
    .await;
    assert!(
        refused.is_some(),
        "the revocation waited for the credential"
    );
    // The new key is known at once, and refused while its credential is read — a 503
    // the SDKs retry — then served with it.
    let call = || async {
        h.http
            .post(h.url("/v1/responses"))
            .bearer_auth(&staging_key)
            .json(&json!({"model": "gpt-4o-mini", "input": "hi"}))
            .send()
            .await
            .unwrap()
    };
    let known_by = std::time::Instant::now() + Duration::from_secs(5);
    let mut res = call().await;
    while res.status() == 401 && std::time::Instant::now() < known_by {
        tokio::task::yield_now().await;
        res = call().await;
    }
    assert_eq!(res.status(), 503, "{}", res.text().await.unwrap());
    assert_eq!(res.headers()["x-should-retry"], "true");
    assert_eq!(res.headers()["retry-after"], "1");
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "provider_credential_pending", "{v}");
    let served = eventually(Duration::from_secs(10), || async {
        status(&h, &staging_key).await.0 == 200
    })
    .await;
    assert!(served.is_some(), "the new credential was never used");
    // The credential changed to one that is slow to read and that the upstream
    // refuses: meanwhile the environment's keys keep the one they had (200), and once
    // it is read they use it (the upstream refuses it: 502).
    h.store
        .set_env_credential(
            "shop",
            "staging",
            Some(&format!("exec:sleep 1.5; printf {WRONG_KEY}")),
            support::now_ms(),
            &admin(),
        )
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1200) {
        let (code, body) = status(&h, &staging_key).await;
        assert_eq!(code, 200, "{body}");
    }
    let switched = eventually(Duration::from_secs(10), || async {
        status(&h, &staging_key).await.0 == 502
    })
    .await;
    assert!(switched.is_some(), "the new credential was never adopted");
    h.stop().await;
}
