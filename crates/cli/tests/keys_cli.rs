//! `tollgate keys|projects|audit` as a user runs them: the built binary on a fresh data
//! directory. Bad input (malformed durations, unknown ids, lifetimes beyond the
//! project's maximum) fails with a clear message, a non-zero exit and no change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::{fails, json, tollgate};

#[test]
fn keys_over_their_life_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let k = json(
        dir,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "dev",
            "--expires-in",
            "10d",
            "--json",
        ],
    );
    let id = k["id"].as_str().unwrap().to_owned();
    let secret = k["key"].as_str().unwrap().to_owned();

    // Listed with its expiry, and marked due for rotation (10 days < 14).
    let list = json(dir, &["keys", "list", "--json"]);
    assert_eq!(list[0]["due_for_rotation"], true);
    let table = String::from_utf8(tollgate(dir, &["keys", "list"]).stdout).unwrap();
    assert!(
        table.contains("EXPIRES") && table.contains("rotate soon"),
        "{table}"
    );

    // Bad input changes nothing.
    let audit_before = json(dir, &["audit", "--json"]);
    fails(
        dir,
        &["keys", "rotate", &id, "--grace", "1y"],
        "not a duration",
    );
    fails(
        dir,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "dev",
            "--expires-in",
            "x",
        ],
        "not a duration",
    );
    fails(dir, &["keys", "rotate", "key_nope"], "unknown key id");
    fails(
        dir,
        &["keys", "suspend", "key_nope", "--reason", "x"],
        "unknown key id",
    );
    fails(dir, &["keys", "resume", "key_nope"], "unknown key id");
    fails(dir, &["keys", "revoke", "key_nope"], "unknown key id");
    fails(
        dir,
        &["keys", "prune", "--unused-for", "soon"],
        "not a duration",
    );
    fails(
        dir,
        &["projects", "set-max-key-age", "nope", "30d"],
        "unknown project",
    );
    fails(
        dir,
        &["projects", "set-max-key-age", "shop", "30"],
        "not a duration",
    );
    fails(dir, &["audit", "--since", "yesterday"], "not a duration");
    assert_eq!(json(dir, &["audit", "--json"]), audit_before);
    assert_eq!(json(dir, &["keys", "list", "--json"]), list);

    // The project's maximum key age bounds new keys.
    let p = json(
        dir,
        &["projects", "set-max-key-age", "shop", "30d", "--json"],
    );
    assert_eq!(p["max_key_age_ms"], 30 * 86_400_000_i64);
    fails(
        dir,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "dev",
            "--expires-in",
            "31d",
        ],
        "maximum key age",
    );

    // Rotate prints the successor's secret once; rotating again is refused.
    let r = json(dir, &["keys", "rotate", &id, "--grace", "1h", "--json"]);
    let next_secret = r["key"].as_str().unwrap().to_owned();
    assert_ne!(next_secret, secret);
    fails(dir, &["keys", "rotate", &id], "already rotated");

    // Suspend, resume, revoke.
    let next_id = r["id"].as_str().unwrap().to_owned();
    let s = json(
        dir,
        &["keys", "suspend", &next_id, "--reason", "check", "--json"],
    );
    assert_eq!(s["changed"], true);
    let s = json(dir, &["keys", "resume", &next_id, "--json"]);
    assert_eq!(s["changed"], true);
    let s = json(
        dir,
        &["keys", "revoke", &next_id, "--reason", "done", "--json"],
    );
    assert_eq!(s["changed"], true);

    // Prune: a dry run changes nothing; then the unused old key is revoked.
    let dry = json(
        dir,
        &["keys", "prune", "--unused-for", "1s", "--dry-run", "--json"],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let dry = if dry["keys"].as_array().unwrap().is_empty() {
        json(
            dir,
            &["keys", "prune", "--unused-for", "1s", "--dry-run", "--json"],
        )
    } else {
        dry
    };
    assert!(dry["revoked"].as_array().unwrap().is_empty());
    let pruned = json(dir, &["keys", "prune", "--unused-for", "1s", "--json"]);
    assert_eq!(pruned["revoked"][0], id.as_str());

    // Every change is in the audit log, by cli:alice, and no secret is.
    let audit = json(dir, &["audit", "--since", "1h", "--json"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "project.create",
            "key.create",
            "project.set_max_key_age",
            "key.rotate",
            "key.suspend",
            "key.resume",
            "key.revoke",
            "key.revoke",
            "keys.prune",
        ]
    );
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "cli:alice" && e["source"] == "cli"));
    let text = audit.to_string();
    for s in [&secret, &next_secret] {
        assert!(
            !text.contains(&s["tg-dev-".len()..]),
            "a secret is in the audit log"
        );
    }
    let table = String::from_utf8(tollgate(dir, &["audit"]).stdout).unwrap();
    assert!(table.contains("key.rotate"), "{table}");
}

#[test]
fn projects_and_provider_credentials_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = json(
        dir,
        &[
            "projects",
            "create",
            "shop",
            "--upstream-api-key",
            "env:OPENAI_KEY_SHOP",
            "--json",
        ],
    );
    assert_eq!(p["name"], "shop");
    assert_eq!(p["upstream_api_key"], "env:OPENAI_KEY_SHOP");
    fails(dir, &["projects", "create", "shop"], "exists");
    fails(
        dir,
        &[
            "projects",
            "create",
            "blog",
            "--upstream-api-key",
            "sk-live-123",
        ],
        "secret reference",
    );
    json(dir, &["projects", "create", "blog", "--json"]);
    json(
        dir,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "dev",
            "--json",
        ],
    );
    json(
        dir,
        &[
            "projects",
            "set-credential",
            "shop",
            "--env",
            "prod",
            "--ref",
            "file:/run/secrets/prod",
            "--json",
        ],
    );
    let list = json(dir, &["projects", "list", "--json"]);
    let names: Vec<(&str, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["active_keys"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        names.contains(&("shop", 1)) && names.contains(&("blog", 0)),
        "{list}"
    );
    let show = json(dir, &["projects", "show", "shop", "--json"]);
    let envs = show["envs"].as_array().unwrap();
    assert_eq!(envs.len(), 2, "{show}");
    assert_eq!(envs[1]["env"], "prod");
    assert_eq!(envs[1]["upstream_api_key"], "file:/run/secrets/prod");
    let table = tollgate(dir, &["projects", "show", "shop"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("env:OPENAI_KEY_SHOP (project default)"),
        "{table}"
    );

    json(
        dir,
        &[
            "projects",
            "set-credential",
            "shop",
            "--env",
            "prod",
            "--clear",
            "--json",
        ],
    );
    let show = json(dir, &["projects", "show", "shop", "--json"]);
    assert_eq!(show["envs"][1]["upstream_api_key"], Value::Null);
    fails(dir, &["projects", "set-credential", "shop"], "--ref");
    fails(dir, &["projects", "delete", "shop"], "not revoked");
    fails(dir, &["projects", "show", "nope"], "nope");
    json(dir, &["projects", "delete", "blog", "--json"]);
    let list = json(dir, &["projects", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[test]
fn anomaly_auto_suspend_per_project_and_reserved_names_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = json(
        dir,
        &[
            "projects",
            "create",
            "shop",
            "--anomaly-auto-suspend",
            "on",
            "--json",
        ],
    );
    assert_eq!(p["anomaly_auto_suspend"], true);
    let p = json(dir, &["projects", "create", "blog", "--json"]);
    assert_eq!(p["anomaly_auto_suspend"], Value::Null);

    let out = json(
        dir,
        &[
            "projects",
            "set-anomaly-auto-suspend",
            "blog",
            "off",
            "--json",
        ],
    );
    assert_eq!(out["anomaly_auto_suspend"], false);
    let show = json(dir, &["projects", "show", "blog", "--json"]);
    assert_eq!(show["anomaly_auto_suspend"], false);
    let list = json(dir, &["projects", "list", "--json"]);
    let choices: Vec<(&str, &Value)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), &p["anomaly_auto_suspend"]))
        .collect();
    assert_eq!(
        choices,
        vec![("blog", &Value::Bool(false)), ("shop", &Value::Bool(true))]
    );
    let table = String::from_utf8(tollgate(dir, &["projects", "list"]).stdout).unwrap();
    assert!(table.contains("AUTO-SUSPEND"), "{table}");
    let shown = String::from_utf8(tollgate(dir, &["projects", "show", "shop"]).stdout).unwrap();
    assert!(shown.contains("Anomaly auto-suspend: on"), "{shown}");
    json(
        dir,
        &[
            "projects",
            "set-anomaly-auto-suspend",
            "shop",
            "default",
            "--json",
        ],
    );
    let show = json(dir, &["projects", "show", "shop", "--json"]);
    assert_eq!(show["anomaly_auto_suspend"], Value::Null);

    // Bad input changes nothing.
    let audit_before = json(dir, &["audit", "--json"]);
    fails(
        dir,
        &["projects", "set-anomaly-auto-suspend", "nope", "on"],
        "unknown project",
    );
    fails(
        dir,
        &["projects", "set-anomaly-auto-suspend", "shop", "maybe"],
        "invalid value",
    );
    fails(dir, &["projects", "create", "_mine"], "reserved");
    fails(dir, &["projects", "create", "_gateway"], "reserved");
    fails(
        dir,
        &["keys", "create", "--project", "_other", "--env", "prod"],
        "reserved",
    );
    assert_eq!(json(dir, &["audit", "--json"]), audit_before);

    // The gateway project is created on demand for its admin keys.
    let k = json(
        dir,
        &[
            "keys",
            "create",
            "--project",
            "_gateway",
            "--env",
            "prod",
            "--role",
            "admin",
            "--json",
        ],
    );
    assert_eq!(k["project"], "_gateway");
    let audit = json(dir, &["audit", "--json"]);
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["target"].as_str().unwrap()))
        .collect();
    assert!(actions.contains(&("project.set_anomaly_auto_suspend", "blog")));
    assert!(actions.contains(&("project.create", "_gateway")));
}

#[test]
fn config_check_speaks_json_too() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tollgate.toml");
    std::fs::write(&file, "[upstream]\nretry_base_ms = 10\n").unwrap();
    let out = json(
        tmp.path(),
        &["config", "check", file.to_str().unwrap(), "--json"],
    );
    assert_eq!(out["ok"], true);
    assert!(
        out["listen"].is_string() && out["upstream"].is_string(),
        "{out}"
    );
    // The file may be named as `serve` names it, too.
    let out = json(
        tmp.path(),
        &[
            "config",
            "check",
            "--config",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out["ok"], true);
    // An upstream URL the client would refuse is refused here, with its path.
    let bad_port = tmp.path().join("port.toml");
    std::fs::write(
        &bad_port,
        "[upstream]\nurl = \"http://127.0.0.1:99999/v1\"\n",
    )
    .unwrap();
    fails(
        tmp.path(),
        &["config", "check", bad_port.to_str().unwrap()],
        "upstream.url",
    );
    std::fs::write(&file, "[upstream]\nretry_base_ms = \"soon\"\n").unwrap();
    fails(
        tmp.path(),
        &["config", "check", file.to_str().unwrap(), "--json"],
        "retry_base_ms",
    );
}

#[test]
fn rate_limits_and_output_caps_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    json(dir, &["projects", "create", "shop", "--json"]);
    // A failing command says what is wrong on one line and exits 1, without a
    // backtrace even when the operator's shell sets RUST_BACKTRACE.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["limits", "clear", "--project", "shop", "--env", "prod"])
        .env("TOLLGATE_DATA_DIR", dir)
        .env_remove("TOLLGATE_DATABASE_URL")
        .env_remove("TOLLGATE_CONFIG")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("Error: no rate limit has exactly the scope project shop, env prod"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let key = json(
        dir,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "prod",
            "--json",
        ],
    );
    let key_id = key["id"].as_str().unwrap();

    let rule = json(
        dir,
        &[
            "limits",
            "set",
            "--project",
            "shop",
            "--env",
            "prod",
            "--model",
            "gpt-4o",
            "--rpm",
            "500",
            "--tpm",
            "200000",
            "--json",
        ],
    );
    assert_eq!(rule["env"], "prod");
    assert_eq!(rule["model"], "gpt-4o");
    assert_eq!(rule["key_id"], Value::Null);
    assert_eq!(
        (rule["rpm"].as_u64(), rule["tpm"].as_u64()),
        (Some(500), Some(200_000))
    );
    json(
        dir,
        &[
            "limits",
            "set",
            "--project",
            "shop",
            "--key",
            key_id,
            "--tpm",
            "1000",
            "--json",
        ],
    );
    let list = json(dir, &["limits", "list", "--project", "shop", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let table = tollgate(dir, &["limits", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("gpt-4o") && text.contains("200000"), "{text}");

    fails(dir, &["limits", "set", "--project", "shop"], "--rpm");
    fails(
        dir,
        &["limits", "set", "--project", "shop", "--rpm", "0"],
        "positive",
    );
    fails(
        dir,
        &["limits", "set", "--project", "nope", "--rpm", "1"],
        "nope",
    );
    fails(
        dir,
        &["limits", "clear", "--project", "shop", "--env", "dev"],
        "no rate limit",
    );
    let cleared = json(
        dir,
        &[
            "limits",
            "clear",
            "--project",
            "shop",
            "--env",
            "prod",
            "--model",
            "gpt-4o",
            "--json",
        ],
    );
    assert_eq!(cleared["cleared"], true);
    assert_eq!(
        json(dir, &["limits", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let cap = json(
        dir,
        &[
            "caps",
            "set",
            "--project",
            "shop",
            "--max-output-tokens",
            "1000",
            "--over",
            "refuse",
            "--default-output-tokens",
            "256",
            "--temperature",
            "0..1.2",
            "--json",
        ],
    );
    assert_eq!(cap["over"], "refuse");
    assert_eq!(cap["temperature_max"], 1.2);
    fails(
        dir,
        &[
            "caps",
            "set",
            "--project",
            "shop",
            "--temperature",
            "1.5..1",
        ],
        "temperature",
    );
    fails(
        dir,
        &[
            "caps",
            "set",
            "--project",
            "shop",
            "--max-output-tokens",
            "10",
            "--default-output-tokens",
            "20",
        ],
        "default",
    );
    json(
        dir,
        &[
            "caps",
            "set",
            "--project",
            "shop",
            "--key",
            key_id,
            "--max-output-tokens",
            "50",
            "--json",
        ],
    );
    assert_eq!(
        json(dir, &["caps", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let cleared = json(
        dir,
        &[
            "caps",
            "clear",
            "--project",
            "shop",
            "--key",
            key_id,
            "--json",
        ],
    );
    assert_eq!(cleared["cleared"], true);
    fails(
        dir,
        &["caps", "clear", "--project", "shop", "--key", key_id],
        "no output caps",
    );

    let audit = tollgate(dir, &["audit", "--since", "1h"]);
    let text = String::from_utf8_lossy(&audit.stdout);
    for action in ["limits.set", "limits.clear", "caps.set", "caps.clear"] {
        assert!(text.contains(action), "{action} not audited: {text}");
    }
}

#[test]
fn a_keys_lane_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let create = |lane: &str| {
        json(
            dir,
            &[
                "keys",
                "create",
                "--project",
                "shop",
                "--env",
                "dev",
                "--lane",
                lane,
                "--json",
            ],
        )
    };
    let batch = create("batch");
    assert_eq!(batch["lane"], "batch");
    let plain = json(
        dir,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "dev",
            "--json",
        ],
    );
    assert_eq!(plain["lane"], "interactive", "the default lane");
    let id = plain["id"].as_str().unwrap();

    let out = json(dir, &["keys", "set-lane", id, "batch", "--json"]);
    assert_eq!(out["changed"], true);
    assert_eq!(out["lane"], "batch");
    let again = json(dir, &["keys", "set-lane", id, "batch", "--json"]);
    assert_eq!(again["changed"], false);
    let list = json(dir, &["keys", "list", "--json"]);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["lane"] == "batch"));
    let table = String::from_utf8(tollgate(dir, &["keys", "list"]).stdout).unwrap();
    assert!(table.contains("LANE") && table.contains("batch"), "{table}");
    let audit = json(dir, &["audit", "--json"]);
    let sets: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "key.set_lane")
        .collect();
    assert_eq!(sets.len(), 1, "{audit}");
    assert_eq!(sets[0]["actor"], "cli:alice");

    // Bad input is refused, names what to use, and changes nothing.
    fails(
        dir,
        &["keys", "set-lane", id, "urgent"],
        "use interactive or batch",
    );
    fails(
        dir,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "dev",
            "--lane",
            "soon",
        ],
        "use interactive or batch",
    );
    fails(
        dir,
        &["keys", "set-lane", "key_nope", "batch"],
        "unknown key id",
    );
    assert_eq!(json(dir, &["keys", "list", "--json"]), list);
}

/// Commands that only read refuse a data directory with no store in it (a mistyped
/// `--data-dir` answering "no usage" would mislead), and leave it as it was; a key
/// refused for its environment's name creates nothing, its project included.
#[test]
fn reading_a_missing_store_or_a_refused_key_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let typo = tmp.path().join("tollgate-dat");
    for args in [&["usage"][..], &["keys", "list"], &["audit"]] {
        fails(&typo, args, "no tollgate store in");
    }
    assert!(!typo.exists(), "a reading command created the directory");

    let dir = tmp.path().join("data");
    fails(
        &dir,
        &["keys", "create", "--project", "newproj", "--env", "Bad Env"],
        "invalid environment name",
    );
    let projects = json(&dir, &["projects", "list", "--json"]);
    assert_eq!(projects, serde_json::json!([]), "{projects}");
    let audit = json(&dir, &["audit", "--json"]);
    assert_eq!(audit, serde_json::json!([]), "{audit}");
}

#[test]
fn empty_variables_are_unset_and_a_storage_flag_replaces_the_files_choice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let k = json(
        &dir,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "dev",
            "--json",
        ],
    );
    let id = k["id"].as_str().unwrap();
    let run = |config: &str, vars: &[(&str, &str)], args: &[&str]| {
        let file = tmp.path().join("tollgate.toml");
        std::fs::write(&file, config).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(args)
            .arg("--config")
            .arg(&file)
            .env_remove("TOLLGATE_DATA_DIR")
            .env_remove("TOLLGATE_DATABASE_URL")
            .env_remove("TOLLGATE_CONFIG");
        for (name, value) in vars {
            cmd.env(name, value);
        }
        cmd.output().unwrap()
    };
    let lists_the_key = |out: std::process::Output| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(list[0]["id"], id, "{list}");
    };
    // An empty TOLLGATE_DATA_DIR does not blank the file's data_dir.
    let file_dir = format!("data_dir = {:?}\n", dir.display().to_string());
    lists_the_key(run(
        &file_dir,
        &[("TOLLGATE_DATA_DIR", "")],
        &["keys", "list", "--json"],
    ));
    // --data-dir replaces the file's database_url (flags over the file).
    let elsewhere = tmp.path().join("other.db");
    let file_url = format!("database_url = \"sqlite://{}\"\n", elsewhere.display());
    let flag_dir = dir.display().to_string();
    lists_the_key(run(
        &file_url,
        &[],
        &["keys", "list", "--json", "--data-dir", &flag_dir],
    ));
    assert!(!elsewhere.exists(), "the file's database was opened");
    // Both at once: the database URL wins, as in the file.
    let url = format!("sqlite://{}", dir.join("tollgate.db").display());
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let empty = empty.display().to_string();
    lists_the_key(run(
        "",
        &[],
        &[
            "keys",
            "list",
            "--json",
            "--data-dir",
            &empty,
            "--database-url",
            &url,
        ],
    ));
    // A flag beats the other one's variable: --data-dir in a shell that exports
    // TOLLGATE_DATABASE_URL, and --database-url over TOLLGATE_DATA_DIR.
    let other_url = format!("sqlite://{}", elsewhere.display());
    lists_the_key(run(
        "",
        &[("TOLLGATE_DATABASE_URL", &other_url)],
        &["keys", "list", "--json", "--data-dir", &flag_dir],
    ));
    assert!(!elsewhere.exists(), "the variable's database was opened");
    lists_the_key(run(
        "",
        &[("TOLLGATE_DATA_DIR", &empty)],
        &["keys", "list", "--json", "--database-url", &url],
    ));
    // Both variables: the database URL wins, as with both flags.
    lists_the_key(run(
        "",
        &[
            ("TOLLGATE_DATA_DIR", &empty),
            ("TOLLGATE_DATABASE_URL", &url),
        ],
        &["keys", "list", "--json"],
    ));
}

#[test]
fn usage_windows_are_positive_and_rate_limits_refuse_aliases() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    json(
        dir,
        &[
            "keys",
            "create",
            "--project",
            "shop",
            "--env",
            "dev",
            "--json",
        ],
    );
    fails(dir, &["usage", "--since", "0s"], "longer than zero");
    // A rate limit on an alias would never apply: refused, naming its target.
    fails(
        dir,
        &[
            "limits",
            "set",
            "--project",
            "shop",
            "--model",
            "fast",
            "--rpm",
            "5",
        ],
        "--model gpt-4o-mini",
    );
    json(
        dir,
        &[
            "models",
            "alias",
            "set",
            "cheap",
            "gpt-4.1-nano",
            "--project",
            "shop",
            "--json",
        ],
    );
    fails(
        dir,
        &[
            "limits",
            "set",
            "--project",
            "shop",
            "--model",
            "cheap",
            "--rpm",
            "5",
        ],
        "--model gpt-4.1-nano",
    );
}
